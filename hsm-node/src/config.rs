//! The HSM node's configuration file (TOML) and its validation.
//!
//! The file names the node (`hsm_id`), where it listens, its static key file,
//! the key store root and the partitions it serves with the partition keys
//! allowed to open sessions on each. Relative paths are resolved against the
//! directory of the config file. [`HsmConfig::validate`] reports every problem
//! at once, each with the path of the field it concerns, so an operator fixes
//! a bad file in one pass.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hsmgate_wire::PublicKey;
use hsmgate_wire::ops::MAX_KEYS;
use hsmgate_wire::text::validate_name;
use serde::Deserialize;

/// The whole configuration of one HSM node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// The node's name, sent to clients in the inner handshake.
    pub hsm_id: String,
    /// Address the binary binds. The library's `run` takes a bound listener.
    pub listen: SocketAddr,
    /// The node's static key pair file (`StaticKeypair::to_file_text` format).
    pub key_file: PathBuf,
    /// Key store root: one subdirectory per partition.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub partitions: Vec<PartitionConfig>,
}

/// Bounds on sessions, phases and the key store. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections (sessions and probes); more are refused with `OverLimit`.
    pub max_sessions: usize,
    /// Time from accept to a completed, authorized inner handshake.
    pub handshake_timeout_ms: u64,
    /// Time an established session may wait for its next request.
    pub idle_timeout_ms: u64,
    /// Keys one partition may hold (at most `ops::MAX_KEYS`).
    pub max_keys_per_partition: usize,
    /// On shutdown, how long running sessions may continue before they are cut.
    pub drain_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1024,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            max_keys_per_partition: MAX_KEYS,
            drain_timeout_ms: 30_000,
        }
    }
}

/// One partition served by this node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    pub name: String,
    /// Partition keys (`x25519:<64 hex>`) allowed to open sessions here.
    #[serde(default)]
    pub client_keys: Vec<String>,
}

/// One problem found in a config: the field's path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// e.g. `partitions[1].client_keys[0]`
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config file {path} is invalid:\n{}", list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// Every problem as one line each (one line for read and parse errors).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl HsmConfig {
    /// Read, parse and validate a config file; relative `key_file` and
    /// `state_dir` are resolved against the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<HsmConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        HsmConfig::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
            other => other,
        })
    }

    /// Parse and validate config text; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<HsmConfig, ConfigError> {
        let mut config: HsmConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            source: Box::new(e),
        })?;
        config.resolve_paths(base_dir);
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: PathBuf::from("<text>"),
            problems,
        })?;
        Ok(config)
    }

    /// Make relative `key_file` and `state_dir` relative to `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        for p in [&mut self.key_file, &mut self.state_dir] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base_dir.join(&*p);
            }
        }
    }

    /// Check every field; returns all problems found, each with its field path.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(ConfigProblem { field, message });
        };
        if let Err(why) = validate_name(&self.hsm_id) {
            problem("hsm_id".into(), why.into());
        }
        if self.key_file.as_os_str().is_empty() {
            problem("key_file".into(), "must not be empty".into());
        }
        if self.state_dir.as_os_str().is_empty() {
            problem("state_dir".into(), "must not be empty".into());
        }
        let l = &self.limits;
        if l.max_sessions == 0 {
            problem("limits.max_sessions".into(), "must be at least 1".into());
        }
        if l.handshake_timeout_ms == 0 {
            problem(
                "limits.handshake_timeout_ms".into(),
                "must be at least 1".into(),
            );
        }
        if l.idle_timeout_ms == 0 {
            problem("limits.idle_timeout_ms".into(), "must be at least 1".into());
        }
        if l.max_keys_per_partition == 0 || l.max_keys_per_partition > MAX_KEYS {
            problem(
                "limits.max_keys_per_partition".into(),
                format!("must be between 1 and {MAX_KEYS}"),
            );
        }
        if self.partitions.is_empty() {
            problem(
                "partitions".into(),
                "at least one partition is required".into(),
            );
        }
        let mut names = HashSet::new();
        for (i, part) in self.partitions.iter().enumerate() {
            let at = format!("partitions[{i}]");
            if let Err(why) = validate_name(&part.name) {
                problem(format!("{at}.name"), why.into());
            } else if part.name == "." || part.name == ".." {
                // The name becomes a directory under state_dir.
                problem(format!("{at}.name"), "must not be \".\" or \"..\"".into());
            } else if !names.insert(part.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("duplicate partition {:?}", part.name),
                );
            }
            let mut keys = HashSet::new();
            for (j, text) in part.client_keys.iter().enumerate() {
                match PublicKey::from_text(text) {
                    Ok(key) => {
                        if !keys.insert(key) {
                            problem(format!("{at}.client_keys[{j}]"), "duplicate key".into());
                        }
                    }
                    Err(e) => problem(format!("{at}.client_keys[{j}]"), e.to_string()),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
hsm_id = "hsm-1"
listen = "127.0.0.1:7201"
key_file = "hsm-1.key"
state_dir = "state/hsm-1"
[[partitions]]
name = "demo"
client_keys = ["x25519:0000000000000000000000000000000000000000000000000000000000000001"]
"#;

    #[test]
    fn parses_a_minimal_file_with_defaults_and_resolves_paths() {
        let c = HsmConfig::from_toml(GOOD, Path::new("/etc/hsmgate")).unwrap();
        assert_eq!(c.key_file, Path::new("/etc/hsmgate/hsm-1.key"));
        assert_eq!(c.state_dir, Path::new("/etc/hsmgate/state/hsm-1"));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.partitions[0].name, "demo");
    }

    #[test]
    fn keeps_absolute_paths() {
        let text = GOOD.replace("\"state/hsm-1\"", "\"/var/lib/hsm\"");
        let c = HsmConfig::from_toml(&text, Path::new("/etc")).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/hsm"));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = r#"
hsm_id = "bad id"
listen = "127.0.0.1:1"
key_file = ""
state_dir = "s"
[limits]
max_sessions = 0
max_keys_per_partition = 257
[[partitions]]
name = ".."
client_keys = ["x25519:zz"]
[[partitions]]
name = "a"
[[partitions]]
name = "a"
"#;
        let err = HsmConfig::from_toml(text, Path::new(".")).unwrap_err();
        let problems = err.problems();
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            [
                "hsm_id",
                "key_file",
                "limits.max_sessions",
                "limits.max_keys_per_partition",
                "partitions[0].name",
                "partitions[0].client_keys[0]",
                "partitions[2].name",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn refuses_unknown_fields() {
        let text = format!("{GOOD}\nextra = 1\n");
        assert!(matches!(
            HsmConfig::from_toml(&text, Path::new(".")),
            Err(ConfigError::Parse { .. })
        ));
    }
}
