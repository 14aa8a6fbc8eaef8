//! Load balancing over the members of an HSM pool: which member a new session
//! tries first, which ones it falls back to when a connect fails before any
//! byte was forwarded, and why, for the session's log line.
//!
//! This sits inside `pool` in the data flow: the pool knows its members and
//! their health, and hands the healthy ones to [`Balancer::choose`] as
//! [`Candidate`]s (member index, weight, active sessions). The answer is a
//! [`Choice`]: every candidate exactly once, in the order to try them, and a
//! short reason. Nothing here does I/O, reads a clock or uses per-process
//! randomness, so a choice depends only on its inputs and the balancer's two
//! counters, and the tests below can assert exact outcomes.
//!
//! Policies (config spelling in brackets):
//!
//! - round robin (`round_robin`): interleaved weighted round robin. Over any
//!   `W` consecutive picks (`W` the sum of the weights) each member gets
//!   exactly its weight's worth, spread out rather than in bursts: weights
//!   1, 2, 3 give `A B C B C C`.
//! - least connections (`least_connections`): lowest `active / weight`; ties
//!   take turns.
//! - power of two choices (`power_of_two`): two distinct members drawn at
//!   random, the lower `active / weight` wins. Cheaper than a full scan and it
//!   does not stampede onto one member the way least connections can when
//!   many sessions start at once.
//! - consistent hashing on the client id (`consistent_hash`): keeps a client
//!   on one HSM. The ring holds every configured member, healthy or not, so a
//!   member leaving the healthy set moves only its own clients, and every
//!   gateway instance (and every release) maps a client to the same member.
//!
//! Weights: `1..=`[`MAX_WEIGHT`] share sessions in proportion. Weight `0`
//! drains a member: it is never chosen while any member with a positive
//! weight is healthy, and only tried as a last resort. Running sessions are
//! not touched; this is how an operator empties an HSM without a cut.
//! Config validation calls [`validate_weight`] and [`validate_pool_weights`].

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The weight of a member whose config does not say.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The largest weight a member may have. It bounds the ring: at most
/// `MAX_WEIGHT * POINTS_PER_WEIGHT` points per member.
pub const MAX_WEIGHT: u32 = 100;

/// Ring points per unit of weight. Enough that a member's share of clients is
/// within a few percent of its weight's share.
pub const POINTS_PER_WEIGHT: u32 = 100;

/// The seed of [`Balancer::new`]'s generator for power of two choices.
/// [`Balancer::with_seed`] takes another one, e.g. derived from the gateway
/// id, so that instances draw different pairs.
pub const DEFAULT_SEED: u64 = 0x6873_6d67_6174_6531; // "hsmgate1"

/// How a pool spreads new sessions over its healthy members.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    RoundRobin,
    LeastConnections,
    PowerOfTwo,
    ConsistentHash,
}

impl Policy {
    /// The config spelling, also used in log reasons and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConnections => "least_connections",
            Policy::PowerOfTwo => "power_of_two",
            Policy::ConsistentHash => "consistent_hash",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One healthy member, as the pool sees it when a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The member's position in the list given to [`Balancer::new`]. The
    /// candidates of one call have distinct indexes.
    pub index: usize,
    /// Its current weight; `0` means draining. Consistent hashing takes the
    /// shares from the ring built at [`Balancer::new`] and uses this only to
    /// see whether the member drains.
    pub weight: u32,
    /// Sessions this gateway currently forwards to it.
    pub active: u64,
}

/// The members to try, in order, and why the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Member indexes: the first choice, then the fallbacks to try on a
    /// connect failure. Every candidate appears exactly once; empty when
    /// there were no candidates.
    pub order: Vec<usize>,
    /// For the session's log line, e.g. `round_robin slot 7 of 12`. Never
    /// contains the client id.
    pub reason: String,
}

impl Choice {
    /// The member to try first, if any.
    pub fn first(&self) -> Option<usize> {
        self.order.first().copied()
    }
}

/// Checks one member's configured weight; the message fits a config problem
/// reported under the weight's field path.
pub fn validate_weight(weight: u32) -> Result<(), &'static str> {
    if weight > MAX_WEIGHT {
        return Err("must be 0..=100 (0 drains the member)");
    }
    Ok(())
}

