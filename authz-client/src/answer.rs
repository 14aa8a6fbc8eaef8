//! A directory answer, parsed and validated once when it arrives, and the
//! per-connection [`Verdict`] derived from it.
//!
//! The gateway enforces the network check itself on every connection, so a
//! cached answer is keyed by identity only (not by source address): an ALLOW
//! never admits an address outside `allowed_networks`, and a
//! `NETWORK_NOT_ALLOWED` deny cached for one address does not deny another
//! address that the client's networks do allow.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::AuthzError;
use crate::pb;

/// The directory's decision for the identity part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
}

/// Why the directory decided as it did; mirrors `hsmgate.directory.v1.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not given, or a value this gateway does not know (only on denials).
    Unspecified,
    Ok,
    UnknownClient,
    KeyMismatch,
    WrongTenant,
    PartitionNotAllowed,
    NetworkNotAllowed,
    ClientDisabled,
}

impl Reason {
    /// Stable lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::Ok => "ok",
            Reason::UnknownClient => "unknown_client",
            Reason::KeyMismatch => "key_mismatch",
            Reason::WrongTenant => "wrong_tenant",
            Reason::PartitionNotAllowed => "partition_not_allowed",
            Reason::NetworkNotAllowed => "network_not_allowed",
            Reason::ClientDisabled => "client_disabled",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<pb::Reason> for Reason {
    fn from(reason: pb::Reason) -> Self {
        match reason {
            pb::Reason::Unspecified => Reason::Unspecified,
            pb::Reason::Ok => Reason::Ok,
            pb::Reason::UnknownClient => Reason::UnknownClient,
            pb::Reason::KeyMismatch => Reason::KeyMismatch,
            pb::Reason::WrongTenant => Reason::WrongTenant,
            pb::Reason::PartitionNotAllowed => Reason::PartitionNotAllowed,
            pb::Reason::NetworkNotAllowed => Reason::NetworkNotAllowed,
            pb::Reason::ClientDisabled => Reason::ClientDisabled,
        }
    }
}

impl From<Reason> for pb::Reason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::Unspecified => pb::Reason::Unspecified,
            Reason::Ok => pb::Reason::Ok,
            Reason::UnknownClient => pb::Reason::UnknownClient,
            Reason::KeyMismatch => pb::Reason::KeyMismatch,
            Reason::WrongTenant => pb::Reason::WrongTenant,
            Reason::PartitionNotAllowed => pb::Reason::PartitionNotAllowed,
            Reason::NetworkNotAllowed => pb::Reason::NetworkNotAllowed,
            Reason::ClientDisabled => pb::Reason::ClientDisabled,
        }
    }
}

/// A validated directory answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision: Decision,
    pub reason: Reason,
    /// HSM pool serving the partition; non-empty whenever the identity is valid
    /// (ALLOW and `NETWORK_NOT_ALLOWED`).
    pub pool: String,
    pub allowed_networks: Vec<IpNet>,
    /// Most concurrent sessions of this client on one gateway; 0 = unlimited.
    pub max_sessions: u32,
    /// How long the directory lets the gateway reuse this answer.
    pub ttl: Duration,
    /// When it was received (parsed): its lifetime counts from here.
    pub received: std::time::Instant,
}

/// Two answers are equal when the directory said the same thing, whenever
/// each arrived.
impl PartialEq for Answer {
    fn eq(&self, other: &Self) -> bool {
        self.decision == other.decision
            && self.reason == other.reason
            && self.pool == other.pool
            && self.allowed_networks == other.allowed_networks
            && self.max_sessions == other.max_sessions
            && self.ttl == other.ttl
    }
}

impl Eq for Answer {}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// The identity is refused (unknown client, key mismatch, ...).
    Identity(Reason),
    /// The identity is valid but the source address is outside its networks.
    Address,
}

/// What the gateway does with one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { pool: String, max_sessions: u32 },
    Deny(DenyKind),
}

