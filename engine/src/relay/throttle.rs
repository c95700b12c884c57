//! Fewer objects in flight while a store throttles.
//!
//! A store that answers 429, 503 or `SlowDown` is asking for fewer requests. Retrying
//! each request on its own, with every other object still in flight, keeps the
//! request rate where it was, so the store keeps refusing and objects run out of
//! retries. The [`Throttle`] lowers the relay's objects in flight instead, the way TCP
//! lowers its window: halved on a throttled response (at most once per
//! [`CUT_INTERVAL`], so that one burst of refusals counts once), and raised by one
//! for each window of objects copied after that, back up to `--transfers`.
//!
//! Fewer in flight is not always fewer per second: a store whose limit is on
//! operations per second (Google Drive's files created per second per user) refuses
//! a relay with one object in flight as long as each object takes less than the
//! limit's interval. So each cut also paces object starts (and retries of refused
//! attempts): at a fraction ([`RATE_CUT`]) of the objects copied in the last second
//! when the store refused. The pace rises by [`RATE_RAISE`] each second without a
//! refusal, so the relay finds the limit again and rides just under it, instead of a
//! fixed pacer (too slow where the store allows more) or retrying into it. A store
//! known to limit creates a second (Drive) gives a pace to start at
//! ([`Throttle::start_paced`]), which doubles each second until the first refusal, as
//! TCP's slow start does: the relay does not open with a burst the store refuses.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Copies whose times are kept to measure the rate at a cut: a second's worth up to
/// this many a second.
pub const RATE_SAMPLES: usize = 4096;
/// The pace a cut sets, as a fraction of the rate measured.
pub const RATE_CUT: f64 = 0.85;
/// How much the pace rises each second without a refusal.
pub const RATE_RAISE: f64 = 1.05;
/// Most time an object waiting for its turn under the pace sleeps before it asks again.
pub const PACE_POLL_MS: u64 = 20;
/// Before a store first refuses, a pace to start at doubles this often.
pub const SLOW_START_DOUBLING_MS: u64 = 250;
/// Once the pace is this many times the rate measured at the last cut, it is lifted.
const RATE_LIFT: f64 = 8.0;

/// Least time between two cuts: the replies to requests sent before a cut are still
/// arriving for about this long, and say nothing about the new limit.
pub const CUT_INTERVAL: Duration = Duration::from_secs(1);

/// The relay's current limit on objects in flight, below `--transfers` while a store
/// throttles. Counters are relaxed: two threads racing may lose an increment of the
/// window count, which only slows the climb back by an object.
#[derive(Debug)]
pub struct Throttle {
    /// Objects in flight allowed now; 0 when no cut is in force (then `--transfers`).
    limit: AtomicUsize,
    /// Objects copied since the limit last changed.
    window: AtomicUsize,
    /// Milliseconds from `epoch` to the last cut; `u64::MAX` before the first.
    last_cut_ms: AtomicU64,
    epoch: Instant,
    cuts: AtomicU64,
    lowest: AtomicUsize,
    /// The pace of object starts; see the module.
    pace: Mutex<Pace>,
    /// For a store that limits objects a second ([`Throttle::start_paced`]), while a
    /// pace is in force: the fewest objects in flight a cut leaves, a second's worth at
    /// the pace, so that the pace, not the cut, sets the rate (0: no such floor). A
    /// store that limits requests at once is left to the cuts.
    paced_floor: AtomicUsize,
    /// Whether the store limits objects a second (a pace was given to start at).
    rate_limited: std::sync::atomic::AtomicBool,
}

