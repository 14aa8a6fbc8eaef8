//! The gateway's Prometheus metrics, on a registry of its own (one per
//! gateway, so that tests can run several gateways in one process).
//!
//! Label values come from small fixed sets (stages, results, directions,
//! paths) or from the config (listener, pool and member names): never a
//! client id, a key or a source address.

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
}

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
                    "Forwarded sessions by data path (splice, copy).",
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
            registry,
        };
        m.registry
            .register(Box::new(m.connections_accepted.clone()))?;
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
        Ok(m)
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

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
