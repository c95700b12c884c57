//! `laminar-bench scale`: Laminar's throughput at 1, 2, 4, ... workers on the synthetic
//! endpoints, and the efficiency per worker (throughput at N workers over N times the
//! throughput at one).
//!
//! On a host with fewer CPUs than workers the extra workers share CPUs, so the curve
//! flattens at the CPU count; the run records the machine so a reader can tell.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::compare::{machine, measured, Machine, Run};
use crate::pair::{Endpoints, Pair, SRC_PATH};
use crate::servers::find_tool;
use crate::workload::Workload;

/// One point of the curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Workload name.
    pub workload: String,
    /// Objects in the workload.
    pub object_count: usize,
    /// `--workers`.
    pub workers: usize,
    /// The run.
    pub run: Run,
}

/// The whole curve, as kept in the raw JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    /// Points in the order they ran.
    pub points: Vec<ScalePoint>,
    /// The machine.
    pub machine: Machine,
    /// The command, with placeholders.
    pub command: String,
}

/// Options of `scale`.
pub struct ScaleOptions {
    /// Workloads to run (default `large` and `small`).
    pub workloads: Vec<String>,
    /// Worker counts.
    pub workers: Vec<usize>,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// Where the raw JSON goes.
    pub out_dir: PathBuf,
}

/// Runs the curve.
pub fn scale(opts: &ScaleOptions) -> Result<ScaleReport> {
    let mut points = Vec::new();
    let mut servers = String::new();
    for name in &opts.workloads {
        let workload = Workload::named(name)?;
        let pair = Pair::start(Endpoints::Synthetic, &workload)?;
        servers = pair.server_version();
        let config = tempfile::NamedTempFile::new()?;
        std::fs::write(config.path(), pair.config_toml())?;
        for &workers in &opts.workers {
            let prefix = format!("scale-{workers}");
            let mut cmd = Command::new(&opts.laminar);
            cmd.arg("--config").arg(config.path()).args(["relay", "--json", "--workers", &workers.to_string()]);
            cmd.args([SRC_PATH, &format!("dst:dst/{prefix}")]);
            let run = measured("laminar", &mut cmd, workload.total_bytes)
                .with_context(|| format!("{name} at {workers} workers"))?;
            pair.verify(&prefix, &workload)?;
            eprintln!(
                "{name:>6} {workers:>2} workers: {:.0} MiB/s, {:.0} objects/s",
                run.throughput_bytes_per_second / f64::from(1 << 20),
                workload.object_count as f64 / run.wall_seconds
            );
            points.push(ScalePoint { workload: name.clone(), object_count: workload.object_count, workers, run });
        }
    }
    let rclone = find_tool("rclone").unwrap_or_default();
    let report = ScaleReport {
        points,
        machine: machine(&opts.laminar, &rclone, servers),
        command: format!("laminar --config laminar.toml relay --json --workers N {SRC_PATH} dst:dst/<prefix>"),
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    std::fs::write(opts.out_dir.join("scale.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}