/// Object starts per second, while a cut paces them.
#[derive(Debug, Default)]
struct Pace {
    /// Milliseconds from `epoch` of the last copies, oldest first.
    copied_ms: VecDeque<u64>,
    /// Starts per second allowed; None: not paced.
    per_s: Option<f64>,
    /// The rate measured at the last cut.
    measured_per_s: f64,
    /// When the next start may go (ms from `epoch`).
    next_start_ms: f64,
    /// When the pace last rose (ms from `epoch`).
    raised_ms: u64,
    /// Whether a refusal cut the pace yet (before that, it doubles each second).
    refused: bool,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            limit: AtomicUsize::new(0),
            window: AtomicUsize::new(0),
            last_cut_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            cuts: AtomicU64::new(0),
            lowest: AtomicUsize::new(usize::MAX),
            pace: Mutex::new(Pace::default()),
            paced_floor: AtomicUsize::new(0),
            rate_limited: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Throttle {
    /// Objects in flight allowed now, given the `--transfers` ceiling.
    pub fn limit(&self, transfers: usize) -> usize {
        match self.limit.load(Ordering::Relaxed) {
            0 => transfers.max(1),
            cut => cut.max(self.paced_floor.load(Ordering::Relaxed)).min(transfers).max(1),
        }
    }

    /// Times a throttled response cut the limit.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    /// The lowest limit a cut set, if any did.
    pub fn lowest(&self) -> Option<usize> {
        Some(self.lowest.load(Ordering::Relaxed)).filter(|l| *l != usize::MAX)
    }

    /// Whether the limit is as low as it goes: one object in flight.
    pub fn at_floor(&self, transfers: usize) -> bool {
        self.limit(transfers) <= 1
    }

    /// Whether a cut is in force: the limit is below `--transfers`.
    pub fn cut_in_force(&self) -> bool {
        self.limit.load(Ordering::Relaxed) != 0
    }

    /// A store refused a request as too many: halves the limit, unless a cut was made
    /// less than [`CUT_INTERVAL`] ago or the limit is already one. Returns whether
    /// this call cut it.
    pub fn throttled(&self, transfers: usize) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_cut_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < CUT_INTERVAL.as_millis() as u64 {
            return false;
        }
        // One thread wins the cut; the others see a recent one next time.
        if self.last_cut_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        // The pace is cut even at one object in flight: a limit on operations per
        // second refuses one object at a time as well.
        self.cut_pace(now);
        if self.at_floor(transfers) {
            return false;
        }
        // Read and written in one step, so that a concurrent raise cannot undo it.
        let effective = |l: usize| if l == 0 { transfers.max(1) } else { l.min(transfers).max(1) };
        let before = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some((effective(l) / 2).max(1)))
            .expect("always Some");
        let cut = (effective(before) / 2).max(1);
        self.window.store(0, Ordering::Relaxed);
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.lowest.fetch_min(cut, Ordering::Relaxed);
        true
    }

    /// Paces starts below the objects copied in the last second (never above the pace
    /// in force): the store let that many through.
    fn cut_pace(&self, now_ms: u64) {
        let mut pace = self.pace();
        if let Some(measured) = pace.measured(now_ms) {
            let per_s = (measured * RATE_CUT).min(pace.per_s.unwrap_or(f64::MAX));
            pace.per_s = Some(per_s.max(0.1));
            self.set_floor(pace.per_s);
            tracing::debug!(
                "a store refused: {measured:.1} objects copied in the last second, starts paced at {per_s:.1}/s"
            );
            pace.measured_per_s = measured;
            pace.raised_ms = now_ms;
            pace.refused = true;
        }
    }

    fn set_floor(&self, per_s: Option<f64>) {
        let floor = per_s.filter(|_| self.rate_limited.load(Ordering::Relaxed)).map_or(0, |p| p.ceil() as usize);
        self.paced_floor.store(floor, Ordering::Relaxed);
    }

    /// Paces object starts at `per_s` from the start (a store that limits how many
    /// objects are created a second), doubling every [`SLOW_START_DOUBLING_MS`] until a
    /// store refuses.
    pub fn start_paced(&self, per_s: f64) {
        assert!(per_s > 0.0, "a pace is positive");
        let mut pace = self.pace();
        pace.per_s = Some(per_s);
        self.rate_limited.store(true, Ordering::Relaxed);
        self.set_floor(pace.per_s);
        pace.measured_per_s = per_s;
        pace.raised_ms = self.epoch.elapsed().as_millis() as u64;
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().expect("no panics holding the pace")
    }

    /// Starts per second allowed now, if a cut paces object starts.
    pub fn pace_per_s(&self) -> Option<f64> {
        self.pace().per_s
    }

    /// Takes a turn to start under the pace: None when the caller may start now, else
    /// how long to wait before asking again. Nothing is reserved, so waiters see a pace
    /// that rose (or was lifted) while they waited; the wait is at most
    /// [`PACE_POLL_MS`].
    pub fn start_delay(&self) -> Option<Duration> {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        let mut pace = self.pace();
        let per_s = pace.per_s?;
        let interval_ms = 1000.0 / per_s;
        // One start may go each interval; a turn not taken is not saved up.
        if now >= pace.next_start_ms {
            pace.next_start_ms = now + interval_ms;
            return None;
        }
        Some(Duration::from_secs_f64(((pace.next_start_ms - now) / 1000.0).min(PACE_POLL_MS as f64 / 1000.0)))
    }

    /// Waits for a turn to start under the pace (see [`Throttle::start_delay`]), or
    /// until `stop` is set.
    pub(crate) async fn wait_turn(&self, stop: &std::sync::atomic::AtomicBool) {
        while let Some(wait) = self.start_delay() {
            // Acquire pairs with the Release stores that set `stop`.
            if stop.load(Ordering::Acquire) {
                return;
            }
            monoio::time::sleep(wait).await;
        }
    }

    /// Counts a create the store made on its own (a Drive folder, which took a start's
    /// turn, [`crate::backend::CreateTurns`]) in the rate a refusal measures, where
    /// the store limits creates a second. Counted as objects alone, a tree with a new
    /// folder for most files (a photo library by day) would be paced at a third of its
    /// rate after each refusal.
    pub fn created(&self) {
        if self.rate_limited.load(Ordering::Relaxed) {
            let now = self.epoch.elapsed().as_millis() as u64;
            self.pace().note(now);
        }
    }

    /// An object was copied: after a window of as many objects as the limit, the limit
    /// grows by one; at `--transfers` the cut is over.
    pub fn succeeded(&self, transfers: usize) {
        self.note_copied();
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        if self.window.fetch_add(1, Ordering::Relaxed) + 1 < limit {
            return;
        }
        self.window.store(0, Ordering::Relaxed);
        // Raises whatever the limit is now (a cut since the load stays a cut).
        let _ = self.limit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| match l {
            0 => None,
            l if l + 1 >= transfers => Some(0),
            l => Some(l + 1),
        });
    }
}

