//! The rates a relay is held to: bytes per second read from its stores (`--bwlimit`,
//! optionally on a weekly timetable, as rclone writes it) and requests per second to
//! them (`--tpslimit`).
//!
//! One [`Rates`] per relay, shared by every worker: each limit is a GCRA (a virtual
//! "next free" time in one atomic), so that a worker pays one compare-and-swap per
//! read or request and never takes a lock or wakes another. A worker over the limit
//! sleeps on its own event loop's timer: the loop goes on serving everything else.
//! Bytes are paced as they are read (after each read, for what it brought), so the
//! source runs at the rate and the destination, fed by it, follows.
//!
//! Both limits can change while the relay runs (`laminar job scale`); the next read
//! or request sees the new value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Nanoseconds since the first use of any limit: the clock the limits share.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One limit, in units per second (bytes, or requests), shared across threads.
#[derive(Debug, Default)]
pub struct RateLimit {
    /// Units per second as `f64` bits; 0.0 (all bits clear) is no limit.
    per_s_bits: AtomicU64,
    /// The GCRA's theoretical arrival time: when the units taken so far would have
    /// gone through at exactly the rate, in [`now_ns`] nanoseconds.
    next_free_ns: AtomicU64,
}

impl RateLimit {
    /// Sets the limit (None: none), from the next use on.
    pub fn set(&self, per_s: Option<f64>) {
        let per_s = per_s.filter(|r| r.is_finite() && *r > 0.0).unwrap_or(0.0);
        // Relaxed: a rate is a value on its own; nothing else is published with it.
        self.per_s_bits.store(per_s.to_bits(), Ordering::Relaxed);
    }

    /// The limit, units per second.
    pub fn get(&self) -> Option<f64> {
        let per_s = f64::from_bits(self.per_s_bits.load(Ordering::Relaxed));
        (per_s > 0.0).then_some(per_s)
    }

    /// Takes `units` at `now` (nanoseconds on the shared clock) and returns how long
    /// the caller must wait for them to be within the rate: zero while the units taken
    /// stay within `burst` of the rate's schedule.
    fn reserve_at(&self, units: u64, now: u64, burst: Duration) -> Duration {
        let Some(per_s) = self.get() else { return Duration::ZERO };
        let cost_ns = (units as f64 * 1e9 / per_s).min(u64::MAX as f64 / 4.0) as u64;
        let burst_ns = burst.as_nanos() as u64;
        let mut next = 0;
        // AcqRel: each reservation builds on the last one, whichever thread made it.
        let _ = self.next_free_ns.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
            next = free.max(now).saturating_add(cost_ns);
            Some(next)
        });
        Duration::from_nanos(next.saturating_sub(now).saturating_sub(burst_ns))
    }

    /// Takes `units` and waits, on the calling event loop's timer, until they are
    /// within the rate. Returns the time waited.
    pub async fn take(&self, units: u64, burst: Duration) -> Duration {
        let wait = self.reserve_at(units, now_ns(), burst);
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
        wait
    }
}

/// What `--bwlimit` says: one rate, or a weekly timetable of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Bwlimit {
    /// In the order given: from when each rate holds (None: off).
    slots: Vec<(Moment, Option<u64>)>,
    /// As the user wrote it, to show back.
    text: String,
}

/// A point in the week: `day` None for every day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moment {
    day: Option<u8>,
    minute: u16,
}

const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MINUTES_PER_DAY: u32 = 24 * 60;

impl Moment {
    /// Minutes into the week (from Sunday 00:00) of this moment on `weekday`, or of
    /// its own day.
    fn minute_of_week(self, weekday: u8) -> u32 {
        u32::from(self.day.unwrap_or(weekday)) * MINUTES_PER_DAY + u32::from(self.minute)
    }
}

