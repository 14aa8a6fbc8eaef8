//! The access path end to end: client → gateway → directory → HSM node, with
//! real servers on loopback.

use hsmgate_client::ClientError;
use hsmgate_tests::spy::What;
use hsmgate_tests::{Options, TestStore, World};
use hsmgate_wire::ops::KeyType;

hsmgate_tests::each_store!(a_session_runs_every_operation_through_the_gateway);

async fn a_session_runs_every_operation_through_the_gateway(store: TestStore) {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        store,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    assert_eq!(session.gateway_id(), "test-gateway");
    assert_eq!(session.hsm_id(), "hsm-1");
    session.ping().await.expect("ping");
    assert_eq!(session.random(32).await.expect("random").len(), 32);
    session
        .generate_key(KeyType::Ed25519, "signing")
        .await
        .expect("generate ed25519");
    let signature = session.sign("signing", b"message").await.expect("sign");
    assert!(
        session
            .verify("signing", b"message", &signature)
            .await
            .expect("verify")
    );
    assert!(
        !session
            .verify("signing", b"other message", &signature)
            .await
            .expect("verify")
    );
    session
        .generate_key(KeyType::Aes256, "sealing")
        .await
        .expect("generate aes");
    let sealed = session
        .encrypt("sealing", b"plaintext", b"aad")
        .await
        .expect("encrypt");
    assert_eq!(
        session
            .decrypt("sealing", &sealed, b"aad")
            .await
            .expect("decrypt"),
        b"plaintext"
    );
    let labels: Vec<String> = session
        .list_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    session.close().await;

    // The gateway counted one grant, forwarded it through splice and logged
    // bytes both ways once the session ended.
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="allow",stage="authz"}"#),
        1.0
    );
    let forwarded =
        wait_for(|| world.metric(r#"hsmgate_sessions_forwarded_total{path="splice"}"#) >= 1.0)
            .await;
    assert!(forwarded, "the session was forwarded through splice");
    assert!(world.metric(r#"hsmgate_forwarded_bytes_total{direction="client_to_hsm"}"#) > 0.0);
    assert!(world.metric(r#"hsmgate_forwarded_bytes_total{direction="hsm_to_client"}"#) > 0.0);
}

#[tokio::test]
async fn the_directory_is_asked_before_any_hsm_connection() {
    let world = World::start_with(Options {
        spies: true,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    session.close().await;
    let asked = world
        .events
        .first("directory", |w| matches!(w, What::ToServer(_)))
        .expect("the directory was asked");
    // HTTP/2 servers speak first (SETTINGS): the answer is the first
    // bytes from the directory after the request.
    let events = world.events.snapshot();
    let answered = events
        .iter()
        .enumerate()
        .skip(asked + 1)
        .find(|(_, e)| e.at == "directory" && matches!(e.what, What::FromServer(_)))
        .map(|(i, _)| i)
        .expect("the directory answered");
    let hsm_connect = world
        .events
        .first("hsm", |w| matches!(w, What::Connect))
        .expect("an HSM node was used");
    let hsm_bytes = world
        .events
        .first("hsm", |w| matches!(w, What::ToServer(_)))
        .expect("an HSM node received bytes");
    assert!(asked < answered, "{:?}", world.events.snapshot());
    assert!(answered < hsm_connect, "{:?}", world.events.snapshot());
    assert!(hsm_connect < hsm_bytes, "{:?}", world.events.snapshot());
}

#[tokio::test]
async fn a_refused_client_reaches_no_hsm_even_with_a_pipelined_inner_hello() {
    let world = World::start_with(Options {
        spies: true,
        ..Options::default()
    })
    .await;
    // The SDK always pipelines its InnerHello behind the Credentials.
    let mut config = world.client_config();
    config.partition = "other".into();
    let err = world
        .connect_with(&config, &Default::default())
        .await
        .expect_err("refused");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(
        world
            .events
            .first("directory", |w| matches!(w, What::ToServer(_)))
            .is_some(),
        "the directory was asked"
    );
    assert!(
        world.events.first("hsm", |_| true).is_none(),
        "no HSM node saw anything: {:?}",
        world.events.snapshot()
    );
}

#[tokio::test]
async fn the_gateway_cannot_read_the_inner_channel() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        spies: true,
        ..Options::default()
    })
    .await;
    // A spy between client and gateway too: every byte either side sends.
    let front =
        hsmgate_tests::spy::Spy::start("front", world.gateway_addr(), world.events.clone()).await;
    let mut config = world.client_config();
    config.gateway = hsmgate_client::GatewayAddr::Addr(front.addr);
    let mut session = world
        .connect_with(&config, &Default::default())
        .await
        .expect("granted");
    let secret = b"attack at dawn: the plaintext of a known request, 0123456789abcdef";
    session
        .generate_key(KeyType::Aes256, "k")
        .await
        .expect("generate");
    let sealed = session.encrypt("k", secret, b"").await.expect("encrypt");
    assert_eq!(
        session.decrypt("k", &sealed, b"").await.expect("decrypt"),
        secret
    );
    session.sign_label_probe().await;
    session.close().await;

    for stream in ["front", "hsm"] {
        let bytes = world.events.bytes(stream);
        assert!(bytes.len() > 200, "{stream}: traffic was recorded");
        assert!(
            !contains(&bytes, secret),
            "{stream}: the plaintext appears in the forwarded bytes"
        );
        assert!(
            !contains(&bytes, b"attack at dawn"),
            "{stream}: part of the plaintext appears"
        );
        // The key label travels inside the inner channel too.
        assert!(
            !contains(&bytes, b"probe-label-7f3a"),
            "{stream}: a label is visible"
        );
    }
    // What the HSM node received is the gateway's Grant frame, then
    // exactly what the client sent after the outer handshake: the gateway
    // forwards, it does not re-encrypt.
    let client_sent = world.events.bytes("front/to_server");
    let hsm_got = world.events.bytes("hsm-1/to_server");
    assert_eq!(hsm_got[2], 0x25, "the session opens with a Grant");
    let grant_len = 2 + usize::from(u16::from_be_bytes([hsm_got[0], hsm_got[1]]));
    let forwarded = &hsm_got[grant_len..];
    assert!(forwarded.len() > 200, "the session's bytes were recorded");
    assert!(
        client_sent.ends_with(forwarded),
        "forwarded bytes are the client's bytes"
    );
}

trait LabelProbe {
    async fn sign_label_probe(&mut self);
}

impl LabelProbe for hsmgate_client::Session {
    /// A request whose label is a recognisable string (it fails: no such key).
    async fn sign_label_probe(&mut self) {
        let result = self.sign("probe-label-7f3a", b"x").await;
        assert!(
            matches!(result, Err(ClientError::Operation { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn sessions_succeed_with_one_of_three_hsm_nodes_stopped() {
    let mut world = World::start().await;
    world.hsms[1].server.stop().await;
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let session = world
            .connect(None)
            .await
            .expect("granted despite a dead node");
        session.ping().await.expect("ping");
        served_by.insert(session.hsm_id().to_owned());
        session.close().await;
    }
    assert_eq!(
        served_by.into_iter().collect::<Vec<_>>(),
        ["hsm-1", "hsm-3"],
        "the live nodes share the sessions"
    );
    let dead = world.hsms[1].pool_addr;
    let failed = world.metric(&format!(
        r#"hsmgate_backend_connect_total{{member="{dead}",pool="default",result="error"}}"#
    ));
    let out_of_rotation = world.metric(&format!(
        r#"hsmgate_backend_healthy{{member="{dead}",pool="default"}}"#
    ));
    let channel_down = world.metric(&format!(
        r#"hsmgate_backend_grant_channel_up{{member="{dead}",pool="default"}}"#
    ));
    assert!(
        failed >= 1.0 || out_of_rotation == 0.0 || channel_down == 0.0,
        "the dead node was tried and counted, taken out by its health checks, or \
         skipped because its control channel closed"
    );
}

#[tokio::test]
async fn bulk_traffic_both_ways_is_forwarded_intact_with_exact_counts() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        spies: true,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session
        .generate_key(KeyType::Aes256, "bulk")
        .await
        .expect("generate");
    // Largest plaintexts both ways, many times: each crosses the gateway as
    // ~32 KiB frames in both directions.
    let plaintext: Vec<u8> = (0..hsmgate_wire::ops::MAX_ENCRYPT_PLAINTEXT)
        .map(|i| (i % 251) as u8)
        .collect();
    for _ in 0..20 {
        let sealed = session
            .encrypt("bulk", &plaintext, b"")
            .await
            .expect("encrypt");
        let opened = session
            .decrypt("bulk", &sealed, b"")
            .await
            .expect("decrypt");
        assert_eq!(opened, plaintext);
    }
    session.close().await;
    let done =
        wait_for(|| world.metric(r#"hsmgate_sessions_forwarded_total{path="splice"}"#) >= 1.0)
            .await;
    assert!(done, "session ended");
    let up = world.metric(r#"hsmgate_forwarded_bytes_total{direction="client_to_hsm"}"#);
    let down = world.metric(r#"hsmgate_forwarded_bytes_total{direction="hsm_to_client"}"#);
    assert!(up > 40.0 * 32_000.0, "client_to_hsm {up}");
    assert!(down > 40.0 * 32_000.0, "hsm_to_client {down}");
    // The counts are exact: what the HSM node's side of the wire carried,
    // less the gateway's own Grant frame in front of the client's bytes.
    let to_node = world.events.bytes("hsm-1/to_server");
    assert_eq!(to_node[2], 0x25, "the session opens with the Grant frame");
    let grant_len = 2 + usize::from(u16::from_be_bytes([to_node[0], to_node[1]]));
    assert_eq!(up as usize, to_node.len() - grant_len);
    assert_eq!(down as usize, world.events.bytes("hsm-1/from_server").len());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Poll `check` for up to the tests' patience; true once it holds.
async fn wait_for(check: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check()
}
