//! The outer handshake: service authentication between client and gateway
//! (PROTOCOL.md §3).
//!
//! ```text
//! client                                   gateway
//!   Hello       "HSMG" min max | -> e         ─▶
//!             ◀─  Challenge   <- e, ee, s, es  {version, gateway id}
//!   Credentials -> s, se  {version, client id, tenant, partition}  ─▶
//!             ◀─  Decision    AES-GCM {code, retry after}
//! ```
//!
//! XX makes the gateway contribute a fresh ephemeral key before the client
//! proves possession of its static key, so a recorded Credentials message
//! cannot be replayed into a new handshake. After the Decision the Noise
//! session is dropped; after a grant the connection carries the inner channel.

use crate::code::Code;
use crate::error::WireError;
use crate::frame::{self, FrameType};
use crate::keys::{PublicKey, StaticKeypair};
use crate::noise::{self, Offer};
use crate::reader::{Reader, put_name};
use crate::text::validate_name;

pub const MAGIC: &[u8; 4] = b"HSMG";
pub const PROLOGUE_LABEL: &[u8] = b"hsmgate-outer";

/// What the client asks for, sent encrypted in Credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub client_id: String,
    pub tenant: String,
    pub partition: String,
}

impl AccessRequest {
    pub fn validate(&self) -> Result<(), WireError> {
        for (field, value) in [
            ("client_id", &self.client_id),
            ("tenant", &self.tenant),
            ("partition", &self.partition),
        ] {
            validate_name(value).map_err(|why| WireError::malformed(field, why))?;
        }
        Ok(())
    }
}

/// What the gateway learns at the end of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClient {
    /// The static key the client proved it holds.
    pub static_key: PublicKey,
    pub request: AccessRequest,
    pub version: u8,
}

/// What the client learns from the Challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub gateway_id: String,
    pub version: u8,
}

/// The gateway's answer (§3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub code: Code,
    /// Seconds after which retrying may help; 0 when there is no advice.
    pub retry_after_secs: u16,
}

impl Decision {
    pub const GRANTED: Decision = Decision {
        code: Code::Granted,
        retry_after_secs: 0,
    };

    pub fn refuse(code: Code) -> Decision {
        Decision {
            code,
            retry_after_secs: 0,
        }
    }

    pub(crate) fn encode(self) -> [u8; 3] {
        let r = self.retry_after_secs.to_be_bytes();
        [self.code.as_byte(), r[0], r[1]]
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Decision, WireError> {
        let mut r = Reader::new(bytes, "decision");
        let code = Code::from_byte(r.u8()?)
            .ok_or_else(|| WireError::malformed("decision", "unknown code"))?;
        let retry_after_secs = r.u16()?;
        r.finish()?;
        Ok(Decision {
            code,
            retry_after_secs,
        })
    }
}

/// The outer prologue (§3.1), followed on QUIC by the connection's
/// channel binding (§11.2).
fn bound_prologue(offer: Offer, binding: Option<&crate::quic::Binding>) -> Vec<u8> {
    let mut prologue = noise::prologue(PROLOGUE_LABEL, MAGIC, offer);
    if let Some(binding) = binding {
        prologue.extend_from_slice(binding);
    }
    prologue
}

// ---------------------------------------------------------------- client side

/// The client's half of the outer handshake.
pub struct ClientHandshake {
    hs: snow::HandshakeState,
    offer: Offer,
    /// The gateway keys accepted: one, or two while a key is rotated.
    pinned: Vec<PublicKey>,
    request: AccessRequest,
    version: Option<u8>,
}

impl ClientHandshake {
    /// Start a handshake with one pinned gateway key; returns the Hello
    /// frame to send.
    pub fn start(
        identity: &StaticKeypair,
        gateway_key: PublicKey,
        request: AccessRequest,
    ) -> Result<(Self, Vec<u8>), WireError> {
        Self::start_pinning(identity, &[gateway_key], request)
    }

    /// [`ClientHandshake::start`] accepting any of `gateway_keys` (at least
    /// one): the old and the new key while the gateway's key is rotated.
    pub fn start_pinning(
        identity: &StaticKeypair,
        gateway_keys: &[PublicKey],
        request: AccessRequest,
    ) -> Result<(Self, Vec<u8>), WireError> {
        Self::start_with(identity, gateway_keys, request, None)
    }

    /// [`ClientHandshake::start_pinning`] on the first stream of a QUIC
    /// connection: `binding` is the connection's TLS exporter value
    /// (PROTOCOL.md §11.2), appended to the prologue.
    pub fn start_bound(
        identity: &StaticKeypair,
        gateway_keys: &[PublicKey],
        request: AccessRequest,
        binding: &crate::quic::Binding,
    ) -> Result<(Self, Vec<u8>), WireError> {
        Self::start_with(identity, gateway_keys, request, Some(binding))
    }

