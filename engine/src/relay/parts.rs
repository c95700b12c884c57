//! Large objects in parallel parts: the plan (part size, the upload session), each
//! part (streamed through a ring, whole, from the stage, or copied server-side), and
//! the end (the last part to finish completes the session, or aborts it).
//!
//! Every worker may send parts of one object: the session's state travels with the
//! object and each worker reopens it on its own handle ([`crate::backend::Sink::resume`]). A retried
//! part first asks the session what the store has committed, so a part whose answer
//! was lost is not sent twice.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::chain;
use super::progress::choose_part_size;
use super::spill::{part_from_stage, spill, vote_destination_slower};
use super::transfer::{gone, put_args, queue_next_part, server_side, Ctx, ObjectJob, PartTask, Phase};
use super::{Blame, Outcome, Side};
use crate::backend::{Committed, CopySource, PartRecord, PartSpec, SessionState, UploadPlan, UploadSession};
use crate::checksum::{crc32c_combine, BlockKind, Checksum, ChecksumAlgo, Hashers, PartBlocks};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::Body;

/// Chunks a streamed part's ring holds: enough to keep both connections busy, few
/// enough that the bytes are still in cache when they are sent.
pub(super) const RING_CHUNKS: usize = 4;

/// Stats the source, picks the part size, and begins the upload session; returns
/// the part count.
pub(super) async fn plan_large(ctx: &Ctx, job: &ObjectJob) -> Result<u32> {
    let limits = ctx.dst.capabilities().parts;
    let pool_bytes = (ctx.pool.chunk_count() * ctx.pool.chunk_bytes()) as u64;
    // A source that vouches with Dropbox's content_hash is checked by combining the
    // parts' 4 MiB block digests, which needs parts on 4 MiB boundaries (where a
    // worker's share of the RAM tier holds such a part).
    let mut alignment_bytes = limits.part_alignment_bytes.max(1);
    if ctx.src.capabilities().reports.contains(&crate::backend::HashFamily::DropboxContentHash) {
        let aligned = lcm(alignment_bytes, crate::checksum::DROPBOX_BLOCK_BYTES);
        if aligned <= pool_bytes {
            alignment_bytes = aligned;
        }
    }
    let info = ctx
        .retry(Side::Source, || timed(ctx.src_label(), Op::Stat, ctx.src.stat(job.src_key())))
        .await?
        .ok_or_else(|| gone(job))?;
    if info.size != job.size() {
        return Err(Error::protocol("stat", job.src_key(), "the object changed size during the relay"));
    }
    // Parts are copied server-side only into parallel sessions: an ordered stream is
    // sent bytes, which must then be checked like any other.
    let parallel = ctx.dst.capabilities().upload == crate::backend::UploadMode::Parallel;
    let copy = server_side(ctx, job).filter(|_| parallel);
    // Prefer parts that fit a worker's share of the RAM tier, so small buffers still
    // work; parts of whole source parts are rounded down to, so as not to grow past it.
    let pick = |alignment: u64, whole_source_parts: bool| {
        let mut preferred = ctx.shared.opts.part_size_bytes.min(pool_bytes);
        if whole_source_parts {
            preferred = (preferred / alignment).max(1) * alignment;
        }
        choose_part_size(
            job.size(),
            preferred,
            limits.min_part_bytes,
            limits.max_part_bytes,
            limits.max_parts,
            alignment,
        )
    };
    // A source that vouches only by the MD5 of its own parts' MD5s is checked by
    // reading in whole multiples of its parts, where a worker's RAM holds them and the
    // destination takes such parts.
    let wants_composite = copy.is_none() && asks_composite(ctx, &info) && vouches_only_by_parts(&info);
    let composite = match wants_composite {
        true => {
            ctx.retry(Side::Source, || timed(ctx.src_label(), Op::Stat, ctx.src.composite(job.src_key(), &info)))
                .await?
        }
        false => None,
    }
    .filter(|c| checks_composite(ctx, c))
    .and_then(|c| {
        let aligned = lcm(alignment_bytes, c.part_bytes);
        let part = pick(aligned, true)?;
        (part <= pool_bytes).then_some((c, part))
    });
    let (composite, part_size) = match composite {
        Some((c, part)) => (Some(c), part),
        None => (
            None,
            pick(alignment_bytes, false).ok_or_else(|| Error::InvalidKey {
                op: "plan",
                key: job.src_key().to_string(),
                reason: format!("{} bytes is more than the destination accepts in one object", job.size()),
            })?,
        ),
    };
    if copy.is_none() && part_size > pool_bytes {
        return Err(Error::Usage(format!(
            "{} needs parts of {}, more than a worker's share of the RAM buffer ({}); raise --ram-buffer or lower --workers",
            job.src_key(),
            laminar_tuning::HumanBytes(part_size),
            laminar_tuning::HumanBytes(pool_bytes)
        )));
    }
    let args = put_args(&info, job.src_version(), None);
    let checksum = copy.is_none().then_some(ctx.shared.opts.checksum);
    let plan = UploadPlan { size: job.size(), single: false, checksum };
    let resumed = match ctx.shared.take_resumable(job.src_key()) {
        Some(r) => resume(ctx, job, r, part_size, plan).await,
        None => None,
    };
    let resumed_any = resumed.is_some();
    let (state, done) = match resumed {
        Some(r) => (r.state.clone(), Some(r)),
        None => {
            let state = ctx
                .retry(Side::Destination, || async {
                    let session = timed(ctx.dst_label(), Op::Create, ctx.dst.begin(job.dst_key(), plan, &args)).await?;
                    Ok(session.state().clone())
                })
                .await?;
            if let Some(journal) = &ctx.shared.journal {
                journal.begun(job.src_key(), job.src_version(), job.size(), part_size, &state);
            }
            (state, None)
        }
    };
    let mut large = job.large();
    large.source = info;
    large.composite = composite;
    large.copy = copy;
    let progress = &mut large.progress;
    progress.part_size = part_size;
    progress.session = Some(state.clone());
    progress.parts = vec![None; progress.part_count() as usize];
    let count = progress.part_count();
    large.source_blocks = vec![None; count as usize];
    if large.copy.is_none() && large.composite.is_none() {
        large.chain = chain::wanted(&large.source.checksums).map(|reported| chain::Chain::new(reported, count));
    }
    if let Some(done) = done {
        let mut bytes = 0;
        for record in done.parts {
            let index = record.number as usize - 1;
            bytes += record.len;
            if let Some(blocks) = done.blocks.get(&record.number) {
                large.source_blocks[index] = Some(blocks.clone());
            }
            large.progress.parts[index] = Some(record);
        }
        large.resumed_offset = done.held;
        // Parts sent by an earlier run were not hashed in this one, in order or at all.
        if let Some(chain) = large.chain.as_mut() {
            chain.break_off();
        }
        // An ordered stream's store may hold more than the parts recorded: a part in part.
        let held = done.held.unwrap_or(bytes).max(bytes);
        ctx.shared.stats.bytes_resumed.fetch_add(held, Ordering::Relaxed);
        ctx.shared.stats.objects_resumed.fetch_add(1, Ordering::Relaxed);
    }
    large.advance(Phase::Uploading);
    drop(large);
    if !resumed_any {
        ctx.shared.emit(job.src_key(), Outcome::SessionBegun(Box::new(state)));
    }
    Ok(count)
}

