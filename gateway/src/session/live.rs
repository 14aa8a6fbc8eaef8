//! The granted sessions of a gateway, for the two things that end a session
//! from outside: revocation and the drain deadline.
//!
//! A granted session enters this set and keeps only the receiving end of a
//! one-shot channel. One task of the gateway ([`watch`]) re-checks the
//! authorization of every live session each `revocation.check_interval_ms`,
//! asking the decision cache once per distinct question (client, key,
//! tenant, partition, source) instead of once per session, and stops the
//! sessions whose answer became a deny; when the drain deadline passes it
//! stops all of them, and any session granted after it at once. So an idle
//! session keeps no timer and no waiter of its own for either: they were
//! 432 bytes of every session's task, and a timer firing per session per
//! interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hsmgate_authz::{DenyKind, Query, Verdict};
use hsmgate_wire::PublicKey;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::Client;
use super::forward::Stop;
use crate::control::snapshot::Snapshot;
use crate::state::Shared;

/// Directory questions of one check asked at once, at most.
const CHECKS_AT_ONCE: usize = 32;

/// The live sessions.
#[derive(Default)]
pub struct LiveSessions {
    inner: Mutex<Inner>,
    next: AtomicU64,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Live>,
    /// The drain deadline passed: every session is stopped at once.
    cut: bool,
}

struct Live {
    client: Arc<Client>,
    stop: oneshot::Sender<Stop>,
}

/// A session's place in the set; it leaves when this is dropped.
pub struct Entry<'a> {
    set: &'a LiveSessions,
    id: u64,
    stop: oneshot::Receiver<Stop>,
}

impl Entry<'_> {
    /// Completes when the session is stopped from outside.
    pub async fn stopped(&mut self) -> Stop {
        match (&mut self.stop).await {
            Ok(why) => why,
            // The sender lives as long as the entry: not reached.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.set.lock().sessions.remove(&self.id);
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enter a granted session of `client`.
    pub(super) fn enter(&self, client: Arc<Client>) -> Entry<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if inner.cut {
            let _ = tx.send(Stop::DrainDeadline);
        } else {
            inner.sessions.insert(id, Live { client, stop: tx });
        }
        Entry {
            set: self,
            id,
            stop: rx,
        }
    }

    /// Sessions in the set.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Stop every session, now and from now on.
    fn cut(&self) {
        let stopped = {
            let mut inner = self.lock();
            inner.cut = true;
            std::mem::take(&mut inner.sessions)
        };
        for live in stopped.into_values() {
            let _ = live.stop.send(Stop::DrainDeadline);
        }
    }

    /// Stop the session `id` (if it is still live) with `why`.
    fn stop(&self, id: u64, why: Stop) {
        let live = self.lock().sessions.remove(&id);
        if let Some(live) = live {
            let _ = live.stop.send(why);
        }
    }

    fn list(&self) -> Vec<(u64, Arc<Client>)> {
        self.lock()
            .sessions
            .iter()
            .map(|(id, live)| (*id, Arc::clone(&live.client)))
            .collect()
    }
}

/// Re-check live sessions until the drain deadline passes, then stop them
/// all. Runs for the gateway's life.
pub async fn watch(shared: &Shared) {
    tokio::select! {
        () = shared.drain_deadline_passed() => {}
        () = check_forever(shared) => {}
    }
    shared.live.cut();
}

async fn check_forever(shared: &Shared) {
    loop {
        let mut reloaded = shared.reloaded();
        let snap = shared.snapshot();
        if !snap.config.revocation.enabled {
            // Checked again after a reload turns it on.
            drop(snap);
            let _ = reloaded.changed().await;
            continue;
        }
        let interval = Duration::from_millis(snap.config.revocation.check_interval_ms);
        drop(snap);
        tokio::time::sleep(interval).await;
        // The directory of the config in force now, also after a reload.
        let snap = shared.snapshot();
        if snap.config.revocation.enabled {
            check_all(shared, snap).await;
        }
    }
}

/// What makes two sessions' questions the same: who the client is, with
/// which key, for what, from where.
type Question<'a> = (&'a str, PublicKey, &'a str, &'a str, IpAddr);

fn question(client: &Client) -> Question<'_> {
    let request = &client.verified.request;
    (
        &request.client_id,
        client.verified.static_key,
        &request.tenant,
        &request.partition,
        client.peer.ip(),
    )
}

