//! The acceptance matrix for the Dropbox and Google Drive backends: every pairing a user
//! relays between (S3, Dropbox, Drive, a local tree), at scale, with Drive's duplicate
//! names and Docs, with connections dropped mid-upload, 429 storms and tokens that
//! expire mid-relay, each provider as source and as destination.
//!
//! Both providers are Laminar's emulators, started in this process on loopback
//! (`emulators/DROPBOX.md`, `emulators/DRIVE.md`), and S3 is a real SeaweedFS server;
//! `laminar` runs as a user runs it. After every relay the bytes at the destination are
//! read from that store's own side (the emulator's store, rclone for S3, the file
//! system), never through Laminar, and compared with what was seeded.
//!
//! These prove the backends against emulators of the providers' documented APIs, not
//! against Dropbox or Google.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers, Weed};
use laminar_emulators::drive::{DocKind, DriveEmulator, DriveOptions, DropAfter, Scope, Throttle, ThrottleKind};
use laminar_emulators::dropbox::{content_hash_hex, ContentHasher, DropUploads, DropboxEmulator, DropboxOptions};
use laminar_emulators::{drive, dropbox};
use laminar_tests::proxy::{Fault, Proxy};
use laminar_tests::{laminar_bin, laminar_with};
use md5::Digest as _;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Bytes Drive keeps of a cut chunk are rounded down to this.
const DRIVE_CHUNK_ALIGN: u64 = 256 << 10;

/// Files by path below a folder.
type Tree = BTreeMap<String, Vec<u8>>;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
}

/// The one tree every pairing relays: accents, CJK, emoji and URL-special characters in
/// names, a 0-byte file, nested folders, and one file large enough for parallel parts
/// (Dropbox, S3) and a resumable session (Drive) with the cutoff at 8 MiB.
fn shared_tree() -> Tree {
    let mut t = Tree::new();
    t.insert("Photos/2024/Été à Paris/IMG_0001.jpg".into(), pattern(180_001, 1));
    t.insert("Docs/Résumé – final.pdf".into(), pattern(4_321, 2));
    t.insert("Docs/日本語 ノート.txt".into(), pattern(99, 3));
    t.insert("Music/Sigur Rós/Ágætis byrjun.flac".into(), pattern(65_537, 4));
    t.insert("Notes/party 🎉 plan.txt".into(), "🎉 at eight".as_bytes().to_vec());
    t.insert("Notes/100% #1 & more; a+b=c?.txt".into(), pattern(777, 5));
    t.insert("empty.txt".into(), Vec::new());
    t.insert("a/b/c/d/e/deep.bin".into(), pattern(3 * KIB + 1, 6));
    t.insert("a/b/sibling.bin".into(), pattern(1, 7));
    t.insert("Video/clip.mov".into(), pattern(12 * MIB + 3, 8));
    t
}

fn write_tree(root: &Path, tree: &Tree) {
    for (rel, bytes) in tree {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, bytes).expect("write a file");
    }
}

fn read_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("below the root").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).expect("read a file"));
            }
        }
    }
    out
}

/// Compares names and sizes first (a readable failure), then bytes.
fn assert_same(got: &Tree, want: &Tree, what: &str) {
    let sizes = |t: &Tree| t.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>();
    assert_eq!(sizes(got), sizes(want), "{what}: names and sizes");
    for (rel, bytes) in want {
        assert!(got[rel] == *bytes, "{what}: the bytes of {rel} differ");
    }
}

/// Dropbox's files under `/folder`, from the emulator's store.
fn in_dropbox(dbx: &DropboxEmulator, folder: &str) -> Tree {
    let prefix = format!("/{folder}/");
    dbx.files().into_iter().filter_map(|(p, b)| p.strip_prefix(&prefix).map(|rel| (rel.to_string(), b))).collect()
}

/// Drive's binary files under `folder`, from the emulator's store; a path held twice fails.
fn in_drive(gd: &DriveEmulator, folder: &str) -> Tree {
    let prefix = format!("{folder}/");
    let mut out = Tree::new();
    for e in gd.tree() {
        if e.trashed || e.mime_type.starts_with("application/vnd.google-apps.") {
            continue;
        }
        let Some(rel) = e.path.strip_prefix(&prefix) else { continue };
        let bytes = gd.read_id(&e.id).expect("a binary file's bytes");
        assert!(out.insert(rel.to_string(), bytes).is_none(), "{rel} is in Drive twice");
    }
    out
}

/// The last line of stdout as the relay's JSON report, after checking the exit status.
fn report_of(out: &Output, what: &str) -> serde_json::Value {
    let said = || format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{what}: {}", said());
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["objects_failed"], 0, "{what}: {report}");
    report
}

fn counts(report: &serde_json::Value) -> (Option<u64>, Option<u64>) {
    (report["objects_copied"].as_u64(), report["objects_skipped"].as_u64())
}

