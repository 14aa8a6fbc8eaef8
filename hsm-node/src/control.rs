//! The node's side of a gateway's control connection (PROTOCOL.md §8.2).
//!
//! ```text
//! ControlHello ─▶ ControlChallenge ─▶ ControlFinish   (handshake deadline)
//!        │ gateway key trusted, control connection limit not reached?  no ─▶ Error, close
//!        ▼
//! GrantKey, Status ─▶ then Pong for every Ping, Status when the node turns
//! full or accepts again, until the gateway closes or is silent too long
//! ```
//!
//! The grant key registered here is withdrawn when the connection ends, so
//! grants sealed under it stop opening at once.

use std::time::Duration;

use hsmgate_wire::control::{ControlChannel, ControlMessage, NodeControl};
use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::{Code, WireError};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, timeout, timeout_at};

use crate::conn::{Conn, ConnError};
use crate::gatekeeper::Gatekeeper;
use crate::slots::NodeStatus;

/// A control connection silent this long is closed: gateways ping every
/// few seconds (PROTOCOL.md §8.2).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on writing one control message.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the control handshake that `hello` (a ControlHello body) opens, then
/// serve the connection until it ends.
pub(crate) async fn serve(
    gate: &Gatekeeper,
    mut conn: Conn,
    hello: &[u8],
    deadline: Instant,
    pending: Option<OwnedSemaphorePermit>,
) {
    let handshake = async {
        let (hs, challenge) = NodeControl::respond(&gate.keypair(), gate.hsm_id(), hello)?;
        conn.stream.write_all(&challenge).await?;
        let (kind, body) = conn.frame(MAX_GATEWAY_NODE_FRAME_LEN).await?;
        let body = frame::Frame { kind, body: &body }
            .expect(FrameType::ControlFinish, "control finish")?;
        Ok::<_, ConnError>(hs.finish(body)?)
    };
    let (peer, channel) = match timeout_at(deadline, handshake).await {
        Ok(Ok(established)) => established,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "control handshake failed");
            if let ConnError::Wire(w) = &e
                && !matches!(w, WireError::Refused(_))
            {
                conn.close_with(frame::error_frame(w.code())).await;
            }
            return;
        }
        Err(_) => {
            tracing::info!("control handshake deadline passed");
            conn.close_with(frame::error_frame(Code::Timeout)).await;
            return;
        }
    };
    let gateway_key = peer.static_key;
    if !gate.trust().is_trusted(&gateway_key) {
        tracing::warn!(
            gateway_id = %peer.gateway_id,
            %gateway_key,
            "control connection refused: gateway key not in gateways.trusted_keys"
        );
        conn.close_with(frame::error_frame(Code::Denied)).await;
        return;
    }
    let Some(_held) = gate.control_slot() else {
        tracing::warn!(
            gateway_id = %peer.gateway_id,
            limit = gate.trust().max_control_connections(),
            "control connection refused: gateways.max_control_connections reached"
        );
        conn.close_with(frame::error_frame(Code::OverLimit)).await;
        return;
    };
    drop(pending);
    let (_registration, key_id, secret) = gate.trust().register(gateway_key);
    tracing::info!(
        gateway_id = %peer.gateway_id,
        %gateway_key,
        "gateway control connection established"
    );
    let grant_key = ControlMessage::GrantKey {
        key_id,
        key: secret,
    };
    let trust = Trust {
        still: Box::new(|| gate.trust().is_trusted(&gateway_key) && gate.trust().is_live(key_id)),
        changes: gate.trust().changes(),
    };
    let why = run(
        conn,
        channel,
        grant_key,
        gate.status(),
        gate.stopping(),
        trust,
    )
    .await;
    tracing::info!(gateway_id = %peer.gateway_id, reason = why, "gateway control connection closed");
}

/// Hand out the grant key and the status, then answer pings and report
/// status changes; returns why the connection ended.
async fn run(
    mut conn: Conn,
    mut channel: ControlChannel,
    grant_key: ControlMessage,
    mut status: watch::Receiver<NodeStatus>,
    mut stopping: watch::Receiver<bool>,
    mut trust: Trust<'_>,
) -> &'static str {
    let first = status_message(&status.borrow_and_update());
    for message in [grant_key, first] {
        if let Err(why) = send(&mut conn, &mut channel, &message).await {
            return why;
        }
    }
    loop {
        tokio::select! {
            read = timeout(IDLE_TIMEOUT, conn.frame(MAX_GATEWAY_NODE_FRAME_LEN)) => {
                let (kind, body) = match read {
                    Err(_) => return "idle timeout",
                    Ok(Err(ConnError::Closed)) => return "closed by the gateway",
                    Ok(Err(ConnError::Io(_))) => return "i/o error",
                    Ok(Err(ConnError::Wire(_))) => return "protocol error",
                    Ok(Ok(frame)) => frame,
                };
                if kind != FrameType::ControlData {
                    return "protocol error";
                }
                match channel.open(&body) {
                    Ok(ControlMessage::Ping(n)) => {
                        if let Err(why) = send(&mut conn, &mut channel, &ControlMessage::Pong(n)).await {
                            return why;
                        }
                    }
                    Ok(_) => return "protocol error: unexpected control message",
                    Err(_) => return "control data does not decrypt",
                }
            }
            () = async { let _ = stopping.wait_for(|s| *s).await; } => return "node stopping",
            Ok(()) = trust.changes.changed() => {
                if !(trust.still)() {
                    // A reload took the gateway's key out of trusted_keys:
                    // its grant key is withdrawn; so is the connection.
                    conn.close_with(frame::error_frame(Code::Denied)).await;
                    return "gateway key no longer in gateways.trusted_keys";
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return "node stopping";
                }
                let message = status_message(&status.borrow_and_update());
                if let Err(why) = send(&mut conn, &mut channel, &message).await {
                    return why;
                }
            }
        }
    }
}

fn status_message(status: &NodeStatus) -> ControlMessage {
    ControlMessage::Status {
        accepting: status.accepting,
        sessions: status.sessions,
        max_sessions: status.max_sessions,
    }
}

async fn send(
    conn: &mut Conn,
    channel: &mut ControlChannel,
    message: &ControlMessage,
) -> Result<(), &'static str> {
    let sealed = channel
        .seal(message)
        .map_err(|_| "cannot seal a control message")?;
    match timeout(WRITE_TIMEOUT, conn.stream.write_all(&sealed)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("i/o error"),
        Err(_) => Err("gateway stopped reading"),
    }
}

/// Whether the gateway of a control connection is still trusted, and when
/// to ask again.
struct Trust<'a> {
    still: Box<dyn Fn() -> bool + Send + Sync + 'a>,
    changes: watch::Receiver<u64>,
}
