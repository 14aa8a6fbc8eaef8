//! `hsmgate-directory`: the reference directory service as a process.
//!
//! Loads the data file (a bad file prints every problem and exits with code
//! 2; `--check` stops there), serves gRPC, re-reads the file on SIGHUP (keeping the last good data
//! when the new file is broken) and stops gracefully on SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use hsmgate_directory::{Directory, serve};
use hsmgate_log::LogFormat;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

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
    match runtime.block_on(run(args, directory)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, directory: Directory) -> anyhow::Result<()> {
    let directory = Arc::new(directory);
    tracing::info!(
        data = %args.data.display(),
        loaded = %directory.snapshot().summary(),
        "directory data loaded"
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving");

    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let reloader = {
        let directory = directory.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match directory.reload_from_file() {
                    Ok(summary) => tracing::info!(loaded = %summary, "directory data reloaded"),
                    Err(e) => tracing::error!("reload failed, keeping the last good data: {e}"),
                }
            }
        })
    };
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    let served = serve(directory, listener, shutdown).await;
    reloader.abort();
    served?;
    tracing::info!("stopped");
    Ok(())
}