/// A Dropbox emulator (`dbx`), a Drive emulator (`gd`) and, when asked, a SeaweedFS
/// server (`s3`, bucket `bkt`), named in one laminar.toml.
struct Matrix {
    dbx: DropboxEmulator,
    gd: DriveEmulator,
    s3: Option<Weed>,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Matrix {
    fn start(dbx: DropboxOptions, gd: DriveOptions) -> Matrix {
        let dbx = DropboxEmulator::start(dbx).expect("start the Dropbox emulator");
        let gd = DriveEmulator::start(gd).expect("start the Drive emulator");
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("laminar.toml");
        std::fs::write(&config, format!("{}\n{}", dbx.remote_toml("dbx"), gd.remote_toml("gd"))).expect("config");
        Matrix { dbx, gd, s3: None, dir, config }
    }

    /// With S3 too; None (the test is skipped with a note) when SeaweedFS is missing and
    /// servers are not required.
    fn with_s3() -> Option<Matrix> {
        if find_tool("weed").is_none() && !require_servers() {
            eprintln!("skipping: SeaweedFS not installed (tests/run.sh installs it)");
            return None;
        }
        let mut m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
        let weed = Weed::start().expect("start SeaweedFS");
        weed.create_bucket("bkt").expect("a bucket");
        let mut text = std::fs::read_to_string(&m.config).expect("config");
        text.push('\n');
        text.push_str(&weed.remote_toml("s3"));
        std::fs::write(&m.config, text).expect("config");
        m.s3 = Some(weed);
        Some(m)
    }

    fn args<'a>(from: &'a str, to: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        [&["relay", from, to, "--json", "--multipart-cutoff", "8MiB"][..], extra].concat()
    }

    /// Relays; must exit 0 with nothing failed.
    fn relay(&self, from: &str, to: &str, extra: &[&str]) -> serde_json::Value {
        report_of(&laminar_with(&self.config, &Matrix::args(from, to, extra)), &format!("relay {from} -> {to}"))
    }

    /// Starts a relay in the background (for faults set while it runs).
    fn spawn(&self, from: &str, to: &str, extra: &[&str]) -> Child {
        Command::new(laminar_bin())
            .arg("--config")
            .arg(&self.config)
            .args(Matrix::args(from, to, extra))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run laminar")
    }

    fn seed_dropbox(&self, folder: &str, tree: &Tree) {
        for (rel, bytes) in tree {
            self.dbx.insert(&format!("/{folder}/{rel}"), bytes.clone()).expect("seed Dropbox");
        }
    }

    fn seed_drive(&self, folder: &str, tree: &Tree) {
        for (rel, bytes) in tree {
            self.gd.insert(&format!("{folder}/{rel}"), bytes.clone()).expect("seed Drive");
        }
    }
}

/// Waits, within a bound, until `ready` holds: the emulators have no hook to wait on,
/// so their counters are watched. Panics when the bound passes.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn finish(child: Child, what: &str) -> serde_json::Value {
    let out = child.wait_with_output().expect("laminar ends");
    eprintln!("{what}: stderr: {}", String::from_utf8_lossy(&out.stderr));
    report_of(&out, what)
}

/// Every object was checked by a hash on the destination's side, and, out of Dropbox,
/// against Dropbox's content_hash (the providers share no hash: what was read is checked
/// by the source's, what was written by the destination's).
fn assert_checked(report: &serde_json::Value, from: &str, to: &str, n: u64) {
    let hashes = &report["hashes_compared"];
    let side = |prefix: &str| {
        hashes.as_object().expect("hashes_compared").iter().filter(|(k, _)| k.starts_with(prefix)).fold(
            BTreeMap::new(),
            |mut m, (k, v)| {
                m.insert(k.clone(), v.as_u64().unwrap_or(0));
                m
            },
        )
    };
    let (src, dst) = (side("source:"), side("destination:"));
    let want_dst = match to.split(':').next() {
        Some("gd") => drive_destination_check(),
        Some("dbx") => "destination:content_hash".to_string(),
        _ => "destination:crc32c".to_string(),
    };
    assert_eq!(dst, BTreeMap::from([(want_dst, n)]), "{from} -> {to}: {hashes}");
    if from.starts_with("dbx:") {
        assert_eq!(src, BTreeMap::from([("source:content_hash".to_string(), n)]), "{from} -> {to}: {hashes}");
    }
    assert_eq!(src.values().sum::<u64>(), n, "{from} -> {to}: {hashes}");
}

