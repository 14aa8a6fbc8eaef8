//! The client side of every path, written once so that each row of a report
//! does the same client work: the outer handshake (hsmgate only), the inner
//! handshake with an HSM node and one ping, echo round trips and bulk sends.
//!
//! It speaks the protocol with the `wire` crate directly, like the SDK does
//! (PROTOCOL.md §3, §4, §6), including the InnerHello pipelined behind the
//! Credentials, over any byte stream: plain TCP, or TLS to HAProxy.

use anyhow::{Context, bail, ensure};
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::inner::ClientInner;
use hsmgate_wire::ops::{Reply, Request, Response};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake};
use hsmgate_wire::quic::Binding;
use hsmgate_wire::{Code, PublicKey, StaticKeypair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Who the benchmark client is, and whom it trusts.
#[derive(Clone)]
pub struct Identity {
    pub client_id: String,
    pub tenant: String,
    /// Service key, proven to the gateway.
    pub service: StaticKeypair,
    /// Partition key, proven to the HSM node.
    pub partition_key: StaticKeypair,
    pub gateway_key: PublicKey,
    pub hsm_keys: Vec<PublicKey>,
}

/// A stream with the bytes read past the last frame.
pub struct Framed<S> {
    pub io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub fn new(io: S) -> Self {
        Framed {
            io,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The next frame, at most `max_len` long. The buffer never holds more
    /// than one frame plus one read.
    pub async fn frame(&mut self, max_len: usize) -> anyhow::Result<(FrameType, Vec<u8>)> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((f, used)) = frame::decode(&self.buf, max_len)? {
                let out = (f.kind, f.body.to_vec());
                self.buf.drain(..used);
                return Ok(out);
            }
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed while waiting for a frame");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame, which must be of `kind` (an Error frame becomes an
    /// error naming its code).
    pub async fn expect(&mut self, kind: FrameType, max_len: usize) -> anyhow::Result<Vec<u8>> {
        let (got, body) = self.frame(max_len).await?;
        let f = hsmgate_wire::Frame {
            kind: got,
            body: &body,
        };
        f.expect(kind, "benchmark frame")?;
        Ok(body)
    }

    /// The stream back, once nothing is left unread.
    pub fn into_inner(self) -> anyhow::Result<S> {
        ensure!(
            self.buf.is_empty(),
            "{} unexpected bytes after the handshake",
            self.buf.len()
        );
        Ok(self.io)
    }
}

/// The outer handshake (§3), with `pipelined` written right behind the
/// Credentials (§4). Returns once the gateway granted.
pub async fn outer_grant<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    id: &Identity,
    partition: &str,
    pipelined: &[u8],
) -> anyhow::Result<Framed<S>> {
    outer_grant_bound(io, id, partition, pipelined, None).await
}

/// [`outer_grant`] on the first stream of a QUIC connection, bound to it
/// by `binding` (PROTOCOL.md §11.2) when given.
pub async fn outer_grant_bound<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    id: &Identity,
    partition: &str,
    pipelined: &[u8],
    binding: Option<&Binding>,
) -> anyhow::Result<Framed<S>> {
    let request = AccessRequest {
        client_id: id.client_id.clone(),
        tenant: id.tenant.clone(),
        partition: partition.to_owned(),
    };
    let keys = [id.gateway_key];
    let (mut hs, hello) = match binding {
        Some(binding) => ClientHandshake::start_bound(&id.service, &keys, request, binding)?,
        None => ClientHandshake::start(&id.service, id.gateway_key, request)?,
    };
    let mut io = Framed::new(io);
    io.io.write_all(&hello).await?;
    let challenge = io
        .expect(FrameType::Challenge, MAX_OUTER_FRAME_LEN)
        .await
        .context("challenge")?;
    let (mut creds, _info) = hs.read_challenge(&challenge)?;
    creds.extend_from_slice(pipelined);
    io.io.write_all(&creds).await?;
    let decision = io
        .expect(FrameType::Decision, MAX_OUTER_FRAME_LEN)
        .await
        .context("decision")?;
    let decision = hs.read_decision(&decision)?;
    if decision.code != Code::Granted {
        bail!("gateway refused: {:?}", decision.code);
    }
    Ok(io)
}

/// A further stream of an authenticated QUIC connection (PROTOCOL.md
/// §11.4): the Open frame with `pipelined` behind it, then the Answer.
pub async fn open_granted<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    partition: &str,
    pipelined: &[u8],
) -> anyhow::Result<Framed<S>> {
    let mut open = hsmgate_wire::quic::open_frame(partition)?;
    open.extend_from_slice(pipelined);
    let mut io = Framed::new(io);
    io.io.write_all(&open).await?;
    let answer = io
        .expect(FrameType::Answer, MAX_OUTER_FRAME_LEN)
        .await
        .context("answer")?;
    let answer = hsmgate_wire::quic::read_answer(&answer)?;
    if answer.code != Code::Granted {
        bail!("gateway refused the stream: {:?}", answer.code);
    }
    Ok(io)
}

