//! The hsmgate client SDK: reach an HSM through an hsmgate gateway.
//!
//! ```text
//! config ─▶ resolve (DNS, shuffle) ─▶ connect (TCP, outer handshake, failover)
//!        ─▶ session (inner end-to-end channel, typed HSM operations)
//! ```
//!
//! [`connect`] resolves the configured gateway, tries its addresses in random
//! order and returns a [`Session`] with one HSM node; its methods (`ping`,
//! `sign`, `encrypt`, …) run HSM operations over the end-to-end channel the
//! gateway cannot read. Every failure is a [`ClientError`] that names the
//! gateway address and phase and maps to a CLI exit code.
#![forbid(unsafe_code)]

pub mod config;
mod connect;
pub mod error;
mod framed;
mod quic;
pub mod resolve;
mod session;

pub use config::{ClientConfig, ConfigError, ConfigFile, ConfigProblem, GatewayAddr, Transport};
pub use connect::{ConnectOptions, connect, connect_addr};
pub use error::{ClientError, Phase};
pub use hsmgate_wire::ops::{
    KeyInfo, KeyRef, KeyType, OaepHash, ObjectInfo, Reply, Request, SignScheme, Status,
};
pub use hsmgate_wire::{Code, KeyFile, PublicKey, StaticKeypair};
pub use quic::{
    QuicBi, QuicConnection, client_endpoint, connect_quic, connect_quic_addr, quic_client_config,
};
pub use session::Session;
