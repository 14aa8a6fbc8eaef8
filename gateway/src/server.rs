//! The gateway: shared state, the accept loops with the checks that happen
//! before any byte is read (connection limit, source-address lists), and
//! shutdown with a drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hsmgate_wire::{Code, PublicKey, StaticKeypair};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::accept::admission::AddressPolicy;
use crate::accept::handshake_slots::{HandshakeSlot, HandshakeSlots};
use crate::accept::limits::{ClientSlots, SourceSlot};
use crate::accept::quic::QuicListener;
use crate::accept::{listener, proxy_protocol};
use crate::control::config::{GatewayConfig, Transport};
use crate::control::log_limit::LogLimiter;
use crate::control::memory::{self, ReleasePolicy};
use crate::control::metrics::{Metrics, Outcome, Stage};
use crate::control::snapshot::ReloadError;
use crate::control::snapshot::Snapshot;
use crate::error::GatewayError;
use crate::session;
use crate::state::{Readiness, Shared, State};

/// Refusals being written at once (beyond this, refused connections are
/// just closed: a flood must not buy itself unbounded tasks).
const MAX_REFUSING: usize = 256;

/// After the drain deadline: how long forwarded sessions get to end and
/// log before every task left is aborted.
const DRAIN_CUT_GRACE: Duration = Duration::from_secs(2);

/// How often an unreachable directory is warned about again.
const DIRECTORY_WARN_EVERY: Duration = Duration::from_secs(30);

/// A bound listener with its configured name.
pub struct BoundListener {
    pub name: String,
    pub listener: TcpListener,
    /// For PROXY protocol listeners: the load balancers that may connect.
    pub proxy: Option<AddressPolicy>,
}

#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    /// QUIC endpoints bound by [`Gateway::bind`], taken by [`Gateway::run`].
    quic: Arc<std::sync::Mutex<Vec<QuicListener>>>,
    /// Their local addresses.
    quic_addrs: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

/// What an accept loop hands to the session loop.
enum Arrival {
    /// Boxed: the session task captures it, and a capture stays in the
    /// task's memory for the session's life even once taken apart.
    Tcp(Box<Accepted>),
    Quic(Box<QuicAccepted>),
}

/// A QUIC connection's first packet, past the address lists and limits.
struct QuicAccepted {
    incoming: quinn::Incoming,
    peer: SocketAddr,
    at: Instant,
    permit: OwnedSemaphorePermit,
    handshake_slot: HandshakeSlot,
    source_slot: SourceSlot,
    snapshot: Arc<Snapshot>,
}

struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    at: Instant,
    permit: OwnedSemaphorePermit,
    /// Its place in the handshake budget, taken at accept.
    handshake_slot: HandshakeSlot,
    /// Taken at accept; `None` on PROXY protocol listeners, where the
    /// client's address is known only after the header.
    source_slot: Option<SourceSlot>,
    snapshot: Arc<Snapshot>,
    listener: Arc<str>,
}

/// Load the kernel forwarding program when the config asks for it; where
/// it cannot be loaded, say why once: sessions are spliced instead.
fn load_kernel_forwarding(
    config: &GatewayConfig,
    metrics: &Metrics,
) -> Option<Arc<crate::session::forward::kernel::KernelForwarder>> {
    let f = &config.forwarding;
    if !config.uses_kernel_forwarding() {
        return None;
    }
    match crate::session::forward::kernel::KernelForwarder::load(
        f.kernel_max_sessions,
        f.kernel_budget,
    ) {
        Ok(k) => {
            metrics.kernel_forwarding.set(1);
            tracing::info!(
                max_sessions = f.kernel_max_sessions,
                budget = f.kernel_budget,
                "kernel forwarding on: granted sessions are forwarded by the BPF program"
            );
            Some(k)
        }
        Err(e) => {
            tracing::warn!(error = %e, "kernel forwarding unavailable; splicing sessions instead");
            None
        }
    }
}

