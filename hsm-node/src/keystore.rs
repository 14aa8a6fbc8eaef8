//! The built-in software key store: one per partition, persisted as
//! `state_dir/<partition>/keys.toml`.
//!
//! The file holds, for each key, its type, label, secret bytes and public
//! bytes in hex, with mode 0600 inside a 0700 directory. A file that does not
//! parse or whose keys do not check out is an error that names the file.
//! Secret bytes live in [`Zeroizing`] buffers and the text forms of the file
//! are zeroized after use; copies made inside the TOML parser cannot be
//! reached and are not.
//!
//! # Sharing one store between nodes
//!
//! Several HSM nodes (or several [`KeyStore`]s in one process) may use the
//! same directory, on one machine or on a shared filesystem, and so serve one
//! partition from one set of keys:
//!
//! - Every operation that reads keys first reloads the file if it changed:
//!   it opens the file and compares its device, inode, length and times with
//!   those of the version it loaded (whose handle it keeps open, so that the
//!   inode number cannot be reused meanwhile). An unchanged file costs an
//!   `open` and an `fstat`; nothing is read.
//! - A writer takes an exclusive `flock` on `keys.toml.lock` (plus a
//!   process-wide mutex per directory), reloads the file under it, checks the
//!   label and the limit, and writes the whole store to a temporary file
//!   (0600), fsyncs it, renames it over `keys.toml` and fsyncs the directory.
//!   So labels are unique across all stores on the directory, no writer loses
//!   another's key, and a reader sees either the old file or the new one,
//!   never a partial one.
//!
//! Operations on the keys are in [`crate::ops`]; this module owns key
//! material: generation, derivation of public keys, persistence.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use hsmgate_wire::ops::{KeyInfo, KeyType, MAX_ID, MAX_KEYS, MAX_OBJECT, ObjectInfo, Status};
use hsmgate_wire::text::validate_name;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// File name of a partition's key store inside its directory.
pub const KEY_FILE_NAME: &str = "keys.toml";
/// File name of the lock file that writers of a partition's key store take
/// (`flock`, exclusive). It is empty, created on first use and never replaced.
pub const LOCK_FILE_NAME: &str = "keys.toml.lock";
/// The key file is refused beyond this size (256 keys take about 64 KiB).
const MAX_FILE_LEN: u64 = 4 << 20;
/// How often a writer retries when the lock file is replaced under it.
const LOCK_ATTEMPTS: usize = 8;
/// File formats: 1 (keys of the first three types, no ids, no objects) and
/// 2. A store is written in the lowest format that holds its contents, so
/// that older nodes sharing the directory keep reading it while nothing of
/// version 2 is in it.
const FORMAT_VERSION: u32 = 2;

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
    /// The key's id (PKCS#11 `CKA_ID`); empty when none was set.
    pub id: Vec<u8>,
}

impl StoredKey {
    /// Generate a fresh key from the operating system's random source.
    pub fn generate(kind: KeyType, label: &str) -> Result<StoredKey, String> {
        let secret = crate::keys::generate(kind)?;
        let public = crate::keys::derive_public(kind, &secret)?;
        Ok(StoredKey {
            kind,
            label: label.to_owned(),
            secret,
            public,
            id: Vec::new(),
        })
    }

    /// Rebuild a key from stored parts, checking the secret against the
    /// recorded public key.
    fn from_parts(
        kind: KeyType,
        label: String,
        secret: Zeroizing<Vec<u8>>,
        public: Vec<u8>,
        id: Vec<u8>,
    ) -> Result<StoredKey, String> {
        let derived = crate::keys::derive_public(kind, &secret)?;
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
            id,
        })
    }

    /// The secret material (see `keys.rs` for its form per type), for the
    /// operations in `ops`.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The public key (see `keys.rs`); empty for AES.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            kind: self.kind,
            label: self.label.clone(),
            public_key: self.public.clone(),
            id: self.id.clone(),
        }
    }

    fn with_id(&self, id: Vec<u8>) -> StoredKey {
        StoredKey {
            kind: self.kind,
            label: self.label.clone(),
            secret: self.secret.clone(),
            public: self.public.clone(),
            id,
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

/// A stored object: an X.509 certificate kept next to the keys (PKCS#11
/// applications pair a private key with its certificate by `CKA_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub label: String,
    pub id: Vec<u8>,
    pub value: Vec<u8>,
}

impl StoredObject {
    pub fn info(&self) -> ObjectInfo {
        ObjectInfo {
            label: self.label.clone(),
            id: self.id.clone(),
            size: u16::try_from(self.value.len()).unwrap_or(u16::MAX),
        }
    }
}

/// Everything a partition holds.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    pub keys: BTreeMap<String, Arc<StoredKey>>,
    pub objects: BTreeMap<String, Arc<StoredObject>>,
}

