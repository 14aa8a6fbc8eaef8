//! The control channel between a gateway and an HSM node (PROTOCOL.md §8.2).
//!
//! A gateway keeps one long-lived control connection to each HSM node it
//! forwards to. It is a Noise XX handshake in which the gateway proves its
//! static key (the one clients pin) and the node checks it against the
//! gateways it trusts; over the established channel the node hands the
//! gateway a fresh **grant key**, with which the gateway seals the Grant that
//! opens every session it forwards to that node (`grant.rs`). One handshake
//! per gateway–node pair, not per session: a session costs an AES-GCM seal.
//!
//! ```text
//! gateway                                        HSM node
//!   ControlHello     "HSMC" min max | -> e           ─▶
//!                  ◀─ ControlChallenge <- e, ee, s, es  {version, hsm id}
//!   ControlFinish    -> s, se  {version, gateway id}  ─▶   node checks s
//!                  ◀─ ControlData  GrantKey, Status
//!   ControlData  Ping ⇄ Pong ... for as long as the connection lives
//! ```

use crate::error::WireError;
use crate::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use crate::keys::{PublicKey, StaticKeypair};
use crate::noise::{self, Offer};
use crate::reader::Reader;

pub const MAGIC: &[u8; 4] = b"HSMC";
pub const PROLOGUE_LABEL: &[u8] = b"hsmgate-control";

/// Length of a grant key (AES-256).
pub const GRANT_KEY_LEN: usize = 32;

const LAYER: noise::Layer = noise::Layer {
    label: PROLOGUE_LABEL,
    magic: MAGIC,
    first: FrameType::ControlHello,
    second: FrameType::ControlChallenge,
    third: FrameType::ControlFinish,
    first_what: "control hello",
    second_what: "control challenge payload",
    third_what: "control finish payload",
    versions: Offer::OURS,
};

/// Largest plaintext of a ControlData frame: what fits the frame limit.
const MAX_CONTROL_PLAINTEXT: usize = MAX_GATEWAY_NODE_FRAME_LEN - 1 - crate::TAG_LEN;

/// One message of the established control channel (§8.2).
#[derive(Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Node → gateway: the key to seal grants with from now on.
    GrantKey {
        key_id: u64,
        key: zeroize::Zeroizing<[u8; GRANT_KEY_LEN]>,
    },
    /// Node → gateway: whether the node takes new sessions.
    Status {
        accepting: bool,
        sessions: u32,
        max_sessions: u32,
    },
    /// Gateway → node: are you still there?
    Ping(u64),
    /// Node → gateway: the answer to the Ping with this value.
    Pong(u64),
}

impl std::fmt::Debug for ControlMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlMessage::GrantKey { key_id, .. } => f
                .debug_struct("GrantKey")
                .field("key_id", key_id)
                .field("key", &"<redacted>")
                .finish(),
            ControlMessage::Status {
                accepting,
                sessions,
                max_sessions,
            } => f
                .debug_struct("Status")
                .field("accepting", accepting)
                .field("sessions", sessions)
                .field("max_sessions", max_sessions)
                .finish(),
            ControlMessage::Ping(n) => f.debug_tuple("Ping").field(n).finish(),
            ControlMessage::Pong(n) => f.debug_tuple("Pong").field(n).finish(),
        }
    }
}

const TAG_GRANT_KEY: u8 = 0x01;
const TAG_STATUS: u8 = 0x02;
const TAG_PING: u8 = 0x03;
const TAG_PONG: u8 = 0x04;

impl ControlMessage {
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(1 + 8 + GRANT_KEY_LEN));
        match self {
            ControlMessage::GrantKey { key_id, key } => {
                out.push(TAG_GRANT_KEY);
                out.extend_from_slice(&key_id.to_be_bytes());
                out.extend_from_slice(&key[..]);
            }
            ControlMessage::Status {
                accepting,
                sessions,
                max_sessions,
            } => {
                out.push(TAG_STATUS);
                out.push(u8::from(*accepting));
                out.extend_from_slice(&sessions.to_be_bytes());
                out.extend_from_slice(&max_sessions.to_be_bytes());
            }
            ControlMessage::Ping(n) => {
                out.push(TAG_PING);
                out.extend_from_slice(&n.to_be_bytes());
            }
            ControlMessage::Pong(n) => {
                out.push(TAG_PONG);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ControlMessage, WireError> {
        const WHAT: &str = "control message";
        let mut r = Reader::new(bytes, WHAT);
        let message = match r.u8()? {
            TAG_GRANT_KEY => {
                let key_id = r.u64()?;
                let mut key = zeroize::Zeroizing::new([0u8; GRANT_KEY_LEN]);
                key.copy_from_slice(r.take(GRANT_KEY_LEN)?);
                ControlMessage::GrantKey { key_id, key }
            }
            TAG_STATUS => {
                let accepting = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::malformed(WHAT, "accepting is not 0 or 1")),
                };
                ControlMessage::Status {
                    accepting,
                    sessions: r.u32()?,
                    max_sessions: r.u32()?,
                }
            }
            TAG_PING => ControlMessage::Ping(r.u64()?),
            TAG_PONG => ControlMessage::Pong(r.u64()?),
            _ => return Err(WireError::malformed(WHAT, "unknown message tag")),
        };
        r.finish()?;
        Ok(message)
    }
}

