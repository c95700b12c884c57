//! Moving one object: the object's shared state, small objects (one GET, one
//! single-part session), directory markers and server-side copies, and the start of
//! a large object, whose parts are in `parts` (parallel), `ordered` (one stream) and
//! `spill` (the stage). Every byte is checksummed as it streams; the checksum goes to
//! the destination with each request and is compared with what the source reports.

use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::parts::plan_large;
use super::progress::{ObjectProgress, Side};
use super::spill::route_large;
use super::{Blame, Outcome, Shared};
use crate::backend::{
    provenance, CopySource, HashFamily, ObjectInfo, PartRecord, PartSpec, PutArgs, Sink, Source, UploadMode, UploadPlan,
};
use crate::checksum::{etag_is_md5, Checksum, ChecksumAlgo, Composite, Digests, Hashers};
use crate::error::{Error, Result};
use crate::metrics::{timed, Op};
use crate::pool::{Body, BufferPool};
use crate::relay::RouteDecision;
use crate::stage::StageFile;
use std::time::Duration;

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
    /// A large object's state machine.
    large: Mutex<Large>,
    pub(super) parts_left: AtomicU32,
    /// The next part not yet queued (see [`queue_next_part`]).
    next_part: AtomicU32,
    /// Notified when the object's chain moves on (see [`super::chain`]).
    pub(super) chain_changed: event_listener::Event,
    /// Times this object was started over after its whole-object check against the
    /// source failed (see [`super::parts::finish_large`]).
    pub(super) restarts: u32,
}

/// Where a large object is: one state machine, whose every step is a [`Phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Phase {
    /// Listed and handed to a worker; no session yet.
    #[default]
    Planned,
    /// The session is begun and its parts are going up (streamed from the source).
    Uploading,
    /// Some parts go through the NVMe stage.
    Staging,
    /// Every part landed; the session is being completed.
    Completing,
    /// Completed and verified.
    Done,
    /// Failed; its session aborted.
    Failed,
}

impl Phase {
    /// Whether the object may go from `self` to `next`.
    fn may_become(self, next: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, next),
            (Planned, Uploading | Failed)
                | (Uploading, Staging | Completing | Failed)
                | (Staging, Staging | Completing | Failed)
                | (Completing, Done | Failed)
        )
    }
}

/// A large object's state, in one place under one lock: its phase, its resumable
/// progress (session and parts), and what its parts need to know.
#[derive(Default)]
pub(super) struct Large {
    /// Where the object is.
    phase: Phase,
    /// The session and the parts done: one plain value a journal can persist.
    pub(super) progress: ObjectProgress,
    /// What the source said about the object when the session began.
    pub(super) source: ObjectInfo,
    /// Where a server-side copy reads from, when the parts are copied.
    pub(super) copy: Option<CopySource>,
    /// The first part failure; the object fails with it.
    pub(super) failure: Option<Error>,
    /// The stage file, when the object goes through the stage; removed with it.
    pub(super) stage: Option<Arc<StageFile>>,
    /// Per part: the checksum of its bytes in the stage file and how long the fill
    /// took, once staged. None: the part goes from the source.
    pub(super) staged: Vec<Option<(Checksum, Duration)>>,
    /// Per part: whether it was already sent to the stage once (it never goes twice).
    pub(super) spilled: Vec<bool>,
    /// The stage had no room for this object: don't ask again.
    pub(super) no_stage_room: bool,
    /// The route, why, and the format sniffed; recorded when the object ends.
    pub(super) route: Option<RouteDecision>,
    /// Whether every part is filled into the stage before it is sent (the object
    /// was routed through the stage, not spilled part by part).
    pub(super) fill_first: bool,
    /// Per part, when the source vouches by a hash of its own blocks (a Dropbox
    /// content_hash, or [`composite`](Self::composite)): the block digests of the bytes
    /// read, combined at the end to check the whole object against it.
    pub(super) source_blocks: Vec<Option<crate::checksum::PartBlocks>>,
    /// The MD5 of part MD5s the source vouches with, and its part layout, when it has
    /// nothing better and the relay's parts keep to that layout.
    pub(super) composite: Option<crate::checksum::Composite>,
    /// The running whole-object hash, when the source vouches only with hashes that do
    /// not combine from parts (see [`super::chain`]).
    pub(super) chain: Option<super::chain::Chain>,
    /// An ordered stream resumed from an earlier run: the bytes the store held then.
    pub(super) resumed_offset: Option<u64>,
    /// Bytes of this attempt's parts that landed (counted in the progress), taken back
    /// if the object starts over.
    pub(super) landed_bytes: u64,
}