/// The live sessions by question: one client of each, and the sessions
/// its answer decides.
fn group(sessions: &[(u64, Arc<Client>)]) -> Vec<(Arc<Client>, Vec<u64>)> {
    let mut index: HashMap<Question<'_>, usize> = HashMap::new();
    let mut groups: Vec<(Arc<Client>, Vec<u64>)> = Vec::new();
    for (id, client) in sessions {
        let at = *index.entry(question(client)).or_insert_with(|| {
            groups.push((Arc::clone(client), Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(*id);
    }
    groups
}

/// Ask once per distinct question and stop the sessions now denied.
async fn check_all(shared: &Shared, snap: Arc<Snapshot>) {
    let groups = group(&shared.live.list());
    let mut running = JoinSet::new();
    let mut next = 0;
    loop {
        while running.len() < CHECKS_AT_ONCE && next < groups.len() {
            let (snap, client) = (Arc::clone(&snap), Arc::clone(&groups[next].0));
            let at = next;
            running.spawn(async move {
                let query = client.query(&snap.config.gateway_id);
                (at, denied(&snap, &query, &client).await)
            });
            next += 1;
        }
        let Some(done) = running.join_next().await else {
            return;
        };
        let Ok((at, Some(reason))) = done else {
            continue;
        };
        for id in &groups[at].1 {
            shared.live.stop(*id, Stop::Revoked(reason.clone()));
        }
    }
}

/// Why the directory (or the cache) now denies `client`, if it does. A
/// directory that cannot answer never ends a session.
async fn denied(snap: &Snapshot, query: &Query, client: &Client) -> Option<String> {
    match snap.authz.decide(query).await {
        Ok((answer, _)) => match answer.verdict(client.peer.ip()) {
            Verdict::Allow { .. } => None,
            Verdict::Deny(DenyKind::Identity(reason)) => Some(format!(
                "directory now denies the client: {}",
                reason.as_str()
            )),
            Verdict::Deny(DenyKind::Address) => {
                Some("directory no longer allows the source address".into())
            }
        },
        Err(e) => {
            tracing::debug!(client_id = %client.id(), error = %e, "revocation check: directory unavailable; session continues");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_leaves_the_set_when_dropped_and_a_cut_stops_every_session() {
        let set = LiveSessions::default();
        let client = Arc::new(Client::for_tests("127.0.0.1:5000"));
        let a = set.enter(Arc::clone(&client));
        let mut b = set.enter(Arc::clone(&client));
        assert_eq!(set.len(), 2);
        drop(a);
        assert_eq!(set.len(), 1);
        set.cut();
        assert_eq!(set.len(), 0);
        let mut late = set.enter(client);
        assert_eq!(set.len(), 0, "a session granted after the cut is not kept");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert_eq!(b.stopped().await, Stop::DrainDeadline);
            assert_eq!(late.stopped().await, Stop::DrainDeadline);
        });
    }

    #[test]
    fn sessions_asking_the_same_question_are_checked_once() {
        let one = Arc::new(Client::for_tests("127.0.0.1:5000"));
        let same_client_other_port = Arc::new(Client::for_tests("127.0.0.1:6000"));
        let other_address = Arc::new(Client::for_tests("127.0.0.2:5000"));
        let mut other_partition = Client::for_tests("127.0.0.1:5000");
        other_partition.verified.request.partition = "q".into();
        let other_partition = Arc::new(other_partition);
        let sessions = vec![
            (1, Arc::clone(&one)),
            (2, Arc::clone(&one)),
            (3, same_client_other_port),
            (4, other_address),
            (5, other_partition),
            (6, one),
        ];
        let groups = group(&sessions);
        assert_eq!(
            groups.len(),
            3,
            "one question per client, address and partition"
        );
        let mut ids: Vec<Vec<u64>> = groups.iter().map(|(_, ids)| ids.clone()).collect();
        ids.sort();
        assert_eq!(ids, vec![vec![1, 2, 3, 6], vec![4], vec![5]]);
        // Each group's client asks the question of all its sessions.
        for (client, ids) in &groups {
            for id in ids {
                let (_, member) = &sessions[usize::try_from(*id).expect("id") - 1];
                assert!(question(client) == question(member));
            }
        }
    }

    #[test]
    fn a_stop_reaches_its_session_only() {
        let set = LiveSessions::default();
        let client = Arc::new(Client::for_tests("127.0.0.1:5000"));
        let mut a = set.enter(Arc::clone(&client));
        let mut b = set.enter(client);
        set.stop(a.id, Stop::Revoked("gone".into()));
        assert_eq!(set.len(), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert_eq!(a.stopped().await, Stop::Revoked("gone".into()));
            let waited = tokio::time::timeout(Duration::from_millis(20), b.stopped()).await;
            assert!(waited.is_err(), "the other session goes on");
        });
    }
}
