//! The gateway's configuration file (TOML) and its validation.
//!
//! Every table refuses unknown fields and every field but `gateway_id`,
//! `key_file`, `listeners` and `pools` has a default. [`GatewayConfig::validate`]
//! reports every problem at once, each with the path of the field it concerns
//! (`pools[1].members[0]: ...`), so that a bad file is fixed in one pass.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsmgate_wire::text::validate_name;

use crate::upstream::balance::Policy;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole configuration of one gateway instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This instance's name: sent to clients in the Challenge and to the
    /// directory for its audit log.
    pub gateway_id: String,
    /// The gateway's static key pair file (`hsmgate keygen --out FILE`).
    pub key_file: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub revocation: RevocationConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Settings of the QUIC listeners (`transport = "quic"`).
    #[serde(default)]
    pub quic: QuicConfig,
    pub pools: Vec<PoolConfig>,
}

/// What carries a listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One session per TCP connection (PROTOCOL.md §1-§4).
    #[default]
    Tcp,
    /// QUIC: one authenticated connection, one session per stream
    /// (PROTOCOL.md §11), on the listener's address over UDP.
    Quic,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// When a QUIC listener asks a new client to prove its address (a Retry
/// packet, one round trip more) before it does any handshake work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    /// Every connection.
    Always,
    /// Once half of `limits.max_handshakes` are in progress.
    UnderLoad,
    /// Never.
    Never,
}

/// The bounds of the QUIC listeners: every one in config, every one counted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Sessions (streams) a client may have open at once on one connection,
    /// the first stream included.
    pub max_streams_per_connection: u32,
    /// A connection with no packet for this long is closed (both ends agree
    /// on the smaller of their values).
    pub idle_timeout_ms: u64,
    /// Bytes a client may send on one stream ahead of the gateway's reads.
    pub stream_receive_window: u32,
    /// Bytes a client may send on all streams of a connection ahead of the
    /// gateway's reads.
    pub connection_receive_window: u32,
    /// Address validation with a Retry packet.
    pub retry: RetryPolicy,
    /// Let a client's connection move to a new address (NAT rebinding, a
    /// new network). The new address is checked like a new connection's;
    /// a refused one closes the connection. Off: packets from a new address
    /// are dropped.
    pub migration: bool,
    /// How often a connection's address is compared with the one last
    /// checked.
    pub path_check_interval_ms: u64,
    /// Receive and send buffer of the listener's UDP socket, bytes (the
    /// kernel caps it at `net.core.rmem_max` / `wmem_max`).
    pub udp_buffer: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            max_streams_per_connection: 128,
            idle_timeout_ms: 60_000,
            stream_receive_window: 256 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            retry: RetryPolicy::UnderLoad,
            migration: true,
            path_check_interval_ms: 250,
            udp_buffer: 4 * 1024 * 1024,
        }
    }
}

impl QuicConfig {
    fn validate(&self, problems: &mut Problems) {
        if !(1..=10_000).contains(&self.max_streams_per_connection) {
            problems.add("quic.max_streams_per_connection", "must be 1..=10000");
        }
        if !(1_000..=600_000).contains(&self.idle_timeout_ms) {
            problems.add("quic.idle_timeout_ms", "must be 1000..=600000 milliseconds");
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.stream_receive_window) {
            problems.add(
                "quic.stream_receive_window",
                "must be 4096..=16777216 bytes",
            );
        }
        if self.connection_receive_window < self.stream_receive_window
            || self.connection_receive_window > 256 * 1024 * 1024
        {
            problems.add(
                "quic.connection_receive_window",
                "must be quic.stream_receive_window..=268435456 bytes",
            );
        }
        if !(65_536..=256 * 1024 * 1024).contains(&self.udp_buffer) {
            problems.add("quic.udp_buffer", "must be 65536..=268435456 bytes");
        }
        if !(10..=10_000).contains(&self.path_check_interval_ms) {
            problems.add(
                "quic.path_check_interval_ms",
                "must be 10..=10000 milliseconds",
            );
        }
    }
}

/// Ending live sessions of clients the directory no longer allows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Re-check the authorization of every live session.
    pub enabled: bool,
    /// Time between two checks of the live sessions. Each distinct question
    /// is asked once per check and answered by the decision cache while the
    /// directory's answer is valid, so the directory sees one call per
    /// client per answer lifetime, not per check or per session.
    pub check_interval_ms: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            enabled: true,
            check_interval_ms: 60_000,
        }
    }
}

/// Active health checks of HSM nodes: the node's probe (PING → PONG).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between two probes of one member.
    pub interval_ms: u64,
    /// Bound on one probe, connect included.
    pub timeout_ms: u64,
    /// Consecutive failed probes that take a member out of rotation.
    pub unhealthy_after: u32,
    /// Consecutive good probes that bring it back.
    pub healthy_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 2_000,
            timeout_ms: 1_000,
            unhealthy_after: 2,
            healthy_after: 1,
        }
    }
}

