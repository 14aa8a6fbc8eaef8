//! Result codes a peer can act on (PROTOCOL.md §5).
//!
//! A code is one byte. It says what the client should do next and nothing
//! more: no reason text, no hint of which check failed beyond its class.

/// Outcome of an admission step, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// Access granted; the connection now leads to an HSM node.
    Granted = 0,
    /// Authentication or authorization refused. Retrying will not help.
    Denied = 1,
    /// The source address is not allowed. Retrying from it will not help.
    AddressNotAllowed = 2,
    /// A connection, session or rate limit was hit. Retry later or elsewhere.
    OverLimit = 3,
    /// This gateway cannot serve now (directory or HSMs unreachable).
    /// Try another gateway.
    Unavailable = 4,
    /// No common protocol version.
    UnsupportedVersion = 5,
    /// The peer sent bytes that do not follow the protocol.
    ProtocolError = 6,
    /// A phase of the handshake took longer than its deadline.
    Timeout = 7,
    /// The Noise handshake failed: wrong keys, tampering or a replay.
    HandshakeFailed = 8,
    /// An internal error in the gateway. Try another gateway.
    Internal = 9,
}

impl Code {
    pub fn from_byte(b: u8) -> Option<Code> {
        Some(match b {
            0 => Code::Granted,
            1 => Code::Denied,
            2 => Code::AddressNotAllowed,
            3 => Code::OverLimit,
            4 => Code::Unavailable,
            5 => Code::UnsupportedVersion,
            6 => Code::ProtocolError,
            7 => Code::Timeout,
            8 => Code::HandshakeFailed,
            9 => Code::Internal,
            _ => return None,
        })
    }

    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Whether the same request may succeed through another gateway or later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Code::OverLimit | Code::Unavailable | Code::Timeout | Code::Internal
        )
    }

    /// A stable lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Granted => "granted",
            Code::Denied => "denied",
            Code::AddressNotAllowed => "address_not_allowed",
            Code::OverLimit => "over_limit",
            Code::Unavailable => "unavailable",
            Code::UnsupportedVersion => "unsupported_version",
            Code::ProtocolError => "protocol_error",
            Code::Timeout => "timeout",
            Code::HandshakeFailed => "handshake_failed",
            Code::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_byte() {
        for b in 0..=255u8 {
            if let Some(code) = Code::from_byte(b) {
                assert_eq!(code.as_byte(), b);
            }
        }
        assert_eq!(Code::from_byte(10), None);
        assert_eq!(Code::from_byte(9), Some(Code::Internal));
    }
}
