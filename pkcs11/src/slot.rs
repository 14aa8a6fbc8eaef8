//! Slots and tokens: one per configured partition, with its login state
//! and its small pool of pipelined hsmgate connections.
//!
//! A slot whose client config names a sealed key file needs the user PIN
//! (the passphrase) before it can connect at all (`CKF_LOGIN_REQUIRED`);
//! other slots are usable at once and accept any `C_Login`. Connections are
//! made on first use and remade when the SDK reports one broken, so a
//! gateway that comes back is used again without reloading the library.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki_sys::*;
use std::collections::HashMap;

use hsmgate_client::{ClientConfig, ClientError, ConfigError, ConnectOptions, OaepHash, Session};

/// What a slot knows before any connection.
pub struct Slot {
    pub id: CK_SLOT_ID,
    /// The partition: the token's label.
    pub partition: String,
    pub config_path: PathBuf,
    /// The client config names a sealed key file: `C_Login` opens it.
    pub login_required: bool,
    state: Mutex<SlotState>,
    pool: Pool,
    /// Which RSA-OAEP hashes the HSM behind the slot runs, by key size.
    oaep: Mutex<HashMap<(OaepHash, usize), bool>>,
}

#[derive(Default)]
struct SlotState {
    /// The loaded client config; `None` until `C_Login` on a sealed slot.
    config: Option<Arc<ClientConfig>>,
    logged_in: bool,
}

/// Why a slot could not be opened at `C_Initialize`.
#[derive(Debug, thiserror::Error)]
#[error("slot {slot} ({path}): {reason}")]
pub struct SlotError {
    slot: CK_SLOT_ID,
    path: String,
    reason: String,
}

impl Slot {
    /// Load slot `id` from its client config. A config whose key files are
    /// sealed loads without keys; anything else wrong fails the library's
    /// initialization.
    pub fn open(id: CK_SLOT_ID, path: PathBuf, connections: usize) -> Result<Slot, SlotError> {
        let fail = |reason: String| SlotError {
            slot: id,
            path: path.display().to_string(),
            reason,
        };
        let (config, login_required) = match ClientConfig::load(&path) {
            Ok(config) => (Some(Arc::new(config)), false),
            Err(ConfigError::Locked { .. }) => (None, true),
            Err(e) => return Err(fail(e.to_string())),
        };
        let partition = match &config {
            Some(c) => c.partition.clone(),
            None => partition_of(&path).map_err(fail)?,
        };
        Ok(Slot {
            id,
            partition,
            config_path: path,
            login_required,
            state: Mutex::new(SlotState {
                config,
                logged_in: false,
            }),
            pool: Pool::new(connections),
            oaep: Mutex::new(HashMap::new()),
        })
    }

    /// What is known of RSA-OAEP with `hash` on keys of `size` bytes.
    pub fn oaep_support(&self, hash: OaepHash, size: usize) -> Option<bool> {
        self.oaep
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(hash, size))
            .copied()
    }

    pub fn set_oaep_support(&self, hash: OaepHash, size: usize, supported: bool) {
        self.oaep
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((hash, size), supported);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn logged_in(&self) -> bool {
        self.state().logged_in
    }

    /// The config to connect with; `CKR_USER_NOT_LOGGED_IN` while a sealed
    /// key file is still closed.
    pub fn config(&self) -> Result<Arc<ClientConfig>, CK_RV> {
        self.state().config.clone().ok_or(CKR_USER_NOT_LOGGED_IN)
    }

    /// `C_Login(CKU_USER, pin)`: open the sealed key files with the PIN.
    pub fn login(&self, pin: &[u8]) -> Result<(), CK_RV> {
        if self.logged_in() {
            return Err(CKR_USER_ALREADY_LOGGED_IN);
        }
        if self.login_required {
            let config = match ClientConfig::load_unlocked(&self.config_path, Some(pin)) {
                Ok(c) => c,
                Err(ConfigError::WrongPassphrase { .. }) => return Err(CKR_PIN_INCORRECT),
                Err(_) => return Err(CKR_GENERAL_ERROR),
            };
            self.state().config = Some(Arc::new(config));
        }
        self.state().logged_in = true;
        Ok(())
    }

    /// `C_Logout`: a sealed slot forgets its keys and closes its
    /// connections.
    pub fn logout(&self) -> Result<Vec<Session>, CK_RV> {
        let mut state = self.state();
        if !state.logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        state.logged_in = false;
        if self.login_required {
            state.config = None;
            drop(state);
            return Ok(self.pool.take_all());
        }
        Ok(Vec::new())
    }

    /// A connection of the pool, made now if needed.
    pub async fn session(&self, config: &ClientConfig) -> Result<Session, ClientError> {
        self.pool.session(config).await
    }

    /// Close every pooled connection (`C_Finalize`, `C_Logout`).
    pub fn take_sessions(&self) -> Vec<Session> {
        self.pool.take_all()
    }
}

/// The partition named in a client config whose keys cannot be loaded yet.
fn partition_of(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: hsmgate_client::ConfigFile =
        toml::from_str(&text).map_err(|e| hsmgate_wire::text::config_message(e.message()))?;
    file.partition
        .ok_or_else(|| "partition: is required".to_owned())
}

/// A few connections to the slot's partition, each pipelining the requests
/// of any number of threads, used round-robin. With `transport = "quic"`
/// they are sessions on one QUIC connection (PROTOCOL.md §11): the first
/// authenticates it, the others are streams of it.
struct Pool {
    connections: Vec<tokio::sync::Mutex<Option<Session>>>,
    next: AtomicUsize,
    quic: tokio::sync::Mutex<Option<hsmgate_client::QuicConnection>>,
}

impl Pool {
    fn new(size: usize) -> Pool {
        Pool {
            connections: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            quic: tokio::sync::Mutex::new(None),
        }
    }

    async fn session(&self, config: &ClientConfig) -> Result<Session, ClientError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if let Some(session) = slot.as_ref().filter(|s| !s.is_broken()) {
            return Ok(session.clone());
        }
        // Only the caller holding this entry's lock reconnects it; others
        // wanting it wait for the result instead of piling on the gateway.
        let session = self.connect(config).await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    /// A new session: over TCP its own connection; over QUIC a new stream
    /// of the pool's connection, which is made (or made again, once it
    /// closed) with the first session.
    async fn connect(&self, config: &ClientConfig) -> Result<Session, ClientError> {
        if config.transport != hsmgate_client::Transport::Quic {
            return hsmgate_client::connect(config, &ConnectOptions::default()).await;
        }
        let mut quic = self.quic.lock().await;
        if let Some(conn) = quic.as_ref().filter(|c| c.close_code().is_none()) {
            match conn.open_session().await {
                Ok(session) => return Ok(session),
                Err(e) if !e.is_retryable() => return Err(e),
                // The connection is going away (a gateway that stops
                // answers new streams with code 4): make a new one.
                Err(_) => {}
            }
        }
        let (conn, session) =
            hsmgate_client::connect_quic(config, &ConnectOptions::default()).await?;
        *quic = Some(conn);
        Ok(session)
    }

    fn take_all(&self) -> Vec<Session> {
        // The connection closes once its last session is gone too.
        if let Ok(mut quic) = self.quic.try_lock() {
            quic.take();
        }
        self.connections
            .iter()
            .filter_map(|c| c.try_lock().ok().and_then(|mut s| s.take()))
            .collect()
    }
}
