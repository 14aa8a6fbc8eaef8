//! The HSM operations of PROTOCOL.md §7 on a PKCS#11 token.
//!
//! Keys are token objects labelled `label_prefix + label`: a key pair as a
//! private and a public key object, an AES key as a secret key object, all
//! generated inside the token with `CKA_SENSITIVE` true and
//! `CKA_EXTRACTABLE` false. Stored objects (certificates) are data objects
//! of application `hsmgate` whose value is `id length (1 byte) ‖ id ‖
//! value`. Results have the software store's formats byte for byte: ECDSA
//! signatures `r ‖ s`, AES-GCM `nonce ‖ ciphertext ‖ tag` with a nonce from
//! the token's generator, public keys as SEC1 points or DER `RSAPublicKey`.
//! Signatures are checked in the node with the public key, as the software
//! store does.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsmgate_wire::der::{self, ED25519_PARAMS, Hash, P256_PARAMS, P384_PARAMS};
use hsmgate_wire::ops::{
    GCM_IV_LEN, KeyInfo, KeyRef, KeyType, MAX_ID, MAX_OBJECT, OaepHash, ObjectInfo, Reply, Request,
    SignScheme, Status,
};
use zeroize::Zeroizing;

use super::TokenStore;

/// The application tag of stored objects.
const OBJECT_APPLICATION: &[u8] = b"hsmgate";

/// A key found on the token: its private (or secret) key object. The
/// public key object is looked up only by the operations that need it.
struct Found {
    kind: KeyType,
    private: ObjectHandle,
    id: Vec<u8>,
}

/// What an operation's token call failed with, as a status (an op the
/// token cannot do is `unsupported`, never a dropped session).
pub(super) fn status_of(e: &Error) -> Status {
    match e {
        Error::Pkcs11(rv, _) => match rv {
            RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::FunctionNotSupported
            | RvError::KeyTypeInconsistent
            | RvError::CurveNotSupported
            | RvError::KeySizeRange
            | RvError::ArgumentsBad => Status::Unsupported,
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => Status::CryptoFailed,
            RvError::DataLenRange | RvError::DataInvalid => Status::InvalidArgument,
            RvError::DeviceMemory => Status::LimitReached,
            _ => Status::Internal,
        },
        Error::NotSupported => Status::Unsupported,
        _ => Status::Internal,
    }
}

/// A token call's error or a status decided by the node.
pub(super) enum Failure {
    Token(Error),
    Status(Status),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Token(e)
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

type Res<T> = Result<T, Failure>;

impl TokenStore {
    fn token_label(&self, label: &str) -> Vec<u8> {
        format!("{}{label}", self.prefix).into_bytes()
    }