#[test]
fn one_tree_through_every_pairing_byte_exact_and_a_rerun_copies_nothing() {
    let Some(m) = Matrix::with_s3() else { return };
    let s3 = m.s3.as_ref().expect("S3");
    let tree = shared_tree();
    let n = tree.len() as u64;
    // Seeded by each store's own means: rclone into S3, the emulator's store for Dropbox.
    let src = m.dir.path().join("src");
    write_tree(&src, &tree);
    s3.upload_dir(&src, "bkt/tree").expect("seed S3 with rclone");
    m.seed_dropbox("Seed", &tree);
    let out = m.dir.path().join("out");

    // Each destination read back by its own side: the emulators' stores, rclone, the disk.
    let s3_at = |path: &str| {
        let back = tempfile::tempdir().expect("a download dir");
        s3.download_dir(path, back.path()).expect("read S3 with rclone");
        read_tree(back.path())
    };
    let hops: [(&str, String, &dyn Fn() -> Tree); 5] = [
        ("s3:bkt/tree", "gd:FromS3".into(), &|| in_drive(&m.gd, "FromS3")),
        ("dbx:Seed", "s3:bkt/from-dropbox".into(), &|| s3_at("bkt/from-dropbox")),
        ("dbx:Seed", format!("file://{}", out.display()), &|| read_tree(&out)),
        ("gd:FromS3", "dbx:FromDrive".into(), &|| in_dropbox(&m.dbx, "FromDrive")),
        ("dbx:Seed", "gd:FromDropbox".into(), &|| in_drive(&m.gd, "FromDropbox")),
    ];
    for (from, to, held) in hops {
        let started = Instant::now();
        let first = m.relay(from, &to, &[]);
        assert_eq!(counts(&first).0, Some(n), "{from} -> {to}: {first}");
        assert_checked(&first, from, &to, n);
        assert_same(&held(), &tree, &format!("{from} -> {to}"));
        let again = m.relay(from, &to, &[]);
        assert_eq!(counts(&again), (Some(0), Some(n)), "{from} -> {to}, a re-run copies nothing: {again}");
        assert_same(&held(), &tree, &format!("{from} -> {to}, after the re-run"));
        eprintln!("{from} -> {to}: {:.1} s for both runs", started.elapsed().as_secs_f64());
    }
    // Drive holds each folder once, however many workers made them.
    let mut folders: Vec<_> =
        m.gd.tree().into_iter().filter(|e| e.mime_type.ends_with(".folder")).map(|e| e.path).collect();
    let made = folders.len();
    folders.sort();
    folders.dedup();
    assert_eq!(folders.len(), made, "{folders:?}");
    assert_eq!(m.dbx.open_sessions(), 0);
}

#[test]
fn two_thousand_small_files_from_dropbox_into_drive() {
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = Tree::new();
    for i in 0..2000u64 {
        tree.insert(format!("d{:02}/f{i:04}.bin", i % 25), pattern((i as usize * 37) % 4096, 1000 + i));
    }
    m.seed_dropbox("Many", &tree);
    let started = Instant::now();
    let first = m.relay("dbx:Many", "gd:Many", &[]);
    eprintln!("2,000 files Dropbox -> Drive: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(counts(&first).0, Some(2000), "{first}");
    assert_same(&in_drive(&m.gd, "Many"), &tree, "Dropbox -> Drive, 2,000 files");
    let again = m.relay("dbx:Many", "gd:Many", &[]);
    assert_eq!(counts(&again), (Some(0), Some(2000)), "{again}");
    assert_eq!(m.gd.ids_at("Many/d07").len(), 1, "one folder of each name");
}

/// One GiB in 1 MiB blocks, each from its own seed, so any block can be made again
/// without keeping the whole file twice.
const GIB_BLOCKS: usize = 1024;

fn gib_block(i: usize, out: &mut [u8]) {
    assert_eq!(out.len(), MIB);
    fastrand::Rng::with_seed(0x6b1b_0000 + i as u64).fill(out);
}

#[test]
fn one_gib_from_dropbox_into_drive_by_both_providers_hashes() {
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    // Made once, hashed as it is made (MD5 for Drive, content_hash for Dropbox, neither
    // the engine's), then moved into the Dropbox emulator without a copy.
    let mut bytes = vec![0u8; GIB_BLOCKS * MIB];
    let (mut md5, mut content_hash) = (md5::Md5::new(), ContentHasher::new());
    for (i, block) in bytes.chunks_mut(MIB).enumerate() {
        gib_block(i, block);
        md5.update(&*block);
        content_hash.update(block);
    }
    let (md5, content_hash) = (hex::encode(md5.finalize()), content_hash.finish_hex());
    let size = bytes.len() as u64;
    let seeded = m.dbx.insert("/Big/one.gib", bytes).expect("seed Dropbox");
    assert_eq!((seeded.size, seeded.content_hash.as_str()), (size, content_hash.as_str()));

    let started = Instant::now();
    let report = m.relay("dbx:Big", "gd:Big", &["--ram-buffer", "256MiB"]);
    eprintln!("1 GiB Dropbox -> Drive: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(counts(&report).0, Some(1), "{report}");
    drop(m.dbx);

    let entry = m.gd.tree().into_iter().find(|e| e.path == "Big/one.gib").expect("the file is in Drive");
    assert_eq!((entry.size_bytes, entry.md5.as_deref()), (size, Some(md5.as_str())), "Drive's size and MD5");
    // One session, every byte sent once.
    let sessions = m.gd.stats().sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0].complete && sessions[0].received_bytes == size, "{sessions:?}");
    // Every byte Drive holds, block by block against the block made again, and Dropbox's
    // content_hash over them (the two providers share no hash).
    let held = m.gd.read_id(&entry.id).expect("the bytes");
    assert_eq!(held.len() as u64, size);
    let mut want = vec![0u8; MIB];
    let mut over_drive = ContentHasher::new();
    for (i, block) in held.chunks(MIB).enumerate() {
        gib_block(i, &mut want);
        assert!(block == want.as_slice(), "block {i} (bytes {}..) differs in Drive", i * MIB);
        over_drive.update(block);
    }
    assert_eq!(over_drive.finish_hex(), content_hash, "Dropbox's content_hash of the bytes in Drive");
}

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