/// The keys of one partition, loaded from and persisted to its directory.
///
/// Several stores, in one process or in several, on one machine or on a
/// shared filesystem, may be opened on the same directory: each operation
/// first picks up what the others wrote (see the module documentation).
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    file: PathBuf,
    lock_file: PathBuf,
    /// Serializes the writers of this directory inside this process, in case
    /// the filesystem's `flock` does not tell two handles of one process apart.
    local_writers: &'static Mutex<()>,
    max_keys: usize,
    contents: Contents,
    /// The version of `keys.toml` that `contents` holds; `None` when there was no file.
    loaded: Option<Loaded>,
}

/// The version of the key file a store last loaded.
#[derive(Debug)]
struct Loaded {
    /// Kept open so that, while it is compared against, the file's inode
    /// number cannot be given to a newer version.
    _file: File,
    stamp: Stamp,
}

/// What identifies one version of the key file without reading it. Writers
/// replace the file (a new inode) and the file only grows, so two versions
/// never share a stamp; `len` and the times also catch a file edited in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            #[cfg(unix)]
            dev: meta.dev(),
            #[cfg(unix)]
            ino: meta.ino(),
            #[cfg(unix)]
            ctime: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// Held while a store rewrites the key file: the process-local mutex and the
/// exclusive `flock` on the lock file (released when the file is closed).
struct WriteLock {
    _file: File,
    _local: MutexGuard<'static, ()>,
}

impl KeyStore {
    /// Open the store in `dir` (created 0700 if missing), loading `keys.toml`
    /// if it exists. `max_keys` bounds later generation.
    pub fn open(dir: &Path, max_keys: usize) -> Result<KeyStore, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(io)?;
        let canonical = fs::canonicalize(dir).map_err(io)?;
        let mut store = KeyStore {
            dir: dir.to_owned(),
            file: dir.join(KEY_FILE_NAME),
            lock_file: dir.join(LOCK_FILE_NAME),
            local_writers: local_writers(canonical),
            max_keys: max_keys.min(MAX_KEYS),
            contents: Contents::default(),
            loaded: None,
        };
        store.refresh()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Number of keys as of the last load (every operation reloads first).
    pub fn len(&self) -> usize {
        self.contents.keys.len()
    }

    /// Whether the store held no keys as of the last load.
    pub fn is_empty(&self) -> bool {
        self.contents.keys.is_empty()
    }

