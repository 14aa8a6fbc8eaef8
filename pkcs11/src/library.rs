//! The library's global state between `C_Initialize` and `C_Finalize`.
//!
//! The state lives behind one `RwLock` and is shared as an `Arc`: a call
//! takes a clone and works without holding the global lock, so any number
//! of application threads run at once (`CKF_OS_LOCKING_OK`).
//!
//! The library owns a small tokio runtime. A call that needs the network
//! hands a future to that runtime and waits for its result on a plain
//! channel: it never enters a runtime of the caller's, so an application
//! that runs its own tokio runtime (or none) is the same to it.
//!
//! `fork()`: the state records the process id it was made in. In a child
//! every call but `C_Initialize` answers `CKR_CRYPTOKI_NOT_INITIALIZED`
//! (PKCS#11 base §5.4: the child must initialize again), and `C_Initialize`
//! abandons the parent's state without touching it (its runtime threads do
//! not exist in the child, and its connections belong to the parent).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use cryptoki_sys::*;

use crate::config::Config;
use crate::log::{Level, Log};
use crate::objects::Objects;
use crate::session::Session;
use crate::slot::Slot;

static LIBRARY: RwLock<Option<Arc<Library>>> = RwLock::new(None);

/// How long `C_Finalize` waits for the runtime's tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

pub struct Library {
    pid: u32,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    pub slots: Vec<Arc<Slot>>,
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, Arc<Session>>>,
    next_session: AtomicU64,
    pub objects: Objects,
    pub log: Log,
}

/// How long the exit handler spends deleting session keys.
const EXIT_CLEANUP: Duration = Duration::from_secs(2);

/// At process exit (or when the library is unloaded), delete the session
/// keys of sessions the application left open: a JVM, for one, exits
/// without `C_Finalize`, and its session keys would stay on the HSM.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Ok(library) = get() else {
            return;
        };
        let handles: Vec<CK_SESSION_HANDLE> = library.sessions().keys().copied().collect();
        if handles.is_empty() {
            return;
        }
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = library.clone();
        // On a thread of its own, so that a gateway that does not answer
        // cannot hold the process's exit past the deadline.
        let spawned = std::thread::Builder::new()
            .name("hsmgate-pkcs11-exit".into())
            .spawn(move || {
                for h in handles {
                    let _ = crate::api::close_session(&worker, h);
                }
                let _ = done_tx.send(());
            });
        if spawned.is_ok() {
            let _ = done.recv_timeout(EXIT_CLEANUP);
        }
    });
}

fn register_exit_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
        // glibc registers it against this library's DSO handle, so it also
        // runs (and is removed) if the library is unloaded first.
        unsafe { libc::atexit(at_exit) };
    });
}

/// `C_Initialize`: load the config named by the environment (or the
/// default path), open the slots, start the runtime.
pub fn initialize() -> Result<(), CK_RV> {
    initialize_at(&Config::locate())
}

