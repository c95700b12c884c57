//! `laminar-bench chaos`: a relay killed with SIGKILL at random points, each time
//! started again with the same command (which resumes from the journal), until one
//! run finishes; then every object at the destination is checked against its source.
//!
//! The source is a local tree of large files (in parts, through the journal) and small
//! ones (single requests); the destination is the Drive emulator, slowed to a
//! per-connection cap so that kills land mid-file, in one ordered resumable session per
//! file: the case where a resume must find exactly where the store stands. After each
//! kill, whatever the destination shows must be a whole, right file (a partial object
//! that looks complete is the worst failure); at the end every file must be there and
//! right. The emulator counts every byte each session received: what was sent beyond
//! the files' sizes is what the kills cost, and a resume that works re-sends at most
//! the part in flight in each stream at each kill. The figure printed is
//! `N kills, N resumes, L objects lost, C corrupt, R committed bytes re-sent beyond the
//! part in flight`; `--tiny` is the test suite's run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use laminar_emulators::drive::{DriveEmulator, DriveOptions, Faults};

const MIB: u64 = 1 << 20;
/// Files in flight at once (`--transfers`): one ordered stream each into Drive.
const STREAMS: u64 = 2;
const PART_BYTES: u64 = 4 * MIB;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Kills before the run that is let finish.
    pub kills: usize,
    /// The small data set and rate of the test suite's run.
    pub tiny: bool,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// Seed of the kill points and the data.
    pub seed: u64,
    /// Where the raw JSON goes (None: nowhere).
    pub out_dir: Option<PathBuf>,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChaosReport {
    /// Relays killed with SIGKILL.
    pub kills: usize,
    /// Relays started again after a kill (the last one ran to the end).
    pub resumes: usize,
    /// Objects at the source.
    pub objects: usize,
    /// Bytes at the source.
    pub bytes: u64,
    /// Objects missing at the destination at the end.
    pub objects_lost: usize,
    /// Objects at the destination whose bytes differ from the source's, after any kill
    /// or at the end.
    pub objects_corrupt: usize,
    /// Bytes the destination's upload sessions received beyond the large files' sizes.
    pub bytes_resent: u64,
    /// What the kills may cost: the part in flight in each stream, per kill.
    pub bytes_resent_allowed: u64,
    /// Re-sent bytes beyond that.
    pub bytes_resent_beyond: u64,
    /// Half-copied objects the run that finished went on with from the journal (the
    /// killed runs give no report).
    pub objects_resumed: u64,
    /// Wall time of the whole exercise.
    pub seconds: f64,
    /// The seed.
    pub seed: u64,
    /// How the data and the destination were set.
    pub setup: String,
    /// The machine, in words.
    pub machine: String,
}

impl ChaosReport {
    /// The figure.
    pub fn summary(&self) -> String {
        format!(
            "{} kills, {} resumes, {} objects lost, {} corrupt, {} committed bytes re-sent beyond the part in flight",
            self.kills, self.resumes, self.objects_lost, self.objects_corrupt, self.bytes_resent_beyond
        )
    }

    /// Whether nothing was lost or corrupt and no committed byte was sent again.
    pub fn clean(&self) -> bool {
        self.objects_lost == 0 && self.objects_corrupt == 0 && self.bytes_resent_beyond == 0
    }
}

/// The section of RESULTS.md.
pub fn section(r: &ChaosReport) -> String {
    format!(
        "## Killed and resumed (`laminar-bench chaos`)\n\n\
         {}\n\n\
         **{}.** A relay of {} objects ({}) from a local tree into the Drive emulator ({}) was killed with SIGKILL \
         at {} random points (seed {}), each time started again with the same command, until a run finished. After \
         each kill every file Drive showed was whole and right; at the end every file was there and right. The \
         upload sessions received {} beyond the files' sizes, within the {} that the part in flight of each of \
         the {STREAMS} streams at each kill may cost (the emulator keeps a chunk only once its request is whole, \
         so a kill costs what the requests in flight carried); the run that finished went on with {} half-copied \
         files from the journal. Wall time {:.1} s.\n\n\
         Reproduce: `cargo run --release -p laminar-bench -- chaos --kills {} --seed {} --write-results`.\n\n",
        r.machine,
        r.summary(),
        r.objects,
        laminar_tuning::HumanBytes(r.bytes),
        r.setup,
        r.kills,
        r.seed,
        laminar_tuning::HumanBytes(r.bytes_resent),
        laminar_tuning::HumanBytes(r.bytes_resent_allowed),
        r.objects_resumed,
        r.seconds,
        r.kills,
        r.seed,
    )
}

struct Data {
    root: tempfile::TempDir,
    files: Vec<(String, Vec<u8>)>,
}

fn data(tiny: bool, seed: u64) -> Result<Data> {
    let root = tempfile::tempdir().context("a temp dir for the source")?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let (large, large_bytes, small, small_bytes) = if tiny { (2, 9 * MIB, 6, 4096) } else { (6, 40 * MIB, 40, 65536) };
    let mut files = Vec::new();
    for i in 0..large {
        // Not a multiple of the part size: the last part is short.
        let len = large_bytes + rng.u64(1..PART_BYTES);
        files.push((format!("large/{i:02}.bin"), (0..len).map(|_| rng.u8(..)).collect()));
    }
    for i in 0..small {
        files.push((format!("small/{i:03}.txt"), (0..small_bytes).map(|_| rng.u8(..)).collect()));
    }
    for (rel, bytes) in &files {
        let path = root.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).context("source dirs")?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Data { root, files })
}

