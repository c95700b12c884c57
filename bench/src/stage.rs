//! `laminar-bench stage`: the NVMe stage's sequential write and read throughput
//! beside fio's on the same file system, block size and depth, alternating runs.
//!
//! Laminar's side is the engine's own stage code (`laminar_engine::stage`): one
//! stage file, `depth` regions written (then read) at once, each through a ring of
//! pool chunks on one io_uring event loop, O_DIRECT where the file system allows it.
//! Writes send a pattern copied into each chunk once and then reused, as fio reuses
//! its buffers; reads compute CRC32C as the relay does. fio runs `--direct=1 --ioengine=io_uring
//! --rw=write|read --bs=BLOCK --iodepth=DEPTH` on a file of the same size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use laminar_engine::checksum::{Checksum, ChecksumAlgo};
use laminar_engine::pool::ring::{ring, Next};
use laminar_engine::pool::BufferPool;
use laminar_engine::runtime::Driver;
use laminar_engine::stage::{Stage, StageOptions as EngineStageOptions};
use serde::{Deserialize, Serialize};

use crate::compare::{machine, Machine};
use crate::servers::find_tool;

/// Options of `stage`.
pub struct StageBenchOptions {
    /// Directory on the file system to measure.
    pub dir: PathBuf,
    /// Bytes written and read per run.
    pub size_bytes: u64,
    /// Bytes per request (the pool chunk).
    pub block_bytes: usize,
    /// Requests in flight.
    pub depth: usize,
    /// Runs per tool and direction.
    pub runs: usize,
    /// The laminar binary (for the machine description).
    pub laminar: PathBuf,
    /// Where the raw JSON goes (None: not kept, as in the tiny test mode).
    pub out_dir: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRun {
    /// `laminar` or `fio`.
    pub tool: String,
    /// `write` or `read`.
    pub op: String,
    /// Bytes per second.
    pub bytes_per_second: f64,
}

/// A whole `stage` run, as kept in the raw JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// The machine.
    pub machine: Machine,
    /// The directory and what the kernel says of its device.
    pub dir: String,
    /// Whether O_DIRECT was used by Laminar's stage.
    pub o_direct: bool,
    /// Bytes per run.
    pub size_bytes: u64,
    /// Bytes per request.
    pub block_bytes: usize,
    /// Requests in flight.
    pub depth: usize,
    /// Every run, in order.
    pub runs: Vec<StageRun>,
    /// The fio commands.
    pub commands: Vec<String>,
    /// CRC32C of what Laminar read back in the last run (the same every run).
    pub checksum: String,
}

