//! One client connection from accept to close: handshake, authorization,
//! HSM connect, grant, forwarding, and the session's log line.
//!
//! Order matters and is the security argument of the gateway: the directory
//! (or a still-valid cached answer) is asked before any HSM node is
//! contacted, and no client byte is written to an HSM node before the
//! Decision granting the session has been written to the client. The first
//! bytes the node receives are the gateway's own: the Grant naming what the
//! directory allowed (client, tenant, partition, source), sealed under the
//! key of the gateway's control channel to that node (PROTOCOL.md §8), so
//! the node serves exactly the partition that was granted.

pub mod client;
pub mod forward;
pub mod handshake;
pub mod live;
pub mod quic;

use std::net::SocketAddr;
use std::sync::Arc;

use hsmgate_authz::{DenyKind, Query, Verdict};
use hsmgate_wire::frame;
use hsmgate_wire::grant::{Grant, SESSION_ID_LEN};
use hsmgate_wire::outer::{Decision, GatewayHandshake, VerifiedClient};
use hsmgate_wire::quic::Binding;
use hsmgate_wire::{Code, WireError};
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::client::{ClientStream, linger_tcp};
use self::forward::End;
use crate::accept::handshake_slots::HandshakeSlot;
use crate::accept::limits::ClientSlot;
use crate::control::config::ForwardMode;
use crate::control::metrics::{Outcome, Stage};
use crate::control::snapshot::Snapshot;
use crate::state::Shared;
use crate::upstream::pool;

/// Retry advice sent with "unavailable" decisions.
const RETRY_AFTER_SECS: u16 = 1;

/// The admission of one accepted, address-admitted TCP connection: its
/// handshake and authorization ([`admit`]); `slot` is its place in the
/// handshake budget, given back at the grant or the refusal. The caller
/// runs it boxed, so that its state (Noise, the directory call, refusals)
/// is freed at the grant, then hands the grant to [`forward_granted`]. A
/// plain function: an async wrapper would keep its arguments in every
/// session's task for the session's life.
pub(crate) fn admit_tcp<'a>(
    shared: &'a Shared,
    snap: &'a Snapshot,
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    slot: HandshakeSlot,
) -> impl Future<Output = Result<Box<Granted>, Refused>> + Send + 'a {
    admit(
        shared,
        snap,
        ClientStream::Tcp(stream),
        peer,
        accepted,
        slot,
        None,
    )
}

/// The value out of `boxed`, whose allocation is freed now. Moved out of
/// in place (`*boxed`) instead, a box is freed only when the function that
/// holds it ends: in a session's task, when the session does.
#[allow(clippy::boxed_local)] // taking the box is the point
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// A session's id (the Grant's, PROTOCOL.md §8.3), shown in logs as 32
/// lower-case hex digits; kept as bytes, formatted only when logged.
#[derive(Clone, Copy)]
struct SessionId([u8; SESSION_ID_LEN]);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A session granted and connected to its HSM node.
pub(crate) struct Granted {
    stream: ClientStream,
    hsm: pool::Connected,
    held: Vec<u8>,
    client: Client,
    /// The client's place among its sessions (`max_sessions`).
    slot: ClientSlot,
    session_id: SessionId,
    pool: Arc<crate::upstream::pool::Pool>,
}

impl Granted {
    /// Who the client proved to be, and what it asked for.
    pub(crate) fn verified(&self) -> &VerifiedClient {
        &self.client.verified
    }
}

/// A session that was not granted: the code it was answered with, if any
/// answer could be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused(pub Option<Code>);

/// What a client asked for, once its transport knows who it is.
pub(crate) struct Asked {
    client: Client,
    answer: Answer,
    /// Bytes the client sent behind its request: opaque, for the HSM node.
    held: Vec<u8>,
    /// When the connection was accepted or the stream opened.
    started: Instant,
}

impl Asked {
    /// A request on a further stream of a QUIC connection whose first
    /// stream authenticated `verified`: answered in the clear, inside the
    /// bound TLS connection (PROTOCOL.md §11.4).
    pub(crate) fn on_stream(
        peer: SocketAddr,
        verified: VerifiedClient,
        held: Vec<u8>,
        started: Instant,
    ) -> Asked {
        Asked {
            client: Client { peer, verified },
            answer: Answer::Clear,
            held,
            started,
        }
    }
}

