//! Test harness: a whole deployment on loopback, in-process, on ephemeral
//! ports — a real tonic directory over a data file, real HSM nodes, the real
//! gateway — plus a recording TCP relay ([`spy`]) to watch the bytes and the
//! order of events between them.

pub mod proc;
pub mod softhsm;
pub mod spy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hsmgate::config::{
    AdminConfig, AdmissionConfig, DirectoryConfig, DiscoveryConfig, ForwardingConfig,
    GatewayConfig, HealthConfig, Limits, ListenerConfig, PoolConfig, Timeouts,
};
use hsmgate::{Gateway, keyfile};
use hsmgate_client::{ClientConfig, ClientError, ConnectOptions, QuicConnection, Session};
use hsmgate_directory::Directory;
use hsmgate_hsm::{GatewaysConfig, HsmConfig, HsmNode, Limits as HsmLimits, PartitionConfig};
use hsmgate_wire::{PublicKey, StaticKeypair};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const TENANT: &str = "demo";
pub const PARTITION: &str = "demo";
pub const CLIENT_ID: &str = "demo-app";
pub const POOL: &str = "default";

/// Bound on every wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What to vary between worlds.
pub struct Options {
    pub hsm_nodes: usize,
    /// Networks of the demo tenant.
    pub tenant_networks: Vec<String>,
    /// `ttl_seconds` of the directory's answers.
    pub ttl_seconds: u32,
    /// Put a recording relay in front of the directory and of each HSM node.
    pub spies: bool,
    /// Last word on the gateway's config.
    pub tweak: fn(&mut GatewayConfig),
    /// The gateway's listeners as (name, address); the first one is
    /// [`World::gateway_addr`]. Default: `main` on 127.0.0.1:0.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Serve the admin endpoints on an ephemeral loopback port.
    pub admin: bool,
    /// Discover the pool's members through DNS instead of listing the HSM
    /// nodes: the pool's `dns` setting and the DNS server to ask (before
    /// `tweak`, which can set the `[discovery]` timings).
    pub pool_dns: Option<(String, SocketAddr)>,
    /// Partitions every HSM node serves besides [`PARTITION`], each with the
    /// demo partition key authorized (the directory does not grant them).
    pub extra_node_partitions: Vec<String>,
    /// Last word on every HSM node's config (in-process nodes only).
    pub hsm_tweak: fn(&mut HsmConfig),
    /// The HSM nodes' key store.
    pub store: TestStore,
    /// With `TestStore::SoftHsm`: one token for all nodes (true), or a token
    /// of its own per node.
    pub shared_token: bool,
    /// The directory serves mutual TLS (a throwaway CA, client certificates
    /// and the gateway identity check required) and the gateway connects
    /// with its certificate; otherwise plain gRPC (`allow_plaintext`).
    pub directory_tls: bool,
    /// Add a QUIC listener `quic` on an ephemeral loopback UDP port
    /// ([`World::quic_addr`]).
    pub quic: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hsm_nodes: 3,
            tenant_networks: vec!["127.0.0.1/32".into(), "::1/128".into()],
            ttl_seconds: 60,
            spies: false,
            tweak: |_| {},
            listeners: vec![("main".into(), SocketAddr::from(([127, 0, 0, 1], 0)))],
            admin: false,
            pool_dns: None,
            extra_node_partitions: Vec::new(),
            hsm_tweak: |_| {},
            store: TestStore::Software,
            shared_token: true,
            directory_tls: false,
            quic: false,
        }
    }
}

