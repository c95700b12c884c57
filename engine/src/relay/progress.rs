//! Progress: live counters and controls for the operator, and each object's
//! resumable state.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use crate::backend::PartRecord;

/// A running relay's handle: live counters, shared with the workers and read by
/// progress bars and metrics, and the controls an operator turns while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects the planner has decided on.
    pub objects_total: AtomicU64,
    /// Bytes of objects to copy.
    pub bytes_total: AtomicU64,
    /// Objects finished (copied or skipped).
    pub objects_done: AtomicU64,
    /// Of the objects finished, those skipped because the destination had them.
    pub objects_skipped: AtomicU64,
    /// Objects failed.
    pub objects_failed: AtomicU64,
    /// Objects never begun because the relay was stopped first.
    pub objects_not_attempted: AtomicU64,
    /// Objects left for a later run: the destination's allowance for the period is
    /// spent (Google Drive's daily upload limit).
    pub objects_deferred: AtomicU64,
    /// Set to stop the relay: nothing new starts, transfers in flight finish or fail,
    /// and multipart uploads that can't complete are aborted. Also set by the engine
    /// after a fatal error.
    pub stop: std::sync::atomic::AtomicBool,
    /// Bytes written to the destination so far (parts count as they land), for
    /// progress bars; the report counts only verified objects.
    pub bytes_done: AtomicU64,
    /// Set once the source's listing is complete: until then the totals still grow.
    pub listing_done: AtomicBool,
    /// Set to pause: workers start nothing new for this relay (transfers in flight
    /// finish); cleared to resume. Wake the engine after clearing it
    /// ([`super::Engine::wake`]).
    pub paused: AtomicBool,
    /// Objects in flight across all workers; the engine reads it live, so storing a
    /// new value scales a running relay (wake the engine after raising it). Zero until
    /// the relay starts, which stores the option's value.
    pub transfers: AtomicUsize,
    /// The limit below `transfers` while a store throttles; read live like it.
    pub throttle: super::Throttle,
    /// Store operations of this relay's transfers under way (a request with its
    /// body), across workers: what a throttled retry waits to see below the limit.
    pub operations: AtomicUsize,
    /// Notified when something a waiting task looks at changes: the stop flag is set,
    /// an operation ends, the throttle's limit moves, a large object closes.
    pub changed: event_listener::Event,
    /// Notified only when the stop flag is set: what requests in flight wait on to be
    /// cut short, which `changed` would wake at every operation's end.
    pub stop_event: event_listener::Event,
    /// The relay's byte and request rate limits (`--bwlimit`, `--tpslimit`), read
    /// live by every worker: changing them scales a running relay.
    pub rates: std::sync::Arc<crate::rate::Rates>,
    /// Failed attempts of this relay's store operations, by store: the source's at
    /// [`Side::Source`], the destination's at [`Side::Destination`].
    pub stores: [StoreCounts; 2],
}

/// Which store of a relay an operation's failure is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The store read from.
    Source = 0,
    /// The store written to.
    Destination = 1,
}

impl Side {
    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Destination => "destination",
        }
    }
}

/// What one store's failures cost a relay so far.
#[derive(Debug, Default)]
pub struct StoreCounts {
    /// Attempts that failed and were tried again.
    pub retries: AtomicU64,
    /// Answers refusing an attempt as one too many (429, 503, `SlowDown`), retried or not.
    pub throttled: AtomicU64,
    /// Operations that failed for good, after their retries.
    pub errors: AtomicU64,
}

impl StoreCounts {
    /// Counts one failed attempt.
    pub(crate) fn record(&self, e: &crate::error::Error, will_retry: bool) {
        // Relaxed: counters on their own, read for display.
        let counter = if will_retry { &self.retries } else { &self.errors };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if e.is_throttle() {
            self.throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A store's own creates (Drive's folders) take turns under the pace of the relay's
/// uploads, and are counted in the rate a refusal measures
/// ([`super::Throttle::created`]).
impl crate::backend::CreateTurns for Progress {
    fn turn(&self) -> crate::backend::LocalFuture<'_, ()> {
        Box::pin(self.throttle.wait_turn(&self.stop))
    }

    fn made(&self) {
        self.throttle.created();
    }
}

/// Under a byte limit, the seconds of it each object in flight should take: objects
/// then land one after another as the bytes stream (as rclone's do), instead of all
/// sharing the limit and landing together at the end.
const BYTE_LIMIT_SECONDS_PER_OBJECT: f64 = 1.0;

/// Under a byte limit, the fewest objects in flight it leaves (rclone's default
/// transfers): enough that one object's requests between its reads never leave
/// the limit unfed.
const BYTE_LIMIT_OBJECTS_MIN: usize = 4;

impl Progress {
    /// Objects in flight the byte limit can feed at [`BYTE_LIMIT_SECONDS_PER_OBJECT`]
    /// each, by the mean size of the objects planned so far; `usize::MAX` without a
    /// limit (or before an object is planned).
    pub fn objects_the_byte_limit_feeds(&self) -> usize {
        let Some(per_s) = self.rates.bytes.get() else { return usize::MAX };
        // Relaxed: counters read for an estimate.
        let objects = self.objects_total.load(std::sync::atomic::Ordering::Relaxed);
        let bytes = self.bytes_total.load(std::sync::atomic::Ordering::Relaxed);
        if objects == 0 || bytes == 0 {
            return usize::MAX;
        }
        let mean = bytes as f64 / objects as f64;
        ((per_s * BYTE_LIMIT_SECONDS_PER_OBJECT / mean).ceil() as usize).max(BYTE_LIMIT_OBJECTS_MIN)
    }

