//! One connection to the HSM node, from accept to close (PROTOCOL.md §6, §7).
//!
//! ```text
//! first bytes "PING"?  ── yes ─▶ probe reply, close          (crate::probe)
//!        │ no
//! InnerHello ─▶ InnerChallenge ─▶ InnerFinish                (handshake deadline)
//!        │  partition known and client key authorized?  ── no ─▶ Error(Denied), close
//!        ▼
//! InnerData ⇄ InnerData: open, decode, execute, seal         (idle timeout)
//! ```
//!
//! Handshake frames are bounded to 1024 bytes, data frames to the protocol's
//! frame limit. A handshake failure answers with the Error frame the wire
//! crate's [`WireError::code`] chooses; anything wrong once the channel is up
//! (a frame that does not decrypt or decode, an unexpected frame type) closes
//! the session without an answer, since the client's channel state can no
//! longer be trusted. Every end is logged with its reason; no key material
//! and no request data are logged.

use std::sync::Arc;
use std::time::Duration;

use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::{Channel, HsmInner, InnerPeer};
use hsmgate_wire::ops::{Reply, Request, Response, Status};
use hsmgate_wire::{Code, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use zeroize::{Zeroize, Zeroizing};

use crate::ops;
use crate::probe;
use crate::server::{HsmNode, Partition};

/// Largest `length` of an inner handshake frame.
pub use hsmgate_wire::frame::MAX_HANDSHAKE_FRAME_LEN;
/// How long a closing connection waits for its last Error frame to be read.
const LINGER: Duration = Duration::from_millis(500);
const READ_CHUNK: usize = 16 * 1024;

/// Why a session ended early.
#[derive(Debug)]
enum End {
    /// The peer closed the connection.
    Closed,
    Io(std::io::Error),
    /// The handshake deadline passed.
    Timeout,
    /// The peer's bytes broke the protocol.
    Wire(WireError),
    /// The peer sent an Error frame.
    PeerRefused(Code),
    /// The handshake completed but the client may not use the partition.
    Denied {
        partition: String,
        client_key: String,
        reason: &'static str,
    },
}

impl End {
    /// The Error frame code to send back during the handshake, if any.
    fn code(&self) -> Option<Code> {
        match self {
            End::Timeout => Some(Code::Timeout),
            End::Wire(e) => Some(e.code()),
            End::Denied { .. } => Some(Code::Denied),
            End::Closed | End::Io(_) | End::PeerRefused(_) => None,
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

impl From<WireError> for End {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Refused(code) => End::PeerRefused(code),
            e => End::Wire(e),
        }
    }
}

/// The connection's read side: a buffer of bytes not yet decoded.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Read more bytes; EOF is [`End::Closed`].
    async fn fill(&mut self) -> Result<(), End> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(End::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Read one whole frame of at most `max_len`. The buffer never holds
    /// more than one frame plus one read chunk.
    async fn frame(&mut self, max_len: usize) -> Result<(FrameType, Vec<u8>), End> {
        loop {
            if let Some((f, used)) = frame::decode(&self.buf, max_len)? {
                let out = (f.kind, f.body.to_vec());
                self.buf.drain(..used);
                return Ok(out);
            }
            self.fill().await?;
        }
    }
}

/// Serve one accepted connection to its end.
pub(crate) async fn serve(node: Arc<HsmNode>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = &node.config().limits;
    let deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(MAX_HANDSHAKE_FRAME_LEN),
    };

    match timeout_at(deadline, is_probe(&mut conn)).await {
        Ok(Ok(true)) => {
            tracing::debug!("health probe");
            close_with(conn.stream, probe::reply(node.hsm_id())).await;
            return;
        }
        Ok(Ok(false)) => {}
        Ok(Err(end)) => return end_handshake(conn, end).await,
        Err(_) => return end_handshake(conn, End::Timeout).await,
    }

    let established = match timeout_at(deadline, handshake(&node, &mut conn)).await {
        Ok(Ok(established)) => established,
        Ok(Err(end)) => return end_handshake(conn, end).await,
        Err(_) => return end_handshake(conn, End::Timeout).await,
    };
    let (peer, channel, partition) = established;
    tracing::info!(
        partition = %peer.partition,
        client_key = %peer.static_key,
        "session established"
    );
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let why = serve_requests(&mut conn, channel, &partition, idle).await;
    tracing::info!(partition = %peer.partition, reason = why, "session closed");
}

/// Wait until the first bytes tell a probe from a session.
async fn is_probe(conn: &mut Conn) -> Result<bool, End> {
    loop {
        match probe::detect(&conn.buf) {
            probe::Detect::Probe => return Ok(true),
            probe::Detect::NotProbe => return Ok(false),
            probe::Detect::NeedMore => conn.fill().await?,
        }
    }
}

/// Run the inner handshake and authorize the client.
async fn handshake(
    node: &HsmNode,
    conn: &mut Conn,
) -> Result<(InnerPeer, Channel, Arc<Partition>), End> {
    let (kind, body) = conn.frame(MAX_HANDSHAKE_FRAME_LEN).await?;
    let body = expect(kind, &body, FrameType::InnerHello, "inner hello")?;
    let (hs, challenge) = HsmInner::respond(node.keypair(), node.hsm_id(), body)?;
    conn.stream.write_all(&challenge).await?;

    let (kind, body) = conn.frame(MAX_HANDSHAKE_FRAME_LEN).await?;
    let body = expect(kind, &body, FrameType::InnerFinish, "inner finish")?;
    let (peer, channel) = hs.finish(body)?;

    let denied = |reason| End::Denied {
        partition: peer.partition.clone(),
        client_key: peer.static_key.to_text(),
        reason,
    };
    let Some(partition) = node.partition(&peer.partition) else {
        return Err(denied("partition not served by this node"));
    };
    if !partition.client_keys.contains(&peer.static_key) {
        return Err(denied("partition key not authorized for the partition"));
    }
    let partition = Arc::clone(partition);
    Ok((peer, channel, partition))
}

fn expect<'a>(
    kind: FrameType,
    body: &'a [u8],
    want: FrameType,
    what: &'static str,
) -> Result<&'a [u8], End> {
    Ok(frame::Frame { kind, body }.expect(want, what)?)
}