/// A stoppable server task.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn spawn<F>(addr: SocketAddr, make: impl FnOnce(watch::Receiver<bool>) -> F) -> Running
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(make(stopped));
        Running {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Tell the server to stop, without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the server task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stop the server and wait until it no longer listens.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(PATIENCE, task).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Completes once `stopped` turns true.
pub async fn stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

pub struct HsmHandle {
    pub id: String,
    pub key: PublicKey,
    pub server: Running,
    /// The address the gateway's pool uses (the spy's when spying).
    pub pool_addr: SocketAddr,
    pub spy: Option<spy::Spy>,
    /// The node, when it runs in this process (the software store).
    node: Option<Arc<HsmNode>>,
    /// The node's SoftHSM2 token, when its partitions are on one.
    pub token: Option<softhsm::Token>,
    /// The node's admin listener (`hsmgate-hsm` processes only).
    pub admin: Option<SocketAddr>,
}

impl HsmHandle {
    /// The node, when it runs in this process.
    pub fn node(&self) -> Option<&Arc<HsmNode>> {
        self.node.as_ref()
    }
}

/// The key store behind a world's HSM nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestStore {
    /// In-process nodes on the software store.
    #[default]
    Software,
    /// `hsmgate-hsm` processes whose partitions live on one SoftHSM2 token
    /// (shared by all of the world's nodes); `hsm_tweak` does not apply.
    SoftHsm,
}

/// Run each named `async fn(TestStore)` as a test on both stores: in
/// `software::NAME` and `softhsm::NAME` (skipped when SoftHSM2 is missing,
/// unless `HSMGATE_REQUIRE_SOFTHSM=1`).
#[macro_export]
macro_rules! each_store {
    ($($test:ident),* $(,)?) => {
        mod software {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    super::$test($crate::TestStore::Software).await
                }
            )*
        }
        mod softhsm {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    if !$crate::softhsm::available() {
                        return;
                    }
                    super::$test($crate::TestStore::SoftHsm).await
                }
            )*
        }
    };
}

/// A whole deployment on loopback.
pub struct World {
    pub dir: tempfile::TempDir,
    pub service_key: StaticKeypair,
    pub partition_key: StaticKeypair,
    pub directory: Arc<Directory>,
    pub directory_server: Running,
    pub directory_spy: Option<spy::Spy>,
    pub hsms: Vec<HsmHandle>,
    pub gateway: Gateway,
    pub gateway_server: Running,
    pub admin_server: Option<Running>,
    pub events: spy::Events,
    /// With `Options::directory_tls`: the link's files and the directory's
    /// reloadable TLS config.
    pub tls: Option<WorldTls>,
}

/// The directory link's PKI in a TLS world: a CA whose certificate both
/// sides trust, the directory's certificate (127.0.0.1) and the gateway's
/// (DNS name `test-gateway`, its gateway_id).
pub struct WorldTls {
    pub ca: hsmgate_authz::pki::Ca,
    pub ca_file: PathBuf,
    pub directory_cert: PathBuf,
    pub directory_key: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub server: Arc<hsmgate_authz::tls::ServerTls>,
}

impl WorldTls {
    fn create(dir: &Path) -> WorldTls {
        use hsmgate_authz::pki::{Ca, Leaf, Usage};
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).expect("tls dir");
        let ca = Ca::new("world CA").expect("CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
        let (directory_cert, directory_key) =
            (dir.join("directory.pem"), dir.join("directory.key"));
        ca.issue(&Leaf::new(
            Usage::Server,
            "directory",
            &["127.0.0.1", "localhost"],
        ))
        .expect("directory certificate")
        .write(&directory_cert, &directory_key)
        .expect("write");
        let (gateway_cert, gateway_key) = (dir.join("gateway.pem"), dir.join("gateway.key"));
        ca.issue(&Leaf::new(Usage::Client, GATEWAY_ID, &[GATEWAY_ID]))
            .expect("gateway certificate")
            .write(&gateway_cert, &gateway_key)
            .expect("write");
        let server = hsmgate_authz::tls::ServerTls::load(hsmgate_authz::tls::ServerTlsFiles {
            cert_file: directory_cert.clone(),
            key_file: directory_key.clone(),
            client_ca_file: Some(ca_file.clone()),
        })
        .expect("server TLS");
        WorldTls {
            ca,
            ca_file,
            directory_cert,
            directory_key,
            gateway_cert,
            gateway_key,
            server: Arc::new(server),
        }
    }
}

/// The gateway_id of a world's gateway.
pub const GATEWAY_ID: &str = "test-gateway";