impl Large {
    /// Moves the object to its next phase; a step the state machine has no arrow for
    /// is a broken invariant.
    pub(super) fn advance(&mut self, next: Phase) {
        assert!(self.phase.may_become(next), "object {}: {:?} -> {next:?}", self.progress.src_key, self.phase);
        self.phase = next;
    }
}

/// One part of a large object, queued for any worker.
#[derive(Clone)]
pub(crate) struct PartTask {
    pub(super) job: Arc<ObjectJob>,
    pub(super) index: u32,
}

impl PartTask {
    /// Part `index` of `job`.
    pub(super) fn new(job: Arc<ObjectJob>, index: u32) -> PartTask {
        PartTask { job, index }
    }
}

impl ObjectJob {
    /// Source key.
    pub(crate) fn src_key(&self) -> &str {
        &self.src_key
    }

    /// Destination key.
    pub(super) fn dst_key(&self) -> &str {
        &self.dst_key
    }

    /// Size in bytes.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// The source's version token.
    pub(super) fn src_version(&self) -> &str {
        &self.src_version
    }

    /// The large object's state.
    pub(super) fn large(&self) -> std::sync::MutexGuard<'_, Large> {
        self.large.lock().expect("object state lock")
    }

    /// Part `index`'s stage file and staged checksum, once it is staged.
    pub(super) fn multipart_staged(&self, index: u32) -> Option<(Arc<StageFile>, (Checksum, Duration))> {
        let m = self.large();
        m.stage.clone().zip(m.staged.get(index as usize).cloned().flatten())
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
            large: Mutex::new(Large {
                progress: ObjectProgress {
                    src_key: src_key.clone(),
                    dst_key: dst_key.clone(),
                    size,
                    src_version: src_version.clone(),
                    ..ObjectProgress::default()
                },
                ..Large::default()
            }),
            src_key,
            dst_key,
            size,
            src_version,
            check_dest,
            kind,
            parts_left: AtomicU32::new(0),
            next_part: AtomicU32::new(0),
            chain_changed: event_listener::Event::new(),
            restarts: 0,
        }
    }

    /// The same object, to be sent again from its first byte: of `size` bytes and
    /// version `version`, of `kind`.
    fn started_over(&self, size: u64, version: String, kind: Kind) -> ObjectJob {
        let mut again = ObjectJob::new(self.src_key.clone(), self.dst_key.clone(), size, version, false, kind);
        again.restarts = self.restarts + 1;
        again
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
    pub(super) fn stopped(&self) -> bool {
        self.shared.stopped()
    }

    /// Runs `work` (a part's requests) unless the relay stops first: then the requests
    /// in flight are dropped (their connections closed, so a peer that stalls or
    /// trickles holds nothing) and the part fails, which aborts its object's upload.
    pub(super) async fn unless_stopped<T>(
        &self,
        key: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let progress = &self.shared.progress;
        let stopped = async {
            loop {
                if self.stopped() {
                    return;
                }
                let listener = progress.stop_event.listen();
                if self.stopped() {
                    return;
                }
                listener.await;
            }
        };
        monoio::select! {
            done = work => done,
            () = stopped => Err(Error::io(
                "upload-part",
                key,
                std::io::Error::new(std::io::ErrorKind::Interrupted, "cut short: the relay was stopped"),
            )),
        }
    }

    /// Runs `op`, an operation on the store at `side`, until it succeeds, fails for
    /// good, or runs out of retries.
    pub(super) async fn retry<T, F, Fut>(&self, side: Side, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let remote = match side {
            Side::Source => self.src_label(),
            Side::Destination => self.dst_label(),
        };
        super::retry_throttled(self.shared.opts.retries, &self.shared.progress, Blame::One(side, remote), op).await
    }

    /// As [`Ctx::retry`], for an operation that reads the source and writes the
    /// destination: each failure is counted against the store it came from.
    pub(super) async fn retry_both<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let blame = Blame::Both { src: self.src_label(), dst: self.dst_label() };
        super::retry_throttled(self.shared.opts.retries, &self.shared.progress, blame, op).await
    }

    /// Counts bytes that reached the destination, for progress and metrics.
    pub(super) fn landed(&self, bytes: u64) {
        self.shared.progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        crate::metrics::record_written(bytes);
    }

    /// Takes back bytes counted as landed of an attempt that is thrown away (the
    /// destination wrote them, so the metrics keep them; the relay's progress does not).
    pub(super) fn unlanded(&self, bytes: u64) {
        let _ = self
            .shared
            .progress
            .bytes_done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(bytes)));
    }

    /// Label of the source remote, for latency metrics.
    pub(super) fn src_label(&self) -> &str {
        self.shared.src.remote_label()
    }

    /// Label of the destination remote, for latency metrics.
    pub(super) fn dst_label(&self) -> &str {
        self.shared.dst.remote_label()
    }

    pub(super) fn fail(&self, job: &ObjectJob, err: Error) {
        if err.class() == crate::error::ErrorClass::QuotaExhausted {
            return self.shared.defer(job.src_key.clone(), job.size, Some(&err));
        }
        let fatal = err.is_fatal();
        self.shared.finish(job.src_key.clone(), Outcome::Failed { reason: err.to_string(), fatal });
    }

    /// Whether the destination already holds this version (asked when listings could
    /// not tell).
    async fn already_there(&self, job: &ObjectJob) -> Result<bool> {
        let info =
            self.retry(Side::Destination, || timed(self.dst_label(), Op::Stat, self.dst.stat(&job.dst_key))).await?;
        let Some(info) = info else { return Ok(false) };
        if self.shared.opts.compare == super::Compare::Checksum {
            let theirs =
                self.retry(Side::Source, || timed(self.src_label(), Op::Stat, self.src.stat(&job.src_key))).await?;
            return Ok(super::verify::same_by_hash(theirs.as_ref(), &info, job.size));
        }
        Ok(crate::backend::holds_version(&info, job.size, &job.src_version))
    }
}

