//! The Grant frame (PROTOCOL.md §8.3, §8.4): the node's split of a Grant
//! frame body (`SealedGrant::parse`), the grant decoder
//! (`Grant::decode`) and the node's whole check (`GatewayTrust::verify`).
//!
//! Properties:
//! - a grant that decodes encodes to bytes that decode to the same grant;
//!   re-encoding is stable (encode → decode → encode gives the same bytes);
//! - a decoded grant, sealed under a live grant key, fits a gateway–node
//!   frame and verifies to exactly that grant, once: the same frame again is
//!   a replay;
//! - bytes the fuzzer makes up never verify (they would need the key);
//! - `SealedGrant::parse` takes the key id and counter from the first 16
//!   bytes, never accepts counter 0 or a body shorter than a tag.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hsmgate_fuzz::fixed_keypair;
use hsmgate_hsm::GatewayTrust;
use hsmgate_hsm::trust::GrantRefusal;
use hsmgate_wire::TAG_LEN;
use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::grant::{Grant, GrantKey, SealedGrant};
use libfuzzer_sys::fuzz_target;

fn trust() -> &'static Arc<GatewayTrust> {
    static TRUST: OnceLock<Arc<GatewayTrust>> = OnceLock::new();
    TRUST.get_or_init(|| Arc::new(GatewayTrust::of([fixed_keypair(30).public()])))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let trust = trust();

    // The frame body as the node receives it.
    if let Ok(sealed) = SealedGrant::parse(bytes) {
        assert_eq!(sealed.key_id.to_be_bytes(), bytes[..8]);
        assert_eq!(sealed.counter.to_be_bytes(), bytes[8..16]);
        assert_ne!(sealed.counter, 0);
        assert!(bytes.len() >= 16 + TAG_LEN);
    } else {
        assert!(bytes.len() < 16 + TAG_LEN || bytes[8..16] == [0; 8]);
    }
    // Made-up bytes never verify, whatever key is live.
    let (_registration, key_id, secret) = trust.register(fixed_keypair(30).public());
    let mut forged = bytes.to_vec();
    if selector & 1 == 1 && forged.len() >= 8 {
        // Name the live key, so that the seal itself is what refuses it.
        forged[..8].copy_from_slice(&key_id.to_be_bytes());
    }
    assert!(trust.verify(&forged, at(0)).is_err());

    // The grant's plaintext.
    let Ok(grant) = Grant::decode(bytes) else {
        return;
    };
    let encoded = grant.encode().expect("a decoded grant re-encodes");
    let back = Grant::decode(&encoded).expect("an encoded grant decodes");
    assert_eq!(back, grant, "decode → encode → decode changed the grant");
    assert_eq!(back.encode().unwrap(), encoded);

    // Sealed under a live key, it verifies once, to the same grant.
    let key = GrantKey::new(key_id, &secret);
    let counter = u64::from(selector) + 1;
    let frame_bytes = key.seal(counter, &grant).unwrap();
    let (f, used) = frame::decode(&frame_bytes, MAX_GATEWAY_NODE_FRAME_LEN)
        .unwrap()
        .expect("a sealed grant fits a gateway–node frame");
    assert_eq!(used, frame_bytes.len());
    assert_eq!(f.kind, FrameType::Grant);
    let verified = trust.verify(f.body, at(grant.expires_at)).unwrap();
    assert_eq!(verified.grant, grant);
    assert_eq!(verified.gateway_key, fixed_keypair(30).public());
    assert_eq!(
        trust.verify(f.body, at(grant.expires_at)).unwrap_err(),
        GrantRefusal::Replayed
    );
});
