//! The library's configuration file.
//!
//! Found through `HSMGATE_PKCS11_CONFIG`, else at
//! `/etc/hsmgate/pkcs11.toml`. It names one hsmgate client config per slot
//! (each client config names the gateway, the keys and one partition; the
//! slot's token is labelled with the partition's name), and how the library
//! logs:
//!
//! ```toml
//! log_file = "/var/log/hsmgate-pkcs11.log"   # optional; default: stderr
//! log_level = "warn"                          # error, warn, info, debug
//! connections_per_slot = 2                    # 1..=16 pipelined connections
//!
//! [[slots]]
//! client_config = "client.toml"               # relative to this file
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::log::Level;

/// The environment variable naming the config file.
pub const CONFIG_VAR: &str = "HSMGATE_PKCS11_CONFIG";
/// Where the config is when the variable is not set.
pub const DEFAULT_PATH: &str = "/etc/hsmgate/pkcs11.toml";
/// Most slots one config may declare.
pub const MAX_SLOTS: usize = 64;
const MAX_CONNECTIONS: usize = 16;
const MAX_FILE_LEN: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    log_file: Option<PathBuf>,
    #[serde(default = "default_level")]
    log_level: Level,
    #[serde(default = "default_connections")]
    connections_per_slot: usize,
    #[serde(default)]
    slots: Vec<SlotFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotFile {
    client_config: PathBuf,
}

fn default_level() -> Level {
    Level::Warn
}

fn default_connections() -> usize {
    2
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: Level,
    pub connections_per_slot: usize,
    /// Client config files, one per slot, in slot order.
    pub slots: Vec<PathBuf>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    /// The config file's path: the environment variable, else the default.
    pub fn locate() -> PathBuf {
        std::env::var_os(CONFIG_VAR)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        let file: File = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: hsmgate_wire::text::config_message(e.message()),
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if file.slots.is_empty() {
            return Err(invalid(
                "declares no slot: add a [[slots]] table with client_config".into(),
            ));
        }
        if file.slots.len() > MAX_SLOTS {
            return Err(invalid(format!("declares more than {MAX_SLOTS} slots")));
        }
        if !(1..=MAX_CONNECTIONS).contains(&file.connections_per_slot) {
            return Err(invalid(format!(
                "connections_per_slot: {} is out of range 1..={MAX_CONNECTIONS}",
                file.connections_per_slot
            )));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Ok(Config {
            path: path.to_owned(),
            log_file: file.log_file.map(|f| base.join(f)),
            log_level: file.log_level,
            connections_per_slot: file.connections_per_slot,
            slots: file
                .slots
                .into_iter()
                .map(|s| base.join(s.client_config))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pkcs11.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let (dir, path) = write(
            "log_file = \"p11.log\"\nlog_level = \"debug\"\n[[slots]]\nclient_config = \"a.toml\"\n\
             [[slots]]\nclient_config = \"/etc/b.toml\"\n",
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.log_file, Some(dir.path().join("p11.log")));
        assert_eq!(config.log_level, Level::Debug);
        assert_eq!(config.connections_per_slot, 2);
        assert_eq!(
            config.slots,
            [dir.path().join("a.toml"), PathBuf::from("/etc/b.toml")]
        );
    }

    #[test]
    fn the_annotated_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/pkcs11.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.slots.len(), 1);
        assert!(config.slots[0].ends_with("client.toml"));
        assert_eq!(config.log_level, Level::Warn);
    }

    #[test]
    fn refuses_no_slots_unknown_fields_and_wild_pool_sizes() {
        let (_d, path) = write("log_level = \"warn\"\n");
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("no slot")
        );
        let (_d, path) = write("[[slots]]\nclient_config = \"a\"\nsecret = \"hunter2\"\n");
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        let (_d, path) = write("connections_per_slot = 0\n[[slots]]\nclient_config = \"a\"\n");
        assert!(Config::load(&path).is_err());
        let missing = Path::new("/nonexistent/pkcs11.toml");
        assert!(matches!(
            Config::load(missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
