//! Forwarding a session granted on a QUIC stream: the stream to the HSM
//! node's TCP connection and back, with the same byte counts, half-close,
//! idle timeout, lifetime and external stop as the TCP path. The bytes go
//! through quinn's buffers and one copy buffer per direction; there is no
//! zero-copy path from a QUIC stream.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::{
    Activity, DataPath, End, First, Forwarded, OneWay, Options, Side, Stop, finish, send_first,
    until_end, write_all,
};
use crate::session::client::QuicStream;

/// Write `first` to the HSM node, then forward both ways
/// until both sides close, one fails, the session is idle or too old, or
/// `stop` completes. The caller resets the stream when it did not close.
pub async fn forward<S: Future<Output = Stop>>(
    client: &mut QuicStream,
    hsm: &TcpStream,
    first: First,
    opts: &Options,
    stop: std::pin::Pin<&mut S>,
) -> Forwarded {
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let activity = Activity::new();
    let QuicStream { send, recv } = client;
    let end = async {
        if let Err(e) = send_first(hsm, first, &up).await {
            return End::Failed(Side::Hsm, e);
        }
        let both = std::pin::pin!(async {
            tokio::try_join!(
                stream_to_hsm(recv, hsm, opts.copy_buffer, &up, &activity),
                hsm_to_stream(hsm, send, opts.copy_buffer, &down, &activity),
            )
        });
        until_end(both, &activity, opts, stop).await
    }
    .await;
    Forwarded {
        path: DataPath::Quic,
        client_to_hsm: up.load(Ordering::Relaxed),
        hsm_to_client: down.load(Ordering::Relaxed),
        end,
        kernel: super::KernelUse::NotUsed,
    }
}

async fn stream_to_hsm(
    recv: &mut quinn::RecvStream,
    hsm: &TcpStream,
    buffer: usize,
    count: &AtomicU64,
    activity: &Activity,
) -> OneWay {
    let mut buf = vec![0u8; buffer];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => return finish(hsm, Side::Hsm),
            // The client closed its whole connection without an error: the
            // end of this stream too.
            Err(quinn::ReadError::ConnectionLost(e)) if closed_normally(&e) => {
                return finish(hsm, Side::Hsm);
            }
            Err(e) => return Err((Side::Client, io::Error::from(e))),
        };
        activity.touch();
        write_all(hsm, &buf[..n])
            .await
            .map_err(|e| (Side::Hsm, e))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

async fn hsm_to_stream(
    hsm: &TcpStream,
    send: &mut quinn::SendStream,
    buffer: usize,
    count: &AtomicU64,
    activity: &Activity,
) -> OneWay {
    let mut buf = vec![0u8; buffer];
    loop {
        let n = loop {
            hsm.readable().await.map_err(|e| (Side::Hsm, e))?;
            match hsm.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((Side::Hsm, e)),
            }
        };
        if n == 0 {
            // The node is done: the stream's FIN tells the client. A stream
            // the client already stopped has nothing left to tell.
            let _ = send.finish();
            return Ok(());
        }
        activity.touch();
        match send.write_all(&buf[..n]).await {
            Ok(()) => {}
            // The client closed its connection normally: nothing more to
            // deliver, and nothing wrong.
            Err(quinn::WriteError::ConnectionLost(e)) if closed_normally(&e) => return Ok(()),
            Err(e) => return Err((Side::Client, io::Error::from(e))),
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Whether the client closed its connection with application code 0 (a
/// normal end, PROTOCOL.md §11.6).
fn closed_normally(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == 0)
}
