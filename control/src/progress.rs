//! What a running relay shows: a bar on a terminal, one stats line per interval
//! elsewhere (`--stats`, as rclone prints them to a log).
//!
//! Both say the same things in the same words: bytes and rate, objects copied,
//! skipped and failed, attempts retried and refused by a throttling store,
//! `listing...` while the source's listing (and so every total) is still growing,
//! `paused`, `verifying` while a check reads the copies back, and an ETA only once it
//! means something: the listing is done and the rate has had a few seconds to settle.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use laminar_engine::relay::Progress;
use laminar_tuning::HumanBytes;

/// How long the rate must have run before an ETA is shown.
const ETA_AFTER: Duration = Duration::from_secs(5);

static STATS_EVERY: OnceLock<Option<Duration>> = OnceLock::new();

/// Sets the interval of stats lines when standard error is not a terminal (None:
/// none); the first call wins.
pub fn set_stats_interval(every: Option<Duration>) {
    let _ = STATS_EVERY.set(every);
}

fn stats_interval() -> Option<Duration> {
    STATS_EVERY.get().copied().unwrap_or(Some(Duration::from_secs(60)))
}

/// Bytes to show as done: what was read from the source so far (so that the count
/// moves as bytes stream, not when an object or part lands), never less than what
/// landed and never more than the total. Each term only grows, so neither does this.
pub fn streamed(landed: u64, read: u64, total: u64) -> u64 {
    landed.max(read.min(total))
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Bytes streamed (see [`streamed`]).
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub objects_done: u64,
    pub objects_total: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Attempts retried, both stores together.
    pub retried: u64,
    /// Answers refusing an attempt as one too many, both stores together.
    pub throttled: u64,
    pub listing: bool,
    pub paused: bool,
    /// While a check runs: the objects it has checked.
    pub verifying: Option<u64>,
    pub elapsed: Duration,
}

impl Snapshot {
    pub fn of(p: &Progress, started: Instant) -> Snapshot {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let bytes_total = load(&p.bytes_total);
        Snapshot {
            bytes_done: streamed(load(&p.bytes_done), p.rates.bytes_read(), bytes_total),
            bytes_total,
            objects_done: load(&p.objects_done),
            objects_total: load(&p.objects_total),
            skipped: load(&p.objects_skipped),
            failed: load(&p.objects_failed),
            retried: p.stores.iter().map(|s| load(&s.retries)).sum(),
            throttled: p.stores.iter().map(|s| load(&s.throttled)).sum(),
            listing: !p.listing_done.load(Ordering::Relaxed),
            paused: p.paused.load(Ordering::Relaxed),
            verifying: None,
            elapsed: started.elapsed(),
        }
    }

    /// Average bytes a second so far.
    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes_done as f64 / secs
        } else {
            0.0
        }
    }

    /// The time left at the average rate, once that means something.
    pub fn eta(&self) -> Option<Duration> {
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        let rate = self.rate();
        (!self.listing && !self.paused && self.verifying.is_none() && self.elapsed >= ETA_AFTER && rate > 0.0)
            .then(|| Duration::from_secs((left as f64 / rate).ceil() as u64))
    }

    /// The objects, states and ETA: the bar's message and the tail of a stats line.
    pub fn message(&self) -> String {
        let copied = self.objects_done.saturating_sub(self.skipped);
        let total = if self.listing { format!("{}+", self.objects_total) } else { self.objects_total.to_string() };
        let mut out = format!("{} of {total} objects: {copied} copied, {} skipped", self.objects_done, self.skipped);
        if self.failed > 0 {
            out.push_str(&format!(", {} failed", self.failed));
        }
        if self.retried > 0 {
            out.push_str(&format!(", {} retried", self.retried));
        }
        if self.throttled > 0 {
            out.push_str(&format!(", {} throttled", self.throttled));
        }
        if self.listing {
            out.push_str(", listing...");
        }
        if self.paused {
            out.push_str(", paused");
        }
        if let Some(checked) = self.verifying {
            out.push_str(&format!(", verifying ({checked} checked)"));
        }
        if let Some(eta) = self.eta() {
            out.push_str(&format!(", ETA {}", humantime::format_duration(eta)));
        }
        out
    }

    /// One stats line, for a log.
    pub fn line(&self) -> String {
        let total = if self.listing {
            format!("{}+", HumanBytes(self.bytes_total))
        } else {
            HumanBytes(self.bytes_total).to_string()
        };
        format!(
            "{} of {total}, {}/s, {} elapsed; {}",
            HumanBytes(self.bytes_done),
            HumanBytes(self.rate() as u64),
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs())),
            self.message()
        )
    }
}

