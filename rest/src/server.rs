//! The HTTPS side: accept, TLS, HTTP/1.1 or HTTP/2, and one request from
//! its head to its response.
//!
//! A request goes: route (404/405) → authenticate (401, or 403 for a
//! certificate that names no identity) → rate limit (429) → authorize the
//! partition (403/404) → body (415/413/400) → HSM work over a pooled
//! hsmgate session (the HSM's answer, or 503/504). Nothing reaches the HSM
//! path before every check before it has passed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::api::{self, Call, UNMATCHED};
use crate::auth::jwt::JwtVerifier;
use crate::auth::{AuthFailure, Principal, cert};
use crate::config::{AuthMode, RestConfig};
use crate::limit::RateLimiter;
use crate::metrics::Metrics;
use crate::problem::{Kind, Problem};
use crate::tls::ListenerTls;
use crate::upstream::PartitionPool;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What every connection and request shares.
pub struct State {
    pub config: RestConfig,
    pub jwt: Option<JwtVerifier>,
    pub pools: HashMap<String, PartitionPool>,
    pub limiter: RateLimiter,
    /// Failed token checks per source address.
    pub failures: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
}

/// One accepted connection: how it authenticates and, for mutual TLS, who
/// its certificate names (decided once, at the handshake).
struct Connection {
    peer: SocketAddr,
    listener: String,
    auth: AuthMode,
    certificate: Option<Result<Principal, AuthFailure>>,
}

/// What the access log line of a request carries besides its status.
#[derive(Default)]
struct Trace {
    route: &'static str,
    subject: Option<String>,
    partition: Option<String>,
    problem: Option<&'static str>,
}

/// Accept connections on one listener until `stopping`, then let the
/// open ones finish (graceful HTTP shutdown) until the drain deadline.
pub async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    name: String,
    auth: AuthMode,
    tls: Arc<ListenerTls>,
    connections: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or memory: back off instead of
                        // spinning on the error.
                        tracing::warn!(listener = %name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    state.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                };
                let conn = Connection { peer, listener: name.clone(), auth, certificate: None };
                let (state, tls, stopping) = (state.clone(), tls.clone(), stopping.clone());
                open.spawn(async move {
                    serve_connection(state, conn, stream, tls, stopping).await;
                    drop(permit);
                });
            }
            Some(_) = open.join_next(), if !open.is_empty() => {}
            _ = stopping.changed() => break,
        }
    }
    drop(listener);
    let drain = state.config.drain_timeout;
    let finished =
        tokio::time::timeout(drain, async { while open.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(listener = %name, left = open.len(), "drain deadline reached; closing the connections left");
        open.abort_all();
    }
}

async fn serve_connection(
    state: Arc<State>,
    mut conn: Connection,
    stream: TcpStream,
    tls: Arc<ListenerTls>,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let handshake =
        tokio::time::timeout(state.config.limits.header_timeout, acceptor.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.metrics.tls_failures.inc();
            tracing::info!(peer = %conn.peer, listener = %conn.listener, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.tls_failures.inc();
            tracing::info!(peer = %conn.peer, listener = %conn.listener, "TLS handshake timed out");
            return;
        }
    };
    if conn.auth == AuthMode::Mtls {
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        conn.certificate = Some(match leaf {
            Some(der) => cert::principal(der, &state.config.identities),
            None => Err(AuthFailure::Missing),
        });
    }
    state.metrics.connections_open.inc();
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::new());
    let service = hyper::service::service_fn({
        let (state, conn, activity) = (state.clone(), conn.clone(), activity.clone());
        move |req| {
            let (state, conn, activity) = (state.clone(), conn.clone(), activity.clone());
            async move {
                let _busy = activity.begin();
                Ok::<_, Infallible>(handle(&state, &conn, req).await)
            }
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 * 1024);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let idle = state.config.limits.idle_timeout;
    let mut check = tokio::time::interval((idle / 4).max(std::time::Duration::from_millis(25)));
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = served.as_mut() => break r,
            _ = stopping.changed(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
            _ = check.tick(), if !closing => {
                if activity.idle_for() >= idle {
                    // No request in flight for the idle timeout: close, so
                    // that idle connections cannot hold every slot.
                    closing = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
    state.metrics.connections_open.dec();
}

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    started: Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `started` when the last request ended.
    last: std::sync::atomic::AtomicU64,
}

/// Marks a request in flight until dropped.
struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: Default::default(),
            last: Default::default(),
        }
    }

    fn begin(&self) -> Busy<'_> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self)
    }

    /// How long no request has been in flight (zero while one is).
    fn idle_for(&self) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return std::time::Duration::ZERO;
        }
        let last = std::time::Duration::from_millis(self.last.load(Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.0.started.elapsed().as_millis() as u64;
        self.0.last.store(now, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// One request, start to end: the response, its metrics and its log line.
async fn handle(state: &State, conn: &Connection, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let mut trace = Trace {
        route: UNMATCHED,
        ..Trace::default()
    };
    let timeout = state.config.limits.request_timeout;
    let response = match tokio::time::timeout(timeout, serve(state, conn, req, &mut trace)).await {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => {
            trace.problem = Some(p.kind.slug());
            if p.kind == Kind::Unauthenticated || p.kind == Kind::Forbidden {
                tracing::info!(peer = %conn.peer, detail = %p.detail, "request refused");
            }
            p.response()
        }
        Err(_) => {
            trace.problem = Some(Kind::Timeout.slug());
            Problem::new(Kind::Timeout, "the request did not finish in time").response()
        }
    };
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&[trace.route, status.as_str()])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[trace.route])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "hsmgate_rest::access",
        peer = %conn.peer,
        listener = %conn.listener,
        method = %method,
        route = trace.route,
        status = status.as_u16(),
        subject = trace.subject.as_deref().unwrap_or("-"),
        partition = trace.partition.as_deref().unwrap_or("-"),
        problem = trace.problem.unwrap_or("-"),
        micros = elapsed.as_micros() as u64,
        "request"
    );
    response
}

