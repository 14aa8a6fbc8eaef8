//! One accepted connection's read side: the socket and the bytes read but
//! not yet decoded, so that frames can be taken one at a time and whatever
//! follows them (the client's bytes behind a Grant) is kept.

use std::time::Duration;

use hsmgate_wire::WireError;
use hsmgate_wire::frame::{self, FrameType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection waits for its last words to be read.
const LINGER: Duration = Duration::from_millis(500);

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// A connection and its undecoded bytes.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::with_capacity(frame::MAX_HANDSHAKE_FRAME_LEN),
        }
    }

    /// Bytes read and not yet taken.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The socket and the bytes read but not taken, in order.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Read more bytes; end of stream is [`ConnError::Closed`].
    pub async fn fill(&mut self) -> Result<(), ConnError> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Read one whole frame of at most `max_len`. The buffer never holds
    /// more than one frame plus one read chunk.
    pub async fn frame(&mut self, max_len: usize) -> Result<(FrameType, Vec<u8>), ConnError> {
        loop {
            if let Some((f, used)) = frame::decode(&self.buf, max_len)? {
                let out = (f.kind, f.body.to_vec());
                self.buf.drain(..used);
                return Ok(out);
            }
            self.fill().await?;
        }
    }

    /// Send `last` (an Error frame or a probe reply) and close; see [`close_with`].
    pub async fn close_with(self, last: Vec<u8>) {
        close_with(self.stream, last).await;
    }
}

/// Send `last`, then close so that the peer can read it: half-close, and
/// discard what the peer still sends for a short while, since closing with
/// unread input makes the kernel send a reset that can destroy the data not
/// yet read by the peer.
pub async fn close_with(mut stream: TcpStream, last: Vec<u8>) {
    let _ = timeout(LINGER, async {
        stream.write_all(&last).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
