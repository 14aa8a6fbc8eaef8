//! The client configuration file: where the gateway is, which keys to use and
//! which peers to trust.
//!
//! The TOML file is read into [`ConfigFile`] (every field optional, unknown
//! fields refused) and [`ConfigFile::validate`] turns it into a typed
//! [`ClientConfig`], reporting *every* problem with its field name at once.
//! Relative key file paths are relative to the config file's directory.
//!
//! ```toml
//! gateway = "gw.example.com:2300"        # or "127.0.0.1:2300", "[::1]:2300"
//! dns_server = "127.0.0.1:5353"          # optional; default: system resolver
//! gateway_key = "x25519:<hex>"           # pinned gateway static key
//! client_id = "demo-app"
//! tenant = "demo"
//! partition = "demo"
//! identity_file = "service.key"          # service key pair (outer handshake)
//! partition_key_file = "partition.key"   # partition key pair (inner channel)
//! hsm_keys = ["x25519:<hex>"]            # trusted HSM node keys
//! connect_timeout_ms = 3000              # optional, defaults shown
//! handshake_timeout_ms = 5000
//! request_timeout_ms = 10000
//! total_timeout_ms = 30000               # all gateway addresses together
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hsmgate_wire::text::validate_name;
use hsmgate_wire::{PublicKey, StaticKeypair};
use serde::Deserialize;

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_TOTAL_TIMEOUT_MS: u64 = 30_000;
/// Longest timeout any field accepts (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Largest key or config file read (they are a few hundred bytes).
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Where the gateway is: an address, or a DNS name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAddr {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl From<SocketAddr> for GatewayAddr {
    fn from(addr: SocketAddr) -> Self {
        GatewayAddr::Addr(addr)
    }
}

impl FromStr for GatewayAddr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err("port must be 1..=65535");
            }
            return Ok(GatewayAddr::Addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
        if host.contains(':') || host.starts_with('[') {
            return Err("an IPv6 address is written [addr]:port");
        }
        let port: u16 = port.parse().map_err(|_| "port must be 1..=65535")?;
        if port == 0 {
            return Err("port must be 1..=65535");
        }
        check_host_name(host)?;
        Ok(GatewayAddr::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for GatewayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayAddr::Addr(a) => write!(f, "{a}"),
            GatewayAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A DNS host name: labels of `[A-Za-z0-9-]`, 1..=63 bytes, not starting or
/// ending with `-`; at most 253 bytes; an optional final dot.
fn check_host_name(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("host name is empty");
    }
    if name.len() > 253 {
        return Err("host name longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("host name label is empty or longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("host name has a character outside [A-Za-z0-9.-]");
        }
    }
    Ok(())
}

/// The validated client configuration. Build it with [`ClientConfig::load`],
/// or fill the fields directly (tests, embedding programs).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub gateway: GatewayAddr,
    /// DNS server for resolving `gateway`; `None`: the system's resolvers.
    pub dns_server: Option<SocketAddr>,
    /// The gateway static keys accepted (at least one; two while the
    /// gateway's key is rotated).
    pub gateway_keys: Vec<PublicKey>,
    pub client_id: String,
    pub tenant: String,
    pub partition: String,
    /// The service key pair, proven to the gateway in the outer handshake.
    pub identity: StaticKeypair,
    /// The partition key pair, proven to the HSM node in the inner handshake.
    pub partition_key: StaticKeypair,
    /// HSM node keys the client accepts.
    pub hsm_keys: Vec<PublicKey>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    /// Budget for resolving and trying every gateway address.
    pub total_timeout: Duration,
    /// TCP (one connection per session) or QUIC (sessions as streams of
    /// one connection, PROTOCOL.md §11) to the same address.
    pub transport: Transport,
}

/// How the client reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Quic,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "quic" => Ok(Transport::Quic),
            other => Err(format!("{other:?}: must be \"tcp\" or \"quic\"")),
        }
    }
}

