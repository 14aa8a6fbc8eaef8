//! The built-in software key store: one per partition, persisted as
//! `state_dir/<partition>/keys.toml`.
//!
//! The file holds, for each key, its type, label, secret bytes and public
//! bytes in hex. It is written atomically (temporary file, fsync, rename,
//! directory fsync) with mode 0600 inside a 0700 directory, and read once at
//! start; a file that does not parse or whose keys do not check out is an
//! error that names the file. Secret bytes live in [`Zeroizing`] buffers and
//! the text forms of the file are zeroized after use; copies made inside the
//! TOML parser cannot be reached and are not.
//!
//! Operations on the keys are in [`crate::ops`]; this module owns key
//! material: generation, derivation of public keys, persistence.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hsmgate_wire::ops::{KeyInfo, KeyType, MAX_KEYS, Status};
use hsmgate_wire::text::validate_name;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// File name of a partition's key store inside its directory.
pub const KEY_FILE_NAME: &str = "keys.toml";
const FORMAT_VERSION: u32 = 1;
/// Secret length of every supported key type.
const SECRET_LEN: usize = 32;

/// Why a key store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key store {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// One stored key. The secret is zeroized on drop.
pub struct StoredKey {
    pub kind: KeyType,
    pub label: String,
    secret: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
}

impl StoredKey {
    /// Generate a fresh key from the operating system's random source.
    pub fn generate(kind: KeyType, label: &str) -> StoredKey {
        let secret = match kind {
            KeyType::Ed25519 => {
                let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
                Zeroizing::new(sk.to_bytes().to_vec())
            }
            KeyType::P256 => {
                let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
                let mut bytes = sk.to_bytes();
                let secret = Zeroizing::new(bytes.to_vec());
                bytes.as_mut_slice().zeroize();
                secret
            }
            KeyType::Aes256 => {
                let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
                OsRng.fill_bytes(&mut secret);
                secret
            }
        };
        // Derivation from freshly generated material cannot fail.
        let public = derive_public(kind, &secret).unwrap_or_default();
        StoredKey {
            kind,
            label: label.to_owned(),
            secret,
            public,
        }
    }

    /// Rebuild a key from stored parts, checking the secret against the
    /// recorded public key.
    fn from_parts(
        kind: KeyType,
        label: String,
        secret: Zeroizing<Vec<u8>>,
        public: Vec<u8>,
    ) -> Result<StoredKey, String> {
        let derived = derive_public(kind, &secret)?;
        if derived != public {
            return Err(format!(
                "key {label:?}: public key does not match the secret"
            ));
        }
        Ok(StoredKey {
            kind,
            label,
            secret,
            public,
        })
    }

    /// The secret bytes (32 for every type), for the operations in `ops`.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The public key: Ed25519 32 bytes, P-256 SEC1 uncompressed (65 bytes),
    /// empty for AES.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            kind: self.kind,
            label: self.label.clone(),
            public_key: self.public.clone(),
        }
    }
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kind", &self.kind)
            .field("label", &self.label)
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn derive_public(kind: KeyType, secret: &[u8]) -> Result<Vec<u8>, String> {
    if secret.len() != SECRET_LEN {
        return Err(format!("a {kind} secret is {SECRET_LEN} bytes"));
    }
    match kind {
        KeyType::Ed25519 => {
            let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
            bytes.copy_from_slice(secret);
            let sk = ed25519_dalek::SigningKey::from_bytes(&bytes);
            Ok(sk.verifying_key().to_bytes().to_vec())
        }
        KeyType::P256 => {
            let sk = p256::ecdsa::SigningKey::from_slice(secret)
                .map_err(|_| "p256 secret is not a valid scalar".to_owned())?;
            Ok(sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec())
        }
        KeyType::Aes256 => Ok(Vec::new()),
    }
}

/// The keys of one partition, loaded from and persisted to its directory.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    file: PathBuf,
    max_keys: usize,
    keys: BTreeMap<String, Arc<StoredKey>>,
}

