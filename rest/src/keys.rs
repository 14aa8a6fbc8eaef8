//! A key as the API shows it: label, type, id, and the public part as a
//! JWK (RFC 7517/7518/8037) and as a PEM `PUBLIC KEY` (RFC 7468).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hsmgate_client::{KeyInfo, KeyType};
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `{"label", "type", "id"}`: a key in a listing.
pub fn summary(kind: KeyType, label: &str, id: &[u8]) -> Value {
    json!({
        "label": label,
        "type": kind.as_str(),
        "id": (!id.is_empty()).then(|| b64(id)),
    })
}

/// A key with its public part (`public_key` is null for AES keys).
pub fn detail(key: &KeyInfo) -> Value {
    let mut v = summary(key.kind, &key.label, &key.id);
    v["public_key"] = match (
        jwk(key.kind, &key.public_key),
        pem(key.kind, &key.public_key),
    ) {
        (Some(jwk), Some(pem)) => json!({ "jwk": jwk, "pem": pem }),
        _ => Value::Null,
    };
    v
}

/// A stored certificate without its value: `{"label", "id", "size"}`.
pub fn object(info: &hsmgate_client::ObjectInfo) -> Value {
    json!({
        "label": info.label,
        "id": (!info.id.is_empty()).then(|| b64(&info.id)),
        "size": info.size,
    })
}

/// A stored certificate with its value, as DER (base64url) and as PEM.
pub fn certificate(info: &hsmgate_client::ObjectInfo, der: &[u8]) -> Value {
    let mut v = object(info);
    v["der"] = Value::String(b64(der));
    v["pem"] = Value::String(pem_block("CERTIFICATE", der));
    v
}

/// The public key as a JWK.
pub fn jwk(kind: KeyType, public_key: &[u8]) -> Option<Value> {
    match kind {
        KeyType::Ed25519 if public_key.len() == 32 => {
            Some(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public_key)}))
        }
        KeyType::P256 | KeyType::P384 => {
            let (crv, n) = if kind == KeyType::P256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            let point = public_key.strip_prefix(&[0x04])?;
            (point.len() == 2 * n).then(
                || json!({"kty": "EC", "crv": crv, "x": b64(&point[..n]), "y": b64(&point[n..])}),
            )
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let (n, e) = hsmgate_wire::der::rsa_public_parts(public_key)?;
            Some(json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)}))
        }
        _ => None,
    }
}

/// The public key as PEM `SubjectPublicKeyInfo`.
pub fn pem(kind: KeyType, public_key: &[u8]) -> Option<String> {
    let der = hsmgate_wire::der::subject_public_key_info(kind, public_key)?;
    Some(pem_block("PUBLIC KEY", &der))
}

/// `der` as a PEM block (RFC 7468) of `label`.
fn pem_block(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ed25519_key_has_a_jwk_and_a_pem() {
        let key = KeyInfo {
            kind: KeyType::Ed25519,
            label: "k".into(),
            public_key: vec![1; 32],
            id: vec![],
        };
        let v = detail(&key);
        assert_eq!(v["public_key"]["jwk"]["crv"], "Ed25519");
        let pem = v["public_key"]["pem"].as_str().unwrap();
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pem}"
        );
        assert_eq!(v["id"], Value::Null);
    }

    #[test]
    fn an_aes_key_has_no_public_part() {
        let key = KeyInfo {
            kind: KeyType::Aes256,
            label: "k".into(),
            public_key: vec![],
            id: vec![1, 2],
        };
        let v = detail(&key);
        assert_eq!(v["public_key"], Value::Null);
        assert_eq!(v["id"], "AQI");
    }
}