impl ClientConfig {
    /// Read, parse and validate a config file. A key file sealed under a
    /// passphrase makes this [`ConfigError::Locked`]: use
    /// [`ClientConfig::load_unlocked`].
    pub fn load(path: impl AsRef<Path>) -> Result<ClientConfig, ConfigError> {
        Self::load_unlocked(path, None)
    }

    /// [`ClientConfig::load`], opening sealed key files with `passphrase`.
    pub fn load_unlocked(
        path: impl AsRef<Path>,
        passphrase: Option<&[u8]>,
    ) -> Result<ClientConfig, ConfigError> {
        let path = path.as_ref();
        let text = read_bounded(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml_unlocked(&text, base, passphrase).map_err(|e| e.with_path(path))
    }

    /// Parse and validate config text; relative paths are taken from `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<ClientConfig, ConfigError> {
        Self::from_toml_unlocked(text, base_dir, None)
    }

    /// [`ClientConfig::from_toml`], opening sealed key files with `passphrase`.
    pub fn from_toml_unlocked(
        text: &str,
        base_dir: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<ClientConfig, ConfigError> {
        // The parser's message without the values it quotes: a secret
        // pasted into the wrong file must not reach a log.
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            message: hsmgate_wire::text::config_message(e.message()),
            span: e.span(),
        })?;
        file.validate_unlocked(base_dir, passphrase)
    }
}

/// The config file as written. Every field is optional here so that a
/// missing field is reported by [`ConfigFile::validate`] together with all
/// other problems.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub gateway: Option<String>,
    pub dns_server: Option<String>,
    /// One pinned gateway key: shorthand for a one-element `gateway_keys`.
    pub gateway_key: Option<String>,
    pub gateway_keys: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub partition: Option<String>,
    pub identity_file: Option<PathBuf>,
    pub partition_key_file: Option<PathBuf>,
    pub hsm_keys: Option<Vec<String>>,
    pub connect_timeout_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
    /// `tcp` (the default) or `quic`.
    pub transport: Option<String>,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field's name, e.g. `hsm_keys[1]`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config{}: {message}{}", show_path(.path), show_span(.span))]
    Parse {
        path: Option<PathBuf>,
        message: String,
        span: Option<std::ops::Range<usize>>,
    },
    #[error("invalid config{}: {}", show_path(.path), join(.problems))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<ConfigProblem>,
    },
    /// Everything is valid, but key files are sealed under a passphrase and
    /// none was given.
    #[error("config{}: {} sealed under a passphrase; give it (HSMGATE_KEY_PASSPHRASE for the CLI, the user PIN for PKCS#11)", show_path(.path), .fields.join(" and "))]
    Locked {
        path: Option<PathBuf>,
        fields: Vec<String>,
    },
    /// A sealed key file did not open with the passphrase given.
    #[error("config{}: {field}: wrong passphrase", show_path(.path))]
    WrongPassphrase {
        path: Option<PathBuf>,
        field: String,
    },
}

fn show_path(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn show_span(span: &Option<std::ops::Range<usize>>) -> String {
    span.as_ref()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default()
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConfigError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { message, span, .. } => ConfigError::Parse {
                path: Some(file.to_owned()),
                message,
                span,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: Some(file.to_owned()),
                problems,
            },
            ConfigError::Locked { fields, .. } => ConfigError::Locked {
                path: Some(file.to_owned()),
                fields,
            },
            ConfigError::WrongPassphrase { field, .. } => ConfigError::WrongPassphrase {
                path: Some(file.to_owned()),
                field,
            },
            other => other,
        }
    }

    /// The field problems, when the file parsed but did not validate.
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

/// What validation learnt about sealed key files.
#[derive(Default)]
struct Seals {
    /// Fields whose file is sealed, when no passphrase was given.
    locked: Vec<String>,
    /// The first field whose file the passphrase did not open.
    wrong: Option<String>,
}

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigProblem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn required<'a, T>(&mut self, field: &str, value: &'a Option<T>) -> Option<&'a T> {
        if value.is_none() {
            self.add(field, "is required");
        }
        value.as_ref()
    }
}

