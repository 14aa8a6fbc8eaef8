//! What runs under test, all on loopback: the reference directory and the
//! HSM nodes (in this process), the echo and sink backends (in this
//! process), two `hsmgate` gateway processes and, when installed, one
//! HAProxy process in front of the same backends.
//!
//! The proxies run as processes of their own so that `/proc/PID` gives each
//! one's CPU time and memory, and nothing else's. Both get the same number of
//! threads (`--proxy-threads`: HAProxy `nbthread`, the gateway's tokio
//! `TOKIO_WORKER_THREADS`).
//!
//! Gateway `cached` is an ordinary gateway (answers cached for 300 s);
//! gateway `uncached` has `cache_max_ttl_secs = 0`, so every session asks
//! the directory: the cache-miss rows of the `sessions` scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hsmgate::{GatewayConfig, keyfile};
use hsmgate_directory::Directory;
use hsmgate_hsm::{GatewaysConfig, HsmConfig, HsmNode, Limits as HsmLimits, PartitionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::Backends;
use crate::driver::Identity;
use crate::tls::MutualTls;

pub const TENANT: &str = "bench";
pub const CLIENT_ID: &str = "bench-client";
/// The partition served by the HSM nodes (pool `hsm`).
pub const PARTITION_HSM: &str = "bench";
/// Partitions whose pools are the raw echo and sink backends.
pub const PARTITION_ECHO: &str = "echo";
pub const PARTITION_SINK: &str = "sink";
/// HSM nodes in the pool, as in `hsmgate dev`.
pub const HSM_NODES: usize = 3;
/// The `stores` scenario's partitions: one `hsmgate-hsm` process each, on
/// the software store and on a SoftHSM2 token.
pub const PARTITION_SOFTWARE: &str = "store-software";
pub const PARTITION_TOKEN: &str = "store-token";
/// SoftHSM2's library as Debian installs it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Bound on a proxy's start.
const START_PATIENCE: Duration = Duration::from_secs(15);

/// What to start.
#[derive(Debug, Clone)]
pub struct Plan {
    pub hsmgate_bin: PathBuf,
    /// None: no HAProxy rows.
    pub haproxy_bin: Option<PathBuf>,
    /// Threads of each proxy.
    pub proxy_threads: usize,
    /// `RUST_LOG` of the gateways.
    pub gateway_log: String,
    /// Also start HAProxy's mutual-TLS frontend.
    pub mtls: bool,
    /// Pin the proxies to these CPUs (`taskset -c LIST`); None: unpinned.
    pub cpus: Option<String>,
    /// The gateways' data path: `splice` or `copy`.
    pub forwarding: String,
    /// Most sessions held at once through one proxy (the idle scenario).
    pub max_sessions: usize,
    /// The floor relay (`hsmgate-floor`); None: no floor rows.
    pub floor_bin: Option<PathBuf>,
    /// Start the `stores` scenario's two node processes (software store and
    /// SoftHSM2 token): the `hsmgate-hsm` binary to run.
    pub store_nodes: Option<PathBuf>,
    /// Give the gateway with the decision cache a QUIC listener too (off
    /// for an older gateway binary that has none).
    pub quic: bool,
}

impl Plan {
    /// A command for `program`, under `taskset` when the plan pins CPUs
    /// (taskset execs the program, so the child's pid is the program's).
    fn command(&self, program: &Path) -> Command {
        match &self.cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// A proxy process we started; killed when dropped.
pub struct ProxyProcess {
    pub name: &'static str,
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl ProxyProcess {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        Ok(ProxyProcess {
            name,
            child,
            pid,
            log,
        })
    }

    /// Wait until `addr` accepts a connection, or fail with the log's tail.
    async fn wait_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) during start:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_PATIENCE {
                bail!(
                    "{} did not listen on {addr} within {START_PATIENCE:?}:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn usage(&self) -> anyhow::Result<crate::procstat::Usage> {
        crate::procstat::usage(self.pid).with_context(|| format!("reading /proc of {}", self.name))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway process.
pub struct GatewayProcess {
    pub process: ProxyProcess,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Its QUIC listener (UDP), when it has one.
    pub quic: Option<SocketAddr>,
}

/// The HAProxy process and its frontends.
pub struct Haproxy {
    pub process: ProxyProcess,
    pub version: String,
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    /// Plain TCP in front of the HSM nodes.
    pub hsm: SocketAddr,
    /// Mutual TLS 1.3 terminated by HAProxy, in front of the HSM nodes.
    pub hsm_mtls: Option<SocketAddr>,
}

/// The floor relay (`hsmgate-floor`) in front of the echo and sink
/// backends: the least a user-space relay adds.
pub struct Floor {
    pub process: ProxyProcess,
    pub echo: SocketAddr,
    pub sink: SocketAddr,
}

/// Everything under test.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub identity: Identity,
    pub directory: SocketAddr,
    pub hsm: Vec<SocketAddr>,
    pub backends: Backends,
    pub gateway: GatewayProcess,
    pub gateway_uncached: GatewayProcess,
    pub haproxy: Option<Haproxy>,
    pub floor: Option<Floor>,
    pub mtls: Option<MutualTls>,
    pub hsmgate_version: String,
    /// The `stores` scenario's nodes, when the plan asked for them.
    pub store_nodes: Option<StoreNodes>,
    /// The client side of the QUIC rows: one UDP socket for every QUIC
    /// connection the load generator opens.
    pub quic_client: Option<quinn::Endpoint>,
    stop: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Deployment {
    pub async fn start(plan: &Plan) -> anyhow::Result<Deployment> {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-bench-")
            .tempdir()?;
        let path = dir.path();
        let gateway_key = keyfile::create(&path.join("gateway.key"))?;
        let service = keyfile::create(&path.join("client.key"))?;
        let partition_key = keyfile::create(&path.join("partition.key"))?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Directory.
        let data = path.join("directory.toml");
        std::fs::write(
            &data,
            directory_toml(&service.public().to_text(), plan.store_nodes.is_some()),
        )?;
        let directory = Arc::new(Directory::load(&data).context("loading the directory data")?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let directory_addr = listener.local_addr()?;
        tasks.spawn({
            let stopped = stopped.clone();
            async move {
                if let Err(e) = hsmgate_directory::serve(directory, listener, wait(stopped)).await {
                    tracing::error!(error = %e, "directory stopped");
                }
            }
        });

        // HSM nodes, sharing one key store.
        let mut hsm = Vec::new();
        let mut hsm_keys = Vec::new();
        for i in 1..=HSM_NODES {
            let key_file = path.join(format!("hsm-{i}.key"));
            let key = keyfile::create(&key_file)?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let config = HsmConfig {
                admin: Default::default(),
                hsm_id: format!("hsm-{i}"),
                listen: addr,
                key_file,
                state_dir: path.join("hsm-state"),
                limits: HsmLimits {
                    max_sessions: 8192,
                    max_sessions_per_client: 0,
                    ..HsmLimits::default()
                },
                // hsmgate's sessions open with its grant; the direct path
                // and HAProxy connect without one, which only this
                // insecure setting allows (a benchmark, never production).
                gateways: GatewaysConfig {
                    trusted_keys: vec![gateway_key.public().to_text()],
                    insecure_allow_direct: true,
                    ..GatewaysConfig::default()
                },
                partitions: vec![PartitionConfig::software(
                    PARTITION_HSM,
                    vec![partition_key.public().to_text()],
                )],
            };
            hsm_keys.push(key.public());
            let node = Arc::new(HsmNode::new(config, key).context("starting an HSM node")?);
            tasks.spawn(node.run(listener, wait(stopped.clone())));
            hsm.push(addr);
        }

        let backends = Backends::start(gateway_key.public()).await?;
        let store_nodes = match &plan.store_nodes {
            Some(bin) => Some(
                start_store_nodes(
                    bin,
                    plan,
                    path,
                    &gateway_key.public(),
                    &partition_key.public(),
                )
                .await
                .context("starting the stores scenario's nodes")?,
            ),
            None => None,
        };
        let pools = Pools {
            stores: store_nodes.as_ref().map(|s| s.addrs),
            hsm: hsm.clone(),
            echo: backends.echo,
            sink: backends.sink,
            echo_granted: backends.echo_granted,
            sink_granted: backends.sink_granted,
        };
        let gateway = start_gateway(plan, path, "cached", directory_addr, &pools, 300).await?;
        let quic_client = match gateway.quic {
            Some(_) => Some(crate::quic::client_endpoint()?),
            None => None,
        };
        let gateway_uncached =
            start_gateway(plan, path, "uncached", directory_addr, &pools, 0).await?;

        let mtls = if plan.mtls && plan.haproxy_bin.is_some() {
            Some(MutualTls::create(path)?)
        } else {
            None
        };
        let haproxy = match &plan.haproxy_bin {
            Some(bin) => Some(start_haproxy(plan, bin, path, &pools, mtls.as_ref()).await?),
            None => None,
        };
        let floor = match &plan.floor_bin {
            Some(bin) => Some(start_floor(plan, bin, path, &pools).await?),
            None => None,
        };
        let hsmgate_version = command_line(Command::new(&plan.hsmgate_bin).arg("--version"))
            .unwrap_or_else(|| "hsmgate (unknown version)".into());

        Ok(Deployment {
            identity: Identity {
                client_id: CLIENT_ID.into(),
                tenant: TENANT.into(),
                service,
                partition_key,
                gateway_key: gateway_key.public(),
                hsm_keys,
            },
            directory: directory_addr,
            hsm,
            backends,
            gateway,
            gateway_uncached,
            haproxy,
            floor,
            mtls,
            hsmgate_version,
            store_nodes,
            quic_client,
            dir,
            stop,
            _tasks: tasks,
        })
    }
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The members of the gateway's pools.
pub struct Pools {
    /// The `stores` scenario's nodes: (software store, SoftHSM2 token).
    pub stores: Option<(SocketAddr, SocketAddr)>,
    pub hsm: Vec<SocketAddr>,
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    /// The listeners of the same backends that hsmgate reaches (with its grant).
    pub echo_granted: SocketAddr,
    pub sink_granted: SocketAddr,
}

fn directory_toml(client_key: &str, stores: bool) -> String {
    let mut text = format!(
        r#"# Written by hsmgate-bench.
[defaults]
ttl_seconds = 300
max_sessions = 0

[[tenants]]
name = "{TENANT}"
networks = ["127.0.0.0/8"]

[[partitions]]
name = "{PARTITION_HSM}"
tenant = "{TENANT}"
pool = "hsm"

[[partitions]]
name = "{PARTITION_ECHO}"
tenant = "{TENANT}"
pool = "echo"

[[partitions]]
name = "{PARTITION_SINK}"
tenant = "{TENANT}"
pool = "sink"

[[clients]]
id = "{CLIENT_ID}"
tenant = "{TENANT}"
public_key = "{client_key}"
partitions = ["{PARTITION_HSM}", "{PARTITION_ECHO}", "{PARTITION_SINK}"{store_partitions}]
"#,
        store_partitions = if stores {
            format!(", \"{PARTITION_SOFTWARE}\", \"{PARTITION_TOKEN}\"")
        } else {
            String::new()
        }
    );
    if stores {
        for (partition, pool) in [(PARTITION_SOFTWARE, "software"), (PARTITION_TOKEN, "token")] {
            text.push_str(&format!(
                "\n[[partitions]]\nname = \"{partition}\"\ntenant = \"{TENANT}\"\npool = \"{pool}\"\n"
            ));
        }
    }
    text
}

/// The gateway's config file. Limits that would throttle a load generator
/// on one source address are off; health probes are an hour apart because
/// the echo and sink backends do not answer the HSM probe (PING → PONG).
/// Where a gateway of the benchmark listens.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Its QUIC listener (UDP), if it gets one.
    pub quic: Option<SocketAddr>,
}

pub fn gateway_toml(
    name: &str,
    addrs: GatewayAddrs,
    directory: SocketAddr,
    cache_ttl_secs: u64,
    pools: &Pools,
    forwarding: &str,
) -> String {
    let GatewayAddrs {
        listen,
        admin,
        quic,
    } = addrs;
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"# Written by hsmgate-bench.
gateway_id = "bench-{name}"
key_file = "gateway.key"

[[listeners]]
name = "main"
address = "{listen}"
backlog = 4096
{quic_listener}
[admission]
allow = ["127.0.0.0/8"]

[limits]
max_connections = 10000
max_connections_per_source = 0
handshakes_per_second_per_source = 0
max_sessions_per_client = 0

[directory]
endpoint = "http://{directory}"
allow_plaintext = true
cache_max_ttl_secs = {cache_ttl_secs}
cache_deny_ttl_secs = {deny_ttl}

[forwarding]
mode = "{forwarding}"

[health]
interval_ms = 3600000
timeout_ms = 1000
unhealthy_after = 100

[admin]
enabled = true
address = "{admin}"

[[pools]]
name = "hsm"
members = [{hsm}]

[[pools]]
name = "echo"
members = ["{echo}"]

[[pools]]
name = "sink"
members = ["{sink}"]
{stores}"#,
        deny_ttl = cache_ttl_secs.min(5),
        quic_listener = match quic {
            Some(addr) => format!(
                "\n[[listeners]]\nname = \"quic\"\naddress = \"{addr}\"\ntransport = \"quic\"\n"
            ),
            None => String::new(),
        },
        hsm = list(&pools.hsm),
        echo = pools.echo_granted,
        sink = pools.sink_granted,
        stores = match pools.stores {
            Some((software, token)) => format!(
                "\n[[pools]]\nname = \"software\"\nmembers = [\"{software}\"]\n\n\
                 [[pools]]\nname = \"token\"\nmembers = [\"{token}\"]\n"
            ),
            None => String::new(),
        },
    )
}

/// The `stores` scenario's two `hsmgate-hsm` processes: the same binary and
/// limits, one partition each, on the software store and on a SoftHSM2 token
/// initialized here.
pub struct StoreNodes {
    pub software: ProxyProcess,
    pub token: ProxyProcess,
    pub addrs: (SocketAddr, SocketAddr),
    /// The two nodes' public keys, which the client trusts.
    pub keys: Vec<hsmgate_wire::PublicKey>,
}

async fn start_store_nodes(
    bin: &Path,
    plan: &Plan,
    dir: &Path,
    gateway_key: &hsmgate_wire::PublicKey,
    partition_key: &hsmgate_wire::PublicKey,
) -> anyhow::Result<StoreNodes> {
    let tokens = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    let pin = "hsmgate-bench-pin";
    let status = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            pin,
            "--so-pin",
            "bench-so-pin",
        ])
        .stdout(Stdio::null())
        .status()
        .context("running softhsm2-util")?;
    if !status.success() {
        bail!("softhsm2-util --init-token failed: {status}");
    }
    let pin_file = dir.join("token.pin");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)?;
        writeln!(f, "{pin}")?;
    }
    let start = async |name: &'static str, partition: &str, store: String| {
        let addr = free_port()?;
        let key_file = dir.join(format!("{partition}.key"));
        let key = keyfile::create(&key_file)?.public();
        let config = dir.join(format!("{partition}.toml"));
        std::fs::write(
            &config,
            format!(
                "hsm_id = \"{partition}\"\nlisten = \"{addr}\"\nkey_file = \"{}\"\n\
                 state_dir = \"{}\"\n[limits]\nmax_sessions = 8192\nmax_sessions_per_client = 0\n\
                 [gateways]\ntrusted_keys = [\"{}\"]\n\
                 [[partitions]]\nname = \"{partition}\"\nclient_keys = [\"{}\"]\n{store}",
                key_file.display(),
                dir.join("store-state").display(),
                gateway_key.to_text(),
                partition_key.to_text(),
            ),
        )?;
        let mut process = ProxyProcess::spawn(
            name,
            plan.command(bin)
                .arg("--config")
                .arg(&config)
                .env("SOFTHSM2_CONF", &conf)
                .env("RUST_LOG", "warn"),
            dir.join(format!("{partition}.log")),
        )?;
        process.wait_listening(addr).await?;
        Ok::<_, anyhow::Error>((process, addr, key))
    };
    let (software, software_addr, software_key) = start(
        "hsm node (software store)",
        PARTITION_SOFTWARE,
        String::new(),
    )
    .await?;
    let token_store = format!(
        "store = \"pkcs11\"\n[partitions.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\n\
         token_label = \"bench\"\npin_file = \"{}\"\nsessions = 16\n",
        pin_file.display()
    );
    let (token, token_addr, token_key) =
        start("hsm node (SoftHSM2)", PARTITION_TOKEN, token_store).await?;
    Ok(StoreNodes {
        software,
        token,
        addrs: (software_addr, token_addr),
        keys: vec![software_key, token_key],
    })
}