    /// Run `request` with `session` (a session of inner protocol `version`).
    pub(super) fn run_request(&self, s: &Session, request: &Request, version: u8) -> Res<Reply> {
        let visible = |kind: KeyType| kind.since() <= version;
        Ok(match request {
            Request::Ping => Reply::Pong,
            Request::Random { len } => Reply::Random(s.generate_random_vec(u32::from(*len))?),
            Request::GenerateKey { kind, label } => Reply::Key(self.generate(s, *kind, label)?),
            Request::ListKeys => Reply::Keys(
                self.list(s)?
                    .into_iter()
                    .filter(|k| visible(k.kind))
                    .map(|k| self.info(s, &k))
                    .collect::<Res<Vec<_>>>()?,
            ),
            Request::Sign { label, data } => {
                let key = self.key(s, label, version)?;
                Reply::Signature(self.sign(s, &key, data)?)
            }
            Request::Verify {
                label,
                data,
                signature,
            } => {
                let key = self.key(s, label, version)?;
                let public = self.public_key(s, label, &key)?;
                Reply::Verified(crate::ops::verify(key.kind, &public, data, signature)?)
            }
            Request::Encrypt {
                label,
                plaintext,
                aad,
            } => {
                let key = self.aes(s, label, version)?;
                let mut nonce = s.generate_random_vec(GCM_IV_LEN as u32)?;
                let sealed = gcm(s, key, &mut nonce, aad, plaintext, true)?;
                let mut out = nonce;
                out.extend_from_slice(&sealed);
                Reply::Ciphertext(out)
            }
            Request::Decrypt {
                label,
                ciphertext,
                aad,
            } => {
                let key = self.aes(s, label, version)?;
                if ciphertext.len() < GCM_IV_LEN + 16 {
                    return Err(Status::InvalidArgument.into());
                }
                let (nonce, sealed) = ciphertext.split_at(GCM_IV_LEN);
                Reply::Plaintext(gcm(s, key, &mut nonce.to_vec(), aad, sealed, false)?)
            }
            Request::SignDigest {
                label,
                scheme,
                digest,
            } => {
                let key = self.key(s, label, version)?;
                Reply::DigestSignature(sign_digest(s, &key, *scheme, digest)?)
            }
            Request::DecryptRsa {
                label,
                hash,
                ciphertext,
            } => {
                let key = self.key(s, label, version)?;
                let Some(size) = key.kind.rsa_bytes() else {
                    return Err(Status::InvalidArgument.into());
                };
                if ciphertext.len() != size {
                    return Err(Status::InvalidArgument.into());
                }
                let (hash, mgf) = match hash {
                    OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
                    OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                    OaepHash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                    OaepHash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                };
                let params = PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty());
                let plain = s
                    .decrypt(&Mechanism::RsaPkcsOaep(params), key.private, ciphertext)
                    .map(Zeroizing::new)
                    .map_err(decryption_failure)?;
                Reply::RsaPlaintext(plain.to_vec())
            }
            Request::DeleteKey { label } => {
                let objects = self.key_objects(s, label)?;
                if objects.is_empty() {
                    return Err(Status::NotFound.into());
                }
                for o in objects {
                    s.destroy_object(o)?;
                }
                Reply::KeyDeleted
            }
            Request::SetKeyId { label, id } => {
                if id.len() > MAX_ID {
                    return Err(Status::InvalidArgument.into());
                }
                let key = self.key(s, label, OPS_ANY)?;
                s.update_attributes(key.private, &[Attribute::Id(id.clone())])?;
                if key.kind != KeyType::Aes256 {
                    let public = self.public_handle(s, label)?;
                    s.update_attributes(public, &[Attribute::Id(id.clone())])?;
                }
                Reply::KeyIdSet
            }
            Request::EncryptGcm {
                label,
                iv,
                plaintext,
                aad,
            } => {
                let key = self.aes(s, label, version)?;
                Reply::GcmCiphertext(gcm(s, key, &mut iv.clone(), aad, plaintext, true)?)
            }
            Request::DecryptGcm {
                label,
                iv,
                ciphertext,
                aad,
            } => {
                let key = self.aes(s, label, version)?;
                if ciphertext.len() < 16 {
                    return Err(Status::InvalidArgument.into());
                }
                Reply::GcmPlaintext(gcm(s, key, &mut iv.clone(), aad, ciphertext, false)?)
            }
            Request::PutObject { label, id, value } => {
                Reply::ObjectStored(self.put_object(s, label, id, value)?)
            }
            Request::ListObjects => Reply::Objects(
                self.objects(s)?
                    .into_iter()
                    .map(|(info, _, _)| info)
                    .collect(),
            ),
            Request::GetObject { label } => {
                let (info, value, _) = self
                    .objects(s)?
                    .into_iter()
                    .find(|(info, _, _)| &info.label == label)
                    .ok_or(Status::NotFound)?;
                Reply::Object { info, value }
            }
            Request::DeleteObject { label } => {
                let (_, _, handle) = self
                    .objects(s)?
                    .into_iter()
                    .find(|(info, _, _)| &info.label == label)
                    .ok_or(Status::NotFound)?;
                s.destroy_object(handle)?;
                Reply::ObjectDeleted
            }
            Request::ListKeyRefs => Reply::KeyRefs(
                self.list(s)?
                    .into_iter()
                    .filter(|k| visible(k.kind))
                    .map(|k| KeyRef {
                        kind: k.kind,
                        label: k.label,
                        id: k.id,
                    })
                    .collect(),
            ),
            Request::GetKey { label } => {
                let key = self.key(s, label, version)?;
                let listed = Listed {
                    kind: key.kind,
                    label: label.clone(),
                    id: key.id.clone(),
                };
                Reply::KeyDetails(self.info(s, &listed)?)
            }
        })
    }

