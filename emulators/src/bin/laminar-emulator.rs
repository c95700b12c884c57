//! `laminar-emulator SERVICE [OPTIONS_JSON]`: runs one emulator for scripts and demos.
//! It prints one JSON line on stdout (URLs and seeded credentials), then serves until
//! its standard input closes, so it never outlives the script that started it.
//!
//! - `drive [DriveOptions as JSON]`: the Google Drive emulator.
//! - `dropbox [DropboxOptions as JSON]`: the Dropbox emulator.
//!
//! Each service is one arm of the match in `main` and one function.

#![forbid(unsafe_code)]

use std::io::Write as _;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("drive") => drive(args.next()),
        Some("dropbox") => dropbox(args.next()),
        _ => {
            eprintln!("usage: laminar-emulator drive|dropbox [OPTIONS_JSON]");
            std::process::exit(2);
        }
    }
}

/// Serves until standard input reaches its end.
fn until_stdin_closes() {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
}

/// Prints the endpoints as one JSON line, then serves until stdin closes.
fn serve(endpoints: impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&endpoints)?)?;
    out.flush()?;
    drop(out);
    until_stdin_closes();
    Ok(())
}

fn drive(options: Option<String>) -> Result<()> {
    use laminar_emulators::drive::{DriveEmulator, DriveOptions};
    let opts: DriveOptions = match options {
        Some(json) => serde_json::from_str(&json).context("parsing the DriveOptions JSON")?,
        None => DriveOptions::default(),
    };
    let emulator = DriveEmulator::start(opts)?;
    serve(emulator.endpoints())
}

fn dropbox(options: Option<String>) -> Result<()> {
    use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
    let opts: DropboxOptions = match options {
        Some(json) => serde_json::from_str(&json).context("parsing the DropboxOptions JSON")?,
        None => DropboxOptions::default(),
    };
    let emulator = DropboxEmulator::start(opts)?;
    serve(emulator.endpoints())
}
