//! Moving one object: a single GET and PUT for small objects, a multipart upload fed
//! by parallel ranged GETs for large ones, or a server-side copy when both sides are
//! the same store. Every byte is checksummed as it streams; the checksum goes to the
//! destination with each request and is compared with what the source reports.

use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::progress::{choose_part_size, ObjectProgress};
use super::{Outcome, Shared};
use crate::backend::{provenance, CopySource, ObjectInfo, PartRecord, PutArgs, Sink, Source, Upload};
use crate::checksum::{crc32c_combine, etag_is_md5, Checksum, ChecksumAlgo, Hashers};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::{Body, BufferPool};
use crate::relay::RouteDecision;
use crate::stage::StageFile;
use std::time::{Duration, Instant};

/// What kind of transfer an object needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Small,
    Large,
    DirMarker,
}

/// One object, shared by the workers that move its parts.
pub(crate) struct ObjectJob {
    src_key: String,
    dst_key: String,
    size: u64,
    src_version: String,
    check_dest: bool,
    kind: Kind,
    /// The resumable state of a multipart copy.
    progress: Mutex<ObjectProgress>,
    multipart: Mutex<Multipart>,
    parts_left: AtomicU32,
}

#[derive(Default)]
struct Multipart {
    args: PutArgs,
    source: ObjectInfo,
    copy: Option<CopySource>,
    failure: Option<Error>,
    /// The stage file, when the object goes through the stage; removed with it.
    stage: Option<Arc<StageFile>>,
    /// Per part: the checksum of its bytes in the stage file and how long the fill
    /// took, once staged. None: the part goes from the source.
    staged: Vec<Option<(Checksum, Duration)>>,
    /// Per part: whether it was already sent to the stage once (it never goes twice).
    spilled: Vec<bool>,
    /// The stage had no room for this object: don't ask again.
    no_stage_room: bool,
    /// The route, why, and the format sniffed; recorded when the object ends.
    route: Option<RouteDecision>,
}

/// One part of a large object, queued for any worker.
pub(crate) struct PartTask {
    job: Arc<ObjectJob>,
    index: u32,
}

impl ObjectJob {
    /// Source key.
    pub(crate) fn src_key(&self) -> &str {
        &self.src_key
    }

    pub(crate) fn new(
        src_key: String,
        dst_key: String,
        size: u64,
        src_version: String,
        check_dest: bool,
        kind: Kind,
    ) -> Self {
        ObjectJob {
            progress: Mutex::new(ObjectProgress {
                src_key: src_key.clone(),
                dst_key: dst_key.clone(),
                size,
                src_version: src_version.clone(),
                ..ObjectProgress::default()
            }),
            src_key,
            dst_key,
            size,
            src_version,
            check_dest,
            kind,
            multipart: Mutex::new(Multipart::default()),
            parts_left: AtomicU32::new(0),
        }
    }
}

/// A worker's view: its stores, its pool, and the shared state.
pub(crate) struct Ctx {
    pub(crate) src: Rc<dyn Source>,
    pub(crate) dst: Rc<dyn Sink>,
    pub(crate) pool: BufferPool,
    pub(crate) shared: Arc<Shared>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.shared.stopped()
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of retries.
    async fn retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        super::retry_throttled(self.shared.opts.retries, &self.shared.progress, op).await
    }

    /// Counts bytes that reached the destination, for progress and metrics.
    fn landed(&self, bytes: u64) {
        self.shared.progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        crate::metrics::record_written(bytes);
    }

    /// Label of the source remote, for latency metrics.
    fn src_label(&self) -> &str {
        self.shared.src.remote_label()
    }

    /// Label of the destination remote, for latency metrics.
    fn dst_label(&self) -> &str {
        self.shared.dst.remote_label()
    }

    fn fail(&self, job: &ObjectJob, err: Error) {
        let fatal = err.is_fatal();
        self.shared.finish(job.src_key.clone(), Outcome::Failed { reason: err.to_string(), fatal });
    }

    /// Whether the destination already holds this version (asked when listings could
    /// not tell).
    async fn already_there(&self, job: &ObjectJob) -> Result<bool> {
        let info = self.retry(|| timed(self.dst_label(), Op::Stat, self.dst.stat(&job.dst_key))).await?;
        Ok(info.is_some_and(|info| crate::backend::holds_version(&info, job.size, &job.src_version)))
    }
}

