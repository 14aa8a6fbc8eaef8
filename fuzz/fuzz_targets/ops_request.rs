//! The HSM request decoder (`hsmgate_wire::ops::Request::decode`, PROTOCOL.md
//! §7.1, §7.2, §7.6): what an HSM node reads out of every InnerData frame.
//!
//! Properties: a request that decodes re-encodes to exactly the bytes it
//! came from (so decode → encode → decode is the identity), and fits the
//! channel; every field stays within its documented limit; a request whose
//! op is unknown is never also decoded as a known one.
#![no_main]

use hsmgate_wire::inner::MAX_CHANNEL_PLAINTEXT;
use hsmgate_wire::ops::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let unknown = Request::unknown_op_id(data);
    let Ok((id, request)) = Request::decode(data) else {
        return;
    };
    assert!(unknown.is_none(), "a known op reported unknown");
    assert_eq!(u32::from_be_bytes([data[0], data[1], data[2], data[3]]), id);
    let encoded = request.encode(id).expect("a decoded request re-encodes");
    assert_eq!(encoded, data, "{request:?}");
    assert_eq!(Request::decode(&encoded).unwrap(), (id, request.clone()));
    assert!(encoded.len() <= MAX_CHANNEL_PLAINTEXT);
    assert!(request.since() <= ops::OPS_V2);
    assert!(!request.name().is_empty());
    match &request {
        Request::Random { len } => assert!((1..=ops::MAX_RANDOM).contains(&usize::from(*len))),
        Request::Sign { data, .. } => assert!(data.len() <= ops::MAX_DATA),
        Request::Encrypt { plaintext, aad, .. } => {
            assert!(plaintext.len() <= ops::MAX_ENCRYPT_PLAINTEXT);
            assert!(aad.len() <= ops::MAX_DATA);
            // Its decrypt request (ciphertext 28 bytes longer) fits a frame.
            assert!(encoded.len() + ops::CIPHERTEXT_OVERHEAD <= MAX_CHANNEL_PLAINTEXT);
        }
        Request::EncryptGcm { iv, plaintext, .. } => {
            assert_eq!(iv.len(), ops::GCM_IV_LEN);
            assert!(plaintext.len() <= ops::MAX_GCM_PLAINTEXT);
            assert!(encoded.len() + ops::GCM_TAG_LEN <= MAX_CHANNEL_PLAINTEXT);
        }
        Request::DecryptGcm { iv, .. } => assert_eq!(iv.len(), ops::GCM_IV_LEN),
        Request::SignDigest { scheme, digest, .. } => {
            assert!(scheme.digest_lens().contains(&digest.len()));
        }
        Request::DecryptRsa { ciphertext, .. } => {
            assert!(ciphertext.len() <= ops::MAX_RSA_CIPHERTEXT);
        }
        Request::SetKeyId { id, .. } => assert!(id.len() <= ops::MAX_ID),
        Request::PutObject { id, value, .. } => {
            assert!(id.len() <= ops::MAX_ID);
            assert!(value.len() <= ops::MAX_OBJECT);
        }
        _ => {}
    }
});