/// Checks a pool's weights together: a pool whose members all drain would
/// take new sessions only as a last resort, which is a config mistake.
pub fn validate_pool_weights(weights: &[u32]) -> Result<(), &'static str> {
    if !weights.is_empty() && weights.iter().all(|&w| w == 0) {
        return Err("at least one member needs a weight above 0");
    }
    Ok(())
}

/// A pool's balancing policy and its state. Shared by every session of the
/// pool; `choose` takes `&self`.
pub struct Balancer {
    policy: Policy,
    /// Round-robin position, and the turn among least-connection ties.
    turn: AtomicU64,
    /// SplitMix64 state for power of two choices.
    rng: AtomicU64,
    ring: Ring,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("members", &self.ring.members)
            .field("ring_points", &self.ring.points.len())
            .finish_non_exhaustive()
    }
}

impl Balancer {
    /// A balancer for a pool with these members (address, configured weight),
    /// in config order; [`Candidate::index`] refers to this list.
    pub fn new(policy: Policy, members: &[(SocketAddr, u32)]) -> Balancer {
        Balancer::with_seed(policy, members, DEFAULT_SEED)
    }

    /// Like [`Balancer::new`], with the seed of the power-of-two generator.
    pub fn with_seed(policy: Policy, members: &[(SocketAddr, u32)], seed: u64) -> Balancer {
        let ring = if policy == Policy::ConsistentHash {
            Ring::build(members)
        } else {
            Ring::empty(members.len())
        };
        Balancer {
            policy,
            turn: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
            ring,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The order in which this session should try `candidates` (the healthy
    /// members). `client_id` matters only to consistent hashing.
    pub fn choose(&self, candidates: &[Candidate], client_id: &str) -> Choice {
        if candidates.is_empty() {
            return Choice {
                order: Vec::new(),
                reason: format!("{} no healthy member", self.policy),
            };
        }
        if self.policy == Policy::ConsistentHash {
            return self.consistent_hash(candidates, client_id);
        }
        let (serving, draining): (Vec<Candidate>, Vec<Candidate>) =
            candidates.iter().partition(|c| c.weight > 0);
        let mut choice = if serving.is_empty() {
            Choice {
                order: Vec::new(),
                reason: format!("{} only draining members (weight 0)", self.policy),
            }
        } else {
            match self.policy {
                Policy::RoundRobin => self.round_robin(&serving),
                Policy::LeastConnections => self.least_connections(serving),
                Policy::PowerOfTwo | Policy::ConsistentHash => self.power_of_two(&serving),
            }
        };
        // Last resorts: the least busy draining member first.
        let mut draining = draining;
        draining.sort_by_key(|c| c.active);
        choice.order.extend(draining.iter().map(|c| c.index));
        choice
    }

    fn round_robin(&self, serving: &[Candidate]) -> Choice {
        let total: u64 = serving.iter().map(|c| u64::from(c.weight)).sum();
        let slot = self.turn.fetch_add(1, Ordering::Relaxed) % total;
        let first = weighted_slot(serving, slot);
        // Fallbacks continue around the list, so that the retries of a
        // failing member spread over the others instead of all landing on one.
        let n = serving.len();
        Choice {
            order: (0..n).map(|k| serving[(first + k) % n].index).collect(),
            reason: format!("round_robin slot {slot} of {total}"),
        }
    }

    fn least_connections(&self, mut serving: Vec<Candidate>) -> Choice {
        // Stable: equal loads keep the caller's order before taking turns.
        serving.sort_by(cmp_load);
        let ties = serving
            .iter()
            .take_while(|c| cmp_load(c, &serving[0]) == CmpOrdering::Equal)
            .count();
        let mut reason = format!(
            "least_connections active={} weight={}",
            serving[0].active, serving[0].weight
        );
        if ties > 1 {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % ties as u64;
            serving[..ties].rotate_left(turn as usize);
            reason.push_str(&format!(" (tie of {ties}, turn {turn})"));
        }
        Choice {
            order: serving.iter().map(|c| c.index).collect(),
            reason,
        }
    }

    fn power_of_two(&self, serving: &[Candidate]) -> Choice {
        let n = serving.len();
        if n == 1 {
            return Choice {
                order: vec![serving[0].index],
                reason: format!(
                    "power_of_two single member active={} weight={}",
                    serving[0].active, serving[0].weight
                ),
            };
        }
        let r = self.next_random();
        // Two distinct positions from the two halves of one draw
        // (multiply-shift instead of modulo: no bias worth the name).
        let a = below(r >> 32, n);
        let mut b = below(r & 0xffff_ffff, n - 1);
        if b >= a {
            b += 1;
        }
        // Equal loads go to `a`, itself a random pick.
        let (win, lose) = if cmp_load(&serving[b], &serving[a]) == CmpOrdering::Less {
            (b, a)
        } else {
            (a, b)
        };
        let reason = format!(
            "power_of_two active={} weight={} vs active={} weight={}",
            serving[win].active, serving[win].weight, serving[lose].active, serving[lose].weight
        );
        // Fallbacks are rare (connect failures): the least loaded of the rest.
        let mut rest: Vec<Candidate> = serving
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != win)
            .map(|(_, c)| *c)
            .collect();
        rest.sort_by(cmp_load);
        let mut order = Vec::with_capacity(n);
        order.push(serving[win].index);
        order.extend(rest.iter().map(|c| c.index));
        Choice { order, reason }
    }

    fn consistent_hash(&self, candidates: &[Candidate], client_id: &str) -> Choice {
        let ring = &self.ring;
        let key = key_point(client_id);
        // Candidate position of each member index that has points on the ring.
        let mut position: Vec<Option<usize>> = vec![None; ring.members];
        let mut on_ring = 0;
        for (p, c) in candidates.iter().enumerate() {
            if c.index < ring.members && ring.has_points[c.index] && position[c.index].is_none() {
                position[c.index] = Some(p);
                on_ring += 1;
            }
        }
        // Walk clockwise from the key: each candidate at its first point.
        let mut found: Vec<Option<(usize, u64)>> = vec![None; candidates.len()];
        let mut walk = Vec::with_capacity(candidates.len());
        let start = ring.points.partition_point(|&(point, _)| point < key);
        for step in 0..ring.points.len() {
            if walk.len() == on_ring {
                break;
            }
            let (point, member) = ring.points[(start + step) % ring.points.len()];
            if let Some(p) = position[member]
                && found[p].is_none()
            {
                found[p] = Some((step, point));
                walk.push(p);
            }
        }
        // Candidates the ring does not know (no configured weight, or an
        // index past the member list) come after, in the caller's order.
        walk.extend((0..candidates.len()).filter(|&p| found[p].is_none()));
        // Draining members only as a last resort, in ring order among themselves.
        let (mut order, draining): (Vec<usize>, Vec<usize>) =
            walk.iter().partition(|&&p| candidates[p].weight > 0);
        let only_draining = order.is_empty();
        order.extend(draining);

        let first = order[0];
        let mut reason = match found[first] {
            Some((step, point)) => {
                let passed = ring.distinct_members(start, step);
                let mut reason = format!("consistent_hash key={key:016x} point={point:016x}");
                if passed > 0 {
                    reason.push_str(&format!(" passed {passed} unavailable"));
                }
                reason
            }
            None => "consistent_hash no ring point for the healthy members".to_owned(),
        };
        if only_draining {
            reason.push_str(" only draining members (weight 0)");
        }
        Choice {
            order: order.iter().map(|&p| candidates[p].index).collect(),
            reason,
        }
    }

    /// SplitMix64: one `fetch_add` per draw, so concurrent sessions never get
    /// the same number and no lock is needed.
    fn next_random(&self) -> u64 {
        const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut z = self
            .rng
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `a.active / a.weight` against `b.active / b.weight`, exactly, for
/// positive weights.
fn cmp_load(a: &Candidate, b: &Candidate) -> CmpOrdering {
    let left = u128::from(a.active) * u128::from(b.weight);
    let right = u128::from(b.active) * u128::from(a.weight);
    left.cmp(&right)
}

/// `x` (32 bits) scaled onto `0..n`.
fn below(x: u64, n: usize) -> usize {
    ((x * n as u64) >> 32) as usize
}

/// The position in `serving` that owns `slot` of the interleaved weighted
/// round-robin cycle: in round `r` every member whose weight exceeds `r`
/// gets one slot, in list order. Computed from the sorted weights in
/// `O(n log n)` without walking the cycle.
fn weighted_slot(serving: &[Candidate], slot: u64) -> usize {
    let mut weights: Vec<u64> = serving.iter().map(|c| u64::from(c.weight)).collect();
    weights.sort_unstable();
    let mut slot = slot;
    let mut below_band = 0;
    for (j, &w) in weights.iter().enumerate() {
        if w == below_band {
            continue;
        }
        // Rounds below_band..w: the members with weight >= w take part.
        let taking_part = (weights.len() - j) as u64;
        let band = (w - below_band) * taking_part;
        if slot < band {
            let round = below_band + slot / taking_part;
            let nth = (slot % taking_part) as usize;
            return serving
                .iter()
                .enumerate()
                .filter(|(_, c)| u64::from(c.weight) > round)
                .nth(nth)
                .map_or(0, |(i, _)| i);
        }
        slot -= band;
        below_band = w;
    }
    debug_assert!(false, "slot past the weighted cycle");
    0
}

/// The consistent-hashing ring: `POINTS_PER_WEIGHT * weight` points per
/// configured member, sorted.
///
/// The hash is fixed so that every gateway instance, on any platform and in
/// any release, agrees (std's `DefaultHasher` promises neither):
/// `h(s) = fmix64(fnv1a64(s))`, fmix64 being MurmurHash3's 64-bit finalizer.
/// A member's point `v` is `h("{addr}#{v}")` with the address as Rust prints
/// a `SocketAddr` (`10.0.0.1:9000`, `[2001:db8::1]:9000`); a client's key is
/// `h(client_id)`. Points depend on the address, not the list position, so
/// reordering the members moves nobody, and raising a weight only adds
/// points.
struct Ring {
    points: Vec<(u64, usize)>,
    has_points: Vec<bool>,
    members: usize,
}

impl Ring {
    fn empty(members: usize) -> Ring {
        Ring {
            points: Vec::new(),
            has_points: vec![false; members],
            members,
        }
    }

    fn build(members: &[(SocketAddr, u32)]) -> Ring {
        let mut points = Vec::new();
        let mut has_points = Vec::with_capacity(members.len());
        for (index, &(addr, weight)) in members.iter().enumerate() {
            // Unvalidated weights are clamped: the ring stays bounded.
            let count = weight.min(MAX_WEIGHT) * POINTS_PER_WEIGHT;
            has_points.push(count > 0);
            for v in 0..count {
                points.push((stable_hash(format!("{addr}#{v}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            has_points,
            members: members.len(),
        }
    }

    /// How many distinct members own the `steps` points clockwise from `start`.
    fn distinct_members(&self, start: usize, steps: usize) -> usize {
        let mut seen = vec![false; self.members];
        let mut distinct = 0;
        for step in 0..steps {
            let member = self.points[(start + step) % self.points.len()].1;
            if !seen[member] {
                seen[member] = true;
                distinct += 1;
            }
        }
        distinct
    }
}

fn key_point(client_id: &str) -> u64 {
    stable_hash(client_id.as_bytes())
}

fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// FNV-1a alone spreads keys that differ in their last bytes (`client-1`,
/// `client-2`) poorly over the high bits; the finalizer fixes that.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::LeastConnections,
        Policy::PowerOfTwo,
        Policy::ConsistentHash,
    ];

    fn members(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 9000)), w))
            .collect()
    }

    /// Every member, healthy, with its configured weight and no sessions.
    fn all(members: &[(SocketAddr, u32)]) -> Vec<Candidate> {
        members
            .iter()
            .enumerate()
            .map(|(index, &(_, weight))| Candidate {
                index,
                weight,
                active: 0,
            })
            .collect()
    }

    fn loaded(loads: &[(u32, u64)]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(index, &(weight, active))| Candidate {
                index,
                weight,
                active,
            })
            .collect()
    }

    fn first(b: &Balancer, candidates: &[Candidate], client: &str) -> usize {
        b.choose(candidates, client).first().expect("a member")
    }

    fn counts(b: &Balancer, candidates: &[Candidate], picks: usize, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for i in 0..picks {
            counts[first(b, candidates, &format!("client-{i}"))] += 1;
        }
        counts
    }

    #[test]
    fn policy_names_match_the_config_spelling() {
        #[derive(serde::Deserialize)]
        struct Pool {
            policy: Policy,
        }
        for p in ALL {
            let parsed: Pool = toml::from_str(&format!("policy = \"{p}\"")).expect("parses");
            assert_eq!(parsed.policy, p);
        }
        assert_eq!(Policy::PowerOfTwo.as_str(), "power_of_two");
        assert_eq!(Policy::default(), Policy::RoundRobin);
        assert!(toml::from_str::<Pool>("policy = \"random\"").is_err());
    }

    #[test]
    fn weights_are_0_to_max_and_a_pool_needs_one_serving_member() {
        assert!(validate_weight(0).is_ok());
        assert!(validate_weight(MAX_WEIGHT).is_ok());
        let message = validate_weight(MAX_WEIGHT + 1).expect_err("too heavy");
        assert!(message.contains(&format!("0..={MAX_WEIGHT}")), "{message}");
        assert!(validate_pool_weights(&[0, 1]).is_ok());
        assert!(
            validate_pool_weights(&[]).is_ok(),
            "an empty pool is reported elsewhere"
        );
        assert!(validate_pool_weights(&[0, 0]).is_err());
    }

    #[test]
    fn no_candidates_give_an_empty_order() {
        for p in ALL {
            let b = Balancer::new(p, &members(&[1, 1, 1]));
            let choice = b.choose(&[], "client");
            assert!(choice.order.is_empty(), "{p}");
            assert_eq!(choice.first(), None);
            assert_eq!(choice.reason, format!("{p} no healthy member"));
        }
    }

    #[test]
    fn every_policy_orders_each_candidate_exactly_once() {
        let config = members(&[1, 2, 0, 3, 1]);
        let subsets: [&[usize]; 5] = [&[0], &[2], &[0, 2], &[1, 3, 4], &[0, 1, 2, 3, 4]];
        for p in ALL {
            let b = Balancer::new(p, &config);
            for subset in subsets {
                for call in 0..20u64 {
                    let candidates: Vec<Candidate> = subset
                        .iter()
                        .map(|&index| Candidate {
                            index,
                            weight: config[index].1,
                            active: (call * 7 + index as u64 * 3) % 5,
                        })
                        .collect();
                    let mut order = b.choose(&candidates, &format!("c{call}")).order;
                    order.sort_unstable();
                    assert_eq!(order, subset, "{p}");
                }
            }
        }
    }

    #[test]
    fn round_robin_spreads_equal_weights_exactly_evenly() {
        let config = members(&[1, 1, 1, 1]);
        let b = Balancer::new(Policy::RoundRobin, &config);
        let candidates = all(&config);
        assert_eq!(counts(&b, &candidates, 400, 4), [100, 100, 100, 100]);
        let firsts: Vec<usize> = (0..5).map(|_| first(&b, &candidates, "c")).collect();
        assert_eq!(firsts, [0, 1, 2, 3, 0]);
    }

    #[test]
    fn round_robin_follows_weights_1_2_3_exactly_and_interleaved() {
        let config = members(&[1, 2, 3]);
        let b = Balancer::new(Policy::RoundRobin, &config);
        let candidates = all(&config);
        let cycle: Vec<usize> = (0..6).map(|_| first(&b, &candidates, "c")).collect();
        assert_eq!(cycle, [0, 1, 2, 1, 2, 2]);
        // 6000 more picks: whole cycles, so exactly 1:2:3.
        assert_eq!(counts(&b, &candidates, 6000, 3), [1000, 2000, 3000]);
        let reason = b.choose(&candidates, "c").reason;
        assert_eq!(reason, "round_robin slot 0 of 6");
    }

    #[test]
    fn round_robin_fallbacks_continue_around_the_list() {
        let config = members(&[1, 1, 1]);
        let b = Balancer::new(Policy::RoundRobin, &config);
        let candidates = all(&config);
        assert_eq!(b.choose(&candidates, "c").order, [0, 1, 2]);
        assert_eq!(b.choose(&candidates, "c").order, [1, 2, 0]);
        assert_eq!(b.choose(&candidates, "c").order, [2, 0, 1]);
        // Member 1 unhealthy: the other two alternate, each falling back
        // on the other.
        let healthy = [candidates[0], candidates[2]];
        let one = b.choose(&healthy, "c").order;
        let two = b.choose(&healthy, "c").order;
        assert_eq!(one.len(), 2);
        assert_eq!(two, [one[1], one[0]]);
    }

    #[test]
    fn least_connections_picks_the_lowest_load_per_weight() {
        let b = Balancer::new(Policy::LeastConnections, &members(&[1, 1, 1, 1]));
        let choice = b.choose(&loaded(&[(1, 5), (1, 2), (1, 9), (1, 3)]), "c");
        assert_eq!(choice.order, [1, 3, 0, 2]);
        assert_eq!(choice.reason, "least_connections active=2 weight=1");
        // 6 sessions on weight 4 (1.5 each) beat 2 on weight 1.
        let choice = b.choose(&loaded(&[(1, 2), (4, 6)]), "c");
        assert_eq!(choice.order, [1, 0]);
    }

    #[test]
    fn least_connections_ties_take_turns() {
        let b = Balancer::new(Policy::LeastConnections, &members(&[1, 1, 1]));
        // Members 0 and 2 tie at 1 session; member 1 is busier.
        let candidates = loaded(&[(1, 1), (1, 4), (1, 1)]);
        let firsts: Vec<usize> = (0..4).map(|_| first(&b, &candidates, "c")).collect();
        assert_eq!(firsts, [0, 2, 0, 2]);
        let choice = b.choose(&candidates, "c");
        assert_eq!(choice.order, [0, 2, 1]);
        assert_eq!(
            choice.reason,
            "least_connections active=1 weight=1 (tie of 2, turn 0)"
        );
        // A 2:1 tie by weight counts too: 2/2 == 1/1.
        let candidates = loaded(&[(2, 2), (1, 1), (1, 3)]);
        let firsts: Vec<usize> = (0..4).map(|_| first(&b, &candidates, "c")).collect();
        assert_eq!(firsts.iter().filter(|&&f| f == 0).count(), 2);
        assert_eq!(firsts.iter().filter(|&&f| f == 1).count(), 2);
    }

    #[test]
    fn power_of_two_never_picks_the_busier_of_two() {
        let b = Balancer::new(Policy::PowerOfTwo, &members(&[1, 1]));
        for _ in 0..1000 {
            let choice = b.choose(&loaded(&[(1, 5), (1, 3)]), "c");
            assert_eq!(choice.order, [1, 0]);
            assert_eq!(
                choice.reason,
                "power_of_two active=3 weight=1 vs active=5 weight=1"
            );
            // By load per weight: 5/2 < 3/1.
            assert_eq!(first(&b, &loaded(&[(2, 5), (1, 3)]), "c"), 0);
        }
    }

    #[test]
    fn power_of_two_never_picks_the_busiest_of_many() {
        let b = Balancer::new(Policy::PowerOfTwo, &members(&[1, 1, 1, 1, 1]));
        let candidates = loaded(&[(1, 4), (1, 2), (1, 9), (1, 0), (1, 7)]);
        for _ in 0..2000 {
            let order = b.choose(&candidates, "c").order;
            assert_ne!(order[0], 2);
            // Fallbacks: the rest by load.
            let rest: Vec<usize> = [3, 1, 0, 4, 2]
                .into_iter()
                .filter(|&i| i != order[0])
                .collect();
            assert_eq!(order[1..], rest[..]);
        }
    }

    #[test]
    fn power_of_two_shares_follow_the_pair_odds() {
        // Fixed loads 0 < 10 < 20 < 30: a member wins every pair with a
        // busier one, so the shares are 3/6, 2/6, 1/6, 0 of the 6 pairs.
        let b = Balancer::with_seed(Policy::PowerOfTwo, &members(&[1, 1, 1, 1]), 7);
        let candidates = loaded(&[(1, 0), (1, 10), (1, 20), (1, 30)]);
        let got = counts(&b, &candidates, 6000, 4);
        assert_eq!(got[3], 0);
        for (count, expected) in got.iter().zip([3000, 2000, 1000]) {
            assert!(count.abs_diff(expected) < 200, "{got:?}");
        }
    }

    #[test]
    fn power_of_two_keeps_load_per_weight_even() {
        // Sessions pile up (none ends): the actives follow the weights.
        let config = members(&[1, 1, 2, 4]);
        let b = Balancer::with_seed(Policy::PowerOfTwo, &config, 42);
        let mut candidates = all(&config);
        for _ in 0..800 {
            let chosen = first(&b, &candidates, "c");
            candidates[chosen].active += 1;
        }
        for c in &candidates {
            let per_weight = c.active as f64 / f64::from(c.weight);
            assert!((per_weight - 100.0).abs() <= 5.0, "{candidates:?}");
        }
    }

    #[test]
    fn power_of_two_draws_are_reproducible_from_the_seed() {
        let config = members(&[1, 1, 1, 1, 1, 1]);
        let candidates = all(&config);
        let run = |seed| {
            let b = Balancer::with_seed(Policy::PowerOfTwo, &config, seed);
            (0..50)
                .map(|_| first(&b, &candidates, "c"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn consistent_hash_keeps_a_client_on_one_member() {
        let config = members(&[1, 1, 1, 1, 1]);
        let candidates = all(&config);
        let one = Balancer::new(Policy::ConsistentHash, &config);
        // Another instance, e.g. another gateway process.
        let other = Balancer::with_seed(Policy::ConsistentHash, &config, 99);
        for i in 0..200 {
            let client = format!("tenant-a/client-{i}");
            let choice = one.choose(&candidates, &client);
            assert_eq!(one.choose(&candidates, &client), choice);
            assert_eq!(other.choose(&candidates, &client), choice);
            assert!(!choice.reason.contains(&client));
        }
    }

    #[test]
    fn consistent_hash_is_pinned_across_releases() {
        // FNV-1a 64 reference vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // A change here remaps clients on every upgraded gateway while old
        // ones still run: do it only on purpose.
        let config = members(&[1, 1, 1, 1, 1]);
        let b = Balancer::new(Policy::ConsistentHash, &config);
        let firsts: Vec<usize> = ["alice", "bob", "carol", "dave", "erin", "frank"]
            .iter()
            .map(|c| first(&b, &all(&config), c))
            .collect();
        assert_eq!(firsts, PINNED);
    }

    const PINNED: [usize; 6] = [2, 0, 3, 2, 1, 1];

    #[test]
    fn consistent_hash_depends_on_addresses_not_list_order() {
        let config = members(&[1, 2, 1, 3]);
        let mut reversed = config.clone();
        reversed.reverse();
        let b = Balancer::new(Policy::ConsistentHash, &config);
        let r = Balancer::new(Policy::ConsistentHash, &reversed);
        for i in 0..500 {
            let client = format!("client-{i}");
            let a = first(&b, &all(&config), &client);
            let z = first(&r, &all(&reversed), &client);
            assert_eq!(config[a].0, reversed[z].0, "{client}");
        }
    }

    #[test]
    fn consistent_hash_moves_only_the_clients_of_a_missing_member() {
        let config = members(&[1, 1, 1, 1, 1]);
        let b = Balancer::new(Policy::ConsistentHash, &config);
        let everyone = all(&config);
        let without_2: Vec<Candidate> = everyone.iter().copied().filter(|c| c.index != 2).collect();
        let mut moved = 0;
        for i in 0..1000 {
            let client = format!("client-{i}");
            let before = b.choose(&everyone, &client).order;
            let after = b.choose(&without_2, &client).order;
            if before[0] == 2 {
                moved += 1;
                // To the next distinct member on the ring: its fallback.
                assert_eq!(after[0], before[1], "{client}");
            } else {
                assert_eq!(after[0], before[0], "{client}");
            }
            let expected: Vec<usize> = before.iter().copied().filter(|&m| m != 2).collect();
            assert_eq!(after, expected, "{client}");
        }
        // Member 2 had about a fifth of the clients.
        assert!((150..=250).contains(&moved), "{moved}");
    }

    #[test]
    fn consistent_hash_adding_a_member_takes_clients_only_for_it() {
        let four = members(&[1, 1, 1, 1]);
        let five = members(&[1, 1, 1, 1, 1]);
        let before = Balancer::new(Policy::ConsistentHash, &four);
        let after = Balancer::new(Policy::ConsistentHash, &five);
        let mut taken = 0;
        for i in 0..1000 {
            let client = format!("client-{i}");
            let was = first(&before, &all(&four), &client);
            let now = first(&after, &all(&five), &client);
            if now == 4 {
                taken += 1;
            } else {
                assert_eq!(now, was, "{client}");
            }
        }
        assert!((150..=250).contains(&taken), "{taken}");
    }

    #[test]
    fn consistent_hash_shares_follow_the_weights() {
        let config = members(&[1, 2, 1]);
        let b = Balancer::new(Policy::ConsistentHash, &config);
        let got = counts(&b, &all(&config), 10_000, 3);
        for light in [got[0], got[2]] {
            let ratio = got[1] as f64 / light as f64;
            assert!((1.7..=2.3).contains(&ratio), "{got:?}");
        }
    }

    #[test]
    fn consistent_hash_reason_names_the_point_and_skipped_members() {
        let config = members(&[1, 1, 1]);
        let b = Balancer::new(Policy::ConsistentHash, &config);
        let everyone = all(&config);
        let client = (0..)
            .map(|i| format!("client-{i}"))
            .find(|c| first(&b, &everyone, c) == 0)
            .expect("some client lands on member 0");
        let reason = b.choose(&everyone, &client).reason;
        assert!(reason.starts_with("consistent_hash key="), "{reason}");
        assert!(!reason.contains("passed"), "{reason}");
        let reason = b.choose(&everyone[1..], &client).reason;
        assert!(reason.ends_with(" passed 1 unavailable"), "{reason}");
    }

    #[test]
    fn weight_0_drains_a_member_unless_nothing_else_is_healthy() {
        let config = members(&[1, 0, 1]);
        for p in ALL {
            let b = Balancer::new(p, &config);
            // The draining member is idle, the others busy: still last.
            let candidates = loaded(&[(1, 50), (0, 0), (1, 40)]);
            for i in 0..300 {
                let order = b.choose(&candidates, &format!("client-{i}")).order;
                assert_eq!(order.len(), 3, "{p}");
                assert_eq!(order[2], 1, "{p}");
            }
            // Only the draining member is healthy: it is the last resort.
            let choice = b.choose(&candidates[1..2], "client");
            assert_eq!(choice.order, [1], "{p}");
            assert!(
                choice.reason.contains("only draining members"),
                "{p}: {}",
                choice.reason
            );
        }
        // Draining at run time (candidate weight 0) on a member with ring points.
        let b = Balancer::new(Policy::ConsistentHash, &members(&[1, 1]));
        let candidates = loaded(&[(0, 0), (1, 0)]);
        for i in 0..300 {
            let order = b.choose(&candidates, &format!("client-{i}")).order;
            assert_eq!(order, [1, 0]);
        }
    }

    #[test]
    fn the_ring_is_bounded_by_the_maximum_weight() {
        let b = Balancer::new(Policy::ConsistentHash, &members(&[1, 0, u32::MAX]));
        assert_eq!(
            b.ring.points.len(),
            ((1 + MAX_WEIGHT) * POINTS_PER_WEIGHT) as usize
        );
        // Other policies build no ring.
        let b = Balancer::new(Policy::RoundRobin, &members(&[1, 1]));
        assert!(b.ring.points.is_empty());
    }

    #[test]
    fn a_balancer_is_shared_between_sessions() {
        fn shared<T: Send + Sync>() {}
        shared::<Balancer>();
    }
}
