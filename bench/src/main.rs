//! `hsmgate-bench`: the load generator. Starts a directory, HSM nodes, echo
//! and sink backends, two hsmgate gateway processes and (when installed)
//! HAProxy on loopback, runs the scenarios, prints a Markdown summary and
//! optionally writes the JSON results and the SVG latency plot.
//!
//! See bench/README.md for the scenarios and docs/BENCHMARKS.md for results.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use hsmgate_bench::deploy::{Deployment, Plan, command_line};
use hsmgate_bench::report::{Curve, Machine, Meta, Report};
use hsmgate_bench::scenario::{Bench, Options, Scenario};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "hsmgate-bench",
    version,
    about = "Load generator: hsmgate side by side with the direct path and HAProxy"
)]
struct Args {
    /// Tiny runs for CI (seconds in total); the default is the quick mode.
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Measured seconds per run (default: 2, smoke 0.2).
    #[arg(long, value_name = "SECS")]
    seconds: Option<f64>,
    /// Sessions held open in the idle scenario (default: 2000, smoke 50).
    #[arg(long, value_name = "N")]
    idle_sessions: Option<usize>,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw the latency distributions (SVG) here.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The `hsmgate` binary (default: next to this program).
    #[arg(long, value_name = "PATH")]
    hsmgate_bin: Option<PathBuf>,
    /// The `haproxy` binary (default: found in PATH or /usr/sbin).
    #[arg(long, value_name = "PATH")]
    haproxy: Option<PathBuf>,
    /// Leave HAProxy out even if it is installed.
    #[arg(long)]
    no_haproxy: bool,
    /// Leave out HAProxy's mutual-TLS sessions row.
    #[arg(long)]
    no_mtls: bool,
    /// Leave out the QUIC rows (for a gateway binary without QUIC).
    #[arg(long)]
    no_quic: bool,
    /// Threads of each proxy: HAProxy `nbthread`, gateway tokio workers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    proxy_threads: usize,
    /// The gateway's data path (`[forwarding] mode`): splice, copy or
    /// kernel (the BPF socket map; needs root, falls back to splice).
    #[arg(long, value_name = "MODE", default_value = "splice", value_parser = ["splice", "copy", "kernel"])]
    gateway_forwarding: String,
    /// Pin this program and the proxies to these CPUs (`taskset -c LIST`,
    /// e.g. `0` puts everything on one vCPU); default: unpinned.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// The gateways' RUST_LOG.
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    gateway_log: String,
}

/// Descriptors kept aside for everything but the idle sessions (listeners,
/// the deployment's own connections, pipes).
const RESERVED_FDS: u64 = 1_000;

