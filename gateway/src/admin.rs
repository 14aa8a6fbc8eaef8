//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the
//! process runs), `/readyz` (this instance should get new clients) and
//! `/config` (the effective config as TOML; it holds no secret: the key is
//! named by its file path and shown by its public half only).
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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::handshake_slots::{HandshakeSlot, HandshakeSlots};
use crate::server::Gateway;

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

/// Serve until `stop` completes.
pub async fn serve(gateway: Gateway, listener: TcpListener, stop: impl Future<Output = ()>) {
    let slots = HandshakeSlots::new(MAX_CONCURRENT);
    let sources = Arc::new(PerSource::default());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
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
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = handle(&gateway, stream, &slot) => {}
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
    gateway: &Gateway,
    mut stream: TcpStream,
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
    tokio::time::timeout(WRITE_TIMEOUT, answer(gateway, &mut stream, &buf))
        .await
        .unwrap_or(Ok(()))
}

async fn answer(gateway: &Gateway, stream: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
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
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            gateway.metrics().render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let readiness = gateway.readiness();
            let status = if readiness.ready() { 200 } else { 503 };
            (status, "text/plain", readiness.to_string())
        }
        "/config" => (200, "text/plain; charset=utf-8", gateway.effective_config()),
        _ => (404, "text/plain", "not found\n".to_owned()),
    };
    // HEAD: the same status and headers, no body.
    respond(stream, status, content_type, &body, method == "GET").await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    send_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