/// The admin HTTP listener: /metrics, /healthz, /readyz, /config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoints at all.
    pub enabled: bool,
    /// Where to serve; keep it on loopback or a management network.
    pub address: SocketAddr,
    /// A file whose first line is the bearer token that `/config` (and,
    /// with `metrics_require_token`, `/metrics`) requires. Read at each
    /// such request, so a rotated Kubernetes secret applies at once.
    /// Required when `address` is not loopback and `/config` is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Serve `/config` at all.
    pub config_endpoint: bool,
    /// `/metrics` requires the token too (Prometheus: `authorization` /
    /// `bearer_token_file` in the scrape config).
    pub metrics_require_token: bool,
    /// Serve the admin endpoints over TLS with this certificate chain (PEM)
    /// and key; both or neither. Re-read on SIGHUP and when they change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9300)),
            token_file: None,
            config_endpoint: true,
            metrics_require_token: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl AdminConfig {
    fn validate(&self, problems: &mut Problems) {
        if !self.enabled {
            return;
        }
        let exposed = !self.address.ip().is_loopback();
        if exposed && self.config_endpoint && self.token_file.is_none() {
            problems.add(
                "admin.token_file",
                "required when admin.address is not a loopback address and /config is served \
                 (or set admin.config_endpoint = false)",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            problems.add(
                "admin.tls_cert_file",
                "admin TLS needs both tls_cert_file and tls_key_file",
            );
        }
        if self.metrics_require_token && self.token_file.is_none() {
            problems.add(
                "admin.token_file",
                "required by admin.metrics_require_token = true",
            );
        }
    }
}

/// One TCP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Label in metrics and logs.
    #[serde(default = "default_listener_name")]
    pub name: String,
    pub address: SocketAddr,
    /// Length of the kernel's accept queue.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Sockets bound to this address with SO_REUSEPORT, each with its own
    /// accept loop; the kernel spreads new connections over them.
    #[serde(default = "default_accept_loops")]
    pub accept_loops: u32,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a
    /// trusted load balancer; its source address is the client's for the
    /// allow-lists, the limits and the logs.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Load balancers allowed to connect to a `proxy_protocol` listener.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// `tcp` (the default) or `quic` (UDP, the same port number may be
    /// used by a TCP listener too).
    #[serde(default)]
    pub transport: Transport,
}

impl ListenerConfig {
    /// A plain listener with the defaults.
    pub fn new(name: &str, address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: name.to_owned(),
            address,
            backlog: default_backlog(),
            accept_loops: default_accept_loops(),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            transport: Transport::Tcp,
        }
    }

    /// A QUIC listener with the defaults.
    pub fn quic(name: &str, address: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            transport: Transport::Quic,
            ..ListenerConfig::new(name, address)
        }
    }
}

fn default_accept_loops() -> u32 {
    1
}

fn default_listener_name() -> String {
    "main".into()
}

fn default_backlog() -> u32 {
    1024
}

/// Source-address lists checked at accept, before any byte is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Networks that may connect at all. Empty refuses everyone.
    pub allow: Vec<IpNet>,
    /// Networks refused even when inside `allow`.
    pub deny: Vec<IpNet>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            allow: vec![
                "0.0.0.0/0".parse().expect("literal network"),
                "::/0".parse().expect("literal network"),
            ],
            deny: Vec::new(),
        }
    }
}

/// Time bounds, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From accept to the Decision written: handshake and directory lookup.
    pub handshake_ms: u64,
    /// From accept to the client's first frame (the Hello): a connection
    /// silent for longer is closed. At most `handshake_ms` in effect.
    pub first_frame_ms: u64,
    /// One TCP connect attempt to an HSM node.
    pub hsm_connect_ms: u64,
    /// A forwarded session with no byte in either direction for this long is closed.
    pub idle_ms: u64,
    /// On SIGTERM, how long running sessions may continue before they are cut.
    pub drain_ms: u64,
    /// Longest life of a forwarded session; 0 = no limit. HSM clients keep
    /// sessions open for a long time: the default does not cut them.
    pub max_session_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake_ms: 5_000,
            first_frame_ms: 1_000,
            hsm_connect_ms: 1_000,
            idle_ms: 900_000,
            drain_ms: 30_000,
            max_session_ms: 0,
        }
    }
}

impl Timeouts {
    pub fn handshake(&self) -> Duration {
        Duration::from_millis(self.handshake_ms)
    }
    pub fn first_frame(&self) -> Duration {
        Duration::from_millis(self.first_frame_ms.min(self.handshake_ms))
    }
    pub fn hsm_connect(&self) -> Duration {
        Duration::from_millis(self.hsm_connect_ms)
    }
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
    pub fn max_session(&self) -> Option<Duration> {
        (self.max_session_ms > 0).then(|| Duration::from_millis(self.max_session_ms))
    }
}

/// Bounds on connections and buffers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent connections, in handshake or forwarding; more are refused
    /// at accept with code 3 (over limit).
    pub max_connections: usize,
    /// Of those, connections still in their handshake (accept to Decision);
    /// at most `max_connections` in effect. When all are taken, the
    /// connection silent longest (no Hello yet) is closed to make room; when
    /// all have spoken, new ones are refused.
    pub max_handshakes: usize,
    /// Other HSM nodes tried when a connect fails, before giving up.
    pub hsm_connect_retries: usize,
    /// Concurrent connections from one source address; 0 = no limit.
    pub max_connections_per_source: u32,
    /// New connections (handshakes) per second from one source address,
    /// refilled continuously; 0 = no limit.
    pub handshakes_per_second_per_source: u32,
    /// Handshakes one source may start at once after being quiet.
    pub handshake_burst_per_source: u32,
    /// Prefix length that makes an IPv6 source for the per-source limits:
    /// every address of one such network counts as one source.
    pub ipv6_source_prefix: u8,
    /// Ceiling on one client's concurrent sessions on this gateway, applied
    /// on top of the directory's `max_sessions` (the lower one wins) and in
    /// its place when the directory says 0 (no limit); 0 = no ceiling.
    pub max_sessions_per_client: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_handshakes: 1_000,
            hsm_connect_retries: 2,
            max_connections_per_source: 1_000,
            handshakes_per_second_per_source: 100,
            handshake_burst_per_source: 200,
            ipv6_source_prefix: 64,
            max_sessions_per_client: 256,
        }
    }
}

