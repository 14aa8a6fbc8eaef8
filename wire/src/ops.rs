//! HSM requests and responses carried inside the inner channel (PROTOCOL.md §7).
//!
//! ```text
//! request  = id: u32 | op: u8     | fields of the op
//! response = id: u32 | status: u8 | fields of the result (status OK only)
//! ```
//!
//! Names (key labels) are one length byte plus `[A-Za-z0-9._-]{1,64}`; blobs
//! are a u16 length plus bytes. Data fields are limited to [`MAX_DATA`], an
//! encrypt plaintext to [`MAX_ENCRYPT_PLAINTEXT`] so that its ciphertext is
//! a valid decrypt input.

use crate::error::WireError;
use crate::reader::{Reader, put_blob, put_name};
use crate::text::validate_name;

/// Largest data, ciphertext, aad or signature field (encrypt plaintexts:
/// [`MAX_ENCRYPT_PLAINTEXT`]).
pub const MAX_DATA: usize = 32 * 1024;
/// What AES-256-GCM encryption adds to a plaintext (§7.5): a 12-byte nonce
/// in front and a 16-byte tag behind.
pub const CIPHERTEXT_OVERHEAD: usize = 12 + 16;
/// Largest encrypt plaintext: its ciphertext, [`CIPHERTEXT_OVERHEAD`] bytes
/// longer, must fit a decrypt request's [`MAX_DATA`].
pub const MAX_ENCRYPT_PLAINTEXT: usize = MAX_DATA - CIPHERTEXT_OVERHEAD;
/// Largest encoded encrypt request: the decrypt request for its result (same
/// id, label and aad, a ciphertext [`CIPHERTEXT_OVERHEAD`] bytes longer) must
/// still fit one InnerData frame.
const MAX_ENCRYPT_REQUEST: usize = crate::inner::MAX_CHANNEL_PLAINTEXT - CIPHERTEXT_OVERHEAD;
/// Largest `random` request.
pub const MAX_RANDOM: usize = 4096;

/// The inner protocol version that brings the extended op set (§7.6):
/// digest signatures, RSA, P-384, key ids, deletion, AES-GCM with a
/// caller's IV, certificate objects. A node that negotiated version 1 knows
/// only the ops of version 1.
pub const OPS_V2: u8 = 2;

/// Largest public key in a key info: version 1 (Ed25519, P-256) and 2
/// (RSA-4096's `RSAPublicKey` DER is 526 bytes).
pub const MAX_PUBLIC_KEY_V1: usize = 128;
pub const MAX_PUBLIC_KEY: usize = 2048;
/// Largest key or object id (PKCS#11 `CKA_ID`).
pub const MAX_ID: usize = 64;
/// Largest digest a `sign_digest` carries (SHA-512).
pub const MAX_DIGEST: usize = 64;
/// Largest RSA ciphertext (RSA-4096).
pub const MAX_RSA_CIPHERTEXT: usize = 512;
/// Longest input of the raw PKCS#1 v1.5 signature scheme: an RSA-4096
/// modulus (512 bytes) less the 11 bytes of padding.
pub const MAX_RSA_RAW_INPUT: usize = MAX_RSA_CIPHERTEXT - 11;
/// Largest stored object (a certificate).
pub const MAX_OBJECT: usize = 16 * 1024;
/// AES-GCM with a caller's IV: the IV and the tag it appends.
pub const GCM_IV_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
/// Largest `encrypt_gcm` plaintext: its output (plaintext and tag) must be a
/// valid `decrypt_gcm` input.
pub const MAX_GCM_PLAINTEXT: usize = MAX_DATA - GCM_TAG_LEN;
/// Largest encoded `encrypt_gcm` request, so that the `decrypt_gcm` for its
/// result still fits one InnerData frame.
const MAX_GCM_ENCRYPT_REQUEST: usize = crate::inner::MAX_CHANNEL_PLAINTEXT - GCM_TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyType {
    Ed25519 = 1,
    P256 = 2,
    Aes256 = 3,
    /// Version 2 and later from here on.
    P384 = 4,
    Rsa2048 = 5,
    Rsa3072 = 6,
    Rsa4096 = 7,
}

impl KeyType {
    pub const ALL: [KeyType; 7] = [
        KeyType::Ed25519,
        KeyType::P256,
        KeyType::Aes256,
        KeyType::P384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    pub fn from_byte(b: u8) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| *k as u8 == b)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
            KeyType::Aes256 => "aes256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// The first inner protocol version that knows this key type.
    pub fn since(self) -> u8 {
        match self {
            KeyType::Ed25519 | KeyType::P256 | KeyType::Aes256 => 1,
            _ => OPS_V2,
        }
    }

    /// RSA modulus length in bytes, for RSA key types.
    pub fn rsa_bytes(self) -> Option<usize> {
        match self {
            KeyType::Rsa2048 => Some(256),
            KeyType::Rsa3072 => Some(384),
            KeyType::Rsa4096 => Some(512),
            _ => None,
        }
    }

    pub fn is_rsa(self) -> bool {
        self.rsa_bytes().is_some()
    }

    pub fn is_ec(self) -> bool {
        matches!(self, KeyType::P256 | KeyType::P384)
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown key type {s:?} (ed25519, p256, p384, rsa2048, rsa3072, rsa4096, aes256)")
            })
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `sign_digest` signs (§7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SignScheme {
    /// ECDSA over the digest as given (P-256, P-384); signature `r ‖ s`.
    Ecdsa = 1,
    /// RSASSA-PKCS1-v1_5 with the DigestInfo of the named hash.
    RsaPkcs1Sha256 = 2,
    RsaPkcs1Sha384 = 3,
    RsaPkcs1Sha512 = 4,
    /// RSASSA-PSS, MGF1 with the same hash, salt as long as the hash.
    RsaPssSha256 = 5,
    RsaPssSha384 = 6,
    RsaPssSha512 = 7,
    /// RSASSA-PKCS1-v1_5 padding (type 1) of the input as given, with no
    /// DigestInfo added: PKCS#11 `CKM_RSA_PKCS`. The input is the caller's
    /// DigestInfo (or any value), at most the modulus length − 11 bytes.
    RsaPkcs1Raw = 8,
}

impl SignScheme {
    const ALL: [SignScheme; 8] = [
        SignScheme::Ecdsa,
        SignScheme::RsaPkcs1Sha256,
        SignScheme::RsaPkcs1Sha384,
        SignScheme::RsaPkcs1Sha512,
        SignScheme::RsaPssSha256,
        SignScheme::RsaPssSha384,
        SignScheme::RsaPssSha512,
        SignScheme::RsaPkcs1Raw,
    ];

    pub fn from_byte(b: u8) -> Option<SignScheme> {
        SignScheme::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// The scheme's name as the CLI and the REST API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SignScheme::Ecdsa => "ecdsa",
            SignScheme::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            SignScheme::RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
            SignScheme::RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
            SignScheme::RsaPssSha256 => "rsa-pss-sha256",
            SignScheme::RsaPssSha384 => "rsa-pss-sha384",
            SignScheme::RsaPssSha512 => "rsa-pss-sha512",
            SignScheme::RsaPkcs1Raw => "rsa-pkcs1-raw",
        }
    }

    /// The digest lengths a scheme takes: the hash's length for the hashed
    /// RSA schemes, 16 to 64 bytes for ECDSA, 1 to 501 bytes (the most an
    /// RSA-4096 modulus pads) for the raw PKCS#1 scheme.
    pub fn digest_lens(self) -> std::ops::RangeInclusive<usize> {
        match self {
            SignScheme::Ecdsa => 16..=MAX_DIGEST,
            SignScheme::RsaPkcs1Sha256 | SignScheme::RsaPssSha256 => 32..=32,
            SignScheme::RsaPkcs1Sha384 | SignScheme::RsaPssSha384 => 48..=48,
            SignScheme::RsaPkcs1Sha512 | SignScheme::RsaPssSha512 => 64..=64,
            SignScheme::RsaPkcs1Raw => 1..=MAX_RSA_RAW_INPUT,
        }
    }
}

