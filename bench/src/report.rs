//! The results of one run: what was measured ([`Report`], also written as
//! JSON), and the Markdown summary with ratios to the direct path and to
//! HAProxy, and the targets side by side with what was measured.

use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Summary;

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub command: String,
    pub mode: String,
    pub seconds_per_run: f64,
    /// Threads of each proxy (HAProxy `nbthread`, gateway tokio workers).
    pub proxy_threads: usize,
    /// Where the processes ran (`taskset`).
    pub placement: String,
    pub hsmgate: String,
    pub haproxy: Option<String>,
    pub gateway_log: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub memory_mib: u64,
}

/// One row of the `sessions` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub path: String,
    pub concurrency: usize,
    pub sessions: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Connect to the answer of the first ping.
    pub setup: Summary,
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_us_per_session: Option<f64>,
    /// The gateway's own count of cache outcomes during the measured run.
    pub cache_hits: Option<u64>,
    pub cache_misses: Option<u64>,
    pub first_error: Option<String>,
}

/// One row of the `latency` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub path: String,
    pub size: usize,
    pub concurrency: usize,
    pub round_trips: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub rtt: Summary,
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_us_per_round_trip: Option<f64>,
}

/// One row of the `throughput` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    pub path: String,
    pub concurrency: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub gbit_per_second: f64,
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_seconds_per_gib: Option<f64>,
}

/// One row of the `idle` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    pub path: String,
    pub requested: usize,
    pub opened: usize,
    pub proxy_rss_delta_bytes: Option<i64>,
    pub proxy_rss_per_session_bytes: Option<f64>,
    pub proxy_fds_per_session: Option<f64>,
    /// System-wide kernel slab growth per session (both ends and the proxy).
    pub slab_per_session_bytes: f64,
    pub first_error: Option<String>,
}

/// One row of the `pkcs11` scenario: the same signatures through the SDK
/// and through the PKCS#11 library.
#[derive(Debug, Clone, Serialize)]
pub struct Pkcs11Row {
    /// Application threads (library) and tasks (SDK).
    pub threads: usize,
    pub sdk_per_second: f64,
    pub sdk: Summary,
    pub library_per_second: f64,
    pub library: Summary,
    /// Library signatures per second ÷ SDK signatures per second.
    pub library_over_sdk: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One row of the `rest` scenario: the same signatures through the SDK and
/// through hsmgate-rest over HTTP/1.1 and HTTP/2.
#[derive(Debug, Clone, Serialize)]
pub struct RestRow {
    /// Concurrent callers on each path.
    pub callers: usize,
    pub sdk_per_second: f64,
    pub sdk: Summary,
    pub http1_per_second: f64,
    pub http1: Summary,
    pub http2_per_second: f64,
    pub http2: Summary,
    pub http1_over_sdk: f64,
    pub http2_over_sdk: f64,
    /// hsmgate-rest's CPU time per request (µs), warm-up included.
    pub rest_cpu_us_http1: f64,
    pub rest_cpu_us_http2: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// One row of the `stores` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRow {
    /// `software` or `softhsm2`.
    pub store: String,
    pub key: String,
    pub concurrency: usize,
    pub signatures: u64,
    pub per_second: f64,
    pub latency: Summary,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// A latency distribution for the plot.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub chart: String,
    pub label: String,
    /// (percentile, microseconds)
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub sessions: Vec<SessionRow>,
    pub latency: Vec<LatencyRow>,
    pub throughput: Vec<ThroughputRow>,
    pub idle: Vec<IdleRow>,
    pub pkcs11: Vec<Pkcs11Row>,
    pub rest: Vec<RestRow>,
    pub stores: Vec<StoreRow>,
    pub curves: Vec<Curve>,
    pub notes: Vec<String>,
}

pub const DIRECT: &str = "direct";
pub const HAPROXY: &str = "HAProxy";
pub const FLOOR: &str = "floor relay";
pub const HSMGATE: &str = "hsmgate";
pub const SESSION_DIRECT: &str = "direct to an HSM node";
pub const SESSION_HAPROXY_TCP: &str = "HAProxy, plain TCP";
pub const SESSION_HAPROXY_MTLS: &str = "HAProxy, mutual TLS 1.3";
pub const SESSION_HIT: &str = "hsmgate, cached decision";
pub const SESSION_MISS: &str = "hsmgate, directory asked";
pub const HSMGATE_QUIC: &str = "hsmgate QUIC";
pub const SESSION_QUIC_CONNECTION: &str = "hsmgate QUIC, new connection";
pub const SESSION_QUIC_STREAM: &str = "hsmgate QUIC, new stream";

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}×"),
        _ => "–".into(),
    }
}