    /// The private (or secret) key `label`, of a type `version` knows.
    fn key(&self, s: &Session, label: &str, version: u8) -> Res<Found> {
        let name = self.token_label(label);
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            let found =
                s.find_objects(&[Attribute::Class(class), Attribute::Label(name.clone())])?;
            let Some(&handle) = found.first() else {
                continue;
            };
            let (kind, id) = type_and_id(s, handle)?;
            let kind = kind.ok_or(Status::Unsupported)?;
            if kind.since() > version {
                return Err(Status::NotFound.into());
            }
            return Ok(Found {
                kind,
                private: handle,
                id,
            });
        }
        Err(Status::NotFound.into())
    }

    fn aes(&self, s: &Session, label: &str, version: u8) -> Res<ObjectHandle> {
        let key = self.key(s, label, version)?;
        if key.kind != KeyType::Aes256 {
            return Err(Status::InvalidArgument.into());
        }
        Ok(key.private)
    }

    /// Every object of the key `label` (both halves of a pair).
    fn key_objects(&self, s: &Session, label: &str) -> Res<Vec<ObjectHandle>> {
        let name = self.token_label(label);
        let mut out = Vec::new();
        for class in [
            ObjectClass::PRIVATE_KEY,
            ObjectClass::PUBLIC_KEY,
            ObjectClass::SECRET_KEY,
        ] {
            out.extend(s.find_objects(&[Attribute::Class(class), Attribute::Label(name.clone())])?);
        }
        Ok(out)
    }

    /// The partition's keys, sorted by label (those of types this node does
    /// not serve are left out).
    fn list(&self, s: &Session) -> Res<Vec<Listed>> {
        let mut out = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            for handle in s.find_objects(&[Attribute::Class(class)])? {
                let Some(label) = self.label_of(s, handle)? else {
                    continue;
                };
                let (Some(kind), id) = type_and_id(s, handle)? else {
                    continue;
                };
                out.push(Listed { kind, id, label });
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out.dedup_by(|a, b| a.label == b.label);
        Ok(out)
    }

    /// The partition label of `handle`: its token label without the prefix,
    /// if it has the prefix and is a valid name.
    fn label_of(&self, s: &Session, handle: ObjectHandle) -> Res<Option<String>> {
        let attrs = s.get_attributes(handle, &[AttributeType::Label])?;
        let Some(Attribute::Label(raw)) = attrs.into_iter().next() else {
            return Ok(None);
        };
        let Ok(text) = String::from_utf8(raw) else {
            return Ok(None);
        };
        Ok(text
            .strip_prefix(self.prefix.as_str())
            .filter(|l| hsmgate_wire::text::validate_name(l).is_ok())
            .map(str::to_owned))
    }

    /// The public key object of the pair `label`.
    fn public_handle(&self, s: &Session, label: &str) -> Res<ObjectHandle> {
        let found = s.find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(self.token_label(label)),
        ])?;
        Ok(*found.first().ok_or(Status::Internal)?)
    }

    fn info(&self, s: &Session, key: &Listed) -> Res<KeyInfo> {
        let public = match key.kind {
            KeyType::Aes256 => Vec::new(),
            _ => public_bytes(s, self.public_handle(s, &key.label)?, key.kind)?,
        };
        Ok(KeyInfo {
            kind: key.kind,
            label: key.label.clone(),
            public_key: public,
            id: key.id.clone(),
        })
    }

    fn public_key(&self, s: &Session, label: &str, key: &Found) -> Res<Vec<u8>> {
        match key.kind {
            KeyType::Aes256 => Err(Status::InvalidArgument.into()),
            kind => public_bytes(s, self.public_handle(s, label)?, kind),
        }
    }

    fn generate(&self, s: &Session, kind: KeyType, label: &str) -> Res<KeyInfo> {
        if hsmgate_wire::text::validate_name(label).is_err() {
            return Err(Status::InvalidArgument.into());
        }
        if !self.key_objects(s, label)?.is_empty() {
            return Err(Status::AlreadyExists.into());
        }
        if self.list(s)?.len() >= self.max_keys {
            return Err(Status::LimitReached.into());
        }
        let name = self.token_label(label);
        let mut ours = Vec::new();
        let common = |private: bool| {
            let mut t = vec![
                Attribute::Token(true),
                Attribute::Label(name.clone()),
                Attribute::Id(Vec::new()),
            ];
            if private {
                t.extend([
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                ]);
            }
            t
        };
        match kind {
            KeyType::Aes256 => {
                let mut t = common(true);
                t.extend([
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(CkKeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ]);
                ours.push(s.generate_key(&Mechanism::AesKeyGen, &t)?);
            }
            _ => {
                let (mechanism, mut public) = match kind {
                    KeyType::P256 => (
                        Mechanism::EccKeyPairGen,
                        vec![Attribute::EcParams(P256_PARAMS.to_vec())],
                    ),
                    KeyType::P384 => (
                        Mechanism::EccKeyPairGen,
                        vec![Attribute::EcParams(P384_PARAMS.to_vec())],
                    ),
                    KeyType::Ed25519 => (
                        Mechanism::EccEdwardsKeyPairGen,
                        vec![Attribute::EcParams(ED25519_PARAMS.to_vec())],
                    ),
                    _ => (
                        Mechanism::RsaPkcsKeyPairGen,
                        vec![
                            Attribute::ModulusBits(
                                (kind.rsa_bytes().unwrap_or(256) as u64 * 8).into(),
                            ),
                            Attribute::PublicExponent(vec![1, 0, 1]),
                        ],
                    ),
                };
                public.extend(common(false));
                public.push(Attribute::Verify(true));
                let mut private = common(true);
                private.push(Attribute::Sign(true));
                if kind.is_rsa() {
                    private.push(Attribute::Decrypt(true));
                }
                let (public, private) = s.generate_key_pair(&mechanism, &public, &private)?;
                ours.extend([private, public]);
            }
        }
        // Two nodes sharing the token may have made the same label at once:
        // a node that then finds another key of that label removes its own.
        let class = if kind == KeyType::Aes256 {
            ObjectClass::SECRET_KEY
        } else {
            ObjectClass::PRIVATE_KEY
        };
        let made = s.find_objects(&[Attribute::Class(class), Attribute::Label(name.clone())])?;
        if made.len() > 1 {
            for o in ours {
                let _ = s.destroy_object(o);
            }
            return Err(Status::AlreadyExists.into());
        }
        let key = self.key(s, label, OPS_ANY)?;
        let listed = Listed {
            kind: key.kind,
            label: label.to_owned(),
            id: key.id,
        };
        self.info(s, &listed)
    }

    fn sign(&self, s: &Session, key: &Found, data: &[u8]) -> Res<Vec<u8>> {
        use aws_lc_rs::digest::{SHA256, SHA384, digest};
        Ok(match key.kind {
            KeyType::Ed25519 => s.sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                key.private,
                data,
            )?,
            KeyType::P256 => s.sign(
                &Mechanism::Ecdsa,
                key.private,
                digest(&SHA256, data).as_ref(),
            )?,
            KeyType::P384 => s.sign(
                &Mechanism::Ecdsa,
                key.private,
                digest(&SHA384, data).as_ref(),
            )?,
            KeyType::Aes256 => return Err(Status::InvalidArgument.into()),
            _ => s.sign(&Mechanism::Sha256RsaPkcs, key.private, data)?,
        })
    }

    fn put_object(&self, s: &Session, label: &str, id: &[u8], value: &[u8]) -> Res<ObjectInfo> {
        if hsmgate_wire::text::validate_name(label).is_err()
            || id.len() > MAX_ID
            || value.len() > MAX_OBJECT
        {
            return Err(Status::InvalidArgument.into());
        }
        let objects = self.objects(s)?;
        if objects.iter().any(|(info, _, _)| info.label == label) {
            return Err(Status::AlreadyExists.into());
        }
        if objects.len() >= self.max_keys {
            return Err(Status::LimitReached.into());
        }
        let mut stored = vec![id.len() as u8];
        stored.extend_from_slice(id);
        stored.extend_from_slice(value);
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(OBJECT_APPLICATION.to_vec()),
            Attribute::Label(self.token_label(label)),
            Attribute::Value(stored),
        ])?;
        Ok(ObjectInfo {
            label: label.to_owned(),
            id: id.to_vec(),
            size: value.len() as u16,
        })
    }

    /// The stored objects with their values and handles, by label.
    fn objects(&self, s: &Session) -> Res<Vec<(ObjectInfo, Vec<u8>, ObjectHandle)>> {
        let mut out = Vec::new();
        let handles = s.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(OBJECT_APPLICATION.to_vec()),
        ])?;
        for handle in handles {
            let Some(label) = self.label_of(s, handle)? else {
                continue;
            };
            let attrs = s.get_attributes(handle, &[AttributeType::Value])?;
            let Some(Attribute::Value(stored)) = attrs.into_iter().next() else {
                continue;
            };
            let Some((&id_len, rest)) = stored.split_first() else {
                continue;
            };
            let id_len = usize::from(id_len);
            if id_len > MAX_ID || rest.len() < id_len || rest.len() - id_len > MAX_OBJECT {
                continue;
            }
            let (id, value) = rest.split_at(id_len);
            out.push((
                ObjectInfo {
                    label,
                    id: id.to_vec(),
                    size: value.len() as u16,
                },
                value.to_vec(),
                handle,
            ));
        }
        out.sort_by(|a, b| a.0.label.cmp(&b.0.label));
        Ok(out)
    }
}