impl World {
    pub async fn start() -> World {
        World::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let service_key = keyfile::create(&dir.path().join("client.key")).expect("client key");
        let partition_key =
            keyfile::create(&dir.path().join("partition.key")).expect("partition key");
        let gateway_key = keyfile::create(&dir.path().join("gateway.key")).expect("gateway key");
        let events = spy::Events::default();

        let data_path = dir.path().join("directory.toml");
        std::fs::write(
            &data_path,
            directory_toml(
                &service_key.public(),
                &opts.tenant_networks,
                opts.ttl_seconds,
            ),
        )
        .expect("write directory data");
        let directory = Arc::new(Directory::load(&data_path).expect("directory data"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = opts.directory_tls.then(|| WorldTls::create(dir.path()));
        let directory_server = Running::spawn(addr, {
            let directory = Arc::clone(&directory);
            let server_tls = tls.as_ref().map(|t| Arc::clone(&t.server));
            |stop| async move {
                let _ = match server_tls {
                    Some(server_tls) => {
                        hsmgate_directory::serve_tls(
                            directory,
                            listener,
                            server_tls,
                            hsmgate_directory::GatewayIdentity::Required,
                            stopped(stop),
                        )
                        .await
                    }
                    None => hsmgate_directory::serve(directory, listener, stopped(stop)).await,
                };
            }
        });
        let directory_spy = if opts.spies {
            Some(spy::Spy::start("directory", addr, events.clone()).await)
        } else {
            None
        };
        let directory_endpoint = directory_spy.as_ref().map_or(addr, |s| s.addr);

        let mut hsms = Vec::new();
        let shared = (opts.store == TestStore::SoftHsm && opts.shared_token)
            .then(|| softhsm::Token::init(dir.path(), "world"));
        for i in 1..=opts.hsm_nodes {
            let token = match (&shared, opts.store) {
                (Some(t), _) => Some(t.clone()),
                (None, TestStore::SoftHsm) => {
                    let root = dir.path().join(format!("hsm-{i}-token"));
                    std::fs::create_dir_all(&root).expect("token root");
                    Some(softhsm::Token::init(&root, &format!("node-{i}")))
                }
                (None, TestStore::Software) => None,
            };
            let setup = NodeSetup {
                partition_key: &partition_key,
                gateway_key: gateway_key.public(),
                extra_partitions: &opts.extra_node_partitions,
                tweak: opts.hsm_tweak,
            };
            let node = match &token {
                None => start_hsm(dir.path(), i, &setup, opts.spies, &events).await,
                Some(token) => start_hsm_process(dir.path(), i, &setup, token).await,
            };
            hsms.push(node);
        }

        let mut config = GatewayConfig {
            gateway_id: GATEWAY_ID.into(),
            key_file: dir.path().join("gateway.key"),
            listeners: opts
                .listeners
                .iter()
                .map(|(name, address)| ListenerConfig {
                    backlog: 128,
                    ..ListenerConfig::new(name, *address)
                })
                .collect(),
            admission: AdmissionConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            directory: match &tls {
                Some(tls) => DirectoryConfig {
                    endpoint: format!("https://{directory_endpoint}"),
                    ca_file: Some(tls.ca_file.clone()),
                    client_cert_file: Some(tls.gateway_cert.clone()),
                    client_key_file: Some(tls.gateway_key.clone()),
                    ..DirectoryConfig::default()
                },
                None => DirectoryConfig {
                    endpoint: format!("http://{directory_endpoint}"),
                    allow_plaintext: true,
                    ..DirectoryConfig::default()
                },
            },
            forwarding: ForwardingConfig::default(),
            // Probes would show up at the spies as HSM connections: when
            // spying, the first probe is an hour away.
            health: HealthConfig {
                interval_ms: if opts.spies { 3_600_000 } else { 200 },
                timeout_ms: 200,
                ..HealthConfig::default()
            },
            revocation: Default::default(),
            discovery: DiscoveryConfig::default(),
            quic: Default::default(),
            admin: AdminConfig {
                enabled: opts.admin,
                address: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..AdminConfig::default()
            },
            pools: vec![PoolConfig {
                name: POOL.into(),
                members: hsms.iter().map(|h| h.pool_addr).collect(),
                ..PoolConfig::default()
            }],
        };
        if opts.quic {
            config.listeners.push(ListenerConfig::quic(
                "quic",
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ));
        }
        if let Some((dns, nameserver)) = &opts.pool_dns {
            config.pools[0].members.clear();
            config.pools[0].dns = Some(dns.clone());
            config.discovery.nameserver = Some(*nameserver);
        }
        (opts.tweak)(&mut config);
        config.validate().expect("test gateway config is valid");
        let gateway = Gateway::new(config, gateway_key).expect("gateway");
        let listeners = gateway.bind().expect("bind gateway");
        let addr = listeners[0].listener.local_addr().expect("addr");
        let gateway_server = Running::spawn(addr, {
            let gateway = gateway.clone();
            |stop| async move { gateway.run(listeners, stopped(stop)).await }
        });
        let admin_server = match gateway.bind_admin().await.expect("bind admin") {
            Some(listener) => {
                let addr = listener.local_addr().expect("addr");
                let gateway = gateway.clone();
                Some(Running::spawn(addr, |stop| async move {
                    gateway.serve_admin(listener, stopped(stop)).await
                }))
            }
            None => None,
        };
        World {
            dir,
            service_key,
            partition_key,
            directory,
            directory_server,
            directory_spy,
            hsms,
            gateway,
            gateway_server,
            admin_server,
            events,
            tls,
        }
    }

    /// Start HSM node `index` again, on its old address, after a stop
    /// (in-process nodes only).
    pub async fn restart_hsm(&mut self, index: usize) {
        let hsm = &mut self.hsms[index];
        let addr = hsm.server.addr;
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind the node's address");
        let node = Arc::clone(hsm.node.as_ref().expect("an in-process node"));
        hsm.server = Running::spawn(addr, |stop| node.run(listener, stopped(stop)));
    }

    /// Start a new gateway, with the same config and key, on the stopped
    /// gateway's address (after `gateway_server.stop()`).
    pub async fn restart_gateway(&mut self) {
        let mut config = self.gateway.config();
        config.listeners[0].address = self.gateway_server.addr;
        let key = keyfile::load(&self.dir.path().join("gateway.key")).expect("gateway key");
        let gateway = Gateway::new(config, key).expect("gateway");
        let listeners = gateway.bind().expect("rebind the gateway's address");
        let addr = self.gateway_server.addr;
        self.gateway_server = Running::spawn(addr, {
            let gateway = gateway.clone();
            |stop| async move { gateway.run(listeners, stopped(stop)).await }
        });
        self.gateway = gateway;
    }

    /// GET `path` from the admin endpoints: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_get_with(path, "").await
    }

    /// [`World::admin_get`] with extra request header lines (each ending in
    /// `\r\n`), e.g. an `authorization` header.
    pub async fn admin_get_with(&self, path: &str, headers: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .admin_server
            .as_ref()
            .expect("world started with admin: true")
            .addr;
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect admin");
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: test\r\n{headers}connection: close\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .expect("send request");
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .await
                .expect("read response");
            response
        };
        let response = tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("admin answered in time");
        parse_http_response(&response)
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway_server.addr
    }

