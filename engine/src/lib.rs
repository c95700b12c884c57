//! Laminar's data plane.
//!
//! One worker per CPU, each pinned and running its own monoio event loop (io_uring,
//! or epoll where io_uring is unavailable). Objects and parts of large objects are
//! spread across workers through lock-free queues; bytes move through each worker's
//! pre-allocated RAM pool, checksummed as they stream.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// Errors carry op, target, status and the store's message so that one line tells the
// operator everything; they are cold, so their size (~130 bytes) costs nothing.
#![allow(clippy::result_large_err)]

pub mod backend;
pub mod checksum;
pub mod error;
pub mod http;
pub mod journal;
pub mod listing;
pub mod metrics;
pub mod owner;
pub mod pool;
pub mod rate;
pub mod relay;
pub mod runtime;
pub mod sniff;
pub mod stage;

pub use error::{Error, Result};
