//! Who is calling, and whether they may use a partition.
//!
//! A listener authenticates in one of two ways (config `auth`): a JWT
//! bearer token ([`jwt`]) or a client certificate ([`cert`]). Either yields
//! a [`Principal`]: a subject for logs and rate limits, a tenant, and the
//! partitions it may use. A partition is allowed when it is in that list
//! and this service serves it for the same tenant.

pub mod cert;
pub mod jwks;
pub mod jwks_fetch;
pub mod jwt;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `jwt:<sub>` or `cert:<matched name>`: never the token itself.
    pub subject: String,
    pub tenant: String,
    pub partitions: Vec<String>,
}

impl Principal {
    pub fn may_use(&self, partition: &str, partition_tenant: &str) -> bool {
        self.tenant == partition_tenant && self.partitions.iter().any(|p| p == partition)
    }
}

/// Why a request was not authenticated (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credentials")]
    Missing,
    #[error("the token is not a well-formed JWS")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("no key of the key set fits the token")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token is not for this audience")]
    Audience,
    #[error("the token lacks a required claim or has one of the wrong type")]
    Claims,
    #[error("the client certificate names no configured identity")]
    UnknownCertificate,
    #[error("too many failed authentications from this address")]
    TooManyFailures,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 12] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Algorithm,
        AuthFailure::UnknownKey,
        AuthFailure::Signature,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Issuer,
        AuthFailure::Audience,
        AuthFailure::Claims,
        AuthFailure::UnknownCertificate,
        AuthFailure::TooManyFailures,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Signature => "signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Audience => "audience",
            AuthFailure::Claims => "claims",
            AuthFailure::UnknownCertificate => "unknown_certificate",
            AuthFailure::TooManyFailures => "too_many_failures",
        }
    }
}