/// An upload an earlier run left, reopened: its session, the parts the store still
/// holds as the journal recorded them, and (an ordered stream) how many bytes it holds.
struct Resumed {
    state: SessionState,
    parts: Vec<PartRecord>,
    blocks: std::collections::HashMap<u32, crate::checksum::PartBlocks>,
    held: Option<u64>,
}

/// Reopens the upload `r` an earlier run left for `job`, when it is of this very
/// object (source version, size, key, part size, plan) and its session is still open:
/// the parts the journal recorded are kept where the store still holds them. Otherwise
/// the old upload is aborted, and None says to begin a new one.
async fn resume(
    ctx: &Ctx,
    job: &ObjectJob,
    r: crate::journal::Resumable,
    part_size: u64,
    plan: UploadPlan,
) -> Option<Resumed> {
    let same = r.version == job.src_version()
        && r.size == job.size()
        && r.dst_key == job.dst_key()
        && r.part_size == part_size
        && r.state.plan == plan;
    let Ok(session) = ctx.dst.resume(r.state.clone()) else {
        // A record this store cannot reopen: there is nothing to go on with or abort.
        if let Some(journal) = &ctx.shared.journal {
            journal.ended(&r.dst_key);
        }
        return None;
    };
    let committed = if same { ctx.retry(Side::Destination, || session.committed()).await.ok() } else { None };
    let progress = crate::relay::ObjectProgress {
        src_key: job.src_key().to_string(),
        dst_key: job.dst_key().to_string(),
        size: job.size(),
        src_version: job.src_version().to_string(),
        part_size,
        session: None,
        parts: Vec::new(),
    };
    let fits = |p: &PartRecord| {
        p.number >= 1 && p.number <= progress.part_count() && {
            let spec = progress.part_spec(p.number - 1);
            spec.offset == p.offset && spec.len == p.len
        }
    };
    let kept = match committed {
        Some(Committed::Parts(held)) => {
            let parts: Vec<PartRecord> = r
                .state
                .parts
                .iter()
                .filter(|p| fits(p))
                .filter(|p| {
                    held.iter().any(|h| {
                        h.number == p.number
                            && h.len == p.len
                            && (h.checksum.bytes.is_empty() || h.checksum == p.checksum)
                    })
                })
                .cloned()
                .collect();
            Some((parts, None))
        }
        Some(Committed::Offset(held)) => {
            // The parts recorded from the first on, up to what the store holds; the
            // stream goes on inside the part after them, or the object starts over.
            let mut parts: Vec<PartRecord> = r.state.parts.iter().filter(|p| fits(p)).cloned().collect();
            parts.sort_by_key(|p| p.number);
            let contiguous = parts.iter().enumerate().take_while(|(i, p)| p.number as usize == i + 1).count();
            parts.truncate(contiguous);
            parts.retain(|p| p.offset + p.len <= held);
            let next = parts.len() as u32;
            let recorded_end = parts.last().map_or(0, |p| p.offset + p.len);
            let goes_on = if session.wants_held_bytes() {
                // All the store holds is read again from the source to be hashed, which
                // also rebuilds the records of parts it acknowledged that the journal
                // had not written yet when the relay was killed.
                held >= recorded_end && held <= job.size()
            } else if next == progress.part_count() {
                held == job.size()
            } else {
                let spec = progress.part_spec(next);
                held >= spec.offset && held < spec.offset + spec.len
            };
            goes_on.then_some((parts, Some(held)))
        }
        None => None,
    };
    match kept {
        Some((parts, held)) => {
            let mut state = r.state.clone();
            state.parts = parts.clone();
            Some(Resumed { state, parts, blocks: r.blocks, held })
        }
        None => {
            let never = std::sync::atomic::AtomicBool::new(false);
            if super::retry(ctx.shared.opts.retries, &never, Blame::Remote(ctx.dst_label()), || session.abort())
                .await
                .is_ok()
            {
                if let Some(journal) = &ctx.shared.journal {
                    journal.ended(&r.dst_key);
                }
            }
            None
        }
    }
}

