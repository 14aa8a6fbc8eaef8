//! `hsmgate-hsm`: the HSM node binary.
//!
//! Reads the config (a bad file prints every problem and exits 2), loads the
//! node's static key, binds `listen` and serves until SIGTERM or SIGINT, then
//! drains running sessions. `--generate-key` writes a new key file (0600)
//! where the config points and exits.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hsmgate_hsm::{HsmConfig, HsmNode};
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
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
    let result = if args.generate_key {
        generate_key(&config.key_file)
    } else {
        serve(config)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate-hsm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

fn serve(config: HsmConfig) -> anyhow::Result<()> {
    let key = hsmgate_wire::keys::read_private_key_file(&config.key_file)
        .with_context(|| format!("key file {}", config.key_file.display()))?;
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
        node.run(listener, shutdown_signal()).await;
        Ok(())
    })
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
