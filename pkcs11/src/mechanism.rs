//! The mechanisms the library offers, with what `C_GetMechanismInfo`
//! reports for each, and which key types each works with.
//!
//! Key sizes are in bits, except AES (bytes), as PKCS#11 defines them.

use cryptoki_sys::*;
use hsmgate_client::KeyType;

const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

/// `(mechanism, min key size, max key size, flags)`.
const TABLE: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (
        CKM_EC_KEY_PAIR_GEN,
        256,
        384,
        CKF_HW | CKF_GENERATE_KEY_PAIR | EC_FLAGS,
    ),
    (
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
        255,
        255,
        CKF_HW | CKF_GENERATE_KEY_PAIR,
    ),
    (
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        2048,
        4096,
        CKF_HW | CKF_GENERATE_KEY_PAIR,
    ),
    (CKM_AES_KEY_GEN, 32, 32, CKF_HW | CKF_GENERATE),
    (
        CKM_ECDSA,
        256,
        384,
        CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS,
    ),
    (
        CKM_ECDSA_SHA256,
        256,
        384,
        CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS,
    ),
    (
        CKM_ECDSA_SHA384,
        256,
        384,
        CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS,
    ),
    (
        CKM_ECDSA_SHA512,
        256,
        384,
        CKF_HW | CKF_SIGN | CKF_VERIFY | EC_FLAGS,
    ),
    (CKM_EDDSA, 255, 255, CKF_HW | CKF_SIGN | CKF_VERIFY),
    (CKM_RSA_PKCS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY),
    (
        CKM_SHA256_RSA_PKCS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (
        CKM_SHA384_RSA_PKCS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (
        CKM_SHA512_RSA_PKCS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (CKM_RSA_PKCS_PSS, 2048, 4096, CKF_HW | CKF_SIGN | CKF_VERIFY),
    (
        CKM_SHA256_RSA_PKCS_PSS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (
        CKM_SHA384_RSA_PKCS_PSS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (
        CKM_SHA512_RSA_PKCS_PSS,
        2048,
        4096,
        CKF_HW | CKF_SIGN | CKF_VERIFY,
    ),
    (CKM_RSA_PKCS_OAEP, 2048, 4096, CKF_HW | CKF_DECRYPT),
    (CKM_AES_GCM, 32, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    // Digests run in the library: no key, no HSM.
    (CKM_SHA_1, 0, 0, CKF_DIGEST),
    (CKM_SHA256, 0, 0, CKF_DIGEST),
    (CKM_SHA384, 0, 0, CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_DIGEST),
];

/// Every mechanism, in table order.
pub fn list() -> Vec<CK_MECHANISM_TYPE> {
    TABLE.iter().map(|m| m.0).collect()
}

pub fn info(mechanism: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    TABLE
        .iter()
        .find(|m| m.0 == mechanism)
        .map(|&(_, min, max, flags)| CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        })
}

/// The mechanism that generates keys of `kind` (`CKA_KEY_GEN_MECHANISM`).
pub fn generator_of(kind: KeyType) -> CK_MECHANISM_TYPE {
    match kind {
        KeyType::P256 | KeyType::P384 => CKM_EC_KEY_PAIR_GEN,
        KeyType::Ed25519 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
        KeyType::Aes256 => CKM_AES_KEY_GEN,
        _ => CKM_RSA_PKCS_KEY_PAIR_GEN,
    }
}

/// Mechanisms usable with a key of `kind` as an object of `class`
/// (`CKA_ALLOWED_MECHANISMS`, and the check of every `*Init`).
pub fn allowed(kind: KeyType, class: CK_OBJECT_CLASS) -> &'static [CK_MECHANISM_TYPE] {
    const EC: &[CK_MECHANISM_TYPE] = &[
        CKM_ECDSA,
        CKM_ECDSA_SHA256,
        CKM_ECDSA_SHA384,
        CKM_ECDSA_SHA512,
    ];
    const ED: &[CK_MECHANISM_TYPE] = &[CKM_EDDSA];
    const RSA_PRIVATE: &[CK_MECHANISM_TYPE] = &[
        CKM_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_RSA_PKCS_PSS,
        CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS,
        CKM_SHA512_RSA_PKCS_PSS,
        CKM_RSA_PKCS_OAEP,
    ];
    const AES: &[CK_MECHANISM_TYPE] = &[CKM_AES_GCM];
    match (kind, class) {
        (KeyType::P256 | KeyType::P384, CKO_PRIVATE_KEY | CKO_PUBLIC_KEY) => EC,
        (KeyType::Ed25519, CKO_PRIVATE_KEY | CKO_PUBLIC_KEY) => ED,
        (KeyType::Aes256, CKO_SECRET_KEY) => AES,
        (_, CKO_PRIVATE_KEY) if kind.is_rsa() => RSA_PRIVATE,
        // Public RSA keys verify; OAEP encryption is the caller's own.
        (_, CKO_PUBLIC_KEY) if kind.is_rsa() => &RSA_PRIVATE[..8],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_mechanism_has_info_and_flags() {
        for m in list() {
            let info = info(m).expect("info");
            assert_ne!(info.flags, 0, "mechanism {m:#x}");
            assert!(info.ulMinKeySize <= info.ulMaxKeySize);
        }
        assert!(info(CKM_MD5).is_none());
    }

    #[test]
    fn keys_allow_only_their_mechanisms() {
        assert!(allowed(KeyType::P384, CKO_PRIVATE_KEY).contains(&CKM_ECDSA_SHA384));
        assert!(!allowed(KeyType::P384, CKO_PRIVATE_KEY).contains(&CKM_EDDSA));
        assert!(allowed(KeyType::Rsa2048, CKO_PRIVATE_KEY).contains(&CKM_RSA_PKCS_OAEP));
        assert!(!allowed(KeyType::Rsa2048, CKO_PUBLIC_KEY).contains(&CKM_RSA_PKCS_OAEP));
        assert_eq!(allowed(KeyType::Aes256, CKO_SECRET_KEY), &[CKM_AES_GCM]);
        assert!(allowed(KeyType::Aes256, CKO_PRIVATE_KEY).is_empty());
    }
}
