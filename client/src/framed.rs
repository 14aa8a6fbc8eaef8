//! Frames over a socket: a small buffered reader and a writer, each step
//! under a deadline.
//!
//! The reader keeps unconsumed bytes between calls (a peer may send two
//! frames in one segment, or one frame over many) and hands each one to
//! `hsmgate_wire::frame::decode` with the phase's size limit, so an oversized
//! length is refused from the header alone and memory stays bounded by that
//! limit (PROTOCOL.md §2).

use std::net::SocketAddr;
use std::time::Duration;

use hsmgate_wire::frame::{self, Frame, FrameType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ClientError, Phase};

/// Bytes read from the socket per call.
const READ_CHUNK: usize = 8 * 1024;

/// How long to wait for an Error frame after a failed write: the peer may
/// have refused us and closed before our bytes arrived.
const ERROR_FRAME_GRACE: Duration = Duration::from_millis(200);

/// A decoded frame that owns its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    pub kind: FrameType,
    pub body: Vec<u8>,
}

impl OwnedFrame {
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            kind: self.kind,
            body: &self.body,
        }
    }
}

/// A stream speaking hsmgate frames to the gateway at `peer`.
pub struct Framed<S> {
    stream: S,
    peer: SocketAddr,
    buf: Vec<u8>,
}

impl<S> Framed<S> {
    pub fn new(stream: S, peer: SocketAddr) -> Self {
        Framed::with_buffer(stream, peer, Vec::new())
    }