/// Checks the bytes read against what the source vouched for.
fn verify_source(job_key: &str, info: &ObjectInfo, sum: &Checksum, md5: Option<&str>) -> Result<()> {
    if let Some(reported) = info.checksums.iter().find(|c| c.algo == sum.algo) {
        if reported != sum {
            return Err(Error::Integrity {
                op: "get",
                target: job_key.to_string(),
                detail: format!("the source reports {reported}, the bytes received have {sum}"),
            });
        }
        return Ok(());
    }
    if let (Some(etag), Some(md5)) = (&info.etag, md5) {
        if etag_is_md5(etag) && !etag.eq_ignore_ascii_case(md5) {
            return Err(Error::Integrity {
                op: "get",
                target: job_key.to_string(),
                detail: format!("the source's ETag is MD5 {etag}, the bytes received have MD5 {md5}"),
            });
        }
    }
    Ok(())
}

fn put_args(info: &ObjectInfo, version: &str, sum: Option<&Checksum>) -> PutArgs {
    PutArgs { meta: info.meta.clone(), provenance: Some(provenance(version, sum)) }
}

/// Ends an object the relay stopped before it began.
fn not_attempted(ctx: &Ctx, job: &ObjectJob) {
    let reason = ctx.shared.fatal.lock().expect("fatal lock").clone().unwrap_or_else(|| "the relay was stopped".into());
    ctx.shared
        .finish(job.src_key.clone(), Outcome::Failed { reason: format!("not attempted: {reason}"), fatal: false });
}

pub(crate) async fn run_object(ctx: Rc<Ctx>, job: Arc<ObjectJob>) {
    if ctx.stopped() {
        return not_attempted(&ctx, &job);
    }
    if job.check_dest {
        match ctx.already_there(&job).await {
            Ok(true) => {
                ctx.shared.finish(job.src_key.clone(), Outcome::Skipped { bytes: job.size });
                return;
            }
            Ok(false) => {}
            Err(e) => return ctx.fail(&job, e),
        }
    }
    let result = match job.kind {
        Kind::DirMarker => dir_marker(&ctx, &job).await,
        Kind::Small => match server_side(&ctx, &job) {
            Some(source) => {
                ctx.shared.decided(decision(&job, "copy", "same store: server-side copy".into(), None));
                copy_small(&ctx, &job, source).await
            }
            None => small(&ctx, &job).await,
        },
        Kind::Large => return begin_large(ctx, job).await,
    };
    match result {
        Ok(()) => {
            ctx.landed(job.size);
            ctx.shared.finish(job.src_key.clone(), Outcome::Copied { bytes: job.size });
        }
        Err(e) => ctx.fail(&job, e),
    }
}

fn server_side(ctx: &Ctx, job: &ObjectJob) -> Option<CopySource> {
    if !ctx.shared.opts.server_side_copy {
        return None;
    }
    ctx.src.copy_source(&job.src_key).filter(|s| ctx.dst.can_copy_from(s))
}

async fn dir_marker(ctx: &Ctx, job: &ObjectJob) -> Result<()> {
    let args = PutArgs { provenance: Some(provenance(&job.src_version, None)), ..PutArgs::default() };
    ctx.retry(|| ctx.dst.put_dir_marker(&job.dst_key, &args)).await
}

