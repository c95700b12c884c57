//! `laminar ls`, `laminar lsjson` and `laminar size`: what is under a URL, through
//! the same filters a relay takes, with keys relative to the path given (as rclone
//! shows them), streamed as the store lists so that memory stays flat.

use std::collections::HashSet;
use std::path::Path;

use clap::Args;
use laminar_engine::backend::{s3, Entry};
use laminar_engine::relay;
use laminar_engine::runtime::DriverChoice;
use laminar_tuning::HumanBytes;

use crate::cli::{usage, Fail};
use crate::config::Config;
use crate::filters::FilterArgs;

/// Flags every listing takes.
#[derive(Args)]
pub struct Listed {
    /// NAME:bucket/prefix, s3://bucket/prefix or file:///abs/path
    url: String,
    /// Event loop: auto, io_uring or epoll
    #[arg(long, default_value = "auto")]
    driver: String,
    #[command(flatten)]
    filters: FilterArgs,
}

/// Flags of `laminar ls`.
#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    listed: Listed,
}

/// Flags of `laminar lsjson`.
#[derive(Args)]
pub struct LsjsonArgs {
    #[command(flatten)]
    listed: Listed,
    /// Every object below, not only the first level (directories are then not shown)
    #[arg(long, short = 'R')]
    recursive: bool,
    /// Objects only, no directories
    #[arg(long)]
    files_only: bool,
}

/// Flags of `laminar size`.
#[derive(Args)]
pub struct SizeArgs {
    #[command(flatten)]
    listed: Listed,
    /// Print {"count": N, "bytes": N} on stdout
    #[arg(long)]
    json: bool,
}

/// Lists the objects that pass the filters, each with its key relative to the URL.
fn walk(config: Option<&Path>, listed: &Listed, f: &mut dyn FnMut(&str, &Entry)) -> Result<(), Fail> {
    let config = Config::load(config)?;
    let location = config.location(&listed.url)?;
    let driver = DriverChoice::parse(&listed.driver)
        .ok_or_else(|| usage(format!("--driver {:?}: use auto, io_uring or epoll", listed.driver)))?;
    let filter = listed.filters.build()?;
    relay::list(&location, driver, &filter, f)?;
    Ok(())
}

/// The buckets of the account `listed` names, if it names one (an S3 remote with
/// no bucket).
fn buckets(config: Option<&Path>, listed: &Listed) -> Result<Option<Vec<s3::Bucket>>, Fail> {
    let config = Config::load(config)?;
    let Some(account) = config.account(&listed.url)? else { return Ok(None) };
    let driver = DriverChoice::parse(&listed.driver)
        .ok_or_else(|| usage(format!("--driver {:?}: use auto, io_uring or epoll", listed.driver)))?;
    Ok(Some(s3::buckets(account, driver)?))
}

pub fn run_ls(config: Option<&Path>, args: ListArgs) -> Result<u8, Fail> {
    if let Some(buckets) = buckets(config, &args.listed)? {
        for b in buckets {
            outln!("{:>12} {}/", "-", b.name);
        }
        return Ok(0);
    }
    walk(config, &args.listed, &mut |rel, entry| outln!("{:>12} {rel}", entry.size))?;
    Ok(0)
}

/// One line of `lsjson`, in rclone's field names.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct JsonItem<'a> {
    path: &'a str,
    name: &'a str,
    /// -1 for a directory, as rclone writes it.
    size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_time: Option<String>,
    is_dir: bool,
    /// Set on the buckets of an account, as rclone writes them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_bucket: bool,
}