impl ConfigFile {
    /// `gateway_key` (one) or `gateway_keys` (a list), exactly one of them.
    fn gateway_keys(&self, p: &mut Problems) -> Option<Vec<PublicKey>> {
        let texts: Vec<(String, &String)> = match (&self.gateway_key, &self.gateway_keys) {
            (Some(_), Some(_)) => {
                p.add(
                    "gateway_keys",
                    "give gateway_key (one key) or gateway_keys (a list), not both",
                );
                return None;
            }
            (None, None) => {
                p.add("gateway_key", "is required (or gateway_keys)");
                return None;
            }
            (Some(key), None) => vec![("gateway_key".to_owned(), key)],
            (None, Some(keys)) if keys.is_empty() => {
                p.add(
                    "gateway_keys",
                    "lists no key: at least one pinned gateway key is required",
                );
                return None;
            }
            (None, Some(keys)) => keys
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("gateway_keys[{i}]"), k))
                .collect(),
        };
        let mut keys = Vec::with_capacity(texts.len());
        let mut bad = false;
        for (field, text) in texts {
            match PublicKey::from_text(text) {
                Ok(key) => keys.push(key),
                Err(e) => {
                    p.add(field, e.to_string());
                    bad = true;
                }
            }
        }
        (!bad).then_some(keys)
    }

    /// Check every field; load the key files. Returns the typed config or
    /// every problem found (a sealed key file is one: no passphrase).
    pub fn validate(&self, base_dir: &Path) -> Result<ClientConfig, Vec<ConfigProblem>> {
        self.validate_unlocked(base_dir, None).map_err(|e| match e {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Locked { fields, .. } => fields
                .into_iter()
                .map(|field| ConfigProblem {
                    field,
                    reason: "the key file is sealed under a passphrase and none was given".into(),
                })
                .collect(),
            other => vec![ConfigProblem {
                field: "config".into(),
                reason: other.to_string(),
            }],
        })
    }

    /// [`ConfigFile::validate`], opening sealed key files with `passphrase`.
    /// Field problems come first ([`ConfigError::Invalid`]), then a wrong
    /// passphrase, then sealed files without one ([`ConfigError::Locked`]).
    pub fn validate_unlocked(
        &self,
        base_dir: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<ClientConfig, ConfigError> {
        let mut p = Problems(Vec::new());
        let mut seals = Seals::default();

        let gateway = p.required("gateway", &self.gateway).and_then(|g| {
            g.parse::<GatewayAddr>()
                .map_err(|why| p.add("gateway", format!("{g:?}: {why}")))
                .ok()
        });
        let dns_server = self.dns_server.as_ref().and_then(|s| {
            parse_dns_server(s)
                .map_err(|why| p.add("dns_server", format!("{s:?}: {why}")))
                .ok()
        });
        let gateway_keys = self.gateway_keys(&mut p);
        let client_id = name_field(&mut p, "client_id", &self.client_id);
        let tenant = name_field(&mut p, "tenant", &self.tenant);
        let partition = name_field(&mut p, "partition", &self.partition);
        let mut key_file = |p: &mut Problems, field, value| {
            KeyField {
                field,
                value,
                base_dir,
                passphrase,
            }
            .load(p, &mut seals)
        };
        let identity = key_file(&mut p, "identity_file", &self.identity_file);
        let partition_key = key_file(&mut p, "partition_key_file", &self.partition_key_file);
        let mut hsm_keys = Vec::new();
        if let Some(keys) = p.required("hsm_keys", &self.hsm_keys) {
            if keys.is_empty() {
                p.add(
                    "hsm_keys",
                    "lists no key: at least one trusted HSM key is required",
                );
            }
            for (i, k) in keys.iter().enumerate() {
                match PublicKey::from_text(k) {
                    Ok(key) => hsm_keys.push(key),
                    Err(e) => p.add(format!("hsm_keys[{i}]"), e.to_string()),
                }
            }
        }
        let connect_timeout = timeout_field(
            &mut p,
            "connect_timeout_ms",
            self.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
        );
        let handshake_timeout = timeout_field(
            &mut p,
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            DEFAULT_HANDSHAKE_TIMEOUT_MS,
        );
        let request_timeout = timeout_field(
            &mut p,
            "request_timeout_ms",
            self.request_timeout_ms,
            DEFAULT_REQUEST_TIMEOUT_MS,
        );
        let total_timeout = timeout_field(
            &mut p,
            "total_timeout_ms",
            self.total_timeout_ms,
            DEFAULT_TOTAL_TIMEOUT_MS,
        );
        let transport = match &self.transport {
            None => Transport::Tcp,
            Some(t) => t.parse().unwrap_or_else(|why: String| {
                p.add("transport", why);
                Transport::Tcp
            }),
        };

        match (
            gateway,
            gateway_keys,
            client_id,
            tenant,
            partition,
            identity,
            partition_key,
        ) {
            (
                Some(gateway),
                Some(gateway_keys),
                Some(client_id),
                Some(tenant),
                Some(partition),
                Some(identity),
                Some(partition_key),
            ) if p.0.is_empty() && seals.wrong.is_none() && seals.locked.is_empty() => {
                Ok(ClientConfig {
                    gateway,
                    dns_server,
                    gateway_keys,
                    client_id,
                    tenant,
                    partition,
                    identity,
                    partition_key,
                    hsm_keys,
                    connect_timeout,
                    handshake_timeout,
                    request_timeout,
                    total_timeout,
                    transport,
                })
            }
            _ if !p.0.is_empty() => Err(ConfigError::Invalid {
                path: None,
                problems: p.0,
            }),
            _ => Err(match seals.wrong {
                Some(field) => ConfigError::WrongPassphrase { path: None, field },
                None => ConfigError::Locked {
                    path: None,
                    fields: seals.locked,
                },
            }),
        }
    }

    /// Whether a key file the config names is sealed under a passphrase (so
    /// that loading it needs one). Unreadable files count as not sealed:
    /// validation reports them.
    pub fn has_sealed_key_files(&self, base_dir: &Path) -> bool {
        [&self.identity_file, &self.partition_key_file]
            .into_iter()
            .flatten()
            .any(|rel| {
                hsmgate_wire::keys::read_key_file(&base_dir.join(rel))
                    .is_ok_and(|file| file.is_sealed())
            })
    }
}

