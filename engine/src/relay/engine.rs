//! The engine: workers that outlive any one relay, shared by every relay running.
//!
//! `laminar relay` starts an engine, runs one relay on it and stops it; `laminar
//! serve` keeps one for months and runs many relays (jobs) on it side by side. The
//! workers, their RAM pools and their connection pools belong to the engine; a relay
//! brings its queues and its controls ([`Progress`]). Workers take work from the
//! relays in turn, one task per relay per pass, so a relay with a deep queue cannot
//! starve one that has just started, and memory stays bounded by the pools whatever
//! the number of relays.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    plan, worker, Blame, Location, ObjectResult, Policy, Progress, Queues, RelayOptions, Report, Shared, Stats,
};
use crate::error::{Error, Result};
use crate::metrics::WorkerStats;
use crate::runtime::{Driver, DriverChoice};

/// How an engine runs: the resources every relay on it shares.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Worker threads; None = one per allowed CPU.
    pub workers: Option<usize>,
    /// Total RAM tier, split evenly between workers.
    pub ram_buffer_bytes: u64,
    /// Size of each pool chunk.
    pub chunk_bytes: usize,
    /// Event-loop driver.
    pub driver: DriverChoice,
    /// The NVMe stage, if any.
    pub stage: Option<crate::stage::StageOptions>,
    /// What every connection gets; None keeps the process's current policy.
    pub sockets: Option<laminar_tuning::socket::SocketPolicy>,
}

impl From<&RelayOptions> for EngineOptions {
    fn from(o: &RelayOptions) -> EngineOptions {
        EngineOptions {
            workers: o.workers,
            ram_buffer_bytes: o.ram_buffer_bytes,
            chunk_bytes: o.chunk_bytes,
            driver: o.driver,
            stage: o.stage.clone(),
            sockets: o.sockets.clone(),
        }
    }
}

/// Whether workers are alive, shared with relays.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Set when a worker's event loop ended abnormally (a panic): relays stop and
    /// count what it held as failed instead of waiting for it forever.
    pub(crate) dead: AtomicBool,
}

/// State the workers share with the engine's owner.
pub(crate) struct EngineInner {
    /// Woken when work is queued, a task ends, a relay is added or removed, a relay
    /// is resumed or scaled, and at shutdown.
    pub(crate) event: Arc<event_listener::Event>,
    /// Relays running now.
    jobs: Mutex<Vec<Arc<Shared>>>,
    /// Bumped on every change to `jobs`, so workers re-read it only then.
    pub(crate) generation: AtomicU64,
    pub(crate) shutdown: AtomicBool,
    pub(crate) driver: Driver,
    pub(crate) chunk_bytes: usize,
    pub(crate) pool_chunks_per_worker: usize,
    pub(crate) workers: Vec<Arc<WorkerStats>>,
    /// Workers whose event loop is running.
    pub(crate) alive: AtomicUsize,
    pub(crate) health: Arc<Health>,
    pub(crate) stage: Option<Arc<crate::stage::Stage>>,
}

impl EngineInner {
    /// The relays running now.
    pub(crate) fn jobs(&self) -> Vec<Arc<Shared>> {
        self.jobs.lock().expect("jobs lock").clone()
    }

    fn set_jobs(&self, f: impl FnOnce(&mut Vec<Arc<Shared>>)) {
        f(&mut self.jobs.lock().expect("jobs lock"));
        // Pairs with the Acquire load in the workers' loop.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.event.notify(usize::MAX);
    }
}

