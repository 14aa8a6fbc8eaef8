//! The HSM reply decoder (`hsmgate_wire::ops::Response::decode`, PROTOCOL.md
//! §7.3, §7.4, §7.6): what a client reads out of every InnerData frame from
//! a node, in the layout of either inner version.
//!
//! Properties: a response that decodes re-encodes, in the same version, to
//! exactly the bytes it came from (so decode → encode → decode is the
//! identity); a reply of version 2 is never read under version 1; listings
//! stay within their bounds; `answers` is consistent with the reply's kind.
#![no_main]

use hsmgate_wire::ops::{self, Reply, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let version = 1 + selector % 2;
    let Ok(response) = Response::decode(bytes, version) else {
        return;
    };
    let encoded = response.encode(version);
    assert_eq!(encoded, bytes, "{response:?}");
    assert_eq!(Response::decode(&encoded, version).unwrap(), response);
    if version >= ops::OPS_V2 {
        return;
    }
    // Under version 1: only version 1 replies, key types and key sizes.
    let Ok(reply) = &response.result else {
        return;
    };
    match reply {
        Reply::Keys(keys) => {
            assert!(keys.len() <= ops::MAX_KEYS);
            for k in keys {
                assert!(k.kind.since() <= version);
                assert!(k.public_key.len() <= ops::MAX_PUBLIC_KEY_V1);
                assert!(k.id.is_empty());
            }
        }
        Reply::Key(k) => {
            assert!(k.kind.since() <= version);
            assert!(k.public_key.len() <= ops::MAX_PUBLIC_KEY_V1);
        }
        Reply::Random(bytes) => {
            let len = u16::try_from(bytes.len()).unwrap();
            assert!(reply.answers(&Request::Random { len }));
            assert!(!reply.answers(&Request::Random {
                len: len.wrapping_add(1)
            }));
        }
        other => {
            assert!(
                !matches!(
                    other,
                    Reply::DigestSignature(_)
                        | Reply::RsaPlaintext(_)
                        | Reply::KeyDeleted
                        | Reply::KeyIdSet
                        | Reply::GcmCiphertext(_)
                        | Reply::GcmPlaintext(_)
                        | Reply::ObjectStored(_)
                        | Reply::Objects(_)
                        | Reply::Object { .. }
                        | Reply::ObjectDeleted
                        | Reply::KeyRefs(_)
                        | Reply::KeyDetails(_)
                ),
                "a version 2 reply read under version 1"
            );
            assert!(!other.answers(&Request::Ping) || matches!(other, Reply::Pong));
        }
    }
});
