//! The gateway's side of the directory service: the gRPC API (`pb`), a tonic
//! client ([`DirectoryClient`]), the parsed and validated answer ([`Answer`],
//! [`Verdict`]) and the decision cache ([`DecisionCache`]).
//!
//! Data flow in the gateway: after the outer handshake the `authz` step builds
//! a [`Query`], asks the [`DecisionCache`] (which asks the directory on a miss)
//! and turns the [`Answer`] into a [`Verdict`] for the connection's source
//! address. See docs/PROTOCOL.md §5 for what the gateway tells the client.
//!
//! [`tls`] holds the TLS of the directory link for both ends: the gateway's
//! client config (used by the channel's connector) and the directory's
//! server config, each reloadable from its files.

#![forbid(unsafe_code)]

mod answer;
mod cache;
mod client;
mod connect;
mod error;
pub mod pki;
mod thread;
pub mod tls;

/// Generated messages, client and server of `hsmgate.directory.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("hsmgate.directory.v1");
}

pub use answer::{Answer, Decision, DenyKind, Reason, Verdict};
pub use cache::{CacheConfig, CacheOutcome, DecisionCache};
pub use client::{ClientConfig, DirectoryClient, Query};
pub use connect::{ConnectFailure, ConnectObserver, IgnoreFailures};
pub use error::AuthzError;
pub use thread::ControlThread;
