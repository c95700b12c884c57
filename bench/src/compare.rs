//! `laminar-bench compare`: Laminar and rclone relaying the same workload between the
//! same two SeaweedFS servers, alternately, in one run.
//!
//! Each run goes into a fresh destination prefix and is checked (object count, bytes,
//! and `rclone check --download` on a sample). For each run the child's wall time,
//! CPU time (user + system, from `wait4`) and peak RSS are recorded; the report gives
//! medians, min–max, and the ratios Laminar / rclone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::servers::{find_tool, Weed};
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
}

/// A whole comparison, as kept in the raw JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
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
    /// `weed version`.
    pub seaweedfs: String,
}

/// Options of `compare`.
pub struct CompareOptions {
    /// Workload name.
    pub workload: String,
    /// Runs per tool.
    pub runs: usize,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// Where to write the raw JSON (and RESULTS.md when `write_results`).
    pub out_dir: PathBuf,
    /// Whether to rewrite RESULTS.md.
    pub write_results: bool,
}

const RCLONE_TUNED: &[&str] = &[
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
];

fn output_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn machine(laminar: &Path, rclone: &Path) -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    Machine {
        cpus: laminar_tuning::allowed_cpus().len(),
        cpu_model,
        mem_total_bytes: mem_total_kib * 1024,
        kernel: output_line(Command::new("uname").arg("-r")),
        laminar: output_line(Command::new(laminar).arg("--version")),
        rclone: output_line(Command::new(rclone).arg("version")),
        seaweedfs: find_tool("weed").map(|w| output_line(Command::new(w).arg("version"))).unwrap_or_default(),
    }
}

