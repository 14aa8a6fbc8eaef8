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
pub mod stream;

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
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
    let end = async {
        if let Err(e) = send_first(hsm, first, &up).await {
            return End::Failed(Side::Hsm, e);
        }
        let both = pin!(async {
            match &opts.pipes {
                Some(pool) => {
                    tokio::try_join!(
                        splice_one_way(
                            client,
                            hsm,
                            pool,
                            opts.copy_buffer,
                            &up,
                            &activity,
                            Side::Client
                        ),
                        splice_one_way(
                            hsm,
                            client,
                            pool,
                            opts.copy_buffer,
                            &down,
                            &activity,
                            Side::Hsm
                        ),
                    )
                }
                None => {
                    tokio::try_join!(
                        copy_one_way(client, hsm, opts.copy_buffer, &up, &activity, Side::Client),
                        copy_one_way(hsm, client, opts.copy_buffer, &down, &activity, Side::Hsm),
                    )
                }
            }
        });
        until_end(both, &activity, opts, stop).await
    }
    .await;
    Forwarded {
        path,
        client_to_hsm: up.load(Ordering::Relaxed),
        hsm_to_client: down.load(Ordering::Relaxed),
        end,
        kernel: KernelUse::NotUsed,
    }
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

    /// Completes with [`End::Idle`] once nothing moved for `idle`, or with
    /// [`End::Lifetime`] at `lifetime` after the start. One timer serves
    /// both: it is part of every session's memory.
    async fn expiry(&self, idle: Duration, lifetime: Option<Duration>) -> End {
        let end_of_life = lifetime.map(|l| self.start + l);
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle_due = last + idle;
            let now = Instant::now();
            if end_of_life.is_some_and(|t| now >= t) {
                return End::Lifetime;
            }
            if now >= idle_due {
                return End::Idle;
            }
            let due = end_of_life.map_or(idle_due, |t| t.min(idle_due));
            tokio::time::sleep_until(due).await;
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

/// One direction through a pipe taken from `pool` only while bytes move.
/// If no pipe can be had (out of file descriptors), the direction goes on
/// with a buffered copy.
///
/// Every idle session waits here, twice: only the wait for the source is
/// laid out in this future. The rare paths (the rest of a burst the
/// destination did not take, a burst that fills the small buffer and goes
/// through a pipe) run boxed, so their state is allocated only while they
/// run.
async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    copy_buffer: usize,
    count: &AtomicU64,
    activity: &Activity,
    src_side: Side,
) -> OneWay {
    let dst_side = other(src_side);
    loop {
        src.readable().await.map_err(|e| (src_side, e))?;
        // A small burst is copied through a buffer of this thread; only a
        // burst that fills it takes a pipe for the rest.
        match copy_small(src, dst, count, activity).map_err(|e| e.with(src_side, dst_side))? {
            Small::Nothing | Small::Moved => continue,
            Small::Eof => return finish(dst, dst_side),
            Small::Unsent(rest) => {
                // The destination took only part of it: the rest waits on
                // the heap (rare: a full send buffer), then the loop goes on.
                Box::pin(write_rest(dst, &rest, count, activity))
                    .await
                    .map_err(|e| (dst_side, e))?;
            }
            Small::Filled => {
                let burst = SpliceBurst {
                    src,
                    dst,
                    count,
                    activity,
                    src_side,
                };
                match Box::pin(burst.run(pool, copy_buffer)).await? {
                    Burst::Eof => return finish(dst, dst_side),
                    Burst::Done => return Ok(()),
                    Burst::More => {}
                }
            }
        }
    }
}

/// Write what the destination did not take of a small burst.
async fn write_rest(
    dst: &TcpStream,
    rest: &[u8],
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    write_all(dst, rest).await?;
    count.fetch_add(rest.len() as u64, Ordering::Relaxed);
    activity.touch();
    Ok(())
}

/// How a burst through a pipe ended.
enum Burst {
    /// The source is empty for now.
    More,
    /// End of stream from the source.
    Eof,
    /// The direction went on as a buffered copy and ended (the copy told
    /// the destination).
    Done,
}

