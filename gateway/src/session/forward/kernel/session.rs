//! One session forwarded by the kernel, from its grant to its end.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::watch::event;
use super::{Attached, KernelForwarder, sock};
use crate::session::forward::{
    DataPath, End, First, Forwarded, KernelUse, Options, Side, Stop, finish, other,
};

/// How long a peer's end of stream (or a fallback to user space) waits
/// for the bytes redirected before it to be sent on.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Write `first` to the HSM node, put both sockets into the
/// kernel's map and wait for the session's end. A session that cannot
/// enter the map is forwarded by `super::forward` (splice or copy); one
/// whose direction overflows its budget is copied in user space from
/// there on. Byte counts cover the client's bytes only, as on the other
/// paths.
pub async fn forward<S: Future<Output = Stop>>(
    kernel: &KernelForwarder,
    client: TcpStream,
    hsm: TcpStream,
    first: First,
    opts: &Options,
    mut stop: Pin<&mut S>,
) -> Forwarded {
    let written = AtomicU64::new(0);
    if let Err(e) = super::super::send_first(&hsm, first, &written).await {
        return Forwarded {
            path: DataPath::Kernel,
            client_to_hsm: 0,
            hsm_to_client: 0,
            end: End::Failed(Side::Hsm, e),
            kernel: KernelUse::Whole,
        };
    }
    let held = written.load(Ordering::Relaxed);
    let mut attached = match kernel.attach(&client, &hsm) {
        Ok(a) => a,
        Err(e) => {
            if let Some(suppressed) = kernel.log_limit.allow("kernel attach") {
                tracing::warn!(error = %e, suppressed, "session not forwarded by the kernel; forwarding it in user space");
            }
            let mut done = Box::pin(super::super::forward(
                &client,
                &hsm,
                First::default(),
                opts,
                stop,
            ))
            .await;
            done.client_to_hsm += held;
            done.kernel = KernelUse::AttachFailed;
            return done;
        }
    };
    // Out of tokio's epoll: every forwarded byte would wake it.
    let (client, hsm) = match (client.into_std(), hsm.into_std()) {
        (Ok(c), Ok(h)) => (c, h),
        (Err(e), _) => return failed(Side::Client, e, held),
        (_, Err(e)) => return failed(Side::Hsm, e, held),
    };
    if let Err(e) = attached.start(&client, &hsm) {
        return failed(Side::Client, e, held);
    }
    if attached.left_already() {
        return Box::pin(leave_kernel(
            attached, client, hsm, opts, stop, held, [false; 2],
        ))
        .await;
    }
    let mut finished = [false, false];
    let end = until_end(&attached, &client, &hsm, opts, stop.as_mut(), &mut finished).await;
    let Some(end) = end else {
        // A direction overflowed: the rest of the session in user space.
        return Box::pin(leave_kernel(
            attached, client, hsm, opts, stop, held, finished,
        ))
        .await;
    };
    let (up, down) = kernel_counts(&attached, &client, &hsm, held, finished);
    drop(attached);
    Forwarded {
        path: DataPath::Kernel,
        client_to_hsm: up,
        hsm_to_client: down,
        end,
        kernel: KernelUse::Whole,
    }
}

/// The client's bytes (`held`, then what the kernel sent to the node) and
/// the node's bytes the kernel sent to the client. `finished`: which
/// directions ended with the gateway's FIN, which takes a sequence number
/// and so counts as a written byte.
fn kernel_counts(
    attached: &Attached<'_>,
    client: &impl AsRawFd,
    hsm: &impl AsRawFd,
    held: u64,
    finished: [bool; 2],
) -> (u64, u64) {
    let fin = |f: bool| u64::from(f);
    let up = sock::written(hsm)
        .unwrap_or(0)
        .saturating_sub(attached.up_base + fin(finished[0]));
    let down = sock::written(client)
        .unwrap_or(0)
        .saturating_sub(attached.down_base + fin(finished[1]));
    (held + up, down)
}

fn failed(side: Side, e: io::Error, held: u64) -> Forwarded {
    Forwarded {
        path: DataPath::Kernel,
        client_to_hsm: held,
        hsm_to_client: 0,
        end: End::Failed(side, e),
        kernel: KernelUse::Whole,
    }
}

