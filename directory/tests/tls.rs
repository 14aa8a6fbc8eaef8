//! The directory's TLS against the gateway's directory client, on real
//! loopback sockets: mutual TLS that works, and each way it must fail
//! (closed, with a retryable error and a reported failure kind), the
//! gateway identity check, and a certificate reload in place.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsmgate_authz::pki::{Ca, Leaf, Usage};
use hsmgate_authz::tls::{ClientTlsFiles, FailureKind, ServerTls, ServerTlsFiles};
use hsmgate_authz::{AuthzError, ClientConfig, ConnectObserver, Decision, DirectoryClient, Query};
use hsmgate_directory::{Directory, GatewayIdentity, serve_tls};
use hsmgate_wire::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: PublicKey = PublicKey([0x11; 32]);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn query(gateway_id: &str) -> Query {
    Query {
        client_id: "demo-app".into(),
        client_static_key: KEY,
        tenant: "demo".into(),
        partition: "demo".into(),
        source: "127.0.0.1".parse::<IpAddr>().expect("address"),
        gateway_id: gateway_id.into(),
    }
}

/// A CA, the directory's certificate (127.0.0.1, localhost) and files.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki::with_ca("test CA")
    }

    fn with_ca(name: &str) -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: Ca::new(name).expect("ca"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.path("ca.pem");
        std::fs::write(&path, self.ca.cert_pem()).expect("write");
        path
    }

    fn issue(&self, stem: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            self.path(&format!("{stem}.pem")),
            self.path(&format!("{stem}.key")),
        );
        self.ca
            .issue(leaf)
            .expect("issue")
            .write(&cert, &key)
            .expect("write");
        (cert, key)
    }

    fn server_files(&self, client_ca: bool) -> ServerTlsFiles {
        let (cert_file, key_file) = self.issue(
            "directory",
            &Leaf::new(Usage::Server, "directory", &["127.0.0.1", "localhost"]),
        );
        ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: client_ca.then(|| self.ca_file()),
        }
    }

    fn gateway_files(&self, names: &[&str]) -> ClientTlsFiles {
        let (cert, key) = self.issue("gateway", &Leaf::new(Usage::Client, "gateway", names));
        ClientTlsFiles {
            ca_file: Some(self.ca_file()),
            client_cert_file: Some(cert),
            client_key_file: Some(key),
            ..ClientTlsFiles::default()
        }
    }
}

/// A TLS directory on 127.0.0.1:0, stopped when dropped.
struct Server {
    addr: SocketAddr,
    tls: Arc<ServerTls>,
    _stop: oneshot::Sender<()>,
}

async fn start(files: ServerTlsFiles, identity: GatewayIdentity) -> Server {
    let directory = Arc::new(Directory::load(fixture("valid.toml")).expect("load"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = Arc::new(ServerTls::load(files).expect("server TLS"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_tls(
        directory,
        listener,
        Arc::clone(&tls),
        identity,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        tls,
        _stop: stop,
    }
}

/// Every failure the client reported.
#[derive(Default)]
struct Recorder(Mutex<Vec<(FailureKind, String)>>);

impl ConnectObserver for Recorder {
    fn failed(&self, kind: FailureKind, error: &str) {
        self.0.lock().expect("lock").push((kind, error.to_owned()));
    }
}

impl Recorder {
    fn kinds(&self) -> Vec<FailureKind> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, _)| *k)
            .collect()
    }

    fn text(&self) -> String {
        format!("{:?}", self.0.lock().expect("lock"))
    }
}

fn gateway_client(
    endpoint: String,
    tls: Option<ClientTlsFiles>,
) -> (DirectoryClient, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let client = DirectoryClient::with_observer(
        &ClientConfig {
            endpoint,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            tls,
        },
        recorder.clone(),
    )
    .expect("client");
    (client, recorder)
}

/// The request fails with a retryable error and the failure was reported
/// as `kind`, with a message containing `needle`.
async fn assert_refused(
    client: &DirectoryClient,
    recorder: &Recorder,
    kind: FailureKind,
    needle: &str,
) {
    let err = client.authorize(&query("gw-1")).await.expect_err("refused");
    assert!(err.is_retryable(), "a retryable error: {err}");
    // The alert after a TLS 1.3 handshake may be read just after the call
    // fails: wait for the report, bounded.
    for _ in 0..50 {
        if recorder.kinds().contains(&kind) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        recorder.kinds().contains(&kind),
        "{kind:?} reported: {} (error: {err})",
        recorder.text()
    );
    assert!(
        recorder.text().contains(needle),
        "the report names {needle:?}: {}",
        recorder.text()
    );
}

#[tokio::test]
async fn grants_through_tls_without_client_certificates() {
    let pki = Pki::new();
    let server = start(pki.server_files(false), GatewayIdentity::Unchecked).await;
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        ..ClientTlsFiles::default()
    };
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    let answer = client.authorize(&query("gw-1")).await.expect("answer");
    assert_eq!(answer.decision, Decision::Allow);
    assert!(recorder.kinds().is_empty(), "{}", recorder.text());
}