impl Report {
    fn latency_of(&self, path: &str, size: usize, concurrency: usize) -> Option<&LatencyRow> {
        self.latency
            .iter()
            .find(|r| r.path == path && r.size == size && r.concurrency == concurrency)
    }

    fn throughput_of(&self, path: &str, concurrency: usize) -> Option<&ThroughputRow> {
        self.throughput
            .iter()
            .find(|r| r.path == path && r.concurrency == concurrency)
    }

    fn session_of(&self, path: &str) -> Option<&SessionRow> {
        self.sessions.iter().find(|r| r.path == path)
    }

    fn idle_of(&self, path: &str) -> Option<&IdleRow> {
        self.idle.iter().find(|r| r.path == path)
    }

    /// Added p50 round trip over the direct path, microseconds.
    fn added_p50(&self, row: &LatencyRow) -> Option<f64> {
        let direct = self.latency_of(DIRECT, row.size, row.concurrency)?;
        Some(row.rtt.p50_us - direct.rtt.p50_us)
    }

    fn slab_added(&self, row: &IdleRow) -> Option<f64> {
        let direct = self.idle_of(DIRECT)?;
        Some(row.slab_per_session_bytes - direct.slab_per_session_bytes)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "## hsmgate-bench results\n");
        let _ = writeln!(
            s,
            "- date: {}\n- commit: `{}`\n- machine: {} vCPU ({}), {} MiB, Linux {}\n- command: `{}`\n- mode: {}, {:.1} s per measured run\n- proxies: {}; {}; {} thread(s) each, {}; gateway log level `{}`",
            m.date,
            m.commit,
            m.machine.nproc,
            m.machine.cpu,
            m.machine.memory_mib,
            m.machine.kernel,
            m.command,
            m.mode,
            m.seconds_per_run,
            m.hsmgate,
            m.haproxy.as_deref().unwrap_or("HAProxy not installed"),
            m.proxy_threads,
            m.placement,
            m.gateway_log,
        );
        self.targets_md(&mut s);
        self.sessions_md(&mut s);
        self.latency_md(&mut s);
        self.throughput_md(&mut s);
        self.quic_md(&mut s);
        self.idle_md(&mut s);
        self.pkcs11_md(&mut s);
        self.rest_md(&mut s);
        self.stores_md(&mut s);
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n### Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    fn stores_md(&self, s: &mut String) {
        if self.stores.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### stores: signatures through the whole path, HSM node on its software store vs a SoftHSM2 token\n\n\
             | key | sessions | software signs/s | p50 ms | p99 ms | SoftHSM2 signs/s | p50 ms | p99 ms | token ÷ software | errors |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for sw in self.stores.iter().filter(|r| r.store == "software") {
            let Some(tk) = self.stores.iter().find(|r| {
                r.store != "software" && r.key == sw.key && r.concurrency == sw.concurrency
            }) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                sw.key,
                sw.concurrency,
                sw.per_second,
                sw.latency.p50_us / 1000.0,
                sw.latency.p99_us / 1000.0,
                tk.per_second,
                tk.latency.p50_us / 1000.0,
                tk.latency.p99_us / 1000.0,
                tk.per_second / sw.per_second.max(1e-9),
                sw.errors + tk.errors,
            );
        }
    }

    fn pkcs11_md(&self, s: &mut String) {
        if self.pkcs11.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### pkcs11: ECDSA P-256 signatures, PKCS#11 library vs SDK (2 connections each)\n\n\
             | threads | SDK signs/s | p50 ms | p99 ms | library signs/s | p50 ms | p99 ms | library ÷ SDK | errors |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.pkcs11 {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                r.threads,
                r.sdk_per_second,
                r.sdk.p50_us / 1000.0,
                r.sdk.p99_us / 1000.0,
                r.library_per_second,
                r.library.p50_us / 1000.0,
                r.library.p99_us / 1000.0,
                r.library_over_sdk,
                r.errors,
            );
        }
    }

    fn rest_md(&self, s: &mut String) {
        if self.rest.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### rest: P-256 signatures through hsmgate-rest vs the SDK (2 hsmgate sessions each)\n\n\
             HTTP/1.1: a keep-alive connection per caller; HTTP/2: one connection, a stream per request.\n\n\
             | callers | SDK signs/s | p50 ms | p99 ms | REST HTTP/1.1 signs/s | p50 ms | p99 ms | REST HTTP/2 signs/s | p50 ms | p99 ms | HTTP/1.1 ÷ SDK | HTTP/2 ÷ SDK | REST CPU µs/request (1.1, 2) | errors |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.rest {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}, {:.0} | {} |",
                r.callers,
                r.sdk_per_second,
                r.sdk.p50_us / 1000.0,
                r.sdk.p99_us / 1000.0,
                r.http1_per_second,
                r.http1.p50_us / 1000.0,
                r.http1.p99_us / 1000.0,
                r.http2_per_second,
                r.http2.p50_us / 1000.0,
                r.http2.p99_us / 1000.0,
                r.http1_over_sdk,
                r.http2_over_sdk,
                r.rest_cpu_us_http1,
                r.rest_cpu_us_http2,
                r.errors,
            );
        }
    }

    fn sessions_md(&self, s: &mut String) {
        if self.sessions.is_empty() {
            return;
        }
        let mtls_cpu = self
            .session_of(SESSION_HAPROXY_MTLS)
            .and_then(|r| r.proxy_cpu_us_per_session);
        let _ = writeln!(
            s,
            "\n### sessions: new sessions (connect, handshakes, one ping, close)\n\n\
             | path | concurrent | sessions/s | setup p50 ms | p99 ms | p99.9 ms | proxy CPU µs/session | × HAProxy mTLS CPU | cache hit/miss | errors |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.sessions {
            let cache = match (r.cache_hits, r.cache_misses) {
                (Some(h), Some(m)) => format!("{h}/{m}"),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                r.path,
                r.concurrency,
                r.per_second,
                r.setup.p50_us / 1000.0,
                r.setup.p99_us / 1000.0,
                r.setup.p999_us / 1000.0,
                opt(r.proxy_cpu_us_per_session, 0),
                ratio_cell(ratio(r.proxy_cpu_us_per_session, mtls_cpu)),
                cache,
                r.errors,
            );
        }
    }

    fn latency_md(&self, s: &mut String) {
        if self.latency.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### latency: request/response round trips over established sessions (echo backend)\n\n\
             | path | size | sessions | round trips/s | p50 µs | p99 µs | p99.9 µs | added p50 µs | × HAProxy added | × floor added | proxy CPU µs/RT | × HAProxy CPU | × floor CPU |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.latency {
            let added = if r.path == DIRECT {
                None
            } else {
                self.added_p50(r)
            };
            let ha = self.latency_of(HAPROXY, r.size, r.concurrency);
            let floor = self.latency_of(FLOOR, r.size, r.concurrency);
            // Added latency and CPU of this row against another path's row.
            let against = |other: Option<&LatencyRow>| {
                (
                    ratio(added, other.and_then(|o| self.added_p50(o))),
                    ratio(
                        r.proxy_cpu_us_per_round_trip,
                        other.and_then(|o| o.proxy_cpu_us_per_round_trip),
                    ),
                )
            };
            let (vs_added, vs_cpu) = if r.path == HSMGATE {
                against(ha)
            } else {
                (None, None)
            };
            let (vs_floor_added, vs_floor_cpu) = if r.path == HSMGATE || r.path == HAPROXY {
                against(floor)
            } else {
                (None, None)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
                r.path,
                size_label(r.size),
                r.concurrency,
                r.per_second,
                r.rtt.p50_us,
                r.rtt.p99_us,
                r.rtt.p999_us,
                opt(added, 1),
                ratio_cell(vs_added),
                ratio_cell(vs_floor_added),
                opt(r.proxy_cpu_us_per_round_trip, 1),
                ratio_cell(vs_cpu),
                ratio_cell(vs_floor_cpu),
            );
        }
    }

    fn throughput_md(&self, s: &mut String) {
        if self.throughput.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### throughput: bulk bytes client → sink over established sessions\n\n\
             | path | sessions | Gbit/s | × direct | × HAProxy | proxy CPU s/GiB | × HAProxy CPU |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.throughput {
            let direct = self.throughput_of(DIRECT, r.concurrency);
            let ha = self.throughput_of(HAPROXY, r.concurrency);
            let (vs_ha, vs_ha_cpu) = if r.path == HSMGATE {
                (
                    ratio(Some(r.gbit_per_second), ha.map(|h| h.gbit_per_second)),
                    ratio(
                        r.proxy_cpu_seconds_per_gib,
                        ha.and_then(|h| h.proxy_cpu_seconds_per_gib),
                    ),
                )
            } else {
                (None, None)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} | {} |",
                r.path,
                r.concurrency,
                r.gbit_per_second,
                ratio_cell(ratio(
                    Some(r.gbit_per_second),
                    direct.map(|d| d.gbit_per_second)
                )),
                ratio_cell(vs_ha),
                opt(r.proxy_cpu_seconds_per_gib, 2),
                ratio_cell(vs_ha_cpu),
            );
        }
    }

    fn idle_md(&self, s: &mut String) {
        if self.idle.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### idle: established sessions held open after one round trip\n\n\
             | path | sessions | proxy RSS B/session | proxy fds/session | kernel slab B/session (all sockets) | slab added by the proxy B/session |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.idle {
            let added = if r.path == DIRECT {
                None
            } else {
                self.slab_added(r)
            };
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {:.0} | {} |",
                r.path,
                r.opened,
                r.requested,
                opt(r.proxy_rss_per_session_bytes, 0),
                opt(r.proxy_fds_per_session, 1),
                r.slab_per_session_bytes,
                opt(added, 0),
            );
        }
    }

    /// The targets, each with the measured ratio.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let mut push =
            |what: &str, goal: &str, limit: f64, higher_is_better: bool, v: Option<f64>| {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    let met = if higher_is_better {
                        v >= limit
                    } else {
                        v <= limit
                    };
                    out.push(Target {
                        what: what.into(),
                        goal: goal.into(),
                        measured: v,
                        met,
                    });
                }
            };
        for c in self.throughput.iter().filter(|r| r.path == HSMGATE) {
            let ha = self.throughput_of(HAPROXY, c.concurrency);
            push(
                &format!("bulk throughput, {} session(s)", c.concurrency),
                "≥ 1.25 × HAProxy",
                1.25,
                true,
                ratio(Some(c.gbit_per_second), ha.map(|h| h.gbit_per_second)),
            );
            push(
                &format!("proxy CPU per GiB, {} session(s)", c.concurrency),
                "≤ 0.70 × HAProxy",
                0.70,
                false,
                ratio(
                    c.proxy_cpu_seconds_per_gib,
                    ha.and_then(|h| h.proxy_cpu_seconds_per_gib),
                ),
            );
        }
        if let (Some(g), Some(h)) = (
            self.latency_of(HSMGATE, 64, 1),
            self.latency_of(HAPROXY, 64, 1),
        ) {
            push(
                "added p50 round trip, 64 B, 1 session",
                "≤ 0.70 × HAProxy's added",
                0.70,
                false,
                ratio(self.added_p50(g), self.added_p50(h)),
            );
            push(
                "proxy CPU per round trip, 64 B, 1 session",
                "≤ 1.00 × HAProxy",
                1.0,
                false,
                ratio(g.proxy_cpu_us_per_round_trip, h.proxy_cpu_us_per_round_trip),
            );
        }
        for (size, concurrency) in [(64, 1), (64, 64), (16 * 1024, 1), (16 * 1024, 64)] {
            if let (Some(g), Some(f)) = (
                self.latency_of(HSMGATE, size, concurrency),
                self.latency_of(FLOOR, size, concurrency),
            ) {
                push(
                    &format!(
                        "added p50 round trip, {}, {concurrency} session(s), against the floor relay (issue 15)",
                        size_label(size)
                    ),
                    "≤ 1.15 × the floor's added",
                    1.15,
                    false,
                    ratio(self.added_p50(g), self.added_p50(f)),
                );
            }
        }
        if let (Some(g), Some(h)) = (self.idle_of(HSMGATE), self.idle_of(HAPROXY)) {
            push(
                "proxy RSS per idle session",
                "≤ 1.00 × HAProxy",
                1.0,
                false,
                ratio(g.proxy_rss_per_session_bytes, h.proxy_rss_per_session_bytes),
            );
            push(
                "kernel slab added per idle session",
                "≤ 1.00 × HAProxy",
                1.0,
                false,
                ratio(self.slab_added(g), self.slab_added(h)),
            );
        }
        if let (Some(g), Some(h)) = (
            self.session_of(SESSION_HIT),
            self.session_of(SESSION_HAPROXY_MTLS),
        ) {
            push(
                "proxy CPU per new session (cached decision)",
                "≤ 0.25 × HAProxy per mTLS connection",
                0.25,
                false,
                ratio(g.proxy_cpu_us_per_session, h.proxy_cpu_us_per_session),
            );
        }
        if let (Some(q), Some(h)) = (
            self.session_of(SESSION_QUIC_STREAM),
            self.session_of(SESSION_HAPROXY_MTLS),
        ) {
            push(
                "proxy CPU per new session on a new QUIC stream (issue 14)",
                "≤ 0.10 × HAProxy per mTLS connection",
                0.10,
                false,
                ratio(q.proxy_cpu_us_per_session, h.proxy_cpu_us_per_session),
            );
        }
        out
    }

    /// QUIC beside TCP through the same gateway: what a session, a round
    /// trip and a GiB cost on each.
    fn quic_md(&self, s: &mut String) {
        let tcp_session = self.session_of(SESSION_HIT);
        let quic_sessions = [
            self.session_of(SESSION_QUIC_CONNECTION),
            self.session_of(SESSION_QUIC_STREAM),
        ];
        let rtt = (
            self.latency_of(HSMGATE, 64, 1),
            self.latency_of(HSMGATE_QUIC, 64, 1),
        );
        let bulk = (
            self.throughput_of(HSMGATE, 1),
            self.throughput_of(HSMGATE_QUIC, 1),
        );
        if quic_sessions.iter().all(Option::is_none) && rtt.1.is_none() && bulk.1.is_none() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### quic: the same gateway over QUIC and over TCP\n\n\
             | measure | TCP | QUIC | QUIC ÷ TCP |\n| --- | ---: | ---: | ---: |"
        );
        let mut row = |what: &str, tcp: Option<f64>, quic: Option<f64>, digits: usize| {
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} |",
                opt(tcp, digits),
                opt(quic, digits),
                ratio_cell(ratio(quic, tcp))
            );
        };
        let tcp_cpu = tcp_session.and_then(|r| r.proxy_cpu_us_per_session);
        let tcp_rate = tcp_session.map(|r| r.per_second);
        for (label, q) in [
            ("new connection", quic_sessions[0]),
            ("new stream", quic_sessions[1]),
        ] {
            if let Some(q) = q {
                row(
                    &format!("new sessions/s, QUIC {label}"),
                    tcp_rate,
                    Some(q.per_second),
                    0,
                );
                row(
                    &format!("gateway CPU µs per new session, QUIC {label}"),
                    tcp_cpu,
                    q.proxy_cpu_us_per_session,
                    0,
                );
            }
        }
        if let (t, Some(q)) = rtt {
            row(
                "added p50 round trip µs, 64 B, 1 session",
                t.and_then(|t| self.added_p50(t)),
                self.added_p50(q),
                1,
            );
            row(
                "gateway CPU µs per round trip, 64 B, 1 session",
                t.and_then(|t| t.proxy_cpu_us_per_round_trip),
                q.proxy_cpu_us_per_round_trip,
                1,
            );
        }
        if let (t, Some(q)) = bulk {
            row(
                "bulk Gbit/s, 1 session",
                t.map(|t| t.gbit_per_second),
                Some(q.gbit_per_second),
                2,
            );
            row(
                "gateway CPU s per GiB, 1 session",
                t.and_then(|t| t.proxy_cpu_seconds_per_gib),
                q.proxy_cpu_seconds_per_gib,
                2,
            );
        }
    }

    fn targets_md(&self, s: &mut String) {
        let targets = self.targets();
        if targets.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n### Targets (issues 4 and 15), hsmgate ÷ HAProxy or the floor relay in this run\n\n\
             | target | goal | measured | met |\n| --- | --- | ---: | --- |"
        );
        for t in targets {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2}× | {} |",
                t.what,
                t.goal,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
    }
}

