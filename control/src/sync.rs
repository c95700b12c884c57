//! `laminar sync` and `laminar move`: a relay, then deletions that only a finished,
//! verified copy allows.
//!
//! - **sync** deletes at the destination what the source no longer holds (within the
//!   filters), only once every copy succeeded, and refuses, deleting nothing, to
//!   delete more than 10% or 1,000 of the destination's objects unless
//!   `--max-delete N` allows it: a wrong source path must not empty a bucket.
//!   `--backup-dir` moves them (a server-side copy on the destination's store) instead.
//! - **move** deletes each source object once the check after the copy finds its copy
//!   the same at the destination, by hash or by Laminar's record of it; an object
//!   nothing vouches for stays at the source, reported.
//!
//! Both run the integrity check's merge-join ([`relay::verify`]) with an action, so a
//! deletion streams with the listings and memory stays flat.

use std::path::Path;

use clap::Args;
use laminar_engine::relay::{self, Act, CheckOptions, ProblemKind, Unvouched, VerifyProgress, VerifyReport};

use crate::cli::{usage, Fail, RelayArgs};
use crate::config::Config;

/// Deletions a sync makes without `--max-delete`: at most this many...
const DELETE_DEFAULT_MAX: u64 = 1000;
/// ...and at most this percentage of the destination's objects.
const DELETE_DEFAULT_PERCENT: u64 = 10;
/// Deletions listed on standard error; `--json` carries every one.
const SHOWN_MAX: usize = 20;

/// Flags of `laminar sync`.
#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    relay: RelayArgs,
    /// Most objects the sync may delete at the destination (default: refuse more than 10% of them or 1,000)
    #[arg(long, value_name = "N")]
    max_delete: Option<u64>,
    /// Move what the sync would delete to this path on the destination's store instead (NAME:bucket/old), keeping keys relative
    #[arg(long, value_name = "URL")]
    backup_dir: Option<String>,
}

/// Flags of `laminar move`.
#[derive(Args)]
pub struct MoveArgs {
    #[command(flatten)]
    relay: RelayArgs,
}

pub fn run_sync(config_path: Option<&Path>, args: SyncArgs) -> Result<u8, Fail> {
    let backup = match &args.backup_dir {
        Some(url) => Some(Config::load(config_path)?.location(url)?),
        None => None,
    };
    let prepared = crate::cli::prepare(config_path, &args.relay)?;
    let (src, dst, opts) = (prepared.src.clone(), prepared.dst.clone(), prepared.opts.clone());
    if let Some(b) = &backup {
        let within = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
        if b.display.split(':').next() == dst.display.split(':').next() && within(&b.prefix, &dst.prefix) {
            return Err(usage(format!(
                "--backup-dir {}: it overlaps the destination {}; give a path beside it",
                b.display, dst.display
            )));
        }
    }
    let json = args.relay.json();
    let dry_run = args.relay.dry_run();
    let report = crate::cli::copy_quietly(prepared, &args.relay, false)?;
    let code = crate::cli::relay_exit(&report);
    let mut doc = json.then(|| crate::cli::report_json(&report, dry_run));
    if code != 0 {
        let why = "nothing deleted: the sync deletes only after every copy succeeded";
        if let Some(doc) = &mut doc {
            doc["deletions_refused"] = why.into();
            outln!("{doc}");
        } else {
            tracing::error!("{why}");
        }
        return Ok(code);
    }
    // What the destination holds that the source does not, by presence alone.
    let progress = std::sync::Arc::new(VerifyProgress::default());
    let quiet = !tracing::enabled!(tracing::Level::INFO);
    let count = CheckOptions { presence_only: true, ..CheckOptions::report(false, Unvouched::SizeOnly) };
    let found = crate::progress::while_checking(&progress, quiet, || {
        relay::verify(&src, &dst, &opts, &count, &progress).map_err(Fail::from)
    })?;
    let extra = found.objects_extra;
    let held = found.objects_matched + extra;
    let allowed = match args.max_delete {
        Some(n) => extra <= n,
        None => extra <= DELETE_DEFAULT_MAX && extra * 100 <= held * DELETE_DEFAULT_PERCENT,
    };
    let extras: Vec<&str> =
        found.problems.iter().filter(|p| p.kind == ProblemKind::Extra).map(|p| p.key.as_str()).collect();
    if dry_run || !allowed {
        let verb = if args.backup_dir.is_some() { "move to the backup" } else { "delete" };
        if !json {
            for key in extras.iter().take(if dry_run { usize::MAX } else { SHOWN_MAX }) {
                outln!("would {verb} {key}");
            }
        }
        let refused = (!allowed).then(|| {
            let limit = match args.max_delete {
                Some(n) => format!("--max-delete {n}"),
                None => format!("the default limit ({DELETE_DEFAULT_PERCENT}% or {DELETE_DEFAULT_MAX} objects)"),
            };
            format!(
                "nothing deleted: the sync would delete {extra} of the destination's {held} objects, more than \
                 {limit} allows; check the source path, then give --max-delete {extra} to allow it"
            )
        });
        if let Some(doc) = &mut doc {
            doc["objects_to_delete"] = extra.into();
            doc["to_delete"] = serde_json::json!(extras);
            if let Some(r) = &refused {
                doc["deletions_refused"] = r.clone().into();
            }
            outln!("{doc}");
        } else if let Some(r) = &refused {
            tracing::error!("{r}");
        } else {
            outln!("dry run: {extra} objects would be deleted at the destination");
        }
        return Ok(if allowed { 0 } else { 1 });
    }
    let act = Act::DeleteExtra { max: extra, backup };
    let delete = CheckOptions { act, ..count };
    let done = crate::progress::while_checking(&progress, quiet, || {
        relay::verify(&src, &dst, &opts, &delete, &progress).map_err(Fail::from)
    })?;
    print_deletions(&done, doc, "at the destination");
    Ok(if done.delete_failures.is_empty() { 0 } else { 1 })
}

