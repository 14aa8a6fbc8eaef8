//! DNS discovery of pool members: part of `pool`, upstream of balancing.
//!
//! A pool configured with `dns` gets its members from DNS instead of the
//! config file, in one of two forms:
//!
//! - `host:port`: every A and AAAA address of `host`, on `port`, weight 1;
//! - `_service._proto.name`: the SRV records of the name; only the group with
//!   the lowest priority is used, each record's target is resolved to its A
//!   and AAAA addresses, the port comes from the record and the weight is the
//!   record's weight clamped to 1..=100.
//!
//! Each DNS pool has a task that resolves at once and then again when the
//! answer expires (its TTL, clamped to `[discovery] min_ttl_secs ..=
//! max_ttl_secs`), and swaps the pool's member set when the answer changed
//! (`Pool::set_members`: members that stay keep their health and counts).
//! A failed resolution, or an answer without a usable address, changes
//! nothing: the last good set keeps serving and the task tries again after
//! `retry_secs`. At most [`MAX_MEMBERS`] members are taken from an answer.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{ResolveError, Resolver, TokioResolver};
use prometheus::core::Collector;

use crate::control::config::{DiscoveryConfig, PoolConfig};
use crate::control::metrics::Metrics;
use crate::upstream::pool::{Pool, Pools};

/// Most members taken from one DNS answer.
pub const MAX_MEMBERS: usize = 64;

/// Highest weight a member gets from an SRV record (the balancer's bound).
const MAX_SRV_WEIGHT: u32 = 100;

/// What a pool's `dns` setting names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsTarget {
    /// Every A and AAAA address of `host`, on `port`.
    Host { host: String, port: u16 },
    /// The SRV records of `name` (`_service._proto.domain`).
    Srv { name: String },
}

impl DnsTarget {
    /// Parse a pool's `dns` setting; the error says what is wrong.
    pub fn parse(text: &str) -> Result<DnsTarget, String> {
        if text.starts_with('_') {
            validate_dns_name(text)?;
            let labels: Vec<&str> = text.trim_end_matches('.').split('.').collect();
            if labels.len() < 3 || !labels[1].starts_with('_') {
                return Err(format!(
                    "{text:?}: an SRV name is _service._proto.domain, e.g. _hsm._tcp.example.net"
                ));
            }
            return Ok(DnsTarget::Srv {
                name: text.to_owned(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "{text:?}: must be host:port (A and AAAA records) or _service._proto.domain (SRV records)"
            ));
        };
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!(
                "{text:?} is an IP address, not a DNS name: list it in members instead"
            ));
        }
        validate_dns_name(host)?;
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(DnsTarget::Host {
                host: host.to_owned(),
                port,
            }),
            _ => Err(format!("{text:?}: the port must be 1..=65535")),
        }
    }
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsTarget::Host { host, port } => write!(f, "{host}:{port}"),
            DnsTarget::Srv { name } => f.write_str(name),
        }
    }
}

/// A DNS name as RFC 1035 allows it (plus `_`, which SRV names use): at most
/// 253 characters, labels of 1 to 63 letters, digits, `-` or `_`, an
/// optional final dot.
fn validate_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!("{name:?}: a DNS name has 1 to 253 characters"));
    }
    for label in bare.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?}: label {label:?} must be 1 to 63 letters, digits, '-' or '_', \
                 not starting or ending with '-'"
            ));
        }
    }
    Ok(())
}

/// One SRV record, as far as member selection cares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target name; `.` means "no service here" (RFC 2782).
    pub target: String,
}

