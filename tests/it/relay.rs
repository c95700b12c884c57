//! End-to-end relays between real SeaweedFS servers and local trees, through the
//! `laminar` binary, on both event-loop drivers.

use std::path::Path;
use std::process::{Command, Output};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::proxy::{Fault, Proxy};
use laminar_tests::{clouds, laminar_bin};

const MIB: u64 = 1 << 20;
const PART: u64 = 5 * MIB;

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON object on stdout")
}

fn write_file(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Every file under `a` equals its twin under `b`, and `b` has nothing more.
fn assert_same_tree(a: &Path, b: &Path) {
    fn walk(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    out.push((rel + "/", None));
                    stack.push(p);
                } else {
                    out.push((rel, Some(std::fs::read(&p).unwrap())));
                }
            }
        }
        out.sort();
        out
    }
    let (wa, wb) = (walk(a), walk(b));
    assert_eq!(wa.iter().map(|e| &e.0).collect::<Vec<_>>(), wb.iter().map(|e| &e.0).collect::<Vec<_>>());
    for (x, y) in wa.iter().zip(&wb) {
        assert!(x.1 == y.1, "{} differs", x.0);
    }
}

const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

#[test]
fn sizes_around_part_boundaries_on_both_drivers() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    for (i, len) in [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7].into_iter().enumerate() {
        write_file(src.path(), &format!("sizes/len-{len}"), &pattern(len, i as u64));
    }
    let src_url = format!("file://{}", src.path().display());
    let part = PART.to_string();
    for driver in DRIVERS {
        let flags = ["--driver", driver, "--part-size", &part, "--multipart-cutoff", &part, "--json"];
        // file -> S3 a -> S3 b -> file, each hop checked.
        let up = c.laminar(&[&["relay", &src_url, &format!("a:bkt-a/{driver}")], &flags[..]].concat());
        assert_eq!(up.status.code(), Some(0));
        assert_eq!(json(&up)["objects_copied"], 6);
        let across =
            c.laminar(&[&["relay", &format!("a:bkt-a/{driver}"), &format!("b:bkt-b/{driver}")], &flags[..]].concat());
        assert_eq!(across.status.code(), Some(0));
        assert_eq!(json(&across)["objects_copied"], 6);
        let back = tempfile::tempdir().unwrap();
        let down = c.laminar(
            &[&["relay", &format!("b:bkt-b/{driver}"), &format!("file://{}", back.path().display())], &flags[..]]
                .concat(),
        );
        assert_eq!(down.status.code(), Some(0));
        assert_same_tree(src.path(), back.path());
        // An independent tool agrees.
        c.b.rclone_check_download(&c.a, &format!("bkt-a/{driver}"), &format!("bkt-b/{driver}")).expect("rclone check");
    }
}

