//! Key material of every key type (PROTOCOL.md §7.5, §7.6): generation, the
//! public key it derives, and the check of stored material against its
//! recorded public key.
//!
//! | type | secret | public |
//! | --- | --- | --- |
//! | ed25519 | 32-byte seed | 32 bytes |
//! | p256, p384 | scalar, 32 / 48 bytes | SEC1 uncompressed point, 65 / 97 bytes |
//! | rsa2048/3072/4096 | PKCS#8 DER (AWS-LC) | DER `RSAPublicKey` |
//! | aes256 | 32 bytes | none |
//!
//! RSA keys are made and used by AWS-LC (`aws-lc-rs`), whose private-key
//! operations run in constant time; the pure-Rust `rsa` crate is not used
//! (its decryption leaks timing: the Marvin attack).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use hsmgate_wire::ops::KeyType;
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::{Zeroize, Zeroizing};

/// Fresh secret material of `kind` from the operating system's random source.
pub fn generate(kind: KeyType) -> Result<Zeroizing<Vec<u8>>, String> {
    Ok(match kind {
        KeyType::Ed25519 => {
            let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
            Zeroizing::new(sk.to_bytes().to_vec())
        }
        KeyType::P256 => {
            let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
            let mut bytes = sk.to_bytes();
            let secret = Zeroizing::new(bytes.to_vec());
            bytes.as_mut_slice().zeroize();
            secret
        }
        KeyType::P384 => {
            let sk = p384::ecdsa::SigningKey::random(&mut OsRng);
            let mut bytes = sk.to_bytes();
            let secret = Zeroizing::new(bytes.to_vec());
            bytes.as_mut_slice().zeroize();
            secret
        }
        KeyType::Aes256 => {
            let mut secret = Zeroizing::new(vec![0u8; 32]);
            OsRng.fill_bytes(&mut secret);
            secret
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let size = match kind {
                KeyType::Rsa2048 => KeySize::Rsa2048,
                KeyType::Rsa3072 => KeySize::Rsa3072,
                _ => KeySize::Rsa4096,
            };
            let pair = RsaKeyPair::generate(size).map_err(|_| "RSA key generation failed")?;
            let der = pair.as_der().map_err(|_| "RSA key encoding failed")?;
            Zeroizing::new(der.as_ref().to_vec())
        }
    })
}

/// The public key of `secret`, or why `secret` is no key of `kind`.
pub fn derive_public(kind: KeyType, secret: &[u8]) -> Result<Vec<u8>, String> {
    let length = |n: usize| {
        if secret.len() == n {
            Ok(())
        } else {
            Err(format!("a {kind} secret is {n} bytes"))
        }
    };
    match kind {
        KeyType::Ed25519 => {
            length(32)?;
            let mut bytes = Zeroizing::new([0u8; 32]);
            bytes.copy_from_slice(secret);
            let sk = ed25519_dalek::SigningKey::from_bytes(&bytes);
            Ok(sk.verifying_key().to_bytes().to_vec())
        }
        KeyType::P256 => {
            length(32)?;
            let sk = p256::ecdsa::SigningKey::from_slice(secret)
                .map_err(|_| "p256 secret is not a valid scalar".to_owned())?;
            Ok(sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec())
        }
        KeyType::P384 => {
            length(48)?;
            let sk = p384::ecdsa::SigningKey::from_slice(secret)
                .map_err(|_| "p384 secret is not a valid scalar".to_owned())?;
            Ok(sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec())
        }
        KeyType::Aes256 => {
            length(32)?;
            Ok(Vec::new())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let pair = rsa_key_pair(secret).ok_or("not an RSA private key (PKCS#8)")?;
            let expected = kind.rsa_bytes().unwrap_or(0);
            if pair.public_modulus_len() != expected {
                return Err(format!("not a {kind} key"));
            }
            Ok(pair.public_key().as_ref().to_vec())
        }
    }
}

/// Parse an RSA private key stored as PKCS#8 DER.
pub fn rsa_key_pair(secret: &[u8]) -> Option<RsaKeyPair> {
    RsaKeyPair::from_pkcs8(secret).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_generates_material_that_derives_its_public_key() {
        for kind in KeyType::ALL {
            let secret = generate(kind).expect("generate");
            let public = derive_public(kind, &secret).expect("derive");
            let expected = match kind {
                KeyType::Ed25519 => 32,
                KeyType::P256 => 65,
                KeyType::P384 => 97,
                KeyType::Aes256 => 0,
                // DER RSAPublicKey: a little more than the modulus.
                k => k.rsa_bytes().expect("rsa") + 14,
            };
            assert!(
                public.len() >= expected && public.len() <= expected + 8,
                "{kind}: {} bytes",
                public.len()
            );
            assert!(public.len() <= hsmgate_wire::ops::MAX_PUBLIC_KEY);
        }
    }

    #[test]
    fn material_of_another_type_or_length_is_refused() {
        let p256 = generate(KeyType::P256).expect("p256");
        assert!(derive_public(KeyType::P384, &p256).is_err());
        let rsa = generate(KeyType::Rsa2048).expect("rsa");
        assert!(derive_public(KeyType::Rsa3072, &rsa).is_err());
        assert!(derive_public(KeyType::Rsa2048, &rsa[..100]).is_err());
        assert!(derive_public(KeyType::Ed25519, &[0; 31]).is_err());
    }
}
