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
    let result = crate::runtime::block_on(driver, run_loop(shared.clone()));
    if let Err(e) = result {
        // The runtime could not start (e.g. the ring could not be created for this
        // thread): fail this worker's share loudly rather than hang the relay.
        eprintln!("laminar: worker {index} could not start its {driver} event loop: {e}");
        shared.stop.store(true, Ordering::Release);
        *shared.fatal.lock().expect("fatal lock") = Some(format!("worker {index} could not start: {e}"));
    }
}

async fn run_loop(shared: Arc<Shared>) {
    let wctx = WorkerCtx { http: HttpClient::default() };
    let ctx = Rc::new(Ctx {
        src: shared.src.backend.open_source(&wctx),
        dst: shared.dst.backend.open_sink(&wctx),
        pool: BufferPool::new(shared.opts.chunk_bytes, shared.pool_chunks_per_worker),
        shared: shared.clone(),
        local_done: event_listener::Event::new(),
    });
    let in_flight = Rc::new(Cell::new(0usize));
    let max = shared.in_flight_per_worker;
    loop {
        if in_flight.get() >= max {
            let listener = ctx.local_done.listen();
            if in_flight.get() >= max {
                listener.await;
            }
            continue;
        }
        if let Some(task) = shared.parts.pop() {
            spawn(&ctx, &in_flight, transfer::run_part(ctx.clone(), task));
            continue;
        }
        if let Some(job) = shared.objects.pop() {
            spawn(&ctx, &in_flight, transfer::run_object(ctx.clone(), job));
            continue;
        }
        let listener = shared.event.listen();
        // Re-check after registering, so a push between the pops and here is not missed.
        if !shared.parts.is_empty() || !shared.objects.is_empty() {
            continue;
        }
        if shared.listing_done.load(Ordering::Acquire) && shared.outstanding.load(Ordering::Acquire) == 0 {
            break;
        }
        listener.await;
    }
    // Everything is finished; tasks still running here can only be tails of finished
    // objects (none by construction), so wait for them before the runtime drops.
    while in_flight.get() > 0 {
        let listener = ctx.local_done.listen();
        if in_flight.get() > 0 {
            listener.await;
        }
    }
}

fn spawn(ctx: &Rc<Ctx>, in_flight: &Rc<Cell<usize>>, task: impl std::future::Future<Output = ()> + 'static) {
    in_flight.set(in_flight.get() + 1);
    let in_flight = in_flight.clone();
    let ctx = ctx.clone();
    monoio::spawn(async move {
        task.await;
        in_flight.set(in_flight.get() - 1);
        ctx.local_done.notify(usize::MAX);
    });
}
