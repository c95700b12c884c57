//! Contract tests of `laminar serve` over real HTTP: a running appliance relaying
//! between two real SeaweedFS servers, driven through its API and its CLI client,
//! its metrics read by Prometheus's own exposition parser, its dashboard loaded by
//! headless Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::appliance::{load, Appliance, SETTLE_TIMEOUT};
use laminar_tests::proxy::{Action, Fault, Match, Proxy};
use laminar_tests::{clouds, laminar_bin, Clouds};
use serde_json::{json, Value};

const KIB: usize = 1024;
const MIB: usize = 1 << 20;

/// Sends SIGTERM to the appliance and waits for its exit code and log.
fn terminate(mut app: Appliance) -> (i32, String) {
    let rc = kill(app.child.id(), libc::SIGTERM);
    assert_eq!(rc, 0);
    let status = app.child.wait().unwrap();
    (status.code().unwrap_or(-1), app.stderr())
}

fn kill(pid: u32, signal: i32) -> i32 {
    // SAFETY: kill has no memory preconditions; the PID is a child this test started.
    unsafe { libc::kill(pid as i32, signal) }
}

fn spec(src: &str, dst: &str) -> Value {
    json!({ "source": format!("a:bkt-a/{src}"), "destination": format!("b:bkt-b/{dst}") })
}

