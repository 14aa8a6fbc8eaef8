//! JWT bearer tokens (RFC 7519, JWS compact serialization, RFC 7515):
//! signature, algorithm allow-list, and the registered claims.
//!
//! What is accepted, exactly:
//! - three base64url segments without padding; the header a JSON object
//!   whose `alg` is one of the configured algorithms (ES256, EdDSA, RS256:
//!   never `none`, never an HMAC algorithm, so a public key can never be
//!   used as an HMAC secret), with no `crit`;
//! - a key of the JWKS whose type fits `alg` and, when the token names a
//!   `kid`, whose `kid` is that one;
//! - claims `exp` (required), `nbf` (optional) within the leeway, `iss`
//!   equal to the configured issuer, `aud` equal to or containing the
//!   configured audience, `sub` a non-empty string, the tenant claim a
//!   string and the partitions claim an array of strings.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::Digest;

use super::jwks::{Jwks, KeyMaterial};
use super::{AuthFailure, Principal};
use crate::config::JwtSettings;

/// A signature algorithm this service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Es256,
    EdDsa,
    Rs256,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::Es256, Alg::EdDsa, Alg::Rs256];

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Rs256 => "RS256",
        }
    }
}

impl std::str::FromStr for Alg {
    type Err = String;

    fn from_str(s: &str) -> Result<Alg, String> {
        Alg::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("{s:?}: must be one of ES256, EdDSA, RS256"))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// Checks bearer tokens against the configured keys and claims.
///
/// A token that verified is remembered (by its SHA-256, with its principal
/// and `exp`) so that the same token on the next request costs a hash, not
/// a signature check: callers reuse a token for its lifetime. An entry is
/// used only while the token has not expired, and a new key set forgets
/// every entry. Bounded in count ([`VERIFIED_CAPACITY`]) and age
/// ([`VERIFIED_TTL`]).
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: ArcSwap<Jwks>,
    verified: moka::sync::Cache<[u8; 32], (Principal, f64)>,
    /// Woken by a token whose `kid` is not in the key set.
    unknown_kid: tokio::sync::Notify,
}