/// Any key type (for ops every version has, like set_key_id).
const OPS_ANY: u8 = u8::MAX;

/// A key as listed: what the listing needs to describe it.
struct Listed {
    kind: KeyType,
    label: String,
    id: Vec<u8>,
}

/// The hsmgate key type and the id of a token key, read in one
/// `C_GetAttributeValue` round; the type is `None` for keys this node does
/// not serve (other curves, RSA sizes, AES lengths).
fn type_and_id(s: &Session, handle: ObjectHandle) -> Result<(Option<KeyType>, Vec<u8>), Error> {
    let attrs = s.get_attributes(
        handle,
        &[
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::Modulus,
            AttributeType::ValueLen,
            AttributeType::Id,
        ],
    )?;
    let (mut kt, mut params, mut bits, mut len, mut id) = (None, None, 0, 0, Vec::new());
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kt = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Modulus(n) => bits = n.iter().skip_while(|b| **b == 0).count() * 8,
            Attribute::ValueLen(l) => len = u64::from(l),
            Attribute::Id(i) if i.len() <= MAX_ID => id = i,
            _ => {}
        }
    }
    let kind = match kt {
        Some(k) if k == CkKeyType::EC => match params.as_deref() {
            Some(P256_PARAMS) => Some(KeyType::P256),
            Some(P384_PARAMS) => Some(KeyType::P384),
            _ => None,
        },
        Some(k) if k == CkKeyType::EC_EDWARDS => Some(KeyType::Ed25519),
        Some(k) if k == CkKeyType::RSA => match bits {
            2048 => Some(KeyType::Rsa2048),
            3072 => Some(KeyType::Rsa3072),
            4096 => Some(KeyType::Rsa4096),
            _ => None,
        },
        Some(k) if k == CkKeyType::AES && len == 32 => Some(KeyType::Aes256),
        _ => None,
    };
    Ok((kind, id))
}