/// Checks the bytes read against what the source vouched for: every whole-object
/// checksum it reported that was computed on the way, or else its plain-MD5 ETag.
fn verify_source(job_key: &str, info: &ObjectInfo, digests: &Digests) -> Result<Vec<&'static str>> {
    let mut checked = Vec::new();
    for reported in &info.checksums {
        if let Some(sum) = digests.get(reported.algo) {
            if reported != sum {
                return Err(Error::Integrity {
                    op: "get",
                    target: job_key.to_string(),
                    detail: format!("the source reports {reported}, the bytes received have {sum}"),
                });
            }
            checked.push(crate::relay::check_name(reported.algo));
        }
    }
    if !checked.is_empty() {
        return Ok(checked);
    }
    if let (Some(etag), Some(md5)) = (&info.etag, digests.get(ChecksumAlgo::Md5)) {
        let md5 = md5.to_hex();
        if etag_is_md5(etag) && !etag.eq_ignore_ascii_case(&md5) {
            return Err(Error::Integrity {
                op: "get",
                target: job_key.to_string(),
                detail: format!("the source's ETag is MD5 {etag}, the bytes received have MD5 {md5}"),
            });
        }
        if etag_is_md5(etag) {
            checked.push("etag-md5");
        }
    }
    Ok(checked)
}

