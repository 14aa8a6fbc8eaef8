//! Static X25519 keys and their text forms (PROTOCOL.md §1.2).
//!
//! A public key is written `x25519:` followed by 64 lower-case hex digits;
//! configs, the directory file and logs use that form. A key pair file is a
//! small TOML document with `public` and `private` (`x25519-private:` + hex).
//! Private key bytes are zeroized when dropped and never formatted by Debug.

use crate::error::WireError;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
const PUBLIC_PREFIX: &str = "x25519:";
const PRIVATE_PREFIX: &str = "x25519-private:";

/// A static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| WireError::KeyText("a public key is 32 bytes"))?;
        Ok(PublicKey(arr))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The text form, `x25519:<hex>`.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", hex::encode(self.0))
    }

    /// Parse the text form. Surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, WireError> {
        let hex_part = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or(WireError::KeyText("a public key starts with \"x25519:\""))?;
        let bytes = decode_key_hex(hex_part)?;
        Ok(PublicKey(*bytes))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_text(s)
    }
}

/// A static key pair: the private half zeroized on drop.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl StaticKeypair {
    /// Generate a new key pair from the operating system's random source.
    pub fn generate() -> Result<Self, WireError> {
        let params = crate::NOISE_PARAMS
            .parse()
            .map_err(|_| WireError::State("noise parameters"))?;
        let kp = snow::Builder::new(params).generate_keypair()?;
        let private = Zeroizing::new(
            <[u8; KEY_LEN]>::try_from(kp.private.as_slice())
                .map_err(|_| WireError::State("generated key length"))?,
        );
        let public = PublicKey::from_bytes(&kp.public)?;
        Ok(StaticKeypair { private, public })
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private key bytes, for handing to the Noise library only.
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// Build a pair from a private key, deriving the public key.
    pub fn from_private(private: [u8; KEY_LEN]) -> Result<Self, WireError> {
        let private = Zeroizing::new(private);
        let public = derive_public(&private)?;
        Ok(StaticKeypair { private, public })
    }

    /// The key file text (TOML). Contains the private key: write it 0600.
    pub fn to_file_text(&self) -> String {
        format!(
            "# hsmgate static key pair (X25519). Keep this file secret.\n\
             public = \"{}\"\nprivate = \"{PRIVATE_PREFIX}{}\"\n",
            self.public.to_text(),
            hex::encode(*self.private)
        )
    }

    /// Parse key file text. The `public` line, when present, must match the
    /// private key so that a hand-edited file cannot silently mismatch.
    pub fn from_file_text(text: &str) -> Result<Self, WireError> {
        let mut private = None;
        let mut public = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or(WireError::KeyText("a key file line is `name = \"value\"`"))?;
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "private" => {
                    let hex_part = value
                        .strip_prefix(PRIVATE_PREFIX)
                        .ok_or(WireError::KeyText(
                            "`private` starts with \"x25519-private:\"",
                        ))?;
                    private = Some(decode_key_hex(hex_part)?);
                }
                "public" => public = Some(PublicKey::from_text(value)?),
                _ => return Err(WireError::KeyText("unknown field in key file")),
            }
        }
        let private = private.ok_or(WireError::KeyText("key file has no `private` field"))?;
        let pair = StaticKeypair::from_private(*private)?;
        if let Some(public) = public
            && public != pair.public
        {
            return Err(WireError::KeyText(
                "`public` does not match the private key",
            ));
        }
        Ok(pair)
    }
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

fn decode_key_hex(hex_part: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, WireError> {
    if hex_part.len() != 2 * KEY_LEN {
        return Err(WireError::KeyText("a key is 64 hex digits"));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_part, &mut out[..])
        .map_err(|_| WireError::KeyText("a key is 64 hex digits"))?;
    Ok(out)
}

/// Derive the X25519 public key (RFC 7748: the clamped scalar times the base point).
fn derive_public(private: &[u8; KEY_LEN]) -> Result<PublicKey, WireError> {
    let point = curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(*private);
    Ok(PublicKey(point.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_and_derives_the_same_public_key() {
        let pair = StaticKeypair::generate().unwrap();
        let text = pair.to_file_text();
        let back = StaticKeypair::from_file_text(&text).unwrap();
        assert_eq!(back.public(), pair.public());
        assert_eq!(back.private_bytes(), pair.private_bytes());
    }

    #[test]
    fn public_key_text_round_trips() {
        let pair = StaticKeypair::generate().unwrap();
        let text = pair.public().to_text();
        assert!(text.starts_with("x25519:"));
        assert_eq!(PublicKey::from_text(&text).unwrap(), pair.public());
    }

    #[test]
    fn refuses_malformed_key_text() {
        assert!(PublicKey::from_text("abcd").is_err());
        assert!(PublicKey::from_text("x25519:zz").is_err());
        assert!(PublicKey::from_text(&format!("x25519:{}", "g".repeat(64))).is_err());
        assert!(StaticKeypair::from_file_text("public = \"x\"").is_err());
    }

    #[test]
    fn refuses_a_key_file_whose_public_half_does_not_match() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let text = a
            .to_file_text()
            .replace(&a.public().to_text(), &b.public().to_text());
        assert!(StaticKeypair::from_file_text(&text).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let pair = StaticKeypair::generate().unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains(&hex::encode(pair.private_bytes())));
    }
}
