//! Fewer objects in flight while a store throttles.
//!
//! A store that answers 429, 503 or `SlowDown` is asking for fewer requests. Retrying
//! each request on its own, with every other object still in flight, keeps the
//! request rate where it was, so the store keeps refusing and objects run out of
//! retries. The [`Throttle`] lowers the relay's objects in flight instead, the way TCP
//! lowers its window: halved on a throttled response (at most once per
//! [`CUT_INTERVAL`], so that one burst of refusals counts once), and raised by one
//! for each window of objects copied after that, back up to `--transfers`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
        }
    }
}

impl Throttle {
    /// Objects in flight allowed now, given the `--transfers` ceiling.
    pub fn limit(&self, transfers: usize) -> usize {
        match self.limit.load(Ordering::Relaxed) {
            0 => transfers.max(1),
            cut => cut.min(transfers).max(1),
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
        if self.at_floor(transfers) {
            return false;
        }
        // One thread wins the cut; the others see a recent one next time.
        if self.last_cut_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
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

    /// An object was copied: after a window of as many objects as the limit, the limit
    /// grows by one; at `--transfers` the cut is over.
    pub fn succeeded(&self, transfers: usize) {
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
}
