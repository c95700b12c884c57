//! The planner: streams both listings, merge-joins them in key order, filters, and
//! decides for each source object whether to copy or skip it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::filter::Filter;
use super::transfer::{Kind, ObjectJob};
use super::Compare;
use super::{Blame, ObjectResult, Outcome, Report, Shared, Side, FAILURES_KEPT_MAX};
use crate::backend::{holds_version, provenance_version, Entry, Source, WorkerCtx};
use crate::checksum::etag_is_md5;
use crate::error::{Error, Result};
use crate::http::HttpClient;

/// An object the planner decided to copy (shown by dry runs).
#[derive(Debug, Clone)]
pub struct Planned {
    /// Source key.
    pub src_key: String,
    /// Destination key.
    pub dst_key: String,
    /// Size.
    pub size: u64,
}

/// The source's version token: its ETag, or the file backend's size+mtime.
pub(super) fn version_of(entry: &Entry) -> String {
    entry.etag.clone().or_else(|| entry.version.clone()).unwrap_or_default()
}

/// What the listings alone say about a source object that exists at the destination.
pub(super) enum Verdict {
    Copy,
    Skip,
    /// Same size, no comparable hash in the listing: ask the destination.
    CheckDest,
}

/// `--checksum` by the listings: a plain MD5 in both settles it; otherwise both
/// stores are asked for their hashes.
fn by_listed_hash(src: &Entry, dst: &Entry) -> Verdict {
    if src.size != dst.size {
        return Verdict::Copy;
    }
    by_md5_etags(src, dst)
}

pub(super) fn judge(src: &Entry, dst: &Entry) -> Verdict {
    if src.size != dst.size {
        return Verdict::Copy;
    }
    if let Some(p) = &dst.provenance {
        return if provenance_version(p) == version_of(src) { Verdict::Skip } else { Verdict::Copy };
    }
    by_md5_etags(src, dst)
}

/// Plain-MD5 ETags in both listings settle it; else the destination is asked.
fn by_md5_etags(src: &Entry, dst: &Entry) -> Verdict {
    match (&src.etag, &dst.etag) {
        (Some(a), Some(b)) if etag_is_md5(a) && etag_is_md5(b) => {
            if a.eq_ignore_ascii_case(b) {
                Verdict::Skip
            } else {
                Verdict::Copy
            }
        }
        _ => Verdict::CheckDest,
    }
}

/// Which keys a relay or check covers, and where they list.
pub(super) struct Scope {
    /// The one object a path named, if it did.
    single: Option<String>,
    /// The source prefix keys are relative to.
    src_prefix: String,
    /// The prefix to list at the source.
    pub(super) src_list: String,
    /// The prefix to list at the destination.
    pub(super) dst_list: String,
}

impl Scope {
    /// The key relative to the source prefix, if the relay covers the object.
    pub(super) fn relative(&self, entry: &Entry, filter: &Filter) -> Option<String> {
        let rel = self.relative_key(&entry.key)?;
        filter.accepts_entry(rel, entry).then(|| rel.to_string())
    }

    /// The key relative to the source prefix, if it is in scope and passes the
    /// filter's path rules (what a listing left out has no size or age to judge).
    fn relative_path(&self, key: &str, filter: &Filter) -> Option<String> {
        let rel = self.relative_key(key)?;
        filter.accepts(rel).then(|| rel.to_string())
    }

    fn relative_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        if self.single.as_ref().is_some_and(|k| k != key) {
            return None;
        }
        key.get(self.src_prefix.len()..).filter(|rel| !rel.is_empty())
    }
}

/// A source path naming one object (`bucket/dir/file.txt`) covers that object, into
/// the destination prefix, as `cp` would; otherwise the path is a prefix.
pub(super) async fn scope(
    src: &super::Location,
    dst: &super::Location,
    src_store: &std::rc::Rc<dyn Source>,
    retries: u32,
) -> Result<Scope> {
    let never = std::sync::atomic::AtomicBool::new(false);
    let single = match &src.object {
        Some(key) => super::retry(retries, &never, Blame::Remote(src.remote_label()), || src_store.stat(key))
            .await?
            .map(|_| key.clone()),
        None => None,
    };
    Ok(match single {
        Some(key) => {
            let base = key.rfind('/').map_or(String::new(), |i| key[..=i].to_string());
            let name = &key[base.len()..];
            Scope {
                src_prefix: base,
                src_list: key.clone(),
                dst_list: format!("{}{name}", dst.prefix),
                single: Some(key),
            }
        }
        None => Scope {
            single: None,
            src_prefix: src.prefix.clone(),
            src_list: src.prefix.clone(),
            dst_list: dst.prefix.clone(),
        },
    })
}

