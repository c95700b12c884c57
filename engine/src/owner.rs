//! Which process owns something Laminar left behind (a journal's relay row, a file
//! destination's temporary file): a pid and that process's start time, so that a pid
//! the kernel has since given to another process does not pass for the owner.

use std::sync::OnceLock;

/// A process, as Laminar names the owner of what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Its pid.
    pub pid: u32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        static ME: OnceLock<Owner> = OnceLock::new();
        *ME.get_or_init(|| {
            let pid = std::process::id();
            Owner { pid, start: process_start(pid).unwrap_or(0) }
        })
    }

    /// Whether this process is still running (the same pid, started at the same time).
    pub fn alive(&self) -> bool {
        process_start(self.pid) == Some(self.start)
    }
}

/// When process `pid` started (clock ticks after boot), if it is running.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22 of the line, the 20th after the name.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_not() {
        assert!(Owner::me().alive());
        assert!(process_start(u32::MAX).is_none());
        assert!(!Owner { pid: std::process::id(), start: Owner::me().start + 1 }.alive());
    }
}
