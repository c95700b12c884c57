//! Relays into and out of a `type = "drive"` remote, against the Drive emulator
//! started in this process (loopback only; `emulators/DRIVE.md`), with the `laminar`
//! binary as a user runs it. The bytes at Drive are checked through the emulator's own
//! store, not through Laminar.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use laminar_emulators::drive::{
    DocKind, DriveEmulator, DriveOptions, DropAfter, Faults, Scope, ShortCommit, Throttle, ThrottleKind,
};
use laminar_tests::proxy::{Fault, Proxy};
use laminar_tests::{laminar_bin, laminar_with};

const MIB: u64 = 1 << 20;
/// Over the 5 MiB of a single put, so it goes as a resumable session.
const LARGE_BYTES: u64 = 12 * MIB + 3;

struct Gd {
    emu: DriveEmulator,
    config: tempfile::NamedTempFile,
}

fn gd(opts: DriveOptions) -> Gd {
    let emu = DriveEmulator::start(opts).expect("start the Drive emulator");
    let e = emu.endpoints();
    let config = tempfile::NamedTempFile::new().expect("config file");
    let text = format!(
        "[remotes.gd]\ntype = \"drive\"\nclient_id = {:?}\nclient_secret = {:?}\nrefresh_token = {:?}\n\
         api_url = {:?}\ntoken_url = {:?}\n",
        e.client_id, e.client_secret, e.refresh_token, e.api_url, e.token_url
    );
    std::fs::write(config.path(), text).expect("write config");
    Gd { emu, config }
}

fn report(out: &Output, what: &str) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON object on stdout")
}

