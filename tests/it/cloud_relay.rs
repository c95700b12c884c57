//! The relay Laminar's users asked for first: a Dropbox account into Google Drive, and
//! back, through the engine, against both emulators started in this process
//! (loopback only; `emulators/DROPBOX.md`, `emulators/DRIVE.md`), with the `laminar`
//! binary as a user runs it. Dropbox and Drive share no hash: the bytes read from
//! Dropbox are checked against its content_hash, and those written to Drive against
//! the MD5 Drive computes. Afterwards the bytes on each side are read from the
//! emulators' own stores, not through Laminar.

use std::collections::BTreeMap;

use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{DropboxEmulator, DropboxOptions};
use laminar_tests::laminar_with;

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Small files in folders, awkward names, an empty file, and one large enough for an
/// upload session on Dropbox and a resumable upload on Drive.
fn tree() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..30u64 {
        files.insert(format!("Photos/{}/img{i:02}.jpg", 2020 + i % 3), pattern(i as usize * 777 + 1, i));
    }
    files.insert("Docs/Résumé – final.pdf".into(), pattern(4_321, 100));
    files.insert("Docs/日本語 ノート.txt".into(), pattern(99, 101));
    files.insert("empty.txt".into(), Vec::new());
    files.insert("Video/clip.mov".into(), pattern(21 * MIB + 5, 102));
    files
}

struct Clouds {
    dbx: DropboxEmulator,
    gd: DriveEmulator,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn clouds() -> Clouds {
    let dbx = DropboxEmulator::start(DropboxOptions::default()).expect("start the Dropbox emulator");
    let gd = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("laminar.toml");
    std::fs::write(&config, format!("{}\n{}", dbx.remote_toml("dbx"), gd.remote_toml("gd"))).expect("laminar.toml");
    Clouds { dbx, gd, _dir: dir, config }
}

impl Clouds {
    fn relay(&self, from: &str, to: &str) -> serde_json::Value {
        let out = laminar_with(&self.config, &["relay", from, to, "--json", "--multipart-cutoff", "8MiB"]);
        assert_eq!(out.status.code(), Some(0), "relay {from} -> {to}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report")
    }

    /// Drive's binary files under `folder`, by path below it.
    fn in_drive(&self, folder: &str) -> BTreeMap<String, Vec<u8>> {
        let prefix = format!("{folder}/");
        self.gd
            .tree()
            .into_iter()
            .filter(|e| !e.mime_type.ends_with(".folder") && !e.trashed)
            .filter_map(|e| {
                let rel = e.path.strip_prefix(&prefix)?.to_string();
                Some((rel, self.gd.read_id(&e.id).expect("a binary file's bytes")))
            })
            .collect()
    }

    /// Dropbox's files under `/folder`, by path below it.
    fn in_dropbox(&self, folder: &str) -> BTreeMap<String, Vec<u8>> {
        let prefix = format!("/{folder}/");
        self.dbx
            .files()
            .into_iter()
            .filter_map(|(path, bytes)| path.strip_prefix(&prefix).map(|rel| (rel.to_string(), bytes.to_vec())))
            .collect()
    }
}

fn assert_same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let sizes = |t: &BTreeMap<String, Vec<u8>>| t.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>();
    assert_eq!(sizes(got), sizes(want), "{what}: names and sizes");
    for (rel, bytes) in want {
        assert!(got[rel] == *bytes, "{what}: {rel} differs");
    }
}

#[test]
fn dropbox_into_drive_and_back_byte_for_byte_then_a_rerun_copies_nothing() {
    let c = clouds();
    let files = tree();
    for (rel, bytes) in &files {
        c.dbx.insert(&format!("/Account/{rel}"), bytes.clone()).expect("seed Dropbox");
    }
    let n = files.len();

    let first = c.relay("dbx:Account", "gd:Backup/Account");
    assert_eq!(
        (first["objects_copied"].as_u64(), first["objects_failed"].as_u64()),
        (Some(n as u64), Some(0)),
        "{first}"
    );
    assert_same(&c.in_drive("Backup/Account"), &files, "Dropbox -> Drive");
    // Each object was checked against Dropbox's content_hash on the way in (the large
    // one from its parts' block digests) and against Drive's MD5 on the way out.
    let checks = first["checks"].as_array().expect("per-object checks");
    assert_eq!(checks.len(), n, "{first}");
    // Drive's MD5, or its SHA-256 where this CPU computes SHA-256 in hardware.
    let drive_check = laminar_tests::drive_check_name();
    for c in checks {
        assert_eq!(
            (&c["source"], &c["destination"]),
            (&serde_json::json!(["content_hash"]), &serde_json::json!([drive_check])),
            "{c}"
        );
    }
    assert_eq!(
        first["hashes_compared"],
        serde_json::json!({"source:content_hash": n, format!("destination:{drive_check}"): n}),
        "{first}"
    );
    let again = c.relay("dbx:Account", "gd:Backup/Account");
    assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
    assert_eq!(again["objects_skipped"].as_u64(), Some(n as u64), "{again}");

    let back = c.relay("gd:Backup/Account", "dbx:Restored");
    assert_eq!((back["objects_copied"].as_u64(), back["objects_failed"].as_u64()), (Some(n as u64), Some(0)), "{back}");
    assert_same(&c.in_dropbox("Restored"), &files, "Drive -> Dropbox");
    // Dropbox shares no hash with Drive; Laminar's record in each file's property
    // group (the source version and the content_hash it wrote) lets the re-run skip.
    let back_again = c.relay("gd:Backup/Account", "dbx:Restored");
    assert_eq!(
        (back_again["objects_copied"].as_u64(), back_again["objects_skipped"].as_u64()),
        (Some(0), Some(n as u64)),
        "{back_again}"
    );
    assert_same(&c.in_dropbox("Restored"), &files, "Drive -> Dropbox, after a re-run");
}

#[test]
fn the_demo_relays_a_dropbox_tree_into_drive_verifies_it_by_both_hashes_and_copies_nothing_twice() {
    let run = |extra: &[&str]| {
        let args = [&["demo", "--small-files", "40", "--large-files", "1", "--large-size", "40MiB"], extra].concat();
        let out = std::process::Command::new(laminar_tests::laminar_bin()).args(&args).output().expect("run laminar");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "laminar {args:?}: {stdout}\n{stderr}");
        stdout.into_owned()
    };
    // 40 small, 1 large and 7 with awkward names (accents, CJK, emoji, `%#&;+=?`, empty).
    let stdout = run(&[]);
    assert!(stdout.contains("emulator"), "the demo says the services are emulated: {stdout}");
    assert!(stdout.contains("48 objects: 48 copied"), "{stdout}");
    assert!(stdout.contains("verified 48 files by both providers' hashes"), "{stdout}");
    assert!(stdout.contains("a second relay copied 0 and skipped 48"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(run(&["--json"]).lines().last().unwrap_or("")).expect("one JSON report");
    assert_eq!((report["objects_copied"].as_u64(), report["objects_failed"].as_u64()), (Some(48), Some(0)), "{report}");

    let local = run(&["--local"]);
    assert!(local.contains("41 objects: 41 copied"), "{local}");
    assert!(local.contains("a second relay copied 0 and skipped 41"), "{local}");
}