impl Bwlimit {
    /// Reads rclone's forms: `10M` (a bare number is KiB/s), `off`, `10M:1M`
    /// (upload:download: a relay moves each byte both ways, so the lower holds), and
    /// a timetable `08:00,512k 12:00,10M 23:00,off` or `Mon-08:00,1M Sat-00:00,off`,
    /// each rate holding from its time until the next.
    pub fn parse(text: &str) -> Result<Bwlimit, String> {
        let trimmed = text.trim();
        let entries: Vec<&str> = trimmed.split_whitespace().collect();
        let bad = |why: String| {
            format!("--bwlimit {text:?}: {why}; give a rate such as 10M (bytes per second; a bare number is KiB/s) or a timetable such as \"08:00,10M 19:00,off\"")
        };
        if entries.is_empty() {
            return Err(bad("empty".into()));
        }
        let timetable = entries.len() > 1 || entries[0].contains(',');
        let mut slots = Vec::with_capacity(entries.len());
        for entry in &entries {
            if !timetable {
                slots.push((Moment { day: None, minute: 0 }, rate(entry).map_err(bad)?));
                continue;
            }
            let (when, what) =
                entry.split_once(',').ok_or_else(|| bad(format!("{entry:?} is not TIME,RATE (e.g. 08:00,10M)")))?;
            slots.push((moment(when).map_err(bad)?, rate(what).map_err(bad)?));
        }
        let weekly = slots.iter().any(|(m, _)| m.day.is_some());
        if weekly && slots.iter().any(|(m, _)| m.day.is_none()) {
            return Err(bad("mix every-day times (08:00) and weekday times (Mon-08:00) in one timetable".into()));
        }
        Ok(Bwlimit { slots, text: trimmed.to_string() })
    }

    /// The rate at `minute` into the day on `weekday` (0 is Sunday), bytes per second.
    pub fn at(&self, weekday: u8, minute: u16) -> Option<u64> {
        let now = Moment { day: Some(weekday), minute }.minute_of_week(weekday);
        // The latest entry at or before now; before every entry, the latest of all
        // (last night's, or last week's).
        let at = |m: &Moment| m.minute_of_week(weekday);
        let started = self.slots.iter().filter(|(m, _)| at(m) <= now).max_by_key(|(m, _)| at(m));
        let latest = || self.slots.iter().max_by_key(|(m, _)| at(m));
        started.or_else(latest).and_then(|(_, r)| *r)
    }

    /// Whether the rate changes with the time.
    pub fn is_timetable(&self) -> bool {
        self.slots.len() > 1 || self.slots.first().is_some_and(|(m, _)| *m != Moment { day: None, minute: 0 })
    }

    /// The rate now, by the machine's local time.
    pub fn now(&self) -> Option<u64> {
        let (weekday, minute) = local_now();
        self.at(weekday, minute)
    }
}

impl std::fmt::Display for Bwlimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What `--tpslimit` says: requests per second (0: no limit, as in rclone).
pub fn tpslimit(per_s: f64) -> Result<Option<f64>, String> {
    if !per_s.is_finite() || per_s < 0.0 {
        return Err(format!("--tpslimit {per_s}: give requests per second, such as 10 or 0.5 (0 for no limit)"));
    }
    Ok((per_s > 0.0).then_some(per_s))
}

/// One rate in rclone's units: `off`, or bytes per second with an optional binary
/// suffix (B, K, M, G, T; KiB and MB are read too), a bare number being KiB/s;
/// `UP:DOWN` takes the lower.
fn rate(text: &str) -> Result<Option<u64>, String> {
    if let Some((up, down)) = text.split_once(':') {
        return Ok(match (rate(up)?, rate(down)?) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }
    let t = text.trim().trim_end_matches("/s");
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bytes = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        t.parse::<f64>().map(|kib| (kib * 1024.0) as u64).map_err(|_| format!("{text:?} is not a rate"))?
    } else {
        let t = t.strip_suffix('i').or_else(|| t.strip_suffix('I')).unwrap_or(t);
        laminar_tuning::parse_size(t).map_err(|_| format!("{text:?} is not a rate"))?
    };
    if bytes == 0 {
        return Err(format!("{text:?} is no rate at all (write off for none)"));
    }
    Ok(Some(bytes))
}

