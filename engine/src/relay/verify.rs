//! Integrity check of a destination against its source, after (or without) a relay.
//!
//! Both listings are merge-joined in key order, as the planner does, so memory holds
//! a page per side whatever the bucket size. Each source object is then judged:
//! - by listing and metadata (the default): sizes, comparable ETags, and the
//!   provenance record Laminar stores with every object it writes. An object
//!   rewritten behind Laminar's back loses that record or changes its ETag.
//!   Where the listings settle nothing, both sides are asked for their hashes and the
//!   strongest both report is compared (SHA-256, Dropbox's content hash, SHA-1, MD5,
//!   CRC64NVME, CRC32C). With no common hash and no record, a strict check (a job's,
//!   of objects Laminar wrote) calls the copy unvouched; `laminar check` of a tree
//!   some other tool wrote counts it as compared by size only, and says so.
//! - by content (`download`): both copies are read again in ranges through a small
//!   pool and their checksums recomputed and compared. This catches what metadata
//!   cannot (bytes changed in place at rest), at the cost of reading everything twice.
//!
//! Objects at the destination that the source lacks are `extra`: `laminar check`
//! counts them as differences, a job's check (of a relay, which never deletes) does not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::plan::{judge, scope, version_of, Cursor, KeyOrder, Verdict};
use super::{Blame, Location, RelayOptions, FAILURES_KEPT_MAX};
use crate::backend::{holds_version, ObjectInfo, Source, WorkerCtx};
use crate::checksum::{etag_is_md5, Checksum, ChecksumAlgo, Hashers};
use crate::error::{Error, Result};
use crate::http::HttpClient;
use crate::pool::{Body, BufferPool};

/// Bytes read per request when re-reading objects.
const READ_BYTES: usize = 8 << 20;
/// Pool chunk for re-reads.
const CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(READ_BYTES.is_multiple_of(CHUNK_BYTES));

/// What an integrity check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Whether contents were re-read and their checksums recomputed.
    pub download: bool,
    /// Source objects checked (after filters).
    pub objects_checked: u64,
    /// Objects the destination holds intact.
    pub objects_matched: u64,
    /// Objects missing at the destination.
    pub objects_missing: u64,
    /// Objects whose destination copy differs.
    pub objects_mismatched: u64,
    /// Objects at the destination that the source does not hold (after filters).
    pub objects_extra: u64,
    /// Objects the check could compare only by size: neither a hash both stores
    /// report nor a record of the source version (use `download` to read them).
    pub objects_size_only: u64,
    /// Objects compared by each hash both stores reported, by name.
    pub hashes_compared: std::collections::BTreeMap<String, u64>,
    /// Bytes of the source objects checked.
    pub bytes_checked: u64,
    /// Wall time.
    pub seconds: f64,
    /// Each missing, differing or extra object and why, at most [`FAILURES_KEPT_MAX`].
    pub problems: Vec<Problem>,
    /// Whether the check was stopped before it covered every object.
    pub stopped: bool,
    /// Objects deleted (at the source by a move, extras at the destination by a sync).
    pub objects_deleted: u64,
    /// Extra objects copied into the backup location before they were deleted.
    pub objects_backed_up: u64,
    /// Objects that were to be deleted and were not, with why.
    pub delete_failures: Vec<super::Failure>,
}

/// What is wrong with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The source holds it, the destination does not.
    Missing,
    /// Both hold it, and the copies differ.
    Differs,
    /// The destination holds it, the source does not.
    Extra,
}

/// One object a check found wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The key: the source's, or for an extra object the destination's.
    pub key: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Why, one line.
    pub reason: String,
}

impl VerifyReport {
    /// Whether every source object is intact at the destination.
    pub fn ok(&self) -> bool {
        !self.stopped && self.objects_missing == 0 && self.objects_mismatched == 0
    }

    /// Whether the two sides hold the same objects, the same: nothing missing,
    /// differing or extra.
    pub fn same(&self) -> bool {
        self.ok() && self.objects_extra == 0
    }

