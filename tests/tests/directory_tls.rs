//! TLS between the gateway and the directory, end to end on loopback: a
//! grant through a mutual-TLS directory; each way the link must fail
//! closed (code 4 to the client, a log line naming the TLS error, a
//! metric); certificates rotated in place under a stream of sessions with
//! none failing; a broken new file refused with the old one kept; the
//! `hsmgate-directory` binary's TLS flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hsmgate::GatewayConfig;
use hsmgate_authz::pki::{Ca, Leaf, Usage};
use hsmgate_client::{ClientError, ConnectOptions, GatewayAddr};
use hsmgate_tests::proc::Daemon;
use hsmgate_tests::{GATEWAY_ID, Options, PATIENCE, World, binary, http_get, metric_value};
use hsmgate_wire::Code;

const RELOAD_OK: &str = r#"hsmgate_tls_reloads_total{result="ok",use="directory"}"#;
const RELOAD_ERROR: &str = r#"hsmgate_tls_reloads_total{result="error",use="directory"}"#;
const CERTIFICATE_ERRORS: &str =
    r#"hsmgate_directory_connection_errors_total{reason="certificate"}"#;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn tls_world() -> Options {
    Options {
        directory_tls: true,
        ..Options::default()
    }
}

/// Written beside and renamed over, as cert-manager does.
fn replace(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

async fn ping(world: &World) -> Result<(), ClientError> {
    let session = world.connect(None).await?;
    tokio::time::timeout(PATIENCE, session.ping())
        .await
        .expect("ping in time")
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_through_a_mutual_tls_directory() {
    let world = World::start_with(tls_world()).await;
    ping(&world)
        .await
        .expect("granted through the TLS directory");
    let snapshot = world.gateway.snapshot();
    assert!(snapshot.authz.client().tls().is_some(), "the link uses TLS");
    assert_eq!(world.metric(CERTIFICATE_ERRORS), 0.0);
}

/// `hsmgate run` against the world's TLS directory with `edit` applied to
/// its `[directory]` settings; admin on a free loopback port.
struct Process {
    daemon: Daemon,
    addr: SocketAddr,
    admin: SocketAddr,
}

async fn start_process(
    world: &World,
    name: &str,
    edit: impl FnOnce(&mut GatewayConfig),
) -> Process {
    let mut edited = world.gateway.config();
    edit(&mut edited);
    // A port free when asked can be taken before the gateway binds it (by
    // another test's connection): then try other ports, at most three times.
    for attempt in 1..=3 {
        let addr = free_port();
        let admin = free_port();
        let mut config = edited.clone();
        config.listeners[0].address = addr;
        config.admin.enabled = true;
        config.admin.address = admin;
        let path = world.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("render")).expect("write config");
        let daemon = Daemon::spawn(
            Command::new(binary("hsmgate"))
                .args(["run", "--config"])
                .arg(&path),
        );
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                up = true;
                break;
            }
            if daemon.stderr_contains("Address already in use") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if up {
            return Process {
                daemon,
                addr,
                admin,
            };
        }
        assert!(
            attempt < 3 && daemon.stderr_contains("Address already in use"),
            "hsmgate run listens\n{}",
            daemon.transcript()
        );
    }
    unreachable!("the last attempt returns or fails its assertion")
}

impl Process {
    async fn connect(&self, world: &World) -> Result<hsmgate_client::Session, ClientError> {
        let mut config = world.client_config();
        config.gateway = GatewayAddr::Addr(self.addr);
        world
            .connect_with(
                &config,
                &ConnectOptions {
                    bind: None,
                    identity: None,
                },
            )
            .await
    }

    async fn metric(&self, sample: &str) -> f64 {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        metric_value(&body, sample)
    }
}

