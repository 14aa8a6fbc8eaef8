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
use hsmgate_wire::quic::Binding;
use hsmgate_wire::{Code, StaticKeypair, WireError};

use crate::accept::handshake_slots::HandshakeSlot;
use crate::session::client::ClientStream;

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
    /// Closed before sending a single byte: what a load balancer's TCP
    /// health check (or a port scan) does.
    #[error("connection closed before its first byte")]
    ClosedSilent,
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
            HandshakeError::Closed | HandshakeError::ClosedSilent | HandshakeError::Io(_) => None,
            HandshakeError::FirstFrameTimeout => Some(Code::Timeout),
            // The client refused us: answering its Error frame helps no one.
            HandshakeError::Wire(WireError::Refused(_)) => None,
            HandshakeError::Wire(e) => Some(e.code()),
        }
    }
}

/// Run the gateway side of the outer handshake on `stream`, bound to its
/// QUIC connection by `binding` when it is one (PROTOCOL.md §11.2); the
/// Hello must be complete by `first_frame`, and then `slot` is marked as
/// spoken.
pub async fn run(
    stream: &mut ClientStream,
    key: &StaticKeypair,
    gateway_id: &str,
    binding: Option<Binding>,
    first_frame: tokio::time::Instant,
    slot: &HandshakeSlot,
) -> Result<Completed, HandshakeError> {
    let mut responder = match binding {
        Some(binding) => Responder::bound(key, gateway_id, binding),
        None => Responder::new(key, gateway_id),
    };
    loop {
        let step = responder.step();
        if responder.first_frame_received() {
            slot.spoke();
        }
        match step? {
            Step::Read if responder.first_frame_received() => fill(stream, &mut responder).await?,
            Step::Read => tokio::time::timeout_at(first_frame, fill(stream, &mut responder))
                .await
                .map_err(|_| HandshakeError::FirstFrameTimeout)??,
            Step::Write(frame) => stream.write_all(&frame).await?,
            Step::Completed(completed) => return Ok(*completed),
        }
    }
}

/// One read of at most [`READ_CHUNK`] bytes into the responder.
async fn fill(
    stream: &mut ClientStream,
    responder: &mut Responder<'_>,
) -> Result<(), HandshakeError> {
    let n = match stream.read(responder.read_space()).await {
        Ok(n) => n,
        Err(e) => {
            // read_space grew the buffer: give the space back.
            responder.filled(0);
            return Err(e.into());
        }
    };
    responder.filled(n);
    if n == 0 {
        if !responder.first_frame_received() && responder.buffered() == 0 {
            return Err(HandshakeError::ClosedSilent);
        }
        return Err(HandshakeError::Closed);
    }
    Ok(())
}

/// The gateway side of the outer handshake without I/O: [`run`] gives it
/// the bytes it reads and writes the frames it returns; the fuzz target
/// `outer_responder` drives it with arbitrary byte sequences.
///
/// It takes whole frames (each at most [`MAX_OUTER_FRAME_LEN`]) off one
/// growing buffer: a Hello, answered by a Challenge, then Credentials. What
/// follows the Credentials frame is handed over unparsed in
/// [`Completed::held`]. Nothing but the Challenge is ever returned for
/// writing, and nothing is completed without a Credentials message that
/// proves a client key.
pub struct Responder<'a> {
    key: &'a StaticKeypair,
    gateway_id: &'a str,
    phase: Phase,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    /// A whole first frame arrived: the connection is no longer silent.
    first_frame: bool,
    /// The QUIC connection's channel binding, on its first stream.
    binding: Option<Binding>,
}

enum Phase {
    Hello,
    Credentials(Box<GatewayHandshake>),
    Done,
}

/// What the driver does next.
pub enum Step {
    /// Read (at most [`READ_CHUNK`] bytes) and hand them over, then step again.
    Read,
    /// Write this frame (the Challenge) to the client, then step again.
    Write(Vec<u8>),
    /// The client proved its key; the Decision is still to be sent.
    Completed(Box<Completed>),
}

