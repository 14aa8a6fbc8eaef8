//! Upstream: the HSM nodes behind the gateway. Pools and their members
//! ([`pool`]), the choice of a member for a session ([`balance`]), active
//! health checks ([`health`]), members found in DNS ([`discovery`]) and the
//! control channel to each node that carries the grant keys ([`grants`]).

pub mod balance;
pub mod discovery;
pub mod grants;
pub mod health;
pub mod pool;
