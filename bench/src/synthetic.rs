//! The synthetic endpoint: a fast S3-compatible server that generates and discards
//! bytes, so a benchmark measures the relay and not the storage.
//!
//! - A source instance serves a workload's objects read-only under `bucket/prefix`:
//!   GET (with ranges), HEAD, ListObjects V1 and V2 (prefix, delimiter, paging,
//!   `encoding-type=url`). The bytes come from [`crate::workload::slices`] and go out as
//!   static slices, never copied. ETags are MD5s below 64 MiB and multipart-style above,
//!   as uploads would have left them; with `x-amz-checksum-mode: ENABLED` a whole-object
//!   read reports the FULL_OBJECT CRC32C.
//! - Any other bucket takes writes: PUT (plain or `aws-chunked`, with trailers),
//!   multipart uploads (create, parts, complete, abort, list), CopyObject, DELETE. Each
//!   body is checked against every checksum the client sent (Content-MD5,
//!   `x-amz-checksum-{crc32,crc32c,crc64nvme,sha256}`, a hex `x-amz-content-sha256`) and
//!   answered `BadDigest` when one differs; then the bytes are dropped. What stays is
//!   each object's size, CRC32C, ETag and metadata, so HEAD and listings work and
//!   `/_synthetic/manifest` lets a benchmark check every object it wrote.
//! - Requests are not authenticated: any credentials (or none) are accepted. This is a
//!   benchmark fixture on loopback, not a store.
//!
//! Served over hyper's HTTP/1.1 on a tokio runtime, in its own process
//! (`laminar-bench synthetic-server`), so its CPU time is never counted as the relay's.
//! [`Synthetic`] starts one and stops it; it also exits when its parent's pipe on its
//! standard input closes, so no instance outlives the benchmark that started it.

mod chunked;
mod server;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::workload::Workload;

/// How long [`Synthetic::start`] waits for the server to say where it listens.
const START_TIMEOUT_MS: u64 = 30_000;

/// One object as the endpoint knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Full key, prefix included.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// CRC32C of the bytes (generated, or received).
    pub crc32c: u32,
}

/// What an instance serves.
#[derive(Debug, Clone, Default)]
pub struct SyntheticOptions {
    /// `(workload name, bucket, prefix)` to generate; none for a pure destination.
    pub source: Option<(String, String, String)>,
    /// Tokio worker threads (default: one per CPU).
    pub threads: Option<usize>,
}

impl SyntheticOptions {
    /// A source serving `workload` under `bucket/prefix`.
    pub fn source(workload: &str, bucket: &str, prefix: &str) -> SyntheticOptions {
        SyntheticOptions { source: Some((workload.into(), bucket.into(), prefix.into())), threads: None }
    }

    /// A destination.
    pub fn sink() -> SyntheticOptions {
        SyntheticOptions::default()
    }
}

/// Runs the server until standard input closes (the `synthetic-server` subcommand).
/// Prints `listening ADDR` on standard output once it accepts connections.
pub fn serve(listen: SocketAddr, opts: &SyntheticOptions) -> Result<()> {
    let workload = match &opts.source {
        Some((name, _, _)) => Some(Workload::named(name)?),
        None => None,
    };
    let state = Arc::new(server::State::new(
        opts.source.as_ref().zip(workload.as_ref()).map(|((_, b, p), w)| (b.as_str(), p.as_str(), w)),
    ));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = opts.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the tokio runtime")?;
    // Exit when the parent goes away: it holds the other end of our stdin.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        println!("listening {}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                // Out of descriptors or similar: keep serving the connections we have.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| server::handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A running instance, stopped on drop.
pub struct Synthetic {
    child: Child,
    addr: SocketAddr,
}

impl std::fmt::Debug for Synthetic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synthetic").field("addr", &self.addr).field("pid", &self.child.id()).finish()
    }
}

/// The `laminar-bench` binary: `LAMINAR_BENCH_BIN`, this executable when it is
/// `laminar-bench`, or `laminar-bench` in the target directory above a test binary.
pub fn bench_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LAMINAR_BENCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    if exe.file_stem().is_some_and(|s| s == "laminar-bench") {
        return Ok(exe);
    }
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("laminar-bench");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "laminar-bench not found near {}: build it (cargo build --release --bins) or set LAMINAR_BENCH_BIN",
        exe.display()
    )
}

impl Synthetic {
    /// Starts an instance on a free loopback port.
    pub fn start(opts: &SyntheticOptions) -> Result<Synthetic> {
        let mut cmd = Command::new(bench_binary()?);
        cmd.args(["synthetic-server", "--listen", "127.0.0.1:0"]);
        if let Some((workload, bucket, prefix)) = &opts.source {
            cmd.args(["--workload", workload, "--source-bucket", bucket, "--prefix", prefix]);
        }
        if let Some(n) = opts.threads {
            cmd.args(["--threads", &n.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting laminar-bench synthetic-server")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_millis(START_TIMEOUT_MS)).unwrap_or_default();
        let addr = line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the synthetic endpoint did not start (said {:?})", line.trim());
        };
        Ok(Synthetic { child, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `laminar.toml` remote section for this instance.
    pub fn remote_toml(&self, name: &str) -> String {
        format!(
            "[remotes.{name}]\ntype = \"s3\"\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\naccess_key_id = \"synthetic\"\nsecret_access_key = \"synthetic\"\npath_style = true\n",
            self.addr
        )
    }

    /// Environment that defines an rclone remote `name` for this instance.
    pub fn rclone_env(&self, name: &str) -> Vec<(String, String)> {
        let prefix = format!("RCLONE_CONFIG_{}_", name.to_ascii_uppercase());
        let endpoint = format!("http://{}", self.addr);
        [
            ("TYPE", "s3"),
            ("PROVIDER", "Other"),
            ("ENDPOINT", endpoint.as_str()),
            ("ACCESS_KEY_ID", "synthetic"),
            ("SECRET_ACCESS_KEY", "synthetic"),
            ("REGION", "us-east-1"),
            ("FORCE_PATH_STYLE", "true"),
            ("ENV_AUTH", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.to_string()))
        .collect()
    }

    /// Every object under `bucket/prefix`, in key order, with its CRC32C.
    pub fn manifest(&self, bucket: &str, prefix: &str) -> Result<Vec<ManifestEntry>> {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let body = self.admin(&format!("/_synthetic/manifest?bucket={}&prefix={}", enc(bucket), enc(prefix)))?;
        serde_json::from_slice(&body).context("parsing the manifest")
    }

    /// The endpoint's counters, as JSON.
    pub fn stats(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.admin("/_synthetic/stats")?).context("parsing the stats")
    }

    fn admin(&self, path: &str) -> Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no response head")? + 4;
        if !raw.starts_with(b"HTTP/1.1 200") {
            bail!("{path}: {}", String::from_utf8_lossy(&raw[..end]).lines().next().unwrap_or(""));
        }
        // hyper may frame a close-delimited response as chunked.
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = raw[end..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let mut out = Vec::new();
            let mut d = chunked::Decoder::default();
            d.feed(&body, &mut |b| out.extend_from_slice(b)).map_err(anyhow::Error::msg)?;
            return Ok(out);
        }
        Ok(body)
    }
}

impl Drop for Synthetic {
    fn drop(&mut self) {
        // Closing stdin ends it; kill makes sure.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