/// Runs the benchmark.
pub fn run(opts: &StageBenchOptions) -> Result<StageReport> {
    let fio = find_tool("fio").ok_or_else(|| anyhow!("fio not found: install it (Debian: apt-get install fio)"))?;
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
    anyhow::ensure!(opts.depth >= 1 && opts.block_bytes.is_multiple_of(4096), "depth >= 1 and 4 KiB-aligned blocks");
    let region = opts.size_bytes / opts.depth as u64;
    anyhow::ensure!(
        region.is_multiple_of(opts.block_bytes as u64) && region > 0,
        "size must split into depth regions of whole blocks"
    );
    let stage = Arc::new(Stage::open(&EngineStageOptions { dir: opts.dir.clone(), quota_bytes: opts.size_bytes * 2 })?);
    let mut runs = Vec::new();
    let mut commands = Vec::new();
    let mut checksum = String::new();
    for _ in 0..opts.runs {
        for op in ["write", "read"] {
            // Alternating: Laminar then fio, for each direction.
            let (bps, sum) = laminar_pass(&stage, opts, op)?;
            if let Some(sum) = sum {
                checksum = sum.to_string();
            }
            runs.push(StageRun { tool: "laminar".into(), op: op.into(), bytes_per_second: bps });
            let (bps, cmd) = fio_pass(&fio, opts, op)?;
            runs.push(StageRun { tool: "fio".into(), op: op.into(), bytes_per_second: bps });
            if !commands.contains(&cmd) {
                commands.push(cmd);
            }
        }
        eprintln!("{}", summary_line(&runs));
    }
    let _ = std::fs::remove_file(opts.dir.join("fio.dat"));
    let report = StageReport {
        machine: machine(&opts.laminar, Path::new(""), String::new()),
        dir: opts.dir.display().to_string(),
        o_direct: stage.o_direct(),
        size_bytes: opts.size_bytes,
        block_bytes: opts.block_bytes,
        depth: opts.depth,
        runs,
        commands,
        checksum,
    };
    if let Some(out) = &opts.out_dir {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("stage.json"), serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

fn summary_line(runs: &[StageRun]) -> String {
    let last = |tool: &str, op: &str| {
        runs.iter().rev().find(|r| r.tool == tool && r.op == op).map_or(0.0, |r| r.bytes_per_second / 1e6)
    };
    format!(
        "write: laminar {:.0} MB/s, fio {:.0} MB/s; read: laminar {:.0} MB/s, fio {:.0} MB/s",
        last("laminar", "write"),
        last("fio", "write"),
        last("laminar", "read"),
        last("fio", "read")
    )
}

/// One Laminar pass: `depth` regions at once, each through its own ring.
fn laminar_pass(stage: &Arc<Stage>, opts: &StageBenchOptions, op: &str) -> Result<(f64, Option<Checksum>)> {
    // The file persists between the write and the read of a run.
    thread_local! {
        static FILE: std::cell::RefCell<Option<Arc<laminar_engine::stage::StageFile>>> = const { std::cell::RefCell::new(None) };
    }
    if op == "write" {
        let file = stage.create(opts.size_bytes).map_err(|why| anyhow!("stage: {why}"))?;
        FILE.with(|f| *f.borrow_mut() = Some(Arc::new(file)));
    }
    let region = opts.size_bytes / opts.depth as u64;
    let block = opts.block_bytes;
    let depth = opts.depth;
    FILE.with(|f| {
        let f = f.borrow();
        let file = f.as_ref().ok_or_else(|| anyhow!("read before write"))?.clone();
        let started = Instant::now();
        let sum = laminar_engine::runtime::block_on(Driver::IoUring, async {
            let pool = BufferPool::new(block, depth * 2);
            let pattern: Vec<u8> = (0..block).map(|i| (i * 31 % 251) as u8).collect();
            let mut tasks = Vec::new();
            for r in 0..depth as u64 {
                let chunks = pool.acquire(2).await;
                let (filler, drain) = ring(chunks);
                let offset = r * region;
                let pattern = pattern.clone();
                let file = file.clone();
                if op == "write" {
                    let feed = async move {
                        let mut left = region;
                        while left > 0 {
                            let Some(mut c) = filler.empty_chunk().await else { return };
                            // The pattern is copied in once per chunk, then reused, as
                            // fio reuses its buffers: this measures the stage, not memcpy.
                            c.reuse_contents();
                            if c.is_empty() {
                                c.extend_from(&pattern);
                            }
                            left -= c.len() as u64;
                            filler.send(c);
                        }
                        filler.finish(Checksum::from_crc32c(0));
                    };
                    tasks.push(monoio::spawn(async move {
                        let (written, ()) = monoio::join!(file.write_from(offset, drain), feed);
                        written.map(|_| None)
                    }));
                } else {
                    let drain_task = async move {
                        loop {
                            match drain.next().await {
                                Next::Chunk(c) => drain.recycle(c),
                                Next::End(_) | Next::Aborted => return,
                            }
                        }
                    };
                    tasks.push(monoio::spawn(async move {
                        let (sum, ()) =
                            monoio::join!(file.read_into(offset, region, filler, ChecksumAlgo::Crc32c), drain_task);
                        sum.map(Some)
                    }));
                }
            }
            let mut last = None;
            for t in tasks {
                last = t.await.map_err(|e| anyhow!("stage {op}: {e}"))?.or(last);
            }
            Ok::<_, anyhow::Error>(last)
        })
        .map_err(|e| anyhow!("io_uring runtime: {e}"))??;
        let seconds = started.elapsed().as_secs_f64();
        Ok((opts.size_bytes as f64 / seconds, sum))
    })
    .inspect(|_| {
        if op == "read" {
            FILE.with(|f| *f.borrow_mut() = None);
        }
    })
}

fn fio_pass(fio: &Path, opts: &StageBenchOptions, op: &str) -> Result<(f64, String)> {
    if op == "write" {
        // A fresh file each run, as each staged object gets: no run overwrites blocks
        // an earlier run already wrote (which skips the extent conversion).
        let _ = std::fs::remove_file(opts.dir.join("fio.dat"));
    }
    let args = [
        format!("--name=stage-{op}"),
        format!("--directory={}", opts.dir.display()),
        "--filename=fio.dat".to_string(),
        format!("--rw={op}"),
        format!("--bs={}", opts.block_bytes),
        format!("--size={}", opts.size_bytes),
        "--direct=1".to_string(),
        "--ioengine=io_uring".to_string(),
        format!("--iodepth={}", opts.depth),
        "--output-format=json".to_string(),
    ];
    let out = Command::new(fio).args(&args).output().context("running fio")?;
    if !out.status.success() {
        bail!("fio {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing fio's JSON")?;
    let bps = doc["jobs"][0][op]["bw_bytes"].as_f64().ok_or_else(|| anyhow!("fio's JSON has no {op}.bw_bytes"))?;
    Ok((bps, format!("fio {}", args.join(" "))))
}

/// The RESULTS.md section.
pub fn section(r: &StageReport) -> String {
    let mut md = format!(
        "`laminar-bench stage --dir {} --size {} --block {} --depth {} --runs {}`: Laminar's stage code \
         (O_DIRECT {}, io_uring) beside fio on the same file system, alternating. Medians over runs, with \
         the range; ratio = Laminar / fio.\n\n| op | Laminar MB/s | fio MB/s | ratio |\n|---|---|---|---|\n",
        r.dir,
        r.size_bytes,
        r.block_bytes,
        r.depth,
        r.runs.len() / 4,
        if r.o_direct { "on" } else { "off" },
    );
    for op in ["write", "read"] {
        let of = |tool: &str| -> Vec<f64> {
            r.runs.iter().filter(|x| x.tool == tool && x.op == op).map(|x| x.bytes_per_second / 1e6).collect()
        };
        let (l, f) = (crate::report::stats(&of("laminar")), crate::report::stats(&of("fio")));
        md.push_str(&format!(
            "| {op} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} |\n",
            l.0,
            l.1,
            l.2,
            f.0,
            f.1,
            f.2,
            if f.0 > 0.0 { l.0 / f.0 } else { 0.0 }
        ));
    }
    md.push_str("\nCommands:\n\n");
    for c in &r.commands {
        md.push_str(&format!("    {c}\n"));
    }
    md
}