async fn start_gateway(
    plan: &Plan,
    dir: &Path,
    name: &'static str,
    directory: SocketAddr,
    pools: &Pools,
    cache_ttl_secs: u64,
) -> anyhow::Result<GatewayProcess> {
    let addr = free_port()?;
    let admin = free_port()?;
    let quic = if plan.quic && cache_ttl_secs > 0 {
        Some(free_udp_port()?)
    } else {
        None
    };
    let addrs = GatewayAddrs {
        listen: addr,
        admin,
        quic,
    };
    let text = gateway_toml(
        name,
        addrs,
        directory,
        cache_ttl_secs,
        pools,
        &plan.forwarding,
    );
    // Refuse a bad config here, with every problem, before a process starts.
    GatewayConfig::from_toml(&text, dir)
        .map_err(|e| anyhow::anyhow!("generated gateway config: {}", e.problems().join("; ")))?;
    let config = dir.join(format!("gateway-{name}.toml"));
    std::fs::write(&config, text)?;
    let mut process = ProxyProcess::spawn(
        if cache_ttl_secs > 0 {
            "hsmgate"
        } else {
            "hsmgate (uncached)"
        },
        plan.command(&plan.hsmgate_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", &plan.gateway_log)
            .env("TOKIO_WORKER_THREADS", plan.proxy_threads.to_string()),
        dir.join(format!("gateway-{name}.log")),
    )?;
    // The admin listener is bound after the main one: once it answers, both do.
    process.wait_listening(admin).await?;
    if plan.forwarding == "kernel" {
        // A gateway that could not load its BPF program splices: its rows
        // would be the splice path's under the kernel's name.
        let text = admin_get(admin, "/metrics").await?;
        let loaded = text
            .lines()
            .filter_map(|l| l.strip_prefix("hsmgate_kernel_forwarding "))
            .any(|v| v.trim() == "1");
        if !loaded {
            bail!(
                "{name} gateway: --gateway-forwarding kernel, but its BPF program is not loaded \
                 (root, clang at build time; see {})",
                process.log.display()
            );
        }
    }
    Ok(GatewayProcess {
        process,
        addr,
        admin,
        quic,
    })
}

/// HAProxy's connection and pipe limits for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HaproxyLimits {
    open_files: u64,
    maxconn: u64,
    maxpipes: u64,
}

