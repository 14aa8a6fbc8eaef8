//! What every session of one gateway shares, across reloads: the current
//! snapshot, the key, the metrics, the limits that span connections, and
//! the state `/readyz` reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hsmgate_wire::StaticKeypair;

use crate::accept::handshake_slots::HandshakeSlots;
use crate::accept::limits::ClientSlots;
use crate::control::log_limit::LogLimiter;
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;

/// What every session of one gateway shares, across reloads.
pub struct Shared {
    /// The gateway's static key pair; SIGHUP may replace it (rotation).
    pub(crate) key: ArcSwap<StaticKeypair>,
    pub metrics: Metrics,
    pub client_slots: ClientSlots,
    /// Connections still in their handshake (`limits.max_handshakes`).
    pub handshake_slots: Arc<HandshakeSlots>,
    /// Rate limits on repeated refusal lines.
    pub log_limit: LogLimiter,
    pub(crate) current: ArcSwap<Snapshot>,
    /// Bumped on every reload: background tasks restart on the new snapshot.
    pub(crate) reloaded: tokio::sync::watch::Sender<u64>,
    pub(crate) next_session: AtomicU64,
    pub(crate) state: State,
    /// Set when the drain deadline passes: running sessions end (and log).
    pub(crate) drain_cut: tokio::sync::watch::Sender<bool>,
    /// Set when the gateway stops accepting: QUIC connections take no new
    /// sessions and close once theirs have ended.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
    /// `hsmgate run --gateway-id` and `--admin-address`: they win over the
    /// file's values, on every reload.
    pub(crate) overrides: std::sync::OnceLock<(Option<String>, Option<SocketAddr>)>,
    /// The admin listener's TLS, once bound with `[admin] tls_*_file`.
    pub(crate) admin_tls: std::sync::OnceLock<Arc<crate::control::admin_tls::AdminTls>>,
    /// The BPF program forwarding granted sessions (`forwarding.mode =
    /// "kernel"`), loaded at start; `None`: spliced or copied.
    pub(crate) kernel: Option<Arc<crate::session::forward::kernel::KernelForwarder>>,
    /// Granted sessions, for revocation and the drain deadline.
    pub(crate) live: crate::session::live::LiveSessions,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The static key pair new connections and control channels use.
    pub fn key(&self) -> Arc<StaticKeypair> {
        self.key.load_full()
    }

    /// Completes once the drain deadline has passed (never before a stop).
    pub async fn drain_deadline_passed(&self) {
        let mut cut = self.drain_cut.subscribe();
        if cut.wait_for(|cut| *cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Completes once the gateway has begun to stop (never before).
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Changes with every reload.
    pub fn reloaded(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// The `/readyz` checks, now.
    pub fn readiness(&self) -> Readiness {
        let snap = self.snapshot();
        Readiness {
            serving: self.state.serving.load(Ordering::Relaxed),
            draining: self.state.draining.load(Ordering::Relaxed),
            directory_reachable: self.state.directory_reachable.load(Ordering::Relaxed),
            cached_decisions: snap.authz.entry_count(),
            healthy_members: snap.pools.iter().map(|p| p.healthy_count()).sum(),
        }
    }

    /// The effective config as TOML, with the public key added. The config
    /// holds no secret (the private key stays in `key_file`).
    pub fn effective_config(&self) -> String {
        let snap = self.snapshot();
        let body = toml::to_string_pretty(&snap.config)
            .unwrap_or_else(|e| format!("# cannot render the config: {e}\n"));
        format!(
            "# effective config of {} (generation {})\n# public_key = \"{}\"\n{body}",
            snap.config.gateway_id,
            snap.generation,
            self.key().public().to_text()
        )
    }
}

/// What readiness is made of.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) serving: AtomicBool,
    pub(crate) draining: AtomicBool,
    pub(crate) directory_reachable: AtomicBool,
}

/// The answer of `/readyz`, check by check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub serving: bool,
    pub draining: bool,
    pub directory_reachable: bool,
    pub cached_decisions: u64,
    pub healthy_members: usize,
}

impl Readiness {
    /// Listening, not draining, and at least one HSM node in rotation.
    ///
    /// The directory is reported but does not count: it is shared by every
    /// instance, so an outage would turn every pod not-ready at once, the
    /// headless Service would publish no address, and clients would fail
    /// name resolution instead of getting the retryable code 4 (and the
    /// answers some pods still hold in their caches would go unused).
    pub fn ready(&self) -> bool {
        self.serving && !self.draining && self.healthy_members > 0
    }
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", if self.ready() { "ready" } else { "not ready" })?;
        writeln!(f, "serving: {}", self.serving)?;
        writeln!(f, "draining: {}", self.draining)?;
        writeln!(f, "directory_reachable: {}", self.directory_reachable)?;
        writeln!(f, "cached_decisions: {}", self.cached_decisions)?;
        writeln!(f, "healthy_hsm_members: {}", self.healthy_members)
    }
}
