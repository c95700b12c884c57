//! The command line around the relay: comparison modes (`--size-only`,
//! `--ignore-existing`, `--immutable`) checked by the bytes they leave at the
//! destination, the renamed `--hash` flag and its old spelling, shell completions and
//! man pages generated from the flags.

use std::path::Path;
use std::time::{Duration, SystemTime};

use laminar_tests::{clouds, laminar_in as laminar, stdout_json as json};

fn put(root: &Path, key: &str, bytes: &[u8], age_s: u64) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let at = SystemTime::now() - Duration::from_secs(age_s);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(at).unwrap();
}

#[test]
fn comparison_modes_leave_the_destination_as_each_promises() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out, data) = (dir.path().join("src"), dir.path().join("out"), dir.path().join("data"));
    put(&root, "same-size.txt", b"aaaa", 3600);
    put(&root, "grown.txt", b"bb", 3600);
    put(&root, "kept.txt", b"kept", 3600);
    let (src, dst) = (format!("file://{}", root.display()), format!("file://{}", out.display()));
    assert_eq!(laminar(None, &data, &["relay", &src, &dst]).status.code(), Some(0));
    // Changed at the source: one at the same size, one grown.
    put(&root, "same-size.txt", b"AAAA", 0);
    put(&root, "grown.txt", b"bbbbbb", 0);
    let read = |key: &str| std::fs::read(out.join(key)).unwrap();
    // --immutable: both fail, nothing overwritten.
    let immutable = laminar(None, &data, &["relay", &src, &dst, "--immutable", "--json"]);
    assert_eq!(immutable.status.code(), Some(1));
    let r = json(&immutable);
    assert_eq!((r["objects_failed"].as_u64(), r["objects_skipped"].as_u64()), (Some(2), Some(1)));
    assert!(r["failures"][0]["reason"].as_str().unwrap().contains("--immutable never overwrites"), "{r}");
    assert_eq!((read("same-size.txt"), read("grown.txt")), (b"aaaa".to_vec(), b"bb".to_vec()));
    // --ignore-existing: whatever is there stays.
    let r = json(&laminar(None, &data, &["relay", &src, &dst, "--ignore-existing", "--json"]));
    assert_eq!((r["objects_copied"].as_u64(), r["objects_skipped"].as_u64()), (Some(0), Some(3)));
    assert_eq!((read("same-size.txt"), read("grown.txt")), (b"aaaa".to_vec(), b"bb".to_vec()));
    // --size-only: the grown one is copied, the same-sized one is taken as the same.
    let r = json(&laminar(None, &data, &["relay", &src, &dst, "--size-only", "--json"]));
    assert_eq!(r["objects_copied"], 1);
    assert_eq!((read("same-size.txt"), read("grown.txt")), (b"aaaa".to_vec(), b"bbbbbb".to_vec()));
    // The default sees the changed version and copies it.
    let r = json(&laminar(None, &data, &["relay", &src, &dst, "--json"]));
    assert_eq!(r["objects_copied"], 1);
    assert_eq!(read("same-size.txt"), b"AAAA");
    // Two modes at once is a usage error.
    let both = laminar(None, &data, &["relay", &src, &dst, "--size-only", "--immutable"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn the_hash_flag_and_its_old_spelling_pick_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (root, data) = (dir.path().join("src"), dir.path().join("data"));
    put(&root, "a.txt", b"hello", 0);
    let src = format!("file://{}", root.display());
    for (n, flag) in ["--hash", "--checksum"].iter().enumerate() {
        let dst = format!("file://{}", dir.path().join(format!("out{n}")).display());
        let out = laminar(None, &data, &["relay", &src, &dst, flag, "sha256", "--json"]);
        assert_eq!(out.status.code(), Some(0));
        let warned = String::from_utf8_lossy(&out.stderr).contains("--checksum ALGO is now --hash ALGO");
        assert_eq!(warned, *flag == "--checksum", "{flag}");
        assert_eq!(std::fs::read(dir.path().join(format!("out{n}/a.txt"))).unwrap(), b"hello");
    }
    let bad = laminar(None, &data, &["relay", &src, "file:///tmp/never", "--hash", "crc7"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--hash \"crc7\": use crc32c"));
}

#[test]
fn completions_and_man_pages_come_from_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bash = laminar(None, &data, &["completion", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("--max-delete") && script.contains("lsjson"), "every command and flag");
    let path = dir.path().join("laminar.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = std::process::Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(syntax.success(), "the script parses");
    for shell in ["zsh", "fish"] {
        let out = laminar(None, &data, &["completion", shell]);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("filter-from"), "{shell}");
    }
    let man = dir.path().join("man");
    assert_eq!(laminar(None, &data, &["man", man.to_str().unwrap()]).status.code(), Some(0));
    let top = std::fs::read_to_string(man.join("laminar.1")).unwrap();
    assert!(top.starts_with(".ie") || top.contains(".TH laminar 1"), "roff: {}", &top[..80.min(top.len())]);
    let sync = std::fs::read_to_string(man.join("laminar-sync.1")).unwrap();
    assert!(sync.contains("max\\-delete") && sync.contains("backup\\-dir"), "{sync}");
}

/// Off a terminal a relay prints stats lines at `--stats` (here as often as it can,
/// so that even a short relay prints one), none with `--stats 0`.
#[test]
fn off_a_terminal_stats_lines_come_at_the_interval_given() {
    let dir = tempfile::tempdir().unwrap();
    let (root, data) = (dir.path().join("src"), dir.path().join("data"));
    for i in 0..50 {
        put(&root, &format!("f{i}"), &vec![i as u8; 10_000], 0);
    }
    let src = format!("file://{}", root.display());
    let often = laminar(None, &data, &["relay", &src, &format!("file://{}/a", dir.path().display()), "--stats", "1ms"]);
    assert_eq!(often.status.code(), Some(0));
    let err = String::from_utf8_lossy(&often.stderr);
    let line = err.lines().find(|l| l.contains(" INFO stats: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(" objects: ") && line.contains("/s, "), "{line}");
    let never = laminar(None, &data, &["relay", &src, &format!("file://{}/b", dir.path().display()), "--stats", "0"]);
    assert!(!String::from_utf8_lossy(&never.stderr).contains("stats:"));
    let bad = laminar(None, &data, &["relay", &src, "file:///tmp/never", "--stats", "often"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--stats \"often\""));
    assert_eq!(std::fs::read_dir(dir.path().join("b")).unwrap().count(), 50, "copied all the same");
}

/// Failures are summarised on standard error (the first 20 and a count of the rest);
/// `--json` carries every one.
#[test]
fn failures_are_summarised_on_stderr_and_listed_whole_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out, data) = (dir.path().join("src"), dir.path().join("out"), dir.path().join("data"));
    for i in 0..25 {
        put(&root, &format!("f{i:02}"), b"one", 3600);
    }
    let (src, dst) = (format!("file://{}", root.display()), format!("file://{}", out.display()));
    assert_eq!(laminar(None, &data, &["relay", &src, &dst]).status.code(), Some(0));
    for i in 0..25 {
        put(&root, &format!("f{i:02}"), b"two", 0);
    }
    let text = laminar(None, &data, &["relay", &src, &dst, "--immutable"]);
    assert_eq!(text.status.code(), Some(1));
    let err = String::from_utf8_lossy(&text.stderr);
    let listed = err.lines().filter(|l| l.contains(" ERROR failed: ") && l.contains("--immutable")).count();
    assert_eq!(listed, 20, "{err}");
    assert!(err.contains(" ERROR failed: 5 more, not listed here (--json lists them)"), "{err}");
    let r = json(&laminar(None, &data, &["relay", &src, &dst, "--immutable", "--json"]));
    assert_eq!(r["failures"].as_array().unwrap().len(), 25);
    assert_eq!(std::fs::read(out.join("f07")).unwrap(), b"one", "nothing overwritten");
}

/// Log lines: a timestamp and a level each; `-q` keeps errors only, `-v` adds each
/// object's outcome, `-vv` each step of its route; `--log-format json` writes one
/// object a line; `--log-file` takes the log off standard error, while a fatal error
/// is still said there.
#[test]
fn log_levels_formats_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let (root, data) = (dir.path().join("src"), dir.path().join("data"));
    for i in 0..3 {
        put(&root, &format!("f{i}"), &vec![i as u8; 1000], 0);
    }
    let src = format!("file://{}", root.display());
    let mut n = 0;
    let mut relay = |extra: &[&str]| {
        n += 1;
        let dst = format!("file://{}/out{n}", dir.path().display());
        // Both an include and an exclude: a note at INFO says how they combine.
        let mut args = vec!["relay", &src, &dst, "--include", "f*", "--exclude", "g*"];
        args.extend_from_slice(extra);
        let out = laminar(None, &data, &args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let levels = |log: &str| -> Vec<String> {
        log.lines()
            .map(|l| {
                let mut words = l.split_whitespace();
                let at = words.next().unwrap_or_default();
                assert!(humantime::parse_rfc3339(at).is_ok(), "no timestamp: {l}");
                words.next().unwrap_or_default().to_string()
            })
            .collect()
    };
    let default = relay(&[]);
    assert!(default.contains(" INFO --include rules are taken before --exclude rules"), "{default}");
    assert!(levels(&default).iter().all(|l| ["ERROR", "WARN", "INFO"].contains(&l.as_str())), "{default}");
    assert_eq!(relay(&["-q"]), "", "-q leaves errors only");
    let verbose = relay(&["-v"]);
    assert!(verbose.lines().any(|l| l.contains(" DEBUG copied key=f1 bytes=1000")), "{verbose}");
    assert!(!levels(&verbose).contains(&"TRACE".to_string()), "{verbose}");
    let very = relay(&["-vv"]);
    assert!(very.lines().any(|l| l.contains(" TRACE route f2 ")), "{very}");
    // JSON lines: every line an object with its timestamp, level and message.
    let json_log = relay(&["-v", "--log-format", "json"]);
    let events: Vec<serde_json::Value> = json_log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|e| e["timestamp"].is_string() && e["level"].is_string() && e["message"].is_string()));
    let copied: Vec<_> = events.iter().filter(|e| e["message"] == "copied").collect();
    assert_eq!(copied.len(), 3, "{json_log}");
    assert!(copied.iter().all(|e| e["bytes"] == 1000 && e["key"].as_str().unwrap().starts_with('f')));
    // A log file: appended to, nothing on standard error.
    let file = dir.path().join("laminar.log");
    let flag = file.to_str().unwrap();
    assert_eq!(relay(&["-v", "--log-file", flag]), "");
    assert_eq!(relay(&["--log-file", flag]), "");
    let kept = std::fs::read_to_string(&file).unwrap();
    assert_eq!(kept.lines().filter(|l| l.contains(" DEBUG copied ")).count(), 3, "{kept}");
    assert_eq!(kept.lines().filter(|l| l.contains("--include rules are taken")).count(), 2, "{kept}");
    // A fatal error: in the file, and said plainly on standard error too.
    let missing = format!("file://{}/nowhere", dir.path().display());
    let failed = laminar(None, &data, &["relay", &missing, "file:///tmp/never", "--log-file", flag]);
    assert_eq!(failed.status.code(), Some(2));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.starts_with("laminar: error: source directory ") && err.lines().count() == 1, "{err}");
    assert!(std::fs::read_to_string(&file).unwrap().lines().last().unwrap().contains(" ERROR source directory "));
    // A log file that cannot be opened is a usage error naming it.
    let bad = laminar(None, &data, &["relay", &src, "file:///tmp/never", "--log-file", "/no/such/dir/x.log"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("laminar: error: --log-file /no/such/dir/x.log: ") && err.lines().count() == 1, "{err}");
    assert!(!Path::new("/tmp/never").exists());
}

