//! The client's end of one session as a transport hands it over: a TCP
//! connection, or one bidirectional stream of a QUIC connection. Everything
//! the session path does with the client (read the handshake, write the
//! decision, refuse and close, forward) goes through here, so that the path
//! itself is one for both transports.

use std::io;
use std::time::Duration;

use hsmgate_wire::Code;
use hsmgate_wire::frame;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::forward::write_all;

/// How long a refusing gateway waits for the client to read its answer and
/// close, before closing itself.
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_MAX_BYTES: usize = 64 * 1024;

/// One bidirectional QUIC stream.
pub struct QuicStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// The client side of a session.
pub enum ClientStream {
    Tcp(TcpStream),
    Quic(QuicStream),
}

impl ClientStream {
    /// The transport's name in logs and metrics.
    pub fn transport(&self) -> &'static str {
        match self {
            ClientStream::Tcp(_) => "tcp",
            ClientStream::Quic(_) => "quic",
        }
    }

    /// Read what has arrived, at most `buf.len()` bytes; 0 at the end of
    /// the client's stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(stream) => loop {
                stream.readable().await?;
                match stream.try_read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            ClientStream::Quic(s) => Ok(s.recv.read(buf).await?.unwrap_or(0)),
        }
    }

    /// Write all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ClientStream::Tcp(stream) => write_all(stream, bytes).await,
            ClientStream::Quic(s) => Ok(s.send.write_all(bytes).await?),
        }
    }

    /// Try once to send an Error frame, without waiting, and close: for
    /// sessions closed to make room, which get no lingering close.
    pub fn refuse_at_once(self, code: Code) {
        match self {
            ClientStream::Tcp(stream) => {
                let _ = stream.try_write(&frame::error_frame(code));
            }
            ClientStream::Quic(mut s) => {
                let _ = s.send.reset(quic_code(code));
                let _ = s.recv.stop(quic_code(code));
            }
        }
    }

    /// Write `last` words and close so that they arrive: on TCP, shut down
    /// our side and wait briefly for the client to close, discarding what
    /// it sends (closing with unread bytes makes the kernel send a reset,
    /// which destroys the answer); on QUIC, finish the stream, stop reading
    /// it and wait briefly until the client has acknowledged it.
    pub async fn linger_close(self, last: &[u8]) {
        let until = Instant::now() + LINGER;
        match self {
            ClientStream::Tcp(stream) => linger_tcp(&stream, last, until).await,
            ClientStream::Quic(mut s) => {
                if tokio::time::timeout_at(until, s.send.write_all(last))
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = s.send.finish();
                let _ = s.recv.stop(quic_code(Code::Granted));
                let _ = tokio::time::timeout_at(until, s.send.stopped()).await;
            }
        }
    }
}

/// A §5 code as a QUIC application error code (PROTOCOL.md §11.6).
pub fn quic_code(code: Code) -> quinn::VarInt {
    quinn::VarInt::from_u32(hsmgate_wire::quic::error_code(code))
}

/// [`ClientStream::linger_close`] on a borrowed TCP stream.
pub async fn linger_tcp(stream: &TcpStream, last: &[u8], until: Instant) {
    if tokio::time::timeout_at(until, write_all(stream, last))
        .await
        .is_err()
    {
        return;
    }
    if socket2::SockRef::from(stream)
        .shutdown(std::net::Shutdown::Write)
        .is_err()
    {
        return;
    }
    let mut discarded = 0;
    // On the heap, and only while lingering: a buffer in this future's
    // state would be part of every session task's size.
    let mut buf = vec![0u8; 512];
    let _ = tokio::time::timeout_at(until, async {
        while discarded < LINGER_MAX_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    })
    .await;
}