    /// The text of a client config for this world (as `hsmgate dev` writes it).
    pub fn client_toml(&self) -> String {
        let keys = self
            .hsms
            .iter()
            .map(|h| format!("\"{}\"", h.key.to_text()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "gateway = \"{gw}\"\ngateway_key = \"{key}\"\nclient_id = \"{CLIENT_ID}\"\n\
             tenant = \"{TENANT}\"\npartition = \"{PARTITION}\"\nidentity_file = \"client.key\"\n\
             partition_key_file = \"partition.key\"\nhsm_keys = [{keys}]\n\
             connect_timeout_ms = 2000\nhandshake_timeout_ms = 5000\ntotal_timeout_ms = 10000\n",
            gw = self.gateway_addr(),
            key = self.gateway.public_key().to_text(),
        )
    }

    /// The client config for the QUIC listener (`transport = "quic"`).
    pub fn client_toml_quic(&self) -> String {
        self.client_toml().replacen(
            &format!("gateway = \"{}\"", self.gateway_addr()),
            &format!("gateway = \"{}\"\ntransport = \"quic\"", self.quic_addr()),
            1,
        )
    }

    /// Write the client config into the world's directory; returns its path.
    pub fn write_client_config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("client.toml");
        std::fs::write(&path, format!("{}{extra}", self.client_toml())).expect("write client.toml");
        path
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::from_toml(&self.client_toml(), self.dir.path()).expect("client config")
    }

