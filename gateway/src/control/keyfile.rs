//! Static key pair files: created with mode 0600 and never overwritten,
//! read into zeroizing memory, refused when others may read them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hsmgate_wire::{StaticKeypair, WireError};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {} does not exist; create one with `hsmgate keygen --out {}`", .path.display(), .path.display())]
    Missing { path: PathBuf },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: hsmgate_wire::keys::KeyFileError,
    },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    Invalid { path: PathBuf, source: WireError },
    #[error("cannot generate a key pair: {0}")]
    Generate(WireError),
    #[error("passphrase: {0}")]
    Passphrase(String),
}

/// Read a key pair file; one that other users (or its group) may read is
/// refused, as OpenSSH refuses an unprotected private key.
pub fn load(path: &Path) -> Result<StaticKeypair, KeyFileError> {
    use hsmgate_wire::keys::{self, KeyFileError as Read};
    keys::read_private_key_file(path).map_err(|e| match e {
        Read::Read(io) if io.kind() == std::io::ErrorKind::NotFound => KeyFileError::Missing {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
        },
        Read::Invalid(source) => KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        },
        source => KeyFileError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// Generate a key pair and write it to a new file (mode 0600). An existing
/// file is an error: a key is never overwritten.
pub fn create(path: &Path) -> Result<StaticKeypair, KeyFileError> {
    let pair = StaticKeypair::generate().map_err(KeyFileError::Generate)?;
    let text = Zeroizing::new(pair.to_file_text());
    write_new(path, &text)?;
    Ok(pair)
}

/// [`create`], with the private key sealed under `passphrase` (PROTOCOL.md
/// does not cover it: it is a client-side file format, OPERATIONS.md §3.1).
pub fn create_sealed(path: &Path, passphrase: &[u8]) -> Result<StaticKeypair, KeyFileError> {
    let pair = StaticKeypair::generate().map_err(KeyFileError::Generate)?;
    let text = pair
        .to_sealed_file_text(passphrase, hsmgate_wire::sealed::KdfParams::DEFAULT)
        .map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
    write_new(path, &text)?;
    Ok(pair)
}

/// The environment variable `hsmgate keygen --encrypt` reads the
/// passphrase from when no file is given.
pub const PASSPHRASE_VAR: &str = "HSMGATE_KEY_PASSPHRASE";

/// The passphrase: the first line of `file`, else the environment.
pub fn read_passphrase(file: Option<&Path>) -> Result<Zeroizing<String>, KeyFileError> {
    let missing =
        || KeyFileError::Passphrase(format!("give --passphrase-file or set {PASSPHRASE_VAR}"));
    let text = match file {
        Some(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KeyFileError::Passphrase(format!("cannot read {}: {e}", path.display()))
        })?),
        None => Zeroizing::new(std::env::var(PASSPHRASE_VAR).map_err(|_| missing())?),
    };
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(missing());
    }
    Ok(Zeroizing::new(line.to_owned()))
}

fn write_new(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let create_err = |source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create_err)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(create_err)
}

/// Load `path` if it exists, otherwise create it.
pub fn load_or_create(path: &Path) -> Result<StaticKeypair, KeyFileError> {
    if path.exists() {
        load(path)
    } else {
        create(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_key_is_private_reloadable_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.key");
        let pair = create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).expect("load").public(), pair.public());
        assert!(matches!(create(&path), Err(KeyFileError::Create { .. })));
        assert_eq!(
            load_or_create(&path).expect("reuse").public(),
            pair.public()
        );
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gw.key");
        create(&path).expect("create");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = load(&path).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("chmod 600"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(load(&path).is_ok(), "owner read-only is fine");
    }

    #[test]
    fn garbage_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "private = \"nope\"\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(load(&path), Err(KeyFileError::Invalid { .. })));
    }
}
