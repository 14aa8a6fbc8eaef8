//! A recording TCP relay: sits in front of a server, forwards every byte
//! unchanged and records, in one ordered log shared by all spies of a test,
//! when connections open and when bytes pass, plus every byte itself.
//!
//! In front of an HSM node, a connection is recorded when its first bytes
//! arrive, under the spy's name for sessions and probes, and under
//! `control:<name>` when it is the gateway's control channel (its first
//! frame is a ControlHello, PROTOCOL.md §8.2), which the gateway keeps open
//! whether or not any client is served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happened at a spy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A connection to the spied server was opened.
    Connect,
    /// The server received this many bytes.
    ToServer(usize),
    /// The server sent this many bytes.
    FromServer(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: String,
    pub what: What,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Event>,
    /// Every byte, per spy name and direction (`name/to_server`,
    /// `name/from_server`).
    bytes: Vec<(String, Vec<u8>)>,
}

/// The shared, ordered log.
#[derive(Debug, Clone, Default)]
pub struct Events(Arc<Mutex<Log>>);

impl Events {
    pub fn record(&self, at: &str, what: What) {
        let mut log = self.0.lock().expect("log lock");
        log.events.push(Event {
            at: at.to_owned(),
            what,
        });
    }

    fn record_bytes(&self, at: &str, bytes: &[u8]) {
        let mut log = self.0.lock().expect("log lock");
        match log.bytes.iter_mut().find(|(name, _)| name == at) {
            Some((_, all)) => all.extend_from_slice(bytes),
            None => log.bytes.push((at.to_owned(), bytes.to_vec())),
        }
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.0.lock().expect("log lock").events.clone()
    }

    /// Index of the first event at `at` matching `pred`.
    pub fn first(&self, at: &str, pred: impl Fn(&What) -> bool) -> Option<usize> {
        self.snapshot()
            .iter()
            .position(|e| e.at.starts_with(at) && pred(&e.what))
    }

    /// How many events at `at` match `pred`.
    pub fn count(&self, at: &str, pred: impl Fn(&What) -> bool) -> usize {
        self.snapshot()
            .iter()
            .filter(|e| e.at.starts_with(at) && pred(&e.what))
            .count()
    }

    /// Every byte seen by spies whose name (with direction suffix
    /// `/to_server` or `/from_server`) starts with `at`.
    pub fn bytes(&self, at: &str) -> Vec<u8> {
        let log = self.0.lock().expect("log lock");
        log.bytes
            .iter()
            .filter(|(name, _)| name.starts_with(at))
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }
}

/// A running relay.
pub struct Spy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Spy {
    /// Relay connections on a new loopback port to `server`.
    pub async fn start(name: &str, server: SocketAddr, events: Events) -> Spy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind spy");
        let addr = listener.local_addr().expect("addr");
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = TcpStream::connect(server).await else {
                    continue;
                };
                let classify = name.starts_with("hsm");
                if !classify {
                    events.record(&name, What::Connect);
                }
                relays.spawn(relay(
                    inbound,
                    outbound,
                    name.clone(),
                    classify,
                    events.clone(),
                ));
            }
        });
        Spy { addr, task }
    }
}

/// The control channel's first frame type (PROTOCOL.md §8.2).
const CONTROL_HELLO: u8 = 0x21;

async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    name: String,
    classify: bool,
    events: Events,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let label = Arc::new(Mutex::new(name.clone()));
    let up = {
        let (label, events) = (Arc::clone(&label), events.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut first = classify;
            while let Ok(n) = in_read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let name = if first {
                    first = false;
                    let name = if n >= 3 && buf[2] == CONTROL_HELLO {
                        format!("control:{name}")
                    } else {
                        name.clone()
                    };
                    *label.lock().expect("label lock") = name.clone();
                    events.record(&name, What::Connect);
                    name
                } else {
                    label.lock().expect("label lock").clone()
                };
                events.record(&name, What::ToServer(n));
                events.record_bytes(&format!("{name}/to_server"), &buf[..n]);
                if out_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = out_write.shutdown().await;
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = out_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let name = label.lock().expect("label lock").clone();
            events.record(&name, What::FromServer(n));
            events.record_bytes(&format!("{name}/from_server"), &buf[..n]);
            if in_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = in_write.shutdown().await;
    };
    tokio::join!(up, down);
}
