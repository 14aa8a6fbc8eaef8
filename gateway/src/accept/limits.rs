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

/// Per-source bounds, checked at accept before any byte is read: concurrent
/// connections, and new connections (each a handshake and possibly a
/// directory call) per second through a token bucket, so a flood from one
/// source cannot become a flood of directory calls.
///
/// A source is an IPv4 address, or an IPv6 network of `ipv6_prefix` bits
/// (/64 by default): one host's IPv6 allocation is usually a whole /64, an
/// unlimited supply of addresses that must count as one source.
///
/// Upkeep is O(log n) per connection: a source with no open connection is
/// remembered only until its bucket is full again (then it is
/// indistinguishable from a new one), in a queue ordered by that time; the
/// table never holds more than [`MAX_TRACKED`] sources.
#[derive(Debug)]
pub struct SourceLimits {
    max_concurrent: u32,
    rate_per_sec: f64,
    burst: f64,
    ipv6_prefix: u8,
    state: Arc<Mutex<SourceTable>>,
}

#[derive(Debug, Default)]
struct SourceTable {
    entries: HashMap<std::net::IpAddr, SourceEntry>,
    /// Sources with no open connection, by the time their bucket is full.
    idle: std::collections::BTreeSet<(std::time::Instant, std::net::IpAddr)>,
}

#[derive(Debug)]
struct SourceEntry {
    open: u32,
    tokens: f64,
    refilled: std::time::Instant,
    /// Its key in `idle`, while it has no open connection.
    idle_until: Option<std::time::Instant>,
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
    limits: Arc<Mutex<SourceTable>>,
    rate_per_sec: f64,
    burst: f64,
    source: std::net::IpAddr,
}

/// Most sources tracked at once; beyond, the idle source whose bucket fills
/// first is forgotten early (which only favours that source).
pub const MAX_TRACKED: usize = 100_000;

impl SourceLimits {
    /// `max_concurrent` 0 and `rate_per_sec` 0 each mean "no limit";
    /// `ipv6_prefix` groups IPv6 sources (64: one /64 is one source).
    pub fn new(max_concurrent: u32, rate_per_sec: u32, burst: u32, ipv6_prefix: u8) -> Self {
        SourceLimits {
            max_concurrent,
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
            state: Arc::default(),
        }
    }

    /// The source `address` counts as: itself (IPv4, with IPv4-mapped IPv6
    /// taken as IPv4) or its IPv6 network of `ipv6_prefix` bits.
    pub fn source_of(&self, address: std::net::IpAddr) -> std::net::IpAddr {
        match address.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(bits & mask))
            }
            v4 => v4,
        }
    }

    /// Admit one new connection from `address` at `now`, or say why not.
    pub fn admit(
        &self,
        address: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<SourceSlot, SourceRefusal> {
        let source = self.source_of(address);
        let mut table = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        table.forget_full_until(now);
        if !table.entries.contains_key(&source) && table.entries.len() >= MAX_TRACKED {
            table.forget_first_idle();
        }
        let table = &mut *table;
        let entry = table.entries.entry(source).or_insert(SourceEntry {
            open: 0,
            tokens: self.burst,
            refilled: now,
            idle_until: None,
        });
        if self.max_concurrent != 0 && entry.open >= self.max_concurrent {
            return Err(SourceRefusal::TooManyConnections);
        }
        if self.rate_per_sec > 0.0 {
            entry.tokens = refilled(entry, now, self.rate_per_sec, self.burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                // Still idle: it is remembered until its bucket is full.
                if let Some(until) = entry.idle_until {
                    let full = now
                        + std::time::Duration::from_secs_f64(
                            (self.burst - entry.tokens) / self.rate_per_sec,
                        );
                    table.idle.remove(&(until, source));
                    table.idle.insert((full, source));
                    entry.idle_until = Some(full);
                }
                return Err(SourceRefusal::TooManyHandshakes);
            }
            entry.tokens -= 1.0;
        }
        if let Some(until) = entry.idle_until.take() {
            table.idle.remove(&(until, source));
        }
        entry.open += 1;
        Ok(SourceSlot {
            limits: Arc::clone(&self.state),
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            source,
        })
    }

    /// Sources tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        let table = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        table.entries.len()
    }
}