/// Checks an object read whole against the MD5 of its parts' MD5s, where that is how
/// the source names it (its bytes are in RAM: a second pass over them, for objects
/// nothing else vouches for). Returns the check's name, if it was made.
///
/// Not every store's multipart ETag is that MD5 (SeaweedFS's, for an object it put
/// together from parts copied server-side, is not). So a mismatch reads the object
/// again: bytes that differ between the reads (`sum`, the relay's checksum of the
/// first) were changed on the way, and the read is retried; the same bytes twice
/// mean the ETag does not vouch for them, and the object is checked hop by hop, with
/// a warning.
async fn verify_composite(
    ctx: &Ctx,
    job: &ObjectJob,
    info: &ObjectInfo,
    body: &Body,
    sum: &Checksum,
) -> Result<Option<&'static str>> {
    let composite = timed(ctx.src_label(), Op::Stat, ctx.src.composite(&job.src_key, info)).await?;
    let Some(reported) = composite.filter(|c| super::parts::checks_composite(ctx, c)) else { return Ok(None) };
    let got = Composite::of_slices(reported.algo, reported.part_bytes, body.slices());
    if got == reported {
        return Ok(Some(reported.check_name()));
    }
    let mismatch = Error::Integrity {
        op: "get",
        target: job.src_key.clone(),
        detail: format!("the source reports {reported}, the bytes received have {got}"),
    };
    // Read again a chunk at a time: the first read's bytes still hold their RAM.
    let mut again = crate::checksum::Hasher::new(sum.algo);
    let step = ctx.pool.chunk_bytes() as u64;
    let mut offset = 0;
    while offset < job.size {
        let range = (offset, (offset + step).min(job.size));
        let chunks = ctx.pool.acquire(1).await;
        let mut none = Hashers::with_set(crate::checksum::DigestSet::EMPTY);
        let read = ctx.src.read(&job.src_key, Some(range), Body::new(chunks), &mut none);
        let (piece, seen) = timed(ctx.src_label(), Op::Get, read).await?;
        pinned(job, seen.version_token())?;
        if piece.len() != range.1 - range.0 {
            return Err(mismatch);
        }
        for slice in piece.slices() {
            again.update(slice);
        }
        offset = range.1;
    }
    if &again.finish() != sum {
        return Err(mismatch);
    }
    super::parts::composite_does_not_vouch(&job.src_key, &reported, &got);
    Ok(None)
}

pub(super) fn put_args(info: &ObjectInfo, version: &str, sum: Option<&Checksum>) -> PutArgs {
    PutArgs { meta: info.meta.clone(), provenance: Some(provenance(version, sum)) }
}

/// Ends an object the relay stopped before it began.
fn not_attempted(ctx: &Ctx, job: &ObjectJob) {
    let reason = ctx.shared.fatal.lock().expect("fatal lock").clone().unwrap_or_else(|| "the relay was stopped".into());
    ctx.shared.finish(job.src_key.clone(), Outcome::NotAttempted { reason });
}

pub(crate) async fn run_object(ctx: Rc<Ctx>, job: Arc<ObjectJob>) {
    if ctx.stopped() {
        return not_attempted(&ctx, &job);
    }
    if ctx.shared.quota_spent() {
        return ctx.shared.defer(job.src_key.clone(), job.size, None);
    }
    if job.check_dest {
        match ctx.already_there(&job).await {
            Ok(true) => {
                ctx.shared.finish(job.src_key.clone(), Outcome::Skipped { bytes: job.size });
                return;
            }
            Ok(false) if ctx.shared.opts.compare == super::Compare::Immutable => {
                let why = "it is at the destination and differs from the source, and --immutable never overwrites: \
                           delete or rename it there, or drop --immutable";
                return ctx.fail(&job, Error::protocol("put", &job.dst_key, why));
            }
            Ok(false) => {}
            Err(e) => return ctx.fail(&job, e),
        }
    }
    // A store that limits objects a second paces the uploads (not the checks above);
    // the folders it makes for them take turns too (`CreateTurns`).
    ctx.shared.progress.throttle.wait_turn(&ctx.shared.progress.stop).await;
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
        Err(e) => {
            if !start_over(&ctx, &job, &e).await {
                ctx.fail(&job, e);
            }
        }
    }
}

pub(super) fn server_side(ctx: &Ctx, job: &ObjectJob) -> Option<CopySource> {
    if !ctx.shared.opts.server_side_copy || !ctx.dst.capabilities().server_side_copy {
        return None;
    }
    ctx.src.copy_source(&job.src_key).filter(|s| ctx.dst.can_copy_from(s))
}