#[test]
fn drive_duplicates_keep_stable_distinct_names_and_docs_are_exported() {
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    m.gd.insert("Share/x.txt", b"first".to_vec()).expect("insert");
    m.gd.insert("Share/x.txt", b"second, longer".to_vec()).expect("insert");
    for i in 0..3 {
        m.gd.insert("Share/Album/photo.jpg", pattern(70_000 + i, i as u64)).expect("insert");
    }
    m.gd.insert("Share/README", b"no extension".to_vec()).expect("insert");
    m.gd.insert("Share/README", b"no extension either".to_vec()).expect("insert");
    let doc = m.gd.insert_doc("Share/notes", DocKind::Document, "some text").expect("a Doc");
    let sheet = m.gd.insert_doc("Share/Album/budget", DocKind::Spreadsheet, "a,b\n1,2").expect("a Sheet");

    // The smallest id keeps the name; each other gets ` (ID)` before its extension.
    let named = |path: &str| {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let mut ids = m.gd.ids_at(&format!("Share/{path}"));
        ids.sort();
        let (stem, ext) = name.rsplit_once('.').map_or((name, String::new()), |(s, e)| (s, format!(".{e}")));
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let rel = if i == 0 { path.to_string() } else { format!("{prefix}{stem} ({id}){ext}") };
                (rel, m.gd.read_id(id).expect("bytes"))
            })
            .collect::<Vec<_>>()
    };
    let binaries: Tree = ["x.txt", "Album/photo.jpg", "README"].into_iter().flat_map(named).collect();
    assert_eq!(binaries.len(), 7, "{:?}", binaries.keys());
    assert!(binaries.values().any(|b| b == b"first") && binaries.values().any(|b| b == b"second, longer"));
    // Docs as their exports (the default formats), under their names with the extension.
    let mut want = binaries.clone();
    want.insert("notes.docx".into(), m.gd.export(&doc, DOCX).expect("an export"));
    want.insert("Album/budget.xlsx".into(), m.gd.export(&sheet, XLSX).expect("an export"));

    let report = m.relay("gd:Share", "dbx:Share", &[]);
    assert_eq!(counts(&report).0, Some(9), "{report}");
    assert_same(&in_dropbox(&m.dbx, "Share"), &want, "Drive -> Dropbox with duplicates and Docs");

    // The names are stable: a re-run finds every file under the name it gave it.
    let again = m.relay("gd:Share", "dbx:Share", &[]);
    assert_eq!(counts(&again), (Some(0), Some(9)), "{again}");
    assert_same(&in_dropbox(&m.dbx, "Share"), &want, "Dropbox after the re-run");
    // Another destination gets the same names; with exports off, Docs are skipped with
    // the reason.
    let local = m.dir.path().join("share");
    let out = laminar_with(
        &m.config,
        &Matrix::args("gd:Share", &format!("file://{}", local.display()), &["--drive-export", "none"]),
    );
    let down = report_of(&out, "Drive -> file, exports off");
    assert_eq!(counts(&down).0, Some(7), "{down}");
    assert_eq!(down["objects_left_out"], 2, "{down}");
    let left_out = down["left_out"].as_array().expect("left_out");
    for skipped in ["Share/notes", "Share/Album/budget"] {
        let why = left_out.iter().find(|l| l["key"] == skipped).unwrap_or_else(|| panic!("{skipped}: {down}"));
        assert!(why["reason"].as_str().is_some_and(|r| r.contains("exports are off")), "the reason: {down}");
    }
    assert_same(&read_tree(&local), &binaries, "Drive -> file with duplicates");
}

