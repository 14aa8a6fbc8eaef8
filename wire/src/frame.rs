//! Framing (PROTOCOL.md §2).
//!
//! Every message of both layers is one frame:
//!
//! ```text
//! +----------------+-----------+----------------------+
//! | length: u16 BE | type: u8  | body: length-1 bytes |
//! +----------------+-----------+----------------------+
//! ```
//!
//! `length` counts the type byte and the body, so it is at least 1. Decoding
//! follows the check-then-parse shape: [`decode`] looks at a buffer, returns
//! `Ok(None)` when more bytes are needed and never allocates; the caller
//! bounds the frame size per phase with `max_len`.

use crate::error::WireError;

/// Bytes before the body: the length and the type.
pub const HEADER_LEN: usize = 3;

/// Largest `length` field the protocol allows (the u16 maximum).
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// Largest `length` of a frame of the outer handshake (§2.4, §3.6).
pub const MAX_OUTER_FRAME_LEN: usize = 1024;

/// Largest `length` of a frame of the inner handshake (§2.4, §6.1), which
/// the HSM node enforces on InnerHello and InnerFinish.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 1024;

/// Largest `length` of a frame between gateway and HSM node (§8): the
/// control channel's frames and the Grant preamble.
pub const MAX_GATEWAY_NODE_FRAME_LEN: usize = 1024;

/// Frame types (PROTOCOL.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Client → gateway: version offer and Noise message 1 of the outer handshake.
    Hello = 0x01,
    /// Gateway → client: Noise message 2 (the gateway asks the client to authenticate).
    Challenge = 0x02,
    /// Client → gateway: Noise message 3 carrying the client's credentials.
    Credentials = 0x03,
    /// Gateway → client: the encrypted grant-or-deny decision.
    Decision = 0x04,
    /// Either direction, unencrypted: a one-byte code, then the sender closes.
    Error = 0x05,
    /// Client → gateway, on a further QUIC stream: the partition a new
    /// session asks for (PROTOCOL.md §11.4).
    Open = 0x06,
    /// Gateway → client, on a further QUIC stream: the answer to an Open.
    Answer = 0x07,
    /// Client → HSM: version offer and Noise message 1 of the inner channel.
    InnerHello = 0x11,
    /// HSM → client: Noise message 2 of the inner channel.
    InnerChallenge = 0x12,
    /// Client → HSM: Noise message 3 of the inner channel (partition).
    InnerFinish = 0x13,
    /// Either direction: an encrypted request or response of the inner channel.
    InnerData = 0x14,
    /// Gateway → HSM node: version offer and Noise message 1 of the control channel.
    ControlHello = 0x21,
    /// HSM node → gateway: Noise message 2 of the control channel.
    ControlChallenge = 0x22,
    /// Gateway → HSM node: Noise message 3 of the control channel.
    ControlFinish = 0x23,
    /// Either direction: an encrypted control message (grant key, status, ping).
    ControlData = 0x24,
    /// Gateway → HSM node: the sealed grant, first frame of a forwarded session.
    Grant = 0x25,
}

impl FrameType {
    pub fn from_byte(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Challenge,
            0x03 => FrameType::Credentials,
            0x04 => FrameType::Decision,
            0x05 => FrameType::Error,
            0x06 => FrameType::Open,
            0x07 => FrameType::Answer,
            0x11 => FrameType::InnerHello,
            0x12 => FrameType::InnerChallenge,
            0x13 => FrameType::InnerFinish,
            0x14 => FrameType::InnerData,
            0x21 => FrameType::ControlHello,
            0x22 => FrameType::ControlChallenge,
            0x23 => FrameType::ControlFinish,
            0x24 => FrameType::ControlData,
            0x25 => FrameType::Grant,
            _ => return None,
        })
    }
}

/// A decoded frame, borrowing its body from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: FrameType,
    pub body: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Require this frame to be of `kind`; an Error frame becomes
    /// [`WireError::Refused`] with the code it carries, or an error of its
    /// own if it breaks §2.4 (see [`decode_error_body`]).
    pub fn expect(self, kind: FrameType, expected: &'static str) -> Result<&'a [u8], WireError> {
        if self.kind == kind {
            return Ok(self.body);
        }
        if self.kind == FrameType::Error {
            return Err(WireError::Refused(decode_error_body(self.body)?));
        }
        Err(WireError::UnexpectedFrame {
            got: self.kind,
            expected,
        })
    }
}

/// Decode one frame from the start of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame, or
/// `Ok(Some((frame, consumed)))`. A `length` above `max_len` is an error as
/// soon as the header is visible, before any body byte is waited for.
pub fn decode(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(len) = peek_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < 2 + len {
        // Header seen and sane; the body is still on its way.
        if buf.len() >= HEADER_LEN {
            FrameType::from_byte(buf[2]).ok_or(WireError::UnknownFrameType(buf[2]))?;
        }
        return Ok(None);
    }
    let kind = FrameType::from_byte(buf[2]).ok_or(WireError::UnknownFrameType(buf[2]))?;
    let body = &buf[HEADER_LEN..2 + len];
    Ok(Some((Frame { kind, body }, 2 + len)))
}

