//! QUIC to the gateway (PROTOCOL.md §11): one connection, authenticated
//! once, carrying as many sessions as the application opens, one per
//! stream.
//!
//! The gateway's TLS certificate is not checked against any PKI (the
//! gateway makes a fresh self-signed one at every start); TLS still checks
//! that the peer holds the certificate's key. What authenticates the
//! gateway is the outer handshake on the first stream: the client pins the
//! gateway's Noise key as over TCP, and the handshake's prologue carries
//! this connection's TLS exporter value, so it completes only if both ends
//! see the same TLS connection. A relay that terminates TLS in the middle
//! has two connections with two different exporter values, and the
//! client's handshake fails at the Challenge, before it reveals its
//! identity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hsmgate_wire::Code;
use hsmgate_wire::frame::{FrameType, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::inner::ClientInner;
use hsmgate_wire::outer::ClientHandshake;
use hsmgate_wire::quic::{ALPN, BINDING_LEN, Binding, EXPORTER_LABEL};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::connect::{ConnectOptions, failover, outer_handshake, request, resolve_within};
use crate::error::{ClientError, Phase};
use crate::framed::{Framed, wire_error};
use crate::session::{QuicLink, Session, SplitStream};

/// The server name sent in the TLS ClientHello; the gateway ignores it.
const SERVER_NAME: &str = "hsmgate";

/// Keep-alive while no session is busy, well inside the gateway's idle
/// timeout (60 s by default).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// An authenticated QUIC connection to one gateway. Clones share it; it
/// closes when the last clone and the last session on it are gone, or on
/// [`QuicConnection::close`].
#[derive(Clone)]
pub struct QuicConnection {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: SocketAddr,
    gateway_id: String,
    config: ClientConfig,
}

impl std::fmt::Debug for QuicConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConnection")
            .field("gateway", &self.inner.addr)
            .field("gateway_id", &self.inner.gateway_id)
            .finish_non_exhaustive()
    }
}

/// Resolve the gateway, then try its addresses in random order until one
/// authenticates a QUIC connection and grants its first session; returns
/// the connection (for more sessions) and that session.
pub async fn connect_quic(
    config: &ClientConfig,
    opts: &ConnectOptions,
) -> Result<(QuicConnection, Session), ClientError> {
    let deadline = Instant::now() + config.total_timeout;
    let addrs = resolve_within(config, opts, deadline).await?;
    failover(config, &addrs, deadline, |addr| {
        attempt(config, opts, addr, false)
    })
    .await
}

/// [`connect_quic`] to one address, without DNS and without failover.
pub async fn connect_quic_addr(
    config: &ClientConfig,
    opts: &ConnectOptions,
    addr: SocketAddr,
) -> Result<(QuicConnection, Session), ClientError> {
    let deadline = Instant::now() + config.total_timeout;
    failover(config, &[addr], deadline, |addr| {
        attempt(config, opts, addr, false)
    })
    .await
}

/// One attempt: QUIC and TLS, the bound outer handshake on the first
/// stream, then the first session's inner handshake. With `session_owns`,
/// closing the first session closes the connection.
pub(crate) async fn attempt(
    config: &ClientConfig,
    opts: &ConnectOptions,
    addr: SocketAddr,
    session_owns: bool,
) -> Result<(QuicConnection, Session), ClientError> {
    let connect_err = |e: &dyn std::fmt::Display| ClientError::Connect {
        addr,
        source: std::io::Error::other(e.to_string()),
    };
    let local = opts.bind.unwrap_or(match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let endpoint = client_endpoint(SocketAddr::new(local, 0)).map_err(|e| {
        ClientError::InvalidInput(format!("cannot bind a UDP socket to {local}: {e}"))
    })?;
    let connecting = endpoint
        .connect_with(client_config()?, addr, SERVER_NAME)
        .map_err(|e| connect_err(&e))?;
    let conn = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| ClientError::Timeout {
            addr,
            phase: Phase::Connect,
        })?
        .map_err(|e| connect_err(&e))?;
    let mut binding: Binding = [0; BINDING_LEN];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .map_err(|e| connect_err(&format!("no TLS exporter: {e:?}")))?;
    let identity = opts.identity.as_ref().unwrap_or(&config.identity);
    let (outer, hello) =
        ClientHandshake::start_bound(identity, &config.gateway_keys, request(config), &binding)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
    let stream = open_stream(&conn, addr, config.handshake_timeout).await?;
    let mut io = Framed::new(stream, addr);
    let refused = |e: ClientError| {
        if let ClientError::Refused { code, .. } = &e {
            conn.close(
                quinn::VarInt::from_u32(hsmgate_wire::quic::error_code(*code)),
                b"",
            );
        }
        e
    };
    let (inner, gateway_id) = outer_handshake(&mut io, config, outer, &hello)
        .await
        .map_err(refused)?;
    let link = QuicLink {
        conn: conn.clone(),
        endpoint: session_owns.then(|| endpoint.clone()),
    };
    let session = Session::establish(io, inner, config, gateway_id.clone(), Some(link)).await?;
    let connection = QuicConnection {
        inner: Arc::new(Inner {
            endpoint,
            conn,
            addr,
            gateway_id,
            config: config.clone(),
        }),
    };
    Ok((connection, session))
}

impl QuicConnection {
    /// A new session with the configured partition, on a new stream: an
    /// Open frame with the InnerHello behind it, the gateway's Answer, then
    /// the inner handshake with the HSM node it picked.
    pub async fn open_session(&self) -> Result<Session, ClientError> {
        let config = &self.inner.config;
        self.open_session_for(&config.partition, &config.partition_key)
            .await
    }

