//! Errors as RFC 9457 problem details (`application/problem+json`): a
//! stable `type` per kind of error, the HTTP status that goes with it, a
//! short title and a detail for this occurrence. A detail never carries a
//! token, a key or request data.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use hsmgate_client::{ClientError, Status};

/// The kinds of error, each with its `type` URI and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MalformedRequest,
    InvalidArgument,
    Unauthenticated,
    Forbidden,
    RouteNotFound,
    PartitionNotFound,
    KeyNotFound,
    CertificateNotFound,
    MethodNotAllowed,
    LabelInUse,
    PartitionFull,
    BodyTooLarge,
    UnsupportedMediaType,
    DecryptionFailed,
    RateLimited,
    UnsupportedOperation,
    HsmError,
    HsmUnavailable,
    Timeout,
    Draining,
}

impl Kind {
    /// The last part of the `type` URI and the metric label.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::MalformedRequest => "malformed-request",
            Kind::InvalidArgument => "invalid-argument",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Forbidden => "forbidden",
            Kind::RouteNotFound => "route-not-found",
            Kind::PartitionNotFound => "partition-not-found",
            Kind::KeyNotFound => "key-not-found",
            Kind::CertificateNotFound => "certificate-not-found",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::LabelInUse => "label-in-use",
            Kind::PartitionFull => "partition-full",
            Kind::BodyTooLarge => "body-too-large",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::DecryptionFailed => "decryption-failed",
            Kind::RateLimited => "rate-limited",
            Kind::UnsupportedOperation => "unsupported-operation",
            Kind::HsmError => "hsm-error",
            Kind::HsmUnavailable => "hsm-unavailable",
            Kind::Timeout => "timeout",
            Kind::Draining => "draining",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Kind::MalformedRequest | Kind::InvalidArgument => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::RouteNotFound
            | Kind::PartitionNotFound
            | Kind::KeyNotFound
            | Kind::CertificateNotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::LabelInUse | Kind::PartitionFull => StatusCode::CONFLICT,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::DecryptionFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::UnsupportedOperation => StatusCode::NOT_IMPLEMENTED,
            Kind::HsmError => StatusCode::BAD_GATEWAY,
            Kind::HsmUnavailable | Kind::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::MalformedRequest => "The request is not well-formed",
            Kind::InvalidArgument => "An argument is not valid for this operation",
            Kind::Unauthenticated => "No valid credentials",
            Kind::Forbidden => "Not allowed for this partition",
            Kind::RouteNotFound => "No such resource",
            Kind::PartitionNotFound => "This service does not serve the partition",
            Kind::KeyNotFound => "No key with that label",
            Kind::CertificateNotFound => "No certificate with that label",
            Kind::MethodNotAllowed => "Method not allowed on this resource",
            Kind::LabelInUse => "The label is in use",
            Kind::PartitionFull => "The partition is full",
            Kind::BodyTooLarge => "The request body is too large",
            Kind::UnsupportedMediaType => "The body must be application/json",
            Kind::DecryptionFailed => "The ciphertext or its associated data did not authenticate",
            Kind::RateLimited => "Too many requests",
            Kind::UnsupportedOperation => "The HSM does not support this operation",
            Kind::HsmError => "The HSM failed internally",
            Kind::HsmUnavailable => "The HSM path is unavailable",
            Kind::Timeout => "The request did not finish in time",
            Kind::Draining => "The service is shutting down",
        }
    }

    pub fn type_uri(self) -> String {
        format!("urn:hsmgate:problem:{}", self.slug())
    }
}

/// One problem, ready to become a response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: Kind,
    pub detail: String,
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate` of a 401.
    pub challenge: Option<String>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            detail: detail.into(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Problem {
        self.retry_after = Some(secs);
        self
    }

    pub fn challenge(mut self, value: String) -> Problem {
        self.challenge = Some(value);
        self
    }

    pub fn response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "type": self.kind.type_uri(),
            "title": self.kind.title(),
            "status": self.kind.status().as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = &self.challenge
            && let Ok(v) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }

    /// The problem for an SDK error: an HSM status, a local argument
    /// check, or the path to the HSM failing.
    pub fn of_client(error: &ClientError) -> Problem {
        match error {
            ClientError::Operation { status, .. } => {
                let kind = match status {
                    Status::NotFound => Kind::KeyNotFound,
                    Status::InvalidArgument => Kind::InvalidArgument,
                    Status::AlreadyExists => Kind::LabelInUse,
                    Status::CryptoFailed => Kind::DecryptionFailed,
                    Status::Internal => Kind::HsmError,
                    Status::Unsupported => Kind::UnsupportedOperation,
                    Status::LimitReached => Kind::PartitionFull,
                };
                Problem::new(kind, status.to_string())
            }
            ClientError::InvalidInput(reason) => {
                Problem::new(Kind::InvalidArgument, reason.clone())
            }
            ClientError::Timeout {
                phase: hsmgate_client::Phase::Request,
                ..
            } => Problem::new(Kind::Timeout, "the HSM did not answer in time"),
            ClientError::Refused {
                retry_after_secs, ..
            } if *retry_after_secs > 0 => Problem::new(
                Kind::HsmUnavailable,
                "the gateway refused the session; try again later",
            )
            .retry_after(u64::from(*retry_after_secs)),
            _ => Problem::new(
                Kind::HsmUnavailable,
                "no session with an HSM node could be used; try again later",
            )
            .retry_after(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_problem_json_with_its_status_and_headers() {
        let r = Problem::new(Kind::RateLimited, "slow down")
            .retry_after(2)
            .response();
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn every_hsm_status_has_its_problem() {
        let addr = "127.0.0.1:1".parse().unwrap();
        for (status, code) in [
            (Status::NotFound, 404),
            (Status::AlreadyExists, 409),
            (Status::LimitReached, 409),
            (Status::InvalidArgument, 400),
            (Status::CryptoFailed, 422),
            (Status::Unsupported, 501),
            (Status::Internal, 502),
        ] {
            let e = ClientError::Operation {
                addr,
                hsm_id: "h".into(),
                status,
            };
            assert_eq!(Problem::of_client(&e).kind.status(), code, "{status:?}");
        }
        let closed = ClientError::Closed {
            addr,
            phase: hsmgate_client::Phase::Request,
        };
        let p = Problem::of_client(&closed);
        assert_eq!((p.kind.status().as_u16(), p.retry_after), (503, Some(1)));
    }
}
