//! What the kernel says a process costs: CPU time from `/proc/PID/stat`,
//! resident memory from `/proc/PID/status`, and the system-wide kernel slab
//! from `/proc/meminfo` (sockets and pipes live there, not in a proxy's RSS).
//!
//! CPU time comes in clock ticks (`getconf CLK_TCK`, 100 Hz on Linux), so a
//! measurement is good to 10 ms: runs last seconds, not milliseconds.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time of every thread, exited ones included.
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Read CPU time and RSS of `pid`.
pub fn usage(pid: u32) -> io::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/PID/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = parse_kib_field(&status, "VmRSS:").ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status")
    })?;
    Ok(Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64),
        rss_bytes: rss_kib * 1024,
    })
}

/// The kernel's worker threads (`kworker/*`) and the CPU each has used,
/// in clock ticks. The kernel forwarding path (a BPF socket map) sends
/// redirected bytes from a kernel worker, not from the gateway's threads;
/// a proxy's CPU in the byte scenarios adds what these threads used over
/// the same part ([`KernelWorkers::since`]), for every proxy alike.
#[derive(Debug, Clone, Default)]
pub struct KernelWorkers(std::collections::HashMap<u32, u64>);

impl KernelWorkers {
    pub fn now() -> KernelWorkers {
        let mut ticks = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                if stat.contains("(kworker") {
                    ticks.insert(pid, parse_stat_ticks(&stat).unwrap_or(0));
                }
            }
        }
        KernelWorkers(ticks)
    }

    /// CPU the workers used since `earlier`: a worker started since counts
    /// whole; one that exited since takes its time with it (an undercount,
    /// small next to the runs' seconds).
    pub fn since(&self, earlier: &KernelWorkers) -> Duration {
        let ticks: u64 = self
            .0
            .iter()
            .map(|(pid, t)| t.saturating_sub(earlier.0.get(pid).copied().unwrap_or(0)))
            .sum();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    }
}

/// The kernel's slab memory, system-wide (`Slab:` of `/proc/meminfo`).
pub fn slab_bytes() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    parse_kib_field(&meminfo, "Slab:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Slab in /proc/meminfo"))
}

/// `utime + stime` in clock ticks. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3 of the man page, utime 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value of a `Name:   1234 kB` line.
pub fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `getconf CLK_TCK`, read once; 100 if it cannot be run.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// This process's limit on open files (the soft `RLIMIT_NOFILE`, which
/// the proxies it starts inherit).
pub fn open_files_limit() -> io::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    parse_open_files_limit(&limits)
        .ok_or_else(|| io::Error::other("no \"Max open files\" line in /proc/self/limits"))
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Open file descriptors of `pid`, for the report of the idle scenario.
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_even_with_parentheses_in_the_name() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 31 0 0 20 0 2 0 1000 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(281));
    }

    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96000                96000                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20_000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Some(u64::MAX));
        assert_eq!(
            parse_open_files_limit("Max processes 1 1 processes\n"),
            None
        );
    }

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\thsmgate\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_kib_field(status, "VmRSS:"), Some(10240));
        assert_eq!(parse_kib_field(status, "VmHWM:"), None);
    }

    #[test]
    fn measures_this_process() {
        let me = usage(std::process::id()).expect("own /proc entry");
        assert!(me.rss_bytes > 0);
        assert!(slab_bytes().expect("meminfo") > 0);
        assert!(open_fds(std::process::id()).expect("fds") > 0);
    }
}
