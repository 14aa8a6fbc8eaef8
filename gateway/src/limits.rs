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