/// One direction of a session while a burst fills the small buffer.
struct SpliceBurst<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    count: &'a AtomicU64,
    activity: &'a Activity,
    src_side: Side,
}

impl SpliceBurst<'_> {
    /// Move bytes through a pipe of `pool` while the source has some. With
    /// no pipe to be had, the direction goes on as a buffered copy to its
    /// end.
    async fn run(self, pool: &PipePool, copy_buffer: usize) -> Result<Burst, (Side, io::Error)> {
        let SpliceBurst {
            src,
            dst,
            count,
            activity,
            src_side,
        } = self;
        let dst_side = other(src_side);
        let pipe = match pool.take() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no splice pipe available; copying instead");
                copy_one_way(src, dst, copy_buffer, count, activity, src_side).await?;
                return Ok(Burst::Done);
            }
        };
        let chunk = pipe.capacity();
        // Move bytes while the source has some; the pipe is empty at the top
        // of each round, so WouldBlock from the fill means "socket empty".
        let eof = loop {
            let mut in_pipe = match src.try_io(Interest::READABLE, || {
                pipe.fill_from(src.as_raw_fd(), chunk)
            }) {
                Ok(0) => break true,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => return Err((src_side, e)),
            };
            activity.touch();
            // Drain the pipe fully: WouldBlock here means "send buffer full".
            while in_pipe > 0 {
                dst.writable().await.map_err(|e| (dst_side, e))?;
                match dst.try_io(Interest::WRITABLE, || {
                    pipe.drain_to(dst.as_raw_fd(), in_pipe)
                }) {
                    Ok(n) => {
                        in_pipe -= n;
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        activity.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err((dst_side, e)),
                }
            }
        };
        // Empty: every path that leaves bytes in the pipe returned above.
        pool.give(pipe);
        Ok(if eof { Burst::Eof } else { Burst::More })
    }
}

/// Bytes read with `recv` before a pipe is taken (HAProxy's `splice-auto`
/// does the same): most HSM requests and answers fit, and for them a copy
/// costs two syscalls where a splice costs two plus a pipe.
const SMALL_READ: usize = 64 * 1024;

thread_local! {
    /// The small-read buffer of this worker thread. It is used only between
    /// two awaits, so it is never part of a session's memory.
    static SMALL_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SMALL_READ].into_boxed_slice());
}

/// What one small read did.
enum Small {
    /// The source had nothing after all.
    Nothing,
    /// End of stream from the source.
    Eof,
    /// Fewer bytes than the buffer, all written to the destination.
    Moved,
    /// Fewer bytes than the buffer, of which the destination took only a
    /// part: the rest, to be written.
    Unsent(Vec<u8>),
    /// The buffer filled up and all of it was written: the source may have
    /// more, worth a splice.
    Filled,
}

/// A failed small read (source) or write (destination).
enum SmallError {
    Source(io::Error),
    Destination(io::Error),
}

impl SmallError {
    fn with(self, src_side: Side, dst_side: Side) -> (Side, io::Error) {
        match self {
            SmallError::Source(e) => (src_side, e),
            SmallError::Destination(e) => (dst_side, e),
        }
    }
}

/// Read what `src` has, up to [`SMALL_READ`] bytes, and write it to `dst`
/// at once, without waiting for either.
fn copy_small(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> Result<Small, SmallError> {
    SMALL_BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        let n = match src.try_read(&mut buf) {
            Ok(0) => return Ok(Small::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Small::Nothing),
            Err(e) => return Err(SmallError::Source(e)),
        };
        activity.touch();
        let mut written = 0;
        while written < n {
            match dst.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(SmallError::Destination(e)),
            }
        }
        count.fetch_add(written as u64, Ordering::Relaxed);
        if written < n {
            Ok(Small::Unsent(buf[written..n].to_vec()))
        } else if n == buf.len() {
            Ok(Small::Filled)
        } else {
            Ok(Small::Moved)
        }
    })
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
