//! The gateway's directory client against a directory written with Python
//! grpcio (tests/python/grpcio_directory.py): another gRPC and TLS stack
//! (BoringSSL) serving TLS 1.3 and requiring client certificates. A grant
//! with a good client certificate; refused, as a reported certificate
//! failure and a retryable error, with none, with one from another CA, and
//! against a wrong server name.
//!
//! Needs Python with `grpcio` and `grpcio-tools` (`$HSMGATE_PYTHON`, else
//! `python3`). Without them the test says it is skipped, unless
//! `HSMGATE_REQUIRE_GRPCIO_TLS=1` (CI), where it fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsmgate_authz::pki::{Ca, Leaf, Usage};
use hsmgate_authz::tls::{ClientTlsFiles, FailureKind};
use hsmgate_authz::{ClientConfig, ConnectObserver, Decision, DirectoryClient, Query};
use hsmgate_tests::GATEWAY_ID;
use hsmgate_tests::proc::Daemon;
use hsmgate_wire::PublicKey;

fn python() -> String {
    std::env::var("HSMGATE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether grpcio can be used; panics when it is required and cannot.
fn grpcio_available() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("HSMGATE_REQUIRE_GRPCIO_TLS").is_ok_and(|v| v == "1");
    assert!(
        ok || !required,
        "HSMGATE_REQUIRE_GRPCIO_TLS=1 but {} cannot import grpc and grpc_tools",
        python()
    );
    if !ok {
        eprintln!(
            "skipped: no Python grpcio (pip install grpcio grpcio-tools; set HSMGATE_PYTHON)"
        );
    }
    ok
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(FailureKind, String)>>);

impl ConnectObserver for Recorder {
    fn failed(&self, kind: FailureKind, error: &str) {
        self.0.lock().expect("lock").push((kind, error.to_owned()));
    }
}

fn query() -> Query {
    Query {
        client_id: "demo-app".into(),
        client_static_key: PublicKey([0x22; 32]),
        tenant: "demo".into(),
        partition: "demo".into(),
        source: "127.0.0.1".parse::<IpAddr>().expect("address"),
        gateway_id: GATEWAY_ID.into(),
    }
}

fn issue(ca: &Ca, dir: &Path, stem: &str, usage: Usage, names: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    ca.issue(&Leaf::new(usage, names[0], names))
        .expect("issue")
        .write(&cert, &key)
        .expect("write");
    (cert, key)
}

fn client(port: u16, files: ClientTlsFiles) -> (DirectoryClient, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = DirectoryClient::with_observer(
        &ClientConfig {
            endpoint: format!("https://127.0.0.1:{port}"),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: Some(files),
        },
        recorder.clone(),
    )
    .expect("client");
    (client, recorder)
}

async fn assert_certificate_refused(client: &DirectoryClient, recorder: &Recorder) {
    let err = client.authorize(&query()).await.expect_err("refused");
    assert!(err.is_retryable(), "fails closed, retryable: {err}");
    let reported = recorder.0.lock().expect("lock").clone();
    assert!(
        reported
            .iter()
            .any(|(kind, _)| *kind == FailureKind::Certificate),
        "a certificate failure reported: {reported:?} ({err})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_speaks_mutual_tls_with_a_grpcio_directory() {
    if !grpcio_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("grpcio test CA").expect("ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write");
    let (server_cert, server_key) =
        issue(&ca, dir.path(), "directory", Usage::Server, &["127.0.0.1"]);
    let (gateway_cert, gateway_key) =
        issue(&ca, dir.path(), "gateway", Usage::Client, &[GATEWAY_ID]);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let daemon = Daemon::spawn(
        Command::new(python())
            .arg(root.join("python/grpcio_directory.py"))
            .arg(root.join("../authz-client/proto"))
            .args([&server_cert, &server_key, &ca_file]),
    );
    let port: u16 = tokio::task::spawn_blocking({
        let line = daemon.wait_for_line("listening ", Duration::from_secs(60));
        move || line
    })
    .await
    .expect("join")
    .and_then(|l| l.strip_prefix("listening ")?.trim().parse().ok())
    .unwrap_or_else(|| panic!("the grpcio directory listens\n{}", daemon.transcript()));

    let good = ClientTlsFiles {
        ca_file: Some(ca_file.clone()),
        client_cert_file: Some(gateway_cert.clone()),
        client_key_file: Some(gateway_key.clone()),
        ..ClientTlsFiles::default()
    };
    let (granted, recorder) = client(port, good.clone());
    let answer = granted.authorize(&query()).await.unwrap_or_else(|e| {
        panic!(
            "granted through grpcio over mutual TLS: {e}\n{}",
            daemon.transcript()
        )
    });
    assert_eq!(answer.decision, Decision::Allow);
    assert_eq!(answer.pool, "default");
    assert!(recorder.0.lock().expect("lock").is_empty());
    assert!(
        daemon
            .wait_for_line(
                &format!("gateway_id={GATEWAY_ID} peer_cn={GATEWAY_ID}"),
                Duration::from_secs(5)
            )
            .is_some(),
        "grpcio saw the gateway's certificate\n{}",
        daemon.transcript()
    );

    // No client certificate.
    let (bare, recorder) = client(
        port,
        ClientTlsFiles {
            client_cert_file: None,
            client_key_file: None,
            ..good.clone()
        },
    );
    assert_certificate_refused(&bare, &recorder).await;

    // A client certificate from another CA.
    let other = Ca::new("another CA").expect("ca");
    let (cert, key) = issue(&other, dir.path(), "foreign", Usage::Client, &[GATEWAY_ID]);
    let (foreign, recorder) = client(
        port,
        ClientTlsFiles {
            client_cert_file: Some(cert),
            client_key_file: Some(key),
            ..good.clone()
        },
    );
    assert_certificate_refused(&foreign, &recorder).await;

    // The directory's certificate does not name what the gateway expects.
    let (wrong, recorder) = client(
        port,
        ClientTlsFiles {
            server_name: Some("directory.elsewhere.example".into()),
            ..good
        },
    );
    assert_certificate_refused(&wrong, &recorder).await;
}