fn name_field(p: &mut Problems, field: &str, value: &Option<String>) -> Option<String> {
    let v = p.required(field, value)?;
    match validate_name(v) {
        Ok(()) => Some(v.clone()),
        Err(why) => {
            p.add(field, format!("{v:?}: {why}"));
            None
        }
    }
}

/// One key file field to load.
struct KeyField<'a> {
    field: &'static str,
    value: &'a Option<PathBuf>,
    base_dir: &'a Path,
    passphrase: Option<&'a [u8]>,
}

impl KeyField<'_> {
    fn load(self, p: &mut Problems, seals: &mut Seals) -> Option<StaticKeypair> {
        use hsmgate_wire::keys::{KeyFileError, read_key_file};
        use hsmgate_wire::{KeyFile, WireError};
        let field = self.field;
        let rel = p.required(field, self.value)?;
        let path = self.base_dir.join(rel);
        let sealed = match read_key_file(&path) {
            Ok(KeyFile::Plain(k)) => return Some(k),
            Ok(KeyFile::Sealed(sealed)) => sealed,
            Err(KeyFileError::Read(e)) => {
                p.add(field, format!("cannot read {}: {e}", path.display()));
                return None;
            }
            Err(e) => {
                p.add(field, format!("{}: {e}", path.display()));
                return None;
            }
        };
        let Some(passphrase) = self.passphrase else {
            seals.locked.push(field.to_owned());
            return None;
        };
        match sealed.unseal(passphrase) {
            Ok(k) => Some(k),
            Err(WireError::WrongPassphrase) => {
                seals.wrong.get_or_insert_with(|| field.to_owned());
                None
            }
            Err(e) => {
                p.add(field, format!("{}: {e}", path.display()));
                None
            }
        }
    }
}