/// The directory service and the decision cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// `https://host:port` of the directory's gRPC endpoint (TLS 1.3), or
    /// `http://host:port` with `allow_plaintext = true`.
    pub endpoint: String,
    /// Accept an `http://` endpoint: the directory's answers (the grants)
    /// then cross the network in clear and anyone on the path can forge
    /// them. Warned about at start.
    pub allow_plaintext: bool,
    /// PEM bundle of the CAs that may sign the directory's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Trust the system's CA bundle too (`$SSL_CERT_FILE`, else the usual
    /// paths of Debian, RHEL, Alpine, ...).
    pub system_roots: bool,
    /// The name the directory's certificate must carry, when it is not the
    /// endpoint's host (for example when the endpoint is an IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// This gateway's certificate chain (PEM) for mutual TLS; with
    /// `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// The private key of `client_cert_file` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Bound on the TCP connect and the TLS handshake together.
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Most cached answers.
    pub cache_max_entries: u64,
    /// Cap on the lifetime the directory gives an answer.
    pub cache_max_ttl_secs: u64,
    /// Lifetime of a cached identity denial (unknown client, wrong key, ...).
    pub cache_deny_ttl_secs: u64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            endpoint: "https://127.0.0.1:7100".into(),
            allow_plaintext: false,
            ca_file: None,
            system_roots: false,
            server_name: None,
            client_cert_file: None,
            client_key_file: None,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 2_000,
            cache_max_entries: 100_000,
            cache_max_ttl_secs: 300,
            cache_deny_ttl_secs: 5,
        }
    }
}

impl DirectoryConfig {
    /// Whether the endpoint is `https://`.
    pub fn uses_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// The TLS files of the directory link.
    pub fn tls_files(&self) -> hsmgate_authz::tls::ClientTlsFiles {
        hsmgate_authz::tls::ClientTlsFiles {
            ca_file: self.ca_file.clone(),
            system_roots: self.system_roots,
            server_name: self.server_name.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    pub fn client_config(&self) -> hsmgate_authz::ClientConfig {
        hsmgate_authz::ClientConfig {
            endpoint: self.endpoint.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            tls: self.uses_tls().then(|| self.tls_files()),
        }
    }

    pub fn cache_config(&self) -> hsmgate_authz::CacheConfig {
        hsmgate_authz::CacheConfig {
            max_entries: self.cache_max_entries,
            max_ttl: Duration::from_secs(self.cache_max_ttl_secs),
            deny_ttl: Duration::from_secs(self.cache_deny_ttl_secs),
        }
    }

    /// Relative TLS file paths are relative to the config file.
    fn resolve_paths(&mut self, base_dir: &Path) {
        for file in [
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base_dir.join(&*file);
            }
        }
    }

    fn validate(&self, problems: &mut Problems) {
        let tls_fields = [
            ("directory.ca_file", self.ca_file.is_some()),
            ("directory.system_roots", self.system_roots),
            ("directory.server_name", self.server_name.is_some()),
            (
                "directory.client_cert_file",
                self.client_cert_file.is_some(),
            ),
            ("directory.client_key_file", self.client_key_file.is_some()),
        ];
        let rest = match (
            self.endpoint.strip_prefix("https://"),
            self.endpoint.strip_prefix("http://"),
        ) {
            (Some(rest), _) => {
                if self.ca_file.is_none() && !self.system_roots {
                    problems.add(
                        "directory.ca_file",
                        "an https:// endpoint needs the CA that signs the directory's \
                         certificate (ca_file, or system_roots = true)",
                    );
                }
                match (&self.client_cert_file, &self.client_key_file) {
                    (Some(_), None) => problems.add(
                        "directory.client_key_file",
                        "required with client_cert_file (mutual TLS)",
                    ),
                    (None, Some(_)) => problems.add(
                        "directory.client_cert_file",
                        "required with client_key_file (mutual TLS)",
                    ),
                    _ => {}
                }
                if let Some(name) = &self.server_name
                    && self.tls_files().server_name(name).is_err()
                {
                    problems.add(
                        "directory.server_name",
                        "must be a DNS name or an IP address",
                    );
                }
                if self.allow_plaintext {
                    problems.add(
                        "directory.allow_plaintext",
                        "only meaningful with an http:// endpoint",
                    );
                }
                Some(rest)
            }
            (None, Some(rest)) => {
                if !self.allow_plaintext {
                    problems.add(
                        "directory.endpoint",
                        "http:// sends the directory's answers in clear: anyone on the path \
                         can forge grants; use https:// (with ca_file), or set \
                         directory.allow_plaintext = true",
                    );
                }
                for (field, set) in tls_fields {
                    if set {
                        problems.add(field, "only meaningful with an https:// endpoint");
                    }
                }
                Some(rest)
            }
            (None, None) => None,
        };
        if !rest.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)) {
            problems.add(
                "directory.endpoint",
                "must be https://host:port (or http://host:port with allow_plaintext = true)",
            );
        } else if self.endpoint.contains('@') {
            // It would be shown by /config and logged: no credentials here.
            problems.add(
                "directory.endpoint",
                "must not carry credentials (user:password@)",
            );
        }
    }
}

impl GatewayConfig {
    /// Whether any session may be forwarded by the kernel (`forwarding.mode`
    /// or a pool's `forwarding`): the BPF program is loaded at start.
    pub fn uses_kernel_forwarding(&self) -> bool {
        self.forwarding.mode == ForwardMode::Kernel
            || self
                .pools
                .iter()
                .any(|p| p.forwarding == Some(ForwardMode::Kernel))
    }

    /// Whether any session may be spliced: the pipe pool is made.
    pub fn uses_splice(&self) -> bool {
        self.forwarding.mode != ForwardMode::Copy
            || self
                .pools
                .iter()
                .any(|p| p.forwarding.is_some_and(|m| m != ForwardMode::Copy))
    }

