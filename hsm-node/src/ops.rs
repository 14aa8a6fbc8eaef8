//! Key operations: what the node does with a decoded [`Request`] (PROTOCOL.md §7).
//!
//! Each operation maps its failure to an [`ops::Status`](Status) the client
//! can act on. Algorithms:
//!
//! - Ed25519: RFC 8032 signatures, 64 bytes; verification is `verify_strict`.
//! - P-256: ECDSA over SHA-256 with deterministic nonces (RFC 6979). Signatures
//!   are the fixed 64-byte `r || s` form (each big-endian, 32 bytes), not DER;
//!   a DER signature given to Verify reads as not verified.
//! - AES-256-GCM: a random 12-byte nonce per Encrypt; the ciphertext is
//!   `nonce || ciphertext || tag` and the caller's `aad` is authenticated.
//!
//! A signature that cannot even be parsed verifies as `false`, never as an
//! error, so that Verify answers the one question it is asked.

use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hsmgate_wire::ops::{KeyType, Reply, Request, Status};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::keystore::{KeyStore, StoredKey};

/// AES-GCM nonce length, the prefix of every ciphertext.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length, the suffix of every ciphertext.
pub const TAG_LEN: usize = 16;

/// Run `request` against a partition's key store.
///
/// Every request that uses a key touches the key store's file (it is
/// reloaded when another node changed it; GenerateKey locks, writes and
/// fsyncs it). On an async runtime, run the requests for which
/// [`is_blocking`] is true on a blocking thread.
pub fn execute(store: &Mutex<KeyStore>, request: Request) -> Result<Reply, Status> {
    match request {
        Request::Ping => Ok(Reply::Pong),
        Request::Random { len } => {
            let mut out = vec![0u8; usize::from(len)];
            OsRng.fill_bytes(&mut out);
            Ok(Reply::Random(out))
        }
        Request::GenerateKey { kind, label } => {
            let mut store = store.lock().map_err(|_| Status::Internal)?;
            store.generate(kind, &label).map(Reply::Key)
        }
        Request::ListKeys => {
            let mut store = store.lock().map_err(|_| Status::Internal)?;
            store.list().map(Reply::Keys)
        }
        Request::Sign { label, data } => sign(&*key(store, &label)?, &data).map(Reply::Signature),
        Request::Verify {
            label,
            data,
            signature,
        } => verify(&*key(store, &label)?, &data, &signature).map(Reply::Verified),
        Request::Encrypt {
            label,
            plaintext,
            aad,
        } => encrypt(&*key(store, &label)?, &plaintext, &aad).map(Reply::Ciphertext),
        Request::Decrypt {
            label,
            ciphertext,
            aad,
        } => decrypt(&*key(store, &label)?, &ciphertext, &aad).map(Reply::Plaintext),
    }
}

/// Whether `request` may block on disk I/O (and so belongs on a blocking
/// thread): all but Ping and Random use the key store's file.
pub fn is_blocking(request: &Request) -> bool {
    !matches!(request, Request::Ping | Request::Random { .. })
}

/// Look a key up; the lock is released before any cryptography runs.
fn key(store: &Mutex<KeyStore>, label: &str) -> Result<std::sync::Arc<StoredKey>, Status> {
    store.lock().map_err(|_| Status::Internal)?.get(label)
}

fn sign(key: &StoredKey, data: &[u8]) -> Result<Vec<u8>, Status> {
    use ed25519_dalek::Signer as _;
    match key.kind {
        KeyType::Ed25519 => {
            let sk = ed25519_signing_key(key)?;
            Ok(sk.sign(data).to_bytes().to_vec())
        }
        KeyType::P256 => {
            let sk =
                p256::ecdsa::SigningKey::from_slice(key.secret()).map_err(|_| Status::Internal)?;
            let sig: p256::ecdsa::Signature = sk.sign(data);
            Ok(sig.to_bytes().to_vec())
        }
        KeyType::Aes256 => Err(Status::InvalidArgument),
    }
}

fn verify(key: &StoredKey, data: &[u8], signature: &[u8]) -> Result<bool, Status> {
    use p256::ecdsa::signature::Verifier as _;
    match key.kind {
        KeyType::Ed25519 => {
            let pk: &[u8; 32] = key.public().try_into().map_err(|_| Status::Internal)?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| Status::Internal)?;
            let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                return Ok(false);
            };
            Ok(vk.verify_strict(data, &sig).is_ok())
        }
        KeyType::P256 => {
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(key.public())
                .map_err(|_| Status::Internal)?;
            let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                return Ok(false);
            };
            Ok(vk.verify(data, &sig).is_ok())
        }
        KeyType::Aes256 => Err(Status::InvalidArgument),
    }
}