impl Gateway {
    /// Build a gateway from a validated config. Must run inside a tokio
    /// runtime (the directory client connects lazily on it).
    pub fn new(config: GatewayConfig, key: StaticKeypair) -> Result<Gateway, GatewayError> {
        let handshake_slots = HandshakeSlots::new(
            config
                .limits
                .max_handshakes
                .min(config.limits.max_connections),
        );
        let metrics = Metrics::new()?;
        if !config.directory.uses_tls() {
            tracing::warn!(
                endpoint = %config.directory.endpoint,
                "directory link WITHOUT TLS (directory.allow_plaintext): anyone on the path can read the directory's answers and forge grants"
            );
        }
        let observer = Arc::new(crate::control::directory_tls::LinkObserver::new(
            metrics.clone(),
        ));
        let kernel = load_kernel_forwarding(&config, &metrics);
        let shared = Shared {
            kernel,
            live: Default::default(),
            handshake_slots,
            log_limit: LogLimiter::default(),
            current: ArcSwap::from_pointee(Snapshot::first(config, observer)?),
            reloaded: tokio::sync::watch::channel(1).0,
            metrics,
            client_slots: ClientSlots::default(),
            next_session: AtomicU64::new(1),
            state: State::default(),
            drain_cut: tokio::sync::watch::channel(false).0,
            stopping: tokio::sync::watch::channel(false).0,
            overrides: std::sync::OnceLock::new(),
            admin_tls: std::sync::OnceLock::new(),
            key: ArcSwap::from_pointee(key),
        };
        Ok(Gateway {
            shared: Arc::new(shared),
            quic: Arc::default(),
            quic_addrs: Arc::default(),
        })
    }

    /// Where the QUIC listeners bound by [`Gateway::bind`] listen (UDP).
    pub fn quic_addresses(&self) -> Vec<SocketAddr> {
        lock(&self.quic_addrs).clone()
    }