async fn copy_small(ctx: &Ctx, job: &ObjectJob, source: CopySource) -> Result<()> {
    let info =
        ctx.retry(|| timed(ctx.src_label(), Op::Stat, ctx.src.stat(&job.src_key))).await?.ok_or_else(|| gone(job))?;
    let args = put_args(&info, &job.src_version, info.checksums.first());
    ctx.retry(|| timed(ctx.dst_label(), Op::Copy, ctx.dst.copy_object(&source, &job.dst_key, &args))).await
}

fn gone(job: &ObjectJob) -> Error {
    Error::protocol("get", &job.src_key, "the object was deleted at the source during the relay")
}

/// Whether MD5 is worth computing: to check a plain-MD5 ETag on either side.
fn wants_md5(ctx: &Ctx) -> bool {
    ctx.shared.opts.verify_md5
}

fn decision(job: &ObjectJob, route: &'static str, reason: String, format: Option<&'static str>) -> RouteDecision {
    RouteDecision { key: job.src_key.clone(), route, reason, format }
}

async fn small(ctx: &Ctx, job: &ObjectJob) -> Result<()> {
    let algo = ctx.shared.opts.checksum;
    let format = std::cell::Cell::new(None);
    let result = ctx
        .retry(|| async {
            let chunks = ctx.pool.acquire(ctx.pool.chunks_for(job.size)).await;
            let mut hashers = Hashers::new(algo, wants_md5(ctx));
            let (body, info) =
                timed(ctx.src_label(), Op::Get, ctx.src.read(&job.src_key, None, Body::new(chunks), &mut hashers))
                    .await?;
            if body.len() != job.size {
                return Err(Error::protocol(
                    "get",
                    &job.src_key,
                    format!(
                        "listed as {} bytes but {} were read; the object changed during the relay",
                        job.size,
                        body.len()
                    ),
                ));
            }
            let (sum, md5) = hashers.finish();
            verify_source(&job.src_key, &info, &sum, md5.as_deref())?;
            format.set(body.chunks.first().and_then(|c| crate::sniff::sniff(c.as_slice())));
            let args = put_args(&info, &job.src_version, Some(&sum));
            timed(ctx.dst_label(), Op::Put, ctx.dst.put(&job.dst_key, body, &sum, md5.as_deref(), &args))
                .await
                .map(drop)
        })
        .await;
    if result.is_ok() {
        ctx.shared.decided(decision(job, "ram", "small: held whole in RAM".into(), format.get()));
    }
    result
}

/// How often a large object waiting for an open slot looks again.
const LARGE_OPEN_POLL: Duration = Duration::from_millis(5);

async fn begin_large(ctx: Rc<Ctx>, job: Arc<ObjectJob>) {
    // Wait for a slot among the open large objects (the object keeps its transfer
    // slot meanwhile); released in `finish_large` or below when planning fails.
    let open = &ctx.shared.large_open;
    while !ctx.stopped()
        && open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < ctx.shared.large_open_max()).then_some(n + 1))
            .is_err()
    {
        monoio::time::sleep(LARGE_OPEN_POLL).await;
    }
    if ctx.stopped() {
        return not_attempted(&ctx, &job);
    }
    match plan_large(&ctx, &job).await {
        Ok(count) => {
            let staged = route_large(&ctx, &job, count).await;
            // Pairs with the AcqRel decrement in `run_part`.
            job.parts_left.store(count, Ordering::Release);
            if !ctx.dst.limits().parallel_parts {
                // One ordered stream (e.g. a resumable upload): this task sends the
                // parts itself, in order.
                for index in 0..count {
                    let task = PartTask { job: job.clone(), index };
                    if staged {
                        fill(&ctx, &task).await;
                    }
                    run_part(ctx.clone(), task).await;
                }
                return;
            }
            let queue = if staged { &ctx.shared.stage_fills } else { &ctx.shared.parts };
            for index in 0..count {
                queue.push(PartTask { job: job.clone(), index });
            }
            ctx.shared.event.notify(usize::MAX);
        }
        Err(e) => {
            ctx.shared.large_open.fetch_sub(1, Ordering::AcqRel);
            ctx.fail(&job, e);
        }
    }
}

