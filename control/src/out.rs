//! Standard output that a closed pipe does not crash: `laminar relay --dry-run | head`
//! ends quietly, as a tool killed by SIGPIPE does, instead of panicking in `println!`.
//!
//! [`outln!`] writes one line. Once the reader is gone (`EPIPE`), every later line is
//! dropped, a relay in progress is stopped as Ctrl-C stops it (without its message),
//! and the process exits with [`EXIT_PIPE`] (128 + SIGPIPE, what a shell shows for a
//! tool SIGPIPE ended). Other write errors (a full disk behind a redirect) are one line
//! on standard error, once.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status once standard output's reader is gone.
pub const EXIT_PIPE: u8 = 141;

static GONE: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Whether standard output's reader has gone.
pub fn gone() -> bool {
    GONE.load(Ordering::Relaxed)
}

/// Writes `line` and a newline to standard output, unless its reader has gone.
pub fn line(line: std::fmt::Arguments<'_>) {
    if gone() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => GONE.store(true, Ordering::Relaxed),
        Err(e) => {
            if !FAILED.swap(true, Ordering::Relaxed) {
                eprintln!("laminar: error: writing to standard output: {e}");
            }
        }
    }
}

/// `println!` for the binary: see the module.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
