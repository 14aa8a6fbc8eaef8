//! Key pair files sealed under a passphrase.
//!
//! A client's key files may be stored encrypted, so that a copy of the file
//! alone does not give the key away; the passphrase is then what unlocks it
//! (the CLI takes it from the environment, the PKCS#11 library from
//! `C_Login` as the user PIN). The file keeps the public half in the clear,
//! so that an operator can still read it, and seals the private half:
//!
//! ```toml
//! # hsmgate static key pair (X25519), sealed under a passphrase.
//! public = "x25519:<64 hex>"
//! sealed = "argon2id-aes256gcm:m=65536,t=3,p=1:<salt, 32 hex>:<nonce, 24 hex>:<96 hex>"
//! ```
//!
//! The key that seals is Argon2id (RFC 9106, version 0x13) of the passphrase
//! with the file's 16-byte random salt and the cost parameters written in
//! the file (`m` KiB of memory, `t` passes, `p` lanes); the private key is
//! sealed with AES-256-GCM under a random 12-byte nonce, with the 32 public
//! key bytes followed by the parameter text as associated data, so that
//! neither can be swapped without the passphrase. A wrong passphrase and an
//! altered file cannot be told apart: both fail the tag.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::error::WireError;
use crate::keys::{KEY_LEN, PublicKey, StaticKeypair};

/// The scheme tag at the start of the `sealed` field.
const SCHEME: &str = "argon2id-aes256gcm";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const SEALED_LEN: usize = KEY_LEN + 16;

/// Shortest passphrase [`StaticKeypair::to_sealed_file_text`] accepts.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// Argon2id cost parameters, as written in a sealed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes (parallelism).
    pub lanes: u32,
}

impl KdfParams {
    /// RFC 9106 §4's second recommended option, with one lane: 64 MiB,
    /// 3 passes. About a quarter of a second on one core here.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        passes: 3,
        lanes: 1,
    };

    /// The most a file may ask for (1 GiB, 16 passes, 16 lanes), so that a
    /// crafted file cannot make the reader allocate without bound.
    const MAX: KdfParams = KdfParams {
        memory_kib: 1024 * 1024,
        passes: 16,
        lanes: 16,
    };

    fn to_text(self) -> String {
        format!("m={},t={},p={}", self.memory_kib, self.passes, self.lanes)
    }

    fn from_text(text: &str) -> Result<KdfParams, WireError> {
        let bad = || WireError::KeyText("sealed key: parameters are `m=…,t=…,p=…`");
        let mut fields = text.split(',');
        let mut next = |name: &str| -> Result<u32, WireError> {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad)
        };
        let params = KdfParams {
            memory_kib: next("m=")?,
            passes: next("t=")?,
            lanes: next("p=")?,
        };
        if fields.next().is_some() {
            return Err(bad());
        }
        // Argon2 needs at least 8 KiB per lane.
        let sane = (1..=KdfParams::MAX.lanes).contains(&params.lanes)
            && (1..=KdfParams::MAX.passes).contains(&params.passes)
            && (8 * params.lanes..=KdfParams::MAX.memory_kib).contains(&params.memory_kib);
        if !sane {
            return Err(WireError::KeyText(
                "sealed key: parameters out of range (m ≤ 1048576, t ≤ 16, p ≤ 16)",
            ));
        }
        Ok(params)
    }

    fn derive(self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, WireError> {
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|_| WireError::KeyText("sealed key: parameters out of range"))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        kdf.hash_password_into(passphrase, salt, &mut key[..])
            .map_err(|_| WireError::KeyText("sealed key: key derivation failed"))?;
        Ok(key)
    }
}

/// A key pair file as read: in the clear, or sealed under a passphrase.
#[derive(Debug, Clone)]
pub enum KeyFile {
    Plain(StaticKeypair),
    Sealed(SealedKeypair),
}

