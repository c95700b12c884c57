//! The resource plan: workers and their CPUs, the RAM tier, the stage quota, part
//! sizes and connections, sized from the host by fixed rules that the plan states.
//!
//! Memory: 20% of memory is left to the OS and 10% more kept as a safety margin, and
//! never more than the cgroup allows or than is available now; within that, each
//! worker gets up to 1 GiB of RAM tier (more buys nothing on a relay: a worker's
//! share only needs to hold its parts in flight). Stage: 90% of the free space of its
//! file system, capped by `--stage-max`. Parts: 16 MiB unless a worker's share can't
//! hold its part streams at that size.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::Host;

/// RAM tier per worker the plan gives at most.
pub const RAM_PER_WORKER_MAX_BYTES: u64 = 1 << 30;
/// Share of memory left to the OS.
pub const OS_SHARE: f64 = 0.20;
/// Safety margin on what is left.
pub const SAFETY_MARGIN: f64 = 0.10;
/// Share of the stage file system's free space the stage may fill.
pub const STAGE_FREE_SHARE: f64 = 0.90;
/// Preferred part size.
pub const PART_SIZE_BYTES: u64 = 16 << 20;
/// The smallest part S3 accepts (except the last).
pub const PART_SIZE_MIN_BYTES: u64 = 5 << 20;
/// Part streams per worker.
pub const PART_STREAMS_PER_WORKER: usize = 4;
/// Objects in flight across the workers.
pub const TRANSFERS: usize = 64;

/// What the operator fixed; the rest is planned.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--ram-buffer`.
    pub ram_buffer_bytes: Option<u64>,
    /// `--stage-dir`.
    pub stage_dir: Option<PathBuf>,
    /// `--stage-max`.
    pub stage_max_bytes: Option<u64>,
    /// `--part-size`.
    pub part_size_bytes: Option<u64>,
}

/// The stage part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    /// Directory of stage files.
    pub dir: PathBuf,
    /// Bytes the stage may hold.
    pub quota_bytes: u64,
    /// Whether stage files use O_DIRECT (else buffered I/O, with `note` saying why).
    pub o_direct: bool,
    /// O_DIRECT alignment.
    pub block_bytes: u64,
    /// Why O_DIRECT is off, if it is.
    pub note: Option<String>,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Worker threads.
    pub workers: usize,
    /// CPU of each worker.
    pub worker_cpus: Vec<usize>,
    /// The whole RAM tier.
    pub ram_buffer_bytes: u64,
    /// Each worker's share.
    pub ram_buffer_per_worker_bytes: u64,
    /// What the memory rule allows in all.
    pub memory_budget_bytes: u64,
    /// Preferred multipart part size.
    pub part_size_bytes: u64,
    /// Parts in flight across the workers.
    pub part_streams: usize,
    /// Objects in flight across the workers.
    pub transfers: usize,
    /// Most connections to one endpoint.
    pub connections_per_endpoint: usize,
    /// The stage.
    pub stage: StagePlan,
    /// `io_uring` or `epoll`.
    pub driver: String,
    /// What every connection gets.
    pub sockets: crate::socket::SocketPolicy,
    /// Warnings and the reasons behind values, one line each.
    pub notes: Vec<String>,
}

/// Where state lives by default: `$LAMINAR_DATA_DIR`, else `/var/lib/laminar` for
/// root, else `$XDG_DATA_HOME/laminar` or `~/.local/share/laminar`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LAMINAR_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/laminar");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join("laminar");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local/share/laminar")
}

/// The default stage directory.
pub fn default_stage_dir() -> PathBuf {
    default_data_dir().join("stage")
}

