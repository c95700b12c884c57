//! Objects that another tool uploaded in parts carry no hash of their whole bytes, only
//! a multipart ETag (`hex-N`: the MD5 of the parts' MD5s). Laminar asks the source how
//! the parts were cut (`HEAD ?partNumber=1` and `N`), reads in whole multiples of them,
//! keeps each source part's MD5 as the bytes stream and checks the ETag end to end; a
//! small object read whole is checked from RAM. A byte flipped on the way from the source
//! is then caught and the object read again, where before it landed as a complete-looking
//! object with a checksum of the wrong bytes. rclone's `md5chksum` metadata (the whole
//! file's MD5) vouches as well. A relay killed mid-object goes on and still checks the
//! ETag: each part's source part MD5s are in the journal with the part.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laminar_tests::proxy::{Fault, Proxy};
use laminar_tests::{clouds, laminar_bin, Clouds};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Uploads `bytes` to server a at `key` with rclone in 5 MiB parts; `md5_meta` keeps
/// rclone's whole-file MD5 in the object's metadata.
fn upload_in_parts(c: &Clouds, key: &str, bytes: &[u8], md5_meta: bool) {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, bytes).unwrap();
    let dst = format!("a:{key}");
    let mut args = vec!["copyto", local.to_str().unwrap(), &dst, "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"];
    if !md5_meta {
        args.push("--s3-disable-checksum");
    }
    let out = c.a.rclone(&args).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

fn landed(c: &Clouds, prefix: &str, name: &str) -> Option<Vec<u8>> {
    let got = tempfile::tempdir().unwrap();
    c.b.download_dir(prefix, got.path()).unwrap();
    std::fs::read(got.path().join(name)).ok()
}