/// One target of the issue, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: f64,
    pub met: bool,
}

pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: f64) -> Summary {
        Summary {
            count: 1,
            mean_us: p50,
            p50_us: p50,
            p90_us: p50,
            p99_us: p50,
            p999_us: p50,
            max_us: p50,
        }
    }

    fn lat(path: &str, p50: f64, cpu: Option<f64>) -> LatencyRow {
        LatencyRow {
            path: path.into(),
            size: 64,
            concurrency: 1,
            round_trips: 10,
            seconds: 1.0,
            per_second: 10.0,
            rtt: summary(p50),
            proxy_cpu_seconds: cpu.map(|c| c * 10e-6),
            proxy_cpu_us_per_round_trip: cpu,
        }
    }

    fn report() -> Report {
        Report {
            meta: Meta {
                date: "d".into(),
                commit: "c".into(),
                machine: Machine {
                    nproc: 2,
                    kernel: "k".into(),
                    cpu: "cpu".into(),
                    memory_mib: 1,
                },
                command: "hsmgate-bench".into(),
                mode: "quick".into(),
                seconds_per_run: 1.0,
                proxy_threads: 1,
                placement: "unpinned".into(),
                hsmgate: "hsmgate 0.1.0".into(),
                haproxy: Some("HAProxy 2.6".into()),
                gateway_log: "warn".into(),
            },
            sessions: Vec::new(),
            latency: vec![
                lat(DIRECT, 20.0, None),
                lat(HAPROXY, 60.0, Some(50.0)),
                lat(HSMGATE, 40.0, Some(25.0)),
            ],
            throughput: Vec::new(),
            idle: Vec::new(),
            pkcs11: Vec::new(),
            rest: Vec::new(),
            stores: Vec::new(),
            curves: Vec::new(),
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn latency_ratios_are_against_the_added_latency() {
        let r = report();
        let t = r.targets();
        let added = t
            .iter()
            .find(|t| t.what.starts_with("added p50"))
            .expect("target");
        // (40 - 20) / (60 - 20)
        assert!((added.measured - 0.5).abs() < 1e-9);
        assert!(added.met);
        let md = r.markdown();
        assert!(md.contains("| hsmgate | 64 B | 1 |"), "{md}");
        assert!(md.contains("0.50×"), "{md}");
        assert!(md.contains("- a note"));
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(16384), "16 KiB");
    }
}
