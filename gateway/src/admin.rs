//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the
//! process runs), `/readyz` (this instance should get new clients) and
//! `/config` (the effective config as TOML; it holds no secret: the key is
//! named by its file path and shown by its public half only).
//!
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size and time. It serves operators and
//! Prometheus on a management address, not clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Gateway;

/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once.
const MAX_CONCURRENT: usize = 64;

/// Serve until `stop` completes.
pub async fn serve(gateway: Gateway, listener: TcpListener, stop: impl Future<Output = ()>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = std::sync::Arc::clone(&permits).try_acquire_owned() else {
                    continue;
                };
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(&gateway, stream)).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn handle(gateway: &Gateway, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n", true).await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "GET only\n", true).await;
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
    respond(&mut stream, status, content_type, &body, method == "GET").await
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
