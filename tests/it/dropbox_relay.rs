//! `type = "dropbox"` against the Dropbox emulator, in this process: a local tree into
//! Dropbox and back out, on both event-loop drivers, with an access token that expires
//! during the relay and with a storm of 429s. The bytes are checked on the emulator's
//! side (its own store, not through Laminar) and, coming back, against the tree.
//!
//! The tree has non-ASCII names (which the `Dropbox-API-Arg` header must carry as
//! `\uXXXX` escapes), an empty file, small files that go up each in a closed upload
//! session and are committed together through `finish_batch_v2` (or, with
//! `batch_commits = false`, each with `files/upload`), and one of 20 MiB + 5 bytes that
//! goes up in parallel parts through a concurrent upload session (the multipart cutoff
//! is lowered to 8 MiB) and comes back as ranged downloads. Two thousand small files
//! land through commit batches, through a storm of busy batch entries too, and an entry
//! that fails fails only its own file. Re-runs from a local tree, S3 and Dropbox itself copy nothing, through
//! the provenance record Laminar keeps in a file property group, and a changed file is
//! copied exactly once. A 200 MiB file goes up in 8 MiB parts through the faulty
//! wrapper, and only the part whose answer was lost is sent twice.

use std::collections::BTreeMap;
use std::path::Path;

use laminar_emulators::dropbox::{content_hash_hex, DropboxEmulator, DropboxOptions, Faults};
use laminar_tests::laminar_with;

const MIB: usize = 1 << 20;
const DRIVERS: [&str; 2] = ["io_uring", "epoll"];
/// The folder the remote is rooted at.
const ROOT: &str = "/Laminar Root";

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// The tree, relative path to bytes.
fn tree() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..12u64 {
        files.insert(format!("small/d{}/f{i:02}.bin", i % 3), pattern(i as usize * 1_111, i));
    }
    files.insert("empty".to_string(), Vec::new());
    files.insert("ünïcødé/файл 文件 😀.txt".to_string(), "déjà vu ✓".as_bytes().to_vec());
    files.insert("Mixed Case/Grüße.TXT".to_string(), pattern(4_097, 99));
    files.insert("large/20m+5.bin".to_string(), pattern(20 * MIB + 5, 7));
    files
}

fn write_tree(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, bytes).expect("write a source file");
    }
}

/// Files under `root`, relative path to bytes.
fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

/// The emulator's files under `ROOT/folder`, relative path to bytes.
fn held(emu: &DropboxEmulator, folder: &str) -> BTreeMap<String, Vec<u8>> {
    let base = format!("{ROOT}/{folder}/");
    emu.files()
        .into_iter()
        .filter_map(|(path, bytes)| path.strip_prefix(&base).map(|rel| (rel.to_string(), bytes)))
        .collect()
}

/// Compares trees by names and sizes first (readable failures), then bytes.
fn assert_same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, what: &str) {
    let sizes = |t: &BTreeMap<String, Vec<u8>>| t.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>();
    assert_eq!(sizes(got), sizes(want), "{what}: names and sizes");
    for (rel, bytes) in want {
        assert!(got[rel] == *bytes, "{what}: {rel} differs");
    }
}

/// An emulator, a laminar.toml with remote `dbx` (the refresh flow, rooted at ROOT)
/// and remote `out` (a local tree), and a source tree.
struct Setup {
    emu: DropboxEmulator,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    files: BTreeMap<String, Vec<u8>>,
}

fn setup(opts: DropboxOptions) -> Setup {
    let emu = DropboxEmulator::start(opts).expect("start the Dropbox emulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let files = tree();
    write_tree(&dir.path().join("src"), &files);
    std::fs::create_dir_all(dir.path().join("out")).expect("out");
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, format!("{}\n", emu.app_secret())).expect("secret file");
    let config = dir.path().join("laminar.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.dbx]\ntype = \"dropbox\"\nrefresh_token = {:?}\napp_key = {:?}\napp_secret_file = {:?}\n\
             root = {ROOT:?}\napi_url = {:?}\ncontent_url = {:?}\ntoken_url = {:?}\n\n\
             [remotes.out]\ntype = \"file\"\nroot = {:?}\n",
            emu.refresh_token(),
            emu.app_key(),
            secret.display().to_string(),
            emu.api_url(),
            emu.content_url(),
            emu.token_url(),
            dir.path().join("out").display().to_string(),
        ),
    )
    .expect("laminar.toml");
    Setup { emu, dir, config, files }
}