/// How a session reaches its HSM node.
pub enum Grant<'a> {
    /// Straight to the node (direct, HAProxy).
    None,
    /// The outer handshake on a TCP connection.
    Tcp,
    /// The bound outer handshake on a QUIC connection's first stream.
    QuicFirst(&'a Binding),
    /// An Open on a further stream of an authenticated QUIC connection.
    QuicStream,
}

/// One whole HSM session: [outer handshake,] inner handshake, one ping,
/// close. `partition` set means "through hsmgate": the outer handshake asks
/// for it and the InnerHello is pipelined behind the Credentials.
pub async fn hsm_session<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    id: &Identity,
    hsm_partition: &str,
    through_gateway: bool,
) -> anyhow::Result<()> {
    let grant = if through_gateway {
        Grant::Tcp
    } else {
        Grant::None
    };
    hsm_session_via(io, id, hsm_partition, grant).await
}

/// [`hsm_session`] with the grant of any transport.
pub async fn hsm_session_via<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    id: &Identity,
    hsm_partition: &str,
    grant: Grant<'_>,
) -> anyhow::Result<()> {
    let (inner, inner_hello) = ClientInner::start(&id.partition_key, hsm_partition)?;
    let mut io = match grant {
        Grant::None => {
            let mut io = Framed::new(io);
            io.io.write_all(&inner_hello).await?;
            io
        }
        Grant::Tcp => outer_grant(io, id, hsm_partition, &inner_hello).await?,
        Grant::QuicFirst(binding) => {
            outer_grant_bound(io, id, hsm_partition, &inner_hello, Some(binding)).await?
        }
        Grant::QuicStream => open_granted(io, hsm_partition, &inner_hello).await?,
    };
    let challenge = io
        .expect(FrameType::InnerChallenge, MAX_FRAME_LEN)
        .await
        .context("inner challenge")?;
    let (mut finish, hsm, mut channel) =
        inner.finish(&challenge, |k: &PublicKey| id.hsm_keys.contains(k))?;
    // InnerFinish and the first request in one write.
    finish.extend_from_slice(&channel.seal(&Request::Ping.encode(1)?)?);
    io.io.write_all(&finish).await?;
    let answer = io
        .expect(FrameType::InnerData, MAX_FRAME_LEN)
        .await
        .context("ping answer")?;
    let response = Response::decode(&channel.open(&answer)?, hsm.version)?;
    ensure!(
        response.id == 1 && response.result == Ok(Reply::Pong),
        "unexpected answer to ping: {response:?}"
    );
    let _ = io.io.shutdown().await;
    Ok(())
}

/// Write `msg`, read as many bytes back.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    msg: &[u8],
    back: &mut [u8],
) -> std::io::Result<()> {
    io.write_all(msg).await?;
    io.read_exact(&mut back[..msg.len()]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_wire::outer::{Decision, GatewayHandshake};

    /// The driver against a gateway written with the wire crate, over an
    /// in-memory pipe: it grants and the pipelined bytes arrive behind.
    #[tokio::test]
    async fn outer_grant_pipelines_and_returns_the_stream() {
        let gw = StaticKeypair::generate().expect("key");
        let id = Identity {
            client_id: "c".into(),
            tenant: "t".into(),
            service: StaticKeypair::generate().expect("key"),
            partition_key: StaticKeypair::generate().expect("key"),
            gateway_key: gw.public(),
            hsm_keys: Vec::new(),
        };
        let (client, server) = tokio::io::duplex(4096);
        let gateway = tokio::spawn(async move {
            let mut io = Framed::new(server);
            let hello = io.expect(FrameType::Hello, 1024).await.expect("hello");
            let (mut hs, challenge) =
                GatewayHandshake::respond(&gw, "gw", &hello).expect("respond");
            io.io.write_all(&challenge).await.expect("write");
            let creds = io
                .expect(FrameType::Credentials, 1024)
                .await
                .expect("creds");
            let who = hs.read_credentials(&creds).expect("credentials");
            assert_eq!(who.request.partition, "p");
            let decision = hs.decision_frame(Decision::GRANTED).expect("decision");
            io.io.write_all(&decision).await.expect("write");
            // The pipelined bytes arrive behind the Credentials, then the
            // client's first bytes after the grant, which are echoed.
            let (mut io, mut got) = (io.io, io.buf);
            let mut chunk = [0u8; 8];
            while got.len() < 8 {
                let n = io.read(&mut chunk).await.expect("read");
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(&got[..4], b"ping");
            io.write_all(&got[4..8]).await.expect("echo");
        });
        let framed = outer_grant(client, &id, "p", b"ping")
            .await
            .expect("granted");
        let mut io = framed.into_inner().expect("no extra bytes");
        let mut back = [0u8; 4];
        round_trip(&mut io, b"pong", &mut back)
            .await
            .expect("echo back");
        assert_eq!(&back, b"pong");
        gateway.await.expect("gateway task");
    }
}