#[test]
fn object_larger_than_ram_buffer_keeps_memory_bounded() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "big", &pattern(160 * MIB, 9));
    // Below the multipart cutoff but larger than a worker's share of the buffer.
    write_file(src.path(), "mid", &pattern(20 * MIB, 10));
    let up = c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/big"]);
    assert_eq!(up.status.code(), Some(0));
    let ram = 32 * MIB;
    let out =
        c.laminar(&["relay", "a:bkt-a/big", "b:bkt-b/big", "--ram-buffer", "32MiB", "--part-size", "5MiB", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    // The relay reports its own VmHWM: wait4's maxrss would include the test process's
    // memory at fork time.
    let peak = json(&out)["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
    assert!(peak < ram + 64 * MIB, "peak RSS {} MiB is over the 32 MiB RAM buffer + 64 MiB", peak / MIB);
    c.b.rclone_check_download(&c.a, "bkt-a/big", "bkt-b/big").expect("rclone check");
}

#[test]
fn two_thousand_small_objects_then_a_rerun_copies_nothing() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    for i in 0..2000u64 {
        write_file(src.path(), &format!("d{}/o{i:05}", i % 7), &pattern(i % 4096, i));
    }
    let up = c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/many", "--json"]);
    assert_eq!(up.status.code(), Some(0));
    assert_eq!(json(&up)["objects_copied"], 2000);
    let across = c.laminar(&["relay", "a:bkt-a/many/", "b:bkt-b/many", "--json"]);
    assert_eq!(json(&across)["objects_copied"], 2000);
    c.b.rclone_check_download(&c.a, "bkt-a/many", "bkt-b/many").expect("rclone check");
    for (from, to) in
        [(format!("file://{}", src.path().display()), "a:bkt-a/many"), ("a:bkt-a/many".to_string(), "b:bkt-b/many/")]
    {
        let again = c.laminar(&["relay", &from, to, "--json"]);
        assert_eq!(again.status.code(), Some(0));
        let j = json(&again);
        assert_eq!(j["objects_copied"], 0, "a re-run copies nothing");
        assert_eq!(j["objects_skipped"], 2000);
    }
    // A dry run after one change lists exactly that object.
    write_file(src.path(), "d0/o00000", b"changed");
    let dry = c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/many", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("would copy d0/o00000"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("would copy")).count(), 1);
}

#[test]
fn awkward_keys_survive_byte_for_byte() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    let long =
        format!("{}/{}/{}/{}/{}", "l".repeat(200), "o".repeat(200), "n".repeat(200), "g".repeat(200), "k".repeat(150));
    assert!(long.len() >= 950);
    for key in
        ["sp ace", "plus+sign", "per%cent", "ünïcødé/日本語", "a/b/c/d/e/f/g/h/deep", "q?uery&amp=x", "tilde~", &long]
    {
        write_file(src.path(), key, key.as_bytes());
    }
    std::fs::create_dir_all(src.path().join("empty-dir")).unwrap();
    let src_url = format!("file://{}", src.path().display());
    assert_eq!(c.laminar(&["relay", &src_url, "a:bkt-a/keys"]).status.code(), Some(0));
    assert_eq!(c.laminar(&["relay", "a:bkt-a/keys", "b:bkt-b/keys"]).status.code(), Some(0));
    let back = tempfile::tempdir().unwrap();
    assert_eq!(
        c.laminar(&["relay", "b:bkt-b/keys", &format!("file://{}", back.path().display())]).status.code(),
        Some(0)
    );
    assert_same_tree(src.path(), back.path());
    let ls = c.laminar(&["ls", "b:bkt-b/keys"]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(
        listing.lines().any(|l| l.ends_with(" empty-dir/")),
        "directory marker listed, relative to the path: {listing}"
    );
}

#[test]
fn metadata_travels() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "page.html", b"<html></html>");
    let out = c.a.rclone(&[
        "copy",
        &src.path().display().to_string(),
        "a:bkt-a/meta",
        "--header-upload",
        "Content-Type: text/x-laminar",
        "--header-upload",
        "Cache-Control: max-age=60",
        "--header-upload",
        "X-Amz-Meta-Color: blue",
    ]);
    assert!(out.unwrap().status.success());
    assert_eq!(c.laminar(&["relay", "a:bkt-a/meta", "b:bkt-b/meta", "--no-server-side-copy"]).status.code(), Some(0));
    let out = c.b.rclone(&["lsjson", "--metadata", "b:bkt-b/meta/page.html"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("text/x-laminar"), "{text}");
    assert!(text.contains("max-age=60"), "{text}");
    assert!(text.contains("\"color\":\"blue\""), "{text}");
    // mtime travels too: rclone reads it from x-amz-meta-mtime.
    let src_mtime = std::fs::metadata(src.path().join("page.html")).unwrap().modified().unwrap();
    let back = tempfile::tempdir().unwrap();
    assert_eq!(
        c.laminar(&["relay", "b:bkt-b/meta", &format!("file://{}", back.path().display())]).status.code(),
        Some(0)
    );
    let back_mtime = std::fs::metadata(back.path().join("page.html")).unwrap().modified().unwrap();
    let diff = src_mtime.duration_since(back_mtime).unwrap_or_else(|e| e.duration());
    assert!(diff.as_millis() < 1000, "mtime preserved within rclone's precision");
}

