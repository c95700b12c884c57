//! Listings in byte order of keys, from stores that cannot list that way.
//!
//! The planner merge-joins the source's and the destination's listings page by page,
//! so it needs each in byte order of keys while holding only a page per side. S3 lists
//! that way; a Dropbox recursive listing or a Google Drive folder walk does not. For
//! those, [`ExternalSorter`] takes the listing in any order, in memory bounded by a
//! budget, and gives it back sorted:
//!
//! - Entries are held until their real heap size (the structs, the vector holding them
//!   and every string's capacity) would pass the budget; then they are sorted and
//!   spilled as a *run* to a file in a scratch directory (format in `run`).
//! - [`ExternalSorter::finish`] merges the runs and what is still held with a k-way
//!   merge over a binary heap. Each run is read a block at a time (4–64 KiB, sized from
//!   the budget), and at most `FAN_IN_MAX` runs (fewer for small budgets, so that
//!   their buffers stay within a quarter of the budget) are open at once: where there
//!   are more, consecutive runs are first merged into longer runs, pass by pass.
//! - Held entries are sorted through 24-byte sort keys (a 16-byte key prefix and the
//!   entry's index), not moved themselves: most comparisons end at the prefix, without
//!   touching the keys' heap memory, and the sort stays in cache. The merge heap
//!   compares prefixes first too.
//! - Order is stable: entries with equal keys (Drive allows duplicate names) come out
//!   in the order they were pushed. The index is the tie-break among held entries, so
//!   the in-place unstable sort (no scratch half the size of the input, as a stable
//!   sort takes) can be used; merges break ties by the run's age, and merge only
//!   neighbouring runs, so that age order holds at every pass.
//! - When everything fits, nothing touches the disk: `finish` sorts in memory.
//! - The scratch directory, `laminar-sort-PID-N` in the given directory, goes when the
//!   sorter or its output is dropped (half-way or after an error too) or the output is
//!   exhausted. Its lock (`flock` on the sibling `.lock` file) is held meanwhile, so a
//!   sorter starting later removes what a crashed process left, as the stage does.
//!
//! Synchronous, because the planner runs on a plain thread: a sort is disk and CPU
//! work, with nothing to wait for on the network.

mod run;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use crate::backend::Entry;
use crate::error::{Error, Result};
use run::{disk_error, Run, RunReader, RunWriter};

/// The most runs merged at once: bounds open files and read buffers.
pub const FAN_IN_MAX: usize = 64;
/// The smallest memory budget a sorter takes.
pub const MEMORY_BUDGET_BYTES_MIN: usize = 1 << 10;
const BLOCK_BYTES_MIN: usize = 4 << 10;
/// Block size as a fraction of the budget (before clamping).
const BLOCK_BUDGET_DIVISOR: usize = 512;

const _: () = assert!(FAN_IN_MAX >= 2);
const _: () = assert!(BLOCK_BYTES_MIN.is_power_of_two() && BLOCK_BYTES_MIN <= run::BLOCK_BYTES_MAX);

/// What a sort did, for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SortStats {
    /// Entries pushed.
    pub entries: u64,
    /// Runs spilled from memory.
    pub runs_spilled: u64,
    /// Bytes of those runs.
    pub bytes_spilled: u64,
    /// Longer runs written by merging runs, where there were more than the fan-in.
    pub runs_merged: u64,
    /// Bytes of those.
    pub bytes_merged: u64,
    /// The fan-in: the most runs merged at once (from the budget, at most `FAN_IN_MAX`).
    pub fan_in: u64,
}

/// The first 16 bytes of a key, zero-padded, as two big-endian integers: comparing
/// these orders keys as their bytes do, except that a tie (equal prefixes) needs the
/// whole keys. It settles most comparisons without touching the keys' heap memory.
fn key_prefix(key: &str) -> (u64, u64) {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key.as_bytes()[..n]);
    let (hi, lo) = bytes.split_at(8);
    (u64::from_be_bytes(hi.try_into().unwrap()), u64::from_be_bytes(lo.try_into().unwrap()))
}

