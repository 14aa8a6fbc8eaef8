//! `hsmgate-hsm`: the HSM node binary.
//!
//! Reads the config (a bad file prints every problem and exits 2), loads the
//! node's static key, binds `listen` and serves until SIGTERM or SIGINT, then
//! drains running sessions. `--check` validates the config and its key
//! file without serving. `--generate-key` writes a new key file (0600)
//! where the config points and exits.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hsmgate_hsm::{HsmConfig, HsmNode};
use hsmgate_log::LogFormat;
use hsmgate_wire::StaticKeypair;

#[derive(Parser)]
#[command(name = "hsmgate-hsm", version, about = "hsmgate HSM node")]
struct Args {
    /// The node's config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Write a new static key pair to `key_file` (refusing to overwrite),
    /// print its public key and exit.
    #[arg(long)]
    generate_key: bool,
    /// Load and validate the config and the key file it names, print a
    /// summary (exit 0) or every problem (exit 2); serve nothing.
    #[arg(long, conflicts_with = "generate_key")]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hsmgate_log::init(args.log_format, "info");
    let config = match HsmConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hsmgate-hsm: bad config {}:", args.config.display());
            for problem in e.problems() {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
    };
    if args.check {
        return check(&args.config, &config);
    }
    let result = if args.generate_key {
        generate_key(&config.key_file)
    } else {
        serve(config, args.config)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate-hsm: {}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `--check`: the config parsed and validated; now the key file.
fn check(path: &Path, config: &HsmConfig) -> ExitCode {
    match load_key(&config.key_file) {
        Ok(key) => {
            println!("# {}: valid", path.display());
            println!("hsm_id = \"{}\"", config.hsm_id);
            println!("listen = \"{}\"", config.listen);
            println!("public_key = \"{}\"", key.public().to_text());
            println!("partitions = {}", config.partitions.len());
            println!("trusted_gateways = {}", config.gateways.trusted_keys.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hsmgate-hsm: bad config {}:", path.display());
            eprintln!("  key_file: {}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// The node's key pair; a missing file is named by its resolved path, with
/// the command that creates it.
fn load_key(path: &Path) -> anyhow::Result<StaticKeypair> {
    use hsmgate_wire::keys::{KeyFileError, read_private_key_file};
    match read_private_key_file(path) {
        Ok(key) => Ok(key),
        Err(KeyFileError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            anyhow::bail!(
                "key file {} does not exist; create one with `hsmgate-hsm --config FILE --generate-key`",
                path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("key file {}", path.display())),
    }
}

fn generate_key(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair = StaticKeypair::generate().context("generating a key pair")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    file.write_all(pair.to_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    println!("{}", pair.public());
    Ok(())
}

fn serve(config: HsmConfig, path: PathBuf) -> anyhow::Result<()> {
    let key = load_key(&config.key_file)?;
    let listen = config.listen;
    let node = Arc::new(HsmNode::new(config, key).context("starting the hsm node")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        if node.config().admin.enabled {
            let address = node.config().admin.address;
            let admin = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding the admin address {address}"))?;
            tracing::info!(address = %admin.local_addr().unwrap_or(address), "admin endpoints listening");
            tokio::spawn(hsmgate_hsm::admin::serve(Arc::clone(&node), admin, std::future::pending()));
        }
        tracing::info!(
            public_key = %node.public_key(),
            partitions = node.config().partitions.len(),
            "hsm node {} listening on {}",
            node.hsm_id(),
            listener.local_addr().unwrap_or(listen),
        );
        reload_on_sighup(Arc::clone(&node), path)?;
        node.run(listener, shutdown_signal()).await;
        Ok(())
    })
}

/// Re-read the config file and the key file on every SIGHUP (§6.2 of
/// OPERATIONS.md: trusted gateway keys, partition client keys and the
/// node's key change without a restart; anything else is refused).
fn reload_on_sighup(node: Arc<HsmNode>, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
            let outcome = HsmConfig::load(&path)
                .map_err(|e| e.problems())
                .and_then(|config| {
                    let key = load_key(&config.key_file).map_err(|e| {
                        vec![format!(
                            "key_file: {}",
                            hsmgate_log::error_chain(e.as_ref())
                        )]
                    })?;
                    node.reload(&config, key)
                });
            let result = if outcome.is_ok() { "ok" } else { "error" };
            node.metrics()
                .config_reloads
                .with_label_values(&[result])
                .inc();
            match outcome {
                Ok(reloaded) => {
                    if reloaded.key_changed {
                        tracing::warn!(
                            old_public_key = %reloaded.old_key,
                            public_key = %node.public_key(),
                            "node key changed: new sessions present the new key; clients must trust it (hsm_keys)"
                        );
                    }
                    tracing::info!(
                        path = %path.display(),
                        withdrawn_grant_keys = reloaded.withdrawn_grant_keys,
                        "config reloaded: trusted gateway keys, partition client keys and the node key in force for new sessions"
                    );
                }
                Err(problems) => tracing::error!(
                    path = %path.display(),
                    problems = %problems.join("; "),
                    "config reload refused; the running config stays in force"
                ),
            }
        }
    });
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