    fn start_with(
        identity: &StaticKeypair,
        gateway_keys: &[PublicKey],
        request: AccessRequest,
        binding: Option<&crate::quic::Binding>,
    ) -> Result<(Self, Vec<u8>), WireError> {
        if gateway_keys.is_empty() {
            return Err(WireError::State("no gateway key pinned"));
        }
        request.validate()?;
        let offer = Offer::OURS;
        let prologue = bound_prologue(offer, binding);
        let mut hs = noise::builder(identity, &prologue)?.build_initiator()?;
        let msg1 = noise::write(&mut hs, &[])?;
        let hello = frame::encode(FrameType::Hello, &noise::first_body(MAGIC, offer, &msg1))?;
        Ok((
            ClientHandshake {
                hs,
                offer,
                pinned: gateway_keys.to_vec(),
                request,
                version: None,
            },
            hello,
        ))
    }

    /// Read the Challenge body, check the gateway's key against the pin and
    /// return the Credentials frame to send.
    pub fn read_challenge(&mut self, body: &[u8]) -> Result<(Vec<u8>, GatewayInfo), WireError> {
        if self.version.is_some() {
            return Err(WireError::State("challenge already read"));
        }
        let payload = noise::read(&mut self.hs, body)?;
        // Check the pin before sending anything that identifies the client.
        let presented = noise::remote_static(&self.hs)?;
        if !self.pinned.contains(&presented) {
            return Err(WireError::UntrustedPeerKey(presented));
        }
        let mut r = Reader::new(&payload, "challenge payload");
        let version = r.u8()?;
        if !self.offer.contains(version) {
            return Err(WireError::malformed(
                "challenge payload",
                "version outside the offer",
            ));
        }
        let gateway_id = r.name()?.to_owned();
        r.finish()?;
        self.version = Some(version);

        let mut creds = Vec::with_capacity(1 + 3 * 65);
        creds.push(version);
        put_name(&mut creds, &self.request.client_id);
        put_name(&mut creds, &self.request.tenant);
        put_name(&mut creds, &self.request.partition);
        let msg3 = noise::write(&mut self.hs, &creds)?;
        let frame = frame::encode(FrameType::Credentials, &msg3)?;
        Ok((
            frame,
            GatewayInfo {
                gateway_id,
                version,
            },
        ))
    }

    /// Read the Decision body (the first transport message from the gateway).
    pub fn read_decision(self, body: &[u8]) -> Result<Decision, WireError> {
        if self.version.is_none() {
            return Err(WireError::State("decision before challenge"));
        }
        let mut ts = self.hs.into_transport_mode()?;
        let mut buf = [0u8; 64];
        if body.len() > buf.len() {
            return Err(WireError::malformed("decision", "too long"));
        }
        let n = ts.read_message(body, &mut buf)?;
        Decision::decode(&buf[..n])
    }
}

// --------------------------------------------------------------- gateway side

/// The gateway's half of the outer handshake.
pub struct GatewayHandshake {
    hs: snow::HandshakeState,
    version: u8,
    offer: Offer,
}

impl GatewayHandshake {
    /// Read a Hello body; returns the handshake and the Challenge frame.
    /// An unsupported offer returns [`WireError::UnsupportedVersion`]: answer
    /// it with an Error frame.
    pub fn respond(
        key: &StaticKeypair,
        gateway_id: &str,
        hello_body: &[u8],
    ) -> Result<(Self, Vec<u8>), WireError> {
        Self::respond_with(key, gateway_id, hello_body, None)
    }

    /// [`GatewayHandshake::respond`] on the first stream of a QUIC
    /// connection, bound to it by its TLS exporter value (PROTOCOL.md §11.2).
    pub fn respond_bound(
        key: &StaticKeypair,
        gateway_id: &str,
        hello_body: &[u8],
        binding: &crate::quic::Binding,
    ) -> Result<(Self, Vec<u8>), WireError> {
        Self::respond_with(key, gateway_id, hello_body, Some(binding))
    }

