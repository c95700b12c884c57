//! A relay: list both sides, decide what to copy, and move it on the workers.
//!
//! The calling thread plans: it reads the source and destination listings page by
//! page and merge-joins them in key order, so memory holds a page per side whatever
//! the bucket size, and feeds a bounded lock-free queue. Worker threads, one per CPU
//! and pinned, each run their own event loop and pull objects from that queue. A
//! large object is split into parts that go on a second queue, so every worker helps
//! with it; the last part to finish completes the upload. Results come back on a
//! channel; the planner turns them into the report.

mod plan;
mod progress;
mod transfer;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use plan::{Filter, Planned};
pub use progress::{ObjectProgress, Progress};

use crate::backend::Backend;
use crate::checksum::ChecksumAlgo;
use crate::error::{Error, Result};
use crate::runtime::{Driver, DriverChoice};

/// One side of a relay: a store and a prefix in it.
#[derive(Clone)]
pub struct Location {
    /// The store.
    pub backend: Arc<dyn Backend>,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// The path as given, when it could name one object (no trailing `/`): a relay
    /// from it copies just that object if it exists.
    pub object: Option<String>,
    /// How to show it to the operator (the URL as given, without secrets).
    pub display: String,
}

impl Location {
    /// A location; `prefix` is normalised so that `a/b` and `a/b/` mean the same.
    pub fn new(backend: Arc<dyn Backend>, prefix: &str, display: String) -> Location {
        let prefix = prefix.trim_start_matches('/');
        let object = (!prefix.is_empty() && !prefix.ends_with('/')).then(|| prefix.to_string());
        let prefix = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Location { backend, prefix, object, display }
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Worker threads; None = one per allowed CPU.
    pub workers: Option<usize>,
    /// Total RAM tier, split evenly between workers.
    pub ram_buffer_bytes: u64,
    /// Size of each pool chunk.
    pub chunk_bytes: usize,
    /// Preferred part size for multipart uploads (grows for huge objects).
    pub part_size_bytes: u64,
    /// Objects of at least this size go multipart.
    pub multipart_cutoff_bytes: u64,
    /// Objects in flight across all workers.
    pub transfers: usize,
    /// Parts of large objects in flight across all workers; None = 4 per worker.
    /// Few large streams saturate a link; more only add load on the servers.
    pub part_streams: Option<usize>,
    /// The checksum computed in flight and sent to the destination.
    pub checksum: ChecksumAlgo,
    /// Also compute MD5 to check plain-MD5 ETags on both sides.
    pub verify_md5: bool,
    /// Attempts after the first, per object or part.
    pub retries: u32,
    /// Key filters.
    pub filter: Filter,
    /// Plan only.
    pub dry_run: bool,
    /// Event-loop driver.
    pub driver: DriverChoice,
    /// Use server-side copy when source and destination are the same store.
    pub server_side_copy: bool,
    /// Objects queued ahead of the workers.
    pub queue_depth: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            workers: None,
            ram_buffer_bytes: laminar_tuning::default_ram_buffer_bytes(),
            chunk_bytes: 1 << 20,
            part_size_bytes: 16 << 20,
            multipart_cutoff_bytes: 32 << 20,
            transfers: 64,
            part_streams: None,
            checksum: ChecksumAlgo::Crc32c,
            verify_md5: true,
            retries: 4,
            filter: Filter::default(),
            dry_run: false,
            driver: DriverChoice::Auto,
            server_side_copy: true,
            queue_depth: 4096,
        }
    }
}

/// One object that failed, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    /// Source key.
    pub key: String,
    /// The last error, one line.
    pub reason: String,
}

/// What a relay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Objects seen at the source (after filters).
    pub objects_total: u64,
    /// Objects copied and verified.
    pub objects_copied: u64,
    /// Objects already at the destination.
    pub objects_skipped: u64,
    /// Objects that failed.
    pub objects_failed: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Bytes of skipped objects.
    pub bytes_skipped: u64,
    /// Wall time.
    pub seconds: f64,
    /// Failures, at most [`FAILURES_KEPT_MAX`].
    pub failures: Vec<Failure>,
    /// The driver the workers ran.
    pub driver: Option<Driver>,
    /// Worker threads.
    pub workers: usize,
    /// RAM tier in bytes.
    pub ram_buffer_bytes: u64,
    /// Objects that a dry run would copy.
    pub objects_planned: u64,
    /// Whether the relay was stopped before it finished (the caller set
    /// [`Progress::stop`]); objects not attempted are counted as failed.
    pub stopped: bool,
}

