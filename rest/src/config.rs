//! hsmgate-rest's configuration: the TOML file as written, and the
//! validated settings. Every problem is reported at once, each with its
//! field path (`listeners[1].auth: ...`), as the gateway does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsmgate_client::{ClientConfig, ConfigError};
use serde::Deserialize;

use crate::auth::cert::CertName;
use crate::auth::jwt::Alg;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// How a listener authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `Authorization: Bearer <JWT>`, checked against `[jwt]`.
    Jwt,
    /// A client certificate from `tls.client_ca_file`, mapped by
    /// `[[mtls.identities]]`.
    Mtls,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::Mtls => "mtls",
        }
    }
}

/// One HTTPS listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub auth: AuthMode,
}

/// The server's certificate and, for mutual TLS, the CA of its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// Where the token verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file, re-read on SIGHUP and when it changes.
    File(PathBuf),
    /// A JWKS fetched over HTTPS at start and every `refresh` (and on
    /// SIGHUP); a failed fetch keeps the keys in force.
    Url {
        url: http::Uri,
        refresh: Duration,
        /// CA bundle to verify the key server with; None: the system's.
        ca_file: Option<PathBuf>,
    },
}

/// How bearer tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub keys: KeySource,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Alg>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim naming the caller's tenant (a string).
    pub tenant_claim: String,
    /// The claim listing the partitions the caller may use (strings).
    pub partitions_claim: String,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
}

/// A client certificate name and what it may use.
#[derive(Debug, Clone)]
pub struct CertIdentity {
    pub name: CertName,
    pub tenant: String,
    pub partitions: Vec<String>,
}

/// A partition this service serves, and how it reaches it through hsmgate.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    pub name: String,
    /// The hsmgate client settings for this partition: gateway, pinned
    /// keys, the service key and the partition key.
    pub client: ClientConfig,
    /// hsmgate sessions kept open for the partition (each pipelines).
    pub sessions: usize,
}

