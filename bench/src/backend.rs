//! The raw TCP backends behind every path of the byte benchmarks: an echo
//! server (latency, idle) and a sink (throughput). The direct path, HAProxy
//! and hsmgate all reach these same two sockets, so the only difference
//! between the rows of a report is what sits in between.
//!
//! The sink reads until the client half-closes, then answers the number of
//! bytes it received (u64 big endian), so that the client knows every byte
//! made it through before it stops the clock.

use std::net::SocketAddr;

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
    stop: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl Backends {
    /// Start both on ephemeral loopback ports.
    pub async fn start() -> std::io::Result<Backends> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let sink = TcpListener::bind("127.0.0.1:0").await?;
        let (echo_addr, sink_addr) = (echo.local_addr()?, sink.local_addr()?);
        tasks.spawn(accept_loop(echo, stopped.clone(), Kind::Echo));
        tasks.spawn(accept_loop(sink, stopped, Kind::Sink));
        Ok(Backends {
            echo: echo_addr,
            sink: sink_addr,
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

async fn accept_loop(listener: TcpListener, mut stopped: watch::Receiver<bool>, kind: Kind) {
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
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.changed() => {}
                _ = serve(stream, kind) => {}
            }
        });
    }
}

async fn serve(stream: TcpStream, kind: Kind) -> std::io::Result<()> {
    match kind {
        Kind::Echo => echo(stream).await,
        Kind::Sink => sink(stream).await,
    }
}

/// Write back whatever arrives, until EOF.
async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Count bytes until EOF, then answer the count.
async fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    let mut total: u64 = 0;
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
        let b = Backends::start().await.expect("backends");
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
