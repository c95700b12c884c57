//! The fault suite: every case ends with the destination checked byte for byte.
//!
//! - Peers that stall or trickle. A source that stops sending mid-part (no byte for
//!   longer than `--idle-timeout`) and one that trickles a byte every few hundred
//!   milliseconds (under `--min-rate` once past the idle timeout, which alone would never
//!   fire) both end the request with a retryable error, and the part is read again
//!   whole: the object lands byte for byte. And a relay stopped (Ctrl-C) while a part
//!   trickles forever, past what any limit would catch, ends that request at once and
//!   aborts the upload instead of hanging: nothing is left at the destination.
//! - Storms of 500 `InternalError`, 503 `SlowDown` and 429 on an S3 source (its GETs)
//!   and on an S3 destination (its UploadParts, its CreateMultipartUpload and
//!   CompleteMultipartUpload): a run of them is ridden out, the relay ends 0 and the
//!   objects land byte for byte; a storm that never ends fails that object with an
//!   error naming the operation and the code, nothing of it complete at the
//!   destination and no upload left open, and the other object lands.
//! - Truncated responses: a part's GET body broken off at a random offset by a reset,
//!   by a clean close, or by a response that ends early with its Content-Length
//!   rewritten to match (it looks whole); the same for a small object's whole GET.
//! - Resets at random offsets in the body of an UploadPart, and a byte flipped in an
//!   UploadPart or a single PUT on its way to the destination: each is sent again,
//!   the objects land byte for byte.
//! - A `file://` destination whose disk fills up: the object fails with one line
//!   naming the disk, no partial file under its name and no temporary file are left,
//!   and a run after space is freed lands it byte for byte.
//!
//! Elsewhere: a byte flipped in a whole-object GET or PUT (relay.rs
//! `a_byte_corrupted_in_flight_is_caught`), in a part's GET from a source that keeps
//! only a multipart ETag (source_hashes.rs), a destination dying mid-upload (relay.rs
//! `a_server_dying_mid_transfer_leaves_no_complete_partial_object`), throttling by
//! connection and by concurrency (relay.rs `throttling_is_retried_with_backoff`,
//! `a_store_that_throttles_gets_fewer_objects_at_once_and_none_fails_for_it`), the
//! stage disk full (stage.rs `a_stage_disk_that_fills_up_loses_nothing`), and a
//! destination that acknowledges a part and then loses it (engine/tests/faults.rs, with
//! the `faulty` store, which the CLI cannot configure).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use laminar_tests::disk::SmallDisk;
use laminar_tests::proxy::{Action, Fault, Match, Proxy};
use laminar_tests::{clouds, laminar_bin, Clouds};

const MIB: usize = 1 << 20;
const SIZE: usize = 24 * MIB + 11;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Puts a 24 MiB object at `bkt-a/faults/big.bin`, and a remote `slow` that reaches
/// server a through a proxy with `fault`.
fn setup(c: &Clouds, fault: Fault) -> (Vec<u8>, Proxy) {
    let bytes = pattern(SIZE, 7);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), &bytes).unwrap();
    c.a.upload_file(&dir.path().join("big.bin"), "bkt-a/faults/big.bin").unwrap();
    let proxy = Proxy::start(c.a.addr(), fault);
    c.add_remote("slow", &proxy.endpoint(), &c.a);
    (bytes, proxy)
}

fn relay(c: &Clouds, extra: &[&str]) -> Command {
    let mut cmd = Command::new(laminar_bin());
    cmd.arg("--config").arg(c.config.path()).args([
        "relay",
        "slow:bkt-a/faults",
        "b:bkt-b/faults",
        "--json",
        "--multipart-cutoff",
        "8MiB",
        "--part-size",
        "5MiB",
        "--part-streams",
        "2",
    ]);
    cmd.args(extra);
    cmd
}

