//! hsmgate-bench: the load generator of issue 4, as a library so that its
//! parts are unit-tested; `main.rs` is the thin binary.
//!
//! ```text
//! deploy (directory, HSM nodes, echo/sink, hsmgate and HAProxy processes)
//!   ─▶ scenario (sessions, latency, throughput, idle; driver does the client side)
//!   ─▶ report (Markdown, JSON) and plot (SVG)
//! ```
//!
//! The criterion micro-benchmarks live in `benches/`.
#![forbid(unsafe_code)]

pub mod backend;
pub mod deploy;
pub mod driver;
pub mod hist;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod tls;