/// Decides the path of a large object and records why; true if it goes through the
/// stage (whose file is then made and its space reserved).
async fn route_large(ctx: &Ctx, job: &ObjectJob, parts: u32) -> bool {
    use crate::relay::Route;
    if job.multipart.lock().expect("multipart lock").copy.is_some() {
        job.multipart.lock().expect("multipart lock").route =
            Some(decision(job, "copy", "same store: server-side copy".into(), None));
        return false;
    }
    let format = sniff_head(ctx, job).await;
    let parallel = ctx.dst.limits().parallel_parts;
    let want = match ctx.shared.opts.route {
        Route::Ram => Err("--route ram"),
        Route::Stage => Ok("--route stage".to_string()),
        Route::Auto if !ctx.dst.limits().parallel_parts => Ok("the destination takes one ordered stream".into()),
        Route::Auto if ctx.shared.destination_slower() => Ok("the destination is slower than the source".into()),
        Route::Auto => Err("the destination keeps up"),
    };
    let (route, reason, file) = match want {
        Err(why) => ("stream", why.to_string(), None),
        Ok(why) => match &ctx.shared.stage {
            None => ("stream", format!("{why}, but no stage is configured"), None),
            Some(stage) => match stage.create(job.size) {
                Ok(file) => ("stage", why, Some(Arc::new(file))),
                Err(full) => ("stream", format!("{why}, but {full}"), None),
            },
        },
    };
    let staged = file.is_some();
    let mut m = job.multipart.lock().expect("multipart lock");
    m.route = Some(decision(job, route, reason, format));
    m.stage = file;
    m.staged = vec![None; parts as usize];
    // Streamed objects may still spill part by part if the destination falls behind;
    // a staged object's parts are filled once, when it is routed.
    m.spilled = vec![staged || !parallel; parts as usize];
    m.no_stage_room = !staged && ctx.shared.opts.route != crate::relay::Route::Auto;
    staged
}