    /// Connect as the demo client, optionally from another source address.
    pub async fn connect(&self, bind: Option<&str>) -> Result<Session, ClientError> {
        let opts = ConnectOptions {
            bind: bind.map(|b| b.parse().expect("bind address")),
            identity: None,
        };
        self.connect_with(&self.client_config(), &opts).await
    }

    /// The QUIC listener's address (with `Options::quic`).
    pub fn quic_addr(&self) -> SocketAddr {
        self.gateway.quic_addresses()[0]
    }

    /// Open a QUIC connection as the demo client (optionally from another
    /// source address) and its first session.
    pub async fn connect_quic(
        &self,
        bind: Option<&str>,
    ) -> Result<(QuicConnection, Session), ClientError> {
        let opts = ConnectOptions {
            bind: bind.map(|b| b.parse().expect("bind address")),
            identity: None,
        };
        self.connect_quic_with(&self.client_config(), &opts).await
    }

    pub async fn connect_quic_with(
        &self,
        config: &ClientConfig,
        opts: &ConnectOptions,
    ) -> Result<(QuicConnection, Session), ClientError> {
        tokio::time::timeout(
            PATIENCE,
            hsmgate_client::connect_quic_addr(config, opts, self.quic_addr()),
        )
        .await
        .expect("connect finished in time")
    }

    pub async fn connect_with(
        &self,
        config: &ClientConfig,
        opts: &ConnectOptions,
    ) -> Result<Session, ClientError> {
        tokio::time::timeout(PATIENCE, hsmgate_client::connect(config, opts))
            .await
            .expect("connect finished in time")
    }

    /// Rewrite the directory's data file and reload it, as SIGHUP does.
    pub fn rewrite_directory(&self, text: &str) {
        let path = self.directory.path().expect("directory has a file");
        std::fs::write(path, text).expect("write directory data");
        self.directory.reload_from_file().expect("reload");
    }

    /// The value of one sample of the gateway's metrics text, e.g.
    /// `hsmgate_admission_total{result="deny",stage="address"}`; 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.gateway.metrics().render(), sample)
    }
}

/// Find `sample` (name and labels exactly as exposed) in a text exposition.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Directory data for the demo tenant with one client.
pub fn directory_toml(client_key: &PublicKey, networks: &[String], ttl: u32) -> String {
    let networks = networks
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[defaults]\nttl_seconds = {ttl}\n\n[[tenants]]\nname = \"{TENANT}\"\nnetworks = [{networks}]\n\n\
         [[partitions]]\nname = \"{PARTITION}\"\ntenant = \"{TENANT}\"\npool = \"{POOL}\"\n\n\
         [[partitions]]\nname = \"other\"\ntenant = \"{TENANT}\"\npool = \"{POOL}\"\n\n\
         [[clients]]\nid = \"{CLIENT_ID}\"\ntenant = \"{TENANT}\"\npublic_key = \"{key}\"\npartitions = [\"{PARTITION}\"]\n",
        key = client_key.to_text()
    )
}

/// What every HSM node of a world is started with.
struct NodeSetup<'a> {
    partition_key: &'a StaticKeypair,
    gateway_key: PublicKey,
    extra_partitions: &'a [String],
    tweak: fn(&mut HsmConfig),
}