/// The records of the lowest priority that name a service, as (target,
/// port, weight): the weight clamped to 1..=100, one entry per target and
/// port (the first wins), sorted, at most [`MAX_MEMBERS`].
pub fn select_srv(records: &[SrvRecord]) -> Vec<(String, u16, u32)> {
    let usable = || {
        records
            .iter()
            .filter(|r| r.port > 0 && !r.target.is_empty() && r.target != ".")
    };
    let Some(lowest) = usable().map(|r| r.priority).min() else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut selected: Vec<(String, u16, u32)> = usable()
        .filter(|r| r.priority == lowest)
        .filter(|r| seen.insert((r.target.to_ascii_lowercase(), r.port)))
        .map(|r| {
            let weight = u32::from(r.weight).clamp(1, MAX_SRV_WEIGHT);
            (r.target.clone(), r.port, weight)
        })
        .collect();
    selected.sort();
    selected.truncate(MAX_MEMBERS);
    selected
}

/// A member set from resolved addresses: one entry per address (the first
/// wins), in address order so that a DNS server rotating its records does
/// not look like a change, at most [`MAX_MEMBERS`].
pub fn member_set(found: impl IntoIterator<Item = (SocketAddr, u32)>) -> Vec<(SocketAddr, u32)> {
    let mut seen = BTreeSet::new();
    let mut members: Vec<(SocketAddr, u32)> = found
        .into_iter()
        .filter(|(addr, _)| seen.insert(*addr))
        .collect();
    members.sort();
    members.truncate(MAX_MEMBERS);
    members
}

/// When to resolve again after an answer that is valid for `remaining`.
pub fn next_resolution(remaining: Duration, config: &DiscoveryConfig) -> Duration {
    remaining.clamp(config.min_ttl(), config.max_ttl().max(config.min_ttl()))
}

/// A usable answer: the members and how long it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub members: Vec<(SocketAddr, u32)>,
    pub valid_for: Duration,
}

/// Why a resolution gave no member set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The name exists or not, but there is no address to use.
    #[error("no usable records: {0}")]
    Empty(String),
    /// DNS did not answer, or answered with an error.
    #[error("{0}")]
    Failed(String),
}

impl DiscoveryError {
    fn from_resolve(what: &str, e: &ResolveError) -> DiscoveryError {
        // hickory reports SERVFAIL, REFUSED and the like as "no records
        // found" too: only NOERROR and NXDOMAIN are answers without records.
        let code = match e.proto().map(ProtoError::kind) {
            Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => Some(*response_code),
            _ => None,
        };
        match code {
            Some(ResponseCode::NXDomain) => {
                DiscoveryError::Empty(format!("{what}: no such name (NXDOMAIN)"))
            }
            Some(ResponseCode::NoError) => DiscoveryError::Empty(format!("{what}: no records")),
            Some(code) => DiscoveryError::Failed(format!("{what}: the DNS server answered {code}")),
            None => DiscoveryError::Failed(format!("{what}: {e}")),
        }
    }

    /// The `result` label of `hsmgate_discovery_updates_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            DiscoveryError::Empty(_) => "empty",
            DiscoveryError::Failed(_) => "error",
        }
    }
}