/// How the decision reaches the client.
enum Answer {
    /// Encrypted with the outer handshake's keys: a Decision (§3.5).
    Sealed(Box<GatewayHandshake>),
    /// An Answer frame on a further QUIC stream (§11.4).
    Clear,
}

impl Answer {
    fn frame(self, decision: Decision) -> Result<Vec<u8>, WireError> {
        match self {
            Answer::Sealed(handshake) => handshake.decision_frame(decision),
            Answer::Clear => Ok(hsmgate_wire::quic::answer_frame(decision)),
        }
    }
}

/// The outer handshake (bound to its QUIC connection by `binding`, on a
/// QUIC connection's first stream), then [`decide`].
pub(crate) async fn admit(
    shared: &Shared,
    snap: &Snapshot,
    mut stream: ClientStream,
    peer: SocketAddr,
    accepted: Instant,
    slot: HandshakeSlot,
    binding: Option<Binding>,
) -> Result<Box<Granted>, Refused> {
    let deadline = accepted + snap.config.timeouts.handshake();
    let first_frame = accepted + snap.config.timeouts.first_frame();
    // The key in force at accept: a reload that rotates it applies to the
    // next connection.
    let key = shared.key();
    let completed = {
        let handshake = tokio::time::timeout_at(
            deadline,
            handshake::run(
                &mut stream,
                &key,
                &snap.config.gateway_id,
                binding,
                first_frame,
                &slot,
            ),
        );
        tokio::select! {
            result = Box::pin(handshake) => Some(result),
            () = slot.evicted() => None,
        }
    };
    let Some(completed) = completed else {
        shared.metrics.admission(Stage::Handshake, Outcome::Evicted);
        if let Some(suppressed) = shared.log_limit.allow("evicted") {
            tracing::info!(%peer, code = Code::OverLimit.as_str(), suppressed, "refused: silent while the handshake budget was full; closed to make room");
        }
        stream.refuse_at_once(Code::OverLimit);
        return Err(Refused(Some(Code::OverLimit)));
    };
    let completed = match completed {
        Err(_) => {
            shared.metrics.admission(Stage::Handshake, Outcome::Timeout);
            if let Some(suppressed) = shared.log_limit.allow("handshake timeout") {
                tracing::info!(%peer, code = Code::Timeout.as_str(), suppressed, "refused: handshake not complete by the deadline");
            }
            stream
                .linger_close(&frame::error_frame(Code::Timeout))
                .await;
            return Err(Refused(Some(Code::Timeout)));
        }
        Ok(Err(handshake::HandshakeError::ClosedSilent)) => {
            // A TCP health check: connected and closed, nothing said.
            shared.metrics.tcp_checks.inc();
            tracing::debug!(%peer, "connection closed before its first byte (a TCP health check?)");
            return Err(Refused(None));
        }
        Ok(Err(e)) => {
            let code = e.code();
            let outcome = if matches!(e, handshake::HandshakeError::FirstFrameTimeout) {
                Outcome::Timeout
            } else {
                Outcome::Error
            };
            shared.metrics.admission(Stage::Handshake, outcome);
            if let Some(suppressed) = shared.log_limit.allow("handshake failed") {
                tracing::info!(%peer, code = code.map_or("none", Code::as_str), error = %e, suppressed, "refused: handshake failed");
            }
            if let Some(code) = code {
                stream.linger_close(&frame::error_frame(code)).await;
            }
            return Err(Refused(code));
        }
        Ok(Ok(c)) => c,
    };
    shared.metrics.admission(Stage::Handshake, Outcome::Allow);
    let handshake::Completed {
        handshake,
        client: verified,
        held,
    } = completed;
    let asked = Asked {
        client: Client { peer, verified },
        answer: Answer::Sealed(Box::new(handshake)),
        held,
        started: accepted,
    };
    decide(shared, snap, stream, asked, deadline).await
}

