//! How the gateway's directory channel opens a connection: TCP, then, for
//! an `https://` endpoint, a TLS 1.3 handshake with the [`ClientTls`] config
//! in force at that moment.
//!
//! tonic's channel calls [`Connector`] for every new connection (the first
//! one, and after each loss), so a reloaded certificate applies from the
//! next connection on without rebuilding the channel, its decision cache or
//! anything a running session holds. Every failure is reported to the
//! [`ConnectObserver`] with its [`FailureKind`].
//!
//! With TLS 1.3 a server refuses a client certificate (or its absence) only
//! after the client has finished its side of the handshake, with an alert.
//! So after the handshake the connector waits up to [`SETTLE`] for the
//! server's first post-handshake record: session tickets mean the server
//! accepted this gateway, an alert means it did not and the connection
//! fails here, with the alert named, instead of as an anonymous HTTP/2
//! error later. A server that sends nothing costs the wait once per
//! connection (connections are long-lived).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::{ClientTls, FailureKind};

/// Longest wait, after the TLS handshake, for the server's verdict on this
/// gateway's certificate (see the module documentation).
pub const SETTLE: Duration = Duration::from_millis(250);

/// Told about every failed connection to the directory; the gateway counts
/// and logs them.
pub trait ConnectObserver: Send + Sync + 'static {
    fn failed(&self, kind: FailureKind, error: &str);
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct IgnoreFailures;

impl ConnectObserver for IgnoreFailures {
    fn failed(&self, _: FailureKind, _: &str) {}
}

/// A failed connection attempt. Its message reaches the gRPC status (and
/// so the gateway's refusal log line) through tonic's `ConnectError`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind_text(*.kind))]
pub struct ConnectFailure {
    pub kind: FailureKind,
    pub message: String,
}

fn kind_text(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Connect => "cannot connect to the directory",
        FailureKind::TlsHandshake => "TLS handshake with the directory failed",
        FailureKind::Certificate => "TLS certificate refused on the directory link",
    }
}

impl ConnectFailure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        ConnectFailure {
            kind,
            message: message.into(),
        }
    }
}

/// The tower service tonic's channel connects through.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) tls: Option<Arc<ClientTls>>,
    pub(crate) observer: Arc<dyn ConnectObserver>,
    /// Bound on TCP connect and TLS handshake together.
    pub(crate) timeout: Duration,
}

impl Connector {
    /// Connect to `uri`'s host and port, with TLS when configured; every
    /// failure is reported to the observer.
    pub(crate) async fn connect(&self, uri: &Uri) -> Result<DirectoryStream, ConnectFailure> {
        let result = match tokio::time::timeout(self.timeout, self.connect_unbounded(uri)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectFailure::new(
                FailureKind::Connect,
                format!(
                    "no connection within {} ms (connect_timeout_ms)",
                    self.timeout.as_millis()
                ),
            )),
        };
        if let Err(e) = &result {
            self.observer.failed(e.kind, &e.to_string());
        }
        result
    }

    async fn connect_unbounded(&self, uri: &Uri) -> Result<DirectoryStream, ConnectFailure> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectFailure::new(FailureKind::Connect, "endpoint without a host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(match &self.tls {
            Some(_) => 443,
            None => 80,
        });
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| {
            ConnectFailure::new(FailureKind::Connect, format!("{host}:{port}: {e}"))
        })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(DirectoryStream::Plain(tcp));
        };
        let name = tls
            .files()
            .server_name(host)
            .map_err(|e| ConnectFailure::new(FailureKind::TlsHandshake, e.to_string()))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls.current())
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectFailure::new(FailureKind::of_tls_io(&e), e.to_string()))?;
        if let Ok(Err(e)) = tokio::time::timeout(SETTLE, settle(&mut stream)).await {
            return Err(e);
        }
        Ok(DirectoryStream::Tls {
            stream: Box::new(stream),
            observer: Some(Arc::clone(&self.observer)),
        })
    }
}

/// Read and process the server's first post-handshake record: an alert
/// (the server refused this gateway's certificate) is an error; anything
/// else stays buffered in the connection for the HTTP/2 layer.
async fn settle(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<(), ConnectFailure> {
    /// `std::io::Read` over a non-blocking tokio socket.
    struct TryRead<'a>(&'a TcpStream);
    impl io::Read for TryRead<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.try_read(buf)
        }
    }
    let (tcp, connection) = stream.get_mut();
    loop {
        tcp.readable()
            .await
            .map_err(|e| ConnectFailure::new(FailureKind::TlsHandshake, e.to_string()))?;
        match connection.read_tls(&mut TryRead(tcp)) {
            // Some stacks (grpc-core on BoringSSL) close without an alert
            // when they refuse a client certificate or its absence: the
            // one thing that happens between the handshake and the first
            // request is the server's verdict on this gateway.
            Ok(0) => {
                return Err(ConnectFailure::new(
                    FailureKind::Certificate,
                    "the directory closed the connection right after the handshake \
                     (it refused this gateway's certificate, or its absence, without an alert)",
                ));
            }
            Ok(_) => {
                return match connection.process_new_packets() {
                    Ok(_) => Ok(()),
                    Err(e) => Err(ConnectFailure::new(
                        post_handshake_kind(&e),
                        format!("the directory refused this gateway: {e}"),
                    )),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                return Err(ConnectFailure::new(
                    FailureKind::TlsHandshake,
                    e.to_string(),
                ));
            }
        }
    }
}

/// After the handshake, the directory can only be refusing this gateway's
/// certificate; a bad signature on it is DecryptError.
fn post_handshake_kind(error: &rustls::Error) -> FailureKind {
    match error {
        rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError) => {
            FailureKind::Certificate
        }
        other => FailureKind::of_rustls(other),
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<DirectoryStream>;
    type Error = ConnectFailure;
    type Future =
        Pin<Box<dyn Future<Output = Result<TokioIo<DirectoryStream>, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectFailure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(TokioIo::new) })
    }
}

/// A connection to the directory.
pub(crate) enum DirectoryStream {
    Plain(TcpStream),
    Tls {
        stream: Box<tokio_rustls::client::TlsStream<TcpStream>>,
        /// Taken at the first TLS error after the handshake: reported once.
        observer: Option<Arc<dyn ConnectObserver>>,
    },
}

impl DirectoryStream {
    /// Report a TLS alert received after the handshake (the directory
    /// refusing this gateway's certificate) once.
    fn report(&mut self, error: &io::Error) {
        if let DirectoryStream::Tls { observer, .. } = self
            && let Some(rustls) = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && let Some(observer) = observer.take()
        {
            observer.failed(
                post_handshake_kind(rustls),
                &format!("the directory ended the TLS connection: {rustls}"),
            );
        }
    }
}

impl AsyncRead for DirectoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = match &mut *self {
            DirectoryStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            DirectoryStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Err(e)) = &polled {
            self.report(e);
        }
        polled
    }
}

impl AsyncWrite for DirectoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut *self {
            DirectoryStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            DirectoryStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut *self {
            DirectoryStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            DirectoryStream::Tls { stream, .. } => {
                Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DirectoryStream::Plain(s) => s.is_write_vectored(),
            DirectoryStream::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            DirectoryStream::Plain(s) => Pin::new(s).poll_flush(cx),
            DirectoryStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self {
            DirectoryStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            DirectoryStream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
