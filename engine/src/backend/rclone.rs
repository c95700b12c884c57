//! Any rclone remote (`type = "rclone"`, `remote = "onedrive:"`): OneDrive, Box, B2,
//! SFTP, WebDAV and the rest, through `rclone serve s3`.
//!
//! Opening the remote starts `rclone serve s3` for it on a free loopback port with a
//! random key pair, and the S3 backend talks to that; the server is stopped (by its
//! PID, with SIGTERM, then SIGKILL if it lingers) when the backend is dropped.
//! `rclone serve s3` makes each top-level directory a bucket, so the remote is served
//! under one fixed bucket through rclone's `combine` backend
//! (`:combine,upstreams="laminar=REMOTE":`), and a URL's path is a key prefix in it.
//! The user's rclone config (`--config` in `config`, else rclone's default) names the
//! remote. Capabilities are the S3 backend's: rclone serves plain MD5 ETags where the
//! remote has MD5 and none of S3's checksum headers.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::registry::{self, BackendType, Opened};
use super::s3::{S3Backend, S3Config};
use super::{Backend, Sink, Source, WorkerCtx};
use crate::error::{Error, Result};
use crate::http::Endpoint;

/// The registry's entry for rclone remotes.
pub const TYPE: BackendType = BackendType { name: "rclone", url_form: "path/in/remote", open };

/// The one bucket the remote is served under.
const BUCKET: &str = "laminar";
/// The oldest rclone with `serve s3`.
const VERSION_MIN: (u32, u32) = (1, 65);
/// The first rclone that reads `RCLONE_AUTH_KEY` as a CSV list (serve s3's flags became
/// options then); older ones take it as one value.
const VERSION_CSV_ENV: (u32, u32) = (1, 70);
/// How long `rclone serve s3` may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a starting or stopping server is looked at.
const POLL: Duration = Duration::from_millis(50);
/// The last bytes of rclone's log kept for an error message.
const LOG_TAIL_BYTES: usize = 600;

/// One `[remotes.NAME]` table of `type = "rclone"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcloneRemoteConfig {
    /// The rclone remote, with an optional path: `onedrive:`, `box:Backups`.
    pub remote: String,
    /// The rclone binary (default: `$LAMINAR_RCLONE`, else `rclone` on the PATH).
    pub binary: Option<PathBuf>,
    /// The rclone config file (default: rclone's own).
    pub config: Option<PathBuf>,
    /// More flags for `rclone serve s3` (e.g. `["--vfs-cache-mode", "writes"]`).
    #[serde(default)]
    pub serve_args: Vec<String>,
}

fn open(remote: &str, table: toml::Table, path: &str) -> Result<Opened> {
    let config: RcloneRemoteConfig = registry::parse(remote, "rclone", table)?;
    let server = RcloneServer::start(remote, &config)?;
    let cfg = S3Config {
        remote: remote.to_string(),
        endpoint: Endpoint::parse(&format!("http://{}", server.addr)).expect("a loopback URL parses"),
        region: "us-east-1".into(),
        access_key_id: server.access_key.clone(),
        secret_access_key: server.secret_key.clone(),
        session_token: None,
        bucket: BUCKET.into(),
        path_style: true,
    };
    let backend = RcloneBackend { s3: S3Backend::new(cfg), server: Mutex::new(server) };
    Ok(Opened { backend: Arc::new(backend), path: path.trim_start_matches('/').to_string() })
}

/// An rclone remote served over S3 on loopback, for as long as the backend lives.
pub struct RcloneBackend {
    s3: S3Backend,
    server: Mutex<RcloneServer>,
}

impl Backend for RcloneBackend {
    fn open_source(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Source>> {
        self.alive()?;
        self.s3.open_source(ctx)
    }

    fn open_sink(&self, ctx: &WorkerCtx) -> Result<Rc<dyn Sink>> {
        self.alive()?;
        self.s3.open_sink(ctx)
    }
}

impl RcloneBackend {
    /// The server is still running, or an error saying it is not, with its log.
    fn alive(&self) -> Result<()> {
        let mut server = self.server.lock().expect("rclone server lock");
        match server.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Usage(format!(
                "remote {:?}: rclone serve s3 exited ({status}): {}",
                server.remote,
                server.log_tail()
            ))),
            Err(e) => Err(Error::io("rclone", &server.remote, e)),
        }
    }
}

