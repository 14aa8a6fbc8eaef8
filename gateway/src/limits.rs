//! Per-client concurrent session counts, bounded by the limit that the
//! directory's answer carries for each client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default, Clone)]
pub struct ClientSlots {
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// One session's place in its client's count; released on drop.
#[derive(Debug)]
pub struct ClientSlot {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    client_id: String,
}

impl ClientSlots {
    /// Take a slot for `client_id` unless it already holds `max` (0 = no limit).
    pub fn acquire(&self, client_id: &str, max: u32) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(client_id.to_owned()).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(&self.counts),
            client_id: client_id.to_owned(),
        })
    }

    /// Sessions `client_id` holds now.
    pub fn count(&self, client_id: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(client_id).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.client_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_holds_and_slots_return_on_drop() {
        let slots = ClientSlots::default();
        let a = slots.acquire("app", 2).expect("first");
        let b = slots.acquire("app", 2).expect("second");
        assert!(slots.acquire("app", 2).is_none(), "third is over the limit");
        assert!(slots.acquire("other", 2).is_some(), "limits are per client");
        drop(a);
        assert_eq!(slots.count("app"), 1);
        let _c = slots.acquire("app", 2).expect("a slot came back");
        drop(b);
    }

    #[test]
    fn zero_means_unlimited_and_empty_entries_are_removed() {
        let slots = ClientSlots::default();
        let held: Vec<_> = (0..100)
            .map(|_| slots.acquire("app", 0).expect("no limit"))
            .collect();
        assert_eq!(slots.count("app"), 100);
        drop(held);
        assert_eq!(slots.count("app"), 0);
        assert!(slots.counts.lock().expect("lock").is_empty());
    }
}

/// Per-source-address bounds, checked at accept before any byte is read:
/// concurrent connections, and new connections (each a handshake and
/// possibly a directory call) per second through a token bucket, so a flood
/// from one address cannot become a flood of directory calls.
#[derive(Debug)]
pub struct SourceLimits {
    max_concurrent: u32,
    rate_per_sec: f64,
    burst: f64,
    state: Arc<Mutex<SourceTable>>,
}

#[derive(Debug, Default)]
struct SourceTable {
    entries: HashMap<std::net::IpAddr, SourceEntry>,
}

#[derive(Debug)]
struct SourceEntry {
    open: u32,
    tokens: f64,
    refilled: std::time::Instant,
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    TooManyConnections,
    TooManyHandshakes,
}

impl SourceRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceRefusal::TooManyConnections => "too many connections from this address",
            SourceRefusal::TooManyHandshakes => "handshake rate limit of this address",
        }
    }
}

/// One connection's place in its source's count; released on drop.
#[derive(Debug)]
pub struct SourceSlot {
    state: Arc<Mutex<SourceTable>>,
    source: std::net::IpAddr,
}

/// Above this many tracked sources, idle ones (no open connection and a
/// full bucket) are swept.
const SWEEP_ABOVE: usize = 10_000;

impl SourceLimits {
    /// `max_concurrent` 0 and `rate_per_sec` 0 each mean "no limit".
    pub fn new(max_concurrent: u32, rate_per_sec: u32, burst: u32) -> Self {
        SourceLimits {
            max_concurrent,
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            state: Arc::default(),
        }
    }

    /// Admit one new connection from `source` at `now`, or say why not.
    pub fn admit(
        &self,
        source: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<SourceSlot, SourceRefusal> {
        let source = source.to_canonical();
        let mut table = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if table.entries.len() > SWEEP_ABOVE {
            let (rate, burst) = (self.rate_per_sec, self.burst);
            table
                .entries
                .retain(|_, e| e.open > 0 || (rate > 0.0 && refilled(e, now, rate, burst) < burst));
        }
        let entry = table.entries.entry(source).or_insert(SourceEntry {
            open: 0,
            tokens: self.burst,
            refilled: now,
        });
        if self.max_concurrent != 0 && entry.open >= self.max_concurrent {
            return Err(SourceRefusal::TooManyConnections);
        }
        if self.rate_per_sec > 0.0 {
            entry.tokens = refilled(entry, now, self.rate_per_sec, self.burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(SourceRefusal::TooManyHandshakes);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(SourceSlot {
            state: Arc::clone(&self.state),
            source,
        })
    }

    /// Sources tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        let table = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        table.entries.len()
    }
}

fn refilled(entry: &SourceEntry, now: std::time::Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
    (entry.tokens + elapsed * rate).min(burst)
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut table = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.entries.get_mut(&self.source) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn concurrent_connections_per_source_are_bounded() {
        let limits = SourceLimits::new(2, 0, 1);
        let now = Instant::now();
        let a = limits.admit(ip("10.0.0.1"), now).expect("first");
        let _b = limits.admit(ip("10.0.0.1"), now).expect("second");
        assert_eq!(
            limits.admit(ip("10.0.0.1"), now).err(),
            Some(SourceRefusal::TooManyConnections)
        );
        assert!(limits.admit(ip("10.0.0.2"), now).is_ok(), "per source");
        assert_eq!(
            limits.admit(ip("::ffff:10.0.0.1"), now).err(),
            Some(SourceRefusal::TooManyConnections),
            "the mapped form is the same source"
        );
        drop(a);
        assert!(
            limits.admit(ip("10.0.0.1"), now).is_ok(),
            "a slot came back"
        );
    }

    #[test]
    fn handshake_rate_is_a_token_bucket() {
        let limits = SourceLimits::new(0, 10, 3);
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(limits.admit(ip("10.0.0.1"), start).expect("burst"));
        }
        assert_eq!(
            limits.admit(ip("10.0.0.1"), start).err(),
            Some(SourceRefusal::TooManyHandshakes)
        );
        // 10 per second: one token after 100 ms, not before.
        let soon = start + Duration::from_millis(50);
        assert!(limits.admit(ip("10.0.0.1"), soon).is_err());
        let later = start + Duration::from_millis(160);
        assert!(limits.admit(ip("10.0.0.1"), later).is_ok());
        assert!(limits.admit(ip("10.0.0.2"), start).is_ok(), "per source");
    }

    #[test]
    fn idle_sources_are_swept() {
        let limits = SourceLimits::new(0, 100, 1);
        let start = Instant::now();
        for i in 0..=SWEEP_ABOVE as u32 {
            let slot = limits
                .admit(IpAddr::from(std::net::Ipv4Addr::from(i)), start)
                .expect("admit");
            drop(slot);
        }
        let later = start + Duration::from_secs(1);
        let _slot = limits.admit(ip("192.0.2.1"), later).expect("admit");
        assert!(limits.tracked() < 10, "{}", limits.tracked());
    }
}