    /// A framed stream whose first bytes were already read into `buf`.
    pub fn with_buffer(stream: S, peer: SocketAddr, buf: Vec<u8>) -> Self {
        Framed { stream, peer, buf }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The stream and the bytes read from it but not yet decoded.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

impl<S: AsyncRead + Unpin> Framed<S> {
    /// Read one frame whose length field is at most `max_len`, with no
    /// deadline of its own (for a reader that waits for answers).
    pub async fn next_frame(
        &mut self,
        phase: Phase,
        max_len: usize,
    ) -> Result<OwnedFrame, ClientError> {
        self.read_frame_inner(phase, max_len).await
    }

    /// Read one frame whose length field is at most `max_len`, within `timeout`.
    pub async fn read_frame(
        &mut self,
        phase: Phase,
        max_len: usize,
        timeout: Duration,
    ) -> Result<OwnedFrame, ClientError> {
        let peer = self.peer;
        match tokio::time::timeout(timeout, self.read_frame_inner(phase, max_len)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { addr: peer, phase }),
        }
    }

    async fn read_frame_inner(
        &mut self,
        phase: Phase,
        max_len: usize,
    ) -> Result<OwnedFrame, ClientError> {
        loop {
            let decoded = frame::decode(&self.buf, max_len).map_err(|e| ClientError::Protocol {
                addr: self.peer,
                phase,
                detail: e.to_string(),
            })?;
            if let Some((frame, used)) = decoded {
                let owned = OwnedFrame {
                    kind: frame.kind,
                    body: frame.body.to_vec(),
                };
                self.buf.drain(..used);
                return Ok(owned);
            }
            // decode() has checked the announced length against max_len, so
            // the buffer never grows past one frame plus one chunk.
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK, 0);
            let n = self.stream.read(&mut self.buf[start..]).await;
            self.buf.truncate(start + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        addr: self.peer,
                        phase,
                    });
                }
                Ok(_) => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        addr: self.peer,
                        phase,
                        source,
                    });
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Write `bytes` (one or more whole frames) within `timeout`.
    ///
    /// If the write fails, the peer may have sent an Error frame and closed
    /// before reading our bytes; that frame explains the failure better than
    /// "broken pipe", so it is looked for briefly and returned as the error.
    pub async fn write_all(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let peer = self.peer;
        let written = tokio::time::timeout(timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(ClientError::Timeout { addr: peer, phase }),
            Ok(Err(source)) => {
                let pending = self
                    .read_frame(phase, frame::MAX_FRAME_LEN, ERROR_FRAME_GRACE)
                    .await;
                if let Ok(f) = pending
                    && f.kind == FrameType::Error
                    && let Ok(code) = frame::decode_error_body(&f.body)
                {
                    return Err(refusal(peer, phase, None, code));
                }
                Err(ClientError::Io {
                    addr: peer,
                    phase,
                    source,
                })
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Framed<S> {
    /// Write `bytes` (one or more whole frames) within `timeout`, on a
    /// stream that is only written (the session's writer half).
    pub async fn send(
        &mut self,
        bytes: &[u8],
        phase: Phase,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let peer = self.peer;
        match tokio::time::timeout(timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ClientError::Io {
                addr: peer,
                phase,
                source,
            }),
            Err(_) => Err(ClientError::Timeout { addr: peer, phase }),
        }
    }

    /// Shut down the write side, ending the session politely.
    pub async fn shutdown(&mut self) {
        // The session is over either way; a failed FIN changes nothing.
        let _ = self.stream.shutdown().await;
    }
}

/// A refusal code received in `phase`: before the grant it comes from the
/// gateway, after it from the HSM side.
pub fn refusal(
    addr: SocketAddr,
    phase: Phase,
    hsm_id: Option<&str>,
    code: hsmgate_wire::Code,
) -> ClientError {
    match phase {
        Phase::Connect | Phase::OuterHandshake => ClientError::Refused {
            addr,
            code,
            retry_after_secs: 0,
        },
        Phase::InnerHandshake | Phase::Request => ClientError::HsmRefused {
            addr,
            hsm_id: hsm_id.map(str::to_owned),
            code,
        },
    }
}

/// Map a wire error seen in `phase` to a client error.
pub fn wire_error(
    addr: SocketAddr,
    phase: Phase,
    hsm_id: Option<&str>,
    e: hsmgate_wire::WireError,
) -> ClientError {
    use hsmgate_wire::WireError;
    match e {
        WireError::Refused(code) => refusal(addr, phase, hsm_id, code),
        WireError::UntrustedPeerKey(presented) => match phase {
            Phase::Connect | Phase::OuterHandshake => {
                ClientError::UntrustedGateway { addr, presented }
            }
            Phase::InnerHandshake | Phase::Request => ClientError::UntrustedHsm { addr, presented },
        },
        other => ClientError::Protocol {
            addr,
            phase,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_wire::Code;
    use hsmgate_wire::frame::MAX_OUTER_FRAME_LEN;
    use tokio::net::{TcpListener, TcpStream};

    const LONG: Duration = Duration::from_secs(5);

    /// A listener on loopback whose one connection is driven by `serve`.
    async fn peer_sending<F, Fut>(serve: F) -> Framed<TcpStream>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            serve(s).await;
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Framed::new(stream, addr)
    }

    #[tokio::test]
    async fn reassembles_a_frame_sent_byte_by_byte() {
        let bytes = frame::encode(FrameType::Challenge, b"hello gateway").unwrap();
        let sent = bytes.clone();
        let mut framed = peer_sending(move |mut s| async move {
            for b in sent {
                s.write_all(&[b]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Keep the connection open until the reader is done.
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let f = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap();
        assert_eq!(f.kind, FrameType::Challenge);
        assert_eq!(f.body, b"hello gateway");
    }

    #[tokio::test]
    async fn keeps_the_second_frame_of_one_segment_for_the_next_read() {
        let mut both = frame::encode(FrameType::Decision, b"one").unwrap();
        both.extend(frame::encode(FrameType::InnerChallenge, b"two").unwrap());
        let mut framed = peer_sending(move |mut s| async move {
            s.write_all(&both).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let a = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap();
        let b = framed
            .read_frame(Phase::InnerHandshake, frame::MAX_FRAME_LEN, LONG)
            .await
            .unwrap();
        assert_eq!(
            (a.kind, a.body.as_slice()),
            (FrameType::Decision, &b"one"[..])
        );
        assert_eq!(
            (b.kind, b.body.as_slice()),
            (FrameType::InnerChallenge, &b"two"[..])
        );
    }

    #[tokio::test]
    async fn refuses_an_oversized_length_without_waiting_for_the_body() {
        let mut framed = peer_sending(|mut s| async move {
            // Announce 60000 bytes in the outer phase, then send nothing more.
            s.write_all(&[0xea, 0x60, FrameType::Challenge as u8])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
        let started = std::time::Instant::now();
        let err = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        match &err {
            ClientError::Protocol { phase, detail, .. } => {
                assert_eq!(*phase, Phase::OuterHandshake);
                assert!(detail.contains("60000"), "{detail}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.exit_code(), 4);
    }

    #[tokio::test]
    async fn an_error_frame_becomes_a_refusal_with_its_code() {
        let mut framed = peer_sending(|mut s| async move {
            s.write_all(&frame::error_frame(Code::AddressNotAllowed))
                .await
                .unwrap();
        })
        .await;
        let peer = framed.peer();
        let f = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap();
        let err = f
            .as_frame()
            .expect(FrameType::Challenge, "challenge")
            .map_err(|e| wire_error(peer, Phase::OuterHandshake, None, e))
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::AddressNotAllowed));
        assert_eq!(err.exit_code(), 3);
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            format!("denied by gateway {peer}: address_not_allowed")
        );
    }

    #[tokio::test]
    async fn a_close_in_the_middle_of_a_frame_is_reported_as_closed() {
        let mut framed = peer_sending(|mut s| async move {
            s.write_all(&[0, 10, FrameType::Decision as u8, 1, 2])
                .await
                .unwrap();
        })
        .await;
        let err = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Closed {
                    phase: Phase::OuterHandshake,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let mut framed = peer_sending(|s| async move {
            let _keep_open = s;
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
        let err = framed
            .read_frame(
                Phase::Request,
                frame::MAX_FRAME_LEN,
                Duration::from_millis(100),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    phase: Phase::Request,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refuses_unknown_frame_types_and_empty_frames() {
        let mut framed = peer_sending(|mut s| async move {
            s.write_all(&[0, 0]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let err = framed
            .read_frame(Phase::OuterHandshake, MAX_OUTER_FRAME_LEN, LONG)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    }
}
