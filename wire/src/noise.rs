//! Shared plumbing of both handshakes: version offers, prologues and the
//! calls into `snow`. Both layers use the same shape (PROTOCOL.md §3.1, §6.1):
//! the first frame carries four magic bytes, the lowest and highest version
//! the initiator speaks, then Noise message 1; the prologue binds the magic
//! and the offer, so a downgraded offer breaks the handshake.

use crate::error::WireError;
use crate::keys::StaticKeypair;

/// Largest Noise message of a handshake in this protocol (§2.4); generous
/// for the payloads defined (§3.6) and well under the frame limit.
pub(crate) const MAX_HANDSHAKE_MESSAGE: usize = 1000;

/// Bytes before Noise message 1 in a first frame's body: magic, min, max.
const FIRST_BODY_PREFIX: usize = 6;

// Every handshake message this crate writes or accepts fits a frame of both
// handshake phases, first frames (type byte, offer prefix) included.
const _: () = {
    let largest = 1 + FIRST_BODY_PREFIX + MAX_HANDSHAKE_MESSAGE;
    assert!(largest <= crate::frame::MAX_OUTER_FRAME_LEN);
    assert!(largest <= crate::frame::MAX_HANDSHAKE_FRAME_LEN);
};

/// The version offer at the start of a first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offer {
    pub min: u8,
    pub max: u8,
}

impl Offer {
    /// What the outer layer and the control channel speak.
    pub(crate) const OURS: Offer = Offer {
        min: crate::PROTOCOL_VERSION,
        max: crate::PROTOCOL_VERSION,
    };

    /// Pick the highest version both sides speak (`ours` is this side's range).
    pub(crate) fn negotiate(self, ours: Offer) -> Result<u8, WireError> {
        let low = self.min.max(ours.min);
        let high = self.max.min(ours.max);
        if self.min > self.max || low > high {
            return Err(WireError::UnsupportedVersion {
                min: self.min,
                max: self.max,
            });
        }
        Ok(high)
    }

    pub(crate) fn contains(self, version: u8) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

/// `label || magic || min || max`: what both sides mix in before message 1.
pub(crate) fn prologue(label: &[u8], magic: &[u8; 4], offer: Offer) -> Vec<u8> {
    let mut p = Vec::with_capacity(label.len() + 6);
    p.extend_from_slice(label);
    p.extend_from_slice(magic);
    p.push(offer.min);
    p.push(offer.max);
    p
}

/// A first frame's body: the prefix and Noise message 1, which is the
/// 32-byte ephemeral key with an empty payload.
pub(crate) const FIRST_BODY_LEN: usize = FIRST_BODY_PREFIX + 32;

/// Split a first frame's body into its offer, the version chosen from
/// `ours`, and Noise message 1. Checked before Noise sees anything, in this
/// order: a wrong magic or a body too short for the offer is a protocol
/// error (code 6); an offer with no version in common is code 5 whatever
/// follows it, so a peer of a later version whose first frame is longer
/// still learns "unsupported version"; then any length but 38 is code 6,
/// never a handshake failure.
pub(crate) fn split_first_body<'a>(
    body: &'a [u8],
    magic: &[u8; 4],
    ours: Offer,
) -> Result<(Offer, u8, &'a [u8]), WireError> {
    if body.get(..4).is_some_and(|m| m != magic) {
        return Err(WireError::BadMagic);
    }
    if body.len() < FIRST_BODY_PREFIX {
        return Err(WireError::malformed("hello", "truncated"));
    }
    let offer = Offer {
        min: body[4],
        max: body[5],
    };
    let version = offer.negotiate(ours)?;
    if body.len() != FIRST_BODY_LEN {
        return Err(WireError::malformed(
            "hello",
            "the body is exactly 38 bytes: magic, min, max and a 32-byte ephemeral key",
        ));
    }
    Ok((offer, version, &body[FIRST_BODY_PREFIX..]))
}

pub(crate) fn first_body(magic: &[u8; 4], offer: Offer, msg1: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(FIRST_BODY_PREFIX + msg1.len());
    body.extend_from_slice(magic);
    body.push(offer.min);
    body.push(offer.max);
    body.extend_from_slice(msg1);
    body
}

pub(crate) fn builder<'a>(
    key: &'a StaticKeypair,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, WireError> {
    let params = crate::NOISE_PARAMS
        .parse()
        .map_err(|_| WireError::State("noise parameters"))?;
    Ok(
        snow::Builder::with_resolver(params, Box::new(crate::x25519::Resolver))
            .local_private_key(key.private_bytes())?
            .prologue(prologue)?,
    )
}

