//! Logs: levels chosen by `-q`/`-v`/`-vv`, timestamped text or JSON lines, on
//! standard error or in a file.
//!
//! Every message the engine and the commands have for the operator is a `tracing`
//! event: errors and warnings (a retried store, a stage that fell back), notes and
//! stats lines at INFO, each object's outcome and each retry at DEBUG (`-v`), each
//! HTTP request and each step of a large object at TRACE (`-vv`). A command's answer (a listing, a report) is not a log:
//! it goes to standard output.
//!
//! On a terminal, a line is written while the progress bar is hidden, so that the two
//! never tear each other (see [`set_bar`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The logging flags every command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// More to say: -v each object's outcome and retry (DEBUG), -vv also each HTTP request (TRACE)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Errors only: no notes, warnings or stats lines
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// The level when neither -v nor -q is given: error, warn, info, debug or trace
    #[arg(long, value_enum, global = true, env = "LAMINAR_LOG", value_name = "LEVEL", ignore_case = true)]
    pub log_level: Option<LevelName>,
    /// text (a timestamp, the level and the message, one a line) or json (one object a line)
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Append logs to this file instead of standard error (created if missing)
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// A level by name, for `--log-level` and `LAMINAR_LOG`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelName {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How a log line is written.
#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-03T07:10:00.123456Z  INFO message key=value`
    #[default]
    Text,
    /// `{"timestamp":"...","level":"INFO","message":"...","key":"value"}`
    Json,
}

impl LogArgs {
    /// The most detailed level written.
    pub fn level(&self) -> LevelFilter {
        let given = match self.log_level {
            None | Some(LevelName::Info) => LevelFilter::INFO,
            Some(LevelName::Error) => LevelFilter::ERROR,
            Some(LevelName::Warn) => LevelFilter::WARN,
            Some(LevelName::Debug) => LevelFilter::DEBUG,
            Some(LevelName::Trace) => LevelFilter::TRACE,
        };
        match (self.quiet, self.verbose) {
            (true, _) => LevelFilter::ERROR,
            (false, 0) => given,
            (false, 1) => LevelFilter::DEBUG,
            (false, _) => LevelFilter::TRACE,
        }
    }
}

/// Where log lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<std::fs::File>>),
}

/// The progress bar on screen, hidden while a line is written.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one log lines are written around (None: none is drawn now).
pub fn set_bar(bar: Option<indicatif::ProgressBar>) {
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = bar;
}

/// One formatted event on its way out: tracing's formatter writes a whole line into
/// it and it goes out in one write when dropped.
struct Line {
    sink: Sink,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // A log that cannot be written has nowhere to say so: the line is dropped.
        match &self.sink {
            Sink::File(file) => {
                let _ = file.lock().unwrap_or_else(|p| p.into_inner()).write_all(&self.buf);
            }
            Sink::Stderr => {
                let write = || {
                    let _ = std::io::stderr().lock().write_all(&self.buf);
                };
                match BAR.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    Some(bar) if !bar.is_hidden() => bar.suspend(write),
                    _ => write(),
                }
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { sink: self.clone(), buf: Vec::with_capacity(256) }
    }
}

/// Where a command's fatal error is said besides the log (see [`fatal`]).
static FATAL_PLAIN: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(FATAL_PLAIN_ONLY);
/// Plain text on standard error, no event: the log is that same standard error.
const FATAL_PLAIN_ONLY: u8 = 0;
/// An event only: JSON lines on standard error.
const FATAL_EVENT_ONLY: u8 = 1;
/// Both: the event in the log file, the plain line on standard error for whoever ran it.
const FATAL_BOTH: u8 = 2;

/// Installs the logger for this process. Events from Laminar's crates are kept up to
/// the level the flags chose; other crates' (TLS, HTTP servers) only from WARN.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let sink = match &args.log_file {
        Some(path) => Sink::File(Arc::new(Mutex::new(open(path)?))),
        None => Sink::Stderr,
    };
    let fatal = match (&sink, args.log_format) {
        (Sink::File(_), _) => FATAL_BOTH,
        (Sink::Stderr, LogFormat::Json) => FATAL_EVENT_ONLY,
        (Sink::Stderr, LogFormat::Text) => FATAL_PLAIN_ONLY,
    };
    FATAL_PLAIN.store(fatal, std::sync::atomic::Ordering::Relaxed);
    let level = args.level();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level.min(LevelFilter::WARN))
        .with_target("laminar_engine", level)
        .with_target("laminar_control", level)
        .with_target("laminar_emulators", level)
        .with_target("laminar_tuning", level)
        .with_target("laminar", level);
    let ansi = matches!(sink, Sink::Stderr) && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(sink).with_target(false);
    let result = match args.log_format {
        LogFormat::Text => tracing_subscriber::registry().with(fmt.with_ansi(ansi)).with(filter).try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_current_span(false).with_span_list(false))
            .with(filter)
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
        format!(
            "--log-file {}: {e}; give a path to a file this user can write, in a directory that exists",
            path.display()
        )
    })
}

/// Says a command's fatal error: on standard error as `laminar: error: MSG` (what a
/// shell user reads), and as an ERROR event where the log is not that (JSON lines, a
/// file).
pub fn fatal(message: &str) {
    let how = FATAL_PLAIN.load(std::sync::atomic::Ordering::Relaxed);
    if how != FATAL_PLAIN_ONLY {
        tracing::error!("{message}");
    }
    if how != FATAL_EVENT_ONLY {
        eprintln!("laminar: error: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_choose_the_level() {
        let at = |quiet, verbose| LogArgs { quiet, verbose, ..LogArgs::default() }.level();
        assert_eq!(at(false, 0), LevelFilter::INFO);
        assert_eq!(at(false, 1), LevelFilter::DEBUG);
        assert_eq!(at(false, 2), LevelFilter::TRACE);
        assert_eq!(at(false, 5), LevelFilter::TRACE);
        assert_eq!(at(true, 0), LevelFilter::ERROR);
        let named = |log_level| LogArgs { log_level: Some(log_level), ..LogArgs::default() };
        assert_eq!(named(LevelName::Warn).level(), LevelFilter::WARN);
        assert_eq!(LogArgs { verbose: 1, ..named(LevelName::Warn) }.level(), LevelFilter::DEBUG, "-v wins");
    }
}
