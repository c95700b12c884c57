//! Peers that stall or trickle. A source that stops sending mid-part (no byte for
//! longer than `--idle-timeout`) and one that trickles a byte every few hundred
//! milliseconds (under `--min-rate` once past the idle timeout, which alone would never
//! fire) both end the request with a retryable error, and the part is read again
//! whole: the object lands byte for byte. And a relay stopped (Ctrl-C) while a part
//! trickles forever, past what any limit would catch, ends that request at once and
//! aborts the upload instead of hanging: nothing is left at the destination.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laminar_tests::proxy::{Fault, Proxy};
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