/// Where a held entry goes in sorted order: its key's prefix and its index among the
/// held entries, which is also its push order, the tie-break for equal keys. Sorting
/// these small values (not the entries, 104 bytes each) keeps the sort in cache.
#[derive(Clone, Copy)]
struct SortKey {
    prefix: (u64, u64),
    index: u32,
}

/// Memory that one held entry takes beyond its strings: the entry and its sort key.
const HELD_BYTES: usize = std::mem::size_of::<Entry>() + std::mem::size_of::<SortKey>();

/// The held entries in sorted order, taken out one by one.
struct SortedHeld {
    entries: Vec<Entry>,
    order: std::vec::IntoIter<SortKey>,
}

/// Fills `order` with the sorted order of `entries` (stable: equal keys by index).
fn sort_order(entries: &[Entry], order: &mut Vec<SortKey>) {
    assert!(entries.len() <= u32::MAX as usize);
    order.clear();
    order.reserve_exact(entries.len());
    order.extend(entries.iter().enumerate().map(|(i, e)| SortKey { prefix: key_prefix(&e.key), index: i as u32 }));
    // Unstable, in place (a stable sort takes scratch of half the input); the index
    // tie-break makes the order stable all the same.
    order.sort_unstable_by(|a, b| {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| entries[a.index as usize].key.as_bytes().cmp(entries[b.index as usize].key.as_bytes()))
            .then(a.index.cmp(&b.index))
    });
}

impl Iterator for SortedHeld {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        let at = self.order.next()?.index as usize;
        // An empty entry in its place: no allocation, and the slot is never read again.
        Some(std::mem::take(&mut self.entries[at]))
    }
}

fn string_bytes(entry: &Entry) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
    entry.key.capacity() + opt(&entry.etag) + opt(&entry.provenance) + opt(&entry.version)
}

/// The scratch directory of one sort and the lock that marks it alive.
struct ScratchDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

const SCRATCH_PREFIX: &str = "laminar-sort-";

impl ScratchDir {
    fn create(parent: &Path) -> Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let removed = ScratchDir::clean_leftovers(parent);
        if removed > 0 {
            tracing::info!(
                "removed {removed} sort scratch director{} left in {} by a run that ended uncleanly",
                if removed == 1 { "y" } else { "ies" },
                parent.display()
            );
        }
        let name = format!("{SCRATCH_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, AtomicOrdering::Relaxed));
        let path = parent.join(&name);
        let lock_path = parent.join(format!("{name}.lock"));
        let lock = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| disk_error(&lock_path, e))?;
        // Only this process makes names with its pid, so the lock is free unless a
        // process with the same pid (another pid namespace) sorts here too.
        if lock.try_lock().is_err() {
            return Err(Error::Usage(format!(
                "sort scratch {}: its lock is held by another process; give each relay its own LAMINAR_DATA_DIR",
                lock_path.display()
            )));
        }
        // A crash's leftover under this very name (a reused pid) goes first.
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir(&path) {
            let _ = std::fs::remove_file(&lock_path);
            return Err(disk_error(&path, e));
        }
        Ok(ScratchDir { path, lock_path, _lock: lock })
    }

    /// Removes scratch directories (and their locks) that no live process holds;
    /// returns how many.
    fn clean_leftovers(parent: &Path) -> usize {
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_prefix(SCRATCH_PREFIX).and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            let Ok(lock) = File::options().write(true).open(e.path()) else { continue };
            if lock.try_lock().is_err() {
                continue; // A live sort holds it.
            }
            let dir = parent.join(format!("{SCRATCH_PREFIX}{stem}"));
            if std::fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
            let _ = std::fs::remove_file(e.path());
        }
        removed
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a directory that cannot be removed is removed by the next sort.
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Sorts a listing of any size in byte order of keys, within a memory budget, spilling
/// sorted runs to disk. See the [module docs](self).
pub struct ExternalSorter {
    scratch: ScratchDir,
    memory_budget_bytes: usize,
    block_bytes: usize,
    fan_in: usize,
    held: Vec<Entry>,
    /// The sorted order of `held`, when spilling; kept for its capacity.
    order: Vec<SortKey>,
    /// Heap bytes of the held entries' strings.
    held_string_bytes: usize,
    runs: Vec<Run>,
    next_run: u64,
    stats: SortStats,
}