    /// The data path of sessions to the pool named `pool`.
    pub fn forward_mode(&self, pool: &str) -> ForwardMode {
        self.pools
            .iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.forwarding)
            .unwrap_or(self.forwarding.mode)
    }
}

/// How granted sessions are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// `splice` (zero-copy through a pipe pair, falling back to a copy when
    /// the kernel refuses), `copy` (always a buffered copy) or `kernel`
    /// (a BPF program forwards granted sessions; splice where it cannot be
    /// loaded). Changing it to or from `kernel` needs a restart.
    pub mode: ForwardMode,
    /// Kernel mode: sessions the BPF maps have room for; more are spliced.
    pub kernel_max_sessions: u32,
    /// Kernel mode: bytes one direction may have forwarded and not yet
    /// acknowledged by the receiving peer; beyond them the session is
    /// copied in user space (the kernel does not hold a sender back).
    pub kernel_budget: u64,
    /// Size of each splice pipe (F_SETPIPE_SZ), bytes.
    pub pipe_size: usize,
    /// Buffer of the copy path, bytes, per direction.
    pub copy_buffer: usize,
    /// Empty splice pipes kept for reuse; sessions take a pipe only while
    /// bytes move, so idle sessions pin none.
    pub max_idle_pipes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    Splice,
    Copy,
    Kernel,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            mode: ForwardMode::Splice,
            kernel_max_sessions: 65_536,
            kernel_budget: 256 * 1024,
            pipe_size: 64 * 1024,
            copy_buffer: 16 * 1024,
            max_idle_pipes: 1024,
        }
    }
}

/// One named pool of HSM nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `host:port` of each HSM node (IP literals). Exactly one of `members`
    /// and `dns` is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<SocketAddr>,
    /// How sessions are spread over the members.
    #[serde(default)]
    pub policy: Policy,
    /// One weight per member, in the order of `members` (0..=100; 0 drains
    /// the member). Empty: every member weighs 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    /// Members from DNS instead of `members` (`discovery.rs`): `host:port`
    /// (every A and AAAA address, weight 1) or `_service._proto.domain` (SRV
    /// records: the lowest priority, the record's port and weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// This pool's data path, instead of `forwarding.mode`: e.g. `kernel`
    /// for a pool of request/response traffic while bulk pools splice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<ForwardMode>,
}

/// How DNS pools (`pools[].dns`) are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// `IP:port` of the DNS server to ask; none: the system's resolvers
    /// (/etc/resolv.conf, and the hosts file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
    /// Shortest time between two resolutions of a name, whatever its TTL.
    pub min_ttl_secs: u64,
    /// Longest time an answer is used before the name is resolved again.
    pub max_ttl_secs: u64,
    /// Time before trying again after a failed or empty resolution.
    pub retry_secs: u64,
    /// Bound on one DNS query (a resolution round: four times this).
    pub timeout_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            nameserver: None,
            min_ttl_secs: 5,
            max_ttl_secs: 300,
            retry_secs: 5,
            timeout_ms: 2_000,
        }
    }
}

impl DiscoveryConfig {
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.min_ttl_secs)
    }
    pub fn max_ttl(&self) -> Duration {
        Duration::from_secs(self.max_ttl_secs)
    }
    pub fn retry(&self) -> Duration {
        Duration::from_secs(self.retry_secs)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl PoolConfig {
    /// The weight of each member.
    pub fn weights_or_default(&self) -> Vec<u32> {
        if self.weights.is_empty() {
            vec![crate::upstream::balance::DEFAULT_WEIGHT; self.members.len()]
        } else {
            self.weights.clone()
        }
    }
}

/// One problem found in a config: the field's path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
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
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The parser's message and where; never the offending line itself,
    /// which could be a secret pasted into the file.
    #[error("{path}: {}", .problem)]
    Parse { path: PathBuf, problem: String },
    #[error("{path} is invalid: {}", join(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// Every problem on a line of its own (one line for read and parse errors).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            ConfigError::Parse { problem, .. } => vec![problem.clone()],
            other => vec![other.to_string()],
        }
    }
}