impl KeyFile {
    /// Parse a key file of either kind.
    pub fn parse(text: &str) -> Result<KeyFile, WireError> {
        let mut public = None;
        let mut sealed = None;
        let mut plain = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(WireError::KeyText("a key file line is `name = \"value\"`"));
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "public" => public = Some(PublicKey::from_text(value)?),
                "sealed" => sealed = Some(value.to_owned()),
                "private" => plain = true,
                _ => return Err(WireError::KeyText("unknown field in key file")),
            }
        }
        match (sealed, plain) {
            (None, _) => StaticKeypair::from_file_text(text).map(KeyFile::Plain),
            (Some(_), true) => Err(WireError::KeyText(
                "a key file has `private` or `sealed`, not both",
            )),
            (Some(sealed), false) => {
                let public = public.ok_or(WireError::KeyText(
                    "a sealed key file needs its `public` field",
                ))?;
                SealedKeypair::parse(public, &sealed).map(KeyFile::Sealed)
            }
        }
    }

    /// The public key, which a sealed file keeps in the clear.
    pub fn public(&self) -> PublicKey {
        match self {
            KeyFile::Plain(pair) => pair.public(),
            KeyFile::Sealed(sealed) => sealed.public,
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, KeyFile::Sealed(_))
    }
}

/// A private key sealed under a passphrase, with its public key.
#[derive(Clone)]
pub struct SealedKeypair {
    public: PublicKey,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    sealed: [u8; SEALED_LEN],
}

impl std::fmt::Debug for SealedKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKeypair")
            .field("public", &self.public)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl SealedKeypair {
    fn parse(public: PublicKey, field: &str) -> Result<SealedKeypair, WireError> {
        let mut parts = field.split(':');
        if parts.next() != Some(SCHEME) {
            return Err(WireError::KeyText(
                "sealed key: unknown scheme (expected argon2id-aes256gcm)",
            ));
        }
        let params = KdfParams::from_text(parts.next().unwrap_or_default())?;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut sealed = [0u8; SEALED_LEN];
        for (out, what) in [
            (&mut salt[..], "salt"),
            (&mut nonce[..], "nonce"),
            (&mut sealed[..], "ciphertext"),
        ] {
            let hex_part = parts.next().unwrap_or_default();
            hex::decode_to_slice(hex_part, out).map_err(|_| {
                WireError::KeyText(match what {
                    "salt" => "sealed key: the salt is 32 hex digits",
                    "nonce" => "sealed key: the nonce is 24 hex digits",
                    _ => "sealed key: the ciphertext is 96 hex digits",
                })
            })?;
        }
        if parts.next().is_some() {
            return Err(WireError::KeyText("sealed key: too many fields"));
        }
        Ok(SealedKeypair {
            public,
            params,
            salt,
            nonce,
            sealed,
        })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Open the seal. A wrong passphrase (or an altered file) is
    /// [`WireError::WrongPassphrase`].
    pub fn unseal(&self, passphrase: &[u8]) -> Result<StaticKeypair, WireError> {
        let key = self.params.derive(passphrase, &self.salt)?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| WireError::State("sealing key length"))?;
        let aad = associated_data(self.public, self.params);
        let private = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| WireError::WrongPassphrase)?,
        );
        let private: [u8; KEY_LEN] = private[..]
            .try_into()
            .map_err(|_| WireError::KeyText("sealed key: wrong private key length"))?;
        let pair = StaticKeypair::from_private(private)?;
        if pair.public() != self.public {
            return Err(WireError::KeyText(
                "`public` does not match the sealed private key",
            ));
        }
        Ok(pair)
    }
}

fn associated_data(public: PublicKey, params: KdfParams) -> Vec<u8> {
    let mut aad = public.as_bytes().to_vec();
    aad.extend_from_slice(params.to_text().as_bytes());
    aad
}