/// The client is refused with code 4; the gateway logs a line naming
/// `needle` and counts a certificate failure.
async fn assert_fails_closed(world: &World, process: &Process, needle: &str) {
    let err = match process.connect(world).await {
        Ok(_) => panic!(
            "granted through a broken link\n{}",
            process.daemon.transcript()
        ),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert_eq!(err.exit_code(), 4, "{err}");
    let mut logged = false;
    for _ in 0..100 {
        if process.daemon.stderr_contains(needle)
            && process
                .daemon
                .stderr_contains("directory connection failed")
        {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logged,
        "a log line names {needle:?}\n{}",
        process.daemon.transcript()
    );
    assert!(
        process.metric(CERTIFICATE_ERRORS).await >= 1.0,
        "counted\n{}",
        process.daemon.transcript()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_its_certificate_is_granted_and_one_without_is_refused() {
    let world = World::start_with(tls_world()).await;
    let good = start_process(&world, "good", |_| {}).await;
    good.connect(&world)
        .await
        .expect("mutual TLS with a good certificate")
        .ping()
        .await
        .expect("ping");
    assert_eq!(good.metric(CERTIFICATE_ERRORS).await, 0.0);

    let bare = start_process(&world, "no-certificate", |c| {
        c.directory.client_cert_file = None;
        c.directory.client_key_file = None;
    })
    .await;
    assert_fails_closed(&world, &bare, "CertificateRequired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_foreign_client_certificates_are_refused() {
    let world = World::start_with(tls_world()).await;
    let dir = world.dir.path();
    let issue = |ca: &Ca, stem: &str, expired: bool| -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        ca.issue(&Leaf {
            expired,
            ..Leaf::new(Usage::Client, GATEWAY_ID, &[GATEWAY_ID])
        })
        .expect("issue")
        .write(&cert, &key)
        .expect("write");
        (cert, key)
    };
    let tls = world.tls.as_ref().expect("a TLS world");
    let (cert, key) = issue(&tls.ca, "expired", true);
    let expired = start_process(&world, "expired", |c| {
        c.directory.client_cert_file = Some(cert);
        c.directory.client_key_file = Some(key);
    })
    .await;
    assert_fails_closed(&world, &expired, "CertificateExpired").await;

    let other = Ca::new("another CA").expect("ca");
    let (cert, key) = issue(&other, "foreign", false);
    let foreign = start_process(&world, "foreign", |c| {
        c.directory.client_cert_file = Some(cert);
        c.directory.client_key_file = Some(key);
    })
    .await;
    assert_fails_closed(&world, &foreign, "UnknownCA").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_certificate_for_another_name_is_refused() {
    let world = World::start_with(tls_world()).await;
    let wrong = start_process(&world, "wrong-name", |c| {
        c.directory.server_name = Some("directory.elsewhere.example".into());
    })
    .await;
    assert_fails_closed(&world, &wrong, "not valid for name").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_in_place_under_a_stream_of_sessions() {
    let world = Arc::new(
        World::start_with(Options {
            ttl_seconds: 1,
            ..tls_world()
        })
        .await,
    );
    let tls = world.tls.as_ref().expect("a TLS world");
    ping(&world).await.expect("first session");

    // Sessions back to back for the whole rotation; with a 1 s answer
    // lifetime, the gateway keeps asking the directory.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let stream = tokio::spawn({
        let (world, stop, done) = (Arc::clone(&world), Arc::clone(&stop), Arc::clone(&done));
        async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ping(&world).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.push(e.to_string());
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        }
    });

    let wait_for_reloads = |at_least: f64| {
        let world = Arc::clone(&world);
        async move {
            for _ in 0..100 {
                if world.metric(RELOAD_OK) >= at_least {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "{at_least} reloads within 10 s: {}",
                world.metric(RELOAD_OK)
            );
        }
    };

    // 1. Both sides trust the old and the new CA.
    let next = Ca::new("next CA").expect("ca");
    let bundle = format!("{}{}", tls.ca.cert_pem(), next.cert_pem());
    replace(&tls.ca_file, &bundle);
    tls.server
        .reload_if_changed()
        .expect("the directory sees the bundle")
        .expect("and loads it");
    wait_for_reloads(1.0).await;

    // 2. New certificates from the new CA, on both sides.
    let directory = next
        .issue(&Leaf::new(Usage::Server, "directory", &["127.0.0.1"]))
        .expect("issue");
    replace(&tls.directory_key, &directory.key_pem);
    replace(&tls.directory_cert, &directory.cert_pem);
    tls.server
        .reload_if_changed()
        .expect("the directory sees its new certificate")
        .expect("and loads it");
    let gateway = next
        .issue(&Leaf::new(Usage::Client, GATEWAY_ID, &[GATEWAY_ID]))
        .expect("issue");
    replace(&tls.gateway_key, &gateway.key_pem);
    replace(&tls.gateway_cert, &gateway.cert_pem);
    wait_for_reloads(2.0).await;

    // A new connection from the gateway (TLS handshake with the new files)
    // and the directory's new certificate verify each other.
    world
        .gateway
        .snapshot()
        .authz
        .client()
        .probe()
        .await
        .expect("new connections use the new certificates");

    // 3. The old CA is dropped: only the new one is trusted.
    replace(&tls.ca_file, next.cert_pem());
    tls.server
        .reload_if_changed()
        .expect("seen")
        .expect("loads");
    wait_for_reloads(3.0).await;

    // Let a few more sessions run, then stop the stream.
    let before = done.load(Ordering::Relaxed);
    for _ in 0..100 {
        if done.load(Ordering::Relaxed) >= before + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = stream.await.expect("the stream ran");
    assert!(failures.is_empty(), "sessions failed: {failures:?}");
    assert!(done.load(Ordering::Relaxed) >= 10, "sessions ran");
    assert_eq!(world.metric(RELOAD_ERROR), 0.0);
    assert_eq!(world.metric(CERTIFICATE_ERRORS), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_certificate_is_refused_and_the_old_one_kept() {
    let world = World::start_with(tls_world()).await;
    let tls = world.tls.as_ref().expect("a TLS world");
    let before = world.gateway.snapshot().authz.client().tls().cloned();
    replace(
        &tls.gateway_cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    for _ in 0..100 {
        if world.metric(RELOAD_ERROR) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(world.metric(RELOAD_ERROR), 1.0, "refused and counted");
    // The client, its TLS config and the cache are the same objects.
    let now = world.gateway.snapshot().authz.client().tls().cloned();
    assert!(Arc::ptr_eq(
        before.as_ref().expect("tls"),
        now.as_ref().expect("tls")
    ));
    world
        .gateway
        .snapshot()
        .authz
        .client()
        .probe()
        .await
        .expect("the old certificate still serves");
    ping(&world).await.expect("sessions still granted");
}

/// `hsmgate-directory` with --tls-cert, --tls-key, --client-ca and
/// --require-gateway-identity: it serves a gateway whose certificate names
/// its gateway_id, and refuses to start with neither TLS nor
/// --insecure-plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_binary_serves_mutual_tls() {
    let world = World::start_with(tls_world()).await;
    let tls = world.tls.as_ref().expect("a TLS world");
    let data = world.directory.path().expect("data file").to_owned();
    let listen = free_port();
    let daemon = Daemon::spawn(
        Command::new(binary("hsmgate-directory"))
            .arg("--data")
            .arg(&data)
            .args(["--listen", &listen.to_string()])
            .arg("--tls-cert")
            .arg(&tls.directory_cert)
            .arg("--tls-key")
            .arg(&tls.directory_key)
            .arg("--client-ca")
            .arg(&tls.ca_file)
            .arg("--require-gateway-identity"),
    );
    for _ in 0..200 {
        if daemon.stderr_contains("serving gRPC over TLS") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        daemon.stderr_contains("serving gRPC over TLS"),
        "{}",
        daemon.transcript()
    );
    let process = start_process(&world, "to-binary", |c| {
        c.directory.endpoint = format!("https://{listen}");
    })
    .await;
    process
        .connect(&world)
        .await
        .expect("granted through hsmgate-directory over mutual TLS")
        .ping()
        .await
        .expect("ping");

    // Another gateway_id than its certificate names: refused, audited.
    let impostor = start_process(&world, "impostor", |c| {
        c.directory.endpoint = format!("https://{listen}");
        c.gateway_id = "other-gateway".into();
    })
    .await;
    let Err(err) = impostor.connect(&world).await else {
        panic!("an impostor was granted\n{}", daemon.transcript());
    };
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    for _ in 0..100 {
        if daemon.stderr_contains("gateway identity does not match") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        daemon.stderr_contains("gateway identity does not match"),
        "{}",
        daemon.transcript()
    );

    let out = hsmgate_tests::proc::run(
        Command::new(binary("hsmgate-directory"))
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--insecure-plaintext"), "{out}");
}
