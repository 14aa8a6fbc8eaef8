//! The four scenarios of issue 4, each bounded by time and by count:
//!
//! - `sessions`: new sessions per second, each a TCP connect, the outer
//!   handshake (hsmgate) or a TLS 1.3 handshake with client certificate
//!   (HAProxy mTLS) or nothing (direct, HAProxy TCP), the inner handshake
//!   with an HSM node and one ping; setup latency and proxy CPU per session.
//! - `latency`: echo round trips over established sessions, per message
//!   size and number of concurrent sessions.
//! - `throughput`: bulk bytes to a sink over established sessions.
//! - `idle`: N sessions held open after one round trip; the proxy's RSS,
//!   file descriptors and the kernel's slab per session.
//! - `pkcs11`: ECDSA P-256 signatures per second through the PKCS#11
//!   library against the SDK (`crate::pkcs11`).
//! - `rest`: P-256 signatures per second through hsmgate-rest over HTTP/1.1
//!   and HTTP/2 against the SDK (`crate::rest`).
//! - `stores`: signatures per second with the HSM node's software store and
//!   with a SoftHSM2 token (`crate::stores`).
//!
//! Every run first warms up (not measured), then measures for
//! [`Options::run`]; the proxy's CPU time is read from `/proc` at both ends
//! of the measured part.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::deploy::{
    Deployment, PARTITION_ECHO, PARTITION_HSM, PARTITION_SINK, ProxyProcess, admin_get, metric_sum,
};
use crate::driver::{
    Grant, hsm_session, hsm_session_via, outer_grant, outer_grant_bound, round_trip,
};
use crate::hist::Latencies;
use crate::report::{
    DIRECT, FLOOR, HAPROXY, HSMGATE, HSMGATE_QUIC, IdleRow, LatencyRow, SESSION_DIRECT,
    SESSION_HAPROXY_MTLS, SESSION_HAPROXY_TCP, SESSION_HIT, SESSION_MISS, SESSION_QUIC_CONNECTION,
    SESSION_QUIC_STREAM, SessionRow, ThroughputRow, size_label,
};
use crate::tls::MutualTls;

/// Bound on one operation (a session, a round trip, a write).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per write in the throughput scenario.
const CHUNK: usize = 256 * 1024;
/// Sessions opened at once in the idle scenario.
const IDLE_OPENERS: usize = 32;

/// How long and how much.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: &'static str,
    /// Measured part of each run.
    pub run: Duration,
    /// Unmeasured start of each run.
    pub warmup: Duration,
    pub session_concurrency: usize,
    /// Most sessions per run.
    pub max_sessions: u64,
    pub latency_sizes: Vec<usize>,
    pub latency_concurrency: Vec<usize>,
    /// Most round trips per run.
    pub max_round_trips: u64,
    pub throughput_concurrency: Vec<usize>,
    /// Most bytes per session per run.
    pub max_bytes_per_session: u64,
    pub idle_sessions: usize,
    /// Wait after opening the idle sessions, before measuring.
    pub idle_settle: Duration,
    /// Application threads (and SDK tasks) of the `pkcs11` scenario.
    pub pkcs11_threads: Vec<usize>,
    /// Most signatures per path per run.
    pub max_signatures: u64,
    /// Concurrent callers of the `rest` scenario.
    pub rest_callers: Vec<usize>,
    /// Concurrent sessions of the `stores` scenario.
    pub store_concurrency: Vec<usize>,
}

impl Options {
    /// The default: every scenario in about two minutes on 2 vCPUs.
    pub fn quick() -> Options {
        Options {
            name: "quick",
            run: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            session_concurrency: 8,
            max_sessions: 50_000,
            latency_sizes: vec![64, 16 * 1024],
            latency_concurrency: vec![1, 64],
            max_round_trips: 5_000_000,
            throughput_concurrency: vec![1, 8],
            max_bytes_per_session: 64 << 30,
            idle_sessions: 2_000,
            idle_settle: Duration::from_secs(1),
            pkcs11_threads: vec![1, 8, 64],
            max_signatures: 1_000_000,
            rest_callers: vec![1, 16],
            store_concurrency: vec![1, 16],
        }
    }

