//! Per-caller rate limits: a token bucket per principal subject (a token's
//! `sub`, a certificate's matched name), refilled at `requests_per_second`
//! up to `burst`. At most `max_callers` buckets are kept; a new caller
//! beyond that first evicts the buckets that are full again (idle callers
//! lose nothing by it), else the one idle longest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_callers: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(requests_per_second: u32, burst: u32, max_callers: usize) -> RateLimiter {
        RateLimiter {
            rate: f64::from(requests_per_second),
            burst: f64::from(burst),
            max_callers,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `caller`'s bucket at `now`: `Ok` or the whole
    /// seconds after which one is available again.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(caller) && buckets.len() >= self.max_callers {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
        if buckets.len() >= self.max_callers
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| k.clone())
        {
            buckets.remove(&oldest);
        }
    }

    /// Whether `caller` has a request left at `now`, without taking it.
    pub fn check(&self, caller: &str, now: Instant) -> Result<(), u64> {
        let Ok(buckets) = self.buckets.lock() else {
            return Ok(());
        };
        match buckets.get(caller) {
            None => Ok(()),
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
                let tokens = (b.tokens + elapsed * self.rate).min(self.burst);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(((1.0 - tokens) / self.rate).ceil().max(1.0) as u64)
                }
            }
        }
    }

    /// Callers tracked now.
    pub fn callers(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_caller_gets_its_burst_then_the_rate() {
        let l = RateLimiter::new(2, 3, 10);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take("a", t), Ok(()));
        }
        assert_eq!(l.take("a", t), Err(1));
        // Another caller is not affected.
        assert_eq!(l.take("b", t), Ok(()));
        // Half a second later: one more (2 per second).
        assert_eq!(l.take("a", t + Duration::from_millis(500)), Ok(()));
        assert!(l.take("a", t + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn the_number_of_callers_is_bounded() {
        let l = RateLimiter::new(1, 1, 3);
        let t = Instant::now();
        for i in 0..100 {
            let _ = l.take(&format!("c{i}"), t + Duration::from_millis(i));
            assert!(l.callers() <= 3);
        }
        // A flood of new names cannot refill a limited caller: the limited
        // one may be evicted, but only once it is the oldest.
        assert!(l.callers() <= 3);
    }
}
