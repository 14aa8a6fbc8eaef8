//! Forwarding through the real gateway: byte-exact both ways from 1 byte to
//! 64 MiB on both data paths (an echo server as the pool's member, since the
//! gateway forwards opaque bytes after the grant; it checks and strips the
//! gateway's Grant as a node does), the data path in the metrics,
//! half-close, the lifetime limit and revocation; and the same through the
//! kernel's BPF forwarding where this machine allows loading it (CI
//! requires it with HSMGATE_REQUIRE_KERNEL_FORWARDING=1).

use std::time::Duration;

use hsmgate::config::ForwardMode;
use hsmgate_tests::{Options, World, granted_echo_server, metric_value, raw_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A world whose pool is switched (by a reload) to one echo server, with
/// health probes far away (the echo server does not speak the probe).
async fn echo_world(mode: ForwardMode) -> World {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        tweak: match mode {
            ForwardMode::Copy => |c| {
                c.health.interval_ms = 3_600_000;
                c.forwarding.mode = ForwardMode::Copy;
            },
            ForwardMode::Kernel => |c| {
                c.health.interval_ms = 3_600_000;
                c.forwarding.mode = ForwardMode::Kernel;
            },
            ForwardMode::Splice => |c| c.health.interval_ms = 3_600_000,
        },
        ..Options::default()
    })
    .await;
    let mut config = world.gateway.config();
    config.pools[0].members = vec![granted_echo_server(&world).await.0];
    world
        .gateway
        .reload(config)
        .expect("reload to the echo pool");
    world
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// Send `len` bytes through the gateway to the echo server and read them
/// back; the client half-closes after sending.
async fn round_trip(world: &World, len: usize) {
    let (stream, leftover) = raw_session(world).await;
    assert!(leftover.is_empty(), "the echo server sent nothing first");
    let data = pattern(len, len as u8);
    let (mut r, mut w) = stream.into_split();
    let send = {
        let data = data.clone();
        async move {
            w.write_all(&data).await.expect("send");
            w.shutdown().await.expect("half-close");
        }
    };
    let recv = async move {
        let mut got = Vec::with_capacity(len);
        r.read_to_end(&mut got).await.expect("receive");
        got
    };
    let (_, got) =
        tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(send, recv) })
            .await
            .expect("bulk transfer in time");
    assert!(
        got == data,
        "{len} bytes: echoed {} bytes, differ",
        got.len()
    );
}

/// Whether the gateway of `world` loaded its BPF program; if not, the
/// kernel tests are skipped (and fail where they are required).
fn kernel_loaded(world: &World) -> bool {
    if world.metric("hsmgate_kernel_forwarding") == 1.0 {
        return true;
    }
    assert!(
        std::env::var("HSMGATE_REQUIRE_KERNEL_FORWARDING").as_deref() != Ok("1"),
        "kernel forwarding required but the gateway could not load it"
    );
    eprintln!("kernel forwarding not available here; test skipped");
    false
}

async fn every_size(mode: ForwardMode) {
    let world = echo_world(mode).await;
    if mode == ForwardMode::Kernel && !kernel_loaded(&world) {
        return;
    }
    let sizes = [1, 2, 1000, 65_535, 65_536, 1 << 20, 64 << 20];
    for len in sizes {
        round_trip(&world, len).await;
    }
    let path = match mode {
        ForwardMode::Copy => "copy",
        ForwardMode::Splice => "splice",
        ForwardMode::Kernel => "kernel",
    };
    let sample = format!("hsmgate_sessions_forwarded_total{{path=\"{path}\"}}");
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = world.metric(&sample);
        if counted == sizes.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counted,
        sizes.len() as f64,
        "every session took the {path} path"
    );
    let total: usize = sizes.iter().sum();
    let text = world.gateway.metrics().render();
    for direction in ["client_to_hsm", "hsm_to_client"] {
        let sample = format!("hsmgate_forwarded_bytes_total{{direction=\"{direction}\"}}");
        assert_eq!(
            metric_value(&text, &sample),
            total as f64,
            "{direction} counted exactly"
        );
    }
}

#[tokio::test]
async fn splice_moves_every_size_intact_both_ways() {
    every_size(ForwardMode::Splice).await;
}

