//! The HSM node's side of the inner channel (PROTOCOL.md §6, §7), driven as
//! the node's session does (hsm-node/src/session.rs): InnerHello and
//! InnerFinish bounded to the handshake limit, then InnerData frames opened
//! and decoded as requests. Fed arbitrary sequences: the real client's
//! messages, frames of any type, corrupted or cut copies, raw bytes, and
//! requests of any bytes sealed by the real client.
//!
//! Properties:
//! - the handshake completes only for the real client: the key the node
//!   learns is the client's partition key, the partition the one it named,
//!   the version one both speak; a stranger's key is never in the
//!   partition's authorized keys;
//! - no frame the node takes claims more than its phase allows;
//! - once established, a frame opens only if it is exactly the next one the
//!   client sealed, and opens to what the client sealed; a request that
//!   decodes re-encodes to the same bytes;
//! - handshake refusals carry a code, never `internal`.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hsmgate_fuzz::fixed_keypair;
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use hsmgate_wire::inner::{Channel, ClientInner, HsmInner, MAX_CHANNEL_PLAINTEXT};
use hsmgate_wire::ops::Request;
use hsmgate_wire::{Code, StaticKeypair, WireError};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Piece {
    Hello,
    Finish,
    /// A request of these bytes, sealed by the client once it is established.
    Sealed(Vec<u8>),
    Frame {
        kind: u8,
        body: Vec<u8>,
    },
    /// The real Hello, Finish or last sealed frame with one byte changed.
    Corrupt {
        which: u8,
        at: u16,
        xor: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    pieces: Vec<Piece>,
    client_max_version: u8,
    stranger: bool,
}

struct Keys {
    node: StaticKeypair,
    partition: StaticKeypair,
    stranger: StaticKeypair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        node: fixed_keypair(20),
        partition: fixed_keypair(21),
        stranger: fixed_keypair(22),
    })
}

enum Node {
    Hello,
    Finish(Box<HsmInner>),
    Established { channel: Channel, version: u8 },
    Ended,
}

/// The client side, as far as it got.
enum Client {
    Started(Box<ClientInner>),
    Finished { channel: Channel },
    Failed,
}

