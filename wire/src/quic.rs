//! The QUIC mapping (PROTOCOL.md §11): the ALPN, the channel binding that
//! ties the outer handshake to one QUIC connection, the two frames of a
//! further stream (Open, Answer), and the application error codes of
//! CONNECTION_CLOSE and RESET_STREAM.
//!
//! The first bidirectional stream of a connection carries the outer
//! handshake of §3 exactly, with the binding appended to its prologue, and
//! then the first session. Every further stream starts with an Open naming
//! a partition and is answered by an Answer; TLS protects both, and the
//! bound handshake is what authenticated the TLS connection.

use crate::code::Code;
use crate::error::WireError;
use crate::frame::{self, FrameType};
use crate::outer::Decision;
use crate::reader::{Reader, put_name};
use crate::text::validate_name;

/// The ALPN protocol id of hsmgate over QUIC, version 1 of this mapping.
pub const ALPN: &[u8] = b"hsmgate/1";

/// The TLS exporter label of the channel binding (RFC 8446 §7.5), used with
/// an empty context.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-hsmgate-channel-binding";

/// Bytes of the channel binding.
pub const BINDING_LEN: usize = 32;

/// A connection's channel binding: its TLS exporter value.
pub type Binding = [u8; BINDING_LEN];

/// The Open frame of a further stream: the partition asked for.
pub fn open_frame(partition: &str) -> Result<Vec<u8>, WireError> {
    validate_name(partition).map_err(|why| WireError::malformed("partition", why))?;
    let mut body = Vec::with_capacity(1 + partition.len());
    put_name(&mut body, partition);
    frame::encode(FrameType::Open, &body)
}

/// The partition an Open body names; exactly one name, nothing after it.
pub fn read_open(body: &[u8]) -> Result<String, WireError> {
    let mut r = Reader::new(body, "open");
    let partition = r.name()?.to_owned();
    r.finish()?;
    Ok(partition)
}

/// The Answer frame to an Open: the same three bytes as a Decision's
/// plaintext (§3.5), unencrypted inside the bound TLS connection.
pub fn answer_frame(decision: Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::HEADER_LEN + 3);
    // Three bytes always fit a frame.
    let _ = frame::encode_into(&mut out, FrameType::Answer, &decision.encode());
    out
}

/// The decision an Answer body carries.
pub fn read_answer(body: &[u8]) -> Result<Decision, WireError> {
    Decision::decode(body)
}

/// The application error code of a CONNECTION_CLOSE or RESET_STREAM sent
/// for `code` (§11.6): the code's byte; 0 is a normal end.
pub fn error_code(code: Code) -> u32 {
    u32::from(code.as_byte())
}

/// The code a received application error code stands for; codes beyond
/// §5 read as a protocol error, as an Error frame's would.
pub fn code_of(error_code: u64) -> Code {
    u8::try_from(error_code)
        .ok()
        .and_then(Code::from_byte)
        .unwrap_or(Code::ProtocolError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_OUTER_FRAME_LEN, decode};
    use crate::outer::{AccessRequest, ClientHandshake, GatewayHandshake};
    use crate::{PublicKey, StaticKeypair};

    #[test]
    fn an_open_names_one_partition_and_nothing_else() {
        let bytes = open_frame("p1").unwrap();
        assert_eq!(bytes, [0x00, 0x04, 0x06, 0x02, b'p', b'1']);
        let (f, used) = decode(&bytes, MAX_OUTER_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(read_open(f.body).unwrap(), "p1");
        assert!(read_open(&[0x02, b'p', b'1', 0]).is_err(), "trailing byte");
        assert!(
            read_open(&[0x02, b'p', b'/']).is_err(),
            "byte outside names"
        );
        assert!(read_open(&[]).is_err());
        assert!(open_frame("no spaces").is_err());
    }

    #[test]
    fn an_answer_is_a_decision_in_the_clear() {
        let bytes = answer_frame(Decision {
            code: Code::OverLimit,
            retry_after_secs: 1,
        });
        assert_eq!(bytes, [0x00, 0x04, 0x07, 0x03, 0x00, 0x01]);
        let (f, _) = decode(&bytes, MAX_OUTER_FRAME_LEN).unwrap().unwrap();
        let d = read_answer(f.body).unwrap();
        assert_eq!((d.code, d.retry_after_secs), (Code::OverLimit, 1));
        assert!(read_answer(&[0x0a, 0, 0]).is_err(), "unknown code");
        assert!(read_answer(&[0, 0]).is_err(), "short");
    }

    #[test]
    fn error_codes_are_the_code_bytes() {
        assert_eq!(error_code(Code::Denied), 1);
        assert_eq!(code_of(4), Code::Unavailable);
        assert_eq!(code_of(0x1_0000), Code::ProtocolError);
        assert_eq!(code_of(10), Code::ProtocolError);
    }

    fn handshake(client_binding: &Binding, gateway_binding: &Binding) -> Result<(), WireError> {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let request = AccessRequest {
            client_id: "app-1".into(),
            tenant: "acme".into(),
            partition: "p1".into(),
        };
        let keys: [PublicKey; 1] = [gw.public()];
        let (mut client, hello) =
            ClientHandshake::start_bound(&cl, &keys, request, client_binding)?;
        let (f, _) = decode(&hello, MAX_OUTER_FRAME_LEN)?.unwrap();
        let (mut gateway, challenge) =
            GatewayHandshake::respond_bound(&gw, "gw-1", f.body, gateway_binding)?;
        let (f, _) = decode(&challenge, MAX_OUTER_FRAME_LEN)?.unwrap();
        let (creds, _) = client.read_challenge(f.body)?;
        let (f, _) = decode(&creds, MAX_OUTER_FRAME_LEN)?.unwrap();
        gateway.read_credentials(f.body)?;
        Ok(())
    }

    #[test]
    fn a_bound_handshake_completes_only_on_the_connection_it_is_bound_to() {
        handshake(&[7; BINDING_LEN], &[7; BINDING_LEN]).unwrap();
        // Relayed from another connection: the bindings differ, and the
        // client refuses the Challenge before it reveals who it is.
        let mut other = [7; BINDING_LEN];
        other[31] ^= 1;
        let e = handshake(&[7; BINDING_LEN], &other).unwrap_err();
        assert_eq!(e.code(), Code::HandshakeFailed, "{e}");
    }
}