/// The session's state and part `index`'s place, from the object's progress.
pub(super) fn session_and_spec(job: &ObjectJob, index: u32) -> (SessionState, PartSpec) {
    let large = job.large();
    (large.progress.session.clone().expect("session begun before parts"), large.progress.part_spec(index))
}

pub(crate) async fn run_part(ctx: Rc<Ctx>, task: PartTask) {
    if spill(&ctx, &task) {
        return;
    }
    let job = &task.job;
    let (state, spec) = session_and_spec(job, task.index);
    let result = match ctx.dst.resume(state.clone()) {
        Ok(session) => ctx.unless_stopped(job.src_key(), send_part(&ctx, job, session.as_ref(), spec)).await,
        Err(e) => Err(e),
    };
    part_done(&ctx, job, task.index, result);
    chain::part_ended(job, task.index);
    queue_next_part(&ctx, job);
    // Pairs with the Release store in `begin_large`; the last part finishes the object.
    if job.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish_large(&ctx, job, state).await;
    }
}

/// Records a part's outcome: its record, or the object's first failure.
pub(super) fn part_done(ctx: &Ctx, job: &ObjectJob, index: u32, result: Result<PartRecord>) {
    match result {
        Ok(record) => {
            ctx.landed(record.len);
            let blocks = {
                let mut large = job.large();
                large.landed_bytes += record.len;
                large.progress.parts[index as usize] = Some(record.clone());
                large.source_blocks.get(index as usize).cloned().flatten()
            };
            if let Some(journal) = &ctx.shared.journal {
                journal.part(job.dst_key(), &record, blocks.as_ref());
            }
            ctx.shared.emit(job.src_key(), Outcome::PartCommitted(Box::new(record)));
        }
        Err(e) => {
            job.large().failure.get_or_insert(e);
        }
    }
}

