//! The QUIC front end end to end (PROTOCOL.md §11): the real gateway with a
//! QUIC listener, the real directory and HSM nodes, the SDK's QUIC
//! transport; each rule shown holding and the bad case refused.

use std::time::Duration;

use hsmgate_client::{ClientError, Code};
use hsmgate_tests::spy::What;
use hsmgate_tests::{Options, World};

fn quic() -> Options {
    Options {
        quic: true,
        ..Options::default()
    }
}

/// Poll `metric` until it reaches `want` (bounded), then return it.
async fn metric_reaches(world: &World, metric: &str, want: f64) -> f64 {
    let mut value = world.metric(metric);
    for _ in 0..100 {
        if value == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        value = world.metric(metric);
    }
    value
}

fn refused_code(e: &ClientError) -> Option<Code> {
    match e {
        ClientError::Refused { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn one_connection_carries_the_first_session_and_more_on_streams() {
    let world = World::start_with(quic()).await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    first.ping().await.expect("ping on the first stream");
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let s = conn.open_session().await.expect("a further session");
        s.ping().await.expect("ping");
        sessions.push(s);
    }
    // Each session has its own end-to-end channel with a node of the pool.
    let random = sessions[0].random(32).await.expect("random");
    assert_eq!(random.len(), 32);
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="authenticated"}"#),
        1.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_quic_streams_total{outcome="granted"}"#),
        3.0
    );
    assert_eq!(world.metric("hsmgate_quic_connections_open"), 1.0);
    for s in sessions {
        s.close().await;
    }
    first.close().await;
    conn.close().await;
    assert_eq!(
        metric_reaches(
            &world,
            r#"hsmgate_sessions_forwarded_total{path="quic"}"#,
            4.0
        )
        .await,
        4.0
    );
    assert_eq!(
        metric_reaches(&world, "hsmgate_quic_connections_open", 0.0).await,
        0.0
    );
}

#[tokio::test]
async fn a_hundred_sessions_run_at_once_on_one_connection() {
    let world = World::start_with(quic()).await;
    // The directory allows 64 sessions per client by default: raise it.
    let path = world.directory.path().expect("data file").to_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.trim_end().ends_with(']'),
        "the client entry is last: {text}"
    );
    world.rewrite_directory(&format!("{text}max_sessions = 128\n"));
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    let opened = futures_join_all((0..99).map(|_| conn.open_session())).await;
    let mut sessions = vec![first];
    for s in opened {
        sessions.push(s.expect("granted"));
    }
    let answers = futures_join_all(sessions.iter().map(|s| s.random(16))).await;
    for a in answers {
        assert_eq!(a.expect("an answer on every stream").len(), 16);
    }
    assert_eq!(
        world.metric(r#"hsmgate_quic_streams_total{outcome="granted"}"#),
        99.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="authenticated"}"#),
        1.0,
        "one authentication for a hundred sessions"
    );
}

