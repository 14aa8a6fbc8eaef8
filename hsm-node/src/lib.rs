//! The hsmgate HSM node: terminates the end-to-end inner channel
//! (PROTOCOL.md §6) and runs key operations (§7) on a built-in software key
//! store, one per partition.
//!
//! Data flow of a connection: [`server`] (accept, first-stage bound) →
//! [`gatekeeper`] (probe, a gateway's control connection, or the grant that
//! opens a session, checked against [`trust`]) → [`session`] (session slot
//! from [`slots`], inner handshake bound to the grant, request loop) →
//! [`ops`] (the operation) → [`keystore`] (key material, persisted under
//! `state_dir/<partition>/keys.toml`). [`config`] is the TOML file;
//! [`probe`] is the health probe the gateway uses.
//!
//! The gateway's `hsmgate dev` and the end-to-end tests run nodes in-process:
//!
//! ```no_run
//! # async fn demo(config: hsmgate_hsm::HsmConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let key = hsmgate_wire::StaticKeypair::generate()?;
//! let node = Arc::new(hsmgate_hsm::HsmNode::new(config, key)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(node.run(listener, std::future::pending()));
//! # Ok(()) }
//! ```
// No unsafe code but the one FFI call into AWS-LC (`rsa_raw`).
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod conn;
mod control;
pub mod gatekeeper;
pub mod keys;
pub mod keystore;
pub mod metrics;
pub mod ops;
pub mod probe;
#[allow(unsafe_code)]
mod rsa_raw;
pub mod server;
pub mod session;
pub mod slots;
pub mod store;
pub mod token;
pub mod trust;

pub use config::{
    AdminConfig, ConfigError, ConfigProblem, GatewaysConfig, HsmConfig, Limits, PartitionConfig,
    Pkcs11Config, StoreKind,
};
pub use gatekeeper::Gatekeeper;
pub use keystore::{KeyStore, KeyStoreError};
pub use server::{HsmError, HsmNode, Reloaded};
pub use trust::GatewayTrust;
