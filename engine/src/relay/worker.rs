//! A worker: one pinned thread, one event loop, one buffer pool, its own connections,
//! serving every relay that runs on the engine.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::engine::EngineInner;
use super::transfer::{self, Ctx};
use super::Shared;
use crate::backend::WorkerCtx;
use crate::http::HttpClient;
use crate::metrics::WorkerStats;
use crate::pool::BufferPool;
use crate::runtime::Driver;

/// Tells the engine whether this worker's event loop started (Err names why not).
pub(super) type Ready = crossbeam_channel::Sender<Result<(), String>>;

pub(super) fn run(index: usize, engine: Arc<EngineInner>, ready: Ready) {
    let stats = engine.workers[index].clone();
    if let Some(cpu) = stats.cpu {
        if let Err(e) = laminar_tuning::pin_current_thread(cpu) {
            tracing::warn!("worker {index} not pinned to CPU {cpu}: {e}");
        }
    }
    crate::metrics::set_thread_shard(stats.shard.clone());
    let driver = engine.driver;
    // A panic in a task (a broken invariant) ends this worker loudly but not the
    // process: the engine is marked unhealthy, relays stop waiting for what it held,
    // and /readyz says so.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::runtime::block_on(driver, run_loop(engine.clone(), index, driver, ready.clone()))
    }));
    let mut result = match caught {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("worker {index} failed: {what}");
            return;
        }
    };
    if let (Err(e), Driver::IoUring) = (&result, driver) {
        // The probe passed on the main thread, but this thread's ring could not be made
        // (e.g. a per-thread memlock charge on old kernels): carry on with epoll.
        tracing::warn!("worker {index}: io_uring ring could not be created ({e}); using epoll for this worker");
        result = crate::runtime::block_on(Driver::Epoll, run_loop(engine.clone(), index, Driver::Epoll, ready.clone()));
    }
    if let Err(e) = result {
        // No event loop at all: the engine refuses to start, naming the cause.
        let _ = ready.send(Err(format!("worker {index} could not start an event loop: {e}")));
    }
}

/// One relay as this worker sees it: its stores opened on this worker's connections,
/// and what this worker has in flight for it.
struct Slot {
    shared: Arc<Shared>,
    /// None when this worker could not open the relay's stores (the relay is then
    /// stopped with that error, and this worker only drains its queue).
    ctx: Option<Rc<Ctx>>,
    objects: Rc<Cell<usize>>,
    parts: Rc<Cell<usize>>,
    /// Parts being read from the source into the stage.
    fills: Rc<Cell<usize>>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.objects.get() == 0 && self.parts.get() == 0 && self.fills.get() == 0
    }

    /// Whether this relay has a task this worker may start now. A paused relay gives
    /// none, unless it is also stopped: then its queue drains as "not attempted".
    fn can_take(&self) -> bool {
        let s = &self.shared;
        if s.progress.paused.load(Ordering::Acquire) && !s.stopped() {
            return false;
        }
        (self.parts.get() < s.policy.parts_in_flight_per_worker && !s.queues.parts.is_empty())
            || (self.fills.get() < s.policy.parts_in_flight_per_worker && !s.queues.stage_fills.is_empty())
            || (self.objects.get() < s.objects_in_flight_per_worker() && !s.queues.objects.is_empty())
    }

    /// Starts one task if the relay has one this worker may take.
    fn take_one(&self, stats: &Arc<WorkerStats>) -> bool {
        if !self.can_take() {
            return false;
        }
        let s = &self.shared;
        let Some(ctx) = &self.ctx else {
            let Some(job) = s.queues.objects.pop() else { return false };
            let reason = s.fatal.lock().expect("fatal lock").clone().unwrap_or_default();
            s.finish(job.src_key().to_string(), super::Outcome::NotAttempted { reason });
            return true;
        };
        // Parts first: finishing started objects keeps uploads and memory few.
        if self.parts.get() < s.policy.parts_in_flight_per_worker {
            if let Some(task) = s.queues.parts.pop() {
                spawn(s, &self.parts, stats, true, super::parts::run_part(ctx.clone(), task));
                return true;
            }
        }
        // Then stage fills: they drain the source at its own pace, ahead of the uploads.
        if self.fills.get() < s.policy.parts_in_flight_per_worker {
            if let Some(task) = s.queues.stage_fills.pop() {
                spawn(s, &self.fills, stats, true, super::spill::run_fill(ctx.clone(), task));
                return true;
            }
        }
        if self.objects.get() < s.objects_in_flight_per_worker() {
            if let Some(job) = s.queues.objects.pop() {
                spawn(s, &self.objects, stats, false, transfer::run_object(ctx.clone(), job));
                return true;
            }
        }
        false
    }
}

