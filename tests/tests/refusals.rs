//! Every way the gateway refuses a connection, end to end on loopback: what
//! the client sees (the `ClientError` and the CLI exit code it maps to), the
//! gateway metric that counts the refusal, and — where it matters — that no
//! HSM node was contacted. A positive control first, so that none of these
//! can pass because nothing worked at all.

use std::time::Duration;

use hsmgate_client::{ClientError, Code, ConnectOptions, StaticKeypair};
use hsmgate_tests::spy::{Spy, What};
use hsmgate_tests::{Options, PATIENCE, World, directory_toml};
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

const ADDRESS_DENY: &str = "hsmgate_admission_total{result=\"deny\",stage=\"address\"}";
const ADDRESS_ALLOW: &str = "hsmgate_admission_total{result=\"allow\",stage=\"address\"}";
const HANDSHAKE_ALLOW: &str = "hsmgate_admission_total{result=\"allow\",stage=\"handshake\"}";
const HANDSHAKE_ERROR: &str = "hsmgate_admission_total{result=\"error\",stage=\"handshake\"}";
const HANDSHAKE_TIMEOUT: &str = "hsmgate_admission_total{result=\"timeout\",stage=\"handshake\"}";
const AUTHZ_ALLOW: &str = "hsmgate_admission_total{result=\"allow\",stage=\"authz\"}";
const AUTHZ_DENY: &str = "hsmgate_admission_total{result=\"deny\",stage=\"authz\"}";
const AUTHZ_ERROR: &str = "hsmgate_admission_total{result=\"error\",stage=\"authz\"}";
const AUTHZ_TIMEOUT: &str = "hsmgate_admission_total{result=\"timeout\",stage=\"authz\"}";
const LOOKUP_ALLOW_MISS: &str = "hsmgate_authz_requests_total{cache=\"miss\",result=\"allow\"}";
const LOOKUP_DENY_HIT: &str = "hsmgate_authz_requests_total{cache=\"hit\",result=\"deny\"}";

// ------------------------------------------------------------------ helpers

fn spied() -> Options {
    Options {
        spies: true,
        ..Options::default()
    }
}

/// Connections the HSM spies saw opened, all nodes together.
fn hsm_connects(world: &World) -> usize {
    world
        .events
        .snapshot()
        .iter()
        .filter(|e| e.at.starts_with("hsm") && e.what == What::Connect)
        .count()
}

fn assert_no_hsm_connect(world: &World) {
    assert!(
        world
            .events
            .first("hsm", |w| matches!(w, What::Connect))
            .is_none(),
        "an HSM node saw a connection: {:?}",
        world.events.snapshot()
    );
}

/// Wait (bounded) until `sample` reaches `expected`, then require exactly it.
/// Some counters move after the client already has its answer (for example
/// when the gateway only learns of a refusal from the client's close).
async fn expect_metric(world: &World, sample: &str, expected: f64) {
    let deadline = Instant::now() + PATIENCE;
    while world.metric(sample) < expected && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        world.metric(sample),
        expected,
        "{sample}\n{}",
        world.gateway.metrics().render()
    );
}

