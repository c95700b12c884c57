//! A relay killed with `kill -9` in the middle of a large object, and started again
//! with the same command, goes on from what the destination committed: the journal
//! (`$LAMINAR_DATA_DIR/laminar.db`) recorded the upload session and each part the
//! destination acknowledged. Into Drive (one ordered resumable session), into S3
//! (parallel multipart parts, reconciled with ListParts) and into Dropbox (a
//! concurrent upload session). Each case checks the bytes at the destination after
//! the kill (nothing that looks complete) and after the resume (byte for byte), what
//! the destination received in all (nothing committed sent again beyond the part in
//! flight at the kill), and that a third run copies nothing and leaves no upload open.
//! The source is throttled while the first run goes, so that the kill lands mid-object;
//! the journal is watched to know when parts are recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers, Weed};
use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
use laminar_tests::laminar_bin;
use laminar_tests::proxy::{Fault, Proxy};

const MIB: u64 = 1 << 20;
const PART_BYTES: u64 = 4 * MIB;
/// Six parts and a bit.
const BIG_BYTES: u64 = 6 * PART_BYTES + 5;
/// The source's rate while the first run goes: about 2.5 s for the large file.
const SLOW_BYTES_PER_S: u64 = 10 * MIB;

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A data directory, a laminar.toml, and the relays run with both.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(remotes: &str) -> Setup {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("laminar.toml");
        std::fs::write(&config, remotes).expect("write the config");
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        Setup { dir, config }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, from: &str, to: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(laminar_bin());
        c.env("LAMINAR_DATA_DIR", self.data_dir())
            .arg("--config")
            .arg(&self.config)
            .args(["relay", from, to, "--json", "--multipart-cutoff", "8MiB", "--part-size", "4MiB"])
            .args(extra);
        c
    }

    /// Starts a relay in the background with two part streams, so that parts go up a
    /// pair at a time and the relay is well inside the large file when it is killed.
    fn spawn(&self, from: &str, to: &str) -> Child {
        let mut c = self.command(from, to, &["--part-streams", "2"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run laminar")
    }

    fn relay(&self, from: &str, to: &str, extra: &[&str]) -> serde_json::Value {
        let out = self.command(from, to, extra).output().expect("run laminar");
        report_of(&out, &format!("relay {from} -> {to} {extra:?}"))
    }

    /// Bytes of the parts the journal holds of the upload of a key ending in `name`.
    fn journaled_bytes(&self, name: &str) -> u64 {
        let path = self.data_dir().join("laminar.db");
        let Ok(conn) = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return 0;
        };
        let pattern = format!("%{name}");
        let sum = "SELECT COALESCE(SUM(json_extract(record, '$.len')), 0) FROM parts WHERE dst_key LIKE ?1";
        conn.query_row(sum, [pattern], |r| r.get::<_, i64>(0)).map_or(0, |n| n as u64)
    }

    /// Uploads the journal holds open.
    fn open_uploads(&self) -> u64 {
        let conn = rusqlite::Connection::open(self.data_dir().join("laminar.db")).expect("the journal");
        conn.query_row("SELECT COUNT(*) FROM uploads", [], |r| r.get::<_, i64>(0)).expect("count") as u64
    }

    /// Starts the relay, waits until the journal holds two parts' worth of `big.bin`,
    /// and kills it with SIGKILL.
    fn kill_mid_object(&self, from: &str, to: &str) {
        let mut child = self.spawn(from, to);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.journaled_bytes("big.bin") < 2 * PART_BYTES {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                panic!("the relay ended before it was killed ({status}): {}", String::from_utf8_lossy(&out.stderr));
            }
            assert!(Instant::now() < deadline, "waited 60 s for two parts in the journal");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL the relay");
        let status = child.wait().expect("reap it");
        assert!(!status.success(), "killed, not finished: {status}");
    }
}

fn report_of(out: &Output, what: &str) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{what}: stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["objects_failed"], 0, "{what}: {report}");
    report
}

/// A local tree: the large file and two small ones.
fn local_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut tree = BTreeMap::new();
    tree.insert("big.bin".to_string(), pattern(BIG_BYTES, 1));
    tree.insert("a.txt".to_string(), b"small a".to_vec());
    tree.insert("sub/b.txt".to_string(), b"small b".to_vec());
    for (rel, bytes) in &tree {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
        std::fs::write(path, bytes).expect("write");
    }
    tree
}

/// Object `key` of bucket `bkt`, as rclone downloads it; None when it is not there.
fn s3_object(weed: &Weed, key: &str) -> Option<Vec<u8>> {
    let local = tempfile::tempdir().expect("download dir");
    weed.download_dir("bkt", local.path()).expect("rclone copy");
    std::fs::read(local.path().join(key)).ok()
}