    /// CI: every scenario, a few hundred operations each, in seconds.
    pub fn smoke() -> Options {
        Options {
            name: "smoke",
            run: Duration::from_millis(200),
            warmup: Duration::from_millis(50),
            session_concurrency: 2,
            max_sessions: 200,
            latency_sizes: vec![64, 16 * 1024],
            latency_concurrency: vec![1, 4],
            max_round_trips: 2_000,
            throughput_concurrency: vec![1, 2],
            max_bytes_per_session: 64 << 20,
            idle_sessions: 50,
            idle_settle: Duration::from_millis(100),
            pkcs11_threads: vec![1, 4],
            max_signatures: 200,
            rest_callers: vec![1, 4],
            store_concurrency: vec![1, 4],
        }
    }
}

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Sessions,
    Latency,
    Throughput,
    Idle,
    /// ECDSA signatures through the PKCS#11 library and through the SDK.
    Pkcs11,
    /// Signatures through hsmgate-rest (HTTP/1.1, HTTP/2) and the SDK.
    Rest,
    /// Signatures with the node's software store and with a SoftHSM2 token.
    Stores,
}

/// Where a byte-level session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct,
    Floor,
    Haproxy,
    Hsmgate,
    /// hsmgate, each session the first stream of its own QUIC connection.
    HsmgateQuic,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Direct => DIRECT,
            Via::Floor => FLOOR,
            Via::Haproxy => HAPROXY,
            Via::Hsmgate => HSMGATE,
            Via::HsmgateQuic => HSMGATE_QUIC,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Echo,
    Sink,
}

/// Where a new HSM session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPath {
    Direct,
    HaproxyTcp,
    HaproxyMtls,
    Hsmgate {
        cached: bool,
    },
    /// A new QUIC connection per session (cached decision).
    QuicConnection,
    /// A new stream on one of the load's already authenticated QUIC
    /// connections (cached decision).
    QuicStream,
}

impl SessionPath {
    pub fn label(self) -> &'static str {
        match self {
            SessionPath::Direct => SESSION_DIRECT,
            SessionPath::HaproxyTcp => SESSION_HAPROXY_TCP,
            SessionPath::HaproxyMtls => SESSION_HAPROXY_MTLS,
            SessionPath::Hsmgate { cached: true } => SESSION_HIT,
            SessionPath::Hsmgate { cached: false } => SESSION_MISS,
            SessionPath::QuicConnection => SESSION_QUIC_CONNECTION,
            SessionPath::QuicStream => SESSION_QUIC_STREAM,
        }
    }
}

