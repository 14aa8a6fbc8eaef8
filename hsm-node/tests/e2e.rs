//! End-to-end tests of the HSM node over real sockets on 127.0.0.1:0, with a
//! client built from the wire crate's `ClientInner`. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsmgate_hsm::{HsmConfig, HsmNode, Limits, PartitionConfig, probe};
use hsmgate_wire::frame::{self, FrameType, MAX_FRAME_LEN};
use hsmgate_wire::inner::{Channel, ClientInner};
use hsmgate_wire::ops::{KeyType, Reply, Request, Response, Status};
use hsmgate_wire::{Code, PublicKey, StaticKeypair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

struct Node {
    addr: SocketAddr,
    public: PublicKey,
    partition_key: StaticKeypair,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _state: Arc<tempfile::TempDir>,
}

impl Node {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("node stops in time")
            .expect("node task");
    }
}

fn config(state: &tempfile::TempDir, partition_key: &StaticKeypair, limits: Limits) -> HsmConfig {
    HsmConfig {
        hsm_id: "hsm-1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        key_file: state.path().join("unused.key"),
        state_dir: state.path().join("state"),
        limits,
        partitions: vec![
            PartitionConfig {
                name: "demo".into(),
                client_keys: vec![partition_key.public().to_text()],
            },
            PartitionConfig {
                name: "empty".into(),
                client_keys: vec![],
            },
        ],
    }
}

async fn start_with(
    state: Arc<tempfile::TempDir>,
    partition_key: StaticKeypair,
    limits: Limits,
) -> Node {
    let key = StaticKeypair::generate().unwrap();
    let node = Arc::new(HsmNode::new(config(&state, &partition_key, limits), key).unwrap());
    let public = node.public_key();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(node.run(listener, async move {
        let _ = stopped.await;
    }));
    Node {
        addr,
        public,
        partition_key,
        stop: Some(stop),
        task,
        _state: state,
    }
}

async fn start(limits: Limits) -> Node {
    let state = Arc::new(tempfile::tempdir().unwrap());
    start_with(state, StaticKeypair::generate().unwrap(), limits).await
}

/// A raw client connection with a read buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None at EOF / reset.
    async fn frame(&mut self) -> Option<(FrameType, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some((f, used)) = frame::decode(&self.buf, MAX_FRAME_LEN).unwrap() {
                    let out = (f.kind, f.body.to_vec());
                    self.buf.drain(..used);
                    return Some(out);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("a frame or EOF in time")
    }

    /// Expect an Error frame with `code`, then the close.
    async fn expect_refused(&mut self, code: Code) {
        let (kind, body) = self.frame().await.expect("an error frame");
        assert_eq!(kind, FrameType::Error);
        assert_eq!(frame::decode_error_body(&body).unwrap(), code);
        assert!(self.frame().await.is_none(), "closed after the error");
    }

    /// Run the inner handshake up to sending InnerFinish.
    async fn handshake(&mut self, key: &StaticKeypair, partition: &str, hsm: PublicKey) -> Channel {
        let (client, hello) = ClientInner::start(key, partition).unwrap();
        self.send(&hello).await;
        let (kind, body) = self.frame().await.expect("challenge");
        assert_eq!(kind, FrameType::InnerChallenge);
        let (finish, info, channel) = client.finish(&body, |k| *k == hsm).unwrap();
        assert_eq!(info.hsm_id, "hsm-1");
        self.send(&finish).await;
        channel
    }
}

/// An established session.
struct Session {
    client: Client,
    channel: Channel,
    next_id: u32,
}

impl Session {
    async fn open(node: &Node) -> Session {
        let mut client = Client::connect(node.addr).await;
        let channel = client
            .handshake(&node.partition_key, "demo", node.public)
            .await;
        Session {
            client,
            channel,
            next_id: 1,
        }
    }

    async fn call(&mut self, request: Request) -> Result<Reply, Status> {
        let id = self.next_id;
        self.next_id += 1;
        let sealed = self.channel.seal(&request.encode(id).unwrap()).unwrap();
        self.client.send(&sealed).await;
        let (kind, body) = self.client.frame().await.expect("a response");
        assert_eq!(kind, FrameType::InnerData);
        let response = Response::decode(&self.channel.open(&body).unwrap()).unwrap();
        assert_eq!(response.id, id);
        response.result
    }
}

fn quick_limits() -> Limits {
    Limits {
        handshake_timeout_ms: 300,
        idle_timeout_ms: 5_000,
        drain_timeout_ms: 1_000,
        ..Limits::default()
    }
}