/// Run futures concurrently on this task and collect their results in order.
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out = Vec::with_capacity(set.len());
    for f in set {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn a_stream_for_a_partition_not_granted_is_refused_and_the_connection_goes_on() {
    let world = World::start_with(Options {
        spies: true,
        ..quic()
    })
    .await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    let hsm_connects = world.events.count("hsm", |w| matches!(w, What::Connect));
    // The client asks, on its authenticated connection, for a partition
    // the directory did not give it.
    let e = conn
        .open_session_for("other", &world.partition_key)
        .await
        .expect_err("refused");
    assert_eq!(refused_code(&e), Some(Code::Denied), "{e}");
    assert_eq!(
        world.events.count("hsm", |w| matches!(w, What::Connect)),
        hsm_connects,
        "no HSM node was contacted for the refused stream"
    );
    assert_eq!(
        metric_reaches(
            &world,
            r#"hsmgate_quic_streams_total{outcome="refused"}"#,
            1.0
        )
        .await,
        1.0
    );
    // The connection and its first session are unaffected.
    first.ping().await.expect("first session still served");
    conn.open_session()
        .await
        .expect("a further session for the granted partition")
        .ping()
        .await
        .expect("ping");
}

#[tokio::test]
async fn a_first_stream_for_a_partition_not_granted_closes_the_connection() {
    let world = World::start_with(Options {
        spies: true,
        ..quic()
    })
    .await;
    let mut config = world.client_config();
    config.partition = "other".into();
    let e = world
        .connect_quic_with(&config, &Default::default())
        .await
        .expect_err("refused");
    assert_eq!(refused_code(&e), Some(Code::Denied), "{e}");
    assert!(
        world.events.first("hsm", |_| true).is_none(),
        "no HSM node saw anything: {:?}",
        world.events.snapshot()
    );
    assert_eq!(
        metric_reaches(
            &world,
            r#"hsmgate_quic_connections_total{outcome="not_authenticated"}"#,
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_key_the_directory_does_not_know_is_refused() {
    let world = World::start_with(quic()).await;
    let opts = hsmgate_client::ConnectOptions {
        identity: Some(hsmgate_wire::StaticKeypair::generate().expect("key")),
        ..Default::default()
    };
    let e = world
        .connect_quic_with(&world.client_config(), &opts)
        .await
        .expect_err("refused");
    assert_eq!(refused_code(&e), Some(Code::Denied), "{e}");
}

#[tokio::test]
async fn a_gateway_that_is_not_pinned_is_refused_before_the_client_says_who_it_is() {
    let world = World::start_with(quic()).await;
    let mut config = world.client_config();
    config.gateway_keys = vec![
        hsmgate_wire::StaticKeypair::generate()
            .expect("key")
            .public(),
    ];
    let e = world
        .connect_quic_with(&config, &Default::default())
        .await
        .expect_err("refused");
    assert_eq!(e.exit_code(), 3, "untrusted gateway: {e}");
    assert!(matches!(e, ClientError::UntrustedGateway { .. }), "{e}");
}

#[tokio::test]
async fn a_source_outside_the_tenant_networks_is_refused() {
    let world = World::start_with(quic()).await;
    let e = world
        .connect_quic(Some("127.0.0.2"))
        .await
        .expect_err("refused");
    assert_eq!(refused_code(&e), Some(Code::AddressNotAllowed), "{e}");
}

#[tokio::test]
async fn a_source_outside_the_gateway_lists_is_refused_at_its_first_packet() {
    let world = World::start_with(Options {
        tweak: |c| c.admission.deny = vec!["127.0.0.3/32".parse().expect("net")],
        ..quic()
    })
    .await;
    let e = world
        .connect_quic(Some("127.0.0.3"))
        .await
        .expect_err("refused");
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="refused"}"#),
        1.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="deny",stage="address"}"#),
        1.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="authenticated"}"#),
        0.0,
        "no handshake work for a refused address"
    );
}

#[tokio::test]
async fn a_connection_that_moves_to_a_refused_address_is_closed() {
    let world = World::start_with(quic()).await;
    let (conn, session) = world.connect_quic(None).await.expect("granted");
    session.ping().await.expect("ping");
    // The client's network changes: its packets now come from 127.0.0.2,
    // outside the tenant's networks.
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
    conn.rebind(socket).expect("rebind");
    // Traffic on the new path makes the gateway see it.
    let _ = session.ping().await;
    let code = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed in time");
    assert_eq!(code, Some(Code::AddressNotAllowed));
    assert!(session.ping().await.is_err(), "its sessions end with it");
    assert_eq!(
        world.metric(r#"hsmgate_quic_path_checks_total{result="refused"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_connection_that_moves_to_an_allowed_address_goes_on() {
    let world = World::start_with(Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.2/32".into()],
        ..quic()
    })
    .await;
    let (conn, session) = world.connect_quic(None).await.expect("granted");
    session.ping().await.expect("ping");
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").expect("bind");
    conn.rebind(socket).expect("rebind");
    for _ in 0..5 {
        session.ping().await.expect("ping from the new address");
    }
    assert_eq!(
        metric_reaches(
            &world,
            r#"hsmgate_quic_path_checks_total{result="allowed"}"#,
            1.0
        )
        .await,
        1.0
    );
    // New sessions are granted with the new address.
    conn.open_session()
        .await
        .expect("granted")
        .ping()
        .await
        .expect("ping");
}

#[tokio::test]
async fn garbage_on_a_stream_is_refused_with_a_code_and_the_rest_goes_on() {
    let world = World::start_with(quic()).await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    let (mut send, mut recv) = conn.quinn().open_bi().await.expect("stream");
    send.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(64))
        .await
        .expect("answered in time")
        .expect("a finished stream");
    assert_eq!(
        answer,
        hsmgate_wire::frame::error_frame(Code::ProtocolError)
    );
    assert_eq!(
        metric_reaches(
            &world,
            r#"hsmgate_quic_streams_total{outcome="malformed"}"#,
            1.0
        )
        .await,
        1.0
    );
    first.ping().await.expect("the first session goes on");
}

