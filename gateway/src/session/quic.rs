//! One QUIC connection (PROTOCOL.md §11): the TLS handshake, the channel
//! binding, the outer handshake and first session on the first stream,
//! then one session per further stream, each through the same
//! [`decide`](super::decide) and [`forward_granted`](super::forward_granted)
//! as a TCP connection's. The connection's address is checked again
//! whenever it changes, and it closes once the gateway stops and its
//! sessions have ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_authz::{DenyKind, Verdict};
use hsmgate_wire::frame::{self, FrameType, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::outer::{Decision, VerifiedClient};
use hsmgate_wire::quic::{BINDING_LEN, Binding, EXPORTER_LABEL};
use hsmgate_wire::{Code, WireError};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{ClientStream, QuicStream, quic_code};
use super::handshake::READ_CHUNK;
use super::{Asked, Client, Refused, admit, decide, forward_granted};
use crate::accept::handshake_slots::HandshakeSlot;
use crate::control::metrics::{Outcome, Stage};
use crate::control::snapshot::Snapshot;
use crate::state::Shared;

/// Serve one QUIC connection that passed the address lists and limits at
/// its first packet, until it closes.
pub async fn serve_connection(
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    incoming: quinn::Incoming,
    peer: SocketAddr,
    accepted: Instant,
    slot: HandshakeSlot,
) {
    let count = |outcome: &str| shared.metrics.quic_connection(outcome);
    let deadline = accepted + snap.config.timeouts.handshake();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            count("tls_failed");
            tracing::debug!(%peer, error = %e, "QUIC connection failed at its first packet");
            return;
        }
    };
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            count("tls_failed");
            if let Some(suppressed) = shared.log_limit.allow("quic tls failed") {
                tracing::info!(%peer, error = %e, suppressed, "refused: QUIC/TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            count("timeout");
            if let Some(suppressed) = shared.log_limit.allow("quic tls timeout") {
                tracing::info!(%peer, code = Code::Timeout.as_str(), suppressed, "refused: QUIC/TLS handshake not complete by the deadline");
            }
            return;
        }
    };
    let mut binding: Binding = [0; BINDING_LEN];
    if let Err(e) = conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"") {
        tracing::error!(%peer, error = ?e, "cannot derive the channel binding");
        conn.close(quic_code(Code::Internal), b"internal error");
        return;
    }
    // The first stream carries the outer handshake; the Hello must come
    // by the first-frame deadline, counted from the first packet.
    let first_frame = accepted + snap.config.timeouts.first_frame();
    let (send, recv) = match tokio::time::timeout_at(first_frame, conn.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return,
        Err(_) => {
            count("timeout");
            conn.close(quic_code(Code::Timeout), b"no handshake");
            return;
        }
    };
    let stream = ClientStream::Quic(QuicStream { send, recv });
    let admitted = Box::pin(admit(
        &shared,
        &snap,
        stream,
        peer,
        accepted,
        slot,
        Some(binding),
    ))
    .await;
    let granted = match admitted {
        Ok(granted) => granted,
        Err(Refused(code)) => {
            count("not_authenticated");
            // The answer was acknowledged (or a second passed): close.
            let code = code.unwrap_or(Code::ProtocolError);
            conn.close(quic_code(code), code.as_str().as_bytes());
            return;
        }
    };
    count("authenticated");
    let identity = granted.verified().clone();
    let mut sessions = JoinSet::new();
    {
        let (shared, snap) = (Arc::clone(&shared), Arc::clone(&snap));
        sessions.spawn(async move { forward_granted(&shared, &snap, granted).await });
    }
    let reason = serve_streams(&shared, &conn, &identity, peer, &mut sessions).await;
    if let Some(code) = reason {
        conn.close(quic_code(code), code.as_str().as_bytes());
    }
    // Closed: the sessions still running see their stream fail and end.
    while sessions.join_next().await.is_some() {}
}

/// Accept further streams until the connection closes (`None`), its
/// address is refused, or the gateway stops and the last session ended:
/// then the code to close it with.
async fn serve_streams(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    identity: &VerifiedClient,
    peer: SocketAddr,
    sessions: &mut JoinSet<()>,
) -> Option<Code> {
    let mut checked = peer;
    let mut stopping = false;
    let interval = Duration::from_millis(shared.snapshot().config.quic.path_check_interval_ms);
    let mut path_check = tokio::time::interval(interval);
    path_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            stream = conn.accept_bi() => {
                let Ok((send, recv)) = stream else { return None };
                let stream = QuicStream { send, recv };
                let (shared, identity) = (Arc::clone(shared), identity.clone());
                let peer = conn.remote_address();
                if stopping {
                    sessions.spawn(async move { refuse_draining(&shared, stream).await });
                } else {
                    sessions.spawn(async move { serve_stream(shared, stream, peer, identity).await });
                }
            }
            _ = path_check.tick() => {
                let now = conn.remote_address();
                if now != checked {
                    if let Err(code) = path_allowed(shared, identity, checked, now).await {
                        return Some(code);
                    }
                    checked = now;
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {
                if stopping && sessions.is_empty() {
                    return Some(Code::Unavailable);
                }
            }
            () = shared.stopping(), if !stopping => {
                stopping = true;
                if sessions.is_empty() {
                    return Some(Code::Unavailable);
                }
            }
        }
    }
}

