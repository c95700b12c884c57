//! Benchmarks.
//!
//! [`servers`] starts real S3 servers (SeaweedFS `weed mini`) and drives rclone as the
//! reference client; the integration tests in `tests/` use it too.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod compare;
pub mod servers;
pub mod workload;