async fn serve(
    state: &State,
    conn: &Connection,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Response<Full<Bytes>>, Problem> {
    let (call, route) = api::route(req.method(), req.uri().path())?;
    trace.route = route;
    let (partition, op) = match call {
        Call::OpenApi => {
            return Ok(json_response(
                StatusCode::OK,
                Bytes::from_static(OPENAPI.as_bytes()),
                None,
            ));
        }
        Call::Partition { partition, op } => (partition, op),
    };
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Problem::new(
            Kind::Draining,
            "this instance is shutting down; retry on another",
        )
        .retry_after(1));
    }
    let principal = authenticate(state, conn, &req)?;
    trace.subject = Some(principal.subject.clone());
    trace.partition = Some(partition.clone());
    // Per tenant and subject: the same `sub` in two tenants is two callers.
    state
        .limiter
        .take(
            &format!("{}/{}", principal.tenant, principal.subject),
            Instant::now(),
        )
        .map_err(|secs| {
            Problem::new(Kind::RateLimited, "over this caller's request rate").retry_after(secs)
        })?;
    let pool = authorize(state, &principal, &partition)?;
    let body = if op.has_body() {
        read_body(state, req).await?
    } else {
        Bytes::new()
    };
    let work = api::work(&op, &body)?;
    let answer = pool
        .run(|session| api::run(session, work.clone(), &partition))
        .await
        .map_err(|e| {
            let mut p = Problem::of_client(&e);
            if p.kind == Kind::KeyNotFound && op.is_certificate() {
                p = Problem::new(Kind::CertificateNotFound, "no certificate with that label");
            }
            if p.kind == Kind::HsmUnavailable {
                tracing::warn!(partition = %partition, error = %hsmgate_log::error_chain(&e), "HSM path unavailable");
            }
            p
        })??;
    let body = answer
        .body
        .map(|v| Bytes::from(v.to_string()))
        .unwrap_or_default();
    let mut response = json_response(answer.status, body, answer.location);
    if answer.status == StatusCode::NO_CONTENT {
        response.headers_mut().remove(header::CONTENT_TYPE);
    }
    Ok(response)
}

fn json_response(
    status: StatusCode,
    body: Bytes,
    location: Option<String>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, l);
    }
    response
}

const REALM: &str = "hsmgate-rest";

