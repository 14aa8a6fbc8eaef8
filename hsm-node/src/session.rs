//! One session on the HSM node, from its first frame to close
//! (PROTOCOL.md §6, §7, §8).
//!
//! ```text
//! first frame: Grant verified (or direct InnerHello, if allowed)  (gatekeeper.rs)
//!        │ a session slot for this client and partition?  ── no ─▶ Error(over_limit), close
//! InnerHello ─▶ InnerChallenge ─▶ InnerFinish                     (handshake deadline)
//!        │ the partition the grant names, served here, client key authorized?
//!        │                                                 ── no ─▶ Error(denied), close
//!        ▼
//! InnerData ⇄ InnerData: open, decode, execute, seal              (idle timeout)
//! ```
//!
//! Handshake frames are bounded to 1024 bytes, data frames to the protocol's
//! frame limit. A handshake failure answers with the Error frame the wire
//! crate's [`WireError::code`] chooses; anything wrong once the channel is up
//! (a frame that does not decrypt or decode, an unexpected frame type) closes
//! the session without an answer, since the client's channel state can no
//! longer be trusted. Every end is logged with its reason and the grant's
//! session id; no key material and no request data are logged.

use std::sync::Arc;
use std::time::Duration;

use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::{Channel, HsmInner, InnerPeer, MAX_CHANNEL_PLAINTEXT};
use hsmgate_wire::ops::{OPS_V2, Reply, Request, Response, Status};
use hsmgate_wire::{Code, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, timeout_at};
use zeroize::{Zeroize, Zeroizing};

use crate::conn::{Conn, ConnError};
use crate::gatekeeper::Admitted;
use crate::server::{HsmNode, Partition};
use crate::trust::VerifiedGrant;

/// Largest `length` of an inner handshake frame.
pub use hsmgate_wire::frame::MAX_HANDSHAKE_FRAME_LEN;

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
        /// The partition the gateway granted, when it is another one.
        granted: Option<String>,
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

impl From<ConnError> for End {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Closed => End::Closed,
            ConnError::Io(e) => End::Io(e),
            ConnError::Wire(e) => e.into(),
        }
    }
}

/// Serve one accepted connection to its end. `pending` bounds connections
/// in their first stage and is released by it.
pub(crate) async fn serve(node: Arc<HsmNode>, stream: TcpStream, pending: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let Some(admitted) = node.gatekeeper().admit(stream, Some(pending)).await else {
        return;
    };
    let Admitted {
        mut conn,
        grant,
        inner_hello,
        deadline,
    } = admitted;
    if let Some(g) = &grant {
        let g = &g.grant;
        tracing::Span::current().record("session_id", g.session_id_hex());
        tracing::debug!(
            gateway_id = %g.gateway_id,
            client_id = %g.client_id,
            partition = %g.partition,
            source = %g.source,
            "grant accepted"
        );
    }
    let client = grant.as_ref().map(|g| g.grant.client_id.as_str());
    let granted = grant.as_ref().map(|g| g.grant.partition.as_str());
    let _slot = match node.slots().acquire(client, granted) {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::warn!(
                client_id = client.unwrap_or(""),
                partition = granted.unwrap_or(""),
                code = Code::OverLimit.as_str(),
                reason = refusal.as_str(),
                "session refused"
            );
            conn.close_with(frame::error_frame(Code::OverLimit)).await;
            return;
        }
    };
    let handshake = handshake(&node, &mut conn, inner_hello, grant.as_ref());
    let (peer, channel, partition) = match timeout_at(deadline, handshake).await {
        Ok(Ok(established)) => established,
        Ok(Err(end)) => return end_handshake(conn, end).await,
        Err(_) => return end_handshake(conn, End::Timeout).await,
    };
    match &grant {
        Some(g) => tracing::info!(
            gateway_id = %g.grant.gateway_id,
            client_id = %g.grant.client_id,
            tenant = %g.grant.tenant,
            partition = %peer.partition,
            source = %g.grant.source,
            client_key = %peer.static_key,
            "session established"
        ),
        None => tracing::info!(
            partition = %peer.partition,
            client_key = %peer.static_key,
            direct = true,
            "session established without a gateway grant (insecure_allow_direct)"
        ),
    }
    let idle = Duration::from_millis(node.config().limits.idle_timeout_ms);
    let why = serve_requests(&node, &mut conn, channel, &partition, idle, peer.version).await;
    tracing::info!(partition = %peer.partition, reason = why, "session closed");
}