/// Files Drive shows under `in/` whose bytes differ from the source's.
fn corrupt(gd: &DriveEmulator, files: &[(String, Vec<u8>)]) -> Vec<String> {
    files
        .iter()
        .filter(|(rel, bytes)| gd.read(&format!("in/{rel}")).is_some_and(|got| &got != bytes))
        .map(|(rel, _)| rel.clone())
        .collect()
}

/// Runs the exercise.
pub fn run(opts: &ChaosOptions) -> Result<ChaosReport> {
    let started = Instant::now();
    let data = data(opts.tiny, opts.seed)?;
    let gd = DriveEmulator::start(DriveOptions::default()).context("starting the Drive emulator")?;
    let rate = if opts.tiny { 16 * MIB } else { 12 * MIB };
    gd.set_faults(Faults { throughput_bytes_per_s: rate, ..Faults::default() });
    let work = tempfile::tempdir().context("a temp dir")?;
    let config = work.path().join("laminar.toml");
    std::fs::write(&config, gd.remote_toml("gd")).context("writing laminar.toml")?;
    let data_dir = work.path().join("data");
    let from = format!("file://{}", data.root.path().display());
    let command = || {
        let mut c = Command::new(&opts.laminar);
        c.env("LAMINAR_DATA_DIR", &data_dir).arg("--config").arg(&config).args([
            "relay",
            &from,
            "gd:in",
            "--json",
            "--multipart-cutoff",
            "8MiB",
            "--part-size",
            "4MiB",
            "--transfers",
            &STREAMS.to_string(),
        ]);
        c
    };
    let mut rng = fastrand::Rng::with_seed(opts.seed ^ 0x9e37_79b9);
    // Kill points: a moment after the start (listing, claiming) up to well into the run.
    let (low_ms, high_ms) = if opts.tiny { (150, 600) } else { (200, 900) };
    let mut kills = 0;
    let mut resumes = 0;
    let mut corrupt_seen = std::collections::BTreeSet::new();
    let mut objects_resumed = 0;
    let mut finished = false;
    while kills < opts.kills {
        let mut child = command().stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting laminar")?;
        if kills > 0 {
            resumes += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.u64(low_ms..high_ms)));
        if child.try_wait()?.is_some() {
            // It finished before the kill point: that run was the last.
            let out = child.wait_with_output()?;
            ensure!(out.status.success(), "a relay after {kills} kills ended with {}", out.status);
            objects_resumed += resumed_of(&out.stdout);
            finished = true;
            break;
        }
        child.kill().context("SIGKILL")?;
        child.wait()?;
        kills += 1;
        corrupt_seen.extend(corrupt(&gd, &data.files));
    }
    if !finished {
        let out = command().output().context("running laminar to the end")?;
        resumes += usize::from(kills > 0);
        ensure!(
            out.status.success(),
            "the last relay ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        objects_resumed += resumed_of(&out.stdout);
    }
    corrupt_seen.extend(corrupt(&gd, &data.files));
    let lost = data.files.iter().filter(|(rel, _)| gd.read(&format!("in/{rel}")).is_none()).count();
    let large: u64 = data.files.iter().filter(|(rel, _)| rel.starts_with("large/")).map(|(_, b)| b.len() as u64).sum();
    let received: u64 = gd.stats().sessions.iter().map(|s| s.received_bytes).sum();
    let resent = received.saturating_sub(large);
    let allowed = kills as u64 * STREAMS * PART_BYTES;
    let report = ChaosReport {
        kills,
        resumes,
        objects: data.files.len(),
        bytes: data.files.iter().map(|(_, b)| b.len() as u64).sum(),
        objects_lost: lost,
        objects_corrupt: corrupt_seen.len(),
        bytes_resent: resent,
        bytes_resent_allowed: allowed,
        bytes_resent_beyond: resent.saturating_sub(allowed),
        objects_resumed,
        seconds: started.elapsed().as_secs_f64(),
        seed: opts.seed,
        setup: format!(
            "{} MiB/s per connection, {STREAMS} files in flight, 4 MiB parts, 8 MiB multipart cutoff",
            rate / MIB
        ),
        machine: machine_line(),
    };
    if let Some(dir) = &opts.out_dir {
        let name = if opts.tiny { "chaos-tiny.json" } else { "chaos.json" };
        write_json(&dir.join(name), &report)?;
    }
    Ok(report)
}

/// This machine in one line: CPUs, model, memory, kernel.
fn machine_line() -> String {
    let m = crate::compare::machine(Path::new("laminar"), Path::new("rclone"), "the Drive emulator".into());
    format!(
        "Machine: {} CPUs ({}), {} memory, Linux {}.",
        m.cpus,
        m.cpu_model,
        laminar_tuning::HumanBytes(m.mem_total_bytes),
        m.kernel
    )
}

fn resumed_of(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_default();
    report["objects_resumed"].as_u64().unwrap_or(0)
}

fn write_json(path: &Path, report: &ChaosReport) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?).with_context(|| format!("writing {}", path.display()))
}
