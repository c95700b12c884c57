//! A source and a destination endpoint, loaded with a workload, for one benchmark.
//!
//! `weed` is two real SeaweedFS servers (the workload is uploaded to the source first);
//! `synthetic` is two instances of the synthetic endpoint (the source generates the
//! workload's bytes, the destination checks and discards them). Either way the relay
//! under test sees remote `src` with the workload under `src/data/` and remote `dst`
//! with bucket `dst`, and [`Pair::verify`] checks what arrived.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::compare::{measured, Run};
use crate::servers::{find_tool, Weed};
use crate::synthetic::{Synthetic, SyntheticOptions};
use crate::workload::Workload;

/// Which servers a benchmark runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Two SeaweedFS servers.
    Weed,
    /// Two synthetic endpoints.
    Synthetic,
}

impl Endpoints {
    /// Parses `weed` or `synthetic`.
    pub fn parse(s: &str) -> Result<Endpoints> {
        match s {
            "weed" => Ok(Endpoints::Weed),
            "synthetic" => Ok(Endpoints::Synthetic),
            other => bail!("unknown endpoints {other:?}: use weed or synthetic"),
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Endpoints::Weed => "weed",
            Endpoints::Synthetic => "synthetic",
        }
    }
}

/// The bucket and prefix the workload is under at the source.
pub const SRC_PATH: &str = "src:src/data";

/// The running pair.
pub enum Pair {
    /// SeaweedFS.
    Weed {
        /// Source server.
        src: Box<Weed>,
        /// Destination server.
        dst: Box<Weed>,
    },
    /// Synthetic endpoints.
    Synthetic {
        /// Source endpoint, serving the workload.
        src: Synthetic,
        /// Destination endpoint.
        dst: Synthetic,
    },
}

#[derive(Deserialize)]
struct RcloneSize {
    count: u64,
    bytes: u64,
}

impl Pair {
    /// Starts the two endpoints and loads the workload at the source.
    pub fn start(endpoints: Endpoints, workload: &Workload) -> Result<Pair> {
        match endpoints {
            Endpoints::Weed => {
                let src = Weed::start().context("starting the source SeaweedFS")?;
                let dst = Weed::start().context("starting the destination SeaweedFS")?;
                src.create_bucket("src")?;
                dst.create_bucket("dst")?;
                let data = tempfile::tempdir()?;
                workload.generate(data.path())?;
                src.upload_dir(data.path(), "src/data").context("loading the workload")?;
                Ok(Pair::Weed { src: Box::new(src), dst: Box::new(dst) })
            }
            Endpoints::Synthetic => {
                let src = Synthetic::start(&SyntheticOptions::source(&workload.name, "src", "data/"))
                    .context("starting the source synthetic endpoint")?;
                let dst = Synthetic::start(&SyntheticOptions::sink()).context("starting the destination endpoint")?;
                // The source computes checksums and ETags on first use; do that now, so
                // the first timed run does not pay for it.
                src.manifest("src", "data/").context("warming up the source")?;
                Ok(Pair::Synthetic { src, dst })
            }
        }
    }

    /// Which endpoints these are.
    pub fn endpoints(&self) -> Endpoints {
        match self {
            Pair::Weed { .. } => Endpoints::Weed,
            Pair::Synthetic { .. } => Endpoints::Synthetic,
        }
    }

    /// A `laminar.toml` with remotes `src` and `dst`.
    pub fn config_toml(&self) -> String {
        match self {
            Pair::Weed { src, dst } => format!("{}\n{}", src.remote_toml("src"), dst.remote_toml("dst")),
            Pair::Synthetic { src, dst } => format!("{}\n{}", src.remote_toml("src"), dst.remote_toml("dst")),
        }
    }

    /// Environment that defines rclone remotes `src` and `dst`.
    pub fn rclone_env(&self) -> Vec<(String, String)> {
        let (mut a, b) = match self {
            Pair::Weed { src, dst } => (src.rclone_env("src"), dst.rclone_env("dst")),
            Pair::Synthetic { src, dst } => (src.rclone_env("src"), dst.rclone_env("dst")),
        };
        a.extend(b);
        a
    }

    /// Source and destination addresses.
    pub fn addrs(&self) -> (SocketAddr, SocketAddr) {
        match self {
            Pair::Weed { src, dst } => (src.addr(), dst.addr()),
            Pair::Synthetic { src, dst } => (src.addr(), dst.addr()),
        }
    }

    /// CPU seconds (user + system) both servers have used since they started.
    pub fn server_cpu_seconds(&self) -> Option<f64> {
        let pids = match self {
            Pair::Weed { src, dst } => [src.pid(), dst.pid()],
            Pair::Synthetic { src, dst } => [src.pid(), dst.pid()],
        };
        pids.iter().map(|pid| laminar_tuning::stat_cpu_seconds(&format!("/proc/{pid}/stat"))).sum()
    }

    /// Runs `cmd` as [`measured`] does, adding the CPU time the servers spent meanwhile.
    pub fn measured(&self, tool: &str, cmd: &mut Command, bytes: u64) -> Result<Run> {
        let before = self.server_cpu_seconds();
        let mut run = measured(tool, cmd, bytes)?;
        run.server_cpu_seconds = before.zip(self.server_cpu_seconds()).map(|(a, b)| b - a);
        Ok(run)
    }

    /// The servers' version, for the machine description.
    pub fn server_version(&self) -> String {
        match self {
            Pair::Weed { .. } => find_tool("weed")
                .and_then(|w| Command::new(w).arg("version").output().ok())
                .map(|o| {
                    format!("SeaweedFS {}", String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim())
                })
                .unwrap_or_default(),
            Pair::Synthetic { .. } => format!("laminar-bench synthetic endpoint {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Checks `dst/<prefix>` holds the workload: every key, size and CRC32C on synthetic
    /// endpoints; count, bytes and a downloaded sample on SeaweedFS.
    pub fn verify(&self, prefix: &str, workload: &Workload) -> Result<()> {
        match self {
            Pair::Weed { src, dst } => verify_weed(src, dst, prefix, workload),
            Pair::Synthetic { src, dst } => {
                let want = src.manifest("src", "data/")?;
                let got = dst.manifest("dst", &format!("{prefix}/"))?;
                if want.len() != workload.object_count {
                    bail!("the source lists {} objects, the workload has {}", want.len(), workload.object_count);
                }
                if got.len() != want.len() {
                    bail!("{prefix}: expected {} objects, found {}", want.len(), got.len());
                }
                for (w, g) in want.iter().zip(&got) {
                    let w_key = w.key.strip_prefix("data/").unwrap_or(&w.key);
                    let g_key = g.key.strip_prefix(&format!("{prefix}/")).unwrap_or(&g.key);
                    if w_key != g_key || w.size_bytes != g.size_bytes || w.crc32c != g.crc32c {
                        bail!("{prefix}: {g_key} ({} bytes, crc32c {:08x}) differs from the source's {w_key} ({} bytes, crc32c {:08x})", g.size_bytes, g.crc32c, w.size_bytes, w.crc32c);
                    }
                }
                Ok(())
            }
        }
    }
}

fn verify_weed(src: &Weed, dst: &Weed, prefix: &str, workload: &Workload) -> Result<()> {
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
        .args([SRC_PATH, &format!("dst:dst/{prefix}")])
        .output()?;
    if !out.status.success() {
        bail!("{prefix}: sample check failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
