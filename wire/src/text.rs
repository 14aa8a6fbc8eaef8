//! Names that travel in the protocol: client ids, tenants, partitions,
//! gateway and HSM ids, key labels (PROTOCOL.md §2.3).
//!
//! They are restricted to a safe ASCII alphabet so that they can be logged,
//! used in file names and compared without any normalisation.

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Check that `bytes` is a valid name and return it as text.
pub fn check_name(bytes: &[u8]) -> Result<&str, &'static str> {
    if bytes.is_empty() {
        return Err("empty name");
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err("name longer than 64 bytes");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("name has a character outside [A-Za-z0-9._-]");
    }
    // The alphabet is ASCII, so this cannot fail; no unwrap on peer input.
    std::str::from_utf8(bytes).map_err(|_| "name is not ASCII")
}

/// Validate a name given by local configuration or an API caller.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    check_name(name.as_bytes()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(validate_name("tenant-a_1.prod").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_names() {
        assert!(validate_name("").is_err());
        assert!(validate_name(&"a".repeat(65)).is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("é").is_err());
    }
}
