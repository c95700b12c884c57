//! `type = "rclone"`: any rclone remote, reached through the `rclone serve s3` that
//! Laminar starts for it and stops afterwards. The remote here is an rclone `local`
//! remote over a temporary directory (with a space in its path, which the connection
//! string must carry), so the bytes on both sides are plain files, compared without
//! Laminar.

use std::path::Path;

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::laminar_with;

/// A laminar.toml with remote `od` (rclone remote `disk:` over `root`, through an
/// rclone config of its own) and remote `out` (a local tree).
struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    served: std::path::PathBuf,
    out: std::path::PathBuf,
}

fn setup() -> Option<Setup> {
    let Some(rclone) = find_tool("rclone") else {
        assert!(!require_servers(), "rclone is required (LAMINAR_REQUIRE_SERVERS is set): run tests/run.sh");
        eprintln!("skipping: rclone not installed (tests/run.sh installs it)");
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let served = dir.path().join("remote root");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&served).expect("remote root");
    std::fs::create_dir_all(&out).expect("out");
    let rclone_conf = dir.path().join("rclone.conf");
    std::fs::write(&rclone_conf, "[disk]\ntype = local\n").expect("rclone.conf");
    let config = dir.path().join("laminar.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.od]\ntype = \"rclone\"\nremote = \"disk:{}\"\nbinary = {:?}\nconfig = {:?}\n\n[remotes.out]\ntype = \"file\"\nroot = {:?}\n",
            served.display(),
            rclone.display().to_string(),
            rclone_conf.display().to_string(),
            out.display().to_string()
        ),
    )
    .expect("laminar.toml");
    Some(Setup { _dir: dir, config, served, out })
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Files under `root`, relative, sorted.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&path).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn relay(config: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = laminar_with(config, &["relay", from, to, "--json"]);
    assert_eq!(out.status.code(), Some(0), "relay {from} -> {to}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")).expect("a JSON report")
}

/// Whether any process still runs `rclone serve s3` over `root`.
fn server_running_for(root: &Path) -> bool {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc").expect("/proc").flatten().any(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains("serve s3") && cmdline.contains(&needle)
    })
}

#[test]
fn an_rclone_remote_is_a_source_and_a_destination_and_its_server_is_stopped() {
    let Some(s) = setup() else { return };
    // Into the rclone remote: small files, an empty one, and one read in parallel parts.
    let src = tempfile::tempdir().expect("source");
    for (i, (rel, len)) in
        [("a/x.bin", 1000), ("a/é b.txt", 17), ("empty", 0), ("big.bin", 40 << 20)].iter().enumerate()
    {
        let path = src.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, pattern(*len, i as u64)).expect("write");
    }
    let from = format!("file://{}", src.path().display());
    let first = relay(&s.config, &from, "od:in");
    assert_eq!(first["objects_copied"], 4, "{first}");
    assert_eq!(files(&s.served.join("in")), files(src.path()), "the rclone remote holds the tree, byte for byte");
    // An rclone local remote keeps no user metadata, so Laminar's record does not
    // survive the server's restart and a tree with no hashes (local files) is copied
    // again; the bytes stay right.
    let again = relay(&s.config, &from, "od:in");
    assert_eq!(again["objects_failed"], 0, "{again}");
    assert_eq!(files(&s.served.join("in")), files(src.path()), "still the same tree after the re-run");
    // Out of it, into a local tree, which keeps Laminar's record: a re-run copies nothing.
    let back = relay(&s.config, "od:in", "out:back");
    assert_eq!(back["objects_copied"], 4, "{back}");
    assert_eq!(files(&s.out.join("back")), files(src.path()), "the tree came back byte for byte");
    let back_again = relay(&s.config, "od:in", "out:back");
    assert_eq!(back_again["objects_copied"], 0, "a re-run copies nothing: {back_again}");
    assert_eq!(back_again["objects_skipped"], 4, "{back_again}");
    assert!(!server_running_for(&s.served), "rclone serve s3 is stopped when laminar exits");
}

#[test]
fn a_missing_rclone_or_remote_is_one_clear_line() {
    let Some(s) = setup() else { return };
    let text = std::fs::read_to_string(&s.config).expect("config");
    let bad_binary = s.config.with_file_name("bad-binary.toml");
    let broken = text.replacen("binary = ", "binary = \"/nonexistent/rclone\"\n# ", 1);
    std::fs::write(&bad_binary, broken).expect("write");
    let out = laminar_with(&bad_binary, &["ls", "od:"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("install rclone") && err.lines().count() == 1, "{err}");

    let no_colon = s.config.with_file_name("no-colon.toml");
    std::fs::write(&no_colon, text.replacen("remote = \"disk:", "remote = \"", 1)).expect("write");
    let out = laminar_with(&no_colon, &["ls", "od:"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no rclone remote"));

    let unknown = s.config.with_file_name("unknown.toml");
    std::fs::write(&unknown, text.replacen("remote = \"disk:", "remote = \"nosuchremote:", 1)).expect("write");
    let out = laminar_with(&unknown, &["ls", "od:"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rclone serve s3"), "the error names rclone");
}