/// Failures kept in the report; later ones are counted only.
pub const FAILURES_KEPT_MAX: usize = 10_000;

/// Outcome of one object, sent from workers to the planner.
pub(crate) enum Outcome {
    Copied { bytes: u64 },
    Skipped { bytes: u64 },
    Failed { reason: String, fatal: bool },
}

pub(crate) struct ObjectResult {
    key: String,
    outcome: Outcome,
}

/// State shared by the planner and the workers.
pub(crate) struct Shared {
    pub(crate) opts: RelayOptions,
    pub(crate) src: Location,
    pub(crate) dst: Location,
    pub(crate) objects: crossbeam_queue::ArrayQueue<Arc<transfer::ObjectJob>>,
    pub(crate) parts: crossbeam_queue::SegQueue<transfer::PartTask>,
    /// Woken on every push, on the end of the listing, and on each finished object.
    pub(crate) event: event_listener::Event,
    pub(crate) listing_done: AtomicBool,
    /// Objects handed to workers and not yet finished.
    pub(crate) outstanding: AtomicUsize,
    pub(crate) fatal: std::sync::Mutex<Option<String>>,
    pub(crate) results: crossbeam_channel::Sender<ObjectResult>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) pool_chunks_per_worker: usize,
    pub(crate) in_flight_per_worker: usize,
    pub(crate) parts_in_flight_per_worker: usize,
}

impl Shared {
    /// Whether the relay is stopping (fatal error, or the caller asked).
    pub(crate) fn stopped(&self) -> bool {
        // Pairs with the Release stores that set it.
        self.progress.stop.load(Ordering::Acquire)
    }

    pub(crate) fn finish(&self, key: String, outcome: Outcome) {
        match &outcome {
            Outcome::Copied { .. } | Outcome::Skipped { .. } => {
                self.progress.objects_done.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed { fatal, reason } => {
                self.progress.objects_failed.fetch_add(1, Ordering::Relaxed);
                if *fatal {
                    self.fatal.lock().expect("fatal lock").get_or_insert_with(|| reason.clone());
                    // Pairs with the Acquire loads in `stopped`.
                    self.progress.stop.store(true, Ordering::Release);
                }
            }
        }
        let _ = self.results.send(ObjectResult { key, outcome });
        // Pairs with the Acquire load in the workers' exit check.
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.event.notify(usize::MAX);
    }
}

/// Runs a relay from `src` to `dst`. `on_plan` sees each object a dry run would copy.
/// Errors are returned for problems that stop the whole relay (bad location, no
/// server, bad credentials); per-object failures are in the report.
pub fn relay(
    src: Location,
    dst: Location,
    opts: RelayOptions,
    progress: Arc<Progress>,
    on_plan: &mut dyn FnMut(&Planned),
) -> Result<Report> {
    let started = Instant::now();
    let (driver, fallback) = crate::runtime::select(opts.driver).map_err(Error::Usage)?;
    if let Some(line) = fallback {
        eprintln!("laminar: {line}");
    }
    let cpus = laminar_tuning::allowed_cpus();
    let workers = opts.workers.unwrap_or(cpus.len()).max(1);
    let per_worker_bytes = opts.ram_buffer_bytes / workers as u64;
    let chunk = opts.chunk_bytes as u64;
    let pool_chunks_per_worker = (per_worker_bytes / chunk) as usize;
    if pool_chunks_per_worker < 2 {
        return Err(Error::Usage(format!(
            "--ram-buffer {} is too small for {workers} workers of {} chunks; give at least {}",
            laminar_tuning::HumanBytes(opts.ram_buffer_bytes),
            laminar_tuning::HumanBytes(chunk),
            laminar_tuning::HumanBytes(2 * chunk * workers as u64)
        )));
    }
    let in_flight_per_worker = opts.transfers.div_ceil(workers).max(1);
    let parts_in_flight_per_worker = opts.part_streams.map_or(4, |n| n.div_ceil(workers)).max(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        objects: crossbeam_queue::ArrayQueue::new(opts.queue_depth.max(1)),
        parts: crossbeam_queue::SegQueue::new(),
        event: event_listener::Event::new(),
        listing_done: AtomicBool::new(false),
        outstanding: AtomicUsize::new(0),
        fatal: std::sync::Mutex::new(None),
        results: tx,
        progress: progress.clone(),
        pool_chunks_per_worker,
        in_flight_per_worker,
        parts_in_flight_per_worker,
        opts,
        src,
        dst,
    });
    let mut report =
        Report { driver: Some(driver), workers, ram_buffer_bytes: shared.opts.ram_buffer_bytes, ..Report::default() };

