//! Latency histograms (HDR, nanoseconds, 3 significant digits) and the
//! summaries the reports print.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency a histogram records exactly; longer ones are clamped.
const MAX_NANOS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, MAX_NANOS, 3).expect("static histogram bounds"))
    }
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies")
            .field("count", &self.0.len())
            .finish_non_exhaustive()
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(MAX_NANOS);
        self.0.saturating_record(nanos.clamp(1, MAX_NANOS));
    }

    pub fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides: this cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        let q = |q: f64| us(self.0.value_at_quantile(q));
        Summary {
            count: self.0.len(),
            mean_us: self.0.mean() / 1_000.0,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: us(self.0.max()),
        }
    }

    /// Points of the percentile curve: (percentile in 0..100, microseconds),
    /// from the median out to the maximum, for the plot.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut points = Vec::new();
        // Steps that get finer towards the tail: 0, 50, 75, 87.5, ...
        let mut missing = 1.0f64;
        while missing > 1e-5 {
            let q = 1.0 - missing;
            points.push((q * 100.0, self.0.value_at_quantile(q) as f64 / 1_000.0));
            missing /= 1.25;
        }
        points.push((100.0, self.0.max() as f64 / 1_000.0));
        points
    }
}

/// What a report says about one latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_in_microseconds() {
        let mut h = Latencies::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        let curve = h.percentile_curve();
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(curve.last().map(|p| p.0), Some(100.0));
    }

    #[test]
    fn merges_and_clamps() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        a.record(Duration::from_nanos(0));
        b.record(Duration::from_secs(3600));
        a.add(&b);
        assert_eq!(a.count(), 2);
    }
}