/// A byte session the load generator holds: TCP, or a QUIC stream.
pub enum Stream {
    Tcp(TcpStream),
    Quic(crate::quic::QuicStream),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Quic(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Quic(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Quic(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Quic(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Runs scenarios against one deployment.
pub struct Bench {
    pub dep: Arc<Deployment>,
    pub opts: Options,
    pub progress: ProgressBar,
}

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// CPU time of one proxy over a measured part: its own threads' and the
/// kernel workers' (`procstat::KernelWorkers`), where a proxy that forwards
/// in the kernel spends it.
struct CpuMeter<'a> {
    process: Option<&'a ProxyProcess>,
    start: Option<(Duration, crate::procstat::KernelWorkers)>,
}

impl<'a> CpuMeter<'a> {
    fn start(process: Option<&'a ProxyProcess>) -> anyhow::Result<Self> {
        let start = match process {
            Some(p) => Some((p.usage()?.cpu, crate::procstat::KernelWorkers::now())),
            None => None,
        };
        Ok(CpuMeter { process, start })
    }

    fn stop(self) -> anyhow::Result<Option<f64>> {
        match (self.process, self.start) {
            (Some(p), Some((cpu, workers))) => {
                let own = p.usage()?.cpu.saturating_sub(cpu);
                let kernel = crate::procstat::KernelWorkers::now().since(&workers);
                Ok(Some((own + kernel).as_secs_f64()))
            }
            _ => Ok(None),
        }
    }
}

impl Bench {
    fn proxy(&self, via: Via) -> Option<&ProxyProcess> {
        match via {
            Via::Direct => None,
            Via::Floor => self.dep.floor.as_ref().map(|f| &f.process),
            Via::Haproxy => self.dep.haproxy.as_ref().map(|h| &h.process),
            Via::Hsmgate | Via::HsmgateQuic => Some(&self.dep.gateway.process),
        }
    }

    /// The paths of the byte scenarios on this deployment.
    pub fn vias(&self) -> Vec<Via> {
        let mut v = vec![Via::Direct];
        if self.dep.floor.is_some() {
            v.push(Via::Floor);
        }
        if self.dep.haproxy.is_some() {
            v.push(Via::Haproxy);
        }
        v.push(Via::Hsmgate);
        if self.dep.gateway.quic.is_some() {
            v.push(Via::HsmgateQuic);
        }
        v
    }

    /// The paths of the idle scenario: every byte path but QUIC (one idle
    /// QUIC session is one idle connection; not measured yet).
    pub fn idle_vias(&self) -> Vec<Via> {
        self.vias()
            .into_iter()
            .filter(|&v| v != Via::HsmgateQuic)
            .collect()
    }

    /// The paths of the sessions scenario on this deployment.
    pub fn session_paths(&self) -> Vec<SessionPath> {
        let mut v = vec![SessionPath::Direct];
        if let Some(h) = &self.dep.haproxy {
            v.push(SessionPath::HaproxyTcp);
            if h.hsm_mtls.is_some() && self.dep.mtls.is_some() {
                v.push(SessionPath::HaproxyMtls);
            }
        }
        v.push(SessionPath::Hsmgate { cached: true });
        v.push(SessionPath::Hsmgate { cached: false });
        if self.dep.gateway.quic.is_some() {
            v.push(SessionPath::QuicConnection);
            v.push(SessionPath::QuicStream);
        }
        v
    }

    fn step(&self, what: String) {
        self.progress.set_message(what);
    }

    fn done(&self) {
        self.progress.inc(1);
    }

    // ------------------------------------------------------------ sessions

    /// New sessions on `path`. Returns the row and the setup latencies.
    pub async fn sessions(&self, path: SessionPath) -> anyhow::Result<(SessionRow, Latencies)> {
        self.step(format!("sessions: {}", path.label()));
        let dep = self.dep.clone();
        let (process, admin) = match path {
            SessionPath::Direct => (None, None),
            SessionPath::HaproxyTcp | SessionPath::HaproxyMtls => {
                (self.dep.haproxy.as_ref().map(|h| &h.process), None)
            }
            SessionPath::Hsmgate { cached } => {
                let g = if cached {
                    &self.dep.gateway
                } else {
                    &self.dep.gateway_uncached
                };
                (Some(&g.process), Some(g.admin))
            }
            SessionPath::QuicConnection | SessionPath::QuicStream => (
                Some(&self.dep.gateway.process),
                Some(self.dep.gateway.admin),
            ),
        };
        // New streams go to connections authenticated before the run, one
        // per worker; their first streams' sessions are not measured.
        let connections = Arc::new(if path == SessionPath::QuicStream {
            authenticated_connections(&self.dep, self.opts.session_concurrency).await?
        } else {
            Vec::new()
        });
        let op = move |n: u64| {
            let (dep, connections) = (dep.clone(), connections.clone());
            async move { one_session(&dep, path, n, &connections).await }
        };
        let started = Instant::now();
        let warm_end = started + self.opts.warmup;
        let end = warm_end + self.opts.run;
        let load = tokio::spawn(load(
            self.opts.session_concurrency,
            warm_end,
            end,
            self.opts.max_sessions,
            op,
        ));
        tokio::time::sleep_until(warm_end).await;
        let cpu = CpuMeter::start(process)?;
        let cache_before = match admin {
            Some(a) => Some(cache_counts(a).await?),
            None => None,
        };
        let out = load.await??;
        let cpu = cpu.stop()?;
        let cache = match (admin, cache_before) {
            (Some(a), Some((h0, m0))) => {
                let (h1, m1) = cache_counts(a).await?;
                Some((h1 - h0, m1 - m0))
            }
            _ => None,
        };
        self.done();
        let n = out.hist.count();
        let row = SessionRow {
            path: path.label().into(),
            concurrency: self.opts.session_concurrency,
            sessions: n,
            errors: out.errors,
            seconds: out.seconds,
            per_second: n as f64 / out.seconds,
            setup: out.hist.summary(),
            proxy_cpu_seconds: cpu,
            proxy_cpu_us_per_session: cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64),
            cache_hits: cache.map(|c| c.0),
            cache_misses: cache.map(|c| c.1),
            first_error: out.first_error,
        };
        Ok((row, out.hist))
    }

    // ------------------------------------------------------------- latency

    async fn open(&self, via: Via, backend: Backend) -> anyhow::Result<Stream> {
        open(&self.dep, via, backend).await
    }

    /// Round trips of `size` bytes over `concurrency` sessions through `via`.
    /// Returns the row and the histogram (for the plot).
    pub async fn latency(
        &self,
        via: Via,
        size: usize,
        concurrency: usize,
    ) -> anyhow::Result<(LatencyRow, Latencies)> {
        self.step(format!(
            "latency: {} {} × {concurrency}",
            via.label(),
            size_label(size)
        ));
        let mut streams = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            streams.push(self.open(via, Backend::Echo).await?);
        }
        let started = Instant::now();
        let warm_end = started + self.opts.warmup;
        let end = warm_end + self.opts.run;
        let budget = Arc::new(AtomicU64::new(0));
        let max = self.opts.max_round_trips;
        let mut workers = JoinSet::new();
        for mut stream in streams {
            let budget = budget.clone();
            workers.spawn(async move {
                let msg = vec![0x5a_u8; size];
                let mut back = vec![0u8; size];
                let mut hist = Latencies::default();
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let measured = now >= warm_end;
                    if measured && budget.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    tokio::time::timeout(OP_TIMEOUT, round_trip(&mut stream, &msg, &mut back))
                        .await
                        .context("round trip timed out")??;
                    if measured {
                        hist.record(now.elapsed());
                    }
                }
                anyhow::Ok((hist, Instant::now()))
            });
        }
        tokio::time::sleep_until(warm_end).await;
        let cpu = CpuMeter::start(self.proxy(via))?;
        let mut hist = Latencies::default();
        let mut last = warm_end;
        while let Some(done) = workers.join_next().await {
            let (h, at) = done??;
            hist.add(&h);
            last = last.max(at);
        }
        let cpu = cpu.stop()?;
        self.done();
        let seconds = (last - warm_end).as_secs_f64().max(1e-9);
        let n = hist.count();
        Ok((
            LatencyRow {
                path: via.label().into(),
                size,
                concurrency,
                round_trips: n,
                seconds,
                per_second: n as f64 / seconds,
                rtt: hist.summary(),
                proxy_cpu_seconds: cpu,
                proxy_cpu_us_per_round_trip: cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64),
            },
            hist,
        ))
    }

