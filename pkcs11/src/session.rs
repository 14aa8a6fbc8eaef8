//! A PKCS#11 session: its slot, whether it may write, and the operations
//! in progress on it (at most one of each kind, as the standard allows).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cryptoki_sys::*;

use crate::cipher::CipherOp;
use crate::sign::{DigestOp, SignOp};
use crate::slot::Slot;

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub slot: Arc<Slot>,
    /// Opened with `CKF_RW_SESSION`: may create and destroy token objects.
    pub rw: bool,
    ops: Mutex<Ops>,
}

/// A search in progress: the matching handles and how many were returned.
pub struct Find {
    pub handles: Vec<CK_OBJECT_HANDLE>,
    pub next: usize,
}

#[derive(Default)]
pub struct Ops {
    pub find: Option<Find>,
    pub sign: Option<SignOp>,
    pub verify: Option<SignOp>,
    pub encrypt: Option<CipherOp>,
    pub decrypt: Option<CipherOp>,
    pub digest: Option<DigestOp>,
}

impl Session {
    pub fn new(handle: CK_SESSION_HANDLE, slot: Arc<Slot>, rw: bool) -> Session {
        Session {
            handle,
            slot,
            rw,
            ops: Mutex::new(Ops::default()),
        }
    }

    /// The operations. Held across an HSM call of this session's operation
    /// (a session is used by one thread at a time); never held while taking
    /// the library's session table.
    pub fn ops(&self) -> MutexGuard<'_, Ops> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `CKS_*` for `C_GetSessionInfo`.
    pub fn state(&self) -> CK_STATE {
        match (self.slot.logged_in(), self.rw) {
            (true, true) => CKS_RW_USER_FUNCTIONS,
            (true, false) => CKS_RO_USER_FUNCTIONS,
            (false, true) => CKS_RW_PUBLIC_SESSION,
            (false, false) => CKS_RO_PUBLIC_SESSION,
        }
    }
}
