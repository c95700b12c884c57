//! Event-loop drivers: io_uring where the kernel allows it, epoll otherwise.
//!
//! The probe creates a real ring, so every reason io_uring can be unusable
//! (`kernel.io_uring_disabled`, a seccomp profile, an old kernel, a low memlock
//! limit) is caught before any worker starts, and named in one log line with its fix.

use std::future::Future;

/// Which event loop a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring (monoio's IoUringDriver).
    IoUring,
    /// epoll (monoio's LegacyDriver).
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// io_uring if it works, else epoll with a logged reason.
    #[default]
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll.
    Epoll,
}

impl DriverChoice {
    /// Parses `auto`, `io_uring`/`uring`, `epoll`.
    pub fn parse(s: &str) -> Option<DriverChoice> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(DriverChoice::Auto),
            "io_uring" | "iouring" | "uring" => Some(DriverChoice::IoUring),
            "epoll" | "legacy" => Some(DriverChoice::Epoll),
            _ => None,
        }
    }
}

/// Ring entries per worker.
pub const RING_ENTRIES: u32 = laminar_tuning::RING_ENTRIES;

/// Why io_uring can't be used here, with the fix, or None if it can.
pub fn probe_io_uring() -> Option<String> {
    laminar_tuning::host::probe_io_uring(RING_ENTRIES)
}

/// Resolves the driver to use; the second value is a line to log when falling back.
pub fn select(choice: DriverChoice) -> Result<(Driver, Option<String>), String> {
    match choice {
        DriverChoice::Epoll => Ok((Driver::Epoll, None)),
        DriverChoice::IoUring => match probe_io_uring() {
            None => Ok((Driver::IoUring, None)),
            Some(why) => Err(format!("--driver io_uring was asked for, but {why}")),
        },
        DriverChoice::Auto => match probe_io_uring() {
            None => Ok((Driver::IoUring, None)),
            Some(why) => Ok((Driver::Epoll, Some(format!("using the epoll driver: {why}")))),
        },
    }
}

/// Runs a future to completion on a fresh single-threaded runtime of `driver`.
pub fn block_on<F: Future>(driver: Driver, future: F) -> std::io::Result<F::Output> {
    match driver {
        Driver::IoUring => {
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .enable_timer()
                .build()?;
            Ok(rt.block_on(future))
        }
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
            Ok(rt.block_on(future))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_drivers_run() {
        assert_eq!(block_on(Driver::Epoll, async { 1 + 1 }).unwrap(), 2);
        if probe_io_uring().is_none() {
            assert_eq!(block_on(Driver::IoUring, async { 2 + 2 }).unwrap(), 4);
        }
        use laminar_tuning::host::{explain_uring_error_in as explain, UringContext};
        let err = std::io::Error::from_raw_os_error;
        let bare = UringContext { kernel_has_io_uring: Some(true), io_uring_disabled: Some(0), seccomp: false };
        let filtered = UringContext { seccomp: true, ..bare };
        let disabled = UringContext { io_uring_disabled: Some(2), ..filtered };
        let old = UringContext { kernel_has_io_uring: Some(false), ..filtered };
        // The sysctl is named when it is set, even under a filter.
        assert!(explain(&err(libc::EPERM), &disabled).contains("io_uring_disabled is 2"));
        assert!(explain(&err(libc::EPERM), &filtered).contains("seccomp=unconfined"));
        assert!(!explain(&err(libc::EPERM), &bare).contains("seccomp"));
        // Under a filter ENOSYS is the profile, unless the kernel is too old.
        assert!(explain(&err(libc::ENOSYS), &filtered).contains("seccomp filter"));
        assert!(explain(&err(libc::ENOSYS), &old).contains("older than 5.1"));
        assert!(explain(&err(libc::ENOSYS), &bare).contains("CONFIG_IO_URING"));
        assert!(explain(&err(libc::ENOMEM), &bare).contains("memlock"));
    }
}