/// The names `lsjson` printed (one JSON array on stdout), with their flags.
fn lsjson_items(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("a JSON array on stdout")
}

#[test]
fn mkdir_makes_buckets_and_folders_and_a_remote_with_no_path_lists_its_buckets() {
    let Some(c) = clouds() else { return };
    let data = tempfile::tempdir().unwrap();
    let config = Some(c.config.path());
    let run = |args: &[&str]| laminar(config, data.path(), args);

    // A remote with no path lists its buckets, as rclone does (IsBucket set).
    let out = run(&["ls", "a:"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim_start() == "- bkt-a/"), "{out:?}");
    let items = lsjson_items(&run(&["lsjson", "a:"]));
    let a = items.iter().find(|i| i["Path"] == "bkt-a").unwrap_or_else(|| panic!("bkt-a listed: {items:?}"));
    assert_eq!((a["IsDir"].as_bool(), a["IsBucket"].as_bool(), a["Size"].as_i64()), (Some(true), Some(true), Some(-1)));
    assert!(!items.iter().any(|i| i["Path"] == "made-here"));

    // mkdir makes the bucket, then finds it there; a path below it needs no folder.
    let out = run(&["mkdir", "a:made-here"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the bucket made"), "{out:?}");
    let items = lsjson_items(&run(&["lsjson", "a:"]));
    assert!(items.iter().any(|i| i["Path"] == "made-here" && i["IsBucket"] == true), "{items:?}");
    let out = run(&["mkdir", "a:made-here/deep/dir"]);
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("was there already") && said.contains("S3 has no folders"), "{said}");
    let items = lsjson_items(&run(&["lsjson", "-R", "a:made-here"]));
    assert!(items.is_empty(), "no marker object was written: {items:?}");
    // The new bucket takes a relay.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("one.bin"), b"into the new bucket").unwrap();
    let src_url = format!("file://{}", src.path().display());
    let out = run(&["relay", &src_url, "a:made-here/in", "--json"]);
    assert_eq!(json(&out)["objects_copied"], 1, "{}", String::from_utf8_lossy(&out.stderr));
    let got = tempfile::tempdir().unwrap();
    c.a.download_dir("made-here/in", got.path()).unwrap();
    assert_eq!(std::fs::read(got.path().join("one.bin")).unwrap(), b"into the new bucket");

    // A file tree's folder is made with its parents; again is no error.
    let tree = tempfile::tempdir().unwrap();
    let deep = tree.path().join("x/y/z");
    let url = format!("file://{}", deep.display());
    for _ in 0..2 {
        let out = run(&["mkdir", &url]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(deep.is_dir());
    }

    // What cannot be done says so in one line.
    for args in [&["mkdir", "a:"][..], &["size", "a:"][..], &["mkdir", "nosuch:bkt"][..]] {
        let out = run(args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {said}");
        assert_eq!(said.trim().lines().count(), 1, "{args:?}: one line: {said}");
        assert!(said.starts_with("laminar: error: "), "{said}");
    }
}
