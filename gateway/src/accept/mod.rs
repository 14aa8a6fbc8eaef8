//! Accept and admission: what happens to a connection before anyone knows
//! who it is. The listening sockets ([`listener`]), the PROXY protocol
//! header a load balancer puts in front ([`proxy_protocol`]), the address
//! allow- and deny-lists ([`admission`]), the per-source and per-client
//! limits ([`limits`]) and the budget of connections still in their
//! handshake ([`handshake_slots`]).

pub mod admission;
pub mod handshake_slots;
pub mod limits;
pub mod listener;
pub mod proxy_protocol;
pub mod quic;
