//! The connect flow and failover against an in-process fake gateway that
//! speaks the real protocol (the wire crate's gateway and HSM halves) on
//! 127.0.0.1:0. The end-to-end tests with real servers live in `tests/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hsmgate_wire::frame::{self, MAX_FRAME_LEN, MAX_OUTER_FRAME_LEN};
use hsmgate_wire::inner::HsmInner;
use hsmgate_wire::ops::{KeyInfo, KeyType, Reply, Request, Response, Status};
use hsmgate_wire::outer::{Decision, GatewayHandshake};
use tokio::net::TcpListener;

use super::*;
use crate::config::GatewayAddr;

const T: Duration = Duration::from_secs(5);

/// What the fake gateway does with a connection.
#[derive(Clone, Copy, Debug)]
enum Behavior {
    /// Grant, then act as the HSM node and answer pings.
    Serve,
    /// Send an Error frame right after accept.
    ErrorAtAccept(Code),
    /// Answer the credentials with a refusing Decision.
    Refuse(Code),
    /// Grant, then refuse the inner handshake's partition key as the HSM.
    HsmDenies,
    /// Grant, then answer a ping with a random reply and a random request
    /// with one byte too many.
    HsmLies,
    /// Grant, then act as an HSM node that speaks inner version 1 only.
    ServeV1,
}

struct Keys {
    gateway: StaticKeypair,
    hsm: StaticKeypair,
}

fn keys() -> Arc<Keys> {
    Arc::new(Keys {
        gateway: StaticKeypair::generate().unwrap(),
        hsm: StaticKeypair::generate().unwrap(),
    })
}

fn config(keys: &Keys) -> ClientConfig {
    ClientConfig {
        gateway: GatewayAddr::Addr("127.0.0.1:1".parse().unwrap()),
        dns_server: None,
        gateway_keys: vec![keys.gateway.public()],
        client_id: "app-1".into(),
        tenant: "acme".into(),
        partition: "p1".into(),
        identity: StaticKeypair::generate().unwrap(),
        partition_key: StaticKeypair::generate().unwrap(),
        hsm_keys: vec![keys.hsm.public()],
        connect_timeout: T,
        handshake_timeout: T,
        request_timeout: T,
        total_timeout: Duration::from_secs(20),
        transport: crate::config::Transport::Tcp,
    }
}

/// Start a fake gateway; returns its address and a count of accepted connections.
async fn fake_gateway(keys: Arc<Keys>, behavior: Behavior) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let keys = keys.clone();
            tokio::spawn(async move {
                let _ = serve(Framed::new(stream, peer), &keys, behavior).await;
            });
        }
    });
    (addr, accepted)
}

