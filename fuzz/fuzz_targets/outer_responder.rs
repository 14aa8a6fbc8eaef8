//! The gateway's outer handshake responder (`hsmgate::handshake::Responder`,
//! PROTOCOL.md §3, §4) fed arbitrary sequences of messages: a real client's
//! Hello and Credentials, frames of any type and body, corrupted copies of
//! the real messages and raw bytes, delivered in reads of arbitrary sizes.
//!
//! Properties:
//! - it completes (the state in which the gateway asks the directory and
//!   may grant) only for the real client: the key it proved is the client's
//!   and the request is the one the client sent; bytes that do not carry the
//!   real client's Credentials never complete it and end in a refusal;
//! - before completing it writes nothing but one Challenge, so nothing the
//!   client sent reaches anyone before a decision;
//! - the bytes it holds for the HSM are exactly those that followed the
//!   Credentials, unparsed, and its buffer stays within one frame and a read;
//! - every refusal caused by the client's bytes carries a code, never
//!   `internal`; a Decision can be sealed only for a completed handshake and
//!   the real client reads back exactly the decision sent.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hsmgate::handshake::{HandshakeError, READ_CHUNK, Responder, Step};
use hsmgate_fuzz::fixed_keypair;
use hsmgate_wire::frame::{self, FrameType, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake, Decision};
use hsmgate_wire::{Code, StaticKeypair, WireError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Piece {
    /// The real client's Hello.
    Hello,
    /// The real client's Credentials, answering the Challenge the gateway
    /// wrote (nothing if it wrote none yet).
    Credentials,
    /// A frame with any type byte and body.
    Frame { kind: u8, body: Vec<u8> },
    /// The real Hello or Credentials with one byte changed.
    Corrupt { credentials: bool, at: u16, xor: u8 },
    /// The real Hello or Credentials cut short.
    Truncated { credentials: bool, keep: u16 },
    /// Anything: pipelined inner-layer bytes, garbage, an Error frame.
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    pieces: Vec<Piece>,
    /// Sizes of the reads the bytes arrive in.
    reads: Vec<u16>,
    /// The client's identity: the registered one or a stranger.
    stranger: bool,
    refusal: u8,
}

struct Keys {
    gateway: StaticKeypair,
    client: StaticKeypair,
    stranger: StaticKeypair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        gateway: fixed_keypair(10),
        client: fixed_keypair(11),
        stranger: fixed_keypair(12),
    })
}

fn request() -> AccessRequest {
    AccessRequest {
        client_id: "app-1".into(),
        tenant: "acme".into(),
        partition: "p1".into(),
    }
}

fn body(frame_bytes: &[u8]) -> &[u8] {
    let (f, _) = frame::decode(frame_bytes, MAX_OUTER_FRAME_LEN)
        .expect("our own frame")
        .expect("whole");
    f.body
}

/// What the responder did with the bytes so far.
enum End {
    Running,
    Completed(Box<hsmgate::handshake::Completed>),
    Failed(HandshakeError),
}