#[tokio::test]
async fn a_revoked_client_loses_its_streams() {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: |c| c.revocation.check_interval_ms = 200,
        ..quic()
    })
    .await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    let second = conn.open_session().await.expect("granted");
    let path = world.directory.path().expect("data file").to_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    let cut = text.find("[[clients]]").expect("client entry");
    world.rewrite_directory(&text[..cut]);
    let mut ended = false;
    for _ in 0..100 {
        if first.ping().await.is_err() && second.ping().await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "both sessions were ended");
    assert_eq!(
        metric_reaches(&world, "hsmgate_sessions_revoked_total", 2.0).await,
        2.0
    );
    let e = conn.open_session().await.expect_err("no new session");
    assert_eq!(refused_code(&e), Some(Code::Denied), "{e}");
}

#[tokio::test]
async fn a_stopping_gateway_lets_sessions_finish_refuses_new_ones_then_closes() {
    let world = World::start_with(Options {
        tweak: |c| c.timeouts.drain_ms = 10_000,
        ..quic()
    })
    .await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    first.ping().await.expect("ping");
    world.gateway_server.signal_stop();
    // A stopping gateway answers new streams "unavailable, retry".
    let mut refused = None;
    for _ in 0..100 {
        match conn.open_session().await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(s) => s.close().await,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = refused.expect("a new stream refused while stopping");
    assert_eq!(refused_code(&e), Some(Code::Unavailable), "{e}");
    // The running session is still served.
    first
        .ping()
        .await
        .expect("running session served during the drain");
    first.close().await;
    let code = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed once its last session ended");
    assert_eq!(code, Some(Code::Unavailable));
    for _ in 0..100 {
        if world.gateway_server.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(world.gateway_server.is_finished(), "the gateway stopped");
}

#[tokio::test]
async fn random_datagrams_leave_the_listener_serving() {
    let world = World::start_with(quic()).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..2_000_usize {
        let len = 1 + (i * 7919) % 1500;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        socket
            .send_to(&datagram, world.quic_addr())
            .await
            .expect("send");
    }
    let (_conn, session) = world.connect_quic(None).await.expect("still serving");
    session.ping().await.expect("ping");
}

#[tokio::test]
async fn a_stream_reaches_its_node_after_the_answer_with_exactly_the_client_bytes() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        spies: true,
        ..quic()
    })
    .await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    first.close().await;
    let before = world.events.bytes("hsm-1/to_server").len();
    // A further stream by hand: the Open and, pipelined behind it in the
    // same write, a real InnerHello.
    let (_inner, inner_hello) =
        hsmgate_wire::inner::ClientInner::start(&world.partition_key, hsmgate_tests::PARTITION)
            .expect("inner hello");
    let mut bytes = hsmgate_wire::quic::open_frame(hsmgate_tests::PARTITION).expect("open");
    bytes.extend_from_slice(&inner_hello);
    let (mut send, mut recv) = conn.quinn().open_bi().await.expect("stream");
    send.write_all(&bytes).await.expect("write");
    // The Answer comes first, then the node's InnerChallenge.
    let mut answer = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut answer))
        .await
        .expect("answered in time")
        .expect("answer");
    assert_eq!(answer, [0x00, 0x04, 0x07, 0x00, 0x00, 0x00], "granted");
    let mut header = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut header))
        .await
        .expect("the node answered in time")
        .expect("inner challenge");
    assert_eq!(header[2], 0x12, "InnerChallenge from the node");
    // What the node received on this session: the gateway's Grant frame,
    // then the client's bytes after the Open, unchanged. The first session
    // (closed above) came first on the same node, with a Grant of the same
    // length (the same names).
    let all = world.events.bytes("hsm-1/to_server");
    let grant_len = 2 + usize::from(u16::from_be_bytes([all[0], all[1]]));
    assert_eq!(all[2], 0x25, "a session opens with a Grant");
    let got = &all[all.len() - grant_len - inner_hello.len()..];
    assert!(
        before <= all.len() - got.len(),
        "recorded after the first session"
    );
    assert_eq!(got[2], 0x25, "this session opens with a Grant");
    assert_eq!(
        &got[grant_len..],
        &inner_hello[..],
        "exactly the client's bytes"
    );
}

#[tokio::test]
async fn a_reload_applies_to_new_streams_and_running_sessions_keep_going() {
    let world = World::start_with(quic()).await;
    let (conn, first) = world.connect_quic(None).await.expect("granted");
    let mut config = world.gateway.config();
    config.admission.deny = vec!["127.0.0.1/32".parse().expect("net")];
    world.gateway.reload(config).expect("reload");
    let e = conn
        .open_session()
        .await
        .expect_err("refused under the new config");
    assert_eq!(refused_code(&e), Some(Code::AddressNotAllowed), "{e}");
    first.ping().await.expect("the running session keeps going");
    let mut config = world.gateway.config();
    config.admission.deny.clear();
    world.gateway.reload(config).expect("reload");
    conn.open_session()
        .await
        .expect("granted again")
        .ping()
        .await
        .expect("ping");
}