/// Bounds on what one caller or one request may take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Per caller (token subject or certificate name): sustained rate.
    pub requests_per_second: u32,
    pub burst: u32,
    /// Callers whose rate is tracked at once; beyond, the oldest idle go.
    pub max_callers: usize,
    pub max_connections: usize,
    /// Failed token checks per source address: sustained rate and burst.
    /// Beyond them, tokens not verified before are answered 429 unchecked.
    pub auth_failures_per_second: u32,
    pub auth_failure_burst: u32,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1.1 and HTTP/2 alike).
    pub idle_timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct RestConfig {
    pub listeners: Vec<Listener>,
    pub tls: TlsSettings,
    pub jwt: Option<JwtSettings>,
    pub identities: Vec<CertIdentity>,
    pub partitions: Vec<PartitionSettings>,
    pub limits: Limits,
    /// Plain-HTTP endpoint for /metrics, /healthz and /readyz.
    pub admin: Option<SocketAddr>,
    pub drain_timeout: Duration,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {} problem(s):\n  {}", .path.display(), .problems.len(), join(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub listeners: Vec<ListenerFile>,
    pub tls: Option<TlsFile>,
    pub jwt: Option<JwtFile>,
    pub mtls: Option<MtlsFile>,
    pub partitions: Vec<PartitionFile>,
    pub limits: LimitsFile,
    pub admin: Option<AdminFile>,
    pub drain_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtFile {
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: Option<u64>,
    pub jwks_ca_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway_secs: Option<u64>,
    pub tenant_claim: Option<String>,
    pub partitions_claim: Option<String>,
    pub max_token_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtlsFile {
    pub identities: Vec<IdentityFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityFile {
    /// `dns:NAME`, `uri:URI`, `email:ADDRESS` (subjectAltName entries) or
    /// `cn:NAME` (the subject's common name).
    #[serde(rename = "match")]
    pub name: Option<String>,
    pub tenant: Option<String>,
    pub partitions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionFile {
    pub name: Option<String>,
    pub client_config: Option<PathBuf>,
    pub sessions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_body_bytes: Option<usize>,
    pub requests_per_second: Option<u32>,
    pub burst: Option<u32>,
    pub max_callers: Option<usize>,
    pub max_connections: Option<usize>,
    pub auth_failures_per_second: Option<u32>,
    pub auth_failure_burst: Option<u32>,
    pub request_timeout_ms: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub address: Option<String>,
}

/// Defaults, as docs/REST.md lists them.
pub mod defaults {
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    pub const REQUESTS_PER_SECOND: u32 = 100;
    pub const BURST: u32 = 200;
    pub const MAX_CALLERS: usize = 100_000;
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const AUTH_FAILURES_PER_SECOND: u32 = 10;
    pub const AUTH_FAILURE_BURST: u32 = 100;
    pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
    pub const HEADER_TIMEOUT_MS: u64 = 5_000;
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    pub const LEEWAY_SECS: u64 = 30;
    pub const MAX_LEEWAY_SECS: u64 = 300;
    pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
    pub const SESSIONS: usize = 2;
    pub const MAX_SESSIONS: usize = 64;
    pub const DRAIN_TIMEOUT_SECS: u64 = 20;
    pub const JWKS_REFRESH_SECS: u64 = 300;
}

/// `jwks_file`, or `jwks_url` with its refresh interval and CA: exactly one.
fn key_source(jwt: &JwtFile, base: &Path, p: &mut Problems) -> Option<KeySource> {
    match (&jwt.jwks_file, &jwt.jwks_url) {
        (Some(file), None) => {
            if jwt.jwks_refresh_secs.is_some() {
                p.add(
                    "jwt.jwks_refresh_secs",
                    "goes with jwks_url only (a file is re-read when it changes)",
                );
            }
            if jwt.jwks_ca_file.is_some() {
                p.add("jwt.jwks_ca_file", "goes with jwks_url only");
            }
            Some(KeySource::File(path_in(base, file)))
        }
        (None, Some(url)) => {
            let refresh = jwt.jwks_refresh_secs.unwrap_or(defaults::JWKS_REFRESH_SECS);
            if !(1..=86_400).contains(&refresh) {
                p.add("jwt.jwks_refresh_secs", "1 to 86400");
            }
            let parsed = url.parse::<http::Uri>().ok().filter(|u| {
                u.scheme_str() == Some("https") && u.host().is_some_and(|h| !h.is_empty())
            });
            let Some(url) = parsed else {
                p.add("jwt.jwks_url", "not an https:// URL with a host");
                return None;
            };
            Some(KeySource::Url {
                url,
                refresh: Duration::from_secs(refresh),
                ca_file: jwt.jwks_ca_file.as_deref().map(|f| path_in(base, f)),
            })
        }
        (Some(_), Some(_)) => {
            p.add("jwt.jwks_url", "give jwks_file or jwks_url, not both");
            None
        }
        (None, None) => {
            p.add("jwt.jwks_file", "missing (or jwks_url)");
            None
        }
    }
}

impl RestConfig {
    /// Read, parse and validate a config file; relative paths in it are
    /// taken from its directory.
    pub fn load(path: &Path) -> Result<RestConfig, RestConfigError> {
        let text = read_bounded(path).map_err(|source| RestConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            RestConfigError::Parse { message, .. } => RestConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            RestConfigError::Invalid { problems, .. } => RestConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
            other => other,
        })
    }

    /// Parse and validate config text.
    pub fn from_toml(text: &str, base: &Path) -> Result<RestConfig, RestConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| RestConfigError::Parse {
            path: PathBuf::new(),
            message: parse_message(text, &e),
        })?;
        file.validate(base)
            .map_err(|problems| RestConfigError::Invalid {
                path: PathBuf::new(),
                problems,
            })
    }
}

/// The parser's message with a line and column, without the values it
/// quotes (a secret pasted into the wrong file must not reach a log).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
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

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB",
        ));
    }
    Ok(text)
}