/// "line L, column C: message" for a TOML error, without quoting the line.
fn parse_problem(text: &str, e: &toml::de::Error) -> String {
    let message = hsmgate_wire::text::config_message(e.message());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            match field_at(text, line) {
                Some(field) => format!("line {line}, column {column} ({field}): {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_owned(),
    }
}

/// The dotted name of the key set on line `line` (1-based), with its table:
/// only names, never the value.
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let key = here.split_once('=')?.0.trim();
    // Only words that cannot be key material are shown.
    let is_name = hsmgate_wire::text::looks_like_a_name;
    if !is_name(key) {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim())
        .filter(|t| is_name(t));
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

fn join(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl GatewayConfig {
    /// Read, parse and validate a file; a relative `key_file` is resolved
    /// against the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        GatewayConfig::from_toml(&text, base).map_err(|e| match e {
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

    /// Parse and validate TOML text; relative paths are joined to `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<GatewayConfig, ConfigError> {
        let mut config: GatewayConfig =
            toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
                path: PathBuf::from("<text>"),
                problem: parse_problem(text, &e),
            })?;
        if config.key_file.is_relative() {
            config.key_file = base_dir.join(&config.key_file);
        }
        config.directory.resolve_paths(base_dir);
        for file in [
            &mut config.admin.token_file,
            &mut config.admin.tls_cert_file,
            &mut config.admin.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base_dir.join(&*file);
            }
        }
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: PathBuf::from("<text>"),
            problems,
        })?;
        Ok(config)
    }

    /// Every problem with this config, or nothing.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Problems::default();
        if let Err(why) = validate_name(&self.gateway_id) {
            problems.add("gateway_id", why);
        }
        if self.listeners.is_empty() {
            problems.add("listeners", "at least one listener is required");
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(why) = validate_name(&l.name) {
                problems.add(format!("listeners[{i}].name"), why);
            } else if !names.insert(&l.name) {
                problems.add(format!("listeners[{i}].name"), "duplicate listener name");
            }
            if l.backlog == 0 || l.backlog > 65_535 {
                problems.add(format!("listeners[{i}].backlog"), "must be 1..=65535");
            }
            if !(1..=64).contains(&l.accept_loops) {
                problems.add(format!("listeners[{i}].accept_loops"), "must be 1..=64");
            }
            if l.proxy_protocol && l.trusted_proxies.is_empty() {
                problems.add(
                    format!("listeners[{i}].trusted_proxies"),
                    "a proxy_protocol listener needs the networks of its load balancers",
                );
            }
            if !l.proxy_protocol && !l.trusted_proxies.is_empty() {
                problems.add(
                    format!("listeners[{i}].trusted_proxies"),
                    "only meaningful with proxy_protocol = true",
                );
            }
            if l.transport == Transport::Quic {
                if l.proxy_protocol {
                    problems.add(
                        format!("listeners[{i}].proxy_protocol"),
                        "a quic listener sees the client's own address; the PROXY protocol is for tcp",
                    );
                }
                if l.accept_loops != 1 {
                    problems.add(
                        format!("listeners[{i}].accept_loops"),
                        "must be 1 for a quic listener",
                    );
                }
            }
        }
        self.quic.validate(&mut problems);
        self.admin.validate(&mut problems);
        self.validate_timeouts(&mut problems);
        self.validate_limits(&mut problems);
        self.validate_directory(&mut problems);
        self.validate_pools(&mut problems);
        self.validate_discovery(&mut problems);
        let h = &self.health;
        if !(100..=3_600_000).contains(&h.interval_ms) {
            problems.add("health.interval_ms", "must be 100..=3600000 milliseconds");
        }
        if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
            problems.add("health.timeout_ms", "must be 1..=health.interval_ms");
        }
        for (field, value) in [
            ("health.unhealthy_after", h.unhealthy_after),
            ("health.healthy_after", h.healthy_after),
        ] {
            if !(1..=100).contains(&value) {
                problems.add(field, "must be 1..=100");
            }
        }
        let f = &self.forwarding;
        if !(4096..=16 * 1024 * 1024).contains(&f.pipe_size) {
            problems.add("forwarding.pipe_size", "must be 4096..=16777216 bytes");
        }
        if !(1024..=1024 * 1024).contains(&f.copy_buffer) {
            problems.add("forwarding.copy_buffer", "must be 1024..=1048576 bytes");
        }
        if f.max_idle_pipes > 65_536 {
            problems.add("forwarding.max_idle_pipes", "must be at most 65536");
        }
        if !(1..=1_048_576).contains(&f.kernel_max_sessions) {
            problems.add("forwarding.kernel_max_sessions", "must be 1..=1048576");
        }
        if !(16 * 1024..=64 * 1024 * 1024).contains(&f.kernel_budget) {
            problems.add("forwarding.kernel_budget", "must be 16384..=67108864 bytes");
        }
        let r = &self.revocation;
        if !(100..=86_400_000).contains(&r.check_interval_ms) {
            problems.add(
                "revocation.check_interval_ms",
                "must be 100..=86400000 milliseconds",
            );
        }
        if self.timeouts.max_session_ms > 30 * 24 * 3_600_000 {
            problems.add(
                "timeouts.max_session_ms",
                "must be at most 30 days (0 = no limit)",
            );
        }
        problems.finish()
    }

    fn validate_timeouts(&self, problems: &mut Problems) {
        let t = &self.timeouts;
        if t.first_frame_ms == 0 || t.first_frame_ms > 60_000 {
            problems.add("timeouts.first_frame_ms", "must be 1..=60000 milliseconds");
        }
        for (field, value, max) in [
            ("timeouts.handshake_ms", t.handshake_ms, 60_000),
            ("timeouts.hsm_connect_ms", t.hsm_connect_ms, 60_000),
            ("timeouts.idle_ms", t.idle_ms, 7 * 24 * 3_600_000),
            ("timeouts.drain_ms", t.drain_ms, 3_600_000),
        ] {
            if value == 0 || value > max {
                problems.add(field, format!("must be 1..={max} milliseconds"));
            }
        }
    }

    fn validate_limits(&self, problems: &mut Problems) {
        let l = &self.limits;
        if l.max_connections == 0 {
            problems.add("limits.max_connections", "must be at least 1");
        }
        if l.max_handshakes == 0 {
            problems.add("limits.max_handshakes", "must be at least 1");
        }
        if !(32..=128).contains(&l.ipv6_source_prefix) {
            problems.add("limits.ipv6_source_prefix", "must be 32..=128");
        }
        if l.handshakes_per_second_per_source > 0 && l.handshake_burst_per_source == 0 {
            problems.add(
                "limits.handshake_burst_per_source",
                "must be at least 1 when handshakes are rate limited",
            );
        }
        if l.hsm_connect_retries > 16 {
            problems.add("limits.hsm_connect_retries", "must be at most 16");
        }
    }

    fn validate_directory(&self, problems: &mut Problems) {
        let d = &self.directory;
        d.validate(problems);
        for (field, value) in [
            ("directory.connect_timeout_ms", d.connect_timeout_ms),
            ("directory.request_timeout_ms", d.request_timeout_ms),
        ] {
            if value == 0 || value > 60_000 {
                problems.add(field, "must be 1..=60000 milliseconds");
            }
        }
        if d.cache_max_entries == 0 {
            problems.add("directory.cache_max_entries", "must be at least 1");
        }
        if d.cache_max_ttl_secs > 86_400 {
            problems.add("directory.cache_max_ttl_secs", "must be at most 86400");
        }
        if d.cache_deny_ttl_secs > d.cache_max_ttl_secs {
            problems.add(
                "directory.cache_deny_ttl_secs",
                "must not exceed cache_max_ttl_secs",
            );
        }
    }

    fn validate_pools(&self, problems: &mut Problems) {
        if self.pools.is_empty() {
            problems.add("pools", "at least one pool is required");
        }
        let mut names = HashSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if let Err(why) = validate_name(&pool.name) {
                problems.add(format!("pools[{i}].name"), why);
            } else if !names.insert(&pool.name) {
                problems.add(format!("pools[{i}].name"), "duplicate pool name");
            }
            match (&pool.dns, pool.members.is_empty()) {
                (None, true) => problems.add(
                    format!("pools[{i}].members"),
                    "a pool needs a member, or dns to discover its members",
                ),
                (Some(_), false) => problems.add(
                    format!("pools[{i}].dns"),
                    "a pool takes either members or dns, not both",
                ),
                (Some(dns), true) => {
                    if let Err(why) = crate::upstream::discovery::DnsTarget::parse(dns) {
                        problems.add(format!("pools[{i}].dns"), why);
                    }
                }
                (None, false) => {}
            }
            if pool.dns.is_some() && !pool.weights.is_empty() {
                problems.add(
                    format!("pools[{i}].weights"),
                    "not allowed with dns: DNS members weigh 1, or their SRV record's weight",
                );
            } else if !pool.weights.is_empty() {
                if pool.weights.len() != pool.members.len() {
                    problems.add(
                        format!("pools[{i}].weights"),
                        "needs one weight per member, in the order of members",
                    );
                } else if let Err(why) =
                    crate::upstream::balance::validate_pool_weights(&pool.weights)
                {
                    problems.add(format!("pools[{i}].weights"), why);
                }
                for (j, &w) in pool.weights.iter().enumerate() {
                    if let Err(why) = crate::upstream::balance::validate_weight(w) {
                        problems.add(format!("pools[{i}].weights[{j}]"), why);
                    }
                }
            }
            let mut seen = HashSet::new();
            for (j, m) in pool.members.iter().enumerate() {
                if !seen.insert(m) {
                    problems.add(format!("pools[{i}].members[{j}]"), "duplicate member");
                }
                if m.port() == 0 || m.ip().is_unspecified() {
                    problems.add(
                        format!("pools[{i}].members[{j}]"),
                        "needs a concrete address and a port",
                    );
                }
            }
        }
    }

    fn validate_discovery(&self, problems: &mut Problems) {
        let d = &self.discovery;
        if let Some(ns) = d.nameserver
            && (ns.port() == 0 || ns.ip().is_unspecified())
        {
            problems.add(
                "discovery.nameserver",
                "needs a concrete address and a port (e.g. 10.0.0.53:53)",
            );
        }
        if !(1..=3_600).contains(&d.min_ttl_secs) {
            problems.add("discovery.min_ttl_secs", "must be 1..=3600 seconds");
        }
        if d.max_ttl_secs < d.min_ttl_secs || d.max_ttl_secs > 86_400 {
            problems.add(
                "discovery.max_ttl_secs",
                "must be discovery.min_ttl_secs..=86400 seconds",
            );
        }
        if !(1..=3_600).contains(&d.retry_secs) {
            problems.add("discovery.retry_secs", "must be 1..=3600 seconds");
        }
        if !(1..=60_000).contains(&d.timeout_ms) {
            problems.add("discovery.timeout_ms", "must be 1..=60000 milliseconds");
        }
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), Vec<ConfigProblem>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
gateway_id = "gw-1"
key_file = "gateway.key"

