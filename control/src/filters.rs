//! The filter flags every command that walks a tree takes, in rclone's spelling and
//! with rclone's meaning, so an operator's filter files and habits carry over.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use laminar_engine::relay::{Filter, FilterSpec};

use crate::cli::Fail;

/// Filter flags (rclone's filter language).
#[derive(Args, Clone, Default, Debug)]
#[command(next_help_heading = "Filters (rclone's syntax: * within a segment, ** across, a leading / anchors)")]
pub struct FilterArgs {
    /// A rule: "+ GLOB" includes, "- GLOB" excludes, "!" clears the rules so far; repeatable, the first that matches decides
    #[arg(long, short = 'f', value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<String>,
    /// Read rules from a file, one a line ("#" and ";" start comments; - for standard input)
    #[arg(long, value_name = "FILE")]
    pub filter_from: Vec<PathBuf>,
    /// Include keys matching this glob (then everything else is excluded); repeatable
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Read include globs from a file
    #[arg(long, value_name = "FILE")]
    pub include_from: Vec<PathBuf>,
    /// Exclude keys matching this glob; repeatable
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclude globs from a file
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Only the keys this file names, one a line, relative to the source (used alone)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Like --files-from, each line taken as it is (no trimming, no comments)
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Only objects at least this large (a bare number is KiB, as in rclone; or 10M, 1G, 512B)
    #[arg(long, value_name = "SIZE")]
    pub min_size: Option<String>,
    /// Only objects at most this large (a bare number is KiB, as in rclone)
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Only objects modified at least this long ago (e.g. 2h, 7d, 1y) or before this UTC date (2024-01-31, 2024-01-31 12:00:00)
    #[arg(long, value_name = "AGE")]
    pub min_age: Option<String>,
    /// Only objects modified within this long (e.g. 24h) or after this UTC date
    #[arg(long, value_name = "AGE")]
    pub max_age: Option<String>,
    /// Globs match regardless of case
    #[arg(long)]
    pub ignore_case: bool,
}

impl FilterArgs {
    /// The spec these flags give; a size or age that does not parse is a usage error.
    pub fn spec(&self) -> Result<FilterSpec, Fail> {
        let now = SystemTime::now();
        Ok(FilterSpec {
            filter: self.filter.clone(),
            filter_from: self.filter_from.clone(),
            include: self.include.clone(),
            include_from: self.include_from.clone(),
            exclude: self.exclude.clone(),
            exclude_from: self.exclude_from.clone(),
            files_from: self.files_from.clone(),
            files_from_raw: self.files_from_raw.clone(),
            min_size_bytes: self.min_size.as_deref().map(|s| size("--min-size", s)).transpose()?,
            max_size_bytes: self.max_size.as_deref().map(|s| size("--max-size", s)).transpose()?,
            modified_to_unix_ms: self.min_age.as_deref().map(|s| age("--min-age", s, now)).transpose()?,
            modified_from_unix_ms: self.max_age.as_deref().map(|s| age("--max-age", s, now)).transpose()?,
            ignore_case: self.ignore_case,
        })
    }

    /// The filter these flags give, with rclone's note when `--include` and
    /// `--exclude` are mixed (includes are taken first, whatever the order given).
    pub fn build(&self) -> Result<Filter, Fail> {
        let includes = !self.include.is_empty() || !self.include_from.is_empty();
        let excludes = !self.exclude.is_empty() || !self.exclude_from.is_empty();
        if includes && excludes {
            tracing::info!(
                "--include rules are taken before --exclude rules, whatever their order here, and \
                 the first that matches decides; --filter \"+ GLOB\" / \"- GLOB\" keeps the order you give"
            );
        }
        Ok(self.spec()?.build("--")?)
    }
}

/// A size as rclone's filters take it: a bare number is KiB.
fn size(flag: &str, value: &str) -> Result<u64, Fail> {
    let v = value.trim();
    let bare = !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare { laminar_tuning::parse_size(&format!("{v}KiB")) } else { laminar_tuning::parse_size(v) };
    parsed.map_err(|_| {
        crate::cli::usage(format!("{flag} {value:?}: give a size such as 100M, 1.5G or 512B (a bare number is KiB)"))
    })
}

/// An age (a duration back from `now`) or an absolute UTC time, as Unix milliseconds.
fn age(flag: &str, value: &str, now: SystemTime) -> Result<i64, Fail> {
    let v = value.trim();
    let bad = || {
        crate::cli::usage(format!(
            "{flag} {value:?}: give an age such as 90s, 12h, 7d, 2w or 1y, or a UTC date such as 2024-01-31 or \
             2024-01-31 12:00:00"
        ))
    };
    let at = if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
        // A bare number is seconds, as in rclone.
        now.checked_sub(Duration::from_secs(v.parse().map_err(|_| bad())?)).ok_or_else(bad)?
    } else if let Ok(d) = humantime::parse_duration(v) {
        now.checked_sub(d).ok_or_else(bad)?
    } else {
        let full = if v.len() == 10 { format!("{v} 00:00:00") } else { v.to_string() };
        humantime::parse_rfc3339_weak(&full).map_err(|_| bad())?
    };
    Ok(match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).map_err(|_| bad())?,
        Err(before) => -i64::try_from(before.duration().as_millis()).map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_as_rclone_reads_them() {
        assert_eq!(size("--min-size", "100").ok(), Some(100 << 10));
        assert_eq!(size("--min-size", "1M").ok(), Some(1 << 20));
        assert_eq!(size("--min-size", "512B").ok(), Some(512));
        let e = size("--max-size", "big").err().unwrap().message;
        assert!(e.starts_with("--max-size \"big\": give a size"), "{e}");
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(age("--max-age", "1h", now).ok(), Some((1_000_000 - 3600) * 1000));
        assert_eq!(age("--max-age", "60", now).ok(), Some((1_000_000 - 60) * 1000));
        assert_eq!(age("--min-age", "1970-01-02", now).ok(), Some(86_400_000));
        assert_eq!(age("--min-age", "1970-01-01 00:01:00", now).ok(), Some(60_000));
        let e = age("--min-age", "soon", now).err().unwrap().message;
        assert!(e.starts_with("--min-age \"soon\": give an age"), "{e}");
    }
}