/// Sum of every sample of `name` whose labels contain all of `labels`
/// (each written as `key="value"`).
fn metric_sum(world: &World, name: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{name}{{");
    world
        .gateway
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn refusal(result: Result<hsmgate_client::Session, ClientError>, what: &str) -> ClientError {
    match result {
        Ok(_) => panic!("{what}: the gateway granted a session"),
        Err(e) => e,
    }
}

fn assert_refused(err: &ClientError, expected: Code, exit: u8) {
    assert!(
        matches!(err, ClientError::Refused { code, .. } if *code == expected),
        "expected a refusal with {expected}, got {err:?}"
    );
    assert_eq!(err.code(), Some(expected), "{err}");
    assert_eq!(err.exit_code(), exit, "{err}");
}

/// A granted session answers a ping.
async fn ping_works(world: &World) {
    let session = world.connect(None).await.expect("a granted session");
    timeout(PATIENCE, session.ping())
        .await
        .expect("ping answered in time")
        .expect("ping");
    session.close().await;
}

/// A raw connection to the gateway, reading outer frames by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(world: &World) -> Raw {
        let stream = timeout(PATIENCE, TcpStream::connect(world.gateway_addr()))
            .await
            .expect("connect in time")
            .expect("connect to the gateway");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(PATIENCE, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write to the gateway");
    }

    /// The next frame from the gateway, or `None` at a clean EOF.
    async fn next_frame(&mut self) -> Option<(FrameType, Vec<u8>)> {
        timeout(PATIENCE, async {
            loop {
                if let Some((f, used)) = frame::decode(&self.buf, MAX_OUTER_FRAME_LEN)
                    .expect("the gateway sends well-formed frames")
                {
                    let out = (f.kind, f.body.to_vec());
                    self.buf.drain(..used);
                    return Some(out);
                }
                let mut chunk = [0u8; 4096];
                let n = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .expect("read from the gateway (no reset)");
                if n == 0 {
                    assert!(self.buf.is_empty(), "EOF inside a frame: {:02x?}", self.buf);
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the gateway answered or closed in time")
    }

    async fn expect_challenge(&mut self) -> Vec<u8> {
        match self.next_frame().await {
            Some((FrameType::Challenge, body)) => body,
            other => panic!("expected a Challenge, got {other:?}"),
        }
    }

    /// An Error frame with `code`, then the gateway closes.
    async fn expect_error_then_eof(&mut self, code: Code) {
        match self.next_frame().await {
            Some((FrameType::Error, body)) => {
                assert_eq!(
                    frame::decode_error_body(&body).expect("a valid Error body"),
                    code,
                    "Error frame body {body:02x?}"
                );
            }
            other => panic!("expected an Error frame with {code}, got {other:?}"),
        }
        assert_eq!(
            self.next_frame().await,
            None,
            "the gateway closes after its Error frame"
        );
    }
}

fn demo_request() -> AccessRequest {
    AccessRequest {
        client_id: hsmgate_tests::CLIENT_ID.into(),
        tenant: hsmgate_tests::TENANT.into(),
        partition: hsmgate_tests::PARTITION.into(),
    }
}

/// Split a byte stream into its frames (any size up to the protocol maximum).
fn frames(mut bytes: &[u8]) -> Vec<(FrameType, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((f, used)) = frame::decode(bytes, MAX_FRAME_LEN).expect("recorded frames decode")
    {
        out.push((f.kind, bytes[..used].to_vec()));
        bytes = &bytes[used..];
    }
    out
}

/// Deterministic filler bytes (xorshift64), so that a failure reproduces.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// --------------------------------------------------------- positive control

#[tokio::test]
async fn control_a_granted_ping_works_and_the_allow_metrics_move() {
    let world = World::start_with(spied()).await;
    ping_works(&world).await;
    assert_eq!(world.metric(ADDRESS_ALLOW), 1.0);
    assert_eq!(world.metric(HANDSHAKE_ALLOW), 1.0);
    assert_eq!(world.metric(AUTHZ_ALLOW), 1.0);
    assert_eq!(world.metric(LOOKUP_ALLOW_MISS), 1.0);
    assert_eq!(
        metric_sum(&world, "hsmgate_backend_connect_total", &["result=\"ok\""]),
        1.0
    );
    assert_eq!(world.metric(AUTHZ_DENY), 0.0);
    assert_eq!(world.metric(ADDRESS_DENY), 0.0);
    // The spies do record what the refusal tests look for.
    assert_eq!(hsm_connects(&world), 1);
    assert!(
        world
            .events
            .first("directory", |w| matches!(w, What::ToServer(_)))
            .is_some(),
        "the directory spy saw the lookup"
    );
}

// ------------------------------------------------------- identity refusals

/// 1. A service key the directory does not know for this client.
#[tokio::test]
async fn unknown_client_key_is_denied() {
    let world = World::start_with(spied()).await;
    let opts = ConnectOptions {
        bind: None,
        identity: Some(StaticKeypair::generate().expect("fresh key")),
    };
    let err = refusal(
        world.connect_with(&world.client_config(), &opts).await,
        "unknown key",
    );
    assert_refused(&err, Code::Denied, 3);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
    assert_eq!(world.metric(AUTHZ_ALLOW), 0.0);
    assert_no_hsm_connect(&world);
}

/// 2. A client removed from the directory file is denied once the cached
/// grant expires.
#[tokio::test]
async fn client_removed_from_the_directory_is_denied_after_the_ttl() {
    let world = World::start_with(Options {
        ttl_seconds: 1,
        ..Options::default()
    })
    .await;
    ping_works(&world).await;

    let full = directory_toml(
        &world.service_key.public(),
        &Options::default().tenant_networks,
        1,
    );
    let (without_client, _) = full
        .split_once("[[clients]]")
        .expect("the harness data has a clients table");
    assert!(!without_client.contains(hsmgate_tests::CLIENT_ID));
    world.rewrite_directory(without_client);

    // The cached grant may still be used for up to its TTL: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match world.connect(None).await {
            Ok(session) => {
                session.close().await;
                assert!(
                    Instant::now() < deadline,
                    "still granted 5 s after removing the client (TTL 1 s)"
                );
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => break e,
        }
    };
    assert_refused(&err, Code::Denied, 3);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
}

/// 3. A partition that exists but is not granted to this client.
#[tokio::test]
async fn partition_not_granted_is_denied() {
    let world = World::start_with(spied()).await;
    let mut config = world.client_config();
    config.partition = "other".into();
    let err = refusal(
        world
            .connect_with(&config, &ConnectOptions::default())
            .await,
        "partition other",
    );
    assert_refused(&err, Code::Denied, 3);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
    assert_no_hsm_connect(&world);
}

// -------------------------------------------------------- address refusals

/// 4. Outside the gateway's global allow-list: refused at accept, before any
/// byte is read, so neither the directory nor an HSM hears of it.
#[tokio::test]
async fn source_outside_the_global_allow_list_is_refused_at_accept() {
    let world = World::start_with(Options {
        spies: true,
        tweak: |c| c.admission.allow = vec!["127.0.0.1/32".parse().expect("network")],
        ..Options::default()
    })
    .await;
    let err = refusal(world.connect(Some("127.0.0.3")).await, "from 127.0.0.3");
    assert_refused(&err, Code::AddressNotAllowed, 3);
    assert_eq!(world.metric(ADDRESS_DENY), 1.0);
    assert_eq!(world.metric(ADDRESS_ALLOW), 0.0);
    assert_eq!(world.metric(HANDSHAKE_ALLOW), 0.0);
    assert_eq!(world.metric(HANDSHAKE_ERROR), 0.0);
    assert_no_hsm_connect(&world);
    assert!(
        world
            .events
            .first("directory", |w| matches!(w, What::ToServer(_)))
            .is_none(),
        "the directory was asked: {:?}",
        world.events.snapshot()
    );
}

/// 5a. Inside the global list, outside the tenant's networks.
#[tokio::test]
async fn source_outside_the_tenant_networks_is_refused() {
    let world = World::start_with(spied()).await;
    let err = refusal(world.connect(Some("127.0.0.2")).await, "from 127.0.0.2");
    assert_refused(&err, Code::AddressNotAllowed, 3);
    assert_eq!(world.metric(ADDRESS_ALLOW), 1.0);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
    assert_no_hsm_connect(&world);
}

/// 5b. The same check admits an address the tenant's networks include.
#[tokio::test]
async fn source_inside_the_tenant_networks_is_granted() {
    let world = World::start_with(Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        ..Options::default()
    })
    .await;
    let session = world
        .connect(Some("127.0.0.3"))
        .await
        .expect("127.0.0.3 is in the tenant's networks");
    timeout(PATIENCE, session.ping())
        .await
        .expect("ping in time")
        .expect("ping");
    session.close().await;
    assert_eq!(world.metric(AUTHZ_ALLOW), 1.0);
    assert_eq!(world.metric(AUTHZ_DENY), 0.0);
}

/// 5c. A cached grant is per identity, never per address: it does not admit
/// an address outside the client's networks.
#[tokio::test]
async fn a_cached_grant_does_not_admit_another_address() {
    let world = World::start_with(spied()).await;
    ping_works(&world).await;
    assert_eq!(world.metric(LOOKUP_ALLOW_MISS), 1.0);
    let connects = hsm_connects(&world);
    assert_eq!(connects, 1);

    let err = refusal(world.connect(Some("127.0.0.2")).await, "from 127.0.0.2");
    assert_refused(&err, Code::AddressNotAllowed, 3);
    assert_eq!(world.metric(LOOKUP_DENY_HIT), 1.0);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
    assert_eq!(
        hsm_connects(&world),
        connects,
        "no HSM connect for the refusal"
    );
}

// ------------------------------------------------------- availability

/// 6. Directory down and nothing cached: fail closed, with a retryable code.
#[tokio::test]
async fn directory_down_with_an_empty_cache_is_unavailable() {
    let mut world = World::start_with(spied()).await;
    world.directory_server.stop().await;
    let err = refusal(world.connect(None).await, "directory down");
    assert_refused(&err, Code::Unavailable, 4);
    assert!(err.is_retryable(), "{err}");
    assert_eq!(world.metric(AUTHZ_ERROR), 1.0);
    assert_eq!(world.metric(AUTHZ_TIMEOUT), 0.0);
    assert_eq!(world.metric(AUTHZ_ALLOW), 0.0);
    assert_no_hsm_connect(&world);
}

/// 13. Every HSM node down: unavailable. A stopped node closes the gateway's
/// control channel to it (PROTOCOL.md §8.2), so the gateway knows before
/// any health probe and does not even try to connect; a node that dies
/// without the gateway noticing is tried and counted (`pool.rs` unit test
/// `connect_skips_a_dead_member`).
#[tokio::test]
async fn all_hsm_nodes_down_is_unavailable() {
    // No spies: a spy would accept the gateway's connect on a dead node's
    // behalf. No health probe either during the test: what takes the nodes
    // out is their control channels closing.
    let mut world = World::start_with(Options {
        tweak: |c| c.health.interval_ms = 3_600_000,
        ..Options::default()
    })
    .await;
    let channel_up = |world: &World, hsm: &hsmgate_tests::HsmHandle| {
        world.metric(&format!(
            "hsmgate_backend_grant_channel_up{{member=\"{}\",pool=\"default\"}}",
            hsm.pool_addr
        ))
    };
    let deadline = Instant::now() + PATIENCE;
    while world.hsms.iter().any(|h| channel_up(&world, h) != 1.0) {
        assert!(Instant::now() < deadline, "control channels never came up");
        sleep(Duration::from_millis(10)).await;
    }
    for hsm in &mut world.hsms {
        hsm.server.stop().await;
    }
    while world.hsms.iter().any(|h| channel_up(&world, h) != 0.0) {
        assert!(
            Instant::now() < deadline,
            "control channels never went down"
        );
        sleep(Duration::from_millis(10)).await;
    }
    let err = refusal(world.connect(None).await, "every HSM node stopped");
    assert_refused(&err, Code::Unavailable, 4);
    assert_eq!(world.metric(AUTHZ_ALLOW), 1.0, "the directory did grant");
    assert_eq!(
        metric_sum(&world, "hsmgate_backend_connect_total", &["result=\"ok\""]),
        0.0,
        "{}",
        world.gateway.metrics().render()
    );
}

// ------------------------------------------------------ handshake refusals

/// 7. A recorded successful handshake replayed against a fresh Challenge.
#[tokio::test]
async fn a_replayed_handshake_fails() {
    let world = World::start_with(spied()).await;
    let gateway_spy = Spy::start("gateway", world.gateway_addr(), world.events.clone()).await;
    let session = connect_via(&world, gateway_spy.addr)
        .await
        .expect("granted through the recording relay");
    timeout(PATIENCE, session.ping())
        .await
        .expect("ping in time")
        .expect("ping");
    session.close().await;
    let connects = hsm_connects(&world);
    assert_eq!(connects, 1);

    let recorded = frames(&world.events.bytes("gateway/to_server"));
    let (kind, hello) = recorded.first().expect("a recorded Hello").clone();
    assert_eq!(kind, FrameType::Hello);
    let (kind, credentials) = recorded.get(1).expect("recorded Credentials").clone();
    assert_eq!(kind, FrameType::Credentials);
    let old_challenge = frames(&world.events.bytes("gateway/from_server"))
        .into_iter()
        .find(|(kind, _)| *kind == FrameType::Challenge)
        .expect("a recorded Challenge");

    let mut raw = Raw::connect(&world).await;
    raw.send(&hello).await;
    let challenge = raw.expect_challenge().await;
    assert_ne!(
        challenge,
        old_challenge.1[3..],
        "the gateway contributes a fresh ephemeral"
    );
    raw.send(&credentials).await;
    raw.expect_error_then_eof(Code::HandshakeFailed).await;

    expect_metric(&world, HANDSHAKE_ERROR, 1.0).await;
    assert_eq!(world.metric(HANDSHAKE_ALLOW), 1.0, "only the real session");
    assert_eq!(
        world.metric(AUTHZ_ALLOW),
        1.0,
        "the replay never reached authz"
    );
    assert_eq!(
        hsm_connects(&world),
        connects,
        "no HSM connect for the replay"
    );
}

/// 8. The client pins another gateway key: it aborts after the Challenge,
/// before revealing its identity.
#[tokio::test]
async fn a_wrong_pinned_gateway_key_is_untrusted() {
    let world = World::start_with(spied()).await;
    let mut config = world.client_config();
    config.gateway_keys = vec![StaticKeypair::generate().expect("fresh key").public()];
    let err = refusal(
        world
            .connect_with(&config, &ConnectOptions::default())
            .await,
        "wrong pin",
    );
    assert!(
        matches!(err, ClientError::UntrustedGateway { .. }),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(!err.is_retryable(), "{err}");
    // The client just closes: the gateway counts a failed handshake (it sees
    // the connection end where Credentials were due) and asks no one.
    expect_metric(&world, HANDSHAKE_ERROR, 1.0).await;
    assert_eq!(world.metric(HANDSHAKE_ALLOW), 0.0);
    assert_eq!(world.metric(AUTHZ_ALLOW) + world.metric(AUTHZ_DENY), 0.0);
    assert_no_hsm_connect(&world);
    assert!(
        world
            .events
            .first("directory", |w| matches!(w, What::ToServer(_)))
            .is_none(),
        "the directory was asked"
    );
}

/// 9. A frame header announcing more than the outer limit (1025 > 1024).
#[tokio::test]
async fn an_oversized_frame_is_a_protocol_error() {
    let world = World::start_with(spied()).await;
    let mut raw = Raw::connect(&world).await;
    let mut bytes = vec![0x04, 0x01, 0x01];
    bytes.extend_from_slice(&[0u8; 16]);
    raw.send(&bytes).await;
    raw.expect_error_then_eof(Code::ProtocolError).await;
    expect_metric(&world, HANDSHAKE_ERROR, 1.0).await;
    assert_no_hsm_connect(&world);
}

/// A Hello whose ephemeral key is of small order (here `u = 0`), so that
/// every shared secret with it would be all zeros: the handshake fails
/// before the Challenge (PROTOCOL.md §1.2), and the gateway keeps serving.
#[tokio::test]
async fn a_hello_with_a_small_order_key_fails_the_handshake() {
    let world = World::start_with(spied()).await;
    let mut body = b"HSMG".to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&[0u8; 32]);
    let hello = frame::encode(FrameType::Hello, &body).expect("encode");
    let mut raw = Raw::connect(&world).await;
    raw.send(&hello).await;
    raw.expect_error_then_eof(Code::HandshakeFailed).await;
    expect_metric(&world, HANDSHAKE_ERROR, 1.0).await;
    assert_no_hsm_connect(&world);
    ping_works(&world).await;
    assert_eq!(world.metric(AUTHZ_ALLOW), 1.0);
}

/// 10. Random garbage: a protocol error, and the gateway keeps serving.
#[tokio::test]
async fn garbage_is_a_protocol_error_and_the_gateway_stays_healthy() {
    let world = World::start().await;
    let bytes = garbage(0x5eed_f00d, 200);
    // The test's own precondition: this garbage is not the start of a valid
    // frame (else the gateway would rightly wait for more of it).
    assert!(
        frame::decode(&bytes, MAX_OUTER_FRAME_LEN).is_err(),
        "seed gives a decodable prefix: {:02x?}",
        &bytes[..3]
    );
    let mut raw = Raw::connect(&world).await;
    raw.send(&bytes).await;
    raw.expect_error_then_eof(Code::ProtocolError).await;
    expect_metric(&world, HANDSHAKE_ERROR, 1.0).await;
    ping_works(&world).await;
    assert_eq!(world.metric(AUTHZ_ALLOW), 1.0);
}

/// 11. A client that stops after its Hello gets the Challenge, then a
/// Timeout Error frame at the handshake deadline, then EOF.
#[tokio::test]
async fn a_stalled_handshake_times_out() {
    let world = World::start_with(Options {
        spies: true,
        tweak: |c| c.timeouts.handshake_ms = 300,
        ..Options::default()
    })
    .await;
    let identity = StaticKeypair::generate().expect("fresh key");
    let (_handshake, hello) =
        ClientHandshake::start(&identity, world.gateway.public_key(), demo_request())
            .expect("hello");
    let mut raw = Raw::connect(&world).await;
    raw.send(&hello).await;
    raw.expect_challenge().await;
    raw.expect_error_then_eof(Code::Timeout).await;
    assert_eq!(world.metric(HANDSHAKE_TIMEOUT), 1.0);
    assert_eq!(world.metric(HANDSHAKE_ERROR), 0.0);
    assert_no_hsm_connect(&world);
}

/// A connection that sends nothing is closed at the first-frame deadline,
/// long before the handshake deadline (issue 9: strangers must not hold
/// connections for the whole handshake time).
#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_frame_deadline() {
    let world = World::start_with(Options {
        tweak: |c| {
            c.timeouts.first_frame_ms = 200;
            c.timeouts.handshake_ms = 10_000;
        },
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let mut raw = Raw::connect(&world).await;
    raw.expect_error_then_eof(Code::Timeout).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(world.metric(HANDSHAKE_TIMEOUT), 1.0);
    // A client that speaks at once is not affected.
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
}

/// Run the outer handshake by hand as `identity` up to the Credentials and
/// send them with `extra` filler bytes behind, in one write.
async fn credentials_with_extra(
    world: &World,
    identity: &StaticKeypair,
    extra: &[u8],
) -> (Raw, ClientHandshake) {
    let (mut handshake, hello) =
        ClientHandshake::start(identity, world.gateway.public_key(), demo_request())
            .expect("hello");
    let mut raw = Raw::connect(world).await;
    raw.send(&hello).await;
    let challenge = raw.expect_challenge().await;
    let (mut out, _) = handshake
        .read_challenge(&challenge)
        .expect("the pinned gateway");
    out.extend_from_slice(extra);
    raw.send(&out).await;
    (raw, handshake)
}

/// Far more pipelined bytes than the gateway holds in memory before the
/// decision (4096, PROTOCOL.md §4).
const PIPELINED: usize = 20_000;

/// 12a. Bytes pipelined behind refused Credentials are discarded: the client
/// gets its authenticated refusal and no HSM node hears of it.
#[tokio::test]
async fn pre_grant_bytes_behind_a_refusal_never_reach_an_hsm() {
    let world = World::start_with(spied()).await;
    let stranger = StaticKeypair::generate().expect("fresh key");
    let (mut raw, handshake) =
        credentials_with_extra(&world, &stranger, &garbage(42, PIPELINED)).await;
    match raw.next_frame().await {
        Some((FrameType::Decision, body)) => {
            let decision = handshake.read_decision(&body).expect("decision decrypts");
            assert_eq!(decision.code, Code::Denied, "{decision:?}");
        }
        other => panic!("expected a Decision, got {other:?}"),
    }
    assert_eq!(raw.next_frame().await, None, "closed after the refusal");
    assert_eq!(world.metric(HANDSHAKE_ALLOW), 1.0);
    assert_eq!(world.metric(AUTHZ_DENY), 1.0);
    assert_no_hsm_connect(&world);
}

/// 12b. Pipelined bytes beyond the in-memory hold do not end the connection
/// (PROTOCOL.md §4: they wait under TCP flow control); after the grant they
/// are forwarded unchanged and in order.
#[tokio::test]
async fn pre_grant_bytes_beyond_the_hold_wait_for_the_grant() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        spies: true,
        ..Options::default()
    })
    .await;
    let extra = garbage(42, PIPELINED);
    let (mut raw, handshake) = credentials_with_extra(&world, &world.service_key, &extra).await;
    match raw.next_frame().await {
        Some((FrameType::Decision, body)) => {
            let decision = handshake.read_decision(&body).expect("decision decrypts");
            assert_eq!(decision.code, Code::Granted, "{decision:?}");
        }
        other => panic!("expected a Decision, got {other:?}"),
    }
    assert_eq!(world.metric(HANDSHAKE_ERROR), 0.0);
    // The HSM node receives (a prefix of, as it closes on garbage) exactly
    // the pipelined bytes, starting with the held ones.
    let deadline = Instant::now() + PATIENCE;
    let seen = loop {
        let seen = world.events.bytes("hsm-1/to_server");
        if !seen.is_empty() || Instant::now() >= deadline {
            break seen;
        }
        sleep(Duration::from_millis(20)).await;
    };
    assert!(!seen.is_empty(), "nothing was forwarded after the grant");
    // The gateway's own Grant frame comes first (PROTOCOL.md §8.3).
    assert_eq!(seen[2], 0x25, "the session opens with the Grant frame");
    let grant_len = 2 + usize::from(u16::from_be_bytes([seen[0], seen[1]]));
    let seen = seen[grant_len..].to_vec();
    assert!(!seen.is_empty(), "nothing of the client's was forwarded");
    assert!(seen.len() <= extra.len(), "{} bytes forwarded", seen.len());
    assert_eq!(
        seen,
        extra[..seen.len()],
        "forwarded unchanged and in order"
    );
}

/// Connect as the demo client to `addr` (a relay) instead of the gateway.
async fn connect_via(
    world: &World,
    addr: std::net::SocketAddr,
) -> Result<hsmgate_client::Session, ClientError> {
    timeout(
        PATIENCE,
        hsmgate_client::connect_addr(&world.client_config(), &ConnectOptions::default(), addr),
    )
    .await
    .expect("connect finished in time")
}