impl HaproxyLimits {
    /// Room for `sessions` held at once (at least 7,500 connections), and
    /// as many splice pipes (a quarter of the connections at most, HAProxy's
    /// default) as the rest of `open_files` allows.
    fn for_sessions(sessions: usize, open_files: u64) -> HaproxyLimits {
        let maxconn = (sessions as u64 + 100).max(7_500);
        let spare = open_files.saturating_sub(2 * maxconn + 200) / 2;
        HaproxyLimits {
            open_files,
            maxconn,
            maxpipes: spare.min(maxconn / 4).max(64),
        }
    }
}

async fn start_haproxy(
    plan: &Plan,
    bin: &Path,
    dir: &Path,
    pools: &Pools,
    mtls: Option<&MutualTls>,
) -> anyhow::Result<Haproxy> {
    let (echo, sink, hsm) = (free_port()?, free_port()?, free_port()?);
    let hsm_mtls = match mtls {
        Some(_) => Some(free_port()?),
        None => None,
    };
    let servers = pools
        .hsm
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server hsm-{} {a}\n", i + 1))
        .collect::<String>();
    let limits =
        HaproxyLimits::for_sessions(plan.max_sessions, crate::procstat::open_files_limit()?);
    let mut cfg = format!(
        r#"# Written by hsmgate-bench: TCP mode, splice, no logging, no health checks.
# maxconn and maxpipes: two descriptors per connection and two per pipe
# must fit the open-files limit HAProxy inherits ({limit}).
global
    nbthread {threads}
    maxconn {maxconn}
    maxpipes {maxpipes}
    pidfile {pidfile}

defaults
    mode tcp
    timeout connect 5s
    timeout client 15m
    timeout server 15m
    option splice-auto

frontend echo
    bind {echo}
    default_backend echo

backend echo
    server echo {echo_be}

frontend sink
    bind {sink}
    default_backend sink

backend sink
    server sink {sink_be}

frontend hsm
    bind {hsm}
    default_backend hsm

backend hsm
    balance roundrobin
{servers}"#,
        threads = plan.proxy_threads,
        limit = limits.open_files,
        maxconn = limits.maxconn,
        maxpipes = limits.maxpipes,
        pidfile = dir.join("haproxy.pid").display(),
        echo_be = pools.echo,
        sink_be = pools.sink,
    );
    if let (Some(addr), Some(tls)) = (hsm_mtls, mtls) {
        cfg.push_str(&format!(
            r#"
frontend hsm_mtls
    bind {addr} ssl crt {crt} ca-file {ca} verify required ssl-min-ver TLSv1.3
    default_backend hsm
"#,
            crt = tls.server_pem.display(),
            ca = tls.ca_pem.display(),
        ));
    }
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg)?;
    let mut process = ProxyProcess::spawn(
        "haproxy",
        plan.command(bin).arg("-db").arg("-f").arg(&file),
        dir.join("haproxy.log"),
    )?;
    process.wait_listening(echo).await?;
    if let Some(addr) = hsm_mtls {
        process.wait_listening(addr).await?;
    }
    // "HAProxy version 2.6.12-1+deb12u3 2025/10/03 - https://haproxy.org/"
    let version = command_line(Command::new(bin).arg("-v"))
        .and_then(|l| l.split_whitespace().nth(2).map(|v| format!("HAProxy {v}")))
        .unwrap_or_else(|| "HAProxy (unknown version)".into());
    Ok(Haproxy {
        process,
        version,
        echo,
        sink,
        hsm,
        hsm_mtls,
    })
}