    /// A new session with another partition of the same tenant, proven to
    /// the HSM node with that partition's key. The gateway asks the
    /// directory whether this client may use it, as for any session.
    pub async fn open_session_for(
        &self,
        partition: &str,
        partition_key: &hsmgate_wire::StaticKeypair,
    ) -> Result<Session, ClientError> {
        let Inner {
            conn,
            addr,
            gateway_id,
            config,
            ..
        } = &*self.inner;
        let addr = *addr;
        let local = |e: hsmgate_wire::WireError| ClientError::InvalidInput(e.to_string());
        let (inner, inner_hello) = ClientInner::start(partition_key, partition).map_err(local)?;
        let mut open = hsmgate_wire::quic::open_frame(partition).map_err(local)?;
        open.extend_from_slice(&inner_hello);
        let stream = open_stream(conn, addr, config.handshake_timeout).await?;
        let mut io = Framed::new(stream, addr);
        let phase = Phase::OuterHandshake;
        let timeout = config.handshake_timeout;
        io.write_all(&open, phase, timeout).await?;
        let answer = io.read_frame(phase, MAX_OUTER_FRAME_LEN, timeout).await?;
        let wire = |e| wire_error(addr, phase, None, e);
        let body = answer
            .as_frame()
            .expect(FrameType::Answer, "answer")
            .map_err(wire)?;
        let decision = hsmgate_wire::quic::read_answer(body).map_err(wire)?;
        if decision.code != Code::Granted {
            return Err(ClientError::Refused {
                addr,
                code: decision.code,
                retry_after_secs: decision.retry_after_secs,
            });
        }
        let link = QuicLink {
            conn: conn.clone(),
            endpoint: None,
        };
        Session::establish(io, inner, config, gateway_id.clone(), Some(link)).await
    }

    /// The QUIC connection itself, for what the SDK does not cover (its
    /// statistics, a raw stream).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    /// The gateway's address as this connection sees it.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The id the gateway announced in its Challenge.
    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway_id
    }

    /// Move the connection to another local UDP socket (a new address or
    /// network, as on a roaming device). The gateway checks the new
    /// address as it checks a new connection's.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.inner.endpoint.rebind(socket)
    }

    /// Why the connection closed, once it has: the gateway's code
    /// (PROTOCOL.md §11.6) when it closed it with one.
    pub fn close_code(&self) -> Option<Code> {
        match self.inner.conn.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(close) => {
                Some(hsmgate_wire::quic::code_of(close.error_code.into_inner()))
            }
            _ => Some(Code::Unavailable),
        }
    }

    /// Completes when the connection has closed, with the gateway's code
    /// when it gave one.
    pub async fn closed(&self) -> Option<Code> {
        let _ = self.inner.conn.closed().await;
        self.close_code()
    }

    /// Close the connection and every session on it, and wait (at most a
    /// second) until the gateway has been told.
    pub async fn close(&self) {
        self.inner.conn.close(quinn::VarInt::from_u32(0), b"");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// Receive and send buffer asked for the client's UDP socket (the kernel
/// caps it at `net.core.rmem_max`): room for a burst of answers.
const UDP_BUFFER: usize = 2 * 1024 * 1024;

/// A client endpoint on a UDP socket bound to `local`, with large buffers.
/// For tools that drive the protocol themselves; set the client settings
/// with [`quic_client_config`].
pub fn client_endpoint(local: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(local)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

/// A new bidirectional stream. quinn opens it without a packet; the
/// gateway sees it with its first bytes.
async fn open_stream(
    conn: &quinn::Connection,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<QuicBi, ClientError> {
    let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
        .await
        .map_err(|_| ClientError::Timeout {
            addr,
            phase: Phase::Connect,
        })?
        .map_err(|e| ClientError::Io {
            addr,
            phase: Phase::Connect,
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(QuicBi { send, recv })
}

/// The QUIC client settings the SDK uses (PROTOCOL.md §11.1): TLS 1.3
/// only, the hsmgate ALPN, any certificate whose key signs the handshake
/// (the pinned Noise key, bound to the connection, is what is trusted), no
/// unidirectional streams, keep-alives. For tools that drive the protocol
/// themselves (the load generator); applications use [`connect_quic`].
pub fn quic_client_config() -> Result<quinn::ClientConfig, ClientError> {
    client_config()
}

fn client_config() -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::InvalidInput(format!("TLS settings: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BoundByNoise(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::InvalidInput(format!("QUIC TLS settings: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts the gateway's certificate whatever it is (the pinned Noise key,
/// bound to this connection, is the trust anchor), but still checks the
/// TLS 1.3 handshake signature made with its key.
#[derive(Debug)]
struct BoundByNoise(Arc<CryptoProvider>);

impl ServerCertVerifier for BoundByNoise {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One bidirectional QUIC stream as one byte stream (tokio's AsyncRead and
/// AsyncWrite).
pub struct QuicBi {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl QuicBi {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicBi {
        QuicBi { send, recv }
    }
}

impl SplitStream for QuicBi {
    type Read = quinn::RecvStream;
    type Write = quinn::SendStream;
    fn split(self) -> (Self::Read, Self::Write) {
        (self.recv, self.send)
    }
}

impl AsyncRead for QuicBi {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicBi {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(std::pin::Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx)
    }
}