/// A resolver for discovery: the configured nameserver (or the system's),
/// both address families, the configured per-query timeout. Its cache is
/// cleared before each round ([`resolve`]), so every round asks DNS and
/// sees the TTLs the server gives now.
pub fn resolver(config: &DiscoveryConfig) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match config.nameserver {
        Some(server) => {
            let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => Resolver::builder_tokio().map_err(|e| {
            DiscoveryError::Failed(format!("cannot read the system DNS configuration: {e}"))
        })?,
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = config.timeout();
    // One retry per query; the whole round is bounded in `resolve_bounded`.
    opts.attempts = 1;
    opts.cache_size = 256;
    if config.nameserver.is_some() {
        // A configured nameserver is the only source of truth.
        opts.use_hosts_file = ResolveHosts::Never;
    }
    Ok(builder.build())
}

/// Resolve `target` once, from DNS (the resolver's cache is cleared first).
pub async fn resolve(
    resolver: &TokioResolver,
    target: &DnsTarget,
) -> Result<Answer, DiscoveryError> {
    resolver.clear_cache();
    match target {
        DnsTarget::Host { host, port } => {
            let found = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| DiscoveryError::from_resolve(host, &e))?;
            let members = member_set(found.iter().map(|ip| (SocketAddr::new(ip, *port), 1)));
            if members.is_empty() {
                return Err(DiscoveryError::Empty(format!(
                    "{host}: no A or AAAA records"
                )));
            }
            Ok(Answer {
                members,
                valid_for: remaining(found.valid_until()),
            })
        }
        DnsTarget::Srv { name } => {
            let found = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| DiscoveryError::from_resolve(name, &e))?;
            let records: Vec<SrvRecord> = found
                .iter()
                .map(|srv| SrvRecord {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: srv.target().to_ascii(),
                })
                .collect();
            let selected = select_srv(&records);
            if selected.is_empty() {
                return Err(DiscoveryError::Empty(format!(
                    "{name}: no SRV record names a service"
                )));
            }
            let mut valid_until = found.as_lookup().valid_until();
            // The targets of one SRV answer, at once (they are at most
            // MAX_MEMBERS, each query bounded by the resolver's timeout).
            let mut lookups = tokio::task::JoinSet::new();
            let targets: BTreeSet<String> = selected.iter().map(|(t, _, _)| t.clone()).collect();
            for target in targets {
                let resolver = resolver.clone();
                lookups.spawn(async move {
                    let result = resolver.lookup_ip(target.as_str()).await;
                    (target, result)
                });
            }
            let mut addresses: Vec<(String, IpAddr)> = Vec::new();
            while let Some(done) = lookups.join_next().await {
                let Ok((target, result)) = done else {
                    return Err(DiscoveryError::Failed(format!(
                        "{name}: a target lookup did not finish"
                    )));
                };
                match result {
                    Ok(found) => {
                        valid_until = valid_until.min(found.valid_until());
                        addresses.extend(found.iter().map(|ip| (target.clone(), ip)));
                    }
                    // A target without addresses is left out; any other
                    // failure fails the round, so that a partial answer
                    // never shrinks the pool.
                    Err(e) => match DiscoveryError::from_resolve(&target, &e) {
                        DiscoveryError::Empty(why) => {
                            tracing::debug!(%name, reason = %why, "SRV target without addresses")
                        }
                        failed => return Err(failed),
                    },
                }
            }
            let members = member_set(selected.iter().flat_map(|(target, port, weight)| {
                addresses
                    .iter()
                    .filter(move |(t, _)| t == target)
                    .map(move |(_, ip)| (SocketAddr::new(*ip, *port), *weight))
            }));
            if members.is_empty() {
                return Err(DiscoveryError::Empty(format!(
                    "{name}: no SRV target has an A or AAAA record"
                )));
            }
            Ok(Answer {
                members,
                valid_for: remaining(valid_until),
            })
        }
    }
}

/// How long an answer valid until `until` is still valid.
fn remaining(until: std::time::Instant) -> Duration {
    until.saturating_duration_since(std::time::Instant::now())
}

/// Follow the DNS pools of one config generation until `stop` completes;
/// also keeps `hsmgate_pool_members` for every pool.
pub async fn run(
    configs: &[PoolConfig],
    pools: &Pools,
    config: &DiscoveryConfig,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) {
    forget_removed_pools(metrics, pools);
    let mut tasks = tokio::task::JoinSet::new();
    for pool in pools.iter() {
        set_member_gauge(metrics, pool);
    }
    for pool_config in configs {
        let Some(dns) = &pool_config.dns else {
            continue;
        };
        let (Some(pool), Ok(target)) = (pools.get(&pool_config.name), DnsTarget::parse(dns)) else {
            // Validated with the config: cannot happen.
            continue;
        };
        let pool = Arc::clone(pool);
        let config = config.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move { follow(&pool, &target, &config, &metrics).await });
    }
    stop.await;
    tasks.shutdown().await;
}

