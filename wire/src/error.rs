//! The one error type of the wire crate.
//!
//! Every variant is caused by the peer's bytes or by a local misuse of a
//! state machine; callers map them to a [`crate::Code`] with
//! [`WireError::code`], so the decision of what to tell the peer is made here,
//! next to the protocol, and nowhere else.

use crate::code::Code;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty frame")]
    EmptyFrame,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("unexpected frame type {got:?}, expected {expected}")]
    UnexpectedFrame {
        got: crate::frame::FrameType,
        expected: &'static str,
    },
    #[error("bad magic bytes")]
    BadMagic,
    #[error("no common protocol version (peer offers {min}..={max})")]
    UnsupportedVersion { min: u8, max: u8 },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("noise handshake failed: {0}")]
    Handshake(String),
    /// The peer's static key (as it presented it) is not the pinned or a
    /// trusted key.
    #[error("peer static key {0} is not the pinned or trusted key")]
    UntrustedPeerKey(crate::PublicKey),
    #[error("refused by peer with code {0:?}")]
    Refused(Code),
    #[error("bad key text: {0}")]
    KeyText(&'static str),
    #[error("wrong passphrase (or the sealed key file was altered)")]
    WrongPassphrase,
    #[error("state machine misuse: {0}")]
    State(&'static str),
}

impl WireError {
    /// The code a server sends back when this error ends a handshake.
    pub fn code(&self) -> Code {
        match self {
            WireError::UnsupportedVersion { .. } => Code::UnsupportedVersion,
            WireError::Handshake(_) | WireError::UntrustedPeerKey(_) => Code::HandshakeFailed,
            WireError::Refused(code) => *code,
            WireError::State(_) => Code::Internal,
            _ => Code::ProtocolError,
        }
    }

    pub(crate) fn malformed(what: &'static str, why: &'static str) -> Self {
        WireError::Malformed { what, why }
    }
}

impl From<snow::Error> for WireError {
    fn from(e: snow::Error) -> Self {
        match e {
            // The only X25519 failure a peer can cause (x25519.rs): say so
            // in the log line rather than snow's "diffie-hellman error".
            snow::Error::Dh => WireError::Handshake(
                "X25519 gave no shared secret: the peer sent a key of small order (PROTOCOL.md §1.2)"
                    .into(),
            ),
            // snow's errors carry no secret material; keep their text for logs.
            e => WireError::Handshake(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_x25519_names_the_small_order_key_and_is_a_handshake_failure() {
        let e = WireError::from(snow::Error::Dh);
        assert!(e.to_string().contains("small order"), "{e}");
        assert_eq!(e.code(), Code::HandshakeFailed);
        let other = WireError::from(snow::Error::Decrypt);
        assert!(!other.to_string().contains("small order"), "{other}");
        assert_eq!(other.code(), Code::HandshakeFailed);
    }
}