#[tokio::test]
async fn copy_moves_every_size_intact_both_ways() {
    every_size(ForwardMode::Copy).await;
}

/// Sessions up to 64 MiB: the large ones overflow the kernel's budget and
/// go on as a copy, and still every byte arrives and is counted.
#[tokio::test]
async fn the_kernel_moves_every_size_intact_both_ways() {
    every_size(ForwardMode::Kernel).await;
}

/// `pools[].forwarding = "kernel"` under a gateway that splices: that
/// pool's sessions take the kernel path.
#[tokio::test]
async fn a_pool_takes_the_kernel_path_while_the_gateway_splices() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        tweak: |c| {
            c.health.interval_ms = 3_600_000;
            c.pools[0].forwarding = Some(ForwardMode::Kernel);
        },
        ..Options::default()
    })
    .await;
    if !kernel_loaded(&world) {
        return;
    }
    let mut config = world.gateway.config();
    assert_eq!(config.forwarding.mode, ForwardMode::Splice);
    config.pools[0].members = vec![granted_echo_server(&world).await.0];
    world
        .gateway
        .reload(config)
        .expect("reload to the echo pool");
    round_trip(&world, 1000).await;
    let sample = "hsmgate_sessions_forwarded_total{path=\"kernel\"}";
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = world.metric(sample);
        if counted == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 1.0, "the pool's session took the kernel path");
}

#[tokio::test]
async fn a_revoked_client_loses_its_live_session() {
    revoked_client_loses_its_session(false).await;
}

#[tokio::test]
async fn a_revoked_client_loses_its_session_forwarded_by_the_kernel() {
    revoked_client_loses_its_session(true).await;
}

async fn revoked_client_loses_its_session(kernel: bool) {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: if kernel {
            |c| {
                c.revocation.check_interval_ms = 200;
                c.forwarding.mode = ForwardMode::Kernel;
            }
        } else {
            |c| c.revocation.check_interval_ms = 200
        },
        ..Options::default()
    })
    .await;
    if kernel && !kernel_loaded(&world) {
        return;
    }
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    withdraw_the_client(&world);
    let mut closed = false;
    for _ in 0..100 {
        if session.ping().await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the gateway ended the revoked client's session");
    let mut counted = 0.0;
    for _ in 0..50 {
        counted = world.metric("hsmgate_sessions_revoked_total");
        if counted == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, 1.0);
    if kernel {
        // Pings went through the kernel, and the session ended on that path.
        assert_eq!(
            world.metric("hsmgate_sessions_forwarded_total{path=\"kernel\"}"),
            1.0
        );
    }
}

#[tokio::test]
async fn a_revoked_client_loses_every_one_of_its_sessions() {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: |c| c.revocation.check_interval_ms = 200,
        ..Options::default()
    })
    .await;
    // One client, one question for the directory: the sessions are checked
    // together, and every one of them must end.
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let session = world.connect(None).await.expect("granted");
        session.ping().await.expect("ping");
        sessions.push(session);
    }
    withdraw_the_client(&world);
    let mut counted = 0.0;
    for _ in 0..150 {
        counted = world.metric("hsmgate_sessions_revoked_total");
        if counted == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 5.0, "every session of the withdrawn client ended");
    for session in &sessions {
        assert!(session.ping().await.is_err(), "no session is still served");
    }
}

/// The directory withdraws the client: its [[clients]] entry is dropped.
fn withdraw_the_client(world: &World) {
    let path = world.directory.path().expect("data file").to_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    let cut = text.find("[[clients]]").expect("client entry");
    world.rewrite_directory(&text[..cut]);
}

#[tokio::test]
async fn an_allowed_client_keeps_its_session_across_checks() {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: |c| c.revocation.check_interval_ms = 100,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    // Several checks and a cache expiry pass; the answer stays "allow".
    for _ in 0..15 {
        session.ping().await.expect("still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(world.metric("hsmgate_sessions_revoked_total"), 0.0);
}

#[tokio::test]
async fn the_lifetime_limit_closes_a_session() {
    let world = World::start_with(Options {
        tweak: |c| c.timeouts.max_session_ms = 300,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    let mut closed = false;
    for _ in 0..100 {
        if session.ping().await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the session ended at its lifetime");
}
