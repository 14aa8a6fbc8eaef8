//! The PKCS#11 key store: a partition's keys inside a token (a hardware
//! HSM, SoftHSM2) driven through its vendor library with `cryptoki`.
//!
//! ```text
//! TokenStore ─ module (library loaded once per process, token found by label or serial)
//!            ─ pool (bounded logged-in sessions, re-opened after a reset)
//!            ─ ops (each request of PROTOCOL.md §7 on the token)
//!            ─ monitor (readiness: the token answers and our marker object is there)
//! ```
//!
//! Readiness: a thread checks the token every second with a fresh session:
//! it must find the store's marker object (a data object the store creates
//! at start, labelled `label_prefix + "hsmgate/ready"`, a label no key can
//! have). A token that is unreachable, reset to empty or no longer logged in
//! fails the check; the store then answers every operation `internal`, the
//! node's probe says `DOWN` and gateways send new sessions elsewhere. When
//! the check passes again, the pooled sessions are dropped (their view of
//! the token may be stale) and the store serves again, without a restart.

mod module;
mod ops;
mod pool;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use cryptoki::types::AuthPin;
use hsmgate_wire::ops::{Reply, Request, Status};
use zeroize::Zeroizing;

use crate::config::Pkcs11Config;
use crate::metrics::NodeMetrics;
use module::TokenRef;
use pool::{Pool, TakeError, is_session_fault};

/// How often the monitor checks the token.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The marker object's label, after the prefix; '/' is in no key's label.
const MARKER_LABEL: &str = "hsmgate/ready";
const MARKER_APPLICATION: &[u8] = b"hsmgate-ready";

/// Why a token store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition}: PKCS#11 {what}")]
pub struct TokenError {
    partition: String,
    what: String,
}

/// One partition's keys in a PKCS#11 token.
pub struct TokenStore {
    partition: String,
    prefix: String,
    max_keys: usize,
    pool: Pool,
    ctx: Pkcs11,
    module: std::path::PathBuf,
    token: TokenRef,
    ready: AtomicBool,
    metrics: Arc<NodeMetrics>,
}

