//! How a session forwarded by the kernel learns that something happened to
//! it: a peer's end of stream, a socket error, or its budget overflowing.
//!
//! The sockets are not in tokio's epoll while the kernel forwards: every
//! byte forwarded would wake it. They are in one epoll instance of their
//! own that asks only for `EPOLLRDHUP` (plus the `EPOLLERR` and `EPOLLHUP`
//! epoll always reports), so bytes moving wake nothing; a task waits on
//! that instance and on the kernel program's ring of overflowed cookies,
//! and tells the session concerned through its [`Signal`].

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::super::Side;

/// What happened to a session, as bits.
pub mod event {
    pub const CLIENT_EOF: u32 = 1;
    pub const CLIENT_ERROR: u32 = 2;
    pub const HSM_EOF: u32 = 4;
    pub const HSM_ERROR: u32 = 8;
    /// A direction went over its budget (or the gateway stopped it).
    pub const OVERFLOW: u32 = 16;

    pub fn eof(side: super::Side) -> u32 {
        match side {
            super::Side::Client => CLIENT_EOF,
            super::Side::Hsm => HSM_EOF,
        }
    }

    pub fn error(side: super::Side) -> u32 {
        match side {
            super::Side::Client => CLIENT_ERROR,
            super::Side::Hsm => HSM_ERROR,
        }
    }
}

/// Events of one session not yet taken, and the wake-up of its task.
#[derive(Default)]
pub struct Signal {
    events: AtomicU32,
    notify: Notify,
}

impl Signal {
    fn raise(&self, bits: u32) {
        self.events.fetch_or(bits, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Waits until some event is raised, and takes all raised so far.
    pub async fn next(&self) -> u32 {
        loop {
            let taken = self.events.swap(0, Ordering::AcqRel);
            if taken != 0 {
                return taken;
            }
            self.notify.notified().await;
        }
    }
}

/// Sockets watched, by cookie.
type Registry = Mutex<HashMap<u64, (Arc<Signal>, Side)>>;

/// The epoll instance, the overflow ring and who is watched.
pub struct Watch {
    epoll: Arc<AsyncFd<OwnedFd>>,
    registry: Arc<Registry>,
}

impl Watch {
    /// Creates the epoll instance and starts the task that serves it and
    /// the overflow ring. Must run inside a tokio runtime.
    pub fn start(overflows: RingBuf<MapData>) -> io::Result<Watch> {
        // SAFETY: epoll_create1 takes no pointers; the fd it returns is
        // owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its fd open and the same until dropped.
        let epoll = Arc::new(unsafe { AsyncFd::register(epoll) }.map_err(io::Error::from)?);
        let registry: Arc<Registry> = Arc::default();
        // SAFETY: the ring's map fd is owned by it, open until it is dropped.
        let ring = unsafe { AsyncFd::register(overflows) }.map_err(io::Error::from)?;
        tokio::spawn(serve(epoll.clone(), ring, registry.clone()));
        Ok(Watch { epoll, registry })
    }

    /// Watch `fd` (whose cookie is `cookie`) for `signal`'s session. If the
    /// socket already reached end of stream, the event comes at once.
    pub fn add(
        &self,
        fd: BorrowedFd<'_>,
        cookie: u64,
        side: Side,
        signal: &Arc<Signal>,
    ) -> io::Result<()> {
        lock(&self.registry).insert(cookie, (signal.clone(), side));
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: cookie,
        };
        // SAFETY: both fds are open for the call; `ev` is valid for reads.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            lock(&self.registry).remove(&cookie);
            Err(e)
        }
    }

    /// Stop watching `fd` (before it is closed or handed back to tokio).
    pub fn remove(&self, fd: RawFd, cookie: u64) {
        // SAFETY: both fds are open for the call; EPOLL_CTL_DEL ignores
        // the event pointer.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
        lock(&self.registry).remove(&cookie);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn raise(registry: &Registry, cookie: u64, bits: impl Fn(Side) -> u32) {
    let found = lock(registry).get(&cookie).cloned();
    if let Some((signal, side)) = found {
        signal.raise(bits(side));
    }
}

/// Events of one epoll_wait round at most.
const BATCH: usize = 64;

async fn serve(
    epoll: Arc<AsyncFd<OwnedFd>>,
    mut ring: AsyncFd<RingBuf<MapData>>,
    registry: Arc<Registry>,
) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        tokio::select! {
            ready = epoll.readable() => {
                let Ok(mut guard) = ready else { return };
                let n = wait_now(epoll.get_ref().as_fd(), &mut events);
                for ev in &events[..n] {
                    let flags = ev.events as i32;
                    let cookie = ev.u64;
                    raise(&registry, cookie, |side| {
                        let mut bits = 0;
                        if flags & libc::EPOLLERR != 0 {
                            bits |= event::error(side);
                        }
                        if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP) != 0 {
                            bits |= event::eof(side);
                        }
                        bits
                    });
                }
                if n < BATCH {
                    guard.clear_ready();
                }
            }
            ready = ring.readable_mut() => {
                let Ok(mut guard) = ready else { return };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Ok(bytes) = <[u8; 8]>::try_from(&*item) {
                        raise(&registry, u64::from_ne_bytes(bytes), |_| event::OVERFLOW);
                    }
                }
                guard.clear_ready();
            }
        }
    }
}

/// One epoll_wait that does not block.
fn wait_now(epoll: BorrowedFd<'_>, events: &mut [libc::epoll_event]) -> usize {
    // SAFETY: `events` is valid for writes of its length.
    let n = unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            0,
        )
    };
    usize::try_from(n).unwrap_or(0)
}
