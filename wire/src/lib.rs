//! The hsmgate wire protocol, without I/O.
//!
//! Everything a peer needs to speak hsmgate lives here as pure functions and
//! state machines over byte slices: the frame codec ([`frame`]), static key
//! text forms ([`keys`]), the refusal codes ([`code`]), the outer
//! service-authentication handshake between client and gateway ([`outer`]),
//! the inner end-to-end channel between client and HSM node ([`inner`]) and
//! the HSM request/response messages carried inside it ([`ops`]), and what
//! passes between a gateway and an HSM node: the control channel
//! ([`control`]) and the grant that opens each session ([`grant`]).
//!
//! The byte-level specification is docs/PROTOCOL.md; section numbers in the
//! module comments refer to it. This crate knows no tokio: the gateway, the
//! HSM node and the client SDK drive these state machines over their sockets.
#![forbid(unsafe_code)]

pub mod code;
pub mod control;
pub mod der;
pub mod error;
pub mod frame;
pub mod grant;
pub mod inner;
pub mod keys;
mod noise;
pub mod ops;
pub mod outer;
pub mod quic;
mod reader;
pub mod sealed;
pub mod text;
mod x25519;

pub use code::Code;
pub use error::WireError;
pub use frame::{Frame, FrameType};
pub use keys::{PublicKey, StaticKeypair};
pub use sealed::KeyFile;

/// The Noise protocol name used by both layers (PROTOCOL.md §3, §6).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// The one protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest message Noise allows (bytes), which bounds every frame body.
pub const NOISE_MAX_MESSAGE: usize = 65_535;

/// Authentication tag added by AES-256-GCM to every encrypted Noise payload.
pub const TAG_LEN: usize = 16;