#[test]
fn a_chunk_dropped_mid_upload_into_drive_resumes_from_what_drive_kept() {
    const SIZE: usize = 40 * MIB + 3;
    // The first chunk's connection drops 5 MiB and 17 bytes in: Drive keeps 5 MiB.
    let cut = 5 * MIB as u64 + 17;
    let faults = drive::Faults { drop_uploads: Some(DropAfter { after_bytes: cut, next: 1 }), ..Default::default() };
    let m = Matrix::start(DropboxOptions::default(), DriveOptions { faults, ..DriveOptions::default() });
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 40));
    m.seed_dropbox("Up", &tree);
    let report = m.relay("dbx:Up", "gd:Up", &[]);
    assert_eq!(counts(&report).0, Some(1), "{report}");
    // What Drive kept of the cut chunk is counted as not sent again.
    let kept = cut / DRIVE_CHUNK_ALIGN * DRIVE_CHUNK_ALIGN;
    assert_eq!(report["bytes_resumed"], kept, "{report}\n{:?}", m.gd.stats());
    assert_same(&in_drive(&m.gd, "Up"), &tree, "Dropbox -> Drive with a dropped chunk");
    let stats = m.gd.stats();
    assert_eq!(stats.dropped_connections, 1, "{stats:?}");
    assert_eq!(stats.sessions.len(), 1, "one session, resumed, not started again: {:?}", stats.sessions);
    let s = &stats.sessions[0];
    assert!(s.complete && s.committed_bytes == SIZE as u64, "{s:?}");
    // Sent twice: only what the cut chunk carried past the 256 KiB boundary Drive kept.
    let resent = s.received_bytes - SIZE as u64;
    assert!(resent < DRIVE_CHUNK_ALIGN, "{resent} bytes sent twice: {s:?}");
}

#[test]
fn a_part_dropped_mid_upload_into_dropbox_is_the_only_one_sent_again() {
    const SIZE: usize = 40 * MIB + 3;
    const PART: usize = 8 * MIB;
    // One append's connection drops 3 MiB and 5 bytes in; Dropbox keeps nothing of it.
    let cut = 3 * MIB as u64 + 5;
    let faults =
        dropbox::Faults { drop_uploads: Some(DropUploads { after_bytes: cut, next: 1 }), ..Default::default() };
    let m = Matrix::start(DropboxOptions { faults, ..DropboxOptions::default() }, DriveOptions::default());
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 41));
    // From a local tree: a file from Drive would be read whole (Drive's MD5 does not
    // combine across ranges) and go up in one call.
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    let report = m.relay(&from, "dbx:Up", &["--part-size", "8MiB"]);
    assert_eq!(counts(&report).0, Some(1), "{report}");
    // Dropbox keeps nothing of a cut append, so nothing is resumed: the part goes again
    // whole, and the parts it had are not sent again (the bytes in, below).
    assert_eq!(report["bytes_resumed"], 0, "{report}");
    let meta = m.dbx.metadata("/Up/big.bin").expect("the file is in Dropbox");
    assert_eq!(meta.content_hash, content_hash_hex(&tree["big.bin"]));
    assert_same(&in_dropbox(&m.dbx, "Up"), &tree, "Drive -> Dropbox with a dropped part");
    let stats = m.dbx.stats();
    assert_eq!(stats.dropped_connections, 1, "{stats:?}");
    let calls = |route: &str| stats.requests.get(route).copied().unwrap_or(0);
    let parts = SIZE.div_ceil(PART) as u64;
    assert_eq!(calls("files/upload_session/start"), 1, "one session: {stats:?}");
    assert_eq!(calls("files/upload_session/append_v2"), parts + 1, "one part sent twice: {stats:?}");
    // Bytes in: the file, what arrived of the cut part, and a few KiB of RPC bodies; no
    // committed part sent again.
    let extra = stats.bytes_received - SIZE as u64;
    assert!((cut..cut + 256 * KIB as u64).contains(&extra), "{extra} bytes over the file's size: {stats:?}");
    assert_eq!(stats.open_sessions, 0);
}

/// A tree of `n` small files (and the shared tree), for faults that need a relay long
/// enough to meet them.
fn busy_tree(n: usize) -> Tree {
    let mut tree = shared_tree();
    for i in 0..n {
        tree.insert(format!("many/f{i:03}.bin"), pattern(1000 + i, 500 + i as u64));
    }
    tree
}

/// The two emulators with 10 ms added to each call; relays with two objects in flight,
/// so that when the first file lands at the destination most of the tree is still to
/// be read and written, and a fault set then meets the relay in full flow.
fn slow_matrix(dbx: dropbox::Faults, gd: drive::Faults) -> Matrix {
    Matrix::start(
        DropboxOptions { faults: dropbox::Faults { latency_ms: 10, ..dbx }, ..DropboxOptions::default() },
        DriveOptions { faults: drive::Faults { latency_ms: 10, ..gd }, ..DriveOptions::default() },
    )
}
const SLOW: [&str; 2] = ["--transfers", "2"];

fn calls(requests: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
    names.iter().map(|n| requests.get(*n).copied().unwrap_or(0)).sum()
}
const DRIVE_UPLOADS: [&str; 2] = ["files.create_multipart", "files.create_resumable"];
const DROPBOX_UPLOADS: [&str; 4] = [
    "files/upload",
    "files/upload_session/start",
    "files/upload_session/finish",
    "files/upload_session/finish_batch_v2",
];

