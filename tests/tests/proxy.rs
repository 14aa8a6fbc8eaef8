//! PROXY protocol listeners: accepted from trusted load balancers only, and
//! the client address from the header is the one the allow-lists, the
//! directory and the limits see.

use std::net::SocketAddr;

use hsmgate_client::{ClientError, Code, GatewayAddr};
use hsmgate_tests::{Options, PATIENCE, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The gateway's only listener expects PROXY headers from 127.0.0.1; the
/// global allow-list admits 127.0.0.1 and 127.0.0.3 only, the tenant
/// 127.0.0.1, 127.0.0.2 and 127.0.0.3.
fn behind_a_balancer() -> Options {
    Options {
        tenant_networks: vec![
            "127.0.0.1/32".into(),
            "127.0.0.2/32".into(),
            "127.0.0.3/32".into(),
        ],
        tweak: |c| {
            c.listeners[0].proxy_protocol = true;
            c.listeners[0].trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
            c.admission.allow = vec![
                "127.0.0.1/32".parse().expect("net"),
                "127.0.0.3/32".parse().expect("net"),
            ];
        },
        ..Options::default()
    }
}

/// A minimal load balancer: accepts on loopback, connects to `gateway` from
/// `from`, writes `header(client address)` and relays both ways.
async fn balancer(
    gateway: SocketAddr,
    from: &str,
    header: fn(SocketAddr) -> Vec<u8>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let from: SocketAddr = format!("{from}:0").parse().expect("from");
    let task = tokio::spawn(async move {
        while let Ok((mut client, client_addr)) = listener.accept().await {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(from).expect("bind balancer side");
            let Ok(mut upstream) = socket.connect(gateway).await else {
                continue;
            };
            tokio::spawn(async move {
                if upstream.write_all(&header(client_addr)).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, task)
}

fn v1_from_127_0_0_3(_: SocketAddr) -> Vec<u8> {
    b"PROXY TCP4 127.0.0.3 127.0.0.1 40000 2300\r\n".to_vec()
}

fn v1_from_127_0_0_2(_: SocketAddr) -> Vec<u8> {
    b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 2300\r\n".to_vec()
}

/// v2, PROXY command, TCP over IPv4, from 192.0.2.9:5000 to 127.0.0.1:2300.
fn v2_from_outside(_: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&[192, 0, 2, 9, 127, 0, 0, 1]);
    h.extend_from_slice(&5000u16.to_be_bytes());
    h.extend_from_slice(&2300u16.to_be_bytes());
    h
}

/// v2 from 127.0.0.3, with a TLV the gateway skips.
fn v2_from_127_0_0_3_with_tlv(_: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 7]);
    h.extend_from_slice(&[127, 0, 0, 3, 127, 0, 0, 1]);
    h.extend_from_slice(&5000u16.to_be_bytes());
    h.extend_from_slice(&2300u16.to_be_bytes());
    h.extend_from_slice(&[0x04, 0x00, 0x04, b'v', b'p', b'c', b'e']);
    h
}

fn no_header(_: SocketAddr) -> Vec<u8> {
    Vec::new()
}

fn garbage_header(_: SocketAddr) -> Vec<u8> {
    b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec()
}

async fn connect_through(
    world: &World,
    balancer: SocketAddr,
) -> Result<hsmgate_client::Session, ClientError> {
    let mut config = world.client_config();
    config.gateway = GatewayAddr::Addr(balancer);
    world.connect_with(&config, &Default::default()).await
}

#[tokio::test]
async fn v1_and_v2_headers_from_a_trusted_balancer_are_accepted() {
    let world = World::start_with(behind_a_balancer()).await;
    for header in [
        v1_from_127_0_0_3 as fn(SocketAddr) -> Vec<u8>,
        v2_from_127_0_0_3_with_tlv,
    ] {
        let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", header).await;
        let session = connect_through(&world, lb).await.expect("granted");
        session.ping().await.expect("ping");
        session.close().await;
    }
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="allow",stage="authz"}"#),
        2.0
    );
}