impl std::str::FromStr for SignScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SignScheme::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                "one of ecdsa, rsa-pkcs1-sha256, rsa-pkcs1-sha384, rsa-pkcs1-sha512, \
                 rsa-pss-sha256, rsa-pss-sha384, rsa-pss-sha512, rsa-pkcs1-raw"
                    .to_owned()
            })
    }
}

/// The hash of RSA-OAEP (label empty, MGF1 with the same hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OaepHash {
    Sha1 = 1,
    Sha256 = 2,
    Sha384 = 3,
    Sha512 = 4,
}

impl OaepHash {
    pub fn from_byte(b: u8) -> Option<OaepHash> {
        [
            OaepHash::Sha1,
            OaepHash::Sha256,
            OaepHash::Sha384,
            OaepHash::Sha512,
        ]
        .into_iter()
        .find(|h| *h as u8 == b)
    }
}

/// An operation requested of the HSM node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Random {
        len: u16,
    },
    GenerateKey {
        kind: KeyType,
        label: String,
    },
    ListKeys,
    Sign {
        label: String,
        data: Vec<u8>,
    },
    Verify {
        label: String,
        data: Vec<u8>,
        signature: Vec<u8>,
    },
    Encrypt {
        label: String,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    },
    Decrypt {
        label: String,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
    // ---------------------------------------------------- version 2 (§7.6)
    SignDigest {
        label: String,
        scheme: SignScheme,
        digest: Vec<u8>,
    },
    DecryptRsa {
        label: String,
        hash: OaepHash,
        ciphertext: Vec<u8>,
    },
    DeleteKey {
        label: String,
    },
    SetKeyId {
        label: String,
        id: Vec<u8>,
    },
    EncryptGcm {
        label: String,
        iv: Vec<u8>,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    },
    DecryptGcm {
        label: String,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
        aad: Vec<u8>,
    },
    PutObject {
        label: String,
        id: Vec<u8>,
        value: Vec<u8>,
    },
    ListObjects,
    GetObject {
        label: String,
    },
    DeleteObject {
        label: String,
    },
    ListKeyRefs,
    GetKey {
        label: String,
    },
}

mod op {
    pub const PING: u8 = 0x01;
    pub const RANDOM: u8 = 0x02;
    pub const GENERATE_KEY: u8 = 0x03;
    pub const LIST_KEYS: u8 = 0x04;
    pub const SIGN: u8 = 0x05;
    pub const VERIFY: u8 = 0x06;
    pub const ENCRYPT: u8 = 0x07;
    pub const DECRYPT: u8 = 0x08;
    pub const SIGN_DIGEST: u8 = 0x09;
    pub const DECRYPT_RSA: u8 = 0x0a;
    pub const DELETE_KEY: u8 = 0x0b;
    pub const SET_KEY_ID: u8 = 0x0c;
    pub const ENCRYPT_GCM: u8 = 0x0d;
    pub const DECRYPT_GCM: u8 = 0x0e;
    pub const PUT_OBJECT: u8 = 0x0f;
    pub const LIST_OBJECTS: u8 = 0x10;
    pub const GET_OBJECT: u8 = 0x11;
    pub const DELETE_OBJECT: u8 = 0x12;
    pub const LIST_KEY_REFS: u8 = 0x13;
    pub const GET_KEY: u8 = 0x14;
    /// The highest op of each version.
    pub const LAST_V1: u8 = DECRYPT;
    pub const LAST_V2: u8 = GET_KEY;
}

/// Public description of a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kind: KeyType,
    pub label: String,
    /// The public key (Ed25519: 32 bytes; P-256 / P-384: SEC1 uncompressed,
    /// 65 / 97 bytes; RSA: DER `RSAPublicKey`); empty for AES keys.
    pub public_key: Vec<u8>,
    /// The key's id (PKCS#11 `CKA_ID`, version 2; empty when none was set).
    pub id: Vec<u8>,
}

/// A key named in a `list_key_refs` reply: everything but the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub kind: KeyType,
    pub label: String,
    pub id: Vec<u8>,
}

/// A stored object (an X.509 certificate), without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub label: String,
    pub id: Vec<u8>,
    /// Length of the value.
    pub size: u16,
}

/// The result of a successful operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Pong,
    Random(Vec<u8>),
    Key(KeyInfo),
    Keys(Vec<KeyInfo>),
    Signature(Vec<u8>),
    Verified(bool),
    Ciphertext(Vec<u8>),
    Plaintext(Vec<u8>),
    // ---------------------------------------------------- version 2 (§7.6)
    DigestSignature(Vec<u8>),
    RsaPlaintext(Vec<u8>),
    KeyDeleted,
    KeyIdSet,
    GcmCiphertext(Vec<u8>),
    GcmPlaintext(Vec<u8>),
    ObjectStored(ObjectInfo),
    Objects(Vec<ObjectInfo>),
    Object { info: ObjectInfo, value: Vec<u8> },
    ObjectDeleted,
    KeyRefs(Vec<KeyRef>),
    KeyDetails(KeyInfo),
}

/// Why an operation failed at the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum Status {
    #[error("no key with that label")]
    NotFound = 1,
    #[error("invalid argument")]
    InvalidArgument = 2,
    #[error("a key with that label exists")]
    AlreadyExists = 3,
    #[error("cryptographic check failed")]
    CryptoFailed = 4,
    #[error("internal HSM error")]
    Internal = 5,
    #[error("operation not supported")]
    Unsupported = 6,
    #[error("partition is full")]
    LimitReached = 7,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            1 => Status::NotFound,
            2 => Status::InvalidArgument,
            3 => Status::AlreadyExists,
            4 => Status::CryptoFailed,
            5 => Status::Internal,
            6 => Status::Unsupported,
            7 => Status::LimitReached,
            _ => return None,
        })
    }
}

/// A response: the request's id and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u32,
    pub result: Result<Reply, Status>,
}

