//! The `hsmgate run` process and its signals: SIGHUP reloads the config file
//! (a valid one takes effect, an invalid one is refused and the old one
//! stays), SIGTERM drains a running session to completion and exits 0.
//! The directory and the HSM nodes run in-process; the gateway is the real
//! binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hsmgate::GatewayConfig;
use hsmgate_client::{ClientConfig, ConnectOptions, GatewayAddr};
use hsmgate_tests::proc::Daemon;
use hsmgate_tests::{Options, PATIENCE, World, binary};

/// A loopback port free at the time of asking.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn write_config(path: &PathBuf, config: &GatewayConfig) {
    std::fs::write(path, toml::to_string(config).expect("render")).expect("write config");
}

struct Process {
    daemon: Daemon,
    addr: SocketAddr,
    config_path: PathBuf,
    config: GatewayConfig,
}

/// Start `hsmgate run` on the world's directory and HSM nodes, with the
/// world's gateway key, and wait until it serves.
async fn start(world: &World) -> Process {
    start_with_args(world, &[]).await
}

/// [`start`], with more arguments to `hsmgate run`.
async fn start_with_args(world: &World, extra: &[&str]) -> Process {
    start_with_env(world, extra, &[]).await
}

/// [`start_with_args`], with more environment variables.
async fn start_with_env(world: &World, extra: &[&str], env: &[(&str, &str)]) -> Process {
    let addr = free_port();
    let mut config = world.gateway.config();
    config.listeners[0].address = addr;
    config.admin.enabled = false;
    let config_path = world.dir.path().join("gateway-process.toml");
    write_config(&config_path, &config);
    let daemon = Daemon::spawn(
        Command::new(binary("hsmgate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .args(extra)
            .envs(env.iter().copied()),
    );
    let process = Process {
        daemon,
        addr,
        config_path,
        config,
    };
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "hsmgate run listens\n{}", process.daemon.transcript());
    process
}

/// SIGHUP, and wait for the gateway to log a good reload.
async fn reload(process: &Process) {
    process.daemon.guard.signal("HUP");
    for _ in 0..100 {
        if process.daemon.stderr_contains("config reloaded") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no reload logged\n{}", process.daemon.transcript());
}

fn client_config(world: &World, process: &Process) -> ClientConfig {
    let mut config = world.client_config();
    config.gateway = GatewayAddr::Addr(process.addr);
    config
}

async fn connect(
    world: &World,
    process: &Process,
    bind: &str,
) -> Result<hsmgate_client::Session, hsmgate_client::ClientError> {
    let opts = ConnectOptions {
        bind: Some(bind.parse().expect("bind")),
        identity: None,
    };
    world
        .connect_with(&client_config(world, process), &opts)
        .await
}

fn world_options() -> Options {
    Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_refuses_an_invalid_one() {
    let world = World::start_with(world_options()).await;
    let process = start(&world).await;
    connect(&world, &process, "127.0.0.3")
        .await
        .expect("127.0.0.3 allowed by the first config")
        .ping()
        .await
        .expect("ping");

    // A valid new file: only 127.0.0.1 may connect.
    let mut narrowed = process.config.clone();
    narrowed.admission.allow = vec!["127.0.0.1/32".parse().expect("net")];
    write_config(&process.config_path, &narrowed);
    process.daemon.guard.signal("HUP");
    let mut applied = false;
    for _ in 0..100 {
        if connect(&world, &process, "127.0.0.3").await.is_err() {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        applied,
        "the reload took effect\n{}",
        process.daemon.transcript()
    );
    connect(&world, &process, "127.0.0.1")
        .await
        .expect("127.0.0.1 still allowed")
        .ping()
        .await
        .expect("ping");

    // An invalid file: refused, logged, the narrowed config stays.
    std::fs::write(
        &process.config_path,
        "gateway_id = \"x\"\n[timeouts]\nbogus = 1\n",
    )
    .expect("write");
    process.daemon.guard.signal("HUP");
    let mut logged = false;
    for _ in 0..100 {
        if process.daemon.stderr_contains("config reload refused") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", process.daemon.transcript());
    assert!(
        connect(&world, &process, "127.0.0.3").await.is_err(),
        "still the narrowed config"
    );
    connect(&world, &process, "127.0.0.1")
        .await
        .expect("the gateway still serves")
        .ping()
        .await
        .expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_running_session_then_exits_0() {
    let world = World::start_with(world_options()).await;
    let mut process = start(&world).await;
    let session = connect(&world, &process, "127.0.0.1")
        .await
        .expect("granted");
    session.ping().await.expect("ping");

    process.daemon.guard.signal("TERM");
    // New connections are refused once the listener closed...
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(process.addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "stopped accepting\n{}", process.daemon.transcript());
    // ...while the running session goes on to its natural end.
    for _ in 0..5 {
        session
            .ping()
            .await
            .expect("the draining gateway still forwards");
    }
    assert!(
        process
            .daemon
            .guard
            .child()
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the process waits for its session"
    );
    session.close().await;
    let status = tokio::task::spawn_blocking(move || {
        let status = process.daemon.guard.wait_timeout(PATIENCE);
        (status, process.daemon.transcript())
    })
    .await
    .expect("join");
    match status {
        (Some(status), transcript) => assert_eq!(status.code(), Some(0), "{transcript}"),
        (None, transcript) => panic!("no exit after the last session ended\n{transcript}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_at_the_drain_deadline_logs_its_end() {
    let world = World::start_with(world_options()).await;
    let mut process = start(&world).await;
    process.config.timeouts.drain_ms = 300;
    write_config(&process.config_path, &process.config);
    reload(&process).await;
    let session = connect(&world, &process, "127.0.0.1")
        .await
        .expect("granted");
    session.ping().await.expect("ping");
    process.daemon.guard.signal("TERM");
    // The session stays open: the deadline cuts it.
    let status = tokio::task::spawn_blocking(move || {
        let status = process.daemon.guard.wait_timeout(PATIENCE);
        (status, process.daemon.transcript())
    })
    .await
    .expect("join");
    let (status, transcript) = status;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{transcript}");
    let granted: Vec<&str> = transcript
        .lines()
        .filter(|l| l.contains("session granted"))
        .collect();
    let ended: Vec<&str> = transcript
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(granted.len(), 1, "{transcript}");
    assert_eq!(ended.len(), 1, "one end line per session\n{transcript}");
    assert!(ended[0].contains("drain_deadline"), "{}", ended[0]);
    assert!(ended[0].contains("bytes_up="), "{}", ended[0]);
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_id_from_the_command_line_holds_across_reloads() {
    let world = World::start_with(world_options()).await;
    let process = start_with_args(&world, &["--gateway-id", "hsmgate-7d9f-x2k4q"]).await;
    let session = connect(&world, &process, "127.0.0.1")
        .await
        .expect("granted");
    assert_eq!(session.gateway_id(), "hsmgate-7d9f-x2k4q");
    session.close().await;
    // The file says another id; a reload keeps the command line's.
    assert_ne!(process.config.gateway_id, "hsmgate-7d9f-x2k4q");
    reload(&process).await;
    let session = connect(&world, &process, "127.0.0.1")
        .await
        .expect("granted");
    assert_eq!(session.gateway_id(), "hsmgate-7d9f-x2k4q");

    // A bad id is refused at start with the flag's name.
    let out = hsmgate_tests::proc::run(
        Command::new(binary("hsmgate")).args([
            "check-config",
            "--config",
            process.config_path.to_str().expect("utf-8"),
            "--gateway-id",
            "no spaces/allowed",
        ]),
        PATIENCE,
    );
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--gateway-id"), "{out}");
}

/// The environment the gateway process runs with, as `NAME=value` strings.
/// (glibc's loader may cut `GLIBC_TUNABLES` at its `:` in place: each
/// tunable then reads as a string of its own.)
fn environment_of(process: &Process) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", process.daemon.guard.id()))
        .expect("read /proc/PID/environ");
    raw.split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// `hsmgate run` serves without glibc's thread cache (thread_cache.rs): it
/// starts itself once more, same process id, with the tunable added to
/// what the operator set; an operator's own tcache value is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_without_the_thread_cache_unless_told_otherwise() {
    let world = World::start_with(world_options()).await;
    let process = start_with_env(
        &world,
        &[],
        &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")],
    )
    .await;
    let env = environment_of(&process);
    let tunables = env.join(":");
    assert!(
        tunables.contains("GLIBC_TUNABLES=glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0"),
        "{env:?}"
    );
    assert!(env.iter().any(|v| v == "HSMGATE_TCACHE_OFF=1"), "{env:?}");
    let session = connect(&world, &process, "127.0.0.1")
        .await
        .expect("granted after the restart");
    session.close().await;
    drop(process);

    let process = start_with_env(
        &world,
        &[],
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3")],
    )
    .await;
    let env = environment_of(&process);
    assert!(
        env.iter()
            .any(|v| v == "GLIBC_TUNABLES=glibc.malloc.tcache_count=3"),
        "{env:?}"
    );
    assert!(!env.join(":").contains("tcache_count=0"), "{env:?}");
    assert!(
        !env.iter().any(|v| v.starts_with("HSMGATE_TCACHE_OFF")),
        "{env:?}"
    );
    drop(process);

    let process = start_with_env(&world, &[], &[("HSMGATE_KEEP_TCACHE", "1")]).await;
    let env = environment_of(&process);
    assert!(
        !env.iter().any(|v| v.starts_with("GLIBC_TUNABLES=")),
        "{env:?}"
    );
}