impl Setup {
    fn src_url(&self) -> String {
        format!("file://{}", self.dir.path().join("src").display())
    }

    /// Adds remote `name`: `dbx` with `extra` lines.
    fn add_remote(&self, name: &str, extra: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let start = text.find("[remotes.dbx]\n").expect("remote dbx") + "[remotes.dbx]\n".len();
        let end = start + text[start..].find("\n\n").expect("end of remote dbx");
        let table = format!("\n[remotes.{name}]\n{}\n{extra}\n", &text[start..end]);
        std::fs::write(&self.config, text + &table).expect("config");
    }

    /// Writes `files` under `folder` of the temporary directory; its URL.
    fn local_tree(&self, folder: &str, files: &BTreeMap<String, Vec<u8>>) -> String {
        let root = self.dir.path().join(folder);
        write_tree(&root, files);
        format!("file://{}", root.display())
    }

    /// Relays with `--json`; the exit code and the report, whatever they are.
    fn relay_any(&self, from: &str, to: &str) -> (Option<i32>, serde_json::Value) {
        let out = laminar_with(&self.config, &["relay", from, to, "--driver", "epoll", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
            panic!("relay {from} -> {to}: no report ({e}): {}", String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code(), report)
    }

    /// Relays with `--json` and the lowered multipart cutoff; must succeed.
    fn relay(&self, from: &str, to: &str, driver: &str) -> serde_json::Value {
        let args = ["relay", from, to, "--driver", driver, "--multipart-cutoff", "8MiB", "--json"];
        let out = laminar_with(&self.config, &args);
        assert_eq!(out.status.code(), Some(0), "relay {from} -> {to}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
        assert_eq!(report["objects_failed"], 0, "{report}");
        report
    }
}

#[test]
fn a_tree_into_dropbox_and_back_on_both_drivers() {
    let s = setup(DropboxOptions { seed: 3, ..DropboxOptions::default() });
    let n = s.files.len();
    for driver in DRIVERS {
        let first = s.relay(&s.src_url(), &format!("dbx:{driver}"), driver);
        assert_eq!(first["objects_copied"], n, "{first}");
        assert_same(&held(&s.emu, driver), &s.files, "Dropbox after the relay");
        // Laminar's record of what it copied rides in a file property group that the
        // listing brings back: a re-run copies nothing.
        let again = s.relay(&s.src_url(), &format!("dbx:{driver}"), driver);
        assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
        assert_eq!(again["objects_skipped"], n, "{again}");
        assert_same(&held(&s.emu, driver), &s.files, "Dropbox after the re-run");
        assert_eq!(s.emu.open_sessions(), 0, "every session finished");

        // Out of Dropbox, into a local tree that keeps Laminar's record: the bytes are
        // checked against Dropbox's content_hash on the way, and a re-run copies nothing.
        let back = s.relay(&format!("dbx:{driver}"), &format!("out:{driver}"), driver);
        assert_eq!(back["objects_copied"], n, "{back}");
        assert_same(&read_tree(&s.dir.path().join("out").join(driver)), &s.files, "the tree back from Dropbox");
        let back_again = s.relay(&format!("dbx:{driver}"), &format!("out:{driver}"), driver);
        assert_eq!(back_again["objects_copied"], 0, "a re-run copies nothing: {back_again}");
        assert_eq!(back_again["objects_skipped"], n, "{back_again}");
    }
    let stats = s.emu.stats();
    assert!(stats.requests.get("files/upload_session/finish").is_some_and(|&c| c >= 2), "{stats:?}");
    assert!(stats.requests.contains_key("files/upload_session/finish_batch_v2"), "{stats:?}");
    assert!(!stats.requests.contains_key("files/upload"), "small files are batched: {stats:?}");
}

#[test]
fn access_tokens_that_expire_during_the_relay_are_refreshed() {
    // Each call takes 150 ms, so the upload session's calls come one by one.
    let faults = Faults { latency_ms: 150, ..Faults::default() };
    let s = setup(DropboxOptions { seed: 5, faults, ..DropboxOptions::default() });
    let child = std::process::Command::new(laminar_tests::laminar_bin())
        .arg("--config")
        .arg(&s.config)
        .args(["relay", &s.src_url(), "dbx:expiring", "--driver", "epoll", "--multipart-cutoff", "8MiB", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run laminar");
    // The emulator has no hook to wait on: its counters are watched, within a bound,
    // for the session's first append, and every token is expired then, so that the
    // session's later calls (and any small upload still going) meet a 401.
    let appended = |emu: &DropboxEmulator| emu.stats().requests.get("files/upload_session/append_v2").copied();
    for _ in 0..3000 {
        if appended(&s.emu).is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(appended(&s.emu).is_some(), "the session began");
    s.emu.expire_tokens();
    let out = child.wait_with_output().expect("laminar ran");
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["objects_copied"], s.files.len(), "{report}");
    assert_same(&held(&s.emu, "expiring"), &s.files, "Dropbox after the relay");
    let stats = s.emu.stats();
    assert!(stats.auth_rejected >= 1, "a call met the expired token: {stats:?}");
    assert!(stats.requests.get("oauth2/token").is_some_and(|&c| c >= 2), "the token was refreshed: {stats:?}");
    let back = s.relay("dbx:expiring", "out:expiring", "epoll");
    assert_eq!(back["objects_copied"], s.files.len(), "{back}");
    assert_same(&read_tree(&s.dir.path().join("out/expiring")), &s.files, "the tree back from Dropbox");
}

#[test]
fn a_storm_of_429s_ends_with_everything_copied() {
    let faults = Faults { retry_after_s: 0, ..Faults::default() };
    let s = setup(DropboxOptions { seed: 9, faults, ..DropboxOptions::default() });
    s.emu.throttle_next(12);
    let first = s.relay(&s.src_url(), "dbx:storm", "epoll");
    assert_eq!(first["objects_copied"], s.files.len(), "{first}");
    assert_same(&held(&s.emu, "storm"), &s.files, "Dropbox after the storm");
    assert_eq!(s.emu.stats().throttled, 12);
    s.emu.throttle_next(12);
    let back = s.relay("dbx:storm", "out:storm", "epoll");
    assert_eq!(back["objects_copied"], s.files.len(), "{back}");
    assert_same(&read_tree(&s.dir.path().join("out/storm")), &s.files, "the tree back from Dropbox");
    assert_eq!(s.emu.stats().throttled, 24);
}

#[test]
fn a_revoked_token_stops_the_relay_with_the_fix() {
    let s = setup(DropboxOptions::default());
    let text = std::fs::read_to_string(&s.config).expect("config");
    let start = text.find("refresh_token").expect("refresh_token line");
    let end = start + text[start..].find('\n').expect("end of line");
    let fixed = format!("{}token = \"not-a-token\"{}", &text[..start], &text[end..]);
    let fixed = fixed.replace("app_key", "# app_key").replace("app_secret_file", "# app_secret_file");
    let bad = s.config.with_file_name("bad.toml");
    std::fs::write(&bad, fixed).expect("write");
    let out = laminar_with(&bad, &["relay", &s.src_url(), "dbx:bad", "--json"]);
    assert_ne!(out.status.code(), Some(0));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("issue a new refresh token"), "{all}");
    assert!(!all.contains("not-a-token"), "the token is not printed: {all}");
}

#[test]
fn server_errors_and_dropped_connections_end_with_everything_copied() {
    let faults = Faults {
        server_error_rate: 0.1,
        drop_upload_rate: 0.1,
        drop_download_rate: 0.1,
        retry_after_s: 0,
        ..Faults::default()
    };
    let s = setup(DropboxOptions { seed: 13, faults, ..DropboxOptions::default() });
    let first = s.relay(&s.src_url(), "dbx:faulty", "epoll");
    assert_eq!(first["objects_copied"], s.files.len(), "{first}");
    assert_same(&held(&s.emu, "faulty"), &s.files, "Dropbox after the faults");
    let back = s.relay("dbx:faulty", "out:faulty", "epoll");
    assert_eq!(back["objects_copied"], s.files.len(), "{back}");
    assert_same(&read_tree(&s.dir.path().join("out/faulty")), &s.files, "the tree back from Dropbox");
    let stats = s.emu.stats();
    assert!(stats.server_errors + stats.dropped_connections > 0, "faults were sent: {stats:?}");
    // Sessions may be left open: those of a commit batch whose call failed, closed and
    // never committed (their files went up again in new ones). Dropbox has no call to
    // end a session; they expire.
}

/// Each file under `ROOT/folder` has the content hash of the bytes `want` gives it, by
/// the emulator's own record.
fn assert_hashes(emu: &DropboxEmulator, folder: &str, want: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in want {
        let meta = emu.metadata(&format!("{ROOT}/{folder}/{rel}")).unwrap_or_else(|| panic!("{rel} is in Dropbox"));
        assert_eq!(meta.content_hash, content_hash_hex(bytes), "{rel}: content_hash");
        assert_eq!(meta.size, bytes.len() as u64, "{rel}: size");
    }
}

/// Rewrites one source file with other bytes of the same length and another mtime.
fn change_one(s: &mut Setup, rel: &str) {
    let bytes = s.files.get_mut(rel).expect("in the tree");
    for b in bytes.iter_mut() {
        *b ^= 0x5a;
    }
    let path = s.dir.path().join("src").join(rel);
    std::fs::write(&path, &*bytes).expect("rewrite");
    let file = std::fs::File::options().write(true).open(&path).expect("open");
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000)).expect("set mtime");
}

#[test]
fn a_rerun_into_dropbox_copies_nothing_and_a_changed_file_exactly_once() {
    let mut s = setup(DropboxOptions { seed: 21, ..DropboxOptions::default() });
    let n = s.files.len();
    let first = s.relay(&s.src_url(), "dbx:rerun", "epoll");
    assert_eq!(first["objects_copied"], n, "{first}");
    assert_hashes(&s.emu, "rerun", &s.files);
    let again = s.relay(&s.src_url(), "dbx:rerun", "epoll");
    assert_eq!(
        (again["objects_copied"].as_u64(), again["objects_skipped"].as_u64()),
        (Some(0), Some(n as u64)),
        "{again}"
    );

    // One file changes (same size, other bytes): exactly that one is copied.
    change_one(&mut s, "small/d1/f04.bin");
    let changed = s.relay(&s.src_url(), "dbx:rerun", "epoll");
    assert_eq!(changed["objects_copied"], 1, "{changed}");
    assert_eq!(changed["objects_skipped"], n - 1, "{changed}");
    assert_hashes(&s.emu, "rerun", &s.files);
    assert_same(&held(&s.emu, "rerun"), &s.files, "Dropbox after the change");

    // A file changed in Dropbox by something else keeps its old property group, but
    // not the content hash it was written with: it is copied again, not skipped.
    let tampered = format!("{ROOT}/rerun/Mixed Case/Grüße.TXT");
    s.emu.insert(&tampered, vec![0u8; s.files["Mixed Case/Grüße.TXT"].len()]).expect("overwrite in Dropbox");
    let repaired = s.relay(&s.src_url(), "dbx:rerun", "epoll");
    assert_eq!(repaired["objects_copied"], 1, "{repaired}");
    assert_hashes(&s.emu, "rerun", &s.files);

    // Dropbox into Dropbox: the source's revisions are the versions recorded.
    let inner = s.relay("dbx:rerun", "dbx:copy", "epoll");
    assert_eq!(inner["objects_copied"], n, "{inner}");
    let inner_again = s.relay("dbx:rerun", "dbx:copy", "epoll");
    assert_eq!(inner_again["objects_copied"], 0, "{inner_again}");
    assert_hashes(&s.emu, "copy", &s.files);
    // One template for the account, made once.
    assert_eq!(s.emu.stats().requests.get("file_properties/templates/add_for_user"), Some(&1));
    assert_eq!(s.emu.open_sessions(), 0);
}

#[test]
fn a_rerun_from_s3_into_dropbox_copies_nothing() {
    use laminar_bench::servers::{find_tool, require_servers, Weed};
    if find_tool("weed").is_none() && !require_servers() {
        eprintln!("skipping: SeaweedFS not installed (tests/run.sh installs it)");
        return;
    }
    let mut s = setup(DropboxOptions { seed: 23, ..DropboxOptions::default() });
    let weed = Weed::start().expect("start SeaweedFS");
    weed.create_bucket("bkt").expect("bucket");
    let mut text = std::fs::read_to_string(&s.config).expect("config");
    text.push('\n');
    text.push_str(&weed.remote_toml("s3"));
    std::fs::write(&s.config, text).expect("config");
    let n = s.files.len();
    assert_eq!(s.relay(&s.src_url(), "s3:bkt/tree/", "epoll")["objects_copied"], n);
    let first = s.relay("s3:bkt/tree/", "dbx:from-s3", "epoll");
    assert_eq!(first["objects_copied"], n, "{first}");
    assert_hashes(&s.emu, "from-s3", &s.files);
    let again = s.relay("s3:bkt/tree/", "dbx:from-s3", "epoll");
    assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
    assert_eq!(again["objects_skipped"], n, "{again}");
    // One object changes in S3: exactly that one is copied.
    change_one(&mut s, "ünïcødé/файл 文件 😀.txt");
    assert_eq!(s.relay(&s.src_url(), "s3:bkt/tree/", "epoll")["objects_copied"], 1);
    let changed = s.relay("s3:bkt/tree/", "dbx:from-s3", "epoll");
    assert_eq!(changed["objects_copied"], 1, "{changed}");
    assert_hashes(&s.emu, "from-s3", &s.files);
}

/// Laminar's Dropbox backend on the emulator, built in this process (so that the
/// faulty wrapper can go around it).
fn engine_backend(emu: &DropboxEmulator) -> laminar_engine::backend::dropbox::DropboxBackend {
    use laminar_engine::backend::dropbox::{Credentials, DropboxBackend, DropboxConfig};
    use laminar_engine::http::Endpoint;
    let endpoint = |url: String| Endpoint::parse(&url).expect("an emulator URL");
    DropboxBackend::new(DropboxConfig {
        remote: "dbx".into(),
        root: ROOT.into(),
        api: endpoint(emu.api_url()),
        content: endpoint(emu.content_url()),
        token_endpoint: endpoint(emu.api_url()),
        token_path: "/oauth2/token".into(),
        credentials: Credentials::Refresh {
            refresh_token: emu.refresh_token().into(),
            app_key: emu.app_key().into(),
            app_secret: Some(emu.app_secret().into()),
        },
        batch_commits: true,
    })
}

#[test]
fn a_large_file_goes_up_in_parallel_parts_and_a_failed_part_is_sent_again_alone() {
    use std::sync::Arc;

    use laminar_engine::backend::faulty::{self, Fault, FaultOp, Faulty, Rule};
    use laminar_engine::backend::mem::{MemBackend, MemOptions};
    use laminar_engine::relay::{relay, Location, Progress, RelayOptions};
    use laminar_engine::runtime::DriverChoice;

    const SIZE: usize = 200 * MIB + 12_345;
    const PART_BYTES: u64 = 8 << 20;
    const KEY: &str = "parallel/file.bin";
    let emu = DropboxEmulator::start(DropboxOptions { seed: 31, ..DropboxOptions::default() }).expect("start");
    let bytes = pattern(SIZE, 41);
    let src = MemBackend::new(MemOptions::default());
    src.insert("big/file.bin", bytes.clone());
    // Part 3's request never reaches Dropbox; part 7 lands, but its answer is lost.
    let rules =
        vec![Rule::on_key(FaultOp::Put, KEY, 3, Fault::Reset), Rule::on_key(FaultOp::Put, KEY, 7, Fault::AnswerLost)];
    let dst = Arc::new(Faulty::new(engine_backend(&emu), faulty::Faults::script(rules)));
    let opts = RelayOptions {
        workers: Some(2),
        ram_buffer_bytes: 128 << 20,
        part_size_bytes: PART_BYTES,
        multipart_cutoff_bytes: 16 << 20,
        retries: 6,
        driver: DriverChoice::Epoll,
        ..RelayOptions::default()
    };
    let report = relay(
        Location::new(Arc::new(src), "big/", "mem:big/".into()),
        Location::new(dst.clone(), "parallel/", "dbx:parallel/".into()),
        opts,
        Arc::new(Progress::default()),
        &mut |_| {},
    )
    .expect("the relay runs");
    assert_eq!((report.objects_copied, report.objects_failed), (1, 0), "{report:?}");
    assert_eq!(dst.fired().len(), 2, "both faults fired: {:?}", dst.fired());

    // Byte-exact, by the emulator's own content hash and bytes.
    let path = format!("{ROOT}/{KEY}");
    let meta = emu.metadata(&path).expect("the file is in Dropbox");
    assert_eq!(meta.content_hash, content_hash_hex(&bytes));
    assert!(emu.file(&path).expect("bytes") == bytes, "the bytes differ");
    // One concurrent session; each part appended once, but the one whose answer was
    // lost (nothing says Dropbox has it, so it is sent again whole, replacing itself).
    let parts = SIZE.div_ceil(PART_BYTES as usize) as u64;
    let stats = emu.stats();
    let calls = |route: &str| stats.requests.get(route).copied().unwrap_or(0);
    assert_eq!(calls("files/upload_session/start"), 1, "{stats:?}");
    assert_eq!(calls("files/upload_session/append_v2"), parts + 1, "{stats:?}");
    assert_eq!(calls("files/upload_session/finish"), 1, "{stats:?}");
    assert_eq!(emu.open_sessions(), 0);
}

/// `n` small files (0 to 3 KiB) in a few folders.
fn small_tree(n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    (0..n).map(|i| (format!("d{}/f{i:04}.bin", i % 7), pattern(i * 37 % 3_000, seed + i as u64))).collect()
}

fn calls(emu: &DropboxEmulator, route: &str) -> u64 {
    emu.stats().requests.get(route).copied().unwrap_or(0)
}

#[test]
fn two_thousand_small_files_are_committed_in_batches() {
    const N: usize = 2_000;
    let s = setup(DropboxOptions { seed: 41, ..DropboxOptions::default() });
    let files = small_tree(N, 1_000);
    let src = s.local_tree("many", &files);
    let first = s.relay(&src, "dbx:many", "epoll");
    assert_eq!(first["objects_copied"], N, "{first}");
    // Byte-exact, by the emulator's own content hash and bytes.
    assert_hashes(&s.emu, "many", &files);
    assert_same(&held(&s.emu, "many"), &files, "Dropbox after the relay");
    let batches = calls(&s.emu, "files/upload_session/finish_batch_v2");
    assert!((1..N as u64).contains(&batches), "{batches} batches for {N} files");
    assert_eq!(calls(&s.emu, "files/upload_session/start"), N as u64, "one closed session a file");
    assert_eq!(calls(&s.emu, "files/upload"), 0);
    assert_eq!(calls(&s.emu, "files/upload_session/finish"), 0);
    assert_eq!(s.emu.open_sessions(), 0, "every session committed");
    let again = s.relay(&src, "dbx:many", "epoll");
    assert_eq!(again["objects_copied"], 0, "a re-run copies nothing: {again}");
    assert_eq!(again["objects_skipped"], N, "{again}");
    assert_eq!(calls(&s.emu, "files/upload_session/finish_batch_v2"), batches, "nothing committed again");
}

#[test]
fn a_storm_of_busy_batch_entries_ends_with_everything_copied() {
    const N: usize = 300;
    const BUSY: u64 = 250;
    let faults = Faults { retry_after_s: 0, ..Faults::default() };
    let s = setup(DropboxOptions { seed: 43, faults, ..DropboxOptions::default() });
    let files = small_tree(N, 2_000);
    let src = s.local_tree("busy", &files);
    // Entries answered too_many_write_operations, each on its own, as when other
    // writes hold the namespace: each such file is sent and committed again.
    s.emu.busy_batch_entries_next(BUSY);
    let first = s.relay(&src, "dbx:busy", "epoll");
    assert_eq!(first["objects_copied"], N, "{first}");
    assert_eq!(s.emu.stats().batch_entries_busy, BUSY);
    assert_hashes(&s.emu, "busy", &files);
    assert_same(&held(&s.emu, "busy"), &files, "Dropbox after the storm");
    assert_eq!(s.relay(&src, "dbx:busy", "epoll")["objects_copied"], 0, "a re-run copies nothing");
}

#[test]
fn a_failed_batch_entry_fails_only_its_own_file() {
    const N: usize = 40;
    let s = setup(DropboxOptions { seed: 47, ..DropboxOptions::default() });
    let files = small_tree(N, 3_000);
    let src = s.local_tree("entry", &files);
    // A folder stands where one file goes: its entry fails with path/conflict/folder.
    let blocked = "d3/f0010.bin";
    s.emu.create_folder(&format!("{ROOT}/entry/{blocked}")).expect("a folder in the way");
    let (code, report) = s.relay_any(&src, "dbx:entry");
    assert_ne!(code, Some(0), "a failed object fails the relay: {report}");
    assert_eq!((report["objects_copied"].as_u64(), report["objects_failed"].as_u64()), (Some(N as u64 - 1), Some(1)));
    let text = report.to_string();
    assert!(text.contains(blocked) && text.contains("conflict"), "the failure names the file and why: {text}");
    // The others landed whole, in batches beside the failed entry; nothing of the
    // failed one did: the folder is still there, with nothing in it.
    let mut want = files.clone();
    want.remove(blocked);
    assert_same(&held(&s.emu, "entry"), &want, "Dropbox after the relay");
    assert_hashes(&s.emu, "entry", &want);
    assert!(s.emu.metadata(&format!("{ROOT}/entry/{blocked}")).is_none(), "no file at the blocked path");
    assert!(calls(&s.emu, "files/upload_session/finish_batch_v2") < N as u64);
    assert_eq!(calls(&s.emu, "files/upload"), 0);
}

#[test]
fn without_batch_commits_each_small_file_goes_up_with_files_upload() {
    let s = setup(DropboxOptions { seed: 53, ..DropboxOptions::default() });
    s.add_remote("single", "batch_commits = false");
    let files = small_tree(30, 4_000);
    let src = s.local_tree("single", &files);
    let first = s.relay(&src, "single:one", "epoll");
    assert_eq!(first["objects_copied"], 30, "{first}");
    assert_hashes(&s.emu, "one", &files);
    assert_same(&held(&s.emu, "one"), &files, "Dropbox after the relay");
    assert_eq!(calls(&s.emu, "files/upload"), 30);
    assert_eq!(calls(&s.emu, "files/upload_session/finish_batch_v2"), 0);
    assert_eq!(s.relay(&src, "single:one", "epoll")["objects_copied"], 0, "a re-run copies nothing");
}

#[test]
fn mkdir_makes_a_dropbox_folder_with_its_parents() {
    let s = setup(DropboxOptions::default());
    for _ in 0..2 {
        let out = laminar_with(&s.config, &["mkdir", "dbx:made/deep"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Both folders are there: Dropbox refuses to make either again.
    for folder in ["made", "made/deep"] {
        let again = s.emu.create_folder(&format!("{ROOT}/{folder}"));
        let said = format!("{again:?}");
        assert!(said.contains("conflict") && said.contains("folder"), "{folder} was made: {said}");
    }
    // Nothing else was written.
    assert!(held(&s.emu, "made").is_empty());
}
