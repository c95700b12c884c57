//! `laminar`: relay objects between stores.
//!
//! The binary's edge: parses flags, reads `laminar.toml`, draws progress, prints the
//! summary or JSON, and maps outcomes to exit codes (0 all verified, 1 some object
//! failed, 2 usage or configuration error). Errors are one line, never a trace.
//! `laminar serve` runs the appliance (engine plus HTTP control sidecar) and
//! `laminar job` is its command-line client.

#![forbid(unsafe_code)]

#[macro_use]
mod out;

mod api;
mod auth;
mod check;
mod cli;
mod client;
mod config;
mod demo;
mod filters;
mod jobs;
mod list;
mod listen;
mod logs;
mod metrics;
mod plan;
mod progress;
mod serve;
mod sync;
mod tune;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