#[tokio::test]
async fn grants_through_mutual_tls_to_a_gateway_its_certificate_names() {
    let pki = Pki::new();
    let server = start(pki.server_files(true), GatewayIdentity::Required).await;
    let files = pki.gateway_files(&["gw-1"]);
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    let answer = client.authorize(&query("gw-1")).await.expect("answer");
    assert_eq!(answer.decision, Decision::Allow);
    assert!(client.probe().await.is_ok());
    assert!(recorder.kinds().is_empty(), "{}", recorder.text());
}

#[tokio::test]
async fn the_server_name_override_is_what_is_verified() {
    let pki = Pki::new();
    let server = start(pki.server_files(false), GatewayIdentity::Unchecked).await;
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        server_name: Some("localhost".into()),
        ..ClientTlsFiles::default()
    };
    let (client, _) = gateway_client(format!("https://{}", server.addr), Some(files));
    client.authorize(&query("gw-1")).await.expect("answer");
}

#[tokio::test]
async fn refuses_a_gateway_without_a_client_certificate() {
    let pki = Pki::new();
    let server = start(pki.server_files(true), GatewayIdentity::Unchecked).await;
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        ..ClientTlsFiles::default()
    };
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    assert_refused(
        &client,
        &recorder,
        FailureKind::Certificate,
        "CertificateRequired",
    )
    .await;
}

#[tokio::test]
async fn refuses_an_expired_client_certificate() {
    let pki = Pki::new();
    let server = start(pki.server_files(true), GatewayIdentity::Unchecked).await;
    let (cert, key) = pki.issue(
        "expired",
        &Leaf {
            expired: true,
            ..Leaf::new(Usage::Client, "gw-1", &["gw-1"])
        },
    );
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        client_cert_file: Some(cert),
        client_key_file: Some(key),
        ..ClientTlsFiles::default()
    };
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    assert_refused(
        &client,
        &recorder,
        FailureKind::Certificate,
        "CertificateExpired",
    )
    .await;
}

#[tokio::test]
async fn refuses_a_client_certificate_from_another_ca() {
    let pki = Pki::new();
    // Another CA of the same name (the verifier finds it by name, then the
    // signature fails) and one of another name.
    for stranger in [Pki::new(), Pki::with_ca("another CA")] {
        let server = start(pki.server_files(true), GatewayIdentity::Unchecked).await;
        let mut files = stranger.gateway_files(&["gw-1"]);
        // It trusts the right CA for the directory, but its own certificate
        // comes from elsewhere.
        files.ca_file = Some(pki.ca_file());
        let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
        assert_refused(&client, &recorder, FailureKind::Certificate, "alert").await;
    }
}

#[tokio::test]
async fn refuses_a_directory_certificate_for_another_name() {
    let pki = Pki::new();
    let server = start(pki.server_files(false), GatewayIdentity::Unchecked).await;
    let files = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        server_name: Some("directory.elsewhere.example".into()),
        ..ClientTlsFiles::default()
    };
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    assert_refused(
        &client,
        &recorder,
        FailureKind::Certificate,
        "not valid for name",
    )
    .await;
}

