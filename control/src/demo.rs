//! `laminar demo`: the whole engine on an embedded dataset, with no network and no
//! servers to install.
//!
//! By default it runs the relay Laminar's users asked for first, Dropbox into Google
//! Drive, between the two providers' emulators started in this process on loopback
//! (`clouds`). `--local` runs the same engine between two temporary directories
//! (`local`). Both verify every byte by means independent of the relay, run the relay a
//! second time to show that nothing is copied twice, and clean up.

mod clouds;
mod local;

use crate::cli::{DemoArgs, Fail};

pub fn run(args: DemoArgs) -> Result<u8, Fail> {
    if args.local {
        local::run(args)
    } else {
        clouds::run(args)
    }
}

fn io_fail(e: std::io::Error) -> Fail {
    Fail { code: 1, message: format!("demo: {e}") }
}

/// The demo's pseudo-random bytes, the same on every run.
fn pattern(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}
