//! The QUIC listener against an independent QUIC stack: a client written
//! with Python's aioquic (tests/python/aioquic_client.py). It completes the
//! QUIC handshake and negotiates the ALPN `hsmgate/1`; garbage on its first
//! stream gets Error code 6 on the stream and a CONNECTION_CLOSE with code 6
//! (PROTOCOL.md §11.3, §11.6); a client offering another ALPN does not get a
//! connection. The gateway serves the SDK afterwards.
//!
//! Needs Python with `aioquic` (`$HSMGATE_PYTHON`, else `python3`). Without
//! it the test says it is skipped, unless `HSMGATE_REQUIRE_AIOQUIC=1` (CI),
//! where it fails.

use std::process::Command;

use hsmgate_tests::{Options, World};

fn python() -> String {
    std::env::var("HSMGATE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether aioquic can be used; panics when it is required and cannot.
fn aioquic_available() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import aioquic"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("HSMGATE_REQUIRE_AIOQUIC").is_ok_and(|v| v == "1");
    assert!(
        ok || !required,
        "HSMGATE_REQUIRE_AIOQUIC=1 but {} cannot import aioquic",
        python()
    );
    if !ok {
        eprintln!("skipped: no Python aioquic (pip install aioquic; set HSMGATE_PYTHON)");
    }
    ok
}

/// Run the Python client in `mode` against `world`'s QUIC listener; its
/// JSON report.
async fn probe(world: &World, mode: &str) -> serde_json::Value {
    let addr = world.quic_addr();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/aioquic_client.py");
    let mode = mode.to_owned();
    // The script bounds every wait itself (15 s in all).
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(mode)
            .output()
    })
    .await
    .expect("join")
    .expect("run the client");
    assert!(
        out.status.success(),
        "aioquic client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[tokio::test]
async fn an_aioquic_client_negotiates_the_alpn_and_garbage_is_refused_with_a_code() {
    if !aioquic_available() {
        return;
    }
    let world = World::start_with(Options {
        quic: true,
        ..Options::default()
    })
    .await;
    let report = probe(&world, "garbage").await;
    assert_eq!(report["alpn"], "hsmgate/1", "{report}");
    // Error frame, code 6 (protocol error), then the end of the stream.
    assert_eq!(report["stream"], "00020506", "{report}");
    assert_eq!(report["stream_ended"], true, "{report}");
    assert_eq!(report["close_code"], 6, "{report}");
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="not_authenticated"}"#),
        1.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="error",stage="handshake"}"#),
        1.0
    );

    let report = probe(&world, "alpn").await;
    assert_eq!(
        report["connected"], false,
        "another ALPN is refused: {report}"
    );
    assert_eq!(
        world.metric(r#"hsmgate_quic_connections_total{outcome="tls_failed"}"#),
        1.0
    );

    // The listener goes on serving.
    let (_conn, session) = world.connect_quic(None).await.expect("granted");
    session.ping().await.expect("ping");
}