/// What the gateway learns about the node from the ControlChallenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub hsm_id: String,
    pub static_key: PublicKey,
    pub version: u8,
}

/// What the node learns about the gateway from the ControlFinish. The caller
/// must check `static_key` against its trusted gateway keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPeer {
    pub static_key: PublicKey,
    pub gateway_id: String,
    pub version: u8,
}

/// An established control channel: seals and opens ControlData frames.
pub struct ControlChannel {
    ts: snow::TransportState,
}

impl std::fmt::Debug for ControlChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlChannel(<keys redacted>)")
    }
}

impl ControlChannel {
    /// Encrypt `message` into a whole ControlData frame.
    pub fn seal(&mut self, message: &ControlMessage) -> Result<Vec<u8>, WireError> {
        let plain = message.encode();
        debug_assert!(plain.len() <= MAX_CONTROL_PLAINTEXT);
        let mut body = vec![0u8; plain.len() + crate::TAG_LEN];
        let n = self.ts.write_message(&plain, &mut body)?;
        frame::encode(FrameType::ControlData, &body[..n])
    }

    /// Decrypt and decode the body of a ControlData frame.
    pub fn open(&mut self, body: &[u8]) -> Result<ControlMessage, WireError> {
        if body.len() < crate::TAG_LEN {
            return Err(WireError::malformed("control data", "shorter than a tag"));
        }
        let mut plain = zeroize::Zeroizing::new(vec![0u8; body.len()]);
        let n = self.ts.read_message(body, &mut plain)?;
        ControlMessage::decode(&plain[..n])
    }
}

// -------------------------------------------------------------- gateway side

/// The gateway's half of the control handshake.
pub struct GatewayControl {
    hs: snow::HandshakeState,
    offer: Offer,
}

impl GatewayControl {
    /// Start; returns the ControlHello frame.
    pub fn start(gateway_key: &StaticKeypair) -> Result<(Self, Vec<u8>), WireError> {
        let (hs, offer, hello) = noise::initiate(&LAYER, gateway_key)?;
        Ok((GatewayControl { hs, offer }, hello))
    }

    /// Read the ControlChallenge; `trusted` decides whether the node's key is
    /// acceptable (a gateway that pins no node keys accepts any). Returns the
    /// ControlFinish frame and the established channel.
    pub fn finish(
        mut self,
        body: &[u8],
        gateway_id: &str,
        trusted: impl Fn(&PublicKey) -> bool,
    ) -> Result<(Vec<u8>, NodeInfo, ControlChannel), WireError> {
        crate::text::validate_name(gateway_id)
            .map_err(|why| WireError::malformed("gateway_id", why))?;
        let (static_key, version, hsm_id) =
            noise::read_second(&LAYER, &mut self.hs, self.offer, body, trusted)?;
        let frame = noise::write_third(&LAYER, &mut self.hs, version, gateway_id)?;
        let ts = self.hs.into_transport_mode()?;
        Ok((
            frame,
            NodeInfo {
                hsm_id,
                static_key,
                version,
            },
            ControlChannel { ts },
        ))
    }
}

// ----------------------------------------------------------------- node side

/// The HSM node's half of the control handshake.
pub struct NodeControl {
    hs: snow::HandshakeState,
    version: u8,
}

impl NodeControl {
    /// Read a ControlHello body; returns the handshake and the
    /// ControlChallenge frame.
    pub fn respond(
        node_key: &StaticKeypair,
        hsm_id: &str,
        body: &[u8],
    ) -> Result<(Self, Vec<u8>), WireError> {
        let (hs, version, frame) = noise::respond(&LAYER, node_key, "hsm_id", hsm_id, body)?;
        Ok((NodeControl { hs, version }, frame))
    }