    /// Reload the key file if another store (or anyone) replaced or changed
    /// it since the last load; returns whether it did. Costs an `open` and an
    /// `fstat` when nothing changed. A missing file is an empty store. On an
    /// error the keys loaded before are kept, and the next call tries again.
    pub fn refresh(&mut self) -> Result<bool, KeyStoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyStoreError::Io { path, source }
        };
        let mut file = match File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let changed = self.loaded.is_some() || !self.contents.keys.is_empty();
                if changed {
                    tracing::warn!(
                        path = %self.file.display(),
                        keys = self.contents.keys.len(),
                        "key store file is gone; the partition now has no keys"
                    );
                }
                self.contents = Contents::default();
                self.loaded = None;
                return Ok(changed);
            }
            Err(e) => return Err(io(&self.file)(e)),
        };
        let stamp = Stamp::of(&file.metadata().map_err(io(&self.file))?);
        if self.loaded.as_ref().is_some_and(|l| l.stamp == stamp) {
            return Ok(false);
        }
        let text = read_private_text(&mut file, stamp.len).map_err(|e| match e {
            ReadError::Io(source) => KeyStoreError::Io {
                path: self.file.clone(),
                source,
            },
            ReadError::TooLarge => KeyStoreError::Corrupt {
                path: self.file.clone(),
                reason: format!("larger than {MAX_FILE_LEN} bytes"),
            },
        })?;
        let contents = parse(&text).map_err(|reason| KeyStoreError::Corrupt {
            path: self.file.clone(),
            reason,
        })?;
        if self.loaded.is_some() {
            tracing::debug!(
                path = %self.file.display(),
                keys = contents.keys.len(),
                objects = contents.objects.len(),
                "key store file changed; reloaded"
            );
        }
        self.contents = contents;
        self.loaded = Some(Loaded { _file: file, stamp });
        Ok(true)
    }

    /// The key named `label`, after picking up changes to the file. A file
    /// that cannot be read is logged and answers `Internal`.
    pub fn get(&mut self, label: &str) -> Result<Arc<StoredKey>, Status> {
        self.refresh_for_operation()?;
        self.contents
            .keys
            .get(label)
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Public descriptions of all keys, ordered by label, after picking up
    /// changes to the file.
    pub fn list(&mut self) -> Result<Vec<KeyInfo>, Status> {
        self.refresh_for_operation()?;
        Ok(self.contents.keys.values().map(|k| k.info()).collect())
    }

    /// The objects (certificates), ordered by label.
    pub fn objects(&mut self) -> Result<Vec<Arc<StoredObject>>, Status> {
        self.refresh_for_operation()?;
        Ok(self.contents.objects.values().cloned().collect())
    }

    /// The object named `label`.
    pub fn object(&mut self, label: &str) -> Result<Arc<StoredObject>, Status> {
        self.refresh_for_operation()?;
        self.contents
            .objects
            .get(label)
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Generate a key and persist the store before answering.
    ///
    /// The key material is made first (an RSA key takes a while), then under
    /// the directory's write lock the file is reloaded, so the label check
    /// and the partition limit see every key written by any store on this
    /// directory, and the rewrite keeps them. A failed read or write leaves
    /// the file as it was and returns `Internal`.
    pub fn generate(&mut self, kind: KeyType, label: &str) -> Result<KeyInfo, Status> {
        validate_name(label).map_err(|_| Status::InvalidArgument)?;
        if self.get(label).is_ok() {
            return Err(Status::AlreadyExists);
        }
        let key = StoredKey::generate(kind, label).map_err(|e| {
            tracing::error!(error = %e, key_type = %kind, "key generation failed");
            Status::Internal
        })?;
        let key = Arc::new(key);
        let info = key.info();
        let max_keys = self.max_keys;
        self.mutate(|c| {
            if c.keys.contains_key(label) {
                return Err(Status::AlreadyExists);
            }
            if c.keys.len() >= max_keys {
                return Err(Status::LimitReached);
            }
            c.keys.insert(label.to_owned(), key);
            Ok(())
        })?;
        Ok(info)
    }

    /// Delete the key `label`.
    pub fn delete(&mut self, label: &str) -> Result<(), Status> {
        self.mutate(|c| c.keys.remove(label).map(drop).ok_or(Status::NotFound))
    }

    /// Set the id of the key `label`.
    pub fn set_id(&mut self, label: &str, id: &[u8]) -> Result<(), Status> {
        if id.len() > MAX_ID {
            return Err(Status::InvalidArgument);
        }
        self.mutate(|c| {
            let key = c.keys.get_mut(label).ok_or(Status::NotFound)?;
            *key = Arc::new(key.with_id(id.to_vec()));
            Ok(())
        })
    }

    /// Store an object (a certificate) under a new label.
    pub fn put_object(
        &mut self,
        label: &str,
        id: &[u8],
        value: &[u8],
    ) -> Result<ObjectInfo, Status> {
        validate_name(label).map_err(|_| Status::InvalidArgument)?;
        if id.len() > MAX_ID || value.len() > MAX_OBJECT {
            return Err(Status::InvalidArgument);
        }
        let object = Arc::new(StoredObject {
            label: label.to_owned(),
            id: id.to_vec(),
            value: value.to_vec(),
        });
        let info = object.info();
        let max = self.max_keys;
        self.mutate(|c| {
            if c.objects.contains_key(label) {
                return Err(Status::AlreadyExists);
            }
            if c.objects.len() >= max {
                return Err(Status::LimitReached);
            }
            c.objects.insert(label.to_owned(), object);
            Ok(())
        })?;
        Ok(info)
    }

    /// Delete the object `label`.
    pub fn delete_object(&mut self, label: &str) -> Result<(), Status> {
        self.mutate(|c| c.objects.remove(label).map(drop).ok_or(Status::NotFound))
    }

    /// Change the contents under the directory's write lock: reload, apply
    /// `change`, persist. On any failure the store is as it was before.
    fn mutate<T>(
        &mut self,
        change: impl FnOnce(&mut Contents) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let _lock = self.lock_for_write().map_err(|e| {
            tracing::error!(error = %e, "cannot lock key store");
            Status::Internal
        })?;
        self.refresh_for_operation()?;
        let before = self.contents.clone();
        let out = change(&mut self.contents)?;
        if let Err(e) = self.persist() {
            // The file may or may not hold the change: read it again next time.
            self.contents = before;
            self.loaded = None;
            tracing::error!(error = %e, "cannot persist key store");
            return Err(Status::Internal);
        }
        Ok(out)
    }

    fn refresh_for_operation(&mut self) -> Result<(), Status> {
        self.refresh().map(drop).map_err(|e| {
            tracing::error!(error = %e, "cannot load key store");
            Status::Internal
        })
    }

    /// Take the process-local writer mutex, then an exclusive `flock` on the
    /// lock file (created 0600, never replaced). If the lock file was removed
    /// or replaced while this waited, the lock is on an orphan: try again.
    fn lock_for_write(&self) -> Result<WriteLock, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: self.lock_file.clone(),
            source,
        };
        let local = self
            .local_writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for _ in 0..LOCK_ATTEMPTS {
            let file = open_lock_file(&self.lock_file).map_err(io)?;
            file.lock().map_err(io)?;
            let held = file.metadata().map_err(io)?;
            match fs::metadata(&self.lock_file) {
                Ok(current) if same_file(&held, &current) => {
                    return Ok(WriteLock {
                        _file: file,
                        _local: local,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(io(std::io::Error::other(
            "the lock file keeps being replaced",
        )))
    }

    /// Write the whole store atomically: temp file (0600), fsync, rename,
    /// fsync dir. Called with the write lock held, so the temp file is ours.
    /// Readers open either the old file or the new one, never a partial one.
    fn persist(&mut self) -> Result<(), KeyStoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyStoreError::Io { path, source }
        };
        let text = serialize(&self.contents).map_err(|reason| KeyStoreError::Corrupt {
            path: self.file.clone(),
            reason,
        })?;
        let tmp = self.dir.join(format!("{KEY_FILE_NAME}.tmp"));
        let _ = fs::remove_file(&tmp);
        let written = open_private_file(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &self.file) {
            let _ = fs::remove_file(&tmp);
            return Err(io(&self.file)(e));
        }
        // The new version is in place: remember it, so that the next
        // operation does not read back what it just wrote. Nobody else can
        // have replaced it yet: the write lock is still held.
        self.loaded = File::open(&self.file)
            .and_then(|f| {
                let stamp = Stamp::of(&f.metadata()?);
                Ok(Loaded { _file: f, stamp })
            })
            .ok();
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

/// The process-wide writer mutex of the directory `canonical`. Entries are
/// never removed: there is one per partition directory ever opened.
fn local_writers(canonical: PathBuf) -> &'static Mutex<()> {
    static WRITERS: OnceLock<Mutex<HashMap<PathBuf, &'static Mutex<()>>>> = OnceLock::new();
    let mut map = WRITERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    map.entry(canonical)
        .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))))
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    // No portable file identity; the lock file is never replaced by hsmgate.
    true
}