/// `HH:MM` or `Day-HH:MM` (Sun, Mon, ... in any case).
fn moment(text: &str) -> Result<Moment, String> {
    let (day, time) = match text.split_once('-') {
        Some((day, time)) => {
            let Some(d) = DAYS.iter().position(|d| d.eq_ignore_ascii_case(day)) else {
                return Err(format!("{day:?} is not a day: use Sun, Mon, Tue, Wed, Thu, Fri or Sat"));
            };
            (Some(d as u8), time)
        }
        None => (None, text),
    };
    let hm = time.split_once(':').and_then(|(h, m)| Some((h.parse::<u16>().ok()?, m.parse::<u16>().ok()?)));
    match hm {
        Some((h, m)) if h < 24 && m < 60 && time.len() == 5 => Ok(Moment { day, minute: h * 60 + m }),
        _ => Err(format!("{time:?} is not a time of day: write HH:MM, 00:00 to 23:59")),
    }
}

/// The weekday (0 is Sunday) and minute of the day, by the machine's local time.
fn local_now() -> (u8, u16) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = secs as libc::time_t;
    // SAFETY: `tm` is plain old data that localtime_r fills; both pointers are valid
    // for the call, and localtime_r is the thread-safe form.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            // No time zone could be read: UTC.
            let day = secs / 86_400;
            return (((day + 4) % 7) as u8, ((secs % 86_400) / 60) as u16);
        }
        tm
    };
    (tm.tm_wday as u8, (tm.tm_hour * 60 + tm.tm_min) as u16)
}

/// Bytes a read may take ahead of the rate (its burst): reads are paced after they
/// land, so one read's worth goes unpaced at most this far.
const BYTES_BURST: Duration = Duration::from_millis(50);
/// The longest a timetable's rate goes unlooked-at.
const TIMETABLE_LOOK_NS: u64 = 10_000_000_000;
/// The smallest read while bytes are limited (so that a low rate is not paid for in
/// many tiny reads).
const PACED_READ_BYTES_MIN: usize = 16 << 10;

/// A relay's limits, read by every worker's HTTP client and file reads.
#[derive(Debug, Default)]
pub struct Rates {
    /// Bytes per second read, across the relay.
    pub bytes: RateLimit,
    /// Requests per second sent, across the relay.
    pub requests: RateLimit,
    /// The `--bwlimit` in force, which sets `bytes` (by the clock, for a timetable).
    bwlimit: Mutex<Option<Bwlimit>>,
    /// When a timetable's rate is next looked at, on the shared clock; u64::MAX when
    /// there is no timetable.
    look_at_ns: AtomicU64,
    /// Time workers spent waiting for either limit, summed, in nanoseconds.
    waited_ns: AtomicU64,
    /// Requests sent, what `requests` limits.
    requests_sent: AtomicU64,
    /// Object bytes read, what `bytes` limits.
    bytes_read: AtomicU64,
    /// Set once either limit was set: a relay's options then no longer replace them.
    set: std::sync::atomic::AtomicBool,
}

impl Rates {
    /// Puts the limits a relay's options give in force, unless they were set already
    /// (by an operator, before the relay started).
    pub fn start_with(&self, bwlimit: Option<Bwlimit>, tpslimit: Option<f64>) {
        // Relaxed: set and read under the relay's start, on one thread.
        if !self.set.load(Ordering::Relaxed) {
            self.set_bwlimit(bwlimit);
            self.set_tpslimit(tpslimit);
        }
    }

