//! `laminar-bench compare --endpoints cloud`: Laminar and rclone relaying one workload
//! between the Dropbox and Drive emulators (either way), alternately, in one run, under
//! one emulator profile ([`Profile`]).
//!
//! Both emulators run in this process on loopback, the source loaded with the workload.
//! rclone reaches them through the [`CloudProxy`] (its backends have fixed hosts);
//! Laminar runs through the same proxy (`laminar`, paying the same TLS) and directly
//! (`laminar-direct`, plain HTTP to the emulators, reported apart). Each run goes into a
//! fresh destination folder, is checked there by the emulator's own hashes (Drive's MD5,
//! Dropbox's content_hash) of every file, and is removed after. Per run: wall time,
//! CPU and peak RSS of the tool, and from the emulators' counters the API requests and
//! the throttled answers it drew.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use laminar_emulators::drive::{self, DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{self, content_hash_hex, DropboxEmulator, DropboxOptions};
use md5::Digest as _;
use serde::{Deserialize, Serialize};

use super::proxy::CloudProxy;
use super::rclone::{rclone_cloud_env, CloudRemote};
use super::{drive_routes, dropbox_routes};
use crate::compare::{machine, measured, Machine, Run};
use crate::servers::find_tool;
use crate::workload::{slices, ObjectSpec, Workload};

/// Which way the relay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Dropbox is the source, Drive the destination.
    DropboxToDrive,
    /// Drive is the source, Dropbox the destination.
    DriveToDropbox,
}

impl Direction {
    /// Parses `dropbox-to-drive` or `drive-to-dropbox`.
    pub fn parse(s: &str) -> Result<Direction> {
        match s {
            "dropbox-to-drive" => Ok(Direction::DropboxToDrive),
            "drive-to-dropbox" => Ok(Direction::DriveToDropbox),
            other => bail!("unknown direction {other:?}: use dropbox-to-drive or drive-to-dropbox"),
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Direction::DropboxToDrive => "dropbox-to-drive",
            Direction::DriveToDropbox => "drive-to-dropbox",
        }
    }
}

/// What the emulators do to a client: each figure with where it comes from.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `none` or `real`.
    pub name: &'static str,
    /// Dropbox's switches.
    pub dropbox: dropbox::Faults,
    /// Drive's switches.
    pub drive: drive::Faults,
    /// Each modelled figure and its source, for RESULTS.md.
    pub sources: &'static [(&'static str, &'static str)],
}

/// The profile names [`profile`] knows.
pub const PROFILE_NAMES: &str = "none, real";

/// Round trip added to every API call in `real`.
const REAL_LATENCY_MS: u64 = 60;
/// Per-connection cap, each direction, in `real`.
const REAL_CONNECTION_BYTES_PER_S: u64 = 40 << 20;
/// Access token lifetime in `real`: short, so tokens expire during a run.
const REAL_TOKEN_LIFETIME_S: u64 = 20;