#[tokio::test]
async fn the_global_allow_list_uses_the_address_from_the_header() {
    let world = World::start_with(behind_a_balancer()).await;
    // The balancer itself (127.0.0.1) is allowed; the client it names is not.
    let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", v2_from_outside).await;
    let err = connect_through(&world, lb).await.expect_err("refused");
    assert!(format!("{err:?}").contains("AddressNotAllowed"), "{err:?}");
    assert_eq!(err.exit_code(), 3);
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="deny",stage="address"}"#),
        1.0
    );
}

#[tokio::test]
async fn the_directory_sees_the_address_from_the_header() {
    // Globally everything on loopback is allowed; the tenant allows
    // 127.0.0.1 and 127.0.0.3 but not 127.0.0.2.
    let world = World::start_with(Options {
        tenant_networks: vec!["127.0.0.1/32".into(), "127.0.0.3/32".into()],
        tweak: |c| {
            c.listeners[0].proxy_protocol = true;
            c.listeners[0].trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        },
        ..Options::default()
    })
    .await;
    let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", v1_from_127_0_0_2).await;
    let err = connect_through(&world, lb).await.expect_err("refused");
    match &err {
        ClientError::Refused { code, .. } => assert_eq!(*code, Code::AddressNotAllowed),
        other => panic!("expected an authenticated refusal, got {other:?}"),
    }
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="deny",stage="authz"}"#),
        1.0,
        "refused by the directory's networks, not at accept"
    );
    let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", v1_from_127_0_0_3).await;
    let session = connect_through(&world, lb)
        .await
        .expect("127.0.0.3 is the tenant's");
    session.ping().await.expect("ping");
}

/// Raw connection to the gateway from `from`, sending `bytes`; returns what
/// the gateway answered before closing.
async fn raw(gateway: SocketAddr, from: &str, bytes: &[u8]) -> Vec<u8> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    let mut stream: TcpStream = socket.connect(gateway).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway closed the connection in time");
    answer
}

#[tokio::test]
async fn an_untrusted_source_is_closed_without_an_answer() {
    let world = World::start_with(behind_a_balancer()).await;
    let answer = raw(
        world.gateway_addr(),
        "127.0.0.3",
        &v1_from_127_0_0_3(world.gateway_addr()),
    )
    .await;
    assert!(answer.is_empty(), "nothing is said to an untrusted source");
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="deny",stage="address"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_missing_or_malformed_header_closes_the_connection() {
    let world = World::start_with(behind_a_balancer()).await;
    // A client speaking the protocol directly, without a header.
    let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", no_header).await;
    let err = connect_through(&world, lb).await.expect_err("closed");
    assert_eq!(err.exit_code(), 4, "{err:?}");
    let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", garbage_header).await;
    let err = connect_through(&world, lb).await.expect_err("closed");
    assert_eq!(err.exit_code(), 4, "{err:?}");
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="error",stage="address"}"#),
        2.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="allow",stage="handshake"}"#),
        0.0
    );
}

/// v2 LOCAL: a balancer's own connection, no client address.
fn v2_local(_: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

fn v1_unknown(_: SocketAddr) -> Vec<u8> {
    b"PROXY UNKNOWN\r\n".to_vec()
}

/// Issue 9, part 5: a header that names no client is a health check. Served
/// as the balancer's own address, it would let anyone behind the balancer
/// past the allow-lists when a tenant's networks include the balancer.
#[tokio::test]
async fn a_header_without_a_client_is_a_health_check_and_is_never_served() {
    // The tenant's networks include the balancer's own address 127.0.0.1.
    let world = World::start_with(behind_a_balancer()).await;
    for header in [v2_local as fn(SocketAddr) -> Vec<u8>, v1_unknown] {
        let (lb, _task) = balancer(world.gateway_addr(), "127.0.0.1", header).await;
        let err = connect_through(&world, lb).await.expect_err("closed");
        assert_eq!(err.exit_code(), 4, "{err:?}");
    }
    assert_eq!(
        world.metric(r#"hsmgate_proxy_checks_total{listener="main"}"#),
        2.0
    );
    assert_eq!(
        world.metric(r#"hsmgate_admission_total{result="allow",stage="handshake"}"#),
        0.0,
        "no handshake was even attempted"
    );
}