    /// Puts `bwlimit` in force (None: no limit).
    pub fn set_bwlimit(&self, bwlimit: Option<Bwlimit>) {
        self.set.store(true, Ordering::Relaxed);
        let mut held = self.bwlimit.lock().expect("bwlimit lock");
        self.bytes.set(bwlimit.as_ref().and_then(Bwlimit::now).map(|b| b as f64));
        let look =
            if bwlimit.as_ref().is_some_and(Bwlimit::is_timetable) { now_ns() + TIMETABLE_LOOK_NS } else { u64::MAX };
        // Relaxed: the rate itself is stored above; a late look only re-reads it.
        self.look_at_ns.store(look, Ordering::Relaxed);
        *held = bwlimit;
    }

    /// The `--bwlimit` in force, as given.
    pub fn bwlimit(&self) -> Option<Bwlimit> {
        self.bwlimit.lock().expect("bwlimit lock").clone()
    }

    /// Sets the requests-per-second limit (None: none).
    pub fn set_tpslimit(&self, per_s: Option<f64>) {
        self.set.store(true, Ordering::Relaxed);
        self.requests.set(per_s);
    }

    /// Time workers have waited for the limits so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// The most a read should ask for now: under a byte limit, a tenth of a second's
    /// worth (so that no one read runs far ahead of the rate).
    pub fn read_bytes_max(&self) -> usize {
        match self.bytes.get() {
            Some(per_s) => ((per_s / 10.0) as usize).max(PACED_READ_BYTES_MIN),
            None => usize::MAX,
        }
    }

    /// Object bytes read so far and let through by the byte limit, every attempt's
    /// (what a progress display counts as streamed before the object lands).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes read and waits until they are within the byte limit.
    pub async fn read(&self, n: usize) -> Duration {
        self.look_at_timetable();
        let waited = self.bytes.take(n as u64, BYTES_BURST).await;
        // Counted once the limit lets them go on, as the relay gets them. Relaxed: a
        // count on its own, read for display; one add per chunk read.
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        self.count(waited)
    }

    /// Requests sent so far (what `--tpslimit` limits).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    /// Counts one more request and waits for room for it under the requests limit.
    pub async fn request(&self) -> Duration {
        // Relaxed: a count on its own, read for metrics.
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        let Some(per_s) = self.requests.get() else { return Duration::ZERO };
        // A burst of one request, as rclone's --tpslimit-burst 1.
        let waited = self.requests.take(1, Duration::from_secs_f64(1.0 / per_s)).await;
        self.count(waited)
    }

    fn count(&self, waited: Duration) -> Duration {
        if !waited.is_zero() {
            self.waited_ns.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        }
        waited
    }

