//! Key operations: what the node does with a decoded [`Request`]
//! (PROTOCOL.md §7, §7.6 for version 2).
//!
//! Each operation maps its failure to an [`ops::Status`](Status) the client
//! can act on. Algorithms:
//!
//! - Ed25519: RFC 8032 signatures, 64 bytes; verification is `verify_strict`.
//! - P-256 / P-384: ECDSA over SHA-256 / SHA-384 (messages) or over a given
//!   digest (`sign_digest`), deterministic nonces (RFC 6979). Signatures are
//!   the fixed `r || s` form (32 / 48 bytes each, big-endian), not DER; a DER
//!   signature given to Verify reads as not verified.
//! - RSA (AWS-LC, constant time): RSASSA-PKCS1-v1_5 with SHA-256 over
//!   messages; PKCS#1 v1.5 and PSS over a given SHA-2 digest; RSAES-OAEP
//!   decryption with SHA-1 or SHA-2 (no PKCS#1 v1.5 decryption: its padding
//!   oracle cannot be closed at this interface).
//! - AES-256-GCM: `encrypt` draws a random 12-byte nonce and returns
//!   `nonce || ciphertext || tag`; `encrypt_gcm` takes the caller's 12-byte
//!   IV (PKCS#11 `CKM_AES_GCM`) and returns `ciphertext || tag`.
//!
//! A signature that cannot even be parsed verifies as `false`, never as an
//! error, so that Verify answers the one question it is asked.

use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{self as lc_signature, RsaEncoding};
use hsmgate_wire::ops::{KeyRef, KeyType, OaepHash, Reply, Request, SignScheme, Status};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::keystore::{KeyStore, StoredKey};

/// AES-GCM nonce length, the prefix of every `encrypt` ciphertext.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length, the suffix of every ciphertext.
pub const TAG_LEN: usize = 16;

/// Run `request` against a partition's key store, in a session of inner
/// protocol `version` (a version 1 session sees only keys of version 1
/// types).
///
/// Every request that uses a key touches the key store's file (it is
/// reloaded when another node changed it; changes lock, write and fsync
/// it). On an async runtime, run the requests for which [`is_blocking`] is
/// true on a blocking thread.
pub fn execute(store: &Mutex<KeyStore>, request: Request, version: u8) -> Result<Reply, Status> {
    let locked = || store.lock().map_err(|_| Status::Internal);
    match request {
        Request::Ping => Ok(Reply::Pong),
        Request::Random { len } => {
            let mut out = vec![0u8; usize::from(len)];
            OsRng.fill_bytes(&mut out);
            Ok(Reply::Random(out))
        }
        Request::GenerateKey { kind, label } => locked()?.generate(kind, &label).map(Reply::Key),
        Request::ListKeys => {
            let keys = locked()?.list()?;
            Ok(Reply::Keys(
                keys.into_iter()
                    .filter(|k| k.kind.since() <= version)
                    .collect(),
            ))
        }
        Request::Sign { label, data } => {
            sign(&*key(store, &label, version)?, &data).map(Reply::Signature)
        }
        Request::Verify {
            label,
            data,
            signature,
        } => {
            let key = key(store, &label, version)?;
            verify(key.kind, key.public(), &data, &signature).map(Reply::Verified)
        }
        Request::Encrypt {
            label,
            plaintext,
            aad,
        } => encrypt(&*key(store, &label, version)?, &plaintext, &aad).map(Reply::Ciphertext),
        Request::Decrypt {
            label,
            ciphertext,
            aad,
        } => decrypt(&*key(store, &label, version)?, &ciphertext, &aad).map(Reply::Plaintext),
        Request::SignDigest {
            label,
            scheme,
            digest,
        } => {
            sign_digest(&*key(store, &label, version)?, scheme, &digest).map(Reply::DigestSignature)
        }
        Request::DecryptRsa {
            label,
            hash,
            ciphertext,
        } => decrypt_rsa(&*key(store, &label, version)?, hash, &ciphertext)
            .map(|p| Reply::RsaPlaintext(p.to_vec())),
        Request::DeleteKey { label } => locked()?.delete(&label).map(|()| Reply::KeyDeleted),
        Request::SetKeyId { label, id } => locked()?.set_id(&label, &id).map(|()| Reply::KeyIdSet),
        Request::EncryptGcm {
            label,
            iv,
            plaintext,
            aad,
        } => {
            let cipher = aes_key(&*key(store, &label, version)?)?;
            cipher
                .encrypt(
                    Nonce::from_slice(&iv),
                    Payload {
                        msg: &plaintext,
                        aad: &aad,
                    },
                )
                .map(Reply::GcmCiphertext)
                .map_err(|_| Status::Internal)
        }
        Request::DecryptGcm {
            label,
            iv,
            ciphertext,
            aad,
        } => {
            let cipher = aes_key(&*key(store, &label, version)?)?;
            if ciphertext.len() < TAG_LEN {
                return Err(Status::InvalidArgument);
            }
            cipher
                .decrypt(
                    Nonce::from_slice(&iv),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad,
                    },
                )
                .map(Reply::GcmPlaintext)
                .map_err(|_| Status::CryptoFailed)
        }
        Request::PutObject { label, id, value } => locked()?
            .put_object(&label, &id, &value)
            .map(Reply::ObjectStored),
        Request::ListObjects => Ok(Reply::Objects(
            locked()?.objects()?.iter().map(|o| o.info()).collect(),
        )),
        Request::GetObject { label } => {
            let object = locked()?.object(&label)?;
            Ok(Reply::Object {
                info: object.info(),
                value: object.value.clone(),
            })
        }
        Request::DeleteObject { label } => locked()?
            .delete_object(&label)
            .map(|()| Reply::ObjectDeleted),
        Request::ListKeyRefs => Ok(Reply::KeyRefs(
            locked()?
                .list()?
                .into_iter()
                .map(|k| KeyRef {
                    kind: k.kind,
                    label: k.label,
                    id: k.id,
                })
                .collect(),
        )),
        Request::GetKey { label } => Ok(Reply::KeyDetails(key(store, &label, version)?.info())),
    }
}

