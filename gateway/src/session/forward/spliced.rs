//! The splice path of a granted session: both directions, the idle and
//! lifetime timer and the external stop, polled by one hand-written loop.
//!
//! This loop is what every idle session in splice mode holds, so it holds
//! little: per direction its two sockets and, only while it runs, a boxed
//! rare step; one timer; the stop. A direction waits for its source with
//! `poll_read_ready`, which keeps the task's waker in the socket's own
//! registration instead of a waiter inside the session's memory.
//!
//! When the source is readable, a burst is read into a buffer of this
//! thread and written on at once (HAProxy's `splice-auto` does the same:
//! for the small requests and answers of HSM traffic a copy costs two
//! syscalls where a splice costs two plus a pipe). Two things need more
//! and run boxed, allocated only while they run: writing what the
//! destination did not take (a full send buffer), and a burst that fills
//! the buffer, whose rest goes through a pipe taken from the shared pool.

use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{
    Activity, End, OneWay, Options, PipePool, Side, Stop, copy_one_way, finish, other, write_all,
};

/// Bytes read with `recv` before a pipe is taken.
pub(super) const SMALL_READ: usize = 64 * 1024;

/// Reads shorter than this end a wait for the source without a second
/// `recv`: the TCP payload of one full-size Ethernet segment.
const SHORT_READ: usize = 1448;

thread_local! {
    /// The small-read buffer of this worker thread. It is used only inside
    /// one poll, so it is never part of a session's memory.
    static SMALL_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SMALL_READ].into_boxed_slice());
}

/// Forward both ways through `pool` until both directions end, one fails,
/// the session is idle or too old, or `stop` completes.
pub(super) async fn forward<S: Future<Output = Stop>>(
    client: &TcpStream,
    hsm: &TcpStream,
    pool: &PipePool,
    counts: [&AtomicU64; 2],
    activity: &Activity,
    opts: &Options,
    mut stop: Pin<&mut S>,
) -> End {
    let [up, down] = counts;
    let mut ways = [
        Way::new(client, hsm, up, Side::Client),
        Way::new(hsm, client, down, Side::Hsm),
    ];
    let mut timer = pin!(tokio::time::sleep_until(activity.start()));
    poll_fn(|cx| {
        if let Poll::Ready(why) = stop.as_mut().poll(cx) {
            return Poll::Ready(End::Stopped(why));
        }
        for way in ways.iter_mut().filter(|w| !w.ended) {
            match way.poll(cx, pool, opts.copy_buffer, activity) {
                Poll::Ready(Ok(())) => way.ended = true,
                Poll::Ready(Err((side, e))) => return Poll::Ready(End::Failed(side, e)),
                Poll::Pending => {}
            }
        }
        if ways.iter().all(|w| w.ended) {
            return Poll::Ready(End::Closed);
        }
        // The timer fires at the earliest moment the session could be
        // over; at each firing it is set again from the last activity.
        while timer.as_mut().poll(cx).is_ready() {
            match activity.next_expiry(opts.idle, opts.max_lifetime) {
                Ok(due) => timer.as_mut().reset(due),
                Err(end) => return Poll::Ready(end),
            }
        }
        Poll::Pending
    })
    .await
}

/// A step of a direction that needs more than one poll.
type RareStep<'a> = Pin<Box<dyn Future<Output = Result<Step, (Side, io::Error)>> + Send + 'a>>;

/// What a rare step left the direction to do.
enum Step {
    /// Wait for the source again.
    More,
    /// End of stream from the source: tell the destination.
    Eof,
    /// The direction went on as a buffered copy and ended (the copy told
    /// the destination).
    Done,
}

/// One direction of a session.
struct Way<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    count: &'a AtomicU64,
    src_side: Side,
    ended: bool,
    rare: Option<RareStep<'a>>,
}

impl<'a> Way<'a> {
    fn new(src: &'a TcpStream, dst: &'a TcpStream, count: &'a AtomicU64, src_side: Side) -> Self {
        Way {
            src,
            dst,
            count,
            src_side,
            ended: false,
            rare: None,
        }
    }

    /// Move what the source has; `Ready(Ok)` once the direction ended.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        pool: &'a PipePool,
        copy_buffer: usize,
        activity: &'a Activity,
    ) -> Poll<OneWay> {
        let dst_side = other(self.src_side);
        loop {
            if let Some(rare) = self.rare.as_mut() {
                let step = ready!(rare.as_mut().poll(cx));
                self.rare = None;
                match step? {
                    Step::More => {}
                    Step::Eof => return Poll::Ready(finish(self.dst, dst_side)),
                    Step::Done => return Poll::Ready(Ok(())),
                }
            }
            ready!(self.src.poll_read_ready(cx)).map_err(|e| (self.src_side, e))?;
            let moved = copy_small(self.src, self.dst, self.count, activity)
                .map_err(|e| e.with(self.src_side, dst_side))?;
            match moved {
                // The read found nothing or took a whole small message: it
                // cleared the readiness, so the next poll_read_ready waits.
                // A longer read left it set: the next one looks again.
                Small::Nothing | Small::Moved => {}
                Small::Eof => return Poll::Ready(finish(self.dst, dst_side)),
                Small::Unsent(rest) => {
                    let (dst, count) = (self.dst, self.count);
                    self.rare = Some(Box::pin(async move {
                        write_rest(dst, &rest, count, activity)
                            .await
                            .map(|()| Step::More)
                            .map_err(|e| (dst_side, e))
                    }));
                }
                Small::Filled => {
                    let burst = SpliceBurst {
                        src: self.src,
                        dst: self.dst,
                        count: self.count,
                        activity,
                        src_side: self.src_side,
                    };
                    self.rare = Some(Box::pin(burst.run(pool, copy_buffer)));
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
    async fn run(self, pool: &PipePool, copy_buffer: usize) -> Result<Step, (Side, io::Error)> {
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
                return Ok(Step::Done);
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
        Ok(if eof { Step::Eof } else { Step::More })
    }
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
        let mut got = 0;
        // A read shorter than one full segment took a whole small message,
        // most likely all the socket had: answering WouldBlock for it clears
        // the socket's readiness, so the direction waits for the next
        // message without another `recv` that would only find the socket
        // empty (a readiness event that arrived meanwhile is not cleared).
        // A longer read may be part of a message whose rest is arriving:
        // the next `recv` takes it at once instead of after the next turn
        // of the I/O driver, which under load can be many tasks away.
        let read = src.try_io(Interest::READABLE, || {
            got = src.try_read(&mut buf)?;
            if got > 0 && got < SHORT_READ {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        let n = match read {
            Ok(0) => return Ok(Small::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => got,
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