/// Tokens remembered as verified at most.
pub const VERIFIED_CAPACITY: u64 = 10_000;
/// How long a verified token is remembered at most.
pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl JwtVerifier {
    pub fn new(settings: JwtSettings, keys: Jwks) -> JwtVerifier {
        JwtVerifier {
            settings,
            keys: ArcSwap::from_pointee(keys),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
            unknown_kid: tokio::sync::Notify::new(),
        }
    }

    /// Completes after a token named a `kid` the key set lacks.
    pub async fn unknown_kid(&self) {
        self.unknown_kid.notified().await;
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Swap in a newly read key set (SIGHUP, file change).
    pub fn replace_keys(&self, keys: Jwks) {
        self.keys.store(Arc::new(keys));
        // A token verified under a key that is gone must be checked again.
        self.verified.invalidate_all();
    }

    /// The outcome for a token verified before, if it is remembered: the
    /// principal, or [`AuthFailure::Expired`] once it has expired.
    pub fn remembered(&self, token: &str, now: u64) -> Option<Result<Principal, AuthFailure>> {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let (principal, exp) = self.verified.get(&digest)?;
        if (now as f64) < exp + self.settings.leeway.as_secs() as f64 {
            Some(Ok(principal))
        } else {
            self.verified.invalidate(&digest);
            Some(Err(AuthFailure::Expired))
        }
    }

    /// Check a token at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthFailure> {
        if token.len() > self.settings.max_token_bytes {
            return Err(AuthFailure::Malformed);
        }
        if let Some(result) = self.remembered(token, now) {
            return result;
        }
        let (principal, exp) = self.verify_signed(token, now)?;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        self.verified.insert(digest, (principal.clone(), exp));
        Ok(principal)
    }

    /// The whole check: signature, then claims.
    fn verify_signed(&self, token: &str, now: u64) -> Result<(Principal, f64), AuthFailure> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthFailure::Malformed);
        };
        let header: Header = decode_json(h)?;
        if header.crit.is_some() {
            return Err(AuthFailure::Malformed);
        }
        let alg = header
            .alg
            .parse::<Alg>()
            .ok()
            .filter(|a| self.settings.algorithms.contains(a))
            .ok_or(AuthFailure::Algorithm)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthFailure::Malformed)?;
        let signed = &token[..h.len() + 1 + c.len()];
        let keys = self.keys.load();
        let mut candidates = keys
            .keys
            .iter()
            .filter(|k| k.alg == alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .peekable();
        if candidates.peek().is_none() {
            if header.kid.is_some() {
                // Perhaps the issuer rotated its keys: a `jwks_url` is
                // fetched again early (spaced, see lib.rs).
                self.unknown_kid.notify_one();
            }
            return Err(AuthFailure::UnknownKey);
        }
        if !candidates.any(|k| verifies(&k.material, signed.as_bytes(), &signature)) {
            return Err(AuthFailure::Signature);
        }
        let claims: serde_json::Map<String, serde_json::Value> = decode_json(c)?;
        self.check_claims(&claims, now)
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<(Principal, f64), AuthFailure> {
        let leeway = self.settings.leeway.as_secs();
        let number = |name: &str| {
            claims
                .get(name)
                .map(|v| v.as_f64().ok_or(AuthFailure::Claims))
        };
        let exp = number("exp").ok_or(AuthFailure::Claims)??;
        if (now as f64) >= exp + leeway as f64 {
            return Err(AuthFailure::Expired);
        }
        if let Some(nbf) = number("nbf")
            && (now as f64) + (leeway as f64) < nbf?
        {
            return Err(AuthFailure::NotYetValid);
        }
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.settings.issuer.as_str()) {
            return Err(AuthFailure::Issuer);
        }
        let audience = self.settings.audience.as_str();
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == audience,
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str() == Some(audience))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(AuthFailure::Audience);
        }
        let subject = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(AuthFailure::Claims)?;
        let tenant = claims
            .get(&self.settings.tenant_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(AuthFailure::Claims)?;
        let partitions = match claims.get(&self.settings.partitions_claim) {
            Some(serde_json::Value::Array(list)) if list.len() <= 256 => list
                .iter()
                .map(|p| p.as_str().map(str::to_owned).ok_or(AuthFailure::Claims))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(AuthFailure::Claims),
        };
        Ok((
            Principal {
                subject: format!("jwt:{subject}"),
                tenant: tenant.to_owned(),
                partitions,
            },
            exp,
        ))
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, AuthFailure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthFailure::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthFailure::Malformed)
}