    /// Read the ControlFinish: the gateway's proven static key and its id.
    pub fn finish(mut self, body: &[u8]) -> Result<(GatewayPeer, ControlChannel), WireError> {
        let (static_key, gateway_id) = noise::read_third(&LAYER, &mut self.hs, self.version, body)?;
        let ts = self.hs.into_transport_mode()?;
        Ok((
            GatewayPeer {
                static_key,
                gateway_id,
                version: self.version,
            },
            ControlChannel { ts },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;
    use proptest::prelude::*;

    fn body(bytes: &[u8]) -> Vec<u8> {
        let (frame, used) = decode(bytes, MAX_GATEWAY_NODE_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame.body.to_vec()
    }

    fn established() -> (ControlChannel, ControlChannel, GatewayPeer, NodeInfo) {
        let gw = StaticKeypair::generate().unwrap();
        let node = StaticKeypair::generate().unwrap();
        let (g, hello) = GatewayControl::start(&gw).unwrap();
        let (n, challenge) = NodeControl::respond(&node, "hsm-1", &body(&hello)).unwrap();
        let (finish, info, gch) = g.finish(&body(&challenge), "gw-1", |_| true).unwrap();
        let (peer, nch) = n.finish(&body(&finish)).unwrap();
        assert_eq!(peer.static_key, gw.public());
        assert_eq!(info.static_key, node.public());
        (gch, nch, peer, info)
    }

    #[test]
    fn handshake_authenticates_the_gateway_to_the_node() {
        let (_, _, peer, info) = established();
        assert_eq!(peer.gateway_id, "gw-1");
        assert_eq!(info.hsm_id, "hsm-1");
        assert_eq!((peer.version, info.version), (1, 1));
    }

    #[test]
    fn messages_travel_both_ways_and_tampering_is_refused() {
        let (mut g, mut n, _, _) = established();
        let key = ControlMessage::GrantKey {
            key_id: 7,
            key: zeroize::Zeroizing::new([9; GRANT_KEY_LEN]),
        };
        let sealed = n.seal(&key).unwrap();
        assert!(
            !sealed.windows(8).any(|w| w == [9; 8]),
            "the key is encrypted"
        );
        assert_eq!(g.open(&body(&sealed)).unwrap(), key);
        let ping = g.seal(&ControlMessage::Ping(42)).unwrap();
        assert_eq!(n.open(&body(&ping)).unwrap(), ControlMessage::Ping(42));
        let mut bad = g.seal(&ControlMessage::Ping(43)).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(n.open(&body(&bad)).is_err());
    }

    #[test]
    fn a_gateway_can_pin_the_node() {
        let gw = StaticKeypair::generate().unwrap();
        let node = StaticKeypair::generate().unwrap();
        let (g, hello) = GatewayControl::start(&gw).unwrap();
        let (_, challenge) = NodeControl::respond(&node, "hsm-1", &body(&hello)).unwrap();
        assert_eq!(
            g.finish(&body(&challenge), "gw-1", |_| false).unwrap_err(),
            WireError::UntrustedPeerKey(node.public())
        );
    }

    #[test]
    fn every_message_round_trips() {
        for m in [
            ControlMessage::GrantKey {
                key_id: u64::MAX,
                key: zeroize::Zeroizing::new([1; GRANT_KEY_LEN]),
            },
            ControlMessage::Status {
                accepting: false,
                sessions: 1024,
                max_sessions: 1024,
            },
            ControlMessage::Ping(0),
            ControlMessage::Pong(u64::MAX),
        ] {
            assert_eq!(ControlMessage::decode(&m.encode()).unwrap(), m);
        }
        assert!(ControlMessage::decode(&[TAG_STATUS, 2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ControlMessage::decode(&[TAG_PING, 0]).is_err());
        assert!(ControlMessage::decode(&[0x09]).is_err());
        assert!(ControlMessage::decode(&[]).is_err());
    }

    #[test]
    fn debug_never_shows_a_grant_key() {
        let m = ControlMessage::GrantKey {
            key_id: 1,
            key: zeroize::Zeroizing::new([0xab; GRANT_KEY_LEN]),
        };
        assert!(!format!("{m:?}").contains("171"));
        assert!(!format!("{m:?}").contains("ab"));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = ControlMessage::decode(&bytes) {
                prop_assert_eq!(&m.encode()[..], &bytes[..]);
            }
        }
    }
}