pub fn run_lsjson(config: Option<&Path>, args: LsjsonArgs) -> Result<u8, Fail> {
    let buckets = buckets(config, &args.listed)?;
    // rclone's layout: `[`, the items one a line with a comma after each but the
    // last, `]`. Each line waits for the next item to know whether it is the last.
    outln!("[");
    let mut pending: Option<String> = None;
    let mut emit = |item: JsonItem| {
        if let Some(line) = pending.replace(serde_json::to_string(&item).expect("an item serialises")) {
            outln!("{line},");
        }
    };
    if let Some(buckets) = &buckets {
        for b in buckets {
            let (path, mod_time) = (b.name.as_str(), b.created.clone());
            emit(JsonItem { path, name: path, size: -1, mod_time, is_dir: true, is_bucket: true });
        }
    }
    // Directories of the first level already shown: a listing in no order may name
    // one again after others.
    let mut dirs: HashSet<String> = HashSet::new();
    if buckets.is_none() {
        walk(config, &args.listed, &mut |rel, entry| {
            let top = rel.split_once('/').map(|(dir, _)| dir);
            match top {
                Some(dir) if !args.recursive => {
                    if !args.files_only && dirs.insert(dir.to_string()) {
                        emit(JsonItem {
                            path: dir,
                            name: dir,
                            size: -1,
                            mod_time: None,
                            is_dir: true,
                            is_bucket: false,
                        });
                    }
                }
                _ => {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    let mod_time = entry.modified_unix_ms.map(format_ms);
                    let size = entry.size as i64;
                    emit(JsonItem { path: rel, name, size, mod_time, is_dir: false, is_bucket: false });
                }
            }
        })?;
    }
    if let Some(line) = pending {
        outln!("{line}");
    }
    outln!("]");
    Ok(0)
}

/// Unix milliseconds as RFC 3339 in UTC, to the millisecond.
fn format_ms(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms.max(0) as u64))
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

pub fn run_size(config: Option<&Path>, args: SizeArgs) -> Result<u8, Fail> {
    if Config::load(config)?.account(&args.listed.url)?.is_some() {
        let url = &args.listed.url;
        return Err(usage(format!("{url:?} names no bucket: laminar size counts one bucket, write {url}BUCKET")));
    }
    let (mut count, mut bytes) = (0u64, 0u64);
    walk(config, &args.listed, &mut |_, entry| {
        count += 1;
        bytes += entry.size;
    })?;
    if args.json {
        outln!("{}", serde_json::json!({ "count": count, "bytes": bytes }));
    } else {
        outln!("Total objects: {count}");
        outln!("Total size: {} ({bytes} bytes)", HumanBytes(bytes));
    }
    Ok(0)
}

/// Flags of `laminar mkdir`.
#[derive(Args)]
pub struct MkdirArgs {
    /// NAME:bucket/path, s3://bucket/path or file:///abs/path: the folder to make, with
    /// its parents (on S3, which has no folders, the bucket)
    url: String,
    /// Event loop: auto, io_uring or epoll
    #[arg(long, default_value = "auto")]
    driver: String,
}

pub fn run_mkdir(config: Option<&Path>, args: MkdirArgs) -> Result<u8, Fail> {
    let config = Config::load(config)?;
    if config.account(&args.url)?.is_some() {
        let url = &args.url;
        return Err(usage(format!("{url:?} names no bucket: write {url}BUCKET to make one")));
    }
    let location = config.location(&args.url)?;
    let driver = DriverChoice::parse(&args.driver)
        .ok_or_else(|| usage(format!("--driver {:?}: use auto, io_uring or epoll", args.driver)))?;
    let path = location.object.clone().unwrap_or_else(|| location.prefix.clone());
    match relay::mkdir(&location, driver)? {
        laminar_engine::backend::Made::Folder => tracing::info!("{}: the folder is there", args.url),
        laminar_engine::backend::Made::Bucket(made) => {
            let how = if made { "made" } else { "was there already" };
            match path.trim_end_matches('/') {
                "" => tracing::info!("{}: the bucket {how}", args.url),
                path => tracing::info!(
                    "{}: the bucket {how}; S3 has no folders, so {path:?} needs none: the objects written under it \
                     make it",
                    args.url
                ),
            }
        }
    }
    Ok(0)
}