/// The named profile.
pub fn profile(name: &str) -> Result<Profile> {
    match name {
        "none" => Ok(Profile {
            name: "none",
            dropbox: dropbox::Faults::default(),
            drive: drive::Faults::default(),
            sources: &[("none", "no latency, no caps, no limits: each tool's own cost")],
        }),
        "real" => Ok(Profile {
            name: "real",
            dropbox: dropbox::Faults {
                latency_ms: REAL_LATENCY_MS,
                throughput_bytes_per_s: REAL_CONNECTION_BYTES_PER_S,
                commits_concurrent_max: 1,
                commit_hold_ms: 50,
                token_lifetime_s: REAL_TOKEN_LIFETIME_S,
                ..dropbox::Faults::default()
            },
            drive: drive::Faults {
                latency_ms: REAL_LATENCY_MS,
                throughput_bytes_per_s: REAL_CONNECTION_BYTES_PER_S,
                creates_per_s_max: 10,
                token_lifetime_s: REAL_TOKEN_LIFETIME_S,
                ..drive::Faults::default()
            },
            sources: &[
                (
                    "latency 60 ms per API call",
                    "round trips of 40-80 ms to api.dropboxapi.com and www.googleapis.com from a cloud VM in \
                     another region (the issue's figure; rclone forum timings of single metadata calls)",
                ),
                (
                    "40 MiB/s per connection",
                    "single-stream transfer rates users report for both services (rclone docs: Drive \
                     `--drive-chunk-size` and Dropbox `--dropbox-chunk-size` raise per-file speed, which \
                     stays per connection)",
                ),
                (
                    "Drive: 10 files created per second per user, then 403 userRateLimitExceeded",
                    "rclone docs (drive, Limitations): Drive's rate limiting holds rclone to about 2 files \
                     per second with default pacing; Google's Drive API usage limits: a per-user limit on \
                     sustained writes (403 userRateLimitExceeded)",
                ),
                (
                    "Dropbox: one commit at a time per namespace, held 50 ms, else 429 too_many_write_operations",
                    "Dropbox performance guide (namespace lock: concurrent commits to one namespace collide; \
                     batch with upload_session/finish_batch_v2); rclone docs (dropbox, Batch mode uploads)",
                ),
                (
                    "tokens live 20 s",
                    "short-lived tokens (Dropbox 4 h, Google 1 h) shortened so every run sees them expire \
                     and be refreshed",
                ),
            ],
        }),
        other => bail!("unknown profile {other:?}: use one of {PROFILE_NAMES}"),
    }
}

/// The workloads of the cloud comparisons (not those of the S3 ones): `small` (5,000 ×
/// 64 KiB), `mixed` (1,000 × 16 KiB + 4 × 256 MiB), `large` (4 × 2 GiB), `photos` (a
/// photo library: 1,000 Pareto sizes, α = 1.3, 256 KiB to 64 MiB, in year/month/day
/// folders) and `tiny` (the test suite's). `scale` multiplies every size and `objects`
/// every group's count (to fit a smaller machine, or rclone's pace on Drive into a
/// session; RESULTS.md says when either was used).
pub fn cloud_workload(name: &str, scale: f64, objects: f64) -> Result<Workload> {
    if !(scale > 0.0 && scale <= 1.0) {
        bail!("--scale {scale} must be above 0 and at most 1");
    }
    if !(objects > 0.0 && objects <= 1.0) {
        bail!("--objects {objects} must be above 0 and at most 1");
    }
    let sized = |objects: Vec<ObjectSpec>| {
        objects
            .into_iter()
            .map(|o| ObjectSpec { size_bytes: ((o.size_bytes as f64) * scale) as u64, ..o })
            .collect::<Vec<_>>()
    };
    let kept = |count: usize| ((count as f64 * objects).round() as usize).max(1);
    let groups = |groups: &[(usize, u64)]| {
        let mut objects = Vec::new();
        for (g, (count, size)) in groups.iter().enumerate() {
            for i in 0..kept(*count) {
                objects.push(ObjectSpec { key: format!("g{g}-{size}/obj-{i:06}"), size_bytes: *size });
            }
        }
        objects
    };
    let specs = match name {
        "small" => groups(&[(5000, 64 << 10)]),
        "mixed" => groups(&[(1000, 16 << 10), (4, 256 << 20)]),
        "large" => groups(&[(4, 2 << 30)]),
        "tiny" => groups(&[(12, 64 << 10), (1, 24 << 20)]),
        "photos" => photo_library(kept(PHOTOS)),
        other => bail!("unknown cloud workload {other:?}: use small, mixed, large, photos or tiny"),
    };
    Ok(Workload::from_objects(name, sized(specs)))
}

/// A photo library: sizes from a Pareto distribution (most a few MiB, a tail of
/// videos), in `YYYY/MM/DD/` folders.
const PHOTOS: usize = 1000;