    // Check both sides before starting anything, so a wrong URL or key fails fast.
    crate::runtime::block_on(driver, plan::check_locations(&shared))
        .map_err(|e| Error::io("start", "runtime", e))??;

    let handles: Vec<_> = if shared.opts.dry_run {
        Vec::new()
    } else {
        (0..workers)
            .map(|i| {
                let shared = shared.clone();
                let cpu = cpus.get(i % cpus.len().max(1)).copied();
                std::thread::Builder::new()
                    .name(format!("laminar-w{i}"))
                    .spawn(move || worker::run(i, cpu, driver, shared))
                    .expect("spawn worker thread")
            })
            .collect()
    };

    let planned = crate::runtime::block_on(driver, plan::plan(&shared, &rx, &mut report, on_plan))
        .map_err(|e| Error::io("start", "runtime", e))?;
    // Pairs with the Acquire loads in the workers' exit check.
    shared.listing_done.store(true, Ordering::Release);
    shared.event.notify(usize::MAX);
    if planned.is_err() {
        shared.progress.stop.store(true, Ordering::Release);
    }
    // Collect the rest of the results while workers finish. A result is sent before
    // `outstanding` drops, so once it reads zero every result is already in the channel.
    loop {
        // Pairs with the AcqRel decrement in `Shared::finish`.
        if shared.outstanding.load(Ordering::Acquire) == 0 {
            while let Ok(result) = rx.try_recv() {
                plan::record(&mut report, result);
            }
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => plan::record(&mut report, result),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                // Every worker gone with work outstanding means none could start: the
                // fatal error they left says why.
                if !handles.is_empty() && handles.iter().all(|h| h.is_finished()) {
                    while let Ok(result) = rx.try_recv() {
                        plan::record(&mut report, result);
                    }
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    planned?;
    if let Some(fatal) = shared.fatal.lock().expect("fatal lock").clone() {
        return Err(Error::Usage(fatal));
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.stopped = shared.stopped();
    Ok(report)
}

/// Runs `op` until it succeeds, fails with an error retrying can't help, `stop` is
/// set, or `retries` retries are spent; waits with exponential backoff and jitter
/// between attempts, longer when the server sent Retry-After.
pub(crate) async fn retry<T, F, Fut>(retries: u32, stop: &AtomicBool, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            // Acquire pairs with the Release stores that set `stop`.
            Err(e) if e.is_retryable() && attempt < retries && !stop.load(Ordering::Acquire) => {
                let delay = crate::error::backoff_delay(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                    e.retry_after(),
                );
                monoio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads one page of a listing after another until `f` has seen every entry.
/// Used by `laminar ls`.
pub fn list(location: &Location, driver: DriverChoice, f: &mut dyn FnMut(&crate::backend::Entry)) -> Result<()> {
    let (driver, _) = crate::runtime::select(driver).map_err(Error::Usage)?;
    crate::runtime::block_on(driver, async {
        let ctx = crate::backend::WorkerCtx { http: crate::http::HttpClient::default() };
        let source = location.backend.open_source(&ctx);
        source.check(false).await?;
        let mut token = None;
        loop {
            let page = source.list(&location.prefix, token).await?;
            for entry in &page.entries {
                f(entry);
            }
            token = page.next;
            if token.is_none() {
                return Ok(());
            }
        }
    })
    .map_err(|e| Error::io("start", "runtime", e))?
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send + Sync>() {}
    is_send::<Shared>();
    is_send::<AtomicU64>();
}
