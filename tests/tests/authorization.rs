//! What the directory granted is what the HSM node serves (issue 9, part 1):
//! the grant the gateway hands the node binds the session end to end.

use hsmgate_tests::{CLIENT_ID, Options, PARTITION, PATIENCE, TENANT, World};
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::ClientInner;
use hsmgate_wire::ops::{KeyType, Request};
use hsmgate_wire::outer::{AccessRequest, ClientHandshake};
use hsmgate_wire::{Code, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The partition the nodes serve and the client's partition key is listed
/// for, but the directory does not grant this client.
const WITHDRAWN: &str = "withdrawn";

async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(FrameType, Vec<u8>)> {
    loop {
        if let Some((f, used)) = frame::decode(buf, MAX_FRAME_LEN).expect("a well-formed frame") {
            let out = (f.kind, f.body.to_vec());
            buf.drain(..used);
            return Some(out);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Ask the gateway for `asked` and open `opened` in the inner handshake,
/// then send a GenerateKey right behind the InnerFinish. Returns the frame
/// the HSM side answers with (`None`: closed).
async fn split_partition_session(
    world: &World,
    asked: &str,
    opened: &str,
) -> Option<(FrameType, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(world.gateway_addr())
            .await
            .expect("connect");
        let request = AccessRequest {
            client_id: CLIENT_ID.into(),
            tenant: TENANT.into(),
            partition: asked.into(),
        };
        let (mut outer, hello) =
            ClientHandshake::start(&world.service_key, world.gateway.public_key(), request)
                .expect("hello");
        let (inner, inner_hello) =
            ClientInner::start(&world.partition_key, opened).expect("inner hello");
        stream.write_all(&hello).await.expect("send hello");
        let mut buf = Vec::new();
        let (kind, body) = read_frame(&mut stream, &mut buf).await.expect("challenge");
        assert_eq!(kind, FrameType::Challenge);
        let (credentials, _) = outer.read_challenge(&body).expect("challenge");
        stream
            .write_all(&[credentials, inner_hello].concat())
            .await
            .expect("send credentials");
        let (kind, body) = read_frame(&mut stream, &mut buf).await.expect("decision");
        assert_eq!(kind, FrameType::Decision);
        assert_eq!(
            outer.read_decision(&body).expect("decision").code,
            Code::Granted
        );
        let (kind, body) = read_frame(&mut stream, &mut buf)
            .await
            .expect("the HSM node's answer to the inner hello");
        assert_eq!(kind, FrameType::InnerChallenge);
        let hsm_keys: Vec<PublicKey> = world.hsms.iter().map(|h| h.key).collect();
        let (finish, _, mut channel) = inner
            .finish(&body, |k| hsm_keys.contains(k))
            .expect("inner finish");
        let generate = Request::GenerateKey {
            kind: KeyType::Ed25519,
            label: "smuggled".into(),
        };
        let sealed = channel
            .seal(&generate.encode(1).expect("encode"))
            .expect("seal");
        stream
            .write_all(&[finish, sealed].concat())
            .await
            .expect("send finish and request");
        read_frame(&mut stream, &mut buf).await
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("session in time")
}

fn key_store_mentions(world: &World, partition: &str, label: &str) -> bool {
    let file = world
        .dir
        .path()
        .join("hsm-state")
        .join(partition)
        .join("keys.toml");
    std::fs::read_to_string(file).is_ok_and(|text| text.contains(label))
}

#[tokio::test]
async fn a_client_granted_one_partition_cannot_open_another_on_the_node() {
    let world = World::start_with(Options {
        extra_node_partitions: vec![WITHDRAWN.into()],
        ..Options::default()
    })
    .await;
    // Positive control: the granted partition, asked and opened, works.
    let answer = split_partition_session(&world, PARTITION, PARTITION).await;
    assert_eq!(answer.expect("a response").0, FrameType::InnerData);
    assert!(key_store_mentions(&world, PARTITION, "smuggled"));

    // Granted "demo", opening "withdrawn" inside: the node refuses and
    // executes nothing.
    let answer = split_partition_session(&world, PARTITION, WITHDRAWN).await;
    let (kind, body) = answer.expect("an error frame, then the close");
    assert_eq!(kind, FrameType::Error, "the node executed the request");
    assert_eq!(frame::decode_error_body(&body).expect("code"), Code::Denied);
    assert!(
        !key_store_mentions(&world, WITHDRAWN, "smuggled"),
        "a key was generated in a partition the directory does not grant"
    );
}

/// Without a gateway, the partition key alone opens nothing.
#[tokio::test]
async fn a_client_connecting_to_a_node_directly_is_refused() {
    let world = World::start().await;
    let node = world.hsms[0].server.addr;
    let exchange = async {
        let mut stream = TcpStream::connect(node).await.expect("connect");
        let (_inner, hello) = ClientInner::start(&world.partition_key, PARTITION).expect("hello");
        stream.write_all(&hello).await.expect("send");
        let mut buf = Vec::new();
        read_frame(&mut stream, &mut buf).await
    };
    let answer = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("in time");
    let (kind, body) = answer.expect("an error frame");
    assert_eq!(kind, FrameType::Error);
    assert_eq!(frame::decode_error_body(&body).expect("code"), Code::Denied);
    // The same node serves the same client through the gateway.
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
}

/// A second gateway whose key the nodes do not list gets no control
/// channel, so it sends them no session: its clients get a retryable
/// refusal, and the nodes never see a session from it.
#[tokio::test]
async fn a_gateway_the_nodes_do_not_trust_serves_nothing_through_them() {
    use hsmgate_client::StaticKeypair;
    let world = World::start().await;
    let key = StaticKeypair::generate().expect("key");
    let mut config = world.gateway.config();
    config.gateway_id = "rogue".into();
    let rogue = hsmgate::Gateway::new(config, key).expect("gateway");
    let listeners = rogue.bind().expect("bind");
    let addr = listeners[0].listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let rogue = rogue.clone();
        async move { rogue.run(listeners, hsmgate_tests::stopped(stopped)).await }
    });
    // Its control channels are refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = r#"hsmgate_grant_channel_events_total{result="refused"}"#;
    while hsmgate_tests::metric_value(&rogue.metrics().render(), refused) < 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut client = world.client_config();
    client.gateway = hsmgate_client::GatewayAddr::Addr(addr);
    client.gateway_keys = vec![rogue.public_key()];
    let err = world
        .connect_with(&client, &Default::default())
        .await
        .expect_err("no node serves it");
    assert_eq!(err.exit_code(), 4, "{err}");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(PATIENCE, task).await;
}

/// A Grant seen on the gateway–node network and replayed to the node, in
/// front of a fresh inner handshake, is refused.
#[tokio::test]
async fn a_grant_replayed_to_the_node_is_refused() {
    let world = World::start_with(Options {
        hsm_nodes: 1,
        spies: true,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    session.close().await;
    let seen = world.events.bytes("hsm-1/to_server");
    assert_eq!(seen[2], 0x25, "the session opened with a Grant");
    let grant_len = 2 + usize::from(u16::from_be_bytes([seen[0], seen[1]]));
    let grant = seen[..grant_len].to_vec();
    let exchange = async {
        let mut stream = TcpStream::connect(world.hsms[0].server.addr)
            .await
            .expect("connect");
        let (_inner, hello) = ClientInner::start(&world.partition_key, PARTITION).expect("hello");
        stream
            .write_all(&[grant, hello].concat())
            .await
            .expect("send");
        let mut buf = Vec::new();
        read_frame(&mut stream, &mut buf).await
    };
    let answer = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("in time");
    let (kind, body) = answer.expect("an error frame");
    assert_eq!(kind, FrameType::Error, "the replay was served");
    assert_eq!(frame::decode_error_body(&body).expect("code"), Code::Denied);
}

/// Issue 9, part 7: after a reload moves the gateway to another directory
/// and the old one goes away, running sessions are checked against the new
/// one: a client it does not know loses its session.
#[tokio::test]
async fn revocation_follows_a_reload_to_another_directory() {
    let mut world = World::start_with(Options {
        ttl_seconds: 1,
        tweak: |c| c.revocation.check_interval_ms = 200,
        ..Options::default()
    })
    .await;
    let session = world.connect(None).await.expect("granted");
    session.ping().await.expect("ping");
    // A new directory that knows the tenant but not this client.
    let path = world.directory.path().expect("data file").to_owned();
    let text = std::fs::read_to_string(&path).expect("read");
    let cut = text.find("[[clients]]").expect("client entry");
    let data = world.dir.path().join("directory-2.toml");
    std::fs::write(&data, &text[..cut]).expect("write");
    let directory = std::sync::Arc::new(hsmgate_directory::Directory::load(&data).expect("load"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let new_addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ =
            hsmgate_directory::serve(directory, listener, hsmgate_tests::stopped(stopped)).await;
    });
    let mut config = world.gateway.config();
    config.directory.endpoint = format!("http://{new_addr}");
    world.gateway.reload(config).expect("reload");
    world.directory_server.stop().await;
    let mut closed = false;
    for _ in 0..100 {
        if session.ping().await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        closed,
        "the session was checked against the directory in force"
    );
}