/// The public key as the protocol carries it: the SEC1 point (or 32
/// Ed25519 bytes) from `CKA_EC_POINT`, or a DER `RSAPublicKey` built from
/// the modulus and exponent.
fn public_bytes(s: &Session, public: ObjectHandle, kind: KeyType) -> Res<Vec<u8>> {
    if kind.is_rsa() {
        let attrs = s.get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else {
            return Err(Status::Internal.into());
        };
        return Ok(der::rsa_public_key(&n, &e));
    }
    let attrs = s.get_attributes(public, &[AttributeType::EcPoint])?;
    let Some(Attribute::EcPoint(point)) = attrs.into_iter().next() else {
        return Err(Status::Internal.into());
    };
    let raw = der::octet_string_contents(&point)
        .unwrap_or(&point)
        .to_vec();
    let expected = match kind {
        KeyType::P256 => 65,
        KeyType::P384 => 97,
        _ => 32,
    };
    if raw.len() != expected {
        return Err(Status::Internal.into());
    }
    Ok(raw)
}

/// AES-256-GCM on the token with a 128-bit tag: `ciphertext ‖ tag` out of
/// encryption, the plaintext out of decryption.
fn gcm(
    s: &Session,
    key: ObjectHandle,
    iv: &mut [u8],
    aad: &[u8],
    input: &[u8],
    encrypt: bool,
) -> Res<Vec<u8>> {
    let params = GcmParams::new(iv, aad, 128.into())?;
    let mechanism = Mechanism::AesGcm(params);
    if encrypt {
        return Ok(s.encrypt(&mechanism, key, input)?);
    }
    s.decrypt(&mechanism, key, input)
        .map_err(decryption_failure)
}

