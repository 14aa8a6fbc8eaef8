//! hsmgate: the access gateway of a cloud HSM service.
//!
//! The folders follow a connection through the gateway:
//!
//! 1. [`accept`]: listening sockets, the PROXY protocol header, source
//!    address lists and the limits checked before a byte is read;
//! 2. [`session`]: the outer Noise handshake, authorization through the
//!    directory, the grant, and forwarding (splice or copy) to the end;
//! 3. [`upstream`]: the HSM node pools, the choice of a member, health
//!    checks, DNS discovery and the control channels carrying grant keys;
//! 4. [`control`]: configuration and its reloadable snapshot, admin
//!    endpoints and metrics.
//!
//! [`state`] is what every stage reads (the current snapshot, the key, the
//! shared limits, readiness); [`server`] ties the stages together: the
//! accept loops, the background tasks and the drain. See docs/PROTOCOL.md for the bytes and docs/OPERATIONS.md
//! for running it.

pub mod accept;
pub mod control;
pub mod dev;
pub mod error;
pub mod server;
pub mod session;
pub mod state;
pub mod upstream;

// The modules' paths before the folders (the tests, the fuzz targets and
// the benchmarks use them).
pub use accept::{admission, handshake_slots, limits, listener, proxy_protocol};
pub use control::{
    admin, admin_tls, config, directory_tls, keyfile, log_limit, memory, metrics, snapshot,
    thread_cache,
};
pub use session::{forward, handshake};
pub use upstream::{balance, discovery, grants, health, pool};

pub use config::{ConfigError, GatewayConfig};
pub use error::GatewayError;
pub use server::{BoundListener, Gateway};
pub use state::{Readiness, Shared};