pub fn run_move(config_path: Option<&Path>, args: MoveArgs) -> Result<u8, Fail> {
    let prepared = crate::cli::prepare(config_path, &args.relay)?;
    let (src, dst, opts) = (prepared.src.clone(), prepared.dst.clone(), prepared.opts.clone());
    let json = args.relay.json();
    let dry_run = args.relay.dry_run();
    let report = crate::cli::copy_quietly(prepared, &args.relay, false)?;
    let mut code = crate::cli::relay_exit(&report);
    let doc = json.then(|| crate::cli::report_json(&report, dry_run));
    if dry_run || report.stopped {
        if let Some(doc) = doc {
            outln!("{doc}");
        } else if dry_run {
            outln!("dry run: each source object would be deleted once its copy is verified at the destination");
        }
        return Ok(code);
    }
    // Each source object whose copy the check finds the same goes; the rest stay.
    let act = CheckOptions { act: Act::DeleteSameAtSource, ..CheckOptions::report(false, Unvouched::Differs) };
    let done = relay::verify(&src, &dst, &opts, &act, &VerifyProgress::default())?;
    let kept = done.objects_missing + done.objects_mismatched;
    if kept > 0 {
        for p in done.problems.iter().filter(|p| p.kind != ProblemKind::Extra).take(SHOWN_MAX) {
            tracing::error!("kept at the source: {}: {}", p.key, p.reason);
        }
        code = code.max(1);
    }
    print_deletions(&done, doc, "at the source");
    Ok(if done.delete_failures.is_empty() { code } else { code.max(1) })
}

/// Reports what a deletion pass did, into the JSON object when there is one.
fn print_deletions(done: &VerifyReport, doc: Option<serde_json::Value>, side: &str) {
    for f in done.delete_failures.iter().take(SHOWN_MAX) {
        tracing::error!("not deleted: {}: {}", f.key, f.reason);
    }
    match doc {
        Some(mut doc) => {
            doc["objects_deleted"] = done.objects_deleted.into();
            doc["objects_backed_up"] = done.objects_backed_up.into();
            doc["delete_failures"] = serde_json::to_value(&done.delete_failures).expect("failures serialise");
            outln!("{doc}");
        }
        None => {
            let backed = if done.objects_backed_up > 0 {
                format!(" ({} moved to the backup)", done.objects_backed_up)
            } else {
                String::new()
            };
            outln!("deleted {} objects {side}{backed}", done.objects_deleted);
        }
    }
}