impl StaticKeypair {
    /// The text of a key file sealed under `passphrase` (at least
    /// [`MIN_PASSPHRASE_LEN`] bytes).
    pub fn to_sealed_file_text(
        &self,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<String, WireError> {
        if passphrase.len() < MIN_PASSPHRASE_LEN {
            return Err(WireError::KeyText("a passphrase is at least 8 bytes long"));
        }
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let key = params.derive(passphrase, &salt)?;
        let cipher = Aes256Gcm::new_from_slice(&key[..])
            .map_err(|_| WireError::State("sealing key length"))?;
        let aad = associated_data(self.public(), params);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: self.private_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| WireError::State("sealing failed"))?;
        Ok(format!(
            "# hsmgate static key pair (X25519), sealed under a passphrase. Keep this file secret.\n\
             public = \"{}\"\nsealed = \"{SCHEME}:{}:{}:{}:{}\"\n",
            self.public().to_text(),
            params.to_text(),
            hex::encode(salt),
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests are about the format, not the cost.
    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn a_sealed_file_opens_with_its_passphrase_only() {
        let pair = StaticKeypair::generate().unwrap();
        let text = pair.to_sealed_file_text(b"correct horse", FAST).unwrap();
        assert!(!text.contains(&hex::encode(pair.private_bytes())));
        let KeyFile::Sealed(sealed) = KeyFile::parse(&text).unwrap() else {
            panic!("sealed");
        };
        assert_eq!(sealed.public(), pair.public());
        let opened = sealed.unseal(b"correct horse").unwrap();
        assert_eq!(opened.private_bytes(), pair.private_bytes());
        assert!(matches!(
            sealed.unseal(b"wrong horse"),
            Err(WireError::WrongPassphrase)
        ));
        assert!(matches!(
            sealed.unseal(b""),
            Err(WireError::WrongPassphrase)
        ));
    }

    #[test]
    fn plain_files_still_parse_and_a_plain_reader_refuses_a_sealed_one() {
        let pair = StaticKeypair::generate().unwrap();
        let plain = KeyFile::parse(&pair.to_file_text()).unwrap();
        assert!(!plain.is_sealed());
        assert_eq!(plain.public(), pair.public());
        let sealed = pair.to_sealed_file_text(b"12345678", FAST).unwrap();
        assert!(StaticKeypair::from_file_text(&sealed).is_err());
    }

    #[test]
    fn tampering_with_the_public_key_or_the_parameters_is_detected() {
        let pair = StaticKeypair::generate().unwrap();
        let other = StaticKeypair::generate().unwrap();
        let text = pair.to_sealed_file_text(b"passphrase", FAST).unwrap();
        let swapped = text.replace(&pair.public().to_text(), &other.public().to_text());
        let KeyFile::Sealed(s) = KeyFile::parse(&swapped).unwrap() else {
            panic!("sealed");
        };
        assert!(matches!(
            s.unseal(b"passphrase"),
            Err(WireError::WrongPassphrase)
        ));
        let cheaper = text.replace("m=64,t=1", "m=64,t=2");
        let KeyFile::Sealed(s) = KeyFile::parse(&cheaper).unwrap() else {
            panic!("sealed");
        };
        assert!(s.unseal(b"passphrase").is_err());
    }

    #[test]
    fn refuses_malformed_or_greedy_sealed_fields() {
        let pair = StaticKeypair::generate().unwrap();
        assert!(pair.to_sealed_file_text(b"short", FAST).is_err());
        let text = pair.to_sealed_file_text(b"passphrase", FAST).unwrap();
        for (from, to) in [
            ("argon2id-aes256gcm", "scrypt-aes256gcm"),
            ("m=64,t=1,p=1", "m=4194304,t=1,p=1"),
            ("m=64,t=1,p=1", "m=64,t=1"),
            ("m=64,t=1,p=1", "m=64,t=99,p=1"),
            ("m=64,t=1,p=1", "m=4,t=1,p=1"),
        ] {
            let bad = text.replace(from, to);
            assert!(KeyFile::parse(&bad).is_err(), "{to}");
        }
        let no_public: String = text
            .lines()
            .filter(|l| !l.starts_with("public"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(KeyFile::parse(&no_public).is_err());
        let both = format!("{text}private = \"x\"\n");
        assert!(KeyFile::parse(&both).is_err());
    }

    #[test]
    fn debug_shows_no_ciphertext() {
        let pair = StaticKeypair::generate().unwrap();
        let text = pair.to_sealed_file_text(b"passphrase", FAST).unwrap();
        let file = KeyFile::parse(&text).unwrap();
        let shown = format!("{file:?}");
        let sealed_hex = text.rsplit(':').next().unwrap().trim().trim_matches('"');
        assert!(!shown.contains(sealed_hex.trim_end_matches("\"\n")));
    }
}
