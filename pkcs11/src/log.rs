//! The library's own log: one line per event, to the file the config names
//! or to stderr.
//!
//! A library must not install a global `tracing` subscriber in its host
//! process, so it writes its lines itself:
//! `2026-11-27T10:00:00Z hsmgate-pkcs11[1234] WARN message`. Messages never
//! carry key material or PINs; they carry labels, slots and causes.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Where lines go.
pub struct Log {
    level: Level,
    file: Option<Mutex<File>>,
}

impl Log {
    /// Log to stderr at `level`.
    pub fn stderr(level: Level) -> Log {
        Log { level, file: None }
    }

    /// Log to `path` (appended, created 0600 if missing).
    pub fn file(path: &Path, level: Level) -> std::io::Result<Log> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Log {
            level,
            file: Some(Mutex::new(file)),
        })
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    pub fn write(&self, level: Level, message: &str) {
        if !self.enabled(level) {
            return;
        }
        let line = format!(
            "{} hsmgate-pkcs11[{}] {} {}\n",
            utc_now(),
            std::process::id(),
            level.as_str(),
            message
        );
        // A log line that cannot be written is dropped: the application's
        // call must not fail because of its log.
        match &self.file {
            Some(file) => {
                let mut f = file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    pub fn error(&self, message: &str) {
        self.write(Level::Error, message);
    }

    pub fn warn(&self, message: &str) {
        self.write(Level::Warn, message);
    }

    pub fn info(&self, message: &str) {
        self.write(Level::Info, message);
    }

    pub fn debug(&self, message: &str) {
        self.write(Level::Debug, message);
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Seconds since the Unix epoch as an RFC 3339 UTC time (days to civil
/// date by the proleptic Gregorian calendar).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Shift the epoch to 0000-03-01 so that leap days end each 4-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_800_000_000), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn lines_below_the_level_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p11.log");
        let log = Log::file(&path, Level::Warn).unwrap();
        log.info("not this");
        log.warn("this");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(" WARN this\n"), "{text}");
        assert!(!text.contains("not this"), "{text}");
    }
}
