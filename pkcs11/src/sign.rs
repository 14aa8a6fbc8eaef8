//! Signing and verification operations.
//!
//! Hash-and-sign mechanisms (`CKM_ECDSA_SHA256`, `CKM_SHA256_RSA_PKCS`…)
//! hash in the library, across any number of `C_SignUpdate` calls, and send
//! the node only the digest: there is no size limit on the data. Raw
//! mechanisms send what the caller gives (`CKM_ECDSA`: a digest;
//! `CKM_RSA_PKCS`: a DigestInfo; `CKM_EDDSA`: the message, at most 32768
//! bytes, since Ed25519 hashes the whole message itself).
//!
//! Verification needs no secret and runs in the library against the public
//! key the node reported: RustCrypto for ECDSA and Ed25519, AWS-LC for RSA.

use aws_lc_rs::digest;
use cryptoki_sys::*;
use hsmgate_client::{KeyInfo, KeyType, SignScheme};
use zeroize::Zeroizing;

use crate::der::{self, Hash};
use crate::ffi::{Mechanism, Params};

/// Longest message `CKM_EDDSA` takes (the protocol's data limit).
pub const MAX_EDDSA_MESSAGE: usize = hsmgate_wire::ops::MAX_DATA;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// ECDSA over a digest the caller gives (`None`) or the library computes.
    Ecdsa(Option<Hash>),
    EdDsa,
    /// `CKM_RSA_PKCS`: the input is a DigestInfo.
    RsaPkcs1Raw,
    RsaPkcs1(Hash),
    /// RSA-PSS with this hash; `prehashed`: the input is the digest.
    RsaPss {
        hash: Hash,
        prehashed: bool,
    },
}

enum Input {
    Buffer(Zeroizing<Vec<u8>>),
    Hashing(digest::Context),
}

/// What the node is asked to do at the end of a signing operation.
pub enum NodeRequest {
    /// Sign this message (Ed25519).
    Message(Vec<u8>),
    /// Sign this digest.
    Digest(SignScheme, Vec<u8>),
}

/// One sign or verify operation of a session.
pub struct SignOp {
    pub key: KeyInfo,
    scheme: Scheme,
    input: Input,
    /// `C_SignUpdate` was called: only `C_SignFinal` may end it.
    pub multi_part: bool,
    /// A result computed for a caller whose buffer was too small.
    pub pending: Option<Vec<u8>>,
}

fn hash_of_mechanism(m: CK_MECHANISM_TYPE) -> Option<Hash> {
    match m {
        CKM_SHA_1 => Some(Hash::Sha1),
        CKM_SHA256 => Some(Hash::Sha256),
        CKM_SHA384 => Some(Hash::Sha384),
        CKM_SHA512 => Some(Hash::Sha512),
        _ => None,
    }
}

pub fn mgf_of(hash: Hash) -> CK_RSA_PKCS_MGF_TYPE {
    match hash {
        Hash::Sha1 => CKG_MGF1_SHA1,
        Hash::Sha256 => CKG_MGF1_SHA256,
        Hash::Sha384 => CKG_MGF1_SHA384,
        Hash::Sha512 => CKG_MGF1_SHA512,
    }
}

pub fn algorithm(hash: Hash) -> &'static digest::Algorithm {
    match hash {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    }
}

