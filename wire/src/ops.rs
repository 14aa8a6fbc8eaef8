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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyType {
    Ed25519 = 1,
    P256 = 2,
    Aes256 = 3,
}

impl KeyType {
    pub fn from_byte(b: u8) -> Option<KeyType> {
        Some(match b {
            1 => KeyType::Ed25519,
            2 => KeyType::P256,
            3 => KeyType::Aes256,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
            KeyType::Aes256 => "aes256",
        }
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ed25519" => Ok(KeyType::Ed25519),
            "p256" => Ok(KeyType::P256),
            "aes256" => Ok(KeyType::Aes256),
            _ => Err(format!("unknown key type {s:?} (ed25519, p256, aes256)")),
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
}

/// Public description of a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kind: KeyType,
    pub label: String,
    /// The public key (Ed25519: 32 bytes; P-256: SEC1 uncompressed, 65
    /// bytes); empty for AES keys.
    pub public_key: Vec<u8>,
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

fn check_data(field: &'static str, data: &[u8]) -> Result<(), WireError> {
    if data.len() > MAX_DATA {
        return Err(WireError::malformed(field, "longer than 32768 bytes"));
    }
    Ok(())
}

fn check_plaintext(plaintext: &[u8]) -> Result<(), WireError> {
    if plaintext.len() > MAX_ENCRYPT_PLAINTEXT {
        return Err(WireError::malformed("plaintext", "longer than 32740 bytes"));
    }
    Ok(())
}

/// An encoded encrypt request must leave room for its decrypt request.
fn check_encrypt_len(encoded: &[u8]) -> Result<(), WireError> {
    if encoded.len() > MAX_ENCRYPT_REQUEST {
        return Err(WireError::malformed(
            "encrypt",
            "request longer than 65490 bytes (its decrypt would not fit a frame)",
        ));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), WireError> {
    validate_name(label).map_err(|why| WireError::malformed("label", why))
}

impl Request {
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
                check_encrypt_len(&out)?;
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
        }
        Ok(out)
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
                check_encrypt_len(bytes)?;
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
    pub const PONG: u8 = 0x01;
    pub const RANDOM: u8 = 0x02;
    pub const KEY: u8 = 0x03;
    pub const KEYS: u8 = 0x04;
    pub const SIGNATURE: u8 = 0x05;
    pub const VERIFIED: u8 = 0x06;
    pub const CIPHERTEXT: u8 = 0x07;
    pub const PLAINTEXT: u8 = 0x08;
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
            | (Reply::Plaintext(_), Request::Decrypt { .. }) => true,
            _ => false,
        }
    }
}

/// Most keys a `ListKeys` reply carries; a partition holds no more.
pub const MAX_KEYS: usize = 256;

fn put_key(out: &mut Vec<u8>, key: &KeyInfo) {
    out.push(key.kind as u8);
    put_name(out, &key.label);
    put_blob(out, &key.public_key);
}

fn read_key(r: &mut Reader<'_>) -> Result<KeyInfo, WireError> {
    let kind = KeyType::from_byte(r.u8()?)
        .ok_or_else(|| WireError::malformed("response", "unknown key type"))?;
    let label = r.name()?.to_owned();
    let public_key = r.blob()?;
    if public_key.len() > 128 {
        return Err(WireError::malformed("response", "public key too long"));
    }
    Ok(KeyInfo {
        kind,
        label,
        public_key: public_key.to_vec(),
    })
}

impl Response {
    /// Encode. A successful reply starts with status 0 and a reply tag (the
    /// op it answers); a failure is the status byte alone.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.id.to_be_bytes());
        match &self.result {
            Err(status) => out.push(*status as u8),
            Ok(reply) => {
                out.push(0);
                match reply {
                    Reply::Pong => out.push(reply_tag::PONG),
                    Reply::Random(b) => {
                        out.push(reply_tag::RANDOM);
                        put_blob(&mut out, b);
                    }
                    Reply::Key(k) => {
                        out.push(reply_tag::KEY);
                        put_key(&mut out, k);
                    }
                    Reply::Keys(keys) => {
                        out.push(reply_tag::KEYS);
                        let n = keys.len().min(MAX_KEYS);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                        for k in &keys[..n] {
                            put_key(&mut out, k);
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
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, WireError> {
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
        let reply = match r.u8()? {
            reply_tag::PONG => Reply::Pong,
            reply_tag::RANDOM => Reply::Random(r.blob()?.to_vec()),
            reply_tag::KEY => Reply::Key(read_key(&mut r)?),
            reply_tag::KEYS => {
                let n = r.u16()? as usize;
                if n > MAX_KEYS {
                    return Err(WireError::malformed("response", "too many keys"));
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(read_key(&mut r)?);
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
            assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        }
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

    #[test]
    fn a_reply_answers_only_the_request_of_its_op() {
        let key = KeyInfo {
            kind: KeyType::Aes256,
            label: "k".into(),
            public_key: vec![],
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
            let _ = Response::decode(&bytes);
        }
    }
}