#[tokio::test]
async fn serves_key_operations_over_an_authorized_session() {
    let node = start(Limits::default()).await;
    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    let Ok(Reply::Random(r)) = s.call(Request::Random { len: 32 }).await else {
        panic!("random");
    };
    assert_eq!(r.len(), 32);

    for (kind, label) in [(KeyType::Ed25519, "ed"), (KeyType::P256, "p")] {
        let Ok(Reply::Key(info)) = s
            .call(Request::GenerateKey {
                kind,
                label: label.into(),
            })
            .await
        else {
            panic!("generate {label}");
        };
        assert_eq!(info.label, label);
        let Ok(Reply::Signature(sig)) = s
            .call(Request::Sign {
                label: label.into(),
                data: b"msg".to_vec(),
            })
            .await
        else {
            panic!("sign {label}");
        };
        assert_eq!(sig.len(), 64);
        assert_eq!(
            s.call(Request::Verify {
                label: label.into(),
                data: b"msg".to_vec(),
                signature: sig,
            })
            .await,
            Ok(Reply::Verified(true))
        );
    }

    s.call(Request::GenerateKey {
        kind: KeyType::Aes256,
        label: "aes".into(),
    })
    .await
    .unwrap();
    let Ok(Reply::Ciphertext(ct)) = s
        .call(Request::Encrypt {
            label: "aes".into(),
            plaintext: b"secret".to_vec(),
            aad: b"ctx".to_vec(),
        })
        .await
    else {
        panic!("encrypt");
    };
    assert_eq!(
        s.call(Request::Decrypt {
            label: "aes".into(),
            ciphertext: ct.clone(),
            aad: b"ctx".to_vec(),
        })
        .await,
        Ok(Reply::Plaintext(b"secret".to_vec()))
    );
    let mut tampered = ct;
    tampered[20] ^= 1;
    assert_eq!(
        s.call(Request::Decrypt {
            label: "aes".into(),
            ciphertext: tampered,
            aad: b"ctx".to_vec(),
        })
        .await,
        Err(Status::CryptoFailed)
    );
    assert_eq!(
        s.call(Request::Sign {
            label: "aes".into(),
            data: vec![1],
        })
        .await,
        Err(Status::InvalidArgument)
    );
    assert_eq!(
        s.call(Request::Sign {
            label: "nope".into(),
            data: vec![1],
        })
        .await,
        Err(Status::NotFound)
    );
    assert_eq!(
        s.call(Request::GenerateKey {
            kind: KeyType::Aes256,
            label: "ed".into(),
        })
        .await,
        Err(Status::AlreadyExists)
    );
    let Ok(Reply::Keys(keys)) = s.call(Request::ListKeys).await else {
        panic!("list");
    };
    let labels: Vec<&str> = keys.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["aes", "ed", "p"]);
    drop(s);
    node.stop().await;
}

#[tokio::test]
async fn keys_survive_a_node_restart() {
    let state = Arc::new(tempfile::tempdir().unwrap());
    let pk = StaticKeypair::generate().unwrap();
    let node = start_with(state.clone(), pk.clone(), Limits::default()).await;
    let mut s = Session::open(&node).await;
    let Ok(Reply::Key(info)) = s
        .call(Request::GenerateKey {
            kind: KeyType::Ed25519,
            label: "kept".into(),
        })
        .await
    else {
        panic!("generate");
    };
    drop(s);
    node.stop().await;

    let node = start_with(state, pk, Limits::default()).await;
    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::ListKeys).await, Ok(Reply::Keys(vec![info])));
    drop(s);
    node.stop().await;
}