    // ---------------------------------------------------------- throughput

    /// Bulk bytes to the sink over `concurrency` sessions through `via`.
    pub async fn throughput(&self, via: Via, concurrency: usize) -> anyhow::Result<ThroughputRow> {
        self.step(format!("throughput: {} × {concurrency}", via.label()));
        let mut streams = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            streams.push(self.open(via, Backend::Sink).await?);
        }
        let cpu = CpuMeter::start(self.proxy(via))?;
        let started = Instant::now();
        let end = started + self.opts.run;
        let max = self.opts.max_bytes_per_session;
        let mut workers = JoinSet::new();
        for mut stream in streams {
            workers.spawn(async move {
                let chunk = vec![0xa5_u8; CHUNK];
                let mut sent: u64 = 0;
                while Instant::now() < end && sent < max {
                    tokio::time::timeout(OP_TIMEOUT, stream.write_all(&chunk))
                        .await
                        .context("write timed out")??;
                    sent += CHUNK as u64;
                }
                stream.shutdown().await?;
                let mut count = [0u8; 8];
                tokio::time::timeout(OP_TIMEOUT, stream.read_exact(&mut count))
                    .await
                    .context("sink count timed out")??;
                let received = u64::from_be_bytes(count);
                ensure!(received == sent, "sink received {received} bytes of {sent}");
                anyhow::Ok(sent)
            });
        }
        let mut bytes = 0;
        while let Some(done) = workers.join_next().await {
            bytes += done??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu.stop()?;
        self.done();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        Ok(ThroughputRow {
            path: via.label().into(),
            concurrency,
            bytes,
            seconds,
            gbit_per_second: bytes as f64 * 8.0 / seconds / 1e9,
            proxy_cpu_seconds: cpu,
            proxy_cpu_seconds_per_gib: cpu.filter(|_| gib > 0.0).map(|c| c / gib),
        })
    }