    pub fn public_key(&self) -> PublicKey {
        self.shared.key().public()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The snapshot new connections get now: config, pools and their
    /// current members.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// The config in force now.
    pub fn config(&self) -> GatewayConfig {
        self.shared.snapshot().config.clone()
    }

    /// Put a new, validated config in force for new connections. Sessions
    /// already running keep the snapshot they started with. Fields that only
    /// a restart can change make the whole reload fail.
    pub fn reload(&self, config: GatewayConfig) -> Result<u64, ReloadError> {
        let current = self.shared.snapshot();
        current
            .restart_only_changes(&config)
            .map_err(ReloadError::RestartOnly)?;
        let next = Arc::new(current.next(config)?);
        let generation = next.generation;
        self.shared.current.store(next);
        self.shared.reloaded.send_replace(generation);
        Ok(generation)
    }

    /// Read `path` and put it in force ([`Gateway::reload`]), counting the
    /// outcome in `hsmgate_config_reloads_total` and logging it. On any
    /// problem the running config stays in force.
    pub fn reload_file(&self, path: &std::path::Path) -> bool {
        // The directory link's TLS files are read again too, unless the
        // reload builds a new directory client (which reads them itself).
        let directory_tls = self.shared.snapshot().authz.client().tls().cloned();
        let reloaded = self.reload_config_file(path);
        if let Some(tls) = directory_tls
            && self
                .shared
                .snapshot()
                .authz
                .client()
                .tls()
                .is_some_and(|now| Arc::ptr_eq(now, &tls))
        {
            crate::control::directory_tls::reload(&tls, &self.shared.metrics);
        }
        reloaded
    }

    fn reload_config_file(&self, path: &std::path::Path) -> bool {
        let loaded = GatewayConfig::load(path).map(|mut config| {
            if let Some((id, admin)) = self.shared.overrides.get() {
                if let Some(id) = id {
                    config.gateway_id.clone_from(id);
                }
                if let Some(admin) = admin {
                    config.admin.address = *admin;
                }
            }
            config
        });
        let outcome = match loaded {
            // The key file is read again too: a changed key (rotation, or a
            // new key_file path) applies to new connections.
            Ok(config) => match crate::control::keyfile::load(&config.key_file) {
                Ok(key) => self
                    .reload(config)
                    .inspect(|_| self.use_key(key))
                    .map_err(|e| vec![e.to_string()]),
                Err(e) => Err(vec![format!("key_file: {}", e)]),
            },
            Err(e) => Err(e.problems()),
        };
        match outcome {
            Ok(generation) => {
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(path = %path.display(), generation, "config reloaded; running sessions keep their config");
                if let Some(tls) = self.shared.admin_tls.get() {
                    crate::control::admin_tls::record_reload(
                        &self.shared.metrics,
                        "SIGHUP",
                        &tls.reload(),
                    );
                }
                true
            }
            Err(problems) => {
                self.shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(path = %path.display(), problems = %problems.join("; "), "config reload refused; the running config stays in force");
                false
            }
        }
    }

    /// Keep `gateway_id` and the admin address `admin` (where given)
    /// whatever a reloaded file says: the command line's `--gateway-id`
    /// (e.g. the pod's name) and `--admin-address` (the pod's IP). The
    /// config the gateway was created with must already carry them.
    pub fn keep_overrides(&self, gateway_id: Option<String>, admin: Option<SocketAddr>) {
        let _ = self.shared.overrides.set((gateway_id, admin));
    }

    /// Put `key` in force for new connections and control channels, if it
    /// is not the key in force already. Running sessions keep theirs.
    pub fn use_key(&self, key: StaticKeypair) {
        let old = self.shared.key().public();
        let new = key.public();
        if old == new {
            return;
        }
        self.shared.key.store(Arc::new(key));
        self.shared.reloaded.send_modify(|_| {});
        tracing::warn!(
            old_public_key = %old,
            public_key = %new,
            "gateway key changed: new sessions present the new key; clients must pin it (gateway_keys) and HSM nodes trust it (gateways.trusted_keys)"
        );
    }

    /// The `/readyz` checks, now.
    pub fn readiness(&self) -> Readiness {
        self.shared.readiness()
    }

    /// The effective config as TOML, with the public key added.
    pub fn effective_config(&self) -> String {
        self.shared.effective_config()
    }

    /// Bind the admin listener, when one is configured.
    pub async fn bind_admin(&self) -> Result<Option<TcpListener>, GatewayError> {
        let admin = self.shared.snapshot().config.admin.clone();
        if !admin.enabled {
            return Ok(None);
        }
        let addr = admin.address;
        if let Some(tls) = crate::control::admin_tls::load(
            admin.tls_cert_file.as_ref(),
            admin.tls_key_file.as_ref(),
        )? {
            let _ = self.shared.admin_tls.set(tls);
        }
        TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| GatewayError::Bind { addr, source })
    }

    /// Serve the admin endpoints on `listener` until `stop` completes.
    pub async fn serve_admin(&self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let tls = self.shared.admin_tls.get().cloned();
        crate::control::admin::serve(Arc::clone(&self.shared), listener, tls, stop).await;
    }

    /// Bind every configured listener: `accept_loops` sockets each (the
    /// later ones on the port the first one got, for port 0). The TCP
    /// listeners are returned; the QUIC endpoints are kept for
    /// [`Gateway::run`] ([`Gateway::quic_addresses`] tells where they are).
    pub fn bind(&self) -> Result<Vec<BoundListener>, GatewayError> {
        let snap = self.shared.snapshot();
        let mut bound = Vec::new();
        for l in &snap.config.listeners {
            if l.transport == Transport::Quic {
                let quic = crate::accept::quic::bind(&l.name, l.address, &snap.config.quic)?;
                let addr = quic
                    .endpoint
                    .local_addr()
                    .map_err(|source| GatewayError::Bind {
                        addr: l.address,
                        source,
                    })?;
                lock(&self.quic_addrs).push(addr);
                lock(&self.quic).push(quic);
                continue;
            }
            let reuse_port = l.accept_loops > 1;
            let mut addr = l.address;
            for _ in 0..l.accept_loops {
                let listener = listener::bind(addr, l.backlog, reuse_port)
                    .map_err(|source| GatewayError::Bind { addr, source })?;
                addr = listener
                    .local_addr()
                    .map_err(|source| GatewayError::Bind { addr, source })?;
                bound.push(BoundListener {
                    name: l.name.clone(),
                    listener,
                    proxy: l
                        .proxy_protocol
                        .then(|| AddressPolicy::new(&l.trusted_proxies, &[])),
                });
            }
        }
        Ok(bound)
    }