impl Answer {
    /// Parse and validate a response. Anything contradictory or unusable is a
    /// [`AuthzError::BadAnswer`], so that the caller fails closed and nothing
    /// bad is cached.
    pub fn from_response(response: &pb::AuthorizeResponse) -> Result<Self, AuthzError> {
        let decision = match pb::Decision::try_from(response.decision) {
            Ok(pb::Decision::Allow) => Decision::Allow,
            Ok(pb::Decision::Deny) => Decision::Deny,
            Ok(pb::Decision::Unspecified) | Err(_) => {
                return Err(bad(format!(
                    "unspecified or unknown decision {}",
                    response.decision
                )));
            }
        };
        // Proto3 enums are open: an unknown reason on a deny is still a deny.
        let reason = pb::Reason::try_from(response.reason)
            .map(Reason::from)
            .unwrap_or(Reason::Unspecified);
        match (decision, reason) {
            (Decision::Allow, Reason::Ok | Reason::Unspecified) => {}
            (Decision::Allow, other) => {
                return Err(bad(format!("ALLOW with deny reason {other}")));
            }
            (Decision::Deny, Reason::Ok) => return Err(bad("DENY with reason OK".into())),
            (Decision::Deny, _) => {}
        }
        let identity_valid = decision == Decision::Allow || reason == Reason::NetworkNotAllowed;
        if identity_valid && response.pool.is_empty() {
            return Err(bad(format!("{} answer without a pool", reason)));
        }
        let allowed_networks = response
            .allowed_networks
            .iter()
            .map(|text| {
                text.trim()
                    .parse::<IpNet>()
                    .map_err(|e| bad(format!("network {:?}: {e}", bounded(text))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Answer {
            decision,
            reason: if decision == Decision::Allow {
                Reason::Ok
            } else {
                reason
            },
            pool: response.pool.clone(),
            allowed_networks,
            max_sessions: response.max_sessions,
            ttl: Duration::from_secs(u64::from(response.ttl_seconds)),
            received: std::time::Instant::now(),
        })
    }

    /// True when the identity was refused for a reason other than the source
    /// address: such answers are cached only for the short deny TTL.
    pub fn is_identity_deny(&self) -> bool {
        self.decision == Decision::Deny && self.reason != Reason::NetworkNotAllowed
    }

    /// True when `source` lies in one of the allowed networks. IPv4-mapped
    /// IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack sockets) are
    /// compared as the IPv4 address they carry.
    pub fn allows_address(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.allowed_networks
            .iter()
            .any(|net| net.contains(&source))
    }

    /// The decision for one connection from `source`.
    pub fn verdict(&self, source: IpAddr) -> Verdict {
        if self.is_identity_deny() {
            return Verdict::Deny(DenyKind::Identity(self.reason));
        }
        if self.allows_address(source) {
            Verdict::Allow {
                pool: self.pool.clone(),
                max_sessions: self.max_sessions,
            }
        } else {
            Verdict::Deny(DenyKind::Address)
        }
    }
}

fn bad(message: String) -> AuthzError {
    AuthzError::BadAnswer(message)
}

fn bounded(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(
        decision: pb::Decision,
        reason: pb::Reason,
        nets: &[&str],
    ) -> pb::AuthorizeResponse {
        pb::AuthorizeResponse {
            decision: decision as i32,
            reason: reason as i32,
            pool: "default".into(),
            allowed_networks: nets.iter().map(|s| s.to_string()).collect(),
            max_sessions: 4,
            ttl_seconds: 30,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn allow_default() -> Verdict {
        Verdict::Allow {
            pool: "default".into(),
            max_sessions: 4,
        }
    }

    #[test]
    fn parses_an_allow() {
        let answer = Answer::from_response(&response(
            pb::Decision::Allow,
            pb::Reason::Ok,
            &["10.0.0.0/8", "::1/128"],
        ))
        .expect("valid");
        assert_eq!(answer.decision, Decision::Allow);
        assert_eq!(answer.reason, Reason::Ok);
        assert_eq!(answer.allowed_networks.len(), 2);
        assert_eq!(answer.ttl, Duration::from_secs(30));
        assert_eq!(answer.max_sessions, 4);
    }

    #[test]
    fn allow_admits_only_addresses_inside_the_networks() {
        let answer = Answer::from_response(&response(
            pb::Decision::Allow,
            pb::Reason::Ok,
            &["10.0.0.0/8", "::1/128"],
        ))
        .expect("valid");
        assert_eq!(answer.verdict(ip("10.1.2.3")), allow_default());
        assert_eq!(answer.verdict(ip("::1")), allow_default());
        assert_eq!(
            answer.verdict(ip("192.168.0.1")),
            Verdict::Deny(DenyKind::Address)
        );
        assert_eq!(answer.verdict(ip("::2")), Verdict::Deny(DenyKind::Address));
    }

    #[test]
    fn treats_ipv4_mapped_ipv6_as_ipv4() {
        let answer = Answer::from_response(&response(
            pb::Decision::Allow,
            pb::Reason::Ok,
            &["127.0.0.1/32"],
        ))
        .expect("valid");
        assert_eq!(answer.verdict(ip("::ffff:127.0.0.1")), allow_default());
        assert_eq!(
            answer.verdict(ip("::ffff:127.0.0.2")),
            Verdict::Deny(DenyKind::Address)
        );
    }

    #[test]
    fn network_deny_is_re_evaluated_for_each_address() {
        let answer = Answer::from_response(&response(
            pb::Decision::Deny,
            pb::Reason::NetworkNotAllowed,
            &["10.0.0.0/8"],
        ))
        .expect("valid");
        assert!(!answer.is_identity_deny());
        assert_eq!(
            answer.verdict(ip("192.168.1.1")),
            Verdict::Deny(DenyKind::Address)
        );
        assert_eq!(answer.verdict(ip("10.9.9.9")), allow_default());
    }

    #[test]
    fn identity_deny_refuses_every_address() {
        let answer = Answer::from_response(&response(
            pb::Decision::Deny,
            pb::Reason::KeyMismatch,
            &["0.0.0.0/0"],
        ))
        .expect("valid");
        assert!(answer.is_identity_deny());
        assert_eq!(
            answer.verdict(ip("10.0.0.1")),
            Verdict::Deny(DenyKind::Identity(Reason::KeyMismatch))
        );
    }

    #[test]
    fn refuses_an_unparseable_network() {
        let err = Answer::from_response(&response(
            pb::Decision::Allow,
            pb::Reason::Ok,
            &["10.0.0.0/8", "10.0.0.300/8"],
        ))
        .expect_err("bad network");
        assert!(matches!(err, AuthzError::BadAnswer(ref m) if m.contains("10.0.0.300/8")));
    }

    #[test]
    fn refuses_an_unspecified_or_unknown_decision() {
        let mut r = response(pb::Decision::Unspecified, pb::Reason::Ok, &[]);
        assert!(matches!(
            Answer::from_response(&r),
            Err(AuthzError::BadAnswer(_))
        ));
        r.decision = 42;
        assert!(matches!(
            Answer::from_response(&r),
            Err(AuthzError::BadAnswer(_))
        ));
    }

    #[test]
    fn refuses_contradictory_answers() {
        let allow_with_deny_reason = response(
            pb::Decision::Allow,
            pb::Reason::KeyMismatch,
            &["10.0.0.0/8"],
        );
        assert!(Answer::from_response(&allow_with_deny_reason).is_err());
        let deny_ok = response(pb::Decision::Deny, pb::Reason::Ok, &[]);
        assert!(Answer::from_response(&deny_ok).is_err());
        let mut allow_without_pool = response(pb::Decision::Allow, pb::Reason::Ok, &[]);
        allow_without_pool.pool.clear();
        assert!(Answer::from_response(&allow_without_pool).is_err());
    }

    #[test]
    fn unknown_reason_on_a_deny_is_still_a_deny() {
        let mut r = response(pb::Decision::Deny, pb::Reason::Unspecified, &[]);
        r.reason = 99;
        let answer = Answer::from_response(&r).expect("a deny");
        assert_eq!(
            answer.verdict(ip("10.0.0.1")),
            Verdict::Deny(DenyKind::Identity(Reason::Unspecified))
        );
    }
}