fn check_len(
    field: &'static str,
    data: &[u8],
    max: usize,
    why: &'static str,
) -> Result<(), WireError> {
    if data.len() > max {
        return Err(WireError::malformed(field, why));
    }
    Ok(())
}

fn check_data(field: &'static str, data: &[u8]) -> Result<(), WireError> {
    check_len(field, data, MAX_DATA, "longer than 32768 bytes")
}

fn check_plaintext(plaintext: &[u8]) -> Result<(), WireError> {
    check_len(
        "plaintext",
        plaintext,
        MAX_ENCRYPT_PLAINTEXT,
        "longer than 32740 bytes",
    )
}

/// An encoded encrypt request must leave room for its decrypt request.
fn check_encrypt_len(encoded: &[u8], max: usize) -> Result<(), WireError> {
    if encoded.len() > max {
        return Err(WireError::malformed(
            "encrypt",
            "request too long (its decrypt would not fit a frame)",
        ));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), WireError> {
    validate_name(label).map_err(|why| WireError::malformed("label", why))
}

fn check_iv(iv: &[u8]) -> Result<(), WireError> {
    if iv.len() != GCM_IV_LEN {
        return Err(WireError::malformed("iv", "is not 12 bytes"));
    }
    Ok(())
}

fn check_digest(scheme: SignScheme, digest: &[u8]) -> Result<(), WireError> {
    if !scheme.digest_lens().contains(&digest.len()) {
        return Err(WireError::malformed(
            "digest",
            "wrong length for the scheme",
        ));
    }
    Ok(())
}

impl Request {
    /// The first inner protocol version that has this request.
    pub fn since(&self) -> u8 {
        match self {
            Request::GenerateKey { kind, .. } => kind.since(),
            Request::Ping
            | Request::Random { .. }
            | Request::ListKeys
            | Request::Sign { .. }
            | Request::Verify { .. }
            | Request::Encrypt { .. }
            | Request::Decrypt { .. } => 1,
            _ => OPS_V2,
        }
    }

    /// Stable lower-case name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Random { .. } => "random",
            Request::GenerateKey { .. } => "generate_key",
            Request::ListKeys => "list_keys",
            Request::Sign { .. } => "sign",
            Request::Verify { .. } => "verify",
            Request::Encrypt { .. } => "encrypt",
            Request::Decrypt { .. } => "decrypt",
            Request::SignDigest { .. } => "sign_digest",
            Request::DecryptRsa { .. } => "decrypt_rsa",
            Request::DeleteKey { .. } => "delete_key",
            Request::SetKeyId { .. } => "set_key_id",
            Request::EncryptGcm { .. } => "encrypt_gcm",
            Request::DecryptGcm { .. } => "decrypt_gcm",
            Request::PutObject { .. } => "put_object",
            Request::ListObjects => "list_objects",
            Request::GetObject { .. } => "get_object",
            Request::DeleteObject { .. } => "delete_object",
            Request::ListKeyRefs => "list_key_refs",
            Request::GetKey { .. } => "get_key",
        }
    }

    /// Encode with request id `id`. Fails if a field breaks its limit.
    pub fn encode(&self, id: u32) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&id.to_be_bytes());
        match self {
            Request::Ping => out.push(op::PING),
            Request::Random { len } => {
                if *len == 0 || *len as usize > MAX_RANDOM {
                    return Err(WireError::malformed("random", "length is 1..=4096"));
                }
                out.push(op::RANDOM);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Request::GenerateKey { kind, label } => {
                check_label(label)?;
                out.push(op::GENERATE_KEY);
                out.push(*kind as u8);
                put_name(&mut out, label);
            }
            Request::ListKeys => out.push(op::LIST_KEYS),
            Request::Sign { label, data } => {
                check_label(label)?;
                check_data("data", data)?;
                out.push(op::SIGN);
                put_name(&mut out, label);
                put_blob(&mut out, data);
            }
            Request::Verify {
                label,
                data,
                signature,
            } => {
                check_label(label)?;
                check_data("data", data)?;
                check_data("signature", signature)?;
                out.push(op::VERIFY);
                put_name(&mut out, label);
                put_blob(&mut out, data);
                put_blob(&mut out, signature);
            }
            Request::Encrypt {
                label,
                plaintext,
                aad,
            } => {
                check_label(label)?;
                check_plaintext(plaintext)?;
                check_data("aad", aad)?;
                out.push(op::ENCRYPT);
                put_name(&mut out, label);
                put_blob(&mut out, plaintext);
                put_blob(&mut out, aad);
                check_encrypt_len(&out, MAX_ENCRYPT_REQUEST)?;
            }
            Request::Decrypt {
                label,
                ciphertext,
                aad,
            } => {
                check_label(label)?;
                check_data("ciphertext", ciphertext)?;
                check_data("aad", aad)?;
                out.push(op::DECRYPT);
                put_name(&mut out, label);
                put_blob(&mut out, ciphertext);
                put_blob(&mut out, aad);
            }
            Request::SignDigest {
                label,
                scheme,
                digest,
            } => {
                check_label(label)?;
                check_digest(*scheme, digest)?;
                out.push(op::SIGN_DIGEST);
                put_name(&mut out, label);
                out.push(*scheme as u8);
                put_blob(&mut out, digest);
            }
            Request::DecryptRsa {
                label,
                hash,
                ciphertext,
            } => {
                check_label(label)?;
                check_len(
                    "ciphertext",
                    ciphertext,
                    MAX_RSA_CIPHERTEXT,
                    "longer than 512 bytes",
                )?;
                out.push(op::DECRYPT_RSA);
                put_name(&mut out, label);
                out.push(*hash as u8);
                put_blob(&mut out, ciphertext);
            }
            Request::DeleteKey { label } => {
                check_label(label)?;
                out.push(op::DELETE_KEY);
                put_name(&mut out, label);
            }
            Request::SetKeyId { label, id: key_id } => {
                check_label(label)?;
                check_len("id", key_id, MAX_ID, "longer than 64 bytes")?;
                out.push(op::SET_KEY_ID);
                put_name(&mut out, label);
                put_blob(&mut out, key_id);
            }
            Request::EncryptGcm {
                label,
                iv,
                plaintext,
                aad,
            } => {
                check_label(label)?;
                check_iv(iv)?;
                check_len(
                    "plaintext",
                    plaintext,
                    MAX_GCM_PLAINTEXT,
                    "longer than 32752 bytes",
                )?;
                check_data("aad", aad)?;
                out.push(op::ENCRYPT_GCM);
                put_name(&mut out, label);
                put_blob(&mut out, iv);
                put_blob(&mut out, plaintext);
                put_blob(&mut out, aad);
                check_encrypt_len(&out, MAX_GCM_ENCRYPT_REQUEST)?;
            }
            Request::DecryptGcm {
                label,
                iv,
                ciphertext,
                aad,
            } => {
                check_label(label)?;
                check_iv(iv)?;
                check_data("ciphertext", ciphertext)?;
                check_data("aad", aad)?;
                out.push(op::DECRYPT_GCM);
                put_name(&mut out, label);
                put_blob(&mut out, iv);
                put_blob(&mut out, ciphertext);
                put_blob(&mut out, aad);
            }
            Request::PutObject {
                label,
                id: object_id,
                value,
            } => {
                check_label(label)?;
                check_len("id", object_id, MAX_ID, "longer than 64 bytes")?;
                check_len("value", value, MAX_OBJECT, "longer than 16384 bytes")?;
                out.push(op::PUT_OBJECT);
                put_name(&mut out, label);
                put_blob(&mut out, object_id);
                put_blob(&mut out, value);
            }
            Request::ListObjects => out.push(op::LIST_OBJECTS),
            Request::GetObject { label } => {
                check_label(label)?;
                out.push(op::GET_OBJECT);
                put_name(&mut out, label);
            }
            Request::DeleteObject { label } => {
                check_label(label)?;
                out.push(op::DELETE_OBJECT);
                put_name(&mut out, label);
            }
            Request::ListKeyRefs => out.push(op::LIST_KEY_REFS),
            Request::GetKey { label } => {
                check_label(label)?;
                out.push(op::GET_KEY);
                put_name(&mut out, label);
            }
        }
        Ok(out)
    }

    /// The id of a request whose op this implementation does not know: a
    /// version 2 node answers it `unsupported` instead of ending the session
    /// (§7.6). `None` when the bytes are too short or the op is known.
    pub fn unknown_op_id(bytes: &[u8]) -> Option<u32> {
        if bytes.len() < 5 || (op::PING..=op::LAST_V2).contains(&bytes[4]) {
            return None;
        }
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Decode a request; returns its id and the request.
    pub fn decode(bytes: &[u8]) -> Result<(u32, Request), WireError> {
        let mut r = Reader::new(bytes, "request");
        let id = r.u32()?;
        let request = match r.u8()? {
            op::PING => Request::Ping,
            op::RANDOM => {
                let len = r.u16()?;
                if len == 0 || len as usize > MAX_RANDOM {
                    return Err(WireError::malformed("random", "length is 1..=4096"));
                }
                Request::Random { len }
            }
            op::GENERATE_KEY => {
                let kind = KeyType::from_byte(r.u8()?)
                    .ok_or_else(|| WireError::malformed("request", "unknown key type"))?;
                Request::GenerateKey {
                    kind,
                    label: r.name()?.to_owned(),
                }
            }
            op::LIST_KEYS => Request::ListKeys,
            op::SIGN => Request::Sign {
                label: r.name()?.to_owned(),
                data: data(&mut r, "data")?,
            },
            op::VERIFY => Request::Verify {
                label: r.name()?.to_owned(),
                data: data(&mut r, "data")?,
                signature: data(&mut r, "signature")?,
            },
            op::ENCRYPT => {
                check_encrypt_len(bytes, MAX_ENCRYPT_REQUEST)?;
                let label = r.name()?.to_owned();
                let plaintext = r.blob()?;
                check_plaintext(plaintext)?;
                Request::Encrypt {
                    label,
                    plaintext: plaintext.to_vec(),
                    aad: data(&mut r, "aad")?,
                }
            }
            op::DECRYPT => Request::Decrypt {
                label: r.name()?.to_owned(),
                ciphertext: data(&mut r, "ciphertext")?,
                aad: data(&mut r, "aad")?,
            },
            op::SIGN_DIGEST => {
                let label = r.name()?.to_owned();
                let scheme = SignScheme::from_byte(r.u8()?)
                    .ok_or_else(|| WireError::malformed("request", "unknown sign scheme"))?;
                let digest = r.blob()?.to_vec();
                check_digest(scheme, &digest)?;
                Request::SignDigest {
                    label,
                    scheme,
                    digest,
                }
            }
            op::DECRYPT_RSA => {
                let label = r.name()?.to_owned();
                let hash = OaepHash::from_byte(r.u8()?)
                    .ok_or_else(|| WireError::malformed("request", "unknown OAEP hash"))?;
                let ciphertext = r.blob()?.to_vec();
                check_len(
                    "ciphertext",
                    &ciphertext,
                    MAX_RSA_CIPHERTEXT,
                    "longer than 512 bytes",
                )?;
                Request::DecryptRsa {
                    label,
                    hash,
                    ciphertext,
                }
            }
            op::DELETE_KEY => Request::DeleteKey {
                label: r.name()?.to_owned(),
            },
            op::SET_KEY_ID => {
                let label = r.name()?.to_owned();
                let id = r.blob()?.to_vec();
                check_len("id", &id, MAX_ID, "longer than 64 bytes")?;
                Request::SetKeyId { label, id }
            }
            op::ENCRYPT_GCM => {
                check_encrypt_len(bytes, MAX_GCM_ENCRYPT_REQUEST)?;
                let label = r.name()?.to_owned();
                let iv = r.blob()?.to_vec();
                check_iv(&iv)?;
                let plaintext = r.blob()?.to_vec();
                check_len(
                    "plaintext",
                    &plaintext,
                    MAX_GCM_PLAINTEXT,
                    "longer than 32752 bytes",
                )?;
                Request::EncryptGcm {
                    label,
                    iv,
                    plaintext,
                    aad: data(&mut r, "aad")?,
                }
            }
            op::DECRYPT_GCM => {
                let label = r.name()?.to_owned();
                let iv = r.blob()?.to_vec();
                check_iv(&iv)?;
                Request::DecryptGcm {
                    label,
                    iv,
                    ciphertext: data(&mut r, "ciphertext")?,
                    aad: data(&mut r, "aad")?,
                }
            }
            op::PUT_OBJECT => {
                let label = r.name()?.to_owned();
                let id = r.blob()?.to_vec();
                check_len("id", &id, MAX_ID, "longer than 64 bytes")?;
                let value = r.blob()?.to_vec();
                check_len("value", &value, MAX_OBJECT, "longer than 16384 bytes")?;
                Request::PutObject { label, id, value }
            }
            op::LIST_OBJECTS => Request::ListObjects,
            op::GET_OBJECT => Request::GetObject {
                label: r.name()?.to_owned(),
            },
            op::DELETE_OBJECT => Request::DeleteObject {
                label: r.name()?.to_owned(),
            },
            op::LIST_KEY_REFS => Request::ListKeyRefs,
            op::GET_KEY => Request::GetKey {
                label: r.name()?.to_owned(),
            },
            _ => return Err(WireError::malformed("request", "unknown operation")),
        };
        r.finish()?;
        Ok((id, request))
    }
}

