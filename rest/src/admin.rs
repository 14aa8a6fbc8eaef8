//! The admin listener (plain HTTP, for the cluster's probes and
//! Prometheus): `/metrics`, `/healthz` (the process serves) and `/readyz`
//! (not draining, and every partition's last hsmgate connect succeeded).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::State;

pub async fn serve(state: Arc<State>, listener: TcpListener, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stopping.changed() => return,
        }
    }
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match not_ready(state) {
            None => (StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Why the service is not ready, if it is not.
pub fn not_ready(state: &State) -> Option<String> {
    if state.draining.load(Ordering::Relaxed) {
        return Some("draining".into());
    }
    let mut down: Vec<&str> = state
        .pools
        .values()
        .filter(|p| !p.is_reachable())
        .map(|p| p.name.as_str())
        .collect();
    down.sort_unstable();
    (!down.is_empty()).then(|| format!("no hsmgate session for partition(s) {}", down.join(", ")))
}