/// Wait for the session's end while the kernel forwards; `None` when a
/// direction overflowed its budget. `ended` tells which directions reached
/// end of stream (client to node first) and were finished with a FIN.
async fn until_end<S: Future<Output = Stop>>(
    attached: &Attached<'_>,
    client: &std::net::TcpStream,
    hsm: &std::net::TcpStream,
    opts: &Options,
    mut stop: Pin<&mut S>,
    ended: &mut [bool; 2],
) -> Option<End> {
    let started = Instant::now();
    let end_of_life = opts.max_lifetime.map(|l| started + l);
    let mut check_at = started + opts.idle;
    loop {
        let due = end_of_life.map_or(check_at, |t| t.min(check_at));
        tokio::select! {
            events = attached.signal.next() => {
                if events & event::CLIENT_ERROR != 0 {
                    return Some(End::Failed(Side::Client, sock::take_error(client)));
                }
                if events & event::HSM_ERROR != 0 {
                    return Some(End::Failed(Side::Hsm, sock::take_error(hsm)));
                }
                if events & event::OVERFLOW != 0 {
                    return None;
                }
                for (side, src, dst, base, done) in [
                    (Side::Client, client, hsm, attached.up_base, 0),
                    (Side::Hsm, hsm, client, attached.down_base, 1),
                ] {
                    if events & event::eof(side) != 0 && !ended[done] {
                        ended[done] = true;
                        // Boxed: rare, and its timer would size every session.
                        Box::pin(drained(attached, side, src, dst, base, true)).await;
                        if let Err((failed, e)) = finish(dst, other(side)) {
                            return Some(End::Failed(failed, e));
                        }
                    }
                }
                if *ended == [true, true] {
                    return Some(End::Closed);
                }
            }
            () = tokio::time::sleep_until(due) => {
                let now = Instant::now();
                // The ring cannot drop an overflow (maps.rs); this look
                // bounds the wait if it ever did.
                if attached.left_already() {
                    return None;
                }
                if end_of_life.is_some_and(|t| now >= t) {
                    return Some(End::Lifetime);
                }
                let quiet = Duration::from_millis(
                    sock::since_last_received_ms(client)
                        .unwrap_or(0)
                        .min(sock::since_last_received_ms(hsm).unwrap_or(0)),
                );
                if quiet >= opts.idle {
                    return Some(End::Idle);
                }
                check_at = now + (opts.idle - quiet);
            }
            why = stop.as_mut() => return Some(End::Stopped(why)),
        }
    }
}

/// Wait (at most [`DRAIN_WAIT`]) until every byte redirected from `src`
/// is in `dst`'s send queue; with `empty_source`, also until `src` has
/// nothing unread, which once true holds for good (the program counts a
/// chunk before TCP counts it read). Without it (the gateway just stopped
/// the direction, and a chunk may be half through the program) the
/// condition must hold twice, a millisecond apart.
async fn drained(
    attached: &Attached<'_>,
    from: Side,
    src: &impl AsRawFd,
    dst: &impl AsRawFd,
    base: u64,
    empty_source: bool,
) -> bool {
    let deadline = Instant::now() + DRAIN_WAIT;
    let needed = if empty_source { 1 } else { 2 };
    let mut held = 0;
    while Instant::now() < deadline {
        let sent = sock::written(dst).unwrap_or(u64::MAX);
        let done = sent >= base + attached.redirected(from)
            && (!empty_source || sock::unread(src).unwrap_or(0) == 0);
        held = if done { held + 1 } else { 0 };
        if held == needed {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tracing::warn!(from = ?from, "redirected bytes not sent on within the drain wait");
    false
}

/// A direction overflowed: stop the kernel forwarding both, wait until
/// what it redirected is sent on, and copy the rest in user space (the
/// chunks passed since are read from the sockets in order).
async fn leave_kernel<S: Future<Output = Stop>>(
    attached: Attached<'_>,
    client: std::net::TcpStream,
    hsm: std::net::TcpStream,
    opts: &Options,
    stop: Pin<&mut S>,
    held: u64,
    finished: [bool; 2],
) -> Forwarded {
    let stopped = attached.stop_both();
    if stopped.is_ok() {
        drained(
            &attached,
            Side::Client,
            &client,
            &hsm,
            attached.up_base,
            false,
        )
        .await;
        drained(
            &attached,
            Side::Hsm,
            &hsm,
            &client,
            attached.down_base,
            false,
        )
        .await;
    }
    let (up, down) = kernel_counts(&attached, &client, &hsm, held, finished);
    let kernel_end = |end| Forwarded {
        path: DataPath::Kernel,
        client_to_hsm: up,
        hsm_to_client: down,
        end,
        kernel: KernelUse::Overflowed,
    };
    if let Err(e) = stopped {
        return kernel_end(End::Failed(Side::Client, io::Error::other(e.to_string())));
    }
    let (client, hsm) = match (TcpStream::from_std(client), TcpStream::from_std(hsm)) {
        (Ok(c), Ok(h)) => (c, h),
        (Err(e), _) => return kernel_end(End::Failed(Side::Client, e)),
        (_, Err(e)) => return kernel_end(End::Failed(Side::Hsm, e)),
    };
    // Passed chunks wait in the sockets' BPF queues, which only a read
    // (not splice) returns: the copy path.
    let copy = Options {
        pipes: None,
        ..opts.clone()
    };
    let mut rest = super::super::forward(&client, &hsm, First::default(), &copy, stop).await;
    drop(attached);
    rest.path = DataPath::Kernel;
    rest.kernel = KernelUse::Overflowed;
    rest.client_to_hsm += up;
    rest.hsm_to_client += down;
    rest
}