/// Whether `request` may block on disk I/O or a long computation (and so
/// belongs on a blocking thread): all but Ping and Random use the key
/// store's file.
pub fn is_blocking(request: &Request) -> bool {
    !matches!(request, Request::Ping | Request::Random { .. })
}

/// Look a key up; the lock is released before any cryptography runs. A
/// session of an older version does not see keys of later types (they are
/// `not_found` there, as in its `list_keys`).
fn key(
    store: &Mutex<KeyStore>,
    label: &str,
    version: u8,
) -> Result<std::sync::Arc<StoredKey>, Status> {
    let key = store.lock().map_err(|_| Status::Internal)?.get(label)?;
    if key.kind.since() > version {
        return Err(Status::NotFound);
    }
    Ok(key)
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
        KeyType::P384 => {
            let sk =
                p384::ecdsa::SigningKey::from_slice(key.secret()).map_err(|_| Status::Internal)?;
            let sig: p384::ecdsa::Signature = sk.sign(data);
            Ok(sig.to_bytes().to_vec())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let digest = digest::digest(&digest::SHA256, data);
            rsa_sign(key, &lc_signature::RSA_PKCS1_SHA256, &digest)
        }
        KeyType::Aes256 => Err(Status::InvalidArgument),
    }
}

/// Check `signature` over `data` with a public key of `kind` (§7.5): the
/// one verification of both stores, since it needs no secret.
pub(crate) fn verify(
    kind: KeyType,
    public: &[u8],
    data: &[u8],
    signature: &[u8],
) -> Result<bool, Status> {
    use p256::ecdsa::signature::Verifier as _;
    match kind {
        KeyType::Ed25519 => {
            let pk: &[u8; 32] = public.try_into().map_err(|_| Status::Internal)?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| Status::Internal)?;
            let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                return Ok(false);
            };
            Ok(vk.verify_strict(data, &sig).is_ok())
        }
        KeyType::P256 => {
            let vk =
                p256::ecdsa::VerifyingKey::from_sec1_bytes(public).map_err(|_| Status::Internal)?;
            let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                return Ok(false);
            };
            Ok(vk.verify(data, &sig).is_ok())
        }
        KeyType::P384 => {
            let vk =
                p384::ecdsa::VerifyingKey::from_sec1_bytes(public).map_err(|_| Status::Internal)?;
            let Ok(sig) = p384::ecdsa::Signature::from_slice(signature) else {
                return Ok(false);
            };
            Ok(vk.verify(data, &sig).is_ok())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let public = lc_signature::UnparsedPublicKey::new(
                &lc_signature::RSA_PKCS1_2048_8192_SHA256,
                public,
            );
            Ok(public.verify(data, signature).is_ok())
        }
        KeyType::Aes256 => Err(Status::InvalidArgument),
    }
}

