//! Engine metrics, kept per worker so that recording never contends.
//!
//! Each worker owns one [`WorkerStats`]: gauges the control plane reads (in-flight
//! transfers, RAM pool occupancy, thread CPU time) and a [`Shard`] of counters and
//! latency histograms. A thread-local points at the calling thread's shard, so the
//! retry loop and the transfer code record without being handed anything; threads
//! that are not workers (planners, `laminar ls`) record into one process-wide shard.
//! Only the owning thread writes a shard's atomics (relaxed), and a scrape sums the
//! shards: no cache line bounces between workers on the byte path. Histograms sit
//! behind a per-shard mutex that only the owner and an occasional scrape take.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::Error;
use crate::runtime::Driver;

/// Error kinds, the label values of the retry and error counters.
pub const ERROR_KINDS: [&str; 10] =
    ["usage", "connect", "io", "throttled", "http_4xx", "http_5xx", "protocol", "integrity", "tls", "timeout"];

/// The kind of an error, an index into [`ERROR_KINDS`].
pub fn error_kind(e: &Error) -> usize {
    match e {
        Error::Usage(_) | Error::InvalidKey { .. } => 0,
        Error::Connect { .. } => 1,
        Error::Io { .. } => 2,
        Error::Http { .. } if e.is_throttle() => 3,
        Error::Http { status, .. } if *status < 500 => 4,
        Error::Http { .. } => 5,
        Error::Protocol { .. } => 6,
        Error::Integrity { .. } | Error::Changed { .. } | Error::Unvouched { .. } => 7,
        Error::Tls { .. } => 8,
        Error::Timeout { .. } | Error::TooSlow { .. } => 9,
    }
}

const _: () = assert!(ERROR_KINDS.len() == 10);
const _: () = assert!(matches!(ERROR_KINDS[THROTTLED].as_bytes(), b"throttled"));

/// Backend operations timed per remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// One page of a listing.
    List,
    /// HEAD / stat.
    Stat,
    /// A GET, whole or ranged (until the last byte is read).
    Get,
    /// A single-request PUT.
    Put,
    /// One multipart part (until the store acknowledges it).
    PutPart,
    /// Creating a multipart upload.
    Create,
    /// Completing a multipart upload.
    Complete,
    /// A server-side copy (whole object or part).
    Copy,
}

/// Label values of [`Op`], in its order.
pub const OPS: [&str; 8] = ["list", "stat", "get", "put", "put_part", "create", "complete", "copy"];

/// Upper bounds of the latency histogram buckets, in seconds (Prometheus `le`).
pub const BUCKETS_SECONDS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One latency histogram: cumulative-ready bucket counts (non-cumulative here), sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`BUCKETS_SECONDS`]; the last slot is `+Inf`.
    pub buckets: [u64; BUCKETS_SECONDS.len() + 1],
    /// Sum of observations, seconds.
    pub sum_seconds: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS_SECONDS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS_SECONDS.len());
        self.buckets[slot] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }
}

/// Counters and histograms of one thread.
#[derive(Debug, Default)]
pub struct Shard {
    /// Bytes that reached a destination.
    pub bytes_written: AtomicU64,
    /// Failed attempts by remote (rare: a lock per failure is cheap).
    failures: Mutex<BTreeMap<String, Failures>>,
    /// Bytes that did not match their checksum (every attempt counts).
    pub checksum_mismatches: AtomicU64,
    /// Latency per remote and [`Op`].
    ops: Mutex<BTreeMap<String, [Histogram; OPS.len()]>>,
}

/// One remote's failed attempts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failures {
    /// Attempts retried after a transient error, by [`ERROR_KINDS`].
    pub retries: [u64; ERROR_KINDS.len()],
    /// Operations that failed for good (after retries), by [`ERROR_KINDS`].
    pub errors: [u64; ERROR_KINDS.len()],
}

impl Failures {
    fn add(&mut self, other: &Failures) {
        for i in 0..ERROR_KINDS.len() {
            self.retries[i] += other.retries[i];
            self.errors[i] += other.errors[i];
        }
    }

