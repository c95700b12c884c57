//! Fuzzes the control API of `laminar serve` from its own OpenAPI document with
//! schemathesis (`GET /v1/openapi.json`, the document the appliance serves): every
//! operation gets examples, boundary and malformed cases, random cases and stateful
//! sequences (submit a job, then act on its id), each response checked against the
//! document: never a 5xx, only documented status codes, content types and headers,
//! bodies matching their schemas, schema-violating requests refused, and `Allow` on a
//! 405. Twice: open on loopback, and with `--token-file`, where schemathesis also
//! checks that no operation answers without the token.
//!
//! Bounded and reproducible: a fixed number of cases per operation, a fixed seed,
//! one schemathesis worker, no example database or cache kept between runs, and a
//! liveness limit on each run (past it the run is killed and the test fails with its
//! output).
//!
//! What is forced, and why. Fuzzed jobs must not touch this machine's files or the
//! network, yet `POST /v1/jobs` takes `file:///any/path` and `s3://bucket` (the AWS
//! environment). So:
//! - everything the test starts binds to 127.0.0.1, and the appliance's laminar.toml
//!   names only two `type = "file"` remotes, `src` and `dst`, rooted in the test's
//!   temp dir; the appliance runs with the AWS variables removed (an `s3://` URL is
//!   refused before anything connects) and `HOME` and `LAMINAR_DATA_DIR` in the temp
//!   dir;
//! - a schemathesis `before_call` hook (hooks.py, written into the temp dir and
//!   loaded through `SCHEMATHESIS_HOOKS`) rewrites every job body just before it is
//!   sent: `"dry_run": true` always (a plan lists and writes nothing), and a `source`
//!   or `destination` that is not `src:` or `dst:` with a relative path (any
//!   `file://` or `s3://` URL, another remote, a `..` segment) becomes `src:data` or
//!   `dst:copy`, so no case can list `/` or reach AWS. Checks that send a copy of a
//!   request (without its token, with another content type) copy the rewritten body;
//! - afterwards the test checks that every job the appliance holds is a dry run
//!   between the two remotes and that the destination tree is still empty.
//!
//! schemathesis runs in the temp dir (it writes `.hypothesis/` to its working
//! directory) with `HOME` there too. The appliance is stopped by its PID at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::laminar_bin;
use serde_json::Value;

/// Test cases per API operation in each generating phase (`--max-examples`).
const EXAMPLES_PER_OPERATION: u32 = 50;
/// The seed of every run (`--seed`), so that a failure reproduces.
const SEED: u64 = 20_261_201;
/// Liveness bound on one schemathesis run (a run takes about 15 s on two cores); not a
/// timing assertion: a hang fails with the run's output instead of blocking CI.
const RUN_LIMIT: Duration = Duration::from_secs(100);
/// Liveness bound on one request (`--request-timeout`).
const REQUEST_TIMEOUT_S: u32 = 10;
/// Checks that do not apply to this API. `positive_data_acceptance` wants every
/// schema-valid request accepted, but the document can only type what the server
/// also checks for meaning (a remote that exists, a size such as "16MiB", a duration,
/// globs without control characters); those are the documented 422s.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";
/// Without a token the API is open on loopback by design (README, `laminar serve`),
/// so the checks that every operation needs its bearer token apply to the run with one.
const EXCLUDED_CHECKS_WITHOUT_TOKEN: &str = "positive_data_acceptance,ignored_auth,missing_required_header";

/// The schemathesis hook; see the module's docs.
const HOOKS_PY: &str = r#"# Written by tests/it/api_fuzz.rs: every job schemathesis sends is a dry run
# between the test's two file remotes, rooted in its temp dir.
import schemathesis

REMOTES = ("src", "dst")
FALLBACK = {"source": "src:data", "destination": "dst:copy"}


def in_sandbox(value):
    # Not a string: the server refuses it (422) before it names any place.
    if not isinstance(value, str):
        return True
    name, colon, path = value.partition(":")
    if not colon or name not in REMOTES or path.startswith("/"):
        return False
    return ".." not in path.replace("\\", "/").split("/")