enum ReadError {
    Io(std::io::Error),
    TooLarge,
}

/// Read the whole key file into a zeroizing buffer sized up front, so that
/// no reallocation leaves a copy of the secrets behind.
fn read_private_text(file: &mut File, len: u64) -> Result<Zeroizing<String>, ReadError> {
    if len > MAX_FILE_LEN {
        return Err(ReadError::TooLarge);
    }
    // `len` is at most MAX_FILE_LEN, which fits a usize.
    let cap = usize::try_from(len).unwrap_or(0) + 1;
    let mut text = Zeroizing::new(String::with_capacity(cap));
    let mut limited = Read::take(&mut *file, MAX_FILE_LEN + 1);
    match limited.read_to_string(&mut text) {
        Ok(n) if n as u64 > MAX_FILE_LEN => Err(ReadError::TooLarge),
        Ok(_) => Ok(text),
        Err(e) => Err(ReadError::Io(e)),
    }
}

// ------------------------------------------------------------- file format

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    #[serde(default)]
    keys: Vec<KeyRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    objects: Vec<ObjectRecord>,
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
    /// Hex of the key's id (format 2); absent when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
}

impl Drop for KeyRecord {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// A certificate (format 2).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectRecord {
    label: String,
    /// Always "x509-certificate" in this version.
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    /// Hex of the DER value.
    value: String,
}