async fn start_floor(plan: &Plan, bin: &Path, dir: &Path, pools: &Pools) -> anyhow::Result<Floor> {
    let (echo, sink) = (free_port()?, free_port()?);
    let mut process = ProxyProcess::spawn(
        "hsmgate-floor",
        plan.command(bin)
            .arg(format!("{echo}={}", pools.echo))
            .arg(format!("{sink}={}", pools.sink)),
        dir.join("floor.log"),
    )?;
    process.wait_listening(echo).await?;
    process.wait_listening(sink).await?;
    Ok(Floor {
        process,
        echo,
        sink,
    })
}

/// A loopback port free right now (bound, read, released).
pub fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// The first line a command prints, if it runs.
pub fn command_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().next().map(|l| l.trim().to_owned())
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `GET path` on a gateway's admin listener, body only.
pub async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        (&mut s).take(16 << 20).read_to_end(&mut out),
    )
    .await
    .context("admin endpoint timed out")??;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// Sum of the samples of `metric` whose labels contain `label` (e.g.
/// `cache="hit"`), from Prometheus text.
pub fn metric_sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_limits_fit_the_open_files_limit() {
        // The quick run: HAProxy's usual room.
        let quick = HaproxyLimits::for_sessions(2_000, 20_000);
        assert_eq!((quick.maxconn, quick.maxpipes), (7_500, 1_875));
        // 9,000 idle sessions: every connection fits, pipes take the rest.
        let many = HaproxyLimits::for_sessions(9_000, 20_000);
        assert_eq!(many.maxconn, 9_100);
        assert!(
            2 * many.maxconn + 2 * many.maxpipes + 200 <= 20_000,
            "{many:?}"
        );
        assert!(many.maxpipes >= 64);
    }

    #[test]
    fn generated_gateway_config_is_valid() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        for (ttl, stores) in [(0, None), (300, Some((a(10), a(11))))] {
            let pools = Pools {
                stores,
                hsm: vec![a(4), a(5)],
                echo: a(6),
                sink: a(7),
                echo_granted: a(8),
                sink_granted: a(9),
            };
            let addrs = GatewayAddrs {
                listen: a(1),
                admin: a(2),
                quic: Some(a(12)),
            };
            let text = gateway_toml("t", addrs, a(3), ttl, &pools, "copy");
            let config = GatewayConfig::from_toml(&text, Path::new("/tmp"))
                .unwrap_or_else(|e| panic!("{:?}", e.problems()));
            assert_eq!(config.directory.cache_max_ttl_secs, ttl);
            assert_eq!(config.pools.len(), if stores.is_some() { 5 } else { 3 });
        }
    }

    #[test]
    fn generated_directory_data_is_valid() {
        let key = hsmgate_wire::StaticKeypair::generate().expect("key");
        for stores in [false, true] {
            hsmgate_directory::DirectoryData::from_toml_str(&directory_toml(
                &key.public().to_text(),
                stores,
            ))
            .expect("valid directory data");
        }
    }

    #[test]
    fn sums_labelled_samples() {
        let text = "# HELP x\nhsmgate_authz_requests_total{cache=\"hit\",result=\"allow\"} 7\n\
                    hsmgate_authz_requests_total{cache=\"miss\",result=\"allow\"} 2\n\
                    hsmgate_authz_requests_total_other{cache=\"hit\"} 100\n";
        assert_eq!(
            metric_sum(text, "hsmgate_authz_requests_total", "cache=\"hit\""),
            7.0
        );
        assert_eq!(
            metric_sum(text, "hsmgate_authz_requests_total", "cache=\"miss\""),
            2.0
        );
    }
}