impl Gd {
    fn relay(&self, from: &str, to: &str) -> (serde_json::Value, String) {
        let out = laminar_with(self.config.path(), &["relay", from, to, "--json"]);
        (report(&out, &format!("relay {from} -> {to}")), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Files by path relative to the tree's root.
type Tree = BTreeMap<String, Vec<u8>>;

fn write_tree(root: &Path, tree: &Tree) {
    for (rel, bytes) in tree {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
}

fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

fn sample_tree() -> Tree {
    let mut t = Tree::new();
    t.insert("empty".into(), Vec::new());
    t.insert("a.txt".into(), b"hello drive\n".to_vec());
    t.insert("Fotos/été ✓ 写真.jpg".into(), pattern(70_000, 1));
    t.insert("Fotos/sub/b.bin".into(), pattern(300_000, 2));
    t.insert("big.bin".into(), pattern(LARGE_BYTES, 3));
    t
}

#[test]
fn a_tree_goes_to_drive_and_comes_back() {
    let g = gd(DriveOptions::default());
    let tree = sample_tree();
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    for driver in ["io_uring", "epoll"] {
        let to = format!("gd:Backup/{driver}/Photos");
        let relay = |from: &str, to: &str| {
            let out = laminar_with(g.config.path(), &["relay", from, to, "--driver", driver, "--json"]);
            report(&out, &format!("relay {from} -> {to} on {driver}"))
        };
        let first = relay(&from, &to);
        assert_eq!(first["objects_copied"], tree.len(), "{first}");
        assert_eq!(first["objects_failed"], 0, "{first}");
        for (rel, bytes) in &tree {
            let at = g.emu.read(&format!("Backup/{driver}/Photos/{rel}"));
            assert!(at.as_deref() == Some(&bytes[..]), "{rel} at Drive differs");
        }
        let again = relay(&from, &to);
        assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
        assert_eq!(again["objects_failed"], 0, "{again}");

        let back = tempfile::tempdir().expect("download dir");
        let down = relay(&to, &format!("file://{}", back.path().display()));
        assert_eq!(down["objects_copied"], tree.len(), "{down}");
        assert_eq!(read_tree(back.path()), tree);
    }
    let stats = g.emu.stats();
    assert!(stats.requests.get("files.create_resumable").copied().unwrap_or(0) >= 2, "{:?}", stats.requests);
    // One folder of each name: folders are made once, whichever worker asks first.
    let folders: Vec<_> = g.emu.tree().into_iter().filter(|e| e.mime_type.ends_with(".folder")).collect();
    let mut paths: Vec<_> = folders.iter().map(|e| e.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), folders.len(), "{folders:?}");
}

const DOCX: &str = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";

/// Why the report says `key` was left out of the listing; panics when it does not.
fn left_out(rep: &serde_json::Value, key: &str) -> String {
    let listed = rep["left_out"].as_array().expect("a left_out list");
    let found = listed.iter().find(|l| l["key"] == key).unwrap_or_else(|| panic!("{key} not left out: {rep}"));
    found["reason"].as_str().expect("a reason").to_string()
}

#[test]
fn docs_are_exported_and_duplicate_names_kept_apart() {
    let g = gd(DriveOptions::default());
    g.emu.insert("Share/x.txt", b"first".to_vec()).expect("insert");
    g.emu.insert("Share/x.txt", b"second".to_vec()).expect("insert");
    g.emu.insert("Share/deep/y.bin", pattern(1000, 4)).expect("insert");
    let doc = g.emu.insert_doc("Share/notes", DocKind::Document, "some text").expect("insert doc");
    let sheet = g.emu.insert_doc("Share/deep/sums", DocKind::Spreadsheet, "1,2\n3,4").expect("insert sheet");
    let slides = g.emu.insert_doc("Share/talk", DocKind::Presentation, "slide one").expect("insert slides");
    g.emu.insert_doc("Share/sketch", DocKind::Drawing, "lines").expect("insert drawing");
    let mut ids = g.emu.ids_at("Share/x.txt");
    assert_eq!(ids.len(), 2, "two files of one name");
    ids.sort();
    let back = tempfile::tempdir().expect("download dir");
    let to = format!("file://{}", back.path().display());
    let (down, _) = g.relay("gd:Share", &to);
    assert_eq!(down["objects_copied"], 6, "{down}");
    assert!(left_out(&down, "Share/sketch").contains("Google Drawing"), "{down}");
    assert_eq!(down["objects_left_out"], 1, "{down}");
    let got = read_tree(back.path());
    let first = g.emu.read_id(&ids[0]).expect("bytes");
    let second = g.emu.read_id(&ids[1]).expect("bytes");
    assert_eq!(got.get("x.txt"), Some(&first), "the smallest id keeps the name");
    assert_eq!(got.get(&format!("x ({}).txt", ids[1])), Some(&second), "{:?}", got.keys());
    assert_eq!(got.get("deep/y.bin"), Some(&pattern(1000, 4)));
    // Each Google file as its export, under its name with the format's extension.
    assert_eq!(got.get("notes.docx"), g.emu.export(&doc, DOCX).as_ref());
    assert_eq!(got.get("deep/sums.xlsx"), g.emu.export(&sheet, XLSX).as_ref());
    assert_eq!(got.get("talk.pptx"), g.emu.export(&slides, PPTX).as_ref());
    assert_eq!(got.len(), 6, "{:?}", got.keys());
    let exports = g.emu.stats().requests.get("files.export").copied();
    assert_eq!(exports, Some(3), "each Doc exported once, listing and reading alike");

    // Unchanged Docs are not copied again; an edited one is.
    let (again, _) = g.relay("gd:Share", &to);
    assert_eq!((again["objects_copied"].as_u64(), again["objects_failed"].as_u64()), (Some(0), Some(0)), "{again}");
    g.emu.edit_doc(&doc, "some text, edited").expect("edit");
    let (edited, _) = g.relay("gd:Share", &to);
    assert_eq!(edited["objects_copied"], 1, "{edited}");
    let now = g.emu.export(&doc, DOCX).expect("an export");
    assert!(now.ends_with(b"edited"), "the new text");
    assert_eq!(read_tree(back.path()).get("notes.docx"), Some(&now));

    // A URL naming one export copies that one.
    let one = tempfile::tempdir().expect("download dir");
    let (single, _) = g.relay("gd:Share/notes.docx", &format!("file://{}", one.path().display()));
    assert_eq!(single["objects_copied"], 1, "{single}");
    assert_eq!(read_tree(one.path()).get("notes.docx"), Some(&now));

    // Other formats, or none.
    let pdf = tempfile::tempdir().expect("download dir");
    let out = laminar_with(
        g.config.path(),
        &["relay", "gd:Share", &format!("file://{}", pdf.path().display()), "--drive-export", "pdf", "--json"],
    );
    let rep = report(&out, "relay with --drive-export pdf");
    assert_eq!(rep["objects_copied"], 7, "the Drawing too: {rep}");
    let got = read_tree(pdf.path());
    assert_eq!(got.get("notes.pdf"), g.emu.export(&doc, "application/pdf").as_ref());
    assert!(got.contains_key("sketch.pdf") && got.contains_key("deep/sums.pdf"), "{:?}", got.keys());
    let none = tempfile::tempdir().expect("download dir");
    let out = laminar_with(
        g.config.path(),
        &["relay", "gd:Share", &format!("file://{}", none.path().display()), "--drive-export", "none", "--json"],
    );
    let rep = report(&out, "relay with --drive-export none");
    assert_eq!(rep["objects_copied"], 3, "{rep}");
    assert!(left_out(&rep, "Share/notes").contains("exports are off"), "{rep}");
    assert_eq!(rep["objects_left_out"], 4, "{rep}");
    assert_eq!(read_tree(none.path()).len(), 3);
    let out = laminar_with(g.config.path(), &["relay", "gd:Share", &to, "--drive-export", "docx,doc"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown format \"doc\"") && stderr.contains("pptx"), "{stderr}");
}

#[test]
fn a_doc_too_large_to_export_is_skipped_with_the_reason() {
    let g = gd(DriveOptions { export_bytes_max: 4096, ..DriveOptions::default() });
    g.emu.insert("d/a.bin", pattern(5000, 6)).expect("insert");
    let small = g.emu.insert_doc("d/small", DocKind::Document, "short").expect("insert doc");
    g.emu.insert_doc("d/huge", DocKind::Document, &"x".repeat(5000)).expect("insert doc");
    let back = tempfile::tempdir().expect("download dir");
    let (rep, _) = g.relay("gd:d", &format!("file://{}", back.path().display()));
    assert_eq!((rep["objects_copied"].as_u64(), rep["objects_failed"].as_u64()), (Some(2), Some(0)), "{rep}");
    assert!(left_out(&rep, "d/huge.docx").contains("too large to export"), "{rep}");
    let got = read_tree(back.path());
    assert_eq!(got.get("small.docx"), g.emu.export(&small, DOCX).as_ref());
    assert_eq!(got.get("a.bin"), Some(&pattern(5000, 6)));
    assert_eq!(got.len(), 2, "{:?}", got.keys());
}

#[test]
fn shortcuts_are_skipped_or_followed() {
    let g = gd(DriveOptions::default());
    let target = g.emu.insert("elsewhere/photo.jpg", pattern(9000, 7)).expect("insert");
    let folder = g.emu.mkdir("elsewhere/album").expect("mkdir");
    g.emu.insert("elsewhere/album/one.jpg", pattern(3000, 8)).expect("insert");
    let doc = g.emu.insert_doc("elsewhere/plan", DocKind::Document, "the plan").expect("insert doc");
    g.emu.insert("src/own.txt", b"mine".to_vec()).expect("insert");
    g.emu.insert_shortcut("src/link.jpg", &target).expect("shortcut to a file");
    g.emu.insert_shortcut("src/album", &folder).expect("shortcut to a folder");
    g.emu.insert_shortcut("src/plan", &doc).expect("shortcut to a Doc");
    let src = g.emu.ids_at("src");
    g.emu.insert_shortcut("src/sub/up", &src[0]).expect("shortcut back up: a cycle");
    g.emu.insert("src/sub/leaf.txt", b"leaf".to_vec()).expect("insert");

    let plain = tempfile::tempdir().expect("download dir");
    let (rep, _) = g.relay("gd:src", &format!("file://{}", plain.path().display()));
    assert_eq!(rep["objects_copied"], 2, "{rep}");
    assert!(left_out(&rep, "src/link.jpg").contains("--drive-follow-shortcuts"), "{rep}");
    assert_eq!(read_tree(plain.path()).len(), 2);

    let followed = tempfile::tempdir().expect("download dir");
    let to = format!("file://{}", followed.path().display());
    let out = laminar_with(g.config.path(), &["relay", "gd:src", &to, "--drive-follow-shortcuts", "--json"]);
    let rep = report(&out, "relay following shortcuts");
    assert_eq!((rep["objects_copied"].as_u64(), rep["objects_failed"].as_u64()), (Some(5), Some(0)), "{rep}");
    assert!(left_out(&rep, "src/sub/up").contains("cycle"), "{rep}");
    let got = read_tree(followed.path());
    assert_eq!(got.get("link.jpg"), Some(&pattern(9000, 7)), "the target's bytes under the shortcut's name");
    assert_eq!(got.get("album/one.jpg"), Some(&pattern(3000, 8)), "a folder shortcut is walked");
    assert_eq!(got.get("plan.docx"), g.emu.export(&doc, DOCX).as_ref(), "a shortcut to a Doc is its export");
    assert_eq!(got.get("own.txt").map(Vec::as_slice), Some(&b"mine"[..]));
    assert_eq!(got.get("sub/leaf.txt").map(Vec::as_slice), Some(&b"leaf"[..]));
    assert_eq!(got.len(), 5, "{:?}", got.keys());
    // A re-run copies nothing: the shortcut's target is the version.
    let out = laminar_with(g.config.path(), &["relay", "gd:src", &to, "--drive-follow-shortcuts", "--json"]);
    let again = report(&out, "relay following shortcuts again");
    assert_eq!(again["objects_copied"], 0, "{again}");
}

#[test]
fn a_dropped_upload_goes_on_from_what_drive_holds() {
    let faults = Faults { drop_uploads: Some(DropAfter { after_bytes: MIB + 5, next: 1 }), ..Faults::default() };
    let g = gd(DriveOptions { faults, ..DriveOptions::default() });
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(LARGE_BYTES, 5));
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let (first, _) = g.relay(&format!("file://{}", src.path().display()), "gd:up");
    assert_eq!(first["objects_copied"], 1, "{first}");
    assert_eq!(g.emu.read("up/big.bin").as_deref(), Some(&tree["big.bin"][..]));
    let stats = g.emu.stats();
    assert_eq!(stats.dropped_connections, 1, "{stats:?}");
    assert_eq!(stats.sessions.len(), 1, "one session, resumed: {:?}", stats.sessions);
    let s = &stats.sessions[0];
    assert!(s.complete && s.committed_bytes == LARGE_BYTES, "{s:?}");
    // Sent again: at most what the dropped chunk carried past the last 256 KiB
    // boundary Drive kept, never the bytes it had committed.
    let resent = s.received_bytes - LARGE_BYTES;
    assert!(resent < 256 << 10, "{resent} bytes sent twice: {s:?} {:?}", stats.requests);
}

#[test]
fn a_chunk_drive_kept_short_is_sent_again_and_the_whole_md5_checked() {
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(LARGE_BYTES, 12));
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    // Drive keeps 256 KiB of the first chunk, and the answer that the file is whole
    // is lost: the relay steps back, resends, asks, and finds the file done.
    let short = |corrupt| ShortCommit { keep_bytes: 300_000, next: 1, corrupt };
    let faults = Faults { short_commits: Some(short(false)), lose_completion_answers: 1, ..Faults::default() };
    let g = gd(DriveOptions { faults, ..DriveOptions::default() });
    let relay = |to: &str| {
        let out = laminar_with(g.config.path(), &["relay", &from, to, "--part-size", "4MiB", "--json"]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rep: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("")).expect("a report");
        (rep, said)
    };
    let (rep, said) = relay("gd:k");
    assert_eq!((rep["objects_copied"].as_u64(), rep["objects_failed"].as_u64()), (Some(1), Some(0)), "{rep} {said}");
    assert_eq!(g.emu.read("k/big.bin").as_deref(), Some(&tree["big.bin"][..]));
    assert_eq!(g.emu.ids_at("k/big.bin").len(), 1, "one file, not a second after the lost answer");
    let stats = g.emu.stats();
    assert_eq!(stats.sessions.len(), 1, "the session was asked, not started again: {:?}", stats.sessions);
    assert!(stats.sessions[0].received_bytes > LARGE_BYTES, "the rest of the first chunk was sent again");
    assert_eq!(stats.dropped_connections, 1, "{stats:?}");

    // The same, with the bytes Drive kept changed on the way: the MD5 of the whole
    // object, followed across the step back, catches it, and nothing is left.
    g.emu.update_faults(|f| {
        f.short_commits = Some(short(true));
        f.lose_completion_answers = 1;
    });
    let (rep, said) = relay("gd:bad");
    assert_eq!(rep["objects_failed"], 1, "{rep} {said}");
    // MD5, or SHA-256 where this CPU computes it in hardware.
    let hash = laminar_tests::drive_check_name().to_ascii_uppercase();
    assert!(rep["failures"][0]["reason"].as_str().is_some_and(|r| r.contains(&hash)), "{rep}");
    assert!(g.emu.ids_at("bad/big.bin").is_empty(), "the corrupted file was deleted");
    let (rep, said) = relay("gd:bad");
    assert_eq!(rep["objects_copied"], 1, "{rep} {said}");
    assert_eq!(g.emu.read("bad/big.bin").as_deref(), Some(&tree["big.bin"][..]));
}

#[test]
fn a_lost_answer_to_a_single_put_leaves_one_file() {
    let faults = Faults { lose_completion_answers: 1, ..Faults::default() };
    let g = gd(DriveOptions { faults, ..DriveOptions::default() });
    let mut tree = Tree::new();
    tree.insert("small.bin".into(), pattern(100_000, 13));
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let (rep, _) = g.relay(&format!("file://{}", src.path().display()), "gd:p");
    assert_eq!(rep["objects_copied"], 1, "{rep}");
    assert_eq!(g.emu.read("p/small.bin").as_deref(), Some(&tree["small.bin"][..]));
    assert_eq!(g.emu.ids_at("p/small.bin").len(), 1, "the retry updated the file the lost answer made");
    assert_eq!(g.emu.stats().dropped_connections, 1);
}

#[test]
fn an_expired_token_mid_relay_is_refreshed() {
    let faults = Faults { throughput_bytes_per_s: 8 * MIB, ..Faults::default() };
    let g = gd(DriveOptions { faults, ..DriveOptions::default() });
    let mut tree = sample_tree();
    for i in 0..40 {
        tree.insert(format!("many/f{i:02}"), pattern(1000 + i, 100 + i));
    }
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let child = std::process::Command::new(laminar_bin())
        .arg("--config")
        .arg(g.config.path())
        .args(["relay", &format!("file://{}", src.path().display()), "gd:t", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run laminar");
    // Bounded wait for the first upload, then every token goes stale at once.
    let uploads = |s: &laminar_emulators::drive::DriveStats| {
        s.requests.iter().filter(|(k, _)| k.contains("multipart") || k.contains("chunk")).map(|(_, v)| v).sum::<u64>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while uploads(&g.emu.stats()) == 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    g.emu.expire_tokens();
    let out = child.wait_with_output().expect("laminar ends");
    let rep = report(&out, "relay with tokens expired");
    assert_eq!(rep["objects_copied"], tree.len(), "{rep}");
    let stats = g.emu.stats();
    assert!(stats.unauthorized >= 1 && stats.refresh_grants >= 2, "{stats:?}");
    for (rel, bytes) in &tree {
        assert!(g.emu.read(&format!("t/{rel}")).as_deref() == Some(&bytes[..]), "{rel} at Drive differs");
    }
    // Forty files into one new folder from every worker at once: one folder made.
    assert_eq!(g.emu.ids_at("t/many").len(), 1);
}

#[test]
fn a_changed_file_is_updated_in_place() {
    let g = gd(DriveOptions::default());
    let src = tempfile::tempdir().expect("source dir");
    let mut tree = Tree::new();
    tree.insert("keep.txt".into(), b"stays".to_vec());
    tree.insert("d/change.txt".into(), b"before".to_vec());
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    let (first, _) = g.relay(&from, "gd:u");
    assert_eq!(first["objects_copied"], 2, "{first}");
    let id = g.emu.ids_at("u/d/change.txt");
    std::fs::write(src.path().join("d/change.txt"), b"after, and longer").expect("rewrite");
    let (again, _) = g.relay(&from, "gd:u");
    assert_eq!(again["objects_copied"], 1, "{again}");
    assert_eq!(g.emu.ids_at("u/d/change.txt"), id, "the same file, updated, not a second one");
    assert_eq!(g.emu.read("u/d/change.txt").as_deref(), Some(&b"after, and longer"[..]));
    assert_eq!(g.emu.ids_at("u/d").len(), 1, "one folder d");
}

#[test]
fn per_minute_limits_slow_the_relay_down() {
    for kind in [ThrottleKind::UserRateLimit, ThrottleKind::RateLimit403, ThrottleKind::RateLimit429] {
        let throttle = Throttle { kind, next: 3, rate: 0.0, scope: Scope::Uploads };
        let g = gd(DriveOptions {
            faults: Faults { throttle: Some(throttle), ..Faults::default() },
            ..DriveOptions::default()
        });
        let tree = sample_tree();
        let src = tempfile::tempdir().expect("source dir");
        write_tree(src.path(), &tree);
        let (rep, _) = g.relay(&format!("file://{}", src.path().display()), "gd:t");
        assert_eq!(rep["objects_copied"], tree.len(), "{kind:?}: {rep}");
        let stats = g.emu.stats();
        assert_eq!(stats.throttled.values().sum::<u64>(), 3, "{kind:?}: {stats:?}");
    }
}

#[test]
fn the_daily_upload_limit_stops_new_uploads_exits_75_with_when_and_a_rerun_copies_the_rest() {
    let mut tree = Tree::new();
    for i in 0..20 {
        tree.insert(format!("f{i:02}"), pattern(10_000, 200 + i));
    }
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());

    // One upload at a time: uploads that start under the budget complete, as on Drive,
    // so the second is the first refused.
    let daily = Faults { daily_upload_bytes_max: Some(1), ..Faults::default() };
    let g = gd(DriveOptions { faults: daily, ..DriveOptions::default() });
    let started = std::time::SystemTime::now();
    let out = laminar_with(g.config.path(), &["relay", &from, "gd:t", "--workers", "1", "--transfers", "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "a distinct status for 'go on later': {stderr}");
    assert!(stderr.contains("daily upload limit") && stderr.contains("run the same relay again"), "{stderr}");
    assert!(
        stderr.contains("1 objects (9.77 KiB) copied and verified") && stderr.contains("go on after about"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!((report["objects_copied"].as_u64(), report["objects_failed"].as_u64()), (Some(1), Some(0)), "{report}");
    assert!(report["objects_deferred"].as_u64() >= Some(1), "{report}");
    // Drive counts the limit over a rolling day: the relay says when, a day on.
    let retry_at = report["waiting"]["retry_at_unix_s"].as_u64().expect("when it can go on");
    let day_on = started.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 24 * 3600;
    assert!((day_on..day_on + 600).contains(&retry_at), "{report}");
    // Exactly the object reported copied is there, whole; nothing else was begun.
    let held: Vec<_> = g.emu.tree().into_iter().filter(|e| !e.mime_type.ends_with(".folder")).collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let rel = held[0].path.strip_prefix("t/").expect("under t/");
    assert!(g.emu.read_id(&held[0].id).as_deref() == Some(&tree[rel][..]), "{rel} at Drive differs");

    // Once the day turns, a re-run copies the rest and skips what is there.
    g.emu.new_day();
    g.emu.update_faults(|f| f.daily_upload_bytes_max = None);
    let (rest, _) = g.relay(&from, "gd:t");
    assert_eq!((rest["objects_copied"].as_u64(), rest["objects_skipped"].as_u64()), (Some(19), Some(1)), "{rest}");
    assert!(rest["waiting"].is_null(), "{rest}");
    for (rel, bytes) in &tree {
        assert!(g.emu.read(&format!("t/{rel}")).as_deref() == Some(&bytes[..]), "{rel} at Drive differs");
    }
}

#[test]
fn a_full_drive_stops_the_relay() {
    let mut tree = Tree::new();
    for i in 0..20 {
        tree.insert(format!("f{i:02}"), pattern(10_000, 200 + i));
    }
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    let g = gd(DriveOptions { storage_limit_bytes: 50_000, ..DriveOptions::default() });
    let out = laminar_with(g.config.path(), &["relay", &from, "gd:t", "--transfers", "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is full"), "{stderr}");
    // What is there is whole: each file Drive holds is one of the source's, intact.
    for e in g.emu.tree().into_iter().filter(|e| !e.mime_type.ends_with(".folder")) {
        let rel = e.path.strip_prefix("t/").expect("under t/");
        assert!(g.emu.read_id(&e.id).as_deref() == Some(&tree[rel][..]), "{rel} at Drive differs");
    }
}

#[test]
fn a_shared_drive_is_a_destination_and_a_source() {
    let g = gd(DriveOptions { shared_drives: vec!["Team".into()], ..DriveOptions::default() });
    let drive = g.emu.shared_drive_id("Team").expect("the shared drive");
    let mut text = std::fs::read_to_string(g.config.path()).expect("config");
    text.push_str(&format!("shared_drive_id = {drive:?}\n"));
    std::fs::write(g.config.path(), text).expect("config");
    let tree = sample_tree();
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let (up, _) = g.relay(&format!("file://{}", src.path().display()), "gd:in/team");
    assert_eq!(up["objects_copied"], tree.len(), "{up}");
    let held = g.emu.tree_of(&drive);
    for (rel, bytes) in &tree {
        let entry = held.iter().find(|e| e.path == format!("in/team/{rel}")).expect("in the shared drive");
        assert!(g.emu.read_id(&entry.id).as_deref() == Some(&bytes[..]), "{rel} differs");
    }
    assert!(g.emu.read("in/team/a.txt").is_none(), "nothing in My Drive");
    let back = tempfile::tempdir().expect("download dir");
    let (down, _) = g.relay("gd:in/team", &format!("file://{}", back.path().display()));
    assert_eq!(down["objects_copied"], tree.len(), "{down}");
    assert_eq!(read_tree(back.path()), tree);
}

#[test]
fn bytes_changed_on_the_way_up_are_caught_and_sent_again() {
    let g = gd(DriveOptions::default());
    let upstream: std::net::SocketAddr =
        g.emu.api_url().trim_start_matches("http://").trim_end_matches('/').parse().expect("emulator address");
    // Well past the few KiB of metadata requests: a byte of the upload's media.
    let proxy = Proxy::start(upstream, Fault::FlipRequestByte { after_bytes: 600_000 });
    let text = std::fs::read_to_string(g.config.path()).expect("config");
    let text = text.replace(&format!("api_url = {:?}", g.emu.api_url()), &format!("api_url = {:?}", proxy.endpoint()));
    std::fs::write(g.config.path(), text).expect("config");
    let mut tree = Tree::new();
    tree.insert("one.bin".into(), pattern(MIB, 9));
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let (rep, _) = g.relay(&format!("file://{}", src.path().display()), "gd:c");
    assert!(proxy.fault_fired(), "the byte was flipped");
    assert_eq!(rep["objects_copied"], 1, "{rep}");
    assert_eq!(g.emu.read("c/one.bin").as_deref(), Some(&tree["one.bin"][..]));
    assert_eq!(g.emu.ids_at("c/one.bin").len(), 1, "the corrupted upload was deleted");
    assert_eq!(g.emu.stats().requests.get("files.delete").copied(), Some(1));
}

#[test]
fn a_lost_session_fails_its_object_and_a_rerun_uploads_it() {
    const BYTES: u64 = 40 * MIB + 3;
    let faults = Faults { throughput_bytes_per_s: 16 * MIB, ..Faults::default() };
    let g = gd(DriveOptions { faults, ..DriveOptions::default() });
    let mut tree = Tree::new();
    tree.insert("big.bin".into(), pattern(BYTES, 11));
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let from = format!("file://{}", src.path().display());
    let child = std::process::Command::new(laminar_bin())
        .arg("--config")
        .arg(g.config.path())
        .args(["relay", &from, "gd:s", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run laminar");
    // Bounded wait for the first chunk to be committed, then the session is lost.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !g.emu.stats().sessions.iter().any(|s| s.committed_bytes > 0) && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    g.emu.expire_sessions();
    let out = child.wait_with_output().expect("laminar ends");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("session expired or was lost"), "{said}");
    assert!(g.emu.ids_at("s/big.bin").is_empty(), "nothing of it left visible");
    g.emu.update_faults(|f| f.throughput_bytes_per_s = 0);
    let (again, _) = g.relay(&from, "gd:s");
    assert_eq!(again["objects_copied"], 1, "{again}");
    assert_eq!(g.emu.read("s/big.bin").as_deref(), Some(&tree["big.bin"][..]));
}

#[test]
fn a_service_account_signs_its_way_in() {
    let g = gd(DriveOptions::default());
    let dir = tempfile::tempdir().expect("key dir");
    let pem = dir.path().join("k.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&pem)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: openssl cannot make an RSA key here ({made:?})");
        return;
    }
    let e = g.emu.endpoints();
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": e.service_account_email,
        "private_key": std::fs::read_to_string(&pem).expect("key"),
    });
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, key.to_string()).expect("key file");
    let text = format!(
        "[remotes.gd]\ntype = \"drive\"\nservice_account_file = {:?}\napi_url = {:?}\ntoken_url = {:?}\n",
        key_file.display().to_string(),
        e.api_url,
        e.token_url
    );
    std::fs::write(g.config.path(), text).expect("write config");
    let mut tree = Tree::new();
    tree.insert("sa/one.txt".into(), b"signed in".to_vec());
    let src = tempfile::tempdir().expect("source dir");
    write_tree(src.path(), &tree);
    let (rep, _) = g.relay(&format!("file://{}", src.path().display()), "gd:x");
    assert_eq!(rep["objects_copied"], 1, "{rep}");
    assert_eq!(g.emu.read("x/sa/one.txt").as_deref(), Some(&b"signed in"[..]));
    let stats = g.emu.stats();
    assert!(stats.jwt_grants >= 1 && stats.refresh_grants == 0, "{stats:?}");
}

#[test]
fn mkdir_makes_a_drive_folder_with_its_parents_once() {
    let g = gd(DriveOptions::default());
    for _ in 0..2 {
        let out = laminar_with(g.config.path(), &["mkdir", "gd:made/deep"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Drive would take two folders of one name: each was made once.
    assert_eq!(g.emu.ids_at("made").len(), 1, "{:?}", g.emu.tree());
    assert_eq!(g.emu.ids_at("made/deep").len(), 1, "{:?}", g.emu.tree());
}
