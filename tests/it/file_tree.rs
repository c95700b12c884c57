//! A local tree as source and destination, the way an operator's disk really looks:
//! symbolic links inside and out of the tree, FIFOs, a directory the relay cannot
//! read, a link planted at the destination, and temporary files of Laminar's own left
//! by a relay that died. Each case checks the bytes at the destination afterwards and
//! that nothing was written outside it.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use laminar_tests::laminar_bin;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
    std::fs::write(path, bytes).expect("write");
}

/// Opens `dir` (and what is in it) to every user, for a relay run as `nobody`.
fn open_to_all(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

/// Runs `laminar relay FROM TO --json EXTRA`, as `nobody` when `unprivileged` and this
/// test runs as root (root reads every directory, so only another user meets one it
/// cannot read).
fn relay(from: &Path, to: &Path, extra: &[&str], unprivileged: bool, data: &Path) -> Output {
    let root = nix_uid() == 0;
    let mut c = if unprivileged && root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(laminar_bin());
        c
    } else {
        Command::new(laminar_bin())
    };
    c.env("LAMINAR_DATA_DIR", data)
        .arg("relay")
        .arg(format!("file://{}", from.display()))
        .arg(format!("file://{}", to.display()))
        .arg("--json")
        .args(extra);
    let out = c.output().expect("run laminar");
    eprintln!("relay {extra:?} -> {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    out
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a JSON report")
}

fn left_out(report: &serde_json::Value) -> Vec<(String, String)> {
    report["left_out"]
        .as_array()
        .expect("left_out")
        .iter()
        .map(|l| (l["key"].as_str().unwrap().to_string(), l["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// A tree with a file, links to a file and a directory outside it, a link back to its
/// own root, a broken link, a FIFO and a directory no one but root can read.
struct Tree {
    base: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let base = tempfile::tempdir().expect("temp dir");
        open_to_all(base.path());
        let src = base.path().join("src");
        write(&src.join("plain.txt"), b"plain");
        write(&src.join("sub/inner.txt"), b"inner");
        write(&base.path().join("outside/secret.txt"), b"outside the tree");
        symlink(base.path().join("outside/secret.txt"), src.join("to-file")).unwrap();
        symlink(base.path().join("outside"), src.join("to-dir")).unwrap();
        symlink(&src, src.join("sub/loop")).unwrap();
        symlink(base.path().join("nowhere"), src.join("broken")).unwrap();
        let fifo = std::ffi::CString::new(src.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        write(&src.join("locked/hidden.txt"), b"hidden");
        std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
        for dir in [src.clone(), src.join("sub"), base.path().join("outside")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for dir in ["dst", "data"] {
            std::fs::create_dir_all(base.path().join(dir)).unwrap();
            open_to_all(&base.path().join(dir));
        }
        Tree { base }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.base.path().join(rel)
    }
}

#[test]
fn links_fifos_and_unreadable_directories_are_left_out_with_a_note_and_the_rest_is_copied() {
    let t = Tree::new();
    let out = relay(&t.path("src"), &t.path("dst"), &[], true, &t.path("data"));
    assert_eq!(out.status.code(), Some(0));
    let r = report(&out);
    assert_eq!(r["objects_copied"], 2, "{r}");
    assert_eq!(std::fs::read(t.path("dst/plain.txt")).unwrap(), b"plain");
    assert_eq!(std::fs::read(t.path("dst/sub/inner.txt")).unwrap(), b"inner");
    for absent in ["to-file", "to-dir", "broken", "pipe", "locked", "sub/loop"] {
        assert!(!t.path("dst").join(absent).exists(), "{absent} was not copied");
    }
    let left = left_out(&r);
    let reason = |key: &str| {
        left.iter().find(|(k, _)| k == key).map(|(_, r)| r.clone()).unwrap_or_else(|| panic!("{key}: {left:?}"))
    };
    assert!(reason("to-file").contains("symbolic link") && reason("to-file").contains("--copy-links"));
    assert!(reason("to-dir").contains("symbolic link"));
    assert!(reason("sub/loop").contains("symbolic link"));
    assert!(reason("pipe").contains("not a regular file"));
    assert!(reason("locked/").contains("cannot be read"), "{left:?}");
    // The human summary says so too.
    let _ = std::fs::remove_dir_all(t.path("dst"));
    let out = Command::new(laminar_bin())
        .env("LAMINAR_DATA_DIR", t.path("data"))
        .arg("relay")
        .arg(format!("file://{}", t.path("src").display()))
        .arg(format!("file://{}", t.path("dst").display()))
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("left out") && summary.contains("to-file"), "{summary}");
}

#[test]
fn copy_links_follows_links_to_files_and_directories_but_not_back_into_the_tree() {
    let t = Tree::new();
    let out = relay(&t.path("src"), &t.path("dst"), &["--copy-links"], false, &t.path("data"));
    let r = report(&out);
    assert_eq!(std::fs::read(t.path("dst/to-file")).unwrap(), b"outside the tree");
    assert_eq!(std::fs::read(t.path("dst/to-dir/secret.txt")).unwrap(), b"outside the tree");
    assert_eq!(std::fs::read(t.path("dst/plain.txt")).unwrap(), b"plain");
    let left = left_out(&r);
    assert!(left.iter().any(|(k, why)| k == "sub/loop/" && why.contains("leads back to the root")), "{left:?}");
    assert!(left.iter().any(|(k, why)| k == "broken" && why.contains("gone")), "{left:?}");
    assert!(!t.path("dst/sub/loop").exists());
    assert_eq!(r["objects_failed"], 0, "{r}");
}

#[test]
fn a_link_at_the_destination_is_never_written_through() {
    let base = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (base.path().join("src"), base.path().join("dst"), base.path().join("outside"));
    write(&src.join("ok.txt"), b"ok");
    write(&src.join("sub/x.txt"), b"would land outside");
    write(&src.join("deep/er/y.txt"), b"also outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(dst.join("deep")).unwrap();
    symlink(&outside, dst.join("sub")).unwrap();
    symlink(&outside, dst.join("deep/er")).unwrap();
    let out = relay(&src, &dst, &[], false, base.path());
    assert_eq!(out.status.code(), Some(1), "the objects under links fail");
    let r = report(&out);
    assert_eq!((r["objects_copied"].as_u64(), r["objects_failed"].as_u64()), (Some(1), Some(2)), "{r}");
    for failure in r["failures"].as_array().expect("failures") {
        let reason = failure["reason"].as_str().unwrap();
        assert!(reason.contains("symbolic link") && reason.contains("does not write through links"), "{reason}");
    }
    assert_eq!(std::fs::read(dst.join("ok.txt")).unwrap(), b"ok");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside the destination");
}

#[test]
fn temporary_files_of_a_dead_relay_are_removed_and_nothing_else() {
    let base = tempfile::tempdir().unwrap();
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    write(&src.join("a.txt"), b"a");
    // A process that has ended: its pid names no running process with its start time.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let me = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let my_start: u64 = stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap();
    let dead = [
        format!("sub/.x.bin.laminar-{dead_pid:x}-1-00000000000000aa.tmp"),
        format!(".y.bin.laminar-{me:x}-{:x}-00000000000000bb.tmp", my_start + 1),
    ];
    let kept = [
        // A live writer's (this test's process), a young one naming no writer, and
        // files that are not Laminar's at all.
        format!(".z.bin.laminar-{me:x}-{my_start:x}-00000000000000cc.tmp"),
        ".w.bin.laminar-00000000000000dd.tmp".to_string(),
        ".notes.tmp".to_string(),
        "sub/laminar-report.tmp".to_string(),
    ];
    for name in dead.iter().chain(&kept) {
        write(&dst.join(name), b"partial");
    }
    let out = relay(&src, &dst, &[], false, base.path());
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed 2 temporary files"), "{stderr}");
    for name in &dead {
        assert!(!dst.join(name).exists(), "{name} was removed");
    }
    for name in &kept {
        assert_eq!(std::fs::read(dst.join(name)).unwrap(), b"partial", "{name} was kept");
    }
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"a");
}

#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // More lines than a pipe holds, so that the writer meets the closed pipe.
    for i in 0..3000 {
        write(&src.join(format!("d{}/file-with-a-longish-name-{i:05}.txt", i % 10)), b"x");
    }
    let dst = dir.path().join("dst");
    let from = format!("file://{}", src.display());
    let to = format!("file://{}", dst.display());
    for args in [vec!["relay", from.as_str(), to.as_str(), "--dry-run"], vec!["ls", from.as_str()]] {
        let mut child = Command::new(laminar_bin())
            .env("LAMINAR_DATA_DIR", dir.path().join("data"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.contains("file-with-a-longish-name"), "{args:?}: {first:?}");
        // `| head -1`: the reader is gone.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "{args:?}: quietly, not {stderr}");
    }
    assert!(!dst.exists(), "a dry run writes nothing");
}
