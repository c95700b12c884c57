//! A running `laminar serve` for the tests that drive its API, its CLI client or
//! its dashboard: started on a free loopback port with a data directory of its own,
//! stopped by its PID.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{laminar_bin, Clouds};

/// Liveness bound on waiting for a job (not a timing assertion: a hang fails the
/// test with the job's last state instead of blocking CI).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

/// Spawns `cmd` (a `laminar serve` listening on port 0), its log to `stderr`, and
/// reads the address it says it listens on: the child and its base URL. A serve that
/// does not start fails the test with its log.
pub fn spawn_serve(cmd: &mut Command, stderr: &Path) -> (Child, String) {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(stderr).unwrap()).spawn().expect("start laminar serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => (child, url.to_string()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("laminar serve did not start: {line:?}\n{}", std::fs::read_to_string(stderr).unwrap_or_default())
        }
    }
}

/// Uploads `count` objects of `size` bytes under `bkt-a/prefix/`, deterministic bytes.
pub fn load(c: &Clouds, prefix: &str, count: usize, size: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(count as u64 * 31 + size as u64);
    for i in 0..count {
        let bytes: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.path().join(format!("obj-{i:04}")), bytes).unwrap();
    }
    c.a.upload_dir(dir.path(), &format!("bkt-a/{prefix}")).unwrap();
    dir
}

/// A running `laminar serve`, stopped by its PID on drop.
pub struct Appliance {
    /// The process.
    pub child: Child,
    /// Its API's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client for it.
    pub http: reqwest::blocking::Client,
    /// The bearer token sent with every call, if set.
    pub token: Option<String>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Appliance {
    /// Starts it on `config` with `extra` flags after `serve`.
    pub fn start(config: &Path, extra: &[&str]) -> Appliance {
        Appliance::start_with(config, extra, None)
    }

    /// Starts it, trusting `ca_pem` for an https API, with a data directory of its own.
    pub fn start_with(config: &Path, extra: &[&str], ca_pem: Option<&str>) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Appliance::start_in(config, extra, ca_pem, &data, dir)
    }

    /// Starts it on data directory `data` (jobs kept there across restarts).
    pub fn start_in(
        config: &Path,
        extra: &[&str],
        ca_pem: Option<&str>,
        data: &Path,
        dir: tempfile::TempDir,
    ) -> Appliance {
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(laminar_bin());
        cmd.env("LAMINAR_DATA_DIR", data)
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", "127.0.0.1:0", "--ram-buffer", "128MiB", "--shutdown-grace", "60s"])
            .args(extra);
        let (child, url) = spawn_serve(&mut cmd, &stderr);
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        let http = http.build().unwrap();
        Appliance { url, child, http, token: None, stderr, _dir: dir }
    }

    /// Calls the API: the status and the body (JSON, else the text as a string).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().expect("request to the appliance");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Calls the API and asserts a 2xx answer; its JSON body.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (status, value) = self.call(method, path, body.as_deref());
        assert!((200..300).contains(&status), "{method} {path} -> {status}: {value}");
        value
    }

    /// Submits a job; its id.
    pub fn submit(&self, spec: Value) -> String {
        let (status, job) = self.call("POST", "/v1/jobs", Some(&spec.to_string()));
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().unwrap().to_string()
    }

    /// The job's view.
    pub fn job(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/jobs/{id}"), None)
    }

    /// Polls until the job's state is one of `states`.
    pub fn wait(&self, id: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let job = self.job(id);
            if states.contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never reached {states:?}: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `pred` holds for the job.
    pub fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let job = self.job(id);
            if pred(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id}: never {what}: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `laminar job --server URL ARGS...`, echoing what it said.
    pub fn laminar_job(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(laminar_bin()).args(["job", "--server", &self.url]).args(args).output().unwrap();
        crate::echo(&format!("laminar job {}", args.join(" ")), &out);
        out
    }

    /// The API's address, for raw connections.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url.rsplit("//").next().unwrap().parse().unwrap()
    }

    /// Sends `request` as written on a fresh connection; the status and body.
    pub fn raw(&self, request: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).to_string();
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// What the appliance has logged.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