fn data(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<u8>, WireError> {
    let blob = r.blob()?;
    check_data(field, blob)?;
    Ok(blob.to_vec())
}

mod reply_tag {
    pub use super::op::*;
    pub const PONG: u8 = PING;
    pub const KEY: u8 = GENERATE_KEY;
    pub const KEYS: u8 = LIST_KEYS;
    pub const SIGNATURE: u8 = SIGN;
    pub const VERIFIED: u8 = VERIFY;
    pub const CIPHERTEXT: u8 = ENCRYPT;
    pub const PLAINTEXT: u8 = DECRYPT;
}

impl Reply {
    /// Whether this reply can answer `request` (§7.1, §7.3): its tag is the
    /// request's op, and a `random` reply carries exactly the bytes asked
    /// for. A client checks this before using a successful response; a
    /// failure status answers any request.
    pub fn answers(&self, request: &Request) -> bool {
        match (self, request) {
            (Reply::Random(bytes), Request::Random { len }) => bytes.len() == usize::from(*len),
            (Reply::Pong, Request::Ping)
            | (Reply::Key(_), Request::GenerateKey { .. })
            | (Reply::Keys(_), Request::ListKeys)
            | (Reply::Signature(_), Request::Sign { .. })
            | (Reply::Verified(_), Request::Verify { .. })
            | (Reply::Ciphertext(_), Request::Encrypt { .. })
            | (Reply::Plaintext(_), Request::Decrypt { .. })
            | (Reply::DigestSignature(_), Request::SignDigest { .. })
            | (Reply::RsaPlaintext(_), Request::DecryptRsa { .. })
            | (Reply::KeyDeleted, Request::DeleteKey { .. })
            | (Reply::KeyIdSet, Request::SetKeyId { .. })
            | (Reply::GcmCiphertext(_), Request::EncryptGcm { .. })
            | (Reply::GcmPlaintext(_), Request::DecryptGcm { .. })
            | (Reply::ObjectStored(_), Request::PutObject { .. })
            | (Reply::Objects(_), Request::ListObjects)
            | (Reply::Object { .. }, Request::GetObject { .. })
            | (Reply::ObjectDeleted, Request::DeleteObject { .. })
            | (Reply::KeyRefs(_), Request::ListKeyRefs)
            | (Reply::KeyDetails(_), Request::GetKey { .. }) => true,
            _ => false,
        }
    }

    /// Stable lower-case name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Pong => "pong",
            Reply::Random(_) => "random",
            Reply::Key(_) => "key",
            Reply::Keys(_) => "keys",
            Reply::Signature(_) => "signature",
            Reply::Verified(_) => "verified",
            Reply::Ciphertext(_) => "ciphertext",
            Reply::Plaintext(_) => "plaintext",
            Reply::DigestSignature(_) => "digest_signature",
            Reply::RsaPlaintext(_) => "rsa_plaintext",
            Reply::KeyDeleted => "key_deleted",
            Reply::KeyIdSet => "key_id_set",
            Reply::GcmCiphertext(_) => "gcm_ciphertext",
            Reply::GcmPlaintext(_) => "gcm_plaintext",
            Reply::ObjectStored(_) => "object_stored",
            Reply::Objects(_) => "objects",
            Reply::Object { .. } => "object",
            Reply::ObjectDeleted => "object_deleted",
            Reply::KeyRefs(_) => "key_refs",
            Reply::KeyDetails(_) => "key_details",
        }
    }
}