fn sign_digest(key: &StoredKey, scheme: SignScheme, digest: &[u8]) -> Result<Vec<u8>, Status> {
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;
    match (scheme, key.kind) {
        (SignScheme::Ecdsa, KeyType::P256) => {
            let sk =
                p256::ecdsa::SigningKey::from_slice(key.secret()).map_err(|_| Status::Internal)?;
            let sig: p256::ecdsa::Signature = sk
                .sign_prehash(digest)
                .map_err(|_| Status::InvalidArgument)?;
            Ok(sig.to_bytes().to_vec())
        }
        (SignScheme::Ecdsa, KeyType::P384) => {
            let sk =
                p384::ecdsa::SigningKey::from_slice(key.secret()).map_err(|_| Status::Internal)?;
            let sig: p384::ecdsa::Signature = sk
                .sign_prehash(digest)
                .map_err(|_| Status::InvalidArgument)?;
            Ok(sig.to_bytes().to_vec())
        }
        (SignScheme::Ecdsa, _) => Err(Status::InvalidArgument),
        (SignScheme::RsaPkcs1Raw, kind) if kind.is_rsa() => {
            crate::rsa_raw::sign_pkcs1_raw(key.secret(), digest).ok_or(Status::InvalidArgument)
        }
        (rsa_scheme, kind) if kind.is_rsa() => {
            let (encoding, hash): (&'static dyn RsaEncoding, _) = match rsa_scheme {
                SignScheme::RsaPkcs1Sha256 => (&lc_signature::RSA_PKCS1_SHA256, &digest::SHA256),
                SignScheme::RsaPkcs1Sha384 => (&lc_signature::RSA_PKCS1_SHA384, &digest::SHA384),
                SignScheme::RsaPkcs1Sha512 => (&lc_signature::RSA_PKCS1_SHA512, &digest::SHA512),
                SignScheme::RsaPssSha256 => (&lc_signature::RSA_PSS_SHA256, &digest::SHA256),
                SignScheme::RsaPssSha384 => (&lc_signature::RSA_PSS_SHA384, &digest::SHA384),
                SignScheme::RsaPssSha512 => (&lc_signature::RSA_PSS_SHA512, &digest::SHA512),
                SignScheme::Ecdsa | SignScheme::RsaPkcs1Raw => {
                    return Err(Status::InvalidArgument);
                }
            };
            let digest =
                Digest::import_less_safe(digest, hash).map_err(|_| Status::InvalidArgument)?;
            rsa_sign(key, encoding, &digest)
        }
        _ => Err(Status::InvalidArgument),
    }
}

fn rsa_sign(
    key: &StoredKey,
    encoding: &'static dyn RsaEncoding,
    digest: &Digest,
) -> Result<Vec<u8>, Status> {
    if !key.kind.is_rsa() {
        return Err(Status::InvalidArgument);
    }
    let pair = crate::keys::rsa_key_pair(key.secret()).ok_or(Status::Internal)?;
    let mut signature = vec![0u8; pair.public_modulus_len()];
    pair.sign_digest(encoding, digest, &mut signature)
        .map_err(|_| Status::Internal)?;
    Ok(signature)
}