    fn respond_with(
        key: &StaticKeypair,
        gateway_id: &str,
        hello_body: &[u8],
        binding: Option<&crate::quic::Binding>,
    ) -> Result<(Self, Vec<u8>), WireError> {
        let (offer, version, msg1) = noise::split_first_body(hello_body, MAGIC, Offer::OURS)?;
        let prologue = bound_prologue(offer, binding);
        let mut hs = noise::builder(key, &prologue)?.build_responder()?;
        let hello_payload = noise::read(&mut hs, msg1)?;
        if !hello_payload.is_empty() {
            return Err(WireError::malformed("hello", "message 1 carries a payload"));
        }
        let mut payload = Vec::with_capacity(66);
        payload.push(version);
        validate_name(gateway_id).map_err(|why| WireError::malformed("gateway_id", why))?;
        put_name(&mut payload, gateway_id);
        let msg2 = noise::write(&mut hs, &payload)?;
        let frame = frame::encode(FrameType::Challenge, &msg2)?;
        Ok((GatewayHandshake { hs, version, offer }, frame))
    }

    /// Read the Credentials body: the client proves its static key and says
    /// what it wants. Fails on a replayed or forged message.
    pub fn read_credentials(&mut self, body: &[u8]) -> Result<VerifiedClient, WireError> {
        let payload = noise::read(&mut self.hs, body)?;
        let static_key = noise::remote_static(&self.hs)?;
        let mut r = Reader::new(&payload, "credentials payload");
        let version = r.u8()?;
        if version != self.version || !self.offer.contains(version) {
            return Err(WireError::malformed(
                "credentials payload",
                "version mismatch",
            ));
        }
        let request = AccessRequest {
            client_id: r.name()?.to_owned(),
            tenant: r.name()?.to_owned(),
            partition: r.name()?.to_owned(),
        };
        r.finish()?;
        Ok(VerifiedClient {
            static_key,
            request,
            version,
        })
    }