async fn follow(pool: &Pool, target: &DnsTarget, config: &DiscoveryConfig, metrics: &Metrics) {
    let mut resolver = None;
    loop {
        let result = match &resolver {
            Some(r) => resolve_bounded(r, target, config).await,
            None => match self::resolver(config) {
                Ok(r) => {
                    let result = resolve_bounded(&r, target, config).await;
                    resolver = Some(r);
                    result
                }
                Err(e) => Err(e),
            },
        };
        let wait = apply(pool, target, result, config, metrics);
        tokio::time::sleep(wait).await;
    }
}

/// One round: a query for the name and, for SRV, one per target, each
/// bounded by the resolver; the whole round by four timeouts.
async fn resolve_bounded(
    resolver: &TokioResolver,
    target: &DnsTarget,
    config: &DiscoveryConfig,
) -> Result<Answer, DiscoveryError> {
    let bound = config.timeout().saturating_mul(4);
    tokio::time::timeout(bound, resolve(resolver, target))
        .await
        .unwrap_or_else(|_| {
            Err(DiscoveryError::Failed(format!(
                "no answer within {} ms",
                bound.as_millis()
            )))
        })
}

/// Put one resolution's result in force; returns when to resolve again.
pub fn apply(
    pool: &Pool,
    target: &DnsTarget,
    result: Result<Answer, DiscoveryError>,
    config: &DiscoveryConfig,
    metrics: &Metrics,
) -> Duration {
    let count = |result: &str| {
        metrics
            .discovery_updates
            .with_label_values(&[pool.name(), result])
            .inc();
    };
    match result {
        Ok(answer) => {
            let before: Vec<(SocketAddr, u32)> =
                pool.members().iter().map(|m| (m.addr, m.weight)).collect();
            if pool.set_members(&answer.members) {
                count("changed");
                let (added, removed) = difference(&before, &answer.members);
                tracing::info!(
                    pool = pool.name(),
                    dns = %target,
                    added = ?added,
                    removed = ?removed,
                    members = answer.members.len(),
                    "pool members changed (DNS)"
                );
            } else {
                count("unchanged");
                tracing::debug!(pool = pool.name(), dns = %target, members = answer.members.len(), "DNS answer unchanged");
            }
            set_member_gauge(metrics, pool);
            next_resolution(answer.valid_for, config)
        }
        Err(e) => {
            count(e.result_label());
            tracing::warn!(
                pool = pool.name(),
                dns = %target,
                error = %e,
                kept_members = pool.members().len(),
                retry_secs = config.retry_secs,
                "DNS discovery gave no members; keeping the last good set"
            );
            config.retry()
        }
    }
}

/// Members in `after` and not in `before`, and the other way round (an
/// address whose weight changed is in both).
pub fn difference(
    before: &[(SocketAddr, u32)],
    after: &[(SocketAddr, u32)],
) -> (Vec<String>, Vec<String>) {
    let show = |(addr, weight): &(SocketAddr, u32)| {
        if *weight == 1 {
            addr.to_string()
        } else {
            format!("{addr} (weight {weight})")
        }
    };
    let added = after
        .iter()
        .filter(|m| !before.contains(m))
        .map(show)
        .collect();
    let removed = before
        .iter()
        .filter(|m| !after.contains(m))
        .map(show)
        .collect();
    (added, removed)
}

fn set_member_gauge(metrics: &Metrics, pool: &Pool) {
    metrics
        .pool_members
        .with_label_values(&[pool.name()])
        .set(i64::try_from(pool.members().len()).unwrap_or(i64::MAX));
}

