//! Encryption and decryption operations: AES-256-GCM (both ways) with the
//! caller's IV, and RSA-OAEP decryption.
//!
//! GCM produces nothing before its final call (encryption appends the tag,
//! decryption must check it before releasing a byte), so multi-part calls
//! gather the input and the node runs the whole operation at the end.

use cryptoki_sys::*;
use hsmgate_client::{KeyInfo, KeyType, OaepHash};
use hsmgate_wire::ops::{GCM_IV_LEN, GCM_TAG_LEN, MAX_DATA, MAX_GCM_PLAINTEXT, MAX_RSA_CIPHERTEXT};
use zeroize::Zeroizing;

use crate::der::Hash;
use crate::ffi::{Mechanism, Params};
use crate::sign::mgf_of;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cipher {
    Gcm { iv: Vec<u8>, aad: Vec<u8> },
    Oaep(OaepHash),
}

/// One encrypt or decrypt operation of a session.
pub struct CipherOp {
    pub key: KeyInfo,
    pub cipher: Cipher,
    pub encrypt: bool,
    pub input: Zeroizing<Vec<u8>>,
    pub multi_part: bool,
    /// A result computed for a caller whose buffer was too small.
    pub pending: Option<Zeroizing<Vec<u8>>>,
}

impl CipherOp {
    pub fn new(mechanism: &Mechanism, key: &KeyInfo, encrypt: bool) -> Result<CipherOp, CK_RV> {
        let cipher = match (mechanism.kind, &mechanism.params) {
            (CKM_AES_GCM, Params::Gcm { iv, aad, tag_bits }) => {
                if key.kind != KeyType::Aes256 {
                    return Err(CKR_KEY_TYPE_INCONSISTENT);
                }
                if iv.len() != GCM_IV_LEN || *tag_bits != 128 || aad.len() > MAX_DATA {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                Cipher::Gcm {
                    iv: iv.clone(),
                    aad: aad.clone(),
                }
            }
            (CKM_AES_GCM, _) => return Err(CKR_MECHANISM_PARAM_INVALID),
            (CKM_RSA_PKCS_OAEP, _) if encrypt => return Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
            (CKM_RSA_PKCS_OAEP, Params::Oaep { hash, mgf, label }) => {
                if !key.kind.is_rsa() {
                    return Err(CKR_KEY_TYPE_INCONSISTENT);
                }
                let (oaep, h) = match *hash {
                    CKM_SHA_1 => (OaepHash::Sha1, Hash::Sha1),
                    CKM_SHA256 => (OaepHash::Sha256, Hash::Sha256),
                    CKM_SHA384 => (OaepHash::Sha384, Hash::Sha384),
                    CKM_SHA512 => (OaepHash::Sha512, Hash::Sha512),
                    _ => return Err(CKR_MECHANISM_PARAM_INVALID),
                };
                // The node decrypts with an empty label and MGF1 of the same hash.
                if *mgf != mgf_of(h) || !label.is_empty() {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                Cipher::Oaep(oaep)
            }
            (CKM_RSA_PKCS_OAEP, _) => return Err(CKR_MECHANISM_PARAM_INVALID),
            (m, _) if crate::mechanism::info(m).is_some() => return Err(CKR_KEY_TYPE_INCONSISTENT),
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        Ok(CipherOp {
            key: key.clone(),
            cipher,
            encrypt,
            input: Zeroizing::new(Vec::new()),
            multi_part: false,
            pending: None,
        })
    }

    /// Most input one operation takes.
    fn max_input(&self) -> usize {
        match (&self.cipher, self.encrypt) {
            (Cipher::Gcm { .. }, true) => MAX_GCM_PLAINTEXT,
            (Cipher::Gcm { .. }, false) => MAX_DATA,
            (Cipher::Oaep(_), _) => MAX_RSA_CIPHERTEXT,
        }
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), CK_RV> {
        if self.input.len() + data.len() > self.max_input() {
            return Err(if self.encrypt {
                CKR_DATA_LEN_RANGE
            } else {
                CKR_ENCRYPTED_DATA_LEN_RANGE
            });
        }
        self.input.extend_from_slice(data);
        Ok(())
    }

    /// The output length once `more` bytes are added to the input gathered
    /// so far (an upper bound for OAEP, whose plaintext length is known only
    /// after decryption).
    pub fn output_len(&self, more: usize) -> usize {
        let n = self.input.len() + more;
        match (&self.cipher, self.encrypt) {
            (Cipher::Gcm { .. }, true) => n + GCM_TAG_LEN,
            (Cipher::Gcm { .. }, false) => n.saturating_sub(GCM_TAG_LEN),
            (Cipher::Oaep(_), _) => self.key.kind.rsa_bytes().unwrap_or(n),
        }
    }

    /// Check the gathered input before it is sent.
    pub fn check_input(&self) -> Result<(), CK_RV> {
        match (&self.cipher, self.encrypt) {
            (Cipher::Gcm { .. }, false) if self.input.len() < GCM_TAG_LEN => {
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            }
            (Cipher::Oaep(_), _) if Some(self.input.len()) != self.key.kind.rsa_bytes() => {
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: KeyType) -> KeyInfo {
        KeyInfo {
            kind,
            label: "k".into(),
            public_key: Vec::new(),
            id: Vec::new(),
        }
    }

    fn gcm(iv_len: usize, tag_bits: CK_ULONG) -> Mechanism {
        Mechanism {
            kind: CKM_AES_GCM,
            params: Params::Gcm {
                iv: vec![0; iv_len],
                aad: Vec::new(),
                tag_bits,
            },
        }
    }

    #[test]
    fn gcm_takes_a_96_bit_iv_and_a_128_bit_tag_with_an_aes_key() {
        let aes = key(KeyType::Aes256);
        assert!(CipherOp::new(&gcm(12, 128), &aes, true).is_ok());
        assert_eq!(
            CipherOp::new(&gcm(16, 128), &aes, true).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            CipherOp::new(&gcm(12, 96), &aes, true).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            CipherOp::new(&gcm(12, 128), &key(KeyType::P256), true).err(),
            Some(CKR_KEY_TYPE_INCONSISTENT)
        );
        let mut op = CipherOp::new(&gcm(12, 128), &aes, false).unwrap();
        op.update(&[0; 10]).unwrap();
        assert_eq!(op.check_input(), Err(CKR_ENCRYPTED_DATA_LEN_RANGE));
    }

    #[test]
    fn oaep_decrypts_only_with_matching_mgf_and_no_label() {
        let rsa = key(KeyType::Rsa2048);
        let oaep = |hash, mgf, label: &[u8]| Mechanism {
            kind: CKM_RSA_PKCS_OAEP,
            params: Params::Oaep {
                hash,
                mgf,
                label: label.to_vec(),
            },
        };
        assert!(CipherOp::new(&oaep(CKM_SHA256, CKG_MGF1_SHA256, b""), &rsa, false).is_ok());
        assert_eq!(
            CipherOp::new(&oaep(CKM_SHA256, CKG_MGF1_SHA256, b""), &rsa, true).err(),
            Some(CKR_KEY_FUNCTION_NOT_PERMITTED)
        );
        assert_eq!(
            CipherOp::new(&oaep(CKM_SHA256, CKG_MGF1_SHA1, b""), &rsa, false).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            CipherOp::new(&oaep(CKM_SHA256, CKG_MGF1_SHA256, b"l"), &rsa, false).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
    }
}
