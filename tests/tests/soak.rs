//! Soak with faults (issue 12, part 2): one `hsmgate run` process holds
//! `HSMGATE_SOAK_SESSIONS` (default 9,000) concurrent sessions, each opened
//! through the SDK and carrying an HSM request, while
//!
//! 1. one HSM node of three is killed with SIGKILL (its sessions end, new
//!    sessions go to the survivors with none refused) and started again (the
//!    health checks notice, and it takes sessions again);
//! 2. the directory is killed for longer than the decision cache lifetime
//!    (cached clients are served until their answer expires, then get code 4;
//!    nothing is granted without a decision) and started again;
//! 3. SIGHUP changes the pool (a member removed, then restored) without
//!    touching a running session.
//!
//! Then every session is closed and the gateway must be back where it was
//! after its warm-up: RSS within 10 %, the same sockets and descriptors,
//! `hsmgate_sessions_active` 0. Last, the sessions are opened again and
//! SIGTERM drains them: none is cut before `timeouts.drain_ms`, the process
//! exits 0, and its JSON log has one `session ended` line for every
//! `session granted` line, those cut at the deadline included.
//!
//! Every program is a real process (directory, three HSM nodes on the
//! software store, the gateway); the clients live in this test process. It
//! runs for minutes, so it is `#[ignore]`d; see docs/RELIABILITY.md, "Soak":
//!
//! ```text
//! cargo build --release -p hsmgate -p hsmgate-hsm -p hsmgate-directory
//! cargo test -p hsmgate-tests --release --test soak -- --ignored --nocapture
//! ```
//!
//! Limits. The defaults would refuse a naive burst of 9,000 sessions, each
//! for a reason that is right in production, so the soak stays inside them
//! instead of raising them where it can:
//!
//! - the gateway's `limits.max_sessions_per_client` (256) and the node's
//!   `limits.max_sessions_per_client` (256): sessions are spread over one
//!   client identity per [`PER_IDENTITY`] sessions (47 for 9,000), each
//!   with its own key in the directory; the directory's own default of 64
//!   sessions per client is lifted (`max_sessions = 0`), leaving the
//!   gateway's ceiling in force;
//! - the per-source limits (1,000 connections, 100 handshakes per second,
//!   a burst of 200): clients bind to 127.0.0.2, 127.0.0.3, ... with at most
//!   [`PER_SOURCE`] sessions each (30 sources for 9,000), and new sessions
//!   are paced to [`RATE_PER_SOURCE`] a second per source;
//! - `limits.max_handshakes` (1,000) and the node's accept budget
//!   (`max_pending`, 256): at most [`IN_FLIGHT`] sessions are being opened
//!   at once; the node's is raised to 512 for headroom with probes and
//!   control connections;
//! - raised: the node's `max_sessions` (default 1,024) to the session count,
//!   since after the kill two nodes hold everything; the gateway's
//!   `max_connections` to the session count + 500, which with two
//!   descriptors per session stays under the 20,000 open files this machine
//!   allows a process; `forwarding.max_idle_pipes` down to 64 so that kept
//!   splice pipes (two descriptors each) cannot push it over either;
//! - the node's idle timeout (5 min) to the gateway's 15 min, so that a slow
//!   run does not see idle sessions closed by the node.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hsmgate::GatewayConfig;
use hsmgate::keyfile;
use hsmgate_client::{
    ClientConfig, ClientError, Code, ConnectOptions, PublicKey, Session, StaticKeypair,
    connect_addr,
};
use hsmgate_tests::proc::Guard;
use hsmgate_tests::{PATIENCE, binary, http_get, metric_value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

/// Sessions held at once, unless `HSMGATE_SOAK_SESSIONS` says otherwise.
const DEFAULT_SESSIONS: usize = 9_000;
/// Sessions being opened at once.
const IN_FLIGHT: usize = 200;
/// Requests in flight at once when every held session is checked.
const PING_IN_FLIGHT: usize = 500;
/// Sessions per client identity: three quarters of the per-client ceilings
/// (256 at the gateway and at each node), leaving room for replacements.
const PER_IDENTITY: usize = 192;
/// Sessions per source address, under `max_connections_per_source` (1,000).
const PER_SOURCE: usize = 300;
/// New sessions a second per source address, under the gateway's
/// `handshakes_per_second_per_source` (100).
const RATE_PER_SOURCE: u32 = 80;
/// Sessions opened and closed to warm the gateway up before its baseline.
const WARM_UP: usize = 200;
/// Lifetime of the directory's answers in the gateway's cache.
const TTL: Duration = Duration::from_secs(4);
/// How long the directory stays down after the last answer expired.
const OUTAGE_AFTER_EXPIRY: Duration = Duration::from_secs(4);
/// Slack for the cache's clock against this process's, in the checks of
/// the directory outage.
const CLOCK_SLACK: Duration = Duration::from_millis(250);
/// New sessions keep being opened for at least this long after the kill.
const KILL_WINDOW: Duration = Duration::from_secs(6);
/// `timeouts.drain_ms` of the gateway.
const DRAIN: Duration = Duration::from_secs(8);
const HEALTH_INTERVAL_MS: u64 = 500;
const REVOCATION_CHECK_MS: u64 = 10_000;
const MAX_IDLE_PIPES: usize = 64;
/// The whole soak, whatever happens.
const BUDGET: Duration = Duration::from_secs(20 * 60);

const TENANT: &str = "demo";
const PARTITION: &str = "demo";
const POOL: &str = "default";
const SESSIONS_ACTIVE: &str = "hsmgate_sessions_active{pool=\"default\"}";
const CONNECTIONS_OPEN: &str = "hsmgate_connections_open";
const RELOADS_OK: &str = "hsmgate_config_reloads_total{result=\"ok\"}";
const REVOKED: &str = "hsmgate_sessions_revoked_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: run with --ignored (docs/RELIABILITY.md, Soak)"]
async fn holds_sessions_through_node_loss_directory_outage_reload_and_drain() {
    let sessions = std::env::var("HSMGATE_SOAK_SESSIONS")
        .ok()
        .map(|v| v.parse().expect("HSMGATE_SOAK_SESSIONS is a number"))
        .unwrap_or(DEFAULT_SESSIONS);
    assert!(
        sessions >= 30,
        "at least 30 sessions (three per node and more)"
    );
    check_fd_limit(sessions);
    let started = Instant::now();
    let mut soak = Soak::start(sessions).await;
    let run = async {
        soak.warm_up().await;
        soak.open_all().await;
        soak.kill_a_node().await;
        soak.stop_the_directory().await;
        soak.reload_the_pool().await;
        soak.close_all_and_measure().await;
        soak.drain().await;
    };
    if tokio::time::timeout(BUDGET, run).await.is_err() {
        soak.fail(format!("the soak did not finish within {BUDGET:?}"));
    }
    soak.figure(
        "wall time",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    soak.finish();
}

/// A descriptor budget that holds: the gateway needs two per session
/// besides its own, and the test process one per session.
fn check_fd_limit(sessions: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let soft: Option<usize> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    if let Some(soft) = soft {
        let gateway = 2 * (sessions + 500) + 2 * MAX_IDLE_PIPES + 200;
        assert!(
            gateway <= soft,
            "{sessions} sessions need about {gateway} descriptors in the gateway; \
             this machine allows {soft} per process: lower HSMGATE_SOAK_SESSIONS"
        );
    }
}

/// How the sessions are spread over identities and source addresses.
struct Plan {
    sessions: usize,
    identities: usize,
    sources: usize,
}

impl Plan {
    fn new(sessions: usize) -> Plan {
        Plan {
            sessions,
            identities: sessions.div_ceil(PER_IDENTITY).max(2),
            sources: sessions.div_ceil(PER_SOURCE).max(4),
        }
    }
}

/// One program of the deployment as a child process, restartable with the
/// same arguments; its stdout and stderr go to a log file.
struct Child {
    program: &'static str,
    args: Vec<OsString>,
    rust_log: &'static str,
    log: PathBuf,
    guard: Option<Guard>,
}

impl Child {
    fn new(
        program: &'static str,
        args: Vec<OsString>,
        rust_log: &'static str,
        log: PathBuf,
    ) -> Child {
        Child {
            program,
            args,
            rust_log,
            log,
            guard: None,
        }
    }

    fn start(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log file");
        let mut cmd = Command::new(binary(self.program));
        cmd.args(&self.args)
            .env("RUST_LOG", self.rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.guard = Some(Guard::spawn(&mut cmd));
    }

    fn guard(&mut self) -> &mut Guard {
        self.guard.as_mut().expect("the process runs")
    }

    fn pid(&self) -> u32 {
        self.guard.as_ref().expect("the process runs").id()
    }

    fn signal(&mut self, signal: &str) {
        self.guard().signal(signal);
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        let mut guard = self.guard.take().expect("the process runs");
        guard.signal("KILL");
        assert!(
            guard.wait_timeout(PATIENCE).is_some(),
            "{} survived SIGKILL",
            self.program
        );
    }

    /// Wait at most until `deadline` for the process to exit on its own.
    async fn exited_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.guard().child().try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process, with a failure message: its status and its log's end.
    fn describe(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{} (log {}):\n{}",
            self.program,
            self.log.display(),
            tail.join("\n")
        )
    }
}

struct Node {
    id: String,
    addr: SocketAddr,
    key: PublicKey,
    process: Child,
}

/// What the clients connect with.
struct Clients {
    gateway: SocketAddr,
    /// One config per soak identity (`soak-000`, ...).
    identities: Vec<ClientConfig>,
    /// Connected once, right before the directory stops.
    cache_probe: ClientConfig,
    /// Never connected before the directory stops.
    cold: ClientConfig,
    sources: Vec<IpAddr>,
}

impl Clients {
    /// Open session `i` (its identity and source follow from `i`) and send
    /// one HSM request on it.
    async fn open(&self, i: usize) -> Result<Session, ClientError> {
        let config = &self.identities[i % self.identities.len()];
        self.open_as(config, self.sources[i % self.sources.len()])
            .await
    }

    async fn open_as(&self, config: &ClientConfig, source: IpAddr) -> Result<Session, ClientError> {
        let opts = ConnectOptions {
            bind: Some(source),
            identity: None,
        };
        let session = connect_addr(config, &opts, self.gateway).await?;
        session.random(32).await?;
        Ok(session)
    }
}

/// Sessions opened in one phase, and what the others got.
#[derive(Debug, Default, Clone)]
struct Tally {
    attempts: u64,
    granted: u64,
    refused: BTreeMap<String, u64>,
    took: Duration,
}

impl Tally {
    fn record(&mut self, result: &Result<Session, ClientError>) {
        self.attempts += 1;
        match result {
            Ok(_) => self.granted += 1,
            Err(e) => *self.refused.entry(failure_kind(e)).or_default() += 1,
        }
    }

    fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn refusals(&self) -> String {
        if self.refused.is_empty() {
            return "0".into();
        }
        self.refused
            .iter()
            .map(|(k, v)| format!("{v} ({k})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A failure as the table shows it: the code, or what went wrong.
fn failure_kind(e: &ClientError) -> String {
    match e {
        ClientError::Refused { code, .. } => format!("code {} {}", *code as u8, code.as_str()),
        ClientError::HsmRefused { code, .. } => {
            format!("HSM code {} {}", *code as u8, code.as_str())
        }
        ClientError::Timeout { .. } | ClientError::OutOfTime { .. } => "timeout".into(),
        ClientError::Operation { .. } => "operation failed".into(),
        _ => "transport".into(),
    }
}

/// A session held open, with the node that serves it.
struct Held {
    session: Session,
    hsm: String,
}

/// The gateway's descriptors by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fds {
    sockets: usize,
    pipes: usize,
    other: usize,
}

impl Fds {
    fn total(&self) -> usize {
        self.sockets + self.pipes + self.other
    }
}

impl std::fmt::Display for Fds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} sockets, {} pipes, {} other)",
            self.total(),
            self.sockets,
            self.pipes,
            self.other
        )
    }
}

