//! The admin endpoints of a running gateway, and draining on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hsmgate_tests::{Options, PATIENCE, World, check_exposition_format, metric_value};

fn with_admin() -> Options {
    Options {
        admin: true,
        ..Options::default()
    }
}

/// Poll `check` (bounded: the tests' patience in 50 ms steps).
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let steps = PATIENCE.as_millis() / 50;
    for _ in 0..steps {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn metrics_count_what_happened_and_parse_as_prometheus_text() {
    let world = World::start_with(with_admin()).await;
    for _ in 0..3 {
        let session = world.connect(None).await.expect("granted");
        session.ping().await.expect("ping");
        session.close().await;
    }
    for _ in 0..2 {
        let refused = world.connect(Some("127.0.0.2")).await;
        assert!(
            refused.is_err(),
            "127.0.0.2 is outside the tenant's networks"
        );
    }
    // Forwarded sessions are counted when they end: wait for all three.
    let ended = eventually(|| async {
        let (_, body) = world.admin_get("/metrics").await;
        metric_value(&body, r#"hsmgate_sessions_forwarded_total{path="splice"}"#) == 3.0
    })
    .await;
    assert!(ended, "three forwarded sessions counted");
    let (status, body) = world.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let count = |sample: &str| metric_value(&body, sample);
    assert_eq!(
        count(r#"hsmgate_admission_total{result="allow",stage="authz"}"#),
        3.0
    );
    assert_eq!(
        count(r#"hsmgate_admission_total{result="deny",stage="authz"}"#),
        2.0
    );
    assert_eq!(
        count(r#"hsmgate_admission_total{result="allow",stage="address"}"#),
        5.0
    );
    assert_eq!(
        count(r#"hsmgate_connections_accepted_total{listener="main"}"#),
        5.0
    );
    assert_eq!(
        count(r#"hsmgate_authz_requests_total{cache="miss",result="allow"}"#),
        1.0
    );
    assert_eq!(
        count(r#"hsmgate_authz_requests_total{cache="hit",result="allow"}"#),
        2.0
    );
    assert_eq!(count("hsmgate_handshake_duration_seconds_count"), 3.0);
    assert_eq!(count(r#"hsmgate_sessions_active{pool="default"}"#), 0.0);
    assert!(body.contains("hsmgate_build_info{version="), "{body}");
    check_exposition_format(&body);
}

#[tokio::test]
async fn health_and_config_endpoints() {
    let world = World::start_with(with_admin()).await;
    let (status, body) = world.admin_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let ready = eventually(|| async { world.admin_get("/readyz").await.0 == 200 }).await;
    assert!(ready, "{}", world.admin_get("/readyz").await.1);

    let (status, config) = world.admin_get("/config").await;
    assert_eq!(status, 200);
    assert!(config.contains("gateway_id = \"test-gateway\""), "{config}");
    assert!(
        config.contains(&world.gateway.public_key().to_text()),
        "{config}"
    );
    // No secret: the private half of the gateway's key never appears.
    let key_text = std::fs::read_to_string(world.dir.path().join("gateway.key")).expect("key file");
    let private_hex = key_text
        .lines()
        .find_map(|l| l.split_once("x25519-private:"))
        .map(|(_, hex)| hex.trim_matches(|c| c == '"' || c == ' ').to_owned())
        .expect("private key line");
    assert_eq!(private_hex.len(), 64);
    assert!(
        !config.contains(&private_hex),
        "private key leaked into /config"
    );
    assert!(
        !config.contains("x25519-private"),
        "private key leaked into /config"
    );

    assert_eq!(world.admin_get("/nope").await.0, 404);

    // HEAD answers the status and headers of GET without the body.
    let head = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = world.admin_server.as_ref().expect("admin").addr;
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"HEAD /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(PATIENCE, head).await.expect("in time");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("content-length: 3"), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "no body: {response:?}");
}

#[tokio::test]
async fn stays_ready_while_the_shared_directory_is_down() {
    let mut world = World::start_with(with_admin()).await;
    assert!(eventually(|| async { world.admin_get("/readyz").await.0 == 200 }).await);
    world.directory_server.stop().await;
    let noticed = eventually(|| async {
        world
            .admin_get("/readyz")
            .await
            .1
            .contains("directory_reachable: false")
    })
    .await;
    let (status, body) = world.admin_get("/readyz").await;
    assert!(noticed, "{body}");
    // Every instance shares the directory: an outage must not empty the
    // Service. The client gets the retryable code instead of no address.
    assert_eq!(status, 200, "{body}");
    let err = world.connect(None).await.expect_err("refused");
    assert_eq!(err.exit_code(), 4, "{err}");
}

#[tokio::test]
async fn not_ready_when_every_hsm_node_is_down_and_ready_again_after() {
    let mut world = World::start_with(Options {
        hsm_nodes: 2,
        ..with_admin()
    })
    .await;
    assert!(eventually(|| async { world.admin_get("/readyz").await.0 == 200 }).await);
    for hsm in &mut world.hsms {
        hsm.server.stop().await;
    }
    let not_ready = eventually(|| async { world.admin_get("/readyz").await.0 == 503 }).await;
    assert!(not_ready, "{}", world.admin_get("/readyz").await.1);
    let (_, body) = world.admin_get("/readyz").await;
    assert!(body.contains("healthy_hsm_members: 0"), "{body}");
    // Every node out of rotation: refused at once with the retryable code.
    let err = world.connect(None).await.expect_err("refused");
    assert_eq!(err.exit_code(), 4, "{err}");

    world.restart_hsm(0).await;
    let ready = eventually(|| async { world.admin_get("/readyz").await.0 == 200 }).await;
    assert!(ready, "{}", world.admin_get("/readyz").await.1);
    let session = world
        .connect(None)
        .await
        .expect("served by the recovered node");
    assert_eq!(session.hsm_id(), "hsm-1");
    session.ping().await.expect("ping");
}

#[tokio::test]
async fn shutdown_drains_a_running_session_and_turns_not_ready() {
    let world = World::start_with(with_admin()).await;
    assert!(eventually(|| async { world.admin_get("/readyz").await.0 == 200 }).await);
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");

    world.gateway_server.signal_stop();
    let draining = eventually(|| async {
        let (status, body) = world.admin_get("/readyz").await;
        status == 503 && body.contains("draining: true")
    })
    .await;
    assert!(draining, "{}", world.admin_get("/readyz").await.1);
    // New clients are turned away (the listener is closed) ...
    let refused = world.connect(None).await;
    assert!(refused.is_err(), "no new session while draining");
    // ... while the running session keeps working to its end.
    for _ in 0..5 {
        session
            .ping()
            .await
            .expect("the draining gateway still forwards");
    }
    assert!(!world.gateway_server.is_finished(), "waits for the session");
    session.close().await;
    let finished = eventually(|| async { world.gateway_server.is_finished() }).await;
    assert!(finished, "the gateway stops once its last session ended");
}

/// Issue 9, part 4: idle connections to the admin port must not make the
/// liveness probe fail (a failing probe gets the pod restarted, cutting
/// every session).
#[tokio::test]
async fn idle_connections_cannot_starve_the_liveness_probe() {
    let world = World::start_with(with_admin()).await;
    let admin = world.admin_server.as_ref().expect("admin").addr;
    let mut idle = Vec::new();
    // 24 sources × 16: more than every place the admin listener has.
    for source in 1..=24u8 {
        for _ in 0..16 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(format!("127.0.2.{source}:0").parse().expect("addr"))
                .expect("bind");
            if let Ok(s) = socket.connect(admin).await {
                idle.push(s);
            }
        }
    }
    assert!(idle.len() >= 300, "{} idle connections", idle.len());
    for _ in 0..5 {
        let started = tokio::time::Instant::now();
        let (status, body) = world.admin_get("/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // One source cannot hold more than its share.
    let mut mine = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.3.1:0".parse().expect("addr"))
            .expect("bind");
        mine.push(socket.connect(admin).await.expect("connect"));
    }
    let mut closed = 0;
    for s in &mut mine[16..] {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::AsyncReadExt::read(s, &mut byte),
        )
        .await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 4,
        "connections beyond the per-source cap are closed: {closed}"
    );
    drop(idle);
}

/// The admin token file of the token tests (a world's `tweak` is a plain
/// function: it finds the path here).
static TOKEN_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
const TOKEN: &str = "s3cret-admin-token-0123456789";

fn token_file() -> std::path::PathBuf {
    TOKEN_FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir").keep();
            let path = dir.join("admin-token");
            std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
            path
        })
        .clone()
}

#[tokio::test]
async fn config_needs_the_bearer_token_and_probes_do_not() {
    token_file();
    let world = World::start_with(Options {
        tweak: |c| c.admin.token_file = TOKEN_FILE.get().cloned(),
        ..with_admin()
    })
    .await;
    let bearer = |t: &str| format!("authorization: Bearer {t}\r\n");
    let (status, body) = world.admin_get("/config").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("gateway_id"), "{body}");
    assert_eq!(
        world
            .admin_get_with("/config", &bearer("wrong-token-0123456789"))
            .await
            .0,
        401
    );
    let (status, body) = world.admin_get_with("/config", &bearer(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gateway_id"), "{body}");
    // Probes and (by default) metrics carry no token.
    assert_eq!(world.admin_get("/healthz").await.0, 200);
    assert_eq!(world.admin_get("/metrics").await.0, 200);
    assert_eq!(
        world.metric(r#"hsmgate_admin_auth_failures_total{reason="bad_token"}"#),
        2.0
    );
}

#[tokio::test]
async fn metrics_can_require_the_token_as_a_prometheus_scrape_sends_it() {
    token_file();
    let world = World::start_with(Options {
        tweak: |c| {
            c.admin.token_file = TOKEN_FILE.get().cloned();
            c.admin.metrics_require_token = true;
            c.admin.config_endpoint = false;
        },
        ..with_admin()
    })
    .await;
    assert_eq!(world.admin_get("/metrics").await.0, 401);
    let (status, body) = world
        .admin_get_with("/metrics", &format!("Authorization: Bearer {TOKEN}\r\n"))
        .await;
    assert_eq!(status, 200);
    check_exposition_format(&body);
    // Turned off: not there at all, token or not.
    let (status, _) = world
        .admin_get_with("/config", &format!("Authorization: Bearer {TOKEN}\r\n"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(world.admin_get("/readyz").await.0, 200);
}

#[tokio::test]
async fn a_tcp_health_check_is_not_a_failed_handshake() {
    use tokio::io::AsyncWriteExt;
    let world = World::start_with(with_admin()).await;
    let handshake_errors = r#"hsmgate_admission_total{result="error",stage="handshake"}"#;
    // Connect and close, as a load balancer's TCP check does.
    drop(
        tokio::net::TcpStream::connect(world.gateway_addr())
            .await
            .expect("connect"),
    );
    let counted = eventually(|| async { world.metric("hsmgate_tcp_checks_total") == 1.0 }).await;
    assert!(counted, "{}", world.admin_get("/metrics").await.1);
    assert_eq!(world.metric(handshake_errors), 0.0);
    // A few bytes and a close: a failed handshake, as before.
    let mut stream = tokio::net::TcpStream::connect(world.gateway_addr())
        .await
        .expect("connect");
    stream.write_all(b"\x00\x27\x01HS").await.expect("write");
    drop(stream);
    let counted = eventually(|| async { world.metric(handshake_errors) == 1.0 }).await;
    assert!(counted, "{}", world.admin_get("/metrics").await.1);
    assert_eq!(world.metric("hsmgate_tcp_checks_total"), 1.0);
}

/// The admin TLS test's files: (directory, CA file).
static ADMIN_TLS: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> =
    std::sync::OnceLock::new();

/// Issue a server certificate for 127.0.0.1 from a new CA into `dir`
/// (admin.pem, admin.key) and write the CA to `ca_file`.
fn issue_admin_certificate(dir: &std::path::Path, ca_file: &std::path::Path) {
    use hsmgate_authz::pki::{Ca, Leaf, Usage};
    let ca = Ca::new("admin test CA").expect("CA");
    std::fs::write(ca_file, ca.cert_pem()).expect("write CA");
    let issued = ca
        .issue(&Leaf::new(Usage::Server, "admin", &["127.0.0.1"]))
        .expect("certificate");
    // Replace both files at once, as a secret update does.
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    issued
        .write(&staging.join("admin.pem"), &staging.join("admin.key"))
        .expect("write");
    std::fs::rename(staging.join("admin.key"), dir.join("admin.key")).expect("rename");
    std::fs::rename(staging.join("admin.pem"), dir.join("admin.pem")).expect("rename");
}

/// GET `path` over TLS, trusting `ca_file`: the status, or the TLS error.
async fn tls_get(
    addr: std::net::SocketAddr,
    ca_file: &std::path::Path,
    path: &str,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in hsmgate_authz::tls::read_certificates(ca_file).expect("CA certificates") {
        roots.add(cert).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .expect("in time")
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test]
async fn the_admin_port_can_serve_tls_and_reloads_its_certificate() {
    let (dir, ca_file) = ADMIN_TLS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir").keep();
            let ca_file = dir.join("ca.pem");
            issue_admin_certificate(&dir, &ca_file);
            (dir, ca_file)
        })
        .clone();
    let world = World::start_with(Options {
        tweak: |c| {
            let (dir, _) = ADMIN_TLS.get().expect("set before the world starts");
            c.admin.tls_cert_file = Some(dir.join("admin.pem"));
            c.admin.tls_key_file = Some(dir.join("admin.key"));
        },
        ..with_admin()
    })
    .await;
    let addr = world.admin_server.as_ref().expect("admin").addr;
    assert_eq!(tls_get(addr, &ca_file, "/healthz").await, Ok(200));
    // Plain HTTP gets no answer from a TLS listener.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer)).await;
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    }

    // A certificate from another CA, written in place: picked up without a
    // restart; clients that trust only the old CA now refuse the server.
    let old_ca = dir.join("old-ca.pem");
    std::fs::copy(&ca_file, &old_ca).expect("keep the old CA");
    issue_admin_certificate(&dir, &ca_file);
    let reloaded = eventually(|| async {
        world.metric(r#"hsmgate_tls_reloads_total{result="ok",use="admin"}"#) >= 1.0
    })
    .await;
    assert!(reloaded, "{}", world.admin_get("/metrics").await.1);
    assert_eq!(tls_get(addr, &ca_file, "/healthz").await, Ok(200));
    assert!(tls_get(addr, &old_ca, "/healthz").await.is_err());

    // A broken file is refused; the certificate in force stays.
    std::fs::write(dir.join("admin.pem"), "not a certificate").expect("write");
    let refused = eventually(|| async {
        world.metric(r#"hsmgate_tls_reloads_total{result="error",use="admin"}"#) >= 1.0
    })
    .await;
    assert!(refused);
    assert_eq!(tls_get(addr, &ca_file, "/healthz").await, Ok(200));
}