/// Drop the member gauge of pools that a reload removed.
fn forget_removed_pools(metrics: &Metrics, pools: &Pools) {
    let labelled: Vec<String> = metrics
        .pool_members
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .flat_map(|metric| metric.get_label())
        .filter(|label| label.name() == "pool")
        .map(|label| label.value().to_owned())
        .collect();
    for name in labelled {
        if pools.get(&name).is_none() {
            let _ = metrics.pool_members.remove_label_values(&[&name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn parses_host_and_port_and_srv_names() {
        assert_eq!(
            DnsTarget::parse("hsm.example.net:2400"),
            Ok(DnsTarget::Host {
                host: "hsm.example.net".into(),
                port: 2400
            })
        );
        assert_eq!(
            DnsTarget::parse("hsm.example.net.:2400"),
            Ok(DnsTarget::Host {
                host: "hsm.example.net.".into(),
                port: 2400
            })
        );
        assert_eq!(
            DnsTarget::parse("_hsm._tcp.example.net"),
            Ok(DnsTarget::Srv {
                name: "_hsm._tcp.example.net".into()
            })
        );
        assert_eq!(
            DnsTarget::parse("_hsm._tcp.example.net").map(|t| t.to_string()),
            Ok("_hsm._tcp.example.net".into())
        );
    }

    #[test]
    fn refuses_what_is_neither_form() {
        for (text, why) in [
            ("hsm.example.net", "host:port"),
            ("hsm.example.net:0", "port"),
            ("hsm.example.net:70000", "port"),
            ("10.0.0.1:2400", "IP address"),
            ("[::1]:2400", "IP address"),
            ("hsm example:2400", "label"),
            ("-hsm.example:2400", "label"),
            ("hsm..example:2400", "label"),
            ("_hsm.example.net", "_service._proto"),
            ("_hsm._tcp", "_service._proto"),
            (":2400", "1 to 253"),
        ] {
            let err = DnsTarget::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let long = format!("{}.example:1", "a".repeat(64));
        assert!(DnsTarget::parse(&long).is_err(), "a 64-character label");
    }

    #[test]
    fn srv_selection_keeps_only_the_lowest_priority_group() {
        let picked = select_srv(&[
            srv(20, 5, 2400, "backup.example."),
            srv(10, 30, 2401, "b.example."),
            srv(10, 60, 2400, "a.example."),
        ]);
        assert_eq!(
            picked,
            [
                ("a.example.".to_owned(), 2400, 60),
                ("b.example.".to_owned(), 2401, 30)
            ]
        );
    }

    #[test]
    fn srv_weights_are_clamped_to_1_through_100() {
        let picked = select_srv(&[
            srv(0, 0, 1, "zero."),
            srv(0, 100, 1, "hundred."),
            srv(0, 65_535, 1, "max."),
        ]);
        let weights: Vec<(&str, u32)> = picked.iter().map(|(t, _, w)| (t.as_str(), *w)).collect();
        assert_eq!(weights, [("hundred.", 100), ("max.", 100), ("zero.", 1)]);
    }

    #[test]
    fn srv_records_without_a_service_are_ignored() {
        // "." is RFC 2782's "no service here"; it does not make its priority
        // the lowest one.
        assert!(select_srv(&[srv(0, 1, 2400, ".")]).is_empty());
        assert!(select_srv(&[]).is_empty());
        assert_eq!(
            select_srv(&[srv(0, 1, 2400, "."), srv(5, 1, 2400, "a.")]),
            [("a.".to_owned(), 2400, 1)]
        );
        assert!(select_srv(&[srv(0, 1, 0, "a.")]).is_empty(), "port 0");
    }

    #[test]
    fn srv_duplicates_and_size_are_bounded() {
        let mut records = vec![srv(0, 7, 2400, "a."), srv(0, 9, 2400, "A.")];
        records.extend((0..100).map(|i| srv(0, 1, 2400, &format!("n{i:03}."))));
        let picked = select_srv(&records);
        assert_eq!(picked.len(), MAX_MEMBERS);
        assert_eq!(picked[0], ("a.".to_owned(), 2400, 7), "first record wins");
        assert!(picked.iter().all(|(t, _, _)| t != "A."));
    }

    #[test]
    fn member_sets_are_ordered_deduplicated_and_bounded() {
        let rotated = member_set([
            (addr("10.0.0.2:1"), 1),
            (addr("10.0.0.1:1"), 1),
            (addr("10.0.0.2:1"), 5),
        ]);
        assert_eq!(rotated, [(addr("10.0.0.1:1"), 1), (addr("10.0.0.2:1"), 1)]);
        let many = member_set((0..200u16).map(|i| (SocketAddr::from(([10, 0, 0, 1], i + 1)), 1)));
        assert_eq!(many.len(), MAX_MEMBERS);
    }

    #[test]
    fn the_ttl_is_clamped_to_the_configured_bounds() {
        let config = DiscoveryConfig::default();
        assert_eq!(next_resolution(Duration::ZERO, &config), config.min_ttl());
        assert_eq!(
            next_resolution(Duration::from_secs(60), &config),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_resolution(Duration::from_secs(86_400), &config),
            config.max_ttl()
        );
    }

    fn dns_pool() -> Pool {
        Pool::new(&PoolConfig {
            name: "p".into(),
            dns: Some("hsm.example:2400".into()),
            ..PoolConfig::default()
        })
    }

    fn members(pool: &Pool) -> Vec<SocketAddr> {
        pool.members().iter().map(|m| m.addr).collect()
    }

    fn updates(metrics: &Metrics, result: &str) -> u64 {
        metrics
            .discovery_updates
            .with_label_values(&["p", result])
            .get()
    }

    #[test]
    fn answers_replace_the_set_and_failures_keep_the_last_good_one() {
        let pool = dns_pool();
        let target = DnsTarget::parse("hsm.example:2400").expect("target");
        let config = DiscoveryConfig::default();
        let metrics = Metrics::new().expect("metrics");
        assert!(members(&pool).is_empty(), "a DNS pool starts empty");

        let first = Answer {
            members: vec![(addr("10.0.0.1:2400"), 1), (addr("10.0.0.2:2400"), 1)],
            valid_for: Duration::from_secs(30),
        };
        let wait = apply(&pool, &target, Ok(first.clone()), &config, &metrics);
        assert_eq!(wait, Duration::from_secs(30), "the answer's TTL");
        assert_eq!(
            members(&pool),
            [addr("10.0.0.1:2400"), addr("10.0.0.2:2400")]
        );
        apply(&pool, &target, Ok(first), &config, &metrics);
        assert_eq!(
            (updates(&metrics, "changed"), updates(&metrics, "unchanged")),
            (1, 1)
        );

        for failure in [
            DiscoveryError::Failed("SERVFAIL".into()),
            DiscoveryError::Empty("no records".into()),
        ] {
            let wait = apply(&pool, &target, Err(failure), &config, &metrics);
            assert_eq!(wait, config.retry());
            assert_eq!(
                members(&pool),
                [addr("10.0.0.1:2400"), addr("10.0.0.2:2400")],
                "the last good set stays"
            );
        }
        assert_eq!(
            (updates(&metrics, "error"), updates(&metrics, "empty")),
            (1, 1)
        );

        apply(
            &pool,
            &target,
            Ok(Answer {
                members: vec![(addr("10.0.0.3:2400"), 1)],
                valid_for: Duration::from_secs(1),
            }),
            &config,
            &metrics,
        );
        assert_eq!(members(&pool), [addr("10.0.0.3:2400")]);
        assert!(
            metrics
                .render()
                .contains("hsmgate_pool_members{pool=\"p\"} 1"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn the_difference_names_added_and_removed_members() {
        let (added, removed) = difference(
            &[(addr("10.0.0.1:1"), 1), (addr("10.0.0.2:1"), 1)],
            &[(addr("10.0.0.2:1"), 1), (addr("10.0.0.3:1"), 4)],
        );
        assert_eq!(added, ["10.0.0.3:1 (weight 4)"]);
        assert_eq!(removed, ["10.0.0.1:1"]);
    }
}
