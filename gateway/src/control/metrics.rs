//! The gateway's Prometheus metrics, on a registry of its own (one per
//! gateway, so that tests can run several gateways in one process).
//!
//! Label values come from small fixed sets (stages, results, directions,
//! paths) or from the config (listener, pool and member names): never a
//! client id, a key or a source address.

use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Where in the admission path a connection was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Address,
    Handshake,
    Authz,
    Limit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Address => "address",
            Stage::Handshake => "handshake",
            Stage::Authz => "authz",
            Stage::Limit => "limit",
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    Error,
    Timeout,
    /// Closed while silent to make room in a full handshake budget.
    Evicted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Evicted => "evicted",
        }
    }
}

/// The `result` values of `hsmgate_backend_connect_total`.
pub const CONNECT_RESULTS: [&str; 4] = ["ok", "error", "timeout", "no_grant"];

/// Pool name → the labels (`address:port`) of its members now.
pub type CurrentMembers = HashMap<String, HashSet<String>>;

/// Remove every series of `vec` whose labels `keep` refuses.
fn retain_series<T: MetricVecBuilder>(
    vec: &MetricVec<T>,
    keep: impl Fn(&HashMap<String, String>) -> bool,
) {
    let label_sets: Vec<HashMap<String, String>> = vec
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| {
            metric
                .get_label()
                .iter()
                .map(|pair| (pair.name().to_owned(), pair.value().to_owned()))
                .collect()
        })
        .collect();
    for labels in label_sets.iter().filter(|labels| !keep(labels)) {
        let as_refs: HashMap<&str, &str> = labels
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let _ = vec.remove(&as_refs);
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections_accepted: IntCounterVec,
    pub proxy_checks: IntCounterVec,
    pub connections_open: IntGauge,
    pub admission: IntCounterVec,
    pub handshake_duration: Histogram,
    pub authz_requests: IntCounterVec,
    pub authz_duration: Histogram,
    pub backend_connect: IntCounterVec,
    pub backend_healthy: IntGaugeVec,
    pub backend_grant_channel: IntGaugeVec,
    pub backend_accepting: IntGaugeVec,
    pub grant_channel_events: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub sessions_revoked: prometheus::IntCounter,
    pub discovery_updates: IntCounterVec,
    pub pool_members: IntGaugeVec,
    pub sessions_active: IntGaugeVec,
    pub forwarded_bytes: IntCounterVec,
    pub sessions_forwarded: IntCounterVec,
    pub session_duration: HistogramVec,
    pub directory_connection_errors: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub admin_auth_failures: IntCounterVec,
    pub tcp_checks: prometheus::IntCounter,
    pub quic_connections: IntCounterVec,
    pub quic_connections_open: IntGauge,
    pub quic_streams: IntCounterVec,
    pub quic_path_checks: IntCounterVec,
    pub kernel_forwarding: IntGauge,
    pub kernel_events: IntCounterVec,
}

/// Outcomes of `hsmgate_quic_connections_total`.
pub const QUIC_CONNECTION_OUTCOMES: [&str; 7] = [
    "accepted",
    "retry",
    "refused",
    "tls_failed",
    "timeout",
    "authenticated",
    "not_authenticated",
];

/// Outcomes of `hsmgate_quic_streams_total`.
pub const QUIC_STREAM_OUTCOMES: [&str; 4] = ["granted", "refused", "malformed", "draining"];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