    /// The counts of one store.
    pub fn store(&self, side: Side) -> &StoreCounts {
        &self.stores[side as usize]
    }

    /// Stops the relay (see [`Progress::stop`]) and wakes every task waiting on it.
    pub fn request_stop(&self) {
        // Pairs with the Acquire loads of `stop`.
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify(usize::MAX);
        self.stop_event.notify(usize::MAX);
    }

    /// Whether the relay is stopping.
    pub fn stopping(&self) -> bool {
        // Pairs with the Release store in `request_stop`.
        self.stop.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Everything needed to resume one object's multipart upload: which upload, how it
/// is cut, and which parts are done with their checksums. One plain value, so that
/// a journal can persist it as is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectProgress {
    /// Source key.
    pub src_key: String,
    /// Destination key.
    pub dst_key: String,
    /// Object size.
    pub size: u64,
    /// The source's version token (ETag or file size+mtime) when the copy began.
    pub src_version: String,
    /// Part size (the last part may be shorter).
    pub part_size: u64,
    /// The destination's upload session, once begun (its parts are kept below, not
    /// in it, while the object is in flight).
    pub session: Option<crate::backend::SessionState>,
    /// Finished parts, by index (part number - 1).
    pub parts: Vec<Option<PartRecord>>,
}

impl ObjectProgress {
    /// Number of parts.
    pub fn part_count(&self) -> u32 {
        part_count(self.size, self.part_size)
    }

    /// Byte range of part `index` (0-based).
    pub fn part_range(&self, index: u32) -> (u64, u64) {
        let start = index as u64 * self.part_size;
        assert!(start < self.size.max(1), "part {index} is past the end");
        (start, (start + self.part_size).min(self.size))
    }

    /// Part `index` (0-based): its number, offset and length.
    pub fn part_spec(&self, index: u32) -> crate::backend::PartSpec {
        let (start, end) = self.part_range(index);
        crate::backend::PartSpec { number: index + 1, offset: start, len: end - start }
    }

    /// The index of the part holding byte `offset`.
    pub fn part_of(&self, offset: u64) -> u32 {
        (offset / self.part_size.max(1)) as u32
    }

    /// Whether every part is done.
    pub fn all_parts_done(&self) -> bool {
        self.parts.len() == self.part_count() as usize && self.parts.iter().all(Option::is_some)
    }
}

/// Parts needed for `size` bytes at `part_size`.
pub fn part_count(size: u64, part_size: u64) -> u32 {
    assert!(part_size > 0);
    size.div_ceil(part_size).max(1) as u32
}

/// Picks the part size for an object: the preferred size, grown (in whole MiB) until
/// the object fits in `max_parts`, and kept within the sink's limits and alignment.
pub fn choose_part_size(
    size: u64,
    preferred: u64,
    min_part: u64,
    max_part: u64,
    max_parts: u32,
    alignment: u64,
) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let mut part = preferred.max(min_part).max(1);
    let needed = size.div_ceil(max_parts as u64);
    if part < needed {
        part = needed.div_ceil(MIB) * MIB;
    }
    let alignment = alignment.max(1);
    part = part.div_ceil(alignment) * alignment;
    (part <= max_part && part_count(size, part) <= max_parts).then_some(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_limit_keeps_as_many_objects_in_flight_as_it_feeds_in_a_second() {
        use std::sync::atomic::Ordering::Relaxed;
        let p = Progress::default();
        assert_eq!(p.objects_the_byte_limit_feeds(), usize::MAX, "no limit");
        p.rates.set_bwlimit(Some(crate::rate::Bwlimit::parse("2M").unwrap()));
        assert_eq!(p.objects_the_byte_limit_feeds(), usize::MAX, "nothing planned yet");
        p.objects_total.store(64, Relaxed);
        p.bytes_total.store(64 * (256 << 10), Relaxed);
        assert_eq!(p.objects_the_byte_limit_feeds(), 8, "2 MiB/s feeds eight 256 KiB objects a second");
        p.bytes_total.store(64 * (64 << 20), Relaxed);
        assert_eq!(p.objects_the_byte_limit_feeds(), BYTE_LIMIT_OBJECTS_MIN, "large objects keep the floor");
        p.rates.set_bwlimit(None);
        assert_eq!(p.objects_the_byte_limit_feeds(), usize::MAX, "lifting the limit lifts the cut");
    }

    #[test]
    fn five_tib_fits_in_ten_thousand_parts() {
        let size = 5u64 << 40;
        let part = choose_part_size(size, 16 << 20, 5 << 20, 5 << 30, 10_000, 1).unwrap();
        assert!(part_count(size, part) <= 10_000);
        assert_eq!(part % (1 << 20), 0);
        assert_eq!(choose_part_size(100 << 20, 16 << 20, 5 << 20, 5 << 30, 10_000, 1), Some(16 << 20));
        // Dropbox-style 4 MiB alignment.
        assert_eq!(choose_part_size(100 << 20, 5 << 20, 1, u64::MAX, 10_000, 4 << 20), Some(8 << 20));
        assert_eq!(choose_part_size(u64::MAX, 16 << 20, 5 << 20, 5 << 30, 10_000, 1), None);
    }

    #[test]
    fn ranges_cover_the_object_exactly() {
        // A property over many sizes: parts are contiguous, non-empty and cover [0, size).
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let part_size = rng.u64(1..5000);
            let size = rng.u64(1..100_000);
            let p = ObjectProgress { size, part_size, ..Default::default() };
            let mut next = 0;
            for i in 0..p.part_count() {
                let (a, b) = p.part_range(i);
                assert_eq!(a, next);
                assert!(b > a && b - a <= part_size);
                next = b;
            }
            assert_eq!(next, size);
        }
    }
}
