//! The client's config loader (`ClientConfig::from_toml`: TOML into
//! `ConfigFile`, then `validate`, which opens the key files it names) on any
//! text. Key files are looked up in a fixture directory with real key files;
//! a config naming anything but a plain file name there is checked without
//! opening it (a fuzzer must not open `/dev/stdin`).
//!
//! Properties: no panic on any text; a config that loads has the fixture
//! keys and every timeout within its bounds; loading is deterministic.
#![no_main]

use hsmgate_client::{ClientConfig, ConfigError, ConfigFile};
use hsmgate_fuzz::{fixed_keypair, fixture_dir, is_fixture_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<ConfigFile>(text) else {
        // The loader refuses it the same way, naming no value.
        assert!(matches!(
            ClientConfig::from_toml(text, fixture_dir()),
            Err(ConfigError::Parse { .. })
        ));
        return;
    };
    let safe = [&file.identity_file, &file.partition_key_file]
        .into_iter()
        .flatten()
        .all(|p| is_fixture_name(p));
    if !safe {
        return;
    }
    let base = fixture_dir();
    match ClientConfig::from_toml(text, base) {
        Ok(config) => {
            let keys = [1u8, 2, 3].map(|s| fixed_keypair(s).public());
            assert!(keys.contains(&config.identity.public()));
            assert!(keys.contains(&config.partition_key.public()));
            assert!(!config.hsm_keys.is_empty());
            for t in [
                config.connect_timeout,
                config.handshake_timeout,
                config.request_timeout,
                config.total_timeout,
            ] {
                assert!(!t.is_zero());
            }
            assert!(file.validate(base).is_ok());
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            assert_eq!(file.validate(base).err(), Some(problems));
        }
        Err(e) => panic!("unexpected refusal for unsealed fixtures: {e}"),
    }
});