@schemathesis.hook
def before_call(context, case, **kwargs):
    if case.path != "/v1/jobs" or not isinstance(case.body, dict):
        return
    case.body["dry_run"] = True
    for field, fallback in FALLBACK.items():
        if field in case.body and not in_sandbox(case.body[field]):
            case.body[field] = fallback
"#;

/// No cache between runs: each run starts from the seed alone.
const SCHEMATHESIS_TOML: &str = "# Written by tests/it/api_fuzz.rs.\n[cache]\nenabled = false\n";

/// A token of 64 bytes, for `--token-file`.
fn random_token() -> String {
    (0..32).map(|_| format!("{:02x}", fastrand::u8(..))).collect()
}

/// The Python that has schemathesis, or None (skip) when it is missing and servers
/// are not required.
fn schemathesis_python() -> Option<PathBuf> {
    let python = find_tool("python").or_else(|| find_tool("python3"));
    let imports = |p: &PathBuf| {
        Command::new(p).args(["-c", "import schemathesis"]).output().is_ok_and(|out| out.status.success())
    };
    match python.filter(imports) {
        Some(python) => Some(python),
        None => {
            assert!(
                !require_servers(),
                "schemathesis is required (LAMINAR_REQUIRE_SERVERS is set): tests/run.sh installs it into \
                 target/venv and sets LAMINAR_PYTHON"
            );
            eprintln!("skipping: schemathesis not installed (tests/run.sh installs it into target/venv)");
            None
        }
    }
}

/// The temp dir everything lives in: the two remotes' trees, the appliance's data
/// directory, laminar.toml, the hook, schemathesis's config and logs.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let sandbox = Sandbox { dir };
        for sub in ["src/data/sub", "dst", "data", "home"] {
            std::fs::create_dir_all(sandbox.path(sub)).unwrap();
        }
        std::fs::write(sandbox.path("src/data/a.txt"), b"a small object\n").unwrap();
        std::fs::write(sandbox.path("src/data/sub/b.bin"), [7u8; 4096]).unwrap();
        let toml = format!(
            "[remotes.src]\ntype = \"file\"\nroot = {:?}\n\n[remotes.dst]\ntype = \"file\"\nroot = {:?}\n",
            sandbox.path("src").to_str().unwrap(),
            sandbox.path("dst").to_str().unwrap()
        );
        std::fs::write(sandbox.path("laminar.toml"), toml).unwrap();
        std::fs::write(sandbox.path("hooks.py"), HOOKS_PY).unwrap();
        std::fs::write(sandbox.path("schemathesis.toml"), SCHEMATHESIS_TOML).unwrap();
        sandbox
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `token` to a file only its owner can read.
    fn token_file(&self, token: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path("token");
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
        writeln!(file, "{token}").unwrap();
        path
    }
}

/// A running `laminar serve` on the sandbox, stopped by its PID on drop.
struct Appliance {
    child: Child,
    url: String,
    token: Option<String>,
    stderr: PathBuf,
    http: reqwest::blocking::Client,
}