async fn serve(
    mut io: Framed<TcpStream>,
    keys: &Keys,
    behavior: Behavior,
) -> Result<(), ClientError> {
    let p = Phase::OuterHandshake;
    if let Behavior::ErrorAtAccept(code) = behavior {
        io.write_all(&frame::error_frame(code), p, T).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Ok(());
    }
    let hello = io.read_frame(p, MAX_OUTER_FRAME_LEN, T).await?;
    let (mut gw, challenge) =
        GatewayHandshake::respond(&keys.gateway, "gw-test", &hello.body).unwrap();
    io.write_all(&challenge, p, T).await?;
    let creds = io.read_frame(p, MAX_OUTER_FRAME_LEN, T).await?;
    assert_eq!(creds.kind, FrameType::Credentials);
    let verified = gw.read_credentials(&creds.body).unwrap();
    assert_eq!(verified.request.partition, "p1");
    let decision = match behavior {
        Behavior::Refuse(code) => Decision::refuse(code),
        _ => Decision::GRANTED,
    };
    io.write_all(&gw.decision_frame(decision).unwrap(), p, T)
        .await?;
    if decision.code != Code::Granted {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Ok(());
    }
    // The InnerHello was pipelined behind the credentials.
    let p = Phase::InnerHandshake;
    let inner_hello = io.read_frame(p, MAX_FRAME_LEN, T).await?;
    assert_eq!(inner_hello.kind, FrameType::InnerHello);
    let max_version = if matches!(behavior, Behavior::ServeV1) {
        1
    } else {
        2
    };
    let (hsm, challenge) =
        HsmInner::respond_up_to(&keys.hsm, "hsm-test", &inner_hello.body, max_version).unwrap();
    io.write_all(&challenge, p, T).await?;
    let finish = io.read_frame(p, MAX_FRAME_LEN, T).await?;
    let (peer, mut channel) = hsm.finish(&finish.body).unwrap();
    if let Behavior::HsmDenies = behavior {
        io.write_all(&frame::error_frame(Code::Denied), p, T)
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Ok(());
    }
    loop {
        let data = io.read_frame(Phase::Request, MAX_FRAME_LEN, T).await?;
        let (id, request) = Request::decode(&channel.open(&data.body).unwrap()).unwrap();
        assert!(
            request.since() <= peer.version,
            "a v{} request in a v{} session",
            request.since(),
            peer.version
        );
        let lies = matches!(behavior, Behavior::HsmLies);
        let result = match request {
            Request::Ping if lies => Ok(Reply::Random(vec![1])),
            Request::Ping => Ok(Reply::Pong),
            Request::Random { len } if lies => Ok(Reply::Random(vec![7; len as usize + 1])),
            Request::Random { len } => Ok(Reply::Random(vec![7; len as usize])),
            // A partition too large to list in one frame (§7.6).
            Request::ListKeys if peer.version >= 2 => Err(Status::LimitReached),
            Request::ListKeyRefs => Ok(Reply::KeyRefs(
                ["a", "b", "c"]
                    .iter()
                    .map(|l| hsmgate_wire::ops::KeyRef {
                        kind: KeyType::Rsa4096,
                        label: (*l).into(),
                        id: vec![],
                    })
                    .collect(),
            )),
            Request::GetKey { label } => Ok(Reply::KeyDetails(KeyInfo {
                kind: KeyType::Rsa4096,
                label,
                public_key: vec![0x30; 526],
                id: vec![],
            })),
            _ => Err(hsmgate_wire::ops::Status::Unsupported),
        };
        let sealed = channel
            .seal(&Response { id, result }.encode(peer.version))
            .unwrap();
        io.write_all(&sealed, Phase::Request, T).await?;
    }
}

#[tokio::test]
async fn handshakes_pipelines_and_runs_requests() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let config = config(&keys);
    let session = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap();
    assert_eq!(session.gateway_id(), "gw-test");
    assert_eq!(session.hsm_id(), "hsm-test");
    assert_eq!(session.peer_addr(), addr);
    session.ping().await.unwrap();
    assert_eq!(session.random(5).await.unwrap(), vec![7; 5]);
    let err = session.sign("k", b"x").await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    // An HSM-side operation failure leaves the session usable.
    session.ping().await.unwrap();
    // A request breaking a protocol limit is refused locally.
    let err = session.random(0).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    session.close().await;
}

#[tokio::test]
async fn a_reply_that_does_not_answer_its_request_is_a_protocol_error() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::HsmLies).await;
    let config = config(&keys);
    let session = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap();
    let err = session.random(5).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("does not answer"), "{err}");
    let session = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap();
    let err = session.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    assert!(
        matches!(session.ping().await, Err(ClientError::SessionBroken { .. })),
        "a session that got a wrong reply is not used again"
    );
}

#[tokio::test]
async fn requests_are_pipelined_and_matched_by_id() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let session = connect_addr(&config(&keys), &ConnectOptions::default(), addr)
        .await
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for n in 1..=50u16 {
        let s = session.clone();
        calls.spawn(async move { (n, s.random(n).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (n, bytes) = done.unwrap();
        assert_eq!(
            bytes.unwrap().len(),
            usize::from(n),
            "each caller gets its own answer"
        );
    }
}

#[tokio::test]
async fn a_partition_too_large_to_list_at_once_is_listed_key_by_key() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let session = connect_addr(&config(&keys), &ConnectOptions::default(), addr)
        .await
        .unwrap();
    let listed = session.list_keys().await.unwrap();
    let labels: Vec<&str> = listed.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["a", "b", "c"]);
    assert!(listed.iter().all(|k| k.public_key.len() == 526));
}

#[tokio::test]
async fn a_version_2_op_on_a_version_1_node_is_unsupported_and_not_sent() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::ServeV1).await;
    let session = connect_addr(&config(&keys), &ConnectOptions::default(), addr)
        .await
        .unwrap();
    assert_eq!(session.version(), 1);
    let err = session.delete_key("k").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Operation {
                status: Status::Unsupported,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 1);
    // Nothing was sent: the session is still in step.
    session.ping().await.unwrap();
}