impl SourceTable {
    /// Forget the idle sources whose bucket is full by `now`.
    fn forget_full_until(&mut self, now: std::time::Instant) {
        while let Some(&(until, source)) = self.idle.first() {
            if until > now {
                break;
            }
            self.idle.pop_first();
            self.entries.remove(&source);
        }
    }

    fn forget_first_idle(&mut self) {
        if let Some((_, source)) = self.idle.pop_first() {
            self.entries.remove(&source);
        }
    }
}

fn refilled(entry: &SourceEntry, now: std::time::Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
    (entry.tokens + elapsed * rate).min(burst)
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut table = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = table.entries.get_mut(&self.source) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open > 0 {
            return;
        }
        let missing = self.burst - entry.tokens;
        if self.rate_per_sec <= 0.0 || missing <= 0.0 {
            // Nothing to remember: a new entry would look the same.
            table.entries.remove(&self.source);
            return;
        }
        let until =
            entry.refilled + std::time::Duration::from_secs_f64(missing / self.rate_per_sec);
        entry.idle_until = Some(until);
        table.idle.insert((until, self.source));
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
        let limits = SourceLimits::new(2, 0, 1, 64);
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
    fn an_ipv6_network_of_the_prefix_is_one_source() {
        let limits = SourceLimits::new(2, 0, 1, 64);
        let now = Instant::now();
        let _a = limits.admit(ip("2001:db8:1:2::1"), now).expect("first");
        let _b = limits
            .admit(ip("2001:db8:1:2:ffff::9"), now)
            .expect("second");
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:abcd::1"), now).err(),
            Some(SourceRefusal::TooManyConnections),
            "another address of the same /64"
        );
        assert!(
            limits.admit(ip("2001:db8:1:3::1"), now).is_ok(),
            "the next /64"
        );
        let per_address = SourceLimits::new(1, 0, 1, 128);
        let _c = per_address.admit(ip("2001:db8::1"), now).expect("one");
        assert!(
            per_address.admit(ip("2001:db8::2"), now).is_ok(),
            "/128: per address"
        );
    }

    #[test]
    fn handshake_rate_is_a_token_bucket() {
        let limits = SourceLimits::new(0, 10, 3, 64);
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
    fn a_closed_source_keeps_its_bucket_until_it_is_full_then_is_forgotten() {
        let limits = SourceLimits::new(0, 10, 2, 64);
        let start = Instant::now();
        for _ in 0..2 {
            drop(limits.admit(ip("10.0.0.1"), start).expect("burst"));
        }
        assert_eq!(limits.tracked(), 1, "its empty bucket is remembered");
        assert_eq!(
            limits.admit(ip("10.0.0.1"), start).err(),
            Some(SourceRefusal::TooManyHandshakes),
            "closing its connections does not refill the bucket"
        );
        // Full again after 200 ms: forgotten on the next admission.
        let later = start + Duration::from_millis(250);
        let _other = limits.admit(ip("10.0.0.9"), later).expect("other");
        assert_eq!(limits.tracked(), 1, "only the new source is left");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let limits = SourceLimits::new(0, 1, 1, 64);
        let start = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let slot = limits
                .admit(IpAddr::from(std::net::Ipv4Addr::from(i)), start)
                .expect("admit");
            drop(slot);
        }
        assert!(limits.tracked() <= MAX_TRACKED, "{}", limits.tracked());
        // Without a rate limit nothing is remembered once closed.
        let open = SourceLimits::new(5, 0, 1, 64);
        for i in 0..1000u32 {
            drop(open.admit(IpAddr::from(std::net::Ipv4Addr::from(i)), start));
        }
        assert_eq!(open.tracked(), 0);
    }
}
