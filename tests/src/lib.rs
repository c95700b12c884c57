//! Test support for Laminar's integration tests against real servers.
//!
//! - [`appliance`]: a running `laminar serve`, driven through its API.
//! - [`browser`]: headless Chromium driven over the DevTools protocol (click, type, read).
//! - [`proxy`]: a fault-injecting TCP proxy (flip a byte, cut every connection).
//! - [`disk`]: a small real file system to fill up.
//! - [`Clouds`]: two real SeaweedFS servers and a laminar.toml naming them.
//! - Servers themselves (SeaweedFS, rclone) live in `laminar_bench::servers`, shared
//!   with the benchmarks.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod appliance;
pub mod browser;
pub mod disk;
pub mod proxy;

/// The `laminar` binary, built next to the running test's target directory, or the
/// one `LAMINAR_BIN` names (for a target directory that other checkouts build into too).
pub fn laminar_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("LAMINAR_BIN") {
        return std::path::PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    let bin = dir.join("laminar");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (tests/run.sh does)",
        bin.display()
    );
    bin
}

/// Two real S3 servers with a bucket each (`bkt-a`, `bkt-b`), and a laminar.toml
/// naming them `a` and `b`.
pub struct Clouds {
    /// Server `a`, bucket `bkt-a`.
    pub a: laminar_bench::servers::Weed,
    /// Server `b`, bucket `bkt-b`.
    pub b: laminar_bench::servers::Weed,
    /// The laminar.toml.
    pub config: tempfile::NamedTempFile,
}

/// Starts [`Clouds`]; None (the test is skipped with a note) when SeaweedFS isn't
/// installed and servers aren't required.
pub fn clouds() -> Option<Clouds> {
    use laminar_bench::servers::{find_tool, require_servers, Weed};
    if find_tool("weed").is_none() && !require_servers() {
        eprintln!("skipping: SeaweedFS not installed (tests/run.sh installs it)");
        return None;
    }
    let a = Weed::start().expect("start SeaweedFS a");
    let b = Weed::start().expect("start SeaweedFS b");
    a.create_bucket("bkt-a").expect("bucket a");
    b.create_bucket("bkt-b").expect("bucket b");
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), format!("{}\n{}", a.remote_toml("a"), b.remote_toml("b"))).expect("write config");
    Some(Clouds { a, b, config })
}

impl Clouds {
    /// Runs `laminar --config <this config> ARGS`, logging what it printed.
    pub fn laminar(&self, args: &[&str]) -> std::process::Output {
        laminar_with(self.config.path(), args)
    }

    /// Adds remote `name` for `weed`, reached at `endpoint` (e.g. through a proxy).
    pub fn add_remote(&self, name: &str, endpoint: &str, weed: &laminar_bench::servers::Weed) {
        let text = weed.remote_toml(name).replace(&weed.endpoint, endpoint);
        let mut all = std::fs::read_to_string(self.config.path()).expect("read config");
        all.push('\n');
        all.push_str(&text);
        std::fs::write(self.config.path(), all).expect("write config");
    }
}

/// Runs `laminar --config CONFIG ARGS`, logging what it printed.
pub fn laminar_with(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out =
        std::process::Command::new(laminar_bin()).arg("--config").arg(config).args(args).output().expect("run laminar");
    echo(&format!("laminar {}", args.join(" ")), &out);
    out
}

/// Prints what a command (`what`) said and how it ended, for a failing test's log.
pub fn echo(what: &str, out: &std::process::Output) {
    eprintln!(
        "{what}\n-> {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `laminar [--config CONFIG] ARGS` with `LAMINAR_DATA_DIR` set to `data`,
/// logging what it printed.
pub fn laminar_in(config: Option<&std::path::Path>, data: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(laminar_bin());
    c.env("LAMINAR_DATA_DIR", data);
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    let out = c.args(args).output().expect("run laminar");
    eprintln!(
        "laminar {args:?} -> {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The one JSON object a command printed on standard output.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// The hash Laminar checks Drive's files by, as the report names it: SHA-256 where this
/// CPU computes it in hardware, MD5 otherwise (Drive reports both).
pub fn drive_check_name() -> &'static str {
    if laminar_engine::checksum::sha256_in_hardware() {
        "sha256"
    } else {
        "md5"
    }
}