/// Authorization, HSM connect and the grant, the same for every transport;
/// `Err` when the session was refused or the client went away (each case
/// logged and counted).
pub(crate) async fn decide(
    shared: &Shared,
    snap: &Snapshot,
    stream: ClientStream,
    asked: Asked,
    deadline: Instant,
) -> Result<Box<Granted>, Refused> {
    let Asked {
        client,
        answer,
        held,
        started,
    } = asked;
    let peer = client.peer;
    let authorized = match authorize(shared, snap, &client, deadline).await {
        Ok(a) => a,
        Err(decision) => return Err(refuse(stream, answer, &client, decision).await),
    };
    let Some(pool) = snap.pools.get(&authorized.pool) else {
        tracing::error!(
            %peer, client_id = %client.id(), pool = %authorized.pool,
            code = Code::Unavailable.as_str(),
            "refused: the directory names a pool this gateway does not have"
        );
        return Err(refuse(stream, answer, &client, unavailable()).await);
    };
    let pool = Arc::clone(pool);
    let grant = client.grant(&snap.config.gateway_id, authorized.valid_until);
    let session_id = SessionId(grant.session_id);
    let connect_deadline = deadline.max(Instant::now() + snap.config.timeouts.hsm_connect());
    let connected = match pool::connect(
        &pool,
        &grant,
        snap.config.timeouts.hsm_connect(),
        snap.config.limits.hsm_connect_retries,
        connect_deadline,
        &shared.metrics,
    )
    .await
    {
        Ok(c) => c,
        Err(e) if e.full => {
            shared.metrics.admission(Stage::Limit, Outcome::Deny);
            tracing::info!(%peer, client_id = %client.id(), pool = pool.name(), code = Code::OverLimit.as_str(), "refused: every HSM node of the pool is full");
            return Err(refuse(stream, answer, &client, over_limit()).await);
        }
        Err(e) => {
            tracing::warn!(%peer, client_id = %client.id(), code = Code::Unavailable.as_str(), error = %e, "refused: no HSM node reachable");
            return Err(refuse(stream, answer, &client, unavailable()).await);
        }
    };
    if let Err(e) = crate::accept::listener::tune(&connected.stream) {
        tracing::debug!(error = %e, "cannot tune HSM socket");
    }
    // The grant: only now may client bytes reach the HSM node.
    let granted = match answer.frame(Decision::GRANTED) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot encrypt the decision");
            return Err(Refused(None));
        }
    };
    let mut stream = stream;
    if let Err(e) = stream.write_all(&granted).await {
        tracing::info!(%peer, client_id = %client.id(), error = %e, "client went away before the grant");
        return Err(Refused(None));
    }
    shared
        .metrics
        .handshake_duration
        .observe(started.elapsed().as_secs_f64());
    let transport = stream.transport();
    tracing::info!(
        %peer,
        %session_id,
        client_id = %client.id(),
        tenant = %client.verified.request.tenant,
        partition = %client.verified.request.partition,
        pool = pool.name(),
        member = %connected.member,
        transport,
        "session granted"
    );
    Ok(Box::new(Granted {
        stream,
        hsm: connected,
        held,
        client,
        slot: authorized.slot,
        session_id,
        pool,
    }))
}

