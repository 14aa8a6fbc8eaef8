//! The node's admin HTTP listener: `/metrics` (Prometheus text),
//! `/healthz` (the process runs) and `/readyz` (every partition's key store
//! serves; 503 with the partitions that do not).
//!
//! A small HTTP/1.1 server on a management address: GET or HEAD only, one
//! request per connection, the request head within [`HEAD_TIMEOUT`] and
//! [`MAX_REQUEST`] bytes, at most [`MAX_CONCURRENT`] connections at once and
//! [`MAX_PER_SOURCE`] per source address, so a stuck or hostile client
//! cannot starve Prometheus or a probe.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::server::HsmNode;

const MAX_REQUEST: usize = 8 * 1024;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONCURRENT: usize = 64;
pub const MAX_PER_SOURCE: u32 = 8;

/// Serve until `stop` completes.
pub async fn serve(node: Arc<HsmNode>, listener: TcpListener, stop: impl Future<Output = ()>) {
    let places = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let sources: Arc<Mutex<HashMap<IpAddr, u32>>> = Arc::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(place) = places.clone().try_acquire_owned() else {
                    continue;
                };
                let ip = peer.ip().to_canonical();
                {
                    let mut map = sources.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = map.entry(ip).or_insert(0);
                    if *n >= MAX_PER_SOURCE {
                        continue;
                    }
                    *n += 1;
                }
                let (node, sources) = (Arc::clone(&node), Arc::clone(&sources));
                tokio::spawn(async move {
                    let _ = handle(&node, stream).await;
                    let mut map = sources.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(n) = map.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            map.remove(&ip);
                        }
                    }
                    drop(place);
                });
            }
        }
    }
}

async fn handle(node: &HsmNode, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() <= MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<bool, std::io::Error>(true)
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    }
    tokio::time::timeout(WRITE_TIMEOUT, answer(node, &mut stream, &buf))
        .await
        .unwrap_or(Ok(()))
}

/// The answer to one request head: `(status, content type, body)`.
pub fn route(node: &HsmNode, method: &str, path: &str) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "GET only\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            node.metrics().render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            let stores = node.readiness();
            let down: Vec<_> = stores
                .iter()
                .filter(|(_, r)| !r)
                .map(|(p, _)| p.as_str())
                .collect();
            if down.is_empty() {
                (200, "text/plain", "ready\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    format!(
                        "not ready: key store of partition(s) {} cannot serve\n",
                        down.join(", ")
                    ),
                )
            }
        }
        _ => (404, "text/plain", "not found\n".into()),
    }
}

async fn answer(node: &HsmNode, stream: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let (status, content_type, body) = if buf.len() > MAX_REQUEST {
        (431, "text/plain", "request too large\n".to_owned())
    } else {
        let head = String::from_utf8_lossy(buf);
        let mut parts = head.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, content_type, body) =
            route(node, method, target.split('?').next().unwrap_or(""));
        let body = if method == "HEAD" {
            String::new()
        } else {
            body
        };
        (status, content_type, body)
    };
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
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
