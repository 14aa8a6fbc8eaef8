//! The one error type of the client SDK, and the two decisions made from it.
//!
//! Every failure says which gateway address it concerns and in which phase it
//! happened, and carries the protocol [`Code`] when the peer sent one. From a
//! [`ClientError`] two things are decided here and nowhere else:
//!
//! - [`ClientError::is_retryable`]: whether trying the next gateway address
//!   may help (drives the failover loop in `connect`);
//! - [`ClientError::exit_code`]: the CLI's exit code class.

use std::net::SocketAddr;

use hsmgate_wire::Code;
use hsmgate_wire::ops::Status;

use crate::config::ConfigError;

/// Exit code: the operation failed at the HSM (or `verify` said invalid).
pub const EXIT_OPERATION_FAILED: u8 = 1;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: denied (authentication, authorization or source address).
pub const EXIT_DENIED: u8 = 3;
/// Exit code: no gateway or HSM could serve.
pub const EXIT_UNAVAILABLE: u8 = 4;

/// Where a connection was when something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect to the gateway.
    Connect,
    /// The outer handshake with the gateway (Hello … Decision).
    OuterHandshake,
    /// The inner handshake with the HSM node, through the gateway.
    InnerHandshake,
    /// An HSM request on an established session.
    Request,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::OuterHandshake => "gateway handshake",
            Phase::InnerHandshake => "HSM handshake",
            Phase::Request => "request",
        })
    }
}

/// Whether a refusal code means "you may not" (as opposed to "not now").
fn is_denial(code: Code) -> bool {
    matches!(
        code,
        Code::Denied | Code::AddressNotAllowed | Code::HandshakeFailed
    )
}

fn refusal_verb(code: Code) -> &'static str {
    if is_denial(code) { "denied" } else { "refused" }
}

fn hsm_name(hsm_id: &Option<String>) -> &str {
    hsm_id.as_deref().unwrap_or("node")
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A caller-supplied argument breaks a protocol limit (label, data size…).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The gateway name could not be resolved to any usable address.
    #[error("cannot resolve gateway {host}: {reason}")]
    Resolve { host: String, reason: String },

    /// TCP connect failed.
    #[error("cannot connect to gateway {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A phase did not finish within its deadline.
    #[error("gateway {addr}: timed out during {phase}")]
    Timeout { addr: SocketAddr, phase: Phase },

    /// The total time budget for all attempts ran out.
    #[error("gave up after {attempts} attempt(s): total time budget of {budget_ms} ms spent")]
    OutOfTime { attempts: usize, budget_ms: u128 },

    /// Reading or writing the connection failed.
    #[error("gateway {addr}: connection error during {phase}: {source}")]
    Io {
        addr: SocketAddr,
        phase: Phase,
        #[source]
        source: std::io::Error,
    },

    /// The peer closed the connection.
    #[error("gateway {addr}: connection closed during {phase}")]
    Closed { addr: SocketAddr, phase: Phase },

    /// The peer sent bytes that do not follow the protocol.
    #[error("gateway {addr}: protocol error during {phase}: {detail}")]
    Protocol {
        addr: SocketAddr,
        phase: Phase,
        detail: String,
    },

    /// The gateway refused (an Error frame or a refusing Decision).
    #[error("{} by gateway {addr}: {code}", refusal_verb(*code))]
    Refused {
        addr: SocketAddr,
        code: Code,
        /// Seconds after which retrying may help; 0 when there is no advice.
        retry_after_secs: u16,
    },

    /// The gateway's static key is not the pinned `gateway_key`.
    #[error(
        "gateway {addr} is not the pinned gateway: it presented {presented}, which is not a pinned gateway key (gateway_key, gateway_keys)"
    )]
    UntrustedGateway {
        addr: SocketAddr,
        presented: hsmgate_wire::PublicKey,
    },

    /// The HSM node's static key is not in `hsm_keys`.
    #[error(
        "HSM node behind gateway {addr} is not trusted: it presented {presented}, which is not in hsm_keys"
    )]
    UntrustedHsm {
        addr: SocketAddr,
        presented: hsmgate_wire::PublicKey,
    },

    /// The HSM side refused after the grant (e.g. the partition key is not
    /// authorized for the partition).
    #[error("{} by HSM {} via gateway {addr}: {code}", refusal_verb(*code), hsm_name(hsm_id))]
    HsmRefused {
        addr: SocketAddr,
        hsm_id: Option<String>,
        code: Code,
    },

    /// The HSM ran the operation and it failed.
    #[error("HSM {hsm_id} (via gateway {addr}): operation failed: {status}")]
    Operation {
        addr: SocketAddr,
        hsm_id: String,
        status: Status,
    },

    /// An earlier request on this session failed at the transport level; the
    /// session cannot be used any more.
    #[error("session with HSM {hsm_id} via gateway {addr} is broken by an earlier error")]
    SessionBroken { addr: SocketAddr, hsm_id: String },

    /// Every gateway address was tried and none could serve.
    #[error("no gateway could serve after {} attempt(s): {}", .0.len(), join_failures(.0))]
    AllFailed(Vec<ClientError>),
}