#[tokio::test]
async fn refuses_a_directory_signed_by_an_unknown_ca() {
    let pki = Pki::new();
    let server = start(pki.server_files(false), GatewayIdentity::Unchecked).await;
    let stranger = Pki::with_ca("another CA");
    let files = ClientTlsFiles {
        ca_file: Some(stranger.ca_file()),
        ..ClientTlsFiles::default()
    };
    let (client, recorder) = gateway_client(format!("https://{}", server.addr), Some(files));
    assert_refused(
        &client,
        &recorder,
        FailureKind::Certificate,
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test]
async fn a_plaintext_client_gets_no_answer_from_a_tls_directory() {
    let pki = Pki::new();
    let server = start(pki.server_files(false), GatewayIdentity::Unchecked).await;
    let (client, _) = gateway_client(format!("http://{}", server.addr), None);
    let err = client.authorize(&query("gw-1")).await.expect_err("refused");
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn refuses_a_gateway_id_its_certificate_does_not_name() {
    let pki = Pki::new();
    let server = start(pki.server_files(true), GatewayIdentity::Required).await;
    let files = pki.gateway_files(&["gw-1"]);
    let (client, _) = gateway_client(format!("https://{}", server.addr), Some(files));
    let err = client
        .authorize(&query("gw-2"))
        .await
        .expect_err("impersonation refused");
    match &err {
        AuthzError::Rejected { code, message } => {
            assert_eq!(code, "PermissionDenied");
            assert!(message.contains("gw-2"), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
    // Without the check, the same gateway may claim any name.
    let open = start(pki.server_files(true), GatewayIdentity::Unchecked).await;
    let (client, _) = gateway_client(
        format!("https://{}", open.addr),
        Some(pki.gateway_files(&["gw-1"])),
    );
    client.authorize(&query("gw-2")).await.expect("unchecked");
}

fn replace(path: &Path, text: &str) {
    // Written beside and renamed over, as cert-manager does.
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

#[tokio::test]
async fn a_reloaded_server_certificate_applies_to_new_connections_only() {
    let pki = Pki::new();
    let files = pki.server_files(false);
    let server = start(files.clone(), GatewayIdentity::Unchecked).await;
    let trust_first = ClientTlsFiles {
        ca_file: Some(pki.ca_file()),
        ..ClientTlsFiles::default()
    };
    let (kept, _) = gateway_client(
        format!("https://{}", server.addr),
        Some(trust_first.clone()),
    );
    kept.authorize(&query("gw-1")).await.expect("first CA");

    // A certificate from a new CA replaces the old one in place.
    let next = Ca::new("next CA").expect("ca");
    let issued = next
        .issue(&Leaf::new(Usage::Server, "directory", &["127.0.0.1"]))
        .expect("issue");
    replace(&files.key_file, &issued.key_pem);
    replace(&files.cert_file, &issued.cert_pem);
    server
        .tls
        .reload_if_changed()
        .expect("the change is seen")
        .expect("and loads");

    // The connection already up keeps working.
    kept.authorize(&query("gw-1"))
        .await
        .expect("kept connection");
    // New connections present the new certificate.
    let (fresh, recorder) = gateway_client(format!("https://{}", server.addr), Some(trust_first));
    assert_refused(&fresh, &recorder, FailureKind::Certificate, "UnknownIssuer").await;
    let next_ca = pki.path("next-ca.pem");
    std::fs::write(&next_ca, next.cert_pem()).expect("write");
    let (fresh, _) = gateway_client(
        format!("https://{}", server.addr),
        Some(ClientTlsFiles {
            ca_file: Some(next_ca),
            ..ClientTlsFiles::default()
        }),
    );
    fresh.authorize(&query("gw-1")).await.expect("new CA");

    // A broken key is refused; the new certificate stays in force.
    replace(&files.key_file, "garbage\n");
    assert!(server.tls.reload().is_err());
    fresh.probe().await.expect("still served");
}

#[tokio::test]
async fn configuration_mismatches_are_refused_when_the_client_is_built() {
    let https_without_tls = DirectoryClient::new(&ClientConfig {
        endpoint: "https://127.0.0.1:1".into(),
        ..ClientConfig::default()
    });
    assert!(matches!(https_without_tls, Err(AuthzError::Config(_))));
    let http_with_tls = DirectoryClient::new(&ClientConfig {
        endpoint: "http://127.0.0.1:1".into(),
        tls: Some(ClientTlsFiles::default()),
        ..ClientConfig::default()
    });
    assert!(matches!(http_with_tls, Err(AuthzError::Config(_))));
    let no_ca = DirectoryClient::new(&ClientConfig {
        endpoint: "https://127.0.0.1:1".into(),
        tls: Some(ClientTlsFiles::default()),
        ..ClientConfig::default()
    });
    assert!(
        matches!(&no_ca, Err(AuthzError::Config(m)) if m.contains("ca_file")),
        "{no_ca:?}"
    );
}