/// Collects problems while the fields are checked.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn required<T: Clone>(&mut self, value: &Option<T>, field: &str) -> Option<T> {
        if value.is_none() {
            self.add(field, "missing");
        }
        value.clone()
    }
}

/// A name as the directory spells them: 1-64 of `[A-Za-z0-9._-]`.
fn valid_name(name: &str) -> bool {
    hsmgate_wire::text::validate_name(name).is_ok()
}

fn path_in(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl ConfigFile {
    /// Check every field; all problems at once.
    pub fn validate(&self, base: &Path) -> Result<RestConfig, Vec<Problem>> {
        let mut p = Problems::default();
        let listeners = self.listeners(&mut p);
        let tls = self.tls(base, &mut p, &listeners);
        let jwt = self.jwt(base, &mut p, &listeners);
        let partitions = self.partitions(base, &mut p);
        let identities = self.identities(&mut p, &listeners);
        let limits = self.limits(&mut p);
        let admin = self.admin.as_ref().and_then(|a| {
            let address = p.required(&a.address, "admin.address")?;
            address
                .parse::<SocketAddr>()
                .map_err(|_| p.add("admin.address", "not an IP:port address"))
                .ok()
        });
        let drain_timeout = Duration::from_secs(
            self.drain_timeout_secs
                .unwrap_or(defaults::DRAIN_TIMEOUT_SECS),
        );
        if self.drain_timeout_secs.is_some_and(|s| s > 3600) {
            p.add("drain_timeout_secs", "at most 3600");
        }
        // Every partition named by an identity must be served here.
        for (i, identity) in identities.iter().enumerate() {
            for name in &identity.partitions {
                match partitions.iter().find(|s| &s.name == name) {
                    None => p.add(
                        format!("mtls.identities[{i}].partitions"),
                        format!("{name:?} is not in [[partitions]]"),
                    ),
                    Some(s) if s.client.tenant != identity.tenant => p.add(
                        format!("mtls.identities[{i}].partitions"),
                        format!(
                            "{name:?} belongs to tenant {:?}, not {:?}",
                            s.client.tenant, identity.tenant
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if !p.0.is_empty() {
            return Err(p.0);
        }
        let Some(tls) = tls else {
            return Err(vec![Problem {
                field: "tls".into(),
                reason: "missing".into(),
            }]);
        };
        Ok(RestConfig {
            listeners,
            tls,
            jwt,
            identities,
            partitions,
            limits,
            admin,
            drain_timeout,
        })
    }

    fn listeners(&self, p: &mut Problems) -> Vec<Listener> {
        if self.listeners.is_empty() {
            p.add("listeners", "at least one [[listeners]] is needed");
        }
        let mut out: Vec<Listener> = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let field = |f: &str| format!("listeners[{i}].{f}");
            let name = l.name.clone().unwrap_or_else(|| format!("listener-{i}"));
            if !valid_name(&name) {
                p.add(field("name"), "1-64 characters of [A-Za-z0-9._-]");
            }
            if out.iter().any(|o| o.name == name) {
                p.add(field("name"), format!("{name:?} is used twice"));
            }
            let address = match p.required(&l.address, &field("address")) {
                Some(a) => match a.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        p.add(field("address"), "not an IP:port address");
                        None
                    }
                },
                None => None,
            };
            let auth = match l.auth.as_deref() {
                Some("jwt") => Some(AuthMode::Jwt),
                Some("mtls") => Some(AuthMode::Mtls),
                Some(_) => {
                    p.add(field("auth"), "must be \"jwt\" or \"mtls\"");
                    None
                }
                None => {
                    p.add(field("auth"), "missing (\"jwt\" or \"mtls\")");
                    None
                }
            };
            if let (Some(address), Some(auth)) = (address, auth) {
                out.push(Listener {
                    name,
                    address,
                    auth,
                });
            }
        }
        out
    }

    fn tls(&self, base: &Path, p: &mut Problems, listeners: &[Listener]) -> Option<TlsSettings> {
        let Some(tls) = &self.tls else {
            p.add("tls", "missing: cert_file and key_file are required");
            return None;
        };
        let cert_file = p.required(&tls.cert_file, "tls.cert_file");
        let key_file = p.required(&tls.key_file, "tls.key_file");
        let client_ca_file = tls.client_ca_file.as_deref().map(|f| path_in(base, f));
        if listeners.iter().any(|l| l.auth == AuthMode::Mtls) && client_ca_file.is_none() {
            p.add(
                "tls.client_ca_file",
                "missing: a listener with auth = \"mtls\" needs the CA of its clients",
            );
        }
        Some(TlsSettings {
            cert_file: path_in(base, &cert_file?),
            key_file: path_in(base, &key_file?),
            client_ca_file,
        })
    }

    fn jwt(&self, base: &Path, p: &mut Problems, listeners: &[Listener]) -> Option<JwtSettings> {
        let wanted = listeners.iter().any(|l| l.auth == AuthMode::Jwt);
        let Some(jwt) = &self.jwt else {
            if wanted {
                p.add("jwt", "missing: a listener with auth = \"jwt\" needs [jwt]");
            }
            return None;
        };
        let keys = key_source(jwt, base, p);
        let issuer = p.required(&jwt.issuer, "jwt.issuer");
        let audience = p.required(&jwt.audience, "jwt.audience");
        let algorithms = match &jwt.algorithms {
            None => Alg::ALL.to_vec(),
            Some(names) => {
                let mut algs = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    match name.parse::<Alg>() {
                        Ok(a) => algs.push(a),
                        Err(e) => p.add(format!("jwt.algorithms[{i}]"), e),
                    }
                }
                if names.is_empty() {
                    p.add(
                        "jwt.algorithms",
                        "empty: name at least one of ES256, EdDSA, RS256",
                    );
                }
                algs
            }
        };
        let leeway = jwt.leeway_secs.unwrap_or(defaults::LEEWAY_SECS);
        if leeway > defaults::MAX_LEEWAY_SECS {
            p.add("jwt.leeway_secs", "at most 300");
        }
        let max_token_bytes = jwt.max_token_bytes.unwrap_or(defaults::MAX_TOKEN_BYTES);
        if !(256..=65536).contains(&max_token_bytes) {
            p.add("jwt.max_token_bytes", "256 to 65536");
        }
        for (field, value) in [
            ("jwt.issuer", &issuer),
            ("jwt.audience", &audience),
            ("jwt.tenant_claim", &jwt.tenant_claim),
            ("jwt.partitions_claim", &jwt.partitions_claim),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                p.add(field, "empty");
            }
        }
        Some(JwtSettings {
            keys: keys?,
            issuer: issuer?,
            audience: audience?,
            algorithms,
            leeway: Duration::from_secs(leeway),
            tenant_claim: jwt.tenant_claim.clone().unwrap_or_else(|| "tenant".into()),
            partitions_claim: jwt
                .partitions_claim
                .clone()
                .unwrap_or_else(|| "partitions".into()),
            max_token_bytes,
        })
    }

    fn identities(&self, p: &mut Problems, listeners: &[Listener]) -> Vec<CertIdentity> {
        let listed = self.mtls.as_ref().map_or(&[][..], |m| &m.identities[..]);
        if listeners.iter().any(|l| l.auth == AuthMode::Mtls) && listed.is_empty() {
            p.add(
                "mtls.identities",
                "empty: a listener with auth = \"mtls\" needs at least one identity",
            );
        }
        let mut out: Vec<CertIdentity> = Vec::new();
        for (i, id) in listed.iter().enumerate() {
            let field = |f: &str| format!("mtls.identities[{i}].{f}");
            let name =
                p.required(&id.name, &field("match"))
                    .and_then(|n| match n.parse::<CertName>() {
                        Ok(n) => Some(n),
                        Err(e) => {
                            p.add(field("match"), e);
                            None
                        }
                    });
            if let Some(n) = &name
                && out.iter().any(|o| &o.name == n)
            {
                p.add(field("match"), "listed twice");
            }
            let tenant = p.required(&id.tenant, &field("tenant"));
            if tenant.as_deref().is_some_and(|t| !valid_name(t)) {
                p.add(field("tenant"), "1-64 characters of [A-Za-z0-9._-]");
            }
            let partitions = id.partitions.clone().unwrap_or_default();
            if let (Some(name), Some(tenant)) = (name, tenant) {
                out.push(CertIdentity {
                    name,
                    tenant,
                    partitions,
                });
            }
        }
        out
    }

    fn partitions(&self, base: &Path, p: &mut Problems) -> Vec<PartitionSettings> {
        if self.partitions.is_empty() {
            p.add("partitions", "at least one [[partitions]] is needed");
        }
        let mut out: Vec<PartitionSettings> = Vec::new();
        for (i, part) in self.partitions.iter().enumerate() {
            let field = |f: &str| format!("partitions[{i}].{f}");
            let name = p.required(&part.name, &field("name"));
            if let Some(n) = &name {
                if !valid_name(n) {
                    p.add(field("name"), "1-64 characters of [A-Za-z0-9._-]");
                }
                if out.iter().any(|o| &o.name == n) {
                    p.add(field("name"), format!("{n:?} is listed twice"));
                }
            }
            let sessions = part.sessions.unwrap_or(defaults::SESSIONS);
            if !(1..=defaults::MAX_SESSIONS).contains(&sessions) {
                p.add(field("sessions"), "1 to 64");
            }
            let Some(file) = p.required(&part.client_config, &field("client_config")) else {
                continue;
            };
            let file = path_in(base, &file);
            let client = match ClientConfig::load(&file) {
                Ok(c) => c,
                Err(ConfigError::Locked { .. }) => {
                    p.add(
                        field("client_config"),
                        "its key files are sealed under a passphrase; hsmgate-rest needs them unsealed (protect them with file permissions or a secret store)",
                    );
                    continue;
                }
                Err(e) => {
                    p.add(field("client_config"), e.to_string());
                    continue;
                }
            };
            let Some(name) = name else { continue };
            if client.partition != name {
                p.add(
                    field("client_config"),
                    format!("its partition is {:?}, not {name:?}", client.partition),
                );
                continue;
            }
            out.push(PartitionSettings {
                name,
                client,
                sessions,
            });
        }
        out
    }

    fn limits(&self, p: &mut Problems) -> Limits {
        let l = &self.limits;
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES),
            requests_per_second: l
                .requests_per_second
                .unwrap_or(defaults::REQUESTS_PER_SECOND),
            burst: l.burst.unwrap_or(defaults::BURST),
            max_callers: l.max_callers.unwrap_or(defaults::MAX_CALLERS),
            max_connections: l.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
            auth_failures_per_second: l
                .auth_failures_per_second
                .unwrap_or(defaults::AUTH_FAILURES_PER_SECOND),
            auth_failure_burst: l.auth_failure_burst.unwrap_or(defaults::AUTH_FAILURE_BURST),
            request_timeout: Duration::from_millis(
                l.request_timeout_ms.unwrap_or(defaults::REQUEST_TIMEOUT_MS),
            ),
            header_timeout: Duration::from_millis(
                l.header_timeout_ms.unwrap_or(defaults::HEADER_TIMEOUT_MS),
            ),
            idle_timeout: Duration::from_millis(
                l.idle_timeout_ms.unwrap_or(defaults::IDLE_TIMEOUT_MS),
            ),
        };
        if !(1024..=1 << 20).contains(&limits.max_body_bytes) {
            p.add("limits.max_body_bytes", "1024 to 1048576");
        }
        if limits.requests_per_second == 0 {
            p.add("limits.requests_per_second", "at least 1");
        }
        if limits.burst == 0 {
            p.add("limits.burst", "at least 1");
        }
        if !(1..=10_000_000).contains(&limits.max_callers) {
            p.add("limits.max_callers", "1 to 10000000");
        }
        if !(1..=1_000_000).contains(&limits.max_connections) {
            p.add("limits.max_connections", "1 to 1000000");
        }
        if limits.auth_failures_per_second == 0 {
            p.add("limits.auth_failures_per_second", "at least 1");
        }
        if limits.auth_failure_burst == 0 {
            p.add("limits.auth_failure_burst", "at least 1");
        }
        if !(100..=600_000).contains(&limits.request_timeout.as_millis()) {
            p.add("limits.request_timeout_ms", "100 to 600000");
        }
        if !(100..=600_000).contains(&limits.header_timeout.as_millis()) {
            p.add("limits.header_timeout_ms", "100 to 600000");
        }
        if !(100..=3_600_000).contains(&limits.idle_timeout.as_millis()) {
            p.add("limits.idle_timeout_ms", "100 to 3600000");
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = r#"
            [[listeners]]
            address = "nowhere"
            auth = "basic"

            [[listeners]]
            address = "127.0.0.1:0"
            auth = "mtls"

            [tls]
            cert_file = "c.pem"

            [limits]
            max_body_bytes = 10
        "#;
        let err = RestConfig::from_toml(text, Path::new("/nonexistent")).unwrap_err();
        let RestConfigError::Invalid { problems, .. } = err else {
            panic!("{err}")
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for expected in [
            "listeners[0].address",
            "listeners[0].auth",
            "tls.key_file",
            "tls.client_ca_file",
            "mtls.identities",
            "partitions",
            "limits.max_body_bytes",
        ] {
            assert!(fields.contains(&expected), "{expected} not in {fields:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let err = RestConfig::from_toml("[limits]\nmax_body = 1\n", Path::new("/")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("max_body"), "{text}");
    }

    #[test]
    fn the_key_set_comes_from_a_file_or_an_https_url() {
        let with = |jwt: &str| {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\nauth = \"jwt\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\n[jwt]\nissuer = \"i\"\naudience = \"a\"\n{jwt}"
            );
            match RestConfig::from_toml(&text, Path::new("/base")) {
                Err(RestConfigError::Invalid { problems, .. }) => problems
                    .into_iter()
                    .filter(|p| p.field.starts_with("jwt"))
                    .map(|p| p.field)
                    .collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(with(""), vec!["jwt.jwks_file"]);
        assert_eq!(
            with("jwks_file = \"f\"\njwks_url = \"https://idp/k\""),
            vec!["jwt.jwks_url"]
        );
        assert_eq!(with("jwks_url = \"http://idp/k\""), vec!["jwt.jwks_url"]);
        assert_eq!(
            with("jwks_url = \"https://idp/k\"\njwks_refresh_secs = 0"),
            vec!["jwt.jwks_refresh_secs"]
        );
        assert_eq!(
            with("jwks_file = \"f\"\njwks_refresh_secs = 5"),
            vec!["jwt.jwks_refresh_secs"]
        );
        assert!(with("jwks_url = \"https://idp.example:8443/keys\"").is_empty());
    }

    #[test]
    fn jwt_algorithms_are_an_allow_list_without_none_or_hmac() {
        let text = r#"
            [[listeners]]
            address = "127.0.0.1:0"
            auth = "jwt"
            [tls]
            cert_file = "c.pem"
            key_file = "k.pem"
            [jwt]
            jwks_file = "jwks.json"
            issuer = "i"
            audience = "a"
            algorithms = ["ES256", "none", "HS256"]
        "#;
        let RestConfigError::Invalid { problems, .. } =
            RestConfig::from_toml(text, Path::new("/")).unwrap_err()
        else {
            panic!()
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"jwt.algorithms[1]"), "{problems:?}");
        assert!(fields.contains(&"jwt.algorithms[2]"), "{problems:?}");
        assert!(!fields.contains(&"jwt.algorithms[0]"), "{problems:?}");
    }
}
