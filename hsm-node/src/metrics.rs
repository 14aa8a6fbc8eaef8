//! The HSM node's Prometheus metrics, on a registry of its own (one per
//! node, so that tests run several nodes in one process).
//!
//! Labels come from small fixed sets (op names, statuses, `CKR_*` names) or
//! from the config (partition names): never a key label or a client id.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct NodeMetrics {
    registry: Registry,
    /// Requests by op and outcome (`ok` or the status name).
    pub ops: IntCounterVec,
    /// Time to execute a request, by op (both stores).
    pub op_seconds: HistogramVec,
    /// Time of a request's token calls, by op (the PKCS#11 store).
    pub token_seconds: HistogramVec,
    /// Failed token calls by partition and `CKR_*` name.
    pub token_errors: IntCounterVec,
    /// Token sessions lent out, by partition.
    pub token_sessions_in_use: IntGaugeVec,
    /// Requests waiting for a token session, by partition.
    pub token_session_waiters: IntGaugeVec,
    /// 1 when the partition's key store serves, 0 when it does not.
    pub store_ready: IntGaugeVec,
    /// Config reloads (SIGHUP) by result.
    pub config_reloads: IntCounterVec,
}

/// Latency buckets from 50 µs to 5 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                &["op"],
            )
            .expect("static metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        NodeMetrics {
            ops: counter(
                "hsmgate_hsm_ops_total",
                "HSM requests by op and outcome (ok or the status)",
                &["op", "status"],
            ),
            op_seconds: histogram(
                "hsmgate_hsm_op_duration_seconds",
                "Time to execute one HSM request",
            ),
            token_seconds: histogram(
                "hsmgate_hsm_token_op_duration_seconds",
                "Time of one request's PKCS#11 calls, session wait included",
            ),
            token_errors: counter(
                "hsmgate_hsm_token_errors_total",
                "Failed PKCS#11 calls by partition and CKR name (pool_busy: no free session)",
                &["partition", "error"],
            ),
            token_sessions_in_use: gauge(
                "hsmgate_hsm_token_sessions_in_use",
                "PKCS#11 sessions lent to requests",
                &["partition"],
            ),
            token_session_waiters: gauge(
                "hsmgate_hsm_token_session_waiters",
                "Requests waiting for a PKCS#11 session",
                &["partition"],
            ),
            store_ready: gauge(
                "hsmgate_hsm_store_ready",
                "1 when the partition's key store serves, 0 when not",
                &["partition"],
            ),
            config_reloads: counter(
                "hsmgate_hsm_config_reloads_total",
                "Config reloads (SIGHUP) by result: ok, error",
                &["result"],
            ),
            registry,
        }
        .with_known_series()
    }

    /// Series whose labels are known at start, at 0.
    fn with_known_series(self) -> NodeMetrics {
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        self
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::new()
    }
}