/// The request's principal, by the listener's mode.
fn authenticate(
    state: &State,
    conn: &Connection,
    req: &Request<Incoming>,
) -> Result<Principal, Problem> {
    let refused = |failure: AuthFailure| {
        state
            .metrics
            .auth_failures
            .with_label_values(&[failure.as_str()])
            .inc();
        failure
    };
    match conn.auth {
        AuthMode::Mtls => match &conn.certificate {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(f)) => Err(Problem::new(Kind::Forbidden, refused(*f).to_string())),
            None => Err(Problem::new(
                Kind::Forbidden,
                refused(AuthFailure::Missing).to_string(),
            )),
        },
        AuthMode::Jwt => {
            let Some(verifier) = &state.jwt else {
                return Err(Problem::new(
                    Kind::Unauthenticated,
                    "no token verifier configured",
                ));
            };
            let token = match bearer(req) {
                Some(t) => t,
                None => {
                    refused(AuthFailure::Missing);
                    return Err(Problem::new(
                        Kind::Unauthenticated,
                        AuthFailure::Missing.to_string(),
                    )
                    .challenge(format!("Bearer realm=\"{REALM}\"")));
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // A token verified before costs a hash. Any other is checked
            // only while its source address has failures left: a flood of
            // bad tokens from one address cannot keep the CPU on signature
            // checks, and its callers with tokens already verified go on.
            let result = match verifier.remembered(token, now) {
                Some(result) => result,
                None => {
                    let source = conn.peer.ip().to_string();
                    let instant = Instant::now();
                    state.failures.check(&source, instant).map_err(|secs| {
                        refused(AuthFailure::TooManyFailures);
                        Problem::new(
                            Kind::RateLimited,
                            "too many failed authentications from this address",
                        )
                        .retry_after(secs)
                    })?;
                    let result = verifier.verify(token, now);
                    if result.is_err() {
                        let _ = state.failures.take(&source, instant);
                    }
                    result
                }
            };
            result.map_err(|f| {
                let f = refused(f);
                Problem::new(Kind::Unauthenticated, f.to_string()).challenge(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{f}\""
                ))
            })
        }
    }
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive).
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The partition's pool if the principal may use it: 403 when it is not
/// among the principal's partitions or belongs to another tenant, 404 when
/// the principal names it but this service does not serve it.
fn authorize<'s>(
    state: &'s State,
    principal: &Principal,
    partition: &str,
) -> Result<&'s PartitionPool, Problem> {
    if !principal.partitions.iter().any(|p| p == partition) {
        return Err(Problem::new(
            Kind::Forbidden,
            "the credentials do not grant this partition",
        ));
    }
    let pool = state.pools.get(partition).ok_or_else(|| {
        Problem::new(
            Kind::PartitionNotFound,
            "this service does not serve the partition",
        )
    })?;
    if !principal.may_use(partition, &pool.tenant) {
        return Err(Problem::new(
            Kind::Forbidden,
            "the partition belongs to another tenant",
        ));
    }
    Ok(pool)
}

/// The JSON body, at most `limits.max_body_bytes`.
async fn read_body(state: &State, req: Request<Incoming>) -> Result<Bytes, Problem> {
    let max = state.config.limits.max_body_bytes;
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            Kind::UnsupportedMediaType,
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || Problem::new(Kind::BodyTooLarge, format!("the body is over {max} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) {
        discard(&mut body, declared).await;
        return Err(too_large());
    }
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Problem::new(
                Kind::MalformedRequest,
                "the body could not be read",
            ));
        };
        if let Ok(data) = frame.into_data() {
            if kept.len() + data.len() > max {
                discard(&mut body, None).await;
                return Err(too_large());
            }
            kept.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(kept))
}

/// Most bytes of a refused body read and dropped before the 413 is sent.
const DISCARD_LIMIT: u64 = 1 << 20;

/// Read and drop the rest of a body that is too large, up to
/// [`DISCARD_LIMIT`]: a client that sends its whole body before reading the
/// answer (most do) then gets the 413 instead of a reset connection. A
/// larger body is not read at all; the connection closes after the answer.
async fn discard(body: &mut Incoming, declared: Option<u64>) {
    if declared.is_some_and(|n| n > DISCARD_LIMIT) {
        return;
    }
    let mut seen = 0u64;
    while seen <= DISCARD_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_served_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for (method, template) in api::ROUTES {
            let op = &doc["paths"][*template][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {template} is not in openapi.json");
        }
        // And the document has no route the server does not serve.
        let paths = doc["paths"].as_object().expect("paths");
        for (template, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    assert!(
                        api::ROUTES
                            .iter()
                            .any(|(m, t)| t == template && m.eq_ignore_ascii_case(method)),
                        "{method} {template} is documented but not served"
                    );
                }
            }
        }
    }
}
