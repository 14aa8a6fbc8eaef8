//! Admission limits: each refuses the session after its bound, with code 3
//! (over limit), a metric and a log line; the bound frees up again.

use hsmgate_client::{ClientError, Code};
use hsmgate_tests::{Options, World};

const OVER_LIMIT_DENIALS: &str = r#"hsmgate_admission_total{result="deny",stage="limit"}"#;

fn is_over_limit(err: &ClientError) -> bool {
    let text = format!("{err:?}");
    text.contains("OverLimit")
}

#[tokio::test]
async fn global_connection_limit() {
    let world = World::start_with(Options {
        tweak: |c| c.limits.max_connections = 1,
        ..Options::default()
    })
    .await;
    let held = world.connect(None).await.expect("first session");
    held.ping().await.expect("ping");
    let err = world.connect(None).await.expect_err("over the limit");
    assert!(is_over_limit(&err), "{err:?}");
    assert_eq!(err.exit_code(), 4, "over limit is worth retrying elsewhere");
    assert_eq!(world.metric(OVER_LIMIT_DENIALS), 1.0);
    held.close().await;
    let freed = wait_until_connects(&world, None).await;
    assert!(freed, "the slot came back when the session ended");
}

#[tokio::test]
async fn connections_per_source_address() {
    let world = World::start_with(Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        tweak: |c| c.limits.max_connections_per_source = 1,
        ..Options::default()
    })
    .await;
    let held = world.connect(None).await.expect("first session");
    held.ping().await.expect("ping");
    let err = world
        .connect(None)
        .await
        .expect_err("same source, over the limit");
    assert!(is_over_limit(&err), "{err:?}");
    assert_eq!(world.metric(OVER_LIMIT_DENIALS), 1.0);
    let other = world
        .connect(Some("127.0.0.3"))
        .await
        .expect("another source is not affected");
    other.ping().await.expect("ping");
    other.close().await;
    held.close().await;
    assert!(wait_until_connects(&world, None).await);
}

#[tokio::test]
async fn handshake_rate_per_source_address() {
    // One new handshake per second, two at once: the third immediate
    // connection is refused before any byte is read (no directory call).
    let world = World::start_with(Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        tweak: |c| {
            c.limits.handshakes_per_second_per_source = 1;
            c.limits.handshake_burst_per_source = 2;
        },
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        let s = world.connect(None).await.expect("within the burst");
        s.ping().await.expect("ping");
        s.close().await;
    }
    let err = world.connect(None).await.expect_err("over the rate");
    assert!(is_over_limit(&err), "{err:?}");
    assert_eq!(world.metric(OVER_LIMIT_DENIALS), 1.0);
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="allow",stage="handshake"}"#),
        2.0,
        "the refused connection never started a handshake"
    );
    let other = world.connect(Some("127.0.0.3")).await.expect("per source");
    other.ping().await.expect("ping");
}

#[tokio::test]
async fn sessions_per_client_from_the_directory() {
    let world = World::start().await;
    // The directory says: at most one session of this client per gateway.
    let text = std::fs::read_to_string(world.directory.path().expect("data file"))
        .expect("read data")
        .replace("[defaults]\n", "[defaults]\nmax_sessions = 1\n");
    world.rewrite_directory(&text);
    let held = world.connect(None).await.expect("first session");
    held.ping().await.expect("ping");
    let err = world
        .connect(None)
        .await
        .expect_err("second session of the client");
    match &err {
        ClientError::Refused { code, .. } => assert_eq!(*code, Code::OverLimit),
        other => panic!("expected an authenticated OverLimit decision, got {other:?}"),
    }
    assert_eq!(world.metric(OVER_LIMIT_DENIALS), 1.0);
    held.close().await;
    assert!(wait_until_connects(&world, None).await);
}

/// Connect until it works, bounded (the gateway releases a slot when it sees
/// the session end, which is asynchronous to the client's close).
async fn wait_until_connects(world: &World, bind: Option<&str>) -> bool {
    for _ in 0..50 {
        if let Ok(s) = world.connect(bind).await {
            s.ping().await.expect("ping");
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