#[test]
fn a_byte_corrupted_in_flight_is_caught() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "victim", &pattern(2 * MIB, 77));
    assert_eq!(c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/c"]).status.code(), Some(0));
    for (name, fault, upstream) in [
        ("srcflip", Fault::FlipResponseByte { after_bytes: MIB }, &c.a),
        ("dstflip", Fault::FlipRequestByte { after_bytes: MIB }, &c.b),
    ] {
        let proxy = Proxy::start(upstream.addr(), fault);
        c.add_remote(name, &proxy.endpoint(), upstream);
        let (from, to) = if name == "srcflip" {
            (format!("{name}:bkt-a/c"), format!("b:bkt-b/{name}-0"))
        } else {
            ("a:bkt-a/c".to_string(), format!("{name}:bkt-b/{name}-0"))
        };
        // No retries: the corruption must be reported, and nothing left behind.
        let out = c.laminar(&["relay", &from, &to, "--retries", "0", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{name}: corrupted object must fail");
        let j = json(&out);
        assert_eq!(j["objects_failed"], 1);
        assert!(j["failures"][0]["reason"].as_str().unwrap().contains("checksum"), "{j}");
        let ls = c.laminar(&["ls", &format!("b:bkt-b/{name}-0")]);
        assert!(String::from_utf8_lossy(&ls.stdout).trim().is_empty(), "{name}: no object left at the destination");
    }
    // With retries (the fault fires once), the object arrives intact.
    let proxy = Proxy::start(c.a.addr(), Fault::FlipResponseByte { after_bytes: MIB });
    c.add_remote("srcflip2", &proxy.endpoint(), &c.a);
    let out = c.laminar(&["relay", "srcflip2:bkt-a/c", "b:bkt-b/retried", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    c.b.rclone_check_download(&c.a, "bkt-a/c", "bkt-b/retried").expect("rclone check");
}

#[test]
fn a_server_dying_mid_transfer_leaves_no_complete_partial_object() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "large", &pattern(40 * MIB, 5));
    assert_eq!(c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/k"]).status.code(), Some(0));
    let proxy = Proxy::start(c.b.addr(), Fault::CutAfterRequest { request_bytes: 12 * MIB });
    c.add_remote("dying", &proxy.endpoint(), &c.b);
    let out = c.laminar(&["relay", "a:bkt-a/k", "dying:bkt-b/k", "--retries", "1", "--part-size", "5MiB", "--json"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let text = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("connect") || text.contains("reset") || text.contains("closed"), "clear error: {text}");
    assert!(!err.contains("panicked"), "{err}");
    let ls = c.laminar(&["ls", "b:bkt-b/k"]);
    assert!(String::from_utf8_lossy(&ls.stdout).trim().is_empty(), "no object completed at the destination");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let Some(c) = clouds() else { return };
    let bad_key = c.a.remote_toml("wrongkey").replace(&c.a.secret_key, "not-the-secret");
    let mut cfg = std::fs::read_to_string(c.config.path()).unwrap();
    cfg.push('\n');
    cfg.push_str(&bad_key);
    cfg.push_str("\n[remotes.dead]\ntype = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\naccess_key_id = \"x\"\nsecret_access_key = \"y\"\n");
    std::fs::write(c.config.path(), cfg).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let file_url = format!("file://{}", empty.path().display());
    let cases: &[(&[&str], i32, &str)] = &[
        (&["relay", "nosuch:bkt/x", &file_url], 2, "unknown remote"),
        (&["relay", "ftp://x/y", &file_url], 2, "unknown scheme"),
        (&["relay", "a:bkt-a", "/tmp/x"], 2, "file:///tmp/x"),
        (&["relay", "wrongkey:bkt-a", &file_url], 2, "secret_access_key"),
        (&["relay", "a:no-such-bucket", &file_url], 2, "does not exist"),
        (&["relay", "dead:bkt", &file_url], 1, "cannot connect"),
        (&["relay", &file_url, "file:///proc/laminar-unwritable"], 2, "destination"),
        (&["relay", "a:bkt-a", &file_url, "--ram-buffer", "lots"], 2, "--ram-buffer"),
        (&["relay", "a:bkt-a", &file_url, "--hash", "crc7"], 2, "--hash"),
    ];
    for (args, code, needle) in cases {
        let out = c.laminar(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(!err.contains("not-the-secret") && !err.contains(&c.a.secret_key), "secrets never printed");
    }
}

#[test]
fn keys_that_would_escape_a_file_root_are_refused() {
    let Some(c) = clouds() else { return };
    // S3 keys with ".." segments can't be written under a file root.
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "ok", b"fine");
    assert_eq!(
        c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/esc"]).status.code(),
        Some(0)
    );
    let out =
        c.a.rclone(&["copyto", &src.path().join("ok").display().to_string(), "a:bkt-a/esc/x/../../../evil"]).unwrap();
    if !out.status.success() {
        // The server normalised or refused the key; nothing to test against it.
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("root");
    let out = c.laminar(&["relay", "a:bkt-a/esc", &format!("file://{}", root.display()), "--json"]);
    assert!(!parent.path().join("evil").exists());
    assert!(root.join("ok").exists());
    let j = json(&out);
    if j["objects_failed"] == 1 {
        assert!(j["failures"][0]["reason"].as_str().unwrap().contains("escape"), "{j}");
    }
}

#[test]
fn https_to_a_second_s3_implementation_with_a_private_ca() {
    if find_tool("rclone").is_none() && !require_servers() {
        eprintln!("skipping: rclone not installed");
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let ca = laminar_bench::servers::TestCa::create(pki.path()).expect("openssl makes a test CA");
    let server = laminar_bench::servers::RcloneS3::start("tls-bkt", Some(&ca)).expect("rclone serve s3 over TLS");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), server.remote_toml("t")).unwrap();
    let src = tempfile::tempdir().unwrap();
    for (i, len) in [10, 70_000, 12 * MIB].into_iter().enumerate() {
        write_file(src.path(), &format!("d/f{i}"), &pattern(len, 100 + i as u64));
    }
    let run = |args: &[&str], trust: bool| {
        let mut cmd = Command::new(laminar_bin());
        cmd.arg("--config").arg(config.path()).args(args);
        if trust {
            cmd.env("SSL_CERT_FILE", &ca.ca_pem);
        }
        cmd.output().unwrap()
    };
    // Without the CA the certificate is refused, in one line that says what to do.
    let refused = run(&["relay", &format!("file://{}", src.path().display()), "t:tls-bkt/x"], false);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("certificate") && err.contains("SSL_CERT_FILE"), "{err}");
    let part = (5 * MIB).to_string();
    let up = run(
        &[
            "relay",
            &format!("file://{}", src.path().display()),
            "t:tls-bkt/x",
            "--multipart-cutoff",
            &part,
            "--part-size",
            &part,
        ],
        true,
    );
    assert_eq!(up.status.code(), Some(0), "{}", String::from_utf8_lossy(&up.stderr));
    let back = tempfile::tempdir().unwrap();
    let down = run(&["relay", "t:tls-bkt/x", &format!("file://{}", back.path().display())], true);
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert_same_tree(src.path(), back.path());
}

#[test]
fn throttling_is_retried_with_backoff() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    for i in 0..5u64 {
        write_file(src.path(), &format!("t{i}"), &pattern(1000 + i, i));
    }
    assert_eq!(
        c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/slow"]).status.code(),
        Some(0)
    );
    // The first three connections are answered 503 SlowDown (Retry-After: 1).
    let proxy = Proxy::start(c.b.addr(), Fault::SlowDownFirst { connections: 3 });
    c.add_remote("throttled", &proxy.endpoint(), &c.b);
    let out = c.laminar(&["relay", "a:bkt-a/slow", "throttled:bkt-b/slow", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["objects_copied"], 5);
    assert!(proxy.fault_fired());
    // With no retries, the same throttling is a reported failure, not a hang or a panic.
    let proxy = Proxy::start(c.b.addr(), Fault::SlowDownFirst { connections: 1000 });
    c.add_remote("throttled2", &proxy.endpoint(), &c.b);
    let out = c.laminar(&["relay", "a:bkt-a/slow", "throttled2:bkt-b/slow2", "--retries", "0"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SlowDown"));
}

#[test]
fn a_store_that_throttles_gets_fewer_objects_at_once_and_none_fails_for_it() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    for i in 0..40u64 {
        write_file(src.path(), &format!("o{i:02}"), &pattern(3000 + i, i));
    }
    let up = c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/narrow"]);
    assert_eq!(up.status.code(), Some(0));
    // The destination takes 4 requests at once and answers the rest 503 SlowDown.
    let proxy = Proxy::start(c.b.addr(), Fault::ThrottleRequestsAbove { requests: 4 });
    c.add_remote("narrow", &proxy.endpoint(), &c.b);
    // 32 objects at once over every worker, and one retry: retried alone, most
    // objects would fail (the store keeps refusing as long as 32 are in flight), but
    // throttling halves the objects in flight instead, and until that limit is down
    // to one a throttled attempt is not counted as a retry.
    let args = ["relay", "a:bkt-a/narrow", "narrow:bkt-b/narrow", "--json", "--transfers", "32"];
    let out = c.laminar(&[&args[..], &["--retries", "1"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["objects_copied"], 40, "{report}");
    assert!(proxy.fault_fired());
    assert!(report["throttle_cuts"].as_u64().unwrap() >= 1, "{report}");
    let lowest = report["transfers_lowest"].as_u64().unwrap();
    assert!((1..=16).contains(&lowest), "{report}");
    c.b.rclone_check_download(&c.a, "bkt-a/narrow", "bkt-b/narrow").unwrap();
    // Parts of large objects wait under the limit too: 8 part streams against 4.
    let big = tempfile::tempdir().unwrap();
    for i in 0..2u64 {
        write_file(big.path(), &format!("big{i}"), &pattern(4 * PART + i, 50 + i));
    }
    let part = PART.to_string();
    let sizes = ["--part-size", &part, "--multipart-cutoff", &part];
    let up = c
        .laminar(&[&["relay", &format!("file://{}", big.path().display()), "a:bkt-a/narrow-big"], &sizes[..]].concat());
    assert_eq!(up.status.code(), Some(0));
    let across =
        ["relay", "a:bkt-a/narrow-big", "narrow:bkt-b/narrow-big", "--json", "--workers", "1", "--part-streams", "8"];
    let out = c.laminar(&[&across[..], &sizes[..], &["--retries", "1"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["objects_copied"], 2, "{report}");
    assert!(report["throttle_cuts"].as_u64().unwrap() >= 1, "{report}");
    c.b.rclone_check_download(&c.a, "bkt-a/narrow-big", "bkt-b/narrow-big").unwrap();
    // A relay that was never throttled says so.
    let calm = json(&c.laminar(&["relay", "a:bkt-a/narrow", "b:bkt-b/calm", "--json"]));
    assert_eq!((calm["throttle_cuts"].as_u64(), calm["transfers_lowest"].as_u64()), (Some(0), None), "{calm}");
}

#[test]
fn every_checksum_algorithm_round_trips() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "small", &pattern(300_000, 1));
    write_file(src.path(), "large", &pattern(2 * PART + 99, 2));
    let part = PART.to_string();
    for algo in ["crc32c", "crc64nvme", "sha256", "md5"] {
        let flags = ["--hash", algo, "--part-size", &part, "--multipart-cutoff", &part];
        let to = format!("a:bkt-a/algo-{algo}");
        let up = c.laminar(&[&["relay", &format!("file://{}", src.path().display()), &to], &flags[..]].concat());
        assert_eq!(up.status.code(), Some(0), "{algo}");
        let across = c.laminar(&[&["relay", &to, &format!("b:bkt-b/algo-{algo}")], &flags[..]].concat());
        assert_eq!(across.status.code(), Some(0), "{algo}");
        c.b.rclone_check_download(&c.a, &format!("bkt-a/algo-{algo}"), &format!("bkt-b/algo-{algo}"))
            .unwrap_or_else(|e| panic!("{algo}: {e}"));
    }
}

#[test]
fn server_side_copy_within_one_store() {
    let Some(c) = clouds() else { return };
    c.a.create_bucket("bkt-a2").unwrap();
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "small", &pattern(1000, 1));
    write_file(src.path(), "large", &pattern(3 * PART + 5, 2));
    let part = PART.to_string();
    let flags = ["--part-size", &part, "--multipart-cutoff", &part, "--json"];
    let up = c.laminar(&[&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/ssc"], &flags[..]].concat());
    assert_eq!(up.status.code(), Some(0));
    // Same endpoint and credentials: CopyObject and UploadPartCopy, no bytes through the relay.
    let copy = c.laminar(&[&["relay", "a:bkt-a/ssc", "a:bkt-a2/ssc"], &flags[..]].concat());
    assert_eq!(copy.status.code(), Some(0));
    assert_eq!(json(&copy)["objects_copied"], 2);
    let back = tempfile::tempdir().unwrap();
    let down = c.laminar(&["relay", "a:bkt-a2/ssc", &format!("file://{}", back.path().display())]);
    assert_eq!(down.status.code(), Some(0));
    assert_same_tree(src.path(), back.path());
    // And a re-run skips both.
    let again = c.laminar(&[&["relay", "a:bkt-a/ssc", "a:bkt-a2/ssc"], &flags[..]].concat());
    assert_eq!(json(&again)["objects_skipped"], 2);
}

#[test]
fn s3_urls_use_the_aws_environment() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "env/one", b"from the environment");
    let run = |with_keys: bool| {
        let mut cmd = Command::new(laminar_bin());
        cmd.args(["relay", &format!("file://{}", src.path().display()), "s3://bkt-a/env-url"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_ENDPOINT_URL", &c.a.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env_remove("LAMINAR_CONFIG")
            .env("HOME", src.path())
            .env("XDG_CONFIG_HOME", src.path())
            .current_dir(src.path());
        if with_keys {
            cmd.env("AWS_ACCESS_KEY_ID", &c.a.access_key).env("AWS_SECRET_ACCESS_KEY", &c.a.secret_key);
        }
        cmd.output().unwrap()
    };
    let missing = run(false);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("AWS_ACCESS_KEY_ID"));
    let ok = run(true);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let ls = c.laminar(&["ls", "a:bkt-a/env-url"]);
    assert!(String::from_utf8_lossy(&ls.stdout).lines().any(|l| l.ends_with(" env/one")), "keys relative to env-url/");
}

#[test]
fn ctrl_c_stops_cleanly_and_aborts_open_uploads() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "huge", &pattern(120 * MIB, 3));
    assert_eq!(
        c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/int"]).status.code(),
        Some(0)
    );
    let proxy = Proxy::start(c.b.addr(), Fault::None);
    c.add_remote("watched", &proxy.endpoint(), &c.b);
    let child = Command::new(laminar_bin())
        .arg("--config")
        .arg(c.config.path())
        .args(["relay", "a:bkt-a/int", "watched:bkt-b/int", "--part-size", "5MiB", "--part-streams", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the upload is under way (a few parts through the proxy).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.request_bytes() < 12 * MIB {
        assert!(std::time::Instant::now() < deadline, "the relay never got going");
        std::thread::yield_now();
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(json(&out)["stopped"], true);
    let ls = c.laminar(&["ls", "b:bkt-b/int"]);
    assert!(String::from_utf8_lossy(&ls.stdout).trim().is_empty(), "nothing completed at the destination");
    let uploads = c.b.rclone(&["backend", "list-multipart-uploads", "b:bkt-b"]).unwrap();
    assert!(uploads.status.success(), "{}", String::from_utf8_lossy(&uploads.stderr));
    let text = String::from_utf8_lossy(&uploads.stdout);
    assert!(text.contains("bkt-b") && !text.contains("int/huge"), "the open upload was aborted: {text}");
}

#[test]
fn ctrl_c_counts_the_objects_never_begun_as_not_attempted() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..100).map(|i| pattern(8 * 1024, 100 + i)).collect();
    for (i, bytes) in files.iter().enumerate() {
        write_file(src.path(), &format!("f{i:03}"), bytes);
    }
    // Uploads paced to 200 KiB/s, one at a time: 800 KiB take seconds, and Ctrl-C
    // comes after a few objects.
    let proxy = Proxy::start(c.b.addr(), Fault::PaceRequests { bytes_per_second: 200 * 1024 });
    c.add_remote("paced", &proxy.endpoint(), &c.b);
    let child = Command::new(laminar_bin())
        .arg("--config")
        .arg(c.config.path())
        .args(["relay", &format!("file://{}", src.path().display()), "paced:bkt-b/na", "--json", "--transfers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.request_bytes() < 32 * 1024 {
        assert!(std::time::Instant::now() < deadline, "the relay never got going");
        std::thread::yield_now();
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let r = json(&out);
    let n = |k: &str| r[k].as_u64().unwrap();
    assert!(n("objects_not_attempted") > 0, "objects waiting when Ctrl-C came are not attempted: {r}");
    assert_eq!(n("objects_copied") + n("objects_failed") + n("objects_not_attempted"), 100, "{r}");
    let failures = r["failures"].as_array().unwrap();
    assert!(failures.len() <= 1, "at most the object in flight failed: {r}");
    // What landed is whole; the rest is absent.
    let back = tempfile::tempdir().unwrap();
    c.b.download_dir("bkt-b/na", back.path()).unwrap();
    let mut landed = 0;
    for (i, bytes) in files.iter().enumerate() {
        if let Ok(held) = std::fs::read(back.path().join(format!("f{i:03}"))) {
            assert!(held == *bytes, "f{i:03} landed with other bytes");
            landed += 1;
        }
    }
    assert_eq!(landed, n("objects_copied"), "{r}");
}

#[test]
fn the_checksum_mode_compares_by_the_hashes_both_stores_report() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    for (key, bytes) in [("same", b"same bytes".as_slice()), ("differs", b"0123456789"), ("missing", b"not there")] {
        write_file(src.path(), key, bytes);
    }
    // At the destination: the same bytes written apart (so no record of Laminar's
    // vouches for them), and other bytes of the same size.
    write_file(theirs.path(), "same", b"same bytes");
    write_file(theirs.path(), "differs", b"9876543210");
    c.a.upload_dir(src.path(), "bkt-a/ck").unwrap();
    c.b.upload_dir(theirs.path(), "bkt-b/ck").unwrap();
    // The flag before the URLs, where an old `--checksum ALGO` would take one.
    let plan = c.laminar(&["relay", "--checksum", "a:bkt-a/ck", "b:bkt-b/ck", "--dry-run", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", String::from_utf8_lossy(&plan.stderr));
    assert_eq!((json(&plan)["objects_planned"].as_u64(), json(&plan)["objects_skipped"].as_u64()), (Some(2), Some(1)));
    let out = c.laminar(&["relay", "--checksum", "a:bkt-a/ck", "b:bkt-b/ck", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!((r["objects_copied"].as_u64(), r["objects_skipped"].as_u64()), (Some(2), Some(1)), "{r}");
    c.b.rclone_check_download(&c.a, "bkt-a/ck", "bkt-b/ck").unwrap();
    let again = json(&c.laminar(&["relay", "a:bkt-a/ck", "b:bkt-b/ck", "--checksum", "--json"]));
    assert_eq!(again["objects_skipped"], 3, "{again}");
}

#[test]
fn a_path_naming_one_object_copies_just_that_object() {
    let Some(c) = clouds() else { return };
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "dir/report.csv", b"a,b\n1,2\n");
    write_file(src.path(), "dir/report.csv.bak", b"old");
    write_file(src.path(), "dir/other", b"x");
    let file = format!("file://{}/dir/report.csv", src.path().display());
    let up = c.laminar(&["relay", &file, "a:bkt-a/one/", "--json"]);
    assert_eq!(up.status.code(), Some(0));
    assert_eq!(json(&up)["objects_copied"], 1);
    assert_eq!(
        c.laminar(&["relay", &format!("file://{}", src.path().display()), "a:bkt-a/all"]).status.code(),
        Some(0)
    );
    let across = c.laminar(&["relay", "a:bkt-a/all/dir/report.csv", "b:bkt-b/picked", "--json"]);
    assert_eq!(json(&across)["objects_copied"], 1);
    let ls = c.laminar(&["ls", "b:bkt-b/picked"]);
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert_eq!(listing.trim().lines().count(), 1, "{listing}");
    assert!(listing.trim().ends_with(" report.csv"), "relative to picked/: {listing}");
    let again = c.laminar(&["relay", "a:bkt-a/all/dir/report.csv", "b:bkt-b/picked", "--json"]);
    assert_eq!(json(&again)["objects_skipped"], 1);
}