    // ---------------------------------------------------------------- idle

    /// Hold `idle_sessions` echo sessions through `via`, each after one
    /// round trip, and measure what they cost.
    pub async fn idle(&self, via: Via) -> anyhow::Result<IdleRow> {
        let n = self.opts.idle_sessions;
        self.step(format!("idle: {} × {n}", via.label()));
        // Warm the proxy's allocator and code paths first.
        for _ in 0..20 {
            let mut s = self.open(via, Backend::Echo).await?;
            round_trip(&mut s, &[1u8; 64], &mut [0u8; 64]).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let process = self.proxy(via);
        let before = match process {
            Some(p) => Some((p.usage()?.rss_bytes, crate::procstat::open_fds(p.pid)?)),
            None => None,
        };
        let slab_before = crate::procstat::slab_bytes()?;

        let next = Arc::new(AtomicU64::new(0));
        let mut openers = JoinSet::new();
        for _ in 0..IDLE_OPENERS.min(n.max(1)) {
            let dep = self.dep.clone();
            let next = next.clone();
            openers.spawn(async move {
                let mut held = Vec::new();
                let mut first_error = None;
                while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                    let opened = tokio::time::timeout(OP_TIMEOUT, async {
                        let mut s = open(&dep, via, Backend::Echo).await?;
                        round_trip(&mut s, &[7u8; 64], &mut [0u8; 64]).await?;
                        anyhow::Ok(s)
                    })
                    .await;
                    match opened {
                        Ok(Ok(s)) => held.push(s),
                        Ok(Err(e)) => {
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                        Err(_) => {
                            first_error.get_or_insert_with(|| "open timed out".into());
                        }
                    }
                }
                (held, first_error)
            });
        }
        let mut held = Vec::with_capacity(n);
        let mut first_error = None;
        while let Some(done) = openers.join_next().await {
            let (h, e) = done?;
            held.extend(h);
            if first_error.is_none() {
                first_error = e;
            }
        }
        tokio::time::sleep(self.opts.idle_settle).await;
        let after = match process {
            Some(p) => Some((p.usage()?.rss_bytes, crate::procstat::open_fds(p.pid)?)),
            None => None,
        };
        let slab_after = crate::procstat::slab_bytes()?;
        let opened = held.len();
        drop(held);
        // Let the closes go through before the next path's baseline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.done();

        let per = |d: f64| (opened > 0).then(|| d / opened as f64);
        let rss_delta = match (before, after) {
            (Some(b), Some(a)) => Some(a.0 as i64 - b.0 as i64),
            _ => None,
        };
        let fds = match (before, after) {
            (Some(b), Some(a)) => per(a.1 as f64 - b.1 as f64),
            _ => None,
        };
        Ok(IdleRow {
            path: via.label().into(),
            requested: n,
            opened,
            proxy_rss_delta_bytes: rss_delta,
            proxy_rss_per_session_bytes: rss_delta.and_then(|d| per(d as f64)),
            proxy_fds_per_session: fds,
            slab_per_session_bytes: per(slab_after as f64 - slab_before as f64).unwrap_or(0.0),
            first_error,
        })
    }
}

/// Open a byte session to `backend` through `via`; through hsmgate this is
/// the outer handshake for the backend's partition, then the raw stream.
async fn open(dep: &Deployment, via: Via, backend: Backend) -> anyhow::Result<Stream> {
    let (direct, partition) = match backend {
        Backend::Echo => (dep.backends.echo, PARTITION_ECHO),
        Backend::Sink => (dep.backends.sink, PARTITION_SINK),
    };
    if via == Via::HsmgateQuic {
        let (endpoint, addr) = quic_of(dep)?;
        let (conn, binding) = crate::quic::connect(endpoint, addr).await?;
        let stream = crate::quic::open_stream(&conn).await?;
        let granted = outer_grant_bound(stream, &dep.identity, partition, &[], Some(&binding))
            .await?
            .into_inner()?;
        return Ok(Stream::Quic(granted));
    }
    open_tcp(dep, via, direct, partition, backend)
        .await
        .map(Stream::Tcp)
}

/// The QUIC client endpoint and the gateway's QUIC address.
fn quic_of(dep: &Deployment) -> anyhow::Result<(&quinn::Endpoint, std::net::SocketAddr)> {
    match (&dep.quic_client, dep.gateway.quic) {
        (Some(endpoint), Some(addr)) => Ok((endpoint, addr)),
        _ => bail!("the gateway has no QUIC listener"),
    }
}

/// `session_concurrency` QUIC connections, each authenticated by a whole
/// first-stream session.
async fn authenticated_connections(
    dep: &Deployment,
    n: usize,
) -> anyhow::Result<Vec<quinn::Connection>> {
    let (endpoint, addr) = quic_of(dep)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let (conn, binding) = crate::quic::connect(endpoint, addr).await?;
        let stream = crate::quic::open_stream(&conn).await?;
        hsm_session_via(
            stream,
            &dep.identity,
            PARTITION_HSM,
            Grant::QuicFirst(&binding),
        )
        .await?;
        out.push(conn);
    }
    Ok(out)
}