fn photo_library(count: usize) -> Vec<ObjectSpec> {
    let mut rng = fastrand::Rng::with_seed(11);
    (0..count)
        .map(|i| {
            let u = 1.0 - rng.f64();
            let size = ((256.0 * 1024.0) * u.powf(-1.0 / 1.3)).min((64u64 << 20) as f64) as u64;
            let (y, m, d) = (2015 + i % 10, 1 + (i / 10) % 12, 1 + (i / 120) % 28);
            let ext = if size > 16 << 20 { "mov" } else { "jpg" };
            ObjectSpec { key: format!("{y}/{m:02}/{d:02}/IMG_{i:05}.{ext}"), size_bytes: size }
        })
        .collect()
}

fn one() -> f64 {
    1.0
}

/// Options of the cloud comparison.
pub struct CloudOptions {
    /// Workload name ([`cloud_workload`]).
    pub workload: String,
    /// Size factor.
    pub scale: f64,
    /// Object count factor.
    pub objects: f64,
    /// Profile name ([`profile`]).
    pub profile: String,
    /// Which way.
    pub direction: Direction,
    /// Runs per tool.
    pub runs: usize,
    /// The laminar binary.
    pub laminar: PathBuf,
    /// Where to write the raw JSON.
    pub out_dir: PathBuf,
}

/// One run, with what the emulators counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudRun {
    /// Wall, CPU, RSS, throughput.
    #[serde(flatten)]
    pub run: Run,
    /// Files per wall second.
    pub objects_per_second: f64,
    /// API requests both emulators answered (token grants included).
    pub requests: u64,
    /// Throttled answers (429, 403 rate limits) both sent.
    pub throttled: u64,
    /// The requests by emulator and call (`dropbox:files/download`, `drive:upload.chunk`).
    #[serde(default)]
    pub requests_by_call: BTreeMap<String, u64>,
}

/// The whole comparison, as kept in the raw JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudComparison {
    /// The profile.
    pub profile: String,
    /// Which way.
    pub direction: Direction,
    /// The workload.
    pub workload: Workload,
    /// The size factor.
    pub scale: f64,
    /// The object count factor.
    #[serde(default = "one")]
    pub objects: f64,
    /// Runs in the order they happened.
    pub runs: Vec<CloudRun>,
    /// The machine.
    pub machine: Machine,
    /// The exact commands, with placeholders.
    pub commands: Vec<String>,
}

/// The tools, in the order they alternate.
pub const CLOUD_TOOLS: [&str; 4] = ["laminar", "laminar-direct", "rclone-default", "rclone-tuned"];

/// rclone's flags for these backends, as its docs recommend: more transfers and
/// checkers, bigger chunks, batched Dropbox commits, and a transaction pacer.
/// The pacer (`--tpslimit`) only where the profile limits the rate of calls.
pub fn rclone_cloud_flags(workload: &str, profile: &str) -> Vec<&'static str> {
    let mut flags = vec!["--drive-chunk-size", "64M", "--dropbox-chunk-size", "64M", "--dropbox-batch-mode", "sync"];
    flags.extend(match workload {
        "large" => ["--transfers", "4", "--checkers", "8"],
        _ => ["--transfers", "16", "--checkers", "16"],
    });
    if profile != "none" {
        flags.extend(["--tpslimit", "10"]);
    }
    flags
}

/// The two emulators, the proxy and the tools' configurations.
struct Clouds {
    dbx: DropboxEmulator,
    gd: DriveEmulator,
    proxy: CloudProxy,
    dir: tempfile::TempDir,
    rclone_env: Vec<(String, String)>,
    direct_config: PathBuf,
    proxied_config: PathBuf,
    /// Per key: size and the destination's hash of its bytes.
    expected: BTreeMap<String, (u64, String)>,
}

const ROOT: &str = "bench";