/// Sends one part by whichever path it takes, unless the object already failed or
/// the relay is stopping.
async fn send_part(ctx: &Ctx, job: &ObjectJob, session: &dyn UploadSession, spec: PartSpec) -> Result<PartRecord> {
    let failed_already = job.large().failure.is_some();
    if failed_already || ctx.stopped() {
        let why =
            if failed_already { "abandoned after another part failed" } else { "abandoned: the relay was stopped" };
        return Err(Error::protocol("upload-part", job.src_key(), why));
    }
    let copy = job.large().copy.clone();
    match copy {
        Some(source) => copy_part(ctx, session, spec, &source).await,
        None => part(ctx, job, session, spec).await,
    }
}

async fn part(ctx: &Ctx, job: &ObjectJob, session: &dyn UploadSession, spec: PartSpec) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let index = spec.number - 1;
    let staged = {
        let m = job.large();
        m.stage.clone().zip(m.staged.get(index as usize).cloned().flatten())
    };
    if let Some((file, (sum, source_busy))) = staged {
        chain::break_chain(job);
        match part_from_stage(ctx, job, session, spec, &file, &sum).await {
            Ok((record, destination_busy)) => {
                vote_destination_slower(ctx, destination_busy, source_busy);
                return Ok(record);
            }
            Err(e) => {
                crate::metrics::record_error(&e, true, ctx.dst_label());
                ctx.shared.progress.store(Side::Destination).record(&e, true);
                tracing::warn!(
                    "part {} of {} could not be sent from the stage ({e}); sending it from the source",
                    spec.number,
                    job.src_key()
                );
            }
        }
    }
    // The checksum of the part's bytes from the last attempt that read them all, to
    // recognise the part among what the store has committed.
    let read_sum: std::cell::RefCell<Option<Checksum>> = std::cell::RefCell::new(None);
    let attempts = std::cell::Cell::new(0u32);
    ctx.retry_both(|| async {
        let attempt = attempts.replace(attempts.get() + 1);
        if attempt > 0 {
            let known = read_sum.borrow().clone();
            if let Some(record) = committed_part(session, spec, known.as_ref()).await {
                ctx.shared.stats.bytes_resumed.fetch_add(spec.len, Ordering::Relaxed);
                return Ok(record);
            }
        }
        // A chained part is read whole, to be hashed in its turn.
        if session.streams(algo) && !chain::active(job) {
            match part_streamed(ctx, job, session, spec, &read_sum).await {
                // The store refused the streamed form: send this part whole, now.
                Err(Error::Http { status: 400 | 501, .. }) if !session.streams(algo) => {}
                other => return other,
            }
        }
        part_whole(ctx, job, session, spec, &read_sum, attempt == 0).await
    })
    .await
}

/// The part as the store holds it, when it holds it whole with the checksum of the
/// bytes the relay read: a part whose answer was lost needs no second send. Never a
/// part the store vouches for with no checksum, or another checksum.
async fn committed_part(session: &dyn UploadSession, spec: PartSpec, read: Option<&Checksum>) -> Option<PartRecord> {
    let read = read?;
    let Ok(Committed::Parts(parts)) = session.committed().await else { return None };
    let held = parts.into_iter().find(|p| p.number == spec.number)?;
    (held.len == spec.len && &held.checksum == read).then(|| PartRecord::new(spec, held.token, read.clone()))
}