/// The most idle sessions the open-files limit `limit` allows: two
/// descriptors each in this process and in the proxy under test.
fn max_idle_sessions(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(list) = &args.cpus {
        // Before any thread starts: every later thread inherits the mask.
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", list, &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("taskset -c {list} failed (is util-linux installed, is the list valid?)");
        }
    }
    for file in [&args.out, &args.plot].into_iter().flatten() {
        prepare_output(file)?;
    }
    hsmgate_log::init(hsmgate_log::LogFormat::Text, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

/// Before the first scenario, not after the whole run: create the
/// directory of an output file and check that the file can be written.
fn prepare_output(file: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = if args.smoke {
        Options::smoke()
    } else {
        Options::quick()
    };
    if let Some(s) = args.seconds {
        if !(0.05..=600.0).contains(&s) {
            bail!("--seconds must be within 0.05..=600");
        }
        opts.run = Duration::from_secs_f64(s);
    }
    if let Some(n) = args.idle_sessions {
        let most = max_idle_sessions(hsmgate_bench::procstat::open_files_limit()?);
        if !(1..=most).contains(&n) {
            bail!(
                "--idle-sessions must be within 1..={most}: an idle session holds two descriptors in this process \
                 (the client's end and the echo backend's) and two in the proxy, within this process's open-files limit"
            );
        }
        opts.idle_sessions = n;
    }
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Sessions,
            Scenario::Latency,
            Scenario::Throughput,
            Scenario::Idle,
            Scenario::Pkcs11,
            Scenario::Rest,
            Scenario::Stores,
        ]
    } else {
        args.scenarios.clone()
    };
    let mut notes = Vec::new();
    if cfg!(debug_assertions) {
        notes.push(
            "DEBUG BUILD of hsmgate-bench: build with --release before believing any number."
                .to_owned(),
        );
    }

    let hsmgate_bin = match &args.hsmgate_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this program")?
            .join("hsmgate"),
    };
    if !hsmgate_bin.is_file() {
        bail!(
            "no gateway binary at {} (run `cargo build --release -p hsmgate -p hsmgate-bench`, or pass --hsmgate-bin)",
            hsmgate_bin.display()
        );
    }
    let floor_bin = {
        // Built with this program, so next to it (not next to the gateway,
        // which --hsmgate-bin may take from elsewhere).
        let bin = std::env::current_exe()?.with_file_name("hsmgate-floor");
        if bin.is_file() {
            Some(bin)
        } else {
            notes.push(format!(
                "no {} (cargo build --release -p hsmgate-bench): no floor relay rows.",
                bin.display()
            ));
            None
        }
    };
    let haproxy_bin = if args.no_haproxy {
        notes.push("HAProxy left out (--no-haproxy).".to_owned());
        None
    } else {
        let found = args.haproxy.clone().or_else(|| find_in_path("haproxy"));
        if found.is_none() {
            notes.push(
                "HAProxy is not installed: no HAProxy rows (`apt-get install -y haproxy`)."
                    .to_owned(),
            );
        }
        found
    };
    // The stores scenario needs SoftHSM2 and the node binary.
    let store_nodes = if scenarios.contains(&Scenario::Stores) {
        let node_bin = hsmgate_bin.with_file_name("hsmgate-hsm");
        let softhsm = std::path::Path::new(hsmgate_bench::deploy::SOFTHSM_MODULE).is_file()
            && find_in_path("softhsm2-util").is_some();
        match (node_bin.is_file(), softhsm) {
            (true, true) => Some(node_bin),
            (false, _) => {
                notes.push(format!(
                    "stores: no {} (cargo build --release -p hsmgate-hsm): no stores rows.",
                    node_bin.display()
                ));
                None
            }
            (_, false) => {
                notes.push(
                    "stores: SoftHSM2 is not installed (apt-get install -y softhsm2): no stores rows."
                        .to_owned(),
                );
                None
            }
        }
    } else {
        None
    };
    let plan = Plan {
        hsmgate_bin,
        haproxy_bin,
        proxy_threads: args.proxy_threads.max(1),
        gateway_log: args.gateway_log.clone(),
        mtls: !args.no_mtls,
        cpus: args.cpus.clone(),
        forwarding: args.gateway_forwarding.clone(),
        store_nodes,
        max_sessions: opts.idle_sessions,
        floor_bin,
        quic: !args.no_quic,
    };
    eprintln!("hsmgate-bench: starting the deployment on loopback");
    let dep = Arc::new(Deployment::start(&plan).await?);

    let bench = Bench {
        dep: dep.clone(),
        opts: opts.clone(),
        progress: ProgressBar::hidden(),
    };
    let vias = bench.vias();
    let paths = bench.session_paths();
    let mut total = 0u64;
    for s in &scenarios {
        total += match s {
            Scenario::Sessions => paths.len(),
            Scenario::Latency => {
                vias.len() * opts.latency_sizes.len() * opts.latency_concurrency.len()
            }
            Scenario::Throughput => vias.len() * opts.throughput_concurrency.len(),
            Scenario::Idle => bench.idle_vias().len(),
            Scenario::Pkcs11 => opts.pkcs11_threads.len(),
            Scenario::Rest => opts.rest_callers.len(),
            Scenario::Stores => 4 * opts.store_concurrency.len(),
        } as u64;
    }
    let progress = if args.smoke {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };
    let bench = Bench { progress, ..bench };

    let mut report = Report {
        meta: meta(&args, &opts, &plan, &dep),
        sessions: Vec::new(),
        latency: Vec::new(),
        throughput: Vec::new(),
        idle: Vec::new(),
        pkcs11: Vec::new(),
        rest: Vec::new(),
        stores: Vec::new(),
        curves: Vec::new(),
        notes,
    };
    for s in &scenarios {
        match s {
            Scenario::Sessions => {
                for &p in &paths {
                    let (row, hist) = bench.sessions(p).await?;
                    report.curves.push(Curve {
                        chart: "sessions".into(),
                        label: row.path.clone(),
                        points: hist.percentile_curve(),
                    });
                    if let Some(e) = &row.first_error {
                        report.notes.push(format!(
                            "sessions, {}: {} errors; first: {e}",
                            row.path, row.errors
                        ));
                    }
                    report.sessions.push(row);
                }
            }
            Scenario::Latency => {
                for &size in &opts.latency_sizes {
                    for &c in &opts.latency_concurrency {
                        for &via in &vias {
                            let (row, hist) = bench.latency(via, size, c).await?;
                            if c == 1 {
                                report.curves.push(Curve {
                                    chart: format!("rtt-{size}"),
                                    label: row.path.clone(),
                                    points: hist.percentile_curve(),
                                });
                            }
                            report.latency.push(row);
                        }
                    }
                }
            }
            Scenario::Stores if dep.store_nodes.is_some() => {
                for kind in [
                    hsmgate_client::KeyType::P256,
                    hsmgate_client::KeyType::Rsa2048,
                ] {
                    for &c in &opts.store_concurrency {
                        for store in ["software", "softhsm2"] {
                            bench
                                .progress
                                .set_message(format!("stores, {store}, {kind}, {c} sessions"));
                            let row = hsmgate_bench::stores::row(
                                &dep,
                                store,
                                kind,
                                c,
                                opts.warmup,
                                opts.run,
                                opts.max_signatures,
                            )
                            .await?;
                            if let Some(e) = &row.first_error {
                                report.notes.push(format!(
                                    "stores, {store}, {kind}, {c} sessions: {} errors; first: {e}",
                                    row.errors
                                ));
                            }
                            report.stores.push(row);
                            bench.progress.inc(1);
                        }
                    }
                }
            }
            Scenario::Stores => {}
            Scenario::Pkcs11 => {
                let p11 = hsmgate_bench::pkcs11::Pkcs11Bench::setup(&dep).await?;
                for &threads in &opts.pkcs11_threads {
                    bench
                        .progress
                        .set_message(format!("pkcs11, {threads} threads"));
                    let row = p11
                        .row(threads, opts.warmup, opts.run, opts.max_signatures)
                        .await?;
                    if let Some(e) = &row.first_error {
                        report.notes.push(format!(
                            "pkcs11, {threads} threads: {} errors; first: {e}",
                            row.errors
                        ));
                    }
                    report.pkcs11.push(row);
                    bench.progress.inc(1);
                }
            }
            Scenario::Rest => match hsmgate_bench::rest::binary() {
                None => report.notes.push(
                    "no hsmgate-rest next to hsmgate-bench (cargo build --release -p hsmgate-rest): no rest rows."
                        .to_owned(),
                ),
                Some(bin) => {
                    let rest = hsmgate_bench::rest::RestBench::setup(&dep, &bin).await?;
                    for &callers in &opts.rest_callers {
                        bench
                            .progress
                            .set_message(format!("rest, {callers} callers"));
                        let row = rest
                            .row(callers, opts.warmup, opts.run, opts.max_signatures)
                            .await?;
                        if let Some(e) = &row.first_error {
                            report.notes.push(format!(
                                "rest, {callers} callers: {} errors; first: {e}",
                                row.errors
                            ));
                        }
                        report.rest.push(row);
                        bench.progress.inc(1);
                    }
                }
            },
            Scenario::Throughput => {
                for &c in &opts.throughput_concurrency {
                    for &via in &vias {
                        report.throughput.push(bench.throughput(via, c).await?);
                    }
                }
            }
            Scenario::Idle => {
                for via in bench.idle_vias() {
                    let row = bench.idle(via).await?;
                    if let Some(e) = &row.first_error {
                        report.notes.push(format!(
                            "idle, {}: opened {} of {}; first error: {e}",
                            row.path, row.opened, row.requested
                        ));
                    }
                    report.idle.push(row);
                }
            }
        }
    }
    bench.progress.finish_and_clear();
    report.notes.push(format!(
        "Proxy CPU is user + system time from /proc/PID/stat ({} Hz ticks) over the measured part of each run, \
         plus the kernel worker threads' (kworker/*) over the same part, for every proxy alike (a gateway with \
         forwarding.mode = \"kernel\" forwards from them); the direct path has no proxy. Everything ran on \
         loopback on the same {} vCPUs.",
        hsmgate_bench::procstat::clock_ticks_per_second(),
        report.meta.machine.nproc,
    ));

    print!("{}", report.markdown());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("hsmgate-bench: results written to {}", out.display());
    }
    if let Some(plot) = &args.plot {
        hsmgate_bench::plot::write_svg(
            plot,
            &[
                ("rtt-64", "Round trip, 64 B, one established session"),
                ("sessions", "New session: connect, handshakes, one ping"),
            ],
            &report.curves,
        )
        .with_context(|| format!("drawing {}", plot.display()))?;
        eprintln!("hsmgate-bench: plot written to {}", plot.display());
    }
    drop(bench);
    drop(dep);
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn meta(args: &Args, opts: &Options, plan: &Plan, dep: &Deployment) -> Meta {
    let date = command_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
        .unwrap_or_else(|| "unknown".into());
    let mut commit = command_line(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        commit.push_str(" + uncommitted changes");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib =
        hsmgate_bench::procstat::parse_kib_field(&meminfo, "MemTotal:").unwrap_or(0) / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Meta {
        date,
        commit,
        machine: Machine {
            // The machine's, not this process's affinity mask (--cpus).
            nproc: command_line(Command::new("nproc").arg("--all"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            kernel,
            cpu,
            memory_mib,
        },
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        mode: opts.name.into(),
        seconds_per_run: opts.run.as_secs_f64(),
        proxy_threads: plan.proxy_threads,
        placement: match &args.cpus {
            Some(list) => format!("every process pinned with `taskset -c {list}`"),
            None => "unpinned (no taskset)".into(),
        } + "; load generator, backends, directory and HSM nodes share one process and its tokio runtime",
        hsmgate: dep.hsmgate_version.clone(),
        haproxy: dep
            .haproxy
            .as_ref()
            .map(|h| format!("{} (TCP mode, splice-auto)", h.version)),
        gateway_log: args.gateway_log.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::{max_idle_sessions, prepare_output};

    #[test]
    fn idle_sessions_are_bounded_by_the_open_files_limit() {
        assert_eq!(max_idle_sessions(20_000), 9_500);
        assert_eq!(max_idle_sessions(1_024), 12);
        assert_eq!(max_idle_sessions(500), 0);
    }

    #[test]
    fn an_output_directory_is_made_before_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("new/deeper/results.json");
        prepare_output(&file).expect("created");
        assert!(file.parent().expect("parent").is_dir());
    }

    #[test]
    fn an_unwritable_output_fails_before_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"x").expect("write");
        let err = prepare_output(&blocker.join("results.json")).expect_err("refused");
        assert!(format!("{err:#}").contains("a-file"), "{err:#}");
    }
}
