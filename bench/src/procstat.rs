//! CPU time and resident memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`,
//! and raising our own open-file limit.

use std::time::Duration;

/// Linux reports `utime`/`stime` in USER_HZ ticks, which is 100 on every architecture.
const TICKS_PER_SEC: u64 = 100;

/// Snapshot of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Resident set size in bytes.
    pub rss: u64,
}

/// Reads `/proc/<pid>` (`"self"` for this process). `None` once the process is gone.
pub fn usage(pid: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields start after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Usage {
        cpu: Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SEC),
        rss: rss_kb * 1024,
    })
}

/// This process.
pub fn own() -> Usage {
    usage("self").unwrap_or_default()
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let u = usage("self").expect("/proc/self");
        assert!(u.rss > 0);
        assert!(raise_nofile() >= 1024);
    }
}
