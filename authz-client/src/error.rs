//! The one error type of the authorization client.
//!
//! Whether the gateway should tell its client to try another gateway is
//! decided here ([`AuthzError::is_retryable`]) and nowhere else. No variant
//! ever carries key material: messages are built from status codes, transport
//! errors and answer fields only.

/// Why a decision could not be obtained from the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// The directory could not be reached or did not answer in time
    /// (connect failure, timeout, gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`, ...).
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// The directory answered, but the answer is unusable (unspecified
    /// decision, unparseable network, missing pool, ...). Never cached.
    #[error("bad answer from directory: {0}")]
    BadAnswer(String),
    /// The directory refused the request itself (gRPC `INVALID_ARGUMENT`,
    /// `PERMISSION_DENIED`, `UNIMPLEMENTED`, ...): a bug or a misconfiguration
    /// on one side, which asking again will not fix.
    #[error("directory rejected the request ({code}): {message}")]
    Rejected { code: String, message: String },
    /// The client configuration is unusable (e.g. a bad endpoint URI).
    #[error("bad directory client configuration: {0}")]
    Config(String),
}

impl AuthzError {
    /// True when the same request may succeed later or through another
    /// gateway instance: the gateway denies with a retryable code.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthzError::Unavailable(_))
    }

    /// Map a gRPC status. Transient codes are `Unavailable`; the rest mean the
    /// directory understood and refused us.
    pub(crate) fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let message = bounded(status.message());
        match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Internal => AuthzError::Unavailable(format!("{:?}: {message}", status.code())),
            code => AuthzError::Rejected {
                code: format!("{code:?}"),
                message,
            },
        }
    }
}

/// Status messages come from the network: keep log lines bounded.
fn bounded(message: &str) -> String {
    const MAX: usize = 200;
    match message.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_is_retryable() {
        let unavailable = AuthzError::from_status(&tonic::Status::unavailable("down"));
        assert!(unavailable.is_retryable());
        let deadline = AuthzError::from_status(&tonic::Status::deadline_exceeded("slow"));
        assert!(deadline.is_retryable());
        let invalid = AuthzError::from_status(&tonic::Status::invalid_argument("bad key"));
        assert!(!invalid.is_retryable());
        assert!(!AuthzError::BadAnswer("x".into()).is_retryable());
    }

    #[test]
    fn bounds_long_status_messages() {
        let long = "a".repeat(1000);
        let err = AuthzError::from_status(&tonic::Status::unavailable(long));
        assert!(err.to_string().len() < 300);
    }
}
