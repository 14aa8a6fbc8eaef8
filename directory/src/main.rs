//! `hsmgate-directory`: the reference directory service as a process.
//!
//! Loads the data file (a bad file prints every problem and exits with code
//! 2; `--check` stops there), serves gRPC over TLS (or, only with
//! `--insecure-plaintext`, without), re-reads the data file and the TLS
//! files on SIGHUP and the TLS files when they change (keeping what is in
//! force when a new file is broken), and stops gracefully on SIGTERM or
//! SIGINT.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hsmgate_authz::tls::{ServerTls, ServerTlsFiles};
use hsmgate_directory::{Directory, GatewayIdentity, serve, serve_tls};
use hsmgate_log::LogFormat;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// How often the TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(
    name = "hsmgate-directory",
    version,
    about = "hsmgate reference directory service"
)]
struct Args {
    /// The TOML data file (tenants, partitions, clients).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Address to serve gRPC on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Load and validate the data file, print a summary (exit 0) or every
    /// problem (exit 2); serve nothing.
    #[arg(long)]
    check: bool,
    /// The directory's TLS certificate chain (PEM, its own certificate
    /// first). Re-read on SIGHUP and when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of the CAs in FILE
    /// (PEM bundle) on every connection: mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Refuse (PERMISSION_DENIED) a request whose gateway_id is not a DNS
    /// name of its client certificate (subjectAltName).
    #[arg(long, requires = "client_ca")]
    require_gateway_identity: bool,
    /// Serve gRPC without TLS: anyone on the network path can read the
    /// answers and forge grants. For a directory reachable only through a
    /// trusted tunnel or on loopback.
    #[arg(long, conflicts_with_all = ["tls_cert", "client_ca"])]
    insecure_plaintext: bool,
}

impl Args {
    /// The TLS settings; `Ok(None)` with --insecure-plaintext.
    fn tls(&self) -> Result<Option<ServerTlsFiles>, &'static str> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(ServerTlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: self.client_ca.clone(),
            })),
            _ if self.insecure_plaintext => Ok(None),
            _ => Err(
                "--tls-cert and --tls-key are required (or --insecure-plaintext to serve \
                 gRPC without TLS, which lets anyone on the network path forge grants)",
            ),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    hsmgate_log::init(args.log_format, "info");
    let directory = match Directory::load(&args.data) {
        Ok(directory) => directory,
        Err(e) => {
            eprintln!("hsmgate-directory: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "# {}: valid; {}",
            args.data.display(),
            directory.snapshot().summary()
        );
        return ExitCode::SUCCESS;
    }
    let tls = match args.tls() {
        Ok(None) => None,
        Ok(Some(files)) => match ServerTls::load(files) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                eprintln!("hsmgate-directory: TLS: {e}");
                return ExitCode::from(2);
            }
        },
        Err(why) => {
            eprintln!("hsmgate-directory: {why}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hsmgate-directory: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, directory, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, directory: Directory, tls: Option<Arc<ServerTls>>) -> anyhow::Result<()> {
    let directory = Arc::new(directory);
    tracing::info!(
        data = %args.data.display(),
        loaded = %directory.snapshot().summary(),
        "directory data loaded"
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    match &tls {
        Some(_) => tracing::info!(
            listen = %listener.local_addr()?,
            client_certificates = if args.client_ca.is_some() { "required" } else { "not asked" },
            gateway_identity = if args.require_gateway_identity { "required" } else { "unchecked" },
            "serving gRPC over TLS"
        ),
        None => tracing::warn!(
            listen = %listener.local_addr()?,
            "serving gRPC WITHOUT TLS (--insecure-plaintext): anyone on the network path can read answers and forge grants"
        ),
    }

    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let reloader = {
        let directory = directory.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match directory.reload_from_file() {
                    Ok(summary) => tracing::info!(loaded = %summary, "directory data reloaded"),
                    Err(e) => tracing::error!("reload failed, keeping the last good data: {e}"),
                }
                if let Some(tls) = &tls {
                    log_tls_reload(tls.reload(), "SIGHUP");
                }
            }
        })
    };
    let watcher = tls.clone().map(|tls| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TLS_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Some(outcome) = tls.reload_if_changed() {
                    log_tls_reload(outcome, "file change");
                }
            }
        })
    });
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    let served = match tls {
        Some(tls) => {
            let identity = if args.require_gateway_identity {
                GatewayIdentity::Required
            } else {
                GatewayIdentity::Unchecked
            };
            serve_tls(directory, listener, tls, identity, shutdown).await
        }
        None => serve(directory, listener, shutdown).await,
    };
    reloader.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

fn log_tls_reload(outcome: Result<(), hsmgate_authz::tls::TlsError>, trigger: &str) {
    match outcome {
        Ok(()) => tracing::info!(trigger, "TLS certificate reloaded; new connections use it"),
        Err(e) => tracing::error!(
            trigger,
            error = %e,
            "TLS reload refused; the certificate in force stays"
        ),
    }
}