fuzz_target!(|input: Input| {
    // FUZZ_DEBUG=1: show the sequence an input stands for.
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{input:?}");
    }
    let keys = keys();
    let identity = if input.stranger {
        &keys.stranger
    } else {
        &keys.client
    };
    let (client, hello) =
        ClientHandshake::start(identity, keys.gateway.public(), request()).unwrap();
    let mut client = Some(client);
    let mut credentials: Option<Vec<u8>> = None;

    let mut responder = Responder::new(&keys.gateway, "gw-1");
    // Every byte offered, and how many the responder has been given.
    let mut sent: Vec<u8> = Vec::new();
    let mut given = 0;
    let mut challenges = 0;
    let mut end = End::Running;
    let mut reads = input.reads.iter().cycle();

    for piece in &input.pieces {
        // Choose the bytes of this piece; the real client answers a Challenge
        // only once it has seen one.
        let bytes: Vec<u8> = match piece {
            Piece::Hello => hello.clone(),
            Piece::Credentials => match &credentials {
                Some(c) => c.clone(),
                None => continue,
            },
            Piece::Frame { kind, body } => {
                let mut f = Vec::with_capacity(body.len() + 3);
                let len = (body.len() + 1).min(usize::from(u16::MAX)) as u16;
                f.extend_from_slice(&len.to_be_bytes());
                f.push(*kind);
                f.extend_from_slice(&body[..usize::from(len) - 1]);
                f
            }
            Piece::Corrupt {
                credentials: creds,
                at,
                xor,
            } => {
                let mut m = if *creds {
                    credentials.clone().unwrap_or_default()
                } else {
                    hello.clone()
                };
                if m.is_empty() || *xor == 0 {
                    continue;
                }
                let i = usize::from(*at) % m.len();
                m[i] ^= xor;
                m
            }
            Piece::Truncated {
                credentials: creds,
                keep,
            } => {
                let m = if *creds {
                    credentials.clone().unwrap_or_default()
                } else {
                    hello.clone()
                };
                let keep = usize::from(*keep) % (m.len() + 1);
                if keep == m.len() {
                    continue;
                }
                m[..keep].to_vec()
            }
            Piece::Raw(raw) => raw.clone(),
        };
        sent.extend_from_slice(&bytes);

        // Deliver what is not given yet, in reads, stepping after each as
        // the driver does.
        while matches!(end, End::Running) && given < sent.len() {
            let size = reads
                .next()
                .map_or(READ_CHUNK, |&r| usize::from(r).clamp(1, READ_CHUNK));
            let read = &sent[given..sent.len().min(given + size)];
            responder.receive(read);
            given += read.len();
            loop {
                assert!(
                    responder.buffered() < 2 + MAX_OUTER_FRAME_LEN + READ_CHUNK,
                    "buffer of {} bytes",
                    responder.buffered()
                );
                match responder.step() {
                    Ok(Step::Read) => break,
                    Ok(Step::Write(out)) => {
                        // The only frame written before a decision: one Challenge.
                        challenges += 1;
                        assert_eq!(challenges, 1, "a second frame written");
                        let (f, used) = frame::decode(&out, MAX_OUTER_FRAME_LEN).unwrap().unwrap();
                        assert_eq!(used, out.len());
                        assert_eq!(f.kind, FrameType::Challenge);
                        if let Some(c) = client.as_mut()
                            && let Ok((creds, info)) = c.read_challenge(f.body)
                        {
                            assert_eq!(info.gateway_id, "gw-1");
                            credentials = Some(creds);
                        }
                    }
                    Ok(Step::Completed(c)) => {
                        end = End::Completed(c);
                        break;
                    }
                    Err(e) => {
                        end = End::Failed(e);
                        break;
                    }
                }
            }
        }
        if !matches!(end, End::Running) {
            break;
        }
    }

    hsmgate_fuzz::outcome(match &end {
        End::Completed(_) => "completed",
        End::Failed(_) if challenges == 1 => "refused after the challenge",
        End::Failed(_) => "refused before the challenge",
        End::Running if challenges == 1 => "waiting for credentials",
        End::Running => "waiting for a hello",
    });
    match end {
        End::Completed(completed) => {
            // Only the real client, saying what it said, completes.
            let proven = completed.client.static_key;
            assert_eq!(
                proven,
                identity.public(),
                "completed for a key nobody proved"
            );
            assert_eq!(completed.client.request, request());
            assert_eq!(completed.client.version, hsmgate_wire::PROTOCOL_VERSION);
            // The last frame taken is the real client's Credentials, intact
            // (from a Credentials piece, or put together from pieces that
            // happen to carry the same bytes), and the held bytes are
            // exactly what followed it, as given.
            let real = credentials
                .as_ref()
                .expect("completed before any Challenge");
            let credentials_end = given - completed.held.len();
            assert!(credentials_end >= real.len());
            assert_eq!(
                &sent[credentials_end - real.len()..credentials_end],
                &real[..]
            );
            assert_eq!(completed.held, sent[credentials_end..given]);
            assert!(completed.held.len() < READ_CHUNK);
            // The decision the gateway seals is the one the client reads.
            let decision = match Code::from_byte(input.refusal % 10) {
                Some(Code::Granted) | None => Decision::GRANTED,
                Some(code) => Decision::refuse(code),
            };
            let frame_bytes = completed.handshake.decision_frame(decision).unwrap();
            let client = client.take().unwrap();
            assert_eq!(client.read_decision(body(&frame_bytes)).unwrap(), decision);
        }
        End::Failed(e) => {
            // A refusal: say why with a code, unless the client itself
            // refused (its Error frame) or went away.
            if let HandshakeError::Wire(WireError::Refused(_)) = e {
                assert_eq!(e.code(), None);
            } else {
                let code = e.code().expect("a refusal carries a code");
                assert_ne!(
                    code,
                    Code::Internal,
                    "client bytes caused an internal error: {e}"
                );
                assert_ne!(code, Code::Granted);
            }
            // A failed responder stays failed.
            assert!(responder.step().is_err());
        }
        End::Running => {
            // Out of bytes mid-handshake: the connection would end (closed or
            // timed out); nothing was completed.
            assert!(challenges <= 1);
        }
    }
});