impl Clouds {
    fn start(p: &Profile, direction: Direction, workload: &Workload) -> Result<Clouds> {
        let dbx = DropboxEmulator::start(DropboxOptions { faults: p.dropbox.clone(), ..DropboxOptions::default() })
            .context("starting the Dropbox emulator")?;
        let gd = DriveEmulator::start(DriveOptions { faults: p.drive.clone(), ..DriveOptions::default() })
            .context("starting the Drive emulator")?;
        let dir = tempfile::tempdir()?;
        let (de, ge) = (dbx.endpoints(), gd.endpoints());
        let mut routes = dropbox_routes(&de)?;
        routes.extend(drive_routes(&ge)?);
        let proxy = CloudProxy::start(dir.path(), routes)?;
        let rclone_env = rclone_cloud_env(
            dir.path(),
            &proxy,
            &[("dbx", CloudRemote::Dropbox(&de)), ("gd", CloudRemote::Drive(&ge))],
        )?;
        let direct_config = dir.path().join("direct.toml");
        std::fs::write(&direct_config, format!("{}\n{}", dbx.remote_toml("dbx"), gd.remote_toml("gd")))?;
        let proxied_config = dir.path().join("proxied.toml");
        let proxied = format!(
            "[remotes.dbx]\ntype = \"dropbox\"\nrefresh_token = {:?}\napp_key = {:?}\napp_secret = {:?}\n\n\
             [remotes.gd]\ntype = \"drive\"\nclient_id = {:?}\nclient_secret = {:?}\nrefresh_token = {:?}\n",
            de.refresh_token, de.app_key, de.app_secret, ge.client_id, ge.client_secret, ge.refresh_token
        );
        std::fs::write(&proxied_config, proxied)?;
        let mut expected = BTreeMap::new();
        for o in &workload.objects {
            let mut bytes = Vec::with_capacity(o.size_bytes as usize);
            for s in slices(&o.key, 0, o.size_bytes) {
                bytes.extend_from_slice(s);
            }
            let hash = match direction {
                Direction::DropboxToDrive => hex::encode(md5::Md5::digest(&bytes)),
                Direction::DriveToDropbox => content_hash_hex(&bytes),
            };
            expected.insert(o.key.clone(), (o.size_bytes, hash));
            match direction {
                Direction::DropboxToDrive => {
                    dbx.insert(&format!("/{ROOT}/data/{}", o.key), bytes)?;
                }
                Direction::DriveToDropbox => {
                    gd.insert(&format!("{ROOT}/data/{}", o.key), bytes)?;
                }
            }
        }
        Ok(Clouds { dbx, gd, proxy, dir, rclone_env, direct_config, proxied_config, expected })
    }

    /// Requests by call and throttled answers both emulators have counted so far.
    fn counters(&self) -> (BTreeMap<String, u64>, u64) {
        let (d, g) = (self.dbx.stats(), self.gd.stats());
        let mut calls = BTreeMap::new();
        for (k, v) in d.requests {
            calls.insert(format!("dropbox:{k}"), v);
        }
        for (k, v) in g.requests {
            calls.insert(format!("drive:{k}"), v);
        }
        (calls, d.throttled + g.throttled.values().sum::<u64>())
    }

