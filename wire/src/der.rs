//! The DER structures of the key formats (PROTOCOL.md §7.5, §7.6) and of
//! their PKCS#11 attributes, shared by the HSM node's token store and the
//! PKCS#11 library: curve identifiers (`CKA_EC_PARAMS`), OCTET STRINGs
//! (`CKA_EC_POINT`), the `RSAPublicKey` the protocol carries, and the
//! DigestInfo of PKCS#1 v1.5 signatures.
//!
//! Reading checks every length against the input: malformed bytes are
//! `None`, never a panic.

use crate::ops::KeyType;

/// `CKA_EC_PARAMS` of P-256: OID 1.2.840.10045.3.1.7 (prime256v1).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` of P-384: OID 1.3.132.0.34 (secp384r1).
pub const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `CKA_EC_PARAMS` of Ed25519: OID 1.3.101.112 (RFC 8410).
pub const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// `CKA_EC_PARAMS` for a key type.
pub fn ec_params(kind: KeyType) -> Option<&'static [u8]> {
    match kind {
        KeyType::P256 => Some(P256_PARAMS),
        KeyType::P384 => Some(P384_PARAMS),
        KeyType::Ed25519 => Some(ED25519_PARAMS),
        _ => None,
    }
}

/// A DER length: the short form below 128, else `0x80 | n` and the length
/// in `n` big-endian bytes, as few as it takes (a length of 64 KiB or more
/// takes three).
fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - zeros) as u8);
    out.extend_from_slice(&bytes[zeros..]);
}

/// One TLV: `(tag, contents, rest)`.
pub fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The whole TLV at the start of `input` (header included) and the rest.
pub fn element(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = tlv(input)?;
    Some((&input[..input.len() - rest.len()], rest))
}

/// `bytes` as a DER OCTET STRING (`CKA_EC_POINT`: the SEC1 point or the 32
/// Ed25519 bytes, as OpenSSL and Java expect them).
pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    put_len(&mut out, bytes.len());
    out.extend_from_slice(bytes);
    out
}

/// The contents of a DER OCTET STRING that is the whole input.
pub fn octet_string_contents(der: &[u8]) -> Option<&[u8]> {
    match tlv(der)? {
        (0x04, contents, []) => Some(contents),
        _ => None,
    }
}

fn put_integer(out: &mut Vec<u8>, value: &[u8]) {
    let value = &value[value.iter().take_while(|b| **b == 0).count()..];
    let pad = value.first().is_none_or(|b| b & 0x80 != 0);
    out.push(0x02);
    put_len(out, value.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(value);
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent
/// INTEGER }`, the protocol's RSA public key, from big-endian parts.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_integer(&mut body, n);
    put_integer(&mut body, e);
    let mut out = vec![0x30];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Fields of an X.509 certificate's `tbsCertificate` (RFC 5280 §4.1),
/// each a whole TLV, and the fields after the subject (subjectPublicKeyInfo,
/// unique ids, extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbsFields<'a> {
    pub serial: &'a [u8],
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    pub after_subject: &'a [u8],
}

/// Walk a DER certificate: `Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity, subject, … }, … }`. `None` for anything else.
pub fn tbs_fields(der: &[u8]) -> Option<TbsFields<'_>> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.1;
    }
    let (serial, rest) = element(rest)?;
    let (_signature, rest) = element(rest)?;
    let (issuer, rest) = element(rest)?;
    let (_validity, rest) = element(rest)?;
    let (subject, after_subject) = element(rest)?;
    if serial.first() != Some(&0x02)
        || issuer.first() != Some(&0x30)
        || subject.first() != Some(&0x30)
    {
        return None;
    }
    Some(TbsFields {
        serial,
        issuer,
        subject,
        after_subject,
    })
}

/// The DER `SubjectPublicKeyInfo` (RFC 5280 §4.1, the body of a PEM
/// "PUBLIC KEY") of a protocol public key (§7.5, §7.6): Ed25519 (RFC 8410),
/// P-256 and P-384 (RFC 5480, the SEC1 point as is) and RSA (RFC 8017,
/// `rsaEncryption` with NULL parameters). `None` for AES keys and for a
/// public key of the wrong length.
pub fn subject_public_key_info(kind: KeyType, public_key: &[u8]) -> Option<Vec<u8>> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const RSA_ENCRYPTION: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let algorithm: Vec<u8> = match kind {
        KeyType::Ed25519 if public_key.len() == 32 => ED25519_PARAMS.to_vec(),
        KeyType::P256 if public_key.len() == 65 => [EC_PUBLIC_KEY, P256_PARAMS].concat(),
        KeyType::P384 if public_key.len() == 97 => [EC_PUBLIC_KEY, P384_PARAMS].concat(),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            rsa_public_parts(public_key)?;
            RSA_ENCRYPTION.to_vec()
        }
        _ => return None,
    };
    let mut body = vec![0x30];
    put_len(&mut body, algorithm.len());
    body.extend_from_slice(&algorithm);
    body.push(0x03);
    put_len(&mut body, public_key.len() + 1);
    body.push(0x00);
    body.extend_from_slice(public_key);
    let mut out = vec![0x30];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    Some(out)
}