async fn dir_marker(ctx: &Ctx, job: &ObjectJob) -> Result<()> {
    let args = PutArgs { provenance: Some(provenance(&job.src_version, None)), ..PutArgs::default() };
    ctx.retry(Side::Destination, || ctx.dst.put_dir_marker(&job.dst_key, &args)).await
}

async fn copy_small(ctx: &Ctx, job: &ObjectJob, source: CopySource) -> Result<()> {
    let info = ctx
        .retry(Side::Source, || timed(ctx.src_label(), Op::Stat, ctx.src.stat(&job.src_key)))
        .await?
        .ok_or_else(|| gone(job))?;
    let args = put_args(&info, &job.src_version, info.checksums.first());
    ctx.retry(Side::Destination, || timed(ctx.dst_label(), Op::Copy, ctx.dst.copy_object(&source, &job.dst_key, &args)))
        .await
}

/// Checks that a read's bytes are of the version the object was started from (`seen`:
/// the version token the store gave with them, where it gives one): a source object
/// overwritten during the relay must not land as a mix of two versions.
pub(super) fn pinned(job: &ObjectJob, seen: Option<&str>) -> Result<()> {
    match seen {
        Some(seen) if !job.src_version.is_empty() && seen != job.src_version => Err(Error::Changed {
            op: "get",
            target: job.src_key.clone(),
            detail: format!("it was {} when the relay began, {seen} now", job.src_version),
        }),
        _ => Ok(()),
    }
}

/// The most times an object is started over (each costs the whole object again).
const RESTARTS_MAX: u32 = 2;

/// Starts an object over after `e`, when that is what can fix it, and returns whether
/// it did (the object is then not finished here: its new attempt finishes it):
/// - the bytes read disagreed with what the source vouches for the whole object (its
///   MD5, Dropbox's content_hash, a Drive hash): a byte corrupted on the way shows
///   only at the end and nothing says which part held it, so every part is read and
///   sent again, in a fresh upload (the failed one was aborted);
/// - the object changed at the source while it was read: it is sent again from its
///   new version (size and version asked of the source again).
///
/// At most [`RESTARTS_MAX`] times (fewer with fewer `--retries`), and not once the
/// relay is stopping. A mismatch seen part by part is retried with its part instead.
pub(super) async fn start_over(ctx: &Rc<Ctx>, job: &ObjectJob, e: &Error) -> bool {
    let changed = matches!(e, Error::Changed { .. });
    let source_mismatch = matches!(e, Error::Integrity { op: "get", .. });
    let allowed = job.restarts < RESTARTS_MAX.min(ctx.shared.opts.retries);
    if !(changed || source_mismatch) || !allowed || ctx.stopped() {
        return false;
    }
    // A mismatch with the whole-object hash may also be a change the reads could not
    // see (Drive says nothing of the revision it serves): the source is asked again.
    let info = match ctx.retry(Side::Source, || timed(ctx.src_label(), Op::Stat, ctx.src.stat(&job.src_key))).await {
        Ok(Some(info)) => info,
        _ => return false,
    };
    let changed = changed || info.version_token().is_some_and(|v| !job.src_version.is_empty() && v != job.src_version);
    let (size, version, kind) = if changed {
        let cutoff = ctx.shared.stats.multipart_cutoff_bytes.load(Ordering::Relaxed);
        let kind = match job.kind {
            Kind::DirMarker => Kind::DirMarker,
            _ if info.size >= cutoff && info.size > 0 => Kind::Large,
            _ => Kind::Small,
        };
        (info.size, info.version_token().unwrap_or_default().to_string(), kind)
    } else {
        (job.size, job.src_version.clone(), job.kind)
    };
    let why = if matches!(e, Error::Changed { .. }) {
        format!("{e}; sending its new version")
    } else if changed {
        // Seen only as a mismatch with the whole object's hash: said as the change it is.
        let detail = format!("it was {} when the relay began, {version} now; {e}", job.src_version);
        format!("{}; sending its new version", Error::Changed { op: "get", target: job.src_key.clone(), detail })
    } else {
        format!("{e}; reading and sending it again from the start")
    };
    tracing::warn!("{}: {why}", job.src_key);
    ctx.unlanded(std::mem::take(&mut job.large().landed_bytes));
    if size != job.size {
        let p = &ctx.shared.progress;
        p.bytes_total.fetch_add(size, Ordering::Relaxed);
        let _ = p.bytes_total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(job.size)));
    }
    ctx.shared.stats.objects_restarted.fetch_add(1, Ordering::Relaxed);
    {
        let mut restarted = ctx.shared.stats.restarted.lock().expect("restarted lock");
        if restarted.len() < super::DECISIONS_KEPT_MAX {
            restarted.push(super::Failure { key: job.src_key.clone(), reason: why });
        }
    }
    let again = Arc::new(job.started_over(size, version, kind));
    monoio::spawn(run_object(ctx.clone(), again));
    true
}