/// A running `rclone serve s3`.
struct RcloneServer {
    remote: String,
    addr: SocketAddr,
    access_key: String,
    secret_key: String,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl RcloneServer {
    fn start(remote: &str, config: &RcloneRemoteConfig) -> Result<RcloneServer> {
        let binary = config
            .binary
            .clone()
            .or_else(|| std::env::var_os("LAMINAR_RCLONE").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("rclone"));
        let version = check_version(remote, &binary)?;
        if config.remote.is_empty() || !config.remote.contains(':') {
            return Err(Error::Usage(format!(
                "remote {remote:?}: remote = {:?} names no rclone remote: write it as rclone does, e.g. \"onedrive:\" or \"box:Backups\"",
                config.remote
            )));
        }
        let addr = free_loopback_port().map_err(|e| Error::io("rclone", remote, e))?;
        let access_key = random_key(20);
        let secret_key = random_key(40);
        let log = tempfile::Builder::new()
            .prefix("laminar-rclone-")
            .suffix(".log")
            .tempfile()
            .map_err(|e| Error::io("rclone", remote, e))?;
        let stderr = log.reopen().map_err(|e| Error::io("rclone", remote, e))?;
        let mut cmd = Command::new(&binary);
        // The key pair goes in rclone's environment, not on its command line, which every
        // local user can read (ps); quoted where rclone reads the variable as CSV, so that
        // it stays one item.
        let pair = format!("{access_key},{secret_key}");
        let pair = if version >= VERSION_CSV_ENV { format!("\"{pair}\"") } else { pair };
        cmd.args(["serve", "s3", "--addr", &addr.to_string()])
            .args(["--force-path-style=true", "--log-level", "NOTICE"])
            .env("RCLONE_AUTH_KEY", pair);
        if let Some(path) = &config.config {
            cmd.arg("--config").arg(path);
        }
        cmd.args(&config.serve_args).arg(served(&config.remote));
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr));
        let child = cmd.spawn().map_err(|e| spawn_error(remote, &binary, e))?;
        let mut server = RcloneServer { remote: remote.to_string(), addr, access_key, secret_key, child, log };
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded: rclone prints nothing machine-readable when it listens, so the
        // port is tried until it answers, the process ends, or the deadline passes.
        while TcpStream::connect_timeout(&addr, POLL).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::Usage(format!(
                    "remote {remote:?}: rclone serve s3 for {:?} exited ({status}): {}; check the remote with `rclone lsd {}`",
                    config.remote,
                    server.log_tail(),
                    config.remote
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Usage(format!(
                    "remote {remote:?}: rclone serve s3 did not listen within {}s: {}",
                    START_TIMEOUT.as_secs(),
                    server.log_tail()
                )));
            }
            std::thread::sleep(POLL);
        }
        Ok(server)
    }

    /// The end of rclone's log, on one line.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut text));
        let text = text.trim();
        let start = text.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        let tail = text[start..].replace('\n', " | ");
        if tail.is_empty() {
            "it logged nothing".into()
        } else {
            format!("it said: {tail}")
        }
    }
}

impl Drop for RcloneServer {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; the PID is our own child's, not yet
        // reaped (reaping happens below), so it names no other process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The connection string serving `remote` as the one bucket [`BUCKET`]. Values are
/// quoted as rclone's connection strings and `combine`'s upstream list want: the
/// upstream in double quotes (so spaces stay in it), the whole value in single quotes
/// (a single quote inside doubled).
fn served(remote: &str) -> String {
    let upstream = format!("\"{BUCKET}={}\"", remote.replace('"', "\"\""));
    format!(":combine,upstreams='{}':", upstream.replace('\'', "''"))
}

/// Checks that `binary` is an rclone with `serve s3`; its version (major, minor).
fn check_version(remote: &str, binary: &std::path::Path) -> Result<(u32, u32)> {
    let out = Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(remote, binary, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().and_then(|l| l.trim().strip_prefix("rclone v")).map(str::to_string);
    let parsed = version.as_deref().and_then(|v| {
        let mut it = v.split(['.', '-']);
        Some((it.next()?.parse::<u32>().ok()?, it.next()?.parse::<u32>().ok()?))
    });
    match parsed {
        Some(v) if v >= VERSION_MIN => Ok(v),
        Some(_) => Err(Error::Usage(format!(
            "remote {remote:?}: {} is rclone v{}, and type = \"rclone\" needs v{}.{} or later (for serve s3): upgrade rclone",
            binary.display(),
            version.unwrap_or_default(),
            VERSION_MIN.0,
            VERSION_MIN.1
        ))),
        None => Err(Error::Usage(format!(
            "remote {remote:?}: {} does not say it is rclone (`{} version` printed {:?}): set binary = \"/path/to/rclone\"",
            binary.display(),
            binary.display(),
            text.lines().next().unwrap_or("")
        ))),
    }
}

fn spawn_error(remote: &str, binary: &std::path::Path, e: std::io::Error) -> Error {
    Error::Usage(format!(
        "remote {remote:?}: cannot run {}: {e}; install rclone (v{}.{} or later) or set binary = \"/path/to/rclone\" in the remote",
        binary.display(),
        VERSION_MIN.0,
        VERSION_MIN.1
    ))
}

fn free_loopback_port() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

fn random_key(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_is_quoted_for_rclone() {
        assert_eq!(served("onedrive:"), ":combine,upstreams='\"laminar=onedrive:\"':");
        assert_eq!(served("my box:a b"), ":combine,upstreams='\"laminar=my box:a b\"':");
        assert_eq!(served("x:it's"), ":combine,upstreams='\"laminar=x:it''s\"':");
    }

    #[test]
    fn a_missing_binary_says_what_to_do() {
        let e = check_version("r", std::path::Path::new("/nonexistent/rclone")).unwrap_err().to_string();
        assert!(e.contains("install rclone") && e.contains("binary ="), "{e}");
    }
}
