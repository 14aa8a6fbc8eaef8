//! What `C_GenerateKey`, `C_GenerateKeyPair` and `C_CreateObject` are
//! asked for, read from their templates.
//!
//! Keys are generated on the HSM and never leave it, so a template that
//! asks for an extractable or non-sensitive key is refused
//! (`CKR_ATTRIBUTE_VALUE_INVALID`) rather than silently ignored. Usage
//! flags (`CKA_SIGN`, `CKA_ENCRYPT`…) are accepted and the key type's
//! usages apply.

use cryptoki_sys::*;
use hsmgate_client::KeyType;
use hsmgate_wire::ops::{MAX_ID, MAX_OBJECT};
use hsmgate_wire::text::validate_name;

use crate::der;
use crate::ffi::{Attr, as_bool, as_ulong};

/// A key (pair) to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    pub kind: KeyType,
    /// The label the application asked for (`CKA_LABEL`), if any.
    pub label: Option<Vec<u8>>,
    pub id: Vec<u8>,
    /// `CKA_TOKEN`: false makes a session object.
    pub token: bool,
}

/// A certificate to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPlan {
    pub label: Option<String>,
    pub id: Vec<u8>,
    pub value: Vec<u8>,
}

fn find(template: &[Attr], kind: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    template
        .iter()
        .rev()
        .find(|a| a.kind == kind)
        .map(|a| a.value.as_slice())
}