/// Why a plan can't be made from what the operator fixed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Plans from `host`, honouring what `input` fixes.
pub fn plan(host: &Host, input: &PlanInput) -> Result<Plan, PlanError> {
    let mut notes = Vec::new();
    let cpus: Vec<usize> = host.cpus.iter().map(|c| c.id).collect();
    let workers = input.workers.unwrap_or(cpus.len()).max(1);
    let worker_cpus: Vec<usize> = (0..workers).map(|i| cpus.get(i % cpus.len().max(1)).copied().unwrap_or(i)).collect();
    if workers > cpus.len() && !cpus.is_empty() {
        notes.push(format!("{workers} workers on {} CPUs: workers share CPUs", cpus.len()));
    }

    let m = &host.memory;
    let total = m.total_bytes.unwrap_or(4 << 30);
    let ceiling = m.cgroup_limit_bytes.map_or(total, |c| c.min(total));
    let mut budget = (ceiling as f64 * (1.0 - OS_SHARE) * (1.0 - SAFETY_MARGIN)) as u64;
    if let Some(avail) = m.available_bytes {
        budget = budget.min((avail as f64 * (1.0 - SAFETY_MARGIN)) as u64);
    }
    let ram_buffer_bytes = match input.ram_buffer_bytes {
        Some(r) => {
            if let Some(limit) = m.cgroup_limit_bytes {
                if r > limit {
                    return Err(PlanError(format!(
                        "--ram-buffer {} is more than this cgroup may use ({}); give at most {}",
                        crate::HumanBytes(r),
                        crate::HumanBytes(limit),
                        crate::HumanBytes(budget)
                    )));
                }
            }
            if r > budget {
                notes.push(format!(
                    "--ram-buffer {} is above the memory rule's {} (80% of memory less 10%); the OS may swap",
                    crate::HumanBytes(r),
                    crate::HumanBytes(budget)
                ));
            }
            r
        }
        None => budget.min(RAM_PER_WORKER_MAX_BYTES * workers as u64).max(crate::RAM_BUFFER_DEFAULT_MIN_BYTES),
    };
    let per_worker = ram_buffer_bytes / workers as u64;

    let part_streams = PART_STREAMS_PER_WORKER * workers;
    let part_size_bytes = match input.part_size_bytes {
        Some(p) => p,
        None => {
            // A worker's share holds its part streams plus one, at the part size.
            let fit = per_worker / (PART_STREAMS_PER_WORKER as u64 + 1) / (1 << 20) * (1 << 20);
            if fit < PART_SIZE_BYTES {
                notes.push(format!(
                    "parts of {} (not {}) so that each worker's {} holds {} part streams",
                    crate::HumanBytes(fit.max(PART_SIZE_MIN_BYTES)),
                    crate::HumanBytes(PART_SIZE_BYTES),
                    crate::HumanBytes(per_worker),
                    PART_STREAMS_PER_WORKER
                ));
            }
            fit.clamp(PART_SIZE_MIN_BYTES, PART_SIZE_BYTES)
        }
    };

    let stage_dir = input.stage_dir.clone().unwrap_or_else(default_stage_dir);
    let fs = host.stage.as_ref().filter(|s| s.dir == stage_dir);
    let free = fs.and_then(|s| s.free_bytes);
    let mut quota_bytes = free.map_or(0, |f| (f as f64 * STAGE_FREE_SHARE) as u64);
    if let Some(max) = input.stage_max_bytes {
        // The operator's word wins; a disk that fills up anyway only sends parts
        // from the source instead of the stage.
        if let Some(f) = free.filter(|f| max > *f) {
            notes.push(format!(
                "--stage-max {} is more than the {} free at {}: when the disk fills, parts go from the source instead",
                crate::HumanBytes(max),
                crate::HumanBytes(f),
                stage_dir.display()
            ));
        }
        quota_bytes = max;
    }
    let (o_direct, note) = match fs {
        Some(s) if s.o_direct => (true, None),
        Some(s) => (
            false,
            Some(format!("{}; stage files use buffered I/O", s.o_direct_error.as_deref().unwrap_or("O_DIRECT failed"))),
        ),
        None => (false, Some("the stage directory was not probed".to_string())),
    };
    if let Some(n) = &note {
        notes.push(n.clone());
    }
    if fs.and_then(|s| s.rotational) == Some(true) {
        notes.push(format!(
            "{} is on a rotational disk (as the kernel reports it; virtual disks often say so): spilling to it is slow",
            stage_dir.display()
        ));
    }
    let block_bytes = fs.and_then(|s| s.logical_block_bytes).unwrap_or(4096).max(512);

    let driver = match &host.io_uring_unavailable {
        None => "io_uring".to_string(),
        Some(why) => {
            notes.push(format!("epoll driver: {why}"));
            "epoll".to_string()
        }
    };
    if let Some(limit) = m.cgroup_limit_bytes {
        notes.push(format!("cgroup memory limit {} respected", crate::HumanBytes(limit)));
    }
    Ok(Plan {
        workers,
        worker_cpus,
        ram_buffer_bytes,
        ram_buffer_per_worker_bytes: per_worker,
        memory_budget_bytes: budget,
        part_size_bytes,
        part_streams,
        transfers: TRANSFERS,
        connections_per_endpoint: TRANSFERS + part_streams,
        stage: StagePlan { dir: stage_dir, quota_bytes, o_direct, block_bytes, note },
        driver,
        sockets: crate::socket::SocketPolicy::for_host(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Cpu, Memory, StageFs};

    fn host(total: u64, avail: u64, cgroup: Option<u64>, cpus: usize) -> Host {
        Host {
            cpus: (0..cpus).map(|id| Cpu { id, node: Some(0), siblings: vec![] }).collect(),
            numa_nodes: 1,
            memory: Memory { total_bytes: Some(total), available_bytes: Some(avail), cgroup_limit_bytes: cgroup },
            stage: Some(StageFs {
                dir: PathBuf::from("/stage"),
                free_bytes: Some(100 << 30),
                rotational: Some(false),
                logical_block_bytes: Some(512),
                physical_block_bytes: Some(4096),
                o_direct: true,
                o_direct_error: None,
            }),
            nics: vec![],
            io_uring_unavailable: None,
            memlock_bytes: Some(8 << 20),
            kernel: "6.18".into(),
        }
    }

    fn input() -> PlanInput {
        PlanInput { stage_dir: Some(PathBuf::from("/stage")), ..PlanInput::default() }
    }

    #[test]
    fn memory_rule_and_cgroup_bound_the_ram_tier() {
        const GIB: u64 = 1 << 30;
        // 24 GiB box, 2 CPUs: 1 GiB per worker.
        let p = plan(&host(24 * GIB, 20 * GIB, None, 2), &input()).unwrap();
        assert_eq!(p.ram_buffer_bytes, 2 * GIB);
        assert_eq!(p.part_size_bytes, 16 << 20);
        assert_eq!(p.stage.quota_bytes, 90 * GIB);
        assert!(p.stage.o_direct);
        // A 1 GiB cgroup on a big box: 1 GiB * 0.8 * 0.9, never the host's memory.
        let p = plan(&host(256 * GIB, 200 * GIB, Some(GIB), 16), &input()).unwrap();
        assert_eq!(p.memory_budget_bytes, (GIB as f64 * 0.8 * 0.9) as u64);
        assert!(p.ram_buffer_bytes <= p.memory_budget_bytes);
        // Parts shrink to fit each worker's share.
        assert!(p.part_size_bytes < 16 << 20 && p.part_size_bytes >= PART_SIZE_MIN_BYTES);
        // Asking for more than the cgroup allows is refused with the figure to give.
        let mut i = input();
        i.ram_buffer_bytes = Some(2 * GIB);
        assert!(plan(&host(256 * GIB, 200 * GIB, Some(GIB), 16), &i).unwrap_err().0.contains("cgroup"));
        // --stage-max caps the quota.
        i.ram_buffer_bytes = None;
        i.stage_max_bytes = Some(GIB);
        assert_eq!(plan(&host(24 * GIB, 20 * GIB, None, 2), &i).unwrap().stage.quota_bytes, GIB);
    }
}