/// The PIN: the first line of `pin_file`, or `pin_env`'s value.
fn read_pin(config: &Pkcs11Config) -> Result<Zeroizing<String>, String> {
    if let Some(var) = &config.pin_env {
        return std::env::var(var)
            .map(Zeroizing::new)
            .map_err(|_| format!("pin_env: {var} is not set"));
    }
    let Some(path) = &config.pin_file else {
        return Err("no pin_file or pin_env".into());
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).map_err(|e| format!("pin_file {}: {e}", path.display()))?;
        let me = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| hsmgate_wire::keys::effective_uid_from_proc_status(&s));
        if let Some(problem) =
            hsmgate_wire::keys::private_file_mode_problem(meta.mode(), meta.uid(), me)
        {
            return Err(format!(
                "pin_file {}: refused: {problem}; it holds a PIN: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("pin_file {}: {e}", path.display()))?,
    );
    let pin = text.lines().next().unwrap_or_default();
    if pin.is_empty() {
        return Err(format!("pin_file {}: empty", path.display()));
    }
    Ok(Zeroizing::new(pin.to_owned()))
}

impl TokenStore {
    /// Load the library, find the token, log in (a wrong PIN fails here,
    /// naming the partition), place the readiness marker, and start the
    /// monitor.
    pub fn open(
        partition: &str,
        config: &Pkcs11Config,
        max_keys: usize,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Arc<TokenStore>, TokenError> {
        let fail = |what: String| TokenError {
            partition: partition.to_owned(),
            what,
        };
        let pin = read_pin(config).map_err(fail)?;
        let ctx = module::load(&config.module).map_err(fail)?;
        let token = match (&config.token_label, &config.token_serial) {
            (Some(label), _) => TokenRef::Label(label.clone()),
            (None, Some(serial)) => TokenRef::Serial(serial.clone()),
            (None, None) => return Err(fail("names no token".into())),
        };
        let slot = module::find_slot(&ctx, &token).map_err(fail)?;
        let pool = Pool::new(
            ctx.clone(),
            slot,
            AuthPin::new(pin.as_str().into()),
            config.sessions,
            Duration::from_millis(config.session_wait_ms),
        );
        let store = TokenStore {
            partition: partition.to_owned(),
            prefix: config.label_prefix.clone(),
            max_keys,
            pool,
            ctx,
            module: config.module.clone(),
            token: token.clone(),
            ready: AtomicBool::new(false),
            metrics,
        };
        let session = store.pool.open().map_err(|e| match e {
            Error::Pkcs11(RvError::PinIncorrect, _) => fail(format!("login to {token}: wrong PIN")),
            e => fail(format!("login to {token}: {e}")),
        })?;
        store
            .ensure_marker(&session)
            .map_err(|e| fail(format!("{token}: cannot place the readiness marker: {e}")))?;
        drop(session);
        store.set_ready(true);
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name(format!("token-{partition}"))
            .spawn(move || monitor(weak))
            .map_err(|e| fail(format!("cannot start its monitor: {e}")))?;
        tracing::info!(partition, %token, "PKCS#11 key store ready");
        Ok(store)
    }

    pub fn partition(&self) -> &str {
        &self.partition
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics
            .store_ready
            .with_label_values(&[&self.partition])
            .set(i64::from(ready));
    }

    fn marker_template(&self) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(MARKER_APPLICATION.to_vec()),
            Attribute::Label(format!("{}{MARKER_LABEL}", self.prefix).into_bytes()),
        ]
    }

    fn has_marker(&self, session: &Session) -> Result<bool, Error> {
        Ok(!session.find_objects(&self.marker_template())?.is_empty())
    }

    fn ensure_marker(&self, session: &Session) -> Result<(), Error> {
        if self.has_marker(session)? {
            return Ok(());
        }
        let mut template = self.marker_template();
        template.extend([
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Value(b"hsmgate".to_vec()),
        ]);
        session.create_object(&template).map(drop)
    }

    /// One readiness check, with a fresh session: the marker is there (or,
    /// when the token answers normally but lacks it, it is put back). A
    /// token that does not answer at all gets the library reset (at most
    /// every few seconds), after which it is looked up again.
    fn check(&self) -> Result<(), String> {
        let session = match self.pool.open() {
            Ok(s) => s,
            Err(e) => {
                if module::reset(&self.module, &self.ctx) {
                    tracing::warn!(partition = %self.partition, error = %e, "token unreachable: re-initialized the PKCS#11 library");
                    if let Ok(slot) = module::find_slot(&self.ctx, &self.token) {
                        self.pool.set_slot(slot);
                    }
                    self.pool.clear();
                }
                return Err(format!("cannot open a session: {e}"));
            }
        };
        if self.has_marker(&session).map_err(|e| e.to_string())? {
            return Ok(());
        }
        match self.ctx.get_token_info(self.pool.slot()) {
            Ok(info) if info.token_initialized() => self
                .ensure_marker(&session)
                .map_err(|e| format!("the readiness marker is gone and cannot be put back: {e}")),
            Ok(_) => Err("the token is not initialized".into()),
            Err(e) => Err(format!("the token does not answer: {e}")),
        }
    }

    /// Run `request` on the token (a blocking call: run it off the async
    /// runtime). A session fault is retried once on a fresh session.
    pub fn execute(&self, request: &Request, version: u8) -> Result<Reply, Status> {
        if !self.is_ready() {
            return Err(Status::Internal);
        }
        for attempt in 0..2 {
            let started = Instant::now();
            let lent = match self.pool.take() {
                Ok(l) => l,
                Err(TakeError::Busy) => {
                    tracing::warn!(partition = %self.partition, "no free token session within session_wait_ms");
                    self.metrics
                        .token_errors
                        .with_label_values(&[&self.partition, "pool_busy"])
                        .inc();
                    return Err(Status::Internal);
                }
                Err(TakeError::Token(e)) => {
                    self.token_error(&e, "open session");
                    return Err(Status::Internal);
                }
            };
            self.metrics
                .token_sessions_in_use
                .with_label_values(&[&self.partition])
                .set(self.pool.in_use() as i64);
            let result = self.run_request(lent.session(), request, version);
            self.metrics
                .token_seconds
                .with_label_values(&[request.name()])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(reply) => return Ok(reply),
                Err(ops::Failure::Status(s)) => return Err(s),
                Err(ops::Failure::Token(e)) if is_session_fault(&e) && attempt == 0 => {
                    self.token_error(&e, request.name());
                    lent.discard();
                }
                Err(ops::Failure::Token(e)) => {
                    let status = ops::status_of(&e);
                    if status == Status::Internal {
                        self.token_error(&e, request.name());
                    }
                    if is_session_fault(&e) {
                        lent.discard();
                    }
                    return Err(status);
                }
            }
        }
        Err(Status::Internal)
    }

    fn token_error(&self, e: &Error, op: &str) {
        let name = module::rv_name(e);
        tracing::warn!(partition = %self.partition, op, error = %name, "PKCS#11 call failed");
        self.metrics
            .token_errors
            .with_label_values(&[&self.partition, &name])
            .inc();
    }

    /// Sessions waiting for a free token session (a gauge).
    pub fn waiters(&self) -> usize {
        self.pool.waiters.load(Ordering::Relaxed)
    }
}

/// Check the token every second while the store lives.
fn monitor(store: Weak<TokenStore>) {
    loop {
        std::thread::sleep(CHECK_INTERVAL);
        let Some(store) = store.upgrade() else {
            return;
        };
        let result = store.check();
        let was = store.is_ready();
        match (&result, was) {
            (Ok(()), false) => {
                store.pool.clear();
                store.set_ready(true);
                tracing::info!(partition = %store.partition, "PKCS#11 token is back: serving again");
            }
            (Err(why), true) => {
                store.set_ready(false);
                store.pool.clear();
                tracing::error!(partition = %store.partition, reason = %why, "PKCS#11 token unusable: not ready");
            }
            _ => {}
        }
        store
            .metrics
            .token_session_waiters
            .with_label_values(&[&store.partition])
            .set(store.waiters() as i64);
    }
}
