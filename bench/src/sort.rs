//! `laminar-bench sort`: the engine's external sorter (`laminar_engine::listing`) on a
//! listing too large to hold, beside a plain in-memory sort of the same listing.
//!
//! Keys are shaped like a real tree (`dir%03d/sub%04d/file-<random>.jpg`, with sizes
//! and ETags) and come from a fixed seed in no order, as a Dropbox or Drive walk gives
//! them. The listing is generated twice: once alone, to time generation and to take an
//! order-free checksum of what goes in, and once into the sorter, so that it is never
//! held whole. The output must be in byte order of keys, have every key, and match the
//! input's checksum; the benchmark prints a CRC32C of the keys in their sorted order,
//! the same on every run of the same seed. The peer is `Vec::sort_by` of the whole
//! listing in memory, measured after the sorter in the same process (peak RSS reset
//! between them through `/proc/self/clear_refs`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use laminar_engine::backend::Entry;
use laminar_engine::listing::{ExternalSorter, SortStats};
use serde::Serialize;

/// Options of `sort`.
#[derive(Debug, Clone)]
pub struct SortBenchOptions {
    /// Keys in the listing.
    pub keys: u64,
    /// The sorter's memory budget.
    pub memory_budget_bytes: usize,
    /// Where the sorter spills.
    pub dir: PathBuf,
    /// Seed of the generated listing.
    pub seed: u64,
    /// Also sort the listing in memory, as the peer.
    pub baseline: bool,
}

/// The machine, as RESULTS.md records it.
#[derive(Debug, Clone, Serialize)]
pub struct SortMachine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Total memory in bytes.
    pub mem_total_bytes: u64,
    /// The kernel release.
    pub kernel: String,
}

/// The in-memory peer.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Generating, holding and sorting the listing, and reading it out.
    pub seconds: f64,
    /// CPU time of the same.
    pub cpu_seconds: f64,
    /// Peak resident memory while it ran.
    pub peak_rss_bytes: u64,
    /// The same checksum as the sorter's.
    pub checksum: String,
}

/// A whole `sort` run.
#[derive(Debug, Clone, Serialize)]
pub struct SortReport {
    /// The machine.
    pub machine: SortMachine,
    /// Keys sorted.
    pub keys: u64,
    /// The sorter's memory budget.
    pub memory_budget_bytes: usize,
    /// Where it spilled.
    pub dir: String,
    /// Generating the listing alone (included in `push_seconds`).
    pub generate_seconds: f64,
    /// Generating and pushing every entry (spills included).
    pub push_seconds: f64,
    /// `finish`: the last in-memory sort and any merge passes.
    pub finish_seconds: f64,
    /// Reading the merged output.
    pub drain_seconds: f64,
    /// CPU time of generating the listing alone.
    pub generate_cpu_seconds: f64,
    /// CPU time of the sort (push, finish, drain), generation included.
    pub cpu_seconds: f64,
    /// Peak resident memory of the process from the start of the sort to its end.
    pub peak_rss_bytes: u64,
    /// What the sorter did.
    pub stats: SortStats,
    /// CRC32C of the keys in sorted order, each followed by a newline.
    pub checksum: String,
    /// The in-memory peer, if run.
    pub baseline: Option<Baseline>,
}

impl SortReport {
    /// The sort's time, generation included.
    pub fn total_seconds(&self) -> f64 {
        self.push_seconds + self.finish_seconds + self.drain_seconds
    }
}

/// A listing like a real tree's, in no order, from a seed.
struct Listing {
    rng: fastrand::Rng,
    left: u64,
}

impl Listing {
    fn new(seed: u64, keys: u64) -> Listing {
        Listing { rng: fastrand::Rng::with_seed(seed), left: keys }
    }
}

impl Iterator for Listing {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        self.left = self.left.checked_sub(1)?;
        let rng = &mut self.rng;
        let name: String = (0..12).map(|_| NAME[rng.usize(..NAME.len())] as char).collect();
        let key = format!("dir{:03}/sub{:04}/file-{name}.jpg", rng.u32(..1000), rng.u32(..1000));
        let size_bits = rng.u32(8..30);
        let size = rng.u64(..1u64 << size_bits);
        let etag = Some(format!("{:032x}", rng.u128(..)));
        let modified_unix_ms = Some(1_700_000_000_000 + rng.i64(..1 << 36));
        Some(Entry { key, size, etag, modified_unix_ms, ..Entry::default() })
    }
}

/// An order-free checksum of one entry: summed over a listing, it says whether two
/// listings hold the same entries.
fn entry_hash(e: &Entry) -> u64 {
    let key = crc32c::crc32c(e.key.as_bytes());
    let rest = crc32c::crc32c_append(crc32c::crc32c(&e.size.to_le_bytes()), e.etag.as_deref().unwrap_or("").as_bytes());
    (u64::from(key) << 32) | u64::from(rest)
}

/// Checks a sorted output as it streams by.
#[derive(Default)]
struct Check {
    count: u64,
    sum: u64,
    crc: u32,
    last: String,
}

