//! Health probe: a liveness check of an HSM node without a client session.
//!
//! The probe carries no secret and proves nothing cryptographic: it tells the
//! gateway's health checker that the node accepts connections, that its
//! accept loop and connection tasks run, and which `hsm_id` answers.
//!
//! ```text
//! prober → node   "PING"                        (4 bytes, exactly)
//! node → prober   "PONG" | len: u8 | hsm_id     (len = hsm_id length, 1..=64)
//! ```
//!
//! The node then closes the connection. It is told apart from a session by
//! its first four bytes: a session starts with an InnerHello frame whose
//! 2-byte length would read as `"PI"` = 20553, far above the 1024-byte limit
//! for handshake frames, so no valid session can start with `PING`.
//!
//! Probes count against `limits.max_sessions` like sessions do: a node at its
//! limit answers a probe with an `OverLimit` Error frame instead of `PONG`.

use std::net::SocketAddr;
use std::time::Duration;

use hsmgate_wire::text::{MAX_NAME_LEN, check_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The probe request.
pub const REQUEST: &[u8; 4] = b"PING";
/// The first four bytes of the probe reply.
pub const REPLY_MAGIC: &[u8; 4] = b"PONG";
/// The first four bytes of the reply of a node that cannot serve now (a
/// key store not ready, PROTOCOL.md §8.1).
pub const DOWN_MAGIC: &[u8; 4] = b"DOWN";
/// Longest reply: magic, length byte and the longest name.
pub const MAX_REPLY_LEN: usize = REPLY_MAGIC.len() + 1 + MAX_NAME_LEN;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("probe timed out")]
    Timeout,
    #[error("malformed probe reply: {0}")]
    Malformed(&'static str),
    #[error("node {0} answers but is not ready (a key store cannot serve)")]
    NotReady(String),
}

/// What the first bytes of a connection say about the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// The connection starts with [`REQUEST`].
    Probe,
    /// The bytes so far are a proper prefix of [`REQUEST`]: read more.
    NeedMore,
    /// Not a probe: treat the bytes as frames.
    NotProbe,
}

/// Classify the first bytes a connection sent.
pub fn detect(buf: &[u8]) -> Detect {
    if buf.len() >= REQUEST.len() {
        if &buf[..REQUEST.len()] == REQUEST {
            Detect::Probe
        } else {
            Detect::NotProbe
        }
    } else if REQUEST.starts_with(buf) {
        Detect::NeedMore
    } else {
        Detect::NotProbe
    }
}

/// The reply the node sends for `hsm_id` (a valid name, so at most 64 bytes).
pub fn reply(hsm_id: &str) -> Vec<u8> {
    reply_with(REPLY_MAGIC, hsm_id)
}

/// The reply of a node that is up but cannot serve: `DOWN` instead of
/// `PONG`, the same layout.
pub fn reply_not_ready(hsm_id: &str) -> Vec<u8> {
    reply_with(DOWN_MAGIC, hsm_id)
}

fn reply_with(magic: &[u8; 4], hsm_id: &str) -> Vec<u8> {
    let id = hsm_id.as_bytes();
    let len = id.len().min(MAX_NAME_LEN);
    let mut out = Vec::with_capacity(magic.len() + 1 + len);
    out.extend_from_slice(magic);
    out.push(len as u8);
    out.extend_from_slice(&id[..len]);
    out
}

/// Parse a reply. `Ok(None)` while more bytes are needed; `Ok(Some(id))`
/// once the whole reply is present.
pub fn parse_reply(buf: &[u8]) -> Result<Option<String>, ProbeError> {
    let magic_len = REPLY_MAGIC.len();
    let seen = buf.len().min(magic_len);
    let down = buf[..seen] == DOWN_MAGIC[..seen] && seen == magic_len;
    if buf[..seen] != REPLY_MAGIC[..seen] && buf[..seen] != DOWN_MAGIC[..seen] {
        return Err(ProbeError::Malformed("does not start with PONG"));
    }
    let Some(&len) = buf.get(magic_len) else {
        return Ok(None);
    };
    let end = magic_len + 1 + usize::from(len);
    if buf.len() < end {
        return Ok(None);
    }
    if buf.len() > end {
        return Err(ProbeError::Malformed("bytes after the hsm id"));
    }
    let id = check_name(&buf[magic_len + 1..end]).map_err(ProbeError::Malformed)?;
    if down {
        return Err(ProbeError::NotReady(id.to_owned()));
    }
    Ok(Some(id.to_owned()))
}

/// Probe the node at `addr`: connect, send `PING`, read the reply; returns
/// the node's `hsm_id`. The whole exchange is bounded by `timeout`.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(REQUEST).await?;
        let mut buf = Vec::with_capacity(MAX_REPLY_LEN);
        let mut chunk = [0u8; MAX_REPLY_LEN];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProbeError::Malformed("connection closed before the reply"));
            }
            if buf.len() + n > MAX_REPLY_LEN {
                return Err(ProbeError::Malformed("reply too long"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(id) = parse_reply(&buf)? {
                return Ok(id);
            }
        }
    })
    .await
    .map_err(|_| ProbeError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_probe_only_on_exactly_ping() {
        assert_eq!(detect(b""), Detect::NeedMore);
        assert_eq!(detect(b"P"), Detect::NeedMore);
        assert_eq!(detect(b"PIN"), Detect::NeedMore);
        assert_eq!(detect(b"PING"), Detect::Probe);
        assert_eq!(detect(b"PINGx"), Detect::Probe);
        assert_eq!(detect(b"PINx"), Detect::NotProbe);
        assert_eq!(detect(&[0, 40, 0x11]), Detect::NotProbe);
    }

    #[test]
    fn reply_round_trips() {
        let bytes = reply("hsm-1");
        assert_eq!(bytes, b"PONG\x05hsm-1");
        for cut in 0..bytes.len() {
            assert_eq!(parse_reply(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(parse_reply(&bytes).unwrap().as_deref(), Some("hsm-1"));
        assert!(parse_reply(b"PANG").is_err());
        assert!(matches!(
            parse_reply(&reply_not_ready("hsm-1")),
            Err(ProbeError::NotReady(id)) if id == "hsm-1"
        ));
        assert_eq!(parse_reply(b"DOW").unwrap(), None, "a prefix: read more");
        assert!(parse_reply(b"PONG\x01a!").is_err());
        assert!(parse_reply(b"PONG\x01!").is_err());
        assert!(parse_reply(b"PONG\x00").is_err());
    }
}