async fn start_hsm(
    dir: &Path,
    i: usize,
    setup: &NodeSetup<'_>,
    spied: bool,
    events: &spy::Events,
) -> HsmHandle {
    let NodeSetup {
        partition_key,
        gateway_key,
        extra_partitions,
        tweak,
    } = setup;
    let key_file = dir.join(format!("hsm-{i}.key"));
    let key = keyfile::create(&key_file).expect("hsm key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let id = format!("hsm-{i}");
    let mut config = HsmConfig {
        admin: Default::default(),
        hsm_id: id.clone(),
        listen: addr,
        key_file,
        // One key store shared by every node, as in a real cluster.
        state_dir: dir.join("hsm-state"),
        limits: HsmLimits::default(),
        gateways: GatewaysConfig {
            trusted_keys: vec![gateway_key.to_text()],
            ..GatewaysConfig::default()
        },
        partitions: std::iter::once(PARTITION)
            .chain(extra_partitions.iter().map(String::as_str))
            .map(|name| PartitionConfig::software(name, vec![partition_key.public().to_text()]))
            .collect(),
    };
    (*tweak)(&mut config);
    let public = key.public();
    let node = Arc::new(HsmNode::new(config, key).expect("hsm node"));
    let server = Running::spawn(addr, {
        let node = Arc::clone(&node);
        |stop| node.run(listener, stopped(stop))
    });
    let spy = if spied {
        Some(spy::Spy::start(&id, addr, events.clone()).await)
    } else {
        None
    };
    HsmHandle {
        pool_addr: spy.as_ref().map_or(addr, |s| s.addr),
        id,
        key: public,
        server,
        spy,
        node: Some(node),
        token: None,
        admin: None,
    }
}

/// An `hsmgate-hsm` process whose partitions live on `token` (the
/// process's environment names the token's SoftHSM2 config).
async fn start_hsm_process(
    dir: &Path,
    i: usize,
    setup: &NodeSetup<'_>,
    token: &softhsm::Token,
) -> HsmHandle {
    let key_file = dir.join(format!("hsm-{i}.key"));
    let key = keyfile::create(&key_file).expect("hsm key");
    // Free ports for the child to bind.
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (addr, admin) = (free(), free());
    let id = format!("hsm-{i}");
    let mut text = format!(
        "hsm_id = \"{id}\"\nlisten = \"{addr}\"\nkey_file = \"{}\"\nstate_dir = \"{}\"\n\
         [admin]\nenabled = true\naddress = \"{admin}\"\n\
         [gateways]\ntrusted_keys = [\"{}\"]\n",
        key_file.display(),
        dir.join("hsm-state").display(),
        setup.gateway_key.to_text()
    );
    for name in std::iter::once(PARTITION).chain(setup.extra_partitions.iter().map(String::as_str))
    {
        text.push_str(&format!(
            "[[partitions]]\nname = \"{name}\"\nclient_keys = [\"{}\"]\n{}",
            setup.partition_key.public().to_text(),
            // One token, one label namespace per partition, shared by all nodes.
            token.partition_toml(&format!("{name}.")),
        ));
    }
    let config = dir.join(format!("hsm-{i}.toml"));
    std::fs::write(&config, text).expect("write node config");
    let mut cmd = std::process::Command::new(binary("hsmgate-hsm"));
    cmd.arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &token.conf)
        .env("RUST_LOG", "warn");
    let mut daemon = proc::Daemon::spawn(&mut cmd);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hsmgate_hsm::probe::check(addr, Duration::from_millis(500))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hsmgate-hsm {id} did not answer probes within {PATIENCE:?}\n{}",
            daemon.transcript()
        );
        if let Ok(Some(status)) = daemon.guard.child().try_wait() {
            panic!("hsmgate-hsm {id} exited: {status}\n{}", daemon.transcript());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = Running::spawn(addr, |stop| async move {
        stopped(stop).await;
        daemon.guard.signal("TERM");
        let _ = tokio::task::spawn_blocking(move || {
            let _ = daemon.guard.wait_timeout(Duration::from_secs(5));
        })
        .await;
    });
    HsmHandle {
        pool_addr: addr,
        id,
        key: key.public(),
        server,
        spy: None,
        node: None,
        token: Some(token.clone()),
        admin: Some(admin),
    }
}

/// A TCP echo server standing in for an HSM node behind the world's
/// gateway: it speaks the node's side of PROTOCOL.md §8 (control channel,
/// Grant checked and stripped), then echoes the client's bytes and
/// half-closes when the client does. Returns its address and the grants it
/// accepted, in order.
pub async fn granted_echo_server(
    world: &World,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<hsmgate_wire::grant::Grant>>>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let gate = Arc::new(hsmgate_hsm::Gatekeeper::standalone(
        hsmgate_hsm::GatewayTrust::of([world.gateway.public_key()]),
        StaticKeypair::generate().expect("key"),
        "echo",
    ));
    let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&grants);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = Arc::clone(&gate);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Some((stream, rest, grant)) = gate.accept_granted(stream).await else {
                    return;
                };
                seen.lock().expect("lock").push(grant);
                let (mut r, mut w) = stream.into_split();
                if w.write_all(&rest).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, grants)
}

