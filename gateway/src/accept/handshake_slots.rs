//! The budget of connections still in their handshake, apart from the
//! budget of all connections, so that strangers who connect and stay silent
//! cannot crowd out real clients.
//!
//! A connection takes a slot at accept and gives it back when its handshake
//! ends (granted, refused or gone). Until its first frame (the Hello) is
//! complete it is *silent*. When every slot is taken, the silent connection
//! that has waited longest is evicted to make room for the new one: a real
//! client sends its Hello within one round trip of connecting, so it is never
//! the oldest silent connection for long, while a stranger holding idle
//! connections loses them as fast as it opens new ones. Only when every slot
//! holds a connection that has spoken is a new one refused.
//!
//! Bookkeeping is O(1) amortized: a queue of silent connections in accept
//! order, whose entries that spoke or left are skipped lazily and dropped
//! once they are most of the queue. The queue thus empties when the slots
//! do: an entry left behind would keep its flag, a small allocation made in
//! the middle of a peak of sessions, alive after the peak, and with it the
//! page around it (issue 12, part 2; see control/memory.rs).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Every handshake slot of one gateway.
#[derive(Debug)]
pub struct HandshakeSlots {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Slots held now (evicted ones no longer count).
    held: usize,
    /// Silent connections, oldest first; entries that spoke or left stay
    /// until they reach the front or the queue is compacted.
    silent: VecDeque<Arc<Flag>>,
}

#[derive(Debug, Default)]
struct Flag {
    /// Spoke, or gave its slot back: not evictable any more.
    settled: AtomicBool,
    evicted: AtomicBool,
    notify: Notify,
}

/// One connection's handshake slot; given back on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    slots: Arc<HandshakeSlots>,
    flag: Arc<Flag>,
}

/// Capacity the queue keeps when it empties; more, grown at a peak of
/// connections, is given back.
const KEEP_CAPACITY: usize = 64;

impl State {
    /// Drop the entries of connections that spoke or left when they are more
    /// than half the queue. Unsettled entries are at most `held`, so each
    /// pass removes at least half of what it walks: O(1) amortized.
    fn compact(&mut self) {
        if self.silent.len() > 2 * self.held {
            self.silent.retain(|f| !f.settled.load(Ordering::Acquire));
            if self.silent.is_empty() && self.silent.capacity() > KEEP_CAPACITY {
                self.silent = VecDeque::new();
            }
        }
    }
}

/// No slot: every one is held by a connection that has spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl HandshakeSlots {
    pub fn new(max: usize) -> Arc<HandshakeSlots> {
        Arc::new(HandshakeSlots {
            max: max.max(1),
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// A slot for a new, silent connection, evicting the oldest silent one
    /// when all are taken.
    pub fn acquire(self: &Arc<Self>) -> Result<HandshakeSlot, Full> {
        let mut state = self.lock();
        if state.held >= self.max {
            loop {
                let Some(oldest) = state.silent.pop_front() else {
                    return Err(Full);
                };
                if oldest.settled.swap(true, Ordering::AcqRel) {
                    continue;
                }
                oldest.evicted.store(true, Ordering::Release);
                oldest.notify.notify_one();
                state.held -= 1;
                break;
            }
        }
        state.compact();
        let flag = Arc::new(Flag::default());
        state.silent.push_back(Arc::clone(&flag));
        state.held += 1;
        Ok(HandshakeSlot {
            slots: Arc::clone(self),
            flag,
        })
    }
}

impl HandshakeSlot {
    /// The connection's first frame is complete: it can no longer be evicted.
    pub fn spoke(&self) {
        self.flag.settled.store(true, Ordering::Release);
    }

    /// Completes when the connection was evicted to make room.
    pub async fn evicted(&self) {
        loop {
            let notified = self.flag.notify.notified();
            if self.flag.evicted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    pub fn was_evicted(&self) -> bool {
        self.flag.evicted.load(Ordering::Acquire)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.flag.settled.store(true, Ordering::Release);
        if !self.flag.evicted.load(Ordering::Acquire) {
            let mut state = self.slots.lock();
            state.held = state.held.saturating_sub(1);
            state.compact();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_evicts_the_oldest_silent_connection() {
        let slots = HandshakeSlots::new(3);
        let a = slots.acquire().expect("a");
        let b = slots.acquire().expect("b");
        let c = slots.acquire().expect("c");
        a.spoke();
        let d = slots.acquire().expect("room made");
        assert!(!a.was_evicted(), "a spoke: never evicted");
        assert!(b.was_evicted(), "b was the oldest silent one");
        assert!(!c.was_evicted());
        assert_eq!(slots.held(), 3);
        drop(b);
        assert_eq!(slots.held(), 3, "an evicted slot was already given back");
        c.spoke();
        d.spoke();
        assert_eq!(slots.acquire().err(), Some(Full), "everyone spoke");
        drop(a);
        assert_eq!(slots.held(), 2);
        let _e = slots.acquire().expect("a slot came back");
    }

    #[tokio::test]
    async fn an_evicted_connection_is_told() {
        let slots = HandshakeSlots::new(1);
        let a = slots.acquire().expect("a");
        let waiter = tokio::spawn(async move {
            a.evicted().await;
            a.was_evicted()
        });
        tokio::task::yield_now().await;
        let _b = slots.acquire().expect("b evicts a");
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("in time")
            .expect("task");
        assert!(told);
    }

    #[test]
    fn the_queue_stays_bounded_when_connections_come_and_go() {
        let slots = HandshakeSlots::new(4);
        for _ in 0..10_000 {
            let s = slots.acquire().expect("room");
            s.spoke();
        }
        assert!(
            slots.lock().silent.len() <= 9,
            "{}",
            slots.lock().silent.len()
        );
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn the_queue_empties_and_shrinks_after_a_peak() {
        let slots = HandshakeSlots::new(1_000);
        let peak: Vec<_> = (0..1_000).map(|_| slots.acquire().expect("room")).collect();
        for s in &peak {
            s.spoke();
        }
        drop(peak);
        let state = slots.lock();
        assert!(
            state.silent.is_empty(),
            "{} entries left",
            state.silent.len()
        );
        assert!(
            state.silent.capacity() <= KEEP_CAPACITY,
            "{}",
            state.silent.capacity()
        );
    }
}