/// Modulus and public exponent of a DER `RSAPublicKey`, big-endian without
/// leading zeros.
pub fn rsa_public_parts(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (0x30, body, []) = tlv(der)? else {
        return None;
    };
    let (0x02, n, rest) = tlv(body)? else {
        return None;
    };
    let (0x02, e, []) = tlv(rest)? else {
        return None;
    };
    let strip = |v: &[u8]| {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[start..].to_vec()
    };
    Some((strip(n), strip(e)))
}

/// The hashes of RSASSA-PKCS1-v1_5 DigestInfos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DER DigestInfo prefix (RFC 8017 §9.2 note 1) in front of the hash.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// The hash and digest inside a DigestInfo.
pub fn digest_info(input: &[u8]) -> Option<(Hash, &[u8])> {
    [Hash::Sha1, Hash::Sha256, Hash::Sha384, Hash::Sha512]
        .into_iter()
        .find_map(|h| {
            let digest = input.strip_prefix(h.digest_info_prefix())?;
            (digest.len() == h.output_len()).then_some((h, digest))
        })
}

/// A DigestInfo for `hash` and `digest`.
pub fn to_digest_info(hash: Hash, digest: &[u8]) -> Vec<u8> {
    let mut out = hash.digest_info_prefix().to_vec();
    out.extend_from_slice(digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_public_key_infos_have_the_standard_prefixes() {
        let ed = subject_public_key_info(KeyType::Ed25519, &[9; 32]).unwrap();
        assert_eq!(hex::encode(&ed[..12]), "302a300506032b6570032100");
        assert_eq!(ed.len(), 44);
        let p256 = subject_public_key_info(KeyType::P256, &[4; 65]).unwrap();
        assert_eq!(
            hex::encode(&p256[..26]),
            "3059301306072a8648ce3d020106082a8648ce3d030107034200"
        );
        let p384 = subject_public_key_info(KeyType::P384, &[4; 97]).unwrap();
        assert_eq!(
            hex::encode(&p384[..23]),
            "3076301006072a8648ce3d020106052b81040022036200"
        );
        let rsa = rsa_public_key(&[0xc5; 256], &[1, 0, 1]);
        let spki = subject_public_key_info(KeyType::Rsa2048, &rsa).unwrap();
        let (0x30, body, []) = tlv(&spki).unwrap() else {
            panic!()
        };
        let (0x30, _alg, rest) = tlv(body).unwrap() else {
            panic!()
        };
        let (0x03, bits, []) = tlv(rest).unwrap() else {
            panic!()
        };
        assert_eq!(&bits[1..], &rsa[..]);
        assert_eq!(subject_public_key_info(KeyType::Aes256, &[]), None);
        assert_eq!(subject_public_key_info(KeyType::P256, &[4; 64]), None);
        assert_eq!(
            subject_public_key_info(KeyType::Rsa2048, &[0x30, 0x00]),
            None
        );
    }

    #[test]
    fn octet_strings_of_64_kib_and_more_carry_their_whole_length() {
        // Found by the `der` fuzz target: the two-byte length form was
        // written for every length from 256 on, truncating 70000 to 4464.
        let long = vec![7u8; 70_000];
        let der = octet_string(&long);
        assert_eq!(der[..5], [0x04, 0x83, 0x01, 0x11, 0x70]);
        assert_eq!(octet_string_contents(&der), Some(&long[..]));
        let edge = vec![7u8; 0x1_0000];
        assert_eq!(octet_string(&edge)[..5], [0x04, 0x83, 0x01, 0x00, 0x00]);
        assert_eq!(octet_string(&[7u8; 0xffff])[..4], [0x04, 0x82, 0xff, 0xff]);
        assert_eq!(octet_string(&[7u8; 0x80])[..3], [0x04, 0x81, 0x80]);
    }

    #[test]
    fn rsa_public_keys_are_der_as_the_software_store_writes_them() {
        // SEQUENCE { INTEGER 00 c5 (sign padding), INTEGER 01 00 01 }
        assert_eq!(
            rsa_public_key(&[0xc5], &[1, 0, 1]),
            [
                0x30, 0x09, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
        let n = [0x80; 256];
        let der = rsa_public_key(&n, &[1, 0, 1]);
        assert_eq!(der[..4], [0x30, 0x82, 0x01, 0x0a]);
        assert_eq!(der[4..8], [0x02, 0x82, 0x01, 0x01]);
        assert_eq!(rsa_public_parts(&der), Some((n.to_vec(), vec![1, 0, 1])));
    }

    #[test]
    fn ec_points_come_out_of_their_octet_string() {
        let mut der = vec![0x04, 65];
        der.extend([4; 65]);
        assert_eq!(octet_string_contents(&der), Some(&[4u8; 65][..]));
        let mut long = vec![0x04, 0x81, 0x61];
        long.extend([4; 97]);
        assert_eq!(octet_string_contents(&long).map(<[u8]>::len), Some(97));
        assert_eq!(octet_string_contents(&[0x04, 5, 1]), None);
        assert_eq!(
            octet_string_contents(&octet_string(&[9; 200])),
            Some(&[9u8; 200][..])
        );
    }
}