fn fds(pid: u32) -> Fds {
    let mut fds = Fds::default();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return fds;
    };
    for entry in entries.flatten() {
        // Closed between the listing and the link: not counted.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target.starts_with("socket:") {
            fds.sockets += 1;
        } else if target.starts_with("pipe:") {
            fds.pipes += 1;
        } else {
            fds.other += 1;
        }
    }
    fds
}

/// A field of /proc/PID/status in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// VmRSS split into anonymous memory (heap, stacks) and file-backed pages
/// (mostly the gateway's own code, paged in as new paths first run).
fn rss_split(pid: u32) -> String {
    let anon = status_kib(pid, "RssAnon:").unwrap_or(0);
    let file = status_kib(pid, "RssFile:").unwrap_or(0);
    format!("anonymous {}, file-backed {}", mib(anon), mib(file))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Samples the gateway's VmRSS every 200 ms and keeps the highest.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let seen = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let Some(rss) = status_kib(pid, "VmRSS:") else {
                    return;
                };
                seen.fetch_max(rss, Ordering::Relaxed);
                tokio::select! {
                    () = sleep(Duration::from_millis(200)) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        RssSampler { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A loopback port free at the time of asking.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The deployment, the sessions held and the figures so far.
struct Soak {
    plan: Plan,
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    directory: Child,
    directory_addr: SocketAddr,
    gateway: Child,
    admin: SocketAddr,
    config_path: PathBuf,
    config: GatewayFile,
    clients: Arc<Clients>,
    held: Vec<Held>,
    /// Index of the next session to open (its identity and source).
    next: usize,
    rss: Option<RssSampler>,
    rss_before: u64,
    rss_at_n: u64,
    fds_before: Fds,
    phases: Vec<(String, Tally)>,
    figures: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Soak {
    async fn start(sessions: usize) -> Soak {
        let plan = Plan::new(sessions);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        let gateway_key = keyfile::create(&path.join("gateway.key")).expect("gateway key");
        let partition_key = keyfile::create(&path.join("partition.key")).expect("partition key");

        // The directory: every soak identity, the cache probe and the cold
        // client, all in the demo tenant, from anywhere on 127/8.
        let service_key = |id: &str| {
            let key = keyfile::create(&path.join(format!("{id}.key"))).expect("service key");
            (id.to_owned(), key)
        };
        let identities: Vec<(String, StaticKeypair)> = (0..plan.identities)
            .map(|i| service_key(&format!("soak-{i:03}")))
            .collect();
        let cache_probe = service_key("soak-cache");
        let cold = service_key("soak-cold");
        let mut data = format!(
            "[defaults]\nttl_seconds = {}\nmax_sessions = 0\n\n\
             [[tenants]]\nname = \"{TENANT}\"\nnetworks = [\"127.0.0.0/8\"]\n\n\
             [[partitions]]\nname = \"{PARTITION}\"\ntenant = \"{TENANT}\"\npool = \"{POOL}\"\n",
            TTL.as_secs()
        );
        for (id, key) in identities.iter().chain([&cache_probe, &cold]) {
            write!(
                data,
                "\n[[clients]]\nid = \"{id}\"\ntenant = \"{TENANT}\"\npublic_key = \"{}\"\n\
                 partitions = [\"{PARTITION}\"]\n",
                key.public().to_text()
            )
            .expect("format");
        }
        let data_path = path.join("directory.toml");
        std::fs::write(&data_path, data).expect("write directory data");
        let directory_addr = free_port();
        let mut directory = Child::new(
            "hsmgate-directory",
            vec![
                "--data".into(),
                data_path.into(),
                "--listen".into(),
                directory_addr.to_string().into(),
                // Plain gRPC on loopback, as in the other end-to-end tests.
                "--insecure-plaintext".into(),
            ],
            "warn",
            path.join("directory.log"),
        );
        directory.start();

        // Three HSM nodes on the software store, sharing one key store.
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let id = format!("hsm-{i}");
            let key_file = path.join(format!("{id}.key"));
            let key = keyfile::create(&key_file).expect("node key").public();
            let addr = free_port();
            let config = format!(
                "hsm_id = \"{id}\"\nlisten = \"{addr}\"\nkey_file = \"{}\"\nstate_dir = \"{}\"\n\n\
                 [limits]\nmax_sessions = {}\nmax_pending = 512\nidle_timeout_ms = 900000\n\n\
                 [gateways]\ntrusted_keys = [\"{}\"]\n\n\
                 [[partitions]]\nname = \"{PARTITION}\"\nclient_keys = [\"{}\"]\n",
                key_file.display(),
                path.join("hsm-state").display(),
                sessions.max(1024),
                gateway_key.public().to_text(),
                partition_key.public().to_text(),
            );
            let config_path = path.join(format!("{id}.toml"));
            std::fs::write(&config_path, config).expect("write node config");
            let mut process = Child::new(
                "hsmgate-hsm",
                vec!["--config".into(), config_path.into()],
                "warn",
                path.join(format!("{id}.log")),
            );
            process.start();
            nodes.push(Node {
                id,
                addr,
                key,
                process,
            });
        }

        let admin = free_port();
        let gateway_addr = free_port();
        let config = GatewayFile {
            key_file: path.join("gateway.key"),
            listen: gateway_addr,
            admin,
            directory: directory_addr,
            max_connections: sessions + 500,
            members: nodes.iter().map(|n| n.addr).collect(),
        };
        let config_path = path.join("gateway.toml");
        std::fs::write(&config_path, config.render(&config.members)).expect("write gateway.toml");
        if let Err(e) = GatewayConfig::load(&config_path) {
            panic!("the soak's gateway config is invalid: {:?}", e.problems());
        }
        let mut gateway = Child::new(
            "hsmgate",
            vec![
                "--log-format".into(),
                "json".into(),
                "run".into(),
                "--config".into(),
                config_path.clone().into(),
            ],
            "info",
            path.join("gateway.log"),
        );

        for node in &nodes {
            wait_for_probe(node).await;
        }
        wait_for_listener(directory_addr, &directory).await;
        gateway.start();
        wait_for_listener(admin, &gateway).await;

        // Client configs as an application writes them (OPERATIONS §7),
        // one per identity.
        let hsm_keys = nodes
            .iter()
            .map(|n| format!("\"{}\"", n.key.to_text()))
            .collect::<Vec<_>>()
            .join(", ");
        let as_client = |(id, _): &(String, StaticKeypair)| {
            let text = format!(
                "gateway = \"{gateway_addr}\"\ngateway_key = \"{}\"\nclient_id = \"{id}\"\n\
                 tenant = \"{TENANT}\"\npartition = \"{PARTITION}\"\nidentity_file = \"{id}.key\"\n\
                 partition_key_file = \"partition.key\"\nhsm_keys = [{hsm_keys}]\n\
                 connect_timeout_ms = 2000\nhandshake_timeout_ms = 5000\n\
                 request_timeout_ms = 5000\ntotal_timeout_ms = 10000\n",
                gateway_key.public().to_text()
            );
            ClientConfig::from_toml(&text, &path).expect("client config")
        };
        let clients = Clients {
            gateway: gateway_addr,
            identities: identities.iter().map(as_client).collect(),
            cache_probe: as_client(&cache_probe),
            cold: as_client(&cold),
            sources: (0..plan.sources)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (2 + i % 250) as u8)))
                .collect(),
        };
        let mut soak = Soak {
            plan,
            dir: Some(dir),
            nodes,
            directory,
            directory_addr,
            gateway,
            admin,
            config_path,
            config,
            clients: Arc::new(clients),
            held: Vec::new(),
            next: 0,
            rss: None,
            rss_before: 0,
            rss_at_n: 0,
            fds_before: Fds::default(),
            phases: Vec::new(),
            figures: Vec::new(),
            failures: Vec::new(),
        };
        soak.wait_for_ready().await;
        soak
    }

    fn write_config(&self, members: &[SocketAddr]) {
        std::fs::write(&self.config_path, self.config.render(members)).expect("write gateway.toml");
    }

    fn fail(&mut self, what: String) {
        eprintln!("soak: FAILED: {what}");
        self.failures.push(what);
    }

    fn check(&mut self, ok: bool, what: String) {
        if !ok {
            self.fail(what);
        }
    }

    fn figure(&mut self, name: &str, value: String) {
        eprintln!("soak: {name}: {value}");
        self.figures.push((name.to_owned(), value));
    }

    fn phase(&mut self, name: &str, tally: Tally) {
        eprintln!(
            "soak: {name}: {} attempts, {} granted, refused {} in {:.1} s",
            tally.attempts,
            tally.granted,
            tally.refusals(),
            tally.took.as_secs_f64()
        );
        self.phases.push((name.to_owned(), tally));
    }

    async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    fn member_sample(&self, name: &str, node: usize) -> String {
        format!(
            "{name}{{member=\"{}\",pool=\"{POOL}\"}}",
            self.nodes[node].addr
        )
    }

    /// Poll `sample` until `want(value)`, at most `within`; the time it took.
    async fn wait_metric(
        &self,
        sample: &str,
        want: impl Fn(f64) -> bool,
        within: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            if want(self.metric(sample).await) {
                return Some(started.elapsed());
            }
            sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Ready, and a control channel up to every node.
    async fn wait_for_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, _) = http_get(self.admin, "/readyz").await;
            let text = self.metrics().await;
            let channels = (0..self.nodes.len())
                .filter(|&i| {
                    metric_value(
                        &text,
                        &self.member_sample("hsmgate_backend_grant_channel_up", i),
                    ) == 1.0
                })
                .count();
            if status == 200 && channels == self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway is not ready within {PATIENCE:?} (readyz {status}, {channels} channels)\n{}",
                self.gateway.describe()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Open `count` sessions (the next indices): at most [`IN_FLIGHT`] at
    /// once, and at most [`RATE_PER_SOURCE`] new ones a second per source
    /// address, under the gateway's per-source handshake rate.
    async fn open_many(&mut self, count: usize, tally: &mut Tally) -> Vec<Held> {
        let started = Instant::now();
        // Generous: a debug build on two busy cores opens some 100 a second.
        let deadline = started + Duration::from_secs(60) + Duration::from_millis(50 * count as u64);
        let pace = Duration::from_secs(1) / (RATE_PER_SOURCE * self.plan.sources as u32);
        let first = self.next;
        let end = self.next + count;
        let due = |next: usize| started + pace * (next - first) as u32;
        let mut tasks = JoinSet::new();
        let mut held = Vec::with_capacity(count);
        while self.next < end || !tasks.is_empty() {
            while self.next < end && tasks.len() < IN_FLIGHT && Instant::now() >= due(self.next) {
                let clients = Arc::clone(&self.clients);
                let i = self.next;
                tasks.spawn(async move { clients.open(i).await });
                self.next += 1;
            }
            let may_start = self.next < end && tasks.len() < IN_FLIGHT;
            let next_due = due(self.next);
            let joined = tokio::select! {
                joined = tasks.join_next(), if !tasks.is_empty() => joined,
                () = tokio::time::sleep_until(next_due), if may_start => continue,
                () = tokio::time::sleep_until(deadline) => {
                    panic!("{count} sessions not opened within {:?}", deadline - started)
                }
            };
            let Some(joined) = joined else { continue };
            let result = joined.expect("an opening task did not panic");
            tally.record(&result);
            if let Ok(session) = result {
                held.push(Held {
                    hsm: session.hsm_id().to_owned(),
                    session,
                });
            }
        }
        tally.took += started.elapsed();
        held
    }

    /// Open `count` sessions and close them again: which nodes served them.
    async fn open_and_close(&mut self, count: usize, tally: &mut Tally) -> Vec<String> {
        let opened = self.open_many(count, tally).await;
        let mut served = Vec::new();
        for h in opened {
            served.push(h.hsm);
            h.session.close().await;
        }
        served
    }

    async fn wait_until_idle(&mut self, what: &str) {
        let within = Duration::from_secs(30);
        let idle = async {
            let started = Instant::now();
            while started.elapsed() < within {
                let text = self.metrics().await;
                if metric_value(&text, SESSIONS_ACTIVE) == 0.0
                    && metric_value(&text, CONNECTIONS_OPEN) == 0.0
                {
                    return true;
                }
                sleep(Duration::from_millis(100)).await;
            }
            false
        };
        if !idle.await {
            let text = self.metrics().await;
            self.fail(format!(
                "{what}: sessions still open {within:?} after the last one closed: \
                 sessions_active {}, connections_open {}",
                metric_value(&text, SESSIONS_ACTIVE),
                metric_value(&text, CONNECTIONS_OPEN)
            ));
        }
    }

    /// Descriptors when nothing moves: the lowest of a few samples, so that
    /// a health probe caught in the act does not count.
    async fn steady_fds(&self) -> Fds {
        let mut best: Option<Fds> = None;
        for _ in 0..5 {
            let now = fds(self.gateway.pid());
            if best.is_none_or(|b| now.total() < b.total()) {
                best = Some(now);
            }
            sleep(Duration::from_millis(150)).await;
        }
        best.expect("sampled")
    }

    /// A first batch through the whole path, so that the baseline includes
    /// what any served gateway holds (runtime threads and their allocator
    /// arenas, the directory connection, the decision cache, kept pipes),
    /// then the baseline of RSS and descriptors.
    async fn warm_up(&mut self) {
        let mut tally = Tally::default();
        let count = WARM_UP.min(self.plan.sessions);
        let served = self.open_and_close(count, &mut tally).await;
        self.check(
            tally.refused_total() == 0,
            format!("warm-up: {} refused", tally.refusals()),
        );
        self.check(served.len() == count, "warm-up incomplete".into());
        self.phase("warm-up (opened and closed)", tally);
        self.wait_until_idle("warm-up").await;
        sleep(Duration::from_secs(1)).await;
        let pid = self.gateway.pid();
        self.rss_before = status_kib(pid, "VmRSS:").expect("VmRSS");
        self.fds_before = self.steady_fds().await;
        self.figure(
            "RSS before (after warm-up)",
            format!("{} ({})", mib(self.rss_before), rss_split(pid)),
        );
        self.figure("fds before", self.fds_before.to_string());
        self.rss = Some(RssSampler::start(pid));
    }

    async fn open_all(&mut self) {
        let mut tally = Tally::default();
        let n = self.plan.sessions;
        self.held = self.open_many(n, &mut tally).await;
        let rate = tally.granted as f64 / tally.took.as_secs_f64();
        self.figure(
            "open",
            format!(
                "{n} sessions in {:.1} s ({rate:.0}/s), {} identities, {} source addresses, {IN_FLIGHT} in flight",
                tally.took.as_secs_f64(),
                self.plan.identities,
                self.plan.sources
            ),
        );
        self.check(
            tally.refused_total() == 0,
            format!("opening {n} sessions: {} refused", tally.refusals()),
        );
        self.phase("open", tally);
        let active = self.metric(SESSIONS_ACTIVE).await;
        self.check(
            active == self.held.len() as f64,
            format!(
                "sessions_active {active} with {} sessions held",
                self.held.len()
            ),
        );
        sleep(Duration::from_millis(500)).await;
        let pid = self.gateway.pid();
        self.rss_at_n = status_kib(pid, "VmRSS:").expect("VmRSS");
        self.figure(
            &format!("RSS with {} sessions", self.held.len()),
            format!("{} ({})", mib(self.rss_at_n), rss_split(pid)),
        );
        self.figure(
            &format!("fds with {} sessions", self.held.len()),
            fds(pid).to_string(),
        );
        let per_node: BTreeMap<&str, usize> = self.held.iter().fold(BTreeMap::new(), |mut m, h| {
            *m.entry(h.hsm.as_str()).or_default() += 1;
            m
        });
        let spread = format!("{per_node:?}");
        self.figure("sessions per node", spread);
    }

    /// Send one request on each session; the positions of those that failed.
    async fn ping_all(sessions: &[Session]) -> Vec<usize> {
        let mut tasks = JoinSet::new();
        let mut failed = Vec::new();
        let mut next = 0;
        loop {
            while next < sessions.len() && tasks.len() < PING_IN_FLIGHT {
                let s = sessions[next].clone();
                let i = next;
                tasks.spawn(async move { (i, s.ping().await.is_ok()) });
                next += 1;
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let (i, ok) = done.expect("a ping task did not panic");
            if !ok {
                failed.push(i);
            }
        }
        failed.sort_unstable();
        failed
    }

    fn held_sessions(&self) -> Vec<Session> {
        self.held.iter().map(|h| h.session.clone()).collect()
    }

    /// SIGKILL one node: its sessions end, the survivors serve every new
    /// session, and the node is noticed when it returns.
    async fn kill_a_node(&mut self) {
        let victim = 0;
        let victim_id = self.nodes[victim].id.clone();
        let (on_victim, others): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.hsm == victim_id);
        self.held = others;
        let healthy = self.member_sample("hsmgate_backend_healthy", victim);
        let channel = self.member_sample("hsmgate_backend_grant_channel_up", victim);

        let killed = Instant::now();
        self.nodes[victim].process.kill();
        // Every new session from now on: the lost ones replaced, then more
        // short ones until the window is over; none may be refused.
        let mut tally = Tally::default();
        let replacements = self.open_many(on_victim.len(), &mut tally).await;
        let mut served: Vec<String> = replacements.iter().map(|h| h.hsm.clone()).collect();
        self.held.extend(replacements);
        for _ in 0..50 {
            if killed.elapsed() >= KILL_WINDOW {
                break;
            }
            served.extend(self.open_and_close(50, &mut tally).await);
            sleep(Duration::from_millis(250)).await;
        }
        let window = killed.elapsed();
        tally.took = window;
        let on_dead = served.iter().filter(|h| **h == victim_id).count();
        self.check(
            tally.refused_total() == 0,
            format!(
                "node killed: {} refused while two nodes were healthy",
                tally.refusals()
            ),
        );
        self.check(
            on_dead == 0,
            format!("node killed: {on_dead} new sessions served by the dead node"),
        );
        self.figure(
            "node kill: new sessions",
            format!(
                "{} granted, {} refused in the {:.1} s after the kill, all on the survivors",
                tally.granted,
                tally.refused_total(),
                window.as_secs_f64()
            ),
        );
        self.phase(
            &format!(
                "{victim_id} killed (SIGKILL), next {:.0} s",
                window.as_secs_f64()
            ),
            tally,
        );

        // The dead node's sessions have ended; the others go on.
        let victims: Vec<Session> = on_victim.into_iter().map(|h| h.session).collect();
        let ended = Self::ping_all(&victims).await.len();
        self.check(
            ended == victims.len(),
            format!(
                "node killed: {} of its {} sessions still answered",
                victims.len() - ended,
                victims.len()
            ),
        );
        for s in victims {
            s.close().await;
        }
        let failed = Self::ping_all(&self.held_sessions()).await;
        self.check(
            failed.is_empty(),
            format!(
                "node killed: {} sessions on other nodes failed",
                failed.len()
            ),
        );
        let ejected = self.metric(&healthy).await;
        self.check(
            ejected == 0.0,
            format!(
                "node killed: {healthy} is {ejected} {:?} after the kill",
                killed.elapsed()
            ),
        );
        self.figure(
            "node kill: its sessions",
            format!(
                "{ended} ended; the {} on the other nodes all answered",
                self.held.len()
            ),
        );

        // Back on its old address: the probes bring it into rotation and
        // the control channel comes back; it serves new sessions.
        let restarted = Instant::now();
        self.nodes[victim].process.start();
        wait_for_probe(&self.nodes[victim]).await;
        let up = restarted.elapsed();
        let back = self.wait_metric(&healthy, |v| v == 1.0, PATIENCE).await;
        let healthy_at = restarted.elapsed();
        let channel_back = self.wait_metric(&channel, |v| v == 1.0, PATIENCE).await;
        self.check(
            back.is_some() && channel_back.is_some(),
            format!("node restarted: not back in rotation within {PATIENCE:?}"),
        );
        let noticed = restarted.elapsed();
        let mut tally = Tally::default();
        let mut on_returned = 0;
        for _ in 0..10 {
            let served = self.open_and_close(12, &mut tally).await;
            on_returned += served.iter().filter(|h| **h == victim_id).count();
            if on_returned > 0 {
                break;
            }
        }
        self.check(
            on_returned > 0,
            format!(
                "node restarted: {victim_id} took none of {} new sessions",
                tally.granted
            ),
        );
        self.check(
            tally.refused_total() == 0,
            format!("node restarted: {} refused", tally.refusals()),
        );
        self.figure(
            "node return",
            format!(
                "answering probes {:.1} s after the restart, healthy at {:.1} s, \
                 control channel up at {:.1} s; {on_returned} of {} new sessions on it",
                up.as_secs_f64(),
                healthy_at.as_secs_f64(),
                noticed.as_secs_f64(),
                tally.granted
            ),
        );
        self.phase(&format!("{victim_id} restarted"), tally);
        // Back to the full count.
        let missing = self.plan.sessions - self.held.len();
        if missing == 0 {
            return;
        }
        let mut tally = Tally::default();
        let refill = self.open_many(missing, &mut tally).await;
        self.held.extend(refill);
        self.check(
            tally.refused_total() == 0,
            format!(
                "refill after the node's return: {} refused",
                tally.refusals()
            ),
        );
        self.phase("refill to the full count", tally);
    }

    /// Kill the directory for longer than the cache lifetime.
    async fn stop_the_directory(&mut self) {
        let clients = Arc::clone(&self.clients);
        let probe_source = clients.sources[0];
        // The cache probe's first session: its answer enters the cache now.
        let s = clients
            .open_as(&clients.cache_probe, probe_source)
            .await
            .expect("the cache probe is served while the directory is up");
        let fetched = Instant::now();
        s.close().await;
        let revoked_before = self.metric(REVOKED).await;

        let stopped = Instant::now();
        self.directory.kill();
        // Latest instants at which a cached answer may still exist.
        let probe_expiry = fetched + TTL + CLOCK_SLACK;
        let all_expiry = stopped + TTL + CLOCK_SLACK;
        let end = stopped + TTL + OUTAGE_AFTER_EXPIRY;
        let mut cached = Tally::default();
        let mut soak_ids = Tally::default();
        let mut cold = Tally::default();
        let mut last_cached_grant: Option<Duration> = None;
        let mut first_probe_refusal: Option<Duration> = None;
        let mut violations = Vec::new();
        let mut k = 0;
        for _ in 0..1_000 {
            if Instant::now() >= end {
                break;
            }
            for who in 0..3 {
                let config = match who {
                    0 => &clients.cache_probe,
                    1 => &clients.identities[k % clients.identities.len()],
                    _ => &clients.cold,
                };
                let at = Instant::now();
                let result = clients.open_as(config, probe_source).await;
                let since = at - stopped;
                let expiry = if who == 0 { probe_expiry } else { all_expiry };
                match &result {
                    Ok(_) if who == 2 => {
                        violations.push(format!(
                            "{} granted {since:?} into the outage: never asked before",
                            config.client_id
                        ));
                    }
                    Ok(_) if at > expiry => violations.push(format!(
                        "{} granted {since:?} into the outage, after its cached answer expired",
                        config.client_id
                    )),
                    Ok(_) => {
                        if who == 0 {
                            last_cached_grant = Some(since);
                        }
                    }
                    Err(e) => {
                        if who == 0 && first_probe_refusal.is_none() {
                            first_probe_refusal = Some(since);
                        }
                        if e.code() != Some(Code::Unavailable) {
                            violations.push(format!(
                                "{} got {} instead of code 4 {since:?} into the outage: {e}",
                                config.client_id,
                                failure_kind(e)
                            ));
                        }
                    }
                }
                match who {
                    0 => cached.record(&result),
                    1 => soak_ids.record(&result),
                    _ => cold.record(&result),
                }
                if let Ok(s) = result {
                    s.close().await;
                }
            }
            k += 1;
            sleep(Duration::from_millis(200)).await;
        }
        let outage = stopped.elapsed();
        self.check(
            last_cached_grant.is_some(),
            "directory down: the cache probe was never served from the cache".into(),
        );
        self.check(
            first_probe_refusal.is_some(),
            "directory down: the cache probe was still served after its answer expired".into(),
        );
        for v in violations.iter().take(20) {
            eprintln!("soak: directory outage: {v}");
        }
        self.check(
            violations.is_empty(),
            format!(
                "directory down: {} violations, first: {}",
                violations.len(),
                violations.first().map_or("", String::as_str)
            ),
        );
        let ms =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{} ms", d.as_millis()));
        self.figure(
            "directory down",
            format!(
                "{:.1} s (answer lifetime {} s): the cache probe served until {} after the stop, code 4 from {}; a client never seen: code 4 throughout",
                outage.as_secs_f64(),
                TTL.as_secs(),
                ms(last_cached_grant),
                ms(first_probe_refusal),
            ),
        );
        cached.took = outage;
        soak_ids.took = outage;
        cold.took = outage;
        self.phase("directory down: cached client", cached);
        self.phase("directory down: soak clients", soak_ids);
        self.phase("directory down: client never seen", cold);

        // Back on its old address: served again.
        let restarted = Instant::now();
        self.directory.start();
        wait_for_listener(self.directory_addr, &self.directory).await;
        let mut tally = Tally::default();
        let mut resumed = None;
        for _ in 0..100 {
            let config = &clients.identities[k % clients.identities.len()];
            let result = clients.open_as(config, probe_source).await;
            tally.record(&result);
            if let Ok(s) = result {
                s.close().await;
                resumed = Some(restarted.elapsed());
                break;
            }
            if restarted.elapsed() > Duration::from_secs(20) {
                break;
            }
            sleep(Duration::from_millis(100)).await;
        }
        tally.took = restarted.elapsed();
        self.check(
            resumed.is_some(),
            "directory restarted: nothing granted within 20 s".into(),
        );
        self.figure(
            "directory return",
            format!("first grant {} after the restart", ms(resumed)),
        );
        self.phase("directory restarted", tally);

        // No running session was cut by the outage (revocation checks ran
        // against a directory that could not answer).
        let failed = Self::ping_all(&self.held_sessions()).await;
        self.check(
            failed.is_empty(),
            format!(
                "after the directory outage: {} of {} sessions failed",
                failed.len(),
                self.held.len()
            ),
        );
        let revoked = self.metric(REVOKED).await - revoked_before;
        self.check(
            revoked == 0.0,
            format!("directory down: {revoked} sessions revoked"),
        );
    }

    /// SIGHUP with the third node removed from the pool, then restored.
    async fn reload_the_pool(&mut self) {
        let removed = 2;
        let removed_id = self.nodes[removed].id.clone();
        let on_removed = self.held.iter().filter(|h| h.hsm == removed_id).count();
        let gone = self.nodes[removed].addr;
        let reduced: Vec<SocketAddr> = self
            .config
            .members
            .iter()
            .copied()
            .filter(|m| *m != gone)
            .collect();
        self.write_config(&reduced);
        let reloads = self.metric(RELOADS_OK).await;
        self.gateway.signal("HUP");
        let applied = self
            .wait_metric(RELOADS_OK, |v| v == reloads + 1.0, PATIENCE)
            .await;
        self.check(
            applied.is_some(),
            format!(
                "SIGHUP: the reduced pool was not applied\n{}",
                self.gateway.describe()
            ),
        );
        let mut tally = Tally::default();
        let served = self.open_and_close(30, &mut tally).await;
        let on_gone = served.iter().filter(|h| **h == removed_id).count();
        self.check(
            on_gone == 0 && tally.refused_total() == 0,
            format!(
                "SIGHUP without {removed_id}: {on_gone} new sessions on it, {} refused",
                tally.refusals()
            ),
        );
        self.phase(&format!("SIGHUP: pool without {removed_id}"), tally);
        // Long enough for the removed member's health checks and control
        // channel to stop; its sessions keep running.
        sleep(Duration::from_millis(4 * HEALTH_INTERVAL_MS) + Duration::from_secs(1)).await;
        let failed = Self::ping_all(&self.held_sessions()).await;
        let failed_on_removed = failed
            .iter()
            .filter(|&&i| self.held[i].hsm == removed_id)
            .count();
        self.check(failed.is_empty(),
            format!(
                "SIGHUP without {removed_id}: {} running sessions failed ({failed_on_removed} of its {on_removed})",
                failed.len()
            ),
        );
        self.figure(
            "reload",
            format!(
                "{removed_id} removed: new sessions on the other two; its {on_removed} running sessions and all others answered ({} failed)",
                failed.len()
            ),
        );

        // Restored: the third node takes sessions again.
        self.write_config(&self.config.members);
        self.gateway.signal("HUP");
        let applied = self
            .wait_metric(RELOADS_OK, |v| v == reloads + 2.0, PATIENCE)
            .await;
        let channel = self.member_sample("hsmgate_backend_grant_channel_up", removed);
        let channel_up = self.wait_metric(&channel, |v| v == 1.0, PATIENCE).await;
        self.check(
            applied.is_some() && channel_up.is_some(),
            "SIGHUP: the restored pool was not applied".into(),
        );
        let mut tally = Tally::default();
        let mut on_restored = 0;
        for _ in 0..10 {
            let served = self.open_and_close(12, &mut tally).await;
            on_restored += served.iter().filter(|h| **h == removed_id).count();
            if on_restored > 0 {
                break;
            }
        }
        self.check(
            on_restored > 0 && tally.refused_total() == 0,
            format!(
                "SIGHUP restoring {removed_id}: {on_restored} new sessions on it, {} refused",
                tally.refusals()
            ),
        );
        self.phase(&format!("SIGHUP: {removed_id} restored"), tally);
    }

    /// Close everything; the gateway must be back at its baseline.
    async fn close_all_and_measure(&mut self) {
        let pid = self.gateway.pid();
        let hwm = status_kib(pid, "VmHWM:").expect("VmHWM");
        let sampled = self.rss.as_ref().map_or(0, RssSampler::peak);
        let n = self.plan.sessions;
        let before = self.rss_before;
        let per_session = |peak: u64| peak.saturating_sub(before) * 1024 / n as u64;
        let (at_n, by_sample, by_hwm) = (
            per_session(self.rss_at_n),
            per_session(sampled),
            per_session(hwm),
        );
        self.figure("RSS peak (sampled VmRSS)", mib(sampled));
        self.figure("RSS peak (VmHWM)", mib(hwm));
        self.figure(
            "RSS per session",
            format!(
                "{at_n} bytes (VmRSS with {n} open minus before, / {n}); \
                 {by_sample} bytes by the sampled peak; {by_hwm} bytes by VmHWM"
            ),
        );
        for h in std::mem::take(&mut self.held) {
            h.session.close().await;
        }
        self.wait_until_idle("after the run").await;
        sleep(Duration::from_secs(2)).await;
        let rss_after = status_kib(pid, "VmRSS:").expect("VmRSS");
        let fds_after = self.steady_fds().await;
        let active = self.metric(SESSIONS_ACTIVE).await;
        let change = (rss_after as f64 - self.rss_before as f64) / self.rss_before as f64 * 100.0;
        self.figure(
            "RSS after",
            format!("{} ({change:+.1} %; {})", mib(rss_after), rss_split(pid)),
        );
        self.figure("fds after", fds_after.to_string());
        self.figure("hsmgate_sessions_active after", active.to_string());
        self.check(
            change.abs() <= 10.0,
            format!(
                "RSS after the run {} is {change:+.1} % of before ({})",
                mib(rss_after),
                mib(self.rss_before)
            ),
        );
        let before = self.fds_before;
        self.check(
            fds_after.sockets == before.sockets && fds_after.other == before.other,
            format!("descriptors after the run {fds_after}, before {before}"),
        );
        // Kept splice pipes are a bounded cache, not a leak.
        self.check(
            fds_after.pipes <= 2 * MAX_IDLE_PIPES,
            format!(
                "{} pipe descriptors after the run (at most {} kept)",
                fds_after.pipes,
                2 * MAX_IDLE_PIPES
            ),
        );
        self.check(
            active == 0.0,
            format!("hsmgate_sessions_active {active} after the run"),
        );
    }

    /// Open the full count again, SIGTERM: half closes during the drain,
    /// the rest runs into the deadline; none is cut before it.
    async fn drain(&mut self) {
        let mut tally = Tally::default();
        let held = self.open_many(self.plan.sessions, &mut tally).await;
        self.check(
            tally.refused_total() == 0,
            format!("drain: reopening {} refused", tally.refusals()),
        );
        self.phase("reopened for the drain", tally);
        // Memory reused, or more of it: the second time at full count.
        sleep(Duration::from_millis(500)).await;
        if let Some(rss) = status_kib(self.gateway.pid(), "VmRSS:") {
            self.figure(
                &format!("RSS with {} sessions again", self.plan.sessions),
                format!("{} (first time {})", mib(rss), mib(self.rss_at_n)),
            );
        }
        let mut closing = Vec::new();
        let mut kept = Vec::new();
        for (i, h) in held.into_iter().enumerate() {
            if i % 2 == 0 {
                closing.push(h.session);
            } else {
                kept.push(h.session);
            }
        }
        let (closed_count, kept_count) = (closing.len(), kept.len());

        let term = Instant::now();
        self.gateway.signal("TERM");
        // Half close on their own during the first half of the drain, each
        // after a last request.
        let closer = tokio::spawn(async move {
            let steps: u32 = 10;
            let per_step = closing.len().div_ceil(steps as usize);
            let mut early = 0;
            let mut sessions = closing.into_iter();
            for step in 0..steps {
                let due = term + DRAIN / 2 * (step + 1) / steps;
                tokio::time::sleep_until(due).await;
                let batch: Vec<Session> = sessions.by_ref().take(per_step).collect();
                early += Soak::ping_all(&batch).await.len();
                for s in batch {
                    s.close().await;
                }
            }
            early
        });
        // The rest: a request on each, round after round, until each fails.
        let mut cut_at: Vec<Option<Duration>> = vec![None; kept.len()];
        let give_up = term + DRAIN + Duration::from_secs(10);
        let mut rounds = 0;
        while Instant::now() < give_up && cut_at.iter().any(Option::is_none) {
            let open: Vec<usize> = (0..kept.len()).filter(|&i| cut_at[i].is_none()).collect();
            let batch: Vec<Session> = open.iter().map(|&i| kept[i].clone()).collect();
            let failed = Self::ping_all(&batch).await;
            let now = term.elapsed();
            for f in failed {
                cut_at[open[f]] = Some(now);
            }
            rounds += 1;
            sleep(Duration::from_millis(100)).await;
        }
        let early_closing = closer.await.expect("the closer did not panic");
        let cut: Vec<Duration> = cut_at.iter().flatten().copied().collect();
        let earliest = cut.iter().min().copied();
        let latest = cut.iter().max().copied();
        let before_deadline = cut.iter().filter(|&&d| d < DRAIN).count();
        let status = self
            .gateway
            .exited_by(term + DRAIN + Duration::from_secs(20))
            .await;
        for s in kept {
            s.close().await;
        }
        self.check(
            before_deadline == 0 && early_closing == 0,
            format!(
                "drain: {before_deadline} running sessions cut before the deadline of {DRAIN:?} \
                 (earliest {earliest:?}); {early_closing} failed before their own close"
            ),
        );
        self.check(
            cut.len() == kept_count,
            format!(
                "drain: {} of {kept_count} sessions still running after the deadline",
                kept_count - cut.len()
            ),
        );
        self.check(
            status.is_some_and(|s| s.success()),
            format!("drain: the gateway did not exit 0 after the deadline: {status:?}"),
        );
        self.figure(
            "drain",
            format!(
                "deadline {} s; {closed_count} closed by their clients during it; {} cut, first noticed at {:.2} s, last at {:.2} s ({rounds} request rounds); exit {status:?}",
                DRAIN.as_secs(),
                cut.len(),
                earliest.unwrap_or_default().as_secs_f64(),
                latest.unwrap_or_default().as_secs_f64(),
            ),
        );

        // One `session ended` line per `session granted` line.
        let log = std::fs::read_to_string(&self.gateway.log).expect("read the gateway's log");
        let granted = session_ids(&log, "session granted");
        let ended = session_ids(&log, "session ended");
        let granted_set: HashSet<&str> = granted.iter().map(String::as_str).collect();
        let ended_set: HashSet<&str> = ended.iter().map(String::as_str).collect();
        let missing = granted_set.difference(&ended_set).count();
        let unknown = ended_set.difference(&granted_set).count();
        self.figure(
            "access log",
            format!(
                "{} `session granted`, {} `session ended` lines; {missing} granted sessions without an end line",
                granted.len(),
                ended.len()
            ),
        );
        self.check(
            missing == 0 && unknown == 0 && ended.len() == ended_set.len(),
            format!(
                "access log: {} granted, {} ended: {missing} sessions have no `session ended` line, \
                 {unknown} end lines for no granted session, {} duplicates",
                granted.len(),
                ended.len(),
                ended.len() - ended_set.len()
            ),
        );
    }

    /// Print the summary; on any failure keep the logs and fail.
    fn finish(mut self) {
        let mut out = String::new();
        writeln!(out, "\n## Soak summary: {} sessions\n", self.plan.sessions).expect("format");
        writeln!(out, "| phase | attempts | granted | refused | time |").expect("format");
        writeln!(out, "| --- | ---: | ---: | --- | ---: |").expect("format");
        for (name, t) in &self.phases {
            writeln!(
                out,
                "| {name} | {} | {} | {} | {:.1} s |",
                t.attempts,
                t.granted,
                t.refusals(),
                t.took.as_secs_f64()
            )
            .expect("format");
        }
        writeln!(out, "\n| figure | value |\n| --- | --- |").expect("format");
        for (name, value) in &self.figures {
            writeln!(out, "| {name} | {value} |").expect("format");
        }
        println!("{out}");
        if self.failures.is_empty() {
            return;
        }
        let kept = self.dir.take().map(|d| d.keep());
        panic!(
            "{} soak checks failed (logs kept in {:?}):\n- {}",
            self.failures.len(),
            kept,
            self.failures.join("\n- ")
        );
    }
}