/// Most keys a partition holds, and so a `keys` or `key_refs` reply
/// carries; also the most objects.
pub const MAX_KEYS: usize = 256;

/// A key info in the layout of `version` (§7.3; §7.6 adds the id).
fn put_key(out: &mut Vec<u8>, key: &KeyInfo, version: u8) {
    out.push(key.kind as u8);
    put_name(out, &key.label);
    put_blob(out, &key.public_key);
    if version >= OPS_V2 {
        put_blob(out, &key.id);
    }
}

fn key_type(r: &mut Reader<'_>, version: u8) -> Result<KeyType, WireError> {
    KeyType::from_byte(r.u8()?)
        .filter(|k| k.since() <= version)
        .ok_or_else(|| WireError::malformed("response", "unknown key type"))
}

fn key_id(r: &mut Reader<'_>) -> Result<Vec<u8>, WireError> {
    let id = r.blob()?;
    if id.len() > MAX_ID {
        return Err(WireError::malformed("response", "id too long"));
    }
    Ok(id.to_vec())
}

fn read_key(r: &mut Reader<'_>, version: u8) -> Result<KeyInfo, WireError> {
    let kind = key_type(r, version)?;
    let label = r.name()?.to_owned();
    let public_key = r.blob()?;
    let max = if version >= OPS_V2 {
        MAX_PUBLIC_KEY
    } else {
        MAX_PUBLIC_KEY_V1
    };
    if public_key.len() > max {
        return Err(WireError::malformed("response", "public key too long"));
    }
    let id = if version >= OPS_V2 {
        key_id(r)?
    } else {
        Vec::new()
    };
    Ok(KeyInfo {
        kind,
        label,
        public_key: public_key.to_vec(),
        id,
    })
}

fn put_object(out: &mut Vec<u8>, object: &ObjectInfo) {
    put_name(out, &object.label);
    put_blob(out, &object.id);
    out.extend_from_slice(&object.size.to_be_bytes());
}

fn read_object(r: &mut Reader<'_>) -> Result<ObjectInfo, WireError> {
    let label = r.name()?.to_owned();
    let id = key_id(r)?;
    let size = r.u16()?;
    if usize::from(size) > MAX_OBJECT {
        return Err(WireError::malformed("response", "object too large"));
    }
    Ok(ObjectInfo { label, id, size })
}

fn count(r: &mut Reader<'_>) -> Result<usize, WireError> {
    let n = r.u16()? as usize;
    if n > MAX_KEYS {
        return Err(WireError::malformed("response", "more than 256 entries"));
    }
    Ok(n)
}