impl ExternalSorter {
    /// A sorter that holds at most `memory_budget_bytes` of entries in memory and spills
    /// the rest to a scratch directory it creates in `dir` (which must exist). Run
    /// buffers come on top: a block being written, and at merge time one block per
    /// run merged, sized to stay within a quarter of the budget where the smallest
    /// blocks (4 KiB) and fan-in (2) allow.
    pub fn new(dir: &Path, memory_budget_bytes: usize) -> Result<Self> {
        if memory_budget_bytes < MEMORY_BUDGET_BYTES_MIN {
            return Err(Error::Usage(format!(
                "sort memory budget of {memory_budget_bytes} bytes: give at least {MEMORY_BUDGET_BYTES_MIN}"
            )));
        }
        let block_bytes = (memory_budget_bytes / BLOCK_BUDGET_DIVISOR).clamp(BLOCK_BYTES_MIN, run::BLOCK_BYTES_MAX);
        let fan_in = (memory_budget_bytes / 4 / block_bytes).clamp(2, FAN_IN_MAX);
        let scratch = ScratchDir::create(dir)?;
        Ok(ExternalSorter {
            scratch,
            memory_budget_bytes,
            block_bytes,
            fan_in,
            held: Vec::new(),
            order: Vec::new(),
            held_string_bytes: 0,
            runs: Vec::new(),
            next_run: 0,
            stats: SortStats { fan_in: fan_in as u64, ..SortStats::default() },
        })
    }

