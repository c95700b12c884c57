//! A source object overwritten while it is relayed: a local file written in place,
//! and an S3 object replaced by another upload. Each read is pinned to the version the
//! relay started from (the file's size and mtime before and after each read, the S3
//! ETag of each ranged GET); on a change, the upload of the mix is aborted and the
//! object is sent again from its new version, which is what lands, and the report
//! says so. The destination is Drive (its emulator slowed, so that the change lands
//! mid-object), which takes one ordered stream per file: the case where a mix would
//! otherwise be easiest to make.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers, Weed};
use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
use laminar_tests::laminar_bin;

const MIB: u64 = 1 << 20;
const BIG_BYTES: u64 = 24 * MIB + 3;

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Runs `laminar relay FROM gd:in` while Drive takes 10 MiB/s; once Drive holds 4 MiB
/// of `big.bin`, calls `change`. Returns the report.
fn relay_changing_midway(gd: &DriveEmulator, config: &Path, from: &str, change: impl FnOnce()) -> serde_json::Value {
    let mut faults = gd.faults();
    faults.throughput_bytes_per_s = 10 * MIB;
    gd.set_faults(faults);
    let data = tempfile::tempdir().expect("data dir");
    let child = Command::new(laminar_bin())
        .env("LAMINAR_DATA_DIR", data.path())
        .arg("--config")
        .arg(config)
        .args(["relay", from, "gd:in", "--json", "--multipart-cutoff", "8MiB", "--part-size", "4MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run laminar");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gd.stats().sessions.iter().any(|s| s.name == "big.bin" && s.committed_bytes >= 4 * MIB) {
        assert!(Instant::now() < deadline, "Drive never held 4 MiB of big.bin");
        std::thread::sleep(Duration::from_millis(5));
    }
    change();
    gd.set_faults(laminar_emulators::drive::Faults::default());
    let out = child.wait_with_output().expect("wait for laminar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("changed at the source") && stderr.contains("new version"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["objects_restarted"], 1, "{report}");
    let restarted = report["restarted"].as_array().expect("restarted");
    assert!(restarted[0]["key"].as_str().unwrap().ends_with("big.bin"), "{report}");
    assert!(restarted[0]["reason"].as_str().unwrap().contains("changed at the source"), "{report}");
    assert_eq!(report["objects_failed"], 0, "{report}");
    report
}

/// What Drive holds: the new version whole, and the first upload never completed.
fn check_drive(gd: &DriveEmulator, new: &[u8]) {
    let got = gd.read("in/big.bin").expect("big.bin at Drive");
    assert!(got == new, "Drive holds the new version, not a mix ({} bytes)", got.len());
    let sessions: Vec<_> = gd.stats().sessions.into_iter().filter(|s| s.name == "big.bin").collect();
    assert_eq!(sessions.iter().filter(|s| s.complete).count(), 1, "{sessions:?}");
    assert_eq!(gd.read("in/small.txt").as_deref(), Some(&b"small"[..]));
}

#[test]
fn a_local_file_written_in_place_mid_relay_lands_as_its_new_version() {
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, gd.remote_toml("gd")).expect("config");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), pattern(BIG_BYTES, 1)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let new = {
        let mut b = pattern(BIG_BYTES, 1);
        b[(20 * MIB) as usize..(20 * MIB + 4096) as usize].fill(0xA5);
        b
    };
    let from = format!("file://{}", src.display());
    relay_changing_midway(&gd, &config, &from, || {
        // In place: same size, the bytes near the end changed.
        let mut f = std::fs::OpenOptions::new().write(true).open(src.join("big.bin")).unwrap();
        f.seek(SeekFrom::Start(20 * MIB)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
        f.sync_all().unwrap();
    });
    check_drive(&gd, &new);
}

#[test]
fn an_s3_object_replaced_mid_relay_lands_as_its_new_version() {
    if find_tool("weed").is_none() && !require_servers() {
        eprintln!("skipping: SeaweedFS not installed (tests/run.sh installs it)");
        return;
    }
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let weed = Weed::start().expect("start SeaweedFS");
    weed.create_bucket("bkt").expect("a bucket");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, format!("{}\n{}", gd.remote_toml("gd"), weed.remote_toml("s3"))).expect("config");
    let (old, new) = (dir.path().join("old.bin"), dir.path().join("new.bin"));
    std::fs::write(&old, pattern(BIG_BYTES, 2)).unwrap();
    let new_bytes = pattern(BIG_BYTES + 1000, 3);
    std::fs::write(&new, &new_bytes).unwrap();
    let small = dir.path().join("small.txt");
    std::fs::write(&small, b"small").unwrap();
    weed.upload_file(&old, "bkt/src/big.bin").unwrap();
    weed.upload_file(&small, "bkt/src/small.txt").unwrap();
    relay_changing_midway(&gd, &config, "s3:bkt/src", || weed.upload_file(&new, "bkt/src/big.bin").unwrap());
    check_drive(&gd, &new_bytes);
}

#[test]
fn a_dropbox_file_replaced_mid_relay_lands_as_its_new_version() {
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, format!("{}\n{}", gd.remote_toml("gd"), dbx.remote_toml("dbx"))).expect("config");
    dbx.insert("/src/big.bin", pattern(BIG_BYTES, 4)).unwrap();
    dbx.insert("/src/small.txt", &b"small"[..]).unwrap();
    let new = pattern(BIG_BYTES - 1000, 5);
    // Each read is pinned to the file's `rev`, which the download's Dropbox-API-Result gives.
    relay_changing_midway(&gd, &config, "dbx:src", || {
        dbx.insert("/src/big.bin", new.clone()).unwrap();
    });
    check_drive(&gd, &new);
}

#[test]
fn a_drive_file_replaced_mid_relay_lands_as_its_new_version() {
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let src = DriveEmulator::start(DriveOptions::default()).expect("start the source Drive emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, format!("{}\n{}", gd.remote_toml("gd"), src.remote_toml("src"))).expect("config");
    src.insert("src/big.bin", pattern(BIG_BYTES, 6)).unwrap();
    src.insert("src/small.txt", &b"small"[..]).unwrap();
    let new = {
        let mut b = pattern(BIG_BYTES, 6);
        b[(20 * MIB) as usize..(20 * MIB + 4096) as usize].fill(0x5A);
        b
    };
    // Drive gives no version with the bytes: the file's MD5 vouches for the whole read,
    // and a mismatch with the file then asked again for its MD5 is a change.
    relay_changing_midway(&gd, &config, "src:src", || src.overwrite("src/big.bin", new.clone()).unwrap());
    check_drive(&gd, &new);
}
