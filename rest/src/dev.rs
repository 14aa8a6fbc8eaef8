//! The throwaway token issuer of `hsmgate dev`: an Ed25519 signing key kept
//! in the dev state directory, the JWKS the service checks tokens against,
//! and tokens for the demo tenant. Not for production: there, tokens come
//! from the operator's identity provider and the service holds only its
//! public keys.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};

/// The issuer and audience of dev tokens.
pub const ISSUER: &str = "hsmgate-dev";
pub const AUDIENCE: &str = "hsmgate-rest";
const KID: &str = "dev-1";

/// The dev issuer's files.
pub struct DevIssuer {
    key: SigningKey,
    pub jwks_file: PathBuf,
}

impl DevIssuer {
    /// Reuse the signing key in `dir`, or make one; (re)write the JWKS.
    pub fn load_or_create(dir: &Path) -> std::io::Result<DevIssuer> {
        std::fs::create_dir_all(dir)?;
        let key_file = dir.join("jwt-signing.key");
        let key = match std::fs::read_to_string(&key_file) {
            Ok(text) => {
                let bytes: [u8; 32] = URL_SAFE_NO_PAD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}: not a dev signing key; delete it to make a new one",
                                key_file.display()
                            ),
                        )
                    })?;
                SigningKey::from_bytes(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                hsmgate_authz::pki::write_private(
                    &key_file,
                    &format!("{}\n", URL_SAFE_NO_PAD.encode(key.to_bytes())),
                )?;
                key
            }
            Err(e) => return Err(e),
        };
        let jwks_file = dir.join("jwks.json");
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        }]});
        std::fs::write(&jwks_file, format!("{jwks}\n"))?;
        Ok(DevIssuer { key, jwks_file })
    }

    /// A token for `tenant` and `partitions`, valid for `lifetime_secs`.
    pub fn token(
        &self,
        subject: &str,
        tenant: &str,
        partitions: &[&str],
        lifetime_secs: u64,
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": KID});
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "nbf": now,
            "exp": now + lifetime_secs, "tenant": tenant, "partitions": partitions,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::Jwks;
    use crate::auth::jwt::{Alg, JwtVerifier};
    use crate::config::JwtSettings;

    #[test]
    fn dev_tokens_verify_against_the_dev_jwks_and_the_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_create(dir.path()).unwrap();
        let token = issuer.token("dev-user", "demo", &["demo"], 60);
        let again = DevIssuer::load_or_create(dir.path()).unwrap();
        let settings = JwtSettings {
            keys: crate::config::KeySource::File(again.jwks_file.clone()),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec![Alg::EdDsa],
            leeway: std::time::Duration::from_secs(5),
            tenant_claim: "tenant".into(),
            partitions_claim: "partitions".into(),
            max_token_bytes: 8192,
        };
        let v = JwtVerifier::new(settings, Jwks::load(&again.jwks_file).unwrap());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let p = v.verify(&token, now).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.tenant.as_str()),
            ("jwt:dev-user", "demo")
        );
    }
}