/// Forward a granted session to its end, then count and log it.
/// `granted` comes boxed: taken by value, it would be held twice in this
/// future (the argument and the fields taken out of it) for the session's
/// life.
pub(crate) async fn forward_granted(shared: &Shared, snap: &Snapshot, granted: Box<Granted>) {
    let Granted {
        stream,
        hsm: mut connected,
        held,
        client,
        slot,
        session_id,
        pool,
    } = unbox(granted);
    let peer = client.peer;
    let started = Instant::now();
    let active = shared
        .metrics
        .sessions_active
        .with_label_values(&[pool.name()]);
    active.inc();
    let mode = snap.config.forward_mode(pool.name());
    let options = forward::Options {
        pipes: if mode == ForwardMode::Copy {
            None
        } else {
            snap.pipes.clone()
        },
        copy_buffer: snap.config.forwarding.copy_buffer,
        idle: snap.config.timeouts.idle(),
        max_lifetime: snap.config.timeouts.max_session(),
    };
    // Revocation and the drain deadline end the session through its entry
    // among the live sessions (`live.rs`): no timer of its own.
    let client = Arc::new(client);
    let mut live = shared.live.enter(Arc::clone(&client));
    let stop = std::pin::pin!(live.stopped());
    // Freed once written to the node: idle sessions keep neither.
    let first = forward::First::new(connected.preamble.take(), &held);
    drop(held);
    let transport = stream.transport();
    let kernel = shared
        .kernel
        .as_ref()
        .filter(|_| mode == ForwardMode::Kernel);
    // Matched on the stream alone: a tuple of both would be laid out in
    // the session's state beside the stream for the session's life.
    let result = match stream {
        // Each path boxed: the task holds only the path the session takes.
        ClientStream::Tcp(stream) => match kernel {
            Some(kernel) => {
                Box::pin(forward::kernel::forward(
                    kernel,
                    stream,
                    connected.stream,
                    first,
                    &options,
                    stop,
                ))
                .await
            }
            None => {
                Box::pin(forward::forward(
                    &stream,
                    &connected.stream,
                    first,
                    &options,
                    stop,
                ))
                .await
            }
        },
        ClientStream::Quic(mut stream) => {
            // Boxed: the arms share the future's memory, and the QUIC
            // copy's state must not size every TCP session's task.
            let result = Box::pin(forward::stream::forward(
                &mut stream,
                &connected.stream,
                first,
                &options,
                stop,
            ))
            .await;
            // A session that did not end by both sides closing is reset,
            // with the code that says why (PROTOCOL.md §11.6).
            if let Some(code) = reset_code(&result.end) {
                let _ = stream.send.reset(client::quic_code(code));
                let _ = stream.recv.stop(client::quic_code(code));
            }
            result
        }
    };
    drop(connected.active);
    active.dec();
    drop(slot);
    let m = &shared.metrics;
    m.sessions_forwarded
        .with_label_values(&[result.path.as_str()])
        .inc();
    if let Some(event) = result.kernel.event() {
        m.kernel_events.with_label_values(&[event]).inc();
    }
    m.forwarded_bytes
        .with_label_values(&["client_to_hsm"])
        .inc_by(result.client_to_hsm);
    m.forwarded_bytes
        .with_label_values(&["hsm_to_client"])
        .inc_by(result.hsm_to_client);
    let duration = started.elapsed();
    m.session_duration
        .with_label_values(&[pool.name()])
        .observe(duration.as_secs_f64());
    let (outcome, error) = match &result.end {
        End::Closed => ("closed", String::new()),
        End::Idle => ("idle_timeout", String::new()),
        End::Lifetime => ("max_lifetime", String::new()),
        End::Stopped(forward::Stop::Revoked(reason)) => {
            shared.metrics.sessions_revoked.inc();
            ("revoked", reason.clone())
        }
        End::Stopped(forward::Stop::DrainDeadline) => ("drain_deadline", String::new()),
        End::Failed(side, e) => (
            match side {
                forward::Side::Client => "client_error",
                forward::Side::Hsm => "hsm_error",
            },
            e.to_string(),
        ),
    };
    tracing::info!(
        %peer,
        %session_id,
        client_id = %client.id(),
        tenant = %client.verified.request.tenant,
        partition = %client.verified.request.partition,
        pool = pool.name(),
        member = %connected.member,
        policy = pool.policy().as_str(),
        choice = %connected.reason,
        path = result.path.as_str(),
        bytes_up = result.client_to_hsm,
        bytes_down = result.hsm_to_client,
        duration_ms = duration.as_millis() as u64,
        code = Code::Granted.as_str(),
        transport,
        outcome,
        error,
        "session ended"
    );
}

struct Client {
    peer: SocketAddr,
    verified: VerifiedClient,
}

impl Client {
    #[cfg(test)]
    fn for_tests(peer: &str) -> Client {
        Client {
            peer: peer.parse().expect("socket address"),
            verified: VerifiedClient {
                static_key: hsmgate_wire::PublicKey([7; 32]),
                request: hsmgate_wire::outer::AccessRequest {
                    client_id: "app".into(),
                    tenant: "t".into(),
                    partition: "p".into(),
                },
                version: 1,
            },
        }
    }