#[test]
fn a_429_storm_on_both_sides_in_both_directions_ends_with_everything_copied() {
    const STORM: u32 = 6;
    const DBX_STORM: u32 = 6;
    // Dropbox's 429s say Retry-After: 1; Drive's carry none, as Drive's do. Each storm
    // meets transfers under way: Drive's is scoped to the calls that carry file bytes,
    // Dropbox's is set once the first file has landed. With two objects in flight the
    // throttle is at its floor at once, where each throttled answer counts against
    // --retries (README), so the retries allowed are more than a storm.
    let m = slow_matrix(dropbox::Faults { retry_after_s: 1, ..Default::default() }, drive::Faults::default());
    let storm = |kind, scope| Some(Throttle { kind, next: STORM, rate: 0.0, scope });
    let flags = [&SLOW[..], &["--retries", "8"]].concat();
    let tree = busy_tree(30);
    m.seed_dropbox("Seed", &tree);

    // Dropbox as source, Drive as destination (429 rateLimitExceeded).
    m.gd.update_faults(|f| f.throttle = storm(ThrottleKind::RateLimit429, Scope::Uploads));
    let child = m.spawn("dbx:Seed", "gd:Storm", &flags);
    wait_for("the first upload into Drive", || calls(&m.gd.stats().requests, &DRIVE_UPLOADS) > 0);
    m.dbx.throttle_next(DBX_STORM.into());
    let there = finish(child, "Dropbox -> Drive through storms");
    assert_eq!(counts(&there).0, Some(tree.len() as u64), "{there}");
    assert_same(&in_drive(&m.gd, "Storm"), &tree, "Dropbox -> Drive through storms");
    assert_eq!(m.dbx.stats().throttled, u64::from(DBX_STORM), "{:?}", m.dbx.stats());
    assert_eq!(m.gd.stats().throttled.values().sum::<u64>(), u64::from(STORM));

    // Drive as source (403 userRateLimitExceeded, its per-minute limit), Dropbox as
    // destination.
    m.gd.update_faults(|f| f.throttle = storm(ThrottleKind::UserRateLimit, Scope::Downloads));
    let child = m.spawn("gd:Storm", "dbx:Back", &flags);
    wait_for("the first upload into Dropbox", || calls(&m.dbx.stats().requests, &DROPBOX_UPLOADS) > 0);
    m.dbx.throttle_next(DBX_STORM.into());
    let back = finish(child, "Drive -> Dropbox through storms");
    assert_eq!(counts(&back).0, Some(tree.len() as u64), "{back}");
    assert_same(&in_dropbox(&m.dbx, "Back"), &tree, "Drive -> Dropbox through storms");
    assert_eq!(m.dbx.stats().throttled, 2 * u64::from(DBX_STORM), "{:?}", m.dbx.stats());
    assert_eq!(m.gd.stats().throttled.values().sum::<u64>(), 2 * u64::from(STORM));
    assert_eq!(m.dbx.open_sessions(), 0);
}

#[test]
fn a_429_storm_at_the_start_of_a_relay_with_drive_is_waited_out() {
    // Six throttled answers in a row meet the check before the relay starts: it waits
    // them out (at least eight retries, whatever --retries says) instead of ending.
    const STORM: u32 = 6;
    for (kind, from, to) in
        [(ThrottleKind::RateLimit429, "dbx:Seed", "gd:Start"), (ThrottleKind::UserRateLimit, "gd:Start", "dbx:Back")]
    {
        let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
        let tree = shared_tree();
        m.seed_dropbox("Seed", &tree);
        m.seed_drive("Start", &tree);
        m.gd.update_faults(|f| f.throttle = Some(Throttle { kind, next: STORM, rate: 0.0, scope: Scope::All }));
        let report = m.relay(from, to, &[]);
        assert_eq!(counts(&report).0, Some(tree.len() as u64), "{from} -> {to}: {report}");
        let held = if to.starts_with("gd:") { in_drive(&m.gd, "Start") } else { in_dropbox(&m.dbx, "Back") };
        assert_same(&held, &tree, &format!("{from} -> {to} after a storm at the start"));
    }
}

#[test]
fn tokens_expired_mid_relay_on_both_sides_in_both_directions_are_refreshed() {
    let m = slow_matrix(dropbox::Faults::default(), drive::Faults::default());
    let tree = busy_tree(40);
    m.seed_dropbox("Seed", &tree);

    // Dropbox -> Drive: every token on both sides expires once Drive has the first file.
    let child = m.spawn("dbx:Seed", "gd:Tokens", &SLOW);
    wait_for("the first upload into Drive", || calls(&m.gd.stats().requests, &DRIVE_UPLOADS) > 0);
    m.dbx.expire_tokens();
    m.gd.expire_tokens();
    let there = finish(child, "Dropbox -> Drive, tokens expired");
    assert_eq!(counts(&there).0, Some(tree.len() as u64), "{there}");
    assert_same(&in_drive(&m.gd, "Tokens"), &tree, "Dropbox -> Drive, tokens expired");
    let (d, g) = (m.dbx.stats(), m.gd.stats());
    assert!(d.auth_rejected >= 1 && calls(&d.requests, &["oauth2/token"]) >= 2, "Dropbox refreshed: {d:?}");
    assert!(g.unauthorized >= 1 && g.refresh_grants >= 2, "Drive refreshed: {g:?}");

    // Drive -> Dropbox: the same once Dropbox has the first file.
    let (d_rejected, g_rejected) = (d.auth_rejected, g.unauthorized);
    let child = m.spawn("gd:Tokens", "dbx:Back", &SLOW);
    wait_for("the first upload into Dropbox", || calls(&m.dbx.stats().requests, &DROPBOX_UPLOADS) > 0);
    m.dbx.expire_tokens();
    m.gd.expire_tokens();
    let back = finish(child, "Drive -> Dropbox, tokens expired");
    assert_eq!(counts(&back).0, Some(tree.len() as u64), "{back}");
    assert_same(&in_dropbox(&m.dbx, "Back"), &tree, "Drive -> Dropbox, tokens expired");
    let (d, g) = (m.dbx.stats(), m.gd.stats());
    assert!(d.auth_rejected > d_rejected, "Dropbox met an expired token again: {d:?}");
    assert!(g.unauthorized > g_rejected, "Drive met an expired token again: {g:?}");
    assert_eq!(d.open_sessions, 0);
}

