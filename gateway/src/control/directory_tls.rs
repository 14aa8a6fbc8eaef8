//! The gateway's end of the directory link's TLS (docs/OPERATIONS.md,
//! "Security of the control plane"): what happens when a connection to the
//! directory fails, and how the link's certificates are reloaded.
//!
//! A failed connection (TCP, TLS handshake, or a certificate refused by
//! either side) is an unreachable directory: clients without a cached
//! decision get code 4, and the failure is counted in
//! `hsmgate_directory_connection_errors_total{reason}` and logged (rate
//! limited) with the TLS error. The link's PEM files are re-read on SIGHUP
//! and when they change ([`POLL`]); a file that does not load is refused,
//! the certificates in force stay, and the outcome is counted in
//! `hsmgate_tls_reloads_total{use="directory",result}`. Either way the
//! decision cache and running sessions are untouched: only connections
//! opened afterwards use the new files.

use std::time::Duration;

use hsmgate_authz::ConnectObserver;
use hsmgate_authz::tls::{ClientTls, FailureKind, TlsError};

use crate::control::log_limit::LogLimiter;
use crate::control::metrics::Metrics;

/// How often the link's TLS files are checked for a change.
pub const POLL: Duration = Duration::from_secs(2);

/// Counts and logs failed connections to the directory.
pub struct LinkObserver {
    metrics: Metrics,
    log_limit: LogLimiter,
}

impl LinkObserver {
    pub fn new(metrics: Metrics) -> LinkObserver {
        LinkObserver {
            metrics,
            log_limit: LogLimiter::default(),
        }
    }
}

impl ConnectObserver for LinkObserver {
    fn failed(&self, kind: FailureKind, error: &str) {
        self.metrics
            .directory_connection_errors
            .with_label_values(&[kind.as_str()])
            .inc();
        if let Some(suppressed) = self.log_limit.allow(kind.as_str()) {
            tracing::warn!(
                reason = kind.as_str(),
                error,
                suppressed,
                "directory connection failed: clients without a cached decision get code 4 (unavailable)"
            );
        }
    }
}

/// What made the gateway look at its TLS files again.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// Count and log the outcome of a reload of the link's TLS files.
pub fn record_reload(metrics: &Metrics, trigger: Trigger, outcome: &Result<(), TlsError>) {
    let result = if outcome.is_ok() { "ok" } else { "error" };
    metrics
        .tls_reloads
        .with_label_values(&["directory", result])
        .inc();
    match outcome {
        Ok(()) => tracing::info!(
            trigger = trigger.as_str(),
            "directory TLS files reloaded; new connections to the directory use them"
        ),
        Err(e) => tracing::error!(
            trigger = trigger.as_str(),
            error = %e,
            "directory TLS reload refused; the certificates in force stay"
        ),
    }
}

/// Re-read `tls`'s files now (SIGHUP).
pub fn reload(tls: &ClientTls, metrics: &Metrics) {
    record_reload(metrics, Trigger::Signal, &tls.reload());
}

/// Re-read `tls`'s files if they changed since they were last read.
pub fn reload_if_changed(tls: &ClientTls, metrics: &Metrics) {
    if let Some(outcome) = tls.reload_if_changed() {
        record_reload(metrics, Trigger::FileChange, &outcome);
    }
}
