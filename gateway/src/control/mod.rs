//! Control: what the gateway runs by, and what it tells its operator. The
//! configuration ([`config`]) and the generation of state built from it
//! ([`snapshot`]), the admin endpoints ([`admin`], [`admin_tls`]) and
//! metrics ([`metrics`]), log rate limits ([`log_limit`]), the directory
//! link's TLS ([`directory_tls`]), the gateway's key file ([`keyfile`]) and
//! its memory after a peak of sessions ([`memory`], [`thread_cache`]).

pub mod admin;
pub mod admin_tls;
pub mod config;
pub mod directory_tls;
pub mod keyfile;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod snapshot;
pub mod thread_cache;