#[test]
fn a_byte_changed_in_a_large_read_from_drive_is_caught() {
    // Drive's MD5 and SHA-256 do not combine across ranges read apart, so a file from
    // Drive is read whole (up to what one upload and a worker's RAM share hold) and
    // checked against its MD5: a byte flipped on the way is caught, the file read
    // again, and what lands in Dropbox is Drive's bytes.
    const SIZE: usize = 20 * MIB + 5;
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 43));
    m.seed_drive("Flip", &tree);
    let upstream: std::net::SocketAddr =
        m.gd.api_url().trim_start_matches("http://").trim_end_matches('/').parse().expect("the emulator's address");
    // Well past the few KiB of metadata answers: a byte of a range's media.
    let proxy = Proxy::start(upstream, Fault::FlipResponseByte { after_bytes: 12 * MIB as u64 });
    let text = std::fs::read_to_string(&m.config).expect("config");
    let text = text.replace(&format!("api_url = {:?}", m.gd.api_url()), &format!("api_url = {:?}", proxy.endpoint()));
    std::fs::write(&m.config, text).expect("config");
    let report = m.relay("gd:Flip", "dbx:Flip", &[]);
    assert!(proxy.fault_fired(), "the byte was flipped");
    assert_eq!(counts(&report).0, Some(1), "{report}");
    assert_same(&in_dropbox(&m.dbx, "Flip"), &tree, "Drive -> Dropbox with a byte changed on the way");
}

/// The report's name for the check of what was written to Drive: the hash Drive
/// computed, MD5 or SHA-256, whichever is cheaper here.
fn drive_destination_check() -> String {
    format!("destination:{}", laminar_tests::drive_check_name())
}

/// The report's name for the check of what was read from Drive: Drive reports MD5 and
/// SHA-256, and the cheaper here is computed (SHA-256 where the CPU has it in hardware).
fn drive_source_check() -> String {
    format!("source:{}", laminar_tests::drive_check_name())
}

/// A file from Drive too large to read whole (more than a worker's RAM share here):
/// its parts are read in parallel and hashed in order into one MD5, which Drive's
/// `md5Checksum` checks before the Dropbox session is finished.
#[test]
fn a_file_from_drive_too_large_to_read_whole_is_checked_by_drive_md5() {
    const SIZE: usize = 40 * MIB + 7;
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 47));
    m.seed_drive("Big", &tree);
    let small_ram = ["--ram-buffer", "64MiB", "--workers", "2", "--part-size", "8MiB"];
    let report = m.relay("gd:Big", "dbx:Big", &small_ram);
    assert_eq!(counts(&report).0, Some(1), "{report}");
    assert_checked(&report, "gd:Big", "dbx:Big", 1);
    assert_eq!(report["hashes_compared"][drive_source_check()], 1, "{report}");
    assert_same(&in_dropbox(&m.dbx, "Big"), &tree, "Drive -> Dropbox, a file read in parts");
    // Into a local tree too (another store that takes parts in parallel).
    let dst = tempfile::tempdir().expect("destination dir");
    let to = format!("file://{}", dst.path().display());
    let report = m.relay("gd:Big", &to, &small_ram);
    assert_eq!(report["hashes_compared"][drive_source_check()], 1, "{report}");
    assert_same(&read_tree(dst.path()), &tree, "Drive -> file, a file read in parts");
}

/// A large file from Drive routed through the NVMe stage: its parts are filled into the
/// stage out of order, so the in-order MD5 cannot be kept on the way; the file is read
/// once more in order before the session is finished, and still checked by Drive's MD5
/// (Drive -> Drive takes this route, one ordered stream).
#[test]
fn a_large_file_from_drive_through_the_stage_is_still_checked_by_drive_md5() {
    const SIZE: usize = 40 * MIB + 7;
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 53));
    m.seed_drive("Staged", &tree);
    let stage = tempfile::tempdir_in(std::env::temp_dir()).expect("stage dir");
    let stage_dir = stage.path().to_str().expect("a UTF-8 path");
    let args = ["--ram-buffer", "64MiB", "--workers", "2", "--part-size", "8MiB", "--route", "stage"];
    let report = m.relay("gd:Staged", "dbx:Staged", &[&args[..], &["--stage-dir", stage_dir]].concat());
    assert_eq!(report["routes"]["stage"], 1, "{report}");
    assert_eq!(report["hashes_compared"][drive_source_check()], 1, "{report}");
    assert_same(&in_dropbox(&m.dbx, "Staged"), &tree, "Drive -> Dropbox through the stage");
    let parts = SIZE.div_ceil(8 * MIB) as u64;
    let reads = m.gd.stats().requests.get("files.get_media").copied().unwrap_or(0);
    assert!(reads >= 2 * parts, "{reads} reads: each part read into the stage, then all once more in order");
}

