//! A stand-in gateway for node tests, written from PROTOCOL.md §8 with the
//! wire crate's state machines: it opens the control connection, keeps the
//! grant key the node hands out, answers nothing but reads every message
//! (grant keys, status), and seals grants for test sessions.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hsmgate_wire::control::{ControlMessage, GatewayControl};
use hsmgate_wire::frame::{self, FrameType, MAX_GATEWAY_NODE_FRAME_LEN};
use hsmgate_wire::grant::{Grant, GrantKey};
use hsmgate_wire::{Code, StaticKeypair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(5);

/// The last Status the node sent: (accepting, sessions, max_sessions).
pub type Status = (bool, u32, u32);

pub struct TestGateway {
    pub key: StaticKeypair,
    grant_key: Arc<Mutex<Option<GrantKey>>>,
    counter: AtomicU64,
    pub status: watch::Receiver<Option<Status>>,
    /// Dropping it closes the control connection.
    control: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.control.take() {
            task.abort();
        }
    }
}

/// Read one frame from `stream` (bounded wait); None at EOF.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(FrameType, Vec<u8>)> {
    loop {
        if let Some((f, used)) = frame::decode(buf, MAX_GATEWAY_NODE_FRAME_LEN).expect("frame") {
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

impl TestGateway {
    /// Open the control connection; panics unless the node hands out a key.
    pub async fn connect(node: SocketAddr, key: StaticKeypair) -> TestGateway {
        match TestGateway::try_connect(node, key).await {
            Ok(g) => g,
            Err(code) => panic!("control connection refused with {code:?}"),
        }
    }

    /// Open the control connection; the node's Error code if it refuses.
    pub async fn try_connect(node: SocketAddr, key: StaticKeypair) -> Result<TestGateway, Code> {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(node))
            .await
            .expect("connect in time")
            .expect("connect");
        let (control, hello) = GatewayControl::start(&key).expect("hello");
        stream.write_all(&hello).await.expect("send hello");
        let mut buf = Vec::new();
        let (kind, body) = tokio::time::timeout(WAIT, read_frame(&mut stream, &mut buf))
            .await
            .expect("challenge in time")
            .expect("challenge");
        assert_eq!(kind, FrameType::ControlChallenge);
        let (finish, _info, mut channel) =
            control.finish(&body, "test-gw", |_| true).expect("finish");
        stream.write_all(&finish).await.expect("send finish");
        let (kind, body) = tokio::time::timeout(WAIT, read_frame(&mut stream, &mut buf))
            .await
            .expect("first control message in time")
            .ok_or(Code::ProtocolError)?;
        if kind == FrameType::Error {
            return Err(frame::decode_error_body(&body).expect("error body"));
        }
        assert_eq!(kind, FrameType::ControlData);
        let ControlMessage::GrantKey {
            key_id,
            key: secret,
        } = channel.open(&body).expect("open")
        else {
            panic!("the first control message is the grant key");
        };
        let grant_key = Arc::new(Mutex::new(Some(GrantKey::new(key_id, &secret))));
        let (status_tx, status) = watch::channel(None);
        let keys = Arc::clone(&grant_key);
        let control = tokio::spawn(async move {
            while let Some((kind, body)) = read_frame(&mut stream, &mut buf).await {
                assert_eq!(kind, FrameType::ControlData);
                match channel.open(&body).expect("control message") {
                    ControlMessage::Status {
                        accepting,
                        sessions,
                        max_sessions,
                    } => {
                        let _ = status_tx.send(Some((accepting, sessions, max_sessions)));
                    }
                    ControlMessage::GrantKey { key_id, key } => {
                        *keys.lock().expect("lock") = Some(GrantKey::new(key_id, &key));
                    }
                    other => panic!("unexpected control message {other:?}"),
                }
            }
        });
        Ok(TestGateway {
            key,
            grant_key,
            counter: AtomicU64::new(1),
            status,
            control: Some(control),
        })
    }

    /// Close the control connection (the node withdraws the grant key).
    pub fn close_control(&mut self) {
        if let Some(task) = self.control.take() {
            task.abort();
        }
    }

    /// A grant for `client_id` on `partition`, valid for a minute.
    pub fn grant(&self, client_id: &str, partition: &str) -> Vec<u8> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        self.grant_with(Grant {
            session_id: rand_id(),
            expires_at: now.as_secs() + 60,
            source: "127.0.0.1:40000".parse().expect("addr"),
            client_key: self.key.public(),
            gateway_id: "test-gw".into(),
            client_id: client_id.into(),
            tenant: "demo".into(),
            partition: partition.into(),
        })
    }

    /// Seal `grant` under the current key with the next counter.
    pub fn grant_with(&self, grant: Grant) -> Vec<u8> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        self.grant_key
            .lock()
            .expect("lock")
            .as_ref()
            .expect("a grant key")
            .seal(counter, &grant)
            .expect("seal")
    }
}

fn rand_id() -> [u8; 16] {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    n.to_be_bytes()
}