fuzz_target!(|input: Input| {
    let keys = keys();
    let identity = if input.stranger {
        &keys.stranger
    } else {
        &keys.partition
    };
    let (client, hello) =
        ClientInner::start_up_to(identity, "p1", input.client_max_version).unwrap();
    let mut client = Client::Started(Box::new(client));
    let mut finish: Option<Vec<u8>> = None;
    let mut last_sealed: Option<Vec<u8>> = None;
    // Plaintexts the client sealed and the node has not opened yet, in order.
    let mut sealed_queue: std::collections::VecDeque<(Vec<u8>, Vec<u8>)> = Default::default();
    let mut finish_sent = false;

    let mut node = Node::Hello;
    let mut opened = 0usize;
    let mut buf: Vec<u8> = Vec::new();

    for piece in &input.pieces {
        let bytes = match piece {
            Piece::Hello => hello.clone(),
            Piece::Finish => match &finish {
                Some(f) => {
                    finish_sent = true;
                    f.clone()
                }
                None => continue,
            },
            Piece::Sealed(plain) => match &mut client {
                Client::Finished { channel } => {
                    let plain = &plain[..plain.len().min(MAX_CHANNEL_PLAINTEXT)];
                    let f = channel.seal(plain).unwrap();
                    let (decoded, used) = frame::decode(&f, MAX_FRAME_LEN).unwrap().unwrap();
                    assert_eq!(used, f.len());
                    assert_eq!(decoded.kind, FrameType::InnerData);
                    sealed_queue.push_back((f.clone(), plain.to_vec()));
                    last_sealed = Some(f.clone());
                    f
                }
                _ => continue,
            },
            Piece::Frame { kind, body } => {
                let body = &body[..body.len().min(usize::from(u16::MAX) - 1)];
                let mut f = Vec::with_capacity(body.len() + 3);
                f.extend_from_slice(&((body.len() + 1) as u16).to_be_bytes());
                f.push(*kind);
                f.extend_from_slice(body);
                f
            }
            Piece::Corrupt { which, at, xor } => {
                let mut m = match which % 3 {
                    0 => hello.clone(),
                    1 => finish.clone().unwrap_or_default(),
                    _ => last_sealed.clone().unwrap_or_default(),
                };
                if m.is_empty() || *xor == 0 {
                    continue;
                }
                let i = usize::from(*at) % m.len();
                m[i] ^= xor;
                m
            }
            Piece::Raw(raw) => raw.clone(),
        };
        buf.extend_from_slice(&bytes);

        // The node takes every whole frame it can.
        loop {
            let max = match node {
                Node::Hello | Node::Finish(_) => MAX_HANDSHAKE_FRAME_LEN,
                Node::Established { .. } => MAX_FRAME_LEN,
                Node::Ended => break,
            };
            let (kind, body, used) = match frame::decode(&buf, max) {
                Ok(Some((f, used))) => {
                    assert!(
                        used - 2 <= max,
                        "a frame of {} bytes in a phase of {max}",
                        used - 2
                    );
                    (f.kind, f.body.to_vec(), used)
                }
                Ok(None) => break,
                Err(e) => {
                    handshake_refusal(&node, &e);
                    node = Node::Ended;
                    break;
                }
            };
            let taken: Vec<u8> = buf.drain(..used).collect();
            node = match std::mem::replace(&mut node, Node::Ended) {
                Node::Hello => {
                    let outcome = frame::Frame { kind, body: &body }
                        .expect(FrameType::InnerHello, "inner hello")
                        .and_then(|b| HsmInner::respond(&keys.node, "hsm-1", b));
                    match outcome {
                        Ok((hs, challenge)) => {
                            let (f, _) = frame::decode(&challenge, MAX_HANDSHAKE_FRAME_LEN)
                                .unwrap()
                                .unwrap();
                            assert_eq!(f.kind, FrameType::InnerChallenge);
                            if let Client::Started(c) =
                                std::mem::replace(&mut client, Client::Failed)
                            {
                                let node_key = keys.node.public();
                                if let Ok((fin, info, channel)) =
                                    c.finish(f.body, |k| *k == node_key)
                                {
                                    assert_eq!(info.hsm_id, "hsm-1");
                                    finish = Some(fin);
                                    client = Client::Finished { channel };
                                }
                            }
                            Node::Finish(Box::new(hs))
                        }
                        Err(e) => {
                            fair_refusal(&e);
                            Node::Ended
                        }
                    }
                }
                Node::Finish(hs) => {
                    let outcome = frame::Frame { kind, body: &body }
                        .expect(FrameType::InnerFinish, "inner finish")
                        .and_then(|b| hs.finish(b));
                    match outcome {
                        Ok((peer, channel)) => {
                            assert!(finish_sent, "established without the client's InnerFinish");
                            assert_eq!(Some(&taken), finish.as_ref());
                            assert_eq!(peer.static_key, identity.public());
                            assert_eq!(peer.partition, "p1");
                            let ours = hsmgate_wire::inner::MAX_INNER_VERSION;
                            let theirs = input.client_max_version.clamp(1, ours);
                            assert_eq!(peer.version, theirs);
                            // The node's authorization: only the partition's key.
                            let authorized = peer.static_key == keys.partition.public();
                            assert_eq!(authorized, !input.stranger);
                            Node::Established {
                                channel,
                                version: peer.version,
                            }
                        }
                        Err(e) => {
                            fair_refusal(&e);
                            Node::Ended
                        }
                    }
                }
                Node::Established {
                    mut channel,
                    version,
                } => {
                    if kind != FrameType::InnerData {
                        Node::Ended
                    } else {
                        match channel.open(&body) {
                            Ok(plain) => {
                                let (frame_bytes, expected) = sealed_queue
                                    .pop_front()
                                    .expect("a frame opened that the client never sealed");
                                assert_eq!(
                                    taken, frame_bytes,
                                    "opened a frame other than the next sealed one"
                                );
                                assert_eq!(plain, expected);
                                opened += 1;
                                if let Ok((id, request)) = Request::decode(&plain) {
                                    assert_eq!(request.encode(id).unwrap(), plain);
                                    assert!(Request::unknown_op_id(&plain).is_none());
                                    let _ = request.since() <= version;
                                }
                                Node::Established { channel, version }
                            }
                            // The channel's state is lost: the node ends the session.
                            Err(_) => Node::Ended,
                        }
                    }
                }
                Node::Ended => Node::Ended,
            };
        }
        if matches!(node, Node::Ended) {
            break;
        }
    }
    hsmgate_fuzz::outcome(match (&node, opened) {
        (Node::Hello, _) => "waiting for a hello",
        (Node::Finish(_), _) => "waiting for the finish",
        (Node::Established { .. }, 0) => "established",
        (Node::Established { .. }, _) => "established, requests opened",
        (Node::Ended, 0) => "ended",
        (Node::Ended, _) => "ended after requests opened",
    });
});

/// A framing error during the handshake is answered with a code.
fn handshake_refusal(node: &Node, e: &WireError) {
    if matches!(node, Node::Hello | Node::Finish(_)) {
        fair_refusal(e);
    }
}

/// What the node answers a handshake that failed with `e`: never
/// "internal" or "granted" for anything the peer sent. A peer's own Error
/// frame (`Refused`, with whatever code it chose) gets no answer at all
/// (hsm-node's session `End::PeerRefused`), so its code says nothing about
/// the node.
fn fair_refusal(e: &WireError) {
    if matches!(e, WireError::Refused(_)) {
        return;
    }
    assert_ne!(e.code(), Code::Internal, "{e}");
    assert_ne!(e.code(), Code::Granted);
}