#[tokio::test]
async fn binds_to_the_requested_local_address() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let opts = ConnectOptions {
        bind: Some("127.0.0.1".parse().unwrap()),
        identity: Some(StaticKeypair::generate().unwrap()),
    };
    let session = connect_addr(&config(&keys), &opts, addr).await.unwrap();
    session.ping().await.unwrap();
}

#[tokio::test]
async fn an_error_frame_at_accept_is_a_denial_naming_the_gateway() {
    let keys = keys();
    let (addr, _) = fake_gateway(
        keys.clone(),
        Behavior::ErrorAtAccept(Code::AddressNotAllowed),
    )
    .await;
    let err = connect_addr(&config(&keys), &ConnectOptions::default(), addr)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("denied by gateway {addr}: address_not_allowed")
    );
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn refuses_a_gateway_whose_key_is_not_pinned() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let mut config = config(&keys);
    config.gateway_keys = vec![StaticKeypair::generate().unwrap().public()];
    let err = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::UntrustedGateway { .. }),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn refuses_an_hsm_whose_key_is_not_trusted() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let mut config = config(&keys);
    config.hsm_keys = vec![StaticKeypair::generate().unwrap().public()];
    let err = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UntrustedHsm { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn an_hsm_refusal_after_the_handshake_is_a_denial() {
    let keys = keys();
    let (addr, _) = fake_gateway(keys.clone(), Behavior::HsmDenies).await;
    let session = connect_addr(&config(&keys), &ConnectOptions::default(), addr)
        .await
        .unwrap();
    let err = session.ping().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Denied), "{err:?}");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("hsm-test"), "{err}");
    // The session is unusable afterwards.
    assert!(matches!(
        session.ping().await.unwrap_err(),
        ClientError::SessionBroken { .. }
    ));
}

#[tokio::test]
async fn fails_over_past_a_retryable_refusal_and_a_dead_address() {
    let keys = keys();
    let (busy, busy_count) = fake_gateway(keys.clone(), Behavior::Refuse(Code::Unavailable)).await;
    let dead = {
        // A port nobody listens on.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (good, _) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let config = config(&keys);
    let deadline = Instant::now() + config.total_timeout;
    let session = try_in_order(
        &config,
        &ConnectOptions::default(),
        &[busy, dead, good],
        deadline,
    )
    .await
    .unwrap();
    assert_eq!(session.peer_addr(), good);
    assert_eq!(busy_count.load(Ordering::SeqCst), 1);
    session.ping().await.unwrap();
}

#[tokio::test]
async fn stops_at_a_denial_without_trying_further_gateways() {
    let keys = keys();
    let (denying, _) = fake_gateway(keys.clone(), Behavior::Refuse(Code::Denied)).await;
    let (good, good_count) = fake_gateway(keys.clone(), Behavior::Serve).await;
    let config = config(&keys);
    let deadline = Instant::now() + config.total_timeout;
    let err = try_in_order(
        &config,
        &ConnectOptions::default(),
        &[denying, good],
        deadline,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("denied by gateway {denying}: denied")
    );
    assert_eq!(err.exit_code(), 3);
    assert_eq!(good_count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reports_every_attempt_when_all_gateways_fail() {
    let keys = keys();
    let (a, _) = fake_gateway(keys.clone(), Behavior::Refuse(Code::OverLimit)).await;
    let (b, _) = fake_gateway(keys.clone(), Behavior::ErrorAtAccept(Code::Unavailable)).await;
    let config = config(&keys);
    let deadline = Instant::now() + config.total_timeout;
    let err = try_in_order(&config, &ConnectOptions::default(), &[a, b], deadline)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::AllFailed(ref v) if v.len() == 2),
        "{err:?}"
    );
    assert!(
        text.contains(&format!("refused by gateway {a}: over_limit")),
        "{text}"
    );
    assert!(
        text.contains(&format!("refused by gateway {b}: unavailable")),
        "{text}"
    );
    assert_eq!(err.exit_code(), 4);
}

#[tokio::test]
async fn the_total_time_budget_bounds_all_attempts() {
    let keys = keys();
    // Accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let mut config = config(&keys);
    config.total_timeout = Duration::from_millis(200);
    let started = std::time::Instant::now();
    let err = connect_addr(&config, &ConnectOptions::default(), addr)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, ClientError::OutOfTime { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 4);
    drop(silent);
}
