//! `laminar-bench compare`: Laminar and rclone relaying the same workload between the
//! same two endpoints (SeaweedFS or synthetic, see [`crate::pair`]), alternately, in one run.
//!
//! Each run goes into a fresh destination prefix and is checked ([`Pair::verify`]).
//! For each run the child's wall time,
//! CPU time (user + system, from `wait4`) and peak RSS are recorded; the report gives
//! medians, min–max, and the ratios Laminar / rclone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pair::{Endpoints, Pair, SRC_PATH};
use crate::servers::find_tool;
use crate::workload::Workload;

/// One timed run of one tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// `laminar`, `rclone-default` or `rclone-tuned`.
    pub tool: String,
    /// Wall seconds.
    pub wall_seconds: f64,
    /// User + system CPU seconds of the child.
    pub cpu_seconds: f64,
    /// Peak RSS of the child in bytes.
    pub max_rss_bytes: u64,
    /// Bytes moved per wall second.
    pub throughput_bytes_per_second: f64,
    /// Laminar's RAM tier, from its `--json` report (peak RSS must stay under it + 64 MiB).
    #[serde(default)]
    pub ram_buffer_bytes: Option<u64>,
    /// CPU seconds (user + system) both servers spent during the run.
    #[serde(default)]
    pub server_cpu_seconds: Option<f64>,
}

/// A whole comparison, as kept in the raw JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// `weed` or `synthetic`.
    pub endpoints: String,
    /// The workload.
    pub workload: Workload,
    /// Runs in the order they happened.
    pub runs: Vec<Run>,
    /// The machine: cores, memory, kernel, versions.
    pub machine: Machine,
    /// The exact commands, with placeholders for prefixes.
    pub commands: Vec<String>,
}

/// What the results were measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Total memory in bytes.
    pub mem_total_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `laminar --version`.
    pub laminar: String,
    /// `rclone version` first line.
    pub rclone: String,
    /// The servers and their version.
    pub servers: String,
}

/// Options of `compare`.
pub struct CompareOptions {
    /// Workload name.
    pub workload: String,
    /// Endpoints.
    pub endpoints: Endpoints,
    /// Runs per tool.
    pub runs: usize,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// Where to write the raw JSON.
    pub out_dir: PathBuf,
}

/// rclone's flags for a workload, as its docs suggest: many transfers and checkers and
/// `--fast-list` for many small objects; multi-thread streams, upload concurrency and
/// bigger chunks for large ones.
pub fn rclone_tuned_flags(workload: &str) -> &'static [&'static str] {
    match workload {
        "small" => &["--transfers", "32", "--checkers", "32", "--fast-list"],
        "large" => &[
            "--transfers",
            "8",
            "--checkers",
            "8",
            "--multi-thread-streams",
            "8",
            "--s3-upload-concurrency",
            "8",
            "--s3-chunk-size",
            "16M",
        ],
        _ => &[
            "--transfers",
            "16",
            "--checkers",
            "16",
            "--s3-upload-concurrency",
            "8",
            "--s3-chunk-size",
            "16M",
            "--multi-thread-streams",
            "8",
            "--fast-list",
        ],
    }
}

fn output_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// Describes this machine and the tools.
pub fn machine(laminar: &Path, rclone: &Path, servers: String) -> Machine {
    let cpu_model = cpu_model();
    Machine {
        cpus: laminar_tuning::allowed_cpus().len(),
        cpu_model,
        mem_total_bytes: mem_total_bytes(),
        kernel: output_line(Command::new("uname").arg("-r")),
        laminar: output_line(Command::new(laminar).arg("--version")),
        rclone: output_line(Command::new(rclone).arg("version")),
        servers,
    }
}