pub(crate) fn write(hs: &mut snow::HandshakeState, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs.write_message(payload, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

pub(crate) fn read(hs: &mut snow::HandshakeState, message: &[u8]) -> Result<Vec<u8>, WireError> {
    if message.len() > MAX_HANDSHAKE_MESSAGE {
        return Err(WireError::malformed("handshake message", "too long"));
    }
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs.read_message(message, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

pub(crate) fn remote_static(hs: &snow::HandshakeState) -> Result<crate::PublicKey, WireError> {
    let raw = hs
        .get_remote_static()
        .ok_or(WireError::State("no remote static key after handshake"))?;
    crate::PublicKey::from_bytes(raw)
}

/// One XX layer whose messages 2 and 3 each carry `version ‖ name`: the
/// inner channel (§6.1) and the gateway–node control channel (§8.2). The
/// outer layer's Credentials carry more and are written in `outer.rs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layer {
    pub label: &'static [u8],
    pub magic: &'static [u8; 4],
    pub first: crate::frame::FrameType,
    pub second: crate::frame::FrameType,
    pub third: crate::frame::FrameType,
    /// What the messages and payloads are called in errors.
    pub first_what: &'static str,
    pub second_what: &'static str,
    pub third_what: &'static str,
    /// The versions this implementation speaks on the layer.
    pub versions: Offer,
}

/// The initiator's start: the handshake state and the first frame
/// (`magic ‖ min ‖ max ‖ e`).
pub(crate) fn initiate(
    layer: &Layer,
    key: &StaticKeypair,
) -> Result<(snow::HandshakeState, Offer, Vec<u8>), WireError> {
    let offer = layer.versions;
    let prologue = prologue(layer.label, layer.magic, offer);
    let mut hs = builder(key, &prologue)?.build_initiator()?;
    let msg1 = write(&mut hs, &[])?;
    let frame = crate::frame::encode(layer.first, &first_body(layer.magic, offer, &msg1))?;
    Ok((hs, offer, frame))
}

/// The responder's answer to a first frame body: the handshake state, the
/// negotiated version and the second frame, whose payload is
/// `version ‖ name`.
pub(crate) fn respond(
    layer: &Layer,
    key: &StaticKeypair,
    name_field: &'static str,
    name: &str,
    body: &[u8],
) -> Result<(snow::HandshakeState, u8, Vec<u8>), WireError> {
    let (offer, version, msg1) = split_first_body(body, layer.magic, layer.versions)?;
    let prologue = prologue(layer.label, layer.magic, offer);
    let mut hs = builder(key, &prologue)?.build_responder()?;
    if !read(&mut hs, msg1)?.is_empty() {
        return Err(WireError::malformed(
            layer.first_what,
            "message 1 carries a payload",
        ));
    }
    crate::text::validate_name(name).map_err(|why| WireError::malformed(name_field, why))?;
    let msg2 = write(&mut hs, &version_and_name(version, name))?;
    let frame = crate::frame::encode(layer.second, &msg2)?;
    Ok((hs, version, frame))
}

/// The initiator reads message 2: the responder's static key (which
/// `trusted` must accept before anything else is read) and `version ‖ name`.
pub(crate) fn read_second(
    layer: &Layer,
    hs: &mut snow::HandshakeState,
    offer: Offer,
    body: &[u8],
    trusted: impl Fn(&crate::PublicKey) -> bool,
) -> Result<(crate::PublicKey, u8, String), WireError> {
    let payload = read(hs, body)?;
    let static_key = remote_static(hs)?;
    if !trusted(&static_key) {
        return Err(WireError::UntrustedPeerKey(static_key));
    }
    let mut r = crate::reader::Reader::new(&payload, layer.second_what);
    let version = r.u8()?;
    if !offer.contains(version) {
        return Err(WireError::malformed(
            layer.second_what,
            "version outside the offer",
        ));
    }
    let name = r.name()?.to_owned();
    r.finish()?;
    Ok((static_key, version, name))
}

/// The initiator's message 3 (`version ‖ name`) as a frame.
pub(crate) fn write_third(
    layer: &Layer,
    hs: &mut snow::HandshakeState,
    version: u8,
    name: &str,
) -> Result<Vec<u8>, WireError> {
    let msg3 = write(hs, &version_and_name(version, name))?;
    crate::frame::encode(layer.third, &msg3)
}

/// The responder reads message 3: the initiator's static key and the name
/// it sends, after checking the version is the one negotiated.
pub(crate) fn read_third(
    layer: &Layer,
    hs: &mut snow::HandshakeState,
    version: u8,
    body: &[u8],
) -> Result<(crate::PublicKey, String), WireError> {
    let payload = read(hs, body)?;
    let static_key = remote_static(hs)?;
    let mut r = crate::reader::Reader::new(&payload, layer.third_what);
    if r.u8()? != version {
        return Err(WireError::malformed(layer.third_what, "version mismatch"));
    }
    let name = r.name()?.to_owned();
    r.finish()?;
    Ok((static_key, name))
}

fn version_and_name(version: u8, name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + name.len());
    p.push(version);
    crate::reader::put_name(&mut p, name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_HANDSHAKE_FRAME_LEN, MAX_OUTER_FRAME_LEN};

    #[test]
    fn every_acceptable_handshake_message_fits_a_handshake_frame() {
        // §2.4: both handshake phases bound frames to 1024; a Noise
        // handshake message is at most 1000 bytes. The largest frame that
        // carries one is a first frame: type byte, magic, min, max, message.
        assert_eq!(MAX_HANDSHAKE_FRAME_LEN, 1024);
        assert_eq!(MAX_OUTER_FRAME_LEN, 1024);
        assert_eq!(MAX_HANDSHAKE_MESSAGE, 1000);
        assert_eq!(FIRST_BODY_PREFIX, 6);
        let largest = 1 + FIRST_BODY_PREFIX + MAX_HANDSHAKE_MESSAGE;
        assert!(largest <= MAX_HANDSHAKE_FRAME_LEN);
        assert!(largest <= MAX_OUTER_FRAME_LEN);
    }

    #[test]
    fn refuses_a_handshake_message_over_the_limit() {
        let key = StaticKeypair::generate().unwrap();
        let prologue = prologue(b"test", b"TEST", Offer::OURS);
        let mut hs = builder(&key, &prologue).unwrap().build_responder().unwrap();
        assert_eq!(
            read(&mut hs, &[0u8; MAX_HANDSHAKE_MESSAGE + 1]),
            Err(WireError::malformed("handshake message", "too long"))
        );
    }
}
