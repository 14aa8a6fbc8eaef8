//! hsmgate-rest: the REST access path. Applications that cannot load a
//! native provider (serverless functions, scripts, CI pipelines) call HSM
//! operations over HTTPS, authenticated by a JWT bearer token or by mutual
//! TLS; behind the API this service is an hsmgate client like any other,
//! with a pool of end-to-end sessions per partition (docs/REST.md).
//!
//! ```text
//! HTTPS (rustls, HTTP/1.1 + HTTP/2) ─▶ auth (JWT | client certificate)
//!   ─▶ rate limit ─▶ partition check ─▶ body ─▶ pooled hsmgate session ─▶ HSM
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod dev;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use config::{AuthMode, RestConfig, RestConfigError};

use auth::jwks::{Jwks, JwksError};
use auth::jwks_fetch::JwksFetcher;
use auth::jwt::JwtVerifier;
use config::KeySource;
use server::State;
use tls::{ListenerTls, ListenerTlsFiles};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {name} ({address}): cannot listen: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin listener {address}: cannot listen: {source}")]
    BindAdmin {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] hsmgate_authz::tls::TlsError),
    #[error("jwt: {0}")]
    Jwks(#[from] JwksError),
}

/// A running service.
pub struct RestService {
    state: Arc<State>,
    addresses: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    tls: Vec<Arc<ListenerTls>>,
    jwks_seen: std::sync::Mutex<Option<SystemTime>>,
    /// Wakes the JWKS refresh loop of a `jwks_url` (SIGHUP).
    refresh_now: Arc<tokio::sync::Notify>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The admin listener stops last, so that /readyz says "draining".
    admin_stop: watch::Sender<bool>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl RestService {
    /// Bind every listener, load the TLS files and the key set, and serve.
    /// Each partition's first hsmgate session is opened in the background.
    pub async fn start(config: RestConfig) -> Result<RestService, StartError> {
        let metrics = Arc::new(metrics::Metrics::new());
        let (jwt, fetcher) = match &config.jwt {
            Some(settings) => {
                let (keys, fetcher) = match &settings.keys {
                    KeySource::File(path) => (Jwks::load(path)?, None),
                    KeySource::Url { url, ca_file, .. } => {
                        let fetcher = JwksFetcher::new(url, ca_file.as_deref())?;
                        (fetcher.fetch().await?, Some(fetcher))
                    }
                };
                (Some(JwtVerifier::new(settings.clone(), keys)), fetcher)
            }
            None => (None, None),
        };
        let pools: HashMap<String, upstream::PartitionPool> = config
            .partitions
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    upstream::PartitionPool::new(p, metrics.clone()),
                )
            })
            .collect();
        let limits = &config.limits;
        let limiter =
            limit::RateLimiter::new(limits.requests_per_second, limits.burst, limits.max_callers);
        let failures = limit::RateLimiter::new(
            limits.auth_failures_per_second,
            limits.auth_failure_burst,
            limits.max_callers,
        );
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let (stop, stopping) = watch::channel(false);
        let mut bound = Vec::new();
        for l in &config.listeners {
            let listener =
                TcpListener::bind(l.address)
                    .await
                    .map_err(|source| StartError::Bind {
                        name: l.name.clone(),
                        address: l.address,
                        source,
                    })?;
            let tls = Arc::new(ListenerTls::load(ListenerTlsFiles {
                settings: config.tls.clone(),
                client_auth: l.auth == AuthMode::Mtls,
            })?);
            bound.push((l.clone(), listener, tls));
        }
        let admin_listener = match config.admin {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::BindAdmin { address, source })?,
            ),
            None => None,
        };
        let jwks_seen = jwks_file(&config).and_then(modified);
        let state = Arc::new(State {
            config,
            jwt,
            pools,
            limiter,
            failures,
            metrics,
            draining: AtomicBool::new(false),
        });
        let mut tasks = JoinSet::new();
        let mut addresses = Vec::new();
        let mut tls_all = Vec::new();
        for (l, listener, tls) in bound {
            let address = listener.local_addr().unwrap_or(l.address);
            addresses.push((l.name.clone(), address));
            tls_all.push(tls.clone());
            tasks.spawn(server::accept_loop(
                state.clone(),
                listener,
                l.name,
                l.auth,
                tls,
                connections.clone(),
                stopping.clone(),
            ));
        }
        let (admin_stop, admin_stopping) = watch::channel(false);
        let (admin, admin_task) = match admin_listener {
            Some(listener) => (
                listener.local_addr().ok(),
                Some(tokio::spawn(admin::serve(
                    state.clone(),
                    listener,
                    admin_stopping,
                ))),
            ),
            None => (None, None),
        };
        let refresh_now = Arc::new(tokio::sync::Notify::new());
        if let Some(fetcher) = fetcher {
            tasks.spawn(refresh_keys(
                state.clone(),
                fetcher,
                refresh_now.clone(),
                stopping.clone(),
            ));
        }
        tasks.spawn(keep_warm(state.clone(), stopping.clone()));
        Ok(RestService {
            state,
            addresses,
            admin,
            tls: tls_all,
            jwks_seen: std::sync::Mutex::new(jwks_seen),
            refresh_now,
            stop,
            tasks,
            admin_stop,
            admin_task,
        })
    }

    /// The HTTPS listeners' names and bound addresses.
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }

    /// The bound address of a listener by name.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The metrics in text form (tests, `hsmgate dev`).
    pub fn metrics_text(&self) -> String {
        self.state.metrics.render()
    }

    /// Re-read the TLS files and the key set now (SIGHUP). What fails to
    /// load is reported and the config in force stays.
    pub fn reload(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for tls in &self.tls {
            if let Err(e) = tls.reload() {
                problems.push(format!("tls: {e}"));
            }
        }
        if let Some(e) = self.reload_jwks() {
            problems.push(e);
        }
        problems
    }

    /// Re-read what changed on disk since it was read (polled).
    pub fn reload_if_changed(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for tls in &self.tls {
            if let Some(Err(e)) = tls.reload_if_changed() {
                problems.push(format!("tls: {e}"));
            }
        }
        if let Some(file) = jwks_file(&self.state.config) {
            let now = modified(file);
            let changed = self
                .jwks_seen
                .lock()
                .map(|seen| *seen != now)
                .unwrap_or(false);
            if changed && let Some(e) = self.reload_jwks() {
                problems.push(e);
            }
        }
        problems
    }

    fn reload_jwks(&self) -> Option<String> {
        let Some(verifier) = &self.state.jwt else {
            return None;
        };
        let Some(file) = jwks_file(&self.state.config) else {
            // A jwks_url: fetched by the refresh loop, now.
            self.refresh_now.notify_one();
            return None;
        };
        if let Ok(mut seen) = self.jwks_seen.lock() {
            *seen = modified(file);
        }
        match Jwks::load(file) {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), "JWKS loaded");
                verifier.replace_keys(keys);
                None
            }
            Err(e) => Some(format!("jwt.jwks_file: {e}")),
        }
    }

    /// Stop accepting, let requests in flight finish (until
    /// `drain_timeout_secs`), then close the hsmgate sessions.
    pub async fn drain(mut self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("listeners closed; closing the hsmgate sessions");
        for pool in self.state.pools.values() {
            pool.close().await;
        }
        let _ = self.admin_stop.send(true);
        if let Some(task) = self.admin_task.take() {
            let _ = task.await;
        }
    }
}

