//! Rate limits on repeated log lines: a flood of identical refusals (a scan,
//! throwaway identities) must not become a flood of log lines.
//!
//! Each kind of line (a static key, such as the refusal's reason) may be
//! written [`PER_SECOND`] times per second; the rest are counted, and the
//! next line of that kind that is written says how many were suppressed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines of one kind written per second before the rest are suppressed.
pub const PER_SECOND: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a line of `kind` may be written now: `Some(n)` with the number
    /// of lines of that kind suppressed since the last one written (say so
    /// in the line), `None` to suppress this one.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let w = kinds.entry(kind).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.started) >= WINDOW {
            w.started = now;
            w.written = 0;
        }
        if w.written >= PER_SECOND {
            w.suppressed += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_lines_are_limited_per_second_and_the_suppressed_are_counted() {
        let limiter = LogLimiter::default();
        let start = Instant::now();
        let written = (0..100)
            .filter(|_| limiter.allow_at("scan", start).is_some())
            .count();
        assert_eq!(written, PER_SECOND as usize);
        assert_eq!(limiter.allow_at("other", start), Some(0), "per kind");
        let later = start + WINDOW;
        assert_eq!(
            limiter.allow_at("scan", later),
            Some(100 - u64::from(PER_SECOND)),
            "the next line says how many were left out"
        );
        assert_eq!(limiter.allow_at("scan", later), Some(0));
    }
}