/// Whether `signature` over `message` verifies with `key` under the key's
/// one algorithm.
fn verifies(key: &KeyMaterial, message: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::P256(k) => {
            use p256::ecdsa::signature::Verifier;
            // JWS ES256 signatures are r ‖ s, 64 bytes (RFC 7518 §3.4).
            p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok())
        }
        KeyMaterial::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok()),
        KeyMaterial::Rsa { n, e } => {
            let key = aws_lc_rs::signature::RsaPublicKeyComponents { n, e };
            key.verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            )
            .is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use ed25519_dalek::Signer;

    fn settings() -> JwtSettings {
        JwtSettings {
            keys: crate::config::KeySource::File("unused".into()),
            issuer: "https://issuer.test".into(),
            audience: "hsmgate-rest".into(),
            algorithms: Alg::ALL.to_vec(),
            leeway: Duration::from_secs(30),
            tenant_claim: "tenant".into(),
            partitions_claim: "partitions".into(),
            max_token_bytes: 8192,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Signer25519(ed25519_dalek::SigningKey);

    impl Signer25519 {
        fn new() -> Signer25519 {
            Signer25519(ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
        }

        fn jwks(&self) -> Jwks {
            let x = b64(self.0.verifying_key().as_bytes());
            Jwks::parse(&format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{x}"}}]}}"#
            ))
            .unwrap()
        }

        fn token(&self, header: &str, claims: serde_json::Value) -> String {
            let signed = format!(
                "{}.{}",
                b64(header.as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let sig = self.0.sign(signed.as_bytes());
            format!("{signed}.{}", b64(&sig.to_bytes()))
        }
    }

    fn claims(now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": "https://issuer.test", "aud": ["other", "hsmgate-rest"], "sub": "ci",
            "exp": now + 60, "nbf": now - 1, "tenant": "demo", "partitions": ["demo"],
        })
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_good_token_names_its_principal() {
        let s = Signer25519::new();
        let v = JwtVerifier::new(settings(), s.jwks());
        let p = v
            .verify(&s.token(r#"{"alg":"EdDSA","kid":"k1"}"#, claims(NOW)), NOW)
            .unwrap();
        assert_eq!(p.subject, "jwt:ci");
        assert_eq!(p.tenant, "demo");
        assert_eq!(p.partitions, vec!["demo".to_string()]);
    }

    #[test]
    fn refusals_name_their_reason() {
        let s = Signer25519::new();
        let v = JwtVerifier::new(settings(), s.jwks());
        let good = r#"{"alg":"EdDSA"}"#;
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims(NOW);
            f(&mut c);
            s.token(good, c)
        };
        let cases: Vec<(String, AuthFailure)> = vec![
            (
                with(&|c| c["exp"] = (NOW - 31).into()),
                AuthFailure::Expired,
            ),
            (
                with(&|c| c["nbf"] = (NOW + 31).into()),
                AuthFailure::NotYetValid,
            ),
            (with(&|c| c["iss"] = "x".into()), AuthFailure::Issuer),
            (with(&|c| c["aud"] = "x".into()), AuthFailure::Audience),
            (
                with(&|c| c["partitions"] = "demo".into()),
                AuthFailure::Claims,
            ),
            (
                with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                AuthFailure::Claims,
            ),
            (
                s.token(r#"{"alg":"none"}"#, claims(NOW)),
                AuthFailure::Algorithm,
            ),
            (
                s.token(r#"{"alg":"HS256"}"#, claims(NOW)),
                AuthFailure::Algorithm,
            ),
            (
                s.token(r#"{"alg":"ES256"}"#, claims(NOW)),
                AuthFailure::UnknownKey,
            ),
            (
                s.token(r#"{"alg":"EdDSA","kid":"k9"}"#, claims(NOW)),
                AuthFailure::UnknownKey,
            ),
            (
                s.token(r#"{"alg":"EdDSA","crit":["exp"]}"#, claims(NOW)),
                AuthFailure::Malformed,
            ),
            ("a.b".into(), AuthFailure::Malformed),
            ("a.b.c.d".into(), AuthFailure::Malformed),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(&token, NOW).err(), Some(want), "{token}");
        }
        // Leeway: expired 29 s ago still passes.
        assert!(
            v.verify(&with(&|c| c["exp"] = (NOW - 29).into()), NOW)
                .is_ok()
        );
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let s = Signer25519::new();
        let v = JwtVerifier::new(settings(), s.jwks());
        let token = s.token(r#"{"alg":"EdDSA"}"#, claims(NOW));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = claims(NOW);
        c["partitions"] = serde_json::json!(["demo", "other"]);
        parts[1] = b64(c.to_string().as_bytes());
        assert_eq!(
            v.verify(&parts.join("."), NOW).err(),
            Some(AuthFailure::Signature)
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_new_key_set_forgets_it() {
        let s = Signer25519::new();
        let v = JwtVerifier::new(settings(), s.jwks());
        let token = s.token(r#"{"alg":"EdDSA"}"#, claims(NOW));
        assert!(v.verify(&token, NOW).is_ok());
        assert!(v.verify(&token, NOW + 1).is_ok(), "remembered");
        // exp is NOW + 60, the leeway 30 s.
        assert_eq!(v.verify(&token, NOW + 91).err(), Some(AuthFailure::Expired));
        let fresh = s.token(r#"{"alg":"EdDSA"}"#, claims(NOW + 1));
        assert!(v.verify(&fresh, NOW).is_ok());
        // The issuer's key is withdrawn: the remembered token is not served.
        let other = Signer25519(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        v.replace_keys(other.jwks());
        assert_eq!(v.verify(&fresh, NOW).err(), Some(AuthFailure::Signature));
    }

    #[test]
    fn an_algorithm_left_out_of_the_allow_list_is_refused() {
        let s = Signer25519::new();
        let mut only_es = settings();
        only_es.algorithms = vec![Alg::Es256];
        let v = JwtVerifier::new(only_es, s.jwks());
        let token = s.token(r#"{"alg":"EdDSA"}"#, claims(NOW));
        assert_eq!(v.verify(&token, NOW).err(), Some(AuthFailure::Algorithm));
    }
}