async fn run_loop(engine: Arc<EngineInner>, index: usize, driver: Driver, ready: Ready) {
    let stats = engine.workers[index].clone();
    let wctx = WorkerCtx::new(HttpClient::default());
    let pool = BufferPool::with_gauge(engine.chunk_bytes, engine.pool_chunks_per_worker, stats.pool_in_use.clone());
    stats.pool_chunks.store(pool.chunk_count(), Ordering::Relaxed);
    stats.chunk_bytes.store(pool.chunk_bytes(), Ordering::Relaxed);
    stats.started(driver);
    // Pairs with the Acquire loads in `Engine::ready` and the relays' collect loops.
    engine.alive.fetch_add(1, Ordering::AcqRel);
    let _alive = AliveGuard(engine.clone());
    let _ = ready.send(Ok(()));
    let mut slots: Vec<Slot> = Vec::new();
    let mut seen_generation = u64::MAX;
    let mut turn = 0usize;
    loop {
        // Pairs with the AcqRel bump in `EngineInner::set_jobs`.
        let generation = engine.generation.load(Ordering::Acquire);
        if generation != seen_generation {
            seen_generation = generation;
            let jobs = engine.jobs();
            for job in &jobs {
                if !slots.iter().any(|s| Arc::ptr_eq(&s.shared, job)) {
                    // The worker's connections, under this relay's rate limits.
                    let wctx = WorkerCtx {
                        http: wctx.http.with_rates(job.progress.rates.clone()),
                        turns: Some(job.progress.clone()),
                    };
                    let opened = job.src.backend.open_source(&wctx).and_then(|src| {
                        let dst = job.dst.backend.open_sink(&wctx)?;
                        Ok(Rc::new(Ctx { src, dst, pool: pool.clone(), shared: job.clone() }))
                    });
                    let ctx = match opened {
                        Ok(ctx) => Some(ctx),
                        Err(e) => {
                            job.fatal.lock().expect("fatal lock").get_or_insert_with(|| e.to_string());
                            // Pairs with the Acquire loads in `Shared::stopped`.
                            job.progress.request_stop();
                            None
                        }
                    };
                    slots.push(Slot {
                        ctx,
                        shared: job.clone(),
                        objects: Rc::new(Cell::new(0)),
                        parts: Rc::new(Cell::new(0)),
                        fills: Rc::new(Cell::new(0)),
                    });
                }
            }
            // A relay that ended leaves once this worker holds nothing of it.
            slots.retain(|s| !s.idle() || jobs.iter().any(|j| Arc::ptr_eq(j, &s.shared)));
        }
        // One task per relay per pass, starting from a different relay each pass.
        let mut took = false;
        for i in 0..slots.len() {
            took |= slots[(turn + i) % slots.len()].take_one(&stats);
        }
        turn = turn.wrapping_add(1);
        if took {
            continue;
        }
        let listener = engine.event.listen();
        // Re-check after registering, so a push, completion or new relay in between
        // is not missed.
        if engine.generation.load(Ordering::Acquire) != seen_generation || slots.iter().any(Slot::can_take) {
            continue;
        }
        slots.retain(|s| !(s.idle() && s.shared.finished()));
        // Pairs with the Release store in `Engine::shutdown`.
        if engine.shutdown.load(Ordering::Acquire) && slots.iter().all(Slot::idle) && engine.jobs().is_empty() {
            break;
        }
        listener.await;
    }
}

/// Counts a worker out when its loop ends, normally or by a panic; a panic also marks
/// the engine unhealthy so relays stop waiting for what the worker held.
struct AliveGuard(Arc<EngineInner>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.health.dead.store(true, Ordering::Release);
            self.0.event.notify(usize::MAX);
        }
        // Pairs with the Acquire loads in `Engine::ready` and the collect loops.
        self.0.alive.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs a task on this worker, counting it in `in_flight` until it ends. Its end
/// wakes the workers, which may now take more work or exit.
fn spawn(
    shared: &Arc<Shared>,
    in_flight: &Rc<Cell<usize>>,
    stats: &Arc<WorkerStats>,
    part: bool,
    task: impl std::future::Future<Output = ()> + 'static,
) {
    in_flight.set(in_flight.get() + 1);
    let gauge = if part { &stats.parts_in_flight } else { &stats.objects_in_flight };
    gauge.fetch_add(1, Ordering::Relaxed);
    let in_flight = in_flight.clone();
    let shared = shared.clone();
    let stats = stats.clone();
    monoio::spawn(async move {
        task.await;
        in_flight.set(in_flight.get() - 1);
        let gauge = if part { &stats.parts_in_flight } else { &stats.objects_in_flight };
        gauge.fetch_sub(1, Ordering::Relaxed);
        shared.queues.event.notify(usize::MAX);
    });
}
