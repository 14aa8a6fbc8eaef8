//! hsmgate-rest's Prometheus metrics (served on the admin listener).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route template and status code.
    pub requests: IntCounterVec,
    /// Request latency by route template.
    pub latency: HistogramVec,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// hsmgate session connects by partition and outcome.
    pub upstream_connects: IntCounterVec,
    /// hsmgate sessions open by partition.
    pub upstream_sessions: IntGaugeVec,
    /// HTTPS connections open now.
    pub connections_open: IntGauge,
    /// TLS handshakes that failed (bad client certificate, garbage, timeout).
    pub tls_failures: IntCounter,
    /// Connections refused because `limits.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Fetches of a `jwt.jwks_url` by outcome.
    pub jwks_refreshes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "hsmgate_rest_requests_total",
                "REST requests by route and status.",
            ),
            &["route", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "hsmgate_rest_request_duration_seconds",
                "Time from request head to response, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "hsmgate_rest_auth_failures_total",
                "Requests refused for their credentials (401, and 403 for a certificate that names no identity), by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let upstream_connects = IntCounterVec::new(
            Opts::new(
                "hsmgate_rest_upstream_connects_total",
                "hsmgate sessions opened to the gateway, by partition and outcome.",
            ),
            &["partition", "outcome"],
        )
        .expect("metric");
        let upstream_sessions = IntGaugeVec::new(
            Opts::new(
                "hsmgate_rest_upstream_sessions",
                "hsmgate sessions held open, by partition.",
            ),
            &["partition"],
        )
        .expect("metric");
        let connections_open =
            IntGauge::new("hsmgate_rest_connections_open", "HTTPS connections open.")
                .expect("metric");
        let tls_failures = IntCounter::new(
            "hsmgate_rest_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        )
        .expect("metric");
        let connections_refused = IntCounter::new(
            "hsmgate_rest_connections_refused_total",
            "Connections closed at once because limits.max_connections were open.",
        )
        .expect("metric");
        let jwks_refreshes = IntCounterVec::new(
            Opts::new(
                "hsmgate_rest_jwks_refreshes_total",
                "Fetches of jwt.jwks_url after the first, by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(auth_failures.clone()),
            Box::new(upstream_connects.clone()),
            Box::new(upstream_sessions.clone()),
            Box::new(connections_open.clone()),
            Box::new(tls_failures.clone()),
            Box::new(connections_refused.clone()),
            Box::new(jwks_refreshes.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for reason in crate::auth::AuthFailure::ALL {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        Metrics {
            registry,
            requests,
            latency,
            auth_failures,
            upstream_connects,
            upstream_sessions,
            connections_open,
            tls_failures,
            connections_refused,
            jwks_refreshes,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