fn timeout_field(p: &mut Problems, field: &str, value: Option<u64>, default: u64) -> Duration {
    let ms = value.unwrap_or(default);
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        p.add(
            field,
            format!("{ms} is out of range: must be 1..={MAX_TIMEOUT_MS} milliseconds"),
        );
    }
    Duration::from_millis(ms)
}

/// `ip:port`, or a bare IP meaning port 53.
fn parse_dns_server(s: &str) -> Result<SocketAddr, &'static str> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "expected an IP address with an optional port (ip:port)")
}

/// Read a small text file, refusing anything larger than [`MAX_FILE_LEN`].
pub(crate) fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_FILE_LEN + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file larger than {MAX_FILE_LEN} bytes"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_key_is_a_one_key_shorthand_for_gateway_keys() {
        let a = format!("x25519:{}", "ab".repeat(32));
        let b = format!("x25519:{}", "cd".repeat(32));
        let keys = |file: ConfigFile| {
            let mut p = Problems::default();
            let keys = file.gateway_keys(&mut p);
            (keys, p.0.into_iter().map(|q| q.field).collect::<Vec<_>>())
        };
        let (one, problems) = keys(ConfigFile {
            gateway_key: Some(a.clone()),
            ..ConfigFile::default()
        });
        assert_eq!(one.map(|k| k.len()), Some(1));
        assert!(problems.is_empty());
        let (two, problems) = keys(ConfigFile {
            gateway_keys: Some(vec![a.clone(), b.clone()]),
            ..ConfigFile::default()
        });
        assert_eq!(two.map(|k| k.len()), Some(2));
        assert!(problems.is_empty());
        for (file, field) in [
            (
                ConfigFile {
                    gateway_key: Some(a.clone()),
                    gateway_keys: Some(vec![b.clone()]),
                    ..ConfigFile::default()
                },
                "gateway_keys",
            ),
            (ConfigFile::default(), "gateway_key"),
            (
                ConfigFile {
                    gateway_keys: Some(Vec::new()),
                    ..ConfigFile::default()
                },
                "gateway_keys",
            ),
            (
                ConfigFile {
                    gateway_keys: Some(vec![a.clone(), "x25519:nothex".into()]),
                    ..ConfigFile::default()
                },
                "gateway_keys[1]",
            ),
        ] {
            let (keys, problems) = keys(file);
            assert!(keys.is_none());
            assert_eq!(problems, vec![field.to_owned()]);
        }
    }

    #[test]
    fn parses_gateway_addresses_and_names() {
        assert_eq!(
            "127.0.0.1:2300".parse::<GatewayAddr>(),
            Ok(GatewayAddr::Addr(SocketAddr::from(([127, 0, 0, 1], 2300))))
        );
        assert!(matches!(
            "[::1]:2300".parse::<GatewayAddr>(),
            Ok(GatewayAddr::Addr(a)) if a.is_ipv6()
        ));
        assert_eq!(
            "gw.example.com:2300".parse::<GatewayAddr>(),
            Ok(GatewayAddr::Name {
                host: "gw.example.com".into(),
                port: 2300
            })
        );
        assert!("gw.example.com".parse::<GatewayAddr>().is_err());
        assert!("gw.example.com:0".parse::<GatewayAddr>().is_err());
        assert!("gw.example.com:99999".parse::<GatewayAddr>().is_err());
        assert!("::1:2300".parse::<GatewayAddr>().is_err());
        assert!("bad_host:2300".parse::<GatewayAddr>().is_err());
        assert!("-bad.example:2300".parse::<GatewayAddr>().is_err());
        assert!(":2300".parse::<GatewayAddr>().is_err());
    }

    #[test]
    fn dns_server_defaults_to_port_53() {
        assert_eq!(
            parse_dns_server("10.0.0.1"),
            Ok(SocketAddr::from(([10, 0, 0, 1], 53)))
        );
        assert_eq!(
            parse_dns_server("127.0.0.1:5353"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 5353)))
        );
        assert!(parse_dns_server("dns.example").is_err());
    }
}