/// Log why the handshake ended, answer with its Error frame if it has one, close.
async fn end_handshake(conn: Conn, end: End) {
    match &end {
        End::Closed => tracing::debug!("connection closed during the handshake"),
        End::Io(e) => tracing::info!(error = %e, "i/o error during the handshake"),
        End::Timeout => tracing::info!("handshake deadline passed"),
        End::Wire(e) => tracing::warn!(error = %e, "handshake failed"),
        End::PeerRefused(code) => tracing::info!(%code, "client sent an error frame"),
        End::Denied {
            partition,
            client_key,
            reason,
        } => tracing::warn!(%partition, %client_key, reason, "session denied"),
    }
    if let Some(code) = end.code() {
        close_with(conn.stream, frame::error_frame(code)).await;
    }
}

/// Serve requests until the session ends; returns why it ended.
async fn serve_requests(
    conn: &mut Conn,
    mut channel: Channel,
    partition: &Arc<Partition>,
    idle: Duration,
) -> &'static str {
    loop {
        let (kind, body) = match timeout(idle, conn.frame(MAX_FRAME_LEN)).await {
            Err(_) => return "idle timeout",
            Ok(Err(End::Closed)) => return "closed by client",
            Ok(Err(End::Io(e))) => {
                tracing::info!(error = %e, "read failed");
                return "i/o error";
            }
            Ok(Err(e)) => {
                tracing::warn!(error = ?e, "bad frame");
                return "protocol error";
            }
            Ok(Ok(frame)) => frame,
        };
        if kind != FrameType::InnerData {
            tracing::warn!(frame = ?kind, "unexpected frame in an established session");
            return "protocol error";
        }
        let plaintext = match channel.open(&body) {
            Ok(p) => Zeroizing::new(p),
            Err(e) => {
                tracing::warn!(error = %e, "inner data does not decrypt");
                return "decrypt failure";
            }
        };
        let (id, request) = match Request::decode(&plaintext) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed request");
                return "protocol error";
            }
        };
        let op = op_name(&request);
        let mut result = execute(partition, request).await;
        tracing::debug!(
            id,
            op,
            status = result.as_ref().err().map(|s| *s as u8).unwrap_or(0),
            "request"
        );
        let response = Zeroizing::new(
            Response {
                id,
                result: result.clone(),
            }
            .encode(),
        );
        if let Ok(Reply::Plaintext(p)) = &mut result {
            p.zeroize();
        }
        let sealed = match channel.seal(&response) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot seal a response");
                return "internal error";
            }
        };
        match timeout(idle, conn.stream.write_all(&sealed)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(error = %e, "write failed");
                return "i/o error";
            }
            Err(_) => return "client stopped reading",
        }
    }
}

/// Run one request; those that touch the key store's file go to a blocking thread.
async fn execute(partition: &Arc<Partition>, request: Request) -> Result<Reply, Status> {
    if !ops::is_blocking(&request) {
        return ops::execute(&partition.store, request);
    }
    let task = Arc::clone(partition);
    tokio::task::spawn_blocking(move || ops::execute(&task.store, request))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(
                partition = %partition.name,
                panicked = e.is_panic(),
                "key operation task failed"
            );
            Err(Status::Internal)
        })
}

fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Ping => "ping",
        Request::Random { .. } => "random",
        Request::GenerateKey { .. } => "generate_key",
        Request::ListKeys => "list_keys",
        Request::Sign { .. } => "sign",
        Request::Verify { .. } => "verify",
        Request::Encrypt { .. } => "encrypt",
        Request::Decrypt { .. } => "decrypt",
    }
}

/// Send `last` (an Error frame or a probe reply), then close so that the
/// peer can read it: half-close, and discard what the peer still sends for
/// a short while, since closing with unread input makes the kernel send a
/// reset that can destroy the data not yet read by the peer.
pub(crate) async fn close_with(mut stream: TcpStream, last: Vec<u8>) {
    let _ = timeout(LINGER, async {
        stream.write_all(&last).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