/// Whether a store reports hashes for its objects and none of them combines from
/// parts hashed apart (CRC32C, CRC64NVME and Dropbox's content_hash do).
fn reports_only_uncombinable(reports: &[crate::backend::HashFamily]) -> bool {
    use crate::backend::HashFamily::*;
    let combines = reports.iter().any(|f| matches!(f, Crc32c | Crc64nvme | DropboxContentHash));
    !combines && reports.iter().any(|f| matches!(f, Md5 | Sha256))
}

/// Retries the check of each side gets at least.
const CHECK_RETRIES_MIN: u32 = 8;

pub(super) async fn check_locations(shared: &Shared) -> Result<()> {
    let ctx = WorkerCtx::new(HttpClient::default());
    // One request per side, before anything starts: a store already throttling (a 429
    // storm, a rate limit left by another client) is waited out, about 20 s with the
    // backoff's doubling, rather than ending the relay on its first answers.
    let retries = shared.opts.retries.max(CHECK_RETRIES_MIN);
    let src = shared.src.backend.open_source(&ctx)?;
    super::retry_counted(retries, &shared.progress, Blame::One(Side::Source, shared.src.remote_label()), || {
        src.check(false)
    })
    .await?;
    if !shared.opts.dry_run {
        let dst = shared.dst.backend.open_sink(&ctx)?;
        super::retry_counted(
            retries,
            &shared.progress,
            Blame::One(Side::Destination, shared.dst.remote_label()),
            || dst.check(true),
        )
        .await?;
    }
    Ok(())
}

/// Memory a listing in no particular order may take while it is sorted; the rest
/// spills to sorted runs in the data directory.
const SORT_BUDGET_BYTES: usize = 64 << 20;

/// How the two listings of a relay are ordered and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyOrder {
    /// By key bytes, matched exactly: the destination tells `a` from `A`.
    Bytes,
    /// By the keys folded to lower case (then by bytes), matched folded: the
    /// destination is case-insensitive (Dropbox), so `Photo.jpg` there is the same
    /// object as `photo.jpg` here, and two source keys that differ only in case would
    /// land on one object.
    Folded,
}

impl KeyOrder {
    /// The order a relay into `dst` needs.
    pub(super) fn for_destination(dst: &dyn Source) -> KeyOrder {
        if dst.capabilities().case_sensitive {
            KeyOrder::Bytes
        } else {
            KeyOrder::Folded
        }
    }

    /// Compares two keys (or relative keys) as this order matches them.
    pub(super) fn cmp(self, a: &str, b: &str) -> std::cmp::Ordering {
        match self {
            KeyOrder::Bytes => a.cmp(b),
            KeyOrder::Folded => fold(a).cmp(&fold(b)),
        }
    }

    /// Whether `a` and `b` name one object.
    pub(super) fn same(self, a: &str, b: &str) -> bool {
        self.cmp(a, b) == std::cmp::Ordering::Equal
    }
}

/// A key folded to lower case, as a case-insensitive store matches keys.
fn fold(key: &str) -> std::borrow::Cow<'_, str> {
    if key.chars().any(|c| c.is_uppercase()) {
        std::borrow::Cow::Owned(key.to_lowercase())
    } else {
        std::borrow::Cow::Borrowed(key)
    }
}

/// The key a sorter sorts an entry under in [`KeyOrder::Folded`]: the folded key,
/// with U+0000 and U+0001 escaped (as U+0001 U+0001 and U+0001 U+0002, which keeps
/// their order), then U+0000, then the key itself. Byte order of these is the order
/// of (folded key, key), and the key is what follows the first U+0000.
fn folded_sort_key(key: &str) -> String {
    let folded = fold(key);
    let mut out = String::with_capacity(folded.len() + key.len() + 1);
    for c in folded.chars() {
        match c {
            '\u{0}' => out.push_str("\u{1}\u{1}"),
            '\u{1}' => out.push_str("\u{1}\u{2}"),
            c => out.push(c),
        }
    }
    out.push('\u{0}');
    out.push_str(key);
    out
}

/// The key back from [`folded_sort_key`].
fn unfold_sort_key(sort_key: &str) -> Option<&str> {
    sort_key.split_once('\u{0}').map(|(_, key)| key)
}