/// Sends a part that was about to stream to the stage instead, when the destination
/// has fallen behind the source; true if it did (the part comes back after its fill).
fn spill(ctx: &Ctx, task: &PartTask) -> bool {
    if ctx.shared.opts.route != crate::relay::Route::Auto || !ctx.shared.destination_slower() || ctx.stopped() {
        return false;
    }
    let Some(stage) = &ctx.shared.stage else { return false };
    let job = &task.job;
    let index = task.index as usize;
    let mut m = job.multipart.lock().expect("multipart lock");
    let filled = m.staged.get(index).is_some_and(Option::is_some);
    if m.copy.is_some() || m.failure.is_some() || m.no_stage_room || filled || m.spilled.get(index).is_none_or(|s| *s) {
        return false;
    }
    if m.stage.is_none() {
        match stage.create(job.size) {
            Ok(file) => {
                m.stage = Some(Arc::new(file));
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
    ctx.shared.stage_fills.push(PartTask { job: task.job.clone(), index: task.index });
    ctx.shared.event.notify(usize::MAX);
    true
}

/// The compressed format of an object's first bytes, from one small ranged read.
async fn sniff_head(ctx: &Ctx, job: &ObjectJob) -> Option<&'static str> {
    let end = (crate::sniff::SNIFF_BYTES as u64).min(job.size);
    let chunks = ctx.pool.acquire(1).await;
    let mut hashers = Hashers::new(ChecksumAlgo::Crc32c, false);
    let (body, _) = ctx.src.read(&job.src_key, Some((0, end)), Body::new(chunks), &mut hashers).await.ok()?;
    body.chunks.first().and_then(|c| crate::sniff::sniff(c.as_slice()))
}

/// A worker's stage-fill task: reads one part from the source into the stage file,
/// then queues its upload (from the stage, or from the source if staging failed).
pub(crate) async fn run_fill(ctx: Rc<Ctx>, task: PartTask) {
    fill(&ctx, &task).await;
    ctx.shared.parts.push(task);
    ctx.shared.event.notify(usize::MAX);
}

async fn fill(ctx: &Ctx, task: &PartTask) {
    let job = &task.job;
    let range = job.progress.lock().expect("progress lock").part_range(task.index);
    let file = {
        let m = job.multipart.lock().expect("multipart lock");
        if m.failure.is_some() {
            return;
        }
        m.stage.clone()
    };
    let Some(file) = file else { return };
    if ctx.stopped() {
        return;
    }
    match ctx.retry(|| fill_part(ctx, job, &file, range)).await {
        Ok((sum, source_busy)) => {
            ctx.shared.stage_bytes_written.fetch_add(range.1 - range.0, Ordering::Relaxed);
            job.multipart.lock().expect("multipart lock").staged[task.index as usize] = Some((sum, source_busy));
        }
        Err(e) => eprintln!(
            "laminar: warning: staging part {} of {} failed ({e}); it is sent from the source instead",
            task.index + 1,
            job.src_key
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
        timed(ctx.src_label(), Op::Get, ctx.src.read_stream(&job.src_key, range, &filler, &mut hashers)).await?;
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
async fn part_from_stage(
    ctx: &Ctx,
    job: &ObjectJob,
    upload_id: &str,
    index: u32,
    range: (u64, u64),
    file: &StageFile,
    staged: &Checksum,
) -> Result<(PartRecord, Duration)> {
    let algo = ctx.shared.opts.checksum;
    let len = range.1 - range.0;
    let check = |sum: &Checksum| -> Result<()> {
        if sum != staged {
            return Err(Error::Integrity {
                op: "stage-read",
                target: job.src_key.clone(),
                detail: format!("part {} was staged as {staged} but reads back as {sum}", index + 1),
            });
        }
        Ok(())
    };
    if ctx.dst.streams_parts(algo) {
        let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len).min(RING_CHUNKS)).await;
        let (filler, drain) = crate::pool::ring::ring(chunks);
        let waits = filler.waits();
        let started = Instant::now();
        let read = file.read_into(range.0, len, filler, algo);
        let write = timed(
            ctx.dst_label(),
            Op::PutPart,
            ctx.dst.upload_part_stream(&job.dst_key, upload_id, index + 1, len, algo, drain),
        );
        let (read, write) = monoio::join!(read, write);
        let sum = read?;
        // A mismatch fails the part, which is then sent again from the source; the
        // store keeps only the last upload of a part number.
        check(&sum)?;
        let etag = write?;
        let busy = started.elapsed().saturating_sub(waits.writer());
        return Ok((PartRecord { number: index + 1, offset: range.0, len, etag, checksum: sum }, busy));
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
    let put = ctx.dst.upload_part(&job.dst_key, upload_id, index + 1, range.0, Body::new(body), &sum, None);
    let etag = timed(ctx.dst_label(), Op::PutPart, put).await?;
    Ok((PartRecord { number: index + 1, offset: range.0, len, etag, checksum: sum }, started.elapsed()))
}

/// How many times longer than the source the destination must be busy with a part to
/// count as slower: well clear of the usual spread between a store's GETs and PUTs.
const SLOWER_FACTOR: u32 = 3;

/// Votes on whether the destination is the slower side, from one part's busy times
/// (each side's time less its waits for the other): slower when the destination took
/// over SLOWER_FACTOR times as long as the source and the source would have sat idle
/// for `spill_wait` or more. Streamed parts vote, and so do staged ones, so a
/// destination that catches up ends the spilling.
fn vote_destination_slower(ctx: &Ctx, destination_busy: Duration, source_busy: Duration) {
    let slower = destination_busy > source_busy * SLOWER_FACTOR
        && destination_busy.saturating_sub(source_busy) >= ctx.shared.opts.spill_wait;
    let _ = ctx.shared.dst_bound_score.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
        Some(if slower { (s + 1).min(8) } else { (s - 1).max(-8) })
    });
}

/// Stats the source, picks the part size, and creates the upload; returns the part count.
async fn plan_large(ctx: &Ctx, job: &ObjectJob) -> Result<u32> {
    let limits = ctx.dst.limits();
    let pool_bytes = (ctx.pool.chunk_count() * ctx.pool.chunk_bytes()) as u64;
    // Prefer parts that fit a worker's share of the RAM tier, so small buffers still work.
    let part_size = choose_part_size(
        job.size,
        ctx.shared.opts.part_size_bytes.min(pool_bytes),
        limits.min_part_bytes,
        limits.max_part_bytes,
        limits.max_parts,
        limits.part_alignment_bytes,
    )
    .ok_or_else(|| Error::InvalidKey {
        op: "plan",
        key: job.src_key.clone(),
        reason: format!("{} bytes is more than the destination accepts in one object", job.size),
    })?;
    let copy = server_side(ctx, job);
    if copy.is_none() && part_size > pool_bytes {
        return Err(Error::Usage(format!(
            "{} needs parts of {}, more than a worker's share of the RAM buffer ({}); raise --ram-buffer or lower --workers",
            job.src_key,
            laminar_tuning::HumanBytes(part_size),
            laminar_tuning::HumanBytes(pool_bytes)
        )));
    }
    let info =
        ctx.retry(|| timed(ctx.src_label(), Op::Stat, ctx.src.stat(&job.src_key))).await?.ok_or_else(|| gone(job))?;
    if info.size != job.size {
        return Err(Error::protocol("stat", &job.src_key, "the object changed size during the relay"));
    }
    let args = put_args(&info, &job.src_version, None);
    let algo = copy.is_none().then_some(ctx.shared.opts.checksum);
    let upload = ctx
        .retry(|| timed(ctx.dst_label(), Op::Create, ctx.dst.create_multipart(&job.dst_key, job.size, &args, algo)))
        .await?;
    let count = {
        let mut progress = job.progress.lock().expect("progress lock");
        progress.part_size = part_size;
        progress.upload = Some(upload);
        progress.parts = vec![None; progress.part_count() as usize];
        progress.part_count()
    };
    *job.multipart.lock().expect("multipart lock") = Multipart { args, source: info, copy, ..Multipart::default() };
    Ok(count)
}

pub(crate) async fn run_part(ctx: Rc<Ctx>, task: PartTask) {
    if spill(&ctx, &task) {
        return;
    }
    let job = &task.job;
    let (upload, range) = {
        let progress = job.progress.lock().expect("progress lock");
        (progress.upload.clone().expect("upload created before parts"), progress.part_range(task.index))
    };
    let upload_id = upload.id.as_str();
    let failed_already = job.multipart.lock().expect("multipart lock").failure.is_some();
    let result = if failed_already || ctx.stopped() {
        let why =
            if failed_already { "abandoned after another part failed" } else { "abandoned: the relay was stopped" };
        Err(Error::protocol("upload-part", &job.src_key, why))
    } else {
        let copy = job.multipart.lock().expect("multipart lock").copy.clone();
        match copy {
            Some(source) => copy_part(&ctx, job, upload_id, task.index, range, &source).await,
            None => part(&ctx, job, upload_id, task.index, range).await,
        }
    };
    match result {
        Ok(record) => {
            ctx.landed(record.len);
            job.progress.lock().expect("progress lock").parts[task.index as usize] = Some(record);
        }
        Err(e) => {
            job.multipart.lock().expect("multipart lock").failure.get_or_insert(e);
        }
    }
    // Pairs with the Release store in `begin_large`; the last part finishes the object.
    if job.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish_large(&ctx, job, &upload).await;
    }
}

/// Chunks a streamed part's ring holds: enough to keep both connections busy, few
/// enough that the bytes are still in cache when they are sent.
const RING_CHUNKS: usize = 4;

async fn part(ctx: &Ctx, job: &ObjectJob, upload_id: &str, index: u32, range: (u64, u64)) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let staged = {
        let m = job.multipart.lock().expect("multipart lock");
        m.stage.clone().zip(m.staged.get(index as usize).cloned().flatten())
    };
    if let Some((file, (sum, source_busy))) = staged {
        match part_from_stage(ctx, job, upload_id, index, range, &file, &sum).await {
            Ok((record, destination_busy)) => {
                vote_destination_slower(ctx, destination_busy, source_busy);
                return Ok(record);
            }
            Err(e) => {
                crate::metrics::record_error(&e, true);
                eprintln!(
                    "laminar: warning: part {} of {} could not be sent from the stage ({e}); sending it from the source",
                    index + 1,
                    job.src_key
                );
            }
        }
    }
    ctx.retry(|| async {
        if ctx.dst.streams_parts(algo) {
            match part_streamed(ctx, job, upload_id, index, range).await {
                // The store refused the streamed form: send this part whole, now.
                Err(Error::Http { status: 400 | 501, .. }) if !ctx.dst.streams_parts(algo) => {}
                other => return other,
            }
        }
        part_whole(ctx, job, upload_id, index, range).await
    })
    .await
}