    /// Serve on `listeners` until `shutdown` completes; then stop accepting,
    /// let running sessions finish for up to `timeouts.drain_ms`, and return.
    pub async fn run(
        &self,
        listeners: Vec<BoundListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let shared = &self.shared;
        let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
        let mut background = JoinSet::new();
        // Health checks, directory reachability, DNS discovery and the
        // control channels run until the drain is over, on the control
        // thread: what they keep for long is not allocated among the
        // sessions' memory (hsmgate_authz::ControlThread).
        let control = shared.snapshot().control_thread().handle().clone();
        for task in [
            Background::Health,
            Background::Directory,
            Background::DirectoryTls,
            Background::Discovery,
            Background::Grants,
        ] {
            let shared = Arc::clone(shared);
            let stopped = background_stopped.clone();
            background.spawn_on(
                async move {
                    tokio::select! {
                        () = task.run(&shared) => {}
                        () = wait(stopped) => {}
                    }
                },
                &control,
            );
        }
        {
            // Revocation checks and the drain cut of granted sessions.
            let shared = Arc::clone(shared);
            let stopped = background_stopped.clone();
            background.spawn_on(
                async move {
                    tokio::select! {
                        () = session::live::watch(&shared) => {}
                        () = wait(stopped) => {}
                    }
                },
                &control,
            );
        }
        shared.state.serving.store(true, Ordering::Relaxed);
        let first = shared.snapshot();
        let connections = Arc::new(Semaphore::new(first.config.limits.max_connections));
        memory::reserve_session_spans(first.config.limits.max_connections);
        let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
        let (tx, mut rx) = mpsc::channel::<Arrival>(64);
        let mut accept_loops = JoinSet::new();
        for l in listeners {
            accept_loops.spawn(accept_loop(
                Arc::clone(shared),
                l,
                Arc::clone(&connections),
                Arc::clone(&refusing),
                tx.clone(),
            ));
        }
        let quic_listeners = std::mem::take(&mut *lock(&self.quic));
        let quic_endpoints: Vec<quinn::Endpoint> =
            quic_listeners.iter().map(|l| l.endpoint.clone()).collect();
        for l in quic_listeners {
            accept_loops.spawn(quic_accept_loop(
                Arc::clone(shared),
                l,
                Arc::clone(&connections),
                tx.clone(),
            ));
        }
        drop(tx);
        let mut sessions = JoinSet::new();
        // Free heap is given back after a peak of sessions (memory.rs).
        let mut release = ReleasePolicy::default();
        let release_asked = Arc::new(Notify::new());
        {
            let asked = Arc::clone(&release_asked);
            let stopped = background_stopped.clone();
            background.spawn(async move {
                tokio::select! {
                    () = memory::release_when_asked(asked) => {}
                    () = wait(stopped) => {}
                }
            });
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                arrived = rx.recv() => {
                    let a = match arrived {
                        None => break,
                        Some(Arrival::Tcp(a)) => a,
                        Some(Arrival::Quic(q)) => {
                            let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
                            let span = tracing::info_span!("quic", id);
                            let shared = Arc::clone(shared);
                            sessions.spawn(async move {
                                shared.metrics.connections_open.inc();
                                shared.metrics.quic_connections_open.inc();
                                let QuicAccepted { incoming, peer, at, permit, handshake_slot, source_slot, snapshot } = session::unbox(q);
                                session::quic::serve_connection(Arc::clone(&shared), snapshot, incoming, peer, at, handshake_slot).await;
                                drop(source_slot);
                                shared.metrics.quic_connections_open.dec();
                                shared.metrics.connections_open.dec();
                                drop(permit);
                            }.instrument(span));
                            release.opened(sessions.len());
                            continue;
                        }
                    };
                    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("session", id);
                    let shared = Arc::clone(shared);
                    sessions.spawn(async move {
                        shared.metrics.connections_open.inc();
                        let Accepted { stream, peer, at, permit, handshake_slot, source_slot, snapshot, listener } = session::unbox(a);
                        let admitted = match source_slot {
                            Some(slot) => Some((peer, slot)),
                            None => Box::pin(behind_proxy(&shared, &snapshot, &stream, peer, &listener, at)).await,
                        };
                        // Not needed past the PROXY header: not kept for the session's life.
                        drop(listener);
                        match admitted {
                            Some((source, slot)) => {
                                let admitted = Box::pin(session::admit_tcp(&shared, &snapshot, stream, source, at, handshake_slot)).await;
                                if let Ok(granted) = admitted {
                                    session::forward_granted(&shared, &snapshot, granted).await;
                                }
                                drop(slot);
                            }
                            None => drop(stream),
                        }
                        shared.metrics.connections_open.dec();
                        drop(permit);
                    }.instrument(span));
                    release.opened(sessions.len());
                }
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        tracing::error!("session task panicked");
                    }
                    if release.closed(sessions.len()) {
                        release_asked.notify_one();
                    }
                }
            }
        }
        shared.state.draining.store(true, Ordering::Relaxed);
        shared.stopping.send_replace(true);
        accept_loops.shutdown().await;
        drop(rx);
        if !sessions.is_empty() {
            tracing::info!(
                sessions = sessions.len(),
                "stopped accepting; draining sessions"
            );
            let drain = shared.snapshot().config.timeouts.drain();
            let drained = tokio::time::timeout(drain, async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    sessions = sessions.len(),
                    "drain deadline passed; closing remaining sessions"
                );
                // Forwarded sessions end at once and log their end; what
                // still runs after a short grace (handshakes waiting on
                // the directory) is aborted.
                shared.drain_cut.send_replace(true);
                let _ = tokio::time::timeout(DRAIN_CUT_GRACE, async {
                    while sessions.join_next().await.is_some() {}
                })
                .await;
                sessions.shutdown().await;
            }
        }
        // QUIC connections still open are told (their sessions have ended
        // or were cut); the close gets a moment to reach the clients.
        for endpoint in &quic_endpoints {
            endpoint.close(session::client::quic_code(Code::Unavailable), b"stopping");
        }
        for endpoint in &quic_endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        let _ = stop_background.send(true);
        while background.join_next().await.is_some() {}
        shared.state.serving.store(false, Ordering::Relaxed);
        tracing::info!(gateway_id = %shared.snapshot().config.gateway_id, "gateway stopped");
    }
}

