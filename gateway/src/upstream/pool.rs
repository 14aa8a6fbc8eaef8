//! HSM pools: named sets of HSM nodes, the balancing policy that orders
//! them for each session, and connecting with a timeout and retries on other
//! members before any byte is forwarded.
//!
//! A pool's member set can change while the gateway runs (DNS discovery,
//! `discovery.rs`): it is swapped as a whole, members that stay keep their
//! state (health, active sessions, ejection), and a session holds on to its
//! member even after it left the set.
//!
//! A member is a candidate when its active health checks pass (`health.rs`),
//! it is not ejected, and its control channel (`grants.rs`) is not down and
//! the node did not say it is full. A failed connect ejects it for a
//! back-off that doubles with each consecutive failure (1 s up to 30 s), and
//! a successful connect ends the ejection (passive outlier detection); a
//! full node is skipped without being ejected.
//!
//! Every connection to a node opens with the Grant for the session
//! (PROTOCOL.md §8.3), sealed under the member's grant key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::time::Instant;

use hsmgate_wire::grant::Grant;

use crate::control::config::PoolConfig;
use crate::control::metrics::Metrics;
use crate::upstream::balance::{Balancer, Candidate, Policy};
use crate::upstream::grants::GrantChannel;

/// First ejection after a failed connect; doubles per consecutive failure.
const EJECT_BASE: Duration = Duration::from_secs(1);
/// Longest ejection.
const EJECT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Pool {
    name: String,
    policy: Policy,
    set: ArcSwap<MemberSet>,
    /// Reference point for the members' ejection deadlines.
    epoch: Instant,
}

/// The members of a pool at one moment, with the balancer built over them.
#[derive(Debug)]
pub struct MemberSet {
    pub members: Vec<Arc<Member>>,
    balancer: Balancer,
}

/// One HSM node of a pool and what the gateway knows about it.
#[derive(Debug)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Members start healthy, so that a fresh gateway serves at once; the
    /// health checker takes them out and brings them back.
    healthy: AtomicBool,
    /// Consecutive probe results that disagree with `healthy`.
    streak: AtomicU32,
    /// Sessions forwarded to this member now.
    active: AtomicU64,
    /// Consecutive failed connects.
    failures: AtomicU32,
    /// Not a candidate before this many milliseconds after the pool's epoch.
    ejected_until_ms: AtomicU64,
    /// The control channel to the node and its grant key.
    pub grants: GrantChannel,
}

