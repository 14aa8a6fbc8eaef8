//! Forwarding a granted session: both directions at once, through splice
//! pipes when possible and a buffered copy otherwise (in splice mode, a
//! burst that fits a per-thread 64 KiB buffer is copied through it, and
//! only what follows a full buffer is spliced), with half-close
//! propagated, exact byte counts, an idle timeout, an optional lifetime and
//! an external stop (revocation, drain deadline).
//!
//! Each direction reads from one socket and writes to the other until end
//! of stream, then shuts down the write side of the other socket (so a
//! client's FIN reaches the HSM node and the reverse direction keeps going).
//! An error on either socket ends the whole session.

pub mod kernel;
mod pipes;
mod splice;
mod spliced;
pub mod stream;

use std::io;
use std::net::Shutdown;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use pipes::PipePool;
pub use splice::Pipe;

/// Which data path a session used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Splice,
    Copy,
    /// A QUIC stream to a TCP connection: copied through quinn's buffers.
    Quic,
    /// Forwarded by the kernel's BPF program (`kernel`).
    Kernel,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Splice => "splice",
            DataPath::Copy => "copy",
            DataPath::Quic => "quic",
            DataPath::Kernel => "kernel",
        }
    }
}

/// Which socket an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Hsm,
}

/// How a forwarded session ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end of stream.
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// A socket failed (reset, broken pipe, ...).
    Failed(Side, io::Error),
    /// The session reached its maximum lifetime.
    Lifetime,
    /// Stopped from outside.
    Stopped(Stop),
}

/// Why a session was stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The directory withdrew the client; the reason.
    Revoked(String),
    /// The gateway is stopping and the drain deadline passed.
    DrainDeadline,
}

/// How to forward one session.
#[derive(Debug, Clone)]
pub struct Options {
    /// Splice through pipes of this pool; `None`: buffered copy.
    pub pipes: Option<std::sync::Arc<PipePool>>,
    /// Buffer of the copy path, bytes, per direction.
    pub copy_buffer: usize,
    /// End the session after this long without a byte either way.
    pub idle: Duration,
    /// End the session after this long in any case.
    pub max_lifetime: Option<Duration>,
}

/// What forwarding did.
#[derive(Debug)]
pub struct Forwarded {
    pub path: DataPath,
    pub client_to_hsm: u64,
    pub hsm_to_client: u64,
    pub end: End,
    pub kernel: KernelUse,
}

/// Whether the kernel forwarded the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelUse {
    /// Kernel forwarding is off (or the session is not over TCP).
    NotUsed,
    /// From the grant to the end.
    Whole,
    /// Until a direction went over its budget; copied in user space after.
    Overflowed,
    /// The sockets could not enter the map; forwarded in user space.
    AttachFailed,
}

impl KernelUse {
    /// The `event` label of `hsmgate_kernel_forwarding_events_total`.
    pub fn event(self) -> Option<&'static str> {
        match self {
            KernelUse::NotUsed | KernelUse::Whole => None,
            KernelUse::Overflowed => Some("overflow"),
            KernelUse::AttachFailed => Some("attach_failed"),
        }
    }
}

/// The node's first bytes: the gateway's own Grant frame (PROTOCOL.md
/// §8.3), then the bytes the client sent before the grant. Owned, so that
/// they are freed once written instead of staying with every session.
#[derive(Debug, Default)]
pub struct First {
    bytes: Vec<u8>,
    /// How many of them are the client's.
    held: u64,
}

impl First {
    pub fn new(preamble: Option<Vec<u8>>, held: &[u8]) -> First {
        let mut bytes = preamble.unwrap_or_default();
        bytes.extend_from_slice(held);
        First {
            bytes,
            held: held.len() as u64,
        }
    }
}

/// Write `first` to the HSM node in one write, then forward everything
/// else both ways until both sides close, one fails, the session is idle
/// or too old, or `stop` completes. Byte counts cover the client's bytes
/// only.
///
/// `stop` is pinned by the caller and every future here is awaited in
/// place: a future moved into another by value takes its room twice in an
/// async fn's state, and this state is what every idle session holds.
pub async fn forward<S: Future<Output = Stop>>(
    client: &TcpStream,
    hsm: &TcpStream,
    first: First,
    opts: &Options,
    stop: Pin<&mut S>,
) -> Forwarded {
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let activity = Activity::new();
    let path = if opts.pipes.is_some() {
        DataPath::Splice
    } else {
        DataPath::Copy
    };
    // No inner async block: its captures would be laid out a second time.
    let end = match send_first(hsm, first, &up).await {
        Err(e) => End::Failed(Side::Hsm, e),
        Ok(()) => match &opts.pipes {
            Some(pool) => {
                spliced::forward(client, hsm, pool, [&up, &down], &activity, opts, stop).await
            }
            // Boxed: a copy holds a buffer per direction and waits in
            // futures of its own; splicing sessions must not be sized for it.
            None => Box::pin(copy_both(client, hsm, [&up, &down], &activity, opts, stop)).await,
        },
    };
    Forwarded {
        path,
        client_to_hsm: up.load(Ordering::Relaxed),
        hsm_to_client: down.load(Ordering::Relaxed),
        end,
        kernel: KernelUse::NotUsed,
    }
}

