//! Kernel forwarding (`forwarding.mode = "kernel"`): once a session is
//! granted, a BPF stream verdict program (`gateway/bpf/forward.bpf.c`)
//! moves its bytes from each socket straight to the other's egress, and
//! the gateway's task only waits for the end: a peer's end of stream, an
//! error, the idle timeout, the lifetime, a revocation or the drain.
//!
//! The program is built by `build.rs` with clang and loaded with aya at
//! start; where it cannot be (no clang at build time, no CAP_BPF and
//! CAP_NET_ADMIN, an old kernel) the gateway logs why and splices.

mod maps;
mod session;
pub mod sock;
mod watch;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

pub use session::forward;

use self::maps::{Direction, Maps};
use self::watch::{Signal, Watch};
use super::Side;

/// Why kernel forwarding is not available, or a session could not use it.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this hsmgate was built without the BPF program (no clang at build time)")]
    NotBuilt,
    #[error("loading the BPF program: {0}")]
    Load(String),
    #[error("socket map: {0}")]
    Map(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The loaded program, its maps, and the watch over forwarded sockets.
pub struct KernelForwarder {
    maps: Mutex<Maps>,
    watch: Watch,
    /// Bytes a direction may have redirected and not yet acknowledged by
    /// the peer's receiver (`forwarding.kernel_budget`).
    budget: u64,
    /// Sessions the map cannot take come in floods (it is full): their
    /// log lines are limited.
    pub(super) log_limit: crate::control::log_limit::LogLimiter,
}

impl KernelForwarder {
    /// Load and attach the program with maps for `max_sessions` sessions.
    /// Must run inside a tokio runtime.
    pub fn load(max_sessions: u32, budget: u64) -> Result<Arc<KernelForwarder>, KernelError> {
        let (maps, overflows) = Maps::load(max_sessions)?;
        Ok(Arc::new(KernelForwarder {
            maps: Mutex::new(maps),
            watch: Watch::start(overflows)?,
            budget,
            log_limit: Default::default(),
        }))
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put a granted session's sockets into the map: from here the kernel
    /// forwards. Everything the gateway wrote to either socket must be in
    /// its send queue already (it is counted as the direction's base).
    fn attach(
        &self,
        client: &(impl AsRawFd + std::os::fd::AsFd),
        hsm: &(impl AsRawFd + std::os::fd::AsFd),
    ) -> Result<Attached<'_>, KernelError> {
        let client_cookie = sock::cookie(client)?;
        let hsm_cookie = sock::cookie(hsm)?;
        let up = Direction::new(sock::written(hsm)?, self.budget);
        let down = Direction::new(sock::written(client)?, self.budget);
        let attached = Attached {
            forwarder: self,
            client: (client.as_raw_fd(), client_cookie),
            hsm: (hsm.as_raw_fd(), hsm_cookie),
            up_base: up.base,
            down_base: down.base,
            signal: Arc::new(Signal::default()),
            watched: 0,
        };
        // On an error, dropping `attached` takes out whatever went in.
        self.maps()
            .insert(client_cookie, up, hsm, hsm_cookie, down, client)?;
        Ok(attached)
    }
}

/// A session's sockets in the map; taken out when dropped.
pub struct Attached<'a> {
    forwarder: &'a KernelForwarder,
    client: (std::os::fd::RawFd, u64),
    hsm: (std::os::fd::RawFd, u64),
    up_base: u64,
    down_base: u64,
    signal: Arc<Signal>,
    /// Sockets added to the watch (0, 1 or 2: client first).
    watched: u8,
}

impl Attached<'_> {
    fn side(&self, side: Side) -> (std::os::fd::RawFd, u64) {
        match side {
            Side::Client => self.client,
            Side::Hsm => self.hsm,
        }
    }

    /// Watch both sockets for end of stream and errors, and make each hand
    /// the kernel what arrived before it entered the map.
    fn start(&mut self, client: &impl AsRawFd, hsm: &impl AsRawFd) -> io::Result<()> {
        // SAFETY: the sockets are borrowed for the call and outlive it.
        let (c, h) = unsafe {
            (
                std::os::fd::BorrowedFd::borrow_raw(client.as_raw_fd()),
                std::os::fd::BorrowedFd::borrow_raw(hsm.as_raw_fd()),
            )
        };
        self.forwarder
            .watch
            .add(c, self.client.1, Side::Client, &self.signal)?;
        self.watched = 1;
        self.forwarder
            .watch
            .add(h, self.hsm.1, Side::Hsm, &self.signal)?;
        self.watched = 2;
        sock::nudge(client)?;
        sock::nudge(hsm)
    }

    /// Whether a direction already left the kernel: a chunk came while
    /// the sockets entered the map one after the other (or overflowed)
    /// before the watch could hear of it.
    fn left_already(&self) -> bool {
        let maps = self.forwarder.maps();
        maps.is_stopped(self.client.1) || maps.is_stopped(self.hsm.1)
    }

    /// Bytes the program redirected from `side`'s socket so far.
    fn redirected(&self, from: Side) -> u64 {
        self.forwarder.maps().redirected(self.side(from).1)
    }

    /// Stop the kernel forwarding both directions: from here every chunk
    /// is passed to its socket for the gateway to read.
    fn stop_both(&self) -> Result<(), KernelError> {
        let mut maps = self.forwarder.maps();
        maps.stop(self.client.1)?;
        maps.stop(self.hsm.1)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if self.watched >= 1 {
            self.forwarder.watch.remove(self.client.0, self.client.1);
        }
        if self.watched >= 2 {
            self.forwarder.watch.remove(self.hsm.0, self.hsm.1);
        }
        self.forwarder.maps().remove(self.client.1, self.hsm.1);
    }
}

#[cfg(test)]
mod tests;