/// Read the length field, checking it against `max_len`.
/// `Ok(None)` when fewer than two bytes are present.
pub fn peek_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > max_len {
        return Err(WireError::FrameTooLarge { len, max: max_len });
    }
    Ok(Some(len))
}

/// Append a frame of `kind` with `body` to `out`.
pub fn encode_into(out: &mut Vec<u8>, kind: FrameType, body: &[u8]) -> Result<(), WireError> {
    let len = body.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(2 + len);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(body);
    Ok(())
}

/// Encode a frame of `kind` with `body` into a new buffer.
pub fn encode(kind: FrameType, body: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    encode_into(&mut out, kind, body)?;
    Ok(out)
}

/// The unencrypted Error frame: one code byte (§2.4).
pub fn error_frame(code: crate::Code) -> Vec<u8> {
    vec![0, 2, FrameType::Error as u8, code.as_byte()]
}

/// Decode the body of an Error frame (§2.4). Unknown codes read as
/// `ProtocolError`. A body that is not one byte, or code 0 (granted, which
/// is never sent in an Error frame), is the sender's protocol error:
/// [`WireError::Malformed`], whose [`WireError::code`] is `ProtocolError`.
pub fn decode_error_body(body: &[u8]) -> Result<crate::Code, WireError> {
    match body {
        [0] => Err(WireError::malformed("error frame", "code 0 (granted)")),
        [b] => Ok(crate::Code::from_byte(*b).unwrap_or(crate::Code::ProtocolError)),
        _ => Err(WireError::malformed("error frame", "body is not one byte")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_and_decodes_a_frame() {
        let bytes = encode(FrameType::Hello, b"abc").unwrap();
        assert_eq!(bytes, [0, 4, 1, b'a', b'b', b'c']);
        let (frame, used) = decode(&bytes, 16).unwrap().unwrap();
        assert_eq!(used, 6);
        assert_eq!(frame.kind, FrameType::Hello);
        assert_eq!(frame.body, b"abc");
    }

    #[test]
    fn asks_for_more_bytes_when_incomplete() {
        let bytes = encode(FrameType::Hello, b"abc").unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 16).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn refuses_oversized_frame_from_the_header_alone() {
        assert_eq!(
            decode(&[0xff, 0xff], 1024),
            Err(WireError::FrameTooLarge {
                len: 65535,
                max: 1024
            })
        );
    }

    #[test]
    fn refuses_empty_and_unknown_frames() {
        assert_eq!(decode(&[0, 0], 16), Err(WireError::EmptyFrame));
        assert_eq!(
            decode(&[0, 1, 0x7f], 16),
            Err(WireError::UnknownFrameType(0x7f))
        );
        // The type byte is checked as soon as it arrives.
        assert_eq!(
            decode(&[0, 9, 0x7f], 16),
            Err(WireError::UnknownFrameType(0x7f))
        );
    }

    #[test]
    fn error_frames_carry_a_code() {
        let bytes = error_frame(crate::Code::OverLimit);
        let (frame, _) = decode(&bytes, 16).unwrap().unwrap();
        assert_eq!(
            frame.expect(FrameType::Challenge, "challenge"),
            Err(WireError::Refused(crate::Code::OverLimit))
        );
    }

    #[test]
    fn an_error_frame_carrying_granted_is_a_protocol_error() {
        // §2.4: code 0 is never sent in an Error frame; a receiver treats it
        // as the sender's protocol error, not as a refusal (nor a grant).
        let bytes = [0, 2, FrameType::Error as u8, 0];
        let (frame, _) = decode(&bytes, 16).unwrap().unwrap();
        let err = frame.expect(FrameType::Challenge, "challenge").unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err:?}");
        assert_eq!(err.code(), crate::Code::ProtocolError);
        assert!(decode_error_body(&[0]).is_err());
        // Unknown codes still read as 6, known ones as themselves.
        assert_eq!(decode_error_body(&[10]), Ok(crate::Code::ProtocolError));
        assert_eq!(decode_error_body(&[255]), Ok(crate::Code::ProtocolError));
        for b in 1..=9u8 {
            assert_eq!(decode_error_body(&[b]).unwrap().as_byte(), b);
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_and_stay_within_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            max in 1usize..1500,
        ) {
            match decode(&bytes, max) {
                Ok(Some((frame, used))) => {
                    prop_assert!(used <= bytes.len());
                    prop_assert!(frame.body.len() < max);
                }
                Ok(None) => {
                    // Incomplete: whatever is announced must fit the limit.
                    if bytes.len() >= 2 {
                        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
                        prop_assert!(len <= max);
                    }
                }
                Err(_) => {}
            }
        }

        #[test]
        fn encode_then_decode_is_identity(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let bytes = encode(FrameType::InnerData, &body).unwrap();
            let (frame, used) = decode(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(frame.body, &body[..]);
        }
    }
}