/// One part read into the RAM tier whole, then sent with its checksum in a header.
async fn part_whole(ctx: &Ctx, job: &ObjectJob, upload_id: &str, index: u32, range: (u64, u64)) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let len = range.1 - range.0;
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len)).await;
    // No MD5 here: each part carries its CRC, which the store verifies, and a ranged
    // read has no ETag to check against.
    let mut hashers = Hashers::new(algo, false);
    let started = Instant::now();
    let (body, _) =
        timed(ctx.src_label(), Op::Get, ctx.src.read(&job.src_key, Some(range), Body::new(chunks), &mut hashers))
            .await?;
    if body.len() != len {
        return Err(Error::protocol("get", &job.src_key, format!("part {} came back short", index + 1)));
    }
    let source_busy = started.elapsed();
    let (sum, md5) = hashers.finish();
    let started = Instant::now();
    let put = ctx.dst.upload_part(&job.dst_key, upload_id, index + 1, range.0, body, &sum, md5.as_deref());
    let etag = timed(ctx.dst_label(), Op::PutPart, put).await?;
    // One after the other, so each side's time is its own.
    vote_destination_slower(ctx, started.elapsed(), source_busy);
    Ok(PartRecord { number: index + 1, offset: range.0, len, etag, checksum: sum })
}

/// One part streamed through a ring: each chunk is sent as soon as it is read, and
/// the checksum follows the bytes (an S3 trailer) for the store to verify.
async fn part_streamed(
    ctx: &Ctx,
    job: &ObjectJob,
    upload_id: &str,
    index: u32,
    range: (u64, u64),
) -> Result<PartRecord> {
    let algo = ctx.shared.opts.checksum;
    let len = range.1 - range.0;
    let chunks = ctx.pool.acquire(ctx.pool.chunks_for(len).min(RING_CHUNKS)).await;
    let (filler, drain) = crate::pool::ring::ring(chunks);
    let waits = filler.waits();
    // Which side failed first: the other only sees its partner gone.
    let read_failed_first = std::cell::Cell::new(false);
    let started = Instant::now();
    let source_busy = std::cell::Cell::new(Duration::ZERO);
    let read = async {
        let mut hashers = Hashers::new(algo, false);
        match timed(ctx.src_label(), Op::Get, ctx.src.read_stream(&job.src_key, range, &filler, &mut hashers)).await {
            Ok(()) => {
                let sum = hashers.finish().0;
                // Time the source was busy: reading, not waiting for ring space.
                source_busy.set(started.elapsed().saturating_sub(waits.reader()));
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
    let write = timed(
        ctx.dst_label(),
        Op::PutPart,
        ctx.dst.upload_part_stream(&job.dst_key, upload_id, index + 1, len, algo, drain),
    );
    let (read, write) = monoio::join!(read, write);
    if read.is_ok() && write.is_ok() {
        let destination_busy = started.elapsed().saturating_sub(waits.writer());
        vote_destination_slower(ctx, destination_busy, source_busy.get());
    }
    let (sum, etag) = match (read, write) {
        (Ok(sum), Ok(etag)) => (sum, etag),
        (Err(e), _) if read_failed_first.get() => return Err(e),
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
    };
    Ok(PartRecord { number: index + 1, offset: range.0, len, etag, checksum: sum })
}

async fn copy_part(
    ctx: &Ctx,
    job: &ObjectJob,
    upload_id: &str,
    index: u32,
    range: (u64, u64),
    source: &CopySource,
) -> Result<PartRecord> {
    let etag = ctx
        .retry(|| {
            timed(ctx.dst_label(), Op::Copy, ctx.dst.copy_part(source, &job.dst_key, upload_id, index + 1, range))
        })
        .await?;
    Ok(PartRecord {
        number: index + 1,
        offset: range.0,
        len: range.1 - range.0,
        etag,
        checksum: Checksum { algo: ChecksumAlgo::Crc32c, bytes: Vec::new() },
    })
}

/// The whole object's checksum from its parts, when the algorithm combines.
fn combined(parts: &[PartRecord]) -> Option<Checksum> {
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c_combine(crc, p.checksum.crc32c()?, p.len);
    }
    Some(Checksum::from_crc32c(crc))
}

async fn finish_large(ctx: &Ctx, job: &ObjectJob, upload: &Upload) {
    let failure = job.multipart.lock().expect("multipart lock").failure.take();
    let parts: Vec<PartRecord> = job.progress.lock().expect("progress lock").parts.iter().flatten().cloned().collect();
    let result = match failure {
        Some(e) => Err(e),
        None => complete(ctx, job, upload, &parts).await,
    };
    // The stage file goes whatever happened: completed, or about to be aborted.
    let (stage_file, route) = {
        let mut m = job.multipart.lock().expect("multipart lock");
        (m.stage.take(), m.route.take())
    };
    drop(stage_file);
    if let Some(route) = route {
        ctx.shared.decided(route);
    }
    ctx.shared.large_open.fetch_sub(1, Ordering::AcqRel);
    ctx.shared.event.notify(usize::MAX);
    match result {
        Ok(()) => ctx.shared.finish(job.src_key.clone(), Outcome::Copied { bytes: job.size }),
        Err(e) => {
            // Never leave a half-made object: the upload is aborted, nothing completes.
            // Retried even when the relay is stopping: an upload left open is never
            // visible as an object, but it holds storage until the store expires it.
            let never = std::sync::atomic::AtomicBool::new(false);
            let _ = super::retry(ctx.shared.opts.retries, &never, || ctx.dst.abort_multipart(&job.dst_key, &upload.id))
                .await;
            ctx.fail(job, e);
        }
    }
}

async fn complete(ctx: &Ctx, job: &ObjectJob, upload: &Upload, parts: &[PartRecord]) -> Result<()> {
    let (args, source) = {
        let m = job.multipart.lock().expect("multipart lock");
        (m.args.clone(), m.source.clone())
    };
    let is_copy = job.multipart.lock().expect("multipart lock").copy.is_some();
    let full = if is_copy { None } else { combined(parts) };
    if let Some(full) = &full {
        if let Some(reported) = source.checksums.iter().find(|c| c.algo == full.algo) {
            if reported != full {
                return Err(Error::Integrity {
                    op: "get",
                    target: job.src_key.clone(),
                    detail: format!("the source reports {reported}, the bytes received have {full}"),
                });
            }
        }
    }
    ctx.retry(|| {
        timed(
            ctx.dst_label(),
            Op::Complete,
            ctx.dst.complete_multipart(&job.dst_key, upload, parts, full.as_ref(), &args),
        )
    })
    .await
}