async fn open_tcp(
    dep: &Deployment,
    via: Via,
    direct: std::net::SocketAddr,
    partition: &str,
    backend: Backend,
) -> anyhow::Result<TcpStream> {
    match via {
        Via::HsmgateQuic => bail!("not a TCP path"),
        Via::Direct => connect(direct).await,
        Via::Floor => {
            let f = dep
                .floor
                .as_ref()
                .context("the floor relay is not running")?;
            connect(match backend {
                Backend::Echo => f.echo,
                Backend::Sink => f.sink,
            })
            .await
        }
        Via::Haproxy => {
            let h = dep.haproxy.as_ref().context("HAProxy is not running")?;
            connect(match backend {
                Backend::Echo => h.echo,
                Backend::Sink => h.sink,
            })
            .await
        }
        Via::Hsmgate => {
            let s = connect(dep.gateway.addr).await?;
            outer_grant(s, &dep.identity, partition, &[])
                .await?
                .into_inner()
        }
    }
}

/// One new HSM session on `path` (`connections`: the authenticated QUIC
/// connections of [`SessionPath::QuicStream`]).
async fn one_session(
    dep: &Deployment,
    path: SessionPath,
    n: u64,
    connections: &[quinn::Connection],
) -> anyhow::Result<()> {
    let id = &dep.identity;
    match path {
        SessionPath::QuicConnection => {
            let (endpoint, addr) = quic_of(dep)?;
            let (conn, binding) = crate::quic::connect(endpoint, addr).await?;
            let stream = crate::quic::open_stream(&conn).await?;
            let done = hsm_session_via(stream, id, PARTITION_HSM, Grant::QuicFirst(&binding)).await;
            conn.close(quinn::VarInt::from_u32(0), b"");
            done
        }
        SessionPath::QuicStream => {
            let conn = connections
                .get(n as usize % connections.len().max(1))
                .context("no authenticated QUIC connection")?;
            let stream = crate::quic::open_stream(conn).await?;
            hsm_session_via(stream, id, PARTITION_HSM, Grant::QuicStream).await
        }
        SessionPath::Direct => {
            let s = connect(dep.hsm[n as usize % dep.hsm.len()]).await?;
            hsm_session(s, id, PARTITION_HSM, false).await
        }
        SessionPath::HaproxyTcp => {
            let h = dep.haproxy.as_ref().context("HAProxy is not running")?;
            hsm_session(connect(h.hsm).await?, id, PARTITION_HSM, false).await
        }
        SessionPath::HaproxyMtls => {
            let h = dep.haproxy.as_ref().context("HAProxy is not running")?;
            let addr = h.hsm_mtls.context("no mutual TLS frontend")?;
            let tls = dep.mtls.as_ref().context("no TLS material")?;
            let s = connect(addr).await?;
            let s = tls
                .connector()
                .connect(MutualTls::server_name(), s)
                .await
                .context("TLS handshake")?;
            hsm_session(s, id, PARTITION_HSM, false).await
        }
        SessionPath::Hsmgate { cached } => {
            let g = if cached {
                &dep.gateway
            } else {
                &dep.gateway_uncached
            };
            hsm_session(connect(g.addr).await?, id, PARTITION_HSM, true).await
        }
    }
}

