//! No secret from `laminar.toml` (or the appliance's token file) ever shows where an
//! operator or a scraper can see it.
//!
//! Every key that holds a secret gets a value of its own that names the key
//! (`SECRET-s3.secret_access_key-<16 hex digits>`; or, where the store hands the value
//! out, an access token it minted or a service account's RSA key): S3's
//! `secret_access_key` and `session_token` inline, as `_file` and as `_env`, and
//! `AWS_SECRET_ACCESS_KEY` for `s3://` URLs; Dropbox's `app_secret`, `refresh_token`
//! and `token` in all three forms; Drive's `client_secret`, `refresh_token` and `token`
//! in all three forms and a service account's key file; the secret key of an rclone
//! remote in an rclone config file and in rclone's environment; and `laminar serve
//! --token-file` (and a wrong token given to `laminar job`). Files are written in a
//! temporary directory, variables are set on the child process only. Then the remotes
//! are used as an operator would, on success paths (into each remote and back out) and
//! on failure paths: wrong credentials (the store answers 401 or 403), an endpoint on a
//! closed loopback port, a token endpoint that quotes back the request it refuses, an
//! access token that expired (fixed, or refreshed in the middle of a relay), a bad
//! value next to a secret, a secret of the wrong type (a number, a string for a list),
//! and config files TOML cannot parse. What comes out is searched for every planted
//! value, its random tag and its start, as written and form-encoded (a quote cut short
//! or percent-encoded still shows):
//!
//! - stdout and stderr of `laminar relay` (with `--json`), `laminar ls`, `laminar plan`
//!   (and `--json`), `laminar serve` and `laminar job`, with `LAMINAR_LOG=trace` (every request logged);
//! - the appliance's answers: job views (`GET /v1/jobs`, `/v1/jobs/ID`), error bodies
//!   (a remote that does not resolve is a 422 naming it), `/metrics`, the dashboard
//!   (`GET /`), `/v1/workers`, the probes; and again after a restart restores the jobs;
//! - the data directory (the journal and the job database), and the command lines of
//!   the processes Laminar starts (rclone, whose key pair must not be on it either:
//!   every local user can read a command line).
//!
//! A failure names the key whose secret showed and where, with the line it showed in,
//! and lists every leak seen, not only the first. Everything runs on loopback:
//! SeaweedFS (whose admin identity takes the planted S3 keys), the Dropbox and Drive
//! emulators in this process, `rclone serve s3` started by Laminar, and the quoting
//! token endpoint, a thread of this process. SeaweedFS refuses every session token
//! (`InvalidAccessKeyId`), so session tokens are exercised on failure paths only.
//! Commands that fail wait out the relay's retries at start-up, so each remote's
//! commands run in a thread of their own, and the appliance's jobs all at once.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers, Weed, WeedConfig};
use laminar_emulators::drive::{self, DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{self, DropboxEmulator, DropboxOptions};
use laminar_tests::laminar_bin;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;
/// The bucket every S3 remote (and the rclone remotes) use.
const BUCKET: &str = "bkt";
/// Liveness bound on waiting for a job or a store (not a timing assertion: a hang
/// fails with the last state seen instead of blocking CI).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a job or a store is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Flags of every relay: small parts, so that a 6 MiB file goes as S3 multipart and as
/// a Drive resumable session; one retry, so that failures end soon.
const RELAY_FLAGS: [&str; 8] =
    ["--json", "--multipart-cutoff", "5MiB", "--part-size", "5MiB", "--retries", "1", "--ram-buffer=256MiB"];

/// Every value planted, by the key it was planted in, and every place one was seen.
#[derive(Default)]
struct Secrets {
    /// Key, and the strings that must never show (the value, its random tag, its start).
    planted: Vec<(String, Vec<String>)>,
    leaks: Mutex<Vec<String>>,
}

impl Secrets {
    /// A new distinctive value for `key`.
    fn plant(&mut self, key: &str) -> String {
        let tag = format!("{:016x}", fastrand::u64(..));
        let name: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        let value = format!("SECRET-{name}-{tag}");
        // The start too, as it is and form-encoded: a quote cut short shows a secret's start.
        let start = format!("SECRET-{name}-");
        let encoded: String = start
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        self.planted.push((key.to_string(), vec![value.clone(), tag, start, encoded]));
        value
    }

    /// A value made elsewhere (a minted access token, a key's lines) that is `key`'s.
    fn known(&mut self, key: &str, needles: Vec<String>) {
        assert!(needles.iter().all(|n| n.len() >= 16), "{key}: needles too short to be distinctive");
        self.planted.push((key.to_string(), needles));
    }

    /// A secret that TOML reads as an integer: 18 random digits.
    fn number(&mut self, key: &str) -> String {
        let digits = fastrand::u64(100_000_000_000_000_000..1_000_000_000_000_000_000).to_string();
        self.planted.push((key.to_string(), vec![digits.clone()]));
        digits
    }

    /// Records every planted secret that `text` (what `surface` showed) holds.
    fn check(&self, surface: &str, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        for (key, needles) in &self.planted {
            if let Some(n) = needles.iter().find(|n| text.contains(n.as_str())) {
                let line = text.lines().find(|l| l.contains(n.as_str())).unwrap_or("");
                let line: String = line.chars().take(600).collect();
                self.record(format!("the secret of {key} shows in {surface}: {line}"));
            }
        }
    }

    fn record(&self, leak: String) {
        self.leaks.lock().unwrap().push(leak);
    }

    fn check_output(&self, what: &str, out: &Output) {
        self.check(&format!("the stdout of {what}"), &out.stdout);
        self.check(&format!("the stderr of {what}"), &out.stderr);
    }

    /// Fails naming every leak seen.
    fn assert_none_shown(&self) {
        let leaks = self.leaks.lock().unwrap();
        assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// The tree relayed into every remote: two small files and one of 6 MiB + 1.
fn tree() -> BTreeMap<String, Vec<u8>> {
    let mut t = BTreeMap::new();
    t.insert("a.txt".to_string(), b"nothing secret here\n".to_vec());
    t.insert("sub/b.bin".to_string(), pattern(70_001, 1));
    t.insert("big.bin".to_string(), pattern(6 * MIB + 1, 2));
    t
}

fn write_tree(root: &Path, tree: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in tree {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
}

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for path in files_under(root) {
        let rel = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
        out.insert(rel, std::fs::read(&path).expect("read"));
    }
    out
}

/// Every file below `root`.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A token endpoint that refuses every request with Google's and Dropbox's 400
/// `invalid_grant`, quoting in its description the whole request it was sent, as a
/// careless server might: what Laminar quotes of the answer must not carry what it sent.
/// On loopback; stopped when dropped.
struct Echo {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    // Pairs with the Release store in drop.
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(conn) = conn {
                        let _ = Echo::answer(conn);
                    }
                }
            })
        };
        Echo { url, stop, thread: Some(thread) }
    }

    fn answer(mut conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // The head, then as many bytes of body as its Content-Length says.
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let body_bytes = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + body_bytes {
                    break;
                }
            }
        }
        let said = format!("not accepted: {}", String::from_utf8_lossy(&request));
        let body = json!({ "error": "invalid_grant", "error_description": said }).to_string();
        write!(
            conn,
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop, which sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn report(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or(Value::Null)
}

fn log(what: &str, out: &Output) {
    eprintln!(
        "{what}\n-> {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Drive access token for the emulator's refresh token, as a client would get one.
fn drive_access_token(emu: &DriveEmulator) -> String {
    let e = emu.endpoints();
    let http = reqwest::blocking::Client::new();
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", e.client_id.as_str()),
        ("client_secret", e.client_secret.as_str()),
        ("refresh_token", e.refresh_token.as_str()),
    ];
    let answer: Value = http.post(&e.token_url).form(&form).send().expect("token endpoint").json().expect("JSON");
    answer["access_token"].as_str().expect("an access token").to_string()
}

/// An RSA key in PKCS#8 PEM, from openssl; None where openssl cannot make one.
fn rsa_pem(dir: &Path) -> Option<String> {
    let pem = dir.join("sa-key.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&pem)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("note: openssl cannot make an RSA key here ({made:?}); the service account is left out");
        return None;
    }
    Some(std::fs::read_to_string(&pem).expect("the key"))
}

/// The stores, the secrets planted in them, and a laminar.toml naming every remote.
struct World {
    secrets: Secrets,
    dir: tempfile::TempDir,
    /// Environment of every `laminar` started: the `_env` forms, rclone's remote and
    /// the AWS variables of `s3://` URLs.
    env: Vec<(String, String)>,
    config: PathBuf,
    /// Remotes that work, as URLs of a folder in each.
    good: Vec<String>,
    /// Remotes that resolve and then fail (refused, unreachable, expired).
    failing: Vec<String>,
    /// Remotes whose table is refused (a bad value next to a secret, a mistyped secret).
    broken: Vec<String>,
    /// Config files TOML cannot parse, each with a secret in it.
    unparsable: Vec<PathBuf>,
    tree: BTreeMap<String, Vec<u8>>,
    // Stopped when the world is dropped (the emulators in this process, SeaweedFS by its PID).
    _weed: Weed,
    _echo: Echo,
    _dbx: Vec<DropboxEmulator>,
    _gd: Vec<DriveEmulator>,
}

impl World {
    /// None (the test is skipped with a note) when SeaweedFS or rclone is missing and
    /// servers are not required.
    fn new() -> Option<World> {
        if (find_tool("weed").is_none() || find_tool("rclone").is_none()) && !require_servers() {
            eprintln!("skipping: SeaweedFS or rclone not installed (tests/run.sh installs them)");
            return None;
        }
        let mut s = Secrets::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let secret_dir = dir.path().join("secrets");
        std::fs::create_dir(&secret_dir).expect("secrets dir");
        let file = |name: &str, value: &str| -> String {
            let path = secret_dir.join(name);
            std::fs::write(&path, format!("{value}\n")).expect("secret file");
            path.display().to_string()
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let mut toml = String::new();
        let (mut good, mut failing, mut broken) = (Vec::new(), Vec::new(), Vec::new());
        let down = format!("http://127.0.0.1:{}", closed_port());
        let echo = Echo::start();

        // S3: SeaweedFS's admin identity takes one key pair per form.
        let s3_inline = s.plant("s3.secret_access_key");
        let s3_file = s.plant("s3.secret_access_key_file");
        let s3_env = s.plant("s3.secret_access_key_env");
        let rc_conf = s.plant("rclone.conf secret_access_key");
        let rc_env = s.plant("rclone env RCLONE_CONFIG_LAMENV_SECRET_ACCESS_KEY");
        let aws_env = s.plant("AWS_SECRET_ACCESS_KEY (for s3:// URLs)");
        let pairs = [
            ("AKSECRETSINLINE", &s3_inline),
            ("AKSECRETSFILE", &s3_file),
            ("AKSECRETSENV", &s3_env),
            ("AKSECRETSRCCONF", &rc_conf),
            ("AKSECRETSRCENV", &rc_env),
            ("AKSECRETSAWSENV", &aws_env),
        ];
        let weed = Weed::start_with(&WeedConfig {
            extra_credentials: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..WeedConfig::default()
        })
        .expect("start SeaweedFS");
        weed.create_bucket(BUCKET).expect("bucket");
        let s3 = |name: &str, endpoint: &str, key_id: &str, rest: &str| {
            format!(
                "[remotes.{name}]\ntype = \"s3\"\nendpoint = {endpoint:?}\nregion = \"us-east-1\"\n\
                 access_key_id = {key_id:?}\n{rest}\n"
            )
        };
        let ep = weed.endpoint.clone();
        toml += &s3("s3-inline", &ep, "AKSECRETSINLINE", &format!("secret_access_key = {s3_inline:?}"));
        toml += &s3(
            "s3-file",
            &ep,
            "AKSECRETSFILE",
            &format!("secret_access_key_file = {:?}", file("s3-secret", &s3_file)),
        );
        toml += &s3("s3-env", &ep, "AKSECRETSENV", "secret_access_key_env = \"LAMINAR_TEST_S3_SECRET\"");
        env.push(("LAMINAR_TEST_S3_SECRET".into(), s3_env.clone()));
        good.extend(["s3-inline", "s3-file", "s3-env"].map(|n| format!("{n}:{BUCKET}/{n}")));
        // s3:// URLs take the AWS environment.
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "AKSECRETSAWSENV"),
            ("AWS_SECRET_ACCESS_KEY", aws_env.as_str()),
            ("AWS_ENDPOINT_URL", ep.as_str()),
            ("AWS_REGION", "us-east-1"),
        ] {
            env.push((k.to_string(), v.to_string()));
        }
        good.push(format!("s3://{BUCKET}/aws-env"));
        let wrong = s.plant("s3.secret_access_key(wrong)");
        toml += &s3("s3-wrong", &ep, "AKSECRETSINLINE", &format!("secret_access_key = {wrong:?}"));
        let token = s.plant("s3.session_token");
        toml += &s3(
            "s3-token",
            &ep,
            "AKSECRETSINLINE",
            &format!("secret_access_key = {s3_inline:?}\nsession_token = {token:?}"),
        );
        let token_file = s.plant("s3.session_token_file");
        toml += &s3(
            "s3-token-file",
            &ep,
            "AKSECRETSINLINE",
            &format!(
                "secret_access_key = {s3_inline:?}\nsession_token_file = {:?}",
                file("s3-session-token", &token_file)
            ),
        );
        let token_env = s.plant("s3.session_token_env");
        toml += &s3(
            "s3-token-env",
            &ep,
            "AKSECRETSINLINE",
            &format!("secret_access_key = {s3_inline:?}\nsession_token_env = \"LAMINAR_TEST_S3_SESSION_TOKEN\""),
        );
        env.push(("LAMINAR_TEST_S3_SESSION_TOKEN".into(), token_env));
        let (secret, token) = (s.plant("s3.secret_access_key(unreachable)"), s.plant("s3.session_token(unreachable)"));
        toml += &s3(
            "s3-down",
            &down,
            "AKSECRETSINLINE",
            &format!("secret_access_key = {secret:?}\nsession_token = {token:?}"),
        );
        failing.extend(
            ["s3-wrong", "s3-token", "s3-token-file", "s3-token-env", "s3-down"].map(|n| format!("{n}:{BUCKET}/{n}")),
        );
        let (secret, token) =
            (s.plant("s3.secret_access_key(next to a bad value)"), s.plant("s3.session_token(next to a bad value)"));
        toml += &s3(
            "s3-bad-value",
            &ep,
            "AKSECRETSINLINE",
            &format!("secret_access_key = {secret:?}\nsession_token = {token:?}\npath_style = \"yes\""),
        );
        let typo = s.plant("s3.secret_acess_key(a typo of the key)");
        toml += &s3("s3-typo", &ep, "AKSECRETSINLINE", &format!("secret_acess_key = {typo:?}"));
        let number = s.number("s3.secret_access_key(a number)");
        toml += &s3("s3-number", &ep, "AKSECRETSINLINE", &format!("secret_access_key = {number}"));
        broken.extend(["s3-bad-value", "s3-typo", "s3-number"].map(|n| format!("{n}:{BUCKET}/{n}")));

        // Dropbox: one emulator per form of the refresh flow, each with its own app
        // secret and refresh token; fixed tokens minted by them.
        let mut dbx = Vec::new();
        for form in ["", "_file", "_env"] {
            let opts = DropboxOptions {
                app_secret: s.plant(&format!("dropbox.app_secret{form}")),
                refresh_token: s.plant(&format!("dropbox.refresh_token{form}")),
                ..DropboxOptions::default()
            };
            dbx.push(DropboxEmulator::start(opts).expect("start the Dropbox emulator"));
        }
        let dbx_remote = |name: &str, emu: &DropboxEmulator, api: &str, rest: &str| {
            format!(
                "[remotes.{name}]\ntype = \"dropbox\"\napp_key = {:?}\napi_url = {:?}\ncontent_url = {:?}\n\
                 token_url = {:?}\n{rest}\n",
                emu.app_key(),
                if api.is_empty() { emu.api_url() } else { api.to_string() },
                if api.is_empty() { emu.content_url() } else { api.to_string() },
                if api.is_empty() { emu.token_url() } else { format!("{api}/oauth2/token") },
            )
        };
        let (d0, d1, d2) = (&dbx[0], &dbx[1], &dbx[2]);
        toml += &dbx_remote(
            "dbx-rt",
            d0,
            "",
            &format!("refresh_token = {:?}\napp_secret = {:?}", d0.refresh_token(), d0.app_secret()),
        );
        toml += &dbx_remote(
            "dbx-rt-file",
            d1,
            "",
            &format!(
                "refresh_token_file = {:?}\napp_secret_file = {:?}",
                file("dbx-refresh", d1.refresh_token()),
                file("dbx-app-secret", d1.app_secret())
            ),
        );
        toml += &dbx_remote(
            "dbx-rt-env",
            d2,
            "",
            "refresh_token_env = \"LAMINAR_TEST_DBX_REFRESH\"\napp_secret_env = \"LAMINAR_TEST_DBX_APP_SECRET\"",
        );
        env.push(("LAMINAR_TEST_DBX_REFRESH".into(), d2.refresh_token().to_string()));
        env.push(("LAMINAR_TEST_DBX_APP_SECRET".into(), d2.app_secret().to_string()));
        let tokens = [d0.access_token(), d1.access_token(), d2.access_token()];
        s.known("dropbox.token", vec![tokens[0].clone()]);
        s.known("dropbox.token_file", vec![tokens[1].clone()]);
        s.known("dropbox.token_env", vec![tokens[2].clone()]);
        toml += &dbx_remote("dbx-tok", d0, "", &format!("token = {:?}", tokens[0]));
        toml += &dbx_remote("dbx-tok-file", d1, "", &format!("token_file = {:?}", file("dbx-token", &tokens[1])));
        toml += &dbx_remote("dbx-tok-env", d2, "", "token_env = \"LAMINAR_TEST_DBX_TOKEN\"");
        env.push(("LAMINAR_TEST_DBX_TOKEN".into(), tokens[2].clone()));
        good.extend(
            ["dbx-rt", "dbx-rt-file", "dbx-rt-env", "dbx-tok", "dbx-tok-file", "dbx-tok-env"]
                .map(|n| format!("{n}:{n}")),
        );
        let wrong = s.plant("dropbox.refresh_token(wrong)");
        toml += &dbx_remote(
            "dbx-wrong-rt",
            d0,
            "",
            &format!("refresh_token = {wrong:?}\napp_secret = {:?}", d0.app_secret()),
        );
        let wrong = s.plant("dropbox.app_secret(wrong)");
        toml += &dbx_remote(
            "dbx-wrong-secret",
            d0,
            "",
            &format!("refresh_token = {:?}\napp_secret = {wrong:?}", d0.refresh_token()),
        );
        let wrong = s.plant("dropbox.token(wrong)");
        toml += &dbx_remote("dbx-wrong-tok", d0, "", &format!("token = {wrong:?}"));
        let d3 = DropboxEmulator::start(DropboxOptions {
            app_secret: s.plant("dropbox.app_secret(of the expired token's app)"),
            refresh_token: s.plant("dropbox.refresh_token(of the expired token's app)"),
            ..DropboxOptions::default()
        })
        .expect("start the Dropbox emulator");
        let expired = d3.access_token();
        d3.expire_tokens();
        s.known("dropbox.token(expired)", vec![expired.clone()]);
        toml += &dbx_remote("dbx-expired-tok", &d3, "", &format!("token = {expired:?}"));
        let (rt, secret) = (s.plant("dropbox.refresh_token(unreachable)"), s.plant("dropbox.app_secret(unreachable)"));
        toml += &dbx_remote("dbx-down", d0, &down, &format!("refresh_token = {rt:?}\napp_secret = {secret:?}"));
        let (rt, secret) =
            (s.plant("dropbox.refresh_token(sent to an echo)"), s.plant("dropbox.app_secret(sent to an echo)"));
        toml += &dbx_remote("dbx-echo", d0, &echo.url, &format!("refresh_token = {rt:?}\napp_secret = {secret:?}"));
        failing.extend(
            ["dbx-wrong-rt", "dbx-wrong-secret", "dbx-wrong-tok", "dbx-expired-tok", "dbx-down", "dbx-echo"]
                .map(|n| format!("{n}:{n}")),
        );
        dbx.push(d3);
        let d0 = &dbx[0];
        let token = s.plant("dropbox.token(next to a bad value)");
        toml += &dbx_remote("dbx-bad-root", d0, "", &format!("token = {token:?}\nroot = \"/a/../b\""));
        let (rt, secret) =
            (s.plant("dropbox.refresh_token(next to a bad value)"), s.plant("dropbox.app_secret(next to a bad value)"));
        toml += &dbx_remote(
            "dbx-bad-bool",
            d0,
            "",
            &format!("refresh_token = {rt:?}\napp_secret = {secret:?}\nbatch_commits = \"no\""),
        );
        let (token, rt) =
            (s.plant("dropbox.token(with a refresh token)"), s.plant("dropbox.refresh_token(with a token)"));
        toml += &dbx_remote("dbx-both", d0, "", &format!("token = {token:?}\nrefresh_token = {rt:?}"));
        let number = s.number("dropbox.app_secret(a number)");
        toml += &dbx_remote(
            "dbx-number",
            d0,
            "",
            &format!("refresh_token = {:?}\napp_secret = {number}", d0.refresh_token()),
        );
        broken.extend(["dbx-bad-root", "dbx-bad-bool", "dbx-both", "dbx-number"].map(|n| format!("{n}:{n}")));

        // Drive: the same, plus a service account.
        let mut gd = Vec::new();
        for form in ["", "_file", "_env"] {
            let opts = DriveOptions {
                client_secret: s.plant(&format!("drive.client_secret{form}")),
                refresh_token: s.plant(&format!("drive.refresh_token{form}")),
                ..DriveOptions::default()
            };
            gd.push(DriveEmulator::start(opts).expect("start the Drive emulator"));
        }
        let gd_remote = |name: &str, emu: &DriveEmulator, api: &str, rest: &str| {
            let e = emu.endpoints();
            let (api_url, token_url) =
                if api.is_empty() { (e.api_url, e.token_url) } else { (api.to_string(), format!("{api}/token")) };
            format!(
                "[remotes.{name}]\ntype = \"drive\"\nclient_id = {:?}\napi_url = {api_url:?}\n\
                 token_url = {token_url:?}\n{rest}\n",
                e.client_id
            )
        };
        let (e0, e1, e2) = (gd[0].endpoints(), gd[1].endpoints(), gd[2].endpoints());
        toml += &gd_remote(
            "gd-rt",
            &gd[0],
            "",
            &format!("client_secret = {:?}\nrefresh_token = {:?}", e0.client_secret, e0.refresh_token),
        );
        toml += &gd_remote(
            "gd-rt-file",
            &gd[1],
            "",
            &format!(
                "client_secret_file = {:?}\nrefresh_token_file = {:?}",
                file("gd-client-secret", &e1.client_secret),
                file("gd-refresh", &e1.refresh_token)
            ),
        );
        toml += &gd_remote(
            "gd-rt-env",
            &gd[2],
            "",
            "client_secret_env = \"LAMINAR_TEST_GD_CLIENT_SECRET\"\nrefresh_token_env = \"LAMINAR_TEST_GD_REFRESH\"",
        );
        env.push(("LAMINAR_TEST_GD_CLIENT_SECRET".into(), e2.client_secret.clone()));
        env.push(("LAMINAR_TEST_GD_REFRESH".into(), e2.refresh_token.clone()));
        let tokens = [drive_access_token(&gd[0]), drive_access_token(&gd[1]), drive_access_token(&gd[2])];
        s.known("drive.token", vec![tokens[0].clone()]);
        s.known("drive.token_file", vec![tokens[1].clone()]);
        s.known("drive.token_env", vec![tokens[2].clone()]);
        toml += &gd_remote("gd-tok", &gd[0], "", &format!("token = {:?}", tokens[0]));
        toml += &gd_remote("gd-tok-file", &gd[1], "", &format!("token_file = {:?}", file("gd-token", &tokens[1])));
        toml += &gd_remote("gd-tok-env", &gd[2], "", "token_env = \"LAMINAR_TEST_GD_TOKEN\"");
        env.push(("LAMINAR_TEST_GD_TOKEN".into(), tokens[2].clone()));
        good.extend(
            ["gd-rt", "gd-rt-file", "gd-rt-env", "gd-tok", "gd-tok-file", "gd-tok-env"].map(|n| format!("{n}:{n}")),
        );
        if let Some(pem) = rsa_pem(dir.path()) {
            let lines: Vec<String> =
                pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(str::to_string).collect();
            s.known("drive.service_account_file (its private_key)", lines);
            let key =
                json!({ "type": "service_account", "client_email": e0.service_account_email, "private_key": pem });
            let path = file("gd-sa.json", &key.to_string());
            toml += &gd_remote("gd-sa", &gd[0], "", &format!("service_account_file = {path:?}"));
            good.push("gd-sa:gd-sa".to_string());
        }
        let wrong = s.plant("drive.client_secret(wrong)");
        toml += &gd_remote(
            "gd-wrong-secret",
            &gd[0],
            "",
            &format!("client_secret = {wrong:?}\nrefresh_token = {:?}", e0.refresh_token),
        );
        let wrong = s.plant("drive.refresh_token(wrong)");
        toml += &gd_remote(
            "gd-wrong-rt",
            &gd[0],
            "",
            &format!("client_secret = {:?}\nrefresh_token = {wrong:?}", e0.client_secret),
        );
        let wrong = s.plant("drive.token(wrong)");
        toml += &gd_remote("gd-wrong-tok", &gd[0], "", &format!("token = {wrong:?}"));
        let g3 = DriveEmulator::start(DriveOptions {
            client_secret: s.plant("drive.client_secret(of the expired token's client)"),
            refresh_token: s.plant("drive.refresh_token(of the expired token's client)"),
            ..DriveOptions::default()
        })
        .expect("start the Drive emulator");
        let expired = drive_access_token(&g3);
        g3.expire_tokens();
        s.known("drive.token(expired)", vec![expired.clone()]);
        toml += &gd_remote("gd-expired-tok", &g3, "", &format!("token = {expired:?}"));
        let (secret, rt) = (s.plant("drive.client_secret(unreachable)"), s.plant("drive.refresh_token(unreachable)"));
        toml += &gd_remote("gd-down", &gd[0], &down, &format!("client_secret = {secret:?}\nrefresh_token = {rt:?}"));
        let (secret, rt) =
            (s.plant("drive.client_secret(sent to an echo)"), s.plant("drive.refresh_token(sent to an echo)"));
        toml +=
            &gd_remote("gd-echo", &gd[0], &echo.url, &format!("client_secret = {secret:?}\nrefresh_token = {rt:?}"));
        failing.extend(
            ["gd-wrong-secret", "gd-wrong-rt", "gd-wrong-tok", "gd-expired-tok", "gd-down", "gd-echo"]
                .map(|n| format!("{n}:{n}")),
        );
        gd.push(g3);
        let (secret, rt) =
            (s.plant("drive.client_secret(next to a bad value)"), s.plant("drive.refresh_token(next to a bad value)"));
        toml += &gd_remote(
            "gd-bad-export",
            &gd[0],
            "",
            &format!("client_secret = {secret:?}\nrefresh_token = {rt:?}\nexport = \"docz\""),
        );
        let token = s.plant("drive.token(next to a bad value)");
        toml += &gd_remote("gd-bad-bool", &gd[0], "", &format!("token = {token:?}\nfollow_shortcuts = \"yes\""));
        let (token, rt) = (s.plant("drive.token(with a refresh token)"), s.plant("drive.refresh_token(with a token)"));
        toml += &gd_remote("gd-both", &gd[0], "", &format!("token = {token:?}\nrefresh_token = {rt:?}"));
        let number = s.number("drive.client_secret(a number)");
        toml += &gd_remote(
            "gd-number",
            &gd[0],
            "",
            &format!("client_secret = {number}\nrefresh_token = {:?}", e0.refresh_token),
        );
        let key = s.plant("drive.service_account_file(a key that is no PEM)");
        let not_pem = json!({ "client_email": e0.service_account_email, "private_key": format!(
            "-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"
        ) });
        let path = file("gd-sa-not-pem.json", &not_pem.to_string());
        toml += &gd_remote("gd-sa-not-pem", &gd[0], "", &format!("service_account_file = {path:?}"));
        let key = s.plant("drive.service_account_file(a file that is no JSON)");
        let path = file("gd-sa-not-json.json", &format!("{{\"private_key\": \"{key}\", oops"));
        toml += &gd_remote("gd-sa-not-json", &gd[0], "", &format!("service_account_file = {path:?}"));
        broken.extend(
            ["gd-bad-export", "gd-bad-bool", "gd-both", "gd-number", "gd-sa-not-pem", "gd-sa-not-json"]
                .map(|n| format!("{n}:{n}")),
        );

        // rclone: an S3 remote at SeaweedFS in an rclone config file, and one in
        // rclone's environment; one retry of a failed call, so failures end soon.
        let rclone_s3 = |name: &str, endpoint: &str, key_id: &str, secret: &str| {
            format!(
                "[{name}]\ntype = s3\nprovider = Other\nenv_auth = false\nendpoint = {endpoint}\nregion = us-east-1\n\
                 force_path_style = true\naccess_key_id = {key_id}\nsecret_access_key = {secret}\n\n"
            )
        };
        let wrong = s.plant("rclone.conf secret_access_key(wrong)");
        let unreachable = s.plant("rclone.conf secret_access_key(unreachable)");
        let rclone_conf = file(
            "rclone.conf",
            &[
                rclone_s3("lamconf", &ep, "AKSECRETSRCCONF", &rc_conf),
                rclone_s3("lamwrong", &ep, "AKSECRETSRCCONF", &wrong),
                rclone_s3("lamdown", &down, "AKSECRETSRCCONF", &unreachable),
            ]
            .concat(),
        );
        let empty_conf = file("rclone-empty.conf", "");
        for (k, v) in [
            ("TYPE", "s3"),
            ("PROVIDER", "Other"),
            ("ENV_AUTH", "false"),
            ("ENDPOINT", ep.as_str()),
            ("REGION", "us-east-1"),
            ("FORCE_PATH_STYLE", "true"),
            ("ACCESS_KEY_ID", "AKSECRETSRCENV"),
            ("SECRET_ACCESS_KEY", rc_env.as_str()),
        ] {
            env.push((format!("RCLONE_CONFIG_LAMENV_{k}"), v.to_string()));
        }
        let rclone = |name: &str, remote: &str, conf: &str| {
            format!(
                "[remotes.{name}]\ntype = \"rclone\"\nremote = \"{remote}:{BUCKET}\"\nconfig = {conf:?}\n\
                 serve_args = [\"--low-level-retries\", \"1\"]\n\n"
            )
        };
        toml += &rclone("rc-conf", "lamconf", &rclone_conf);
        toml += &rclone("rc-env", "lamenv", &empty_conf);
        toml += &rclone("rc-wrong", "lamwrong", &rclone_conf);
        toml += &rclone("rc-down", "lamdown", &rclone_conf);
        good.extend(["rc-conf:rc-conf", "rc-env:rc-env"].map(String::from));
        failing.extend(["rc-wrong:rc-wrong", "rc-down:rc-down"].map(String::from));
        let args = s.plant("rclone.serve_args(a string, not a list)");
        toml += &format!(
            "[remotes.rc-args]\ntype = \"rclone\"\nremote = \"lamconf:{BUCKET}\"\nconfig = {rclone_conf:?}\n\
             serve_args = \"--s3-secret-access-key {args}\"\n\n"
        );
        broken.push("rc-args:rc-args".to_string());

        let config = dir.path().join("laminar.toml");
        std::fs::write(&config, &toml).expect("laminar.toml");

        // Files TOML cannot read, each with a secret on or next to the line at fault.
        let mut unparsable = Vec::new();
        let s3_head = format!("[remotes.broken]\ntype = \"s3\"\nendpoint = {ep:?}\naccess_key_id = \"AK\"\n");
        for (what, text) in [
            ("an unterminated string", "secret_access_key = \"{}\n"),
            ("no quotes", "secret_access_key = {}\n"),
            ("a key given twice", "secret_access_key = \"{}\"\nsecret_access_key = \"x\"\n"),
            ("a broken line after it", "secret_access_key = \"{}\"\nregion = \n"),
            ("a quote too many", "secret_access_key = \"{}\"\"\n"),
            ("an inline table", "x = {{ secret_access_key = \"{}\", y }}\n"),
        ] {
            let secret = s.plant(&format!("s3.secret_access_key(in a file with {what})"));
            let path = dir.path().join(format!("unparsable-{}.toml", unparsable.len()));
            std::fs::write(
                &path,
                format!("{s3_head}{}", text.replace("{}", &secret).replace("{{", "{").replace("}}", "}")),
            )
            .expect("config");
            unparsable.push(path);
        }

        let tree = tree();
        write_tree(&dir.path().join("tree"), &tree);
        Some(World {
            secrets: s,
            dir,
            env,
            config,
            good,
            failing,
            broken,
            unparsable,
            tree,
            _weed: weed,
            _echo: echo,
            _dbx: dbx,
            _gd: gd,
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tree_url(&self) -> String {
        format!("file://{}", self.dir.path().join("tree").display())
    }

    /// A `laminar` with the world's environment and debug logs, and data directory
    /// `data` under the world's (one for each of the commands that run at once).
    fn command(&self, config: &Path, data: &str) -> Command {
        let mut cmd = Command::new(laminar_bin());
        cmd.arg("--config")
            .arg(config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("LAMINAR_DATA_DIR", self.data_dir().join(data))
            .env("LAMINAR_LOG", "trace")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `laminar --config CONFIG ARGS` and checks what it printed.
    fn laminar_at(&self, config: &Path, data: &str, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = self.command(config, data).args(args).output().expect("run laminar");
        let what = format!("`laminar {}`", args.join(" "));
        log(&format!("{what} (ran {:.1} s)", started.elapsed().as_secs_f64()), &out);
        self.secrets.check_output(&what, &out);
        out
    }

    fn laminar(&self, data: &str, args: &[&str]) -> Output {
        self.laminar_at(&self.config, data, args)
    }

    fn relay(&self, data: &str, from: &str, to: &str) -> Output {
        let mut args = vec!["relay", from, to];
        args.extend(RELAY_FLAGS);
        self.laminar(data, &args)
    }

    /// Checks every file in the data directory (journal, job database).
    fn check_data_dir(&self) {
        let files = files_under(&self.data_dir());
        assert!(!files.is_empty(), "the data directory holds the journal");
        for path in files {
            let bytes = std::fs::read(&path).expect("read a data file");
            self.secrets.check(&format!("the data directory's {}", path.display()), &bytes);
        }
    }
}

#[test]
fn relays_listings_and_plans_show_no_secret() {
    let Some(w) = World::new() else { return };
    let from = w.tree_url();
    let name = |url: &str| url.split(':').next().expect("a name").to_string();
    // Each remote in a thread of its own: failures wait out the relay's start-up retries.
    std::thread::scope(|scope| {
        for url in &w.good {
            let (w, from, data) = (&w, &from, name(url));
            scope.spawn(move || {
                let out = w.relay(&data, from, url);
                let rep = report(&out);
                assert_eq!(out.status.code(), Some(0), "relay into {url}: {rep}");
                assert_eq!(rep["objects_copied"], w.tree.len(), "relay into {url}: {rep}");
                let out = w.laminar(&data, &["ls", url]);
                assert_eq!(out.status.code(), Some(0), "ls {url}");
                assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), w.tree.len(), "ls {url}");
                let back = w.dir.path().join("back").join(&data);
                let out = w.relay(&data, url, &format!("file://{}", back.display()));
                assert_eq!(out.status.code(), Some(0), "relay out of {url}: {}", report(&out));
                assert_eq!(read_tree(&back), w.tree, "what came back from {url}");
            });
        }
        for url in &w.failing {
            let (w, from, data) = (&w, &from, name(url));
            scope.spawn(move || {
                let out = w.relay(&data, from, url);
                assert_ne!(out.status.code(), Some(0), "relay into {url} fails");
                let out = w.laminar(&data, &["ls", url]);
                assert_ne!(out.status.code(), Some(0), "ls {url} fails");
                let out = w.relay(&data, url, &format!("file://{}", w.dir.path().join("from-failing").display()));
                assert_ne!(out.status.code(), Some(0), "relay out of {url} fails");
            });
        }
    });
    for url in &w.broken {
        let out = w.laminar("broken", &["ls", url]);
        assert_eq!(out.status.code(), Some(2), "ls {url} is a usage error");
        let out = w.relay("broken", &from, url);
        assert_eq!(out.status.code(), Some(2), "relay into {url} is a usage error");
    }
    for config in &w.unparsable {
        let out = w.laminar_at(config, "broken", &["ls", &format!("broken:{BUCKET}")]);
        assert_eq!(out.status.code(), Some(2), "{} is refused", config.display());
        let out = w.laminar_at(config, "broken", &["relay", &from, &format!("broken:{BUCKET}/x"), "--json"]);
        assert_eq!(out.status.code(), Some(2), "{} is refused", config.display());
        // The config is read first; were it taken, the address would end the appliance.
        let out = w.laminar_at(config, "broken", &["serve", "--listen", "no-address"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"), "{} is refused", config.display());
    }
    let out = w.laminar("plan", &["plan", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(report(&out)["workers"].is_u64(), "a plan");
    let out = w.laminar("plan", &["plan"]);
    assert_eq!(out.status.code(), Some(0));
    w.check_data_dir();
    w.secrets.assert_none_shown();
}

/// A running `laminar serve` with a token, stopped by its PID.
struct Appliance {
    child: Child,
    url: String,
    token: String,
    http: reqwest::blocking::Client,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: PathBuf,
}

impl Appliance {
    /// Starts it on the world's config and `serve` data directory, its stderr in `log`.
    fn start(w: &World, token_file: &Path, log: &str) -> Appliance {
        let stderr = w.dir.path().join(log);
        let mut child = w
            .command(&w.config, "serve")
            .args(["serve", "--listen", "127.0.0.1:0", "--ram-buffer", "256MiB", "--token-file"])
            .arg(token_file)
            .args(["--multipart-cutoff", "5MiB", "--part-size", "5MiB", "--retries", "1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start laminar serve");
        let mut line = String::new();
        // Kept open to the end: what else it prints is read (and checked) when it stops.
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("a line");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| {
            panic!("laminar serve did not start: {line:?}\n{}", std::fs::read_to_string(&stderr).unwrap_or_default())
        });
        let token = std::fs::read_to_string(token_file).expect("token").trim().to_string();
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Appliance { child, url: url.to_string(), token, http, stdout, stderr }
    }

    /// A request with the token; the status and the body, checked.
    fn call(&self, w: &World, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let mut r = self.http.request(method.parse().expect("a method"), format!("{}{path}", self.url));
        r = r.bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().expect("request to the appliance");
        let status = resp.status().as_u16();
        let text = resp.text().expect("a body");
        w.secrets.check(&format!("the answer to {method} {path} ({status})"), text.as_bytes());
        (status, text)
    }

    fn job(&self, w: &World, id: &str) -> Value {
        let (status, text) = self.call(w, "GET", &format!("/v1/jobs/{id}"), None);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).expect("a job")
    }

    /// Polls until the job ends.
    fn settle(&self, w: &World, id: &str) -> Value {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let job = self.job(w, id);
            if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never ended: {job}");
            std::thread::sleep(POLL);
        }
    }

    /// Submits a job; its id, or None when it was refused (with the refusal checked).
    fn submit(&self, w: &World, from: &str, to: &str) -> (u16, Option<String>) {
        let spec = json!({ "source": from, "destination": to, "retries": 1 });
        let (status, text) = self.call(w, "POST", "/v1/jobs", Some(spec));
        let id = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["id"].as_str().map(str::to_string));
        (status, id.filter(|_| status == 201))
    }

    /// The command lines of this appliance's children (rclone servers).
    fn children_cmdlines(&self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(pid.as_str()) {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                out.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
        out
    }

    /// SIGTERM, and what it printed all along.
    fn stop(mut self, w: &World, what: &str) {
        // SAFETY: kill has no memory preconditions; the PID is the appliance this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let status = self.child.wait().expect("serve exits");
        let mut stdout = String::new();
        let _ = self.stdout.read_to_string(&mut stdout);
        let stderr = std::fs::read(&self.stderr).unwrap_or_default();
        eprintln!("{what} -> {status}\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&stderr));
        w.secrets.check(&format!("the stdout of {what}"), stdout.as_bytes());
        w.secrets.check(&format!("the stderr of {what}"), &stderr);
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_appliance_shows_no_secret() {
    let Some(mut w) = World::new() else { return };
    let token = w.secrets.plant("serve --token-file");
    let token_file = w.dir.path().join("secrets").join("serve-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let app = Appliance::start(&w, &token_file, "serve.stderr");
    let from = w.tree_url();

    // Every job at once: into each remote, then out of each, then a check of each.
    let taken = |(status, id): (u16, Option<String>), what: &str| {
        id.unwrap_or_else(|| panic!("a job {what} is taken: {status}"))
    };
    let into: Vec<String> = w
        .good
        .iter()
        .map(|url| taken(app.submit(&w, &from, &format!("{url}/serve")), &format!("into {url}")))
        .collect();
    // Failing jobs go on alongside: they wait out the relay's start-up retries.
    let mut failing = Vec::new();
    for url in &w.failing {
        match app.submit(&w, &from, &format!("{url}/serve")) {
            (_, Some(id)) => failing.push((url, id)),
            (status, None) => assert_eq!(status, 422, "a job into {url} is refused or fails"),
        }
    }
    for (url, id) in w.good.iter().zip(&into) {
        let job = app.settle(&w, id);
        assert_eq!(job["state"], "succeeded", "the job into {url}: {job}");
    }
    let back = |url: &str| w.dir.path().join("serve-back").join(url.split(':').next().expect("a name"));
    let out: Vec<String> = w
        .good
        .iter()
        .map(|url| {
            let to = format!("file://{}", back(url).display());
            taken(app.submit(&w, &format!("{url}/serve"), &to), &format!("out of {url}"))
        })
        .collect();
    for (url, id) in w.good.iter().zip(&out) {
        let job = app.settle(&w, id);
        assert_eq!(job["state"], "succeeded", "the job out of {url}: {job}");
        assert_eq!(read_tree(&back(url)), w.tree, "what came back from {url}");
    }
    for id in &into {
        let (status, text) = app.call(&w, "POST", &format!("/v1/jobs/{id}/verify"), Some(json!({})));
        assert_eq!(status, 202, "{text}");
    }
    let cmdlines = app.children_cmdlines();
    assert!(cmdlines.iter().any(|c| c.contains("serve s3")), "the rclone servers run: {cmdlines:?}");
    for (i, cmdline) in cmdlines.iter().enumerate() {
        w.secrets.check(&format!("the command line of the appliance's child {i}"), cmdline.as_bytes());
        // Every local user can read a command line (ps): the key pair Laminar makes for
        // an rclone server (which opens the remote to whoever holds it) is not on it.
        if cmdline.contains("--auth-key") {
            w.secrets.record(format!("the key pair of an rclone server shows on its command line: {cmdline}"));
        }
    }
    for (url, id) in &failing {
        let job = app.settle(&w, id);
        assert_eq!(job["state"], "failed", "the job into {url}: {job}");
    }
    let mut ids: Vec<String> = into.into_iter().chain(out).collect();
    ids.extend(failing.into_iter().map(|(_, id)| id));
    for url in &w.broken {
        let (status, id) = app.submit(&w, &from, &format!("{url}/serve"));
        assert_eq!((status, id), (422, None), "a job into {url} is refused");
    }
    for id in &ids {
        app.settle(&w, id);
    }
    let (status, text) = app.call(&w, "GET", "/v1/jobs", None);
    assert_eq!(status, 200, "{text}");
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    assert!(listed.to_string().contains("check access_key_id and secret_access_key"), "failures are listed: {listed}");
    for path in ["/metrics", "/", "/v1/workers", "/healthz", "/readyz", "/v1/openapi.json", "/v1/jobs/j-00000000"] {
        app.call(&w, "GET", path, None);
    }
    let unauthenticated = app.http.get(format!("{}/v1/jobs", app.url)).send().expect("a request");
    assert_eq!(unauthenticated.status().as_u16(), 401);
    w.secrets.check("a 401 answer", unauthenticated.text().unwrap_or_default().as_bytes());
    for args in [vec!["list"], vec!["show", ids[0].as_str()], vec!["show", ids[ids.len() - 1].as_str()]] {
        let mut all = vec!["job", "--server", app.url.as_str(), "--token-file", token_file.to_str().expect("utf-8")];
        all.extend(args);
        let out = w.laminar("job", &all);
        assert_eq!(out.status.code(), Some(0), "laminar job");
    }
    let wrong_token = w.secrets.plant("laminar job --token-file (a token the appliance does not take)");
    let wrong_file = w.dir.path().join("secrets").join("wrong-token");
    std::fs::write(&wrong_file, &wrong_token).expect("token file");
    let out =
        w.laminar("job", &["job", "--server", &app.url, "--token-file", wrong_file.to_str().expect("utf-8"), "list"]);
    assert_ne!(out.status.code(), Some(0), "a wrong token is refused");

    app.stop(&w, "`laminar serve`");

    // Started again on the same data directory: the jobs are restored, and shown.
    let app = Appliance::start(&w, &token_file, "serve-again.stderr");
    let (status, text) = app.call(&w, "GET", "/v1/jobs", None);
    assert_eq!(status, 200, "{text}");
    let restored: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(restored["jobs"].as_array().map(Vec::len), Some(ids.len()), "every job is restored: {restored}");
    for id in &ids {
        app.job(&w, id);
    }
    app.stop(&w, "`laminar serve` started again");
    w.check_data_dir();
    w.secrets.assert_none_shown();
}

/// Dropbox into Drive, slowly, with every access token on both sides expired once the
/// first file is in Drive: both refresh in the middle of the relay, and say nothing of it.
#[test]
fn tokens_refreshed_in_the_middle_of_a_relay_show_no_secret() {
    let mut s = Secrets::default();
    let dbx = DropboxEmulator::start(DropboxOptions {
        app_secret: s.plant("dropbox.app_secret(refreshed mid-relay)"),
        refresh_token: s.plant("dropbox.refresh_token(refreshed mid-relay)"),
        faults: dropbox::Faults { latency_ms: 10, ..dropbox::Faults::default() },
        ..DropboxOptions::default()
    })
    .expect("start the Dropbox emulator");
    let gd = DriveEmulator::start(DriveOptions {
        client_secret: s.plant("drive.client_secret(refreshed mid-relay)"),
        refresh_token: s.plant("drive.refresh_token(refreshed mid-relay)"),
        faults: drive::Faults { latency_ms: 10, ..drive::Faults::default() },
        ..DriveOptions::default()
    })
    .expect("start the Drive emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("dbx-app-secret");
    std::fs::write(&secret, dbx.app_secret()).expect("secret file");
    let e = gd.endpoints();
    let config = dir.path().join("laminar.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.dbx]\ntype = \"dropbox\"\napp_key = {:?}\napp_secret_file = {:?}\nrefresh_token_env = \
             \"LAMINAR_TEST_DBX_REFRESH\"\napi_url = {:?}\ncontent_url = {:?}\ntoken_url = {:?}\n\n\
             [remotes.gd]\ntype = \"drive\"\nclient_id = {:?}\nclient_secret = {:?}\nrefresh_token_file = {:?}\n\
             api_url = {:?}\ntoken_url = {:?}\n",
            dbx.app_key(),
            secret.display().to_string(),
            dbx.api_url(),
            dbx.content_url(),
            dbx.token_url(),
            e.client_id,
            e.client_secret,
            {
                let path = dir.path().join("gd-refresh");
                std::fs::write(&path, &e.refresh_token).expect("refresh token file");
                path.display().to_string()
            },
            e.api_url,
            e.token_url,
        ),
    )
    .expect("laminar.toml");
    let files = 30;
    for i in 0..files {
        dbx.insert(&format!("/Seed/f{i:02}.bin"), pattern(10_000 + i, i as u64)).expect("seed Dropbox");
    }
    let child = Command::new(laminar_bin())
        .arg("--config")
        .arg(&config)
        .args(["relay", "dbx:Seed", "gd:Tokens", "--transfers", "2", "--json"])
        .env("LAMINAR_TEST_DBX_REFRESH", dbx.refresh_token())
        .env("LAMINAR_DATA_DIR", dir.path().join("data"))
        .env("LAMINAR_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run laminar");
    let uploads = || {
        let r = gd.stats().requests;
        ["files.create_multipart", "files.create_resumable"]
            .iter()
            .map(|n| r.get(*n).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while uploads() == 0 {
        assert!(Instant::now() < deadline, "no file reached Drive");
        std::thread::sleep(Duration::from_millis(2));
    }
    dbx.expire_tokens();
    gd.expire_tokens();
    let out = child.wait_with_output().expect("laminar ends");
    log("`laminar relay dbx:Seed gd:Tokens` with tokens expired", &out);
    let rep = report(&out);
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_eq!(rep["objects_copied"], files, "{rep}");
    let (d, g) = (dbx.stats(), gd.stats());
    assert!(d.auth_rejected >= 1 && d.requests.get("oauth2/token").is_some_and(|&c| c >= 2), "{d:?}");
    assert!(g.unauthorized >= 1 && g.refresh_grants >= 2, "{g:?}");
    s.check_output("`laminar relay` with tokens refreshed mid-relay", &out);
    for path in files_under(&dir.path().join("data")) {
        s.check(&format!("the data directory's {}", path.display()), &std::fs::read(&path).expect("read"));
    }
    s.assert_none_shown();
}
