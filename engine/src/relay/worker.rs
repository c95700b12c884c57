//! A worker: one pinned thread, one event loop, one buffer pool, its own connections.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::transfer::{self, Ctx};
use super::Shared;
use crate::backend::WorkerCtx;
use crate::http::HttpClient;
use crate::pool::BufferPool;
use crate::runtime::Driver;

pub(super) fn run(index: usize, cpu: Option<usize>, driver: Driver, shared: Arc<Shared>) {
    if let Some(cpu) = cpu {
        if let Err(e) = laminar_tuning::pin_current_thread(cpu) {
            eprintln!("laminar: worker {index} not pinned to CPU {cpu}: {e}");
        }
    }
    let mut result = crate::runtime::block_on(driver, run_loop(shared.clone()));
    if let (Err(e), Driver::IoUring) = (&result, driver) {
        // The probe passed on the main thread, but this thread's ring could not be made
        // (e.g. a per-thread memlock charge on old kernels): carry on with epoll.
        eprintln!("laminar: worker {index}: io_uring ring could not be created ({e}); using epoll for this worker");
        result = crate::runtime::block_on(Driver::Epoll, run_loop(shared.clone()));
    }
    if let Err(e) = result {
        // No event loop at all: stop the relay loudly rather than leave work unclaimed.
        eprintln!("laminar: worker {index} could not start an event loop: {e}");
        *shared.fatal.lock().expect("fatal lock") = Some(format!("worker {index} could not start an event loop: {e}"));
        // Pairs with the Acquire loads in `Shared::stopped`.
        shared.progress.stop.store(true, Ordering::Release);
        shared.event.notify(usize::MAX);
    }
}

async fn run_loop(shared: Arc<Shared>) {
    let wctx = WorkerCtx { http: HttpClient::default() };
    let ctx = Rc::new(Ctx {
        src: shared.src.backend.open_source(&wctx),
        dst: shared.dst.backend.open_sink(&wctx),
        pool: BufferPool::new(shared.opts.chunk_bytes, shared.pool_chunks_per_worker),
        shared: shared.clone(),
    });
    let objects_in_flight = Rc::new(Cell::new(0usize));
    let parts_in_flight = Rc::new(Cell::new(0usize));
    let objects_max = shared.in_flight_per_worker;
    let parts_max = shared.parts_in_flight_per_worker;
    let can_take = || {
        (parts_in_flight.get() < parts_max && !shared.parts.is_empty())
            || (objects_in_flight.get() < objects_max && !shared.objects.is_empty())
    };
    loop {
        // Parts first: finishing started objects keeps uploads and memory few.
        if parts_in_flight.get() < parts_max {
            if let Some(task) = shared.parts.pop() {
                spawn(&shared, &parts_in_flight, transfer::run_part(ctx.clone(), task));
                continue;
            }
        }
        if objects_in_flight.get() < objects_max {
            if let Some(job) = shared.objects.pop() {
                spawn(&shared, &objects_in_flight, transfer::run_object(ctx.clone(), job));
                continue;
            }
        }
        let listener = shared.event.listen();
        // Re-check after registering, so a push or completion in between is not missed.
        if can_take() {
            continue;
        }
        let idle = objects_in_flight.get() == 0 && parts_in_flight.get() == 0;
        if idle && shared.listing_done.load(Ordering::Acquire) && shared.outstanding.load(Ordering::Acquire) == 0 {
            break;
        }
        listener.await;
    }
}

/// Runs a task on this worker, counting it in `in_flight` until it ends. Its end
/// wakes the workers, which may now take more work or exit.
fn spawn(shared: &Arc<Shared>, in_flight: &Rc<Cell<usize>>, task: impl std::future::Future<Output = ()> + 'static) {
    in_flight.set(in_flight.get() + 1);
    let in_flight = in_flight.clone();
    let shared = shared.clone();
    monoio::spawn(async move {
        task.await;
        in_flight.set(in_flight.get() - 1);
        shared.event.notify(usize::MAX);
    });
}
