//! Command-line parsing and output.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use laminar_engine::checksum::ChecksumAlgo;
use laminar_engine::relay::{self, Location, Progress, RelayOptions, Report};
use laminar_engine::runtime::DriverChoice;
use laminar_engine::Error;
use laminar_tuning::{parse_size, HumanBytes};

/// Exit code when every object was relayed and verified.
const EXIT_OK: u8 = 0;
/// Exit code when at least one object failed.
const EXIT_FAILED: u8 = 1;
/// Exit code for usage and configuration errors.
const EXIT_USAGE: u8 = 2;
/// Exit code when the destination's allowance for the day is spent (Google Drive's
/// daily upload limit): what was copied is verified, the rest can go on later
/// (EX_TEMPFAIL of sysexits.h: "try again later").
pub const EXIT_WAITING: u8 = 75;
/// Failures listed on standard error after a relay; `--json` carries every one kept.
const FAILURES_SHOWN_MAX: usize = 20;
/// Exit code after Ctrl-C or SIGTERM stopped a relay (128 + SIGINT, as shells do).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(name = "laminar", version, about = "Relay objects between stores through bounded RAM, verified end to end")]
struct Cli {
    /// Config file with [remotes.NAME] tables (default: $LAMINAR_CONFIG, ./laminar.toml, ~/.config/laminar/laminar.toml)
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    logs: crate::logs::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy every object under SRC to DST, skipping what is already there
    Relay(RelayArgs),
    /// Make DST like SRC: copy, then delete at DST what SRC no longer holds (after every copy succeeded)
    Sync(crate::sync::SyncArgs),
    /// Copy SRC to DST, then delete each source object once its copy is verified at DST
    Move(crate::sync::MoveArgs),
    /// Compare SRC with DST: objects missing, extra or differing (exit 1 on any difference)
    Check(crate::check::CheckArgs),
    /// List objects under a URL: size and key relative to it, one a line
    Ls(crate::list::ListArgs),
    /// List objects under a URL as JSON, as rclone lsjson does (one level unless -R)
    Lsjson(crate::list::LsjsonArgs),
    /// Count the objects under a URL and their bytes
    Size(crate::list::SizeArgs),
    /// Make a folder, with its parents (on S3: the bucket)
    Mkdir(crate::list::MkdirArgs),
    /// Generate a sample dataset, relay it through the engine, verify and clean up
    Demo(DemoArgs),
    /// Show what Laminar detects on this host and the resources it plans to use
    Plan(crate::plan::PlanArgs),
    /// Write a commented starter laminar.toml with this host's plan
    Init(crate::plan::InitArgs),
    /// Check the host's network and kernel settings against what a relay wants, or apply them
    Tune(crate::tune::TuneArgs),
    /// Run the appliance: the workers plus the HTTP control API, metrics and dashboard
    Serve(crate::serve::ServeArgs),
    /// Drive a running appliance: submit, list, show, pause, resume, cancel, scale, verify
    Job(crate::client::JobArgs),
    /// Get a Dropbox or Google Drive refresh token without a browser here, and print the remote's block
    Auth(crate::auth::AuthArgs),
    /// Print a shell completion script: laminar completion bash > /etc/bash_completion.d/laminar
    Completion {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (laminar.1 and one per command) into a directory, generated from these flags
    Man {
        /// Directory to write the pages into (e.g. /usr/local/share/man/man1)
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Engine flags shared by `relay` and `demo`.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Worker threads (default: one per CPU this process may use)
    #[arg(long)]
    pub workers: Option<usize>,
    /// Total RAM buffer, e.g. 512MiB (default: from the plan, see `laminar plan`)
    #[arg(long, value_name = "SIZE")]
    pub ram_buffer: Option<String>,
    /// Directory of the NVMe stage (default: $LAMINAR_DATA_DIR/stage, see `laminar plan`)
    #[arg(long, value_name = "DIR")]
    pub stage_dir: Option<PathBuf>,
    /// Most bytes the stage may hold, e.g. 200GiB (default: 90% of its free space)
    #[arg(long, value_name = "SIZE")]
    pub stage_max: Option<String>,
    /// Path of large objects: auto (RAM to RAM, spilling to the stage when the destination is slower), ram or stage
    #[arg(long, default_value = "auto")]
    pub route: String,
    /// With --route auto: spill once the source would sit idle this long in one part, waiting for the destination
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub spill_wait: String,
    /// Event loop: auto, io_uring or epoll
    #[arg(long, default_value = "auto")]
    pub driver: String,
    /// Hash computed in flight and sent with every upload: crc32c, crc64nvme, sha256, sha1 or md5
    #[arg(long, value_name = "ALGO", default_value = "crc32c")]
    pub hash: String,
    /// The former spelling of --hash, kept working with a warning
    #[arg(long = "checksum-algo", value_name = "ALGO", hide = true)]
    pub checksum_renamed: Option<String>,
    /// Objects in flight across all workers
    #[arg(long, default_value_t = 64)]
    pub transfers: usize,
    /// Bytes per second read across the relay, e.g. 100M (a bare number is KiB/s, as in rclone), off, or a timetable by local time such as "08:00,10M 19:00,off" or "Mon-08:00,10M Sat-00:00,off"
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
    /// Requests per second to the stores, across the relay, e.g. 10 or 0.5 (0 for no limit)
    #[arg(long, value_name = "N")]
    pub tpslimit: Option<f64>,
    /// Parts of large objects in flight across all workers (default: 4 per worker)
    #[arg(long)]
    pub part_streams: Option<usize>,
    /// Preferred multipart part size (default: from the plan; grows so that any object fits in 10,000 parts)
    #[arg(long, value_name = "SIZE")]
    pub part_size: Option<String>,
    /// Objects at least this large go as parallel parts
    #[arg(long, value_name = "SIZE", default_value = "32MiB")]
    pub multipart_cutoff: String,
    /// Retries per object or part for transient errors
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Skip the MD5 computed to check ETags, plain or multipart (saves CPU; CRC checks remain, and objects nothing else vouches for are checked hop by hop)
    #[arg(long)]
    pub no_md5: bool,
    /// A request in which no byte moves this long is retried (also the grace before --min-rate counts), e.g. 60s
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub idle_timeout: String,
    /// Fail objects that nothing at the source vouches for (a multipart ETag and no checksum) instead of landing them checked hop by hop
    #[arg(long)]
    pub require_end_to_end: bool,
    /// Slowest average rate a request may move at, once past --idle-timeout, before it is retried as stalled, e.g. 1KiB
    #[arg(long, value_name = "SIZE", default_value = "1KiB")]
    pub min_rate: String,
}

#[derive(Args)]
pub struct RelayArgs {
    /// Source: NAME:bucket/prefix, s3://bucket/prefix or file:///abs/path
    src: String,
    /// Destination, in the same forms
    dst: String,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    filters: crate::filters::FilterArgs,
    /// Print what would be copied and copy nothing
    #[arg(long)]
    dry_run: bool,
    /// An object the destination holds at the same size is the same (no hash or version looked at)
    #[arg(long, conflicts_with_all = ["ignore_existing", "immutable", "checksum"])]
    size_only: bool,
    /// An object the destination holds is the same when its size and the strongest hash both stores report match (size alone where they share none), whatever its time or version
    #[arg(long, conflicts_with_all = ["ignore_existing", "immutable"])]
    checksum: bool,
    /// Leave alone every object the destination already holds, whatever it holds
    #[arg(long, conflicts_with = "immutable")]
    ignore_existing: bool,
    /// Never overwrite: an object the destination holds that differs from the source fails instead
    #[arg(long)]
    immutable: bool,
    /// Print one JSON object with the results on stdout
    #[arg(long)]
    json: bool,
    /// Never use server-side copy, even within one store
    #[arg(long)]
    no_server_side_copy: bool,
    /// Google Drive: export Docs, Sheets, Slides and Drawings in the first of these formats that suits each (e.g. docx,xlsx,pptx,pdf), or none to skip them [default: docx,xlsx,pptx]
    #[arg(long, value_name = "FORMATS")]
    drive_export: Option<String>,
    /// Google Drive: follow shortcuts (one to a file copies the target's bytes under the shortcut's name, one to a folder is walked)
    #[arg(long)]
    drive_follow_shortcuts: bool,
    /// Start over the objects a killed or stopped run of this relay left half-copied (their uploads are aborted) instead of going on from what the destination holds
    #[arg(long)]
    no_resume: bool,
    /// Abort the uploads an earlier relay to this destination left open this long ago, or longer
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    orphan_age: String,
    /// Keep no journal (in $LAMINAR_DATA_DIR/laminar.db): a killed relay then starts its half-copied objects over
    #[arg(long)]
    no_journal: bool,
    /// Off a terminal, print a stats line this often on standard error (0 for none)
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    stats: String,
    /// Local sources: follow symbolic links (copy what they point at) instead of leaving them out with a note
    #[arg(long, short = 'L')]
    copy_links: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Small files to generate
    #[arg(long, default_value_t = 2000)]
    pub small_files: usize,
    /// Large files to generate
    #[arg(long, default_value_t = 3)]
    pub large_files: usize,
    /// Size of each large file
    #[arg(long, value_name = "SIZE", default_value = "96MiB")]
    pub large_size: String,
    /// Print one JSON object with the results on stdout
    #[arg(long)]
    pub json: bool,
    /// Relay between two local directories instead of Dropbox into Drive (emulated)
    #[arg(long)]
    pub local: bool,
}

/// A failure that ends the command, with its exit code.
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::Usage(_) => EXIT_USAGE,
            e if e.is_fatal() => EXIT_USAGE,
            _ => EXIT_FAILED,
        };
        Fail { code, message: e.to_string() }
    }
}