fn encrypt(key: &StoredKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Status> {
    let cipher = aes_key(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Status::Internal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn decrypt(key: &StoredKey, ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Status> {
    let cipher = aes_key(key)?;
    if ciphertext.len() < NONCE_LEN + TAG_LEN {
        return Err(Status::InvalidArgument);
    }
    let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| Status::CryptoFailed)
}

fn aes_key(key: &StoredKey) -> Result<Aes256Gcm, Status> {
    match key.kind {
        KeyType::Aes256 => Aes256Gcm::new_from_slice(key.secret()).map_err(|_| Status::Internal),
        KeyType::Ed25519 | KeyType::P256 => Err(Status::InvalidArgument),
    }
}

fn ed25519_signing_key(key: &StoredKey) -> Result<ed25519_dalek::SigningKey, Status> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    if key.secret().len() != bytes.len() {
        return Err(Status::Internal);
    }
    bytes.copy_from_slice(key.secret());
    Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_wire::ops::KeyInfo;

    fn store() -> (tempfile::TempDir, Mutex<KeyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), 8).unwrap();
        (dir, Mutex::new(store))
    }

    fn generate(store: &Mutex<KeyStore>, kind: KeyType, label: &str) -> KeyInfo {
        match execute(
            store,
            Request::GenerateKey {
                kind,
                label: label.into(),
            },
        ) {
            Ok(Reply::Key(info)) => info,
            other => panic!("generate: {other:?}"),
        }
    }

    fn sign_req(store: &Mutex<KeyStore>, label: &str, data: &[u8]) -> Result<Reply, Status> {
        execute(
            store,
            Request::Sign {
                label: label.into(),
                data: data.to_vec(),
            },
        )
    }

    fn verify_req(
        store: &Mutex<KeyStore>,
        label: &str,
        data: &[u8],
        signature: &[u8],
    ) -> Result<Reply, Status> {
        execute(
            store,
            Request::Verify {
                label: label.into(),
                data: data.to_vec(),
                signature: signature.to_vec(),
            },
        )
    }

    #[test]
    fn ping_random_and_list() {
        let (_d, s) = store();
        assert_eq!(execute(&s, Request::Ping), Ok(Reply::Pong));
        match execute(&s, Request::Random { len: 48 }) {
            Ok(Reply::Random(b)) => assert_eq!(b.len(), 48),
            other => panic!("{other:?}"),
        }
        let a = generate(&s, KeyType::Aes256, "b");
        let e = generate(&s, KeyType::Ed25519, "a");
        assert_eq!(execute(&s, Request::ListKeys), Ok(Reply::Keys(vec![e, a])));
    }

    #[test]
    fn signs_and_verifies_with_both_signature_key_types() {
        let (_d, s) = store();
        for (kind, label) in [(KeyType::Ed25519, "ed"), (KeyType::P256, "p")] {
            let info = generate(&s, kind, label);
            let Ok(Reply::Signature(sig)) = sign_req(&s, label, b"message") else {
                panic!("sign {label}");
            };
            assert_eq!(sig.len(), 64, "{label}");
            assert_eq!(
                verify_req(&s, label, b"message", &sig),
                Ok(Reply::Verified(true))
            );
            assert_eq!(
                verify_req(&s, label, b"other", &sig),
                Ok(Reply::Verified(false))
            );
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert_eq!(
                verify_req(&s, label, b"message", &bad),
                Ok(Reply::Verified(false))
            );
            // Malformed signature bytes read as "not verified".
            assert_eq!(
                verify_req(&s, label, b"message", &[1, 2, 3]),
                Ok(Reply::Verified(false))
            );
            assert_eq!(
                verify_req(&s, label, b"message", &[]),
                Ok(Reply::Verified(false))
            );
            // The signature checks out with the published public key too.
            match kind {
                KeyType::Ed25519 => {
                    let pk: [u8; 32] = info.public_key.as_slice().try_into().unwrap();
                    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
                    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
                    vk.verify_strict(b"message", &sig).unwrap();
                }
                _ => {
                    use p256::ecdsa::signature::Verifier as _;
                    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&info.public_key).unwrap();
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    vk.verify(b"message", &sig).unwrap();
                }
            }
        }
    }

    #[test]
    fn encrypts_and_decrypts_with_aad() {
        let (_d, s) = store();
        generate(&s, KeyType::Aes256, "aes");
        let encrypt = |pt: &[u8], aad: &[u8]| match execute(
            &s,
            Request::Encrypt {
                label: "aes".into(),
                plaintext: pt.to_vec(),
                aad: aad.to_vec(),
            },
        ) {
            Ok(Reply::Ciphertext(c)) => c,
            other => panic!("{other:?}"),
        };
        let decrypt = |ct: &[u8], aad: &[u8]| {
            execute(
                &s,
                Request::Decrypt {
                    label: "aes".into(),
                    ciphertext: ct.to_vec(),
                    aad: aad.to_vec(),
                },
            )
        };
        let ct = encrypt(b"hello", b"ctx");
        assert_eq!(ct.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_ne!(encrypt(b"hello", b"ctx"), ct, "fresh nonce per call");
        assert_eq!(
            decrypt(&ct, b"ctx"),
            Ok(Reply::Plaintext(b"hello".to_vec()))
        );
        assert_eq!(decrypt(&ct, b"other"), Err(Status::CryptoFailed));
        let mut tampered = ct.clone();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(decrypt(&tampered, b"ctx"), Err(Status::CryptoFailed));
        assert_eq!(decrypt(&ct[..10], b"ctx"), Err(Status::InvalidArgument));
        let empty = encrypt(b"", b"");
        assert_eq!(decrypt(&empty, b""), Ok(Reply::Plaintext(vec![])));
    }

    #[test]
    fn refuses_the_wrong_key_type_unknown_labels_and_duplicates() {
        let (_d, s) = store();
        generate(&s, KeyType::Aes256, "aes");
        generate(&s, KeyType::Ed25519, "ed");
        assert_eq!(sign_req(&s, "aes", b"x"), Err(Status::InvalidArgument));
        assert_eq!(
            verify_req(&s, "aes", b"x", &[0; 64]),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            execute(
                &s,
                Request::Encrypt {
                    label: "ed".into(),
                    plaintext: vec![1],
                    aad: vec![]
                }
            ),
            Err(Status::InvalidArgument)
        );
        assert_eq!(sign_req(&s, "missing", b"x"), Err(Status::NotFound));
        assert_eq!(
            execute(
                &s,
                Request::Decrypt {
                    label: "missing".into(),
                    ciphertext: vec![0; 40],
                    aad: vec![]
                }
            ),
            Err(Status::NotFound)
        );
        assert_eq!(
            execute(
                &s,
                Request::GenerateKey {
                    kind: KeyType::P256,
                    label: "ed".into()
                }
            ),
            Err(Status::AlreadyExists)
        );
    }

    #[test]
    fn refuses_keys_beyond_the_partition_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = Mutex::new(KeyStore::open(dir.path(), 1).unwrap());
        generate(&s, KeyType::Aes256, "one");
        assert_eq!(
            execute(
                &s,
                Request::GenerateKey {
                    kind: KeyType::Aes256,
                    label: "two".into()
                }
            ),
            Err(Status::LimitReached)
        );
    }

    #[test]
    fn two_stores_on_one_directory_serve_each_others_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = Mutex::new(KeyStore::open(dir.path(), 8).unwrap());
        let b = Mutex::new(KeyStore::open(dir.path(), 8).unwrap());
        let ed = generate(&a, KeyType::Ed25519, "ed");
        let Ok(Reply::Signature(sig)) = sign_req(&b, "ed", b"message") else {
            panic!("sign through the other store");
        };
        assert_eq!(
            verify_req(&a, "ed", b"message", &sig),
            Ok(Reply::Verified(true))
        );
        let aes = generate(&b, KeyType::Aes256, "aes");
        let Ok(Reply::Ciphertext(ct)) = execute(
            &b,
            Request::Encrypt {
                label: "aes".into(),
                plaintext: b"hello".to_vec(),
                aad: vec![],
            },
        ) else {
            panic!("encrypt");
        };
        assert_eq!(
            execute(
                &a,
                Request::Decrypt {
                    label: "aes".into(),
                    ciphertext: ct,
                    aad: vec![],
                },
            ),
            Ok(Reply::Plaintext(b"hello".to_vec()))
        );
        assert_eq!(
            execute(&a, Request::ListKeys),
            Ok(Reply::Keys(vec![aes, ed]))
        );
        assert_eq!(
            execute(
                &a,
                Request::GenerateKey {
                    kind: KeyType::P256,
                    label: "aes".into()
                }
            ),
            Err(Status::AlreadyExists)
        );
    }

    #[test]
    fn every_key_operation_runs_on_a_blocking_thread() {
        assert!(!is_blocking(&Request::Ping));
        assert!(!is_blocking(&Request::Random { len: 1 }));
        assert!(is_blocking(&Request::ListKeys));
        assert!(is_blocking(&Request::Sign {
            label: "k".into(),
            data: vec![]
        }));
        assert!(is_blocking(&Request::GenerateKey {
            kind: KeyType::Aes256,
            label: "k".into()
        }));
    }
}
