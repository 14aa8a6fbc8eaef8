//! A thread of its own for the control plane's traffic.
//!
//! Sessions run on the gateway's worker threads, and glibc gives each
//! thread's allocations an arena of its own. A cache miss used to run on
//! the session's worker: the gRPC call, the decoded answer and the cache
//! entries made from it were allocated among that worker's sessions. Cache
//! entries outlive the sessions around them (they are refreshed every TTL,
//! so a long peak of sessions is full of them), and each one kept the page
//! it sat on from going back to the system after the peak: the soak
//! (issue 12, docs/RELIABILITY.md) measured 1.4 MiB of 2.1 MiB of heap kept
//! after 9,000 sessions for this reason alone.
//!
//! On this thread instead, the directory's connections, every call, every
//! answer and every cache insert share one small arena that holds nothing
//! else. Cache hits stay on the session's thread: they allocate nothing.
//! The gateway runs its other long-lived background work here too (health
//! checks, control channels to the HSM nodes, DNS discovery), for the same
//! reason.

use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A single-threaded runtime on a named thread, running until this value
/// is dropped.
#[derive(Debug)]
pub struct ControlThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl ControlThread {
    /// Start the thread (`hsmgate-control`).
    pub fn start() -> std::io::Result<Arc<ControlThread>> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("hsmgate-control".into())
            .spawn(move || {
                runtime.block_on(async {
                    // Dropping the sender (or sending) ends the thread.
                    let _ = stopped.await;
                });
            })?;
        Ok(Arc::new(ControlThread {
            handle,
            _stop: stop,
        }))
    }

    /// The runtime's handle: tasks spawned on it run on this thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
