//! `laminar-bench`: benchmarks that put Laminar beside rclone and beside the machine's
//! own limits.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use laminar_bench::compare::{self, CompareOptions};
use laminar_bench::limit::{self, BareMode, BareRelay, LimitOptions};
use laminar_bench::pair::{Endpoints, Pair, SRC_PATH};
use laminar_bench::report;
use laminar_bench::scale::{self, ScaleOptions};
use laminar_bench::synthetic::{self, SyntheticOptions};
use laminar_bench::workload::Workload;

#[derive(Parser)]
#[command(name = "laminar-bench", version, about = "Benchmarks of Laminar beside rclone and the machine's limits")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The NVMe stage's sequential write and read beside fio's on the same file system
    Stage {
        /// Directory on the file system to measure (default: the temp dir; not /dev/shm)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bytes per run
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// Bytes per request
        #[arg(long, default_value = "1MiB")]
        block: String,
        /// Requests in flight
        #[arg(long, default_value_t = 4)]
        depth: usize,
        /// Runs per tool and direction
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The laminar binary (default: next to this one)
        #[arg(long)]
        laminar: Option<PathBuf>,
        /// Where raw JSON goes
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rewrite bench/RESULTS.md from all raw JSON in --out
        #[arg(long)]
        write_results: bool,
    },
    /// Relay a workload with Laminar and rclone, alternately, between the same endpoints
    Compare {
        /// small, large, mixed, pareto, or tiny (for tests)
        #[arg(long, default_value = "mixed")]
        workload: String,
        /// weed (two SeaweedFS servers), synthetic (two synthetic endpoints) or cloud (the
        /// Dropbox and Drive emulators; workloads small, mixed, large, photos, tiny)
        #[arg(long, default_value = "weed")]
        endpoints: String,
        /// With cloud: the emulators' profile, none or real
        #[arg(long, default_value = "none")]
        profile: String,
        /// With cloud: dropbox-to-drive or drive-to-dropbox
        #[arg(long, default_value = "dropbox-to-drive")]
        direction: String,
        /// With cloud: a factor (0 to 1) on every object's size, for a smaller machine
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// With cloud: a factor (0 to 1) on every group's object count
        #[arg(long, default_value_t = 1.0)]
        objects: f64,
        /// Runs per tool
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The laminar binary (default: next to this one)
        #[arg(long)]
        laminar: Option<PathBuf>,
        /// Where raw JSON goes
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rewrite bench/RESULTS.md from all raw JSON in --out
        #[arg(long)]
        write_results: bool,
    },
    /// Measure a bare relay (the ceiling) beside Laminar on synthetic endpoints
    Limit {
        /// small, large, mixed, pareto, or tiny
        #[arg(long, default_value = "large")]
        workload: String,
        /// synthetic (the relay's own ceiling), or weed (two SeaweedFS servers, with
        /// rclone beside: the least wall time any relay could reach there)
        #[arg(long, default_value = "synthetic")]
        endpoints: String,
        /// Runs per tool
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Connection pairs of the bare relay
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// The laminar binary (default: next to this one)
        #[arg(long)]
        laminar: Option<PathBuf>,
        /// Where raw JSON goes
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rewrite bench/RESULTS.md from all raw JSON in --out
        #[arg(long)]
        write_results: bool,
    },
    /// Laminar's throughput at each worker count on synthetic endpoints
    Scale {
        /// Worker counts, comma-separated
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        workers: Vec<usize>,
        /// Workloads, comma-separated
        #[arg(long, value_delimiter = ',', default_value = "large,small")]
        workloads: Vec<String>,
        /// The laminar binary (default: next to this one)
        #[arg(long)]
        laminar: Option<PathBuf>,
        /// Where raw JSON goes
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rewrite bench/RESULTS.md from all raw JSON in --out
        #[arg(long)]
        write_results: bool,
    },
    /// The external sorter on a large unordered listing, beside a plain in-memory sort
    Sort {
        /// Keys in the listing
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        /// The sorter's memory budget
        #[arg(long, default_value = "64MiB")]
        budget: String,
        /// Directory the sorter spills to (default: the temp dir)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seed of the generated listing
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Skip the in-memory sort beside it (which holds the whole listing)
        #[arg(long)]
        no_baseline: bool,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Kill a relay with SIGKILL at random points, resume it each time, and check that
    /// nothing was lost, corrupted or sent twice
    Chaos {
        /// Kills before the run that is let finish
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// The test suite's small run
        #[arg(long)]
        tiny: bool,
        /// Seed of the kill points and the data
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The laminar binary (default: next to this one)
        #[arg(long)]
        laminar: Option<PathBuf>,
        /// Where raw JSON goes
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rewrite bench/RESULTS.md from all raw JSON in --out
        #[arg(long)]
        write_results: bool,
    },
    /// Regenerate bench/RESULTS.md and the chart from the raw JSON
    Report {
        /// Where raw JSON is
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Start a loaded endpoint pair and keep it up until stdin closes, for profiling by hand
    Endpoints {
        /// weed or synthetic
        #[arg(long, default_value = "weed")]
        endpoints: String,
        /// The workload to load at the source
        #[arg(long, default_value = "mixed")]
        workload: String,
        /// Where to write a laminar.toml with remotes `src` and `dst`
        #[arg(long)]
        config_out: PathBuf,
    },
    /// Run a synthetic S3 endpoint (started by the benchmarks; exits when stdin closes)
    #[command(hide = true)]
    SyntheticServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Serve this workload's objects read-only
        #[arg(long)]
        workload: Option<String>,
        #[arg(long, default_value = "src")]
        source_bucket: String,
        #[arg(long, default_value = "data/")]
        prefix: String,
        /// Tokio worker threads (default: one per CPU)
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The bare relay itself (run by `limit` as a child process)
    #[command(hide = true)]
    BareRelay {
        #[arg(long)]
        src: SocketAddr,
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        workload: String,
        #[arg(long)]
        dst_prefix: String,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// relay, get (source only) or put (destination only)
        #[arg(long, default_value = "relay")]
        mode: String,
        /// A laminar.toml whose remotes `src` and `dst` sign the requests (default: unsigned)
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("laminar-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn laminar_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let laminar = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("laminar"),
    };
    anyhow::ensure!(
        laminar.is_file(),
        "{} not found: build it (cargo build --release) or pass --laminar",
        laminar.display()
    );
    Ok(laminar)
}

fn write_results(out: &std::path::Path) -> Result<()> {
    let path = report::write(out)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Compare {
            workload,
            endpoints,
            profile,
            direction,
            scale,
            objects,
            runs,
            laminar,
            out,
            write_results: write,
        } if endpoints == "cloud" => {
            let opts = laminar_bench::cloud::compare::CloudOptions {
                workload,
                scale,
                objects,
                profile,
                direction: laminar_bench::cloud::compare::Direction::parse(&direction)?,
                runs,
                laminar: laminar_binary(laminar)?,
                out_dir: out.clone(),
            };
            let c = laminar_bench::cloud::compare::cloud_compare(&opts)?;
            println!("{}", laminar_bench::cloud::compare::cloud_table(&c));
            if write {
                write_results(&out)?;
            }
        }
        Cmd::Compare { workload, endpoints, runs, laminar, out, write_results: write, .. } => {
            let opts = CompareOptions {
                workload,
                endpoints: Endpoints::parse(&endpoints)?,
                runs,
                laminar: laminar_binary(laminar)?,
                out_dir: out.clone(),
            };
            let c = compare::compare(&opts)?;
            println!("{}", report::table(&c));
            if write {
                write_results(&out)?;
            }
        }
        Cmd::Limit { workload, endpoints, runs, connections, laminar, out, write_results: write } => {
            let opts = LimitOptions {
                workload,
                endpoints: Endpoints::parse(&endpoints)?,
                runs,
                connections,
                laminar: laminar_binary(laminar)?,
                bench: std::env::current_exe()?,
                out_dir: out.clone(),
            };
            let l = limit::limit(&opts)?;
            println!("{}", report::runs_table(&l.runs, &limit::limit_tools(opts.endpoints), l.workload.object_count));
            if write {
                write_results(&out)?;
            }
        }
        Cmd::Scale { workers, workloads, laminar, out, write_results: write } => {
            anyhow::ensure!(workers.iter().all(|&w| w > 0), "--workers: each count must be at least 1");
            let opts = ScaleOptions { workloads, workers, laminar: laminar_binary(laminar)?, out_dir: out.clone() };
            scale::scale(&opts)?;
            if write {
                write_results(&out)?;
            }
        }
        Cmd::Chaos { kills, tiny, seed, laminar, out, write_results: write } => {
            let opts = laminar_bench::chaos::ChaosOptions {
                kills,
                tiny,
                laminar: laminar_binary(laminar)?,
                seed,
                out_dir: Some(out.clone()),
            };
            let report = laminar_bench::chaos::run(&opts)?;
            println!("{}", report.summary());
            if write {
                write_results(&out)?;
            }
            anyhow::ensure!(report.clean(), "something was lost, corrupted or sent twice: {}", report.summary());
        }
        Cmd::Report { out } => write_results(&out)?,
        Cmd::Sort { keys, budget, dir, seed, no_baseline, json } => {
            let memory_budget_bytes = usize::try_from(laminar_tuning::parse_size(&budget)?)?;
            let opts = laminar_bench::sort::SortBenchOptions {
                keys,
                memory_budget_bytes,
                dir: dir.unwrap_or_else(std::env::temp_dir),
                seed,
                baseline: !no_baseline,
            };
            let report = laminar_bench::sort::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", laminar_bench::sort::summary(&report));
            }
        }
        Cmd::Stage { dir, size, block, depth, runs, laminar, out, write_results: write } => {
            let size_bytes = laminar_tuning::parse_size(&size)?;
            let block_bytes = laminar_tuning::parse_size(&block)? as usize;
            let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("laminar-bench-stage"));
            let opts = laminar_bench::stage::StageBenchOptions {
                dir,
                size_bytes,
                block_bytes,
                depth,
                runs,
                laminar: laminar_binary(laminar)?,
                out_dir: Some(out.clone()),
            };
            let report = laminar_bench::stage::run(&opts)?;
            println!("{}", laminar_bench::stage::section(&report));
            if write {
                write_results(&out)?;
            }
        }
        Cmd::SyntheticServer { listen, workload, source_bucket, prefix, threads } => {
            anyhow::ensure!(listen.ip().is_loopback(), "--listen {listen}: the synthetic endpoint binds loopback only");
            let opts = SyntheticOptions { source: workload.map(|w| (w, source_bucket, prefix)), threads };
            synthetic::serve(listen, &opts)?;
        }
        Cmd::Endpoints { endpoints, workload, config_out } => {
            let workload = Workload::named(&workload)?;
            let pair = Pair::start(Endpoints::parse(&endpoints)?, &workload)?;
            std::fs::write(&config_out, pair.config_toml())?;
            let env: Vec<String> = pair.rclone_env().iter().map(|(k, v)| format!("{k}={v}")).collect();
            let (src, dst) = pair.addrs();
            println!("source {src}, destination {dst}; {} written", config_out.display());
            println!("rclone environment: {}", env.join(" "));
            println!("relay {SRC_PATH} to dst:dst/<prefix>; close stdin (Ctrl-D) to stop");
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        }
        Cmd::BareRelay { src, dst, workload, dst_prefix, connections, mode, config } => {
            let workload = Workload::named(&workload)?;
            let credentials = match config {
                Some(path) => Some((s3_remote(&path, "src", "src")?, s3_remote(&path, "dst", "dst")?)),
                None => None,
            };
            let relay = BareRelay {
                src,
                src_bucket: "src".into(),
                src_prefix: "data/".into(),
                dst,
                dst_bucket: "dst".into(),
                dst_prefix: format!("{dst_prefix}/"),
                connections,
                part_size_bytes: 16 << 20,
                multipart_cutoff_bytes: 32 << 20,
                mode: BareMode::parse(&mode)?,
                credentials,
            };
            let moved = relay.run(&workload).context("bare relay")?;
            anyhow::ensure!(moved == workload.total_bytes, "moved {moved} bytes of {}", workload.total_bytes);
        }
    }
    Ok(())
}

/// The S3 config of remote `name` in the config file at `path`, for `bucket`.
fn s3_remote(
    path: &std::path::Path,
    name: &str,
    bucket: &str,
) -> anyhow::Result<laminar_engine::backend::s3::S3Config> {
    use laminar_engine::backend::{registry, s3::S3RemoteConfig};
    let text = std::fs::read_to_string(path)?;
    let file: toml::Table = toml::from_str(&text)?;
    let mut table = file
        .get("remotes")
        .and_then(|r| r.get(name))
        .and_then(|t| t.as_table())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{} has no [remotes.{name}]", path.display()))?;
    table.remove("type");
    let config: S3RemoteConfig = registry::parse(name, "s3", table)?;
    Ok(config.resolve(name, bucket)?)
}