/// How often a partition without a session tries to open one.
const REWARM: std::time::Duration = std::time::Duration::from_secs(5);

/// Open each partition's first session at start, and again every
/// [`REWARM`] for a partition whose last connect failed: readiness then
/// follows the path to the HSM without waiting for a request.
async fn keep_warm(state: Arc<State>, mut stopping: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let mut warming = JoinSet::new();
        for (name, pool) in &state.pools {
            if first || !pool.is_reachable() {
                let (state, name) = (state.clone(), name.clone());
                warming.spawn(async move {
                    if let Some(pool) = state.pools.get(&name) {
                        pool.warm().await;
                    }
                });
            }
        }
        first = false;
        tokio::select! {
            _ = async { while warming.join_next().await.is_some() {} } => {}
            _ = stopping.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(REWARM) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Read every file the config names (TLS files, a JWKS file) as the
/// service would at start, without listening: `--check`. A `jwks_url` is
/// not fetched. Returns what was read, or every problem.
pub fn check_files(config: &RestConfig) -> Result<String, Vec<String>> {
    use hsmgate_authz::tls::TlsFiles;
    let mut problems = Vec::new();
    for l in &config.listeners {
        let files = ListenerTlsFiles {
            settings: config.tls.clone(),
            client_auth: l.auth == AuthMode::Mtls,
        };
        if let Err(e) = files.build() {
            problems.push(format!("listeners {} (tls): {e}", l.name));
        }
    }
    let keys = match config.jwt.as_ref().map(|j| &j.keys) {
        Some(KeySource::File(path)) => match Jwks::load(path) {
            Ok(keys) => format!(", {} token key(s)", keys.keys.len()),
            Err(e) => {
                problems.push(format!("jwt.jwks_file: {e}"));
                String::new()
            }
        },
        Some(KeySource::Url { url, .. }) => {
            format!(", token keys from {url} (not fetched by --check)")
        }
        None => String::new(),
    };
    if problems.is_empty() {
        Ok(format!(
            "{} listener(s), {} partition(s){keys}",
            config.listeners.len(),
            config.partitions.len()
        ))
    } else {
        Err(problems)
    }
}

/// The JWKS file of a `jwks_file` config.
fn jwks_file(config: &RestConfig) -> Option<&std::path::Path> {
    match config.jwt.as_ref().map(|j| &j.keys) {
        Some(KeySource::File(path)) => Some(path),
        _ => None,
    }
}

/// Fetches of a `jwks_url` caused by unknown `kid`s are this far apart at
/// least: a stranger sending made-up `kid`s cannot make the service hammer
/// the key server.
const EARLY_REFRESH_SPACING: std::time::Duration = std::time::Duration::from_secs(5);

/// Fetch a `jwks_url` every refresh interval, at once when asked (SIGHUP),
/// and early when a token names a `kid` the set lacks (a key rotation),
/// [`EARLY_REFRESH_SPACING`] apart at most. A failed fetch keeps the keys
/// in force and is counted.
async fn refresh_keys(
    state: Arc<State>,
    fetcher: JwksFetcher,
    now: Arc<tokio::sync::Notify>,
    mut stopping: watch::Receiver<bool>,
) {
    let Some(KeySource::Url { refresh, .. }) = state.config.jwt.as_ref().map(|j| j.keys.clone())
    else {
        return;
    };
    let unknown_kid = || async {
        match &state.jwt {
            Some(verifier) => verifier.unknown_kid().await,
            None => std::future::pending().await,
        }
    };
    let mut last = tokio::time::Instant::now();
    loop {
        let early_from = last + EARLY_REFRESH_SPACING;
        tokio::select! {
            _ = tokio::time::sleep_until(last + refresh) => {}
            _ = now.notified() => {}
            _ = async {
                unknown_kid().await;
                tokio::time::sleep_until(early_from).await;
            } => tracing::info!(url = %fetcher.url(), "a token named a kid the key set lacks: fetching it again"),
            _ = stopping.changed() => return,
        }
        last = tokio::time::Instant::now();
        let outcome = match fetcher.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %fetcher.url(), keys = keys.keys.len(), "JWKS fetched");
                if let Some(verifier) = &state.jwt {
                    verifier.replace_keys(keys);
                }
                "ok"
            }
            Err(e) => {
                tracing::warn!(url = %fetcher.url(), error = %e, "JWKS refresh failed; the keys in force stay");
                "failed"
            }
        };
        state
            .metrics
            .jwks_refreshes
            .with_label_values(&[outcome])
            .inc();
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
