//! A bounded pool of logged-in PKCS#11 sessions on one token, shared by
//! every client session of a partition.
//!
//! Sessions are opened on demand up to the configured number; a caller that
//! finds none free waits, at most `session_wait_ms`. A session whose call
//! fails in a way that says the session (or the login, or the token) is
//! gone is discarded instead of returned, and the next caller opens a fresh
//! one, logging in again: the store recovers from a token reset without a
//! restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub(crate) struct Pool {
    ctx: Pkcs11,
    slot: Mutex<Slot>,
    pin: AuthPin,
    max: usize,
    wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
    /// Callers waiting for a session (a gauge for the metrics).
    pub(crate) waiters: AtomicUsize,
}

#[derive(Default)]
struct State {
    idle: Vec<Session>,
    /// Sessions open: idle ones and those lent out.
    open: usize,
}

/// Why no session could be had.
#[derive(Debug)]
pub(crate) enum TakeError {
    /// Every session stayed busy for the whole wait.
    Busy,
    /// Opening or logging in failed.
    Token(Error),
}

/// Whether `e` says the session is no longer usable (closed, logged out,
/// token removed or reset), so that a fresh session may succeed.
pub(crate) fn is_session_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

impl Pool {
    pub(crate) fn new(ctx: Pkcs11, slot: Slot, pin: AuthPin, max: usize, wait: Duration) -> Pool {
        Pool {
            ctx,
            slot: Mutex::new(slot),
            pin,
            max: max.max(1),
            wait,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open a read-write session and make sure the user is logged in (the
    /// login is the application's, shared by its sessions).
    pub(crate) fn open(&self) -> Result<Session, Error> {
        let slot = *self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let session = self.ctx.open_rw_session(slot)?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }

    /// A session for one operation.
    pub(crate) fn take(&self) -> Result<Lent<'_>, TakeError> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.state();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Lent {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.open() {
                    Ok(session) => Ok(Lent {
                        pool: self,
                        session: Some(session),
                    }),
                    Err(e) => {
                        self.state().open -= 1;
                        self.freed.notify_one();
                        Err(TakeError::Token(e))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TakeError::Busy);
            }
            self.waiters.fetch_add(1, Ordering::Relaxed);
            let (guard, _) = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner);
            self.waiters.fetch_sub(1, Ordering::Relaxed);
            state = guard;
        }
    }

    /// The token's slot, found again after a library reset.
    pub(crate) fn set_slot(&self, slot: Slot) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = slot;
    }

    pub(crate) fn slot(&self) -> Slot {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sessions lent out now.
    pub(crate) fn in_use(&self) -> usize {
        let state = self.state();
        state.open - state.idle.len()
    }

    /// Close every idle session (after the token came back, their handles
    /// and views may be stale); lent ones are closed when returned broken.
    pub(crate) fn clear(&self) {
        let mut state = self.state();
        let closed = state.idle.len();
        state.idle.clear();
        state.open -= closed;
        drop(state);
        self.freed.notify_all();
    }
}

/// A session lent out by the pool; returned when dropped.
pub(crate) struct Lent<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Lent<'_> {
    pub(crate) fn session(&self) -> &Session {
        // Present until `discard` or drop.
        self.session.as_ref().expect("a lent session")
    }

    /// Close the session instead of returning it.
    pub(crate) fn discard(mut self) {
        self.session.take();
        self.pool.state().open -= 1;
        self.pool.freed.notify_one();
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.state().idle.push(session);
            self.pool.freed.notify_one();
        }
    }
}