    /// The scratch directory (removed with the sorter).
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch.path
    }

    /// What the sort has done so far.
    pub fn stats(&self) -> SortStats {
        self.stats
    }

    fn held_bytes(&self) -> usize {
        self.held.capacity() * HELD_BYTES + self.held_string_bytes
    }

    /// Adds an entry, spilling what is held first if it would pass the budget.
    pub fn push(&mut self, entry: Entry) -> Result<()> {
        if run::encoded_bytes_max(&entry) > run::ENTRY_BYTES_MAX {
            return Err(Error::InvalidKey {
                op: "sort",
                key: entry.key.chars().take(200).collect(),
                reason: format!(
                    "its listing entry takes {} bytes, more than the {} a sort takes",
                    run::encoded_bytes_max(&entry),
                    run::ENTRY_BYTES_MAX
                ),
            });
        }
        let strings = string_bytes(&entry);
        let budget = self.memory_budget_bytes;
        if self.held.len() == self.held.capacity() || self.held.len() == u32::MAX as usize {
            // Grow toward the budget, never past it: doubling, but at most to as many
            // entries as the budget holds at the strings' average size so far (so
            // that the strings still to come have room), and at most to what it has
            // room for now.
            let len = self.held.len();
            let strings_after = self.held_string_bytes + strings;
            let room = (budget / (HELD_BYTES + strings_after / (len + 1)))
                .min(budget.saturating_sub(strings_after) / HELD_BYTES);
            let want = (self.held.capacity() * 2).max(64).min(room);
            if want > self.held.capacity() && self.held.len() < u32::MAX as usize {
                self.held.reserve_exact(want - self.held.len());
            } else if !self.held.is_empty() {
                self.spill()?;
            }
            // One entry larger than the whole budget still sorts, as a run of its own.
            self.held.reserve_exact(1);
        } else if !self.held.is_empty() && self.held_bytes() + strings > budget {
            self.spill()?;
        }
        self.held.push(entry);
        self.held_string_bytes += strings;
        self.stats.entries += 1;
        assert!(self.held.len() <= 1 || self.held_bytes() <= budget, "held entries stay within the budget");
        Ok(())
    }

    fn new_run_path(&mut self) -> PathBuf {
        self.next_run += 1;
        self.scratch.path.join(format!("run-{:06}", self.next_run))
    }

    /// Sorts what is held and writes it as a run; keeps the vector's capacity.
    fn spill(&mut self) -> Result<()> {
        assert!(!self.held.is_empty());
        sort_order(&self.held, &mut self.order);
        let path = self.new_run_path();
        let mut writer = RunWriter::create(path, self.block_bytes)?;
        for k in &self.order {
            writer.push(&self.held[k.index as usize])?;
        }
        self.held.clear();
        self.order.clear();
        self.held_string_bytes = 0;
        let run = writer.finish()?;
        assert_eq!(run.entries, self.stats.entries - self.runs.iter().map(|r| r.entries).sum::<u64>());
        self.stats.runs_spilled += 1;
        self.stats.bytes_spilled += run.bytes;
        self.runs.push(run);
        Ok(())
    }

    /// Merges the runs `runs[at..at + count]` into one run in their place.
    fn merge_runs(&mut self, at: usize, count: usize) -> Result<()> {
        assert!(count >= 2 && count <= self.fan_in);
        let group: Vec<Run> = self.runs.drain(at..at + count).collect();
        let entries: u64 = group.iter().map(|r| r.entries).sum();
        let paths: Vec<PathBuf> = group.iter().map(|r| r.path.clone()).collect();
        let sources = group.into_iter().map(|r| RunReader::open(r.path).map(Source::Run)).collect::<Result<_>>()?;
        let mut merger = Merger::new(sources)?;
        let mut writer = RunWriter::create(self.new_run_path(), self.block_bytes)?;
        while let Some(entry) = merger.next()? {
            writer.push(&entry)?;
        }
        let run = writer.finish()?;
        assert_eq!(run.entries, entries, "a merge writes every entry of its runs");
        drop(merger);
        for path in paths {
            std::fs::remove_file(&path).map_err(|e| disk_error(&path, e))?;
        }
        self.stats.runs_merged += 1;
        self.stats.bytes_merged += run.bytes;
        self.runs.insert(at, run);
        Ok(())
    }

    /// Merges neighbouring runs until at most the fan-in remain beside `others` sources.
    fn reduce_runs(&mut self, others: usize) -> Result<()> {
        let mut at = 0;
        while self.runs.len() + others > self.fan_in {
            let excess = self.runs.len() + others - self.fan_in;
            if at + 2 > self.runs.len() {
                at = 0; // The next pass, over the runs this one wrote.
            }
            let count = (excess + 1).min(self.fan_in).min(self.runs.len() - at);
            self.merge_runs(at, count)?;
            at += 1;
        }
        Ok(())
    }

    /// Every entry pushed, in byte order of keys (equal keys in push order).
    pub fn finish(mut self) -> Result<SortedEntries> {
        sort_order(&self.held, &mut self.order);
        let held =
            SortedHeld { entries: std::mem::take(&mut self.held), order: std::mem::take(&mut self.order).into_iter() };
        self.held_string_bytes = 0;
        if self.runs.is_empty() {
            // Everything fitted: nothing touched the disk, and the scratch goes now.
            let ExternalSorter { stats, .. } = self;
            return Ok(SortedEntries {
                output: Output::Memory(held),
                stats,
                scratch: None,
                left: stats.entries,
                done: false,
            });
        }
        let others = usize::from(held.order.len() > 0);
        self.reduce_runs(others)?;
        let mut sources: Vec<Source> = Vec::with_capacity(self.runs.len() + others);
        for run in std::mem::take(&mut self.runs) {
            sources.push(Source::Run(RunReader::open(run.path)?));
        }
        if others > 0 {
            sources.push(Source::Memory(held));
        }
        assert!(sources.len() <= self.fan_in);
        let merger = Merger::new(sources)?;
        let ExternalSorter { scratch, stats, .. } = self;
        Ok(SortedEntries {
            output: Output::Merge(merger),
            stats,
            scratch: Some(scratch),
            left: stats.entries,
            done: false,
        })
    }
}

/// One input of a merge.
enum Source {
    Run(RunReader),
    Memory(SortedHeld),
}