/// With `--require-end-to-end`, refuses an object that nothing at the source vouched
/// for (checked before anything is written).
pub(super) fn vouched_for(ctx: &Ctx, key: &str, source_checks: &[&'static str], etag: Option<&str>) -> Result<()> {
    if !ctx.shared.opts.require_end_to_end || !source_checks.is_empty() {
        return Ok(());
    }
    let detail = match etag {
        Some(e) if e.contains('-') => format!("its ETag {e} is of a multipart upload, and it has no checksum"),
        Some(e) => format!("its ETag {e} is not an MD5 of its bytes, and it has no checksum"),
        None => "it reports no hash".to_string(),
    };
    Err(Error::Unvouched { target: key.to_string(), detail })
}

pub(super) fn gone(job: &ObjectJob) -> Error {
    Error::protocol("get", &job.src_key, "the object was deleted at the source during the relay")
}

/// Whether MD5 is worth computing: to check a plain-MD5 ETag on either side.
/// Whether MD5 is worth computing for a small object: to check a plain-MD5 ETag,
/// which only a store that reports one (either side) has. A source that reports a
/// whole-object checksum for the object drops it again before the first byte
/// ([`Hashers::check_against`]).
fn wants_md5(ctx: &Ctx) -> bool {
    let etag = |reports: &[HashFamily]| reports.contains(&HashFamily::EtagMd5);
    ctx.shared.opts.verify_md5 && (etag(ctx.src.capabilities().reports) || etag(ctx.dst.capabilities().reports))
}

pub(super) fn decision(
    job: &ObjectJob,
    route: &'static str,
    reason: String,
    format: Option<&'static str>,
) -> RouteDecision {
    RouteDecision { key: job.src_key.clone(), route, reason, format }
}

async fn small(ctx: &Ctx, job: &ObjectJob) -> Result<()> {
    let algo = ctx.shared.opts.checksum;
    let format = std::cell::Cell::new(None);
    let result = ctx
        .retry_both(|| async {
            let chunks = ctx.pool.acquire(ctx.pool.chunks_for(job.size)).await;
            let mut hashers = Hashers::new(algo, wants_md5(ctx));
            let (body, info) =
                timed(ctx.src_label(), Op::Get, ctx.src.read(&job.src_key, None, Body::new(chunks), &mut hashers))
                    .await?;
            pinned(job, info.version_token())?;
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
            let digests = hashers.finish_all();
            let mut source_checks = verify_source(&job.src_key, &info, &digests)?;
            if source_checks.is_empty() && super::parts::asks_composite(ctx, &info) {
                let sum = digests.get(algo).expect("the relay's checksum is computed");
                source_checks.extend(verify_composite(ctx, job, &info, &body, sum).await?);
            }
            vouched_for(ctx, &job.src_key, &source_checks, info.etag.as_deref())?;
            let sum = digests.get(algo).cloned().expect("the relay's checksum is computed");
            format.set(body.chunks.first().and_then(|c| crate::sniff::sniff(c.as_slice())));
            let args = put_args(&info, &job.src_version, Some(&sum));
            let plan = UploadPlan { size: job.size, single: true, checksum: Some(algo) };
            let session = ctx.dst.begin(&job.dst_key, plan, &args).await?;
            // The relay's checksum first (sent for the store to verify), then MD5 where it
            // was computed (checked against a plain ETag), straight from the digests.
            let mut sums = vec![sum.clone()];
            sums.extend(digests.get(ChecksumAlgo::Md5).filter(|_| algo != ChecksumAlgo::Md5).cloned());
            let part = PartSpec { number: 1, offset: 0, len: job.size };
            let put = async {
                let token = timed(ctx.dst_label(), Op::Put, session.put(part, body, &sums)).await?;
                session.finish(&[PartRecord::new(part, token, sum.clone())], Some(&sum)).await
            };
            match put.await {
                Ok(()) => {
                    let caps = ctx.dst.capabilities();
                    let dest_checks = ctx.shared.destination_checks(&caps, algo, sums.len() > 1);
                    ctx.shared.checked(&job.src_key, source_checks, dest_checks);
                    Ok(())
                }
                Err(e) => {
                    let _ = session.abort().await;
                    Err(e)
                }
            }
        })
        .await;
    if result.is_ok() {
        ctx.shared.decided(decision(job, "ram", "small: held whole in RAM".into(), format.get()));
    }
    result
}

async fn begin_large(ctx: Rc<Ctx>, job: Arc<ObjectJob>) {
    // Wait for a slot among the open large objects (the object keeps its transfer
    // slot meanwhile); released in `finish_large` or below when planning fails, each
    // of which notifies `Progress::changed`, as a stop does.
    let open = &ctx.shared.stats.large_open;
    let progress = &ctx.shared.progress;
    loop {
        let listener = progress.changed.listen();
        if ctx.stopped()
            || open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < ctx.shared.policy.large_open_max()).then_some(n + 1)
                })
                .is_ok()
        {
            break;
        }
        listener.await;
    }
    if ctx.stopped() {
        return not_attempted(&ctx, &job);
    }
    if ctx.shared.quota_spent() {
        return ctx.shared.defer(job.src_key.clone(), job.size, None);
    }
    match plan_large(&ctx, &job).await {
        Ok(count) => {
            let staged = route_large(&ctx, &job, count).await;
            if staged {
                // Parts filled into the stage are not hashed in order.
                super::chain::break_chain(&job);
            }
            // Parts an earlier run sent (a resumed upload) are done already.
            let done = job.large().progress.parts.iter().filter(|p| p.is_some()).count() as u32;
            let left = count - done;
            // Pairs with the AcqRel decrement in `run_part`.
            job.parts_left.store(left, Ordering::Release);
            if ctx.dst.capabilities().upload == UploadMode::Ordered {
                // One ordered stream (e.g. a resumable upload): this task sends the
                // parts itself, in order.
                return super::ordered::run(ctx, job, staged).await;
            }
            if left == 0 {
                // Every part was sent before: only the completion is left.
                let state = job.large().progress.session.clone().expect("session begun before parts");
                return super::parts::finish_large(&ctx, &job, state).await;
            }
            job.large().fill_first = staged;
            // The first window of parts; each part that ends queues the next.
            for _ in 0..ctx.shared.policy.part_window().min(left) {
                queue_next_part(&ctx, &job);
            }
        }
        Err(e) => {
            job.large().advance(Phase::Failed);
            ctx.shared.stats.large_open.fetch_sub(1, Ordering::AcqRel);
            ctx.shared.progress.changed.notify(usize::MAX);
            ctx.fail(&job, e);
        }
    }
}

/// Queues the next part of `job` that is not yet queued, if any: to the stage fills
/// when the object goes through the stage, else to the parts. Each object has at most
/// [`super::Policy::part_window`] parts queued or in flight, which is what bounds the
/// part queues.
pub(super) fn queue_next_part(ctx: &Ctx, job: &Arc<ObjectJob>) {
    let (count, fill_first) = {
        let large = job.large();
        (large.progress.part_count(), large.fill_first)
    };
    // Past the parts an earlier run sent (a resumed upload): each is done already.
    let index = loop {
        let index = job.next_part.fetch_add(1, Ordering::Relaxed);
        if index >= count {
            return;
        }
        if job.large().progress.parts[index as usize].is_none() {
            break index;
        }
    };
    let queues = &ctx.shared.queues;
    let queue = if fill_first { &queues.stage_fills } else { &queues.parts };
    if queue.push(PartTask { job: job.clone(), index }).is_err() {
        unreachable!("a part queue holds at most large_open_max x part_window parts");
    }
    queues.event.notify(usize::MAX);
}