#[test]
fn jobs_run_pause_scale_cancel_and_verify_over_http() {
    let Some(c) = clouds() else { return };
    let small = load(&c, "small", 40, 20 * KIB);
    c.a.upload_file(&write_big(12 * MIB, 1), "bkt-a/small/big-1").unwrap();
    // Engine flags given to serve are every job's defaults.
    let app = Appliance::start(c.config.path(), &["--route", "ram", "--spill-wait", "9s"]);

    // Probes and the OpenAPI document.
    assert_eq!(app.ok("GET", "/healthz", None)["status"], "ok");
    assert_eq!(app.ok("GET", "/readyz", None)["ready"], true);
    let doc = app.ok("GET", "/v1/openapi.json", None);
    assert_eq!(doc["openapi"], "3.0.3");

    // Submit with the CLI client and follow to the end.
    let out = app.laminar_job(&["submit", "a:bkt-a/small", "b:bkt-b/copy", "--follow", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let job: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counters"]["objects_copied"], 41);
    assert_eq!(job["counters"]["bytes_copied"], 40 * 20 * KIB + 12 * MIB);
    let states: Vec<&str> = job["history"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "running", "succeeded"]);
    assert_eq!((&job["options"]["route"], &job["options"]["spill_wait"]), (&json!("ram"), &json!("9s")), "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    c.b.rclone_check_download(&c.a, "bkt-a/small", "bkt-b/copy").unwrap();
    drop(small);

    // A listing check finds it intact; then an object is rewritten behind Laminar's
    // back (same size, other bytes) and both kinds of check name it.
    app.ok("POST", &format!("/v1/jobs/{id}/verify"), None);
    let job = app.wait(&id, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["verify"]["objects_matched"], 41);
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), vec![7u8; 20 * KIB]).unwrap();
    c.b.upload_file(other.path(), "bkt-b/copy/obj-0003").unwrap();
    for download in [false, true] {
        let (status, _) =
            app.call("POST", &format!("/v1/jobs/{id}/verify"), Some(&json!({ "download": download }).to_string()));
        assert_eq!(status, 202);
        let job = app.wait(&id, &["succeeded", "failed"]);
        assert_eq!(job["state"], "failed", "{job}");
        let v = &job["verify"];
        assert_eq!(v["download"], download);
        assert_eq!(v["objects_mismatched"], 1, "{v}");
        assert_eq!(v["problems"][0]["key"], "small/obj-0003", "{v}");
    }

    // Pause and resume: a job of many objects, one at a time, paused at once.
    let _many = load(&c, "many", 300, 16 * KIB);
    let mut s = spec("many", "many");
    s["transfers"] = json!(1);
    let id = app.submit(s);
    let job = app.ok("POST", &format!("/v1/jobs/{id}/pause"), None);
    assert_eq!(job["state"], "paused");
    let (status, err) = app.call("POST", &format!("/v1/jobs/{id}/pause"), None);
    assert_eq!(status, 409);
    assert!(err["error"].as_str().unwrap().contains("paused"), "{err}");
    // Scaled live while paused, then resumed.
    let job = app.ok("PATCH", &format!("/v1/jobs/{id}"), Some(json!({ "transfers": 16 })));
    assert_eq!(job["options"]["transfers"], 16);
    // No store throttled: all 16 are allowed.
    assert_eq!((job["transfers_allowed"].as_u64(), job["counters"]["throttle_cuts"].as_u64()), (Some(16), Some(0)));
    assert_eq!(app.ok("POST", &format!("/v1/jobs/{id}/resume"), None)["state"], "running");
    let job = app.wait(&id, &["succeeded", "failed", "cancelled"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counters"]["objects_copied"], 300);
    let states: Vec<&str> = job["history"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "running", "paused", "running", "succeeded"]);
    let (status, err) = app.call("PATCH", &format!("/v1/jobs/{id}"), Some(r#"{"transfers": 4}"#));
    assert_eq!(status, 409, "{err}");

    // Cancel: what reached the destination is whole; the rest is missing, never partial.
    let _large = load(&c, "large", 6, 9 * MIB);
    let mut s = spec("large", "large");
    s["transfers"] = json!(1);
    s["part_size"] = json!("5MiB");
    let id = app.submit(s);
    app.wait_for(&id, "copied any bytes", |j| j["counters"]["bytes_copied"].as_u64().unwrap() > 0);
    let (status, job) = app.call("POST", &format!("/v1/jobs/{id}/cancel"), None);
    if status == 409 {
        // It finished first: the check below still holds.
        assert!(job["error"].as_str().unwrap().contains("succeeded"), "{job}");
    } else {
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["state"], "cancelled");
    }
    app.wait_for(&id, "finished", |j| !j["finished_at"].is_null());
    let (status, job) = app.call("POST", &format!("/v1/jobs/{id}/verify"), Some(r#"{"download": true}"#));
    assert_eq!(status, 202, "{job}");
    let job = app.wait_for(&id, "verified", |j| j["verify"]["state"] == "done");
    assert_eq!(job["verify"]["objects_mismatched"], 0, "nothing partial may look complete: {job}");

    // Workers and metrics, the latter through Prometheus's own parser.
    let workers = app.ok("GET", "/v1/workers", None);
    let w = &workers["workers"][0];
    for field in ["index", "cpu", "driver", "ram_buffer_bytes", "ram_buffer_bytes_in_use", "objects_in_flight"] {
        assert!(w.get(field).is_some(), "worker lacks {field}: {w}");
    }
    let text = app.http.get(format!("{}/metrics", app.url)).send().unwrap().text().unwrap();
    let families = parse_metrics(&text);
    if let Some(families) = families {
        for name in [
            "laminar_relayed_bytes",
            "laminar_relayed_objects",
            "laminar_retries",
            "laminar_errors",
            "laminar_checksum_mismatches",
            "laminar_transfers_in_flight",
            "laminar_job_transfers_allowed",
            "laminar_ram_buffer_used_bytes",
            "laminar_backend_operation_duration_seconds",
            "laminar_build_info",
            "laminar_worker_driver",
            "laminar_socket_policy",
            "laminar_http_connections",
            "laminar_http_connections_peak",
            "laminar_http_connection_waits",
            "laminar_http_connections_reaped",
            "laminar_throttled",
            "laminar_job_transfers",
            "laminar_job_operations_in_flight",
            "laminar_job_requests",
            "laminar_job_rate_limit_wait_seconds",
            "laminar_job_retries",
            "laminar_job_throttled",
            "laminar_job_errors",
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(families.get(name).is_some(), "metric family {name} missing: {families}");
        }
        assert_eq!(families["laminar_backend_operation_duration_seconds"]["type"], "histogram");
    }
    let secret = secret_of(&c.a.remote_toml("a"));
    assert!(!text.contains(&secret), "metrics leak the secret key");
    assert!(text.contains("laminar_relayed_objects_total{job="));
    let everything = app.ok("GET", "/v1/jobs", None).to_string() + &app.stderr();
    assert!(!everything.contains(&secret), "the API or the log leaks the secret key");
}

/// Parses the exposition with prometheus_client's parser (the reference
/// implementation); returns {family: {"type": ..., "samples": n}}, or None when
/// the parser is not installed and servers are not required.
fn parse_metrics(text: &str) -> Option<Value> {
    let python = std::env::var("LAMINAR_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": len(f.samples)}
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named") && !require_servers() {
            eprintln!("skipping the exposition parse: prometheus_client not installed (tests/run.sh installs it)");
            return None;
        }
        panic!("the Prometheus parser rejected /metrics: {err}\n{text}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The secret key in a remote's TOML.
fn secret_of(toml: &str) -> String {
    let line = toml.lines().find(|l| l.starts_with("secret_access_key")).expect("a secret key");
    line.split('"').nth(1).expect("quoted").to_string()
}

fn write_big(len: usize, seed: u64) -> PathBuf {
    let mut rng = fastrand::Rng::with_seed(seed);
    let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    let path = std::env::temp_dir().join(format!("laminar-serve-big-{}-{seed}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_requests_get_clear_json_errors_and_every_documented_route_answers() {
    let Some(c) = clouds() else { return };
    let app = Appliance::start(c.config.path(), &[]);
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/v1/jobs", Some("{not json"), 400, "malformed JSON"),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","colour":1}"#),
            422,
            "unknown field `colour`",
        ),
        ("POST", "/v1/jobs", Some(r#"{"source":"nope:bkt","destination":"b:bkt-b"}"#), 422, "unknown remote \"nope\""),
        ("POST", "/v1/jobs", Some(r#"{"source":"/tmp/x","destination":"b:bkt-b"}"#), 422, "not a URL"),
        ("POST", "/v1/jobs", Some(r#"{"source":"a:bkt-a"}"#), 422, "missing field `destination`"),
        ("POST", "/v1/jobs", Some(r#"{"source":"a:bkt-a/\u0000x","destination":"b:bkt-b"}"#), 422, "U+0000"),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","include":["a\u0007"]}"#),
            422,
            "U+0007",
        ),
        ("POST", "/v1/jobs", Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","transfers":0}"#), 422, "transfers 0"),
        ("POST", "/v1/jobs", Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","checksum":"crc99"}"#), 422, "crc99"),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","route":"disk"}"#),
            422,
            "route \"disk\"",
        ),
        (
            "POST",
            "/v1/jobs",
            Some(r#"{"source":"a:bkt-a","destination":"b:bkt-b","spill_wait":"soon"}"#),
            422,
            "spill_wait \"soon\"",
        ),
        ("GET", "/v1/jobs/j-00000000", None, 404, "no job"),
        ("POST", "/v1/jobs/j-00000000/pause", None, 404, "no job"),
        ("PATCH", "/v1/jobs/j-00000000", Some(r#"{"transfers":2}"#), 404, "no job"),
        ("DELETE", "/v1/jobs", None, 405, "not allowed"),
        ("GET", "/v1/nowhere", None, 404, "no route"),
        ("GET", "/v1/jobs/%FF", None, 400, "UTF-8"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, value) = app.call(method, path, *body);
        assert_eq!(got, *status, "{method} {path} {body:?}: {value}");
        let error = value["error"].as_str().unwrap_or_else(|| panic!("no JSON error for {method} {path}: {value}"));
        assert!(error.contains(needle), "{method} {path}: {error:?} lacks {needle:?}");
        assert!(!error.contains('\n'), "one line: {error:?}");
    }
    // A bad job id in a well-formed scale request, and a bad scale body on a real job.
    let id = app.submit(json!({"source": "a:bkt-a", "destination": "b:bkt-b/x", "dry_run": true}));
    let (status, value) = app.call("PATCH", &format!("/v1/jobs/{id}"), Some(r#"{"transfers":"many"}"#));
    assert_eq!(status, 422, "{value}");

    // A job as served has every property the document's Job schema names.
    let doc = app.ok("GET", "/v1/openapi.json", None);
    let job = app.job(&id);
    for (name, _) in doc["components"]["schemas"]["Job"]["properties"].as_object().unwrap() {
        assert!(job.get(name).is_some(), "the Job schema names {name}, the server does not send it: {job}");
    }
    for name in job.as_object().unwrap().keys() {
        assert!(doc["components"]["schemas"]["Job"]["properties"].get(name).is_some(), "{name} is not documented");
    }

    // Every path and method in the OpenAPI document is served.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", &id);
            let body = (method != "get").then_some("{}");
            let (status, value) = app.call(&method.to_uppercase(), &concrete, body);
            assert!(status != 405, "{method} {path} is documented but not allowed: {value}");
            assert!(
                !(status == 404 && value.to_string().contains("no route")),
                "{method} {path} is documented but not routed"
            );
        }
    }
}

/// A token long enough for the appliance.
const TOKEN: &str = "s3cr3t-0123456789abcdef0123456789abcdef";

#[test]
fn a_token_guards_the_api_and_off_loopback_needs_one() {
    let Some(c) = clouds() else { return };
    let serve = |args: &[&str]| {
        let out = Command::new(laminar_bin()).arg("--config").arg(c.config.path()).arg("serve").args(args).output();
        let out = out.unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // Off loopback without a token: refused before binding anything.
    let (code, err) = serve(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--token-file") && err.lines().count() == 1, "{err}");
    // A short token is refused, naming the rule.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "s3cr3t\n").unwrap();
    let (code, err) = serve(&["--listen", "127.0.0.1:0", "--token-file", short.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("at least 32") && err.lines().count() == 1, "{err}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut app = Appliance::start(c.config.path(), &["--token-file", token_file.to_str().unwrap()]);
    assert!(app.stderr().contains("chmod 600"), "a token others can read is warned about: {}", app.stderr());
    assert_eq!(app.call("GET", "/healthz", None).0, 200, "/healthz stays open");
    assert_eq!(app.call("GET", "/", None).0, 200, "the dashboard's page (no data in it) stays open");
    for path in ["/readyz", "/metrics", "/v1/jobs", "/v1/workers", "/v1/openapi.json"] {
        let (status, value) = app.call("GET", path, None);
        assert_eq!(status, 401, "{path}: {value}");
        assert!(value["error"].as_str().unwrap().contains("Bearer"), "{value}");
    }
    app.token = Some("wrong".into());
    assert_eq!(app.call("GET", "/v1/jobs", None).0, 401);
    app.token = Some(TOKEN.into());
    for path in ["/readyz", "/metrics", "/v1/jobs", "/v1/workers"] {
        assert_eq!(app.call("GET", path, None).0, 200, "{path}");
    }
    // With a token, any Host is served (the token is the guard): a name behind a proxy.
    let (status, _) = app.raw(&format!(
        "GET /v1/jobs HTTP/1.1\r\nHost: relay.example.internal\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(status, 200);
    // The CLI client with and without the token file.
    let out = app.laminar_job(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = app.laminar_job(&["list", "--token-file", token_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    // The token never shows in logs or metrics.
    let metrics = app.call("GET", "/metrics", None).1.to_string();
    assert!(!metrics.contains("s3cr3t") && !app.stderr().contains("s3cr3t"));
    drop(app);

    // --metrics-public opens /metrics alone.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = Appliance::start(c.config.path(), &["--token-file", token_file.to_str().unwrap(), "--metrics-public"]);
    assert!(!app.stderr().contains("chmod"), "{}", app.stderr());
    assert_eq!(app.call("GET", "/metrics", None).0, 200);
    assert_eq!(app.call("GET", "/v1/jobs", None).0, 401);
}

#[test]
fn the_api_refuses_cross_origin_requests_foreign_hosts_and_bodies_that_are_not_json() {
    let Some(c) = clouds() else { return };
    let app = Appliance::start(c.config.path(), &[]);
    let port = app.addr().port();
    let spec = r#"{"source":"a:bkt-a","destination":"b:bkt-b/x","dry_run":true}"#;
    let post = |headers: &str, body: &str| {
        app.raw(&format!(
            "POST /v1/jobs HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    // What a web page can send without a preflight: text/plain, forms, no type at all.
    for kind in ["Content-Type: text/plain\r\n", "Content-Type: application/x-www-form-urlencoded\r\n", ""] {
        let (status, body) = post(&format!("{host}{kind}"), spec);
        assert_eq!(status, 415, "{kind:?}: {body}");
        assert!(body.contains("application/json") && body.contains("--json"), "{body}");
    }
    // Another origin, even with a JSON body (a CORS request that skipped its preflight).
    let (status, body) =
        post(&format!("{host}Content-Type: application/json\r\nOrigin: http://evil.example\r\n"), spec);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    let (status, _) = post(&format!("{host}Content-Type: application/json\r\nSec-Fetch-Site: cross-site\r\n"), spec);
    assert_eq!(status, 403);
    // DNS rebinding: a foreign name that resolved to 127.0.0.1.
    let (status, body) = post(&format!("Host: evil.example:{port}\r\nContent-Type: application/json\r\n"), spec);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example") && body.contains("DNS rebinding"), "{body}");
    let (status, _) =
        app.raw(&format!("GET /v1/jobs HTTP/1.1\r\nHost: rebind.example:{port}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 403, "reads too: a rebinding page must not see the jobs");
    // None of those made a job.
    assert_eq!(app.ok("GET", "/v1/jobs", None)["jobs"].as_array().unwrap().len(), 0);

    // The same origin, loopback names and a POST with no body are served.
    let (status, body) = post(
        &format!("{host}Content-Type: application/json; charset=utf-8\r\nOrigin: http://127.0.0.1:{port}\r\n"),
        spec,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(&format!("Host: localhost:{port}\r\nContent-Type: application/json\r\n"), spec);
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        app.raw(&format!("POST /v1/jobs/j-00000000/pause HTTP/1.1\r\nHost: [::1]:{port}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 404, "a bodiless POST reaches its route: {body}");

    // Limits, each named in the answer.
    let many: String = (0..70).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let (status, body) = app.raw(&format!("GET /v1/jobs HTTP/1.1\r\n{host}{many}Connection: close\r\n\r\n"));
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("72 header fields") && body.contains("64"), "{body}");
    let big = "y".repeat(20 * 1024);
    let (status, body) = app.raw(&format!("GET /v1/jobs HTTP/1.1\r\n{host}X-Big: {big}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("16384"), "{body}");
    let huge = format!(r#"{{"source":"a:bkt-a","destination":"b:bkt-b","include":["{}"]}}"#, "z".repeat(2 << 20));
    let (status, body) = post(&format!("{host}Content-Type: application/json\r\n"), &huge);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1048576 bytes"), "{body}");
    assert_eq!(app.ok("GET", "/v1/jobs", None)["jobs"].as_array().unwrap().len(), 2);
}

#[test]
fn slow_clients_are_closed_and_connections_beyond_the_limit_are_answered_429() {
    use std::io::{Read, Write};
    let Some(c) = clouds() else { return };
    let app = Appliance::start(c.config.path(), &["--max-connections", "4", "--header-timeout", "1s"]);
    // Four clients that never finish their headers hold every connection.
    let slow: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut conn = std::net::TcpStream::connect(app.addr()).unwrap();
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
            conn
        })
        .collect();
    // One more is answered at once, naming the limit. (The accept loop takes the four
    // slow ones first: they connected first.)
    let (status, body) = app.raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("--max-connections") && body.contains('4'), "{body}");
    // The slow ones are closed by the header timeout (the read ends; a hang would fail
    // the read's own 60 s bound).
    for mut conn in slow {
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        let read = conn.read_to_end(&mut rest);
        assert!(read.is_ok() || rest.is_empty(), "{read:?}");
    }
    // And the API answers again.
    assert_eq!(app.ok("GET", "/healthz", None)["status"], "ok");
}

#[test]
fn the_api_serves_https_with_the_given_certificate() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "laminar test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path, ca_path) =
        (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();

    // A key that is not PEM: one line naming the flag.
    let out = Command::new(laminar_bin())
        .arg("--config")
        .arg(c.config.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert", cert_path.to_str().unwrap(), "--tls-key"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key") && err.lines().count() == 1, "{err}");

    let tls = ["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()];
    let mut args = tls.to_vec();
    args.extend(["--token-file", token_file.to_str().unwrap()]);
    let mut app = Appliance::start_with(c.config.path(), &args, Some(&ca.pem()));
    assert!(app.url.starts_with("https://127.0.0.1:"), "{}", app.url);
    app.token = Some(TOKEN.into());
    assert_eq!(app.ok("GET", "/v1/jobs", None)["jobs"], json!([]));
    // The CLI client trusts the CA it is given, and refuses the server without it.
    let out = app.laminar_job(&[
        "list",
        "--token-file",
        token_file.to_str().unwrap(),
        "--ca-cert",
        ca_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = app.laminar_job(&["list", "--token-file", token_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "an unknown CA is not trusted");
    // Plain HTTP on the TLS port gets no answer.
    let (status, _) = app.raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 0);
}

#[test]
fn sigterm_mid_job_cancels_cleanly_and_leaves_nothing_partial() {
    let Some(c) = clouds() else { return };
    let data = load(&c, "big", 6, 9 * MIB);
    let app = Appliance::start(c.config.path(), &[]);
    let mut s = spec("big", "big");
    s["transfers"] = json!(1);
    s["part_size"] = json!("5MiB");
    let id = app.submit(s);
    app.wait_for(&id, "copied any bytes", |j| j["counters"]["bytes_copied"].as_u64().unwrap() > 0);
    let (code, stderr) = terminate(app);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("shutting down") && stderr.contains("stopped"), "{stderr}");
    // Whatever reached the destination is whole and byte-exact.
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir("bkt-b/big", got.path()).unwrap();
    for entry in std::fs::read_dir(got.path()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(data.path().join(&name)).unwrap(), "{name:?} is partial");
    }
}

#[test]
fn the_dashboard_renders_in_a_real_browser_with_a_job_in_flight() {
    let Some(c) = clouds() else { return };
    let Some(chromium) = find_tool("chromium").or_else(|| find_tool("chromium-browser")) else {
        assert!(!require_servers(), "chromium not installed (tests/run.sh installs it)");
        eprintln!("skipping: chromium not installed (tests/run.sh installs it)");
        return;
    };
    let _many = load(&c, "many", 200, 16 * KIB);
    let app = Appliance::start(c.config.path(), &[]);
    let mut s = spec("many", "many");
    s["transfers"] = json!(1);
    let id = app.submit(s);
    // Paused once some objects are across: in flight, and it stays so while the page loads.
    app.wait_for(&id, "copied any object", |j| j["counters"]["objects_copied"].as_u64().unwrap() > 0);
    let paused = app.call("POST", &format!("/v1/jobs/{id}/pause"), None);
    assert_eq!(paused.0, 200, "{}", paused.1);
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("{}/", app.url))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains(&format!("data-id=\"{id}\"")), "no row for the job:\n{dom}");
    assert!(dom.contains("class=\"job\""), "no job rows:\n{dom}");
    assert!(dom.contains("data-state=\"paused\""), "the row does not show the state:\n{dom}");
    assert!(dom.contains("id=\"throughput-chart\"") && dom.contains("class=\"series\""), "no chart:\n{dom}");
    assert!(dom.contains("class=\"worker\""), "no worker bars:\n{dom}");
    app.ok("POST", &format!("/v1/jobs/{id}/resume"), None);
    assert_eq!(app.wait(&id, &["succeeded", "failed"])["state"], "succeeded");
}

#[test]
fn jobs_share_the_workers_and_one_failing_leaves_the_others_running() {
    let Some(c) = clouds() else { return };
    let _data = load(&c, "shared", 120, 24 * KIB);
    let app = Appliance::start(c.config.path(), &[]);
    // Two good jobs at once, and one whose destination bucket does not exist.
    let first = app.submit(spec("shared", "one"));
    let second = app.submit(spec("shared", "two"));
    let bad = app.submit(json!({ "source": "a:bkt-a/shared", "destination": "b:no-such-bucket/x" }));
    for id in [&first, &second] {
        let job = app.wait(id, &["succeeded", "failed", "cancelled"]);
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["counters"]["objects_copied"], 120);
    }
    let job = app.wait(&bad, &["succeeded", "failed", "cancelled"]);
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("no-such-bucket"), "{job}");
    c.b.rclone_check_download(&c.a, "bkt-a/shared", "bkt-b/one").unwrap();
    c.b.rclone_check_download(&c.a, "bkt-a/shared", "bkt-b/two").unwrap();
    // The log tells each job's life: its start, its end with its counters, a failure
    // with its cause.
    let log = app.stderr();
    for id in [&first, &second] {
        let said = |what: &str| log.lines().any(|l| l.contains(what) && l.contains(&format!("job={id}")));
        assert!(said(" INFO job started") && said("source=a:bkt-a/shared"), "{log}");
        assert!(said(" INFO job succeeded") && said("objects_copied=120"), "{log}");
    }
    let failed = log.lines().find(|l| l.contains(" ERROR job failed: ") && l.contains(&format!("job={bad}")));
    assert!(failed.is_some_and(|l| l.contains("no-such-bucket")), "{log}");
    // The appliance is still ready and takes more work.
    assert_eq!(app.ok("GET", "/readyz", None)["ready"], true);
    let again = app.submit(spec("shared", "one"));
    let job = app.wait(&again, &["succeeded", "failed"]);
    assert_eq!(job["counters"]["objects_skipped"], 120, "a re-run skips what is there: {job}");
}

/// A job into Drive that reaches the daily upload limit waits (state `waiting`, with
/// the reason and when it goes on), and goes on by itself or when resumed; each time
/// the bytes at Drive are exactly the source's and nothing is copied twice.
#[test]
fn a_job_at_drives_daily_limit_waits_and_goes_on_by_itself_or_when_resumed() {
    use laminar_emulators::drive::{DriveEmulator, DriveOptions, Faults};
    let src = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(75);
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("f{i:02}"), std::iter::repeat_with(|| rng.u8(..)).take(8 * KIB + i).collect()))
        .collect();
    for (name, bytes) in &files {
        std::fs::write(src.path().join(name), bytes).unwrap();
    }
    let source = format!("file://{}", src.path().display());
    let held = |emu: &DriveEmulator, folder: &str| -> Vec<(String, Vec<u8>)> {
        let prefix = format!("{folder}/");
        let mut out: Vec<_> = emu
            .tree()
            .into_iter()
            .filter(|e| !e.mime_type.ends_with(".folder"))
            .map(|e| (e.path.strip_prefix(&prefix).expect("under the folder").to_string(), emu.read_id(&e.id).unwrap()))
            .collect();
        out.sort();
        out
    };

    for by_itself in [true, false] {
        let emu = DriveEmulator::start(DriveOptions {
            faults: Faults { daily_upload_bytes_max: Some(1), ..Faults::default() },
            ..DriveOptions::default()
        })
        .expect("start the Drive emulator");
        let config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config.path(), emu.remote_toml("gd")).unwrap();
        let extra: &[&str] = if by_itself { &["--waiting-retry", "1s"] } else { &[] };
        let app = Appliance::start(config.path(), extra);
        let id = app.submit(json!({ "source": source, "destination": "gd:in", "transfers": 1 }));
        let waiting = app.wait(&id, &["waiting", "succeeded", "failed"]);
        assert_eq!(waiting["state"], "waiting", "{waiting}");
        let reason = waiting["waiting"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("daily upload limit"), "{waiting}");
        let retry_at = waiting["waiting"]["retry_at"].as_str().expect("when it goes on");
        if !by_itself {
            // The store's own reset: a day on.
            let at = humantime::parse_rfc3339(retry_at).expect("RFC 3339");
            assert!(at > std::time::SystemTime::now() + Duration::from_secs(23 * 3600), "{waiting}");
        }
        // What is at Drive while it waits is whole and is all the job counts as copied.
        let there = held(&emu, "in");
        assert_eq!(there.len() as u64, waiting["counters"]["objects_copied"].as_u64().unwrap(), "{waiting}");
        assert!(!there.is_empty() && there.len() < files.len(), "{there:?}");
        for (name, bytes) in &there {
            assert!(files.iter().any(|(n, b)| n == name && b == bytes), "{name} at Drive differs");
        }

        emu.new_day();
        emu.update_faults(|f| f.daily_upload_bytes_max = None);
        if !by_itself {
            let resumed = app.ok("POST", &format!("/v1/jobs/{id}/resume"), None);
            assert_ne!(resumed["state"], "waiting", "{resumed}");
        }
        let done = app.wait(&id, &["succeeded", "failed", "cancelled"]);
        assert_eq!(done["state"], "succeeded", "{done}");
        assert!(done["waiting"].is_null(), "{done}");
        let states: Vec<_> = done["history"].as_array().unwrap().iter().map(|t| t["state"].clone()).collect();
        assert!(states.contains(&json!("waiting")), "{states:?}");
        assert_eq!(done["counters"]["objects_copied"], files.len(), "{done}");
        assert_eq!(held(&emu, "in"), files, "Drive holds exactly the source");
    }
}

/// `laminar job verify` between two providers that share no hash: a job Dropbox ->
/// Drive is checked by listings (sizes and Laminar's provenance) and by content (both
/// sides read again and their checksums recomputed), and a source object rewritten
/// after the relay (same size, other bytes) is named by both.
#[test]
fn a_dropbox_to_drive_job_verifies_by_listing_and_by_content() {
    use laminar_emulators::drive::{DriveEmulator, DriveOptions};
    use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("{}\n{}", dbx.remote_toml("dbx"), gd.remote_toml("gd"))).unwrap();
    let mut rng = fastrand::Rng::with_seed(14);
    let mut bytes = |len: usize| -> Vec<u8> { std::iter::repeat_with(|| rng.u8(..)).take(len).collect() };
    let files = [("a.txt", bytes(10 * KIB)), ("Fotos/été.jpg", bytes(300 * KIB)), ("big.bin", bytes(40 * MIB + 7))];
    for (name, data) in &files {
        dbx.insert(&format!("/V/{name}"), data.clone()).unwrap();
    }
    let app = Appliance::start(config.path(), &[]);
    let id = app.submit(json!({ "source": "dbx:V", "destination": "gd:V" }));
    let job = app.wait(&id, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    for download in [false, true] {
        let (status, _) =
            app.call("POST", &format!("/v1/jobs/{id}/verify"), Some(&json!({ "download": download }).to_string()));
        assert_eq!(status, 202);
        let job = app.wait_for(&id, "verified", |j| j["verify"]["state"] == "done");
        assert_eq!(job["verify"]["objects_matched"], files.len(), "{job}");
    }
    // Rewritten at the source after the relay: the destination no longer matches it.
    dbx.insert("/V/Fotos/été.jpg", vec![7u8; 300 * KIB]).unwrap();
    for download in [false, true] {
        let (status, _) =
            app.call("POST", &format!("/v1/jobs/{id}/verify"), Some(&json!({ "download": download }).to_string()));
        assert_eq!(status, 202);
        let job = app.wait_for(&id, "verified", |j| j["verify"]["state"] == "done");
        let v = &job["verify"];
        assert_eq!((v["objects_matched"].as_u64(), v["objects_mismatched"].as_u64()), (Some(2), Some(1)), "{v}");
        assert_eq!(v["problems"][0]["key"], "V/Fotos/été.jpg", "{v}");
    }
}

/// Checks that `bkt-b/PREFIX` holds exactly what `source` holds, byte for byte.
fn assert_same_tree(c: &Clouds, prefix: &str, source: &Path) {
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir(&format!("bkt-b/{prefix}"), got.path()).unwrap();
    let names = |dir: &Path| {
        let mut n: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        n.sort();
        n
    };
    assert_eq!(names(got.path()), names(source), "bkt-b/{prefix} holds every object");
    for name in names(source) {
        let same = std::fs::read(got.path().join(&name)).unwrap() == std::fs::read(source.join(&name)).unwrap();
        assert!(same, "bkt-b/{prefix}/{name:?} differs from its source");
    }
}

#[test]
fn jobs_survive_a_restart_killed_or_clean_and_old_ones_are_pruned() {
    let Some(c) = clouds() else { return };
    let small = load(&c, "keep-small", 5, 20 * KIB);
    let slow = load(&c, "keep-slow", 8, 9 * MIB);
    let held = load(&c, "keep-held", 4, 9 * MIB);
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let start = |extra: &[&str]| Appliance::start_in(c.config.path(), extra, None, &data, tempfile::tempdir().unwrap());
    let big = |src: &str, dst: &str| {
        let mut s = spec(src, dst);
        s["transfers"] = json!(1);
        s["part_size"] = json!("5MiB");
        s
    };

    let app = start(&[]);
    // A: done and checked. B: running when the appliance is killed. C: paused.
    let a = app.submit(spec("keep-small", "keep-small"));
    app.wait(&a, &["succeeded"]);
    app.ok("POST", &format!("/v1/jobs/{a}/verify"), Some(json!({})));
    let a_before = app.wait_for(&a, "checked", |j| j["verify"]["state"] == "done");
    let c_id = app.submit(big("keep-held", "keep-held"));
    app.ok("POST", &format!("/v1/jobs/{c_id}/pause"), None);
    let b = app.submit(big("keep-slow", "keep-slow"));
    app.wait_for(&b, "copied any bytes", |j| j["counters"]["bytes_copied"].as_u64().unwrap() > 0);
    // A second appliance on the same data directory is refused while this one runs.
    let out = Command::new(laminar_bin())
        .env("LAMINAR_DATA_DIR", &data)
        .arg("--config")
        .arg(c.config.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another laminar serve") && err.lines().count() == 1, "{err}");
    drop(app); // SIGKILL

    let app = start(&[]);
    assert!(app.stderr().contains("restored 3 jobs"), "{}", app.stderr());
    let listed: Vec<String> = app.ok("GET", "/v1/jobs", None)["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(listed, [a.clone(), c_id.clone(), b.clone()], "every job, in order");
    // A is as it was: its state, counters and check.
    let a_after = app.job(&a);
    for field in ["state", "counters", "verify", "history", "created_at", "finished_at"] {
        assert_eq!(a_after[field], a_before[field], "{field} of the finished job");
    }
    // C stays paused; B goes on by itself, noting the restart, and ends with every byte.
    assert_eq!(app.job(&c_id)["state"], "paused");
    let b_job = app.wait(&b, &["succeeded", "failed"]);
    assert_eq!(b_job["state"], "succeeded", "{b_job}");
    assert!(b_job["history"].as_array().unwrap().iter().any(|t| t["note"] == "the appliance restarted"), "{b_job}");
    assert_eq!(
        b_job["counters"]["objects_copied"].as_u64().unwrap() + b_job["counters"]["objects_skipped"].as_u64().unwrap(),
        8,
        "{b_job}"
    );
    assert_same_tree(&c, "keep-slow", slow.path());
    app.ok("POST", &format!("/v1/jobs/{c_id}/resume"), None);
    assert_eq!(app.wait(&c_id, &["succeeded", "failed"])["state"], "succeeded");
    assert_same_tree(&c, "keep-held", held.path());
    // New ids never repeat old ones.
    let d = app.submit(spec("keep-small", "keep-small-2"));
    assert!(![&a, &b, &c_id].contains(&&d), "{d}");
    app.wait(&d, &["succeeded"]);

    // A clean stop mid-job does not cancel it: it goes on at the next start.
    let e = app.submit(big("keep-slow", "keep-slow-2"));
    app.wait_for(&e, "copied any bytes", |j| j["counters"]["bytes_copied"].as_u64().unwrap() > 0);
    let (code, stderr) = terminate(app);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("go on at the next start"), "{stderr}");
    let app = start(&[]);
    let e_job = app.wait(&e, &["succeeded", "failed", "cancelled"]);
    assert_eq!(e_job["state"], "succeeded", "{e_job}");
    assert_same_tree(&c, "keep-slow-2", slow.path());
    assert_same_tree(&c, "keep-small", small.path());
    drop(app);

    // Terminal jobs older than --keep-jobs are pruned at start.
    let app = start(&["--keep-jobs", "0s"]);
    assert!(app.stderr().contains("pruned 5 jobs"), "{}", app.stderr());
    assert_eq!(app.ok("GET", "/v1/jobs", None)["jobs"], json!([]));
}

/// This process's TCP sockets connected to `port` that hold a connection
/// (`/proc/<pid>/net/tcp` states 01 established, 02 SYN sent, 08 CLOSE-WAIT), and of
/// those, how many are in CLOSE-WAIT (closed by the server, not yet by `pid`).
fn sockets_to(pid: u32, port: u16) -> (usize, usize) {
    let mut inodes = std::collections::HashSet::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return (0, 0) };
    for fd in fds.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let (mut held, mut close_wait) = (0, 0);
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port != Some(port) || !inodes.contains(f[9]) {
                continue;
            }
            match f[3] {
                "01" | "02" => held += 1,
                "08" => (held, close_wait) = (held + 1, close_wait + 1),
                _ => {}
            }
        }
    }
    (held, close_wait)
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

/// Forty jobs at once, each relaying small objects and one in parts, share the plan's
/// connections per endpoint: sampled while they run, the appliance never holds more
/// sockets to either store than `laminar plan` says; once they are done and the
/// connections idle, none is left in CLOSE-WAIT (nor open at all, past the pool's idle
/// limit); every job's bytes are the source's.
#[test]
fn many_jobs_at_once_stay_within_the_plans_connections_per_endpoint_and_leave_none_in_close_wait() {
    const JOBS: usize = 40;
    let Some(c) = clouds() else { return };
    let source = load(&c, "crowd", 4, 32 * KIB);
    let big = write_big(6 * MIB, 7);
    std::fs::copy(&big, source.path().join("big")).unwrap();
    c.a.upload_file(&big, "bkt-a/crowd/big").unwrap();
    let plan = c.laminar(&["plan", "--json", "--workers", "2", "--ram-buffer", "128MiB"]);
    assert_eq!(plan.status.code(), Some(0));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let bound = plan["connections_per_endpoint"].as_u64().unwrap() as usize;
    let app = Appliance::start(c.config.path(), &["--workers", "2", "--multipart-cutoff", "5MiB"]);
    assert!(app.stderr().contains(&format!("at most {bound} connections per endpoint")), "{}", app.stderr());
    let pid = app.child.id();
    let ports = [port_of(&c.a.endpoint), port_of(&c.b.endpoint)];

    // Samples the sockets to each store until told to stop: the most seen at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut most = [0usize; 2];
            let mut samples = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (m, port) in most.iter_mut().zip(ports) {
                    *m = (*m).max(sockets_to(pid, port).0);
                }
                samples += 1;
                // Paces the sampler (two cores are shared with the appliance and the
                // stores); nothing waits on it.
                std::thread::sleep(Duration::from_millis(2));
            }
            (most, samples)
        })
    };
    let ids: Vec<String> = (0..JOBS)
        .map(|i| {
            let mut s = spec("crowd", &format!("crowd-{i:02}"));
            s["part_size"] = json!("5MiB");
            app.submit(s)
        })
        .collect();
    for id in &ids {
        let job = app.wait(id, &["succeeded", "failed", "cancelled"]);
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["counters"]["objects_copied"], 5, "{job}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (most, samples) = sampler.join().unwrap();
    eprintln!("most sockets at once to a, b: {most:?} over {samples} samples; the plan allows {bound}");
    for (m, name) in most.iter().zip(["a", "b"]) {
        assert!(*m <= bound, "{m} sockets to {name} at once; the plan says at most {bound}");
        assert!(*m > 0, "no socket to {name} was ever seen: the sampler looked at the wrong thing");
    }
    assert_eq!(app.ok("GET", "/healthz", None)["status"], "ok");

    // Idle, the connections are closed: none left in CLOSE-WAIT, then none at all.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now: Vec<(usize, usize)> = ports.iter().map(|p| sockets_to(pid, *p)).collect();
        if now.iter().all(|&(held, _)| held == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "sockets (held, in CLOSE-WAIT) to a and b left after the jobs: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every job's bytes, read back from b and compared with the source.
    let landed = tempfile::tempdir().unwrap();
    c.b.download_dir("bkt-b", landed.path()).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(source.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for i in 0..JOBS {
        for name in &names {
            let want = std::fs::read(source.path().join(name)).unwrap();
            let got = std::fs::read(landed.path().join(format!("crowd-{i:02}")).join(name))
                .unwrap_or_else(|e| panic!("job {i}: {name} did not land: {e}"));
            assert!(got == want, "job {i}: {name} landed with other bytes ({} of {} bytes)", got.len(), want.len());
        }
    }
}

#[test]
fn a_jobs_rate_limits_are_shown_scaled_live_and_kept() {
    let Some(c) = clouds() else { return };
    let _slow = load(&c, "slow", 1, 4 * MIB);
    let app = Appliance::start(c.config.path(), &[]);
    // 4 MiB at 16 KiB/s would take over four minutes, past any wait below: the job
    // ends in time only once the limit is lifted while it runs.
    let mut s = spec("slow", "slow");
    s["bwlimit"] = json!("16K");
    s["tpslimit"] = json!(50);
    let id = app.submit(s);
    let job = app.job(&id);
    assert_eq!((&job["options"]["bwlimit"], &job["options"]["tpslimit"]), (&json!("16K"), &json!(50.0)), "{job}");
    for (body, says) in [
        (r#"{"bwlimit": "fast"}"#, "bwlimit \"fast\""),
        (r#"{"tpslimit": -2}"#, "tpslimit -2"),
        ("{}", "give transfers, bwlimit or tpslimit"),
    ] {
        let (status, err) = app.call("PATCH", &format!("/v1/jobs/{id}"), Some(body));
        assert_eq!(status, 422, "{body}: {err}");
        assert!(err["error"].as_str().unwrap().contains(says), "{body}: {err}");
    }
    app.wait_for(&id, "running", |j| j["state"] == "running");
    let out = app.laminar_job(&["scale", &id, "--bwlimit", "off", "--tpslimit", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let job = app.job(&id);
    assert_eq!((&job["options"]["bwlimit"], &job["options"]["tpslimit"]), (&json!("off"), &Value::Null), "{job}");
    let job = app.wait(&id, &["succeeded", "failed", "cancelled"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    c.b.rclone_check_download(&c.a, "bkt-a/slow", "bkt-b/slow").unwrap();
    let out = app.laminar_job(&["scale", &id]);
    assert_eq!(out.status.code(), Some(2), "nothing to change is a usage error");
}

/// The value of the sample of `name` carrying every label of `labels`, from the
/// exposition text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && all).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn a_job_counts_each_stores_retries_and_throttling_and_the_metrics_label_them_by_remote() {
    require_servers();
    let Some(c) = clouds() else { return };
    let _objects = load(&c, "thr", 20, 16 * KIB);
    // The destination answers its first six PUTs with 503 SlowDown.
    let fault = Fault::Requests {
        matching: Match::first("PUT", "thr", 6),
        action: Action::Answer { status: 503, code: "SlowDown" },
    };
    let proxy = Proxy::start(c.b.addr(), fault);
    c.add_remote("slowb", &proxy.endpoint(), &c.b);
    let app = Appliance::start(c.config.path(), &[]);
    let id = app.submit(json!({ "source": "a:bkt-a/thr", "destination": "slowb:bkt-b/thr", "tpslimit": 500 }));
    let job = app.wait(&id, &["succeeded", "failed"]);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["counters"]["objects_copied"], 20, "{job}");
    c.b.rclone_check_download(&c.a, "bkt-a/thr", "bkt-b/thr").unwrap();

    // Each refusal is the destination's, counted once, and retried.
    let (src, dst) = (&job["stores"]["source"], &job["stores"]["destination"]);
    assert_eq!((src["remote"].as_str(), dst["remote"].as_str()), (Some("a"), Some("slowb")), "{job}");
    assert_eq!(dst["throttled"], 6, "{job}");
    assert!(dst["retries"].as_u64().unwrap() >= 6, "{job}");
    assert_eq!(
        (dst["errors"].as_u64(), src["throttled"].as_u64(), src["errors"].as_u64()),
        (Some(0), Some(0), Some(0))
    );

    let text = app.http.get(format!("{}/metrics", app.url)).send().unwrap().text().unwrap();
    assert_eq!(sample(&text, "laminar_throttled_total", &[("remote", "slowb")]), Some(6.0), "{text}");
    assert_eq!(sample(&text, "laminar_throttled_total", &[("remote", "a")]), Some(0.0), "{text}");
    let retried = sample(&text, "laminar_retries_total", &[("remote", "slowb"), ("kind", "throttled")]);
    assert!(retried.unwrap_or(0.0) >= 6.0, "{text}");
    let job_labels = [("job", id.as_str()), ("side", "destination"), ("remote", "slowb")];
    assert_eq!(sample(&text, "laminar_job_throttled_total", &job_labels), Some(6.0), "{text}");
    // Limits and usage are separate series.
    let job_only = [("job", id.as_str())];
    assert_eq!(sample(&text, "laminar_job_tpslimit_requests_per_second", &job_only), Some(500.0), "{text}");
    assert_eq!(sample(&text, "laminar_job_bwlimit_bytes_per_second", &job_only), None, "unlimited: no series");
    // 20 objects listed, read and written, besides the checks: at least 40 requests.
    assert!(sample(&text, "laminar_job_requests_total", &job_only).unwrap_or(0.0) >= 40.0, "{text}");
    assert_eq!(sample(&text, "laminar_job_operations_in_flight", &job_only), Some(0.0), "{text}");
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0, "{text}");
    assert!(sample(&text, "process_open_fds", &[]).unwrap_or(0.0) > 0.0, "{text}");
    drop(proxy);
}