/// [`initialize`] with the config at `path`: for programs that link the
/// library as a Rust crate (the benchmarks) and cannot set the environment
/// safely once they run threads. Then call the `C_*` functions as usual.
pub fn initialize_at(path: &std::path::Path) -> Result<(), CK_RV> {
    let mut global = LIBRARY.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(existing) = global.take() {
        if existing.pid == std::process::id() {
            *global = Some(existing);
            return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
        }
        // A forked child: the parent's state is not ours to clean up.
        std::mem::forget(existing);
    }
    let config = Config::load(path).map_err(|e| {
        // The config names the log file, so this one goes to stderr.
        Log::stderr(Level::Error).error(&format!("C_Initialize: {e}"));
        CKR_GENERAL_ERROR
    })?;
    let log = match &config.log_file {
        Some(file) => Log::file(file, config.log_level).map_err(|e| {
            Log::stderr(Level::Error).error(&format!(
                "C_Initialize: cannot open log file {}: {e}",
                file.display()
            ));
            CKR_GENERAL_ERROR
        })?,
        None => Log::stderr(config.log_level),
    };
    let mut slots = Vec::with_capacity(config.slots.len());
    for (i, path) in config.slots.iter().enumerate() {
        let slot = Slot::open(i as CK_SLOT_ID, path.clone(), config.connections_per_slot).map_err(
            |e| {
                log.error(&format!("C_Initialize: {e}"));
                CKR_GENERAL_ERROR
            },
        )?;
        slots.push(Arc::new(slot));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hsmgate-pkcs11")
        .enable_all()
        .build()
        .map_err(|e| {
            log.error(&format!("C_Initialize: cannot start the runtime: {e}"));
            CKR_GENERAL_ERROR
        })?;
    log.info(&format!(
        "initialized from {}: {} slot(s): {}",
        path.display(),
        slots.len(),
        slots
            .iter()
            .map(|s| s.partition.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    register_exit_handler();
    *global = Some(Arc::new(Library {
        pid: std::process::id(),
        handle: runtime.handle().clone(),
        runtime: Mutex::new(Some(runtime)),
        slots,
        sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        objects: Objects::default(),
        log,
    }));
    Ok(())
}

/// `C_Finalize`: close every session (removing their session objects),
/// every connection, and stop the runtime.
pub fn finalize() -> Result<(), CK_RV> {
    let library = {
        let mut global = LIBRARY.write().unwrap_or_else(PoisonError::into_inner);
        match global.take() {
            Some(lib) if lib.pid == std::process::id() => lib,
            Some(other) => {
                std::mem::forget(other);
                return Err(CKR_CRYPTOKI_NOT_INITIALIZED);
            }
            None => return Err(CKR_CRYPTOKI_NOT_INITIALIZED),
        }
    };
    let handles: Vec<CK_SESSION_HANDLE> = library.sessions().keys().copied().collect();
    for handle in handles {
        let _ = crate::api::close_session(&library, handle);
    }
    let connections: Vec<_> = library
        .slots
        .iter()
        .flat_map(|s| s.take_sessions())
        .collect();
    let _ = library.block_on(async move {
        for session in connections {
            session.close().await;
        }
    });
    let runtime = library
        .runtime
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(runtime) = runtime {
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
    }
    library.log.info("finalized");
    Ok(())
}

/// The state, for every function but `C_Initialize`/`C_Finalize`.
pub fn get() -> Result<Arc<Library>, CK_RV> {
    let global = LIBRARY.read().unwrap_or_else(PoisonError::into_inner);
    match global.as_ref() {
        Some(lib) if lib.pid == std::process::id() => Ok(lib.clone()),
        _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

impl Library {
    /// Run `future` on the library's runtime and wait for it on this
    /// thread (never inside a caller's runtime).
    pub fn block_on<F>(&self, future: F) -> Result<F::Output, CK_RV>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        // An error here means the runtime dropped the task: the library is
        // being finalized under this call.
        rx.recv().map_err(|_| CKR_CRYPTOKI_NOT_INITIALIZED)
    }

    pub fn slot(&self, id: CK_SLOT_ID) -> Result<Arc<Slot>, CK_RV> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.slots.get(i))
            .cloned()
            .ok_or(CKR_SLOT_ID_INVALID)
    }

    /// The session table. Never taken while a session's own lock is held.
    pub fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<CK_SESSION_HANDLE, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn next_session_handle(&self) -> CK_SESSION_HANDLE {
        self.next_session.fetch_add(1, Ordering::Relaxed) as CK_SESSION_HANDLE
    }

    pub fn session(&self, handle: CK_SESSION_HANDLE) -> Result<Arc<Session>, CK_RV> {
        self.sessions()
            .get(&handle)
            .cloned()
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// Sessions open on `slot`: `(all, read-write)`.
    pub fn session_counts(&self, slot: CK_SLOT_ID) -> (usize, usize) {
        let sessions = self.sessions();
        let on_slot = sessions.values().filter(|s| s.slot.id == slot);
        let (all, rw) = on_slot.fold((0, 0), |(all, rw), s| (all + 1, rw + usize::from(s.rw)));
        (all, rw)
    }
}