/// Runs a command to completion, measuring it; fails if it exits non-zero. A JSON
/// report on its standard output (`laminar --json`) gives the RAM tier size.
pub fn measured(tool: &str, cmd: &mut Command, bytes: u64) -> Result<Run> {
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
    let mut child = child;
    // Read stderr on a thread so a chatty child never blocks on a full pipe.
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut stdout = child.stdout.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    // The peak RSS from `wait4` counts the memory of the process that spawned the child
    // (Linux carries it across exec), which is wrong when this process is large (the
    // cloud comparison holds both emulators' files): the child's own high-water mark is
    // sampled from /proc while it runs.
    let pid = child.id();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(hwm) = vm_hwm_bytes(pid) {
                    peak = peak.max(hwm);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let waited = laminar_tuning::wait_with_usage(child);
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.join().unwrap_or(0);
    let (code, mut usage) = waited?;
    if sampled_peak > 0 {
        usage.max_rss_bytes = sampled_peak;
    }
    let wall = started.elapsed().as_secs_f64();
    let err = reader.join().unwrap_or_default();
    let out = out_reader.join().unwrap_or_default();
    let ram_buffer_bytes = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("ram_buffer_bytes").and_then(|b| b.as_u64()));
    if code != 0 {
        bail!("{tool} exited with {code}: {}", err.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(Run {
        tool: tool.to_string(),
        wall_seconds: wall,
        cpu_seconds: usage.user_seconds + usage.system_seconds,
        max_rss_bytes: usage.max_rss_bytes,
        throughput_bytes_per_second: bytes as f64 / wall,
        ram_buffer_bytes,
        server_cpu_seconds: None,
    })
}

/// `VmHWM` of process `pid` (its peak RSS so far), from /proc.
fn vm_hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `rclone copy` of the workload at the source to `dst`, with the default flags or the
/// tuned ones for `workload`.
pub fn rclone_command(rclone: &Path, pair: &Pair, tuned: bool, workload: &str, dst: &str) -> Command {
    let mut c = Command::new(rclone);
    c.envs(pair.rclone_env()).arg("copy");
    if tuned {
        c.args(rclone_tuned_flags(workload));
    }
    c.args([SRC_PATH, dst]);
    c
}

/// Runs the comparison.
pub fn compare(opts: &CompareOptions) -> Result<Comparison> {
    let workload = Workload::named(&opts.workload)?;
    let rclone = find_tool("rclone").context("rclone not found: run tests/run.sh once, or set LAMINAR_RCLONE")?;
    let pair = Pair::start(opts.endpoints, &workload)?;
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), pair.config_toml())?;
    let tuned = rclone_tuned_flags(&workload.name);
    let commands = vec![
        format!("laminar --config laminar.toml relay --json {SRC_PATH} dst:dst/<prefix>"),
        format!("rclone copy {SRC_PATH} dst:dst/<prefix>"),
        format!("rclone copy {} {SRC_PATH} dst:dst/<prefix>", tuned.join(" ")),
    ];
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        for tool in TOOLS {
            let prefix = format!("run{i}-{tool}");
            let dst = format!("dst:dst/{prefix}");
            let mut cmd = if tool == "laminar" {
                let mut c = Command::new(&opts.laminar);
                c.arg("--config").arg(config.path()).args(["relay", "--json", SRC_PATH, &dst]);
                c.args(crate::laminar_extra_args());
                c
            } else {
                rclone_command(&rclone, &pair, tool == "rclone-tuned", &workload.name, &dst)
            };
            let run = pair.measured(tool, &mut cmd, workload.total_bytes)?;
            pair.verify(&prefix, &workload)?;
            eprintln!(
                "run {i} {tool:>15}: {:.2}s wall, {:.2}s cpu, {} MiB peak RSS",
                run.wall_seconds,
                run.cpu_seconds,
                run.max_rss_bytes >> 20
            );
            runs.push(run);
        }
    }
    let comparison = Comparison {
        endpoints: opts.endpoints.name().to_string(),
        workload,
        runs,
        machine: machine(&opts.laminar, &rclone, pair.server_version()),
        commands,
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    let raw = opts.out_dir.join(format!("compare-{}-{}.json", comparison.endpoints, comparison.workload.name));
    std::fs::write(&raw, serde_json::to_string_pretty(&comparison)?)?;
    Ok(comparison)
}

/// The tools a comparison runs, in the order they alternate.
pub const TOOLS: [&str; 3] = ["laminar", "rclone-default", "rclone-tuned"];

/// This machine's memory, from `/proc/meminfo` (0 if unreadable).
pub(crate) fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// This machine's CPU model, from `/proc/cpuinfo`.
pub(crate) fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string()
}