fn decrypt_rsa(
    key: &StoredKey,
    hash: OaepHash,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Status> {
    use aws_lc_rs::rsa::{
        OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OAEP_SHA384_MGF1SHA384, OAEP_SHA512_MGF1SHA512,
        OaepPrivateDecryptingKey, PrivateDecryptingKey,
    };
    if !key.kind.is_rsa() {
        return Err(Status::InvalidArgument);
    }
    let private = PrivateDecryptingKey::from_pkcs8(key.secret()).map_err(|_| Status::Internal)?;
    let oaep = OaepPrivateDecryptingKey::new(private).map_err(|_| Status::Internal)?;
    if ciphertext.len() != oaep.key_size_bytes() {
        return Err(Status::InvalidArgument);
    }
    let algorithm = match hash {
        OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
        OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
        OaepHash::Sha384 => &OAEP_SHA384_MGF1SHA384,
        OaepHash::Sha512 => &OAEP_SHA512_MGF1SHA512,
    };
    let mut out = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
    let n = oaep
        .decrypt(algorithm, ciphertext, &mut out, None)
        .map_err(|_| Status::CryptoFailed)?
        .len();
    out.truncate(n);
    Ok(out)
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
        _ => Err(Status::InvalidArgument),
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

    fn execute_v2(store: &Mutex<KeyStore>, request: Request) -> Result<Reply, Status> {
        execute(store, request, hsmgate_wire::ops::OPS_V2)
    }

    fn store() -> (tempfile::TempDir, Mutex<KeyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), 8).unwrap();
        (dir, Mutex::new(store))
    }

    fn generate(store: &Mutex<KeyStore>, kind: KeyType, label: &str) -> KeyInfo {
        match execute_v2(
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
        execute_v2(
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
        execute_v2(
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
        assert_eq!(execute_v2(&s, Request::Ping), Ok(Reply::Pong));
        match execute_v2(&s, Request::Random { len: 48 }) {
            Ok(Reply::Random(b)) => assert_eq!(b.len(), 48),
            other => panic!("{other:?}"),
        }
        let a = generate(&s, KeyType::Aes256, "b");
        let e = generate(&s, KeyType::Ed25519, "a");
        assert_eq!(
            execute_v2(&s, Request::ListKeys),
            Ok(Reply::Keys(vec![e, a]))
        );
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
        let encrypt = |pt: &[u8], aad: &[u8]| match execute_v2(
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
            execute_v2(
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
            execute_v2(
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
            execute_v2(
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
            execute_v2(
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
            execute_v2(
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
        let Ok(Reply::Ciphertext(ct)) = execute_v2(
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
            execute_v2(
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
            execute_v2(&a, Request::ListKeys),
            Ok(Reply::Keys(vec![aes, ed]))
        );
        assert_eq!(
            execute_v2(
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

    // ------------------------------------------------------- version 2 ops

    /// DER SubjectPublicKeyInfo around a DER RSAPublicKey.
    fn spki(rsa_public: &[u8]) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let n = body.len();
            if n < 0x80 {
                out.push(n as u8);
            } else if n < 0x100 {
                out.extend_from_slice(&[0x81, n as u8]);
            } else {
                out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
            }
            out.extend_from_slice(body);
            out
        }
        // AlgorithmIdentifier { rsaEncryption, NULL }
        let alg = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let bits = tlv(0x03, &[&[0u8][..], rsa_public].concat());
        tlv(0x30, &[&alg[..], &bits].concat())
    }

    fn ok(result: Result<Reply, Status>) -> Reply {
        result.unwrap_or_else(|status| panic!("status {status:?}"))
    }

    #[test]
    fn rsa_keys_sign_digests_and_messages_and_decrypt_oaep() {
        use aws_lc_rs::rsa::{
            OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey,
        };
        let (_d, s) = store();
        let info = generate(&s, KeyType::Rsa2048, "rsa");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"message");
        for (scheme, params) in [
            (
                SignScheme::RsaPkcs1Sha256,
                &lc_signature::RSA_PKCS1_2048_8192_SHA256
                    as &dyn lc_signature::VerificationAlgorithm,
            ),
            (
                SignScheme::RsaPssSha256,
                &lc_signature::RSA_PSS_2048_8192_SHA256,
            ),
        ] {
            let Reply::DigestSignature(sig) = ok(execute_v2(
                &s,
                Request::SignDigest {
                    label: "rsa".into(),
                    scheme,
                    digest: digest.as_ref().to_vec(),
                },
            )) else {
                panic!("signature");
            };
            assert_eq!(sig.len(), 256);
            let public = lc_signature::UnparsedPublicKey::new(params, &info.public_key);
            public
                .verify(b"message", &sig)
                .expect("verifies over the message");
        }
        // The raw scheme pads what it is given: a SHA-1 DigestInfo here, the
        // input of PKCS#11 CKM_RSA_PKCS with a legacy hash.
        let sha1 =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, b"message");
        let mut info_sha1 = vec![
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        info_sha1.extend_from_slice(sha1.as_ref());
        let raw = |digest: Vec<u8>| {
            execute_v2(
                &s,
                Request::SignDigest {
                    label: "rsa".into(),
                    scheme: SignScheme::RsaPkcs1Raw,
                    digest,
                },
            )
        };
        let Reply::DigestSignature(sig) = ok(raw(info_sha1)) else {
            panic!("signature");
        };
        lc_signature::UnparsedPublicKey::new(
            &lc_signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            &info.public_key,
        )
        .verify(b"message", &sig)
        .expect("a SHA1withRSA signature");
        assert_eq!(
            raw(vec![7; 246]),
            Err(Status::InvalidArgument),
            "over k - 11"
        );

        let Reply::Signature(sig) = ok(sign_req(&s, "rsa", b"message")) else {
            panic!("signature");
        };
        assert_eq!(
            verify_req(&s, "rsa", b"message", &sig),
            Ok(Reply::Verified(true))
        );
        assert_eq!(
            verify_req(&s, "rsa", b"other", &sig),
            Ok(Reply::Verified(false))
        );

        let public = PublicEncryptingKey::from_der(&spki(&info.public_key)).expect("public key");
        let oaep = OaepPublicEncryptingKey::new(public).expect("oaep");
        let mut ct = vec![0u8; oaep.ciphertext_size()];
        let ct = oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, b"wrapped key", &mut ct, None)
            .expect("encrypt")
            .to_vec();
        let decrypt = |hash, ct: Vec<u8>| {
            execute_v2(
                &s,
                Request::DecryptRsa {
                    label: "rsa".into(),
                    hash,
                    ciphertext: ct,
                },
            )
        };
        assert_eq!(
            decrypt(OaepHash::Sha256, ct.clone()),
            Ok(Reply::RsaPlaintext(b"wrapped key".to_vec()))
        );
        assert_eq!(
            decrypt(OaepHash::Sha1, ct.clone()),
            Err(Status::CryptoFailed)
        );
        let mut tampered = ct;
        tampered[10] ^= 1;
        assert_eq!(
            decrypt(OaepHash::Sha256, tampered),
            Err(Status::CryptoFailed)
        );
        assert_eq!(
            decrypt(OaepHash::Sha256, vec![1; 10]),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn ec_keys_sign_digests_that_verify_against_their_public_keys() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        let (_d, s) = store();
        let p256 = generate(&s, KeyType::P256, "p256");
        let p384 = generate(&s, KeyType::P384, "p384");
        let digest = vec![0x5a; 48];
        let sign = |label: &str| {
            let Reply::DigestSignature(sig) = ok(execute_v2(
                &s,
                Request::SignDigest {
                    label: label.into(),
                    scheme: SignScheme::Ecdsa,
                    digest: digest.clone(),
                },
            )) else {
                panic!("signature");
            };
            sig
        };
        let sig = sign("p256");
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&p256.public_key).expect("vk");
        let sig = p256::ecdsa::Signature::from_slice(&sig).expect("sig");
        vk.verify_prehash(&digest, &sig).expect("p256 verifies");
        let sig = sign("p384");
        assert_eq!(sig.len(), 96);
        let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(&p384.public_key).expect("vk");
        let sig = p384::ecdsa::Signature::from_slice(&sig).expect("sig");
        vk.verify_prehash(&digest, &sig).expect("p384 verifies");
        // Messages too, and a wrong scheme for the key type.
        let Reply::Signature(sig) = ok(sign_req(&s, "p384", b"m")) else {
            panic!("signature");
        };
        assert_eq!(
            verify_req(&s, "p384", b"m", &sig),
            Ok(Reply::Verified(true))
        );
        assert_eq!(
            execute_v2(
                &s,
                Request::SignDigest {
                    label: "p256".into(),
                    scheme: SignScheme::RsaPkcs1Sha256,
                    digest: vec![0; 32],
                }
            ),
            Err(Status::InvalidArgument)
        );
    }

    #[test]
    fn aes_gcm_with_the_callers_iv_round_trips_and_checks_its_tag() {
        let (_d, s) = store();
        generate(&s, KeyType::Aes256, "aes");
        let iv = vec![7u8; 12];
        let Reply::GcmCiphertext(ct) = ok(execute_v2(
            &s,
            Request::EncryptGcm {
                label: "aes".into(),
                iv: iv.clone(),
                plaintext: b"secret".to_vec(),
                aad: b"ctx".to_vec(),
            },
        )) else {
            panic!("ciphertext");
        };
        assert_eq!(ct.len(), 6 + 16);
        let decrypt = |ct: Vec<u8>, aad: &[u8]| {
            execute_v2(
                &s,
                Request::DecryptGcm {
                    label: "aes".into(),
                    iv: iv.clone(),
                    ciphertext: ct,
                    aad: aad.to_vec(),
                },
            )
        };
        assert_eq!(
            decrypt(ct.clone(), b"ctx"),
            Ok(Reply::GcmPlaintext(b"secret".to_vec()))
        );
        assert_eq!(decrypt(ct, b"other"), Err(Status::CryptoFailed));
    }

    #[test]
    fn keys_can_be_deleted_and_given_ids_and_certificates_stored() {
        let (_d, s) = store();
        generate(&s, KeyType::Ed25519, "k");
        assert_eq!(
            execute_v2(
                &s,
                Request::SetKeyId {
                    label: "k".into(),
                    id: vec![1, 2]
                }
            ),
            Ok(Reply::KeyIdSet)
        );
        let Reply::KeyDetails(info) = ok(execute_v2(&s, Request::GetKey { label: "k".into() }))
        else {
            panic!("details");
        };
        assert_eq!(info.id, vec![1, 2]);
        assert_eq!(
            ok(execute_v2(&s, Request::ListKeyRefs)),
            Reply::KeyRefs(vec![KeyRef {
                kind: KeyType::Ed25519,
                label: "k".into(),
                id: vec![1, 2],
            }])
        );
        let stored = ok(execute_v2(
            &s,
            Request::PutObject {
                label: "k-cert".into(),
                id: vec![1, 2],
                value: vec![0x30, 0x82, 1, 2],
            },
        ));
        assert!(matches!(stored, Reply::ObjectStored(ref o) if o.size == 4));
        assert_eq!(
            execute_v2(
                &s,
                Request::PutObject {
                    label: "k-cert".into(),
                    id: vec![],
                    value: vec![1],
                }
            ),
            Err(Status::AlreadyExists)
        );
        let Reply::Object { value, .. } = ok(execute_v2(
            &s,
            Request::GetObject {
                label: "k-cert".into(),
            },
        )) else {
            panic!("object");
        };
        assert_eq!(value, vec![0x30, 0x82, 1, 2]);
        assert_eq!(
            execute_v2(
                &s,
                Request::DeleteObject {
                    label: "k-cert".into()
                }
            ),
            Ok(Reply::ObjectDeleted)
        );
        assert_eq!(
            ok(execute_v2(&s, Request::ListObjects)),
            Reply::Objects(vec![])
        );
        assert_eq!(
            execute_v2(&s, Request::DeleteKey { label: "k".into() }),
            Ok(Reply::KeyDeleted)
        );
        assert_eq!(
            execute_v2(&s, Request::DeleteKey { label: "k".into() }),
            Err(Status::NotFound)
        );
        assert_eq!(sign_req(&s, "k", b"m"), Err(Status::NotFound));
    }

    #[test]
    fn a_version_1_session_lists_only_keys_it_knows() {
        let (_d, s) = store();
        let ed = generate(&s, KeyType::Ed25519, "a");
        generate(&s, KeyType::P384, "b");
        assert_eq!(execute(&s, Request::ListKeys, 1), Ok(Reply::Keys(vec![ed])));
        // Nor can it use one: a P-384 key is `not_found` there, as listed.
        let sign = |version| {
            execute(
                &s,
                Request::Sign {
                    label: "b".into(),
                    data: b"x".to_vec(),
                },
                version,
            )
        };
        assert_eq!(sign(1), Err(Status::NotFound));
        assert!(matches!(sign(2), Ok(Reply::Signature(_))));
    }
}