impl<'a> Responder<'a> {
    pub fn new(key: &'a StaticKeypair, gateway_id: &'a str) -> Responder<'a> {
        Responder {
            key,
            gateway_id,
            phase: Phase::Hello,
            buf: Vec::new(),
            pos: 0,
            first_frame: false,
            binding: None,
        }
    }

    /// A responder on the first stream of a QUIC connection whose channel
    /// binding is `binding` (PROTOCOL.md §11.2).
    pub fn bound(key: &'a StaticKeypair, gateway_id: &'a str, binding: Binding) -> Responder<'a> {
        Responder {
            binding: Some(binding),
            ..Responder::new(key, gateway_id)
        }
    }

    /// Whether a whole first frame has arrived (whatever it was).
    pub fn first_frame_received(&self) -> bool {
        self.first_frame
    }

    /// Bytes received and not yet taken as a frame. Bounded: a frame is at
    /// most `2 + MAX_OUTER_FRAME_LEN` bytes and the driver reads only after
    /// [`Step::Read`], so this stays below that plus one [`READ_CHUNK`].
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Space for the next read, [`READ_CHUNK`] bytes; say with
    /// [`Responder::filled`] how many were read into it.
    pub fn read_space(&mut self) -> &mut [u8] {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        &mut self.buf[start..]
    }

    /// `n` bytes were read into the last [`Responder::read_space`].
    pub fn filled(&mut self, n: usize) {
        let end = self.buf.len() - READ_CHUNK + n.min(READ_CHUNK);
        self.buf.truncate(end);
    }

    /// Hand over bytes received (at most [`READ_CHUNK`] per call, as a read).
    pub fn receive(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(READ_CHUNK);
        self.read_space()[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
    }

    /// Advance as far as the bytes received allow.
    pub fn step(&mut self) -> Result<Step, HandshakeError> {
        let Some((kind, body, used)) = self.next_frame()? else {
            return Ok(Step::Read);
        };
        self.first_frame = true;
        let body = &self.buf[body];
        let frame = frame::Frame { kind, body };
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Hello => {
                let body = frame.expect(FrameType::Hello, "Hello")?;
                let (handshake, challenge) = match &self.binding {
                    None => GatewayHandshake::respond(self.key, self.gateway_id, body)?,
                    Some(binding) => {
                        GatewayHandshake::respond_bound(self.key, self.gateway_id, body, binding)?
                    }
                };
                self.pos += used;
                self.phase = Phase::Credentials(Box::new(handshake));
                Ok(Step::Write(challenge))
            }
            Phase::Credentials(mut handshake) => {
                let body = frame.expect(FrameType::Credentials, "Credentials")?;
                let client = handshake.read_credentials(body)?;
                self.pos += used;
                // The unread bytes, in a buffer no larger than they are:
                // it lives as long as the session.
                let mut held = std::mem::take(&mut self.buf);
                held.drain(..self.pos);
                held.shrink_to_fit();
                self.pos = 0;
                Ok(Step::Completed(Box::new(Completed {
                    handshake: *handshake,
                    client,
                    held,
                })))
            }
            Phase::Done => Err(WireError::State("outer handshake already over").into()),
        }
    }

    /// The next whole frame in the buffer: its type, where its body lies
    /// and how many bytes it takes.
    fn next_frame(&self) -> Result<Option<(FrameType, std::ops::Range<usize>, usize)>, WireError> {
        let unread = &self.buf[self.pos..];
        Ok(
            frame::decode(unread, MAX_OUTER_FRAME_LEN)?.map(|(frame, used)| {
                let start = self.pos + used - frame.body.len();
                (frame.kind, start..self.pos + used, used)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_wire::outer::{AccessRequest, ClientHandshake};

    fn request() -> AccessRequest {
        AccessRequest {
            client_id: "app-1".into(),
            tenant: "acme".into(),
            partition: "p1".into(),
        }
    }

    /// Feed `bytes` one read of `read` bytes at a time, stepping after each
    /// as `run` does, until the handshake completes or fails.
    fn feed(r: &mut Responder<'_>, bytes: &[u8], read: usize) -> Vec<Result<Step, HandshakeError>> {
        let mut steps = Vec::new();
        for chunk in bytes.chunks(read) {
            r.receive(chunk);
            loop {
                let step = r.step();
                let (more, over) = match &step {
                    Ok(Step::Write(_)) => (true, false),
                    Ok(Step::Read) => (false, false),
                    Ok(Step::Completed(_)) | Err(_) => (false, true),
                };
                steps.push(step);
                if over {
                    return steps;
                }
                if !more {
                    break;
                }
            }
        }
        steps
    }

    #[test]
    fn completes_the_client_that_proved_its_key_and_holds_what_it_pipelined() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut client, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let mut r = Responder::new(&gw, "gw-1");
        assert!(!r.first_frame_received());
        let steps = feed(&mut r, &hello, 1);
        assert!(r.first_frame_received());
        let Some(Ok(Step::Write(challenge))) =
            steps.iter().find(|s| matches!(s, Ok(Step::Write(_))))
        else {
            panic!("no Challenge written");
        };
        let (frame, _) = frame::decode(challenge, MAX_OUTER_FRAME_LEN)
            .unwrap()
            .unwrap();
        let (mut creds, _) = client.read_challenge(frame.body).unwrap();
        creds.extend_from_slice(b"inner hello bytes");
        let steps = feed(&mut r, &creds, 7);
        let Some(Ok(Step::Completed(done))) = steps.into_iter().last() else {
            panic!("not completed");
        };
        assert_eq!(done.client.static_key, cl.public());
        assert_eq!(done.client.request, request());
        // The last read held the frame's tail and the first pipelined bytes.
        assert!(b"inner hello bytes".starts_with(&done.held));
        assert!(!done.held.is_empty());
    }

    #[test]
    fn refuses_bytes_that_are_not_a_hello_with_a_code() {
        let gw = StaticKeypair::generate().unwrap();
        let mut r = Responder::new(&gw, "gw-1");
        let steps = feed(&mut r, b"GET / HTTP/1.1\r\n\r\n", 4096);
        let Some(Err(e)) = steps.into_iter().last() else {
            panic!("not refused");
        };
        assert_eq!(e.code(), Some(Code::ProtocolError));
        // A Credentials frame before any Hello is refused too.
        let mut r = Responder::new(&gw, "gw-1");
        let creds = frame::encode(FrameType::Credentials, &[0; 64]).unwrap();
        let Some(Err(e)) = feed(&mut r, &creds, 4096).into_iter().last() else {
            panic!("not refused");
        };
        assert_eq!(e.code(), Some(Code::ProtocolError));
    }
}
