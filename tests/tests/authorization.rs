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