/// The smallest entry of one source, ordered so that `BinaryHeap` (a max-heap) pops
/// the smallest key first and, among equal keys, the oldest source.
struct Head {
    prefix: (u64, u64),
    entry: Entry,
    source: usize,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .prefix
            .cmp(&self.prefix)
            .then_with(|| other.entry.key.as_bytes().cmp(self.entry.key.as_bytes()))
            .then(other.source.cmp(&self.source))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

/// A k-way merge of sorted sources, oldest first.
struct Merger {
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
}

impl Merger {
    fn new(sources: Vec<Source>) -> Result<Merger> {
        let mut merger = Merger { heap: BinaryHeap::with_capacity(sources.len()), sources };
        for source in 0..merger.sources.len() {
            merger.refill(source)?;
        }
        Ok(merger)
    }

    fn refill(&mut self, source: usize) -> Result<()> {
        let next = match &mut self.sources[source] {
            Source::Run(reader) => reader.next()?,
            Source::Memory(held) => held.next(),
        };
        if let Some(entry) = next {
            self.heap.push(Head { prefix: key_prefix(&entry.key), entry, source });
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Entry>> {
        let Some(Head { entry, source, .. }) = self.heap.pop() else { return Ok(None) };
        self.refill(source)?;
        Ok(Some(entry))
    }
}

enum Output {
    Memory(SortedHeld),
    Merge(Merger),
}

/// A sorted listing: every entry pushed, in byte order of keys, equal keys in push
/// order. After an error it yields nothing more. The scratch directory is removed
/// when this is exhausted or dropped.
pub struct SortedEntries {
    // Declared before `scratch`, so that files close before their directory goes.
    output: Output,
    stats: SortStats,
    scratch: Option<ScratchDir>,
    left: u64,
    done: bool,
}

impl SortedEntries {
    /// What the sort did.
    pub fn stats(&self) -> SortStats {
        self.stats
    }

    /// The scratch directory, while the output still needs it (None when nothing was
    /// spilled, or once exhausted).
    pub fn scratch_dir(&self) -> Option<&Path> {
        self.scratch.as_ref().map(|s| s.path.as_path())
    }

    fn end(&mut self) {
        self.done = true;
        self.output = Output::Memory(SortedHeld { entries: Vec::new(), order: Vec::new().into_iter() });
        self.scratch = None;
    }
}

impl Iterator for SortedEntries {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.done {
            return None;
        }
        let next = match &mut self.output {
            Output::Memory(held) => Ok(held.next()),
            Output::Merge(merger) => merger.next(),
        };
        match next {
            Ok(Some(entry)) => {
                self.left -= 1;
                Some(Ok(entry))
            }
            Ok(None) => {
                assert_eq!(self.left, 0, "a sort yields every entry pushed");
                self.end();
                None
            }
            Err(e) => {
                self.end();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        // An error can end it early.
        (0, usize::try_from(self.left).ok())
    }
}

/// Sorts a listing that arrives in pages in any order: a convenience over
/// [`ExternalSorter`]. The first page error ends the sort with that error.
pub fn sort_listing(
    pages: impl Iterator<Item = Result<Vec<Entry>>>,
    dir: &Path,
    memory_budget_bytes: usize,
) -> Result<SortedEntries> {
    let mut sorter = ExternalSorter::new(dir, memory_budget_bytes)?;
    for page in pages {
        for entry in page? {
            sorter.push(entry)?;
        }
    }
    sorter.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(key: &str, size: u64) -> Entry {
        Entry { key: key.to_string(), size, ..Entry::default() }
    }

    fn collect(sorted: SortedEntries) -> Vec<Entry> {
        sorted.collect::<Result<Vec<_>>>().unwrap()
    }

    fn stable_sorted(mut v: Vec<Entry>) -> Vec<Entry> {
        v.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        v
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            // A few directories and names, so keys repeat and share prefixes; é and 水
            // so prefixes can end inside a character.
            "(a|b|é|水)?/?(x|xy|é|éa|z){0,3}",
            any::<u64>(),
            proptest::option::of("[0-9a-f]{0,32}"),
            proptest::option::of("[a-z]{0,5}"),
            proptest::option::of(".{0,4}"),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(key, size, etag, provenance, version, modified_unix_ms)| Entry {
                key,
                size,
                etag,
                provenance,
                version,
                modified_unix_ms,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn equals_a_stable_sort(entries in proptest::collection::vec(arb_entry(), 0..1200), budget in 1usize..16) {
            let dir = tempfile::tempdir().unwrap();
            let mut sorter = ExternalSorter::new(dir.path(), budget << 10).unwrap();
            for e in entries.clone() {
                sorter.push(e).unwrap();
            }
            let sorted = sorter.finish().unwrap();
            let stats = sorted.stats();
            prop_assert_eq!(stats.entries, entries.len() as u64);
            prop_assert_eq!(collect(sorted), stable_sorted(entries));
            prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    proptest! {
        #[test]
        fn prefixes_order_as_keys_do(a in "[a\\x00é]{0,20}", b in "[a\\x00é]{0,20}") {
            let (pa, pb) = (key_prefix(&a), key_prefix(&b));
            if pa != pb {
                prop_assert_eq!(pa.cmp(&pb), a.as_bytes().cmp(b.as_bytes()));
            }
        }
    }

    #[test]
    fn a_tiny_budget_spills_many_runs_and_merges_them_in_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let entries: Vec<Entry> =
            (0..6_000).map(|i| entry(&format!("d{}/f{}", rng.u32(0..50), rng.u32(0..2000)), i)).collect();
        let mut sorter = ExternalSorter::new(dir.path(), 1 << 10).unwrap();
        for e in entries.clone() {
            sorter.push(e).unwrap();
        }
        let sorted = sorter.finish().unwrap();
        let stats = sorted.stats();
        assert_eq!(stats.fan_in, 2);
        assert!(stats.runs_spilled > 500, "{stats:?}");
        assert!(stats.runs_merged >= stats.runs_spilled - 2, "several passes of two-way merges: {stats:?}");
        let out = collect(sorted);
        assert_eq!(out, stable_sorted(entries));
        assert!(out.windows(2).any(|w| w[0].key == w[1].key), "duplicates are kept");
    }

    #[test]
    fn everything_in_memory_spills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = ExternalSorter::new(dir.path(), 1 << 20).unwrap();
        for (i, key) in ["b", "a", "c", "a"].into_iter().enumerate() {
            sorter.push(entry(key, i as u64)).unwrap();
        }
        let sorted = sorter.finish().unwrap();
        assert_eq!(sorted.stats().runs_spilled, 0);
        assert!(sorted.scratch_dir().is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch goes at finish");
        let out: Vec<(String, u64)> = collect(sorted).into_iter().map(|e| (e.key, e.size)).collect();
        assert_eq!(out, [("a".into(), 1), ("a".into(), 3), ("b".into(), 0), ("c".into(), 2)]);
    }

    #[test]
    fn empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let sorted = ExternalSorter::new(dir.path(), 1 << 20).unwrap().finish().unwrap();
        assert_eq!(collect(sorted), []);
        let sorted = sort_listing(std::iter::empty(), dir.path(), 1 << 20).unwrap();
        assert_eq!(sorted.count(), 0);
        let sorted = sort_listing([Ok(vec![]), Ok(vec![])].into_iter(), dir.path(), 1 << 10).unwrap();
        assert_eq!(sorted.count(), 0);
    }

    fn spilled(dir: &Path) -> ExternalSorter {
        let mut sorter = ExternalSorter::new(dir, 1 << 10).unwrap();
        for i in 0..500 {
            sorter.push(entry(&format!("key{}", (i * 7919) % 500), i)).unwrap();
        }
        assert!(sorter.stats().runs_spilled > 2);
        sorter
    }

    #[test]
    fn the_scratch_dir_goes_on_drop_at_any_point() {
        let dir = tempfile::tempdir().unwrap();
        let empty = || std::fs::read_dir(dir.path()).unwrap().count() == 0;

        let sorter = spilled(dir.path());
        let scratch = sorter.scratch_dir().to_path_buf();
        assert!(std::fs::read_dir(&scratch).unwrap().count() > 2, "runs are files in the scratch dir");
        drop(sorter);
        assert!(empty(), "dropped before finish");

        let mut sorted = spilled(dir.path()).finish().unwrap();
        assert!(sorted.scratch_dir().is_some_and(Path::is_dir));
        sorted.next().unwrap().unwrap();
        drop(sorted);
        assert!(empty(), "dropped half-way");

        let mut sorted = spilled(dir.path()).finish().unwrap();
        assert_eq!(sorted.by_ref().count(), 500);
        assert!(sorted.scratch_dir().is_none() && empty(), "exhausted, before the drop");
        assert!(sorted.next().is_none());
    }

    #[test]
    fn a_truncated_run_is_an_error_and_the_scratch_still_goes() {
        let dir = tempfile::tempdir().unwrap();
        let sorter = spilled(dir.path());
        let run = sorter.scratch_dir().join("run-000002");
        let len = std::fs::metadata(&run).unwrap().len();
        File::options().write(true).open(&run).unwrap().set_len(len / 2).unwrap();
        let err = match sorter.finish() {
            Err(e) => e,
            Ok(sorted) => {
                let mut results: Vec<Result<Entry>> = Vec::new();
                let mut sorted = sorted;
                for r in sorted.by_ref() {
                    results.push(r);
                }
                assert!(sorted.next().is_none(), "nothing after the error");
                results.into_iter().find_map(|r| r.err()).expect("the truncation is found")
            }
        };
        let msg = err.to_string();
        assert!(msg.contains("run-000002") && msg.contains("truncated"), "{msg}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn pages_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pages = vec![Ok(vec![entry("b", 0), entry("a", 1)]), Ok(vec![entry("a", 2)])];
        let keys: Vec<u64> = collect(sort_listing(pages.into_iter(), dir.path(), 1 << 10).unwrap())
            .into_iter()
            .map(|e| e.size)
            .collect();
        assert_eq!(keys, [1, 2, 0]);
        let pages = vec![Ok(vec![entry("a", 0)]), Err(Error::Usage("listing failed".into()))];
        let Err(err) = sort_listing(pages.into_iter(), dir.path(), 1 << 10) else { panic!("the page error ends it") };
        assert_eq!(err.to_string(), "listing failed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_dir_and_a_too_small_budget_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let Err(err) = ExternalSorter::new(&missing, 1 << 20) else { panic!("no such dir") };
        let msg = err.to_string();
        assert!(msg.contains(&missing.display().to_string()) && msg.contains("LAMINAR_DATA_DIR"), "{msg}");
        let Err(err) = ExternalSorter::new(dir.path(), 10) else { panic!("budget too small") };
        assert!(err.to_string().contains("at least 1024"), "{err}");
    }

    #[test]
    fn leftovers_of_a_crashed_sort_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = spilled(dir.path());
        // A crash: the directory and its lock file stay, and no process holds the lock.
        let dead = dir.path().join(format!("{SCRATCH_PREFIX}999999999-0"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("run-000001"), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{SCRATCH_PREFIX}999999999-0.lock")), b"").unwrap();
        let other = ExternalSorter::new(dir.path(), 1 << 20).unwrap();
        assert!(!dead.exists());
        assert!(live.scratch_dir().is_dir(), "a live sort's scratch stays");
        drop((live, other));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn memory_held_stays_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 64 << 10;
        let mut sorter = ExternalSorter::new(dir.path(), budget).unwrap();
        for i in 0..10_000u64 {
            sorter.push(entry(&format!("dir/{:x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i)).unwrap();
            assert!(sorter.held_bytes() <= budget, "{} held", sorter.held_bytes());
        }
        let stats = sorter.stats();
        // Runs fill most of the budget rather than spilling early.
        let per_run = (stats.entries as usize * (HELD_BYTES + 20)) / stats.runs_spilled as usize;
        assert!(per_run > budget * 3 / 4, "{stats:?}");
    }
}