    /// Answers refusing an attempt as one too many, retried or not.
    pub fn throttled(&self) -> u64 {
        self.retries[THROTTLED] + self.errors[THROTTLED]
    }
}

/// The index of `throttled` in [`ERROR_KINDS`].
const THROTTLED: usize = 3;

impl Shard {
    fn observe(&self, remote: &str, op: Op, took: Duration) {
        let mut ops = self.ops.lock().expect("metrics lock");
        if !ops.contains_key(remote) {
            ops.insert(remote.to_string(), Default::default());
        }
        ops.get_mut(remote).expect("inserted above")[op as usize].observe(took.as_secs_f64());
    }
}

/// Sums of every shard at one moment.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// See [`Shard::bytes_written`].
    pub bytes_written: u64,
    /// Failed attempts by remote.
    pub failures: BTreeMap<String, Failures>,
    /// See [`Shard::checksum_mismatches`].
    pub checksum_mismatches: u64,
    /// Latency histograms by remote, indexed by [`Op`].
    pub ops: BTreeMap<String, [Histogram; OPS.len()]>,
}

impl Totals {
    /// Adds one shard.
    pub fn add(&mut self, shard: &Shard) {
        self.bytes_written += shard.bytes_written.load(Ordering::Relaxed);
        for (remote, f) in shard.failures.lock().expect("metrics lock").iter() {
            self.failures.entry(remote.clone()).or_default().add(f);
        }
        self.checksum_mismatches += shard.checksum_mismatches.load(Ordering::Relaxed);
        for (remote, hists) in shard.ops.lock().expect("metrics lock").iter() {
            let mine = self.ops.entry(remote.clone()).or_default();
            for (a, b) in mine.iter_mut().zip(hists.iter()) {
                a.add(b);
            }
        }
    }
}

/// The shard of every thread that is not a worker.
pub fn shared_shard() -> &'static Arc<Shard> {
    static SHARED: OnceLock<Arc<Shard>> = OnceLock::new();
    SHARED.get_or_init(Default::default)
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Shard>>> = const { RefCell::new(None) };
}

/// Makes `shard` the calling thread's shard (a worker does this once at start).
pub fn set_thread_shard(shard: Arc<Shard>) {
    CURRENT.with(|c| *c.borrow_mut() = Some(shard));
}

fn with_shard(f: impl FnOnce(&Shard)) {
    CURRENT.with(|c| match &*c.borrow() {
        Some(shard) => f(shard),
        None => f(shared_shard()),
    });
}

