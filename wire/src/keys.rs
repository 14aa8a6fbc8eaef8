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
        let kp = snow::Builder::with_resolver(params, Box::new(crate::x25519::Resolver))
            .generate_keypair()?;
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
                "sealed" => {
                    return Err(WireError::KeyText(
                        "the key file is sealed under a passphrase (only clients take sealed key files)",
                    ));
                }
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

/// Why a private key file's permissions are refused, as OpenSSH refuses an
/// unprotected private key: `None` when they are fine.
///
/// - Anything for other users (mode `0o007`) is refused.
/// - Group write is refused.
/// - Group read is refused when the file belongs to the account reading it
///   (`effective_uid`; unknown counts as the owner). It is accepted for a
///   file owned by another account, where the group is how the process reads
///   it at all: a Kubernetes Secret volume mounted with `fsGroup` is owned by
///   root, mode 0440, group `fsGroup`.
pub fn private_file_mode_problem(
    mode: u32,
    owner: u32,
    effective_uid: Option<u32>,
) -> Option<String> {
    let mode = mode & 0o777;
    let ours = effective_uid.is_none_or(|me| me == owner);
    if mode & 0o007 != 0 {
        Some(format!("it is accessible to every user (mode {mode:03o})"))
    } else if mode & 0o020 != 0 {
        Some(format!("its group may write it (mode {mode:03o})"))
    } else if mode & 0o070 != 0 && ours {
        Some(format!("its group may read it (mode {mode:03o})"))
    } else {
        None
    }
}

/// The effective user id, from the text of `/proc/self/status` (its `Uid:`
/// line: real, effective, saved, filesystem).
pub fn effective_uid_from_proc_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Read a private key file: its permissions first
/// ([`private_file_mode_problem`]), then the key pair. The error says what
/// to do (`chmod 600`). A sealed file is refused: servers take plain ones.
#[cfg(unix)]
pub fn read_private_key_file(path: &std::path::Path) -> Result<StaticKeypair, KeyFileError> {
    let text = read_protected_text(path)?;
    StaticKeypair::from_file_text(&text).map_err(KeyFileError::Invalid)
}

/// Read a key file that may be sealed under a passphrase (clients), with
/// the same permission rules as [`read_private_key_file`].
#[cfg(unix)]
pub fn read_key_file(path: &std::path::Path) -> Result<crate::sealed::KeyFile, KeyFileError> {
    let text = read_protected_text(path)?;
    crate::sealed::KeyFile::parse(&text).map_err(KeyFileError::Invalid)
}

#[cfg(unix)]
fn read_protected_text(path: &std::path::Path) -> Result<Zeroizing<String>, KeyFileError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).map_err(KeyFileError::Read)?;
    let meta = file.metadata().map_err(KeyFileError::Read)?;
    let me = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid_from_proc_status(&s));
    if let Some(problem) = private_file_mode_problem(meta.mode(), meta.uid(), me) {
        return Err(KeyFileError::Permissions(format!(
            "{problem}; it holds a private key: chmod 600 {}",
            path.display()
        )));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(KeyFileError::Read)?;
    Ok(text)
}

/// Why a private key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error("refused: {0}")]
    Permissions(String),
    #[error("{0}")]
    Invalid(WireError),
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
    crate::x25519::public_of(private)
        .map(PublicKey)
        .ok_or(WireError::State("X25519 public key"))
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
    fn private_key_files_must_not_be_open_to_others() {
        let me = Some(1000);
        assert_eq!(private_file_mode_problem(0o100600, 1000, me), None);
        assert_eq!(private_file_mode_problem(0o400, 1000, me), None);
        assert!(private_file_mode_problem(0o644, 1000, me).is_some());
        assert!(private_file_mode_problem(0o604, 1000, me).is_some());
        assert!(
            private_file_mode_problem(0o640, 1000, me).is_some(),
            "ours, group-readable"
        );
        assert!(
            private_file_mode_problem(0o640, 1000, None).is_some(),
            "unknown uid: strict"
        );
        assert_eq!(
            private_file_mode_problem(0o440, 0, me),
            None,
            "a root-owned secret read through the group (fsGroup)"
        );
        assert!(
            private_file_mode_problem(0o460, 0, me).is_some(),
            "group-writable"
        );
        assert!(
            private_file_mode_problem(0o444, 0, me).is_some(),
            "world-readable"
        );
        let status = "Name:\tx\nUid:\t1000\t1001\t1001\t1001\nGid:\t5\t5\t5\t5\n";
        assert_eq!(effective_uid_from_proc_status(status), Some(1001));
        assert_eq!(effective_uid_from_proc_status("Name: x"), None);
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let pair = StaticKeypair::generate().unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains(&hex::encode(pair.private_bytes())));
    }
}
