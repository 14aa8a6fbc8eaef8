//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the
//! process runs), `/readyz` (this instance should get new clients) and
//! `/config` (the effective config as TOML; it holds no secret: the key is
//! named by its file path and shown by its public half only).
//!
//! With `admin.token_file`, `/config` (and with `metrics_require_token`,
//! `/metrics`) answers only a request that carries that bearer token;
//! `/healthz` and `/readyz` never ask for one (the kubelet's probes carry
//! none, and they reveal nothing).
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size and time. It serves operators,
//! Prometheus and the kubelet's probes on a management address, not clients.
//!
//! It must stay available: a liveness probe that fails gets the pod
//! restarted, which cuts every forwarded session. So idle connections cannot
//! starve it: the request head must arrive within [`HEAD_TIMEOUT`], one
//! source holds at most [`MAX_PER_SOURCE`] connections, and when all
//! [`MAX_CONCURRENT`] places are taken the connection that has waited
//! longest without a complete request is closed to make room (a probe sends
//! its request at once, so it is never that one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::control::admin_tls::AdminTls;

use crate::accept::handshake_slots::{HandshakeSlot, HandshakeSlots};
use crate::state::Shared;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time to write the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once.
pub const MAX_CONCURRENT: usize = 256;
/// Admin connections of one source address at once.
pub const MAX_PER_SOURCE: u32 = 16;

/// How often the admin TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

/// Serve until `stop` completes; over TLS when `tls` is given.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<AdminTls>>,
    stop: impl Future<Output = ()>,
) {
    let slots = HandshakeSlots::new(MAX_CONCURRENT);
    let sources = Arc::new(PerSource::default());
    let mut poll = tokio::time::interval(TLS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = poll.tick(), if tls.is_some() => {
                if let Some(tls) = &tls
                    && let Some(outcome) = tls.reload_if_changed()
                {
                    crate::control::admin_tls::record_reload(&shared.metrics, "file change", &outcome);
                }
            }
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(source) = PerSource::take(&sources, peer.ip()) else {
                    continue;
                };
                let Ok(slot) = slots.acquire() else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                let acceptor = tls
                    .as_ref()
                    .map(|tls| tokio_rustls::TlsAcceptor::from(tls.current()));
                tokio::spawn(async move {
                    let served = async {
                        match acceptor {
                            None => handle(&shared, stream, peer, &slot).await,
                            Some(acceptor) => {
                                // The TLS handshake counts against the head
                                // deadline: a silent peer holds no place.
                                match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => handle(&shared, stream, peer, &slot).await,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                                        Ok(())
                                    }
                                    Err(_) => Ok(()),
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = served => {}
                        () = slot.evicted() => {}
                    }
                    drop(source);
                });
            }
        }
    }
}

/// Admin connections per source address.
#[derive(Debug, Default)]
struct PerSource(Mutex<HashMap<IpAddr, u32>>);

/// One connection's place in its source's count.
struct SourcePlace {
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(sources: &Arc<PerSource>, ip: IpAddr) -> Option<SourcePlace> {
        let ip = ip.to_canonical();
        let mut map = sources.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourcePlace {
            sources: Arc::clone(sources),
            ip,
        })
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut map = self
            .sources
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn handle(
    shared: &Shared,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: std::net::SocketAddr,
    slot: &HandshakeSlot,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_REQUEST {
                return Ok(true);
            }
        }
        Ok::<bool, std::io::Error>(true)
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Ok(true)) => slot.spoke(),
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    }
    tokio::time::timeout(WRITE_TIMEOUT, answer(shared, &mut stream, peer, &buf))
        .await
        .unwrap_or(Ok(()))
}

