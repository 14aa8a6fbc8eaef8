//! The QUIC listeners (PROTOCOL.md §11): the endpoint with its TLS and
//! transport settings, and what happens at a connection's first packet,
//! before any handshake work: Retry under load, the address lists, the
//! per-source limits, the connection limit and the handshake budget.
//!
//! The TLS certificate carries no trust: every start makes a fresh
//! self-signed one. Clients authenticate the gateway by its pinned Noise
//! key, through the outer handshake bound to the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_wire::quic::ALPN;
use quinn::crypto::rustls::QuicServerConfig;

use crate::control::config::{QuicConfig, RetryPolicy};

/// A bound QUIC endpoint with its configured name.
pub struct QuicListener {
    pub name: String,
    pub endpoint: quinn::Endpoint,
}

#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC settings: {0}")]
    Quic(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Bind a QUIC endpoint on `addr` (UDP) with `config`'s bounds.
pub fn bind(
    name: &str,
    addr: SocketAddr,
    config: &QuicConfig,
) -> Result<QuicListener, QuicSetupError> {
    let server = server_config(config)?;
    let socket = udp_socket(addr, config.udp_buffer)
        .map_err(|source| QuicSetupError::Bind { addr, source })?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| QuicSetupError::Quic("no async runtime for QUIC".into()))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| QuicSetupError::Bind { addr, source })?;
    Ok(QuicListener {
        name: name.to_owned(),
        endpoint,
    })
}

/// The listener's UDP socket, with receive and send buffers of `buffer`
/// bytes where the kernel allows (`net.core.rmem_max`, `wmem_max`): a
/// default-sized buffer drops datagrams in bursts, and QUIC then waits for
/// its loss recovery.
fn udp_socket(addr: SocketAddr, buffer: u32) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    let want = buffer as usize;
    let _ = socket.set_recv_buffer_size(want);
    let _ = socket.set_send_buffer_size(want);
    // Linux reports twice what it grants (its bookkeeping included).
    let got = socket.recv_buffer_size().unwrap_or(0) / 2;
    if got < want {
        tracing::warn!(
            %addr,
            asked = want,
            got,
            "QUIC listener: the UDP receive buffer is smaller than quic.udp_buffer; raise net.core.rmem_max (and wmem_max) or bursts are dropped"
        );
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn server_config(config: &QuicConfig) -> Result<quinn::ServerConfig, QuicSetupError> {
    let certified = rcgen::generate_simple_self_signed(vec!["hsmgate".to_owned()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms))
        .map_err(|e| QuicSetupError::Quic(e.to_string()))?;
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(config.max_streams_per_connection))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(Some(idle))
        .stream_receive_window(quinn::VarInt::from_u32(config.stream_receive_window))
        .receive_window(quinn::VarInt::from_u32(config.connection_receive_window));
    server.transport_config(Arc::new(transport));
    server.migration(config.migration);
    Ok(server)
}

/// What to do with a connection's first packet, before any other check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPacket {
    /// Ask the client to prove its address with a Retry first.
    Retry,
    /// Go on to the address lists and limits.
    Check,
}

/// Retry or go on: `handshakes` connections are in their handshake now,
/// out of a budget of `budget`.
pub fn first_packet(
    policy: RetryPolicy,
    address_validated: bool,
    handshakes: usize,
    budget: usize,
) -> FirstPacket {
    if address_validated {
        return FirstPacket::Check;
    }
    let retry = match policy {
        RetryPolicy::Always => true,
        RetryPolicy::Never => false,
        RetryPolicy::UnderLoad => handshakes.saturating_mul(2) >= budget,
    };
    if retry {
        FirstPacket::Retry
    } else {
        FirstPacket::Check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_is_asked_by_policy_and_load_and_never_twice() {
        use FirstPacket::{Check, Retry};
        assert_eq!(first_packet(RetryPolicy::Always, false, 0, 100), Retry);
        assert_eq!(first_packet(RetryPolicy::Always, true, 0, 100), Check);
        assert_eq!(first_packet(RetryPolicy::Never, false, 100, 100), Check);
        assert_eq!(first_packet(RetryPolicy::UnderLoad, false, 49, 100), Check);
        assert_eq!(first_packet(RetryPolicy::UnderLoad, false, 50, 100), Retry);
        assert_eq!(first_packet(RetryPolicy::UnderLoad, true, 100, 100), Check);
    }

    #[tokio::test]
    async fn binds_a_udp_port_with_the_configured_bounds() {
        let l = bind("q", "127.0.0.1:0".parse().unwrap(), &QuicConfig::default()).unwrap();
        let addr = l.endpoint.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        // The buffers asked for (capped by the kernel's maximum).
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let socket = udp_socket("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap() / 2;
        assert_eq!(got, rmem_max.min(1 << 20));
        // The same port over UDP again is taken.
        assert!(bind("q2", addr, &QuicConfig::default()).is_err());
    }
}
