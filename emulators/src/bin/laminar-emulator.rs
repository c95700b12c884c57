//! `laminar-emulator SERVICE [OPTIONS_JSON]`: runs one emulator for scripts and demos.
//! It prints one JSON line on stdout (URLs and seeded credentials), then serves until
//! its standard input closes, so it never outlives the script that started it.
//!
//! - `dropbox [DropboxOptions as JSON]`: the Dropbox emulator.
//!
//! Each service is one arm of the match in `main` and one function.

#![forbid(unsafe_code)]

use std::io::Write as _;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("dropbox") => dropbox(args.next()),
        _ => {
            eprintln!("usage: laminar-emulator dropbox [OPTIONS_JSON]");
            std::process::exit(2);
        }
    }
}

/// Serves until standard input reaches its end.
fn until_stdin_closes() {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
}

fn dropbox(options: Option<String>) -> Result<()> {
    use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
    let opts: DropboxOptions = match options {
        Some(json) => serde_json::from_str(&json).context("parsing the DropboxOptions JSON")?,
        None => DropboxOptions::default(),
    };
    let emulator = DropboxEmulator::start(opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&emulator.endpoints())?)?;
    out.flush()?;
    drop(out);
    until_stdin_closes();
    Ok(())
}