const OBJECT_KIND: &str = "x509-certificate";

fn parse(text: &str) -> Result<Contents, String> {
    // Never the parser's own text: it quotes the line, which may hold a secret.
    let file: KeyFile = toml::from_str(text).map_err(|e| crate::config::parse_problem(text, &e))?;
    if !(1..=FORMAT_VERSION).contains(&file.version) {
        return Err(format!(
            "unsupported version {} (expected 1 to {FORMAT_VERSION})",
            file.version
        ));
    }
    if file.keys.len() > MAX_KEYS || file.objects.len() > MAX_KEYS {
        return Err(format!("more than {MAX_KEYS} keys or objects"));
    }
    let v2 = file.version >= 2;
    let mut contents = Contents::default();
    for (i, rec) in file.keys.iter().enumerate() {
        let at = format!("keys[{i}]");
        validate_name(&rec.label).map_err(|why| format!("{at}.label: {why}"))?;
        // Never the value: in a corrupt file it may be anything, a secret too.
        let kind: KeyType = rec
            .kind
            .parse()
            .ok()
            .filter(|k: &KeyType| v2 || k.since() == 1)
            .ok_or_else(|| format!("{at}.type: not a key type of format {}", file.version))?;
        let secret =
            Zeroizing::new(hex::decode(&rec.secret).map_err(|_| format!("{at}.secret: not hex"))?);
        let public = hex::decode(&rec.public).map_err(|_| format!("{at}.public: not hex"))?;
        let id = hex_field(&rec.id, v2, MAX_ID).map_err(|why| format!("{at}.id: {why}"))?;
        let key = StoredKey::from_parts(kind, rec.label.clone(), secret, public, id)
            .map_err(|e| format!("{at}: {e}"))?;
        if contents
            .keys
            .insert(rec.label.clone(), Arc::new(key))
            .is_some()
        {
            return Err(format!("{at}.label: duplicate label {:?}", rec.label));
        }
    }
    for (i, rec) in file.objects.iter().enumerate() {
        let at = format!("objects[{i}]");
        if !v2 {
            return Err(format!("{at}: objects need format 2"));
        }
        validate_name(&rec.label).map_err(|why| format!("{at}.label: {why}"))?;
        if rec.kind != OBJECT_KIND {
            return Err(format!("{at}.kind: not {OBJECT_KIND:?}"));
        }
        let id = hex_field(&rec.id, true, MAX_ID).map_err(|why| format!("{at}.id: {why}"))?;
        let value =
            hex_field(&rec.value, true, MAX_OBJECT).map_err(|why| format!("{at}.value: {why}"))?;
        let object = StoredObject {
            label: rec.label.clone(),
            id,
            value,
        };
        if contents
            .objects
            .insert(rec.label.clone(), Arc::new(object))
            .is_some()
        {
            return Err(format!("{at}.label: duplicate label {:?}", rec.label));
        }
    }
    Ok(contents)
}

fn hex_field(text: &str, allowed: bool, max: usize) -> Result<Vec<u8>, &'static str> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !allowed {
        return Err("needs format 2");
    }
    let bytes = hex::decode(text).map_err(|_| "not hex")?;
    if bytes.len() > max {
        return Err("too long");
    }
    Ok(bytes)
}