fn join_failures(failures: &[ClientError]) -> String {
    failures
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The protocol code the peer sent, if there is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused { code, .. } | ClientError::HsmRefused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying the next gateway address may succeed where this failed.
    ///
    /// Transport failures, timeouts, garbage from a peer and retryable codes
    /// (over limit, unavailable, timeout, internal) say "this gateway, not
    /// now"; denials, untrusted keys and local mistakes would fail the same
    /// way everywhere.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Protocol { .. } => true,
            ClientError::Refused { code, .. } | ClientError::HsmRefused { code, .. } => {
                code.is_retryable()
            }
            ClientError::Config(_)
            | ClientError::InvalidInput(_)
            | ClientError::Resolve { .. }
            | ClientError::OutOfTime { .. }
            | ClientError::UntrustedGateway { .. }
            | ClientError::UntrustedHsm { .. }
            | ClientError::Operation { .. }
            | ClientError::SessionBroken { .. }
            | ClientError::AllFailed(_) => false,
        }
    }

    /// The CLI exit code for this error: 1 operation failed at the HSM,
    /// 2 usage or config, 3 denied, 4 unavailable.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Operation { .. } => EXIT_OPERATION_FAILED,
            ClientError::Config(_) | ClientError::InvalidInput(_) => EXIT_USAGE,
            ClientError::UntrustedGateway { .. } | ClientError::UntrustedHsm { .. } => EXIT_DENIED,
            ClientError::Refused { code, .. } | ClientError::HsmRefused { code, .. }
                if is_denial(*code) =>
            {
                EXIT_DENIED
            }
            ClientError::AllFailed(failures) => failures
                .last()
                .map_or(EXIT_UNAVAILABLE, ClientError::exit_code),
            _ => EXIT_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 2300))
    }

    fn refused(code: Code) -> ClientError {
        ClientError::Refused {
            addr: addr(),
            code,
            retry_after_secs: 0,
        }
    }

    #[test]
    fn hsm_operation_failure_exits_1() {
        let e = ClientError::Operation {
            addr: addr(),
            hsm_id: "hsm-1".into(),
            status: Status::NotFound,
        };
        assert_eq!(e.exit_code(), 1);
        assert!(!e.is_retryable());
    }

    #[test]
    fn usage_and_config_errors_exit_2() {
        assert_eq!(ClientError::InvalidInput("label".into()).exit_code(), 2);
        let e = ClientError::Config(ConfigError::Read {
            path: "x.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(e.exit_code(), 2);
        assert!(!e.is_retryable());
    }

    #[test]
    fn denials_exit_3_and_stop_failover() {
        for code in [Code::Denied, Code::AddressNotAllowed, Code::HandshakeFailed] {
            let e = refused(code);
            assert_eq!(e.exit_code(), 3, "{code}");
            assert!(!e.is_retryable(), "{code}");
            let hsm = ClientError::HsmRefused {
                addr: addr(),
                hsm_id: Some("hsm-1".into()),
                code,
            };
            assert_eq!(hsm.exit_code(), 3, "{code}");
        }
        let presented = hsmgate_wire::PublicKey([7; 32]);
        let pin = ClientError::UntrustedGateway {
            addr: addr(),
            presented,
        };
        assert_eq!(pin.exit_code(), 3);
        assert!(!pin.is_retryable());
        assert!(pin.to_string().contains(&presented.to_text()), "{pin}");
        let hsm = ClientError::UntrustedHsm {
            addr: addr(),
            presented,
        };
        assert_eq!(hsm.exit_code(), 3);
        assert!(hsm.to_string().contains(&presented.to_text()), "{hsm}");
    }

    #[test]
    fn retryable_refusals_exit_4_and_move_on() {
        for code in [
            Code::OverLimit,
            Code::Unavailable,
            Code::Timeout,
            Code::Internal,
        ] {
            let e = refused(code);
            assert_eq!(e.exit_code(), 4, "{code}");
            assert!(e.is_retryable(), "{code}");
        }
    }

    #[test]
    fn transport_failures_exit_4_and_move_on() {
        let errors = [
            ClientError::Connect {
                addr: addr(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            },
            ClientError::Timeout {
                addr: addr(),
                phase: Phase::OuterHandshake,
            },
            ClientError::Closed {
                addr: addr(),
                phase: Phase::InnerHandshake,
            },
            ClientError::Protocol {
                addr: addr(),
                phase: Phase::OuterHandshake,
                detail: "empty frame".into(),
            },
        ];
        for e in errors {
            assert_eq!(e.exit_code(), 4, "{e}");
            assert!(e.is_retryable(), "{e}");
        }
        let all = ClientError::AllFailed(vec![refused(Code::Unavailable)]);
        assert_eq!(all.exit_code(), 4);
        assert_eq!(
            ClientError::OutOfTime {
                attempts: 2,
                budget_ms: 10
            }
            .exit_code(),
            4
        );
    }

    #[test]
    fn messages_name_the_gateway_and_the_code() {
        assert_eq!(
            refused(Code::AddressNotAllowed).to_string(),
            "denied by gateway 127.0.0.1:2300: address_not_allowed"
        );
        assert_eq!(
            refused(Code::OverLimit).to_string(),
            "refused by gateway 127.0.0.1:2300: over_limit"
        );
        let hsm = ClientError::HsmRefused {
            addr: addr(),
            hsm_id: Some("hsm-1".into()),
            code: Code::Denied,
        };
        assert_eq!(
            hsm.to_string(),
            "denied by HSM hsm-1 via gateway 127.0.0.1:2300: denied"
        );
        assert_eq!(hsm.code(), Some(Code::Denied));
    }
}