    /// Checks `folder` at the destination holds every file with its hash, then removes it.
    fn verify_and_clear(&self, direction: Direction, folder: &str) -> Result<()> {
        let mut got = BTreeMap::new();
        match direction {
            Direction::DropboxToDrive => {
                for e in self.gd.tree() {
                    let Some(rel) = e.path.strip_prefix(&format!("{ROOT}/{folder}/")) else { continue };
                    if let Some(md5) = e.md5 {
                        got.insert(rel.to_string(), (e.size_bytes, md5));
                    }
                }
                self.gd.remove(&format!("{ROOT}/{folder}"))?;
            }
            Direction::DriveToDropbox => {
                let prefix = format!("/{ROOT}/{folder}/").to_lowercase();
                for key in self.expected.keys() {
                    if let Some(meta) = self.dbx.metadata(&format!("/{ROOT}/{folder}/{key}")) {
                        got.insert(key.clone(), (meta.size, meta.content_hash));
                    }
                }
                let files = self.dbx.files();
                let extra = files.keys().filter(|k| k.to_lowercase().starts_with(&prefix)).count();
                if extra != got.len() {
                    bail!("{folder}: {extra} files in Dropbox, {} expected ones", got.len());
                }
                self.dbx.remove(&format!("/{ROOT}/{folder}"))?;
            }
        }
        if got != self.expected {
            let missing = self.expected.keys().filter(|k| !got.contains_key(*k)).count();
            let wrong = self.expected.iter().filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).count();
            bail!("{folder}: {missing} files missing, {wrong} with the wrong size or hash, of {}", self.expected.len());
        }
        Ok(())
    }
}

fn remotes(direction: Direction) -> (&'static str, &'static str) {
    match direction {
        Direction::DropboxToDrive => ("dbx", "gd"),
        Direction::DriveToDropbox => ("gd", "dbx"),
    }
}

fn source_url(direction: Direction) -> String {
    let (src, _) = remotes(direction);
    match direction {
        Direction::DropboxToDrive => format!("{src}:/{ROOT}/data"),
        Direction::DriveToDropbox => format!("{src}:{ROOT}/data"),
    }
}

fn dest_url(direction: Direction, folder: &str) -> String {
    let (_, dst) = remotes(direction);
    match direction {
        Direction::DropboxToDrive => format!("{dst}:{ROOT}/{folder}"),
        Direction::DriveToDropbox => format!("{dst}:/{ROOT}/{folder}"),
    }
}