/// Accept on one listener. The connection limit and the address lists are
/// checked here, before the connection is handed on or any byte is read.
async fn accept_loop(
    shared: Arc<Shared>,
    bound: BoundListener,
    connections: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    tx: mpsc::Sender<Arrival>,
) {
    let accepted_total = shared
        .metrics
        .connections_accepted
        .with_label_values(&[&bound.name]);
    let listener_name: Arc<str> = Arc::from(bound.name.as_str());
    loop {
        let (stream, peer) = match bound.listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: back off briefly.
                tracing::warn!(listener = %bound.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let at = Instant::now();
        accepted_total.inc();
        let snapshot = shared.snapshot();
        let source_slot = match &bound.proxy {
            None => match admit(&shared, &snapshot, peer, &bound.name, at) {
                Ok(slot) => Some(slot),
                Err(code) => {
                    refuse_at_accept(stream, code, &refusing);
                    continue;
                }
            },
            // Behind a load balancer: only the balancer may connect; the
            // client's own address is checked once the header is read.
            Some(trusted) => {
                if !trusted.admits(peer.ip()) {
                    shared.metrics.admission(Stage::Address, Outcome::Deny);
                    tracing::warn!(%peer, listener = %bound.name, "refused: not a trusted load balancer on a PROXY protocol listener");
                    continue;
                }
                None
            }
        };
        let Some((permit, handshake_slot)) = take_places(&shared, &snapshot, &connections, peer)
        else {
            refuse_at_accept(stream, Code::OverLimit, &refusing);
            continue;
        };
        // TCP_NODELAY and keepalive come from the listening socket
        // (listener::bind).
        if tx
            .send(Arrival::Tcp(Box::new(Accepted {
                stream,
                peer,
                at,
                permit,
                handshake_slot,
                source_slot,
                snapshot,
                listener: Arc::clone(&listener_name),
            })))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Take QUIC connections on one endpoint. Each first packet is checked
/// before any handshake work: Retry under load, then the address lists,
/// the per-source limits, the connection limit and the handshake budget.
/// A refused connection gets a CONNECTION_REFUSED close and costs nothing
/// more.
async fn quic_accept_loop(
    shared: Arc<Shared>,
    bound: QuicListener,
    connections: Arc<Semaphore>,
    tx: mpsc::Sender<Arrival>,
) {
    let QuicListener { name, endpoint } = bound;
    let accepted_total = shared
        .metrics
        .connections_accepted
        .with_label_values(&[&name]);
    let count = |outcome: &str| shared.metrics.quic_connection(outcome);
    // When this loop ends (the gateway stops), the endpoint takes no new
    // connection; those open go on until their sessions end.
    let _closing = RefuseNewConnections(endpoint.clone());
    while let Some(incoming) = endpoint.accept().await {
        let at = Instant::now();
        let peer = incoming.remote_address();
        let snapshot = shared.snapshot();
        let budget = snapshot
            .config
            .limits
            .max_handshakes
            .min(snapshot.config.limits.max_connections);
        let first = crate::accept::quic::first_packet(
            snapshot.config.quic.retry,
            incoming.remote_address_validated(),
            shared.handshake_slots.held(),
            budget,
        );
        if first == crate::accept::quic::FirstPacket::Retry && incoming.may_retry() {
            count("retry");
            let _ = incoming.retry();
            continue;
        }
        accepted_total.inc();
        let source_slot = match admit(&shared, &snapshot, peer, &name, at) {
            Ok(slot) => slot,
            Err(_) => {
                count("refused");
                incoming.refuse();
                continue;
            }
        };
        let Some((permit, handshake_slot)) = take_places(&shared, &snapshot, &connections, peer)
        else {
            count("refused");
            incoming.refuse();
            continue;
        };
        count("accepted");
        let arrived = QuicAccepted {
            incoming,
            peer,
            at,
            permit,
            handshake_slot,
            source_slot,
            snapshot,
        };
        if tx.send(Arrival::Quic(Box::new(arrived))).await.is_err() {
            return;
        }
    }
}

/// A place in the connection limit and in the handshake budget for a new
/// connection from `peer`, TCP or QUIC; `None` (counted and logged) when
/// either is full.
fn take_places(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    connections: &Arc<Semaphore>,
    peer: SocketAddr,
) -> Option<(OwnedSemaphorePermit, HandshakeSlot)> {
    let Ok(permit) = Arc::clone(connections).try_acquire_owned() else {
        shared.metrics.admission(Stage::Limit, Outcome::Deny);
        if let Some(suppressed) = shared.log_limit.allow("connection limit") {
            tracing::warn!(%peer, limit = snapshot.config.limits.max_connections, code = Code::OverLimit.as_str(), suppressed, "refused: connection limit reached");
        }
        return None;
    };
    let Ok(handshake_slot) = shared.handshake_slots.acquire() else {
        shared.metrics.admission(Stage::Limit, Outcome::Deny);
        if let Some(suppressed) = shared.log_limit.allow("handshake limit") {
            tracing::warn!(%peer, limit = snapshot.config.limits.max_handshakes, code = Code::OverLimit.as_str(), suppressed, "refused: handshake limit reached (every handshake in progress has spoken)");
        }
        return None;
    };
    Some((permit, handshake_slot))
}

/// Turns the endpoint's server side off when dropped.
struct RefuseNewConnections(quinn::Endpoint);

impl Drop for RefuseNewConnections {
    fn drop(&mut self) {
        self.0.set_server_config(None);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The global address lists and the per-source limits for `source`: the
/// peer, or the client behind a trusted load balancer.
fn admit(
    shared: &Shared,
    snapshot: &Snapshot,
    source: SocketAddr,
    listener: &str,
    at: Instant,
) -> Result<SourceSlot, Code> {
    if !snapshot.policy.admits(source.ip()) {
        shared.metrics.admission(Stage::Address, Outcome::Deny);
        if let Some(suppressed) = shared.log_limit.allow("address not allowed") {
            tracing::info!(peer = %source, listener, code = Code::AddressNotAllowed.as_str(), suppressed, "refused: source address not allowed");
        }
        return Err(Code::AddressNotAllowed);
    }
    shared.metrics.admission(Stage::Address, Outcome::Allow);
    snapshot
        .source_limits
        .admit(source.ip(), at.into_std())
        .map_err(|why| {
            shared.metrics.admission(Stage::Limit, Outcome::Deny);
            if let Some(suppressed) = shared.log_limit.allow(why.as_str()) {
                tracing::info!(peer = %source, listener, code = Code::OverLimit.as_str(), reason = why.as_str(), suppressed, "refused: source limit");
            }
            Code::OverLimit
        })
}

/// On a PROXY protocol listener: read the header (within the handshake
/// deadline), then admit the client's address. `None`: refused or closed.
async fn behind_proxy(
    shared: &Shared,
    snapshot: &Snapshot,
    stream: &TcpStream,
    peer: SocketAddr,
    listener: &str,
    at: Instant,
) -> Option<(SocketAddr, SourceSlot)> {
    let remaining =
        (at + snapshot.config.timeouts.handshake()).saturating_duration_since(Instant::now());
    let header = match proxy_protocol::read_header(stream, remaining).await {
        Ok(h) => h,
        Err(e) => {
            shared.metrics.admission(Stage::Address, Outcome::Error);
            tracing::warn!(%peer, listener, error = %e, "refused: missing or malformed PROXY protocol header");
            return None;
        }
    };
    // A LOCAL or UNKNOWN header carries no client: a balancer's health
    // check. It is never served (serving it as the balancer's own address
    // would let anyone behind the balancer bypass the allow-lists).
    let Some(source) = header.source else {
        shared
            .metrics
            .proxy_checks
            .with_label_values(&[listener])
            .inc();
        tracing::debug!(%peer, listener, "PROXY header without a client (LOCAL or UNKNOWN): a health check; closed");
        return None;
    };
    match admit(shared, snapshot, source, listener, at) {
        Ok(slot) => Some((source, slot)),
        Err(code) => {
            session::refuse_unauthenticated_ref(stream, code).await;
            None
        }
    }
}

async fn wait(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The gateway's background tasks.
#[derive(Debug, Clone, Copy)]
enum Background {
    Health,
    Directory,
    DirectoryTls,
    Discovery,
    Grants,
}

impl Background {
    async fn run(self, shared: &Shared) {
        match self {
            Background::Health => check_health(shared).await,
            Background::Directory => watch_directory(shared).await,
            Background::DirectoryTls => watch_directory_tls(shared).await,
            Background::Discovery => discover_members(shared).await,
            Background::Grants => keep_grant_channels(shared).await,
        }
    }
}

/// Run the health checks of the current snapshot's pools; start over on the
/// new pools after each reload.
async fn check_health(shared: &Shared) {
    let mut reloaded = shared.reloaded.subscribe();
    loop {
        reloaded.mark_unchanged();
        let snap = shared.snapshot();
        let changed = async {
            if reloaded.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        crate::upstream::health::run(&snap.pools, &snap.config.health, &shared.metrics, changed)
            .await;
    }
}

/// Keep a control channel to every member of the current pools
/// (`grants.rs`); members that stay across reloads keep theirs.
async fn keep_grant_channels(shared: &Shared) {
    let current = || {
        let snap = shared.snapshot();
        let context = crate::upstream::grants::ChannelContext {
            key: shared.key(),
            gateway_id: snap.config.gateway_id.clone(),
            connect_timeout: snap.config.timeouts.hsm_connect(),
            handshake_timeout: snap.config.timeouts.handshake(),
            metrics: shared.metrics.clone(),
        };
        (Arc::clone(&snap.pools), context)
    };
    crate::upstream::grants::run(current, shared.reloaded()).await;
}

/// Follow the DNS pools of the current snapshot (`discovery.rs`); start
/// over on the new pools after each reload.
async fn discover_members(shared: &Shared) {
    let mut reloaded = shared.reloaded.subscribe();
    loop {
        // Marked before the snapshot is taken: a reload in between restarts
        // discovery once more instead of being missed.
        reloaded.mark_unchanged();
        let snap = shared.snapshot();
        let changed = async {
            if reloaded.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        crate::upstream::discovery::run(
            &snap.config.pools,
            &snap.pools,
            &snap.config.discovery,
            &shared.metrics,
            changed,
        )
        .await;
    }
}

/// Re-read the directory link's TLS files of the config in force when they
/// change (cert-manager and Kubernetes secrets rewrite them in place).
async fn watch_directory_tls(shared: &Shared) {
    let mut ticks = tokio::time::interval(crate::control::directory_tls::POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(tls) = shared.snapshot().authz.client().tls() {
            crate::control::directory_tls::reload_if_changed(tls, &shared.metrics);
        }
    }
}

/// Keep `directory_reachable` current for the directory of the config in
/// force (after a reload, with the new endpoint and interval): a connection
/// to its endpoint (TCP, and the TLS handshake with an https:// endpoint)
/// every health interval. It carries no request, so it does not show in
/// the directory's audit log.
async fn watch_directory(shared: &Shared) {
    let mut reloaded = shared.reloaded.subscribe();
    loop {
        reloaded.mark_unchanged();
        let snap = shared.snapshot();
        tokio::select! {
            () = probe_directory(shared, &snap) => {}
            changed = reloaded.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Probe the directory of `snap` forever (see [`watch_directory`]).
async fn probe_directory(shared: &Shared, snap: &Snapshot) {
    let endpoint = &snap.config.directory.endpoint;
    let client = snap.authz.client();
    // The first check runs at once: readiness needs it.
    let mut ticks = tokio::time::interval(Duration::from_millis(snap.config.health.interval_ms));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Warned at the first failed check, then at most every
    // DIRECTORY_WARN_EVERY until it answers: an operator tailing the log
    // sees it without a line per health interval.
    let mut down_since: Option<(Instant, Instant)> = None;
    let mut first = true;
    loop {
        ticks.tick().await;
        // Bounded by directory.connect_timeout_ms inside.
        let failure = client.probe().await.err().map(|e| e.to_string());
        let was_reachable = shared
            .state
            .directory_reachable
            .swap(failure.is_none(), Ordering::Relaxed);
        let now = Instant::now();
        match (failure, &mut down_since) {
            (None, None) => {
                // Once at start; not again when a reload restarts the checks.
                if first && !was_reachable {
                    tracing::info!(%endpoint, "directory reachable");
                }
            }
            (None, Some((since, _))) => {
                tracing::info!(%endpoint, down_for_ms = since.elapsed().as_millis() as u64, "directory reachable");
                down_since = None;
            }
            (Some(error), None) => {
                tracing::warn!(%endpoint, %error, "directory unreachable: new clients without a cached decision get code 4 (unavailable)");
                down_since = Some((now, now));
            }
            (Some(error), Some((since, warned))) => {
                if now.duration_since(*warned) >= DIRECTORY_WARN_EVERY {
                    tracing::warn!(%endpoint, %error, down_for_ms = since.elapsed().as_millis() as u64, "directory still unreachable");
                    *warned = now;
                }
            }
        }
        first = false;
    }
}

fn refuse_at_accept(stream: TcpStream, code: Code, refusing: &Arc<Semaphore>) {
    if let Ok(slot) = Arc::clone(refusing).try_acquire_owned() {
        tokio::spawn(async move {
            session::refuse_unauthenticated(stream, code).await;
            drop(slot);
        });
    }
}
