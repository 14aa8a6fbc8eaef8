//! `hsmgate dev`: a whole deployment in one process, on loopback.
//!
//! On first run it creates, under the state directory, the gateway's key,
//! a demo client's service and partition keys, three HSM node keys, a
//! directory data file and a throwaway CA with the directory's server
//! certificate and the gateway's client certificate (`tls/`); later runs
//! reuse them. It then starts the reference directory (TLS, client
//! certificates and the gateway identity check required) and three HSM
//! nodes on ephemeral loopback ports, the gateway on `--listen`, writes
//! `client.toml` for `hsmgate-client`, and serves until the shutdown future
//! completes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hsmgate_authz::pki::{Ca, Leaf, Usage};
use hsmgate_authz::tls::{ServerTls, ServerTlsFiles};
use hsmgate_directory::{Directory, GatewayIdentity};
use hsmgate_hsm::{GatewaysConfig, HsmConfig, HsmNode, Limits as HsmLimits, PartitionConfig};
use hsmgate_wire::StaticKeypair;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::config::{
    AdminConfig, AdmissionConfig, DirectoryConfig, DiscoveryConfig, ForwardingConfig,
    GatewayConfig, HealthConfig, Limits, ListenerConfig, PoolConfig, Timeouts,
};
use crate::control::keyfile;
use crate::server::Gateway;

pub const HSM_NODES: usize = 3;
pub const TENANT: &str = "demo";
pub const PARTITION: &str = "demo";
pub const CLIENT_ID: &str = "demo-app";
pub const POOL: &str = "default";
pub const GATEWAY_ID: &str = "dev-gateway";

/// Options of `hsmgate dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Admin endpoints (/metrics, /healthz, /readyz, /config); None: off.
    pub admin: Option<SocketAddr>,
    /// Keep the demo partition's keys in this PKCS#11 token (SoftHSM2, an
    /// HSM) instead of the software store.
    pub token: Option<hsmgate_hsm::Pkcs11Config>,
    /// hsmgate-rest's HTTPS address (bearer tokens); None: no REST service.
    pub rest: Option<SocketAddr>,
}

