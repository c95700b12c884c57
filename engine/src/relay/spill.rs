//! The NVMe stage on the path of large objects: which objects go through it and
//! why, parts that spill to it when the destination falls behind, the fills that
//! read parts from the source into it at the source's pace, and the sends from it.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parts::RING_CHUNKS;
use super::transfer::{decision, Ctx, ObjectJob, PartTask, Phase};
use super::Side;
use crate::backend::{PartRecord, PartSpec, UploadMode, UploadSession};
use crate::checksum::{Checksum, ChecksumAlgo, Hashers};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::Body;
use crate::stage::StageFile;

/// Decides the path of a large object and records why; true if it goes through the
/// stage (whose file is then made and its space reserved).
pub(super) async fn route_large(ctx: &Ctx, job: &ObjectJob, parts: u32) -> bool {
    use crate::relay::Route;
    if job.large().copy.is_some() {
        job.large().route = Some(decision(job, "copy", "same store: server-side copy".into(), None));
        return false;
    }
    let format = sniff_head(ctx, job).await;
    let parallel = ctx.dst.capabilities().upload == UploadMode::Parallel;
    let want = match ctx.shared.opts.route {
        Route::Ram => Err("--route ram"),
        Route::Stage => Ok("--route stage".to_string()),
        Route::Auto if !parallel => Ok("the destination takes one ordered stream".into()),
        Route::Auto if ctx.shared.destination_slower() => Ok("the destination is slower than the source".into()),
        Route::Auto => Err("the destination keeps up"),
    };
    let (route, reason, file) = match want {
        Err(why) => ("stream", why.to_string(), None),
        Ok(why) => match &ctx.shared.policy.stage {
            None => ("stream", format!("{why}, but no stage is configured"), None),
            Some(stage) => match stage.create(job.size()) {
                Ok(file) => ("stage", why, Some(Arc::new(file))),
                Err(full) => ("stream", format!("{why}, but {full}"), None),
            },
        },
    };
    let staged = file.is_some();
    let mut m = job.large();
    m.route = Some(decision(job, route, reason, format));
    m.stage = file;
    if staged {
        m.advance(Phase::Staging);
    }
    m.staged = vec![None; parts as usize];
    // Streamed objects may still spill part by part if the destination falls behind;
    // a staged object's parts are filled once, when it is routed.
    m.spilled = vec![staged || !parallel; parts as usize];
    m.no_stage_room = !staged && ctx.shared.opts.route != crate::relay::Route::Auto;
    staged
}

/// Sends a part that was about to stream to the stage instead, when the destination
/// has fallen behind the source; true if it did (the part comes back after its fill).
pub(super) fn spill(ctx: &Ctx, task: &PartTask) -> bool {
    if ctx.shared.opts.route != crate::relay::Route::Auto || !ctx.shared.destination_slower() || ctx.stopped() {
        return false;
    }
    let Some(stage) = &ctx.shared.policy.stage else { return false };
    let job = &task.job;
    let index = task.index as usize;
    let mut m = job.large();
    let filled = m.staged.get(index).is_some_and(Option::is_some);
    // A chained object's parts are hashed in order from RAM (see `super::chain`).
    if m.copy.is_some()
        || m.chain.is_some()
        || m.failure.is_some()
        || m.no_stage_room
        || filled
        || m.spilled.get(index).is_none_or(|s| *s)
    {
        return false;
    }
    if m.stage.is_none() {
        match stage.create(job.size()) {
            Ok(file) => {
                m.stage = Some(Arc::new(file));
                m.advance(Phase::Staging);
                if let Some(route) = m.route.as_mut() {
                    route.route = "stage";
                    route.reason = format!("the destination is slower than the source (from part {})", index + 1);
                }
            }
            Err(_) => {
                m.no_stage_room = true;
                return false;
            }
        }
    }
    m.spilled[index] = true;
    drop(m);
    // The part keeps its place in its object's window: it moves from one queue to
    // the other.
    if ctx.shared.queues.stage_fills.push(task.clone()).is_err() {
        unreachable!("a part queue holds at most large_open_max x part_window parts");
    }
    ctx.shared.queues.event.notify(usize::MAX);
    true
}

/// The compressed format of an object's first bytes, from one small ranged read.
async fn sniff_head(ctx: &Ctx, job: &ObjectJob) -> Option<&'static str> {
    let end = (crate::sniff::SNIFF_BYTES as u64).min(job.size());
    let chunks = ctx.pool.acquire(1).await;
    let mut hashers = Hashers::new(ChecksumAlgo::Crc32c, false);
    let (body, _) = ctx.src.read(job.src_key(), Some((0, end)), Body::new(chunks), &mut hashers).await.ok()?;
    body.chunks.first().and_then(|c| crate::sniff::sniff(c.as_slice()))
}

/// A worker's stage-fill task: reads one part from the source into the stage file,
/// then queues its upload (from the stage, or from the source if staging failed).
pub(crate) async fn run_fill(ctx: Rc<Ctx>, task: PartTask) {
    fill(&ctx, &task).await;
    if ctx.shared.queues.parts.push(task).is_err() {
        unreachable!("a part queue holds at most large_open_max x part_window parts");
    }
    ctx.shared.queues.event.notify(usize::MAX);
}

