//! The few DER structures PKCS#11 attributes carry beyond the key formats
//! (those, shared with the HSM node, are in `hsmgate_wire::der` and
//! re-exported here): curve names in `CKA_EC_PARAMS`, and the names and
//! serial number of an X.509 certificate.
//!
//! Only reading what is needed, with every length checked against the
//! input: a malformed value is `None`, never a panic.

use hsmgate_client::KeyType;
pub use hsmgate_wire::der::{
    ED25519_PARAMS, Hash, P256_PARAMS, P384_PARAMS, digest_info, ec_params,
    octet_string as ec_point, rsa_public_parts as rsa_public, to_digest_info,
};

/// The OID some tools (OpenSC, GnuPG) use for Ed25519: 1.3.6.1.4.1.11591.15.1.
const ED25519_GNUPG_OID: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01,
];

/// The key type a `CKA_EC_PARAMS` value names: an OID, or (PKCS#11 3.0
/// for Edwards curves) a PrintableString curve name.
pub fn curve_of(params: &[u8]) -> Option<KeyType> {
    match params {
        P256_PARAMS => Some(KeyType::P256),
        P384_PARAMS => Some(KeyType::P384),
        ED25519_PARAMS | ED25519_GNUPG_OID => Some(KeyType::Ed25519),
        [0x13, len, name @ ..] if usize::from(*len) == name.len() => {
            match name.to_ascii_lowercase().as_slice() {
                b"edwards25519" | b"ed25519" => Some(KeyType::Ed25519),
                b"prime256v1" | b"secp256r1" => Some(KeyType::P256),
                b"secp384r1" => Some(KeyType::P384),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The issuer, serial number and subject of an X.509 certificate, each as
/// its DER encoding (`CKA_ISSUER`, `CKA_SERIAL_NUMBER`, `CKA_SUBJECT`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertNames {
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
    pub subject: Vec<u8>,
}

/// Read the names of a DER certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, subject, … }, … }`.
pub fn cert_names(der: &[u8]) -> Option<CertNames> {
    let tbs = hsmgate_wire::der::tbs_fields(der)?;
    Some(CertNames {
        issuer: tbs.issuer.to_vec(),
        serial: tbs.serial.to_vec(),
        subject: tbs.subject.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_named_by_oid_or_by_name() {
        assert_eq!(curve_of(P256_PARAMS), Some(KeyType::P256));
        assert_eq!(curve_of(P384_PARAMS), Some(KeyType::P384));
        assert_eq!(curve_of(ED25519_PARAMS), Some(KeyType::Ed25519));
        assert_eq!(curve_of(ED25519_GNUPG_OID), Some(KeyType::Ed25519));
        let mut name = vec![0x13, 12];
        name.extend_from_slice(b"edwards25519");
        assert_eq!(curve_of(&name), Some(KeyType::Ed25519));
        assert_eq!(curve_of(&[0x13, 40, b'x']), None, "length beyond the input");
        assert_eq!(curve_of(&[0x06, 0x03, 0x2b, 0x65, 0x71]), None, "Ed448");
    }

    #[test]
    fn ec_points_are_octet_strings() {
        assert_eq!(ec_point(&[4; 65])[..2], [0x04, 65]);
        assert_eq!(ec_point(&[4; 97])[..2], [0x04, 97]);
        assert_eq!(ec_point(&[1; 200])[..3], [0x04, 0x81, 200]);
    }

    #[test]
    fn reads_rsa_public_keys_and_refuses_garbage() {
        // SEQUENCE { INTEGER 00 c5, INTEGER 01 00 01 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(rsa_public(&der), Some((vec![0xc5], vec![1, 0, 1])));
        assert_eq!(rsa_public(&der[..10]), None);
        assert_eq!(rsa_public(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(rsa_public(&[]), None);
    }

    #[test]
    fn digest_infos_round_trip() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let digest = vec![7u8; hash.output_len()];
            let info = to_digest_info(hash, &digest);
            assert_eq!(digest_info(&info), Some((hash, &digest[..])));
            assert_eq!(digest_info(&info[..info.len() - 1]), None);
        }
        assert_eq!(digest_info(&[0u8; 32]), None);
    }

    #[test]
    fn reads_the_names_of_a_certificate() {
        // A minimal v3 certificate skeleton: version, serial 0x2a, algorithm,
        // issuer, validity, subject, then (unread) the rest.
        let issuer = [0x30, 0x03, 0x31, 0x01, 0x41];
        let subject = [0x30, 0x03, 0x31, 0x01, 0x42];
        let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x2a, 0x30, 0x00];
        tbs.extend_from_slice(&issuer);
        tbs.extend_from_slice(&[0x30, 0x00]);
        tbs.extend_from_slice(&subject);
        let mut inner = vec![0x30, tbs.len() as u8];
        inner.extend_from_slice(&tbs);
        let mut cert = vec![0x30, inner.len() as u8];
        cert.extend_from_slice(&inner);
        let names = cert_names(&cert).unwrap();
        assert_eq!(names.serial, [0x02, 0x01, 0x2a]);
        assert_eq!(names.issuer, issuer);
        assert_eq!(names.subject, subject);
        assert_eq!(cert_names(&cert[..cert.len() - 3]), None);
        assert_eq!(cert_names(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