/// A byte changed on the way from Drive in a file read in parts: the in-order MD5 does
/// not match Drive's, so nothing says which part held it. The upload is never finished
/// (nothing wrong is ever visible in Dropbox) and the file is read and sent again from
/// the start, once, and lands with Drive's bytes; the report says it was started over.
#[test]
fn a_byte_changed_in_a_file_from_drive_read_in_parts_starts_it_over_and_it_lands_right() {
    const SIZE: usize = 40 * MIB + 7;
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(SIZE, 59));
    m.seed_drive("Flip", &tree);
    let upstream: std::net::SocketAddr =
        m.gd.api_url().trim_start_matches("http://").trim_end_matches('/').parse().expect("the emulator's address");
    let proxy = Proxy::start(upstream, Fault::FlipResponseByte { after_bytes: 12 * MIB as u64 });
    let clean = std::fs::read_to_string(&m.config).expect("config");
    let faulty =
        clean.replace(&format!("api_url = {:?}", m.gd.api_url()), &format!("api_url = {:?}", proxy.endpoint()));
    std::fs::write(&m.config, faulty).expect("config");
    let small_ram = ["--ram-buffer", "64MiB", "--workers", "2", "--part-size", "8MiB"];
    let out = laminar_with(&m.config, &Matrix::args("gd:Flip", "dbx:Flip", &small_ram));
    assert!(proxy.fault_fired(), "the byte was flipped");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("the source reports") && said.contains("sending it again from the start"), "{said}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["objects_restarted"], 1, "{report}");
    assert_eq!(report["objects_copied"], 1, "{report}");
    assert_eq!(report["hashes_compared"][drive_source_check()], 1, "{report}");
    assert_same(&in_dropbox(&m.dbx, "Flip"), &tree, "Drive -> Dropbox, started over after a byte changed");
    // One file in Dropbox, its bytes Drive's: the first upload session was never finished.
    assert_eq!(m.dbx.files().len(), 1);
}

/// `laminar sync` and `laminar move` delete through each provider's own API: a file
/// gone from Dropbox is deleted from its Drive mirror (`files.delete`), and a move out
/// of Drive into Dropbox leaves Drive without the files that landed, and a move back
/// out of Dropbox leaves Dropbox without them (`files/delete_v2`), each store read back
/// from the emulator's side.
#[test]
fn a_sync_and_a_move_delete_through_the_dropbox_and_drive_apis() {
    let m = Matrix::start(DropboxOptions::default(), DriveOptions::default());
    let mut tree = busy_tree(20);
    tree.remove("Video/clip.mov");
    m.seed_dropbox("Seed", &tree);
    let sync = |extra: &[&str]| {
        let args = [&["sync", "dbx:Seed", "gd:Mirror", "--json"][..], extra].concat();
        report_of(&laminar_with(&m.config, &args), "sync dbx:Seed -> gd:Mirror")
    };
    assert_eq!(sync(&[])["objects_copied"], tree.len() as u64);
    assert_same(&in_drive(&m.gd, "Mirror"), &tree, "the first sync");
    assert!(m.dbx.remove("/Seed/many/f003.bin").expect("remove from Dropbox"));
    tree.remove("many/f003.bin");
    assert_eq!(sync(&[])["objects_deleted"], 1);
    assert_same(&in_drive(&m.gd, "Mirror"), &tree, "the mirror after the deletion");
    // Out of Drive into Dropbox, then back out of Dropbox into Drive.
    let moved = report_of(&laminar_with(&m.config, &["move", "gd:Mirror", "dbx:Moved", "--json"]), "move out of Drive");
    assert_eq!(moved["objects_deleted"], tree.len() as u64);
    assert!(in_drive(&m.gd, "Mirror").is_empty(), "Drive holds none of the moved files");
    assert_same(&in_dropbox(&m.dbx, "Moved"), &tree, "Dropbox after the move");
    let back = report_of(&laminar_with(&m.config, &["move", "dbx:Moved", "gd:Back", "--json"]), "move out of Dropbox");
    assert_eq!(back["objects_deleted"], tree.len() as u64);
    assert!(in_dropbox(&m.dbx, "Moved").is_empty(), "Dropbox holds none of the moved files");
    assert_same(&in_drive(&m.gd, "Back"), &tree, "Drive after the move back");
}
