//! The key-file readers: `KeyFile::parse` (plain or passphrase-sealed, what
//! clients read), `StaticKeypair::from_file_text` (what servers read),
//! `PublicKey::from_text` (keys in configs and the directory file) and the
//! gateway's `keyfile::load`, which reads a file from disk with its
//! permission check (PROTOCOL.md §1.2, OPERATIONS.md §3.1).
//!
//! Properties: a key pair that parses writes back to a file that parses to
//! the same pair, and its public key is the one derived from the private
//! key; a public key's text form parses back to it (lower-case hex); a
//! sealed file keeps its public key; reading from disk agrees with parsing
//! the text.
#![no_main]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use hsmgate_wire::{KeyFile, PublicKey, StaticKeypair};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(key) = PublicKey::from_text(text) {
        let canonical = key.to_text();
        assert_eq!(PublicKey::from_text(&canonical).unwrap(), key);
        assert!(
            canonical[7..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    let plain = StaticKeypair::from_file_text(text);
    if let Ok(pair) = &plain {
        let derived = StaticKeypair::from_private(*pair.private_bytes()).unwrap();
        assert_eq!(derived.public(), pair.public());
        let again = StaticKeypair::from_file_text(&pair.to_file_text()).unwrap();
        assert_eq!(again.public(), pair.public());
        assert_eq!(again.private_bytes(), pair.private_bytes());
    }

    match KeyFile::parse(text) {
        Ok(KeyFile::Plain(pair)) => {
            let from_text = plain
                .as_ref()
                .expect("KeyFile::parse took a plain file that servers refuse");
            assert_eq!(pair.public(), from_text.public());
        }
        Ok(KeyFile::Sealed(sealed)) => {
            assert!(plain.is_err(), "a sealed file read as plain");
            assert_eq!(KeyFile::Sealed(sealed.clone()).public(), sealed.public());
        }
        Err(_) => {}
    }

    // The gateway's reader, from a 0600 file.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    file.flush().unwrap();
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    match hsmgate::keyfile::load(file.path()) {
        Ok(pair) => assert_eq!(
            Some(pair.public()),
            plain.as_ref().ok().map(StaticKeypair::public)
        ),
        Err(e) => {
            assert!(
                plain.is_err(),
                "the file refused ({e}) where its text parses"
            );
        }
    }
});
