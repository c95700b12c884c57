//! Test support for Laminar's integration tests against real servers.
//!
//! - [`proxy`]: a fault-injecting TCP proxy (flip a byte, cut every connection).
//! - Servers themselves (SeaweedFS, rclone) live in `laminar_bench::servers`, shared
//!   with the benchmarks.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod proxy;