impl Response {
    /// Encode in the layout of inner protocol `version`. A successful reply
    /// starts with status 0 and a reply tag (the op it answers); a failure
    /// is the status byte alone.
    pub fn encode(&self, version: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.id.to_be_bytes());
        let reply = match &self.result {
            Err(status) => {
                out.push(*status as u8);
                return out;
            }
            Ok(reply) => reply,
        };
        out.push(0);
        match reply {
            Reply::Pong => out.push(reply_tag::PONG),
            Reply::Random(b) => {
                out.push(reply_tag::RANDOM);
                put_blob(&mut out, b);
            }
            Reply::Key(k) => {
                out.push(reply_tag::KEY);
                put_key(&mut out, k, version);
            }
            Reply::Keys(keys) => {
                out.push(reply_tag::KEYS);
                let n = keys.len().min(MAX_KEYS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for k in &keys[..n] {
                    put_key(&mut out, k, version);
                }
            }
            Reply::Signature(b) => {
                out.push(reply_tag::SIGNATURE);
                put_blob(&mut out, b);
            }
            Reply::Verified(ok) => {
                out.push(reply_tag::VERIFIED);
                out.push(u8::from(*ok));
            }
            Reply::Ciphertext(b) => {
                out.push(reply_tag::CIPHERTEXT);
                put_blob(&mut out, b);
            }
            Reply::Plaintext(b) => {
                out.push(reply_tag::PLAINTEXT);
                put_blob(&mut out, b);
            }
            Reply::DigestSignature(b) => {
                out.push(reply_tag::SIGN_DIGEST);
                put_blob(&mut out, b);
            }
            Reply::RsaPlaintext(b) => {
                out.push(reply_tag::DECRYPT_RSA);
                put_blob(&mut out, b);
            }
            Reply::KeyDeleted => out.push(reply_tag::DELETE_KEY),
            Reply::KeyIdSet => out.push(reply_tag::SET_KEY_ID),
            Reply::GcmCiphertext(b) => {
                out.push(reply_tag::ENCRYPT_GCM);
                put_blob(&mut out, b);
            }
            Reply::GcmPlaintext(b) => {
                out.push(reply_tag::DECRYPT_GCM);
                put_blob(&mut out, b);
            }
            Reply::ObjectStored(o) => {
                out.push(reply_tag::PUT_OBJECT);
                put_object(&mut out, o);
            }
            Reply::Objects(objects) => {
                out.push(reply_tag::LIST_OBJECTS);
                let n = objects.len().min(MAX_KEYS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for o in &objects[..n] {
                    put_object(&mut out, o);
                }
            }
            Reply::Object { info, value } => {
                out.push(reply_tag::GET_OBJECT);
                put_object(&mut out, info);
                put_blob(&mut out, value);
            }
            Reply::ObjectDeleted => out.push(reply_tag::DELETE_OBJECT),
            Reply::KeyRefs(refs) => {
                out.push(reply_tag::LIST_KEY_REFS);
                let n = refs.len().min(MAX_KEYS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for k in &refs[..n] {
                    out.push(k.kind as u8);
                    put_name(&mut out, &k.label);
                    put_blob(&mut out, &k.id);
                }
            }
            Reply::KeyDetails(k) => {
                out.push(reply_tag::GET_KEY);
                put_key(&mut out, k, version);
            }
        }
        out
    }

    /// Decode a response in the layout of inner protocol `version`; a reply
    /// of a later version is malformed.
    pub fn decode(bytes: &[u8], version: u8) -> Result<Response, WireError> {
        let mut r = Reader::new(bytes, "response");
        let id = r.u32()?;
        let status = r.u8()?;
        if status != 0 {
            let status = Status::from_byte(status)
                .ok_or_else(|| WireError::malformed("response", "unknown status"))?;
            r.finish()?;
            return Ok(Response {
                id,
                result: Err(status),
            });
        }
        let tag = r.u8()?;
        let last = if version >= OPS_V2 {
            op::LAST_V2
        } else {
            op::LAST_V1
        };
        if tag > last {
            return Err(WireError::malformed("response", "unknown reply"));
        }
        let reply = match tag {
            reply_tag::PONG => Reply::Pong,
            reply_tag::RANDOM => Reply::Random(r.blob()?.to_vec()),
            reply_tag::KEY => Reply::Key(read_key(&mut r, version)?),
            reply_tag::KEYS => {
                let n = count(&mut r)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(read_key(&mut r, version)?);
                }
                Reply::Keys(keys)
            }
            reply_tag::SIGNATURE => Reply::Signature(r.blob()?.to_vec()),
            reply_tag::VERIFIED => Reply::Verified(match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(WireError::malformed("response", "verified is 0 or 1")),
            }),
            reply_tag::CIPHERTEXT => Reply::Ciphertext(r.blob()?.to_vec()),
            reply_tag::PLAINTEXT => Reply::Plaintext(r.blob()?.to_vec()),
            reply_tag::SIGN_DIGEST => Reply::DigestSignature(r.blob()?.to_vec()),
            reply_tag::DECRYPT_RSA => Reply::RsaPlaintext(r.blob()?.to_vec()),
            reply_tag::DELETE_KEY => Reply::KeyDeleted,
            reply_tag::SET_KEY_ID => Reply::KeyIdSet,
            reply_tag::ENCRYPT_GCM => Reply::GcmCiphertext(r.blob()?.to_vec()),
            reply_tag::DECRYPT_GCM => Reply::GcmPlaintext(r.blob()?.to_vec()),
            reply_tag::PUT_OBJECT => Reply::ObjectStored(read_object(&mut r)?),
            reply_tag::LIST_OBJECTS => {
                let n = count(&mut r)?;
                let mut objects = Vec::with_capacity(n);
                for _ in 0..n {
                    objects.push(read_object(&mut r)?);
                }
                Reply::Objects(objects)
            }
            reply_tag::GET_OBJECT => {
                let info = read_object(&mut r)?;
                let value = r.blob()?.to_vec();
                if value.len() != usize::from(info.size) {
                    return Err(WireError::malformed("response", "object size mismatch"));
                }
                Reply::Object { info, value }
            }
            reply_tag::DELETE_OBJECT => Reply::ObjectDeleted,
            reply_tag::LIST_KEY_REFS => {
                let n = count(&mut r)?;
                let mut refs = Vec::with_capacity(n);
                for _ in 0..n {
                    refs.push(KeyRef {
                        kind: key_type(&mut r, version)?,
                        label: r.name()?.to_owned(),
                        id: key_id(&mut r)?,
                    });
                }
                Reply::KeyRefs(refs)
            }
            reply_tag::GET_KEY => Reply::KeyDetails(read_key(&mut r, version)?),
            _ => return Err(WireError::malformed("response", "unknown reply")),
        };
        r.finish()?;
        Ok(Response {
            id,
            result: Ok(reply),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(req: Request) {
        let bytes = req.encode(42).unwrap();
        assert_eq!(Request::decode(&bytes).unwrap(), (42, req));
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Ping);
        round_trip(Request::Random { len: 32 });
        round_trip(Request::GenerateKey {
            kind: KeyType::P256,
            label: "k1".into(),
        });
        round_trip(Request::ListKeys);
        round_trip(Request::Sign {
            label: "k1".into(),
            data: vec![1, 2, 3],
        });
        round_trip(Request::Verify {
            label: "k1".into(),
            data: vec![1],
            signature: vec![2; 64],
        });
        round_trip(Request::Encrypt {
            label: "a".into(),
            plaintext: vec![9; 100],
            aad: vec![],
        });
        round_trip(Request::Decrypt {
            label: "a".into(),
            ciphertext: vec![9; 128],
            aad: b"ctx".to_vec(),
        });
    }

    #[test]
    fn every_reply_round_trips() {
        let key = KeyInfo {
            kind: KeyType::Ed25519,
            label: "k".into(),
            public_key: vec![1; 32],
            id: vec![],
        };
        for result in [
            Ok(Reply::Pong),
            Ok(Reply::Random(vec![1, 2])),
            Ok(Reply::Key(key.clone())),
            Ok(Reply::Keys(vec![key.clone(), key])),
            Ok(Reply::Signature(vec![3; 64])),
            Ok(Reply::Verified(true)),
            Ok(Reply::Ciphertext(vec![4; 40])),
            Ok(Reply::Plaintext(vec![])),
            Err(Status::NotFound),
            Err(Status::LimitReached),
        ] {
            let resp = Response { id: 7, result };
            assert_eq!(Response::decode(&resp.encode(1), 1).unwrap(), resp);
            assert_eq!(Response::decode(&resp.encode(2), 2).unwrap(), resp);
        }
    }

    fn v2_requests() -> Vec<Request> {
        vec![
            Request::GenerateKey {
                kind: KeyType::Rsa4096,
                label: "r".into(),
            },
            Request::SignDigest {
                label: "k".into(),
                scheme: SignScheme::Ecdsa,
                digest: vec![1; 48],
            },
            Request::SignDigest {
                label: "k".into(),
                scheme: SignScheme::RsaPssSha512,
                digest: vec![1; 64],
            },
            Request::DecryptRsa {
                label: "k".into(),
                hash: OaepHash::Sha256,
                ciphertext: vec![2; 256],
            },
            Request::DeleteKey { label: "k".into() },
            Request::SetKeyId {
                label: "k".into(),
                id: vec![1, 2],
            },
            Request::EncryptGcm {
                label: "a".into(),
                iv: vec![3; 12],
                plaintext: vec![4; 10],
                aad: vec![5],
            },
            Request::DecryptGcm {
                label: "a".into(),
                iv: vec![3; 12],
                ciphertext: vec![4; 26],
                aad: vec![],
            },
            Request::PutObject {
                label: "cert".into(),
                id: vec![1],
                value: vec![0x30; 900],
            },
            Request::ListObjects,
            Request::GetObject {
                label: "cert".into(),
            },
            Request::DeleteObject {
                label: "cert".into(),
            },
            Request::ListKeyRefs,
            Request::GetKey { label: "k".into() },
        ]
    }

    #[test]
    fn every_version_2_request_round_trips_and_says_its_version() {
        for request in v2_requests() {
            assert_eq!(request.since(), OPS_V2, "{request:?}");
            round_trip(request);
        }
        assert_eq!(Request::Ping.since(), 1);
        assert_eq!(
            Request::GenerateKey {
                kind: KeyType::P256,
                label: "k".into()
            }
            .since(),
            1
        );
    }

    #[test]
    fn version_2_replies_round_trip_and_version_1_refuses_them() {
        let rsa = KeyInfo {
            kind: KeyType::Rsa4096,
            label: "r".into(),
            public_key: vec![0x30; 526],
            id: vec![9; MAX_ID],
        };
        let object = ObjectInfo {
            label: "cert".into(),
            id: vec![1],
            size: 3,
        };
        for reply in [
            Reply::DigestSignature(vec![1; 96]),
            Reply::RsaPlaintext(vec![2; 32]),
            Reply::KeyDeleted,
            Reply::KeyIdSet,
            Reply::GcmCiphertext(vec![3; 26]),
            Reply::GcmPlaintext(vec![4; 10]),
            Reply::ObjectStored(object.clone()),
            Reply::Objects(vec![object.clone(), object.clone()]),
            Reply::Object {
                info: object.clone(),
                value: vec![7; 3],
            },
            Reply::ObjectDeleted,
            Reply::KeyRefs(vec![KeyRef {
                kind: KeyType::P384,
                label: "p".into(),
                id: vec![],
            }]),
            Reply::KeyDetails(rsa.clone()),
            Reply::Key(rsa.clone()),
        ] {
            let resp = Response {
                id: 1,
                result: Ok(reply),
            };
            let bytes = resp.encode(OPS_V2);
            assert_eq!(Response::decode(&bytes, OPS_V2).unwrap(), resp);
            assert!(
                Response::decode(&bytes, 1).is_err(),
                "{resp:?} in a v1 session"
            );
        }
        // A v1 key info has no id and at most 128 bytes of public key.
        let p256 = KeyInfo {
            kind: KeyType::P256,
            label: "p".into(),
            public_key: vec![4; 65],
            id: vec![],
        };
        let v1 = Response {
            id: 2,
            result: Ok(Reply::Key(p256.clone())),
        };
        assert_eq!(
            v1.encode(1).len() + 2,
            v1.encode(2).len(),
            "no id blob in v1"
        );
    }

    #[test]
    fn an_unknown_op_is_named_by_its_id() {
        assert_eq!(Request::unknown_op_id(&[0, 0, 0, 9, 0x7f]), Some(9));
        assert_eq!(Request::unknown_op_id(&[0, 0, 0, 9, 0x00]), Some(9));
        assert_eq!(
            Request::unknown_op_id(&[0, 0, 0, 9, 0x01]),
            None,
            "ping is known"
        );
        assert_eq!(
            Request::unknown_op_id(&[0, 0, 0, 9, 0x14]),
            None,
            "get_key is known"
        );
        assert_eq!(Request::unknown_op_id(&[0, 0, 0]), None);
    }

    #[test]
    fn digests_and_ivs_have_their_lengths() {
        let sign = |scheme, n| Request::SignDigest {
            label: "k".into(),
            scheme,
            digest: vec![0; n],
        };
        assert!(sign(SignScheme::RsaPkcs1Sha256, 32).encode(1).is_ok());
        assert!(sign(SignScheme::RsaPkcs1Sha256, 48).encode(1).is_err());
        assert!(sign(SignScheme::Ecdsa, 15).encode(1).is_err());
        assert!(sign(SignScheme::Ecdsa, 65).encode(1).is_err());
        assert!(
            Request::EncryptGcm {
                label: "a".into(),
                iv: vec![0; 16],
                plaintext: vec![],
                aad: vec![],
            }
            .encode(1)
            .is_err()
        );
    }

    #[test]
    fn refuses_out_of_bounds_fields() {
        assert!(Request::Random { len: 0 }.encode(1).is_err());
        assert!(Request::Random { len: 4097 }.encode(1).is_err());
        assert!(
            Request::Sign {
                label: "k".into(),
                data: vec![0; MAX_DATA + 1]
            }
            .encode(1)
            .is_err()
        );
        assert!(
            Request::GenerateKey {
                kind: KeyType::Aes256,
                label: "bad label".into()
            }
            .encode(1)
            .is_err()
        );
    }

    /// The decrypt request for the result of `encrypt`, when `encrypt` is
    /// accepted: AES-256-GCM output is nonce (12) ‖ ciphertext ‖ tag (16).
    fn decrypt_of(encrypt: &Request) -> Request {
        let Request::Encrypt {
            label,
            plaintext,
            aad,
        } = encrypt
        else {
            panic!("not an encrypt request");
        };
        Request::Decrypt {
            label: label.clone(),
            ciphertext: vec![0xc7; plaintext.len() + 28],
            aad: aad.clone(),
        }
    }

    /// Accepted by the sender: encodes, and the encoding fits one InnerData
    /// plaintext (65535 − 1 type byte − 16 tag).
    fn accepted(request: &Request) -> Option<Vec<u8>> {
        request
            .encode(9)
            .ok()
            .filter(|b| b.len() <= crate::inner::MAX_CHANNEL_PLAINTEXT)
    }

    #[test]
    fn the_largest_encrypt_plaintext_can_be_decrypted() {
        assert_eq!(CIPHERTEXT_OVERHEAD, 28);
        assert_eq!(MAX_ENCRYPT_PLAINTEXT, 32_740);
        assert_eq!(MAX_ENCRYPT_REQUEST, 65_490);
        assert_eq!(MAX_GCM_ENCRYPT_REQUEST, 65_502);
        let long = "k".repeat(64);
        for (label, pt, aad) in [
            ("k", MAX_DATA, 0),
            ("k", MAX_DATA - 28, 0),
            ("k", MAX_DATA - 27, 0),
            (long.as_str(), MAX_DATA - 28, MAX_DATA),
            (long.as_str(), MAX_DATA - 28, MAX_DATA - 100),
            // Both fields within their limits and the encrypt request fits
            // one InnerData frame, but its decrypt request (28 bytes
            // longer) would not: 74 + 32740 + 32700 = 65514 ≤ 65518 < 65542.
            (long.as_str(), MAX_DATA - 28, 32_700),
            (long.as_str(), 0, MAX_DATA),
        ] {
            let enc = Request::Encrypt {
                label: label.into(),
                plaintext: vec![1; pt],
                aad: vec![2; aad],
            };
            if let Some(bytes) = accepted(&enc) {
                assert_eq!(Request::decode(&bytes).unwrap(), (9, enc.clone()));
                let dec = decrypt_of(&enc);
                let bytes = accepted(&dec)
                    .unwrap_or_else(|| panic!("plaintext {pt}, aad {aad}: decrypt refused"));
                assert_eq!(Request::decode(&bytes).unwrap(), (9, dec));
            }
        }
        // A plaintext as long as the ciphertext limit is refused up front.
        let too_long = Request::Encrypt {
            label: "k".into(),
            plaintext: vec![1; MAX_DATA - 27],
            aad: vec![],
        };
        assert!(too_long.encode(1).is_err());
        let mut bytes = Request::Encrypt {
            label: "k".into(),
            plaintext: vec![1; MAX_DATA - 28],
            aad: vec![],
        }
        .encode(1)
        .unwrap();
        // The same request with one more plaintext byte, hand-built: the
        // decoder refuses it too.
        let at = 4 + 1 + 2;
        let len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) + 1;
        bytes[at..at + 2].copy_from_slice(&len.to_be_bytes());
        bytes.insert(at + 2, 1);
        assert!(Request::decode(&bytes).is_err());
    }

    /// The example plaintexts of PROTOCOL.md §7.6, byte for byte.
    #[test]
    fn the_version_2_examples_of_the_spec_hold() {
        let request = Request::SignDigest {
            label: "k".into(),
            scheme: SignScheme::Ecdsa,
            digest: vec![0x11; 32],
        };
        let mut expected = hex::decode("0000000709016b010020").unwrap();
        expected.extend([0x11; 32]);
        assert_eq!(request.encode(7).unwrap(), expected);

        let reply = Response {
            id: 7,
            result: Ok(Reply::DigestSignature(vec![0xab; 64])),
        };
        let mut expected = hex::decode("0000000700090040").unwrap();
        expected.extend([0xab; 64]);
        assert_eq!(reply.encode(OPS_V2), expected);

        assert_eq!(Request::unknown_op_id(&[0, 0, 0, 8, 0x7f]), Some(8));
        let unsupported = Response {
            id: 8,
            result: Err(Status::Unsupported),
        };
        assert_eq!(unsupported.encode(OPS_V2), [0, 0, 0, 8, 6]);

        let mut public = vec![0x04];
        public.extend([0x22; 64]);
        let key = Response {
            id: 1,
            result: Ok(Reply::Key(KeyInfo {
                kind: KeyType::P256,
                label: "k".into(),
                public_key: public.clone(),
                id: vec![0x0a, 0x0b],
            })),
        };
        let mut expected = hex::decode("00000001000302016b0041").unwrap();
        expected.extend(&public);
        expected.extend([0x00, 0x02, 0x0a, 0x0b]);
        assert_eq!(key.encode(OPS_V2), expected);
        // In a version 1 session the same key info has no id.
        assert_eq!(key.encode(1), expected[..expected.len() - 4]);
    }

    #[test]
    fn a_reply_answers_only_the_request_of_its_op() {
        let key = KeyInfo {
            kind: KeyType::Aes256,
            label: "k".into(),
            public_key: vec![],
            id: vec![],
        };
        let requests = [
            Request::Ping,
            Request::Random { len: 3 },
            Request::GenerateKey {
                kind: KeyType::Aes256,
                label: "k".into(),
            },
            Request::ListKeys,
            Request::Sign {
                label: "k".into(),
                data: vec![1],
            },
            Request::Verify {
                label: "k".into(),
                data: vec![1],
                signature: vec![2],
            },
            Request::Encrypt {
                label: "k".into(),
                plaintext: vec![1],
                aad: vec![],
            },
            Request::Decrypt {
                label: "k".into(),
                ciphertext: vec![1; 29],
                aad: vec![],
            },
        ];
        let replies = [
            Reply::Pong,
            Reply::Random(vec![0; 3]),
            Reply::Key(key.clone()),
            Reply::Keys(vec![key]),
            Reply::Signature(vec![0; 64]),
            Reply::Verified(false),
            Reply::Ciphertext(vec![0; 29]),
            Reply::Plaintext(vec![1]),
        ];
        for (i, request) in requests.iter().enumerate() {
            for (j, reply) in replies.iter().enumerate() {
                assert_eq!(reply.answers(request), i == j, "{reply:?} to {request:?}");
            }
        }
        // A random reply carries exactly the requested number of bytes.
        let random = Request::Random { len: 3 };
        assert!(!Reply::Random(vec![0; 2]).answers(&random));
        assert!(!Reply::Random(vec![0; 4]).answers(&random));
    }

    proptest! {
        #[test]
        fn every_accepted_encrypt_leaves_room_for_its_decrypt(
            label_len in 1usize..=64,
            pt in prop_oneof![0usize..=MAX_DATA, MAX_DATA - 64..=MAX_DATA],
            aad_short in 0usize..128,
        ) {
            // Aim at the edge: an aad that (nearly) fills the channel.
            let fixed = 4 + 1 + 1 + label_len + 2 + 2;
            let room = crate::inner::MAX_CHANNEL_PLAINTEXT.saturating_sub(fixed + pt);
            let aad = room.min(MAX_DATA).saturating_sub(aad_short);
            let enc = Request::Encrypt {
                label: "k".repeat(label_len),
                plaintext: vec![1; pt],
                aad: vec![2; aad],
            };
            if accepted(&enc).is_some() {
                prop_assert!(accepted(&decrypt_of(&enc)).is_some());
            }
        }

        #[test]
        fn any_bytes_never_panic_a_request_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((_, req)) = Request::decode(&bytes) {
                // Whatever decodes re-encodes to the same bytes.
                prop_assert_eq!(req.encode(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])).unwrap(), bytes);
            }
        }

        #[test]
        fn any_bytes_never_panic_a_response_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for version in [1, 2] {
                if let Ok(resp) = Response::decode(&bytes, version) {
                    // Whatever decodes re-encodes to the same bytes.
                    prop_assert_eq!(resp.encode(version), bytes.clone());
                }
            }
        }
    }
}
