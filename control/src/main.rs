//! `laminar`: relay objects between stores.
//!
//! The binary's edge: parses flags, reads `laminar.toml`, draws progress, prints the
//! summary or JSON, and maps outcomes to exit codes (0 all verified, 1 some object
//! failed, 2 usage or configuration error). Errors are one line, never a trace.

#![forbid(unsafe_code)]

mod cli;
mod demo;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
