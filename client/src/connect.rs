//! Connecting: gateway discovery, the outer handshake and failover.
//!
//! One attempt is: TCP connect (optionally from a bound local address) →
//! Hello → Challenge (the gateway's key is checked against the pin) →
//! Credentials with the InnerHello pipelined behind it in the same write
//! (PROTOCOL.md §4) → Decision → on a grant, the inner handshake
//! (`session.rs`). [`connect`] runs attempts over the shuffled gateway
//! addresses until one serves, a refusal says retrying cannot help
//! ([`ClientError::is_retryable`]), or the time budget is spent.

use std::net::{IpAddr, SocketAddr};

use hsmgate_wire::frame::{FrameType, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::inner::ClientInner;
use hsmgate_wire::outer::{AccessRequest, ClientHandshake};
use hsmgate_wire::{Code, StaticKeypair};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::config::{ClientConfig, Transport};
use crate::error::{ClientError, Phase};
use crate::framed::{Framed, wire_error};
use crate::resolve;
use crate::session::Session;

/// Per-call choices that override or add to the config.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Local address to connect from (the gateway's allow-list sees it).
    pub bind: Option<IpAddr>,
    /// Service key pair to use instead of the config's `identity_file`.
    pub identity: Option<StaticKeypair>,
}

/// Resolve the gateway, then try its addresses in random order until one
/// grants access and the HSM handshake completes.
pub async fn connect(config: &ClientConfig, opts: &ConnectOptions) -> Result<Session, ClientError> {
    let deadline = Instant::now() + config.total_timeout;
    let addrs = resolve_within(config, opts, deadline).await?;
    try_in_order(config, opts, &addrs, deadline).await
}

/// The gateway's addresses, shuffled, resolved before `deadline`.
pub(crate) async fn resolve_within(
    config: &ClientConfig,
    opts: &ConnectOptions,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, ClientError> {
    tokio::time::timeout_at(
        deadline,
        resolve::gateway_addresses(
            &config.gateway,
            config.dns_server,
            opts.bind,
            config.connect_timeout,
        ),
    )
    .await
    .map_err(|_| ClientError::Resolve {
        host: config.gateway.to_string(),
        reason: "timed out".into(),
    })?
}

/// Connect to one gateway address, without DNS and without failover.
pub async fn connect_addr(
    config: &ClientConfig,
    opts: &ConnectOptions,
    addr: SocketAddr,
) -> Result<Session, ClientError> {
    let deadline = Instant::now() + config.total_timeout;
    try_in_order(config, opts, &[addr], deadline).await
}

/// The failover loop: each address at most once, all within `deadline`.
async fn try_in_order(
    config: &ClientConfig,
    opts: &ConnectOptions,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<Session, ClientError> {
    failover(config, addrs, deadline, |addr| attempt(config, opts, addr)).await
}

/// Run `attempt` on each address at most once, all within `deadline`,
/// until one succeeds or fails in a way retrying cannot help.
pub(crate) async fn failover<T, F, Fut>(
    config: &ClientConfig,
    addrs: &[SocketAddr],
    deadline: Instant,
    attempt: F,
) -> Result<T, ClientError>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut failures = Vec::new();
    for &addr in addrs {
        match tokio::time::timeout_at(deadline, attempt(addr)).await {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(e)) if e.is_retryable() => {
                tracing::info!(gateway = %addr, error = %e, "gateway attempt failed, trying the next");
                failures.push(e);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::info!(gateway = %addr, "time budget spent");
                return Err(ClientError::OutOfTime {
                    attempts: failures.len() + 1,
                    budget_ms: config.total_timeout.as_millis(),
                });
            }
        }
    }
    match failures.len() {
        1 => Err(failures.remove(0)),
        _ => Err(ClientError::AllFailed(failures)),
    }
}

/// One connection attempt to one gateway address.
async fn attempt(
    config: &ClientConfig,
    opts: &ConnectOptions,
    addr: SocketAddr,
) -> Result<Session, ClientError> {
    if config.transport == Transport::Quic {
        // The session owns its connection: closing it closes the connection.
        let (connection, session) = crate::quic::attempt(config, opts, addr, true).await?;
        drop(connection);
        return Ok(session);
    }
    let identity = opts.identity.as_ref().unwrap_or(&config.identity);
    let local = |e: hsmgate_wire::WireError| ClientError::InvalidInput(e.to_string());
    let (outer, hello) =
        ClientHandshake::start_pinning(identity, &config.gateway_keys, request(config))
            .map_err(local)?;
    let stream = tcp_connect(addr, opts.bind, config.connect_timeout).await?;
    let mut io = Framed::new(stream, addr);
    let (inner, gateway_id) = outer_handshake(&mut io, config, outer, &hello).await?;
    Session::establish(io, inner, config, gateway_id, None).await
}

/// What the client asks the gateway for.
pub(crate) fn request(config: &ClientConfig) -> AccessRequest {
    AccessRequest {
        client_id: config.client_id.clone(),
        tenant: config.tenant.clone(),
        partition: config.partition.clone(),
    }
}

/// The outer handshake on `io` from the Hello to a granting Decision, with
/// the InnerHello pipelined behind the Credentials; returns the inner
/// handshake to finish and the gateway's id.
pub(crate) async fn outer_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S>,
    config: &ClientConfig,
    mut outer: ClientHandshake,
    hello: &[u8],
) -> Result<(ClientInner, String), ClientError> {
    let addr = io.peer();
    let local = |e: hsmgate_wire::WireError| ClientError::InvalidInput(e.to_string());
    let (inner, inner_hello) =
        ClientInner::start(&config.partition_key, &config.partition).map_err(local)?;
    let phase = Phase::OuterHandshake;
    let timeout = config.handshake_timeout;
    let wire = |e| wire_error(addr, phase, None, e);

    io.write_all(hello, phase, timeout).await?;
    let challenge = io.read_frame(phase, MAX_OUTER_FRAME_LEN, timeout).await?;
    let body = challenge
        .as_frame()
        .expect(FrameType::Challenge, "challenge")
        .map_err(wire)?;
    let (mut out, gateway) = outer.read_challenge(body).map_err(wire)?;
    // Pipeline the InnerHello behind the credentials: the gateway holds it
    // until the decision, which saves a round trip on a grant.
    out.extend_from_slice(&inner_hello);
    io.write_all(&out, phase, timeout).await?;

    let decision = io.read_frame(phase, MAX_OUTER_FRAME_LEN, timeout).await?;
    let body = decision
        .as_frame()
        .expect(FrameType::Decision, "decision")
        .map_err(wire)?;
    let decision = outer.read_decision(body).map_err(wire)?;
    if decision.code != Code::Granted {
        return Err(ClientError::Refused {
            addr,
            code: decision.code,
            retry_after_secs: decision.retry_after_secs,
        });
    }
    tracing::debug!(gateway = %addr, gateway_id = %gateway.gateway_id, "access granted");
    Ok((inner, gateway.gateway_id))
}

/// TCP connect within `timeout`, from `bind` when given, with Nagle off
/// (the handshake is small request/response messages).
async fn tcp_connect(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: std::time::Duration,
) -> Result<TcpStream, ClientError> {
    let connect_err = |source| ClientError::Connect { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(connect_err)?;
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| {
            ClientError::InvalidInput(format!("cannot bind to local address {ip}: {e}"))
        })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| ClientError::Timeout {
            addr,
            phase: Phase::Connect,
        })?
        .map_err(connect_err)?;
    stream.set_nodelay(true).map_err(connect_err)?;
    Ok(stream)
}

#[cfg(test)]
mod tests;