async fn answer(
    shared: &Shared,
    stream: &mut (impl AsyncWrite + Unpin),
    peer: std::net::SocketAddr,
    buf: &[u8],
) -> std::io::Result<()> {
    if buf.len() > MAX_REQUEST {
        return respond(stream, 431, "text/plain", "request too large\n", true).await;
    }
    let head = String::from_utf8_lossy(buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(stream, 405, "text/plain", "GET only\n", true).await;
    }
    let admin = shared.snapshot().config.admin.clone();
    let guarded = match path {
        "/config" => admin.config_endpoint,
        "/metrics" => admin.metrics_require_token,
        _ => false,
    };
    if path == "/config" && !admin.config_endpoint {
        return respond(stream, 404, "text/plain", "not found\n", true).await;
    }
    if guarded && let Some(file) = &admin.token_file {
        match check_token(file, &head) {
            TokenCheck::Good => {}
            TokenCheck::Bad => {
                shared
                    .metrics
                    .admin_auth_failures
                    .with_label_values(&["bad_token"])
                    .inc();
                tracing::warn!(%peer, path, "admin request refused: missing or wrong bearer token");
                return respond(stream, 401, "text/plain", "bearer token required\n", true).await;
            }
            TokenCheck::Unavailable(why) => {
                shared
                    .metrics
                    .admin_auth_failures
                    .with_label_values(&["token_file"])
                    .inc();
                tracing::error!(%peer, path, file = %file.display(), error = %why, "admin request refused: the token file is unusable");
                return respond(stream, 503, "text/plain", "admin token unavailable\n", true).await;
            }
        }
    }
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let readiness = shared.readiness();
            let status = if readiness.ready() { 200 } else { 503 };
            (status, "text/plain", readiness.to_string())
        }
        "/config" => (200, "text/plain; charset=utf-8", shared.effective_config()),
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    // HEAD: the same status and headers, no body.
    respond(stream, status, content_type, &body, method == "GET").await
}

async fn respond(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    content_type: &str,
    body: &str,
    send_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let challenge = if status == 401 {
        "www-authenticate: Bearer realm=\"hsmgate-admin\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         {challenge}cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Longest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// Shortest token accepted: anything shorter is a configuration mistake.
const MIN_TOKEN_LEN: usize = 16;

enum TokenCheck {
    Good,
    Bad,
    /// The token file cannot be read or holds no usable token: refused.
    Unavailable(String),
}

/// Whether the request `head` carries `Authorization: Bearer <token>` with
/// the token of `file` (its first line, trimmed).
fn check_token(file: &std::path::Path, head: &str) -> TokenCheck {
    let expected = match read_token(file) {
        Ok(token) => token,
        Err(why) => return TokenCheck::Unavailable(why),
    };
    let presented = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    });
    match presented {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => TokenCheck::Good,
        _ => TokenCheck::Bad,
    }
}

fn read_token(file: &std::path::Path) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Read;
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token (first line) is shorter than {MIN_TOKEN_LEN} characters"
        ));
    }
    Ok(zeroize::Zeroizing::new(token.to_owned()))
}

/// Equal contents, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef-token\nignored\n").expect("write");
        let head = |auth: &str| format!("GET /config HTTP/1.1\r\nhost: x\r\n{auth}\r\n\r\n");
        assert!(matches!(
            check_token(&file, &head("Authorization: Bearer 0123456789abcdef-token")),
            TokenCheck::Good
        ));
        assert!(matches!(
            check_token(&file, &head("authorization: bearer 0123456789abcdef-token")),
            TokenCheck::Good
        ));
        for bad in [
            "",
            "Authorization: Bearer 0123456789abcdef-tokeN",
            "Authorization: Bearer 0123456789abcdef-token-and-more",
            "Authorization: Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg==",
            "X-Authorization: Bearer 0123456789abcdef-token",
        ] {
            assert!(
                matches!(check_token(&file, &head(bad)), TokenCheck::Bad),
                "{bad}"
            );
        }
        std::fs::write(&file, "short\n").expect("write");
        assert!(matches!(
            check_token(&file, &head("Authorization: Bearer short")),
            TokenCheck::Unavailable(_)
        ));
        assert!(matches!(
            check_token(&dir.path().join("absent"), &head("")),
            TokenCheck::Unavailable(_)
        ));
    }
}