[[listeners]]
address = "127.0.0.1:2300"

[[pools]]
name = "default"
members = ["127.0.0.1:2401"]

[directory]
endpoint = "http://127.0.0.1:7100"
allow_plaintext = true
"#;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_toml(text, Path::new("/etc/hsmgate"))
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text).expect_err("config must be refused").problems()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).expect("minimal config");
        assert_eq!(c.key_file, Path::new("/etc/hsmgate/gateway.key"));
        assert_eq!(c.listeners[0].name, "main");
        assert_eq!(c.listeners[0].backlog, 1024);
        assert_eq!(c.timeouts.handshake_ms, 5_000);
        assert_eq!(c.forwarding.mode, ForwardMode::Splice);
        assert_eq!(c.admission.allow.len(), 2);
        assert!(c.admission.deny.is_empty());
    }

    #[test]
    fn kernel_forwarding_takes_its_settings_within_bounds() {
        let text = format!(
            "{MINIMAL}\n[forwarding]\nmode = \"kernel\"\nkernel_max_sessions = 1000\nkernel_budget = 65536\n"
        );
        let c = parse(&text).expect("kernel mode");
        assert_eq!(c.forwarding.mode, ForwardMode::Kernel);
        assert_eq!(c.forwarding.kernel_max_sessions, 1000);
        assert_eq!(c.forwarding.kernel_budget, 65536);
        let text = format!(
            "{MINIMAL}\n[forwarding]\nmode = \"kernel\"\nkernel_max_sessions = 0\nkernel_budget = 1024\n"
        );
        let p = problems(&text);
        for expected in [
            "forwarding.kernel_max_sessions:",
            "forwarding.kernel_budget:",
        ] {
            assert!(
                p.iter().any(|line| line.starts_with(expected)),
                "{expected} missing from {p:?}"
            );
        }
    }

    #[test]
    fn a_pool_may_choose_its_own_data_path() {
        let text = MINIMAL.replacen("[[pools]]", "[[pools]]\nforwarding = \"kernel\"", 1);
        let c = parse(&text).expect("pool forwarding");
        let pool = &c.pools[0].name;
        assert_eq!(c.forward_mode(pool), ForwardMode::Kernel);
        assert_eq!(c.forward_mode("no such pool"), ForwardMode::Splice);
        assert!(c.uses_kernel_forwarding());
        assert!(c.uses_splice());
        let p = problems(&MINIMAL.replacen("[[pools]]", "[[pools]]\nforwarding = \"fast\"", 1));
        assert!(p.iter().any(|l| l.contains("fast")), "{p:?}");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!("{MINIMAL}\n[timeouts]\nhandshake_secs = 5\n");
        let p = problems(&text);
        assert!(p[0].contains("handshake_secs"), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
gateway_id = "gw 1"
key_file = "k"
listeners = []

[timeouts]
handshake_ms = 0

[directory]
endpoint = "127.0.0.1:7100"

[[pools]]
name = "a"
members = []

[[pools]]
name = "a"
members = ["127.0.0.1:1", "127.0.0.1:1"]
"#;
        let p = problems(text);
        for expected in [
            "gateway_id:",
            "listeners:",
            "timeouts.handshake_ms:",
            "directory.endpoint:",
            "pools[0].members:",
            "pools[1].name: duplicate",
            "pools[1].members[1]: duplicate",
        ] {
            assert!(
                p.iter().any(|line| line.starts_with(expected)),
                "{expected} missing from {p:?}"
            );
        }
    }

    #[test]
    fn a_parse_error_says_where_but_never_quotes_the_line() {
        let secret =
            "x25519-private:1111111111111111111111111111111111111111111111111111111111111111";
        let text = format!("{MINIMAL}\nprivate = \"{secret}\"\n");
        let p = problems(&text);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("line 16"), "{p:?}");
        assert!(p[0].contains("private"), "names the field: {p:?}");
        assert!(!p[0].contains("1111111111"), "quotes no value: {p:?}");
        let err = parse(&text).expect_err("refused").to_string();
        assert!(!err.contains("1111111111"), "{err}");
    }

    #[test]
    fn a_directory_endpoint_with_credentials_is_refused() {
        let text = MINIMAL.replace("http://127.0.0.1", "http://u:pw@127.0.0.1");
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|l| l.starts_with("directory.endpoint: must not carry credentials")),
            "{p:?}"
        );
    }

    /// MINIMAL with its `[directory]` table replaced by `directory`.
    fn with_directory(directory: &str) -> String {
        let base = &MINIMAL[..MINIMAL.find("[directory]").expect("table")];
        format!("{base}[directory]\n{directory}")
    }

    #[test]
    fn an_https_directory_with_a_ca_and_a_client_certificate_is_accepted() {
        let c = parse(&with_directory(
            "endpoint = \"https://directory.hsm.svc:7100\"\nca_file = \"tls/ca.pem\"\n\
             client_cert_file = \"/tls/gw.pem\"\nclient_key_file = \"tls/gw.key\"\n\
             server_name = \"directory.hsm.svc\"\n",
        ))
        .expect("valid");
        let d = &c.directory;
        assert!(d.uses_tls());
        // Relative paths are relative to the config file.
        assert_eq!(
            d.ca_file.as_deref(),
            Some(Path::new("/etc/hsmgate/tls/ca.pem"))
        );
        assert_eq!(
            d.client_cert_file.as_deref(),
            Some(Path::new("/tls/gw.pem"))
        );
        assert_eq!(
            d.client_key_file.as_deref(),
            Some(Path::new("/etc/hsmgate/tls/gw.key"))
        );
        assert!(d.client_config().tls.is_some());
        let system = parse(&with_directory(
            "endpoint = \"https://directory.example:443\"\nsystem_roots = true\n",
        ))
        .expect("system roots alone are enough");
        assert!(system.directory.client_config().tls.is_some());
    }

    #[test]
    fn an_https_directory_without_a_ca_is_refused() {
        let p = problems(&with_directory("endpoint = \"https://127.0.0.1:7100\"\n"));
        assert!(
            p.iter().any(|l| l.starts_with("directory.ca_file: ")),
            "{p:?}"
        );
        // Nor is the default, which is https:// with no CA.
        let bare = &MINIMAL[..MINIMAL.find("[directory]").expect("table")];
        let p = problems(bare);
        assert!(
            p.iter().any(|l| l.starts_with("directory.ca_file: ")),
            "{p:?}"
        );
    }

    #[test]
    fn plain_http_needs_allow_plaintext() {
        let p = problems(&with_directory("endpoint = \"http://127.0.0.1:7100\"\n"));
        assert!(
            p.iter()
                .any(|l| l.starts_with("directory.endpoint: http:// sends")
                    && l.contains("allow_plaintext")),
            "{p:?}"
        );
        let c = parse(MINIMAL).expect("allowed explicitly");
        assert!(!c.directory.uses_tls());
        assert!(c.directory.client_config().tls.is_none());
    }

    #[test]
    fn tls_settings_with_plain_http_or_half_an_identity_are_refused() {
        let p = problems(&with_directory(
            "endpoint = \"http://127.0.0.1:7100\"\nallow_plaintext = true\nca_file = \"ca.pem\"\n",
        ));
        assert!(
            p.iter()
                .any(|l| l == "directory.ca_file: only meaningful with an https:// endpoint"),
            "{p:?}"
        );
        let p = problems(&with_directory(
            "endpoint = \"https://127.0.0.1:7100\"\nca_file = \"ca.pem\"\n\
             client_cert_file = \"gw.pem\"\nallow_plaintext = true\nserver_name = \"a b\"\n",
        ));
        for expected in [
            "directory.client_key_file: required with client_cert_file",
            "directory.allow_plaintext: only meaningful with an http:// endpoint",
            "directory.server_name: must be a DNS name or an IP address",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(expected)),
                "{expected}: {p:?}"
            );
        }
        let p = problems(&with_directory("endpoint = \"ftp://127.0.0.1:7100\"\n"));
        assert!(
            p.iter()
                .any(|l| l.starts_with("directory.endpoint: must be https://")),
            "{p:?}"
        );
    }

    #[test]
    fn bad_cidr_is_a_parse_error_naming_the_field() {
        let text = format!("{MINIMAL}\n[admission]\nallow = [\"10.0.0.0/33\"]\n");
        let p = problems(&text);
        assert!(p[0].contains("allow"), "{p:?}");
    }

    const DNS_POOL: &str = r#"