/// Run the inner handshake and authorize the client: the partition must be
/// the one the grant names, served here, and the client's partition key
/// authorized for it.
async fn handshake(
    node: &HsmNode,
    conn: &mut Conn,
    inner_hello: Option<Vec<u8>>,
    grant: Option<&VerifiedGrant>,
) -> Result<(InnerPeer, Channel, Arc<Partition>), End> {
    let hello = match inner_hello {
        Some(body) => body,
        None => {
            let (kind, body) = conn.frame(MAX_HANDSHAKE_FRAME_LEN).await?;
            expect(kind, &body, FrameType::InnerHello, "inner hello")?.to_vec()
        }
    };
    let (hs, challenge) = HsmInner::respond(&node.keypair(), node.hsm_id(), &hello)?;
    conn.stream.write_all(&challenge).await?;

    let (kind, body) = conn.frame(MAX_HANDSHAKE_FRAME_LEN).await?;
    let body = expect(kind, &body, FrameType::InnerFinish, "inner finish")?;
    let (peer, channel) = hs.finish(body)?;

    let denied = |granted: Option<&str>, reason| End::Denied {
        partition: peer.partition.clone(),
        granted: granted.map(str::to_owned),
        client_key: peer.static_key.to_text(),
        reason,
    };
    if let Some(g) = grant
        && g.grant.partition != peer.partition
    {
        return Err(denied(
            Some(&g.grant.partition),
            "the inner handshake names another partition than the gateway granted",
        ));
    }
    let Some(partition) = node.partition(&peer.partition) else {
        return Err(denied(None, "partition not served by this node"));
    };
    if !partition.allows(&peer.static_key) {
        return Err(denied(
            None,
            "partition key not authorized for the partition",
        ));
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
            granted: Some(granted),
            client_key,
            reason,
        } => tracing::warn!(
            %partition,
            granted_partition = %granted,
            %client_key,
            code = Code::Denied.as_str(),
            reason,
            "session denied"
        ),
        End::Denied {
            partition,
            granted: None,
            client_key,
            reason,
        } => {
            tracing::warn!(%partition, %client_key, code = Code::Denied.as_str(), reason, "session denied")
        }
    }
    if let Some(code) = end.code() {
        conn.close_with(frame::error_frame(code)).await;
    }
}

/// Serve requests until the session ends; returns why it ended.
async fn serve_requests(
    node: &HsmNode,
    conn: &mut Conn,
    mut channel: Channel,
    partition: &Arc<Partition>,
    idle: Duration,
    version: u8,
) -> &'static str {
    loop {
        let (kind, body) = match timeout(idle, conn.frame(MAX_FRAME_LEN)).await {
            Err(_) => return "idle timeout",
            Ok(Err(ConnError::Closed)) => return "closed by client",
            Ok(Err(ConnError::Io(e))) => {
                tracing::info!(error = %e, "read failed");
                return "i/o error";
            }
            Ok(Err(ConnError::Wire(e))) => {
                tracing::warn!(error = %e, "bad frame");
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
        // Version 1 knows only its own ops: anything else ends the session.
        // From version 2 on, an op this node does not know is answered
        // `unsupported` (§7.6), so that newer clients can probe.
        let decoded = Request::decode(&plaintext)
            .ok()
            .filter(|(_, request)| request.since() <= version);
        let (id, op, mut result) = match decoded {
            Some((id, request)) => {
                let op = request.name();
                (id, op, execute(node, partition, request, version).await)
            }
            None => match Request::unknown_op_id(&plaintext).filter(|_| version >= OPS_V2) {
                Some(id) => (id, "unknown", Err(Status::Unsupported)),
                None => {
                    tracing::warn!(
                        version,
                        "malformed request, or an op this version does not have"
                    );
                    return "protocol error";
                }
            },
        };
        tracing::debug!(
            id,
            op,
            status = result.as_ref().err().map(|s| *s as u8).unwrap_or(0),
            "request"
        );
        let mut response = Zeroizing::new(
            Response {
                id,
                result: result.clone(),
            }
            .encode(version),
        );
        if response.len() > MAX_CHANNEL_PLAINTEXT {
            // A listing of many large keys: the client lists them one by
            // one instead (§7.6).
            response = Zeroizing::new(
                Response {
                    id,
                    result: Err(Status::LimitReached),
                }
                .encode(version),
            );
        }
        if let Ok(Reply::Plaintext(p) | Reply::GcmPlaintext(p) | Reply::RsaPlaintext(p)) =
            &mut result
        {
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

/// Run one request; those that touch the key store's file or the token go
/// to a blocking thread. Counted and timed in the node's metrics.
async fn execute(
    node: &HsmNode,
    partition: &Arc<Partition>,
    request: Request,
    version: u8,
) -> Result<Reply, Status> {
    let op = request.name();
    let started = std::time::Instant::now();
    let result = run(partition, request, version).await;
    let metrics = node.metrics();
    metrics
        .op_seconds
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(_) => "ok",
        Err(s) => status_name(*s),
    };
    metrics.ops.with_label_values(&[op, status]).inc();
    result
}

/// The status as PROTOCOL.md §7.4 names it.
fn status_name(status: Status) -> &'static str {
    match status {
        Status::NotFound => "not_found",
        Status::InvalidArgument => "invalid_argument",
        Status::AlreadyExists => "already_exists",
        Status::CryptoFailed => "crypto_failed",
        Status::Internal => "internal",
        Status::Unsupported => "unsupported",
        Status::LimitReached => "limit_reached",
    }
}

async fn run(partition: &Arc<Partition>, request: Request, version: u8) -> Result<Reply, Status> {
    if !partition.store.is_blocking(&request) {
        return partition.store.execute(request, version);
    }
    let task = Arc::clone(partition);
    tokio::task::spawn_blocking(move || task.store.execute(request, version))
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