    fn id(&self) -> &str {
        &self.verified.request.client_id
    }

    /// The directory question for this client on this connection.
    fn query(&self, gateway_id: &str) -> Query {
        let request = &self.verified.request;
        Query {
            client_id: request.client_id.clone(),
            client_static_key: self.verified.static_key,
            tenant: request.tenant.clone(),
            partition: request.partition.clone(),
            source: self.peer.ip(),
            gateway_id: gateway_id.to_owned(),
        }
    }

    /// What the HSM node is told about this session (PROTOCOL.md §8.3).
    fn grant(&self, gateway_id: &str, valid_until: std::time::Instant) -> Grant {
        let request = &self.verified.request;
        let remaining = valid_until.saturating_duration_since(std::time::Instant::now());
        let expires_at = std::time::SystemTime::now()
            .checked_add(remaining)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Grant {
            session_id: rand::random::<[u8; SESSION_ID_LEN]>(),
            expires_at,
            source: self.peer,
            client_key: self.verified.static_key,
            gateway_id: gateway_id.to_owned(),
            client_id: request.client_id.clone(),
            tenant: request.tenant.clone(),
            partition: request.partition.clone(),
        }
    }
}

/// What the directory allowed for this session.
struct Authorized {
    pool: String,
    slot: ClientSlot,
    /// Until when the answer that allowed it is valid.
    valid_until: std::time::Instant,
}