impl Check {
    fn see(&mut self, e: &Entry) -> Result<()> {
        ensure!(
            self.count == 0 || self.last.as_bytes() <= e.key.as_bytes(),
            "output out of order at entry {}: {:?} after {:?}",
            self.count,
            e.key,
            self.last
        );
        self.count += 1;
        self.sum = self.sum.wrapping_add(entry_hash(e));
        self.crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, e.key.as_bytes()), b"\n");
        self.last.clear();
        self.last.push_str(&e.key);
        Ok(())
    }

    fn verify(&self, keys: u64, sum: u64) -> Result<String> {
        ensure!(self.count == keys, "{} entries came out of {keys}", self.count);
        ensure!(self.sum == sum, "the output's entries differ from the input's");
        Ok(format!("{:08x}", self.crc))
    }
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory so far (VmHWM), in bytes.
pub fn rss_peak_bytes() -> u64 {
    proc_status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// CPU time of this (single-threaded) process so far, from `/proc/self/schedstat`;
/// unlike wall time, it does not count waiting for a CPU that other work holds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/schedstat").unwrap_or_default();
    stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0) as f64 / 1e9
}

/// Resets the peak to what is resident now (Linux 4.0 and later); false if it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn this_machine() -> SortMachine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    SortMachine {
        cpus: laminar_tuning::allowed_cpus().len(),
        cpu_model: crate::compare::cpu_model(),
        mem_total_bytes: crate::compare::mem_total_bytes(),
        kernel,
    }
}

/// Runs the benchmark.
pub fn run(opts: &SortBenchOptions) -> Result<SortReport> {
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let input_sum = Listing::new(opts.seed, opts.keys).fold(0u64, |sum, e| sum.wrapping_add(entry_hash(&e)));
    let generate_seconds = started.elapsed().as_secs_f64();
    let generate_cpu_seconds = cpu_seconds() - cpu_started;

    let peak_reset = reset_peak_rss();
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut sorter = ExternalSorter::new(&opts.dir, opts.memory_budget_bytes)
        .with_context(|| format!("starting a sort in {}", opts.dir.display()))?;
    for entry in Listing::new(opts.seed, opts.keys) {
        sorter.push(entry)?;
    }
    let push_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut sorted = sorter.finish()?;
    let finish_seconds = started.elapsed().as_secs_f64();
    let stats = sorted.stats();
    let started = Instant::now();
    let mut check = Check::default();
    for entry in sorted.by_ref() {
        check.see(&entry?)?;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let sort_cpu_seconds = cpu_seconds() - cpu_started;
    ensure!(sorted.scratch_dir().is_none(), "the scratch directory is gone once the output is read");
    drop(sorted);
    let checksum = check.verify(opts.keys, input_sum)?;
    let peak_rss_bytes = if peak_reset { rss_peak_bytes() } else { 0 };

    let baseline = if opts.baseline {
        let peak_reset = reset_peak_rss();
        let (started, cpu_started) = (Instant::now(), cpu_seconds());
        let mut all: Vec<Entry> = Listing::new(opts.seed, opts.keys).collect();
        all.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        let mut check = Check::default();
        for entry in &all {
            check.see(entry)?;
        }
        drop(all);
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = cpu_seconds() - cpu_started;
        let peak_rss_bytes = if peak_reset { rss_peak_bytes() } else { 0 };
        let checksum = check.verify(opts.keys, input_sum)?;
        Some(Baseline { seconds, cpu_seconds, peak_rss_bytes, checksum })
    } else {
        None
    };
    Ok(SortReport {
        machine: this_machine(),
        keys: opts.keys,
        memory_budget_bytes: opts.memory_budget_bytes,
        dir: opts.dir.display().to_string(),
        generate_seconds,
        push_seconds,
        finish_seconds,
        drain_seconds,
        generate_cpu_seconds,
        cpu_seconds: sort_cpu_seconds,
        peak_rss_bytes,
        stats,
        checksum,
        baseline,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The report as lines for a terminal.
pub fn summary(r: &SortReport) -> String {
    let m = &r.machine;
    let s = &r.stats;
    let mut out = format!(
        "sort: {} keys, budget {:.1} MiB, spilling to {}\nmachine: {} CPUs ({}), {:.1} GiB RAM, Linux {}\n",
        r.keys,
        mib(r.memory_budget_bytes as u64),
        r.dir,
        m.cpus,
        m.cpu_model,
        mib(m.mem_total_bytes) / 1024.0,
        m.kernel
    );
    out.push_str(&format!("generate alone  {:7.2} s  (CPU {:.2} s)\n", r.generate_seconds, r.generate_cpu_seconds));
    out.push_str(&format!(
        "push            {:7.2} s  (generation included): {} runs spilled, {:.1} MiB\n",
        r.push_seconds,
        s.runs_spilled,
        mib(s.bytes_spilled)
    ));
    out.push_str(&format!(
        "finish          {:7.2} s  {} runs merged into longer ones, {:.1} MiB; fan-in {}\n",
        r.finish_seconds,
        s.runs_merged,
        mib(s.bytes_merged),
        s.fan_in
    ));
    out.push_str(&format!("drain           {:7.2} s\n", r.drain_seconds));
    out.push_str(&format!(
        "sort total      {:7.2} s  (CPU {:.2} s; {:.2} s without generation); peak RSS {:.1} MiB\n",
        r.total_seconds(),
        r.cpu_seconds,
        r.cpu_seconds - r.generate_cpu_seconds,
        mib(r.peak_rss_bytes)
    ));
    if let Some(b) = &r.baseline {
        out.push_str(&format!(
            "in memory       {:7.2} s  (CPU {:.2} s; Vec::sort_by, generation included); peak RSS {:.1} MiB\n",
            b.seconds,
            b.cpu_seconds,
            mib(b.peak_rss_bytes)
        ));
    }
    out.push_str(&format!("checksum        crc32c {} over {} keys in order\n", r.checksum, r.keys));
    out
}