impl Throttle {
    /// Records a copy's time, and raises the pace (or lifts it) after a second
    /// without a refusal.
    fn note_copied(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last_cut = self.last_cut_ms.load(Ordering::Relaxed);
        let mut pace = self.pace();
        pace.note(now);
        let Some(per_s) = pace.per_s else { return };
        let every_ms = if pace.refused { 1000 } else { SLOW_START_DOUBLING_MS };
        if now.saturating_sub(pace.raised_ms) < every_ms
            || (last_cut != u64::MAX && now.saturating_sub(last_cut) < 1000)
        {
            return;
        }
        pace.raised_ms = now;
        let raised = per_s * if pace.refused { RATE_RAISE } else { 2.0 };
        pace.per_s = (raised < pace.measured_per_s * RATE_LIFT).then_some(raised);
        self.set_floor(pace.per_s);
    }
}

impl Pace {
    /// Records a create (an object copied, a folder made) at `now_ms`.
    fn note(&mut self, now_ms: u64) {
        if self.copied_ms.len() == RATE_SAMPLES {
            self.copied_ms.pop_front();
        }
        self.copied_ms.push_back(now_ms);
    }

    /// Creates in the last second (objects copied, and folders made where they count),
    /// when there were any: what the store let through in a second. (A relay less
    /// than a second old counts what it made so far, which a store's per-second limit
    /// bounds as well.)
    fn measured(&self, now_ms: u64) -> Option<f64> {
        let since = now_ms.saturating_sub(1000);
        let within = self.copied_ms.iter().rev().take_while(|t| **t >= since).count();
        if within == 0 {
            return None;
        }
        if within == self.copied_ms.len() && within == RATE_SAMPLES {
            // More than the samples hold in a second: their span says how many.
            let span_ms = now_ms.saturating_sub(*self.copied_ms.front()?).max(1);
            return Some(within as f64 * 1000.0 / span_ms as f64);
        }
        Some(within as f64)
    }
}

