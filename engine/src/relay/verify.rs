//! Integrity check of a destination against its source, after (or without) a relay.
//!
//! Both listings are merge-joined in key order, as the planner does, so memory holds
//! a page per side whatever the bucket size. Each source object is then judged:
//! - by listing and metadata (the default): sizes, comparable ETags, and the
//!   provenance record Laminar stores with every object it writes. An object
//!   rewritten behind Laminar's back loses that record or changes its ETag.
//! - by content (`download`): both copies are read again in ranges through a small
//!   pool and their checksums recomputed and compared. This catches what metadata
//!   cannot (bytes changed in place at rest), at the cost of reading everything twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::plan::{judge, scope, version_of, Cursor, KeyOrder, Verdict};
use super::{Failure, Location, RelayOptions, FAILURES_KEPT_MAX};
use crate::backend::{holds_version, Source, WorkerCtx};
use crate::checksum::{ChecksumAlgo, Hashers};
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
    /// Bytes of the source objects checked.
    pub bytes_checked: u64,
    /// Wall time.
    pub seconds: f64,
    /// Each missing or differing object and why, at most [`FAILURES_KEPT_MAX`].
    pub problems: Vec<Failure>,
    /// Whether the check was stopped before it covered every object.
    pub stopped: bool,
}

impl VerifyReport {
    /// Whether every object is intact at the destination.
    pub fn ok(&self) -> bool {
        !self.stopped && self.objects_missing == 0 && self.objects_mismatched == 0
    }

    fn problem(&mut self, key: &str, reason: String, missing: bool) {
        if missing {
            self.objects_missing += 1;
        } else {
            self.objects_mismatched += 1;
        }
        if self.problems.len() < FAILURES_KEPT_MAX {
            self.problems.push(Failure { key: key.to_string(), reason });
        }
    }
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
    download: bool,
    progress: &VerifyProgress,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let (driver, _) = crate::runtime::select(opts.driver).map_err(Error::Usage)?;
    let mut report = crate::runtime::block_on(driver, check(src, dst, opts, download, progress))
        .map_err(|e| Error::io("verify", "runtime", e))??;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn check(
    src: &Location,
    dst: &Location,
    opts: &RelayOptions,
    download: bool,
    progress: &VerifyProgress,
) -> Result<VerifyReport> {
    let ctx = WorkerCtx { http: HttpClient::default() };
    let retries = opts.retries;
    let never = AtomicBool::new(false);
    let src_store = src.backend.open_source(&ctx)?;
    let dst_store = dst.backend.open_source(&ctx)?;
    super::retry(retries, &never, || src_store.check(false)).await?;
    super::retry(retries, &never, || dst_store.check(false)).await?;
    let scope = scope(src, dst, &src_store, retries).await?;
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
        let Some(rel) = scope.relative(&entry.key, &opts.filter) else { continue };
        let dst_key = format!("{}{rel}", dst.prefix);
        while let Some(d) = &dst_head {
            if order.cmp(&d.key[dst.prefix.len()..], &rel) == std::cmp::Ordering::Less {
                dst_head = dst_cursor.next().await?;
            } else {
                break;
            }
        }
        report.objects_checked += 1;
        report.bytes_checked += entry.size;
        progress.objects_checked.fetch_add(1, Ordering::Relaxed);
        let Some(existing) = dst_head.as_ref().filter(|d| order.same(&d.key[dst.prefix.len()..], &rel)) else {
            report.problem(&entry.key, format!("missing at the destination ({dst_key})"), true);
            continue;
        };
        if existing.size != entry.size {
            let why = format!("the destination holds {} bytes, the source {}", existing.size, entry.size);
            report.problem(&entry.key, why, false);
            continue;
        }
        let verdict = if download {
            match compare_contents(
                &pool,
                opts.checksum,
                &src_store,
                &entry.key,
                &dst_store,
                &dst_key,
                entry.size,
                retries,
                &progress.stop,
            )
            .await
            {
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
                    let info = super::retry(retries, &never, || dst_store.stat(&dst_key)).await?;
                    match info {
                        Some(info) if holds_version(&info, entry.size, &version_of(&entry)) => None,
                        Some(info) if info.provenance.is_none() => Some(
                            "the destination copy carries no record of being relayed from this source (rewritten outside Laminar?)"
                                .to_string(),
                        ),
                        Some(_) => Some("the destination copy records another source version".to_string()),
                        None => Some(format!("missing at the destination ({dst_key})")),
                    }
                }
            }
        };
        match verdict {
            None => report.objects_matched += 1,
            Some(why) => report.problem(&entry.key, why, false),
        }
    }
    Ok(report)
}

/// Re-reads both copies and compares their checksums; Some(reason) if they differ.
#[allow(clippy::too_many_arguments)]
async fn compare_contents(
    pool: &BufferPool,
    algo: ChecksumAlgo,
    src: &std::rc::Rc<dyn Source>,
    src_key: &str,
    dst: &std::rc::Rc<dyn Source>,
    dst_key: &str,
    size: u64,
    retries: u32,
    stop: &AtomicBool,
) -> Result<Option<String>> {
    let a = checksum_of(pool, algo, src, src_key, size, retries, stop).await?;
    let b = checksum_of(pool, algo, dst, dst_key, size, retries, stop).await?;
    Ok((a != b).then(|| format!("contents differ: {a} at the source, {b} at the destination")))
}

async fn checksum_of(
    pool: &BufferPool,
    algo: ChecksumAlgo,
    store: &std::rc::Rc<dyn Source>,
    key: &str,
    size: u64,
    retries: u32,
    stop: &AtomicBool,
) -> Result<crate::checksum::Checksum> {
    let mut hashers = Hashers::new(algo, false);
    let mut offset = 0;
    while offset < size {
        if stop.load(Ordering::Acquire) {
            return Err(Error::protocol("verify", key, "the check was stopped"));
        }
        let end = (offset + READ_BYTES as u64).min(size);
        // A retry starts from the state before this range, so no byte is hashed twice.
        hashers = super::retry(retries, stop, || {
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