/// A decryption the token refused. Tokens differ in how they report a
/// ciphertext that does not check (a GCM tag, OAEP padding):
/// CKR_ENCRYPTED_DATA_INVALID by the standard, CKR_GENERAL_ERROR or
/// CKR_FUNCTION_FAILED in SoftHSM2 and others. On well-formed input all
/// three mean the same to the client: `crypto_failed`, with no detail.
fn decryption_failure(e: Error) -> Failure {
    match e {
        Error::Pkcs11(
            RvError::EncryptedDataInvalid | RvError::GeneralError | RvError::FunctionFailed,
            _,
        ) => Failure::Status(Status::CryptoFailed),
        e => Failure::Token(e),
    }
}

fn sign_digest(s: &Session, key: &Found, scheme: SignScheme, digest: &[u8]) -> Res<Vec<u8>> {
    let ec = matches!(key.kind, KeyType::P256 | KeyType::P384);
    match scheme {
        SignScheme::Ecdsa if ec => {
            // ECDSA uses the leftmost bits of the digest up to the order's
            // length; cut it here as the software store does.
            let cut = if key.kind == KeyType::P256 { 32 } else { 48 };
            Ok(s.sign(
                &Mechanism::Ecdsa,
                key.private,
                &digest[..digest.len().min(cut)],
            )?)
        }
        _ if !key.kind.is_rsa() => Err(Status::InvalidArgument.into()),
        SignScheme::Ecdsa => Err(Status::InvalidArgument.into()),
        SignScheme::RsaPkcs1Raw => {
            let size = key.kind.rsa_bytes().unwrap_or(0);
            if digest.len() + 11 > size {
                return Err(Status::InvalidArgument.into());
            }
            Ok(s.sign(&Mechanism::RsaPkcs, key.private, digest)?)
        }
        SignScheme::RsaPkcs1Sha256 | SignScheme::RsaPkcs1Sha384 | SignScheme::RsaPkcs1Sha512 => {
            let hash = match scheme {
                SignScheme::RsaPkcs1Sha256 => Hash::Sha256,
                SignScheme::RsaPkcs1Sha384 => Hash::Sha384,
                _ => Hash::Sha512,
            };
            let input = der::to_digest_info(hash, digest);
            Ok(s.sign(&Mechanism::RsaPkcs, key.private, &input)?)
        }
        SignScheme::RsaPssSha256 | SignScheme::RsaPssSha384 | SignScheme::RsaPssSha512 => {
            let (hash_alg, mgf) = match scheme {
                SignScheme::RsaPssSha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                SignScheme::RsaPssSha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                _ => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
            };
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (digest.len() as u64).into(),
            };
            Ok(s.sign(&Mechanism::RsaPkcsPss(params), key.private, digest)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_become_statuses() {
        use cryptoki::context::Function;
        let e = |rv| Error::Pkcs11(rv, Function::Decrypt);
        assert_eq!(
            status_of(&e(RvError::MechanismInvalid)),
            Status::Unsupported
        );
        assert_eq!(
            status_of(&e(RvError::EncryptedDataInvalid)),
            Status::CryptoFailed
        );
        assert_eq!(status_of(&e(RvError::GeneralError)), Status::Internal);
    }
}
