//! No single client or stranger can take the service down (issue 9, parts 2
//! and 3): a client over its cap, a full HSM node, a flood of silent
//! connections from many sources. In each case the others are still served.

use std::time::Duration;

use hsmgate_client::{ClientError, Code, ConnectOptions, StaticKeypair};
use hsmgate_tests::{CLIENT_ID, Options, PATIENCE, World, directory_toml};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep};

fn is_over_limit(err: &ClientError) -> bool {
    format!("{err:?}").contains("OverLimit")
}

/// The directory data with `max_sessions` for the demo client, and a second
/// client `other-app` (its service key returned) in the same tenant.
fn two_clients(world: &World, demo_cap: u32) -> (String, StaticKeypair) {
    let other = StaticKeypair::generate().expect("key");
    let text = format!(
        "{}max_sessions = {demo_cap}\n\n[[clients]]\nid = \"other-app\"\ntenant = \"demo\"\n\
         public_key = \"{}\"\npartitions = [\"demo\"]\n",
        directory_toml(
            &world.service_key.public(),
            &["127.0.0.1/32".into(), "::1/128".into()],
            60
        ),
        other.public().to_text()
    );
    (text, other)
}

#[tokio::test]
async fn a_client_over_its_cap_leaves_other_clients_served_and_the_pool_healthy() {
    let world = World::start_with(Options {
        hsm_nodes: 2,
        admin: true,
        ..Options::default()
    })
    .await;
    let (text, other_key) = two_clients(&world, 3);
    world.rewrite_directory(&text);
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = world.connect(None).await.expect("within the cap");
        s.ping().await.expect("ping");
        held.push(s);
    }
    // The greedy client keeps trying: refused, code 3, every time.
    for _ in 0..5 {
        let err = world.connect(None).await.expect_err("over its cap");
        assert!(is_over_limit(&err), "{err:?}");
    }
    let mut config = world.client_config();
    config.client_id = "other-app".into();
    let opts = ConnectOptions {
        identity: Some(other_key),
        ..ConnectOptions::default()
    };
    for _ in 0..4 {
        let s = world
            .connect_with(&config, &opts)
            .await
            .expect("another client is served");
        s.ping().await.expect("ping");
        s.close().await;
    }
    for hsm in &world.hsms {
        let healthy = world.metric(&format!(
            "hsmgate_backend_healthy{{member=\"{}\",pool=\"default\"}}",
            hsm.pool_addr
        ));
        assert_eq!(healthy, 1.0, "{} stayed in rotation", hsm.id);
    }
    assert_eq!(world.admin_get("/readyz").await.0, 200);
    for s in held {
        s.close().await;
    }
    assert_eq!(CLIENT_ID, "demo-app");
}

#[tokio::test]
async fn a_full_node_is_skipped_without_ejection_and_a_full_pool_answers_over_limit() {
    let world = World::start_with(Options {
        hsm_nodes: 2,
        admin: true,
        hsm_tweak: |c| c.limits.max_sessions = 1,
        ..Options::default()
    })
    .await;
    let first = world.connect(None).await.expect("first");
    first.ping().await.expect("ping");
    // The node that took it reports itself full: the next session goes to
    // the other one, not to the full node (which would refuse it).
    let full_id = first.hsm_id().to_owned();
    let deadline = Instant::now() + PATIENCE;
    while accepting(&world) != 1 {
        assert!(Instant::now() < deadline, "status never reported");
        sleep(Duration::from_millis(10)).await;
    }
    let second = world.connect(None).await.expect("the other node");
    assert_ne!(second.hsm_id(), full_id);
    second.ping().await.expect("ping");
    while accepting(&world) != 0 {
        assert!(Instant::now() < deadline, "status never reported");
        sleep(Duration::from_millis(10)).await;
    }
    // Every node full: over limit (retry later), not unavailable.
    let err = world.connect(None).await.expect_err("pool full");
    assert!(is_over_limit(&err), "{err:?}");
    // Full is up: in rotation, probes answered, ready.
    for hsm in &world.hsms {
        let healthy = world.metric(&format!(
            "hsmgate_backend_healthy{{member=\"{}\",pool=\"default\"}}",
            hsm.pool_addr
        ));
        assert_eq!(healthy, 1.0, "{} stayed in rotation", hsm.id);
        assert_eq!(
            hsmgate_hsm::probe::check(hsm.server.addr, PATIENCE)
                .await
                .expect("a full node answers its probe"),
            hsm.id
        );
    }
    assert_eq!(world.admin_get("/readyz").await.0, 200);
    first.close().await;
    while accepting(&world) == 0 {
        assert!(Instant::now() < deadline, "never accepting again");
        sleep(Duration::from_millis(10)).await;
    }
    let again = world.connect(None).await.expect("room again");
    again.ping().await.expect("ping");
    second.close().await;
    again.close().await;
}

/// Members whose node says it takes new sessions.
fn accepting(world: &World) -> usize {
    world
        .hsms
        .iter()
        .filter(|h| {
            world.metric(&format!(
                "hsmgate_backend_accepting{{member=\"{}\",pool=\"default\"}}",
                h.pool_addr
            )) == 1.0
        })
        .count()
}

/// Open a connection from `source` and say nothing; returns it, or None
/// when the gateway refused at once.
async fn silent_connection(world: &World, source: &str) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(world.gateway_addr()).await.ok()
}

#[tokio::test]
async fn a_flood_of_silent_connections_from_many_sources_leaves_clients_served() {
    // A small handshake budget, so that the bounded flood below fills it
    // many times over; the per-source limits stay at their defaults.
    let world = World::start_with(Options {
        tweak: |c| c.limits.max_handshakes = 40,
        ..Options::default()
    })
    .await;
    let flood = tokio::spawn({
        let gateway = world.gateway_addr();
        async move {
            let mut held = Vec::new();
            let started = Instant::now();
            // 30 sources, 600 connections at most, over at most 3 s.
            'flood: for round in 0..20 {
                for i in 1..=30u8 {
                    if started.elapsed() > Duration::from_secs(3) {
                        break 'flood;
                    }
                    let socket = TcpSocket::new_v4().expect("socket");
                    socket
                        .bind(format!("127.0.1.{i}:0").parse().expect("source"))
                        .expect("bind");
                    if let Ok(stream) = socket.connect(gateway).await {
                        held.push(stream);
                    }
                }
                if round % 2 == 1 {
                    sleep(Duration::from_millis(100)).await;
                }
            }
            held
        }
    });
    sleep(Duration::from_millis(200)).await;
    let mut served = 0;
    for _ in 0..12 {
        let s = world
            .connect(None)
            .await
            .expect("a client is served during the flood");
        s.ping().await.expect("ping");
        s.close().await;
        served += 1;
    }
    assert_eq!(served, 12);
    let held = flood.await.expect("flood");
    assert!(
        held.len() > 100,
        "the flood opened {} connections",
        held.len()
    );
    let evicted = world.metric(r#"hsmgate_admission_total{result="evicted",stage="handshake"}"#);
    assert!(evicted > 0.0, "the flood filled the handshake budget");
    // A silent connection is closed after the first-frame deadline (1 s)
    // with Error 7, or earlier with Error 3 when evicted.
    let mut probe = silent_connection(&world, "127.0.1.99")
        .await
        .expect("connect");
    let mut answer = Vec::new();
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, probe.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .expect("read");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answer == [0, 2, 5, Code::Timeout as u8] || answer == [0, 2, 5, Code::OverLimit as u8],
        "{answer:?}"
    );
    drop(held);
}
