//! Host detection and sizing.
//!
//! Laminar sizes itself from what the host offers: the CPUs the process may run on
//! (its affinity mask, not the machine's core count, so containers and `taskset`
//! are respected) and the memory the kernel reports as available. Everything here is
//! a plain reading of `/proc` or a syscall; policy lives with the caller.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::fmt;

mod ethtool;
pub mod host;
pub mod plan;
pub mod socket;
pub mod tune;

pub use ethtool::{offloads, Offloads};

/// Ring entries per worker (and of the io_uring probe).
pub const RING_ENTRIES: u32 = 1024;

/// Upper bound on the default RAM tier, whatever the host has.
pub const RAM_BUFFER_DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// Lower bound on the default RAM tier, so a starved host still makes progress.
pub const RAM_BUFFER_DEFAULT_MIN_BYTES: u64 = 64 << 20;

/// The CPUs this process may run on, in ascending order (from `sched_getaffinity`).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of the set we own; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the bound of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to one CPU. Errors are returned, not fatal: a worker that
/// can't be pinned still works, only with less cache locality.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize);
    // SAFETY: CPU_SET writes inside `set` for cpu < CPU_SETSIZE, asserted above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is initialised and its size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field_bytes(&text, "MemAvailable:")
}

fn meminfo_field_bytes(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// This process's peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    meminfo_field_bytes(&text, "VmHWM:")
}

/// Default size of the RAM tier: a quarter of available memory, clamped to
/// [`RAM_BUFFER_DEFAULT_MIN_BYTES`, `RAM_BUFFER_DEFAULT_MAX_BYTES`].
pub fn default_ram_buffer_bytes() -> u64 {
    let available = mem_available_bytes().unwrap_or(RAM_BUFFER_DEFAULT_MIN_BYTES * 4);
    (available / 4).clamp(RAM_BUFFER_DEFAULT_MIN_BYTES, RAM_BUFFER_DEFAULT_MAX_BYTES)
}

/// A size string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: expected a number with an optional unit, e.g. 512MiB, 64KiB, 1GiB or 1048576")]
pub struct SizeError {
    input: String,
}

/// Parses a byte size such as `512MiB`, `4 GiB`, `64k`, `1.5G` or `1048576`.
/// Units are binary (KiB = 1024); `K`, `M`, `G`, `T` and `KB`, `MB`... mean the same.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError { input: input.to_string() };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    let bytes = num * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Formats a byte count with a binary unit, e.g. `1.50 GiB`.
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.2} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1M").is_err());
    }

    #[test]
    fn meminfo_reads() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   16000000 kB\n";
        assert_eq!(meminfo_field_bytes(text, "MemAvailable:"), Some(16_000_000 * 1024));
    }

    #[test]
    fn affinity_nonempty() {
        assert!(!allowed_cpus().is_empty());
        assert!(default_ram_buffer_bytes() >= RAM_BUFFER_DEFAULT_MIN_BYTES);
        assert!(peak_rss_bytes().unwrap() > 0);
    }

    #[test]
    fn child_usage_is_measured() {
        let child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let (code, usage) = wait_with_usage(child).unwrap();
        assert_eq!(code, 3);
        assert!(usage.max_rss_bytes > 0);
    }

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(512).to_string(), "512 B");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.50 GiB");
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic store, and restoring the default
    // action so that a second Ctrl-C ends the process at once.
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: signal() is async-signal-safe; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

/// Catches the first SIGINT and SIGTERM: they set the returned flag instead of ending
/// the process, so a relay can stop cleanly. A second Ctrl-C ends the process.
pub fn catch_interrupts() -> &'static std::sync::atomic::AtomicBool {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls signal(), both
        // async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
    &INTERRUPTED
}

/// What a finished child process cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChildUsage {
    /// User CPU seconds.
    pub user_seconds: f64,
    /// System CPU seconds.
    pub system_seconds: f64,
    /// Peak resident set size in bytes.
    pub max_rss_bytes: u64,
}

/// CPU seconds (user + system) used so far by the process or thread whose
/// `/proc/.../stat` file is at `stat_path`, e.g. `/proc/1234/stat`.
pub fn stat_cpu_seconds(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Waits for the child and returns its exit code (or -signal) and resource usage, from
/// `wait4`: CPU and peak RSS of exactly that child. Note that Linux counts a child's RSS
/// from before its exec (the forked copy of the parent) in its peak.
pub fn wait_with_usage(child: std::process::Child) -> std::io::Result<(i32, ChildUsage)> {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: plain data; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes for the call's duration.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        code,
        ChildUsage {
            user_seconds: secs(usage.ru_utime),
            system_seconds: secs(usage.ru_stime),
            max_rss_bytes: usage.ru_maxrss as u64 * 1024,
        },
    ))
}