/// A running dev deployment.
pub struct DevDeployment {
    pub gateway: Gateway,
    pub gateway_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub directory_addr: SocketAddr,
    pub hsm_addrs: Vec<SocketAddr>,
    pub client_config: PathBuf,
    /// The PKCS#11 library's config: one slot, the demo partition.
    pub pkcs11_config: PathBuf,
    /// hsmgate-rest, with its address and the file of a dev token.
    pub rest: Option<DevRest>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl DevDeployment {
    /// Create or reuse the state, start every part and return once all listen.
    pub async fn start(opts: &DevOptions) -> anyhow::Result<DevDeployment> {
        let dir = &opts.state_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let gateway_key = keyfile::load_or_create(&dir.join("gateway.key"))?;
        let service_key = keyfile::load_or_create(&dir.join("client.key"))?;
        let partition_key = keyfile::load_or_create(&dir.join("partition.key"))?;
        let rest_dir = dir.join("rest");
        std::fs::create_dir_all(&rest_dir)
            .with_context(|| format!("creating {}", rest_dir.display()))?;
        let rest_key = keyfile::load_or_create(&rest_dir.join("service.key"))?;

        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();

        // Directory: a data file the developer may edit (SIGHUP is not wired
        // in dev mode; restart to pick up changes).
        let data_path = dir.join("directory.toml");
        if !data_path.exists() {
            std::fs::write(&data_path, directory_data(&service_key))
                .with_context(|| format!("writing {}", data_path.display()))?;
        }
        register_rest_client(&data_path, &rest_key)?;
        let directory = Arc::new(
            Directory::load(&data_path)
                .with_context(|| format!("loading {}", data_path.display()))?,
        );
        let tls = DevTls::load_or_create(&dir.join("tls"))?;
        let server_tls = Arc::new(
            ServerTls::load(ServerTlsFiles {
                cert_file: tls.directory_cert.clone(),
                key_file: tls.directory_key.clone(),
                client_ca_file: Some(tls.ca.clone()),
            })
            .context("the directory's TLS files")?,
        );
        let dir_listener = TcpListener::bind("127.0.0.1:0").await?;
        let directory_addr = dir_listener.local_addr()?;
        tasks.spawn({
            let stopped = stopped.clone();
            async move {
                if let Err(e) = hsmgate_directory::serve_tls(
                    directory,
                    dir_listener,
                    server_tls,
                    GatewayIdentity::Required,
                    wait(stopped),
                )
                .await
                {
                    tracing::error!(error = %e, "directory stopped");
                }
            }
        });

        // HSM nodes.
        let mut hsm_addrs = Vec::new();
        let mut hsm_keys = Vec::new();
        for i in 1..=HSM_NODES {
            let key_file = dir.join(format!("hsm-{i}.key"));
            let key = keyfile::load_or_create(&key_file)?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let config = HsmConfig {
                admin: Default::default(),
                hsm_id: format!("hsm-{i}"),
                listen: addr,
                key_file,
                // One key store for the three nodes, as in a real cluster:
                // a key made through one node is usable through the others.
                state_dir: dir.join("hsm-state"),
                limits: HsmLimits::default(),
                // The nodes take sessions only from this gateway (PROTOCOL.md §8).
                gateways: GatewaysConfig {
                    trusted_keys: vec![gateway_key.public().to_text()],
                    ..GatewaysConfig::default()
                },
                partitions: vec![match &opts.token {
                    None => {
                        PartitionConfig::software(PARTITION, vec![partition_key.public().to_text()])
                    }
                    Some(token) => PartitionConfig {
                        store: hsmgate_hsm::StoreKind::Pkcs11,
                        pkcs11: Some(token.clone()),
                        ..PartitionConfig::software(
                            PARTITION,
                            vec![partition_key.public().to_text()],
                        )
                    },
                }],
            };
            hsm_keys.push(key.public());
            let node = Arc::new(HsmNode::new(config, key).context("starting an HSM node")?);
            tasks.spawn(node.run(listener, wait(stopped.clone())));
            hsm_addrs.push(addr);
        }

        let mut config = GatewayConfig {
            gateway_id: GATEWAY_ID.into(),
            key_file: dir.join("gateway.key"),
            listeners: vec![
                ListenerConfig::new("main", opts.listen),
                ListenerConfig::quic("quic", opts.listen),
            ],
            admission: AdmissionConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            directory: DirectoryConfig {
                endpoint: format!("https://{directory_addr}"),
                ca_file: Some(tls.ca.clone()),
                client_cert_file: Some(tls.gateway_cert.clone()),
                client_key_file: Some(tls.gateway_key.clone()),
                ..DirectoryConfig::default()
            },
            forwarding: ForwardingConfig::default(),
            revocation: Default::default(),
            discovery: DiscoveryConfig::default(),
            quic: Default::default(),
            health: HealthConfig::default(),
            admin: AdminConfig {
                enabled: opts.admin.is_some(),
                address: opts.admin.unwrap_or(AdminConfig::default().address),
                ..AdminConfig::default()
            },
            pools: vec![PoolConfig {
                name: POOL.into(),
                members: hsm_addrs.clone(),
                ..PoolConfig::default()
            }],
        };
        // TCP and QUIC (UDP) on the same port number. For port 0 the port
        // is found free over UDP first, then both are bound to it; another
        // process taking it in between costs a new try.
        let mut tries = if opts.listen.port() == 0 { 5 } else { 1 };
        let (gateway, listeners) = loop {
            tries -= 1;
            if opts.listen.port() == 0 {
                let port = std::net::UdpSocket::bind(opts.listen)?.local_addr()?.port();
                for l in &mut config.listeners {
                    l.address.set_port(port);
                }
            }
            config
                .validate()
                .map_err(|p| anyhow::anyhow!("dev config invalid: {p:?}"))?;
            let gateway = Gateway::new(config.clone(), gateway_key.clone())?;
            match gateway.bind() {
                Ok(listeners) => break (gateway, listeners),
                Err(e) if tries > 0 => {
                    tracing::debug!(error = %e, "port taken meanwhile; trying another")
                }
                Err(e) => return Err(e.into()),
            }
        };
        let gateway_addr = listeners[0].listener.local_addr()?;
        let client_config = dir.join("client.toml");
        std::fs::write(
            &client_config,
            client_toml(gateway_addr, &gateway, &hsm_keys),
        )
        .with_context(|| format!("writing {}", client_config.display()))?;
        let pkcs11_config = dir.join("pkcs11.toml");
        std::fs::write(&pkcs11_config, PKCS11_TOML)
            .with_context(|| format!("writing {}", pkcs11_config.display()))?;
        let admin = gateway.bind_admin().await?;
        let admin_addr = match &admin {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        if let Some(admin) = admin {
            let gateway = gateway.clone();
            let stopped = stopped.clone();
            tasks.spawn(async move { gateway.serve_admin(admin, wait(stopped)).await });
        }
        tasks.spawn({
            let gateway = gateway.clone();
            let stopped = stopped.clone();
            async move { gateway.run(listeners, wait(stopped)).await }
        });
        let rest = match opts.rest {
            Some(address) => Some(
                DevRest::start(
                    dir,
                    address,
                    &tls,
                    client_toml(gateway_addr, &gateway, &hsm_keys),
                )
                .await?,
            ),
            None => None,
        };
        Ok(DevDeployment {
            gateway,
            gateway_addr,
            admin_addr,
            directory_addr,
            hsm_addrs,
            client_config,
            pkcs11_config,
            rest,
            stop,
            tasks,
        })
    }

    /// Stop every part and wait for them.
    pub async fn stop(mut self) {
        if let Some(rest) = self.rest.take() {
            rest.service.drain().await;
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The throwaway PKI of the dev directory link, under `tls/` in the state
/// directory.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The CA both sides trust.
    pub ca: PathBuf,
    /// The directory's server certificate (127.0.0.1, localhost) and key.
    pub directory_cert: PathBuf,
    pub directory_key: PathBuf,
    /// The gateway's client certificate (its DNS name is [`GATEWAY_ID`])
    /// and key.
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    /// hsmgate-rest's server certificate (127.0.0.1, localhost) and key.
    pub rest_cert: PathBuf,
    pub rest_key: PathBuf,
}

impl DevTls {
    /// Reuse the files in `dir`, or, when any is missing, make a new CA and
    /// both certificates. The CA's key is not kept: to change a
    /// certificate, delete `dir` and all are made again.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<DevTls> {
        let tls = DevTls {
            ca: dir.join("ca.pem"),
            directory_cert: dir.join("directory.pem"),
            directory_key: dir.join("directory.key"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway.key"),
            rest_cert: dir.join("rest.pem"),
            rest_key: dir.join("rest.key"),
        };
        let files = [
            &tls.ca,
            &tls.directory_cert,
            &tls.directory_key,
            &tls.gateway_cert,
            &tls.gateway_key,
            &tls.rest_cert,
            &tls.rest_key,
        ];
        if files.iter().all(|f| f.is_file()) {
            return Ok(tls);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca::new("hsmgate dev CA (throwaway)").context("making the dev CA")?;
        let write = |what: &str| format!("writing the dev {what} under {}", dir.display());
        std::fs::write(&tls.ca, ca.cert_pem()).with_context(|| write("CA"))?;
        ca.issue(&Leaf::new(
            Usage::Server,
            "hsmgate dev directory",
            &["127.0.0.1", "localhost"],
        ))
        .context("issuing the dev directory certificate")?
        .write(&tls.directory_cert, &tls.directory_key)
        .with_context(|| write("directory certificate"))?;
        ca.issue(&Leaf::new(Usage::Client, GATEWAY_ID, &[GATEWAY_ID]))
            .context("issuing the dev gateway certificate")?
            .write(&tls.gateway_cert, &tls.gateway_key)
            .with_context(|| write("gateway certificate"))?;
        ca.issue(&Leaf::new(
            Usage::Server,
            "hsmgate dev REST",
            &["127.0.0.1", "localhost"],
        ))
        .context("issuing the dev REST certificate")?
        .write(&tls.rest_cert, &tls.rest_key)
        .with_context(|| write("REST certificate"))?;
        Ok(tls)
    }
}

async fn wait(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn directory_data(service_key: &StaticKeypair) -> String {
    format!(
        r#"# Directory data of `hsmgate dev`. Edit and restart `hsmgate dev` to apply.
[defaults]
ttl_seconds = 60
max_sessions = 64

[[tenants]]
name = "{TENANT}"
networks = ["127.0.0.1/32", "::1/128"]

[[partitions]]
name = "{PARTITION}"
tenant = "{TENANT}"
pool = "{POOL}"

[[clients]]
id = "{CLIENT_ID}"
tenant = "{TENANT}"
public_key = "{key}"
partitions = ["{PARTITION}"]
"#,
        key = service_key.public().to_text()
    )
}

/// The directory's client entry of hsmgate-rest: a client of the demo
/// tenant with its own service key. Added to a data file of an earlier
/// `hsmgate dev` that lacks it.
fn register_rest_client(data_path: &Path, rest_key: &StaticKeypair) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(data_path)
        .with_context(|| format!("reading {}", data_path.display()))?;
    if text.contains(&format!("id = \"{REST_CLIENT_ID}\"")) {
        return Ok(());
    }
    let entry = format!(
        r#"
# hsmgate-rest, the REST access path of `hsmgate dev` (docs/REST.md).
[[clients]]
id = "{REST_CLIENT_ID}"
tenant = "{TENANT}"
public_key = "{key}"
partitions = ["{PARTITION}"]
"#,
        key = rest_key.public().to_text()
    );
    std::fs::write(data_path, format!("{}\n{entry}", text.trim_end()))
        .with_context(|| format!("writing {}", data_path.display()))
}

/// The client id of hsmgate-rest in the dev directory.
pub const REST_CLIENT_ID: &str = "hsmgate-rest";

/// hsmgate-rest in `hsmgate dev`: its files under `rest/` in the state
/// directory, the dev token issuer, and the running service.
pub struct DevRest {
    pub service: hsmgate_rest::RestService,
    pub address: SocketAddr,
    /// A token of the demo tenant, valid for a day, renewed at each start.
    pub token_file: PathBuf,
    /// The CA that signed the service's certificate (for `curl --cacert`).
    pub ca_file: PathBuf,
}

impl DevRest {
    async fn start(
        dir: &Path,
        address: SocketAddr,
        tls: &DevTls,
        demo_client_toml: String,
    ) -> anyhow::Result<DevRest> {
        let rest_dir = dir.join("rest");
        let issuer = hsmgate_rest::dev::DevIssuer::load_or_create(&rest_dir)
            .with_context(|| format!("the dev token issuer under {}", rest_dir.display()))?;
        // The demo client's settings with the service's own identity; the
        // partition key is the demo partition's.
        let client = demo_client_toml
            .replace(
                "a client of the demo tenant",
                "hsmgate-rest's client settings",
            )
            .replace(
                &format!("client_id = \"{CLIENT_ID}\""),
                &format!("client_id = \"{REST_CLIENT_ID}\""),
            )
            .replace(
                "identity_file = \"client.key\"",
                "identity_file = \"service.key\"",
            )
            .replace(
                "partition_key_file = \"partition.key\"",
                "partition_key_file = \"../partition.key\"",
            );
        let write = |name: &str, text: &str| {
            let path = rest_dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("client.toml", &client)?;
        let config_text = format!(
            r#"# Written by `hsmgate dev`: hsmgate-rest for the demo partition (docs/REST.md).
drain_timeout_secs = 2

[[listeners]]
name = "bearer"
address = "{address}"
auth = "jwt"

[tls]
cert_file = "{cert}"
key_file = "{key}"

[jwt]
jwks_file = "jwks.json"
issuer = "{issuer}"
audience = "{audience}"

[[partitions]]
name = "{PARTITION}"
client_config = "client.toml"
"#,
            cert = std::path::absolute(&tls.rest_cert)?.display(),
            key = std::path::absolute(&tls.rest_key)?.display(),
            issuer = hsmgate_rest::dev::ISSUER,
            audience = hsmgate_rest::dev::AUDIENCE,
        );
        write("rest.toml", &config_text)?;
        let token_file = rest_dir.join("token");
        hsmgate_authz::pki::write_private(
            &token_file,
            &format!(
                "{}\n",
                issuer.token("dev-user", TENANT, &[PARTITION], 24 * 3600)
            ),
        )
        .with_context(|| format!("writing {}", token_file.display()))?;
        let config = hsmgate_rest::RestConfig::load(&rest_dir.join("rest.toml"))?;
        let service = hsmgate_rest::RestService::start(config).await.with_context(|| {
            format!("starting hsmgate-rest on {address} (choose another with --rest-listen, or --no-rest)")
        })?;
        let address = service.address("bearer").unwrap_or(address);
        Ok(DevRest {
            service,
            address,
            token_file,
            ca_file: tls.ca.clone(),
        })
    }
}

/// The PKCS#11 library's config for the demo partition (docs/PKCS11.md).
const PKCS11_TOML: &str = r#"# Written by `hsmgate dev`: libhsmgate_pkcs11.so with the demo partition as slot 0.
# Select it with: export HSMGATE_PKCS11_CONFIG=<this file>
log_level = "warn"

[[slots]]
client_config = "client.toml"
"#;

fn client_toml(gateway: SocketAddr, gw: &Gateway, hsm_keys: &[hsmgate_wire::PublicKey]) -> String {
    let keys = hsm_keys
        .iter()
        .map(|k| format!("\"{}\"", k.to_text()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# Written by `hsmgate dev`: a client of the demo tenant.
gateway = "{gateway}"
gateway_key = "{gateway_key}"
client_id = "{CLIENT_ID}"
tenant = "{TENANT}"
partition = "{PARTITION}"
identity_file = "client.key"
partition_key_file = "partition.key"
hsm_keys = [{keys}]
"#,
        gateway_key = gw.public_key().to_text()
    )
}

/// The path of `file` for display, relative to the current directory when
/// it lies under it.
pub fn display_path(file: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| file.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| file.to_path_buf())
        .display()
        .to_string()
}