const SESSION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "hsmgate_build_info",
                "Build of the running gateway (always 1).",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let m = Metrics {
            connections_accepted: IntCounterVec::new(
                Opts::new(
                    "hsmgate_connections_accepted_total",
                    "TCP connections accepted, per listener.",
                ),
                &["listener"],
            )?,
            proxy_checks: IntCounterVec::new(
                Opts::new(
                    "hsmgate_proxy_checks_total",
                    "Connections on a PROXY protocol listener whose header names no client \
                     (LOCAL or UNKNOWN: a load balancer's health check), closed unserved.",
                ),
                &["listener"],
            )?,
            connections_open: IntGauge::new(
                "hsmgate_connections_open",
                "Client connections open now, in handshake or forwarding.",
            )?,
            admission: IntCounterVec::new(
                Opts::new(
                    "hsmgate_admission_total",
                    "Admission decisions per stage (address, handshake, authz, limit) and result.",
                ),
                &["stage", "result"],
            )?,
            handshake_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "hsmgate_handshake_duration_seconds",
                    "From accept to the Decision written, for completed handshakes.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            authz_requests: IntCounterVec::new(
                Opts::new(
                    "hsmgate_authz_requests_total",
                    "Authorization lookups by result (allow, deny, error) and cache outcome.",
                ),
                &["result", "cache"],
            )?,
            authz_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "hsmgate_authz_request_duration_seconds",
                    "Time to an authorization answer, cache included.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            backend_connect: IntCounterVec::new(
                Opts::new(
                    "hsmgate_backend_connect_total",
                    "TCP connects to HSM nodes by pool, member and result.",
                ),
                &["pool", "member", "result"],
            )?,
            backend_healthy: IntGaugeVec::new(
                Opts::new(
                    "hsmgate_backend_healthy",
                    "1 when the member passes its health checks and is in rotation, else 0.",
                ),
                &["pool", "member"],
            )?,
            backend_grant_channel: IntGaugeVec::new(
                Opts::new(
                    "hsmgate_backend_grant_channel_up",
                    "1 when the control channel to the member is up and holds a grant key, else 0.",
                ),
                &["pool", "member"],
            )?,
            backend_accepting: IntGaugeVec::new(
                Opts::new(
                    "hsmgate_backend_accepting",
                    "1 when the member's last status says it takes new sessions, 0 when it is \
                     full or its control channel is not up.",
                ),
                &["pool", "member"],
            )?,
            grant_channel_events: IntCounterVec::new(
                Opts::new(
                    "hsmgate_grant_channel_events_total",
                    "Ends of control channel attempts to HSM nodes by result: up (a grant key \
                     was received), refused (the node refused this gateway), error, no_grants \
                     (the node takes no grants).",
                ),
                &["result"],
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "hsmgate_config_reloads_total",
                    "Config reloads (SIGHUP) by result: ok, error.",
                ),
                &["result"],
            )?,
            discovery_updates: IntCounterVec::new(
                Opts::new(
                    "hsmgate_discovery_updates_total",
                    "DNS resolutions of a pool's members by result: changed, unchanged, \
                     error, empty (error and empty keep the last good members).",
                ),
                &["pool", "result"],
            )?,
            pool_members: IntGaugeVec::new(
                Opts::new(
                    "hsmgate_pool_members",
                    "Members of the pool now: configured, or from the last good DNS answer.",
                ),
                &["pool"],
            )?,
            sessions_revoked: prometheus::IntCounter::new(
                "hsmgate_sessions_revoked_total",
                "Live sessions ended because the directory withdrew the client.",
            )?,
            sessions_active: IntGaugeVec::new(
                Opts::new(
                    "hsmgate_sessions_active",
                    "Sessions being forwarded now, per pool.",
                ),
                &["pool"],
            )?,
            forwarded_bytes: IntCounterVec::new(
                Opts::new(
                    "hsmgate_forwarded_bytes_total",
                    "Bytes forwarded after the grant: client_to_hsm, hsm_to_client.",
                ),
                &["direction"],
            )?,
            sessions_forwarded: IntCounterVec::new(
                Opts::new(
                    "hsmgate_sessions_forwarded_total",
                    "Forwarded sessions by data path (splice, copy, quic, kernel).",
                ),
                &["path"],
            )?,
            session_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hsmgate_session_duration_seconds",
                    "Duration of forwarded sessions, from grant to close.",
                )
                .buckets(SESSION_BUCKETS.to_vec()),
                &["pool"],
            )?,
            admin_auth_failures: IntCounterVec::new(
                Opts::new(
                    "hsmgate_admin_auth_failures_total",
                    "Admin requests refused for their bearer token: bad_token (missing or \
                     wrong), token_file (the token file is unusable).",
                ),
                &["reason"],
            )?,
            tcp_checks: prometheus::IntCounter::new(
                "hsmgate_tcp_checks_total",
                "Connections closed by their peer before sending a byte (a load balancer's \
                 TCP health check, or a port scan): not counted as failed handshakes.",
            )?,
            directory_connection_errors: IntCounterVec::new(
                Opts::new(
                    "hsmgate_directory_connection_errors_total",
                    "Connections to the directory that failed: connect (TCP, timeout), \
                     tls_handshake, certificate (refused by either side).",
                ),
                &["reason"],
            )?,
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "hsmgate_tls_reloads_total",
                    "Reloads of TLS certificate files by use (directory: the directory link, \
                     admin: the admin listener) and result (ok, error: refused, the files in \
                     force stay).",
                ),
                &["use", "result"],
            )?,
            quic_connections: IntCounterVec::new(
                Opts::new(
                    "hsmgate_quic_connections_total",
                    "QUIC connections by outcome: accepted (past the address lists and limits), \
                     retry (asked to prove its address first), refused (address lists or \
                     limits), tls_failed, timeout (TLS or first stream not done in time), \
                     authenticated (first stream granted), not_authenticated (first stream \
                     refused).",
                ),
                &["outcome"],
            )?,
            quic_connections_open: IntGauge::new(
                "hsmgate_quic_connections_open",
                "QUIC connections open now, in their handshake or carrying sessions.",
            )?,
            quic_streams: IntCounterVec::new(
                Opts::new(
                    "hsmgate_quic_streams_total",
                    "Further streams of QUIC connections (sessions after the first) by \
                     outcome: granted, refused (authorization, limits, HSM), malformed (no \
                     valid Open frame in time), draining (refused while the gateway stops).",
                ),
                &["outcome"],
            )?,
            quic_path_checks: IntCounterVec::new(
                Opts::new(
                    "hsmgate_quic_path_checks_total",
                    "QUIC connections seen on a new client address (migration, NAT \
                     rebinding), by result: allowed, refused (the connection was closed).",
                ),
                &["result"],
            )?,
            kernel_forwarding: IntGauge::new(
                "hsmgate_kernel_forwarding",
                "1 when forwarding.mode = \"kernel\" and its BPF program is loaded; 0 otherwise \
                 (sessions are spliced).",
            )?,
            kernel_events: IntCounterVec::new(
                Opts::new(
                    "hsmgate_kernel_forwarding_events_total",
                    "Sessions that left kernel forwarding, by event: overflow (a direction went \
                     over forwarding.kernel_budget, or a byte came while the session entered the \
                     map; copied in user space after), attach_failed \
                     (the sockets could not enter the map; forwarded in user space).",
                ),
                &["event"],
            )?,
            registry,
        };
        m.registry
            .register(Box::new(m.connections_accepted.clone()))?;
        m.registry.register(Box::new(m.quic_connections.clone()))?;
        m.registry
            .register(Box::new(m.quic_connections_open.clone()))?;
        m.registry.register(Box::new(m.quic_streams.clone()))?;
        m.registry.register(Box::new(m.quic_path_checks.clone()))?;
        m.registry.register(Box::new(m.kernel_forwarding.clone()))?;
        m.registry.register(Box::new(m.kernel_events.clone()))?;
        m.registry.register(Box::new(m.connections_open.clone()))?;
        m.registry.register(Box::new(m.proxy_checks.clone()))?;
        m.registry.register(Box::new(m.admission.clone()))?;
        m.registry
            .register(Box::new(m.handshake_duration.clone()))?;
        m.registry.register(Box::new(m.authz_requests.clone()))?;
        m.registry.register(Box::new(m.authz_duration.clone()))?;
        m.registry.register(Box::new(m.backend_connect.clone()))?;
        m.registry.register(Box::new(m.backend_healthy.clone()))?;
        m.registry
            .register(Box::new(m.backend_grant_channel.clone()))?;
        m.registry.register(Box::new(m.backend_accepting.clone()))?;
        m.registry
            .register(Box::new(m.grant_channel_events.clone()))?;
        m.registry.register(Box::new(m.config_reloads.clone()))?;
        m.registry.register(Box::new(m.sessions_revoked.clone()))?;
        m.registry.register(Box::new(m.discovery_updates.clone()))?;
        m.registry.register(Box::new(m.pool_members.clone()))?;
        m.registry.register(Box::new(m.sessions_active.clone()))?;
        m.registry.register(Box::new(m.forwarded_bytes.clone()))?;
        m.registry
            .register(Box::new(m.sessions_forwarded.clone()))?;
        m.registry.register(Box::new(m.session_duration.clone()))?;
        m.registry
            .register(Box::new(m.directory_connection_errors.clone()))?;
        m.registry.register(Box::new(m.tls_reloads.clone()))?;
        m.registry
            .register(Box::new(m.admin_auth_failures.clone()))?;
        m.registry.register(Box::new(m.tcp_checks.clone()))?;
        m.start_known_series_at_zero();
        Ok(m)
    }

    /// Every series whose label values are known before anything happens,
    /// at 0: a dashboard panel or an alert on `increase(...)` then has a
    /// series from the first scrape, not from the first event.
    fn start_known_series_at_zero(&self) {
        const STAGES: [Stage; 4] = [Stage::Address, Stage::Handshake, Stage::Authz, Stage::Limit];
        const OUTCOMES: [Outcome; 5] = [
            Outcome::Allow,
            Outcome::Deny,
            Outcome::Error,
            Outcome::Timeout,
            Outcome::Evicted,
        ];
        for stage in STAGES {
            for outcome in OUTCOMES {
                self.admission
                    .with_label_values(&[stage.as_str(), outcome.as_str()]);
            }
        }
        for result in ["allow", "deny", "error", "rejected"] {
            for cache in ["hit", "miss", "coalesced"] {
                self.authz_requests.with_label_values(&[result, cache]);
            }
        }
        for result in ["up", "refused", "error", "no_grants"] {
            self.grant_channel_events.with_label_values(&[result]);
        }
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for outcome in QUIC_CONNECTION_OUTCOMES {
            self.quic_connections.with_label_values(&[outcome]);
        }
        for outcome in QUIC_STREAM_OUTCOMES {
            self.quic_streams.with_label_values(&[outcome]);
        }
        for result in ["allowed", "refused"] {
            self.quic_path_checks.with_label_values(&[result]);
        }
        for event in ["overflow", "attach_failed"] {
            self.kernel_events.with_label_values(&[event]);
        }
        for direction in ["client_to_hsm", "hsm_to_client"] {
            self.forwarded_bytes.with_label_values(&[direction]);
        }
        for path in ["splice", "copy"] {
            self.sessions_forwarded.with_label_values(&[path]);
        }
        for kind in hsmgate_authz::tls::FailureKind::ALL {
            self.directory_connection_errors
                .with_label_values(&[kind.as_str()]);
        }
        for result in ["ok", "error"] {
            for use_ in ["directory", "admin"] {
                self.tls_reloads.with_label_values(&[use_, result]);
            }
        }
        for reason in ["bad_token", "token_file"] {
            self.admin_auth_failures.with_label_values(&[reason]);
        }
    }

    /// The series of one pool and its members, at 0 where nothing has
    /// happened yet (see [`Metrics::start_known_series_at_zero`]).
    pub fn start_pool_series(&self, pool: &str, members: &[String]) {
        self.sessions_active.with_label_values(&[pool]);
        for member in members {
            for result in CONNECT_RESULTS {
                self.backend_connect
                    .with_label_values(&[pool, member, result]);
            }
        }
    }

    /// Count a QUIC connection's outcome (`QUIC_CONNECTION_OUTCOMES`).
    pub fn quic_connection(&self, outcome: &str) {
        self.quic_connections.with_label_values(&[outcome]).inc();
    }

    /// Count a further QUIC stream's outcome (`QUIC_STREAM_OUTCOMES`).
    pub fn quic_stream(&self, outcome: &str) {
        self.quic_streams.with_label_values(&[outcome]).inc();
    }

    pub fn admission(&self, stage: Stage, outcome: Outcome) {
        self.admission
            .with_label_values(&[stage.as_str(), outcome.as_str()])
            .inc();
    }

    /// The current value of one admission counter (tests and the dev banner).
    pub fn admission_count(&self, stage: Stage, outcome: Outcome) -> u64 {
        self.admission
            .with_label_values(&[stage.as_str(), outcome.as_str()])
            .get()
    }

    /// Drop the series of pools and members that are gone (a reload or a
    /// DNS answer removed them), so that a removed member's last value
    /// cannot stand in for a live one: `sum by (pool)
    /// (hsmgate_backend_healthy) == 0` must fire when the members left are
    /// all down. `hsmgate_sessions_active` of a removed pool stays while
    /// sessions that started before the reload still run.
    pub fn forget_gone(&self, current: &CurrentMembers) {
        let known =
            |labels: &HashMap<String, String>| match (labels.get("pool"), labels.get("member")) {
                (Some(pool), Some(member)) => current
                    .get(pool)
                    .is_some_and(|members| members.contains(member)),
                (Some(pool), None) => current.contains_key(pool),
                _ => true,
            };
        retain_series(&self.backend_healthy, known);
        retain_series(&self.backend_connect, known);
        retain_series(&self.backend_grant_channel, known);
        retain_series(&self.backend_accepting, known);
        retain_series(&self.discovery_updates, known);
        retain_series(&self.pool_members, known);
        retain_series(&self.session_duration, known);
        retain_series(&self.sessions_active, |labels| {
            known(labels)
                || labels.get("pool").is_none_or(|pool| {
                    self.sessions_active
                        .get_metric_with_label_values(&[pool])
                        .is_ok_and(|gauge| gauge.get() != 0)
                })
        });
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_known_labels_exist_before_their_first_event() {
        let m = Metrics::new().expect("metrics");
        let text = m.render();
        for sample in [
            r#"hsmgate_config_reloads_total{result="ok"} 0"#,
            r#"hsmgate_config_reloads_total{result="error"} 0"#,
            r#"hsmgate_admission_total{result="deny",stage="limit"} 0"#,
            r#"hsmgate_authz_requests_total{cache="miss",result="rejected"} 0"#,
            r#"hsmgate_grant_channel_events_total{result="refused"} 0"#,
            r#"hsmgate_forwarded_bytes_total{direction="hsm_to_client"} 0"#,
        ] {
            assert!(text.contains(sample), "{sample} missing from\n{text}");
        }
    }

    #[test]
    fn series_of_gone_members_and_pools_are_dropped() {
        let m = Metrics::new().expect("metrics");
        m.start_pool_series("a", &["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        m.start_pool_series("b", &["127.0.0.1:3".into()]);
        for member in ["127.0.0.1:1", "127.0.0.1:2"] {
            m.backend_healthy.with_label_values(&["a", member]).set(1);
        }
        m.backend_healthy
            .with_label_values(&["b", "127.0.0.1:3"])
            .set(1);
        // Pool b is gone but one of its sessions still runs.
        m.sessions_active.with_label_values(&["b"]).inc();
        let current: CurrentMembers = [(
            "a".to_owned(),
            ["127.0.0.1:2".to_owned()].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        m.forget_gone(&current);
        let text = m.render();
        assert!(!text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("127.0.0.1:3"), "{text}");
        assert!(text.contains(r#"hsmgate_backend_healthy{member="127.0.0.1:2",pool="a"} 1"#));
        assert!(
            text.contains(r#"hsmgate_sessions_active{pool="b"} 1"#),
            "{text}"
        );
        m.sessions_active.with_label_values(&["b"]).dec();
        m.forget_gone(&current);
        assert!(!m.render().contains(r#"pool="b""#));
    }
}
