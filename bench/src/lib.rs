//! Benchmarks: Laminar beside rclone and beside the machine's own limits.
//!
//! [`servers`] starts real S3 servers (SeaweedFS `weed mini`) and drives rclone as the
//! reference client; [`synthetic`] is a fast S3-compatible endpoint that generates and
//! discards bytes, to isolate a relay's own cost; [`pair`] puts a source and a
//! destination of either kind together. The benchmarks are [`compare`] (Laminar and
//! rclone), [`limit`] (a bare relay, the ceiling), [`scale`] (workers), [`stage`] (the
//! NVMe stage beside fio), [`sort`] (the external sorter for unordered listings) and
//! [`micro`] (hot paths); [`report`] turns their raw JSON into `bench/RESULTS.md`. The
//! integration tests in `tests/` use the servers too. [`cloud`] runs rclone's real
//! `dropbox` and `drive` backends against Laminar's emulators through a TLS-terminating
//! proxy that routes only the providers' API hosts, and only to loopback.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod chaos;
pub mod cloud;
pub mod compare;
pub mod limit;
pub mod micro;
pub mod pair;
pub mod report;
pub mod scale;
pub mod servers;
pub mod sort;
pub mod stage;
pub mod synthetic;
pub mod workload;

/// Extra `laminar relay` flags for tuning studies, from `LAMINAR_BENCH_LAMINAR_ARGS`
/// (split on whitespace; RESULTS.md names any used): the comparisons pass them to
/// every Laminar run.
pub fn laminar_extra_args() -> Vec<String> {
    std::env::var("LAMINAR_BENCH_LAMINAR_ARGS")
        .map(|extra| extra.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}