    fn problem(&mut self, key: &str, kind: ProblemKind, reason: String) {
        match kind {
            ProblemKind::Missing => self.objects_missing += 1,
            ProblemKind::Differs => self.objects_mismatched += 1,
            ProblemKind::Extra => self.objects_extra += 1,
        }
        if self.problems.len() < FAILURES_KEPT_MAX {
            self.problems.push(Problem { key: key.to_string(), kind, reason });
        }
    }
}

/// What a check does besides reporting.
#[derive(Clone, Default)]
pub enum Act {
    /// Nothing: report only.
    #[default]
    Report,
    /// Deletes each source object whose copy the check finds the same (`laminar move`).
    DeleteSameAtSource,
    /// Deletes each extra object at the destination, at most `max` of them, after a
    /// server-side copy into `backup` where one is given (`laminar sync`).
    DeleteExtra {
        /// Most objects to delete; the rest are left and reported.
        max: u64,
        /// Where to keep what is deleted: the same store as the destination.
        backup: Option<Location>,
    },
}

/// How a check runs.
#[derive(Clone)]
pub struct CheckOptions {
    /// Read both copies again and compare their checksums.
    pub download: bool,
    /// How a copy nothing vouches for is judged.
    pub unvouched: Unvouched,
    /// Judge by presence alone: an object both sides hold is the same (for counting
    /// what a sync would delete, without a request per object).
    pub presence_only: bool,
    /// What to do besides reporting.
    pub act: Act,
}

impl CheckOptions {
    /// A report-only check.
    pub fn report(download: bool, unvouched: Unvouched) -> CheckOptions {
        CheckOptions { download, unvouched, presence_only: false, act: Act::Report }
    }
}

/// How a check judges a copy that neither a hash both stores report nor a record
/// of the source version vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unvouched {
    /// As differing: the destination was written by Laminar, which records the
    /// source version, so a copy without the record was rewritten since.
    Differs,
    /// As the same by size, counted in `objects_size_only`: the destination may have
    /// been written by any tool.
    SizeOnly,
}

/// Live counters of a running check.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    /// Objects checked so far.
    pub objects_checked: AtomicU64,
    /// Set to stop the check early.
    pub stop: AtomicBool,
}

