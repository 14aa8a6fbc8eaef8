//! The raw TCP backends behind every path of the byte benchmarks: an echo
//! server (latency, idle) and a sink (throughput). The direct path, HAProxy
//! and hsmgate all reach these same two sockets, so the only difference
//! between the rows of a report is what sits in between.
//!
//! The sink reads until the client half-closes, then answers the number of
//! bytes it received (u64 big endian), so that the client knows every byte
//! made it through before it stops the clock.
//!
//! hsmgate opens every session with its Grant (PROTOCOL.md §8), as it does
//! to an HSM node: each backend has a second listener for hsmgate that
//! speaks the node's side of that (control channel, grant checked and
//! stripped) before echoing or sinking. The direct path and HAProxy use the
//! plain listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use hsmgate_hsm::{Gatekeeper, GatewayTrust};
use hsmgate_wire::{PublicKey, StaticKeypair};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Read buffer of both backends, per connection.
const BUFFER: usize = 64 * 1024;

/// The running backends. Dropping it stops them and every connection.
pub struct Backends {
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    /// The same two, for hsmgate: each session opens with its grant.
    pub echo_granted: SocketAddr,
    pub sink_granted: SocketAddr,
    stop: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl Backends {
    /// Start them on ephemeral loopback ports; the granted listeners trust
    /// `gateway` (the key of the gateways under test).
    pub async fn start(gateway: PublicKey) -> std::io::Result<Backends> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Gatekeeper::standalone(
            GatewayTrust::of([gateway]),
            StaticKeypair::generate().map_err(std::io::Error::other)?,
            "bench-backend",
        ));
        let mut addrs = Vec::new();
        for (kind, gate) in [
            (Kind::Echo, None),
            (Kind::Sink, None),
            (Kind::Echo, Some(Arc::clone(&gate))),
            (Kind::Sink, Some(gate)),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tasks.spawn(accept_loop(listener, stopped.clone(), kind, gate));
        }
        Ok(Backends {
            echo: addrs[0],
            sink: addrs[1],
            echo_granted: addrs[2],
            sink_granted: addrs[3],
            stop,
            _tasks: tasks,
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Sink,
}

async fn accept_loop(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    kind: Kind,
    gate: Option<Arc<Gatekeeper>>,
) {
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: wait instead of spinning.
                    tracing::warn!(error = %e, "backend accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stopped = stopped.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = serve(stream, kind, gate) => {}
            }
        });
    }
}

async fn serve(
    stream: TcpStream,
    kind: Kind,
    gate: Option<Arc<Gatekeeper>>,
) -> std::io::Result<()> {
    let (stream, first) = match gate {
        None => (stream, Vec::new()),
        Some(gate) => match gate.accept_granted(stream).await {
            Some((stream, rest, _grant)) => (stream, rest),
            // A control connection, a probe or a refusal: dealt with.
            None => return Ok(()),
        },
    };
    match kind {
        Kind::Echo => echo(stream, first).await,
        Kind::Sink => sink(stream, first.len() as u64).await,
    }
}

/// Write back whatever arrives (starting with `first`), until EOF.
async fn echo(mut stream: TcpStream, first: Vec<u8>) -> std::io::Result<()> {
    stream.write_all(&first).await?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Count bytes until EOF (`first` of them already read), then answer the count.
async fn sink(mut stream: TcpStream, first: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    let mut total: u64 = first;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_echoes_and_sink_counts() {
        let b = Backends::start(PublicKey([1; 32])).await.expect("backends");
        let mut s = TcpStream::connect(b.echo).await.expect("echo");
        s.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");

        let mut s = TcpStream::connect(b.sink).await.expect("sink");
        s.write_all(&[7u8; 100_000]).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut count = [0u8; 8];
        s.read_exact(&mut count).await.expect("count");
        assert_eq!(u64::from_be_bytes(count), 100_000);
    }
}
