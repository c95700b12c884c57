//! `laminar plan` and `laminar init`: what the host offers, what Laminar will use,
//! and a starter config carrying those values.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use laminar_tuning::host::Host;
use laminar_tuning::plan::Plan;
use laminar_tuning::HumanBytes;

use crate::cli::{EngineArgs, Fail};

/// Flags of `laminar plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// Print one JSON document (the plan's fields at the top level, the detection under "host")
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Flags of `laminar init`.
#[derive(Args)]
pub struct InitArgs {
    /// Directory to write laminar.toml into
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
}

fn detect(engine: &EngineArgs) -> Result<(Host, Plan), Fail> {
    let plan = crate::cli::plan(engine)?;
    let host = laminar_tuning::host::detect(Some(&plan.stage.dir));
    Ok((host, plan))
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    }
}

pub fn run_plan(args: PlanArgs) -> Result<u8, Fail> {
    let (host, plan) = detect(&args.engine)?;
    if args.json {
        let mut doc = serde_json::to_value(&plan).expect("plan serialises");
        doc["host"] = serde_json::to_value(&host).expect("host serialises");
        outln!("{doc}");
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let cpus: Vec<String> = host.cpus.iter().map(|c| c.id.to_string()).collect();
    let smt = host.cpus.iter().filter(|c| !c.siblings.is_empty()).count();
    let m = &host.memory;
    let _ = writeln!(out, "Host");
    let _ = writeln!(
        out,
        "  {:<14} {} ({}), {} NUMA node(s), {} with SMT siblings",
        "CPUs",
        host.cpus.len(),
        cpus.join(","),
        host.numa_nodes,
        smt
    );
    let _ = writeln!(
        out,
        "  {:<14} {} total, {} available, cgroup limit {}",
        "memory",
        m.total_bytes.map_or("?".into(), |b| HumanBytes(b).to_string()),
        m.available_bytes.map_or("?".into(), |b| HumanBytes(b).to_string()),
        m.cgroup_limit_bytes.map_or("none".into(), |b| HumanBytes(b).to_string())
    );
    let _ = writeln!(
        out,
        "  {:<14} {}; io_uring {}; memlock {}",
        "kernel",
        host.kernel,
        if host.io_uring_unavailable.is_none() { "usable" } else { "unusable" },
        host.memlock_bytes.map_or("unlimited".into(), |b| HumanBytes(b).to_string())
    );
    if let Some(fs) = &host.stage {
        let _ = writeln!(
            out,
            "  {:<14} {}: {} free, {}, blocks {}/{} B (logical/physical), O_DIRECT {}",
            "stage fs",
            fs.dir.display(),
            fs.free_bytes.map_or("?".into(), |b| HumanBytes(b).to_string()),
            match fs.rotational {
                Some(true) => "rotational",
                Some(false) => "solid-state",
                None => "kind unknown",
            },
            fs.logical_block_bytes.map_or("?".into(), |b| b.to_string()),
            fs.physical_block_bytes.map_or("?".into(), |b| b.to_string()),
            if fs.o_direct { "works" } else { "refused" }
        );
    }
    for nic in &host.nics {
        let _ = writeln!(
            out,
            "  {:<14} {} {}, {}; GRO {} LRO {} TSO {}",
            "nic",
            nic.name,
            nic.speed_mbps.map_or("speed ?".into(), |s| format!("{s} Mbit/s")),
            nic.state,
            on_off(nic.gro),
            on_off(nic.lro),
            on_off(nic.tso)
        );
    }
    let _ = writeln!(out, "Plan");
    let cpus: Vec<String> = plan.worker_cpus.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(out, "  {:<14} {} (pinned to CPUs {})", "workers", plan.workers, cpus.join(","));
    let _ = writeln!(
        out,
        "  {:<14} {} ({} per worker; the memory rule allows {})",
        "RAM buffer",
        HumanBytes(plan.ram_buffer_bytes),
        HumanBytes(plan.ram_buffer_per_worker_bytes),
        HumanBytes(plan.memory_budget_bytes)
    );
    let _ = writeln!(
        out,
        "  {:<14} {}, quota {}, {}",
        "stage",
        plan.stage.dir.display(),
        HumanBytes(plan.stage.quota_bytes),
        if plan.stage.o_direct { "O_DIRECT" } else { "buffered I/O" }
    );
    let _ = writeln!(
        out,
        "  {:<14} {} parts, {} part streams, {} transfers, at most {} connections per endpoint",
        "concurrency",
        HumanBytes(plan.part_size_bytes),
        plan.part_streams,
        plan.transfers,
        plan.connections_per_endpoint
    );
    let _ = writeln!(out, "  {:<14} {}", "driver", plan.driver);
    let _ = writeln!(out, "  {:<14} {}", "sockets", plan.sockets.describe());
    if !plan.notes.is_empty() {
        let _ = writeln!(out, "Notes");
        for n in &plan.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    Ok(0)
}

pub fn run_init(args: InitArgs) -> Result<u8, Fail> {
    let path = args.dir.join("laminar.toml");
    if path.exists() {
        return Err(Fail {
            code: 2,
            message: format!("{} exists; laminar init never overwrites a config (move it away first)", path.display()),
        });
    }
    let (_, plan) = detect(&args.engine)?;
    let text = format!(
        r#"# laminar.toml: remotes for `laminar relay`, `laminar serve` and `laminar job`.
# Written by `laminar init` from this host's plan (`laminar plan` shows how it was
# reached). The engine settings below are what Laminar uses when no flag says
# otherwise; each is a command-line flag (shown), so they are comments here.
#
#   --workers {workers}            # one pinned worker per CPU
#   --ram-buffer {ram}       # RAM tier: 80% of memory, less 10%, at most 1 GiB per worker
#   --part-size {part}         # multipart part size
#   --stage-dir {stage_dir}
#   --stage-max {quota}       # 90% of the stage file system's free space
#   --route auto              # large objects RAM to RAM, spilling to the stage when the destination is slower
#
# URLs name a remote and a path in it: NAME:bucket/prefix (s3) or NAME:path (file).

# An S3-compatible store. Credentials may be given inline, from a file
# (access_key_id_file) or from an environment variable (access_key_id_env).
[remotes.src]
type = "s3"
endpoint = "https://s3.us-east-1.amazonaws.com"
region = "us-east-1"
access_key_id_env = "AWS_ACCESS_KEY_ID"
secret_access_key_env = "AWS_SECRET_ACCESS_KEY"
# path_style = false       # true for most self-hosted stores (MinIO, SeaweedFS)

# A second S3-compatible store, e.g. a local SeaweedFS or MinIO.
[remotes.dst]
type = "s3"
endpoint = "http://127.0.0.1:8333"
region = "us-east-1"
access_key_id_file = "/etc/laminar/dst.key-id"
secret_access_key_file = "/etc/laminar/dst.secret"
path_style = true

# A local directory tree.
[remotes.disk]
type = "file"
root = "/srv/data"
"#,
        workers = plan.workers,
        ram = HumanBytes(plan.ram_buffer_bytes).to_string().replace(' ', ""),
        part = HumanBytes(plan.part_size_bytes).to_string().replace(' ', ""),
        stage_dir = plan.stage.dir.display(),
        quota = HumanBytes(plan.stage.quota_bytes).to_string().replace(' ', ""),
    );
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Fail { code: 2, message: format!("cannot create {}: {e}", args.dir.display()) })?;
    // create_new: a file that appeared since the check above is not overwritten either.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Fail { code: 2, message: format!("cannot write {}: {e}", path.display()) })?;
    file.write_all(text.as_bytes())
        .map_err(|e| Fail { code: 2, message: format!("cannot write {}: {e}", path.display()) })?;
    outln!("wrote {}", path.display());
    Ok(0)
}