/// `session_id` of every JSON log line whose message is `message`.
fn session_ids(log: &str, message: &str) -> Vec<String> {
    let needle = format!("\"message\":\"{message}\"");
    let key = "\"session_id\":\"";
    log.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let start = l.find(key)? + key.len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
        .collect()
}

/// The gateway's config file, written as text with the settings the soak
/// chooses (module comment) and every other one at its default, as an
/// operator would write it.
struct GatewayFile {
    key_file: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    directory: SocketAddr,
    max_connections: usize,
    members: Vec<SocketAddr>,
}

impl GatewayFile {
    fn render(&self, members: &[SocketAddr]) -> String {
        let members = members
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "gateway_id = \"soak-gateway\"\nkey_file = \"{key}\"\n\n\
             [[listeners]]\nname = \"main\"\naddress = \"{listen}\"\nbacklog = 4096\n\n\
             [timeouts]\ndrain_ms = {drain}\n\n\
             [limits]\nmax_connections = {max_connections}\nmax_handshakes = 1000\n\
             max_connections_per_source = 1000\nhandshakes_per_second_per_source = 100\n\
             handshake_burst_per_source = 200\nmax_sessions_per_client = 256\n\n\
             [directory]\nendpoint = \"http://{directory}\"\nallow_plaintext = true\n\n\
             [forwarding]\nmax_idle_pipes = {MAX_IDLE_PIPES}\n\n\
             [health]\ninterval_ms = {HEALTH_INTERVAL_MS}\ntimeout_ms = 400\nunhealthy_after = 2\nhealthy_after = 1\n\n\
             [revocation]\nenabled = true\ncheck_interval_ms = {REVOCATION_CHECK_MS}\n\n\
             [admin]\nenabled = true\naddress = \"{admin}\"\n\n\
             [[pools]]\nname = \"{POOL}\"\nmembers = [{members}]\n",
            key = self.key_file.display(),
            listen = self.listen,
            drain = DRAIN.as_millis(),
            max_connections = self.max_connections,
            directory = self.directory,
            admin = self.admin,
        )
    }
}

async fn wait_for_probe(node: &Node) {
    let deadline = Instant::now() + PATIENCE;
    while hsmgate_hsm::probe::check(node.addr, Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{} does not answer probes\n{}",
            node.id,
            node.process.describe()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_listener(addr: SocketAddr, process: &Child) {
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr}\n{}",
            process.describe()
        );
        sleep(Duration::from_millis(50)).await;
    }
}