    /// Sets the byte rate from the timetable when it is time to look again.
    fn look_at_timetable(&self) {
        // Relaxed: see `set_bwlimit`.
        if now_ns() < self.look_at_ns.load(Ordering::Relaxed) {
            return;
        }
        let held = self.bwlimit.lock().expect("bwlimit lock");
        if let Some(b) = held.as_ref().filter(|b| b.is_timetable()) {
            self.bytes.set(b.now().map(|r| r as f64));
            self.look_at_ns.store(now_ns() + TIMETABLE_LOOK_NS, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rates_read_as_rclone_writes_them() {
        let one = |t: &str| Bwlimit::parse(t).unwrap().at(1, 0);
        assert_eq!(one("10M"), Some(10 * MIB));
        assert_eq!(one("512"), Some(512 << 10), "a bare number is KiB/s");
        assert_eq!(one("1.5G"), Some(3 * MIB * 512));
        assert_eq!(one("100MiB"), Some(100 * MIB));
        assert_eq!(one("10Mi"), Some(10 * MIB));
        assert_eq!(one("off"), None);
        assert_eq!(one("10M:1M"), Some(MIB), "upload:download, the lower holds");
        assert_eq!(one("off:2M"), Some(2 * MIB));
        assert!(!Bwlimit::parse("10M").unwrap().is_timetable());
        for bad in ["", "fast", "0", "25:00,1M", "08:00", "Noday-08:00,1M", "08:00,1M Mon-09:00,2M", "8:0,1M"] {
            let e = Bwlimit::parse(bad).unwrap_err();
            assert!(e.starts_with("--bwlimit") && !e.contains('\n'), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_timetable_holds_each_rate_until_the_next_and_wraps_round() {
        let b = Bwlimit::parse("08:00,512k 12:00,10M 19:00,off").unwrap();
        assert!(b.is_timetable());
        let at = |h: u16, m: u16| b.at(3, h * 60 + m);
        assert_eq!(at(7, 59), None, "before the first entry, last night's holds");
        assert_eq!(at(8, 0), Some(512 << 10));
        assert_eq!(at(11, 59), Some(512 << 10));
        assert_eq!(at(12, 0), Some(10 * MIB));
        assert_eq!(at(19, 0), None);
        let weekly = Bwlimit::parse("Mon-00:00,512 Fri-23:59,10M Sat-10:00,1M Sun-20:00,off").unwrap();
        assert_eq!(weekly.at(0, 19 * 60), Some(MIB), "Sunday before 20:00: Saturday's");
        assert_eq!(weekly.at(0, 20 * 60), None);
        assert_eq!(weekly.at(1, 0), Some(512 << 10));
        assert_eq!(weekly.at(5, 23 * 60 + 58), Some(512 << 10));
        assert_eq!(weekly.at(5, 23 * 60 + 59), Some(10 * MIB));
        assert_eq!(weekly.at(6, 12 * 60), Some(MIB));
        assert_eq!(Bwlimit::parse("12:00,1M").unwrap().at(2, 0), Some(MIB), "one entry holds all day");
    }

    #[test]
    fn a_limit_lets_units_through_at_its_rate_after_the_burst() {
        let l = RateLimit::default();
        assert_eq!(l.reserve_at(1 << 30, 0, Duration::ZERO), Duration::ZERO, "no limit, no wait");
        l.set(Some(1000.0));
        let burst = Duration::from_millis(100);
        // 100 units within the burst go at once; the next 100 wait for their time.
        assert_eq!(l.reserve_at(100, 1_000_000_000, burst), Duration::ZERO);
        assert_eq!(l.reserve_at(100, 1_000_000_000, burst), Duration::from_millis(100));
        assert_eq!(l.reserve_at(300, 1_000_000_000, burst), Duration::from_millis(400));
        // Idle time is not saved up beyond the burst.
        assert_eq!(l.reserve_at(100, 9_000_000_000, burst), Duration::ZERO);
        assert_eq!(l.reserve_at(200, 9_000_000_000, burst), Duration::from_millis(200));
        // A new rate holds from the next take on.
        l.set(Some(10_000.0));
        assert_eq!(l.reserve_at(1000, 9_300_000_000, burst), Duration::ZERO);
        assert_eq!(l.reserve_at(1000, 9_300_000_000, burst), Duration::from_millis(100));
        l.set(None);
        assert_eq!(l.reserve_at(1 << 40, 9_300_000_000, burst), Duration::ZERO);
    }

    #[test]
    fn a_reads_size_follows_the_byte_limit() {
        let rates = Rates::default();
        rates.start_with(Some(Bwlimit::parse("10M").unwrap()), Some(5.0));
        assert_eq!(rates.read_bytes_max(), MIB as usize);
        rates.set_bwlimit(Some(Bwlimit::parse("1k").unwrap()));
        assert_eq!(rates.read_bytes_max(), PACED_READ_BYTES_MIN);
        rates.set_bwlimit(None);
        assert_eq!(rates.read_bytes_max(), usize::MAX);
        assert_eq!(rates.requests.get(), Some(5.0));
        assert!(rates.bwlimit().is_none());
        rates.start_with(Some(Bwlimit::parse("1M").unwrap()), None);
        assert!(rates.bwlimit().is_none(), "a relay's options leave limits set before it alone");
    }
}