/// One part read into the RAM tier whole, then sent with its checksum in a header.
async fn part_whole(
    ctx: &Ctx,
    job: &ObjectJob,
    session: &dyn UploadSession,
    spec: PartSpec,
    read_sum: &std::cell::RefCell<Option<Checksum>>,
    first: bool,
) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let index = spec.number - 1;
    let chained = chain::active(job);
    if chained && first {
        chain::wait_turn_to_acquire(job, index).await;
    }
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(spec.len)).await;
    if chained && first {
        chain::acquired(job, index);
    }
    // No MD5 here: each part carries its checksum, which the store verifies, and a
    // ranged read has no ETag to check against.
    let mut hashers = Hashers::new(algo, false);
    keep_source_blocks(job, &mut hashers, spec.len);
    let started = Instant::now();
    let read = ctx.src.read(job.src_key(), Some(spec.range()), Body::new(chunks), &mut hashers);
    let body = match timed(ctx.src_label(), Op::Get, read).await.and_then(|(body, info)| {
        super::transfer::pinned(job, info.version_token())?;
        Ok((body, info))
    }) {
        Ok((body, _)) if body.len() == spec.len => body,
        Ok((body, _)) => {
            chain::read_failed(job, index);
            return Err(Error::protocol(
                "get",
                job.src_key(),
                format!("part {} came back short: {} of {} bytes", spec.number, body.len(), spec.len),
            ));
        }
        Err(e) => {
            chain::read_failed(job, index);
            return Err(e);
        }
    };
    record_source_blocks(job, spec.offset, hashers.take_blocks());
    let source_busy = started.elapsed();
    let (sum, _) = hashers.finish();
    *read_sum.borrow_mut() = Some(sum.clone());
    chain::feed(job, spec, &body, &sum, true).await;
    let started = Instant::now();
    let token = timed(ctx.dst_label(), Op::PutPart, session.put(spec, body, std::slice::from_ref(&sum))).await?;
    // One after the other, so each side's time is its own.
    vote_destination_slower(ctx, started.elapsed(), source_busy);
    Ok(PartRecord::new(spec, token, sum))
}

/// One part streamed through a ring: each chunk is sent as soon as it is read, and
/// the checksum follows the bytes (an S3 trailer) for the store to verify.
async fn part_streamed(
    ctx: &Ctx,
    job: &ObjectJob,
    session: &dyn UploadSession,
    spec: PartSpec,
    read_sum: &std::cell::RefCell<Option<Checksum>>,
) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(spec.len).min(RING_CHUNKS)).await;
    let (filler, drain) = crate::pool::ring::ring(chunks);
    let waits = filler.waits();
    // Which side failed first: the other only sees its partner gone.
    let read_failed_first = std::cell::Cell::new(false);
    let started = Instant::now();
    let source_busy = std::cell::Cell::new(Duration::ZERO);
    let read = async {
        let mut hashers = Hashers::new(algo, false);
        keep_source_blocks(job, &mut hashers, spec.len);
        let read = ctx.src.read_stream(job.src_key(), spec.range(), &filler, &mut hashers);
        // The part is finished (and so can complete at the store) only once its bytes
        // are known to be of the object's version.
        match timed(ctx.src_label(), Op::Get, read).await.and_then(|seen| super::transfer::pinned(job, seen.as_deref()))
        {
            Ok(()) => {
                record_source_blocks(job, spec.offset, hashers.take_blocks());
                let sum = hashers.finish().0;
                // Time the source was busy: reading, not waiting for ring space.
                source_busy.set(started.elapsed().saturating_sub(waits.reader()));
                *read_sum.borrow_mut() = Some(sum.clone());
                filler.finish(sum.clone());
                Ok(sum)
            }
            Err(e) => {
                read_failed_first.set(!filler.writer_gone());
                // The filler is dropped unfinished, so the upload cannot complete.
                Err(e)
            }
        }
    };
    let write = timed(ctx.dst_label(), Op::PutPart, session.put_stream(spec, algo, drain));
    let (read, write) = monoio::join!(read, write);
    if read.is_ok() && write.is_ok() {
        let destination_busy = started.elapsed().saturating_sub(waits.writer());
        vote_destination_slower(ctx, destination_busy, source_busy.get());
    }
    let (sum, token) = match (read, write) {
        (Ok(sum), Ok(token)) => (sum, token),
        (Err(e), _) if read_failed_first.get() => return Err(e),
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
    };
    Ok(PartRecord::new(spec, token, sum))
}

