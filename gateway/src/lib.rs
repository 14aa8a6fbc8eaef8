//! hsmgate: the access gateway of a cloud HSM service.
//!
//! A connection goes through [`server`] (accept, connection limit, source
//! address lists), [`handshake`] (the outer Noise handshake), [`session`]
//! (authorization through the directory, HSM connect, the grant) and
//! [`forward`] (splice or copy until either side closes). See
//! docs/PROTOCOL.md for the bytes and docs/OPERATIONS.md for running it.

pub mod admin;
pub mod admin_tls;
pub mod admission;
pub mod balance;
pub mod config;
pub mod dev;
pub mod directory_tls;
pub mod discovery;
pub mod forward;
pub mod grants;
pub mod handshake;
pub mod handshake_slots;
pub mod health;
pub mod keyfile;
pub mod limits;
pub mod listener;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod pool;
pub mod proxy_protocol;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod thread_cache;

pub use config::{ConfigError, GatewayConfig};
pub use server::{BoundListener, Gateway, GatewayError, Readiness};
