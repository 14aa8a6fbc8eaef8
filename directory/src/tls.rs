//! The directory's TLS: the accept loop that turns TCP connections into
//! TLS streams for tonic, and the gateway identity check.
//!
//! Handshakes run in tasks of their own (at most [`MAX_HANDSHAKES`] at
//! once, each bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent peer
//! never holds up the next connection. Each uses the server config in force
//! when the connection arrived: a certificate reload applies to new
//! connections, those already up keep theirs.
//!
//! Identity (docs/OPERATIONS.md, "Security of the control plane"): with
//! [`GatewayIdentity::Required`], the `gateway_id` a request claims must be
//! a DNS name of the gateway's client certificate (subjectAltName, checked
//! with webpki's name matching, so `*.gw.example` covers `gw-0.gw.example`).
//! The common name is not used, as in every current TLS stack.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hsmgate_authz::tls::ServerTls;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// TLS handshakes in progress at once; beyond this, new connections wait
/// in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;
/// Bound on one TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a request's `gateway_id` must match its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayIdentity {
    /// Any authenticated gateway may claim any `gateway_id`.
    #[default]
    Unchecked,
    /// The claimed `gateway_id` must be a DNS name of the client
    /// certificate; other requests get PERMISSION_DENIED.
    Required,
}

/// What tonic puts in each request's extensions for a TLS connection.
#[derive(Debug, Clone)]
pub struct GatewayPeer {
    pub remote: SocketAddr,
    /// The client's end-entity certificate, when it presented one.
    pub certificate: Option<Arc<CertificateDer<'static>>>,
}

/// Why a claimed `gateway_id` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate on this connection")]
    NoCertificate,
    #[error("the request claims no gateway_id")]
    NoGatewayId,
    #[error("gateway_id {0:?} is not a DNS name, so no certificate can name it")]
    NotADnsName(String),
    #[error("the client certificate does not name gateway_id {0:?}")]
    Mismatch(String),
    #[error("the client certificate cannot be parsed: {0}")]
    BadCertificate(String),
}

/// Does `certificate` name `gateway_id` (a DNS name in its subjectAltName)?
pub fn check_identity(
    certificate: Option<&CertificateDer<'_>>,
    gateway_id: &str,
) -> Result<(), IdentityError> {
    let certificate = certificate.ok_or(IdentityError::NoCertificate)?;
    if gateway_id.is_empty() {
        return Err(IdentityError::NoGatewayId);
    }
    let name = match ServerName::try_from(gateway_id) {
        Ok(name @ ServerName::DnsName(_)) => name,
        _ => return Err(IdentityError::NotADnsName(gateway_id.to_owned())),
    };
    let parsed = rustls::server::ParsedCertificate::try_from(certificate)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| IdentityError::Mismatch(gateway_id.to_owned()))
}

/// A TLS connection handed to tonic.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: GatewayPeer,
}

impl Connected for TlsConnection {
    type ConnectInfo = GatewayPeer;

    fn connect_info(&self) -> GatewayPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The stream of TLS connections accepted on `listener`, for tonic's
/// `serve_with_incoming`, and the task that accepts them (abort it when
/// the server stops).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> (
    ReceiverStream<Result<TlsConnection, io::Error>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, tls, tx));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tx: mpsc::Sender<Result<TlsConnection, io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let failures = Arc::new(FailureLog::default());
    loop {
        let Ok(slot) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    failures.log(remote, &e.to_string());
                    return;
                }
                Err(_) => {
                    failures.log(remote, "no TLS handshake within 10 s");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Arc::new(cert.clone().into_owned()));
            let peer = GatewayPeer {
                remote,
                certificate,
            };
            // The server is gone when this fails: nothing left to do.
            let _ = tx.send(Ok(TlsConnection { stream, peer })).await;
        });
    }
}

/// Handshake failures are logged at most once a second, with the count of
/// those not logged: a scan or a misconfigured gateway retrying in a loop
/// must not flood the log.
#[derive(Default)]
struct FailureLog {
    /// Milliseconds since `start` of the last line.
    last: AtomicU64,
    suppressed: AtomicU64,
    start: std::sync::OnceLock<Instant>,
}

impl FailureLog {
    fn log(&self, remote: SocketAddr, error: &str) {
        let start = *self.start.get_or_init(Instant::now);
        let now = start.elapsed().as_millis() as u64 + 1_000;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1_000
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(%remote, error, suppressed, "TLS handshake failed; connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_authz::pki::{Ca, Leaf, Usage};
    use rustls::pki_types::pem::PemObject;

    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let ca = Ca::new("test CA").expect("ca");
        let issued = ca
            .issue(&Leaf::new(Usage::Client, "gateway", names))
            .expect("issue");
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem")
    }

    #[test]
    fn accepts_a_gateway_id_the_certificate_names() {
        let cert = cert(&["gw-1", "gw-1.hsm.svc"]);
        assert_eq!(check_identity(Some(&cert), "gw-1"), Ok(()));
        assert_eq!(check_identity(Some(&cert), "gw-1.hsm.svc"), Ok(()));
    }

    #[test]
    fn refuses_a_gateway_id_the_certificate_does_not_name() {
        let cert = cert(&["gw-1"]);
        assert_eq!(
            check_identity(Some(&cert), "gw-2"),
            Err(IdentityError::Mismatch("gw-2".into()))
        );
        assert_eq!(
            check_identity(Some(&cert), ""),
            Err(IdentityError::NoGatewayId)
        );
        assert_eq!(
            check_identity(None, "gw-1"),
            Err(IdentityError::NoCertificate)
        );
        assert_eq!(
            check_identity(Some(&cert), "127.0.0.1"),
            Err(IdentityError::NotADnsName("127.0.0.1".into()))
        );
    }

    #[test]
    fn a_wildcard_name_covers_one_label() {
        let cert = cert(&["*.gw.example"]);
        assert_eq!(check_identity(Some(&cert), "gw-0.gw.example"), Ok(()));
        assert!(check_identity(Some(&cert), "a.b.gw.example").is_err());
    }
}