impl Appliance {
    fn start(sandbox: &Sandbox, token: Option<&str>) -> Appliance {
        let stderr = sandbox.path("laminar.stderr");
        let mut cmd = Command::new(laminar_bin());
        cmd.env("LAMINAR_DATA_DIR", sandbox.path("data"))
            .env("HOME", sandbox.path("home"))
            .arg("--config")
            .arg(sandbox.path("laminar.toml"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ram-buffer", "64MiB"]);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(token) = token {
            cmd.arg("--token-file").arg(sandbox.token_file(token));
        }
        let (child, url) = laminar_tests::appliance::spawn_serve(&mut cmd, &stderr);
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().unwrap();
        Appliance { child, url, token: token.map(str::to_string), stderr, http }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("request to the appliance");
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` up to `limit`, then kills it; its status and whether it was killed.
fn wait_bounded(child: &mut Child, limit: Duration) -> (ExitStatus, bool) {
    let pid = child.id() as libc::id_t;
    let (exited, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: siginfo_t is plain data, valid zeroed; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `info` outlives the call. WNOWAIT leaves the child unreaped, so its
            // PID stays its own until `child.wait()` below, and the kill cannot reach another.
            let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let _ = exited.send(());
    });
    let killed = wait.recv_timeout(limit).is_err();
    if killed {
        let _ = child.kill();
    }
    (child.wait().expect("reap schemathesis"), killed)
}

/// Runs schemathesis against `app`'s own document; fails the test with its report
/// when it finds anything.
fn fuzz(python: &Path, sandbox: &Sandbox, app: &Appliance, label: &str) {
    let log_path = sandbox.path(&format!("schemathesis-{label}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "schemathesis.cli", "--config-file"])
        .arg(sandbox.path("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/v1/openapi.json", app.url))
        .args(["--url", &app.url])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--workers", "1", "--generation-database", "none"])
        .args(["--request-timeout", &REQUEST_TIMEOUT_S.to_string()])
        .args(["--checks", "all", "--no-color"]);
    match &app.token {
        Some(token) => cmd.args(["--exclude-checks", EXCLUDED_CHECKS, "-H", &format!("Authorization: Bearer {token}")]),
        // No made-up Authorization headers either: without a token there is none to get right.
        None => cmd
            .args(["--exclude-checks", EXCLUDED_CHECKS_WITHOUT_TOKEN])
            .args(["--generation-with-security-parameters", "false"]),
    };
    cmd.current_dir(sandbox.dir.path())
        .env("SCHEMATHESIS_HOOKS", sandbox.path("hooks.py"))
        .env("HOME", sandbox.path("home"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start schemathesis");
    let (status, killed) = wait_bounded(&mut child, RUN_LIMIT);
    let report = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!("schemathesis ({label}): {status} after {:.1?}", started.elapsed());
    let summary: Vec<&str> = report.lines().filter(|l| l.contains("generated") || l.contains("Seed:")).collect();
    eprintln!("{}", summary.join("\n"));
    assert!(!killed, "schemathesis ({label}) ran past {RUN_LIMIT:?} and was killed:\n{report}");
    assert!(
        status.success(),
        "schemathesis ({label}) found the API and its document disagreeing:\n{report}\n\
         --- the appliance's stderr:\n{}",
        app.stderr()
    );
}

/// What the hook promises: every job was a dry run between the sandbox's remotes,
/// and nothing was written; and the appliance is still up.
fn check_the_jobs_stayed_in_the_sandbox(sandbox: &Sandbox, app: &Appliance) {
    let (status, list) = app.get("/v1/jobs");
    assert_eq!(status, 200, "{list}");
    let jobs = list["jobs"].as_array().expect("a job list");
    assert!(!jobs.is_empty(), "the fuzzing submitted no job at all: the hook or the document is off");
    for job in jobs {
        assert_eq!(job["options"]["dry_run"], true, "a job that was not a dry run: {job}");
        for end in ["source", "destination"] {
            let url = job[end].as_str().unwrap_or_default();
            assert!(url.starts_with("src:") || url.starts_with("dst:"), "a job outside the sandbox: {job}");
        }
    }
    let written: Vec<_> = std::fs::read_dir(sandbox.path("dst")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(written.is_empty(), "dry runs wrote {written:?}");
    assert_eq!(app.get("/healthz").0, 200, "the appliance is still up");
    assert!(!app.stderr().contains("panicked"), "{}", app.stderr());
    eprintln!("{} jobs, every one a dry run in the sandbox", jobs.len());
}

#[test]
fn the_open_api_answers_as_its_document_says() {
    let Some(python) = schemathesis_python() else { return };
    let sandbox = Sandbox::new();
    let app = Appliance::start(&sandbox, None);
    fuzz(&python, &sandbox, &app, "open");
    check_the_jobs_stayed_in_the_sandbox(&sandbox, &app);
}

#[test]
fn the_api_with_a_token_answers_as_its_document_says() {
    let Some(python) = schemathesis_python() else { return };
    let sandbox = Sandbox::new();
    let app = Appliance::start(&sandbox, Some(&random_token()));
    fuzz(&python, &sandbox, &app, "token");
    check_the_jobs_stayed_in_the_sandbox(&sandbox, &app);
}