/// The source check the report names for the one object relayed.
fn source_check(report: &serde_json::Value) -> (String, String) {
    let check = &report["checks"][0];
    (check["source"].to_string(), check["verified"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_multipart_object_is_checked_by_its_etag_and_a_flipped_byte_is_read_again() {
    let Some(c) = clouds() else { return };
    // Past the multipart cutoff (parts of whole multiples of the 5 MiB source parts) and under it
    // (read whole, checked from RAM).
    let big = pattern(40 * MIB + 11, 1);
    let mid = pattern(12 * MIB + 3, 2);
    upload_in_parts(&c, "bkt-a/mp/big/big.bin", &big, false);
    upload_in_parts(&c, "bkt-a/mp/mid/mid.bin", &mid, false);
    let proxy = Proxy::start(c.a.addr(), Fault::None);
    c.add_remote("plain", &proxy.endpoint(), &c.a);
    for (name, bytes) in [("big", &big), ("mid", &mid)] {
        let args = ["--json", "--multipart-cutoff", "32MiB", "--part-size", "16MiB"];
        // A clean run: checked end to end by the ETag.
        let from = format!("plain:bkt-a/mp/{name}");
        let out = c.laminar(&[&["relay", from.as_str(), &format!("b:bkt-b/clean/{name}")], &args[..]].concat());
        assert_eq!(out.status.code(), Some(0), "{name}");
        let r = report(&out);
        assert_eq!(source_check(&r), ("[\"md5-of-parts\"]".to_string(), "end-to-end".to_string()), "{name}: {r}");
        assert_eq!(r["objects_hop_by_hop"], 0, "{r}");
        assert!(landed(&c, &format!("bkt-b/clean/{name}"), &format!("{name}.bin")).unwrap() == *bytes, "{name}");

        // One byte flipped on its way from the source: caught, read again, landed right.
        let flip = Proxy::start(c.a.addr(), Fault::FlipResponseByte { after_bytes: 9 * MIB as u64 });
        let remote = format!("flip{name}");
        c.add_remote(&remote, &flip.endpoint(), &c.a);
        let from = format!("{remote}:bkt-a/mp/{name}");
        let out = c.laminar(&[&["relay", from.as_str(), &format!("b:bkt-b/flip/{name}")], &args[..]].concat());
        assert!(flip.fault_fired(), "{name}: the byte was flipped");
        assert_eq!(out.status.code(), Some(0), "{name}");
        let r = report(&out);
        assert_eq!(source_check(&r).1, "end-to-end", "{r}");
        if name == "big" {
            assert_eq!(r["objects_restarted"], 1, "the large object was sent again from the source: {r}");
        }
        assert!(landed(&c, &format!("bkt-b/flip/{name}"), &format!("{name}.bin")).unwrap() == *bytes, "{name}");
    }

    // Without retries the small object fails, naming the hash, and nothing is written.
    let flip = Proxy::start(c.a.addr(), Fault::FlipResponseByte { after_bytes: 9 * MIB as u64 });
    c.add_remote("flipnoretry", &flip.endpoint(), &c.a);
    let out = c.laminar(&["relay", "flipnoretry:bkt-a/mp/mid", "b:bkt-b/noretry", "--json", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    let reason = r["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("MD5 of 3 part MD5s"), "{reason}");
    assert!(!reason.contains('\n'), "{reason:?}");
    assert_eq!(landed(&c, "bkt-b/noretry", "mid.bin"), None, "nothing at the destination");
}

#[test]
fn rclone_md5_metadata_vouches_for_an_object_uploaded_in_parts() {
    let Some(c) = clouds() else { return };
    let mid = pattern(12 * MIB + 5, 3);
    upload_in_parts(&c, "bkt-a/md5meta/mid.bin", &mid, true);
    let flip = Proxy::start(c.a.addr(), Fault::FlipResponseByte { after_bytes: 6 * MIB as u64 });
    c.add_remote("flipmeta", &flip.endpoint(), &c.a);
    let out = c.laminar(&["relay", "flipmeta:bkt-a/md5meta", "b:bkt-b/md5meta", "--json"]);
    assert!(flip.fault_fired());
    assert_eq!(out.status.code(), Some(0));
    let r = report(&out);
    assert_eq!(source_check(&r), ("[\"md5\"]".to_string(), "end-to-end".to_string()), "{r}");
    assert!(landed(&c, "bkt-b/md5meta", "mid.bin").unwrap() == mid);
}

#[test]
fn a_composite_sha256_checksum_vouches_for_an_object_uploaded_in_parts() {
    let Some(c) = clouds() else { return };
    // Uploaded in 5 MiB parts with SHA-256 part checksums: SeaweedFS keeps the COMPOSITE
    // `x-amz-checksum-sha256` (the SHA-256 of the parts' SHA-256s, `base64-5`).
    let big = pattern(24 * MIB + 7, 4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let from = format!("file://{}", dir.path().display());
    let up = ["relay", &from, "a:bkt-a/composite", "--hash", "sha256", "--multipart-cutoff", "8MiB"];
    let out = c.laminar(&[&up[..], &["--part-size", "5MiB", "--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let args = ["--json", "--multipart-cutoff", "16MiB", "--part-size", "10MiB"];
    let out = c.laminar(&[&["relay", "a:bkt-a/composite", "b:bkt-b/composite"], &args[..]].concat());
    assert_eq!(out.status.code(), Some(0));
    let r = report(&out);
    assert_eq!(source_check(&r), ("[\"sha256-of-parts\"]".to_string(), "end-to-end".to_string()), "{r}");
    assert!(landed(&c, "bkt-b/composite", "big.bin").unwrap() == big);
    // A byte flipped on the way from the source: caught by it, sent again, landed right.
    let flip = Proxy::start(c.a.addr(), Fault::FlipResponseByte { after_bytes: 7 * MIB as u64 });
    c.add_remote("flipcomposite", &flip.endpoint(), &c.a);
    let out = c.laminar(&[&["relay", "flipcomposite:bkt-a/composite", "b:bkt-b/composite-flip"], &args[..]].concat());
    assert!(flip.fault_fired());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    assert_eq!(source_check(&r).1, "end-to-end", "{r}");
    assert_eq!(r["objects_restarted"], 1, "the object was sent again from the source: {r}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA256 of 5 part SHA256s"));
    assert!(landed(&c, "bkt-b/composite-flip", "big.bin").unwrap() == big);
}

/// Parts of `big.bin` in the journal, and how many of them carry their source parts'
/// MD5s.
fn journaled_parts(data: &std::path::Path) -> (u64, u64) {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let Ok(db) = rusqlite::Connection::open_with_flags(data.join("laminar.db"), flags) else { return (0, 0) };
    let sql = "SELECT COUNT(*), COUNT(blocks) FROM parts WHERE dst_key LIKE '%big.bin'";
    db.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap_or((0, 0))
}

#[test]
fn a_relay_killed_mid_object_goes_on_and_still_checks_the_etag() {
    let Some(c) = clouds() else { return };
    let big = pattern(30 * MIB + 7, 4);
    upload_in_parts(&c, "bkt-a/kill/big.bin", &big, false);
    // The destination is slowed so that the kill lands inside the object.
    let paced = Proxy::start(c.b.addr(), Fault::PaceRequests { bytes_per_second: 6 * MIB as u64 });
    c.add_remote("paced", &paced.endpoint(), &c.b);
    let data = tempfile::tempdir().unwrap();
    let relay = || {
        let mut cmd = Command::new(laminar_bin());
        cmd.env("LAMINAR_DATA_DIR", data.path()).arg("--config").arg(c.config.path()).args([
            "relay",
            "a:bkt-a/kill",
            "paced:bkt-b/kill",
            "--json",
            "--multipart-cutoff",
            "8MiB",
            "--part-size",
            "5MiB",
            "--part-streams",
            "2",
        ]);
        cmd
    };
    let mut child = relay().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while journaled_parts(data.path()).0 < 2 {
        assert!(child.try_wait().unwrap().is_none(), "the relay ended before it was killed");
        assert!(Instant::now() < deadline, "waited 60 s for two parts in the journal");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (parts, with_md5s) = journaled_parts(data.path());
    assert_eq!(parts, with_md5s, "every journaled part keeps its source parts' MD5s");
    assert_eq!(landed(&c, "bkt-b/kill", "big.bin"), None, "nothing of the object looks complete");

    let out = relay().output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&out);
    assert_eq!(r["objects_resumed"], 1, "{r}");
    assert_eq!(source_check(&r), ("[\"md5-of-parts\"]".to_string(), "end-to-end".to_string()), "{r}");
    assert!(landed(&c, "bkt-b/kill", "big.bin").unwrap() == big);
}
