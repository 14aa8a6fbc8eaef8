//! Forwarding through the real gateway: byte-exact both ways from 1 byte to
//! 64 MiB on both data paths (an echo server as the pool's member, since the
//! gateway forwards opaque bytes after the grant; it checks and strips the
//! gateway's Grant as a node does), the data path in the metrics,
//! half-close, the lifetime limit and revocation.

use std::time::Duration;

use hsmgate_tests::{Options, World, granted_echo_server, metric_value, raw_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A world whose pool is switched (by a reload) to one echo server, with
/// health probes far away (the echo server does not speak the probe).
async fn echo_world(copy: bool) -> World {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        tweak: if copy {
            |c| {
                c.health.interval_ms = 3_600_000;
                c.forwarding.mode = hsmgate::config::ForwardMode::Copy;
            }
        } else {
            |c| c.health.interval_ms = 3_600_000
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

async fn every_size(copy: bool) {
    let world = echo_world(copy).await;
    let sizes = [1, 2, 1000, 65_535, 65_536, 1 << 20, 64 << 20];
    for len in sizes {
        round_trip(&world, len).await;
    }
    let path = if copy { "copy" } else { "splice" };
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
    every_size(false).await;
}

#[tokio::test]
async fn copy_moves_every_size_intact_both_ways() {
    every_size(true).await;
}

#[tokio::test]
async fn a_revoked_client_loses_its_live_session() {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: |c| c.revocation.check_interval_ms = 200,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    // The directory withdraws the client: drop its [[clients]] entry.
    let path = world.directory.path().expect("data file").to_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    let cut = text.find("[[clients]]").expect("client entry");
    world.rewrite_directory(&text[..cut]);
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