#[tokio::test]
async fn nodes_sharing_a_state_dir_serve_each_others_keys() {
    let state = Arc::new(tempfile::tempdir().unwrap());
    let pk = StaticKeypair::generate().unwrap();
    let one = start_with(state.clone(), pk.clone(), Limits::default()).await;
    let two = start_with(state, pk, Limits::default()).await;
    let mut s1 = Session::open(&one).await;
    let mut s2 = Session::open(&two).await;

    let Ok(Reply::Key(info)) = s1
        .call(Request::GenerateKey {
            kind: KeyType::Ed25519,
            label: "shared".into(),
        })
        .await
    else {
        panic!("generate on node one");
    };
    assert_eq!(
        s2.call(Request::ListKeys).await,
        Ok(Reply::Keys(vec![info]))
    );
    let Ok(Reply::Signature(sig)) = s2
        .call(Request::Sign {
            label: "shared".into(),
            data: b"m".to_vec(),
        })
        .await
    else {
        panic!("sign on node two");
    };
    assert_eq!(
        s1.call(Request::Verify {
            label: "shared".into(),
            data: b"m".to_vec(),
            signature: sig,
        })
        .await,
        Ok(Reply::Verified(true))
    );
    assert_eq!(
        s2.call(Request::GenerateKey {
            kind: KeyType::Aes256,
            label: "shared".into(),
        })
        .await,
        Err(Status::AlreadyExists)
    );
    drop((s1, s2));
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn denies_a_partition_key_not_authorized_for_the_partition() {
    let node = start(Limits::default()).await;
    let stranger = StaticKeypair::generate().unwrap();
    let mut c = Client::connect(node.addr).await;
    c.handshake(&stranger, "demo", node.public).await;
    c.expect_refused(Code::Denied).await;

    // A partition with no authorized keys at all.
    let mut c = Client::connect(node.addr).await;
    c.handshake(&node.partition_key, "empty", node.public).await;
    c.expect_refused(Code::Denied).await;
    node.stop().await;
}

#[tokio::test]
async fn denies_an_unknown_partition() {
    let node = start(Limits::default()).await;
    let mut c = Client::connect(node.addr).await;
    c.handshake(&node.partition_key, "elsewhere", node.public)
        .await;
    c.expect_refused(Code::Denied).await;
    node.stop().await;
}

#[tokio::test]
async fn closes_on_garbage_and_keeps_serving() {
    let node = start(Limits::default()).await;
    // An oversized length.
    let mut c = Client::connect(node.addr).await;
    c.send(&[0xff, 0xff, 0x11, 1, 2, 3]).await;
    c.expect_refused(Code::ProtocolError).await;
    // An unknown frame type.
    let mut c = Client::connect(node.addr).await;
    c.send(&[0, 3, 0x7f, 1, 2]).await;
    c.expect_refused(Code::ProtocolError).await;
    // A well-framed InnerHello with a nonsense body.
    let mut c = Client::connect(node.addr).await;
    c.send(&frame::encode(FrameType::InnerHello, b"HSMI\x01\x01garbage").unwrap())
        .await;
    let (kind, _) = c.frame().await.expect("an error frame");
    assert_eq!(kind, FrameType::Error);
    assert!(c.frame().await.is_none());
    // A session frame where the handshake should be.
    let mut c = Client::connect(node.addr).await;
    c.send(&frame::encode(FrameType::InnerData, &[0; 40]).unwrap())
        .await;
    c.expect_refused(Code::ProtocolError).await;
    // Connect and close at once.
    drop(Client::connect(node.addr).await);

    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    drop(s);
    node.stop().await;
}

#[tokio::test]
async fn closes_a_session_whose_data_does_not_decrypt() {
    let node = start(Limits::default()).await;
    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    let mut sealed = s.channel.seal(&Request::Ping.encode(9).unwrap()).unwrap();
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    s.client.send(&sealed).await;
    assert!(s.client.frame().await.is_none(), "closed without an answer");
    node.stop().await;
}

#[tokio::test]
async fn answers_the_ping_probe_with_pong_and_its_id() {
    let node = start(Limits::default()).await;
    assert_eq!(probe::check(node.addr, WAIT).await.unwrap(), "hsm-1");

    // The bytes on the wire, sent in two pieces.
    let mut c = Client::connect(node.addr).await;
    c.send(b"PI").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(b"NG").await;
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, c.stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"PONG\x05hsm-1");
    node.stop().await;
}

#[tokio::test]
async fn closes_a_handshake_that_stalls_past_the_deadline() {
    let node = start(quick_limits()).await;
    // Stalls after the InnerChallenge.
    let mut c = Client::connect(node.addr).await;
    let started = Instant::now();
    let (_client, hello) = ClientInner::start(&node.partition_key, "demo").unwrap();
    c.send(&hello).await;
    let (kind, _) = c.frame().await.expect("challenge");
    assert_eq!(kind, FrameType::InnerChallenge);
    c.expect_refused(Code::Timeout).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // Stalls before sending anything, and halfway through a probe.
    for first in [&b""[..], b"PI"] {
        let mut c = Client::connect(node.addr).await;
        c.send(first).await;
        c.expect_refused(Code::Timeout).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn closes_an_idle_session() {
    let node = start(Limits {
        idle_timeout_ms: 200,
        ..quick_limits()
    })
    .await;
    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    let started = Instant::now();
    assert!(s.client.frame().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(150));
    node.stop().await;
}

#[tokio::test]
async fn refuses_connections_over_the_session_limit() {
    let node = start(Limits {
        max_sessions: 1,
        ..Limits::default()
    })
    .await;
    let mut first = Session::open(&node).await;
    assert_eq!(first.call(Request::Ping).await, Ok(Reply::Pong));
    let mut second = Client::connect(node.addr).await;
    second.expect_refused(Code::OverLimit).await;

    // The slot is released when the first session ends.
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Client::connect(node.addr).await;
        let (_client, hello) = ClientInner::start(&node.partition_key, "demo").unwrap();
        c.send(&hello).await;
        let (kind, _) = c.frame().await.expect("a frame");
        if kind == FrameType::InnerChallenge {
            break;
        }
        assert!(Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_but_lets_running_sessions_finish() {
    let mut node = start(Limits {
        drain_timeout_ms: 5_000,
        ..Limits::default()
    })
    .await;
    let mut s = Session::open(&node).await;
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    let _ = node.stop.take().unwrap().send(());
    // Give the accept loop a moment to see the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(node.addr).await.is_err(),
        "listener closed"
    );
    assert_eq!(s.call(Request::Ping).await, Ok(Reply::Pong));
    assert!(!node.task.is_finished(), "still draining");
    drop(s);
    node.stop().await;
}