fn serialize(contents: &Contents) -> Result<Zeroizing<String>, String> {
    let needs_v2 = !contents.objects.is_empty()
        || contents
            .keys
            .values()
            .any(|k| k.kind.since() > 1 || !k.id.is_empty());
    let file = KeyFile {
        version: if needs_v2 { FORMAT_VERSION } else { 1 },
        keys: contents
            .keys
            .values()
            .map(|k| KeyRecord {
                label: k.label.clone(),
                kind: k.kind.as_str().to_owned(),
                secret: hex::encode(k.secret()),
                public: hex::encode(k.public()),
                id: hex::encode(&k.id),
            })
            .collect(),
        objects: contents
            .objects
            .values()
            .map(|o| ObjectRecord {
                label: o.label.clone(),
                kind: OBJECT_KIND.to_owned(),
                id: hex::encode(&o.id),
                value: hex::encode(&o.value),
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

/// Open (creating 0600 if missing, never truncating) the lock file. It is
/// opened for writing because NFS grants exclusive locks only on such handles.
#[cfg(unix)]
fn open_lock_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_lock_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_version(dir: &Path) -> String {
        let text = fs::read_to_string(dir.join(KEY_FILE_NAME)).expect("read");
        text.lines()
            .find(|l| l.starts_with("version"))
            .expect("version line")
            .to_owned()
    }

    #[test]
    fn the_file_stays_in_format_1_until_something_needs_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        store.generate(KeyType::Ed25519, "old").unwrap();
        assert_eq!(
            file_version(dir.path()),
            "version = 1",
            "readable by older nodes"
        );
        store.generate(KeyType::Rsa2048, "rsa").unwrap();
        store.set_id("old", &[1, 2, 3]).unwrap();
        store.put_object("cert", &[1, 2, 3], &[0x30, 0]).unwrap();
        assert_eq!(file_version(dir.path()), "version = 2");
        // Another store reads it all back, material checked.
        let mut other = KeyStore::open(dir.path(), 16).unwrap();
        assert_eq!(other.get("old").unwrap().id, vec![1, 2, 3]);
        assert_eq!(other.get("rsa").unwrap().kind, KeyType::Rsa2048);
        assert_eq!(other.object("cert").unwrap().value, vec![0x30, 0]);
        // Back to format 1 once nothing of format 2 is left.
        other.delete("rsa").unwrap();
        other.delete_object("cert").unwrap();
        other.set_id("old", &[]).unwrap();
        assert_eq!(file_version(dir.path()), "version = 1");
    }

    #[test]
    fn a_format_1_file_cannot_carry_format_2_contents() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        store.generate(KeyType::P384, "p").unwrap();
        let text = fs::read_to_string(dir.path().join(KEY_FILE_NAME)).unwrap();
        fs::write(
            dir.path().join(KEY_FILE_NAME),
            text.replace("version = 2", "version = 1"),
        )
        .unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), 16),
            Err(KeyStoreError::Corrupt { .. })
        ));
    }

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

        let mut again = KeyStore::open(&part, 16).unwrap();
        assert_eq!(again.list().unwrap(), vec![aes, ed, p]);
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
        assert_eq!(mode(&part.join(LOCK_FILE_NAME)), 0o600);
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

    // ------------------------------------------- several stores, one directory

    fn secret_of(store: &mut KeyStore, label: &str) -> Vec<u8> {
        store.get(label).unwrap().secret().to_vec()
    }

    #[test]
    fn a_key_generated_by_one_store_is_seen_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = KeyStore::open(dir.path(), 16).unwrap();
        let mut b = KeyStore::open(dir.path(), 16).unwrap();
        assert_eq!(b.list().unwrap(), vec![]);

        let k = a.generate(KeyType::Ed25519, "k").unwrap();
        assert_eq!(b.list().unwrap(), vec![k.clone()]);
        assert_eq!(secret_of(&mut b, "k"), secret_of(&mut a, "k"));

        // And the other way round; neither rewrite loses the other's key.
        let m = b.generate(KeyType::Aes256, "m").unwrap();
        assert_eq!(a.get("m").unwrap().info(), m);
        let n = a.generate(KeyType::P256, "n").unwrap();
        assert_eq!(b.list().unwrap(), vec![k.clone(), m.clone(), n.clone()]);
        assert_eq!(
            KeyStore::open(dir.path(), 16).unwrap().list().unwrap(),
            vec![k, m, n]
        );
        // A label taken through one store is taken for the other.
        assert_eq!(
            b.generate(KeyType::Aes256, "k").err(),
            Some(Status::AlreadyExists)
        );
    }

    #[test]
    fn the_partition_limit_counts_keys_written_by_other_stores() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = KeyStore::open(dir.path(), 2).unwrap();
        let mut b = KeyStore::open(dir.path(), 2).unwrap();
        a.generate(KeyType::Aes256, "a").unwrap();
        b.generate(KeyType::Aes256, "b").unwrap();
        assert_eq!(
            a.generate(KeyType::Aes256, "c").err(),
            Some(Status::LimitReached)
        );
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn concurrent_generates_of_one_label_admit_exactly_one() {
        const STORES: usize = 4;
        const ROUNDS: usize = 12;
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<KeyStore> = (0..STORES)
            .map(|_| KeyStore::open(dir.path(), 64).unwrap())
            .collect();
        let barrier = std::sync::Barrier::new(STORES);
        let results: Vec<Vec<Result<KeyInfo, Status>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .into_iter()
                .map(|mut store| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        (0..ROUNDS)
                            .map(|round| {
                                barrier.wait();
                                store.generate(KeyType::Ed25519, &format!("label-{round}"))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut file = KeyStore::open(dir.path(), 64).unwrap();
        assert_eq!(file.len(), ROUNDS);
        for round in 0..ROUNDS {
            let outcomes: Vec<_> = results.iter().map(|r| r[round].clone()).collect();
            let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
            assert!(
                outcomes
                    .iter()
                    .filter(|o| o.is_err())
                    .all(|o| *o == Err(Status::AlreadyExists)),
                "round {round}: {outcomes:?}"
            );
            // The winner's key is the one on disk.
            assert_eq!(&file.get(&won[0].label).unwrap().info(), won[0]);
        }
    }

    #[test]
    fn concurrent_generates_of_distinct_labels_lose_no_key() {
        const STORES: usize = 4;
        const EACH: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<KeyStore> = (0..STORES)
            .map(|_| KeyStore::open(dir.path(), 64).unwrap())
            .collect();
        let barrier = std::sync::Barrier::new(STORES);
        std::thread::scope(|scope| {
            for (i, mut store) in stores.into_iter().enumerate() {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for j in 0..EACH {
                        store
                            .generate(KeyType::Aes256, &format!("s{i}-k{j}"))
                            .unwrap();
                    }
                });
            }
        });
        let mut file = KeyStore::open(dir.path(), 64).unwrap();
        assert_eq!(file.list().unwrap().len(), STORES * EACH);
    }

    #[test]
    fn readers_never_see_a_partial_file() {
        const KEYS: usize = 40;
        let dir = tempfile::tempdir().unwrap();
        let mut writer = KeyStore::open(dir.path(), 64).unwrap();
        let mut reader = KeyStore::open(dir.path(), 64).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..KEYS {
                    writer.generate(KeyType::P256, &format!("k{i:02}")).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut seen = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let n = reader.list().expect("every read sees a whole file").len();
                assert!(n >= seen, "went back from {seen} to {n} keys");
                seen = n;
                if finished {
                    break;
                }
            }
            assert_eq!(seen, KEYS);
        });
    }

    /// Replace the key file the way a writer (or a restore) does.
    fn replace_file(dir: &Path, text: &str) {
        let tmp = dir.join("replacement.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, dir.join(KEY_FILE_NAME)).unwrap();
    }

    #[test]
    fn a_store_follows_a_file_replaced_behind_its_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        store.generate(KeyType::Ed25519, "old").unwrap();

        // Another store's file, written elsewhere, is moved in.
        let elsewhere = tempfile::tempdir().unwrap();
        let mut other = KeyStore::open(elsewhere.path(), 16).unwrap();
        let new = other.generate(KeyType::Aes256, "new").unwrap();
        let text = fs::read_to_string(other.path()).unwrap();
        replace_file(dir.path(), &text);

        assert_eq!(store.list().unwrap(), vec![new.clone()]);
        assert_eq!(store.get("old").err(), Some(Status::NotFound));
        assert_eq!(secret_of(&mut store, "new"), secret_of(&mut other, "new"));
        // Generating afterwards builds on the replaced file.
        let more = store.generate(KeyType::Ed25519, "more").unwrap();
        let mut fresh = KeyStore::open(dir.path(), 16).unwrap();
        assert_eq!(fresh.list().unwrap(), vec![more, new]);

        // A file edited in place is picked up too.
        fs::write(store.path(), &text).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        // A removed file is an empty store.
        fs::remove_file(store.path()).unwrap();
        assert_eq!(store.list().unwrap(), vec![]);
        store.generate(KeyType::Aes256, "again").unwrap();
        assert_eq!(fresh.list().unwrap().len(), 1);
    }

    #[test]
    fn a_file_that_turns_corrupt_fails_operations_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        let k = store.generate(KeyType::Ed25519, "k").unwrap();
        let good = fs::read_to_string(store.path()).unwrap();

        replace_file(dir.path(), "version = 1\n[[keys]]\nlabel = 3\n");
        assert_eq!(store.get("k").err(), Some(Status::Internal));
        assert_eq!(store.list().err(), Some(Status::Internal));
        assert_eq!(
            store.generate(KeyType::Aes256, "x").err(),
            Some(Status::Internal)
        );
        assert!(
            fs::read_to_string(store.path())
                .unwrap()
                .contains("label = 3")
        );

        replace_file(dir.path(), &good);
        assert_eq!(store.list().unwrap(), vec![k]);
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = KeyStore::open(dir.path(), 16).unwrap();
        let mut b = KeyStore::open(dir.path(), 16).unwrap();
        assert!(!b.refresh().unwrap(), "no file, nothing new");
        a.generate(KeyType::Aes256, "k").unwrap();
        assert!(!a.refresh().unwrap(), "a writer knows its own version");
        assert!(b.refresh().unwrap());
        assert!(!b.refresh().unwrap());
    }

    #[test]
    fn a_removed_lock_file_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path(), 16).unwrap();
        store.generate(KeyType::Aes256, "a").unwrap();
        fs::remove_file(dir.path().join(LOCK_FILE_NAME)).unwrap();
        store.generate(KeyType::Aes256, "b").unwrap();
        assert!(dir.path().join(LOCK_FILE_NAME).exists());
        assert_eq!(store.list().unwrap().len(), 2);
    }

    /// Set in the environment of the child processes of
    /// `concurrent_generates_across_processes_admit_exactly_one`.
    const CHILD_DIR: &str = "HSMGATE_KEYSTORE_TEST_CHILD_DIR";
    const CHILD_START: &str = "HSMGATE_KEYSTORE_TEST_CHILD_START_MS";
    const CHILD_ROUNDS: usize = 16;

    fn now_ms() -> u128 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    }

    /// The child side: does nothing unless started by the test below. Opens
    /// its own store, waits for the common start time, generates
    /// `label-0..` and prints one line per outcome.
    #[test]
    fn cross_process_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let start: u128 = std::env::var(CHILD_START).unwrap().parse().unwrap();
        let mut store = KeyStore::open(Path::new(&dir), 64).unwrap();
        while now_ms() < start {
            std::hint::spin_loop();
        }
        for round in 0..CHILD_ROUNDS {
            let label = format!("label-{round}");
            let outcome = match store.generate(KeyType::Ed25519, &label) {
                Ok(info) => format!("won {}", hex::encode(info.public_key)),
                Err(status) => format!("{status:?}"),
            };
            println!("OUTCOME {label} {outcome}");
        }
    }

    #[test]
    fn concurrent_generates_across_processes_admit_exactly_one() {
        const CHILDREN: usize = 3;
        let dir = tempfile::tempdir().unwrap();
        let start = now_ms() + 500;
        let children: Vec<_> = (0..CHILDREN)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "keystore::tests::cross_process_child",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DIR, dir.path())
                    .env(CHILD_START, start.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "child failed");
            for line in String::from_utf8(out.stdout).unwrap().lines() {
                // The test harness may print its own text ahead on a line.
                if let Some((_, rest)) = line.split_once("OUTCOME ") {
                    let (label, outcome) = rest.split_once(' ').unwrap();
                    outcomes
                        .entry(label.to_owned())
                        .or_default()
                        .push(outcome.to_owned());
                }
            }
        }
        let mut store = KeyStore::open(dir.path(), 64).unwrap();
        assert_eq!(outcomes.len(), CHILD_ROUNDS);
        assert_eq!(store.len(), CHILD_ROUNDS);
        for (label, results) in &outcomes {
            assert_eq!(results.len(), CHILDREN, "{label}: {results:?}");
            let won: Vec<_> = results.iter().filter(|r| r.starts_with("won ")).collect();
            assert_eq!(won.len(), 1, "{label}: {results:?}");
            let lost = results.iter().filter(|r| *r == "AlreadyExists").count();
            assert_eq!(lost, CHILDREN - 1, "{label}: {results:?}");
            // The winner's key is the one on disk.
            let public = hex::encode(store.get(label).unwrap().public());
            assert_eq!(won[0], &format!("won {public}"), "{label}");
        }
    }
}