fn unavailable() -> Decision {
    Decision {
        code: Code::Unavailable,
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

fn over_limit() -> Decision {
    Decision {
        code: Code::OverLimit,
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

/// Ask the directory (through the cache): a grant, or the Decision to refuse with.
async fn authorize(
    shared: &Shared,
    snap: &Snapshot,
    client: &Client,
    deadline: Instant,
) -> Result<Authorized, Decision> {
    let request = &client.verified.request;
    let query = client.query(&snap.config.gateway_id);
    let started = Instant::now();
    let answer = tokio::time::timeout_at(deadline, snap.authz.decide(&query)).await;
    shared
        .metrics
        .authz_duration
        .observe(started.elapsed().as_secs_f64());
    // Rate limited per kind: a flood of throwaway identities (each denied,
    // mostly from the cache) must not become a flood of log lines.
    let log_refusal = |code: Code, kind: &'static str, reason: &str| {
        if let Some(suppressed) = shared.log_limit.allow(kind) {
            tracing::info!(
                peer = %client.peer,
                client_id = %client.id(),
                tenant = %request.tenant,
                partition = %request.partition,
                code = code.as_str(),
                reason,
                suppressed,
                "refused"
            );
        }
    };
    let (answer, cache) = match answer {
        Err(_) => {
            shared
                .metrics
                .authz_requests
                .with_label_values(&["error", "miss"])
                .inc();
            shared.metrics.admission(Stage::Authz, Outcome::Timeout);
            log_refusal(
                Code::Unavailable,
                "directory timeout",
                "directory did not answer before the deadline",
            );
            return Err(unavailable());
        }
        Ok(Err(e)) => {
            let result = if e.is_retryable() {
                "error"
            } else {
                "rejected"
            };
            shared
                .metrics
                .authz_requests
                .with_label_values(&[result, "miss"])
                .inc();
            shared.metrics.admission(Stage::Authz, Outcome::Error);
            if e.is_retryable() {
                log_refusal(Code::Unavailable, "directory error", &e.to_string());
            } else if let Some(suppressed) = shared.log_limit.allow("directory rejected") {
                // Not an outage: the directory refuses this gateway's
                // requests (credentials, trust, version). Asking again will
                // not help; an operator must act.
                tracing::error!(
                    peer = %client.peer,
                    client_id = %client.id(),
                    partition = %request.partition,
                    code = Code::Unavailable.as_str(),
                    error = %e,
                    suppressed,
                    "refused: the directory rejected the gateway's request; a configuration error, not an outage"
                );
            }
            return Err(unavailable());
        }
        Ok(Ok(a)) => a,
    };
    match answer.verdict(client.peer.ip()) {
        Verdict::Deny(kind) => {
            shared
                .metrics
                .authz_requests
                .with_label_values(&["deny", cache.as_str()])
                .inc();
            shared.metrics.admission(Stage::Authz, Outcome::Deny);
            let (code, reason) = match kind {
                DenyKind::Identity(reason) => (Code::Denied, reason.as_str()),
                DenyKind::Address => (
                    Code::AddressNotAllowed,
                    "source address outside the client's networks",
                ),
            };
            log_refusal(code, reason, reason);
            Err(Decision::refuse(code))
        }
        Verdict::Allow { pool, max_sessions } => {
            shared
                .metrics
                .authz_requests
                .with_label_values(&["allow", cache.as_str()])
                .inc();
            shared.metrics.admission(Stage::Authz, Outcome::Allow);
            let cap = effective_cap(max_sessions, snap.config.limits.max_sessions_per_client);
            match shared.client_slots.acquire(client.id(), cap) {
                Some(slot) => {
                    shared.metrics.admission(Stage::Limit, Outcome::Allow);
                    Ok(Authorized {
                        pool,
                        slot,
                        valid_until: snap.authz.valid_until(&answer),
                    })
                }
                None => {
                    shared.metrics.admission(Stage::Limit, Outcome::Deny);
                    log_refusal(
                        Code::OverLimit,
                        "client session limit",
                        "client's session limit reached",
                    );
                    Err(Decision::refuse(Code::OverLimit))
                }
            }
        }
    }
}

/// The per-client session cap: the directory's, bounded by the gateway's
/// own ceiling (`limits.max_sessions_per_client`); 0 means no limit.
fn effective_cap(directory: u32, gateway: u32) -> u32 {
    match (directory, gateway) {
        (0, g) => g,
        (d, 0) => d,
        (d, g) => d.min(g),
    }
}

/// Send an authenticated refusal and close.
async fn refuse(
    stream: ClientStream,
    answer: Answer,
    client: &Client,
    decision: Decision,
) -> Refused {
    match answer.frame(decision) {
        Ok(frame) => stream.linger_close(&frame).await,
        Err(e) => {
            tracing::error!(peer = %client.peer, error = %e, "cannot encrypt the decision");
        }
    }
    Refused(Some(decision.code))
}

/// Why a forwarded QUIC stream is reset, when it did not simply close.
fn reset_code(end: &End) -> Option<Code> {
    match end {
        End::Closed => None,
        End::Idle | End::Lifetime => Some(Code::Timeout),
        End::Stopped(forward::Stop::Revoked(_)) => Some(Code::Denied),
        End::Stopped(forward::Stop::DrainDeadline) | End::Failed(..) => Some(Code::Unavailable),
    }
}

/// Try once to write an Error frame, without waiting: for connections
/// closed to make room, which get no lingering close.
pub fn refuse_at_once(stream: &TcpStream, code: Code) {
    let _ = stream.try_write(&frame::error_frame(code));
}

/// Send an Error frame (no keys exist yet) and close.
pub async fn refuse_unauthenticated(stream: TcpStream, code: Code) {
    refuse_unauthenticated_ref(&stream, code).await;
}

/// [`refuse_unauthenticated`] on a borrowed stream; the caller drops it.
pub async fn refuse_unauthenticated_ref(stream: &TcpStream, code: Code) {
    linger_tcp(
        stream,
        &frame::error_frame(code),
        Instant::now() + client::LINGER,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_is_logged_as_the_grant_shows_it() {
        let mut grant = Grant {
            session_id: [0; SESSION_ID_LEN],
            ..Client::for_tests("127.0.0.1:5000").grant("gw", std::time::Instant::now())
        };
        grant.session_id[0] = 0xab;
        grant.session_id[SESSION_ID_LEN - 1] = 0x01;
        let shown = SessionId(grant.session_id).to_string();
        assert_eq!(shown, grant.session_id_hex());
        assert_eq!(shown.len(), 2 * SESSION_ID_LEN);
        assert!(shown.starts_with("ab") && shown.ends_with("01"));
    }
}