/// Runs the comparison and writes its raw JSON to `out_dir`.
pub fn cloud_compare(opts: &CloudOptions) -> Result<CloudComparison> {
    let rclone = find_tool("rclone").context("rclone not found: run tests/run.sh once, or set LAMINAR_RCLONE")?;
    let workload = cloud_workload(&opts.workload, opts.scale, opts.objects)?;
    let p = profile(&opts.profile)?;
    let direction = opts.direction;
    let clouds = Clouds::start(&p, direction, &workload)?;
    let tuned = rclone_cloud_flags(&workload.name, p.name);
    let src = source_url(direction);
    let commands = vec![
        format!("HTTPS_PROXY=<proxy> SSL_CERT_FILE=<ca> laminar relay {src} <dst> --json"),
        format!("laminar relay {src} <dst> --json (direct to the emulators)"),
        format!("rclone copy {src} <dst>"),
        format!("rclone copy {} {src} <dst>", tuned.join(" ")),
    ];
    let mut runs = Vec::new();
    for i in 0..opts.runs {
        for tool in CLOUD_TOOLS {
            let folder = format!("run-{i}-{tool}");
            let dst = dest_url(direction, &folder);
            let mut cmd = match tool {
                "laminar" | "laminar-direct" => {
                    let mut c = Command::new(&opts.laminar);
                    let config = if tool == "laminar" { &clouds.proxied_config } else { &clouds.direct_config };
                    c.arg("--config").arg(config).args(["relay", &src, &dst, "--json"]);
                    c.args(crate::laminar_extra_args());
                    c.env("LAMINAR_DATA_DIR", clouds.dir.path().join("laminar-data"));
                    if tool == "laminar" {
                        c.env("HTTPS_PROXY", clouds.proxy.url()).env("SSL_CERT_FILE", clouds.proxy.ca_pem());
                    }
                    c
                }
                _ => {
                    let mut c = Command::new(&rclone);
                    c.envs(clouds.rclone_env.iter().cloned()).arg("copy");
                    // A log of every rclone run, for finding out what it waited on.
                    if let Some(dir) = std::env::var_os("LAMINAR_BENCH_RCLONE_LOG_DIR") {
                        let log = PathBuf::from(dir).join(format!("{folder}.log"));
                        c.arg("-vv").arg("--log-file").arg(log);
                    }
                    if tool == "rclone-tuned" {
                        c.args(&tuned);
                    }
                    c.args([&src, &dst]);
                    c
                }
            };
            let (requests_before, throttled_before) = clouds.counters();
            let run = measured(tool, &mut cmd, workload.total_bytes)?;
            let (calls_after, throttled_after) = clouds.counters();
            let requests_by_call: BTreeMap<String, u64> = calls_after
                .iter()
                .map(|(k, v)| (k.clone(), v - requests_before.get(k).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect();
            clouds.verify_and_clear(direction, &folder).with_context(|| format!("checking {tool}'s run {i}"))?;
            eprintln!(
                "{tool} run {i}: {:.2} s, {:.1} MiB/s",
                run.wall_seconds,
                run.throughput_bytes_per_second / (1u64 << 20) as f64
            );
            runs.push(CloudRun {
                objects_per_second: workload.object_count as f64 / run.wall_seconds,
                requests: requests_by_call.values().sum(),
                throttled: throttled_after - throttled_before,
                requests_by_call,
                run,
            });
        }
    }
    let servers =
        format!("laminar-emulators {} (Dropbox, Drive) behind the bench's TLS proxy", env!("CARGO_PKG_VERSION"));
    let comparison = CloudComparison {
        profile: p.name.to_string(),
        direction,
        workload,
        scale: opts.scale,
        objects: opts.objects,
        runs,
        machine: machine(&opts.laminar, &rclone, servers),
        commands,
    };
    std::fs::create_dir_all(&opts.out_dir)?;
    let raw = opts.out_dir.join(format!(
        "cloud-{}-{}-{}.json",
        comparison.profile,
        direction.name(),
        comparison.workload.name
    ));
    std::fs::write(&raw, serde_json::to_string_pretty(&comparison)?)
        .with_context(|| format!("writing {}", raw.display()))?;
    Ok(comparison)
}

/// A Markdown table of a cloud comparison: per tool the median and range of each figure,
/// and the ratios to rclone's best.
pub fn cloud_table(c: &CloudComparison) -> String {
    let gib = c.workload.total_bytes as f64 / (1u64 << 30) as f64;
    // An empty series (a tool with no runs) has no figures.
    let median = |v: Vec<f64>| if v.is_empty() { (0.0, 0.0, 0.0) } else { crate::report::stats(&v) };
    let of = |tool: &str| c.runs.iter().filter(|r| r.run.tool == tool).collect::<Vec<_>>();
    let best_rclone = ["rclone-default", "rclone-tuned"]
        .iter()
        .map(|t| median(of(t).iter().map(|r| r.run.throughput_bytes_per_second).collect()).0)
        .fold(0.0f64, f64::max);
    let mut out = String::from(
        "| tool | MiB/s (min-max) | files/s | CPU s/GiB | peak RSS MiB | requests/GiB | throttled | vs rclone's best |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for tool in CLOUD_TOOLS {
        let runs = of(tool);
        if runs.is_empty() {
            continue;
        }
        let mib = |r: &&CloudRun| r.run.throughput_bytes_per_second / (1u64 << 20) as f64;
        let (t, lo, hi) = median(runs.iter().map(mib).collect());
        let (ops, _, _) = median(runs.iter().map(|r| r.objects_per_second).collect());
        let (cpu, _, _) = median(runs.iter().map(|r| r.run.cpu_seconds / gib).collect());
        let (rss, _, _) = median(runs.iter().map(|r| r.run.max_rss_bytes as f64 / (1u64 << 20) as f64).collect());
        let (req, _, _) = median(runs.iter().map(|r| r.requests as f64 / gib).collect());
        let (thr, _, _) = median(runs.iter().map(|r| r.throttled as f64).collect());
        let ratio = if best_rclone > 0.0 { t * (1u64 << 20) as f64 / best_rclone } else { 0.0 };
        out.push_str(&format!(
            "| {tool} | {t:.1} ({lo:.1}-{hi:.1}) | {ops:.1} | {cpu:.2} | {rss:.0} | {req:.0} | {thr:.0} | {ratio:.2}x |\n"
        ));
    }
    out
}

/// RESULTS.md's section on the cloud comparisons: how they run, each profile's figures
/// and sources, and a table per comparison.
pub fn cloud_section(clouds: &[CloudComparison]) -> String {
    let mut md = String::from(
        "## Dropbox and Drive: Laminar and rclone\n\n`laminar-bench compare --endpoints cloud --profile P \
         --direction D --workload W`: both emulators in the benchmark's process on loopback, the source loaded \
         with the workload; rclone's own `dropbox` and `drive` backends reach them through the benchmark's \
         TLS-terminating proxy (`HTTPS_PROXY`, a CA the benchmark makes), as through a corporate proxy. `laminar` \
         goes through the same proxy (the same TLS cost); `laminar-direct` talks plain HTTP to the emulators. The \
         tools alternate, each run into a fresh folder, checked by the destination emulator's own hash of every \
         file (Drive's MD5, Dropbox's content_hash), then removed. `requests/GiB` and `throttled` are counted by \
         the emulators. These are emulators of the providers' documented APIs, not the services; the profiles \
         model their limits with the figures below.\n\n",
    );
    md.push_str("Targets:\n\n");
    md.push_str(&cloud_targets(clouds));
    md.push('\n');
    let mut seen = Vec::new();
    for c in clouds {
        if seen.contains(&c.profile) {
            continue;
        }
        seen.push(c.profile.clone());
        if let Ok(p) = profile(&c.profile) {
            md.push_str(&format!("Profile `{}`:\n\n", p.name));
            for (figure, source) in p.sources {
                md.push_str(&format!("- {figure}: {source}\n"));
            }
            md.push('\n');
        }
    }
    for c in clouds {
        let mut scale = if c.scale < 1.0 { format!(", sizes x{}", c.scale) } else { String::new() };
        if c.objects < 1.0 {
            scale.push_str(&format!(", counts x{}", c.objects));
        }
        md.push_str(&format!(
            "### `{}` {} under `{}` ({} files, {:.2} GiB{scale})\n\n",
            c.workload.name,
            c.direction.name(),
            c.profile,
            c.workload.object_count,
            c.workload.total_bytes as f64 / (1u64 << 30) as f64
        ));
        md.push_str(&cloud_table(c));
        md.push_str("\nCommands:\n\n");
        for cmd in &c.commands {
            md.push_str(&format!("    {cmd}\n"));
        }
        md.push('\n');
    }
    md
}

/// Median of `f` over `tool`'s runs in `c`.
fn median_of(c: &CloudComparison, tool: &str, f: impl Fn(&CloudRun) -> f64) -> Option<f64> {
    let v: Vec<f64> = c.runs.iter().filter(|r| r.run.tool == tool).map(f).collect();
    (!v.is_empty()).then(|| crate::report::stats(&v).0)
}

/// rclone's better median of `f` (higher is better when `higher`), and which flags.
fn rclone_best(c: &CloudComparison, f: impl Fn(&CloudRun) -> f64 + Copy, higher: bool) -> Option<(f64, &'static str)> {
    let a = median_of(c, "rclone-default", f).map(|v| (v, "default"));
    let b = median_of(c, "rclone-tuned", f).map(|v| (v, "tuned"));
    match (a, b) {
        (Some(a), Some(b)) => Some(if (a.0 >= b.0) == higher { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The targets, each against the comparisons that measure it: one row per
/// target and comparison, with the figure and whether it holds.
pub fn cloud_targets(clouds: &[CloudComparison]) -> String {
    let mut md = String::from("| target | comparison | measured | holds |\n|---|---|---|---|\n");
    let mut row = |target: &str, c: &CloudComparison, measured: String, holds: bool| {
        md.push_str(&format!(
            "| {target} | `{}` {} `{}` | {measured} | {} |\n",
            c.workload.name,
            c.direction.name(),
            c.profile,
            if holds { "yes" } else { "**no**" }
        ));
    };
    let tput = |r: &CloudRun| r.run.throughput_bytes_per_second;
    let ops = |r: &CloudRun| r.objects_per_second;
    for c in clouds {
        let gib = c.workload.total_bytes as f64 / (1u64 << 30) as f64;
        let lam_t = median_of(c, "laminar", tput);
        match (c.workload.name.as_str(), c.direction) {
            ("large", Direction::DriveToDropbox) => {
                if let (Some(l), Some((r, which))) = (lam_t, rclone_best(c, tput, true)) {
                    row(">= 4x rclone's best throughput", c, format!("{:.2}x (rclone {which})", l / r), l >= 4.0 * r);
                }
            }
            ("large", Direction::DropboxToDrive) => {
                let d = median_of(c, "rclone-default", tput);
                let t = median_of(c, "rclone-tuned", tput);
                if let (Some(l), Some(d), Some(t)) = (lam_t, d, t) {
                    row(
                        ">= 2x rclone default, ahead of tuned",
                        c,
                        format!("{:.2}x, {:.2}x", l / d, l / t),
                        l >= 2.0 * d && l > t,
                    );
                }
                if let (Ok(p), Some(l)) = (profile(&c.profile), lam_t) {
                    let cap = p.drive.throughput_bytes_per_s as f64;
                    if cap > 0.0 {
                        let streams = c.workload.object_count.min(4) as f64;
                        let share = l / (cap * streams);
                        row(
                            ">= 90% of the cap per Drive stream",
                            c,
                            format!("{:.0}% of {streams} x cap", share * 100.0),
                            share >= 0.9,
                        );
                    }
                }
            }
            _ => {
                if let (Some(l), Some((r, which))) = (median_of(c, "laminar", ops), rclone_best(c, ops, true)) {
                    row(">= 2x rclone's best files/s", c, format!("{:.2}x (rclone {which})", l / r), l >= 2.0 * r);
                }
                let thr = |r: &CloudRun| r.throttled as f64;
                if let (Some(l), Some((r, _))) = (median_of(c, "laminar", thr), rclone_best(c, thr, false)) {
                    row(
                        "fewer throttled answers than rclone",
                        c,
                        format!("{l:.0} vs {r:.0}"),
                        l < r || (l == 0.0 && r == 0.0),
                    );
                }
            }
        }
        let cpu = |r: &CloudRun| r.run.cpu_seconds / gib;
        if let (Some(l), Some((r, which))) = (median_of(c, "laminar", cpu), rclone_best(c, cpu, false)) {
            row("CPU per GiB <= 0.25x rclone's", c, format!("{:.2}x (rclone {which})", l / r), l <= 0.25 * r);
        }
        let over = c.runs.iter().filter(|r| r.run.tool.starts_with("laminar")).find_map(|r| {
            let bound = r.run.ram_buffer_bytes? + (64 << 20);
            (r.run.max_rss_bytes > bound).then_some(r.run.max_rss_bytes)
        });
        let peak = c.runs.iter().filter(|r| r.run.tool.starts_with("laminar")).map(|r| r.run.max_rss_bytes).max();
        if let Some(peak) = peak {
            let measured = format!("peak {:.0} MiB", peak as f64 / (1u64 << 20) as f64);
            row("peak RSS under the RAM buffer + 64 MiB", c, measured, over.is_none());
        }
    }
    md
}
