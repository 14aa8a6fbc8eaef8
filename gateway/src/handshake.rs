//! Driving the outer handshake on one accepted connection (PROTOCOL.md §3):
//! Hello → Challenge → Credentials, each frame bounded, and the bytes the
//! client pipelined behind its Credentials kept aside, unparsed, for the HSM.
//!
//! Pipelined bytes are bounded by construction (PROTOCOL.md §4): the gateway
//! reads at most [`READ_CHUNK`] bytes at a time and stops reading once it has
//! the Credentials, so it holds at most that much in memory; anything the
//! client sends beyond waits in the kernel's receive buffer, under TCP flow
//! control, and is forwarded after a grant or discarded with the connection.
//!
//! The Hello must be complete by the first-frame deadline (a connection that
//! stays silent is closed early); the caller bounds the whole exchange with
//! the session deadline.

use hsmgate_wire::frame::{self, FrameType, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::outer::{GatewayHandshake, VerifiedClient};
use hsmgate_wire::{Code, StaticKeypair, WireError};
use tokio::net::TcpStream;

use crate::forward::write_all;
use crate::handshake_slots::HandshakeSlot;

/// Read granularity while the handshake runs, and so the most pipelined
/// bytes held in memory before the decision.
pub const READ_CHUNK: usize = 4096;

/// A client that completed the handshake; the Decision is still to be sent.
pub struct Completed {
    pub handshake: GatewayHandshake,
    pub client: VerifiedClient,
    /// Bytes after the Credentials frame: opaque inner-layer ciphertext.
    pub held: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection closed by the client during the handshake")]
    Closed,
    #[error("no Hello before the first-frame deadline")]
    FirstFrameTimeout,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

impl HandshakeError {
    /// The code to send in an Error frame, if anything is worth sending.
    pub fn code(&self) -> Option<Code> {
        match self {
            HandshakeError::Closed | HandshakeError::Io(_) => None,
            HandshakeError::FirstFrameTimeout => Some(Code::Timeout),
            // The client refused us: answering its Error frame helps no one.
            HandshakeError::Wire(WireError::Refused(_)) => None,
            HandshakeError::Wire(e) => Some(e.code()),
        }
    }
}

/// Run the gateway side of the outer handshake on `stream`; the Hello must
/// be complete by `first_frame`, and then `slot` is marked as spoken.
pub async fn run(
    stream: &TcpStream,
    key: &StaticKeypair,
    gateway_id: &str,
    first_frame: tokio::time::Instant,
    slot: &HandshakeSlot,
) -> Result<Completed, HandshakeError> {
    let mut reader = FrameReader::default();
    let (mut handshake, challenge) = {
        let hello = tokio::time::timeout_at(first_frame, reader.next(stream))
            .await
            .map_err(|_| HandshakeError::FirstFrameTimeout)??;
        slot.spoke();
        let body = hello.expect_kind(FrameType::Hello, "Hello")?;
        GatewayHandshake::respond(key, gateway_id, body)?
    };
    write_all(stream, &challenge).await?;
    let client = {
        let credentials = reader.next(stream).await?;
        let body = credentials.expect_kind(FrameType::Credentials, "Credentials")?;
        handshake.read_credentials(body)?
    };
    let held = reader.into_rest();
    Ok(Completed {
        handshake,
        client,
        held,
    })
}

/// Reads outer frames from a stream into one growing buffer.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
}

/// One frame, owned (bodies are small during the handshake).
struct OwnedFrame {
    kind: FrameType,
    body: Vec<u8>,
}

impl OwnedFrame {
    fn expect_kind(&self, kind: FrameType, what: &'static str) -> Result<&[u8], WireError> {
        frame::Frame {
            kind: self.kind,
            body: &self.body,
        }
        .expect(kind, what)
    }
}

impl FrameReader {
    async fn next(&mut self, stream: &TcpStream) -> Result<OwnedFrame, HandshakeError> {
        loop {
            if let Some((frame, used)) = frame::decode(&self.buf[self.pos..], MAX_OUTER_FRAME_LEN)?
            {
                let owned = OwnedFrame {
                    kind: frame.kind,
                    body: frame.body.to_vec(),
                };
                self.pos += used;
                return Ok(owned);
            }
            self.fill(stream).await?;
        }
    }

    async fn fill(&mut self, stream: &TcpStream) -> Result<(), HandshakeError> {
        // Bounded: a frame is at most MAX_OUTER_FRAME_LEN + 2 bytes, so the
        // unread part never needs to grow past that plus one read.
        self.buf.drain(..self.pos);
        self.pos = 0;
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let n = loop {
            stream.readable().await?;
            match stream.try_read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e.into());
                }
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        Ok(())
    }

    /// The unread bytes, in a buffer no larger than they are: it lives as
    /// long as the session.
    fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf.shrink_to_fit();
        self.buf
    }
}