pub(super) async fn fill(ctx: &Ctx, task: &PartTask) {
    let job = &task.job;
    let range = job.large().progress.part_range(task.index);
    let file = {
        let m = job.large();
        if m.failure.is_some() {
            return;
        }
        m.stage.clone()
    };
    let Some(file) = file else { return };
    if ctx.stopped() {
        return;
    }
    match ctx.retry(Side::Source, || fill_part(ctx, job, &file, range)).await {
        Ok((sum, source_busy)) => {
            ctx.shared.stats.stage_bytes_written.fetch_add(range.1 - range.0, Ordering::Relaxed);
            job.large().staged[task.index as usize] = Some((sum, source_busy));
        }
        Err(e) => tracing::warn!(
            "staging part {} of {} failed ({e}); it is sent from the source instead",
            task.index + 1,
            job.src_key()
        ),
    }
}

/// Reads one part from the source into the stage; returns the checksum of what was
/// staged and how long the source was busy (not waiting for the stage to write).
async fn fill_part(ctx: &Ctx, job: &ObjectJob, file: &StageFile, range: (u64, u64)) -> Result<(Checksum, Duration)> {
    let algo = ctx.shared.opts.checksum;
    let len = range.1 - range.0;
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len).min(RING_CHUNKS)).await;
    let (filler, drain) = crate::pool::ring::ring(chunks);
    let waits = filler.waits();
    let started = Instant::now();
    let read = async {
        let mut hashers = Hashers::new(algo, false);
        super::parts::keep_source_blocks(job, &mut hashers, len);
        let seen =
            timed(ctx.src_label(), Op::Get, ctx.src.read_stream(job.src_key(), range, &filler, &mut hashers)).await?;
        super::transfer::pinned(job, seen.as_deref())?;
        super::parts::record_source_blocks(job, range.0, hashers.take_blocks());
        // As for a streamed part: the source's time ends with its last byte, not
        // when the stage has written it.
        let busy = started.elapsed().saturating_sub(waits.reader());
        filler.finish(hashers.finish().0);
        Ok::<Duration, Error>(busy)
    };
    let (read, written) = monoio::join!(read, file.write_from(range.0, drain));
    match (read, written) {
        (Ok(busy), Ok(sum)) => Ok((sum, busy)),
        (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
    }
}

/// Sends one staged part from the stage file, and checks that the bytes read back are
/// the bytes staged. Returns the part and how long the destination was busy with it:
/// not the time spent waiting for the stage to read, so that a stage slower than the
/// destination is not taken for a slow destination.
pub(super) async fn part_from_stage(
    ctx: &Ctx,
    job: &ObjectJob,
    session: &dyn UploadSession,
    spec: PartSpec,
    file: &StageFile,
    staged: &Checksum,
) -> Result<(PartRecord, Duration)> {
    let algo = ctx.shared.opts.checksum;
    let (len, range, index) = (spec.len, spec.range(), spec.number - 1);
    let check = |sum: &Checksum| -> Result<()> {
        if sum != staged {
            return Err(Error::Integrity {
                op: "stage-read",
                target: job.src_key().to_string(),
                detail: format!("part {} was staged as {staged} but reads back as {sum}", index + 1),
            });
        }
        Ok(())
    };
    if session.streams(algo) {
        let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len).min(RING_CHUNKS)).await;
        let (filler, drain) = crate::pool::ring::ring(chunks);
        let waits = filler.waits();
        let started = Instant::now();
        let read = file.read_into(range.0, len, filler, algo);
        let write = timed(ctx.dst_label(), Op::PutPart, session.put_stream(spec, algo, drain));
        let (read, write) = monoio::join!(read, write);
        let sum = read?;
        // A mismatch fails the part, which is then sent again from the source; the
        // store keeps only the last upload of a part number.
        check(&sum)?;
        let token = write?;
        let busy = started.elapsed().saturating_sub(waits.writer());
        return Ok((PartRecord::new(spec, token, sum), busy));
    }
    // Whole parts: read the part into the RAM tier, then send it with its checksum.
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len)).await;
    let (filler, drain) = crate::pool::ring::ring(chunks);
    let read = file.read_into(range.0, len, filler, algo);
    let collect = async {
        let mut body = Vec::new();
        loop {
            match drain.next().await {
                crate::pool::ring::Next::Chunk(c) => body.push(c),
                crate::pool::ring::Next::End(_) | crate::pool::ring::Next::Aborted => return body,
            }
        }
    };
    let (sum, body) = monoio::join!(read, collect);
    let sum = sum?;
    check(&sum)?;
    let started = Instant::now();
    let put = session.put(spec, Body::new(body), std::slice::from_ref(&sum));
    let token = timed(ctx.dst_label(), Op::PutPart, put).await?;
    Ok((PartRecord::new(spec, token, sum), started.elapsed()))
}

/// How many times longer than the source the destination must be busy with a part to
/// count as slower: well clear of the usual spread between a store's GETs and PUTs.
const SLOWER_FACTOR: u32 = 3;

/// Votes on whether the destination is the slower side, from one part's busy times
/// (each side's time less its waits for the other): slower when the destination took
/// over SLOWER_FACTOR times as long as the source and the source would have sat idle
/// for `spill_wait` or more. Streamed parts vote, and so do staged ones, so a
/// destination that catches up ends the spilling.
pub(super) fn vote_destination_slower(ctx: &Ctx, destination_busy: Duration, source_busy: Duration) {
    let slower = destination_busy > source_busy * SLOWER_FACTOR
        && destination_busy.saturating_sub(source_busy) >= ctx.shared.opts.spill_wait;
    let _ = ctx.shared.stats.dst_bound_score.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
        Some(if slower { (s + 1).min(8) } else { (s - 1).max(-8) })
    });
}