/// The progress bar of `laminar relay`, also drawn by `laminar job show --follow`.
pub fn bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// What a check (`laminar check`, the deletions of `laminar sync`) shows while it
/// runs: a spinner with the objects checked on a terminal, a stats line per interval
/// elsewhere, until `done`.
pub fn show_check(progress: &laminar_engine::relay::VerifyProgress, done: &AtomicBool, terminal: bool) {
    let started = Instant::now();
    let line = || {
        let checked = progress.objects_checked.load(Ordering::Relaxed);
        let elapsed = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
        format!("verifying: {checked} objects checked, {elapsed} elapsed")
    };
    if terminal {
        let spinner = indicatif::ProgressBar::new_spinner();
        crate::logs::set_bar(Some(spinner.clone()));
        while !done.load(Ordering::Acquire) {
            spinner.set_message(line());
            spinner.tick();
            std::thread::park_timeout(Duration::from_millis(200));
        }
        crate::logs::set_bar(None);
        spinner.finish_and_clear();
        return;
    }
    stats_lines(started, done, line);
}

/// Logs `line()` as a stats line every `--stats` interval from `started`, until `done`.
fn stats_lines(started: Instant, done: &AtomicBool, line: impl Fn() -> String) {
    let Some(every) = stats_interval() else { return };
    let mut next = started + every;
    while !done.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next {
            tracing::info!("stats: {}", line());
            next += every;
        }
        std::thread::park_timeout(next.saturating_duration_since(now).min(Duration::from_millis(500)));
    }
}

/// Runs `check` with [`show_check`] beside it (unless `quiet`).
pub fn while_checking<T>(
    progress: &std::sync::Arc<laminar_engine::relay::VerifyProgress>,
    quiet: bool,
    check: impl FnOnce() -> T,
) -> T {
    if quiet {
        return check();
    }
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let shown = {
        let (progress, done) = (progress.clone(), done.clone());
        let terminal = std::io::stderr().is_terminal();
        std::thread::spawn(move || show_check(&progress, &done, terminal))
    };
    let out = check();
    // Pairs with the Acquire loads in show_check.
    done.store(true, Ordering::Release);
    shown.thread().unpark();
    let _ = shown.join();
    out
}

/// Draws the bar on a terminal, or prints a stats line per interval elsewhere, until
/// `done`.
pub fn show(progress: &Progress, done: &AtomicBool, terminal: bool) {
    let started = Instant::now();
    if terminal {
        let bar = bar();
        crate::logs::set_bar(Some(bar.clone()));
        while !done.load(Ordering::Acquire) {
            let s = Snapshot::of(progress, started);
            bar.set_length(s.bytes_total);
            bar.set_position(s.bytes_done);
            bar.set_message(s.message());
            std::thread::park_timeout(Duration::from_millis(200));
        }
        crate::logs::set_bar(None);
        bar.finish_and_clear();
        return;
    }
    stats_lines(started, done, || Snapshot::of(progress, started).line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_eta_while_listing_or_too_early_and_one_once_it_means_something() {
        let mut s = Snapshot {
            bytes_done: 10 << 20,
            bytes_total: 40 << 20,
            objects_done: 5,
            objects_total: 20,
            skipped: 2,
            listing: true,
            elapsed: Duration::from_secs(10),
            ..Snapshot::default()
        };
        assert_eq!(s.message(), "5 of 20+ objects: 3 copied, 2 skipped, listing...");
        assert!(s.line().starts_with("10.00 MiB of 40.00 MiB+, 1.00 MiB/s, 10s elapsed; "), "{}", s.line());
        s.listing = false;
        assert_eq!(s.eta(), Some(Duration::from_secs(30)));
        assert!(s.message().ends_with("ETA 30s"), "{}", s.message());
        s.elapsed = Duration::from_secs(2);
        assert_eq!(s.eta(), None, "two seconds say little about the rate");
        s.elapsed = Duration::from_secs(10);
        s.paused = true;
        s.failed = 1;
        assert_eq!(s.message(), "5 of 20 objects: 3 copied, 2 skipped, 1 failed, paused");
        s.paused = false;
        (s.retried, s.throttled) = (7, 4);
        assert!(s.message().starts_with("5 of 20 objects: 3 copied, 2 skipped, 1 failed, 7 retried, 4 throttled, ETA"));
        s.verifying = Some(12);
        assert_eq!(
            s.message(),
            "5 of 20 objects: 3 copied, 2 skipped, 1 failed, 7 retried, 4 throttled, verifying (12 checked)"
        );
    }
}
