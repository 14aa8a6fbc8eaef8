//! hsmgate-bench: the load generator of issue 4, as a library so that its
//! parts are unit-tested; `main.rs` is the thin binary.
//!
//! ```text
//! deploy (directory, HSM nodes, echo/sink, hsmgate and HAProxy processes)
//!   ─▶ scenario (sessions, latency, throughput, idle; driver does the client side;
//!      pkcs11 signs through the PKCS#11 library and the SDK)
//!   ─▶ report (Markdown, JSON) and plot (SVG)
//! ```
//!
//! The criterion micro-benchmarks live in `benches/`.
// No unsafe code but the calls of the PKCS#11 library's C API (`pkcs11`).
#![deny(unsafe_code)]

pub mod backend;
pub mod deploy;
pub mod driver;
pub mod hist;
#[allow(unsafe_code)]
pub mod pkcs11;
pub mod plot;
pub mod procstat;
pub mod quic;
pub mod report;
pub mod rest;
pub mod scenario;
pub mod stores;
pub mod tls;