async fn copy_part(ctx: &Ctx, session: &dyn UploadSession, spec: PartSpec, source: &CopySource) -> Result<PartRecord> {
    let token =
        ctx.retry(Side::Destination, || timed(ctx.dst_label(), Op::Copy, session.copy_part(source, spec))).await?;
    Ok(PartRecord::new(spec, token, Checksum { algo: ChecksumAlgo::Crc32c, bytes: Vec::new() }))
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// Whether the source is asked for the hash of its parts' hashes: with MD5 checks on
/// (a multipart ETag), or when it reported a COMPOSITE checksum.
pub(super) fn asks_composite(ctx: &Ctx, info: &crate::backend::ObjectInfo) -> bool {
    ctx.shared.opts.verify_md5 || info.composite_checksum.is_some()
}

/// Whether the relay checks `c`: one of MD5s only with MD5 checks on (`--no-md5`).
pub(super) fn checks_composite(ctx: &Ctx, c: &crate::checksum::Composite) -> bool {
    c.algo != ChecksumAlgo::Md5 || ctx.shared.opts.verify_md5
}

/// Whether nothing the source reported for the object combines from parts hashed
/// apart (so that only a hash of its own parts, where it has one, checks the object
/// without reading it in order).
fn vouches_only_by_parts(info: &crate::backend::ObjectInfo) -> bool {
    !info.checksums.iter().any(|c| c.algo.combinable() || c.algo == ChecksumAlgo::DropboxContentHash)
}

/// Which block digests the parts read from the source keep: Dropbox's, when the
/// source reports a content_hash (which parts on 4 MiB boundaries combine into), else
/// the MD5s of the source's own parts, when it vouches by their MD5 ([`Large::composite`]).
pub(super) fn source_block_kind(job: &ObjectJob) -> Option<BlockKind> {
    let m = job.large();
    if m.source.checksums.iter().any(|c| c.algo == ChecksumAlgo::DropboxContentHash) {
        return Some(BlockKind::Dropbox);
    }
    m.composite.as_ref().map(|c| BlockKind::Parts { algo: c.algo, block_bytes: c.part_bytes })
}

/// Starts keeping the source's block digests of a part of `len` bytes, where the
/// object is checked by them.
pub(super) fn keep_source_blocks(job: &ObjectJob, hashers: &mut Hashers, len: u64) {
    if let Some(kind) = source_block_kind(job) {
        hashers.keep_blocks(kind, len);
    }
}

/// Records the block digests of the part read at `offset`, as soon as its bytes are
/// read (a retry that finds the part committed reads nothing again).
pub(super) fn record_source_blocks(job: &ObjectJob, offset: u64, blocks: Option<PartBlocks>) {
    let Some(blocks) = blocks else { return };
    let mut m = job.large();
    let index = m.progress.part_of(offset) as usize;
    m.source_blocks[index] = Some(blocks);
}

/// The source's hash of its blocks checked against the parts' block digests:
/// `Some(Ok(name))` when it matches, `Some(Err((reported, received)))` when it differs,
/// None when it could not be checked (parts off the blocks' boundaries, or a part not
/// read in this run).
fn source_blocks_hash(job: &ObjectJob) -> Option<Result<&'static str, (String, String)>> {
    let m = job.large();
    let parts: Vec<PartBlocks> = m.source_blocks.iter().cloned().collect::<Option<_>>()?;
    if let Some(reported) = m.source.checksums.iter().find(|c| c.algo == ChecksumAlgo::DropboxContentHash) {
        let parts: Vec<_> = parts
            .into_iter()
            .map(|p| if let PartBlocks::Dropbox(d) = p { Some(d) } else { None })
            .collect::<Option<_>>()?;
        let full = crate::checksum::dropbox_combine(&parts)?;
        return Some(if &full == reported {
            Ok("content_hash")
        } else {
            Err((reported.to_string(), full.to_string()))
        });
    }
    let reported = m.composite.as_ref()?;
    let parts: Vec<_> =
        parts.into_iter().map(|p| if let PartBlocks::Parts(d) = p { Some(d) } else { None }).collect::<Option<_>>()?;
    let full = crate::checksum::composite_of(&parts, reported)?;
    Some(if &full == reported { Ok(reported.check_name()) } else { Err((reported.to_string(), full.to_string())) })
}