/// A loopback port on which nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Path of a workspace binary, built by `cargo test --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A client that runs only the outer handshake (with the world's service
/// key) and, once granted, owns a raw byte pipe to whatever the pool's member
/// is: for forwarding tests with a plain TCP backend. Returns the stream and
/// any bytes that arrived behind the Decision.
pub async fn raw_session(world: &World) -> (tokio::net::TcpStream, Vec<u8>) {
    use hsmgate_wire::frame::{self, FrameType, MAX_OUTER_FRAME_LEN};
    use hsmgate_wire::outer::{AccessRequest, ClientHandshake};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_frame(
        stream: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
    ) -> (FrameType, Vec<u8>) {
        loop {
            if let Some((f, used)) =
                frame::decode(buf, MAX_OUTER_FRAME_LEN).expect("well-formed frame")
            {
                let out = (f.kind, f.body.to_vec());
                buf.drain(..used);
                return out;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "gateway closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(world.gateway_addr())
            .await
            .expect("connect");
        let request = AccessRequest {
            client_id: CLIENT_ID.into(),
            tenant: TENANT.into(),
            partition: PARTITION.into(),
        };
        let (mut hs, hello) =
            ClientHandshake::start(&world.service_key, world.gateway.public_key(), request)
                .expect("hello");
        stream.write_all(&hello).await.expect("send hello");
        let mut buf = Vec::new();
        let (kind, body) = read_frame(&mut stream, &mut buf).await;
        assert_eq!(kind, FrameType::Challenge);
        let (credentials, _) = hs.read_challenge(&body).expect("challenge");
        stream
            .write_all(&credentials)
            .await
            .expect("send credentials");
        let (kind, body) = read_frame(&mut stream, &mut buf).await;
        assert_eq!(kind, FrameType::Decision, "granted with a Decision");
        let decision = hs.read_decision(&body).expect("decision");
        assert_eq!(decision.code, hsmgate_wire::Code::Granted);
        (stream, buf)
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("raw handshake in time")
}

/// Check the text with a real parser of the exposition format: Python's
/// `prometheus_client`. CI installs it and sets HSMGATE_REQUIRE_PROM_CHECK=1;
/// on a machine without it the check is reported as skipped.
pub fn check_exposition_format(text: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, text).expect("write metrics");
    let python = std::env::var("HSMGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        families = list(text_string_to_metric_families(open(sys.argv[1]).read()))\n\
        names = {f.name for f in families}\n\
        need = {'hsmgate_admission', 'hsmgate_handshake_duration_seconds', 'hsmgate_build_info'}\n\
        missing = need - names\n\
        assert not missing, missing\n\
        print(len(families))\n";
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output();
    let required = std::env::var("HSMGATE_REQUIRE_PROM_CHECK").is_ok_and(|v| v == "1");
    match output {
        Ok(out) if out.status.success() => {
            let families = String::from_utf8_lossy(&out.stdout);
            assert!(families.trim().parse::<usize>().expect("family count") >= 10);
        }
        Ok(out)
            if !required && String::from_utf8_lossy(&out.stderr).contains("No module named") =>
        {
            eprintln!("prometheus_client not installed: exposition format check skipped");
        }
        Err(e) if !required => eprintln!("{python} not runnable ({e}): format check skipped"),
        Ok(out) => panic!(
            "exposition format check failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            text
        ),
        Err(e) => panic!("cannot run {python}: {e}"),
    }
}

/// GET `path` from an HTTP server on `addr` with a blocking socket (for
/// tests that run binaries): (status, body).
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.set_write_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    parse_http_response(&response)
}

/// Status and body of an HTTP/1.1 response read to its end.
fn parse_http_response(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// [`http_get_blocking`] off the async runtime.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get_blocking(addr, &path))
        .await
        .expect("the HTTP getter did not panic")
}