/// Refuse what this token cannot give: extractable or non-sensitive secrets.
fn check_protection(template: &[Attr]) -> Result<(), CK_RV> {
    if let Some(v) = find(template, CKA_EXTRACTABLE)
        && as_bool(v)?
    {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if let Some(v) = find(template, CKA_SENSITIVE)
        && !as_bool(v)?
    {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Ok(())
}

/// What both kinds of generation read: label, id, `CKA_TOKEN`, classes
/// (`CKO_PUBLIC_KEY` in `public`, `secret_class` in `secret`) and the
/// protection asked for.
fn common(
    public: &[Attr],
    secret: &[Attr],
    secret_class: CK_OBJECT_CLASS,
    kind: KeyType,
) -> Result<KeyPlan, CK_RV> {
    let private = secret;
    // An empty label is no label (python-pkcs11 always sends one).
    let label = find(private, CKA_LABEL)
        .or_else(|| find(public, CKA_LABEL))
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec);
    let id = find(private, CKA_ID)
        .or_else(|| find(public, CKA_ID))
        .unwrap_or_default()
        .to_vec();
    if id.len() > MAX_ID {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let token = match find(private, CKA_TOKEN).or_else(|| find(public, CKA_TOKEN)) {
        Some(v) => as_bool(v)?,
        None => false,
    };
    for (t, expected) in [(public, CKO_PUBLIC_KEY), (private, secret_class)] {
        if let Some(v) = find(t, CKA_CLASS)
            && as_ulong(v)? != expected
        {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
    }
    check_protection(private)?;
    Ok(KeyPlan {
        kind,
        label,
        id,
        token,
    })
}

/// `C_GenerateKeyPair`.
pub fn key_pair(
    mechanism: CK_MECHANISM_TYPE,
    public: &[Attr],
    private: &[Attr],
) -> Result<KeyPlan, CK_RV> {
    let kind = match mechanism {
        CKM_EC_KEY_PAIR_GEN | CKM_EC_EDWARDS_KEY_PAIR_GEN => {
            let params = find(public, CKA_EC_PARAMS)
                .or_else(|| find(private, CKA_EC_PARAMS))
                .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let kind = der::curve_of(params).ok_or(CKR_CURVE_NOT_SUPPORTED)?;
            let edwards = kind == KeyType::Ed25519;
            if edwards != (mechanism == CKM_EC_EDWARDS_KEY_PAIR_GEN) {
                return Err(CKR_TEMPLATE_INCONSISTENT);
            }
            kind
        }
        CKM_RSA_PKCS_KEY_PAIR_GEN => {
            let bits = find(public, CKA_MODULUS_BITS).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            let kind = match as_ulong(bits)? {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                _ => return Err(CKR_KEY_SIZE_RANGE),
            };
            if let Some(e) = find(public, CKA_PUBLIC_EXPONENT) {
                let start = e.iter().position(|b| *b != 0).unwrap_or(e.len());
                if e[start..] != [1, 0, 1] {
                    return Err(CKR_TEMPLATE_INCONSISTENT);
                }
            }
            kind
        }
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    common(public, private, CKO_PRIVATE_KEY, kind)
}

/// `C_GenerateKey`.
pub fn secret_key(mechanism: CK_MECHANISM_TYPE, template: &[Attr]) -> Result<KeyPlan, CK_RV> {
    if mechanism != CKM_AES_KEY_GEN {
        return Err(CKR_MECHANISM_INVALID);
    }
    if let Some(len) = find(template, CKA_VALUE_LEN)
        && as_ulong(len)? != 32
    {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    if let Some(v) = find(template, CKA_KEY_TYPE)
        && as_ulong(v)? != CKK_AES
    {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    common(&[], template, CKO_SECRET_KEY, KeyType::Aes256)
}

/// `C_CreateObject`: only X.509 certificates (keys are made on the HSM,
/// never imported).
pub fn certificate(template: &[Attr]) -> Result<CertPlan, CK_RV> {
    let class = find(template, CKA_CLASS).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    if as_ulong(class)? != CKO_CERTIFICATE {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if let Some(t) = find(template, CKA_CERTIFICATE_TYPE)
        && as_ulong(t)? != CKC_X_509
    {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if let Some(t) = find(template, CKA_TOKEN)
        && !as_bool(t)?
    {
        // Certificates are always token objects here.
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let value = find(template, CKA_VALUE).ok_or(CKR_TEMPLATE_INCOMPLETE)?;
    if value.is_empty() || value.len() > MAX_OBJECT || value[0] != 0x30 {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let label = match find(template, CKA_LABEL).filter(|l| !l.is_empty()) {
        Some(l) => Some(hsm_label(l)?),
        None => None,
    };
    let id = find(template, CKA_ID).unwrap_or_default().to_vec();
    if id.len() > MAX_ID {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Ok(CertPlan {
        label,
        id,
        value: value.to_vec(),
    })
}

/// An application's label as an HSM label: 1 to 64 bytes of
/// `[A-Za-z0-9._-]`, not the reserved session prefix.
pub fn hsm_label(label: &[u8]) -> Result<String, CK_RV> {
    let label = std::str::from_utf8(label).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    validate_name(label).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    if label.starts_with(crate::objects::SESSION_LABEL_PREFIX) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Ok(label.to_owned())
}

/// A fresh label with `prefix` and 16 random hex digits.
pub fn random_label(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{bool_value, ulong};

    fn attr(kind: CK_ATTRIBUTE_TYPE, value: Vec<u8>) -> Attr {
        Attr { kind, value }
    }

    #[test]
    fn ec_pairs_are_named_by_their_curve() {
        let public = [attr(CKA_EC_PARAMS, der::P384_PARAMS.to_vec())];
        let private = [
            attr(CKA_LABEL, b"k1".to_vec()),
            attr(CKA_ID, vec![1, 2]),
            attr(CKA_TOKEN, bool_value(true)),
        ];
        let plan = key_pair(CKM_EC_KEY_PAIR_GEN, &public, &private).unwrap();
        assert_eq!(plan.kind, KeyType::P384);
        assert_eq!(plan.label.as_deref(), Some(&b"k1"[..]));
        assert_eq!(plan.id, [1, 2]);
        assert!(plan.token);
        assert_eq!(
            key_pair(CKM_EC_KEY_PAIR_GEN, &[], &private).err(),
            Some(CKR_TEMPLATE_INCOMPLETE)
        );
        let ed = [attr(CKA_EC_PARAMS, der::ED25519_PARAMS.to_vec())];
        assert_eq!(
            key_pair(CKM_EC_KEY_PAIR_GEN, &ed, &[]).err(),
            Some(CKR_TEMPLATE_INCONSISTENT),
            "Ed25519 is made by the Edwards mechanism"
        );
        assert_eq!(
            key_pair(CKM_EC_EDWARDS_KEY_PAIR_GEN, &ed, &[])
                .unwrap()
                .kind,
            KeyType::Ed25519
        );
        let brainpool = [attr(CKA_EC_PARAMS, vec![0x06, 0x01, 0x00])];
        assert_eq!(
            key_pair(CKM_EC_KEY_PAIR_GEN, &brainpool, &[]).err(),
            Some(CKR_CURVE_NOT_SUPPORTED)
        );
    }

    #[test]
    fn rsa_sizes_and_exponent_are_checked() {
        let bits = |b| [attr(CKA_MODULUS_BITS, ulong(b))];
        assert_eq!(
            key_pair(CKM_RSA_PKCS_KEY_PAIR_GEN, &bits(3072), &[])
                .unwrap()
                .kind,
            KeyType::Rsa3072
        );
        assert_eq!(
            key_pair(CKM_RSA_PKCS_KEY_PAIR_GEN, &bits(1024), &[]).err(),
            Some(CKR_KEY_SIZE_RANGE)
        );
        let e3 = [
            attr(CKA_MODULUS_BITS, ulong(2048)),
            attr(CKA_PUBLIC_EXPONENT, vec![3]),
        ];
        assert_eq!(
            key_pair(CKM_RSA_PKCS_KEY_PAIR_GEN, &e3, &[]).err(),
            Some(CKR_TEMPLATE_INCONSISTENT)
        );
    }

    #[test]
    fn extractable_keys_and_bad_labels_are_refused() {
        let extractable = [attr(CKA_EXTRACTABLE, bool_value(true))];
        assert_eq!(
            secret_key(CKM_AES_KEY_GEN, &extractable).err(),
            Some(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        assert_eq!(
            secret_key(CKM_AES_KEY_GEN, &[attr(CKA_VALUE_LEN, ulong(16))]).err(),
            Some(CKR_KEY_SIZE_RANGE)
        );
        assert!(secret_key(CKM_AES_KEY_GEN, &[attr(CKA_VALUE_LEN, ulong(32))]).is_ok());
        // pkcs11-tool's template for `--keygen --key-type AES:32`.
        let aes = [
            attr(CKA_CLASS, ulong(CKO_SECRET_KEY)),
            attr(CKA_KEY_TYPE, ulong(CKK_AES)),
            attr(CKA_VALUE_LEN, ulong(32)),
            attr(CKA_TOKEN, bool_value(true)),
        ];
        assert!(secret_key(CKM_AES_KEY_GEN, &aes).unwrap().token);
        let wrong_class = [attr(CKA_CLASS, ulong(CKO_PRIVATE_KEY))];
        assert_eq!(
            secret_key(CKM_AES_KEY_GEN, &wrong_class).err(),
            Some(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(hsm_label(b"my key"), Err(CKR_ATTRIBUTE_VALUE_INVALID));
        assert_eq!(hsm_label(b"_s.x"), Err(CKR_ATTRIBUTE_VALUE_INVALID));
        assert_eq!(hsm_label(b"ok-1"), Ok("ok-1".into()));
    }

    #[test]
    fn only_der_certificates_are_created() {
        let cert = |class, value: Vec<u8>| {
            vec![
                attr(CKA_CLASS, ulong(class)),
                attr(CKA_VALUE, value),
                attr(CKA_LABEL, b"c".to_vec()),
            ]
        };
        assert!(certificate(&cert(CKO_CERTIFICATE, vec![0x30, 0])).is_ok());
        assert_eq!(
            certificate(&cert(CKO_PRIVATE_KEY, vec![0x30, 0])).err(),
            Some(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        assert_eq!(
            certificate(&cert(CKO_CERTIFICATE, b"-----BEGIN".to_vec())).err(),
            Some(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }
}