/// Warns that an object read twice the same does not have the MD5 of part MD5s its
/// source's ETag names: that store does not make its ETags so (for some objects).
pub(super) fn composite_does_not_vouch(key: &str, reported: &dyn std::fmt::Display, got: &dyn std::fmt::Display) {
    tracing::warn!(
        "{key}: read twice the same, its bytes do not have the source's {reported} ({got}): \
         the store's hash of its parts does not hash them (an ETag that is not the MD5 of its parts' MD5s here); checked hop by hop"
    );
}

/// Reads every part of a large object from the source again: whether each has the
/// checksum it was sent with (the bytes sent are the source's, read twice the same).
async fn read_again_as_sent(ctx: &Ctx, job: &ObjectJob, parts: &[PartRecord]) -> Result<bool> {
    for part in parts {
        if chain::read_part_again(ctx, job, part).await?.1 != part.checksum {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Completes the upload. A store that lost a part it had acknowledged refuses to
/// complete: asked what it holds, it is sent the parts it lacks again (once, read
/// from the source again and checked to be the bytes sent before), and completing is
/// tried again. When the store holds every part, or lists none of them (the upload
/// itself is gone, or the store does not say), the refusal stands and is retried as
/// any other.
async fn finish_session(
    ctx: &Ctx,
    job: &ObjectJob,
    session: &dyn UploadSession,
    parts: &mut [PartRecord],
    full: Option<&Checksum>,
) -> Result<()> {
    let complete = || timed(ctx.dst_label(), Op::Complete, session.finish(parts, full));
    let Err(refused) = complete().await else { return Ok(()) };
    if refused.is_fatal() || ctx.stopped() {
        return Err(refused);
    }
    let lost: Vec<usize> = match session.committed().await {
        Ok(Committed::Parts(held)) => (0..parts.len())
            .filter(|&i| !held.iter().any(|h| h.number == parts[i].number && h.len == parts[i].len))
            .collect(),
        _ => Vec::new(),
    };
    if lost.is_empty() || lost.len() == parts.len() {
        return ctx
            .retry(Side::Destination, || timed(ctx.dst_label(), Op::Complete, session.finish(parts, full)))
            .await;
    }
    for i in lost {
        let sent = parts[i].clone();
        tracing::warn!(
            "{}: the destination no longer holds part {} ({refused}); sending it again",
            job.src_key(),
            sent.number
        );
        let spec = PartSpec { number: sent.number, offset: sent.offset, len: sent.len };
        let record = send_part(ctx, job, session, spec).await?;
        if record.checksum != sent.checksum {
            return Err(Error::Integrity {
                op: "get",
                target: job.src_key().to_string(),
                detail: format!(
                    "part {} was sent with {}, reading it again gives {}: the source's bytes differ between reads",
                    sent.number, sent.checksum, record.checksum
                ),
            });
        }
        if let Some(journal) = &ctx.shared.journal {
            let blocks = job.large().source_blocks.get(i).cloned().flatten();
            journal.part(job.dst_key(), &record, blocks.as_ref());
        }
        job.large().progress.parts[(sent.number - 1) as usize] = Some(record.clone());
        parts[i] = record;
    }
    ctx.retry(Side::Destination, || timed(ctx.dst_label(), Op::Complete, session.finish(parts, full))).await
}

/// The whole object's checksum from its parts, when the algorithm combines.
fn combined(parts: &[PartRecord]) -> Option<Checksum> {
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c_combine(crc, p.checksum.crc32c()?, p.len);
    }
    Some(Checksum::from_crc32c(crc))
}

/// Ends a large object: completes its session when every part landed, aborts it
/// otherwise, and reports the object.
pub(super) async fn finish_large(ctx: &Rc<Ctx>, job: &ObjectJob, state: SessionState) {
    let (failure, parts) = {
        let mut large = job.large();
        let failure = large.failure.take();
        if failure.is_none() {
            large.advance(Phase::Completing);
        }
        let parts: Vec<PartRecord> = large.progress.parts.iter().flatten().cloned().collect();
        (failure, parts)
    };
    let session = ctx.dst.resume(state);
    let result = match (failure, &session) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(Error::protocol("complete-multipart", job.src_key(), e.to_string())),
        (None, Ok(session)) => complete(ctx, job, session.as_ref(), parts).await,
    };
    // The stage file goes whatever happened: completed, or about to be aborted.
    let (stage_file, route) = {
        let mut m = job.large();
        (m.stage.take(), m.route.take())
    };
    drop(stage_file);
    if let Some(route) = route {
        ctx.shared.decided(route);
    }
    ctx.shared.stats.large_open.fetch_sub(1, Ordering::AcqRel);
    ctx.shared.queues.event.notify(usize::MAX);
    ctx.shared.progress.changed.notify(usize::MAX);
    job.large().advance(if result.is_ok() { Phase::Done } else { Phase::Failed });
    match result {
        Ok(()) => {
            if let Some(journal) = &ctx.shared.journal {
                journal.ended(job.dst_key());
            }
            ctx.shared.finish(job.src_key().to_string(), Outcome::Copied { bytes: job.size() })
        }
        Err(e) => {
            // Never leave a half-made object: the session is aborted, nothing completes.
            // Retried even when the relay is stopping: an upload left open is never
            // visible as an object, but it holds storage until the store expires it.
            // One that could not be aborted stays in the journal, for a later run to
            // go on with or abort.
            if let Ok(session) = &session {
                let never = std::sync::atomic::AtomicBool::new(false);
                if super::retry(ctx.shared.opts.retries, &never, Blame::Remote(ctx.dst_label()), || session.abort())
                    .await
                    .is_ok()
                {
                    if let Some(journal) = &ctx.shared.journal {
                        journal.ended(job.dst_key());
                    }
                }
            }
            if super::transfer::start_over(ctx, job, &e).await {
                return;
            }
            ctx.fail(job, e);
        }
    }
}

async fn complete(ctx: &Ctx, job: &ObjectJob, session: &dyn UploadSession, mut parts: Vec<PartRecord>) -> Result<()> {
    let parts = &mut parts;
    let (source, is_copy) = {
        let m = job.large();
        (m.source.clone(), m.copy.is_some())
    };
    let full = if is_copy { None } else { combined(parts) };
    let mut source_checks = Vec::new();
    if let Some(full) = &full {
        if let Some(reported) = source.checksums.iter().find(|c| c.algo == full.algo) {
            if reported != full {
                return Err(Error::Integrity {
                    op: "get",
                    target: job.src_key().to_string(),
                    detail: format!("the source reports {reported}, the bytes received have {full}"),
                });
            }
            source_checks.push(crate::relay::check_name(full.algo));
        }
    }
    match if is_copy { None } else { source_blocks_hash(job) } {
        Some(Ok(name)) => source_checks.push(name),
        // See `transfer::verify_composite`: the parts read again as they were sent
        // mean the ETag does not vouch for the bytes.
        Some(Err((reported, got)))
            if job.large().composite.is_some() && read_again_as_sent(ctx, job, parts).await? =>
        {
            composite_does_not_vouch(job.src_key(), &reported, &got);
        }
        Some(Err((reported, got))) => {
            return Err(Error::Integrity {
                op: "get",
                target: job.src_key().to_string(),
                detail: format!("the source reports {reported}, the bytes received have {got}"),
            })
        }
        None => {}
    }
    if !is_copy {
        match chain::check(job, parts) {
            chain::ChainCheck::None => {}
            chain::ChainCheck::Matched(name) => source_checks.push(name),
            chain::ChainCheck::Differs(reported, got) => {
                return Err(Error::Integrity {
                    op: "get",
                    target: job.src_key().to_string(),
                    detail: format!("the source reports {reported}, the bytes received have {got}"),
                })
            }
            chain::ChainCheck::Broken => source_checks.push(chain::verify_by_reading(ctx, job, parts).await?),
        }
    }
    if !is_copy {
        super::transfer::vouched_for(ctx, job.src_key(), &source_checks, source.etag.as_deref())?;
    }
    let expected: u64 = parts.iter().map(|p| p.len).sum();
    if expected != job.size() {
        return Err(Error::protocol(
            "complete-multipart",
            job.src_key(),
            format!("parts add up to {expected} bytes, the object has {}", job.size()),
        ));
    }
    finish_session(ctx, job, session, parts, full.as_ref()).await?;
    if !is_copy {
        let caps = ctx.dst.capabilities();
        let sent = parts.first().map_or(ctx.shared.opts.checksum, |p| p.checksum.algo);
        ctx.shared.checked(job.src_key(), source_checks, ctx.shared.destination_checks(&caps, sent, false));
    }
    Ok(())
}
