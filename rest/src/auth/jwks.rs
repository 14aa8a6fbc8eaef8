//! A JSON Web Key Set (RFC 7517) of verification keys: EC P-256 (ES256),
//! OKP Ed25519 (EdDSA) and RSA of 2048 to 8192 bits (RS256). Keys of other
//! types, curves or uses are left out with a reason; private members
//! (`d`, `p`, `q`, ...) make the whole set refused: a private key in a
//! verification file is a leak to report, not to use.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::jwt::Alg;

/// Largest JWKS file read.
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// Most keys in a set.
const MAX_KEYS: usize = 64;

/// A verification key.
#[derive(Clone)]
pub enum KeyMaterial {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    /// Modulus and public exponent, big-endian.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::P256(_) => "P256",
            KeyMaterial::Ed25519(_) => "Ed25519",
            KeyMaterial::Rsa { .. } => "Rsa",
        })
    }
}

/// One usable key of the set.
#[derive(Debug, Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Alg,
    pub material: KeyMaterial,
}

/// The usable keys of a set.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    pub keys: Vec<VerifyKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("not a JWKS: {0}")]
    Json(String),
    #[error("keys[{index}]: holds private key members; a verification set must not")]
    PrivateKey { index: usize },
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
    #[error("larger than 1 MiB")]
    TooLarge,
    #[error("no usable key ({0})")]
    NoUsableKey(String),
    #[error("fetching the key set: {0}")]
    Fetch(String),
}

#[derive(Deserialize)]
struct SetJson {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl Jwks {
    /// Read a JWKS file.
    pub fn load(path: &Path) -> Result<Jwks, JwksError> {
        use std::io::Read;
        let read = |source| JwksError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_JWKS_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        Jwks::parse(&text)
    }

    /// Parse a JWKS document.
    pub fn parse(text: &str) -> Result<Jwks, JwksError> {
        let set: SetJson =
            serde_json::from_str(text).map_err(|e| JwksError::Json(e.to_string()))?;
        if set.keys.len() > MAX_KEYS {
            return Err(JwksError::TooMany);
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            if ["d", "p", "q", "dp", "dq", "qi", "k"]
                .iter()
                .any(|m| jwk.contains_key(*m))
            {
                return Err(JwksError::PrivateKey { index });
            }
            match parse_key(jwk) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("keys[{index}]: {reason}")),
            }
        }
        for s in &skipped {
            tracing::warn!(key = %s, "JWKS key left out");
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(if skipped.is_empty() {
                "the set is empty".into()
            } else {
                skipped.join("; ")
            }));
        }
        Ok(Jwks { keys })
    }
}

fn text<'a>(jwk: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> Option<&'a str> {
    jwk.get(name).and_then(|v| v.as_str())
}

fn bytes(jwk: &serde_json::Map<String, serde_json::Value>, name: &str) -> Result<Vec<u8>, String> {
    let t = text(jwk, name).ok_or_else(|| format!("no \"{name}\""))?;
    URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| format!("\"{name}\" is not base64url without padding"))
}

fn parse_key(jwk: &serde_json::Map<String, serde_json::Value>) -> Result<VerifyKey, String> {
    if let Some(usage) = text(jwk, "use")
        && usage != "sig"
    {
        return Err(format!("use {usage:?}, not \"sig\""));
    }
    let kty = text(jwk, "kty").ok_or("no \"kty\"")?;
    let (alg, material) = match (kty, text(jwk, "crv")) {
        ("EC", Some("P-256")) => {
            let (x, y) = (bytes(jwk, "x")?, bytes(jwk, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .map_err(|_| "not a point on P-256")?;
            (Alg::Es256, KeyMaterial::P256(key))
        }
        ("OKP", Some("Ed25519")) => {
            let x: [u8; 32] = bytes(jwk, "x")?
                .try_into()
                .map_err(|_| "an Ed25519 key is 32 bytes")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| "not an Ed25519 public key")?;
            (Alg::EdDsa, KeyMaterial::Ed25519(key))
        }
        ("RSA", _) => {
            let n = strip_zeros(bytes(jwk, "n")?);
            let e = strip_zeros(bytes(jwk, "e")?);
            let bits = n.len() * 8;
            if !(2048..=8192).contains(&bits) {
                return Err(format!("RSA modulus of {bits} bits, not 2048 to 8192"));
            }
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
                return Err("RSA exponent must be odd and at most 32 bits".into());
            }
            (Alg::Rs256, KeyMaterial::Rsa { n, e })
        }
        (kty, crv) => return Err(format!("kty {kty:?} crv {crv:?} is not supported")),
    };
    if let Some(named) = text(jwk, "alg")
        && named != alg.as_str()
    {
        return Err(format!("alg {named:?} does not fit a {kty} key"));
    }
    Ok(VerifyKey {
        kid: text(jwk, "kid").map(str::to_owned),
        alg,
        material,
    })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_private_members_and_unusable_sets() {
        let private = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}"#;
        assert!(matches!(
            Jwks::parse(private),
            Err(JwksError::PrivateKey { index: 0 })
        ));
        let symmetric = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(Jwks::parse(symmetric).is_err());
        let empty = r#"{"keys":[]}"#;
        assert!(matches!(Jwks::parse(empty), Err(JwksError::NoUsableKey(_))));
        let short_rsa = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        assert!(matches!(
            Jwks::parse(short_rsa),
            Err(JwksError::NoUsableKey(_))
        ));
    }

    #[test]
    fn reads_an_ed25519_key_of_rfc_8037() {
        // RFC 8037 appendix A.2.
        let set = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}]}"#;
        let jwks = Jwks::parse(set).unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].alg, Alg::EdDsa);
        assert_eq!(jwks.keys[0].kid.as_deref(), Some("a"));
    }

    #[test]
    fn a_key_whose_alg_does_not_fit_is_left_out() {
        let set = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"HS256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(Jwks::parse(set).is_err());
    }
}