/// Workers, RAM pools and connection pools, shared by the relays run on them.
pub struct Engine {
    inner: Arc<EngineInner>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Engine {
    /// Starts the workers and waits until every one runs its event loop. Fails with a
    /// usage error naming the fix when the RAM buffer is too small, the driver asked
    /// for is unavailable, or no event loop can start.
    pub fn start(opts: &EngineOptions) -> Result<Engine> {
        let (driver, fallback) = crate::runtime::select(opts.driver).map_err(Error::Usage)?;
        if let Some(line) = fallback {
            // Once per process: a demo or a served appliance starts more than one engine.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::warn!("{line}"));
        }
        let cpus = laminar_tuning::allowed_cpus();
        let workers = opts.workers.unwrap_or(cpus.len()).max(1);
        let chunk = opts.chunk_bytes as u64;
        let pool_chunks_per_worker = (opts.ram_buffer_bytes / workers as u64 / chunk) as usize;
        if pool_chunks_per_worker < 2 {
            return Err(Error::Usage(format!(
                "--ram-buffer {} is too small for {workers} workers of {} chunks; give at least {}",
                laminar_tuning::HumanBytes(opts.ram_buffer_bytes),
                laminar_tuning::HumanBytes(chunk),
                laminar_tuning::HumanBytes(2 * chunk * workers as u64)
            )));
        }
        if let Some(policy) = &opts.sockets {
            crate::http::set_socket_policy(policy.clone());
        }
        let stage = match &opts.stage {
            Some(s) if s.quota_bytes > 0 => Some(Arc::new(crate::stage::Stage::open(s)?)),
            _ => None,
        };
        let stats: Vec<Arc<WorkerStats>> =
            (0..workers).map(|i| Arc::new(WorkerStats::new(i, cpus.get(i % cpus.len().max(1)).copied()))).collect();
        let inner = Arc::new(EngineInner {
            event: Arc::new(event_listener::Event::new()),
            jobs: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            driver,
            chunk_bytes: opts.chunk_bytes,
            pool_chunks_per_worker,
            workers: stats,
            alive: AtomicUsize::new(0),
            health: Arc::new(Health::default()),
            stage,
        });
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(workers);
        let handles = (0..workers)
            .map(|i| {
                let inner = inner.clone();
                let ready = ready_tx.clone();
                std::thread::Builder::new()
                    .name(format!("laminar-w{i}"))
                    .spawn(move || worker::run(i, inner, ready))
                    .expect("spawn worker thread")
            })
            .collect();
        let engine = Engine { inner, handles: Mutex::new(handles) };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    engine.shutdown();
                    return Err(Error::Usage(why));
                }
                Err(_) => {
                    engine.shutdown();
                    return Err(Error::Usage("a worker thread ended before its event loop started".into()));
                }
            }
        }
        Ok(engine)
    }

    /// The driver the workers run (a worker whose ring could not be made runs epoll;
    /// see [`Engine::workers`]).
    pub fn driver(&self) -> Driver {
        self.inner.driver
    }

    /// Per-worker live state and metric shards.
    pub fn workers(&self) -> &[Arc<WorkerStats>] {
        &self.inner.workers
    }

    /// The NVMe stage, if the engine has one.
    pub fn stage(&self) -> Option<&Arc<crate::stage::Stage>> {
        self.inner.stage.as_ref()
    }

    /// Bytes of RAM tier each worker owns.
    pub fn ram_buffer_bytes(&self) -> u64 {
        (self.inner.pool_chunks_per_worker * self.inner.chunk_bytes * self.inner.workers.len()) as u64
    }

    /// Whether every worker's event loop is running.
    pub fn ready(&self) -> bool {
        !self.inner.shutdown.load(Ordering::Acquire)
            && !self.inner.health.dead.load(Ordering::Acquire)
            && self.inner.alive.load(Ordering::Acquire) == self.inner.workers.len()
    }

    /// Wakes the workers, after a relay's controls changed ([`Progress::paused`]
    /// cleared, [`Progress::transfers`] raised).
    pub fn wake(&self) {
        self.inner.event.notify(usize::MAX);
    }

    /// Runs one relay from `src` to `dst` on this engine's workers, and returns its
    /// report when every object is done, failed, or not attempted because the relay
    /// was stopped. Other relays may run at the same time from other threads. The
    /// engine-wide fields of `opts` (workers, RAM buffer, chunk size, driver) are the
    /// engine's, not the relay's.
    pub fn run(
        &self,
        src: Location,
        dst: Location,
        mut opts: RelayOptions,
        progress: Arc<Progress>,
        on_plan: &mut dyn FnMut(&super::Planned),
    ) -> Result<Report> {
        let started = Instant::now();
        let inner = &self.inner;
        if inner.shutdown.load(Ordering::Acquire) {
            return Err(Error::Usage("the engine is shutting down; no new relay can start".into()));
        }
        let workers = inner.workers.len();
        opts.chunk_bytes = inner.chunk_bytes;
        opts.workers = Some(workers);
        opts.driver = match inner.driver {
            Driver::IoUring => DriverChoice::IoUring,
            Driver::Epoll => DriverChoice::Epoll,
        };
        if progress.transfers.load(Ordering::Relaxed) == 0 {
            progress.transfers.store(opts.transfers.max(1), Ordering::Relaxed);
        }
        progress.rates.start_with(opts.bwlimit.clone(), opts.tpslimit);
        // The destination may ask for more part streams than the default (a store far
        // away); `--part-streams` decides when given.
        let (preferred, objects_per_s_at_start) = {
            let ctx = crate::backend::WorkerCtx::new(crate::http::HttpClient::default());
            dst.backend
                .open_sink(&ctx)
                .map(|s| (s.capabilities().part_streams_per_worker, s.capabilities().objects_per_s_at_start))
                .unwrap_or((0, 0.0))
        };
        if objects_per_s_at_start > 0.0 && progress.throttle.pace_per_s().is_none() {
            progress.throttle.start_paced(objects_per_s_at_start);
        }
        let default_per_worker = if preferred > 0 { preferred } else { 4 };
        let parts_in_flight_per_worker = opts.part_streams.map_or(default_per_worker, |n| n.div_ceil(workers)).max(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let policy = Policy {
            workers,
            pool_chunks_per_worker: inner.pool_chunks_per_worker,
            parts_in_flight_per_worker,
            stage: inner.stage.clone(),
            health: inner.health.clone(),
        };
        let parts_queued_max = policy.parts_queued_max();
        let (journal, claimed) = open_journal(&src, &dst, &opts)?;
        let mut claimed = claimed.unwrap_or_default();
        if !opts.resume {
            claimed.orphans.extend(claimed.resumable.drain().map(|(_, r)| r));
        }
        let shared = Arc::new(Shared {
            journal,
            resumable: Mutex::new(std::mem::take(&mut claimed.resumable)),
            queues: Queues {
                objects: crossbeam_queue::ArrayQueue::new(opts.queue_depth.max(1)),
                parts: crossbeam_queue::ArrayQueue::new(parts_queued_max),
                stage_fills: crossbeam_queue::ArrayQueue::new(parts_queued_max),
                event: inner.event.clone(),
                listing_done: AtomicBool::new(false),
                outstanding: AtomicUsize::new(0),
                results: tx,
            },
            policy,
            stats: Stats::default(),
            fatal: Mutex::new(None),
            waiting: Mutex::new(None),
            quota_spent: AtomicBool::new(false),
            progress,
            opts,
            src,
            dst,
        });
        let mut report = Report {
            driver: Some(inner.driver),
            workers,
            ram_buffer_bytes: self.ram_buffer_bytes(),
            ..Report::default()
        };

        // Check both sides before starting anything, so a wrong URL or key fails fast.
        crate::runtime::block_on(inner.driver, plan::check_locations(&shared))
            .map_err(|e| Error::io("start", "runtime", e))??;
        if !claimed.orphans.is_empty() {
            crate::runtime::block_on(inner.driver, abort_uploads(&shared, std::mem::take(&mut claimed.orphans)))
                .map_err(|e| Error::io("start", "runtime", e))?;
        }

        let dry_run = shared.opts.dry_run;
        if !dry_run {
            crate::runtime::block_on(inner.driver, sweep(&shared)).map_err(|e| Error::io("start", "runtime", e))?;
            let mut refused = false;
            inner.set_jobs(|jobs| {
                // Checked under the lock `shutdown` takes to stop every relay, so a
                // relay is either stopped by it or refused here.
                if inner.shutdown.load(Ordering::Acquire) {
                    refused = true;
                } else {
                    jobs.push(shared.clone());
                }
            });
            if refused {
                return Err(Error::Usage("the engine is shutting down; no new relay can start".into()));
            }
        }
        let planned = crate::runtime::block_on(inner.driver, plan::plan(&shared, &rx, &mut report, on_plan))
            .map_err(|e| Error::io("start", "runtime", e));
        // Pairs with the Acquire loads in the workers' exit check.
        shared.queues.listing_done.store(true, Ordering::Release);
        shared.progress.listing_done.store(true, Ordering::Relaxed);
        shared.queues.event.notify(usize::MAX);
        if !matches!(planned, Ok(Ok(()))) {
            // Pairs with the Acquire loads in `Shared::stopped`.
            shared.progress.request_stop();
        }
        self.collect(&shared, &rx, &mut report);
        if !dry_run {
            inner.set_jobs(|jobs| jobs.retain(|j| !Arc::ptr_eq(j, &shared)));
        }
        if let Some(journal) = &shared.journal {
            let finished = matches!(planned, Ok(Ok(())))
                && !shared.stopped()
                && shared.fatal.lock().expect("fatal lock").is_none();
            if finished {
                // Uploads an earlier run left that this one had no use for (the object
                // was complete, changed or gone): nothing will go on with them.
                let left: Vec<_> = shared.resumable.lock().expect("resumable lock").drain().map(|(_, r)| r).collect();
                if !left.is_empty() {
                    crate::runtime::block_on(inner.driver, abort_uploads(&shared, left))
                        .map_err(|e| Error::io("end", "runtime", e))?;
                }
            }
            journal.finish(if finished {
                "done"
            } else if shared.stopped() {
                "stopped"
            } else {
                "failed"
            });
        }
        planned??;
        if let Some(fatal) = shared.fatal.lock().expect("fatal lock").clone() {
            return Err(Error::Usage(fatal));
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.stopped = shared.stopped();
        let (routes, decisions, compressed) =
            std::mem::take(&mut *shared.stats.decisions.lock().expect("decisions lock"));
        report.routes = routes;
        report.route_decisions = decisions;
        report.objects_compressed = compressed;
        report.stage_bytes_written = shared.stats.stage_bytes_written.load(Ordering::Relaxed);
        report.bytes_resumed = shared.stats.bytes_resumed.load(Ordering::Relaxed);
        report.objects_resumed = shared.stats.objects_resumed.load(Ordering::Relaxed);
        report.objects_restarted = shared.stats.objects_restarted.load(Ordering::Relaxed);
        report.objects_hop_by_hop = shared.stats.objects_hop_by_hop.load(Ordering::Relaxed);
        report.restarted = std::mem::take(&mut *shared.stats.restarted.lock().expect("restarted lock"));
        (report.hashes_compared, report.checks) =
            std::mem::take(&mut *shared.stats.checks.lock().expect("checks lock"));
        report.throttle_cuts = shared.progress.throttle.cuts();
        report.transfers_lowest = shared.progress.throttle.lowest();
        report.waiting = shared.waiting.lock().expect("waiting lock").take();
        Ok(report)
    }

    /// Collects results until every object handed to the workers is finished.
    fn collect(&self, shared: &Shared, rx: &crossbeam_channel::Receiver<ObjectResult>, report: &mut Report) {
        // A result is sent before `outstanding` drops, so once it reads zero every
        // result is already in the channel.
        loop {
            // Pairs with the AcqRel decrement in `Shared::finish`.
            if shared.queues.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => plan::record(report, result),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // A worker died holding work, or none is left: what is outstanding
                    // will never finish. Stop, and count it as failed.
                    if self.inner.health.dead.load(Ordering::Acquire) || self.inner.alive.load(Ordering::Acquire) == 0 {
                        shared.progress.request_stop();
                        let lost = shared.queues.outstanding.load(Ordering::Acquire) as u64;
                        report.objects_failed += lost;
                        shared.progress.objects_failed.fetch_add(lost, Ordering::Relaxed);
                        shared.fatal.lock().expect("fatal lock").get_or_insert_with(|| {
                            "a worker thread failed; objects it held were not finished (see the log above)".into()
                        });
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        while let Ok(result) = rx.try_recv() {
            plan::record(report, result);
        }
    }

    /// Stops every relay still running (as [`Progress::stop`] would), lets the
    /// workers finish what they hold, and joins them. Idempotent.
    pub fn shutdown(&self) {
        // Pairs with the Acquire loads in the workers' exit check.
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.set_jobs(|jobs| {
            for job in jobs.iter() {
                job.progress.request_stop();
            }
        });
        self.inner.event.notify(usize::MAX);
        let handles: Vec<_> = std::mem::take(&mut *self.handles.lock().expect("handles lock"));
        for handle in handles {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        }
    }
}

/// Starts this relay's record in the journal, if it has one (not for a dry run), and
/// claims what earlier runs left open at its destination.
fn open_journal(
    src: &Location,
    dst: &Location,
    opts: &RelayOptions,
) -> Result<(Option<crate::journal::RelayJournal>, Option<crate::journal::Claimed>)> {
    let Some(journal) = opts.journal.as_ref().filter(|_| !opts.dry_run) else { return Ok((None, None)) };
    let options = serde_json::json!({
        "part_size_bytes": opts.part_size_bytes,
        "checksum": opts.checksum.name(),
        "route": opts.route.name(),
        "resume": opts.resume,
    });
    let relay = journal.start_relay(&src.display, &dst.display, &options.to_string())?;
    let claimed = relay.claim(opts.orphan_age)?;
    Ok((Some(relay), Some(claimed)))
}

/// Removes what killed relays left at this relay's destination outside the journal
/// (see [`crate::backend::Sink::sweep`]), with a note of how much.
async fn sweep(shared: &Shared) {
    let ctx = crate::backend::WorkerCtx::new(crate::http::HttpClient::default());
    let swept = match shared.dst.backend.open_sink(&ctx) {
        Ok(sink) => sink.sweep(&shared.dst.prefix).await,
        Err(e) => Err(e),
    };
    match swept {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "removed {n} temporary file{} that a killed relay left at {}",
            if n == 1 { "" } else { "s" },
            shared.dst.display
        ),
        Err(e) => {
            tracing::warn!("what killed relays left at {} was not cleaned up: {e}", shared.dst.display)
        }
    }
}

/// Aborts uploads the journal recorded and nothing will go on with, at this relay's
/// destination; each that is gone from the store, or aborted, leaves the journal.
async fn abort_uploads(shared: &Shared, uploads: Vec<crate::journal::Resumable>) {
    let ctx = crate::backend::WorkerCtx::new(crate::http::HttpClient::default());
    let sink = match shared.dst.backend.open_sink(&ctx) {
        Ok(sink) => sink,
        Err(e) => {
            tracing::warn!("uploads left by an earlier run were not aborted: {e}");
            return;
        }
    };
    let never = AtomicBool::new(false);
    for upload in uploads {
        let key = upload.dst_key.clone();
        let aborted = match sink.resume(upload.state) {
            Ok(session) => {
                super::retry(shared.opts.retries, &never, Blame::Remote(shared.dst.remote_label()), || session.abort())
                    .await
            }
            Err(e) => Err(e),
        };
        match aborted {
            Ok(()) => {
                if let Some(journal) = &shared.journal {
                    journal.ended(&key);
                }
            }
            Err(e) => tracing::warn!("the upload of {key} left by an earlier run was not aborted: {e}"),
        }
    }
}
