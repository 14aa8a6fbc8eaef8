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
    pub(crate) const OURS: Offer = Offer {
        min: crate::PROTOCOL_VERSION,
        max: crate::PROTOCOL_VERSION,
    };

    /// Pick the highest version both sides speak.
    pub(crate) fn negotiate(self) -> Result<u8, WireError> {
        let low = self.min.max(Offer::OURS.min);
        let high = self.max.min(Offer::OURS.max);
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

/// Split a first frame's body into its offer and Noise message 1.
pub(crate) fn split_first_body<'a>(
    body: &'a [u8],
    magic: &[u8; 4],
) -> Result<(Offer, &'a [u8]), WireError> {
    if body.len() < FIRST_BODY_PREFIX {
        return Err(WireError::malformed("hello", "truncated"));
    }
    if &body[..4] != magic {
        return Err(WireError::BadMagic);
    }
    Ok((
        Offer {
            min: body[4],
            max: body[5],
        },
        &body[FIRST_BODY_PREFIX..],
    ))
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
    Ok(snow::Builder::new(params)
        .local_private_key(key.private_bytes())?
        .prologue(prologue)?)
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
