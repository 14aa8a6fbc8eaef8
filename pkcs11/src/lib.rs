//! `libhsmgate_pkcs11.so`: a PKCS#11 v2.40 provider over hsmgate.
//!
//! Applications that speak PKCS#11 (OpenSSL through a PKCS#11 engine or
//! provider, Java's SunPKCS11, `pkcs11-tool`, python-pkcs11…) load this
//! library and use the HSM partitions their hsmgate client configs name:
//! each partition is a slot with one token. Underneath, each slot keeps a
//! few pipelined connections through a gateway to the partition's HSM
//! nodes, end to end encrypted as for every hsmgate client.
//!
//! ```text
//! entry (extern "C", catch_unwind) ─▶ ffi (pointers in and out)
//!   ─▶ api (one function per PKCS#11 call) ─▶ library (global state,
//!      runtime) · slot (login, connection pool) · session (operations)
//!      · objects (handles, attributes) · sign · cipher · keygen · der
//! ```
//!
//! docs/PKCS11.md is the user's guide: configuration, the PIN, every
//! function and mechanism, the return codes.

pub mod api;
pub mod cipher;
pub mod config;
pub mod der;
pub mod entry;
pub mod error;
pub mod ffi;
pub mod keygen;
pub mod library;
pub mod log;
pub mod mechanism;
pub mod objects;
pub mod session;
pub mod sign;
pub mod slot;

pub use entry::*;
