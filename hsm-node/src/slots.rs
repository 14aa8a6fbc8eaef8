//! Session slots: the node's own bounds on concurrent sessions, in total,
//! per client and per partition, and the accepting/full status it reports
//! to its gateways over their control connections (PROTOCOL.md §8.2).
//!
//! A slot is taken when a session's grant has been checked (or, for an
//! insecure direct session, at its first frame) and held until the session
//! ends, so a client that never finishes its inner handshake still counts
//! against its own cap and nobody else's. Health probes and control
//! connections never take a slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::config::Limits;

/// What the node tells its gateways about its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// False while every session slot is taken: gateways skip the node for
    /// new sessions without counting it as failed.
    pub accepting: bool,
    pub sessions: u32,
    pub max_sessions: u32,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    NodeFull,
    ClientFull,
    PartitionFull,
}

impl SlotRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotRefusal::NodeFull => "node session limit reached",
            SlotRefusal::ClientFull => "client's session limit on this node reached",
            SlotRefusal::PartitionFull => "partition's session limit on this node reached",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    clients: HashMap<String, usize>,
    partitions: HashMap<String, usize>,
}

/// Every session slot of one node.
#[derive(Debug)]
pub struct SessionSlots {
    max: usize,
    per_client: usize,
    per_partition: usize,
    counts: Mutex<Counts>,
    status: watch::Sender<NodeStatus>,
}

/// One session's place; released on drop.
#[derive(Debug)]
pub struct SessionSlot {
    slots: Arc<SessionSlots>,
    client: Option<String>,
    partition: Option<String>,
}

impl SessionSlots {
    pub fn new(limits: &Limits) -> SessionSlots {
        let status = NodeStatus {
            accepting: true,
            sessions: 0,
            max_sessions: u32::try_from(limits.max_sessions).unwrap_or(u32::MAX),
        };
        SessionSlots {
            max: limits.max_sessions,
            per_client: limits.max_sessions_per_client,
            per_partition: limits.max_sessions_per_partition,
            counts: Mutex::default(),
            status: watch::channel(status).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The status now, and its changes.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.subscribe()
    }

    /// Sessions held now.
    pub fn in_use(&self) -> usize {
        self.lock().total
    }

    /// Take a slot for a session of `client` (from its grant; `None` for a
    /// direct session) on `partition` (`None` while unknown).
    pub fn acquire(
        self: &Arc<Self>,
        client: Option<&str>,
        partition: Option<&str>,
    ) -> Result<SessionSlot, SlotRefusal> {
        let mut counts = self.lock();
        if counts.total >= self.max {
            return Err(SlotRefusal::NodeFull);
        }
        let over = |map: &HashMap<String, usize>, key: Option<&str>, cap: usize| {
            cap != 0 && key.is_some_and(|k| map.get(k).copied().unwrap_or(0) >= cap)
        };
        if over(&counts.clients, client, self.per_client) {
            return Err(SlotRefusal::ClientFull);
        }
        if over(&counts.partitions, partition, self.per_partition) {
            return Err(SlotRefusal::PartitionFull);
        }
        counts.total += 1;
        if let Some(c) = client {
            *counts.clients.entry(c.to_owned()).or_default() += 1;
        }
        if let Some(p) = partition {
            *counts.partitions.entry(p.to_owned()).or_default() += 1;
        }
        let total = counts.total;
        drop(counts);
        self.publish(total);
        Ok(SessionSlot {
            slots: Arc::clone(self),
            client: client.map(str::to_owned),
            partition: partition.map(str::to_owned),
        })
    }

    /// Tell the gateways when the node turns full or takes sessions again.
    fn publish(&self, total: usize) {
        let accepting = total < self.max;
        self.status.send_if_modified(|s| {
            s.sessions = u32::try_from(total).unwrap_or(u32::MAX);
            if s.accepting == accepting {
                // Counts alone change too often to be worth a message.
                return false;
            }
            s.accepting = accepting;
            true
        });
    }
}

fn release(map: &mut HashMap<String, usize>, key: &Option<String>) {
    if let Some(k) = key
        && let Some(n) = map.get_mut(k)
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.lock();
        counts.total = counts.total.saturating_sub(1);
        release(&mut counts.clients, &self.client);
        release(&mut counts.partitions, &self.partition);
        let total = counts.total;
        drop(counts);
        self.slots.publish(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max: usize, per_client: usize, per_partition: usize) -> Arc<SessionSlots> {
        Arc::new(SessionSlots::new(&Limits {
            max_sessions: max,
            max_sessions_per_client: per_client,
            max_sessions_per_partition: per_partition,
            ..Limits::default()
        }))
    }

    #[test]
    fn a_client_cap_leaves_room_for_other_clients() {
        let s = slots(10, 2, 0);
        let a1 = s.acquire(Some("a"), Some("p")).expect("a1");
        let _a2 = s.acquire(Some("a"), Some("p")).expect("a2");
        assert_eq!(
            s.acquire(Some("a"), Some("p")).unwrap_err(),
            SlotRefusal::ClientFull
        );
        let _b = s
            .acquire(Some("b"), Some("p"))
            .expect("b is not capped by a");
        drop(a1);
        let _a3 = s.acquire(Some("a"), Some("p")).expect("a slot came back");
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn partition_and_node_caps_hold_and_status_follows_fullness() {
        let s = slots(3, 0, 2);
        let mut status = s.status();
        let _p1 = s.acquire(Some("a"), Some("p")).expect("p1");
        let _p2 = s.acquire(Some("b"), Some("p")).expect("p2");
        assert_eq!(
            s.acquire(Some("c"), Some("p")).unwrap_err(),
            SlotRefusal::PartitionFull
        );
        assert!(!status.has_changed().expect("open"), "not full yet");
        let q = s.acquire(None, None).expect("direct session");
        assert!(status.has_changed().expect("open"));
        assert!(!status.borrow_and_update().accepting, "full");
        assert_eq!(
            s.acquire(None, Some("q")).unwrap_err(),
            SlotRefusal::NodeFull
        );
        drop(q);
        assert!(status.borrow_and_update().accepting, "accepting again");
    }
}