impl KeyStore {
    /// Open the store in `dir` (created 0700 if missing), loading `keys.toml`
    /// if it exists. `max_keys` bounds later generation.
    pub fn open(dir: &Path, max_keys: usize) -> Result<KeyStore, KeyStoreError> {
        create_private_dir(dir).map_err(|source| KeyStoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(KEY_FILE_NAME);
        let keys = match fs::read_to_string(&file) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                parse(&text).map_err(|reason| KeyStoreError::Corrupt {
                    path: file.clone(),
                    reason,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(KeyStoreError::Io { path: file, source }),
        };
        Ok(KeyStore {
            dir: dir.to_owned(),
            file,
            max_keys: max_keys.min(MAX_KEYS),
            keys,
        })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, label: &str) -> Option<Arc<StoredKey>> {
        self.keys.get(label).cloned()
    }

    /// Public descriptions of all keys, ordered by label.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.keys.values().map(|k| k.info()).collect()
    }

    /// Generate a key and persist the store before answering. A failed
    /// write leaves the store as it was and returns `Internal`.
    pub fn generate(&mut self, kind: KeyType, label: &str) -> Result<KeyInfo, Status> {
        validate_name(label).map_err(|_| Status::InvalidArgument)?;
        if self.keys.contains_key(label) {
            return Err(Status::AlreadyExists);
        }
        if self.keys.len() >= self.max_keys {
            return Err(Status::LimitReached);
        }
        let key = Arc::new(StoredKey::generate(kind, label));
        let info = key.info();
        self.keys.insert(label.to_owned(), key);
        if let Err(e) = self.persist() {
            self.keys.remove(label);
            tracing::error!(error = %e, "cannot persist key store");
            return Err(Status::Internal);
        }
        Ok(info)
    }

    /// Write the whole store atomically: temp file (0600), fsync, rename, fsync dir.
    fn persist(&self) -> Result<(), KeyStoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyStoreError::Io { path, source }
        };
        let text = serialize(&self.keys).map_err(|reason| KeyStoreError::Corrupt {
            path: self.file.clone(),
            reason,
        })?;
        let tmp = self.dir.join(format!("{KEY_FILE_NAME}.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut f = open_private_file(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &self.file).map_err(io(&self.file))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

// ------------------------------------------------------------- file format

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    #[serde(default)]
    keys: Vec<KeyRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    /// Hex of the secret bytes.
    secret: String,
    /// Hex of the public bytes (empty for AES).
    public: String,
}

impl Drop for KeyRecord {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

fn parse(text: &str) -> Result<BTreeMap<String, Arc<StoredKey>>, String> {
    let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.version != FORMAT_VERSION {
        return Err(format!(
            "unsupported version {} (expected {FORMAT_VERSION})",
            file.version
        ));
    }
    if file.keys.len() > MAX_KEYS {
        return Err(format!("more than {MAX_KEYS} keys"));
    }
    let mut keys = BTreeMap::new();
    for (i, rec) in file.keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        validate_name(&rec.label).map_err(|why| format!("{at}.label: {why}"))?;
        let kind: KeyType = rec.kind.parse().map_err(|e| format!("{at}.type: {e}"))?;
        let secret =
            Zeroizing::new(hex::decode(&rec.secret).map_err(|_| format!("{at}.secret: not hex"))?);
        let public = hex::decode(&rec.public).map_err(|_| format!("{at}.public: not hex"))?;
        let key = StoredKey::from_parts(kind, rec.label.clone(), secret, public)
            .map_err(|e| format!("{at}: {e}"))?;
        if keys.insert(rec.label.clone(), Arc::new(key)).is_some() {
            return Err(format!("{at}.label: duplicate label {:?}", rec.label));
        }
    }
    Ok(keys)
}

fn serialize(keys: &BTreeMap<String, Arc<StoredKey>>) -> Result<Zeroizing<String>, String> {
    let file = KeyFile {
        version: FORMAT_VERSION,
        keys: keys
            .values()
            .map(|k| KeyRecord {
                label: k.label.clone(),
                kind: k.kind.as_str().to_owned(),
                secret: hex::encode(k.secret()),
                public: hex::encode(k.public()),
            })
            .collect(),
    };
    let body = Zeroizing::new(toml::to_string(&file).map_err(|e| e.to_string())?);
    let mut text = Zeroizing::new(String::with_capacity(body.len() + 100));
    text.push_str("# hsmgate HSM node key store. Secret key material: keep this file 0600.\n");
    text.push_str(&body);
    Ok(text)
}

// ------------------------------------------------------------ file modes

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("demo");
        let mut store = KeyStore::open(&part, 16).unwrap();
        let ed = store.generate(KeyType::Ed25519, "ed").unwrap();
        let p = store.generate(KeyType::P256, "p").unwrap();
        let aes = store.generate(KeyType::Aes256, "aes").unwrap();
        assert_eq!(ed.public_key.len(), 32);
        assert_eq!(p.public_key.len(), 65);
        assert_eq!(p.public_key[0], 4);
        assert!(aes.public_key.is_empty());
        let secret = store.get("aes").unwrap().secret().to_vec();
        drop(store);

        let again = KeyStore::open(&part, 16).unwrap();
        assert_eq!(again.list(), vec![aes, ed, p]);
        assert_eq!(again.get("aes").unwrap().secret(), &secret[..]);
    }

    #[cfg(unix)]
    #[test]
    fn store_file_is_0600_in_a_0700_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("demo");
        let mut store = KeyStore::open(&part, 16).unwrap();
        store.generate(KeyType::Aes256, "k").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&part), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        assert!(!part.join("keys.toml.tmp").exists());
    }

    #[test]
    fn refuses_duplicate_labels_and_a_full_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 2).unwrap();
        store.generate(KeyType::Aes256, "a").unwrap();
        assert_eq!(
            store.generate(KeyType::Ed25519, "a").err(),
            Some(Status::AlreadyExists)
        );
        store.generate(KeyType::Aes256, "b").unwrap();
        assert_eq!(
            store.generate(KeyType::Aes256, "c").err(),
            Some(Status::LimitReached)
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(KEY_FILE_NAME),
            "version = 1\n[[keys]]\nlabel = 3\n",
        )
        .unwrap();
        let err = KeyStore::open(dir.path(), 16).unwrap_err();
        assert!(matches!(err, KeyStoreError::Corrupt { .. }));
        assert!(err.to_string().contains("keys.toml"), "{err}");
    }

    #[test]
    fn a_public_key_that_does_not_match_its_secret_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        let info = store.generate(KeyType::Ed25519, "k").unwrap();
        let path = store.path().to_owned();
        let text = fs::read_to_string(&path).unwrap();
        let mut other = info.public_key.clone();
        other[0] ^= 1;
        fs::write(
            &path,
            text.replace(&hex::encode(&info.public_key), &hex::encode(&other)),
        )
        .unwrap();
        let err = KeyStore::open(dir.path(), 16).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
