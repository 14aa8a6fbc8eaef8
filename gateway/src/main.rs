//! `hsmgate`: the gateway binary.
//!
//! - `hsmgate run --config FILE`: serve until SIGTERM or SIGINT, then drain.
//! - `hsmgate check-config --config FILE`: validate the config and its key
//!   file, print the effective config or every problem (exit 0 or 2).
//! - `hsmgate keygen --out FILE`: write a new static key pair (0600) and
//!   print its public key.
//! - `hsmgate dev`: gateway, reference directory and three HSM nodes in one
//!   process on loopback, for trying the system out.
//!
//! A bad config file prints every problem with its field path and exits 2.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hsmgate::dev::{DevDeployment, DevOptions, display_path};
use hsmgate::{Gateway, GatewayConfig, keyfile};
use hsmgate_log::LogFormat;

const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "hsmgate",
    version,
    about = "hsmgate: the access gateway of a cloud HSM service"
)]
struct Args {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Use this gateway id instead of the file's `gateway_id` (also after
        /// reloads): one id per instance, e.g. the pod's name, so that the
        /// directory's audit log tells instances apart.
        #[arg(long, value_name = "ID")]
        gateway_id: Option<String>,
        /// Serve the admin endpoints here instead of the file's
        /// `admin.address` (e.g. the pod's IP, known only at start).
        #[arg(long, value_name = "ADDR")]
        admin_address: Option<SocketAddr>,
    },
    /// Load and validate a config file, the key file and the TLS files it
    /// names, then
    /// print the effective config (exit 0) or every problem (exit 2).
    /// Binds nothing, starts nothing.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// As `run --gateway-id`.
        #[arg(long, value_name = "ID")]
        gateway_id: Option<String>,
    },
    /// Write a new static key pair and print its public key.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Seal the private key under a passphrase (Argon2id, AES-256-GCM),
        /// for client key files: taken from --passphrase-file, else from
        /// HSMGATE_KEY_PASSPHRASE.
        #[arg(long)]
        encrypt: bool,
        /// A file whose first line is the passphrase.
        #[arg(long, value_name = "FILE", requires = "encrypt")]
        passphrase_file: Option<PathBuf>,
    },
    /// Run gateway, directory and three HSM nodes on loopback.
    Dev {
        /// Keys, data and client config live here (created on first run).
        #[arg(long, value_name = "DIR", default_value = "./.hsmgate-dev")]
        state_dir: PathBuf,
        /// The gateway's address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2300")]
        listen: SocketAddr,
        /// The admin endpoints' address (/metrics, /healthz, /readyz, /config).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9300")]
        admin: SocketAddr,
        /// Keep the demo partition's keys in a PKCS#11 token: the vendor
        /// library (e.g. /usr/lib/softhsm/libsofthsm2.so).
        #[arg(long, value_name = "PATH", requires_all = ["pkcs11_token", "pkcs11_pin_file"])]
        pkcs11_module: Option<PathBuf>,
        /// The token's label.
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
        pkcs11_token: Option<String>,
        /// A file whose first line is the token's user PIN (mode 0600).
        #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
        pkcs11_pin_file: Option<PathBuf>,
        /// hsmgate-rest's HTTPS address (JWT bearer tokens; docs/REST.md).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        rest_listen: SocketAddr,
        /// Do not start hsmgate-rest.
        #[arg(long)]
        no_rest: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if matches!(args.command, Command::Run { .. } | Command::Dev { .. }) {
        hsmgate::thread_cache::restart_without_thread_cache();
    }
    hsmgate_log::init(args.log_format, "info");
    let result = match args.command {
        Command::Run {
            config,
            gateway_id,
            admin_address,
        } => {
            let path = config;
            let overrides = Overrides {
                gateway_id: gateway_id.clone(),
                admin_address,
            };
            let config = match load_config(&path, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hsmgate: bad config {}:", path.display());
                    for problem in e.problems() {
                        eprintln!("  {problem}");
                    }
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            run(config, path, overrides)
        }
        Command::CheckConfig { config, gateway_id } => {
            let overrides = Overrides {
                gateway_id,
                admin_address: None,
            };
            return check_config(&config, &overrides);
        }
        Command::Keygen {
            out,
            encrypt,
            passphrase_file,
        } => keygen(&out, encrypt, passphrase_file.as_deref()),
        Command::Dev {
            state_dir,
            listen,
            admin,
            pkcs11_module,
            pkcs11_token,
            pkcs11_pin_file,
            rest_listen,
            no_rest,
        } => dev(DevOptions {
            state_dir,
            listen,
            admin: Some(admin),
            rest: (!no_rest).then_some(rest_listen),
            token: pkcs11_module.map(|module| hsmgate_hsm::Pkcs11Config {
                module,
                token_label: pkcs11_token,
                token_serial: None,
                pin_file: pkcs11_pin_file,
                pin_env: None,
                label_prefix: "demo.".into(),
                sessions: 8,
                session_wait_ms: 5_000,
            }),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate: {}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `hsmgate check-config`: what `run` would load, without serving.
fn check_config(path: &std::path::Path, overrides: &Overrides) -> ExitCode {
    let mut problems = Vec::new();
    let config = match load_config(path, overrides) {
        Ok(config) => Some(config),
        Err(e) => {
            problems.extend(e.problems());
            None
        }
    };
    let key = config
        .as_ref()
        .map(|config| keyfile::load(&config.key_file));
    if let Some(Err(e)) = &key {
        problems.push(format!("key_file: {}", hsmgate_log::error_chain(e)));
    }
    if let Some(config) = &config {
        // What `run` reads at start besides the key: the TLS files.
        if config.directory.uses_tls()
            && let Err(e) = hsmgate_authz::tls::ClientTls::load(config.directory.tls_files())
        {
            problems.push(format!("directory: {}", hsmgate_log::error_chain(&e)));
        }
        if let Err(e) = hsmgate::admin_tls::load(
            config.admin.tls_cert_file.as_ref(),
            config.admin.tls_key_file.as_ref(),
        ) {
            problems.push(format!("admin: {}", hsmgate_log::error_chain(&e)));
        }
    }
    match (config, key) {
        (Some(config), Some(Ok(key))) if problems.is_empty() => {
            let body = toml::to_string_pretty(&config)
                .unwrap_or_else(|e| format!("# cannot render the config: {e}\n"));
            println!("# {}: valid", path.display());
            println!("# public_key = \"{}\"", key.public().to_text());
            print!("{body}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("hsmgate: bad config {}:", path.display());
            for problem in problems {
                eprintln!("  {problem}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What the command line sets in place of the file.
#[derive(Clone, Default)]
struct Overrides {
    gateway_id: Option<String>,
    admin_address: Option<SocketAddr>,
}

/// Load and validate `path`, with the command line's overrides in place of
/// the file's values.
fn load_config(
    path: &std::path::Path,
    overrides: &Overrides,
) -> Result<GatewayConfig, hsmgate::config::ConfigError> {
    let mut config = GatewayConfig::load(path)?;
    if overrides.gateway_id.is_some() || overrides.admin_address.is_some() {
        if let Some(id) = &overrides.gateway_id {
            config.gateway_id.clone_from(id);
        }
        if let Some(address) = overrides.admin_address {
            config.admin.address = address;
        }
        config
            .validate()
            .map_err(|problems| hsmgate::config::ConfigError::Invalid {
                path: path.to_owned(),
                problems: problems
                    .into_iter()
                    .map(|mut p| {
                        if p.field == "gateway_id" {
                            p.field = "--gateway-id".into();
                        } else if p.field.starts_with("admin.") {
                            p.field = format!("{} (with --admin-address)", p.field);
                        }
                        p
                    })
                    .collect(),
            })?;
    }
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn run(config: GatewayConfig, path: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    let key = keyfile::load(&config.key_file)?;
    runtime()?.block_on(async move {
        let gateway = Gateway::new(config, key)?;
        gateway.keep_overrides(overrides.gateway_id, overrides.admin_address);
        let listeners = gateway.bind()?;
        if let Some(admin) = gateway.bind_admin().await? {
            tracing::info!(address = %admin.local_addr()?, "admin endpoints listening");
            let gateway = gateway.clone();
            tokio::spawn(async move { gateway.serve_admin(admin, std::future::pending()).await });
        }
        for l in &listeners {
            tracing::info!(
                listener = %l.name,
                address = %l.listener.local_addr()?,
                gateway_id = %gateway.config().gateway_id,
                public_key = %gateway.public_key(),
                "listening"
            );
        }
        for address in gateway.quic_addresses() {
            tracing::info!(
                %address,
                transport = "quic",
                gateway_id = %gateway.config().gateway_id,
                public_key = %gateway.public_key(),
                "listening (UDP)"
            );
        }
        reload_on_sighup(gateway.clone(), path)?;
        // The serving loop runs on a worker thread, beside the accept loops
        // and the sessions it spawns: on the thread that calls `block_on`
        // every accepted connection and every ended session would wake it
        // from another thread (BENCHMARKS.md run 16).
        tokio::spawn(async move { gateway.run(listeners, shutdown_signal()).await })
            .await
            .context("the serving loop")?;
        Ok(())
    })
}

fn keygen(
    out: &std::path::Path,
    encrypt: bool,
    passphrase_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let pair = if encrypt {
        let passphrase = keyfile::read_passphrase(passphrase_file)?;
        keyfile::create_sealed(out, passphrase.as_bytes())?
    } else {
        keyfile::create(out)?
    };
    println!("{}", pair.public());
    Ok(())
}

fn dev(opts: DevOptions) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let deployment = DevDeployment::start(&opts).await?;
        let config = display_path(&deployment.client_config);
        println!("hsmgate dev: gateway on {} (TCP and QUIC), directory on {}, HSM nodes on {}",
            deployment.gateway_addr,
            deployment.directory_addr,
            deployment.hsm_addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        );
        println!("hsmgate dev: gateway public key {}", deployment.gateway.public_key());
        if let Some(admin) = deployment.admin_addr {
            println!("hsmgate dev: admin endpoints on http://{admin}/metrics, /healthz, /readyz, /config");
        }
        println!("hsmgate dev: try, in another terminal:");
        println!("  cargo run -p hsmgate-client -- --config {config} ping");
        println!("  cargo run -p hsmgate-client -- --config {config} random 16");
        println!("  cargo run -p hsmgate-client -- --config {config} --transport quic ping");
        println!("  cargo run -p hsmgate-client -- --config {config} --bind 127.0.0.2 ping   # refused: address not allowed");
        println!("hsmgate dev: PKCS#11 applications (cargo build -p hsmgate-pkcs11):");
        println!("  export HSMGATE_PKCS11_CONFIG={}", absolute(&deployment.pkcs11_config));
        println!("  pkcs11-tool --module target/debug/libhsmgate_pkcs11.so --list-slots");
        if let Some(rest) = &deployment.rest {
            println!("hsmgate dev: REST API on https://{} (docs/REST.md), a dev token in {}:", rest.address, display_path(&rest.token_file));
            println!(
                "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" https://{}/v1/partitions/demo/keys",
                display_path(&rest.ca_file),
                display_path(&rest.token_file),
                rest.address
            );
        }
        println!("hsmgate dev: ready (Ctrl-C to stop)");
        shutdown_signal().await;
        deployment.stop().await;
        Ok(())
    })
}

/// `path` made absolute, for a line the user pastes into another shell.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Re-read the config file on every SIGHUP.
fn reload_on_sighup(gateway: Gateway, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
            gateway.reload_file(&path);
        }
    });
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot listen for SIGTERM; only Ctrl-C stops the gateway");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; a second signal stops at once"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping; a second signal stops at once"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("second signal: exiting without waiting for sessions");
        std::process::exit(1);
    });
}