/// Forward both ways with a buffered copy (`forwarding.mode = "copy"`).
async fn copy_both<S: Future<Output = Stop>>(
    client: &TcpStream,
    hsm: &TcpStream,
    counts: [&AtomicU64; 2],
    activity: &Activity,
    opts: &Options,
    stop: Pin<&mut S>,
) -> End {
    let [up, down] = counts;
    let both = pin!(async {
        tokio::try_join!(
            copy_one_way(client, hsm, opts.copy_buffer, up, activity, Side::Client),
            copy_one_way(hsm, client, opts.copy_buffer, down, activity, Side::Hsm),
        )
    });
    until_end(both, activity, opts, stop).await
}

/// The node's first bytes, in one write (the client's part counted as
/// the client's); freed when written.
async fn send_first(hsm: &TcpStream, first: First, up: &AtomicU64) -> io::Result<()> {
    write_all(hsm, &first.bytes).await?;
    up.fetch_add(first.held, Ordering::Relaxed);
    Ok(())
}

/// How a session ends: both directions done (or one failed), no byte for
/// the idle timeout, the lifetime over, or a stop from outside.
async fn until_end<B, S>(
    both: Pin<&mut B>,
    activity: &Activity,
    opts: &Options,
    stop: Pin<&mut S>,
) -> End
where
    B: Future<Output = Result<((), ()), (Side, io::Error)>>,
    S: Future<Output = Stop>,
{
    tokio::select! {
        result = both => match result {
            Ok(((), ())) => End::Closed,
            Err((side, e)) => End::Failed(side, e),
        },
        end = activity.expiry(opts.idle, opts.max_lifetime) => end,
        why = stop => End::Stopped(why),
    }
}

/// The time of the last byte moved in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn start(&self) -> Instant {
        self.start
    }

    /// When the session could next be over: `Ok(moment)` to look again
    /// then, or the end if it is over now ([`End::Idle`] once nothing moved
    /// for `idle`, [`End::Lifetime`] at `lifetime` after the start).
    fn next_expiry(&self, idle: Duration, lifetime: Option<Duration>) -> Result<Instant, End> {
        let end_of_life = lifetime.map(|l| self.start + l);
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let idle_due = last + idle;
        let now = Instant::now();
        if end_of_life.is_some_and(|t| now >= t) {
            return Err(End::Lifetime);
        }
        if now >= idle_due {
            return Err(End::Idle);
        }
        Ok(end_of_life.map_or(idle_due, |t| t.min(idle_due)))
    }

    /// Completes with the session's end by time (see [`Self::next_expiry`]).
    /// One timer serves both limits: it is part of every session's memory.
    async fn expiry(&self, idle: Duration, lifetime: Option<Duration>) -> End {
        loop {
            match self.next_expiry(idle, lifetime) {
                Ok(due) => tokio::time::sleep_until(due).await,
                Err(end) => return end,
            }
        }
    }
}

type OneWay = Result<(), (Side, io::Error)>;

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Hsm,
        Side::Hsm => Side::Client,
    }
}

/// Tell the destination that no more bytes come from this direction.
fn finish(dst: &impl std::os::fd::AsFd, dst_side: Side) -> OneWay {
    match SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => Ok(()),
        // The peer already closed both ways: nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err((dst_side, e)),
    }
}

async fn copy_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    buffer: usize,
    count: &AtomicU64,
    activity: &Activity,
    src_side: Side,
) -> OneWay {
    let dst_side = other(src_side);
    let mut buf = vec![0u8; buffer];
    loop {
        let n = loop {
            src.readable().await.map_err(|e| (src_side, e))?;
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((src_side, e)),
            }
        };
        if n == 0 {
            return finish(dst, dst_side);
        }
        activity.touch();
        write_all(dst, &buf[..n]).await.map_err(|e| (dst_side, e))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Write all of `bytes` to a shared stream.
pub async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