/// The resumed run's report: one object resumed, at least the two recorded parts not
/// sent again.
fn check_resumed(report: &serde_json::Value) {
    eprintln!("resumed run: {report}");
    assert_eq!(report["objects_resumed"], 1, "{report}");
    let resumed = report["bytes_resumed"].as_u64().expect("bytes_resumed");
    assert!(resumed >= 2 * PART_BYTES, "{resumed} bytes resumed: {report}");
}

#[test]
fn a_killed_relay_into_drive_goes_on_from_what_drive_holds() {
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let setup = Setup::new(&gd.remote_toml("gd"));
    let src_dir = tempfile::tempdir().expect("source dir");
    let tree = local_tree(src_dir.path());
    let from = format!("file://{}", src_dir.path().display());
    // Drive is slowed here (the file source cannot be): its per-connection cap.
    let mut faults = gd.faults();
    faults.throughput_bytes_per_s = SLOW_BYTES_PER_S;
    gd.set_faults(faults);
    setup.kill_mid_object(&from, "gd:up");
    assert_eq!(gd.read("up/big.bin"), None, "nothing of the large file looks complete");

    gd.set_faults(laminar_emulators::drive::Faults::default());
    let report = setup.relay(&from, "gd:up", &[]);
    check_resumed(&report);
    for (rel, bytes) in &tree {
        assert_eq!(gd.read(&format!("up/{rel}")).as_ref(), Some(bytes), "{rel} at Drive");
    }
    let sessions: Vec<_> = gd.stats().sessions.into_iter().filter(|s| s.name == "big.bin").collect();
    assert_eq!(sessions.len(), 1, "one session, resumed: {sessions:?}");
    let s = &sessions[0];
    assert!(s.complete && s.committed_bytes == BIG_BYTES, "{s:?}");
    let resent = s.received_bytes - BIG_BYTES;
    assert!(resent <= PART_BYTES, "{resent} bytes sent twice, more than the part in flight: {s:?}");

    let again = setup.relay(&from, "gd:up", &[]);
    assert_eq!((again["objects_copied"].as_u64(), again["objects_resumed"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(setup.open_uploads(), 0, "no upload left open in the journal");
}

#[test]
fn a_killed_relay_from_dropbox_into_s3_goes_on_with_its_multipart_upload() {
    if find_tool("weed").is_none() && !require_servers() {
        eprintln!("skipping: SeaweedFS not installed (tests/run.sh installs it)");
        return;
    }
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let weed = Weed::start().expect("start SeaweedFS");
    weed.create_bucket("bkt").expect("a bucket");
    // What Laminar sends to S3 is counted on the way.
    let proxy = Proxy::start(weed.addr(), Fault::None);
    let s3 = weed.remote_toml("s3").replace(&weed.endpoint, &proxy.endpoint());
    let setup = Setup::new(&format!("{}\n{s3}", dbx.remote_toml("dbx")));
    let big = pattern(BIG_BYTES, 2);
    dbx.insert("/photos/big.bin", big.clone()).expect("seed");
    dbx.insert("/photos/a.txt", b"small".to_vec()).expect("seed");
    // Dropbox is slowed for the first run: its per-connection cap on the ranged reads.
    let mut faults = dbx.faults();
    faults.throughput_bytes_per_s = SLOW_BYTES_PER_S;
    dbx.set_faults(faults).expect("slow Dropbox down");
    setup.kill_mid_object("dbx:/photos", "s3:bkt/in");
    assert_eq!(s3_object(&weed, "in/big.bin"), None, "nothing of the large file looks complete");
    let sent_before = proxy.request_bytes();

    dbx.set_faults(laminar_emulators::dropbox::Faults::default()).expect("full speed");
    let report = setup.relay("dbx:/photos", "s3:bkt/in", &[]);
    check_resumed(&report);
    assert_eq!(s3_object(&weed, "in/big.bin").as_ref(), Some(&big));
    // Checked against Dropbox's content_hash though parts came from two runs.
    let checks = report["checks"].as_array().expect("checks");
    let big_checks =
        checks.iter().find(|c| c["key"].as_str().is_some_and(|k| k.ends_with("big.bin"))).expect("big.bin's checks");
    assert!(big_checks["source"].as_array().is_some_and(|s| s.iter().any(|n| n == "content_hash")), "{report}");
    // The resumed run sent the parts not recorded, and little else.
    let resumed = report["bytes_resumed"].as_u64().expect("bytes_resumed");
    let sent = proxy.request_bytes() - sent_before;
    assert!(sent < BIG_BYTES - resumed + MIB, "{sent} bytes sent after resuming {resumed}: {report}");

    let again = setup.relay("dbx:/photos", "s3:bkt/in", &[]);
    assert_eq!(again["objects_copied"], 0, "{again}");
    assert_eq!(setup.open_uploads(), 0, "no upload left open in the journal");
}

#[test]
fn a_killed_relay_into_dropbox_goes_on_with_its_concurrent_session_or_starts_over_when_told() {
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let setup = Setup::new(&dbx.remote_toml("dbx"));
    let src_dir = tempfile::tempdir().expect("source dir");
    let tree = local_tree(src_dir.path());
    let from = format!("file://{}", src_dir.path().display());
    let mut faults = dbx.faults();
    faults.throughput_bytes_per_s = SLOW_BYTES_PER_S;
    dbx.set_faults(faults.clone()).expect("slow Dropbox down");
    setup.kill_mid_object(&from, "dbx:/up");
    let files = dbx.files();
    assert!(!files.iter().any(|(path, _)| path.ends_with("/big.bin")), "nothing of the large file looks complete");

    dbx.set_faults(laminar_emulators::dropbox::Faults::default()).expect("full speed");
    let report = setup.relay(&from, "dbx:/up", &[]);
    check_resumed(&report);
    let files: BTreeMap<String, Vec<u8>> = dbx.files().into_iter().collect();
    for (rel, bytes) in &tree {
        let held = files.iter().find(|(p, _)| p.ends_with(&format!("/up/{rel}"))).map(|(_, b)| b);
        assert_eq!(held, Some(bytes), "{rel} at Dropbox");
    }
    assert_eq!(setup.open_uploads(), 0);

    // --no-resume: a second killed run's upload is abandoned, and the object sent whole.
    std::fs::write(src_dir.path().join("big.bin"), pattern(BIG_BYTES, 3)).expect("change the large file");
    dbx.set_faults(faults).expect("slow Dropbox down");
    setup.kill_mid_object(&from, "dbx:/up");
    dbx.set_faults(laminar_emulators::dropbox::Faults::default()).expect("full speed");
    let fresh = setup.relay(&from, "dbx:/up", &["--no-resume"]);
    assert_eq!((fresh["objects_resumed"].as_u64(), fresh["objects_copied"].as_u64()), (Some(0), Some(1)), "{fresh}");
    let files: BTreeMap<String, Vec<u8>> = dbx.files().into_iter().collect();
    let held = files.iter().find(|(p, _)| p.ends_with("/up/big.bin")).map(|(_, b)| b.clone());
    assert_eq!(held, Some(pattern(BIG_BYTES, 3)));
    assert_eq!(setup.open_uploads(), 0);
}

/// Every path under `root` whose name is one of Laminar's temporary files.
fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            if entry.file_type().expect("type").is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().contains(".laminar-") {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn a_killed_relay_into_a_local_tree_leaves_no_temporary_file_behind() {
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let setup = Setup::new(&dbx.remote_toml("dbx"));
    let big = pattern(BIG_BYTES, 3);
    dbx.insert("/photos/big.bin", big.clone()).expect("seed");
    dbx.insert("/photos/a.txt", b"small".to_vec()).expect("seed");
    let dst_dir = tempfile::tempdir().expect("destination dir");
    let to = format!("file://{}", dst_dir.path().display());
    let mut faults = dbx.faults();
    faults.throughput_bytes_per_s = SLOW_BYTES_PER_S;
    dbx.set_faults(faults).expect("slow Dropbox down");
    setup.kill_mid_object("dbx:/photos", &to);
    // The killed relay left its temporary file, and nothing that looks complete.
    assert!(!dst_dir.path().join("big.bin").exists(), "nothing of the large file looks complete");
    let left = temporaries(dst_dir.path());
    assert!(!left.is_empty(), "the kill left a temporary file to clean up");

    dbx.set_faults(laminar_emulators::dropbox::Faults::default()).expect("full speed");
    let out = setup.command("dbx:/photos", &to, &[]).output().expect("run laminar");
    let report = report_of(&out, "the run after the kill");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed") && stderr.contains("temporary file"), "{stderr}");
    // The large file again from the start (a local tree vouches for no part it holds);
    // the small one was copied before the kill, or now.
    assert!(report["objects_copied"].as_u64() >= Some(1), "{report}");
    assert_eq!(std::fs::read(dst_dir.path().join("big.bin")).expect("big.bin"), big);
    assert_eq!(std::fs::read(dst_dir.path().join("a.txt")).expect("a.txt"), b"small");
    assert_eq!(temporaries(dst_dir.path()), Vec::<PathBuf>::new(), "no temporary file is left");
    assert_eq!(setup.open_uploads(), 0, "no upload left open in the journal");
}
