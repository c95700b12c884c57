//! `--bwlimit` and `--tpslimit` against real S3 servers (SeaweedFS) and a local tree.
//! No timing assertions: a limit is a floor on how long a relay takes (it cannot move
//! N bytes at R bytes per second in less than N/R, less one burst, however fast the
//! machine), so each case checks that floor, then the bytes at the destination.

use std::path::Path;

use laminar_tests::{clouds, stdout_json as json, Clouds};

const MIB: usize = 1 << 20;

fn write(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// The bytes of `bkt-b/PATH`.
fn held(c: &Clouds, path: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    c.b.download_dir(path.rsplit_once('/').unwrap().0, dir.path()).unwrap();
    std::fs::read(dir.path().join(path.rsplit_once('/').unwrap().1)).unwrap_or_default()
}

fn seconds(report: &serde_json::Value) -> f64 {
    report["seconds"].as_f64().expect("the report says how long it ran")
}

#[test]
fn a_bwlimit_holds_the_relay_to_its_rate_from_a_bucket_and_from_a_tree() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 6 MiB at 2 MiB/s: at least 3 s less one 50 ms burst; in parts and whole.
    let big = write(&dir.path().join("up/big.bin"), 6 * MIB, 1);
    c.a.upload_file(&dir.path().join("up/big.bin"), "bkt-a/rate/big.bin").unwrap();
    let out = c.laminar(&[
        "relay",
        "a:bkt-a/rate",
        "b:bkt-b/from-bucket",
        "--json",
        "--bwlimit",
        "2M",
        "--multipart-cutoff",
        "5MiB",
        "--part-size",
        "5MiB",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert!(seconds(&r) >= 2.5, "6 MiB at --bwlimit 2M went through in {} s", seconds(&r));
    assert!(held(&c, "bkt-b/from-bucket/big.bin") == big, "the bucket holds other bytes");

    // A local tree, under a timetable that holds 2 MiB/s all day (whatever the time).
    let tree = dir.path().join("tree");
    let small: Vec<Vec<u8>> = (0..4).map(|i| write(&tree.join(format!("f{i}.bin")), MIB, i as u8)).collect();
    let src = format!("file://{}", tree.display());
    let out = c.laminar(&["relay", &src, "b:bkt-b/from-tree", "--json", "--bwlimit", "00:00,2M 12:00,2M"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert!(seconds(&r) >= 1.5, "4 MiB at 2 MiB/s went through in {} s", seconds(&r));
    for (i, bytes) in small.iter().enumerate() {
        assert!(held(&c, &format!("bkt-b/from-tree/f{i}.bin")) == *bytes, "f{i}.bin differs");
    }
}

#[test]
fn a_tpslimit_spaces_the_requests_to_the_stores() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let files: Vec<Vec<u8>> = (0..6).map(|i| write(&tree.join(format!("t{i}")), 1000 + i, i as u8)).collect();
    c.a.upload_dir(&tree, "bkt-a/tps").unwrap();
    // A GET and a PUT per object, and the listings and checks: more than 12 requests
    // at 4 a second (a burst of one) take at least 11 / 4 s.
    let out = c.laminar(&["relay", "a:bkt-a/tps", "b:bkt-b/tps", "--json", "--tpslimit", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!(r["objects_copied"], 6);
    assert!(seconds(&r) >= 2.75, "more than 12 requests at --tpslimit 4 took {} s", seconds(&r));
    for (i, bytes) in files.iter().enumerate() {
        assert!(held(&c, &format!("bkt-b/tps/t{i}")) == *bytes, "t{i} differs");
    }
}

#[test]
fn bad_limits_get_one_clear_line() {
    let Some(c) = clouds() else { return };
    for (args, says) in [
        (["--bwlimit", "fast", "--dry-run"], "--bwlimit \"fast\": \"fast\" is not a rate"),
        (["--bwlimit", "25:00,1M", "--dry-run"], "not a time of day"),
        (["--bwlimit", "0", "--dry-run"], "write off for none"),
        (["--tpslimit=-1", "--dry-run", "--no-journal"], "--tpslimit -1: give requests per second"),
    ] {
        let mut all = vec!["relay", "a:bkt-a/x", "b:bkt-b/x"];
        all.extend(args);
        let out = c.laminar(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let listed = c.b.rclone(&["lsf", "-R", "b:bkt-b"]).unwrap();
    assert!(listed.stdout.is_empty(), "nothing reached the destination: {}", String::from_utf8_lossy(&listed.stdout));
}
