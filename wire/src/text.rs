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

/// A parser's error message without the values it quotes: config parsers
/// quote the offending value, which may be a secret pasted into the wrong
/// file, and such a message goes to logs. A part in double quotes (a string
/// value) becomes `…`; a part in backticks (a field or variant name) is
/// kept when it looks like a name, short and without a long hex run.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        let (inside, tail) = match after.find(quote) {
            Some(end) => (&after[..end], &after[end..]),
            None => (after, ""),
        };
        if quote == '`' && looks_like_a_name(inside) {
            out.push_str(inside);
        } else {
            out.push('…');
        }
        match tail.strip_prefix(quote) {
            Some(t) => {
                out.push(quote);
                rest = t;
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// A config parser's message made safe to print ([`redact_quoted`]) and,
/// where the bare message leaves a reader guessing, followed by what was
/// expected.
pub fn config_message(message: &str) -> String {
    let redacted = redact_quoted(message.trim_end());
    let hint = if message.contains("invalid socket address syntax") {
        Some(
            "expected IP:port, such as 127.0.0.1:2300 or [::1]:2300 (an IP address, not a host \
             name, and a port 1-65535; for HSM nodes known by name give the pool \
             `dns = \"host:port\"` instead of `members`)",
        )
    } else if message.contains("invalid IP address syntax") {
        Some("expected an IP address, such as 127.0.0.1 or ::1 (not a host name)")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{redacted}: {hint}"),
        None => redacted,
    }
}

/// Whether a word from a config file may be shown in an error: a plain
/// identifier (letters, digits, `_`, `-`, `.`), at most 40 characters, with
/// no run of 16 hex digits (which could be key material).
pub fn looks_like_a_name(s: &str) -> bool {
    let mut hex_run = 0;
    !s.is_empty()
        && s.len() <= 40
        && s.chars().all(|c| {
            hex_run = if c.is_ascii_hexdigit() {
                hex_run + 1
            } else {
                0
            };
            hex_run < 16 && (c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        })
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
    fn redacts_every_quoted_value() {
        assert_eq!(
            redact_quoted("invalid type: string \"00aa\", expected usize"),
            "invalid type: string \"…\", expected usize"
        );
        assert_eq!(
            redact_quoted("unknown field `secret`, expected one of `a`, `b_c`"),
            "unknown field `secret`, expected one of `a`, `b_c`"
        );
        assert_eq!(
            redact_quoted("unknown field `00112233445566778899aabb`"),
            "unknown field `…`"
        );
        assert_eq!(
            redact_quoted("unknown variant `a b`"),
            "unknown variant `…`"
        );
        assert_eq!(redact_quoted("cut \"00aa"), "cut \"…");
        assert_eq!(redact_quoted("nothing quoted"), "nothing quoted");
    }

    #[test]
    fn config_messages_say_what_an_address_looks_like() {
        let m = config_message("invalid socket address syntax\n");
        assert!(
            m.starts_with("invalid socket address syntax: expected IP:port"),
            "{m}"
        );
        assert!(m.contains("dns ="), "{m}");
        assert!(config_message("invalid IP address syntax").contains("127.0.0.1"));
        assert_eq!(config_message("missing field `x`"), "missing field `x`");
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
