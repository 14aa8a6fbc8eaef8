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
    pub gateways: GatewaysConfig,
    #[serde(default)]
    pub partitions: Vec<PartitionConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The node's admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// A management address: the endpoints carry no secret but are not for
    /// clients.
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            address: SocketAddr::from(([127, 0, 0, 1], 9401)),
        }
    }
}

/// Which gateways may open sessions on this node (PROTOCOL.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaysConfig {
    /// Static public keys (`x25519:<64 hex>`) of the gateways whose grants
    /// this node accepts: each gateway's `key_file`, the key clients pin.
    pub trusted_keys: Vec<String>,
    /// Also accept sessions that carry no grant: anyone who reaches the
    /// port may then open a session with a partition key alone. Only for
    /// benchmarks and tests that connect without a gateway.
    pub insecure_allow_direct: bool,
    /// How far the node's clock may be behind a gateway's: a grant whose
    /// expiry is further in the past is refused.
    pub max_clock_skew_secs: u64,
    /// Control connections (one per gateway process) held at once.
    pub max_control_connections: usize,
}

impl Default for GatewaysConfig {
    fn default() -> Self {
        GatewaysConfig {
            trusted_keys: Vec::new(),
            insecure_allow_direct: false,
            max_clock_skew_secs: 60,
            max_control_connections: 256,
        }
    }
}

/// Bounds on sessions, phases and the key store. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent sessions; more are refused with `OverLimit`. Health probes
    /// and control connections do not count.
    pub max_sessions: usize,
    /// Concurrent sessions of one client id (as the gateway's grant names
    /// it), over all gateways; 0 = no limit of its own.
    pub max_sessions_per_client: usize,
    /// Concurrent sessions on one partition; 0 = no limit of its own.
    pub max_sessions_per_partition: usize,
    /// Connections whose first frame has not yet arrived or been checked
    /// (probes, control handshakes, grants); more are closed at once.
    pub max_pending: usize,
    /// Time from accept to the first frame (the grant, a control hello or a
    /// probe).
    pub first_frame_timeout_ms: u64,
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
            max_sessions_per_client: 256,
            max_sessions_per_partition: 0,
            max_pending: 256,
            first_frame_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
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
    /// Where the partition's keys live.
    #[serde(default)]
    pub store: StoreKind,
    /// The token, when `store = "pkcs11"`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
}

impl PartitionConfig {
    /// A partition on the software store.
    pub fn software(name: impl Into<String>, client_keys: Vec<String>) -> PartitionConfig {
        PartitionConfig {
            name: name.into(),
            client_keys,
            store: StoreKind::Software,
            pkcs11: None,
        }
    }
}

/// The key store of a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Keys in `state_dir/<partition>/keys.toml` (development, tests).
    #[default]
    Software,
    /// Keys inside a PKCS#11 token (a hardware HSM, SoftHSM2).
    Pkcs11,
}

/// A PKCS#11 token behind a partition (`[partitions.pkcs11]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 library.
    pub module: PathBuf,
    /// The token, by label…
    pub token_label: Option<String>,
    /// …or by serial number.
    pub token_serial: Option<String>,
    /// A file whose first line is the user PIN (mode 0600 or stricter)…
    pub pin_file: Option<PathBuf>,
    /// …or the environment variable that holds it.
    pub pin_env: Option<String>,
    /// Prepended to every label this node makes or looks for on the token,
    /// so that partitions (or other applications) can share a token.
    #[serde(default)]
    pub label_prefix: String,
    /// PKCS#11 sessions the node keeps open on the token, shared by all
    /// client sessions of the partition.
    #[serde(default = "default_token_sessions")]
    pub sessions: usize,
    /// How long an operation waits for a free token session before it
    /// answers `internal`.
    #[serde(default = "default_session_wait_ms")]
    pub session_wait_ms: u64,
}

fn default_token_sessions() -> usize {
    8
}

fn default_session_wait_ms() -> u64 {
    5_000
}

/// Most PKCS#11 sessions one partition may keep.
pub const MAX_TOKEN_SESSIONS: usize = 256;
/// Longest label prefix on a token.
pub const MAX_LABEL_PREFIX: usize = 32;

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
    /// Where and what, never the offending line: it could hold a secret
    /// pasted into the wrong file.
    #[error("config file {path}: {problem}")]
    Parse { path: PathBuf, problem: String },
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