/// Checks every object under `src` (through `opts.filter`) against `dst`, on the
/// calling thread. Errors are for problems that stop the check (unreachable store,
/// bad credentials); each object's verdict is in the report.
pub fn verify(
    src: &Location,
    dst: &Location,
    opts: &RelayOptions,
    how: &CheckOptions,
    progress: &VerifyProgress,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (driver, _) = crate::runtime::select(opts.driver).map_err(Error::Usage)?;
    let mut report = crate::runtime::block_on(driver, check(src, dst, opts, how, progress))
        .map_err(|e| Error::io("verify", "runtime", e))??;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn check(
    src: &Location,
    dst: &Location,
    opts: &RelayOptions,
    how: &CheckOptions,
    progress: &VerifyProgress,
) -> Result<VerifyReport> {
    let (download, unvouched) = (how.download, how.unvouched);
    let ctx = WorkerCtx::new(HttpClient::default());
    let retries = opts.retries;
    let never = AtomicBool::new(false);
    let src_store = src.backend.open_source(&ctx)?;
    let dst_store = dst.backend.open_source(&ctx)?;
    super::retry(retries, &never, Blame::Remote(src.remote_label()), || src_store.check(false)).await?;
    super::retry(retries, &never, Blame::Remote(dst.remote_label()), || dst_store.check(false)).await?;
    let scope = scope(src, dst, &src_store, retries).await?;
    let mut deleter = Deleter::open(&how.act, src, dst, &ctx)?;
    let pool = BufferPool::new(CHUNK_BYTES, READ_BYTES / CHUNK_BYTES);
    let mut report = VerifyReport { download, ..VerifyReport::default() };
    let order = KeyOrder::for_destination(&*dst_store);
    let mut src_cursor = Cursor::new(src_store.clone(), src.remote_label(), scope.src_list.clone(), retries, order);
    let mut dst_cursor = Cursor::new(dst_store.clone(), dst.remote_label(), scope.dst_list.clone(), retries, order);
    let mut dst_head = dst_cursor.next().await?;
    while let Some(entry) = src_cursor.next().await? {
        if progress.stop.load(Ordering::Acquire) {
            report.stopped = true;
            break;
        }
        let Some(rel) = scope.relative(&entry, &opts.filter) else { continue };
        let dst_key = format!("{}{rel}", dst.prefix);
        while let Some(d) = &dst_head {
            if order.cmp(&d.key[dst.prefix.len()..], &rel) == std::cmp::Ordering::Less {
                deleter.extra(&mut report, d, &dst.prefix, &opts.filter, retries).await;
                dst_head = dst_cursor.next().await?;
            } else {
                break;
            }
        }
        report.objects_checked += 1;
        report.bytes_checked += entry.size;
        progress.objects_checked.fetch_add(1, Ordering::Relaxed);
        let Some(existing) = dst_head.as_ref().filter(|d| order.same(&d.key[dst.prefix.len()..], &rel)) else {
            report.problem(&entry.key, ProblemKind::Missing, format!("missing at the destination ({dst_key})"));
            continue;
        };
        if how.presence_only {
            report.objects_matched += 1;
            dst_head = dst_cursor.next().await?;
            continue;
        }
        if existing.size != entry.size {
            let why = format!("the destination holds {} bytes, the source {}", existing.size, entry.size);
            report.problem(&entry.key, ProblemKind::Differs, why);
            dst_head = dst_cursor.next().await?;
            continue;
        }
        let verdict = if download {
            let a = Stored { store: &src_store, key: &entry.key, remote: src.remote_label() };
            let b = Stored { store: &dst_store, key: &dst_key, remote: dst.remote_label() };
            match compare_contents(&pool, opts.checksum, a, b, entry.size, retries, &progress.stop).await {
                Err(_) if progress.stop.load(Ordering::Acquire) => {
                    report.stopped = true;
                    break;
                }
                other => other?,
            }
        } else {
            match judge(&entry, existing) {
                Verdict::Skip => None,
                Verdict::Copy => Some(match (&entry.etag, &existing.etag) {
                    (Some(a), Some(b)) if a != b => format!("ETag {b} at the destination, {a} at the source"),
                    _ => "the destination copy records another source version".to_string(),
                }),
                Verdict::CheckDest => {
                    let info =
                        super::retry(retries, &never, Blame::Remote(dst.remote_label()), || dst_store.stat(&dst_key))
                            .await?;
                    match info {
                        Some(info) if holds_version(&info, entry.size, &version_of(&entry)) => None,
                        Some(info) => {
                            let theirs = super::retry(retries, &never, Blame::Remote(src.remote_label()), || {
                                src_store.stat(&entry.key)
                            })
                            .await?;
                            match theirs.as_ref().and_then(|s| strongest_common(s, &info)) {
                                Some((a, b)) => {
                                    *report.hashes_compared.entry(a.algo.name().to_string()).or_default() += 1;
                                    (a != b).then(|| format!("{a} at the source, {b} at the destination"))
                                }
                                None if info.provenance.is_some() => {
                                    Some("the destination copy records another source version".to_string())
                                }
                                None if unvouched == Unvouched::SizeOnly => {
                                    report.objects_size_only += 1;
                                    None
                                }
                                None => Some(
                                    "the destination copy carries no record of being relayed from this source (rewritten outside Laminar?)"
                                        .to_string(),
                                ),
                            }
                        }
                        None => Some(format!("missing at the destination ({dst_key})")),
                    }
                }
            }
        };
        match verdict {
            None => {
                report.objects_matched += 1;
                deleter.same(&mut report, &entry.key, retries).await;
            }
            Some(why) => report.problem(&entry.key, ProblemKind::Differs, why),
        }
        dst_head = dst_cursor.next().await?;
    }
    if !report.stopped {
        while let Some(d) = &dst_head {
            deleter.extra(&mut report, d, &dst.prefix, &opts.filter, retries).await;
            dst_head = dst_cursor.next().await?;
        }
    }
    Ok(report)
}

/// What a check deletes as it goes, by [`Act`].
struct Deleter {
    act: Act,
    /// The store objects are deleted from: the source for a move, the destination
    /// for a sync.
    sink: Option<std::rc::Rc<dyn crate::backend::Sink>>,
    /// The destination as a source, for the copy references of backups.
    dst_source: Option<std::rc::Rc<dyn Source>>,
    /// The backup location's store, which copies into itself.
    backup_sink: Option<std::rc::Rc<dyn crate::backend::Sink>>,
    /// The remote labels of `sink` and `backup_sink`, for the metrics.
    labels: (String, String),
}

impl Deleter {
    fn open(act: &Act, src: &Location, dst: &Location, ctx: &WorkerCtx) -> Result<Deleter> {
        let mut backup_sink = None;
        let (sink, dst_source) = match act {
            Act::Report => (None, None),
            Act::DeleteSameAtSource => (Some(src.backend.open_sink(ctx)?), None),
            Act::DeleteExtra { backup, .. } => {
                let sink = dst.backend.open_sink(ctx)?;
                let source = dst.backend.open_source(ctx)?;
                if let Some(b) = backup {
                    let probe = source.copy_source("probe");
                    let to = b.backend.open_sink(ctx)?;
                    if !probe.as_ref().is_some_and(|c| to.can_copy_from(c)) {
                        return Err(Error::Usage(format!(
                            "--backup-dir {}: objects are moved there by a server-side copy, and this store cannot                              copy from {} (give a backup path on the destination's own store)",
                            b.display, dst.display
                        )));
                    }
                    backup_sink = Some(to);
                }
                (Some(sink), Some(source))
            }
        };
        let sink_label = match act {
            Act::DeleteSameAtSource => src.remote_label(),
            _ => dst.remote_label(),
        };
        let backup_label = match act {
            Act::DeleteExtra { backup: Some(b), .. } => b.remote_label(),
            _ => "",
        };
        let labels = (sink_label.to_string(), backup_label.to_string());
        Ok(Deleter { act: act.clone(), sink, dst_source, backup_sink, labels })
    }

    /// A source object whose copy is the same: a move deletes it.
    async fn same(&mut self, report: &mut VerifyReport, key: &str, retries: u32) {
        let (Act::DeleteSameAtSource, Some(sink)) = (&self.act, &self.sink) else { return };
        let never = AtomicBool::new(false);
        match super::retry(retries, &never, Blame::Remote(&self.labels.0), || sink.delete(key)).await {
            Ok(()) => report.objects_deleted += 1,
            Err(e) => fail_delete(report, key, e.to_string()),
        }
    }

    /// A destination object the source does not hold, if the filter covers it:
    /// counted, and a sync deletes it (after backing it up).
    async fn extra(
        &mut self,
        report: &mut VerifyReport,
        d: &crate::backend::Entry,
        dst_prefix: &str,
        filter: &super::Filter,
        retries: u32,
    ) {
        let Some(rel) = d.key.get(dst_prefix.len()..).filter(|r| !r.is_empty()) else { return };
        if !filter.accepts_entry(rel, d) {
            return;
        }
        report.problem(&d.key, ProblemKind::Extra, "at the destination, not at the source".to_string());
        let (Act::DeleteExtra { max, backup }, Some(sink)) = (&self.act, &self.sink) else { return };
        if report.objects_deleted >= *max {
            fail_delete(report, &d.key, format!("not deleted: past the limit of {max} deletions"));
            return;
        }
        let never = AtomicBool::new(false);
        if let Some(b) = backup {
            let to = format!("{}{rel}", b.prefix);
            let copy = self.dst_source.as_ref().and_then(|s| s.copy_source(&d.key));
            let Some(copy) = copy else {
                return fail_delete(report, &d.key, "not deleted: it cannot be copied to the backup".into());
            };
            let args = crate::backend::PutArgs::default();
            let Some(into) = &self.backup_sink else { return };
            match super::retry(retries, &never, Blame::Remote(&self.labels.1), || into.copy_object(&copy, &to, &args))
                .await
            {
                Ok(()) => report.objects_backed_up += 1,
                Err(e) => return fail_delete(report, &d.key, format!("not deleted: the copy to {to} failed: {e}")),
            }
        }
        match super::retry(retries, &never, Blame::Remote(&self.labels.0), || sink.delete(&d.key)).await {
            Ok(()) => report.objects_deleted += 1,
            Err(e) => fail_delete(report, &d.key, e.to_string()),
        }
    }
}

fn fail_delete(report: &mut VerifyReport, key: &str, reason: String) {
    if report.delete_failures.len() < FAILURES_KEPT_MAX {
        report.delete_failures.push(super::Failure { key: key.to_string(), reason });
    }
}

/// The hashes a store reported for an object: its checksums, and its ETag where that
/// is a plain MD5.
fn hashes(info: &ObjectInfo) -> Vec<Checksum> {
    let mut out = info.checksums.clone();
    if let Some(md5) = info.etag.as_deref().filter(|e| etag_is_md5(e)).and_then(|e| hex::decode(e).ok()) {
        if !out.iter().any(|c| c.algo == ChecksumAlgo::Md5) {
            out.push(Checksum { algo: ChecksumAlgo::Md5, bytes: md5 });
        }
    }
    out
}

/// Hashes from strongest to weakest, for choosing what to compare.
const STRENGTH: [ChecksumAlgo; 6] = [
    ChecksumAlgo::Sha256,
    ChecksumAlgo::DropboxContentHash,
    ChecksumAlgo::Sha1,
    ChecksumAlgo::Md5,
    ChecksumAlgo::Crc64nvme,
    ChecksumAlgo::Crc32c,
];

/// `--checksum`'s verdict on a destination object of `size` bytes (the source's
/// size): the same when both are that size and the strongest hash both report
/// matches, or when they report none in common.
pub(super) fn same_by_hash(src: Option<&ObjectInfo>, dst: &ObjectInfo, size: u64) -> bool {
    let Some(src) = src else { return false };
    if src.size != size || dst.size != size {
        return false;
    }
    strongest_common(src, dst).is_none_or(|(a, b)| a.bytes == b.bytes)
}

/// The strongest hash both sides report: (the source's, the destination's).
fn strongest_common(src: &ObjectInfo, dst: &ObjectInfo) -> Option<(Checksum, Checksum)> {
    let (a, b) = (hashes(src), hashes(dst));
    STRENGTH.iter().find_map(|algo| {
        let x = a.iter().find(|c| c.algo == *algo)?;
        let y = b.iter().find(|c| c.algo == *algo)?;
        Some((x.clone(), y.clone()))
    })
}

/// One copy of an object, to read back.
#[derive(Clone, Copy)]
struct Stored<'a> {
    store: &'a std::rc::Rc<dyn Source>,
    key: &'a str,
    /// The store's remote label, for the metrics.
    remote: &'a str,
}

