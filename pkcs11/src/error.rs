//! From the SDK's errors to PKCS#11 return codes (docs/PKCS11.md, "Return
//! codes").
//!
//! - Denied by the gateway or the HSM node (authentication, source address,
//!   partition not granted, untrusted peer key): `CKR_TOKEN_NOT_PRESENT`,
//!   since the partition's token is not available to this client.
//! - No gateway or node could serve, after the SDK's failover and retries:
//!   `CKR_DEVICE_ERROR`.
//! - An operation the HSM refused maps by its status: unknown key
//!   (`not_found`) to the handle code the caller chose, and so on.

use cryptoki_sys::*;
use hsmgate_client::error::EXIT_DENIED;
use hsmgate_client::{ClientError, ConfigError, Status};

/// The PKCS#11 code for a failed SDK call. `not_found` is the code for an
/// unknown label (`CKR_KEY_HANDLE_INVALID` or `CKR_OBJECT_HANDLE_INVALID`,
/// depending on the function).
pub fn rv_of(e: &ClientError, not_found: CK_RV) -> CK_RV {
    match e {
        ClientError::Operation { status, .. } => match status {
            Status::NotFound => not_found,
            Status::InvalidArgument => CKR_ARGUMENTS_BAD,
            Status::AlreadyExists => CKR_ATTRIBUTE_VALUE_INVALID,
            Status::CryptoFailed => CKR_ENCRYPTED_DATA_INVALID,
            Status::Internal => CKR_DEVICE_ERROR,
            Status::Unsupported => CKR_FUNCTION_NOT_SUPPORTED,
            Status::LimitReached => CKR_DEVICE_MEMORY,
        },
        ClientError::Config(ConfigError::Locked { .. }) => CKR_USER_NOT_LOGGED_IN,
        ClientError::Config(_) => CKR_GENERAL_ERROR,
        ClientError::InvalidInput(_) => CKR_ARGUMENTS_BAD,
        e if e.exit_code() == EXIT_DENIED => CKR_TOKEN_NOT_PRESENT,
        _ => CKR_DEVICE_ERROR,
    }
}

/// Whether the request certainly did not reach the HSM, or was of a kind
/// that may run twice: then one retry on a fresh connection is safe.
pub fn worth_retrying(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::SessionBroken { .. } | ClientError::Closed { .. } | ClientError::Io { .. }
    )
}

/// The name of a return code, for log lines.
pub fn rv_name(rv: CK_RV) -> String {
    let name = match rv {
        CKR_OK => "CKR_OK",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
        CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
        CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
        CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        _ => return format!("0x{rv:08x}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmgate_client::Code;
    use std::net::SocketAddr;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn denials_unavailability_and_statuses_have_their_codes() {
        let denied = ClientError::Refused {
            addr: addr(),
            code: Code::Denied,
            retry_after_secs: 0,
        };
        assert_eq!(
            rv_of(&denied, CKR_KEY_HANDLE_INVALID),
            CKR_TOKEN_NOT_PRESENT
        );
        let busy = ClientError::Refused {
            addr: addr(),
            code: Code::Unavailable,
            retry_after_secs: 0,
        };
        assert_eq!(rv_of(&busy, CKR_KEY_HANDLE_INVALID), CKR_DEVICE_ERROR);
        let all = ClientError::AllFailed(vec![busy]);
        assert_eq!(rv_of(&all, CKR_KEY_HANDLE_INVALID), CKR_DEVICE_ERROR);
        let gone = ClientError::Operation {
            addr: addr(),
            hsm_id: "h".into(),
            status: Status::NotFound,
        };
        assert_eq!(rv_of(&gone, CKR_KEY_HANDLE_INVALID), CKR_KEY_HANDLE_INVALID);
        assert_eq!(
            rv_of(&gone, CKR_OBJECT_HANDLE_INVALID),
            CKR_OBJECT_HANDLE_INVALID
        );
        assert_eq!(rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(0x1234), "0x00001234");
    }
}