fn landed(c: &Clouds) -> Option<Vec<u8>> {
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir("bkt-b/faults", got.path()).unwrap();
    std::fs::read(got.path().join("big.bin")).ok()
}

#[test]
fn a_source_that_stalls_or_trickles_mid_part_is_given_up_and_the_part_read_again() {
    // A stall (one byte every 3 s: each wait is over the 2 s idle timeout) and a
    // trickle (a byte every 200 ms: never idle for 2 s, but far under 256 KiB/s).
    for (name, interval_ms) in [("stall", 3000), ("trickle", 200)] {
        let Some(c) = clouds() else { return };
        let (bytes, proxy) = setup(&c, Fault::TrickleResponse { after_bytes: 7 * MIB as u64, interval_ms });
        let out = relay(&c, &["--idle-timeout", "2s", "--min-rate", "256KiB"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(proxy.fault_fired(), "{name}: the proxy held a response");
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert!(landed(&c) == Some(bytes), "{name}: the object landed byte for byte");
    }
}

#[test]
fn ctrl_c_while_a_part_trickles_ends_it_and_aborts_the_upload() {
    let Some(c) = clouds() else { return };
    // A byte every 300 ms is within these limits: only the stop can end the request.
    let (_, proxy) = setup(&c, Fault::TrickleResponse { after_bytes: 7 * MIB as u64, interval_ms: 300 });
    let mut child = relay(&c, &["--idle-timeout", "600s", "--min-rate", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.fault_fired() {
        assert!(Instant::now() < deadline, "the relay never reached the trickle");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the other part stream finish what it can; the trickling one never will.
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    // A liveness bound, not a timing assertion: a relay that hangs fails here.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay did not end after Ctrl-C while a part trickled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(landed(&c), None, "nothing completed at the destination");
    let uploads = c.b.rclone(&["backend", "list-multipart-uploads", "b:bkt-b"]).unwrap();
    let text = String::from_utf8_lossy(&uploads.stdout);
    assert!(uploads.status.success() && !text.contains("faults/big.bin"), "the upload was aborted: {text}");
}

/// A multipart object written by another tool (rclone, 5 MiB parts: ETag `...-5`, no
/// checksum, no `md5chksum`), relayed with `--no-md5`, has nothing at its source that
/// vouches for its bytes as a whole (its ETag is the MD5 of its parts' MD5s, which
/// `--no-md5` does not compute; see source_hashes.rs for the check it gets otherwise).
/// It is reported as checked hop by hop (each read and upload by its own checksum), and
/// `--require-end-to-end` fails it before anything is written.
#[test]
fn an_object_nothing_vouches_for_is_reported_hop_by_hop_or_refused_when_told() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("big.bin");
    let bytes = pattern(SIZE, 9);
    std::fs::write(&local, &bytes).unwrap();
    let rclone = c.a.rclone(&[
        "copyto",
        local.to_str().unwrap(),
        "a:bkt-a/hbh/big.bin",
        "--s3-upload-cutoff",
        "5M",
        "--s3-chunk-size",
        "5M",
        "--s3-disable-checksum",
    ]);
    assert!(rclone.unwrap().status.success());
    let run = |extra: &[&str]| {
        let mut args = vec!["relay", "a:bkt-a/hbh", "b:bkt-b/hbh", "--json", "--multipart-cutoff", "8MiB", "--no-md5"];
        args.extend(extra);
        c.laminar(&args)
    };
    let refused = run(&["--require-end-to-end"]);
    assert_eq!(refused.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&refused.stdout).lines().last().unwrap()).unwrap();
    let reason = report["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("nothing at the source vouches") && reason.contains("multipart"), "{reason}");
    assert_eq!(c.laminar(&["ls", "b:bkt-b/hbh"]).stdout, b"", "nothing was written");

    let landed = run(&[]);
    assert_eq!(landed.status.code(), Some(0), "{}", String::from_utf8_lossy(&landed.stderr));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&landed.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(report["objects_hop_by_hop"], 1, "{report}");
    assert_eq!(report["checks"][0]["verified"], "hop-by-hop", "{report}");
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir("bkt-b/hbh", got.path()).unwrap();
    assert!(std::fs::read(got.path().join("big.bin")).unwrap() == bytes);
}

/// Where a proxy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// The part size the storm relays use: `big.bin` goes in five parts.
const PART: usize = 5 * MIB;
const SMALL: usize = 300 * 1024 + 3;

/// Puts `big.bin` (24 MiB + 11: five parts) and `small.bin` (one GET, one PUT) at
/// `bkt-a/storm`, and returns them by name.
fn two_objects(c: &Clouds) -> BTreeMap<String, Vec<u8>> {
    let objects =
        BTreeMap::from([("big.bin".to_string(), pattern(SIZE, 21)), ("small.bin".to_string(), pattern(SMALL, 22))]);
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in &objects {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    c.a.upload_dir(dir.path(), "bkt-a/storm").unwrap();
    objects
}

/// Relays `bkt-a/storm` to `bkt-b/TO`, with a proxy with `fault` in front of `side`'s
/// server (a remote of its own, named after `to`).
fn relay_through(c: &Clouds, side: Side, fault: Fault, to: &str, extra: &[&str]) -> (Output, Proxy) {
    let weed = if side == Side::Source { &c.a } else { &c.b };
    let proxy = Proxy::start(weed.addr(), fault);
    let name: String = to.chars().filter(char::is_ascii_alphanumeric).collect();
    c.add_remote(&name, &proxy.endpoint(), weed);
    let (from, dst) = match side {
        Side::Source => (format!("{name}:bkt-a/storm"), format!("b:bkt-b/{to}")),
        Side::Destination => ("a:bkt-a/storm".to_string(), format!("{name}:bkt-b/{to}")),
    };
    let mut args = vec!["relay", &from, &dst, "--json", "--multipart-cutoff", "8MiB", "--part-size", "5MiB"];
    args.extend(["--part-streams", "2"]);
    args.extend(extra);
    (c.laminar(&args), proxy)
}

/// What `bkt-b/TO` holds, by name.
fn held(c: &Clouds, to: &str) -> BTreeMap<String, Vec<u8>> {
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir(&format!("bkt-b/{to}"), got.path()).unwrap();
    read_dir(got.path())
}

fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Names and sizes, to print instead of the bytes.
fn sizes(objects: &BTreeMap<String, Vec<u8>>) -> Vec<(&str, usize)> {
    objects.iter().map(|(k, v)| (k.as_str(), v.len())).collect()
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON report on stdout")
}

/// The multipart uploads open at `bkt-b`.
fn open_uploads(c: &Clouds) -> String {
    let out = c.b.rclone(&["backend", "list-multipart-uploads", "b:bkt-b"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that a relay ended 0 with every object at `bkt-b/TO` byte for byte.
fn assert_landed(c: &Clouds, out: &Output, to: &str, objects: &BTreeMap<String, Vec<u8>>, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let got = held(c, to);
    assert!(got == *objects, "{what}: the destination holds {:?}, not the source's bytes", sizes(&got));
    assert!(!open_uploads(c).contains(&format!("{to}/")), "{what}: an upload was left open");
}

#[test]
fn storms_of_5xx_and_slowdown_on_either_side_are_ridden_out() {
    let Some(c) = clouds() else { return };
    let objects = two_objects(&c);
    let internal = Action::Answer { status: 500, code: "InternalError" };
    let slow_down = Action::Answer { status: 503, code: "SlowDown" };
    let too_many = Action::Answer { status: 429, code: "TooManyRequests" };
    // Each storm hits three requests in a row: under the four retries any one
    // request has, whichever requests of the relay they land on.
    let cases = [
        ("src-500", Side::Source, Match::first("GET", "big.bin", 3), internal),
        ("src-503", Side::Source, Match::first("GET", ".bin", 3), slow_down),
        ("src-429", Side::Source, Match::first("GET", "big.bin", 3), too_many),
        ("dst-500", Side::Destination, Match::first("PUT", "partNumber=", 3), internal),
        ("dst-503", Side::Destination, Match::first("PUT", "partNumber=", 3), slow_down),
        ("dst-429", Side::Destination, Match::first("PUT", "", 3), too_many),
        // CreateMultipartUpload (POST ?uploads) three times, then its Complete once.
        ("dst-post-503", Side::Destination, Match::first("POST", "", 3), slow_down),
        ("dst-complete-500", Side::Destination, Match::first("POST", "uploadId=", 3), internal),
    ];
    for (to, side, matching, action) in cases {
        let (out, proxy) = relay_through(&c, side, Fault::Requests { matching, action }, to, &[]);
        assert_eq!(proxy.requests_hit(), 3, "{to}: the storm hit three requests");
        assert_landed(&c, &out, to, &objects, to);
    }
}

#[test]
fn a_storm_that_never_ends_fails_the_object_and_leaves_nothing_complete() {
    let Some(c) = clouds() else { return };
    let objects = two_objects(&c);
    let cases = [
        ("never-dst", Side::Destination, Match::every("PUT", "partNumber="), 500, "InternalError", "upload-part"),
        ("never-src", Side::Source, Match::every("GET", "big.bin"), 503, "SlowDown", "get"),
    ];
    for (to, side, matching, status, code, op) in cases {
        let fault = Fault::Requests { matching, action: Action::Answer { status, code } };
        let (out, proxy) = relay_through(&c, side, fault, to, &["--retries", "1"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        assert!(proxy.requests_hit() >= 2, "{to}: the storm went on");
        let report = json(&out);
        assert_eq!(
            (report["objects_copied"].as_u64(), report["objects_failed"].as_u64()),
            (Some(1), Some(1)),
            "{report}"
        );
        let failure = &report["failures"][0];
        let reason = failure["reason"].as_str().unwrap();
        assert!(failure["key"].as_str().unwrap().ends_with("big.bin"), "{report}");
        let said = format!("HTTP {status} {code}");
        assert!(reason.contains(op) && reason.contains(&said) && !reason.contains('\n'), "{to}: {reason}");
        // The other object landed; nothing of the failed one, and no upload is open.
        let got = held(&c, to);
        assert_eq!(sizes(&got), [("small.bin", SMALL)], "{to}");
        assert!(got["small.bin"] == objects["small.bin"], "{to}");
        assert!(!open_uploads(&c).contains(&format!("{to}/")), "{to}: an upload was left open");
    }
}

/// Offsets drawn by seed (printed in each failure): the same every run.
fn offsets(seed: u64, count: usize, below: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(|_| rng.u64(..below)).collect()
}

#[test]
fn truncated_get_bodies_are_read_again() {
    let Some(c) = clouds() else { return };
    let objects = two_objects(&c);
    // Parts are 5 MiB but the last (4 MiB + 11): offsets below 4 MiB fall in any part.
    let at = offsets(16, 6, 4 * MIB as u64);
    let mut cases = Vec::new();
    for (i, how) in ["reset", "close", "early"].into_iter().enumerate() {
        let cut = |body_bytes| match how {
            "reset" => Action::ResetResponseAfter { body_bytes },
            "close" => Action::CloseResponseAfter { body_bytes },
            _ => Action::EndResponseEarly { body_bytes },
        };
        // A part of the large object (its second GET), and the small one's only GET.
        cases.push((format!("cut-{how}-part"), Match::from_nth_once("GET", "big.bin", 2), cut(at[i])));
        let small = Match::from_nth_once("GET", "small.bin", 1);
        cases.push((format!("cut-{how}-small"), small, cut(at[3 + i] % SMALL as u64)));
    }
    for (to, matching, action) in cases {
        let (out, proxy) = relay_through(&c, Side::Source, Fault::Requests { matching, action }, &to, &[]);
        let what = format!("{to} ({action:?})");
        let (hit, picked) = (proxy.requests_hit(), proxy.requests_picked());
        assert!(proxy.fault_fired(), "{what}: the response was broken off ({hit} hit of {picked} picked)");
        assert_landed(&c, &out, &to, &objects, &what);
    }
}

#[test]
fn resets_and_flipped_bytes_in_parts_are_sent_or_read_again() {
    let Some(c) = clouds() else { return };
    let objects = two_objects(&c);
    let at = offsets(17, 4, PART as u64 - MIB as u64);
    let mut cases = vec![
        // The first byte of a body, and offsets drawn by seed, in parts 1 to 4.
        (
            "reset-0".to_string(),
            Side::Destination,
            Match::from_nth_once("PUT", "partNumber=", 1),
            Action::ResetRequestAfter { body_bytes: 0 },
        ),
        (
            "flip-up".to_string(),
            Side::Destination,
            Match::from_nth_once("PUT", "partNumber=", 3),
            Action::FlipRequestBody { at: at[0] },
        ),
        (
            "flip-small-up".to_string(),
            Side::Destination,
            Match::from_nth_once("PUT", "small.bin", 1),
            Action::FlipRequestBody { at: 4097 },
        ),
    ];
    for (n, offset) in at.iter().enumerate() {
        let matching = Match::from_nth_once("PUT", "partNumber=", n as u64 + 1);
        cases.push((
            format!("reset-{offset}"),
            Side::Destination,
            matching,
            Action::ResetRequestAfter { body_bytes: *offset },
        ));
    }
    for (to, side, matching, action) in cases {
        let (out, proxy) = relay_through(&c, side, Fault::Requests { matching, action }, &to, &[]);
        let what = format!("{to} ({action:?})");
        assert!(proxy.fault_fired(), "{what}: the fault took effect");
        assert_landed(&c, &out, &to, &objects, &what);
    }
}

#[test]
fn a_file_destination_whose_disk_fills_up_fails_the_object_cleanly_and_lands_it_once_freed() {
    let Some(c) = clouds() else { return };
    // Loop mounts need root and a loop device.
    let Some(disk) = SmallDisk::make_or_skip("the disk-full test") else { return };
    let objects = two_objects(&c);
    // Leave 12 MiB free: room for the small object, not for the 24 MiB one.
    let ballast = disk.fill_leaving(12 * MIB as u64).unwrap();
    let root = disk.path().join("tree");
    let dst = format!("file://{}", root.display());
    let run =
        || c.laminar(&["relay", "a:bkt-a/storm", &dst, "--json", "--multipart-cutoff", "8MiB", "--part-size", "5MiB"]);
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report = json(&out);
    assert_eq!((report["objects_copied"].as_u64(), report["objects_failed"].as_u64()), (Some(1), Some(1)), "{report}");
    let reason = report["failures"][0]["reason"].as_str().unwrap();
    let named = root.display().to_string();
    assert!(reason.contains("big.bin") && reason.contains("full") && reason.contains(&named), "{reason}");
    assert!(!reason.contains('\n'), "one line: {reason}");
    // The small object landed; nothing of the large one under its name or a temporary one.
    let left = read_dir(&root);
    assert_eq!(sizes(&left), [("small.bin", SMALL)], "only the small object, no partial or temporary file");
    assert!(left["small.bin"] == objects["small.bin"]);

    // Space freed, the same relay lands the large object and leaves the small one be.
    std::fs::remove_file(ballast).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!((report["objects_copied"].as_u64(), report["objects_skipped"].as_u64()), (Some(1), Some(1)), "{report}");
    let left = read_dir(&root);
    assert!(left == objects, "the tree holds {:?}", sizes(&left));
}