/// A further stream: its Open frame, then the same decision and
/// forwarding as every session.
async fn serve_stream(
    shared: Arc<Shared>,
    stream: QuicStream,
    peer: SocketAddr,
    identity: VerifiedClient,
) {
    // Each session gets the config in force when it opens.
    let snap = shared.snapshot();
    let started = Instant::now();
    let deadline = started + snap.config.timeouts.handshake();
    let mut stream = ClientStream::Quic(stream);
    let opened = tokio::time::timeout_at(deadline, read_open(&mut stream)).await;
    let (partition, held) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(OpenError::Closed)) => return,
        Ok(Err(OpenError::Wire(e))) => {
            stream_outcome(&shared, "malformed");
            if let Some(suppressed) = shared.log_limit.allow("quic open malformed") {
                tracing::info!(%peer, client_id = %identity.request.client_id, code = e.code().as_str(), error = %e, suppressed, "refused: a stream that does not start with an Open frame");
            }
            stream.linger_close(&frame::error_frame(e.code())).await;
            return;
        }
        Err(_) => {
            stream_outcome(&shared, "malformed");
            stream
                .linger_close(&frame::error_frame(Code::Timeout))
                .await;
            return;
        }
    };
    // A new session under the config in force now: a reload that put the
    // connection's address outside the gateway's lists refuses it (running
    // sessions keep going, as on TCP).
    if !snap.policy.admits(peer.ip()) {
        shared.metrics.admission(Stage::Address, Outcome::Deny);
        stream_outcome(&shared, "refused");
        if let Some(suppressed) = shared.log_limit.allow("address not allowed") {
            tracing::info!(%peer, client_id = %identity.request.client_id, code = Code::AddressNotAllowed.as_str(), suppressed, "refused: source address not allowed");
        }
        let answer = hsmgate_wire::quic::answer_frame(Decision::refuse(Code::AddressNotAllowed));
        stream.linger_close(&answer).await;
        return;
    }
    let mut verified = identity;
    verified.request.partition = partition;
    let asked = Asked::on_stream(peer, verified, held, started);
    match Box::pin(decide(&shared, &snap, stream, asked, deadline)).await {
        Ok(granted) => {
            stream_outcome(&shared, "granted");
            forward_granted(&shared, &snap, granted).await;
        }
        Err(_) => stream_outcome(&shared, "refused"),
    }
}

fn stream_outcome(shared: &Shared, outcome: &str) {
    shared.metrics.quic_stream(outcome);
}

/// A stream opened while the gateway stops: "unavailable, try again
/// elsewhere in a second", without reading it.
async fn refuse_draining(shared: &Shared, stream: QuicStream) {
    stream_outcome(shared, "draining");
    let answer = hsmgate_wire::quic::answer_frame(Decision {
        code: Code::Unavailable,
        retry_after_secs: super::RETRY_AFTER_SECS,
    });
    ClientStream::Quic(stream).linger_close(&answer).await;
}

enum OpenError {
    Closed,
    Wire(WireError),
}

/// Read the Open frame; what follows it (at most one read's worth) is
/// held for the HSM node, unparsed, as behind the Credentials (§4).
async fn read_open(stream: &mut ClientStream) -> Result<(String, Vec<u8>), OpenError> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        if let Some((f, used)) =
            frame::decode(&buf, MAX_OUTER_FRAME_LEN).map_err(OpenError::Wire)?
        {
            let body = f.expect(FrameType::Open, "Open").map_err(OpenError::Wire)?;
            let partition = hsmgate_wire::quic::read_open(body).map_err(OpenError::Wire)?;
            return Ok((partition, buf.split_off(used)));
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let n = stream
            .read(&mut buf[start..])
            .await
            .map_err(|_| OpenError::Closed)?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(OpenError::Closed);
        }
    }
}

/// Whether the connection may go on from `now`: the gateway's address
/// lists and the directory's networks for the client, as for a new
/// connection. A directory that cannot answer does not close it (as with
/// revocation).
async fn path_allowed(
    shared: &Shared,
    identity: &VerifiedClient,
    before: SocketAddr,
    now: SocketAddr,
) -> Result<(), Code> {
    let snap = shared.snapshot();
    let client_id = &identity.request.client_id;
    let refused = |code: Code, reason: &str| {
        shared
            .metrics
            .quic_path_checks
            .with_label_values(&["refused"])
            .inc();
        tracing::info!(peer = %now, %before, %client_id, code = code.as_str(), reason, "QUIC connection closed: its new address is not allowed");
        Err(code)
    };
    if !snap.policy.admits(now.ip()) {
        return refused(Code::AddressNotAllowed, "the gateway's address lists");
    }
    let client = Client {
        peer: now,
        verified: identity.clone(),
    };
    let query = client.query(&snap.config.gateway_id);
    match Box::pin(snap.authz.decide(&query)).await {
        Ok((answer, _)) => match answer.verdict(now.ip()) {
            Verdict::Allow { .. } => {}
            Verdict::Deny(DenyKind::Address) => {
                return refused(Code::AddressNotAllowed, "outside the client's networks");
            }
            Verdict::Deny(DenyKind::Identity(reason)) => {
                return refused(Code::Denied, reason.as_str());
            }
        },
        Err(e) => {
            tracing::debug!(peer = %now, %client_id, error = %e, "path check: directory unavailable; connection continues");
        }
    }
    shared
        .metrics
        .quic_path_checks
        .with_label_values(&["allowed"])
        .inc();
    tracing::info!(peer = %now, %before, %client_id, "QUIC connection moved to a new address; allowed");
    Ok(())
}
