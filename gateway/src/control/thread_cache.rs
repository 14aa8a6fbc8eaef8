//! Serving without glibc's per-thread cache of freed memory (tcache).
//!
//! glibc keeps the last chunks each thread freed, per size, and hands them
//! out again before anything else. Under a peak of sessions those chunks
//! lie all over the peak's memory, so the few allocations that outlive the
//! peak (a metric series, a control channel's buffer, a tokio registration
//! list) land scattered over it, and each keeps its page from going back to
//! the system. The soak of docs/RELIABILITY.md measured the gateway's RSS
//! after 9,000 sessions at +12 % of before with the cache, +4 % without.
//! The cost is one uncontended lock per allocation, and a session makes a
//! few hundred: microseconds against the handshake's hundreds.
//!
//! glibc reads its tunables only when a process starts, so the serving
//! commands start their own program once more with
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` added (same process id,
//! same arguments). An operator who sets `glibc.malloc.tcache_count`
//! themselves keeps their value; `HSMGATE_KEEP_TCACHE=1` turns this off.

use std::ffi::{OsStr, OsString};

const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
/// Set on the restarted process: it never restarts again, even where the
/// loader dropped `GLIBC_TUNABLES` (set-user-ID programs).
const RESTARTED: &str = "HSMGATE_TCACHE_OFF";
const KEEP: &str = "HSMGATE_KEEP_TCACHE";

/// The `GLIBC_TUNABLES` value to start with, or `None` to go on as is.
fn tunables_to_set(current: Option<&OsStr>, restarted: bool, keep: bool) -> Option<OsString> {
    if restarted || keep {
        return None;
    }
    match current {
        None => Some(format!("{TCACHE_COUNT}=0").into()),
        Some(value) => {
            let value = value.to_str()?;
            if value.split(':').any(|t| t.starts_with(TCACHE_COUNT)) {
                None
            } else if value.is_empty() {
                Some(format!("{TCACHE_COUNT}=0").into())
            } else {
                Some(format!("{value}:{TCACHE_COUNT}=0").into())
            }
        }
    }
}

/// Start this program again without the thread cache, unless it runs so
/// already; returns only when it does not restart (or the restart failed,
/// which is said on stderr: the gateway then serves with the cache).
pub fn restart_without_thread_cache() {
    if !cfg!(target_env = "gnu") {
        return;
    }
    let Some(tunables) = tunables_to_set(
        std::env::var_os(TUNABLES).as_deref(),
        std::env::var_os(RESTARTED).is_some(),
        std::env::var_os(KEEP).is_some_and(|v| v == "1"),
    ) else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // The program's own path rather than /proc/self/exe, so that the
    // process keeps its name (`ps`, `top`, `pgrep hsmgate`).
    let program = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!(
                "hsmgate: cannot find this program ({error}); serving with glibc's thread cache"
            );
            return;
        }
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "hsmgate".into());
    let error = std::process::Command::new(program)
        .arg0(argv0)
        .args(args)
        .env(TUNABLES, tunables)
        .env(RESTARTED, "1")
        .exec();
    eprintln!("hsmgate: could not restart without glibc's thread cache ({error}); serving with it");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(current: Option<&str>) -> Option<String> {
        tunables_to_set(current.map(OsStr::new), false, false)
            .map(|v| v.into_string().expect("UTF-8"))
    }

    #[test]
    fn adds_the_setting_to_what_is_there() {
        assert_eq!(set(None).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(
            set(Some("")).as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            set(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
    }

    #[test]
    fn an_operators_own_value_is_kept() {
        assert_eq!(set(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            set(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3")),
            None
        );
    }

    #[test]
    fn never_restarts_twice_or_when_told_not_to() {
        assert_eq!(tunables_to_set(None, true, false), None);
        assert_eq!(tunables_to_set(None, false, true), None);
    }
}
