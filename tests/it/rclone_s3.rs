//! Relays between SeaweedFS and `rclone serve s3`, a second, independent S3
//! implementation (gofakes3 over a local directory), in both directions and on both
//! event-loop drivers.
//!
//! Why this pair: gofakes3 answers a ranged GET `200 OK` with the Content-Range and
//! bytes of the range, where S3 and SeaweedFS answer `206 Partial Content`. Objects of
//! 32 MiB and more are read from the source as parallel ranged GETs, so a tree with a
//! 100 MiB + 3 B object exercises that, its last short part included.
//!
//! The bytes at the destination are checked afterwards without Laminar: rclone serves
//! a plain directory, which is compared file by file with the source tree; SeaweedFS
//! is downloaded with rclone and compared the same way.

use std::path::Path;
use std::process::Output;

use laminar_bench::servers::{RcloneS3, Weed};
use laminar_tests::laminar_with;

const MIB: u64 = 1 << 20;
/// Over the 32 MiB at which an object is read as parallel 16 MiB ranged GETs, and
/// not a multiple of the part size, so the last GET is short and ends at the end.
const LARGE_BYTES: u64 = 100 * MIB + 3;
/// The SeaweedFS bucket and the `rclone serve s3` bucket.
const WEED_BUCKET: &str = "wbkt";
const RCLONE_BUCKET: &str = "rbkt";
const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

/// One SeaweedFS and one `rclone serve s3`, and a laminar.toml naming them `w` and `r`.
struct Pair {
    weed: Weed,
    rclone: RcloneS3,
    config: tempfile::NamedTempFile,
}

/// Starts both servers; None (skipped with a note) when `weed` or `rclone` is not
/// installed, unless `LAMINAR_REQUIRE_SERVERS` is set, which makes that a failure.
fn pair() -> Option<Pair> {
    let weed = Weed::start_or_skip().expect("start SeaweedFS")?;
    weed.create_bucket(WEED_BUCKET).expect("SeaweedFS bucket");
    let rclone = RcloneS3::start(RCLONE_BUCKET, None).expect("start rclone serve s3");
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), format!("{}\n{}", weed.remote_toml("w"), rclone.remote_toml("r")))
        .expect("write config");
    Some(Pair { weed, rclone, config })
}

impl Pair {
    fn laminar(&self, args: &[&str]) -> Output {
        laminar_with(self.config.path(), args)
    }

    /// Relays `from` to `to` with `--json` on `driver`; must succeed. Returns the report.
    fn relay(&self, from: &str, to: &str, driver: &str) -> serde_json::Value {
        let out = self.laminar(&["relay", from, to, "--driver", driver, "--json"]);
        assert_eq!(out.status.code(), Some(0), "relay {from} -> {to}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON object on stdout")
    }

    /// Relays `from` to `to` twice: the first copies `files` objects, the second none.
    fn relay_then_rerun(&self, from: &str, to: &str, driver: &str, files: usize) {
        let first = self.relay(from, to, driver);
        assert_eq!(first["objects_copied"], files, "{first}");
        assert_eq!(first["objects_failed"], 0, "{first}");
        let again = self.relay(from, to, driver);
        assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
        assert_eq!(again["objects_skipped"], files, "{again}");
    }
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A tree of mixed sizes under `root`: small files in a few directories, an empty
/// file, one a byte past a 5 MiB boundary, and one of [`LARGE_BYTES`] whose key has a
/// `+`. Returns how many files it holds.
fn write_tree(root: &Path) -> usize {
    let mut files: Vec<(String, u64)> = (0..24u64).map(|i| (format!("small/d{}/f{i:02}", i % 3), i * 997)).collect();
    files.push(("empty".to_string(), 0));
    files.push(("mid/5m+1".to_string(), 5 * MIB + 1));
    files.push(("parts/100m+3".to_string(), LARGE_BYTES));
    for (i, (rel, len)) in files.iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, pattern(*len, 1_000 + i as u64)).expect("write a source file");
    }
    files.len()
}

/// Every file under `a` equals its twin under `b`, byte for byte, and `b` has no file
/// that `a` lacks. (Directories are not compared: S3 has none, so a destination
/// directory exists exactly when it holds a file.)
fn assert_same_files(a: &Path, b: &Path) {
    fn files(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path.strip_prefix(root).expect("under root").to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
    let (in_a, in_b) = (files(a), files(b));
    assert_eq!(in_a, in_b, "the same files under {} and {}", a.display(), b.display());
    for rel in &in_a {
        let (x, y) = (std::fs::read(a.join(rel)).expect("read"), std::fs::read(b.join(rel)).expect("read"));
        assert_eq!(x.len(), y.len(), "{rel}: {} bytes, then {}", x.len(), y.len());
        let first_difference = x.iter().zip(&y).position(|(p, q)| p != q);
        assert_eq!(first_difference, None, "{rel} differs at that byte offset");
    }
}

#[test]
fn seaweedfs_to_rclone_serve_s3_with_a_large_object_then_a_rerun_copies_nothing() {
    let Some(p) = pair() else { return };
    let src = tempfile::tempdir().expect("source dir");
    let files = write_tree(src.path());
    // Seeded with rclone, the reference client, not with Laminar.
    p.weed.upload_dir(src.path(), &format!("{WEED_BUCKET}/tree")).expect("seed SeaweedFS");
    for driver in DRIVERS {
        let to = format!("r:{RCLONE_BUCKET}/{driver}");
        p.relay_then_rerun(&format!("w:{WEED_BUCKET}/tree"), &to, driver, files);
        // rclone serve s3 keeps each object as a plain file under its root.
        assert_same_files(src.path(), &p.rclone.root().join(RCLONE_BUCKET).join(driver));
    }
}

#[test]
fn rclone_serve_s3_to_seaweedfs_with_a_large_object_then_a_rerun_copies_nothing() {
    let Some(p) = pair() else { return };
    // rclone serves a directory as it is: the tree is written straight into it.
    let src = p.rclone.root().join(RCLONE_BUCKET).join("tree");
    let files = write_tree(&src);
    for driver in DRIVERS {
        let to = format!("w:{WEED_BUCKET}/{driver}");
        p.relay_then_rerun(&format!("r:{RCLONE_BUCKET}/tree"), &to, driver, files);
        let back = tempfile::tempdir().expect("download dir");
        p.weed.download_dir(&format!("{WEED_BUCKET}/{driver}"), back.path()).expect("download from SeaweedFS");
        assert_same_files(&src, back.path());
    }
}