/// Runs a command to completion, measuring it; fails if it exits non-zero.
fn measured(tool: &str, cmd: &mut Command, bytes: u64) -> Result<Run> {
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
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
    let (code, usage) = laminar_tuning::wait_with_usage(child)?;
    let wall = started.elapsed().as_secs_f64();
    let err = reader.join().unwrap_or_default();
    if code != 0 {
        bail!("{tool} exited with {code}: {}", err.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
    }
    Ok(Run {
        tool: tool.to_string(),
        wall_seconds: wall,
        cpu_seconds: usage.user_seconds + usage.system_seconds,
        max_rss_bytes: usage.max_rss_bytes,
        throughput_bytes_per_second: bytes as f64 / wall,
    })
}

#[derive(Deserialize)]
struct RcloneSize {
    count: u64,
    bytes: u64,
}

/// Checks a destination prefix: object count, bytes, and a downloaded sample.
fn verify(dst: &Weed, src: &Weed, prefix: &str, workload: &Workload) -> Result<()> {
    let out = dst.rclone(&["size", "--json", &format!("dst:dst/{prefix}")])?;
    if !out.status.success() {
        bail!("rclone size failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let size: RcloneSize = serde_json::from_slice(&out.stdout).context("rclone size output")?;
    if size.count != workload.object_count as u64 || size.bytes != workload.total_bytes {
        bail!(
            "{prefix}: expected {} objects / {} bytes, found {} / {}",
            workload.object_count,
            workload.total_bytes,
            size.count,
            size.bytes
        );
    }
    // A sample: the first and last objects and the largest, compared byte for byte.
    let mut sample = tempfile::NamedTempFile::new()?;
    let largest = workload.objects.iter().max_by_key(|o| o.size_bytes);
    for o in workload.objects.first().into_iter().chain(workload.objects.last()).chain(largest) {
        use std::io::Write;
        writeln!(sample, "{}", o.key)?;
    }
    let out = Command::new(find_tool("rclone").context("rclone not found")?)
        .envs(src.rclone_env("src"))
        .envs(dst.rclone_env("dst"))
        .args(["check", "--download", "--files-from"])
        .arg(sample.path())
        .args(["src:src/data", &format!("dst:dst/{prefix}")])
        .output()?;
    if !out.status.success() {
        bail!("{prefix}: sample check failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs the comparison.
pub fn compare(opts: &CompareOptions) -> Result<Comparison> {
    let workload = Workload::named(&opts.workload)?;
    let rclone = find_tool("rclone").context("rclone not found: run tests/run.sh once, or set LAMINAR_RCLONE")?;
    let src = Weed::start().context("starting the source SeaweedFS")?;
    let dst = Weed::start().context("starting the destination SeaweedFS")?;
    src.create_bucket("src")?;
    dst.create_bucket("dst")?;
    let data = tempfile::tempdir()?;
    workload.generate(data.path())?;
    let out = src.rclone(&["copy", &data.path().display().to_string(), "src:src/data"])?;
    if !out.status.success() {
        bail!("loading the workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(data);
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), format!("{}\n{}", src.remote_toml("src"), dst.remote_toml("dst")))?;
    let laminar_args = |prefix: &str| -> Vec<String> {
        vec![
            "--config".into(),
            config.path().display().to_string(),
            "relay".into(),
            "src:src/data".into(),
            format!("dst:dst/{prefix}"),
        ]
    };
    let commands = vec![
        "laminar --config laminar.toml relay src:src/data dst:dst/<prefix>".to_string(),
        "rclone copy src:src/data dst:dst/<prefix>".to_string(),
        format!("rclone copy {} src:src/data dst:dst/<prefix>", RCLONE_TUNED.join(" ")),
    ];
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        for tool in ["laminar", "rclone-default", "rclone-tuned"] {
            let prefix = format!("run{i}-{tool}");
            let mut cmd = if tool == "laminar" {
                let mut c = Command::new(&opts.laminar);
                c.args(laminar_args(&prefix));
                c
            } else {
                let mut c = Command::new(&rclone);
                c.envs(src.rclone_env("src")).envs(dst.rclone_env("dst")).arg("copy");
                if tool == "rclone-tuned" {
                    c.args(RCLONE_TUNED);
                }
                c.args(["src:src/data", &format!("dst:dst/{prefix}")]);
                c
            };
            let run = measured(tool, &mut cmd, workload.total_bytes)?;
            verify(&dst, &src, &prefix, &workload)?;
            eprintln!(
                "run {i} {tool:>15}: {:.2}s wall, {:.2}s cpu, {} MiB peak RSS",
                run.wall_seconds,
                run.cpu_seconds,
                run.max_rss_bytes >> 20
            );
            runs.push(run);
        }
    }
    let comparison = Comparison { workload, runs, machine: machine(&opts.laminar, &rclone), commands };
    std::fs::create_dir_all(&opts.out_dir)?;
    let raw = opts.out_dir.join(format!("compare-{}.json", comparison.workload.name));
    std::fs::write(&raw, serde_json::to_string_pretty(&comparison)?)?;
    Ok(comparison)
}

/// Median and range of a series.
pub fn stats(values: &[f64]) -> (f64, f64, f64) {
    assert!(!values.is_empty());
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    (median, v[0], v[v.len() - 1])
}

/// The Markdown table for one comparison.
pub fn table(c: &Comparison) -> String {
    let tools = ["laminar", "rclone-default", "rclone-tuned"];
    let series =
        |tool: &str, f: &dyn Fn(&Run) -> f64| -> Vec<f64> { c.runs.iter().filter(|r| r.tool == tool).map(f).collect() };
    let mut out = String::new();
    out.push_str(&format!(
        "### Workload `{}`: {} objects, {:.1} MiB, {} runs per tool\n\n",
        c.workload.name,
        c.workload.object_count,
        c.workload.total_bytes as f64 / (1 << 20) as f64,
        c.runs.iter().filter(|r| r.tool == "laminar").count()
    ));
    out.push_str(
        "| tool | wall s (median, min–max) | MiB/s (median) | CPU s (median, min–max) | peak RSS MiB (median) |\n",
    );
    out.push_str("|---|---|---|---|---|\n");
    for tool in tools {
        let wall = series(tool, &|r| r.wall_seconds);
        if wall.is_empty() {
            continue;
        }
        let cpu = series(tool, &|r| r.cpu_seconds);
        let rss = series(tool, &|r| r.max_rss_bytes as f64 / (1 << 20) as f64);
        let mbps = series(tool, &|r| r.throughput_bytes_per_second / (1 << 20) as f64);
        let (w, wlo, whi) = stats(&wall);
        let (cp, clo, chi) = stats(&cpu);
        out.push_str(&format!(
            "| {tool} | {w:.2} ({wlo:.2}–{whi:.2}) | {:.0} | {cp:.2} ({clo:.2}–{chi:.2}) | {:.0} |\n",
            stats(&mbps).0,
            stats(&rss).0
        ));
    }
    let lam_wall = stats(&series("laminar", &|r| r.wall_seconds)).0;
    let lam_cpu = stats(&series("laminar", &|r| r.cpu_seconds)).0;
    out.push_str("\nRatios (Laminar / rclone, medians; below 1 is better for Laminar):\n\n");
    out.push_str("| vs | wall time | CPU time |\n|---|---|---|\n");
    for tool in ["rclone-default", "rclone-tuned"] {
        let wall = series(tool, &|r| r.wall_seconds);
        if wall.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "| {tool} | {:.2} | {:.2} |\n",
            lam_wall / stats(&wall).0,
            lam_cpu / stats(&series(tool, &|r| r.cpu_seconds)).0
        ));
    }
    out
}

/// The machine description for RESULTS.md.
pub fn machine_section(m: &Machine) -> String {
    format!(
        "Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}. Versions: {}; {}; SeaweedFS {}.\n",
        m.cpus,
        m.cpu_model,
        m.mem_total_bytes as f64 / (1u64 << 30) as f64,
        m.kernel,
        m.laminar,
        m.rclone,
        m.seaweedfs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

}