/// PSS parameters: the hash (which must match the mechanism's, if it has
/// one), MGF1 with the same hash, and a salt as long as the hash, which is
/// what the node signs with.
fn pss_hash(params: &Params, fixed: Option<Hash>) -> Result<Hash, CK_RV> {
    let Params::Pss {
        hash,
        mgf,
        salt_len,
    } = params
    else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    let hash = hash_of_mechanism(*hash)
        .filter(|h| *h != Hash::Sha1)
        .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if fixed.is_some_and(|f| f != hash)
        || *mgf != mgf_of(hash)
        || *salt_len as usize != hash.output_len()
    {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok(hash)
}

impl SignOp {
    /// Start an operation with `mechanism` on `key`. The caller has checked
    /// that the object may sign (or verify) at all.
    pub fn new(mechanism: &Mechanism, key: &KeyInfo) -> Result<SignOp, CK_RV> {
        let kind = key.kind;
        let ec = matches!(kind, KeyType::P256 | KeyType::P384);
        let scheme = match mechanism.kind {
            CKM_ECDSA if ec => Scheme::Ecdsa(None),
            CKM_ECDSA_SHA256 if ec => Scheme::Ecdsa(Some(Hash::Sha256)),
            CKM_ECDSA_SHA384 if ec => Scheme::Ecdsa(Some(Hash::Sha384)),
            CKM_ECDSA_SHA512 if ec => Scheme::Ecdsa(Some(Hash::Sha512)),
            CKM_EDDSA if kind == KeyType::Ed25519 => {
                // Ed25519 only: no prehash (Ed25519ph), no context (Ed25519ctx).
                if let Params::EdDsa { prehash, context } = &mechanism.params
                    && (*prehash || !context.is_empty())
                {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                Scheme::EdDsa
            }
            CKM_RSA_PKCS if kind.is_rsa() => Scheme::RsaPkcs1Raw,
            CKM_SHA256_RSA_PKCS if kind.is_rsa() => Scheme::RsaPkcs1(Hash::Sha256),
            CKM_SHA384_RSA_PKCS if kind.is_rsa() => Scheme::RsaPkcs1(Hash::Sha384),
            CKM_SHA512_RSA_PKCS if kind.is_rsa() => Scheme::RsaPkcs1(Hash::Sha512),
            CKM_RSA_PKCS_PSS if kind.is_rsa() => Scheme::RsaPss {
                hash: pss_hash(&mechanism.params, None)?,
                prehashed: true,
            },
            CKM_SHA256_RSA_PKCS_PSS | CKM_SHA384_RSA_PKCS_PSS | CKM_SHA512_RSA_PKCS_PSS
                if kind.is_rsa() =>
            {
                let fixed = match mechanism.kind {
                    CKM_SHA256_RSA_PKCS_PSS => Hash::Sha256,
                    CKM_SHA384_RSA_PKCS_PSS => Hash::Sha384,
                    _ => Hash::Sha512,
                };
                Scheme::RsaPss {
                    hash: pss_hash(&mechanism.params, Some(fixed))?,
                    prehashed: false,
                }
            }
            m if crate::mechanism::info(m)
                .is_some_and(|i| i.flags & (CKF_SIGN | CKF_VERIFY) != 0) =>
            {
                return Err(CKR_KEY_TYPE_INCONSISTENT);
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        if !matches!(
            (scheme, &mechanism.params),
            (Scheme::RsaPss { .. }, _) | (Scheme::EdDsa, _) | (_, Params::None)
        ) {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let input = match scheme {
            Scheme::Ecdsa(Some(h)) | Scheme::RsaPkcs1(h) => {
                Input::Hashing(digest::Context::new(algorithm(h)))
            }
            Scheme::RsaPss {
                hash,
                prehashed: false,
            } => Input::Hashing(digest::Context::new(algorithm(hash))),
            _ => Input::Buffer(Zeroizing::new(Vec::new())),
        };
        Ok(SignOp {
            key: key.clone(),
            scheme,
            input,
            multi_part: false,
            pending: None,
        })
    }

    /// Longest raw input kept in memory (digests, DigestInfos, Ed25519
    /// messages).
    fn max_buffer(&self) -> usize {
        match self.scheme {
            Scheme::EdDsa => MAX_EDDSA_MESSAGE,
            _ => 1024,
        }
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), CK_RV> {
        let max = self.max_buffer();
        match &mut self.input {
            Input::Hashing(ctx) => ctx.update(data),
            Input::Buffer(buf) => {
                if buf.len() + data.len() > max {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// The length of the signature, known before it is made.
    pub fn signature_len(&self) -> usize {
        match self.key.kind {
            KeyType::Ed25519 | KeyType::P256 => 64,
            KeyType::P384 => 96,
            kind => kind.rsa_bytes().unwrap_or(0),
        }
    }

    /// Take the input: the digest (or message) the operation covers.
    fn take_input(&mut self) -> Zeroizing<Vec<u8>> {
        let input = std::mem::replace(&mut self.input, Input::Buffer(Zeroizing::new(Vec::new())));
        match input {
            Input::Buffer(b) => b,
            Input::Hashing(ctx) => Zeroizing::new(ctx.finish().as_ref().to_vec()),
        }
    }

    /// What to send the node to sign the input gathered so far.
    pub fn node_request(&mut self) -> Result<NodeRequest, CK_RV> {
        let input = self.take_input();
        let rsa_scheme = |hash| match hash {
            Hash::Sha256 => Ok(SignScheme::RsaPkcs1Sha256),
            Hash::Sha384 => Ok(SignScheme::RsaPkcs1Sha384),
            Hash::Sha512 => Ok(SignScheme::RsaPkcs1Sha512),
            Hash::Sha1 => Err(CKR_DATA_INVALID),
        };
        Ok(match self.scheme {
            Scheme::EdDsa => NodeRequest::Message(input.to_vec()),
            Scheme::Ecdsa(_) => {
                NodeRequest::Digest(SignScheme::Ecdsa, self.ecdsa_digest(&input)?.to_vec())
            }
            Scheme::RsaPkcs1Raw => {
                // Type 1 padding needs 11 bytes of the modulus.
                let max = self.signature_len().saturating_sub(11);
                if input.is_empty() || input.len() > max {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                NodeRequest::Digest(SignScheme::RsaPkcs1Raw, input.to_vec())
            }
            Scheme::RsaPkcs1(hash) => NodeRequest::Digest(rsa_scheme(hash)?, input.to_vec()),
            Scheme::RsaPss { hash, .. } => {
                if input.len() != hash.output_len() {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                let scheme = match hash {
                    Hash::Sha256 => SignScheme::RsaPssSha256,
                    Hash::Sha384 => SignScheme::RsaPssSha384,
                    _ => SignScheme::RsaPssSha512,
                };
                NodeRequest::Digest(scheme, input.to_vec())
            }
        })
    }

    /// An ECDSA digest as the node takes it: cut to the curve's length
    /// (ECDSA uses only that many leftmost bytes), at least 16 bytes.
    fn ecdsa_digest<'a>(&self, input: &'a [u8]) -> Result<&'a [u8], CK_RV> {
        let curve = if self.key.kind == KeyType::P384 {
            48
        } else {
            32
        };
        let digest = &input[..input.len().min(curve)];
        if digest.len() < 16 {
            return Err(CKR_DATA_LEN_RANGE);
        }
        Ok(digest)
    }

    /// Check `signature` over the input gathered so far, in the library.
    pub fn verify(&mut self, signature: &[u8]) -> Result<(), CK_RV> {
        if signature.len() != self.signature_len() {
            return Err(CKR_SIGNATURE_LEN_RANGE);
        }
        let input = self.take_input();
        let public = &self.key.public_key;
        let ok = match (self.scheme, self.key.kind) {
            (Scheme::EdDsa, _) => {
                let key: [u8; 32] = public
                    .as_slice()
                    .try_into()
                    .map_err(|_| CKR_GENERAL_ERROR)?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| CKR_GENERAL_ERROR)?;
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| CKR_SIGNATURE_INVALID)?;
                key.verify_strict(&input, &sig).is_ok()
            }
            (Scheme::Ecdsa(_), KeyType::P256) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let digest = self.ecdsa_digest(&input)?;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(public)
                    .map_err(|_| CKR_GENERAL_ERROR)?;
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok())
            }
            (Scheme::Ecdsa(_), _) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                let digest = self.ecdsa_digest(&input)?;
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(public)
                    .map_err(|_| CKR_GENERAL_ERROR)?;
                p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify_prehash(digest, &sig).is_ok())
            }
            (Scheme::RsaPkcs1Raw, _) => {
                let (hash, digest) = der::digest_info(&input).ok_or(CKR_DATA_INVALID)?;
                rsa_verify(public, hash, false, digest, signature)?
            }
            (Scheme::RsaPkcs1(hash), _) => rsa_verify(public, hash, false, &input, signature)?,
            (Scheme::RsaPss { hash, .. }, _) => {
                if input.len() != hash.output_len() {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                rsa_verify(public, hash, true, &input, signature)?
            }
        };
        if ok {
            Ok(())
        } else {
            Err(CKR_SIGNATURE_INVALID)
        }
    }
}

/// RSA PKCS#1 v1.5 or PSS verification of a digest with a DER
/// `RSAPublicKey`.
fn rsa_verify(
    public: &[u8],
    hash: Hash,
    pss: bool,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, CK_RV> {
    use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
    let algorithm: &'static dyn VerificationAlgorithm = match (hash, pss) {
        (Hash::Sha256, false) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (Hash::Sha384, false) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (Hash::Sha512, false) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (Hash::Sha256, true) => &sig::RSA_PSS_2048_8192_SHA256,
        (Hash::Sha384, true) => &sig::RSA_PSS_2048_8192_SHA384,
        (Hash::Sha512, true) => &sig::RSA_PSS_2048_8192_SHA512,
        (Hash::Sha1, false) => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (Hash::Sha1, true) => return Err(CKR_DATA_INVALID),
    };
    let digest = digest::Digest::import_less_safe(digest, algorithm_of_hash(hash))
        .map_err(|_| CKR_DATA_LEN_RANGE)?;
    Ok(UnparsedPublicKey::new(algorithm, public)
        .verify_digest(&digest, signature)
        .is_ok())
}

fn algorithm_of_hash(hash: Hash) -> &'static digest::Algorithm {
    algorithm(hash)
}

/// A message digest run in the library (`C_Digest*`).
pub struct DigestOp {
    ctx: digest::Context,
    pub pending: Option<Vec<u8>>,
    pub multi_part: bool,
}

impl DigestOp {
    pub fn new(mechanism: &Mechanism) -> Result<DigestOp, CK_RV> {
        let hash = hash_of_mechanism(mechanism.kind).ok_or(CKR_MECHANISM_INVALID)?;
        if mechanism.params != Params::None {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        Ok(DigestOp {
            ctx: digest::Context::new(algorithm(hash)),
            pending: None,
            multi_part: false,
        })
    }

    pub fn output_len(&self) -> usize {
        self.ctx.algorithm().output_len()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let fresh = digest::Context::new(self.ctx.algorithm());
        let ctx = std::mem::replace(&mut self.ctx, fresh);
        ctx.finish().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mech(kind: CK_MECHANISM_TYPE, params: Params) -> Mechanism {
        Mechanism { kind, params }
    }

    fn key(kind: KeyType) -> KeyInfo {
        KeyInfo {
            kind,
            label: "k".into(),
            public_key: Vec::new(),
            id: Vec::new(),
        }
    }

    #[test]
    fn mechanisms_must_fit_the_key() {
        let ec = key(KeyType::P256);
        assert!(SignOp::new(&mech(CKM_ECDSA_SHA256, Params::None), &ec).is_ok());
        assert_eq!(
            SignOp::new(&mech(CKM_EDDSA, Params::None), &ec).err(),
            Some(CKR_KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            SignOp::new(&mech(CKM_MD5, Params::None), &ec).err(),
            Some(CKR_MECHANISM_INVALID)
        );
        let rsa = key(KeyType::Rsa2048);
        let pss = |hash, mgf, salt_len| Params::Pss {
            hash,
            mgf,
            salt_len,
        };
        assert!(
            SignOp::new(
                &mech(
                    CKM_SHA256_RSA_PKCS_PSS,
                    pss(CKM_SHA256, CKG_MGF1_SHA256, 32)
                ),
                &rsa
            )
            .is_ok()
        );
        for bad in [
            pss(CKM_SHA384, CKG_MGF1_SHA384, 48),
            pss(CKM_SHA256, CKG_MGF1_SHA1, 32),
            pss(CKM_SHA256, CKG_MGF1_SHA256, 20),
        ] {
            assert_eq!(
                SignOp::new(&mech(CKM_SHA256_RSA_PKCS_PSS, bad), &rsa).err(),
                Some(CKR_MECHANISM_PARAM_INVALID)
            );
        }
        assert_eq!(
            SignOp::new(&mech(CKM_RSA_PKCS_PSS, Params::None), &rsa).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
    }

    #[test]
    fn hash_and_sign_hashes_every_part_and_sends_the_digest() {
        let mut op = SignOp::new(
            &mech(CKM_SHA256_RSA_PKCS, Params::None),
            &key(KeyType::Rsa2048),
        )
        .unwrap();
        op.update(b"hello ").unwrap();
        op.update(b"world").unwrap();
        let expected = digest::digest(&digest::SHA256, b"hello world");
        match op.node_request().unwrap() {
            NodeRequest::Digest(SignScheme::RsaPkcs1Sha256, d) => assert_eq!(d, expected.as_ref()),
            _ => panic!("a SHA-256 PKCS#1 digest request"),
        }
    }

    #[test]
    fn raw_inputs_are_checked() {
        let rsa = key(KeyType::Rsa2048);
        // CKM_RSA_PKCS pads what it is given, up to the modulus length - 11.
        let mut op = SignOp::new(&mech(CKM_RSA_PKCS, Params::None), &rsa).unwrap();
        let info = der::to_digest_info(Hash::Sha1, &[9; 20]);
        op.update(&info).unwrap();
        match op.node_request() {
            Ok(NodeRequest::Digest(SignScheme::RsaPkcs1Raw, d)) => assert_eq!(d, info),
            _ => panic!("a raw PKCS#1 request"),
        }
        let mut op = SignOp::new(&mech(CKM_RSA_PKCS, Params::None), &rsa).unwrap();
        op.update(&[1; 246]).unwrap();
        assert_eq!(op.node_request().err(), Some(CKR_DATA_LEN_RANGE));
        let mut op = SignOp::new(&mech(CKM_ECDSA, Params::None), &key(KeyType::P256)).unwrap();
        op.update(&[1; 8]).unwrap();
        assert_eq!(op.node_request().err(), Some(CKR_DATA_LEN_RANGE));
        let mut op = SignOp::new(&mech(CKM_EDDSA, Params::None), &key(KeyType::Ed25519)).unwrap();
        assert_eq!(
            op.update(&vec![0; MAX_EDDSA_MESSAGE + 1]).err(),
            Some(CKR_DATA_LEN_RANGE)
        );
    }
}
