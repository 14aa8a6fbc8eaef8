//! The inner channel: end to end between client and HSM node (PROTOCOL.md §6).
//!
//! Same Noise pattern as the outer layer, with other keys: the client uses its
//! partition key (known only to the HSM nodes that serve the partition), the
//! HSM node its own static key, which the client checks against its list of
//! trusted HSM keys. The gateway forwards these frames without reading them.
//!
//! ```text
//! client                                       HSM node
//!   InnerHello     "HSMI" min max | -> e              ─▶
//!                ◀─  InnerChallenge <- e, ee, s, es  {version, hsm id}
//!   InnerFinish    -> s, se  {version, partition}     ─▶
//!   InnerData ⇄ InnerData     AES-256-GCM requests and responses (§7)
//! ```

use crate::error::WireError;
use crate::frame::{self, FrameType};
use crate::keys::{PublicKey, StaticKeypair};
use crate::noise::{self, Offer};
use crate::text::validate_name;

pub const MAGIC: &[u8; 4] = b"HSMI";
pub const PROLOGUE_LABEL: &[u8] = b"hsmgate-inner";

/// Largest plaintext of one InnerData frame: the frame limit less the type
/// byte and the AES-GCM tag.
pub const MAX_CHANNEL_PLAINTEXT: usize = frame::MAX_FRAME_LEN - 1 - crate::TAG_LEN;

/// What the HSM node learns when the inner handshake completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerPeer {
    /// The client's partition key.
    pub static_key: PublicKey,
    pub partition: String,
    pub version: u8,
}

/// What the client learns from the InnerChallenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmInfo {
    pub hsm_id: String,
    pub static_key: PublicKey,
    pub version: u8,
}

/// An established end-to-end channel: seals requests, opens responses.
pub struct Channel {
    ts: snow::TransportState,
}

impl Channel {
    /// Encrypt `plaintext` into a whole InnerData frame.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, WireError> {
        if plaintext.len() > MAX_CHANNEL_PLAINTEXT {
            return Err(WireError::FrameTooLarge {
                len: plaintext.len(),
                max: MAX_CHANNEL_PLAINTEXT,
            });
        }
        let mut out = vec![0u8; frame::HEADER_LEN + plaintext.len() + crate::TAG_LEN];
        let n = self
            .ts
            .write_message(plaintext, &mut out[frame::HEADER_LEN..])?;
        let len = (n + 1) as u16;
        out[..2].copy_from_slice(&len.to_be_bytes());
        out[2] = FrameType::InnerData as u8;
        out.truncate(frame::HEADER_LEN + n);
        Ok(out)
    }

    /// Decrypt the body of an InnerData frame.
    pub fn open(&mut self, body: &[u8]) -> Result<Vec<u8>, WireError> {
        if body.len() < crate::TAG_LEN {
            return Err(WireError::malformed("inner data", "shorter than a tag"));
        }
        let mut out = vec![0u8; body.len()];
        let n = self.ts.read_message(body, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel(<keys redacted>)")
    }
}

/// The inner layer's handshake shape (§6.1).
const LAYER: noise::Layer = noise::Layer {
    label: PROLOGUE_LABEL,
    magic: MAGIC,
    first: FrameType::InnerHello,
    second: FrameType::InnerChallenge,
    third: FrameType::InnerFinish,
    first_what: "inner hello",
    second_what: "inner challenge payload",
    third_what: "inner finish payload",
    versions: INNER_VERSIONS,
};

/// The inner versions this implementation speaks: 1, and 2 with the
/// extended op set (§7.6).
const INNER_VERSIONS: Offer = Offer {
    min: 1,
    max: crate::ops::OPS_V2,
};

/// The highest inner version this implementation speaks.
pub const MAX_INNER_VERSION: u8 = crate::ops::OPS_V2;

// ---------------------------------------------------------------- client side

/// The client's half of the inner handshake.
pub struct ClientInner {
    hs: snow::HandshakeState,
    offer: Offer,
    partition: String,
}

impl ClientInner {
    /// Start; returns the InnerHello frame. It may be sent right behind the
    /// outer Credentials frame (pipelining, §4).
    pub fn start(
        partition_key: &StaticKeypair,
        partition: &str,
    ) -> Result<(Self, Vec<u8>), WireError> {
        ClientInner::start_up_to(partition_key, partition, MAX_INNER_VERSION)
    }

    /// [`ClientInner::start`] offering versions up to `max_version` only:
    /// how an older client behaves (for tests of version negotiation).
    #[doc(hidden)]
    pub fn start_up_to(
        partition_key: &StaticKeypair,
        partition: &str,
        max_version: u8,
    ) -> Result<(Self, Vec<u8>), WireError> {
        validate_name(partition).map_err(|why| WireError::malformed("partition", why))?;
        let layer = noise::Layer {
            versions: Offer {
                min: INNER_VERSIONS.min,
                max: max_version.clamp(INNER_VERSIONS.min, INNER_VERSIONS.max),
            },
            ..LAYER
        };
        let (hs, offer, hello) = noise::initiate(&layer, partition_key)?;
        Ok((
            ClientInner {
                hs,
                offer,
                partition: partition.to_owned(),
            },
            hello,
        ))
    }

    /// Read the InnerChallenge; `trusted` decides whether the HSM node's key
    /// is one the client accepts. Returns the InnerFinish frame and the
    /// established channel.
    pub fn finish(
        mut self,
        body: &[u8],
        trusted: impl Fn(&PublicKey) -> bool,
    ) -> Result<(Vec<u8>, HsmInfo, Channel), WireError> {
        let (static_key, version, hsm_id) =
            noise::read_second(&LAYER, &mut self.hs, self.offer, body, trusted)?;
        let frame = noise::write_third(&LAYER, &mut self.hs, version, &self.partition)?;
        let ts = self.hs.into_transport_mode()?;
        Ok((
            frame,
            HsmInfo {
                hsm_id,
                static_key,
                version,
            },
            Channel { ts },
        ))
    }
}

