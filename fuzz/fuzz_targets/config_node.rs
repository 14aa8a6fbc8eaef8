//! The HSM node's config loader (`HsmConfig::from_toml`, the `hsm.toml`
//! file: TOML, path resolution, then `validate`) on any text.
//!
//! Properties: no panic on any text and every refusal names a problem; a
//! config that loads is valid, with absolute paths, and resolving its paths
//! again changes nothing.
#![no_main]

use hsmgate_hsm::{ConfigError, HsmConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::path::Path::new("/etc/hsmgate");
    match HsmConfig::from_toml(text, base) {
        Ok(config) => {
            assert!(config.validate().is_ok());
            assert!(config.key_file.is_absolute());
            assert!(config.state_dir.is_absolute());
            let mut again = config.clone();
            again.resolve_paths(std::path::Path::new("/elsewhere"));
            assert_eq!(again, config);
        }
        Err(e) => {
            assert!(!e.problems().is_empty());
            assert!(
                !matches!(e, ConfigError::Read { .. }),
                "from_toml read a file"
            );
        }
    }
});