/// Re-reads both copies and compares their checksums; Some(reason) if they differ.
async fn compare_contents(
    pool: &BufferPool,
    algo: ChecksumAlgo,
    src: Stored<'_>,
    dst: Stored<'_>,
    size: u64,
    retries: u32,
    stop: &AtomicBool,
) -> Result<Option<String>> {
    let a = checksum_of(pool, algo, src, size, retries, stop).await?;
    let b = checksum_of(pool, algo, dst, size, retries, stop).await?;
    Ok((a != b).then(|| format!("contents differ: {a} at the source, {b} at the destination")))
}

async fn checksum_of(
    pool: &BufferPool,
    algo: ChecksumAlgo,
    copy: Stored<'_>,
    size: u64,
    retries: u32,
    stop: &AtomicBool,
) -> Result<crate::checksum::Checksum> {
    let (store, key) = (copy.store, copy.key);
    let mut hashers = Hashers::new(algo, false);
    let mut offset = 0;
    while offset < size {
        if stop.load(Ordering::Acquire) {
            return Err(Error::protocol("verify", key, "the check was stopped"));
        }
        let end = (offset + READ_BYTES as u64).min(size);
        // A retry starts from the state before this range, so no byte is hashed twice.
        hashers = super::retry(retries, stop, Blame::Remote(copy.remote), || {
            let mut attempt = hashers.clone();
            async move {
                let chunks = pool.acquire(pool.chunks_for(end - offset)).await;
                let (body, _) = store.read(key, Some((offset, end)), Body::new(chunks), &mut attempt).await?;
                if body.len() != end - offset {
                    return Err(Error::protocol("verify", key, "the object came back short"));
                }
                Ok(attempt)
            }
        })
        .await?;
        offset = end;
    }
    Ok(hashers.finish().0)
}
