//! How every hsmgate program logs and prints its errors.
//!
//! - Logs go to stderr, as text or JSON lines. Text lines are logfmt-like:
//!   `key=value`, with a value quoted when it holds a space, a quote, an `=`
//!   or nothing, so that a line parser never splits a value.
//! - Colour only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>): a file or journald gets plain text.
//! - [`error_chain`] prints an error and its causes once each, also when an
//!   error's own text already ends with its cause's.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// The log line format, as the programs' `--log-format` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber: stderr, `RUST_LOG` or else `default_filter`
/// (e.g. `"info"`). Calling it twice keeps the first.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .fmt_fields(text_fields())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Colour on a terminal unless `NO_COLOR` is set to something.
pub fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The text lines' field formatter (see the module comment).
pub fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    debug_fn(write_field).delimited(" ")
}

fn write_field(
    w: &mut Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn fmt::Debug,
) -> fmt::Result {
    let text = format!("{value:?}");
    if field.name() == "message" {
        return w.write_str(&text);
    }
    write!(w, "{}={}", field.name(), quoted_if_needed(&text))
}

/// `text` as is when a logfmt parser reads it back whole, else in double
/// quotes with `"` and `\` escaped. A value that is already one quoted
/// string (how `&str` fields are recorded) stays as it is.
pub fn quoted_if_needed(text: &str) -> std::borrow::Cow<'_, str> {
    let already_quoted = text.len() >= 2
        && text.starts_with('"')
        && text.ends_with('"')
        && !text[1..text.len() - 1]
            .replace("\\\\", "")
            .replace("\\\"", "")
            .contains('"');
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if already_quoted || plain {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.push('"');
    std::borrow::Cow::Owned(out)
}

/// `error` and its causes as one line, `outer: cause: root`, each text
/// once: a cause whose text the line already ends with (an error that
/// prints its source itself) is not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Address already in use (os error 98)")
        }
    }
    impl std::error::Error for Leaf {}

    /// Prints its source itself, and names it as its source too.
    #[derive(Debug)]
    struct Repeats(Leaf);
    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:1: {}", self.0)
        }
    }
    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Leaves its source to the chain.
    #[derive(Debug)]
    struct Defers(Leaf);
    impl fmt::Display for Defers {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot listen on 127.0.0.1:1")
        }
    }
    impl std::error::Error for Defers {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_is_printed_once_whoever_prints_it() {
        let want = "cannot listen on 127.0.0.1:1: Address already in use (os error 98)";
        assert_eq!(error_chain(&Repeats(Leaf)), want);
        assert_eq!(error_chain(&Defers(Leaf)), want);
    }

    #[test]
    fn values_with_spaces_quotes_or_equals_are_quoted() {
        assert_eq!(quoted_if_needed("round_robin"), "round_robin");
        assert_eq!(quoted_if_needed("127.0.0.1:2300"), "127.0.0.1:2300");
        assert_eq!(
            quoted_if_needed("round_robin slot 0 of 3"),
            "\"round_robin slot 0 of 3\""
        );
        assert_eq!(quoted_if_needed("a=b"), "\"a=b\"");
        assert_eq!(quoted_if_needed(""), "\"\"");
        assert_eq!(quoted_if_needed("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quoted_if_needed("two\nlines"), "\"two\\nlines\"");
        // Already one quoted string (a &str field): kept.
        assert_eq!(quoted_if_needed("\"acme p\""), "\"acme p\"");
        // Quotes at both ends but not one string: quoted again.
        assert_eq!(quoted_if_needed("\"a\" \"b\""), "\"\\\"a\\\" \\\"b\\\"\"");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }
}
