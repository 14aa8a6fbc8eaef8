//! The HSM node: its state and the accept loop.
//!
//! [`HsmNode`] holds the configuration, the node's static key, the gateways
//! it trusts ([`crate::trust`]), its session slots ([`crate::slots`]) and,
//! per partition, the authorized partition keys and the key store.
//! [`HsmNode::run`] accepts connections, bounds those still in their first
//! stage (`limits.max_pending`; beyond it a connection is closed at once)
//! and hands each one to [`crate::session`], whose first stage
//! ([`crate::gatekeeper`]) answers probes, runs control connections and
//! checks grants. Session limits apply only once a grant is verified, so
//! neither probes nor strangers take session slots. On shutdown it stops
//! accepting, lets running sessions continue up to
//! `limits.drain_timeout_ms`, then cuts what is left.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hsmgate_wire::{PublicKey, StaticKeypair};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{ConfigProblem, HsmConfig, StoreKind};
use crate::gatekeeper::{Gatekeeper, Readiness};
use crate::keystore::{KeyStore, KeyStoreError};
use crate::metrics::NodeMetrics;
use crate::session;
use crate::slots::SessionSlots;
use crate::store::Store;
use crate::token::{TokenError, TokenStore};
use crate::trust::GatewayTrust;

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    InvalidConfig(Vec<ConfigProblem>),
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// One partition this node serves.
pub(crate) struct Partition {
    pub(crate) name: String,
    /// Partition keys allowed in; a reload may change them.
    client_keys: RwLock<HashSet<PublicKey>>,
    pub(crate) store: Store,
}

impl Partition {
    pub(crate) fn allows(&self, key: &PublicKey) -> bool {
        self.client_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }

    fn set_client_keys(&self, keys: HashSet<PublicKey>) {
        *self
            .client_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys;
    }
}

/// An HSM node: terminates inner channels and runs key operations.
pub struct HsmNode {
    config: HsmConfig,
    partitions: HashMap<String, Arc<Partition>>,
    gatekeeper: Gatekeeper,
    slots: Arc<SessionSlots>,
    next_session: AtomicU64,
    metrics: Arc<NodeMetrics>,
}