/// The gateway's cache hits and misses (coalesced waits count as misses).
async fn cache_counts(admin: std::net::SocketAddr) -> anyhow::Result<(u64, u64)> {
    let text = admin_get(admin, "/metrics").await?;
    let m = "hsmgate_authz_requests_total";
    let hit = metric_sum(&text, m, "cache=\"hit\"");
    let miss = metric_sum(&text, m, "cache=\"miss\"") + metric_sum(&text, m, "cache=\"coalesced\"");
    if hit + miss == 0.0 && !text.contains(m) {
        bail!("gateway metrics lack {m}");
    }
    Ok((hit as u64, miss as u64))
}

/// What [`load`] measured.
pub struct LoadOutcome {
    pub hist: Latencies,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// Run `op` from `concurrency` workers until `end` or `max_ops` measured
/// operations; operations started before `warm_end` are not measured.
pub async fn load<F, Fut>(
    concurrency: usize,
    warm_end: Instant,
    end: Instant,
    max_ops: u64,
    op: F,
) -> anyhow::Result<LoadOutcome>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (counter, seq, op) = (counter.clone(), seq.clone(), op.clone());
        workers.spawn(async move {
            let mut hist = Latencies::default();
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let measured = now >= warm_end;
                if measured && counter.fetch_add(1, Ordering::Relaxed) >= max_ops {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(OP_TIMEOUT, op(n)).await {
                    Ok(Ok(())) if measured => hist.record(now.elapsed()),
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        errors += u64::from(measured);
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        errors += u64::from(measured);
                        first_error.get_or_insert_with(|| "timed out".to_owned());
                    }
                }
            }
            (hist, errors, first_error, Instant::now())
        });
    }
    let mut out = LoadOutcome {
        hist: Latencies::default(),
        errors: 0,
        first_error: None,
        seconds: 0.0,
    };
    let mut last = warm_end;
    while let Some(done) = workers.join_next().await {
        let (h, e, first, at) = done?;
        out.hist.add(&h);
        out.errors += e;
        if out.first_error.is_none() {
            out.first_error = first;
        }
        last = last.max(at);
    }
    out.seconds = (last - warm_end).as_secs_f64().max(1e-9);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn load_is_bounded_by_count_and_skips_the_warmup() {
        let start = Instant::now();
        let warm_end = start + Duration::from_millis(20);
        let end = start + Duration::from_secs(30);
        let out = load(3, warm_end, end, 50, |_| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(())
        })
        .await
        .expect("load");
        assert_eq!(out.hist.count(), 50);
        assert_eq!(out.errors, 0);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn load_counts_errors_and_keeps_the_first() {
        let start = Instant::now();
        let out = load(
            2,
            start,
            start + Duration::from_secs(30),
            10,
            |n| async move {
                if n % 2 == 0 {
                    bail!("even {n}")
                }
                Ok(())
            },
        )
        .await
        .expect("load");
        assert_eq!(out.hist.count() + out.errors, 10);
        assert!(out.first_error.is_some_and(|e| e.starts_with("even")));
    }
}
