//! The gateway–node control channel (PROTOCOL.md §8.2): the message decoder
//! (`ControlMessage::decode`), the node's handshake responder
//! (`NodeControl`) on arbitrary first and third messages, and the
//! established channel's `open` on arbitrary ControlData bodies.
//!
//! Properties: a message that decodes re-encodes to exactly its bytes and
//! survives a seal and open; the node never finishes a handshake from bytes
//! the fuzzer made up (they would need a gateway key) and refuses with a
//! code, never `internal`; an established channel opens only what the other
//! side sealed.
#![no_main]

use std::sync::OnceLock;

use hsmgate_fuzz::fixed_keypair;
use hsmgate_wire::control::{ControlChannel, ControlMessage, GatewayControl, NodeControl};
use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::{Code, StaticKeypair};
use libfuzzer_sys::fuzz_target;

struct Keys {
    gateway: StaticKeypair,
    node: StaticKeypair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        gateway: fixed_keypair(40),
        node: fixed_keypair(41),
    })
}

fn body(frame_bytes: &[u8]) -> Vec<u8> {
    let (f, used) = frame::decode(frame_bytes, MAX_GATEWAY_NODE_FRAME_LEN)
        .unwrap()
        .expect("a control frame fits the gateway–node limit");
    assert_eq!(used, frame_bytes.len());
    f.body.to_vec()
}

/// A real, established pair of channels: (gateway's, node's).
fn established() -> (ControlChannel, ControlChannel) {
    let keys = keys();
    let (g, hello) = GatewayControl::start(&keys.gateway).unwrap();
    let (n, challenge) = NodeControl::respond(&keys.node, "hsm-1", &body(&hello)).unwrap();
    let node_key = keys.node.public();
    let (finish, _, gch) = g
        .finish(&body(&challenge), "gw-1", |k| *k == node_key)
        .unwrap();
    let (peer, nch) = n.finish(&body(&finish)).unwrap();
    assert_eq!(peer.static_key, keys.gateway.public());
    (gch, nch)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let Ok(message) = ControlMessage::decode(bytes) else {
                return;
            };
            assert_eq!(&message.encode()[..], bytes);
            let (mut gch, mut nch) = established();
            let sealed = nch.seal(&message).unwrap();
            assert_eq!(gch.open(&body(&sealed)).unwrap(), message);
        }
        1 => {
            // A ControlHello body, then a ControlFinish body.
            let cut = usize::from(selector / 3).min(bytes.len());
            let cut = if cut == 0 { bytes.len().min(38) } else { cut };
            let (hello, finish) = bytes.split_at(cut);
            match NodeControl::respond(&keys().node, "hsm-1", hello) {
                Ok((n, challenge)) => {
                    let (f, _) = frame::decode(&challenge, MAX_GATEWAY_NODE_FRAME_LEN)
                        .unwrap()
                        .unwrap();
                    assert_eq!(f.kind, FrameType::ControlChallenge);
                    let err = n
                        .finish(finish)
                        .expect_err("finished without a gateway key");
                    assert_ne!(err.code(), Code::Internal, "{err}");
                }
                Err(e) => assert_ne!(e.code(), Code::Internal, "{e}"),
            }
        }
        _ => {
            let (_gch, mut nch) = established();
            assert!(nch.open(bytes).is_err(), "opened bytes nobody sealed");
        }
    }
});
