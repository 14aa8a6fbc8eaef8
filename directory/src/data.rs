//! The directory's data file: its serde model ([`DirectoryFile`]), the
//! validation that reports every problem with its field path, and the
//! indexed form ([`DirectoryData`]) that decisions read in O(1).
//!
//! The file format is documented in `config/directory.toml`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use hsmgate_wire::PublicKey;
use hsmgate_wire::text::validate_name;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Concurrent sessions one client may hold on one gateway unless the data
/// says otherwise: enough for a pooled PKCS#11 application, small enough
/// that one client cannot fill an HSM node (1024 sessions by default).
pub const DEFAULT_MAX_SESSIONS: u32 = 64;

/// Longest decision lifetime the directory hands out.
pub const MAX_TTL_SECONDS: u32 = 86_400;

/// The data file as written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryFile {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub tenants: Vec<TenantEntry>,
    #[serde(default)]
    pub partitions: Vec<PartitionEntry>,
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
}

/// Values used where an entry says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Lifetime of a decision in the gateways' caches.
    pub ttl_seconds: u32,
    /// Concurrent sessions per client on one gateway; 0 = unlimited (the
    /// gateway's own ceiling still applies).
    pub max_sessions: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            ttl_seconds: 60,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub name: String,
    /// Networks the tenant's clients may connect from, unless a client has
    /// its own list.
    #[serde(default)]
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// Unique across all tenants.
    pub name: String,
    pub tenant: String,
    /// The HSM pool the gateway must use for this partition.
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: String,
    pub tenant: String,
    /// `x25519:<64 hex digits>`: the key the client proves in the outer handshake.
    pub public_key: String,
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Overrides the tenant's networks when present.
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub max_sessions: Option<u32>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// One thing wrong with the data, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `clients[2].public_key`
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why data could not be loaded. The previous data, if any, stays in use.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read directory data {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("directory data {}: {message}", display_origin(path.as_deref()))]
    Syntax {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("directory data {} has {} problem(s):{}", display_origin(path.as_deref()), problems.len(), list(problems))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
    #[error("this directory was built from in-memory data and has no file to reload")]
    NoFile,
}

impl LoadError {
    /// Every validation problem (empty for I/O and syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    fn with_path(self, file: &Path) -> Self {
        match self {
            LoadError::Syntax { message, .. } => LoadError::Syntax {
                path: Some(file.to_owned()),
                message,
            },
            LoadError::Invalid { problems, .. } => LoadError::Invalid {
                path: Some(file.to_owned()),
                problems,
            },
            other => other,
        }
    }
}

fn display_origin(path: Option<&Path>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => "(in memory)".into(),
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// Counts of what was loaded, for the log line after a (re)load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub tenants: usize,
    pub partitions: usize,
    pub clients: usize,
    pub disabled_clients: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tenants, {} partitions, {} clients ({} disabled)",
            self.tenants, self.partitions, self.clients, self.disabled_clients
        )
    }
}

/// A client as the decision logic needs it.
#[derive(Debug, Clone)]
pub(crate) struct ClientRecord {
    pub(crate) tenant: String,
    pub(crate) key: PublicKey,
    pub(crate) partitions: HashSet<String>,
    pub(crate) networks: Vec<IpNet>,
    /// `networks` in text form, ready for the response.
    pub(crate) network_texts: Vec<String>,
    pub(crate) max_sessions: u32,
    pub(crate) enabled: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct PartitionRecord {
    pub(crate) pool: String,
}

/// Validated data, indexed by client id and partition name.
#[derive(Debug, Clone)]
pub struct DirectoryData {
    pub(crate) ttl_seconds: u32,
    pub(crate) clients: HashMap<String, ClientRecord>,
    pub(crate) partitions: HashMap<String, PartitionRecord>,
    summary: Summary,
}

impl DirectoryData {
    /// Parse and validate the text of a data file.
    pub fn from_toml_str(text: &str) -> Result<Self, LoadError> {
        DirectoryFile::parse(text)?.validate()
    }

    /// Read, parse and validate a data file.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| e.with_path(path))
    }

    pub fn summary(&self) -> Summary {
        self.summary
    }
}