impl std::fmt::Debug for HsmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmNode")
            .field("hsm_id", &self.config.hsm_id)
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl HsmNode {
    /// Validate `config` and open (creating if needed) the key store of every
    /// partition under `config.state_dir`. `config.key_file` is not read:
    /// the caller passes the key pair.
    pub fn new(config: HsmConfig, key: StaticKeypair) -> Result<HsmNode, HsmError> {
        config.validate().map_err(HsmError::InvalidConfig)?;
        let metrics = Arc::new(NodeMetrics::new());
        let mut partitions = HashMap::new();
        let mut tokens = Vec::new();
        for p in &config.partitions {
            // validate() checked every key text.
            let client_keys = p
                .client_keys
                .iter()
                .filter_map(|k| PublicKey::from_text(k).ok())
                .collect();
            let max_keys = config.limits.max_keys_per_partition;
            let store = match (p.store, &p.pkcs11) {
                (StoreKind::Pkcs11, Some(token)) => {
                    let store = TokenStore::open(&p.name, token, max_keys, Arc::clone(&metrics))?;
                    tokens.push(Arc::clone(&store));
                    Store::Token(store)
                }
                _ => {
                    let store = KeyStore::open(&config.state_dir.join(&p.name), max_keys)?;
                    metrics.store_ready.with_label_values(&[&p.name]).set(1);
                    Store::Software(Mutex::new(store))
                }
            };
            partitions.insert(
                p.name.clone(),
                Arc::new(Partition {
                    name: p.name.clone(),
                    client_keys: RwLock::new(client_keys),
                    store,
                }),
            );
        }
        let slots = Arc::new(SessionSlots::new(&config.limits));
        let gatekeeper = Gatekeeper::new(
            Arc::new(GatewayTrust::new(&config.gateways)),
            key.clone(),
            config.hsm_id.clone(),
            slots.status(),
            Duration::from_millis(config.limits.first_frame_timeout_ms),
            Duration::from_millis(config.limits.handshake_timeout_ms),
        )
        .with_readiness(Readiness::new(move || tokens.iter().all(|t| t.is_ready())));
        Ok(HsmNode {
            config,
            partitions,
            gatekeeper,
            slots,
            next_session: AtomicU64::new(1),
            metrics,
        })
    }

    /// Put the reloadable parts of `new` in force (SIGHUP): the trusted
    /// gateway keys, each partition's client keys and the node's own key
    /// pair `key` (read from `new.key_file`). Sessions already running keep
    /// what they started with; grant keys held by a gateway no longer
    /// trusted are withdrawn at once. Anything else that differs from the
    /// config the node started with needs a restart: the reload is then
    /// refused as a whole, naming those fields.
    pub fn reload(&self, new: &HsmConfig, key: StaticKeypair) -> Result<Reloaded, Vec<String>> {
        let changed = restart_only_changes(&self.config, new);
        if !changed.is_empty() {
            return Err(changed
                .into_iter()
                .map(|field| format!("{field}: changes only with a restart"))
                .collect());
        }
        // validate() checked every key text.
        let parse = |keys: &[String]| -> HashSet<PublicKey> {
            keys.iter()
                .filter_map(|k| PublicKey::from_text(k).ok())
                .collect()
        };
        let withdrawn_grant_keys = self.trust().set_trusted(parse(&new.gateways.trusted_keys));
        for p in &new.partitions {
            if let Some(partition) = self.partitions.get(&p.name) {
                partition.set_client_keys(parse(&p.client_keys));
            }
        }
        let old_key = self.public_key();
        let key_changed = old_key != key.public();
        if key_changed {
            self.gatekeeper.use_key(key);
        }
        Ok(Reloaded {
            old_key,
            key_changed,
            withdrawn_grant_keys,
        })
    }

    /// The node's metrics (`/metrics` of its admin listener).
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// Each partition and whether its key store serves now; the node is
    /// ready when all do.
    pub fn readiness(&self) -> Vec<(String, bool)> {
        let mut out: Vec<_> = self
            .partitions
            .values()
            .map(|p| (p.name.clone(), p.store.is_ready()))
            .collect();
        out.sort();
        out
    }

    /// The node's static public key, which clients pin.
    pub fn public_key(&self) -> PublicKey {
        self.gatekeeper.keypair().public()
    }

    pub fn hsm_id(&self) -> &str {
        &self.config.hsm_id
    }

    pub fn config(&self) -> &HsmConfig {
        &self.config
    }

    pub(crate) fn keypair(&self) -> Arc<StaticKeypair> {
        self.gatekeeper.keypair()
    }

    pub(crate) fn partition(&self, name: &str) -> Option<&Arc<Partition>> {
        self.partitions.get(name)
    }

    pub(crate) fn gatekeeper(&self) -> &Gatekeeper {
        &self.gatekeeper
    }

    /// The node's session slots (sessions in use, status for gateways).
    pub fn slots(&self) -> &Arc<SessionSlots> {
        &self.slots
    }

    /// The gateways this node trusts and the grant keys they hold now.
    pub fn trust(&self) -> &Arc<GatewayTrust> {
        self.gatekeeper.trust()
    }

    /// Accept connections on `listener` until `shutdown` completes, then
    /// drain running sessions (up to `limits.drain_timeout_ms`) and return.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let limits = &self.config.limits;
        if !self.trust().takes_grants() {
            tracing::warn!(
                "gateways.trusted_keys is empty and insecure_allow_direct is on: anyone who \
                 reaches this port can open sessions with a partition key alone"
            );
        } else if self.trust().allows_direct() {
            tracing::warn!(
                "insecure_allow_direct is on: sessions without a gateway grant are served too"
            );
        }
        self.gatekeeper.start_control();
        let pending = Arc::new(Semaphore::new(limits.max_pending));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Typically out of file descriptors: back off briefly.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = pending.clone().try_acquire_owned() else {
                        // Only strangers or a runaway gateway get here: a
                        // gateway's connections leave this stage at once.
                        tracing::warn!(%peer, limit = limits.max_pending, "too many connections in their first stage; closing");
                        continue;
                    };
                    let id = self.next_session.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("session", id, %peer, session_id = tracing::field::Empty);
                    let node = Arc::clone(&self);
                    sessions.spawn(session::serve(node, stream, permit).instrument(span));
                }
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!("session task panicked");
                    }
                }
            }
        }
        drop(listener);
        self.gatekeeper.stop_control();
        if !sessions.is_empty() {
            tracing::info!(
                sessions = sessions.len(),
                "stopped accepting; draining sessions"
            );
            let drain = Duration::from_millis(limits.drain_timeout_ms);
            let drained = tokio::time::timeout(drain, async {
                while sessions.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    sessions = sessions.len(),
                    "drain deadline passed; closing remaining sessions"
                );
                sessions.shutdown().await;
            }
        }
        tracing::info!(hsm_id = %self.config.hsm_id, "hsm node stopped");
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The node's public key before the reload.
    pub old_key: PublicKey,
    /// The node's key pair was replaced.
    pub key_changed: bool,
    /// Grant keys withdrawn because their gateway is no longer trusted.
    pub withdrawn_grant_keys: usize,
}

/// The fields of `new` that differ from `old` and that a reload cannot
/// change: listeners, limits, the key stores (partitions, their store and
/// token settings) and how gateways are trusted (only the key list may
/// change, and not between empty and non-empty: that switches grants on or
/// off).
fn restart_only_changes(old: &HsmConfig, new: &HsmConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.hsm_id != new.hsm_id {
        changed.push("hsm_id");
    }
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.state_dir != new.state_dir {
        changed.push("state_dir");
    }
    if old.limits != new.limits {
        changed.push("limits");
    }
    if old.admin != new.admin {
        changed.push("admin");
    }
    let (og, ng) = (&old.gateways, &new.gateways);
    if og.insecure_allow_direct != ng.insecure_allow_direct
        || og.max_clock_skew_secs != ng.max_clock_skew_secs
        || og.max_control_connections != ng.max_control_connections
        || og.trusted_keys.is_empty() != ng.trusted_keys.is_empty()
    {
        changed.push("gateways (other than the keys in trusted_keys)");
    }
    let without_keys = |p: &crate::config::PartitionConfig| crate::config::PartitionConfig {
        client_keys: Vec::new(),
        ..p.clone()
    };
    if old.partitions.len() != new.partitions.len()
        || old
            .partitions
            .iter()
            .zip(&new.partitions)
            .any(|(o, n)| without_keys(o) != without_keys(n))
    {
        changed.push("partitions (other than their client_keys)");
    }
    changed
}