/// A listing read page by page, in the order its [`KeyOrder`] needs: as the store
/// lists it when it lists in byte order and bytes are what count; otherwise sorted
/// within [`SORT_BUDGET_BYTES`] (spilling sorted runs to the data directory).
pub(super) struct Cursor {
    store: std::rc::Rc<dyn Source>,
    /// The order the entries come in.
    order: KeyOrder,
    /// The whole listing, sorted, for a store that lists in no order, or when keys
    /// are matched folded.
    sorted: Option<crate::listing::SortedEntries>,
    /// The remote's label, for latency metrics.
    label: String,
    retries: u32,
    prefix: String,
    page: std::vec::IntoIter<Entry>,
    token: Option<String>,
    started: bool,
    last: Option<String>,
    /// What the pages fetched so far left out, not yet taken by [`Cursor::take_left_out`].
    left_out: Vec<crate::backend::LeftOut>,
}

impl Cursor {
    pub(super) fn new(
        store: std::rc::Rc<dyn Source>,
        label: &str,
        prefix: String,
        retries: u32,
        order: KeyOrder,
    ) -> Cursor {
        Cursor {
            store,
            order,
            sorted: None,
            label: label.to_string(),
            retries,
            prefix,
            page: Vec::new().into_iter(),
            token: None,
            started: false,
            last: None,
            left_out: Vec::new(),
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<Entry>> {
        let unordered = self.store.capabilities().list_order == crate::backend::ListOrder::Unordered;
        if (unordered || self.order == KeyOrder::Folded) && !self.started {
            self.sorted = Some(self.sort().await?);
        }
        loop {
            let next = match &mut self.sorted {
                Some(sorted) => sorted.next().transpose()?,
                None => self.page.next(),
            };
            let next = match next {
                Some(mut entry) if self.order == KeyOrder::Folded => {
                    entry.key = unfold_sort_key(&entry.key).expect("sorted under folded_sort_key").to_string();
                    Some(entry)
                }
                other => other,
            };
            if let Some(entry) = next {
                if let Some(last) = &self.last {
                    if entry.key == *last {
                        return Err(Error::protocol(
                            "list",
                            self.store.describe(),
                            format!("two objects are named {last:?}; rename one of them so each key names one object"),
                        ));
                    }
                    let back = match self.order {
                        KeyOrder::Bytes => entry.key.as_str() < last.as_str(),
                        KeyOrder::Folded => folded_sort_key(&entry.key) < folded_sort_key(last),
                    };
                    if back {
                        return Err(Error::protocol(
                            "list",
                            self.store.describe(),
                            format!("listing is not in key order ({:?} after {last:?})", entry.key),
                        ));
                    }
                }
                self.last = Some(entry.key.clone());
                return Ok(Some(entry));
            }
            if self.sorted.is_some() {
                return Ok(None);
            }
            if self.started && self.token.is_none() {
                return Ok(None);
            }
            self.started = true;
            let page = self.fetch_page().await?;
            self.token = page.next;
            self.page = page.entries.into_iter();
        }
    }

    /// The next page of the listing, retried.
    async fn fetch_page(&mut self) -> Result<crate::backend::ListPage> {
        let token = self.token.take();
        let never = std::sync::atomic::AtomicBool::new(false);
        let mut page = super::retry(self.retries, &never, Blame::Remote(&self.label), || {
            crate::metrics::timed(&self.label, crate::metrics::Op::List, self.store.list(&self.prefix, token.clone()))
        })
        .await?;
        self.left_out.append(&mut page.left_out);
        Ok(page)
    }

    /// What the listing left out since the last call.
    pub(super) fn take_left_out(&mut self) -> Vec<crate::backend::LeftOut> {
        std::mem::take(&mut self.left_out)
    }

    /// Reads the whole listing of a store that lists in no order into a sorter.
    async fn sort(&mut self) -> Result<crate::listing::SortedEntries> {
        let dir = laminar_tuning::plan::default_data_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("sort", dir.display().to_string(), e))?;
        let mut sorter = crate::listing::ExternalSorter::new(&dir, SORT_BUDGET_BYTES)?;
        self.started = true;
        loop {
            let page = self.fetch_page().await?;
            for mut entry in page.entries {
                if self.order == KeyOrder::Folded {
                    entry.key = folded_sort_key(&entry.key);
                }
                sorter.push(entry)?;
            }
            self.token = page.next;
            if self.token.is_none() {
                return sorter.finish();
            }
        }
    }
}

pub(super) fn record(report: &mut Report, result: ObjectResult) {
    match result.outcome {
        Outcome::Copied { bytes } => {
            report.objects_copied += 1;
            report.bytes_copied += bytes;
        }
        Outcome::Skipped { bytes } => {
            report.objects_skipped += 1;
            report.bytes_skipped += bytes;
        }
        Outcome::Deferred { bytes } => {
            report.objects_deferred += 1;
            report.bytes_deferred += bytes;
        }
        Outcome::NotAttempted { reason } => {
            report.objects_not_attempted += 1;
            report.not_attempted_because.get_or_insert(reason);
        }
        Outcome::Failed { reason, .. } => {
            report.objects_failed += 1;
            if report.failures.len() < FAILURES_KEPT_MAX {
                report.failures.push(super::Failure { key: result.key, reason });
            }
        }
        // Steps on the way: the report counts objects; a journal persists these.
        Outcome::SessionBegun(state) => {
            tracing::trace!("{}: session begun for {} ({} bytes)", result.key, state.key, state.plan.size);
        }
        Outcome::PartCommitted(part) => {
            tracing::trace!("{}: part {} committed ({} bytes at {})", result.key, part.number, part.len, part.offset);
        }
    }
}

pub(super) async fn plan(
    shared: &Arc<Shared>,
    results: &crossbeam_channel::Receiver<ObjectResult>,
    report: &mut Report,
    on_plan: &mut dyn FnMut(&Planned),
) -> Result<()> {
    // Listings count against the relay's --tpslimit too.
    let ctx = WorkerCtx::new(HttpClient::default().with_rates(shared.progress.rates.clone()));
    let retries = shared.opts.retries;
    let src_store = shared.src.backend.open_source(&ctx)?;
    let scope = scope(&shared.src, &shared.dst, &src_store, retries).await?;
    let dst_prefix = shared.dst.prefix.clone();
    // An object that doesn't fit a worker's share of the RAM tier goes in parts, whatever
    // the cutoff: a single transfer holds all its bytes at once. So does one larger
    // than the destination takes in one request.
    let dst_store = shared.dst.backend.open_source(&ctx)?;
    let pool_bytes_per_worker = (shared.policy.pool_chunks_per_worker * shared.opts.chunk_bytes) as u64;
    let single_put_max = dst_store.capabilities().parts.max_single_put_bytes;
    // A source that vouches for its objects only with hashes that do not combine
    // across ranges read apart (Drive's MD5 and SHA-256) has them read whole, up to
    // what one upload and a worker's share of the RAM tier hold, whatever the cutoff
    // says: then its own hash checks every byte read.
    let preferred_cutoff_bytes = if reports_only_uncombinable(src_store.capabilities().reports) {
        u64::MAX
    } else {
        shared.opts.multipart_cutoff_bytes
    };
    let multipart_cutoff_bytes =
        preferred_cutoff_bytes.min(pool_bytes_per_worker).min(single_put_max.saturating_add(1));
    shared.stats.multipart_cutoff_bytes.store(multipart_cutoff_bytes, Ordering::Relaxed);
    let order = KeyOrder::for_destination(&*dst_store);
    let mut src = Cursor::new(src_store.clone(), shared.src.remote_label(), scope.src_list.clone(), retries, order);
    let mut dst = Cursor::new(dst_store, shared.dst.remote_label(), scope.dst_list.clone(), retries, order);
    let mut dst_head: Option<Entry> = dst.next().await?;
    // The last source key planned, to catch two that one case-insensitive destination
    // would hold as one object.
    let mut last_rel: Option<String> = None;
    while let Some(entry) = src.next().await? {
        note_left_out(report, &scope, &shared.opts.filter, &mut src);
        // Once the destination's allowance is spent, the rest waits for a later run.
        if shared.stopped() || shared.quota_spent() {
            break;
        }
        let Some(rel) = scope.relative(&entry, &shared.opts.filter) else { continue };
        let dst_key = format!("{dst_prefix}{rel}");
        if let Some(last) = last_rel.as_deref().filter(|last| order.same(last, &rel)) {
            report.objects_total += 1;
            shared.progress.objects_total.fetch_add(1, Ordering::Relaxed);
            shared.progress.objects_failed.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "differs only in case from {last:?}, and the destination does not tell them apart: rename one at the source"
            );
            record(report, ObjectResult { key: entry.key.clone(), outcome: Outcome::Failed { reason, fatal: false } });
            continue;
        }
        last_rel = Some(rel.clone());
        // Advance the destination listing to this key.
        while let Some(d) = &dst_head {
            if order.cmp(&d.key[dst_prefix.len()..], &rel) == std::cmp::Ordering::Less {
                dst_head = dst.next().await?;
            } else {
                break;
            }
        }
        let existing = dst_head.as_ref().filter(|d| order.same(&d.key[dst_prefix.len()..], &rel));
        let verdict = match (existing, shared.opts.compare) {
            (None, _) => Verdict::Copy,
            (Some(d), _) if rel.ends_with('/') && entry.size == 0 && d.size == 0 => Verdict::Skip,
            (Some(_), Compare::IgnoreExisting) => Verdict::Skip,
            (Some(d), Compare::SizeOnly) if d.size == entry.size => Verdict::Skip,
            (Some(_), Compare::SizeOnly) => Verdict::Copy,
            (Some(d), Compare::Checksum) => by_listed_hash(&entry, d),
            (Some(d), _) => judge(&entry, d),
        };
        report.objects_total += 1;
        shared.progress.objects_total.fetch_add(1, Ordering::Relaxed);
        // An immutable destination is never overwritten: a copy there that the
        // listings show differs fails instead (one they cannot settle is checked by
        // the worker, which fails it the same way).
        if shared.opts.compare == Compare::Immutable && matches!(verdict, Verdict::Copy) && existing.is_some() {
            let reason = format!(
                "{dst_key} is at the destination and differs from the source, and --immutable never overwrites: \
                 delete or rename it there, or drop --immutable"
            );
            shared.progress.objects_failed.fetch_add(1, Ordering::Relaxed);
            record(report, ObjectResult { key: entry.key.clone(), outcome: Outcome::Failed { reason, fatal: false } });
            continue;
        }
        if let Verdict::Skip = verdict {
            record(report, ObjectResult { key: entry.key.clone(), outcome: Outcome::Skipped { bytes: entry.size } });
            shared.progress.objects_done.fetch_add(1, Ordering::Relaxed);
            shared.progress.objects_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if shared.opts.dry_run {
            if let Verdict::CheckDest = verdict {
                let stop = &shared.progress.stop;
                let info =
                    super::retry(retries, stop, Blame::Remote(shared.dst.remote_label()), || dst.store.stat(&dst_key))
                        .await?;
                let same = match (info, shared.opts.compare) {
                    (Some(info), Compare::Checksum) => {
                        let theirs = super::retry(retries, stop, Blame::Remote(shared.src.remote_label()), || {
                            src_store.stat(&entry.key)
                        })
                        .await?;
                        super::verify::same_by_hash(theirs.as_ref(), &info, entry.size)
                    }
                    (info, _) => info.is_some_and(|info| holds_version(&info, entry.size, &version_of(&entry))),
                };
                if same {
                    record(
                        report,
                        ObjectResult { key: entry.key.clone(), outcome: Outcome::Skipped { bytes: entry.size } },
                    );
                    continue;
                }
            }
            report.objects_planned += 1;
            on_plan(&Planned { src_key: entry.key.clone(), dst_key, size: entry.size });
            continue;
        }
        shared.progress.bytes_total.fetch_add(entry.size, Ordering::Relaxed);
        let kind = if rel.ends_with('/') && entry.size == 0 {
            Kind::DirMarker
        } else if entry.size >= multipart_cutoff_bytes {
            Kind::Large
        } else {
            Kind::Small
        };
        let job = Arc::new(ObjectJob::new(
            entry.key.clone(),
            dst_key,
            entry.size,
            version_of(&entry),
            matches!(verdict, Verdict::CheckDest),
            kind,
        ));
        // Pairs with the AcqRel decrement in `Shared::finish`.
        shared.queues.outstanding.fetch_add(1, Ordering::AcqRel);
        let mut job = job;
        let mut queued = true;
        loop {
            match shared.queues.objects.push(job) {
                Ok(()) => break,
                Err(back) => {
                    job = back;
                    if shared.stopped() || !shared.workers_alive() {
                        // Nobody will take it: account for it here and stop listing.
                        let reason = "the relay was stopped".into();
                        shared.finish(job.src_key().to_string(), Outcome::NotAttempted { reason });
                        queued = false;
                        break;
                    }
                    // The queue is full: drain results while the workers catch up.
                    if let Ok(r) = results.recv_timeout(std::time::Duration::from_millis(20)) {
                        record(report, r);
                    }
                }
            }
        }
        if !queued {
            break;
        }
        shared.queues.event.notify(usize::MAX);
        while let Ok(r) = results.try_recv() {
            record(report, r);
        }
    }
    note_left_out(report, &scope, &shared.opts.filter, &mut src);
    Ok(())
}

/// Counts what the source's listing left out within the relay's scope, and keeps the
/// first [`FAILURES_KEPT_MAX`] with their reasons.
fn note_left_out(report: &mut Report, scope: &Scope, filter: &Filter, src: &mut Cursor) {
    for left in src.take_left_out() {
        if scope.relative_path(&left.key, filter).is_none() {
            continue;
        }
        report.objects_left_out += 1;
        if report.left_out.len() < FAILURES_KEPT_MAX {
            report.left_out.push(left);
        }
    }
}
