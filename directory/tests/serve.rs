//! The real server on 127.0.0.1:0, asked through the gateway's client.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_authz::{
    AuthzError, ClientConfig, Decision, DenyKind, DirectoryClient, Query, Reason, Verdict, pb,
};
use hsmgate_directory::{Directory, serve};
use hsmgate_wire::PublicKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY: PublicKey = PublicKey([0x11; 32]);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn query(client_id: &str, key: PublicKey, source: &str) -> Query {
    Query {
        client_id: client_id.into(),
        client_static_key: key,
        tenant: "demo".into(),
        partition: "demo".into(),
        source: source.parse::<IpAddr>().expect("address"),
        gateway_id: "gw-1".into(),
    }
}

#[tokio::test]
async fn answers_the_gateway_client_over_grpc() {
    let directory = Arc::new(Directory::load(fixture("valid.toml")).expect("load"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(directory, listener, async {
        let _ = stopped.await;
    }));

    let client = DirectoryClient::new(&ClientConfig {
        endpoint: format!("http://{addr}"),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        tls: None,
    })
    .expect("client");

    let allow = client
        .authorize(&query("demo-app", KEY, "127.0.0.1"))
        .await
        .expect("answer");
    assert_eq!(allow.decision, Decision::Allow);
    assert_eq!(allow.pool, "default");
    assert_eq!(allow.max_sessions, 16);
    assert_eq!(allow.ttl, Duration::from_secs(30));
    assert_eq!(
        allow.verdict("127.0.0.1".parse().expect("address")),
        Verdict::Allow {
            pool: "default".into(),
            max_sessions: 16
        }
    );

    let far = client
        .authorize(&query("demo-app", KEY, "192.0.2.1"))
        .await
        .expect("answer");
    assert_eq!(far.reason, Reason::NetworkNotAllowed);
    assert_eq!(
        far.verdict("192.0.2.1".parse().expect("address")),
        Verdict::Deny(DenyKind::Address)
    );

    let stranger = client
        .authorize(&query("demo-app", PublicKey([0x22; 32]), "127.0.0.1"))
        .await
        .expect("answer");
    assert_eq!(
        stranger.verdict("127.0.0.1".parse().expect("address")),
        Verdict::Deny(DenyKind::Identity(Reason::KeyMismatch))
    );

    let unknown = client
        .authorize(&query("nobody", KEY, "127.0.0.1"))
        .await
        .expect("answer");
    assert_eq!(unknown.reason, Reason::UnknownClient);

    // A malformed request is refused by the server, not answered.
    let mut raw = pb::directory_client::DirectoryClient::connect(format!("http://{addr}"))
        .await
        .expect("raw client");
    let status = raw
        .authorize(pb::AuthorizeRequest {
            client_id: "demo-app".into(),
            client_static_key: vec![1, 2, 3],
            tenant: "demo".into(),
            partition: "demo".into(),
            source_address: "127.0.0.1".into(),
            gateway_id: "gw-1".into(),
        })
        .await
        .expect_err("short key refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = raw
        .authorize(pb::AuthorizeRequest {
            client_id: "demo-app".into(),
            client_static_key: KEY.as_bytes().to_vec(),
            tenant: "demo".into(),
            partition: "demo".into(),
            source_address: "not-an-address".into(),
            gateway_id: "gw-1".into(),
        })
        .await
        .expect_err("bad address refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop(raw);

    let _ = stop.send(());
    server.await.expect("join").expect("clean stop");

    // Stopped: the gateway's client sees a retryable error.
    let err = client
        .authorize(&query("demo-app", KEY, "127.0.0.1"))
        .await
        .expect_err("server gone");
    assert!(matches!(err, AuthzError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
}