impl DirectoryFile {
    /// Parse TOML; a syntax or type error names its line and column, never
    /// the line itself or a value (a secret pasted into the wrong file must
    /// not reach a log).
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        toml::from_str(text).map_err(|e| {
            let message = hsmgate_wire::text::config_message(e.message());
            let message = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            };
            LoadError::Syntax {
                path: None,
                message,
            }
        })
    }

    /// Check everything and build the index. Reports every problem found,
    /// not only the first.
    pub fn validate(&self) -> Result<DirectoryData, LoadError> {
        let mut v = Validator::default();

        if !(1..=MAX_TTL_SECONDS).contains(&self.defaults.ttl_seconds) {
            v.problem(
                "defaults.ttl_seconds",
                format!("must be between 1 and {MAX_TTL_SECONDS}"),
            );
        }

        let mut tenants: HashMap<&str, (usize, Vec<IpNet>)> = HashMap::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let at = format!("tenants[{i}]");
            v.name(&format!("{at}.name"), &tenant.name);
            let networks = v.networks(&format!("{at}.networks"), &tenant.networks);
            if let Some((first, _)) = tenants.get(tenant.name.as_str()) {
                v.problem(
                    &format!("{at}.name"),
                    format!(
                        "duplicate tenant {:?} (first at tenants[{first}])",
                        tenant.name
                    ),
                );
            } else {
                tenants.insert(&tenant.name, (i, networks));
            }
        }

        let mut partitions: HashMap<&str, (usize, &PartitionEntry)> = HashMap::new();
        for (i, partition) in self.partitions.iter().enumerate() {
            let at = format!("partitions[{i}]");
            v.name(&format!("{at}.name"), &partition.name);
            v.name(&format!("{at}.pool"), &partition.pool);
            if !tenants.contains_key(partition.tenant.as_str()) {
                v.problem(
                    &format!("{at}.tenant"),
                    format!("unknown tenant {:?}", partition.tenant),
                );
            }
            if let Some((first, _)) = partitions.get(partition.name.as_str()) {
                v.problem(
                    &format!("{at}.name"),
                    format!(
                        "duplicate partition {:?} (first at partitions[{first}])",
                        partition.name
                    ),
                );
            } else {
                partitions.insert(&partition.name, (i, partition));
            }
        }

        let mut clients: HashMap<String, ClientRecord> = HashMap::new();
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (i, client) in self.clients.iter().enumerate() {
            let at = format!("clients[{i}]");
            v.name(&format!("{at}.id"), &client.id);
            let key = match PublicKey::from_text(&client.public_key) {
                Ok(key) => Some(key),
                Err(e) => {
                    v.problem(&format!("{at}.public_key"), e.to_string());
                    None
                }
            };
            let tenant = tenants.get(client.tenant.as_str());
            if tenant.is_none() {
                v.problem(
                    &format!("{at}.tenant"),
                    format!("unknown tenant {:?}", client.tenant),
                );
            }
            let mut allowed = HashSet::new();
            for (j, name) in client.partitions.iter().enumerate() {
                let path = format!("{at}.partitions[{j}]");
                match partitions.get(name.as_str()) {
                    None => v.problem(&path, format!("unknown partition {name:?}")),
                    Some((_, p)) if p.tenant != client.tenant => v.problem(
                        &path,
                        format!(
                            "partition {name:?} belongs to tenant {:?}, not {:?}",
                            p.tenant, client.tenant
                        ),
                    ),
                    Some(_) => {
                        allowed.insert(name.clone());
                    }
                }
            }
            let networks = match &client.networks {
                Some(own) => v.networks(&format!("{at}.networks"), own),
                None => tenant.map(|(_, nets)| nets.clone()).unwrap_or_default(),
            };
            if let Some(first) = first_index.get(client.id.as_str()) {
                v.problem(
                    &format!("{at}.id"),
                    format!(
                        "duplicate client {:?} (first at clients[{first}])",
                        client.id
                    ),
                );
                continue;
            }
            first_index.insert(&client.id, i);
            if let Some(key) = key {
                clients.insert(
                    client.id.clone(),
                    ClientRecord {
                        tenant: client.tenant.clone(),
                        key,
                        partitions: allowed,
                        network_texts: networks.iter().map(ToString::to_string).collect(),
                        networks,
                        max_sessions: client.max_sessions.unwrap_or(self.defaults.max_sessions),
                        enabled: client.enabled,
                    },
                );
            }
        }

        if !v.problems.is_empty() {
            return Err(LoadError::Invalid {
                path: None,
                problems: v.problems,
            });
        }
        let summary = Summary {
            tenants: tenants.len(),
            partitions: partitions.len(),
            clients: clients.len(),
            disabled_clients: clients.values().filter(|c| !c.enabled).count(),
        };
        Ok(DirectoryData {
            ttl_seconds: self.defaults.ttl_seconds,
            partitions: partitions
                .into_iter()
                .map(|(name, (_, p))| {
                    (
                        name.to_owned(),
                        PartitionRecord {
                            pool: p.pool.clone(),
                        },
                    )
                })
                .collect(),
            clients,
            summary,
        })
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message,
        });
    }

    fn name(&mut self, path: &str, name: &str) {
        if let Err(why) = validate_name(name) {
            self.problem(path, format!("invalid name {name:?}: {why}"));
        }
    }

    /// Parse a list of CIDRs, reporting each bad one; host bits are cleared
    /// (`10.1.2.3/8` means `10.0.0.0/8`).
    fn networks(&mut self, path: &str, texts: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(texts.len());
        for (j, text) in texts.iter().enumerate() {
            match text.trim().parse::<IpNet>() {
                Ok(net) => nets.push(net.trunc()),
                Err(e) => self.problem(
                    &format!("{path}[{j}]"),
                    format!("bad network {text:?}: {e} (expected CIDR like \"10.0.0.0/8\")"),
                ),
            }
        }
        nets
    }
}