gateway_id = "gw-1"
key_file = "gateway.key"

[directory]
endpoint = "https://directory.example.net:7100"
ca_file = "ca.pem"

[[listeners]]
address = "127.0.0.1:2300"

[[pools]]
name = "default"
dns = "_hsm._tcp.example.net"
"#;

    #[test]
    fn the_example_config_is_valid() {
        let c = parse(include_str!("../../../config/gateway.toml")).expect("config/gateway.toml");
        assert_eq!(
            c.discovery,
            DiscoveryConfig::default(),
            "shows the defaults"
        );
    }

    #[test]
    fn a_pool_takes_its_members_from_dns() {
        let c = parse(DNS_POOL).expect("a DNS pool");
        assert!(c.pools[0].members.is_empty());
        assert_eq!(c.pools[0].dns.as_deref(), Some("_hsm._tcp.example.net"));
        assert_eq!(c.discovery, DiscoveryConfig::default());
        assert_eq!(c.discovery.nameserver, None);
        assert_eq!(
            (
                c.discovery.min_ttl_secs,
                c.discovery.max_ttl_secs,
                c.discovery.retry_secs,
                c.discovery.timeout_ms
            ),
            (5, 300, 5, 2_000)
        );
        let text = toml::to_string(&c).expect("renders");
        assert!(!text.contains("members"), "{text}");
        let again: GatewayConfig = toml::from_str(&text).expect("round trip");
        assert_eq!(again, c);
    }

    #[test]
    fn a_pool_has_exactly_one_of_members_and_dns() {
        let text = r#"
gateway_id = "gw-1"
key_file = "k"

[directory]
endpoint = "https://directory.example.net:7100"
system_roots = true

[[listeners]]
address = "127.0.0.1:2300"

[[pools]]
name = "neither"

[[pools]]
name = "both"
members = ["127.0.0.1:1"]
dns = "hsm.example.net:2400"

[[pools]]
name = "weighted"
dns = "hsm.example.net:2400"
weights = [1]

[[pools]]
name = "bad"
dns = "10.0.0.1:2400"

[[pools]]
name = "no-port"
dns = "hsm.example.net"
"#;
        let p = problems(text);
        for expected in [
            "pools[0].members: a pool needs a member, or dns",
            "pools[1].dns: a pool takes either members or dns",
            "pools[2].weights: not allowed with dns",
            "pools[3].dns: \"10.0.0.1:2400\" is an IP address",
            "pools[4].dns: \"hsm.example.net\": must be host:port",
        ] {
            assert!(
                p.iter().any(|line| line.starts_with(expected)),
                "{expected} missing from {p:?}"
            );
        }
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn discovery_settings_are_checked() {
        let text = format!(
            "{DNS_POOL}\n[discovery]\nnameserver = \"0.0.0.0:53\"\nmin_ttl_secs = 0\n\
             max_ttl_secs = 100000\nretry_secs = 0\ntimeout_ms = 0\n"
        );
        let p = problems(&text);
        for field in [
            "discovery.nameserver:",
            "discovery.min_ttl_secs:",
            "discovery.max_ttl_secs:",
            "discovery.retry_secs:",
            "discovery.timeout_ms:",
        ] {
            assert!(
                p.iter().any(|line| line.starts_with(field)),
                "{field} missing from {p:?}"
            );
        }
        let text = format!("{DNS_POOL}\n[discovery]\nmin_ttl_secs = 60\nmax_ttl_secs = 30\n");
        assert_eq!(
            problems(&text),
            ["discovery.max_ttl_secs: must be discovery.min_ttl_secs..=86400 seconds"]
        );
        let text = format!("{DNS_POOL}\n[discovery]\nnameserver = \"10.0.0.53:53\"\nttl = 1\n");
        assert!(problems(&text)[0].contains("ttl"), "unknown field named");
        let text = format!(
            "{DNS_POOL}\n[discovery]\nnameserver = \"10.0.0.53:53\"\nmin_ttl_secs = 1\nretry_secs = 1\n"
        );
        let c = parse(&text).expect("valid discovery settings");
        assert_eq!(
            c.discovery.nameserver,
            Some("10.0.0.53:53".parse().expect("addr"))
        );
    }

    #[test]
    fn an_admin_port_off_loopback_needs_a_token_for_config() {
        let mut c = parse(MINIMAL).expect("valid");
        c.admin.address = "10.1.2.3:9300".parse().expect("addr");
        let problems = c.validate().expect_err("refused");
        assert!(
            problems.iter().any(|p| p.field == "admin.token_file"),
            "{problems:?}"
        );
        c.admin.config_endpoint = false;
        assert!(c.validate().is_ok());
        c.admin.metrics_require_token = true;
        assert!(c.validate().is_err());
        c.admin.token_file = Some("/etc/hsmgate/admin-token".into());
        c.admin.config_endpoint = true;
        assert!(c.validate().is_ok());
    }
}
