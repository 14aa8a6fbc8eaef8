//! The client side of the QUIC rows (PROTOCOL.md §11): one client endpoint
//! (one UDP socket) for every connection, the SDK's QUIC settings, and a
//! stream that keeps its connection open while it is used.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use hsmgate_client::QuicBi;
use hsmgate_wire::quic::{BINDING_LEN, Binding, EXPORTER_LABEL};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client endpoint on loopback with the SDK's QUIC settings.
pub fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let mut endpoint = hsmgate_client::client_endpoint("127.0.0.1:0".parse()?)
        .context("binding the QUIC client socket")?;
    endpoint.set_default_client_config(
        hsmgate_client::quic_client_config().context("QUIC client settings")?,
    );
    Ok(endpoint)
}

/// A new QUIC connection to `addr` and its channel binding.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> anyhow::Result<(quinn::Connection, Binding)> {
    let conn = endpoint
        .connect(addr, "hsmgate")
        .context("starting a QUIC connection")?
        .await
        .context("QUIC handshake")?;
    let mut binding: Binding = [0; BINDING_LEN];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .map_err(|e| anyhow::anyhow!("no TLS exporter: {e:?}"))?;
    Ok((conn, binding))
}

/// A new bidirectional stream on `conn`, holding the connection open.
pub async fn open_stream(conn: &quinn::Connection) -> anyhow::Result<QuicStream> {
    let (send, recv) = conn.open_bi().await.context("opening a stream")?;
    Ok(QuicStream {
        io: QuicBi::new(send, recv),
        _conn: conn.clone(),
    })
}

/// One stream as a byte stream; its connection stays open while it lives.
pub struct QuicStream {
    io: QuicBi,
    _conn: quinn::Connection,
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