/// Throttled attempts of one operation that may go uncounted against `--retries`:
/// enough for the limit to halve from `transfers` down to one.
pub fn free_attempts(transfers: usize) -> u32 {
    usize::BITS - transfers.max(1).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_once_per_interval_and_climbs_back_one_window_at_a_time() {
        let t = Throttle::default();
        assert_eq!(t.limit(64), 64);
        assert!(t.throttled(64));
        assert_eq!(t.limit(64), 32);
        // The rest of the same burst does not cut again.
        assert!(!t.throttled(64));
        assert_eq!((t.limit(64), t.cuts(), t.lowest()), (32, 1, Some(32)));
        // 31 successes are not yet a window; the 32nd raises the limit by one.
        for _ in 0..31 {
            t.succeeded(64);
        }
        assert_eq!(t.limit(64), 32);
        t.succeeded(64);
        assert_eq!(t.limit(64), 33);
        // A burst a second later halves again.
        let t = Throttle { epoch: Instant::now() - Duration::from_secs(10), ..Throttle::default() };
        assert!(t.throttled(64));
        t.last_cut_ms.fetch_sub(CUT_INTERVAL.as_millis() as u64, Ordering::Relaxed);
        assert!(t.throttled(64));
        assert_eq!((t.limit(64), t.cuts(), t.lowest()), (16, 2, Some(16)));
    }

    #[test]
    fn a_cut_paces_starts_below_the_rate_measured_and_the_pace_rises_again() {
        let t = Throttle { epoch: Instant::now() - Duration::from_secs(100), ..Throttle::default() };
        assert_eq!(t.start_delay(), None, "not paced before a cut");
        // Ten copies a second for the last three seconds, then a refusal.
        let now = t.epoch.elapsed().as_millis() as u64;
        t.pace().copied_ms = (0..32u64).map(|i| now - 3150 + i * 100).collect();
        assert!(t.throttled(64));
        let per_s = t.pace_per_s().expect("paced");
        assert!((per_s - 10.0 * RATE_CUT).abs() < 0.5, "{per_s}");
        // Starts take turns: the first goes now, the next waits (asking again within the
        // poll interval), and nothing is reserved by asking.
        assert_eq!(t.start_delay(), None);
        let second = t.start_delay().expect("waits");
        let third = t.start_delay().expect("waits");
        assert!(second <= Duration::from_millis(PACE_POLL_MS) && third <= second, "{second:?} {third:?}");
        t.pace().next_start_ms = 0.0;
        assert_eq!(t.start_delay(), None, "a turn once the interval passed");
        // A second without a refusal raises the pace.
        t.pace().raised_ms = 0;
        t.last_cut_ms.store(0, Ordering::Relaxed);
        t.succeeded(64);
        let raised = t.pace_per_s().expect("paced");
        assert!((raised / per_s - RATE_RAISE).abs() < 1e-9, "{per_s} -> {raised}");
        // Before any refusal, a pace to start at doubles, four times a second.
        let fresh = Throttle { epoch: Instant::now() - Duration::from_secs(100), ..Throttle::default() };
        fresh.start_paced(10.0);
        fresh.pace().raised_ms = 0;
        fresh.succeeded(64);
        assert_eq!(fresh.pace_per_s(), Some(20.0));
        // Far above what the store allowed, the pace is lifted.
        t.pace().per_s = Some(per_s * RATE_LIFT * 2.0);
        t.pace().raised_ms = 0;
        t.succeeded(64);
        assert_eq!(t.pace_per_s(), None);
    }

    #[test]
    fn the_floor_is_one_and_the_ceiling_ends_the_cut() {
        let t = Throttle::default();
        t.limit.store(1, Ordering::Relaxed);
        assert!(t.at_floor(64));
        // Nothing left to halve: not counted as a cut.
        assert!(!t.throttled(64));
        assert_eq!((t.limit(64), t.cuts()), (1, 0));
        assert_eq!((free_attempts(64), free_attempts(1), free_attempts(256)), (7, 1, 9));
        let t = Throttle::default();
        t.limit.store(3, Ordering::Relaxed);
        for _ in 0..3 {
            t.succeeded(4);
        }
        // 3 + 1 reaches --transfers 4: no cut in force.
        assert_eq!(t.limit.load(Ordering::Relaxed), 0);
        assert_eq!(t.limit(4), 4);
        // A ceiling lowered live (scaling a job down) applies under a cut too.
        t.limit.store(10, Ordering::Relaxed);
        assert_eq!(t.limit(6), 6);
    }

    #[test]
    fn folders_a_store_made_count_in_the_rate_a_refusal_measures() {
        let t = Throttle::default();
        // A store with no pace to start at: folders are not creates that count.
        t.created();
        t.created();
        assert!(t.pace().copied_ms.is_empty());

        let t = Throttle::default();
        t.start_paced(10.0);
        t.created();
        t.created();
        assert_eq!(t.pace().copied_ms.len(), 2);
        // A copy and the folders together are what a refusal measures and cuts to.
        t.note_copied();
        let measured = t.pace().measured(t.epoch.elapsed().as_millis() as u64);
        assert_eq!(measured, Some(3.0));
    }
}