    /// Encrypt the decision into a Decision frame; consumes the handshake.
    pub fn decision_frame(self, decision: Decision) -> Result<Vec<u8>, WireError> {
        if !self.hs.is_handshake_finished() {
            return Err(WireError::State("decision before credentials"));
        }
        let mut ts = self.hs.into_transport_mode()?;
        let mut buf = [0u8; 64];
        let n = ts.write_message(&decision.encode(), &mut buf)?;
        frame::encode(FrameType::Decision, &buf[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_OUTER_FRAME_LEN, decode};

    fn request() -> AccessRequest {
        AccessRequest {
            client_id: "app-1".into(),
            tenant: "acme".into(),
            partition: "p1".into(),
        }
    }

    fn body(bytes: &[u8]) -> Vec<u8> {
        let (frame, used) = decode(bytes, MAX_OUTER_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame.body.to_vec()
    }

    #[test]
    fn full_handshake_grants_and_authenticates_both_sides() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let (mut g, challenge) = GatewayHandshake::respond(&gw, "gw-1", &body(&hello)).unwrap();
        let (creds, info) = c.read_challenge(&body(&challenge)).unwrap();
        assert_eq!(info.gateway_id, "gw-1");
        assert_eq!(info.version, 1);
        let verified = g.read_credentials(&body(&creds)).unwrap();
        assert_eq!(verified.static_key, cl.public());
        assert_eq!(verified.request, request());
        let decision = g.decision_frame(Decision::GRANTED).unwrap();
        assert_eq!(
            c.read_decision(&body(&decision)).unwrap(),
            Decision::GRANTED
        );
    }

    #[test]
    fn a_hello_body_of_any_length_but_38_is_a_protocol_error() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (_, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let good = body(&hello);
        assert_eq!(good.len(), 38);
        for len in (0..38).chain([39, 40, 70]) {
            let mut bytes = good.clone();
            bytes.resize(len, 0x5a);
            let Err(e) = GatewayHandshake::respond(&gw, "gw-1", &bytes) else {
                panic!("a {len}-byte Hello was taken");
            };
            assert_eq!(e.code(), Code::ProtocolError, "{len} bytes: {e}");
        }
    }

    #[test]
    fn a_later_peer_with_a_longer_hello_still_learns_unsupported_version() {
        let gw = StaticKeypair::generate().unwrap();
        // Magic, an offer of versions 7..=9 only, and a first message of a
        // length this version does not know.
        let mut hello = b"HSMG".to_vec();
        hello.extend_from_slice(&[7, 9]);
        hello.extend_from_slice(&[0x5a; 80]);
        let Err(e) = GatewayHandshake::respond(&gw, "gw-1", &hello) else {
            panic!("taken");
        };
        assert_eq!(e.code(), Code::UnsupportedVersion, "{e}");
        // The same length with a version in common is malformed.
        hello[4..6].copy_from_slice(&[1, 9]);
        let Err(e) = GatewayHandshake::respond(&gw, "gw-1", &hello) else {
            panic!("taken");
        };
        assert_eq!(e.code(), Code::ProtocolError, "{e}");
    }

    #[test]
    fn a_client_pinning_two_keys_accepts_either_and_nothing_else() {
        let old = StaticKeypair::generate().unwrap();
        let new = StaticKeypair::generate().unwrap();
        let other = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let pins = [old.public(), new.public()];
        for gw in [&old, &new] {
            let (mut c, hello) = ClientHandshake::start_pinning(&cl, &pins, request()).unwrap();
            let (_, challenge) = GatewayHandshake::respond(gw, "gw-1", &body(&hello)).unwrap();
            assert!(c.read_challenge(&body(&challenge)).is_ok());
        }
        let (mut c, hello) = ClientHandshake::start_pinning(&cl, &pins, request()).unwrap();
        let (_, challenge) = GatewayHandshake::respond(&other, "gw-1", &body(&hello)).unwrap();
        assert_eq!(
            c.read_challenge(&body(&challenge)).unwrap_err(),
            WireError::UntrustedPeerKey(other.public())
        );
        assert!(ClientHandshake::start_pinning(&cl, &[], request()).is_err());
    }

    #[test]
    fn client_refuses_a_gateway_that_is_not_pinned() {
        let gw = StaticKeypair::generate().unwrap();
        let other = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(&cl, other.public(), request()).unwrap();
        let (_, challenge) = GatewayHandshake::respond(&gw, "gw-1", &body(&hello)).unwrap();
        assert_eq!(
            c.read_challenge(&body(&challenge)).unwrap_err(),
            WireError::UntrustedPeerKey(gw.public())
        );
    }

    #[test]
    fn replayed_credentials_fail_against_a_fresh_gateway_ephemeral() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let (mut g, challenge) = GatewayHandshake::respond(&gw, "gw-1", &body(&hello)).unwrap();
        let (creds, _) = c.read_challenge(&body(&challenge)).unwrap();
        g.read_credentials(&body(&creds)).unwrap();

        // An attacker replays the recorded Hello and Credentials.
        let (mut g2, _) = GatewayHandshake::respond(&gw, "gw-1", &body(&hello)).unwrap();
        let err = g2.read_credentials(&body(&creds)).unwrap_err();
        assert_eq!(err.code(), Code::HandshakeFailed);
    }

    #[test]
    fn refuses_an_offer_without_a_common_version() {
        let gw = StaticKeypair::generate().unwrap();
        let mut hello = b"HSMG".to_vec();
        hello.extend_from_slice(&[7, 9]);
        hello.extend_from_slice(&[0u8; 32]);
        let err = GatewayHandshake::respond(&gw, "gw-1", &hello)
            .err()
            .unwrap();
        assert_eq!(err, WireError::UnsupportedVersion { min: 7, max: 9 });
        assert_eq!(err.code(), Code::UnsupportedVersion);
    }

    #[test]
    fn a_changed_offer_breaks_the_handshake() {
        // The offer is bound by the prologue: rewriting it in flight fails.
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let mut b = body(&hello);
        b[4] = 0; // min version 0..=1 still negotiates 1
        let (_, challenge) = GatewayHandshake::respond(&gw, "gw-1", &b).unwrap();
        assert!(c.read_challenge(&body(&challenge)).is_err());
    }

    #[test]
    fn refuses_bad_magic_and_garbage() {
        let gw = StaticKeypair::generate().unwrap();
        assert_eq!(
            GatewayHandshake::respond(&gw, "gw-1", b"GET / HTTP/1.1")
                .err()
                .unwrap(),
            WireError::BadMagic
        );
        assert!(GatewayHandshake::respond(&gw, "gw-1", b"HSMG\x01\x01short").is_err());
    }

    #[test]
    fn decision_codes_round_trip() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let (mut c, hello) = ClientHandshake::start(&cl, gw.public(), request()).unwrap();
        let (mut g, challenge) = GatewayHandshake::respond(&gw, "gw-1", &body(&hello)).unwrap();
        let (creds, _) = c.read_challenge(&body(&challenge)).unwrap();
        g.read_credentials(&body(&creds)).unwrap();
        let refusal = Decision {
            code: Code::Unavailable,
            retry_after_secs: 5,
        };
        let frame = g.decision_frame(refusal).unwrap();
        assert_eq!(c.read_decision(&body(&frame)).unwrap(), refusal);
    }

    #[test]
    fn refuses_invalid_names_before_sending() {
        let gw = StaticKeypair::generate().unwrap();
        let cl = StaticKeypair::generate().unwrap();
        let mut req = request();
        req.partition = "no spaces".into();
        assert!(ClientHandshake::start(&cl, gw.public(), req).is_err());
    }

    proptest::proptest! {
        #[test]
        fn gateway_never_panics_on_any_hello(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1100)) {
            let gw = StaticKeypair::generate().unwrap();
            let _ = GatewayHandshake::respond(&gw, "gw-1", &bytes);
        }
    }
}
