//! `laminar check SRC DST`: the integrity check without a server. Both listings are
//! merge-joined; each object is missing, extra, differing or the same, judged by the
//! strongest hash both stores report (or Laminar's record of the source version), or
//! with `--download` by reading both copies again. Exit 1 on any difference.

use std::path::Path;

use clap::Args;
use laminar_engine::checksum::ChecksumAlgo;
use laminar_engine::relay::{self, CheckOptions, ProblemKind, RelayOptions, Unvouched, VerifyProgress, VerifyReport};
use laminar_engine::runtime::DriverChoice;
use laminar_tuning::HumanBytes;

use crate::cli::{usage, Fail};
use crate::config::Config;
use crate::filters::FilterArgs;

/// Differences shown on standard error; `--json` carries every one kept.
const SHOWN_MAX: usize = 20;

/// Flags of `laminar check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Source: NAME:bucket/prefix, s3://bucket/prefix or file:///abs/path
    src: String,
    /// Destination, in the same forms
    dst: String,
    /// Read both copies of every object again and compare their checksums, instead of trusting the stores' hashes
    #[arg(long)]
    download: bool,
    /// Only check that the source's objects are at the destination, intact; objects only the destination holds are no difference
    #[arg(long)]
    one_way: bool,
    /// Checksum recomputed with --download: crc32c, crc64nvme, sha256, sha1 or md5
    #[arg(long, default_value = "crc32c")]
    hash: String,
    /// Event loop: auto, io_uring or epoll
    #[arg(long, default_value = "auto")]
    driver: String,
    /// Retries per request for transient errors
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// Print one JSON object with the results on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filters: FilterArgs,
}

pub fn run(config: Option<&Path>, args: CheckArgs) -> Result<u8, Fail> {
    let config = Config::load(config)?;
    let src = config.location(&args.src)?;
    let dst = config.location(&args.dst)?;
    let mut opts = RelayOptions {
        driver: DriverChoice::parse(&args.driver)
            .ok_or_else(|| usage(format!("--driver {:?}: use auto, io_uring or epoll", args.driver)))?,
        checksum: ChecksumAlgo::parse(&args.hash)
            .ok_or_else(|| usage(format!("--hash {:?}: use crc32c, crc64nvme, sha256, sha1 or md5", args.hash)))?,
        retries: args.retries,
        ..RelayOptions::default()
    };
    opts.filter = args.filters.build()?;
    let progress = std::sync::Arc::new(VerifyProgress::default());
    let how = CheckOptions::report(args.download, Unvouched::SizeOnly);
    let quiet = !tracing::enabled!(tracing::Level::INFO);
    let mut report = crate::progress::while_checking(&progress, quiet, || {
        relay::verify(&src, &dst, &opts, &how, &progress).map_err(Fail::from)
    })?;
    if args.one_way {
        report.problems.retain(|p| p.kind != ProblemKind::Extra);
        report.objects_extra = 0;
    }
    print(&report, args.json);
    Ok(if report.same() { 0 } else { 1 })
}

fn print(report: &VerifyReport, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(report).expect("a report serialises"));
        return;
    }
    for p in report.problems.iter().take(SHOWN_MAX) {
        let kind = match p.kind {
            ProblemKind::Missing => "missing",
            ProblemKind::Differs => "differs",
            ProblemKind::Extra => "extra",
        };
        tracing::error!("{kind}: {}: {}", p.key, p.reason);
    }
    let found = report.objects_missing + report.objects_mismatched + report.objects_extra;
    if found > SHOWN_MAX as u64 {
        tracing::error!("{} more differences, not listed here (--json lists them)", found - SHOWN_MAX as u64);
    }
    let by = if report.download {
        "by reading both copies".to_string()
    } else if report.hashes_compared.is_empty() {
        "by listing".to_string()
    } else {
        let hashes: Vec<String> = report.hashes_compared.iter().map(|(h, n)| format!("{n} by {h}")).collect();
        format!("by listing, {}", hashes.join(", "))
    };
    outln!(
        "{} objects ({}) checked {by}: {} the same, {} missing, {} differing, {} extra at the destination in {:.2}s",
        report.objects_checked,
        HumanBytes(report.bytes_checked),
        report.objects_matched,
        report.objects_missing,
        report.objects_mismatched,
        report.objects_extra,
        report.seconds,
    );
    if report.objects_size_only > 0 {
        outln!(
            "size only: {} objects had no hash both stores report and no record of their source version, so only \
             their sizes were compared; --download compares their bytes",
            report.objects_size_only
        );
    }
    if report.stopped {
        tracing::warn!("the check was stopped before it covered every object");
    }
}
