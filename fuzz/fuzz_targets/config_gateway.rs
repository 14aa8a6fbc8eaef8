//! The gateway's config loader (`GatewayConfig::from_toml`: TOML, then
//! `validate`) on any text.
//!
//! Properties: no panic on any text, and every refusal names a problem; a
//! config that loads is valid, and written back as TOML loads again to the
//! same config (decode → encode → decode).
#![no_main]

use hsmgate::GatewayConfig;
use hsmgate::config::ConfigError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::path::Path::new("/etc/hsmgate");
    match GatewayConfig::from_toml(text, base) {
        Ok(config) => {
            assert!(config.validate().is_ok());
            let written = toml::to_string(&config).expect("a loaded config serializes");
            let again = GatewayConfig::from_toml(&written, base)
                .unwrap_or_else(|e| panic!("written config does not load: {e}\n{written}"));
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