impl Member {
    fn new(addr: SocketAddr, weight: u32) -> Member {
        Member {
            addr,
            weight,
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            active: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            grants: GrantChannel::default(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Healthy and its control channel not down: it can serve sessions
    /// (when it is not full).
    pub fn is_serving(&self) -> bool {
        self.is_healthy()
            && !matches!(
                self.grants.state(),
                crate::upstream::grants::ChannelState::Down(_)
            )
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
    }

    /// Record one probe; the member changes state after `unhealthy_after`
    /// failures or `healthy_after` successes in a row. Returns the new state
    /// when it changed.
    pub fn observe_probe(
        &self,
        ok: bool,
        unhealthy_after: u32,
        healthy_after: u32,
    ) -> Option<bool> {
        if ok == self.is_healthy() {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok { healthy_after } else { unhealthy_after };
        if streak >= needed {
            self.set_healthy(ok);
            Some(ok)
        } else {
            None
        }
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The health checks saw the node answer again: an ejection for failed
    /// connects (up to 30 s) ends now rather than at its deadline.
    pub fn end_ejection(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
    }
}

/// A session's place in its member's active count; released on drop.
#[derive(Debug)]
pub struct ActiveSession {
    member: Arc<Member>,
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.member.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(config: &PoolConfig) -> Pool {
        let pool = Pool {
            name: config.name.clone(),
            policy: config.policy,
            set: ArcSwap::from_pointee(MemberSet {
                members: Vec::new(),
                balancer: Balancer::new(config.policy, &[]),
            }),
            epoch: Instant::now(),
        };
        let weights = config.weights_or_default();
        let members: Vec<(SocketAddr, u32)> = config.members.iter().copied().zip(weights).collect();
        pool.set_members(&members);
        pool
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The current member set.
    pub fn member_set(&self) -> Arc<MemberSet> {
        self.set.load_full()
    }

    /// The current members.
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.set.load().members.clone()
    }

    /// Replace the member set. Members whose address and weight stay keep
    /// their state. Returns true when the set changed.
    pub fn set_members(&self, wanted: &[(SocketAddr, u32)]) -> bool {
        let current = self.set.load();
        let same = current.members.len() == wanted.len()
            && current
                .members
                .iter()
                .zip(wanted)
                .all(|(m, &(addr, weight))| m.addr == addr && m.weight == weight);
        if same {
            return false;
        }
        let members: Vec<Arc<Member>> = wanted
            .iter()
            .map(|&(addr, weight)| {
                current
                    .members
                    .iter()
                    .find(|m| m.addr == addr && m.weight == weight)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Member::new(addr, weight)))
            })
            .collect();
        let ring: Vec<(SocketAddr, u32)> = members.iter().map(|m| (m.addr, m.weight)).collect();
        self.set.store(Arc::new(MemberSet {
            balancer: Balancer::new(self.policy, &ring),
            members,
        }));
        true
    }

    /// Take over the state (health, ejection, active sessions) of the
    /// members of `previous` (the same pool in the last config generation)
    /// whose address and weight this pool also has, so that a reload does
    /// not put a dead member back in rotation.
    pub fn inherit(&self, previous: &Pool) {
        let current = self.set.load_full();
        let old = previous.set.load();
        let members: Vec<Arc<Member>> = current
            .members
            .iter()
            .map(|m| {
                old.members
                    .iter()
                    .find(|o| o.addr == m.addr && o.weight == m.weight)
                    .cloned()
                    .unwrap_or_else(|| Arc::clone(m))
            })
            .collect();
        let ring: Vec<(SocketAddr, u32)> = members.iter().map(|m| (m.addr, m.weight)).collect();
        self.set.store(Arc::new(MemberSet {
            balancer: Balancer::new(self.policy, &ring),
            members,
        }));
    }

    /// Members passing their health checks with their control channel not
    /// down: what readiness counts.
    pub fn healthy_count(&self) -> usize {
        self.set
            .load()
            .members
            .iter()
            .filter(|m| m.is_serving())
            .count()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_candidate(member: &Member, now_ms: u64) -> bool {
        member.is_healthy()
            && member.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
            && member.grants.admits_sessions()
    }

    /// Whether every member that could serve is only held back by being
    /// full: the answer is then "over limit", not "unavailable".
    fn all_full(&self) -> bool {
        let set = self.set.load();
        let serving: Vec<_> = set.members.iter().filter(|m| m.is_serving()).collect();
        !serving.is_empty() && serving.iter().all(|m| m.grants.is_full())
    }

    /// The members this session should try, in order, and why.
    pub fn choose(&self, client_id: &str) -> (Vec<Arc<Member>>, String) {
        let set = self.set.load();
        let now_ms = self.now_ms();
        let candidates: Vec<Candidate> = set
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| Self::is_candidate(m, now_ms))
            .map(|(index, m)| Candidate {
                index,
                weight: m.weight,
                active: m.active(),
            })
            .collect();
        let choice = set.balancer.choose(&candidates, client_id);
        let order = choice
            .order
            .iter()
            .filter_map(|&i| set.members.get(i).cloned())
            .collect();
        (order, choice.reason)
    }

    fn record_success(member: &Member) {
        member.failures.store(0, Ordering::Relaxed);
        member.ejected_until_ms.store(0, Ordering::Relaxed);
    }

    fn record_failure(&self, member: &Member) -> Duration {
        let failures = member
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let backoff = EJECT_BASE
            .saturating_mul(1 << (failures - 1).min(5))
            .min(EJECT_MAX);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        member.ejected_until_ms.store(until, Ordering::Relaxed);
        backoff
    }
}

/// Every configured pool, by name.
#[derive(Debug, Default)]
pub struct Pools(HashMap<String, Arc<Pool>>);

impl Pools {
    pub fn new(configs: &[PoolConfig]) -> Pools {
        Pools(
            configs
                .iter()
                .map(|c| (c.name.clone(), Arc::new(Pool::new(c))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.0.values()
    }
}

/// Why no HSM node could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no member of pool {pool} answered ({attempts} attempts, last: {last})")]
pub struct ConnectError {
    pub pool: String,
    pub attempts: usize,
    pub last: String,
    /// Every member that could serve said it is full.
    pub full: bool,
}

/// A connected HSM node.
pub struct Connected {
    pub stream: TcpStream,
    /// The Grant frame to write before any client byte; `None` when the
    /// node takes no grants.
    pub preamble: Option<Vec<u8>>,
    pub member: SocketAddr,
    /// Counts the session in the member's active sessions until dropped.
    pub active: ActiveSession,
    pub attempts: usize,
    /// The balancing policy's reason for the first choice.
    pub reason: String,
}

/// Connect to one member of `pool`: the policy's first choice, then up to
/// `retries` others, each attempt bounded by `timeout` and all by `deadline`.
/// Each attempt first gets the member's Grant frame for `grant` (waiting,
/// within the deadline, for a control channel still connecting).
pub async fn connect(
    pool: &Pool,
    grant: &Grant,
    timeout: Duration,
    retries: usize,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<Connected, ConnectError> {
    let (order, reason) = pool.choose(&grant.client_id);
    let mut attempts = 0;
    let mut last = String::from("no healthy member");
    if order.is_empty() && pool.all_full() {
        return Err(ConnectError {
            pool: pool.name().to_owned(),
            attempts,
            last: "every member is full".into(),
            full: true,
        });
    }
    for member in order.into_iter().take(retries + 1) {
        let addr = member.addr;
        let now = Instant::now();
        if now >= deadline {
            last = "session deadline passed".into();
            break;
        }
        attempts += 1;
        let preamble = match member.grants.preamble(grant, deadline).await {
            Ok(p) => p,
            Err(e) => {
                metrics
                    .backend_connect
                    .with_label_values(&[pool.name(), &addr.to_string(), "no_grant"])
                    .inc();
                tracing::debug!(pool = pool.name(), member = %addr, error = %e, "HSM node skipped: no grant");
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let now = Instant::now();
        if now >= deadline {
            last = "session deadline passed".into();
            break;
        }
        let bound = timeout.min(deadline - now);
        let member_label = addr.to_string();
        let result = match tokio::time::timeout(bound, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                metrics
                    .backend_connect
                    .with_label_values(&[pool.name(), &member_label, "ok"])
                    .inc();
                Pool::record_success(&member);
                member.active.fetch_add(1, Ordering::Relaxed);
                return Ok(Connected {
                    stream,
                    preamble,
                    member: addr,
                    active: ActiveSession { member },
                    attempts,
                    reason,
                });
            }
            Ok(Err(e)) => ("error", e.to_string()),
            Err(_) => (
                "timeout",
                format!("no answer within {} ms", bound.as_millis()),
            ),
        };
        metrics
            .backend_connect
            .with_label_values(&[pool.name(), &member_label, result.0])
            .inc();
        let ejected = pool.record_failure(&member);
        tracing::warn!(
            pool = pool.name(),
            member = %addr,
            reason = %result.1,
            ejected_ms = u64::try_from(ejected.as_millis()).unwrap_or(u64::MAX),
            "HSM node connect failed; member ejected"
        );
        last = format!("{addr}: {}", result.1);
    }
    Err(ConnectError {
        pool: pool.name().to_owned(),
        attempts,
        last,
        full: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(members: &[&str]) -> Arc<Pool> {
        Arc::new(Pool::new(&PoolConfig {
            name: "p".into(),
            members: members.iter().map(|m| m.parse().expect("addr")).collect(),
            ..PoolConfig::default()
        }))
    }

    fn ports(p: &Pool) -> Vec<u16> {
        p.choose("client").0.iter().map(|m| m.addr.port()).collect()
    }

    fn grant() -> Grant {
        Grant {
            session_id: [0; 16],
            expires_at: 0,
            source: "127.0.0.1:1".parse().expect("addr"),
            client_key: hsmgate_wire::PublicKey([0; 32]),
            gateway_id: "gw".into(),
            client_id: "client".into(),
            tenant: "t".into(),
            partition: "p".into(),
        }
    }

    /// These members are plain TCP listeners: no control channel.
    fn plain_tcp_members(p: &Pool) {
        for m in p.members() {
            m.grants
                .set(crate::upstream::grants::ChannelState::NoGrants);
        }
    }

    #[test]
    fn a_full_member_is_skipped_without_ejection_and_all_full_is_over_limit() {
        use crate::upstream::grants::ChannelState;
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        let key = || std::sync::Arc::new(crate::upstream::grants::SealingKey::for_tests());
        p.members()[0].grants.set(ChannelState::Up {
            key: key(),
            accepting: false,
        });
        p.members()[1].grants.set(ChannelState::Up {
            key: key(),
            accepting: true,
        });
        for _ in 0..4 {
            assert_eq!(ports(&p), [2]);
        }
        assert!(!p.all_full());
        p.members()[1].grants.set(ChannelState::Up {
            key: key(),
            accepting: false,
        });
        assert!(ports(&p).is_empty());
        assert!(p.all_full());
        assert_eq!(p.healthy_count(), 2, "full members are up, not failed");
        p.members()[1].grants.set(ChannelState::Down("gone".into()));
        assert!(p.all_full(), "the one serving member is full");
        assert_eq!(p.healthy_count(), 1);
    }

    #[test]
    fn round_robin_rotates_the_first_choice() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let firsts: Vec<u16> = (0..6).map(|_| ports(&p)[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        assert_eq!(ports(&p).len(), 3, "every candidate is in the order");
    }

    #[test]
    fn unhealthy_members_are_not_picked() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        p.members()[1].set_healthy(false);
        for _ in 0..6 {
            assert!(ports(&p).iter().all(|&port| port != 2));
        }
        assert_eq!(p.healthy_count(), 2);
        for m in p.members() {
            m.set_healthy(false);
        }
        assert!(ports(&p).is_empty());
        p.members()[1].set_healthy(true);
        assert_eq!(ports(&p), [2]);
    }

    #[test]
    fn a_failed_connect_ejects_with_growing_back_off_and_success_ends_it() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        let first = Arc::clone(&p.members()[0]);
        assert_eq!(p.record_failure(&first), Duration::from_secs(1));
        assert!(ports(&p).iter().all(|&port| port != 1), "ejected");
        assert_eq!(p.record_failure(&first), Duration::from_secs(2));
        assert_eq!(p.record_failure(&first), Duration::from_secs(4));
        for _ in 0..10 {
            p.record_failure(&first);
        }
        assert_eq!(p.record_failure(&first), EJECT_MAX, "capped");
        Pool::record_success(&first);
        assert!(ports(&p).contains(&1), "back in rotation");
    }

    #[test]
    fn a_node_healthy_again_ends_its_ejection_at_once() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        let first = Arc::clone(&p.members()[0]);
        for _ in 0..5 {
            p.record_failure(&first);
        }
        assert!(ports(&p).iter().all(|&port| port != 1), "ejected for 16 s");
        first.end_ejection();
        assert!(ports(&p).contains(&1), "back in rotation");
        assert_eq!(
            p.record_failure(&first),
            Duration::from_secs(1),
            "back-off reset"
        );
    }

    #[test]
    fn least_connections_follows_active_sessions() {
        let p = Arc::new(Pool::new(&PoolConfig {
            name: "p".into(),
            members: vec![
                "127.0.0.1:1".parse().expect("a"),
                "127.0.0.1:2".parse().expect("a"),
            ],
            policy: Policy::LeastConnections,
            ..PoolConfig::default()
        }));
        p.members()[0].active.store(3, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(ports(&p)[0], 2);
        }
        let guard = ActiveSession {
            member: Arc::clone(&p.members()[1]),
        };
        p.members()[1].active.store(5, Ordering::Relaxed);
        assert_eq!(ports(&p)[0], 1);
        drop(guard);
        assert_eq!(p.members()[1].active(), 4, "released on drop");
    }

    #[test]
    fn a_new_member_set_keeps_the_state_of_members_that_stay() {
        let p = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        p.members()[1].set_healthy(false);
        let kept = Arc::clone(&p.members()[1]);
        let changed = p.set_members(&[
            ("127.0.0.1:2".parse().expect("a"), 1),
            ("127.0.0.1:3".parse().expect("a"), 1),
        ]);
        assert!(changed);
        let now = p.members();
        assert!(Arc::ptr_eq(&now[0], &kept), "same member object");
        assert!(!now[0].is_healthy(), "its state stayed");
        assert!(now[1].is_healthy(), "a new member starts healthy");
        assert_eq!(ports(&p), [3]);
        assert!(
            !p.set_members(&[
                ("127.0.0.1:2".parse().expect("a"), 1),
                ("127.0.0.1:3".parse().expect("a"), 1),
            ]),
            "no change"
        );
    }

    #[test]
    fn probes_change_state_only_after_a_streak() {
        let m = Member::new("127.0.0.1:1".parse().expect("a"), 1);
        assert_eq!(m.observe_probe(false, 2, 3), None);
        assert_eq!(
            m.observe_probe(true, 2, 3),
            None,
            "a success resets the streak"
        );
        assert_eq!(m.observe_probe(false, 2, 3), None);
        assert_eq!(m.observe_probe(false, 2, 3), Some(false));
        assert_eq!(m.observe_probe(true, 2, 3), None);
        assert_eq!(m.observe_probe(true, 2, 3), None);
        assert_eq!(m.observe_probe(true, 2, 3), Some(true));
    }

    #[test]
    fn a_reloaded_pool_keeps_the_state_of_members_that_stay() {
        let old = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        old.members()[0].set_healthy(false);
        let new = pool(&["127.0.0.1:1", "127.0.0.1:3"]);
        new.inherit(&old);
        let members = new.members();
        assert!(Arc::ptr_eq(&members[0], &old.members()[0]), "same member");
        assert!(!members[0].is_healthy(), "still out of rotation");
        assert!(members[1].is_healthy(), "a new member starts healthy");
        assert_eq!(ports(&new), [3]);
    }

    #[tokio::test]
    async fn connect_skips_a_dead_member() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        // A port that was just free: nothing listens there.
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let p = Arc::new(Pool::new(&PoolConfig {
            name: "p".into(),
            members: vec![dead_addr, live_addr],
            ..PoolConfig::default()
        }));
        let metrics = Metrics::new().expect("metrics");
        plain_tcp_members(&p);
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = connect(&p, &grant(), Duration::from_secs(1), 2, deadline, &metrics)
            .await
            .expect("live member reached");
        assert_eq!(c.member, live_addr);
        assert_eq!(c.attempts, 2);
        assert_eq!(p.members()[1].active(), 1, "the session counts as active");
        drop(c);
        assert_eq!(p.members()[1].active(), 0);
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "member=\"{dead_addr}\",pool=\"p\",result=\"error\"}} 1"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn connect_gives_up_after_the_retry_budget() {
        let dead: Vec<SocketAddr> = (0..3)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr")
            })
            .collect();
        let p = Arc::new(Pool::new(&PoolConfig {
            name: "p".into(),
            members: dead,
            ..PoolConfig::default()
        }));
        let metrics = Metrics::new().expect("metrics");
        plain_tcp_members(&p);
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = connect(&p, &grant(), Duration::from_secs(1), 1, deadline, &metrics)
            .await
            .err()
            .expect("nothing listens");
        assert_eq!(e.attempts, 2);
    }
}