/// Counts a failed attempt of an operation on `remote` (a remote label, see
/// `Location::remote_label`): retried (`will_retry`) or final.
pub fn record_error(e: &Error, will_retry: bool, remote: &str) {
    let kind = error_kind(e);
    with_shard(|s| {
        let mut failures = s.failures.lock().expect("metrics lock");
        if !failures.contains_key(remote) {
            failures.insert(remote.to_string(), Failures::default());
        }
        let f = failures.get_mut(remote).expect("inserted above");
        match will_retry {
            true => f.retries[kind] += 1,
            false => f.errors[kind] += 1,
        }
        drop(failures);
        if matches!(e, Error::Integrity { .. }) {
            s.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Counts bytes that reached a destination.
pub fn record_written(bytes: u64) {
    with_shard(|s| {
        s.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// Socket options the kernel refused, by option (process-wide; rare).
pub static SOCKET_OPTIONS_REFUSED: [AtomicU64; SOCKET_OPTIONS.len()] =
    [const { AtomicU64::new(0) }; SOCKET_OPTIONS.len()];
/// Options of the socket policy, the labels of [`SOCKET_OPTIONS_REFUSED`].
pub const SOCKET_OPTIONS: [&str; 5] = ["nodelay", "congestion", "send_buffer", "recv_buffer", "keepalive"];

/// Counts a socket option the kernel refused.
pub fn record_socket_option_refused(option: &str) {
    if let Some(i) = SOCKET_OPTIONS.iter().position(|o| *o == option) {
        SOCKET_OPTIONS_REFUSED[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Records how long one backend operation took.
pub fn observe(remote: &str, op: Op, took: Duration) {
    with_shard(|s| s.observe(remote, op, took));
}

/// Times a future as one backend operation, success or failure.
pub async fn timed<T>(remote: &str, op: Op, fut: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = fut.await;
    observe(remote, op, started.elapsed());
    out
}

/// One worker's live state, written by the worker, read by the control plane.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Worker number.
    pub index: usize,
    /// The CPU the worker is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// The worker's counters and histograms.
    pub shard: Arc<Shard>,
    /// 0 = not started, 1 = io_uring, 2 = epoll.
    driver: AtomicU8,
    /// The worker thread's kernel thread id, for its CPU time.
    tid: AtomicI32,
    /// Chunks in the worker's RAM pool.
    pub pool_chunks: AtomicUsize,
    /// Bytes per chunk.
    pub chunk_bytes: AtomicUsize,
    /// Chunks in use right now (shared with the pool, which updates it).
    pub pool_in_use: Arc<AtomicUsize>,
    /// Objects being moved by this worker.
    pub objects_in_flight: AtomicUsize,
    /// Parts of large objects being moved by this worker.
    pub parts_in_flight: AtomicUsize,
}

impl WorkerStats {
    /// Stats for worker `index`, pinned to `cpu`.
    pub fn new(index: usize, cpu: Option<usize>) -> WorkerStats {
        WorkerStats { index, cpu, ..WorkerStats::default() }
    }

    /// Records the driver and thread of the running worker.
    pub(crate) fn started(&self, driver: Driver) {
        self.driver.store(if driver == Driver::IoUring { 1 } else { 2 }, Ordering::Relaxed);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// The driver the worker runs, once started.
    pub fn driver(&self) -> Option<Driver> {
        match self.driver.load(Ordering::Relaxed) {
            1 => Some(Driver::IoUring),
            2 => Some(Driver::Epoll),
            _ => None,
        }
    }

    /// CPU seconds (user + system) the worker thread has used, if it is running.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let tid = self.tid.load(Ordering::Relaxed);
        if tid == 0 {
            return None;
        }
        laminar_tuning::stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
    }

    /// RAM pool bytes in use.
    pub fn pool_bytes_in_use(&self) -> u64 {
        (self.pool_in_use.load(Ordering::Relaxed) * self.chunk_bytes.load(Ordering::Relaxed)) as u64
    }

    /// RAM pool bytes.
    pub fn pool_bytes(&self) -> u64 {
        (self.pool_chunks.load(Ordering::Relaxed) * self.chunk_bytes.load(Ordering::Relaxed)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_buckets_hold_their_bounds() {
        let a = Arc::new(Shard::default());
        let b = Arc::new(Shard::default());
        a.observe("src", Op::Get, Duration::from_millis(1));
        b.observe("src", Op::Get, Duration::from_secs(60));
        b.observe("dst", Op::Put, Duration::from_millis(30));
        a.bytes_written.fetch_add(5, Ordering::Relaxed);
        b.bytes_written.fetch_add(7, Ordering::Relaxed);
        let mut t = Totals::default();
        t.add(&a);
        t.add(&b);
        assert_eq!(t.bytes_written, 12);
        let get = &t.ops["src"][Op::Get as usize];
        assert_eq!(get.count, 2);
        assert_eq!(get.buckets[0], 1, "1 ms falls in le=0.001");
        assert_eq!(get.buckets[BUCKETS_SECONDS.len()], 1, "60 s falls in +Inf");
        assert_eq!(t.ops["dst"][Op::Put as usize].buckets[5], 1, "30 ms falls in le=0.05");
    }

    #[test]
    fn thread_shard_takes_the_records() {
        let shard = Arc::new(Shard::default());
        let s2 = shard.clone();
        std::thread::spawn(move || {
            set_thread_shard(s2);
            record_error(&Error::Integrity { op: "get", target: "k".into(), detail: "x".into() }, true, "src");
            record_written(3);
        })
        .join()
        .unwrap();
        assert_eq!(shard.failures.lock().unwrap()["src"].retries[7], 1);
        assert_eq!(shard.checksum_mismatches.load(Ordering::Relaxed), 1);
        assert_eq!(shard.bytes_written.load(Ordering::Relaxed), 3);
    }
}
