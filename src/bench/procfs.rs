//! CPU time and memory of processes, read from Linux's `/proc`. Elsewhere every reading is
//! `None` and the report says so.

use std::collections::HashMap;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`. It is 100 on every Linux ABI
/// (the kernel converts to it whatever its internal tick is).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds spent by a process so far, if it can be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text)
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Parses utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(text: &str) -> Option<f64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Peak resident set size of this process in MiB (`VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    status_kib("VmHWM:").map(|kib| kib as f64 / 1024.0)
}

/// Current resident set size of this process in MiB (`VmRSS`).
pub fn rss_mib() -> Option<f64> {
    status_kib("VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// Current and peak resident set size of process `pid` in MiB (`VmRSS`, `VmHWM`).
pub fn rss_of(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status_field(&text, "VmRSS:")?.parse::<u64>().ok()?;
    let hwm = status_field(&text, "VmHWM:")?.parse::<u64>().ok()?;
    Some((rss as f64 / 1024.0, hwm as f64 / 1024.0))
}

/// The CPUs process `pid` may run on, as Linux lists them (`Cpus_allowed_list`, e.g. `0-1`):
/// how the report shows a run pinned with `taskset`.
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, "Cpus_allowed_list:").map(str::to_string)
}

fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
}

fn status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field(&text, key).and_then(|n| n.parse().ok())
}

/// The 1-minute load average of the machine.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU seconds of a set of processes at one moment, to subtract from a later reading.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    pub seconds: HashMap<u32, f64>,
}

impl CpuSnapshot {
    pub fn of(pids: &[u32]) -> Self {
        Self {
            seconds: pids
                .iter()
                .filter_map(|&pid| cpu_seconds(pid).map(|s| (pid, s)))
                .collect(),
        }
    }

    /// CPU seconds spent between `earlier` and this snapshot by the processes seen now
    /// (a process that started in between counts whole). `None` when nothing was readable.
    pub fn since(&self, earlier: &CpuSnapshot) -> Option<f64> {
        if self.seconds.is_empty() {
            return None;
        }
        Some(
            self.seconds
                .iter()
                .map(|(pid, now)| (now - earlier.seconds.get(pid).copied().unwrap_or(0.0)).max(0.0))
                .sum(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_a_command_name_with_spaces() {
        let line = "1234 (post gres) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(line), Some(3.0));
    }

    #[test]
    fn own_process_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(own_cpu_seconds().is_some());
            assert!(peak_rss_mib().is_some_and(|m| m > 0.0));
            assert!(rss_of(std::process::id()).is_some_and(|(rss, peak)| rss > 0.0 && peak >= rss));
            assert!(cpus_allowed(std::process::id()).is_some());
        }
    }
}