pub(crate) fn usage(message: String) -> Fail {
    Fail { code: EXIT_USAGE, message }
}

/// `--checksum ALGO`, the former spelling of `--hash ALGO`, told apart from the
/// `--checksum` comparison mode by what follows it: an algorithm's name (which no
/// URL is) makes it the old spelling, passed on as the hidden `--checksum-algo`.
fn renamed_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = args.collect();
    let is_algo = |a: &std::ffi::OsString| a.to_str().and_then(ChecksumAlgo::parse).is_some();
    let mut i = 0;
    while i < out.len() {
        let arg = out[i].to_str().unwrap_or("");
        if arg == "--" {
            break;
        }
        if arg == "--checksum" && out.get(i + 1).is_some_and(is_algo) {
            out[i] = "--checksum-algo".into();
        } else if let Some(algo) = arg.strip_prefix("--checksum=") {
            out[i] = format!("--checksum-algo={algo}").into();
        }
        i += 1;
    }
    out
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(renamed_flags(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    if let Err(e) = crate::logs::init(&cli.logs) {
        eprintln!("laminar: error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let result = match cli.command {
        Command::Relay(args) => run_relay(cli.config.as_deref(), args),
        Command::Sync(args) => crate::sync::run_sync(cli.config.as_deref(), args),
        Command::Move(args) => crate::sync::run_move(cli.config.as_deref(), args),
        Command::Check(args) => crate::check::run(cli.config.as_deref(), args),
        Command::Ls(args) => crate::list::run_ls(cli.config.as_deref(), args),
        Command::Lsjson(args) => crate::list::run_lsjson(cli.config.as_deref(), args),
        Command::Size(args) => crate::list::run_size(cli.config.as_deref(), args),
        Command::Mkdir(args) => crate::list::run_mkdir(cli.config.as_deref(), args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Plan(args) => crate::plan::run_plan(args),
        Command::Init(args) => crate::plan::run_init(args),
        Command::Tune(args) => crate::tune::run(args),
        Command::Serve(args) => crate::serve::run(cli.config.as_deref(), args),
        Command::Job(args) => crate::client::run(args),
        Command::Auth(args) => crate::auth::run(args),
        Command::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "laminar", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(EXIT_OK)
        }
        Command::Man { dir } => write_man(&dir),
    };
    let code = match result {
        Ok(code) => code,
        Err(fail) => {
            crate::logs::fatal(&fail.message);
            fail.code
        }
    };
    ExitCode::from(if crate::out::gone() { crate::out::EXIT_PIPE } else { code })
}

/// Writes `laminar.1` and `laminar-COMMAND.1` for each command into `dir`.
fn write_man(dir: &std::path::Path) -> Result<u8, Fail> {
    let failed = |e: std::io::Error| Fail {
        code: EXIT_FAILED,
        message: format!("writing man pages into {}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir).map_err(failed)?;
    Ok(EXIT_OK)
}

fn size_flag(flag: &str, value: &str) -> Result<u64, Fail> {
    parse_size(value).map_err(|e| usage(format!("{flag}: {e}")))
}

/// Detects the host and plans from the engine flags.
pub fn plan(engine: &EngineArgs) -> Result<laminar_tuning::plan::Plan, Fail> {
    let mut input = laminar_tuning::plan::PlanInput::default();
    if let Some(w) = engine.workers {
        if w == 0 || w > 1024 {
            return Err(usage(format!("--workers {w}: give a number from 1 to 1024")));
        }
        input.workers = Some(w);
    }
    if let Some(r) = &engine.ram_buffer {
        input.ram_buffer_bytes = Some(size_flag("--ram-buffer", r)?);
    }
    if let Some(p) = &engine.part_size {
        let p = size_flag("--part-size", p)?;
        if p == 0 {
            return Err(usage("--part-size 0: give a size such as 16MiB".to_string()));
        }
        input.part_size_bytes = Some(p);
    }
    if let Some(m) = &engine.stage_max {
        input.stage_max_bytes = Some(size_flag("--stage-max", m)?);
    }
    let stage_dir = engine.stage_dir.clone().unwrap_or_else(laminar_tuning::plan::default_stage_dir);
    if stage_dir.is_relative() {
        return Err(usage(format!("--stage-dir {}: give an absolute path", stage_dir.display())));
    }
    input.stage_dir = Some(stage_dir.clone());
    let host = laminar_tuning::host::detect(Some(&stage_dir));
    laminar_tuning::plan::plan(&host, &input).map_err(|e| usage(e.to_string()))
}

/// Turns engine flags into options, planned from the host where not given.
pub fn options(engine: &EngineArgs) -> Result<RelayOptions, Fail> {
    let plan = plan(engine)?;
    let mut opts =
        RelayOptions { workers: Some(plan.workers), ram_buffer_bytes: plan.ram_buffer_bytes, ..Default::default() };
    opts.driver = DriverChoice::parse(&engine.driver)
        .ok_or_else(|| usage(format!("--driver {:?}: use auto, io_uring or epoll", engine.driver)))?;
    let (flag, algo) = match &engine.checksum_renamed {
        Some(algo) => {
            tracing::warn!("--checksum ALGO is now --hash ALGO; --checksum {algo} still works for now");
            ("--checksum", algo)
        }
        None => ("--hash", &engine.hash),
    };
    opts.checksum = ChecksumAlgo::parse(algo)
        .ok_or_else(|| usage(format!("{flag} {algo:?}: use crc32c, crc64nvme, sha256, sha1 or md5")))?;
    if engine.transfers == 0 {
        return Err(usage("--transfers 0: give at least 1".to_string()));
    }
    opts.transfers = engine.transfers;
    if let Some(b) = &engine.bwlimit {
        opts.bwlimit = Some(laminar_engine::rate::Bwlimit::parse(b).map_err(usage)?);
    }
    if let Some(t) = engine.tpslimit {
        opts.tpslimit = laminar_engine::rate::tpslimit(t).map_err(usage)?;
    }
    if engine.part_streams == Some(0) {
        return Err(usage("--part-streams 0: give at least 1".to_string()));
    }
    opts.part_streams = engine.part_streams;
    opts.part_size_bytes = plan.part_size_bytes;
    opts.multipart_cutoff_bytes = size_flag("--multipart-cutoff", &engine.multipart_cutoff)?;
    opts.retries = engine.retries;
    opts.verify_md5 = !engine.no_md5;
    opts.require_end_to_end = engine.require_end_to_end;
    let idle_timeout = humantime::parse_duration(&engine.idle_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| usage(format!("--idle-timeout {:?}: give a duration such as 60s", engine.idle_timeout)))?;
    let min_rate_bytes_per_s = laminar_tuning::parse_size(engine.min_rate.trim_end_matches("/s"))
        .map_err(|_| usage(format!("--min-rate {:?}: give bytes per second such as 1KiB", engine.min_rate)))?;
    // The process's HTTP clients are made after this, by the workers.
    laminar_engine::http::set_limits(laminar_engine::http::Limits {
        idle_timeout,
        min_rate_bytes_per_s,
        ..laminar_engine::http::Limits::default()
    });
    opts.route = relay::Route::parse(&engine.route)
        .ok_or_else(|| usage(format!("--route {:?}: use auto, ram or stage", engine.route)))?;
    opts.spill_wait = humantime::parse_duration(&engine.spill_wait).map_err(|e| {
        usage(format!("--spill-wait {:?}: {e}; give a duration such as 5s or 500ms", engine.spill_wait))
    })?;
    if opts.route == relay::Route::Stage && plan.stage.quota_bytes == 0 {
        return Err(usage(format!(
            "--route stage: the stage at {} has no room (quota 0); give --stage-max or free space",
            plan.stage.dir.display()
        )));
    }
    opts.stage = Some(laminar_engine::stage::StageOptions { dir: plan.stage.dir, quota_bytes: plan.stage.quota_bytes });
    opts.sockets = Some(plan.sockets);
    Ok(opts)
}

/// A relay ready to run: both ends and the options its flags give.
pub struct Prepared {
    pub src: Location,
    pub dst: Location,
    pub opts: RelayOptions,
}

fn run_relay(config: Option<&std::path::Path>, args: RelayArgs) -> Result<u8, Fail> {
    let prepared = prepare(config, &args)?;
    let report = copy(prepared, &args)?;
    Ok(relay_exit(&report))
}

/// The exit status of a relay's report.
pub fn relay_exit(report: &Report) -> u8 {
    if report.stopped {
        EXIT_INTERRUPTED
    } else if report.objects_failed > 0 || report.objects_not_attempted > 0 {
        EXIT_FAILED
    } else if report.waiting.is_some() {
        EXIT_WAITING
    } else {
        EXIT_OK
    }
}

/// Reads the config and the relay's flags.
pub fn prepare(config: Option<&std::path::Path>, args: &RelayArgs) -> Result<Prepared, Fail> {
    let mut config = Config::load(config)?;
    // Flags for one kind of store become its remotes' keys (`export`, `follow_shortcuts`).
    if let Some(formats) = &args.drive_export {
        config.set_for_type("drive", "export", formats.clone().into());
    }
    if args.drive_follow_shortcuts {
        config.set_for_type("drive", "follow_shortcuts", true.into());
    }
    if args.copy_links {
        config.set_for_type("file", "copy_links", true.into());
        config.copy_links = true;
    }
    let every = humantime::parse_duration(&args.stats)
        .or_else(|e| if args.stats.trim() == "0" { Ok(Duration::ZERO) } else { Err(e) })
        .map_err(|e| {
            usage(format!("--stats {:?}: {e}; give a duration such as 10s or 1m, or 0 for none", args.stats))
        })?;
    crate::progress::set_stats_interval((!every.is_zero()).then_some(every));
    let src = config.location(&args.src)?;
    let dst = config.location(&args.dst)?;
    for note in [config.note(&args.src), config.note(&args.dst)].into_iter().flatten() {
        tracing::info!("{note}");
    }
    let mut opts = options(&args.engine)?;
    opts.filter = args.filters.build()?;
    opts.dry_run = args.dry_run;
    opts.compare = if args.size_only {
        relay::Compare::SizeOnly
    } else if args.ignore_existing {
        relay::Compare::IgnoreExisting
    } else if args.immutable {
        relay::Compare::Immutable
    } else if args.checksum {
        relay::Compare::Checksum
    } else {
        relay::Compare::Version
    };
    opts.server_side_copy = !args.no_server_side_copy;
    opts.resume = !args.no_resume;
    opts.orphan_age = humantime::parse_duration(&args.orphan_age)
        .map_err(|e| usage(format!("--orphan-age {:?}: {e}; give a duration such as 7d or 12h", args.orphan_age)))?;
    if !args.no_journal && !args.dry_run {
        opts.journal = Some(laminar_engine::journal::Journal::open(&laminar_tuning::plan::default_data_dir())?);
    }
    Ok(Prepared { src, dst, opts })
}

/// Runs a prepared relay with its progress and prints its report (as JSON only when
/// `--json` is given and `print_json`: a sync or move prints one object of its own).
pub fn copy_quietly(prepared: Prepared, args: &RelayArgs, print_json: bool) -> Result<Report, Fail> {
    let json = args.json;
    let dry_run = args.dry_run;
    let report = relay_with_progress(prepared.src, prepared.dst, prepared.opts, !json, &mut |p| {
        if !json {
            outln!("would copy {} -> {} ({})", p.src_key, p.dst_key, HumanBytes(p.size));
        }
    })?;
    if !json || print_json {
        print_report(&report, json, dry_run);
    }
    if report.objects_total == 0 && !json {
        tracing::info!("no objects under {}", args.src);
    }
    if let Some(w) = &report.waiting {
        tracing::warn!("{}", waiting_line(&report, w));
    }
    Ok(report)
}

fn copy(prepared: Prepared, args: &RelayArgs) -> Result<Report, Fail> {
    copy_quietly(prepared, args, true)
}

impl RelayArgs {
    /// Whether only a plan is wanted.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether one JSON object is wanted on stdout.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// What a relay that stopped at the destination's allowance did, and when the rest
/// can go on: one line for the operator.
pub fn waiting_line(report: &Report, w: &relay::Waiting) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(w.retry_at_unix_s);
    format!(
        "stopped at the destination's upload allowance: {} objects ({}) copied and verified, the rest left for \
         later; uploads can go on after about {} UTC: run the same relay again then, and what is copied is \
         skipped ({})",
        report.objects_copied,
        HumanBytes(report.bytes_copied),
        humantime::format_rfc3339_seconds(at).to_string().trim_end_matches('Z').replace('T', " "),
        w.reason
    )
}

/// Runs a relay with a progress bar on a terminal; Ctrl-C or SIGTERM stops it cleanly.
pub fn relay_with_progress(
    src: Location,
    dst: Location,
    opts: RelayOptions,
    show_progress: bool,
    on_plan: &mut dyn FnMut(&relay::Planned),
) -> Result<Report, Fail> {
    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let interrupted = laminar_tuning::catch_interrupts();
    let watcher = {
        let progress = progress.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                // Nobody reads what a dry run lists any more (`| head`): stop quietly.
                if crate::out::gone() {
                    progress.request_stop();
                    return;
                }
                if interrupted.load(Ordering::Acquire) {
                    tracing::warn!("interrupted: finishing transfers in flight and aborting unfinished uploads (Ctrl-C again to quit at once)");
                    progress.request_stop();
                    return;
                }
                // Unparked when the relay ends, so exit never waits out a tick.
                std::thread::park_timeout(Duration::from_millis(50));
            }
        })
    };
    let terminal = std::io::stderr().is_terminal();
    let bar = (show_progress && !opts.dry_run).then(|| {
        let progress = progress.clone();
        let done = done.clone();
        std::thread::spawn(move || crate::progress::show(&progress, &done, terminal))
    });
    let result = relay::relay(src, dst, opts, progress, on_plan);
    // Pairs with the Acquire loads in the watcher and the progress bar.
    done.store(true, Ordering::Release);
    watcher.thread().unpark();
    if let Some(bar) = bar {
        bar.thread().unpark();
        let _ = bar.join();
    }
    let _ = watcher.join();
    Ok(result?)
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    objects_total: u64,
    objects_copied: u64,
    objects_skipped: u64,
    objects_failed: u64,
    objects_not_attempted: u64,
    not_attempted_because: Option<&'a str>,
    objects_left_out: u64,
    bytes_copied: u64,
    bytes_skipped: u64,
    seconds: f64,
    throughput_bytes_per_second: f64,
    driver: Option<String>,
    workers: usize,
    ram_buffer_bytes: u64,
    dry_run: bool,
    stopped: bool,
    objects_planned: u64,
    peak_rss_bytes: Option<u64>,
    failures: &'a [relay::Failure],
    left_out: &'a [laminar_engine::backend::LeftOut],
    routes: &'a std::collections::BTreeMap<&'static str, u64>,
    route_decisions: &'a [relay::RouteDecision],
    objects_compressed: u64,
    stage_bytes_written: u64,
    throttle_cuts: u64,
    transfers_lowest: Option<usize>,
    objects_deferred: u64,
    bytes_deferred: u64,
    waiting: Option<&'a relay::Waiting>,
    bytes_resumed: u64,
    objects_resumed: u64,
    objects_restarted: u64,
    restarted: &'a [relay::Failure],
    objects_hop_by_hop: u64,
    hashes_compared: &'a std::collections::BTreeMap<String, u64>,
    checks: &'a [relay::ObjectChecks],
}

/// The `--json` object of a finished relay.
pub fn report_json(report: &Report, dry_run: bool) -> serde_json::Value {
    let rate = if report.seconds > 0.0 { report.bytes_copied as f64 / report.seconds } else { 0.0 };
    {
        let out = JsonReport {
            objects_total: report.objects_total,
            objects_copied: report.objects_copied,
            objects_skipped: report.objects_skipped,
            objects_failed: report.objects_failed,
            objects_not_attempted: report.objects_not_attempted,
            not_attempted_because: report.not_attempted_because.as_deref(),
            objects_left_out: report.objects_left_out,
            bytes_copied: report.bytes_copied,
            bytes_skipped: report.bytes_skipped,
            seconds: report.seconds,
            throughput_bytes_per_second: rate,
            driver: report.driver.map(|d| d.to_string()),
            workers: report.workers,
            ram_buffer_bytes: report.ram_buffer_bytes,
            dry_run,
            stopped: report.stopped,
            objects_planned: report.objects_planned,
            peak_rss_bytes: laminar_tuning::peak_rss_bytes(),
            failures: &report.failures,
            left_out: &report.left_out,
            routes: &report.routes,
            route_decisions: &report.route_decisions,
            objects_compressed: report.objects_compressed,
            stage_bytes_written: report.stage_bytes_written,
            throttle_cuts: report.throttle_cuts,
            transfers_lowest: report.transfers_lowest,
            objects_deferred: report.objects_deferred,
            bytes_deferred: report.bytes_deferred,
            waiting: report.waiting.as_ref(),
            bytes_resumed: report.bytes_resumed,
            objects_resumed: report.objects_resumed,
            objects_restarted: report.objects_restarted,
            restarted: &report.restarted,
            objects_hop_by_hop: report.objects_hop_by_hop,
            hashes_compared: &report.hashes_compared,
            checks: &report.checks,
        };
        serde_json::to_value(&out).expect("report serialises")
    }
}

/// Prints the summary (or JSON) for a finished relay.
pub fn print_report(report: &Report, json: bool, dry_run: bool) {
    let rate = if report.seconds > 0.0 { report.bytes_copied as f64 / report.seconds } else { 0.0 };
    if json {
        outln!("{}", report_json(report, dry_run));
        return;
    }
    if dry_run {
        outln!(
            "dry run: {} of {} objects would be copied, {} already there",
            report.objects_planned,
            report.objects_total,
            report.objects_skipped
        );
        return;
    }
    for f in report.failures.iter().take(FAILURES_SHOWN_MAX) {
        tracing::error!("failed: {}: {}", f.key, f.reason);
    }
    if report.objects_failed > FAILURES_SHOWN_MAX as u64 {
        tracing::error!(
            "failed: {} more, not listed here (--json lists them)",
            report.objects_failed - FAILURES_SHOWN_MAX as u64
        );
    }
    for l in &report.left_out {
        tracing::warn!("left out: {}: {}", l.key, l.reason);
    }
    if report.objects_left_out > report.left_out.len() as u64 {
        tracing::warn!("left out: {} more, not listed here", report.objects_left_out - report.left_out.len() as u64);
    }
    outln!(
        "{} objects: {} copied ({}), {} skipped, {} failed in {:.2}s, {}/s ({} workers, {}, {} RAM buffer)",
        report.objects_total,
        report.objects_copied,
        HumanBytes(report.bytes_copied),
        report.objects_skipped,
        report.objects_failed,
        report.seconds,
        HumanBytes(rate as u64),
        report.workers,
        report.driver.map(|d| d.to_string()).unwrap_or_default(),
        HumanBytes(report.ram_buffer_bytes),
    );
    if report.objects_not_attempted > 0 {
        outln!(
            "not attempted: {} objects, never begun ({}); nothing of them is at the destination and a run again \
             copies them",
            report.objects_not_attempted,
            report.not_attempted_because.as_deref().unwrap_or("the relay was stopped")
        );
    }
    if report.objects_hop_by_hop > 0 {
        outln!(
            "hop by hop: {} objects had nothing at the source to vouch for their bytes (e.g. a multipart ETag and no \
             checksum), so each read and upload was checked, not the object end to end; --require-end-to-end fails \
             such objects",
            report.objects_hop_by_hop
        );
    }
    if report.objects_restarted > 0 {
        outln!(
            "started over: {} objects (their bytes disagreed with the source's whole-object hash, or they changed at \
             the source while read) were read and sent again",
            report.objects_restarted
        );
    }
    if report.objects_resumed > 0 {
        outln!(
            "resumed: {} objects an earlier run left half-copied went on from what the destination held",
            report.objects_resumed
        );
    }
    if report.bytes_resumed > 0 {
        outln!(
            "resumed: {} that the destination held from failed attempts or an earlier run was not sent again",
            HumanBytes(report.bytes_resumed)
        );
    }
    if let Some(lowest) = report.transfers_lowest {
        outln!(
            "a store throttled: objects in flight were halved {} times, down to {lowest}, and climbed back as copies succeeded",
            report.throttle_cuts
        );
    }
}