/// "line L, column C: message" for a TOML error. The parser's own text
/// quotes the offending line, and its message may quote a value: neither
/// is kept, so a secret never reaches a log.
pub(crate) fn parse_problem(text: &str, e: &toml::de::Error) -> String {
    let message = hsmgate_wire::text::config_message(e.message());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
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
            ConfigError::Parse { problem, .. } => ConfigError::Parse {
                path: path.to_owned(),
                problem,
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
            problem: parse_problem(text, &e),
        })?;
        config.resolve_paths(base_dir);
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: PathBuf::from("<text>"),
            problems,
        })?;
        Ok(config)
    }

    /// Make relative `key_file`, `state_dir` and the PKCS#11 `module` and
    /// `pin_file` paths relative to `base_dir`.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let tokens = self.partitions.iter_mut().filter_map(|p| p.pkcs11.as_mut());
        let token_paths = tokens.flat_map(|t| {
            let Pkcs11Config {
                module, pin_file, ..
            } = t;
            std::iter::once(module).chain(pin_file.as_mut())
        });
        for p in [&mut self.key_file, &mut self.state_dir]
            .into_iter()
            .chain(token_paths)
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base_dir.join(&*p);
            }
        }
    }

    fn validate_store(at: &str, part: &PartitionConfig, problem: &mut impl FnMut(String, String)) {
        let token = match (part.store, &part.pkcs11) {
            (StoreKind::Software, None) => return,
            (StoreKind::Software, Some(_)) => {
                problem(
                    format!("{at}.pkcs11"),
                    "is set but the store is \"software\": add store = \"pkcs11\" or remove it"
                        .into(),
                );
                return;
            }
            (StoreKind::Pkcs11, None) => {
                problem(
                    format!("{at}.pkcs11"),
                    "is required with store = \"pkcs11\" (module, token_label or token_serial, \
                     pin_file or pin_env)"
                        .into(),
                );
                return;
            }
            (StoreKind::Pkcs11, Some(t)) => t,
        };
        let at = format!("{at}.pkcs11");
        if token.module.as_os_str().is_empty() {
            problem(format!("{at}.module"), "must not be empty".into());
        }
        match (&token.token_label, &token.token_serial) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => problem(
                format!("{at}.token_label"),
                "give exactly one of token_label and token_serial".into(),
            ),
        }
        match (&token.pin_file, &token.pin_env) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => problem(
                format!("{at}.pin_file"),
                "give exactly one of pin_file and pin_env (the PIN is never written in this file)"
                    .into(),
            ),
        }
        let prefix_ok = token.label_prefix.len() <= MAX_LABEL_PREFIX
            && token
                .label_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            problem(
                format!("{at}.label_prefix"),
                format!("at most {MAX_LABEL_PREFIX} bytes of [A-Za-z0-9._-]"),
            );
        }
        if !(1..=MAX_TOKEN_SESSIONS).contains(&token.sessions) {
            problem(
                format!("{at}.sessions"),
                format!("must be between 1 and {MAX_TOKEN_SESSIONS}"),
            );
        }
        if token.session_wait_ms == 0 {
            problem(format!("{at}.session_wait_ms"), "must be at least 1".into());
        }
    }

    fn validate_gateways(&self, problem: &mut impl FnMut(String, String)) {
        let g = &self.gateways;
        if g.trusted_keys.is_empty() && !g.insecure_allow_direct {
            problem(
                "gateways.trusted_keys".into(),
                "at least one gateway key is required: the public key of each gateway's \
                 key_file (or set gateways.insecure_allow_direct = true, which lets anyone who \
                 reaches this port open sessions with a partition key alone)"
                    .into(),
            );
        }
        let mut keys = HashSet::new();
        for (j, text) in g.trusted_keys.iter().enumerate() {
            match PublicKey::from_text(text) {
                Ok(key) => {
                    if !keys.insert(key) {
                        problem(
                            format!("gateways.trusted_keys[{j}]"),
                            "duplicate key".into(),
                        );
                    }
                }
                Err(e) => problem(format!("gateways.trusted_keys[{j}]"), e.to_string()),
            }
        }
        if g.max_clock_skew_secs > 3_600 {
            problem(
                "gateways.max_clock_skew_secs".into(),
                "must be at most 3600".into(),
            );
        }
        if g.max_control_connections == 0 {
            problem(
                "gateways.max_control_connections".into(),
                "must be at least 1".into(),
            );
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
        for (field, value) in [
            ("limits.max_pending", l.max_pending as u64),
            ("limits.first_frame_timeout_ms", l.first_frame_timeout_ms),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
        ] {
            if value == 0 {
                problem(field.into(), "must be at least 1".into());
            }
        }
        if l.first_frame_timeout_ms > l.handshake_timeout_ms {
            problem(
                "limits.first_frame_timeout_ms".into(),
                "must not exceed limits.handshake_timeout_ms".into(),
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
        self.validate_gateways(&mut problem);
        if self.partitions.is_empty() {
            problem(
                "partitions".into(),
                "at least one partition is required".into(),
            );
        }
        // Names compare exactly on the wire, but each is a directory under
        // state_dir: on a case-insensitive filesystem "Acme" and "acme"
        // would share one key store. Refuse names that differ only in case.
        let mut names: HashSet<String> = HashSet::new();
        for (i, part) in self.partitions.iter().enumerate() {
            let at = format!("partitions[{i}]");
            if let Err(why) = validate_name(&part.name) {
                problem(format!("{at}.name"), why.into());
            } else if part.name == "." || part.name == ".." {
                // The name becomes a directory under state_dir.
                problem(format!("{at}.name"), "must not be \".\" or \"..\"".into());
            } else if !names.insert(part.name.to_ascii_lowercase()) {
                problem(
                    format!("{at}.name"),
                    format!(
                        "duplicate partition {:?} (names that differ only in letter case \
                         would share one key store directory)",
                        part.name
                    ),
                );
            }
            Self::validate_store(&at, part, &mut problem);
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
[gateways]
trusted_keys = ["x25519:0000000000000000000000000000000000000000000000000000000000000002"]
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
    fn a_pkcs11_partition_names_its_module_token_and_pin_source() {
        let text = format!(
            "{GOOD}store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"lib/softhsm2.so\"\n\
             token_label = \"demo\"\npin_file = \"demo.pin\"\nlabel_prefix = \"n1.\"\n"
        );
        let c = HsmConfig::from_toml(&text, Path::new("/etc/hsmgate")).unwrap();
        assert_eq!(c.partitions[0].store, StoreKind::Pkcs11);
        let t = c.partitions[0].pkcs11.as_ref().unwrap();
        assert_eq!(t.module, Path::new("/etc/hsmgate/lib/softhsm2.so"));
        assert_eq!(
            t.pin_file.as_deref(),
            Some(Path::new("/etc/hsmgate/demo.pin"))
        );
        assert_eq!((t.sessions, t.session_wait_ms), (8, 5_000));

        for (bad, field) in [
            ("store = \"pkcs11\"\n", "partitions[0].pkcs11"),
            (
                "store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n",
                "partitions[0].pkcs11.pin_file",
            ),
            (
                "store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"m.so\"\npin_env = \"P\"\n",
                "partitions[0].pkcs11.token_label",
            ),
            (
                "store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n\
                 pin_env = \"P\"\nlabel_prefix = \"a b\"\nsessions = 0\n",
                "partitions[0].pkcs11.label_prefix",
            ),
            (
                "[partitions.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\npin_env = \"P\"\n",
                "partitions[0].pkcs11",
            ),
        ] {
            let err = HsmConfig::from_toml(&format!("{GOOD}{bad}"), Path::new(".")).unwrap_err();
            assert!(
                err.problems()
                    .iter()
                    .any(|p| p.starts_with(&format!("{field}:"))),
                "{field}: {:?}",
                err.problems()
            );
        }
        // A PIN written in the file is no setting at all.
        let inline = format!(
            "{GOOD}store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"m.so\"\ntoken_label = \"t\"\n\
             pin = \"12345678\"\n"
        );
        let err = HsmConfig::from_toml(&inline, Path::new(".")).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
    }

    #[test]
    fn the_annotated_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hsm.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = HsmConfig::from_toml(&text, Path::new("/etc/hsmgate")).unwrap();
        assert_eq!(c.admin, AdminConfig::default());
        // The commented PKCS#11 partition is valid too, once uncommented.
        let pkcs11: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [[partitions]]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let with_token = text
            .replace("[admin]", &format!("{pkcs11}\n[admin]"))
            .replace("x25519:<64 hex>", &format!("x25519:{}", "c3".repeat(32)));
        let c = HsmConfig::from_toml(&with_token, Path::new("/etc/hsmgate")).unwrap();
        assert_eq!(c.partitions[1].store, StoreKind::Pkcs11);
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
[gateways]
insecure_allow_direct = true
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
    fn refuses_partition_names_that_differ_only_in_case() {
        let text = GOOD.replace(
            "[[partitions]]\nname = \"demo\"",
            "[[partitions]]\nname = \"Demo\"\n[[partitions]]\nname = \"demo\"",
        );
        let problems = HsmConfig::from_toml(&text, Path::new("."))
            .unwrap_err()
            .problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("partitions[1].name: duplicate"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_parse_error_says_where_but_never_quotes_the_line() {
        let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for text in [
            format!("{GOOD}\nprivate = \"x25519-private:{secret}\"\n"),
            format!("{GOOD}\nhsm_id = \"{secret}\"\n"),
            format!("hsm_id = {secret}\n"),
            format!("[limits]\nmax_sessions = \"{secret}\"\n"),
        ] {
            let err = HsmConfig::from_toml(&text, Path::new(".")).unwrap_err();
            let shown = format!("{err} {err:?} {:?}", err.problems());
            assert!(!shown.contains(&secret[..16]), "{shown}");
            assert!(shown.contains("line "), "{shown}");
        }
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