// ------------------------------------------------------------------- HSM side

/// The HSM node's half of the inner handshake.
pub struct HsmInner {
    hs: snow::HandshakeState,
    version: u8,
}

impl HsmInner {
    /// Read an InnerHello body; returns the handshake and the InnerChallenge frame.
    pub fn respond(
        key: &StaticKeypair,
        hsm_id: &str,
        body: &[u8],
    ) -> Result<(Self, Vec<u8>), WireError> {
        HsmInner::respond_up_to(key, hsm_id, body, MAX_INNER_VERSION)
    }

    /// [`HsmInner::respond`] speaking versions up to `max_version` only: how
    /// an older node behaves (for tests of version negotiation).
    #[doc(hidden)]
    pub fn respond_up_to(
        key: &StaticKeypair,
        hsm_id: &str,
        body: &[u8],
        max_version: u8,
    ) -> Result<(Self, Vec<u8>), WireError> {
        let layer = noise::Layer {
            versions: Offer {
                min: INNER_VERSIONS.min,
                max: max_version.clamp(INNER_VERSIONS.min, INNER_VERSIONS.max),
            },
            ..LAYER
        };
        let (hs, version, frame) = noise::respond(&layer, key, "hsm_id", hsm_id, body)?;
        Ok((HsmInner { hs, version }, frame))
    }

    /// Read InnerFinish: the client's partition key and partition. The caller
    /// must check that key against the partition's authorized keys (and the
    /// partition against the gateway's grant, §8.4) before serving any request.
    pub fn finish(mut self, body: &[u8]) -> Result<(InnerPeer, Channel), WireError> {
        let (static_key, partition) = noise::read_third(&LAYER, &mut self.hs, self.version, body)?;
        let ts = self.hs.into_transport_mode()?;
        Ok((
            InnerPeer {
                static_key,
                partition,
                version: self.version,
            },
            Channel { ts },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_FRAME_LEN, decode};

    fn body(bytes: &[u8]) -> Vec<u8> {
        let (frame, used) = decode(bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame.body.to_vec()
    }

    fn established() -> (Channel, Channel, PublicKey) {
        let hsm = StaticKeypair::generate().unwrap();
        let pk = StaticKeypair::generate().unwrap();
        let (c, hello) = ClientInner::start(&pk, "p1").unwrap();
        let (h, challenge) = HsmInner::respond(&hsm, "hsm-1", &body(&hello)).unwrap();
        let hsm_pub = hsm.public();
        let (finish, info, cch) = c.finish(&body(&challenge), |k| *k == hsm_pub).unwrap();
        assert_eq!(info.hsm_id, "hsm-1");
        let (peer, hch) = h.finish(&body(&finish)).unwrap();
        assert_eq!(peer.partition, "p1");
        assert_eq!(peer.static_key, pk.public());
        (cch, hch, pk.public())
    }

    #[test]
    fn channel_carries_messages_both_ways() {
        let (mut c, mut h, _) = established();
        let sealed = c.seal(b"secret request").unwrap();
        assert!(!sealed.windows(14).any(|w| w == b"secret request"));
        assert_eq!(h.open(&body(&sealed)).unwrap(), b"secret request");
        let back = h.seal(b"response").unwrap();
        assert_eq!(c.open(&body(&back)).unwrap(), b"response");
    }

    #[test]
    fn the_highest_common_version_is_chosen() {
        let hsm = StaticKeypair::generate().unwrap();
        let pk = StaticKeypair::generate().unwrap();
        for (client_max, node_max, expected) in [(2, 2, 2), (1, 2, 1), (2, 1, 1)] {
            let (c, hello) = ClientInner::start_up_to(&pk, "p1", client_max).unwrap();
            let (h, challenge) =
                HsmInner::respond_up_to(&hsm, "hsm-1", &body(&hello), node_max).unwrap();
            let hsm_pub = hsm.public();
            let (finish, info, _) = c.finish(&body(&challenge), |k| *k == hsm_pub).unwrap();
            let (peer, _) = h.finish(&body(&finish)).unwrap();
            assert_eq!((info.version, peer.version), (expected, expected));
        }
    }

    #[test]
    fn tampered_data_is_refused() {
        let (mut c, mut h, _) = established();
        let mut sealed = c.seal(b"abc").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(h.open(&body(&sealed)).is_err());
    }

    #[test]
    fn client_refuses_an_untrusted_hsm() {
        let hsm = StaticKeypair::generate().unwrap();
        let pk = StaticKeypair::generate().unwrap();
        let (c, hello) = ClientInner::start(&pk, "p1").unwrap();
        let (_, challenge) = HsmInner::respond(&hsm, "hsm-1", &body(&hello)).unwrap();
        assert_eq!(
            c.finish(&body(&challenge), |_| false).err().unwrap(),
            WireError::UntrustedPeerKey(hsm.public())
        );
    }

    #[test]
    fn largest_plaintext_fits_one_frame() {
        let (mut c, mut h, _) = established();
        let big = vec![7u8; MAX_CHANNEL_PLAINTEXT];
        let sealed = c.seal(&big).unwrap();
        assert_eq!(sealed.len(), 2 + MAX_FRAME_LEN);
        assert_eq!(h.open(&body(&sealed)).unwrap(), big);
        assert!(c.seal(&vec![0u8; MAX_CHANNEL_PLAINTEXT + 1]).is_err());
    }
}
