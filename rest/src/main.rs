//! `hsmgate-rest --config FILE`: the REST access path (docs/REST.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hsmgate_log::LogFormat;
use hsmgate_rest::{RestConfig, RestService};
use tokio::signal::unix::{SignalKind, signal};

/// How often the TLS files and the key set are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "hsmgate-rest",
    version,
    about = "hsmgate REST access path: HTTPS with JWT bearer tokens or mutual TLS"
)]
struct Args {
    /// The config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Check the config and its files, print the result, exit.
    #[arg(long)]
    check: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    hsmgate_log::init(args.log_format, "info");
    let config = match RestConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hsmgate-rest: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return match hsmgate_rest::check_files(&config) {
            Ok(summary) => {
                println!("{}: ok ({summary})", args.config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("hsmgate-rest: {}:", args.config.display());
                for p in problems {
                    eprintln!("  {p}");
                }
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hsmgate-rest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmgate-rest: {}", hsmgate_log::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(config: RestConfig) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let service = RestService::start(config).await?;
    // On stdout for scripts and supervisors; the log has the same.
    for (name, address) in service.addresses() {
        println!("listening {name} https://{address}");
        tracing::info!(listener = %name, address = %address, "listening (HTTPS)");
    }
    if let Some(admin) = service.admin_address() {
        println!("admin http://{admin}");
        tracing::info!(address = %admin, "admin listening (/metrics, /healthz, /readyz)");
    }
    println!("hsmgate-rest ready");
    tracing::info!("hsmgate-rest ready");
    let mut poll = tokio::time::interval(FILE_POLL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => report_reload(service.reload(), "SIGHUP"),
            _ = poll.tick() => report_reload(service.reload_if_changed(), "file change"),
        }
    }
    tracing::info!("draining");
    tokio::select! {
        _ = service.drain() => tracing::info!("stopped"),
        _ = term.recv() => tracing::warn!("second signal: exiting without waiting for requests"),
        _ = interrupt.recv() => tracing::warn!("second signal: exiting without waiting for requests"),
    }
    Ok(())
}

fn report_reload(problems: Vec<String>, why: &str) {
    for p in problems {
        tracing::error!(cause = why, problem = %p, "reload failed; the config in force stays");
    }
}
