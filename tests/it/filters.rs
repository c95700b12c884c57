//! rclone's filter language, checked against rclone itself: for one tree and a set of
//! filter files and flags, `rclone lsf -R --files-only` and `laminar lsjson -R
//! --files-only` must name the same keys. Then the same rules drive a relay into a
//! real S3 server (SeaweedFS), whose bucket must hold exactly those objects, byte for
//! byte; and a bad rule is one line naming where it is, with nothing copied.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::{clouds, laminar_bin};

/// A tree with names that tell the rules apart: cases, depths, a `big` at the root
/// and deeper, a `tmp` directory, braces, spaces, dots. Sizes grow with the index,
/// and every third file is a year old.
fn tree(root: &Path) -> Vec<String> {
    let keys = [
        "a.jpg",
        "a.JPG",
        "b.png",
        "c.txt",
        ".hidden",
        "space name.txt",
        "brace{1}.txt",
        "big/x.jpg",
        "big/sub/y.txt",
        "x/big/z.jpg",
        "dir/file.txt",
        "dir/file.log",
        "dir/sub/deep/file.log",
        "dir/sub/pic.png",
        "tmp/t.jpg",
        "tmp/keep/k.txt",
        "deep/a/b/c/d/e.jpg",
        "notes/2024-01-31.md",
        "notes/20240131.md",
    ];
    let old = SystemTime::now() - Duration::from_secs(365 * 86_400);
    for (i, key) in keys.iter().enumerate() {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..i * 700).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        if i % 3 == 0 {
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        }
    }
    keys.iter().map(|k| k.to_string()).collect()
}

fn rclone() -> Option<std::path::PathBuf> {
    let found = find_tool("rclone");
    if found.is_none() {
        assert!(!require_servers(), "rclone is required (LAMINAR_REQUIRE_SERVERS is set): run tests/run.sh");
        eprintln!("skipping: rclone not installed (tests/run.sh installs it)");
    }
    found
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("run");
    if !out.status.success() {
        eprintln!("{c:?} -> {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    }
    out
}

fn rclone_keys(rclone: &Path, conf: &Path, root: &Path, flags: &[String]) -> BTreeSet<String> {
    let mut c = Command::new(rclone);
    c.env("RCLONE_CONFIG", conf).args(["lsf", "-R", "--files-only"]).args(flags).arg(root);
    let out = run(c);
    assert!(out.status.success(), "rclone lsf {flags:?}");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

fn laminar_keys(config: Option<&Path>, url: &str, flags: &[String]) -> BTreeSet<String> {
    let mut c = Command::new(laminar_bin());
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.args(["lsjson", "-R", "--files-only", url]).args(flags);
    let out = run(c);
    assert!(out.status.success(), "laminar lsjson {flags:?}");
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lsjson prints a JSON array");
    items.as_array().unwrap().iter().map(|i| i["Path"].as_str().unwrap().to_string()).collect()
}

/// The cases: each a list of flags, a rules file given as `@RULES` text.
fn cases() -> Vec<Vec<String>> {
    let text = [
        &["@- /big/**\n+ *.jpg\n- *\n"][..],
        &["@+ *.{jpg,png}\n- **\n"],
        &["@# directories: excluding one excludes all below it\n- tmp/\n- *.log\n+ **\n"],
        &["@+ /dir/**\n- *\n"],
        &["@+ dir/*.txt\n- *\n"],
        &["@- *.jpg\n!\n+ *.png\n- *\n"],
        &["@+ /a.?PG\n- *\n"],
        &["@- /dir/*/\n+ **\n"],
        &["@; a regular expression between double braces\n+ notes/{{\\d{8}}}.md\n- **\n"],
        &["@+ **/sub/**\n- *\n"],
        &["@+ /tmp/keep/\n- /tmp/**\n"],
        &["@+ brace\\{1\\}.txt\n+ space name.txt\n- *\n"],
        &["@+ deep/**/e.jpg\n- *\n"],
        &["--include", "*.jpg", "--include", "/dir/**"],
        &["--exclude", "big/", "--exclude", "*.txt"],
        &["--include", "*.txt", "--exclude", "dir/**"],
        &["--filter", "- .hidden", "--filter", "+ /*", "--filter", "- **"],
        &["--ignore-case", "--include", "*.JPG"],
        &["--min-size", "4K", "--max-size", "9K"],
        &["--max-size", "3000B"],
        &["--min-age", "30d"],
        &["--max-age", "1h", "--include", "*.txt"],
    ];
    text.iter().map(|c| c.iter().map(|s| s.to_string()).collect()).collect()
}

/// Writes `@RULES` cases to files and gives both tools' flags.
fn flags(case: &[String], dir: &Path, n: usize) -> Vec<String> {
    match case {
        [rules] if rules.starts_with('@') => {
            let path = dir.join(format!("rules-{n}"));
            std::fs::write(&path, &rules[1..]).unwrap();
            vec!["--filter-from".to_string(), path.display().to_string()]
        }
        _ => case.to_vec(),
    }
}

#[test]
fn rclone_and_laminar_select_the_same_keys_for_each_filter() {
    let Some(rclone) = rclone() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let all: BTreeSet<String> = tree(&root).into_iter().collect();
    let conf = dir.path().join("rclone.conf");
    std::fs::write(&conf, "").unwrap();
    let url = format!("file://{}", root.display());
    assert_eq!(laminar_keys(None, &url, &[]), all, "no filter: every key");
    for (n, case) in cases().iter().enumerate() {
        let flags = flags(case, dir.path(), n);
        let want = rclone_keys(&rclone, &conf, &root, &flags);
        let got = laminar_keys(None, &url, &flags);
        assert_eq!(got, want, "case {n} {case:?}: laminar (left) and rclone (right) differ");
        assert!(!want.is_empty() && want != all, "case {n} {case:?} selects something, not everything: {want:?}");
    }
    // --files-from names keys; rclone and laminar agree on it too.
    let list = dir.path().join("list");
    std::fs::write(&list, "# wanted\n/a.jpg\ndir/sub/pic.png\n  c.txt  \nnot/there\n").unwrap();
    let flags = vec!["--files-from".to_string(), list.display().to_string()];
    let want = rclone_keys(&rclone, &conf, &root, &flags);
    assert_eq!(laminar_keys(None, &url, &flags), want);
    assert_eq!(want.len(), 3, "{want:?}");
}

#[test]
fn a_filtered_relay_into_s3_lands_exactly_the_selected_objects() {
    let Some(rclone) = rclone() else { return };
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root);
    let conf = dir.path().join("rclone.conf");
    std::fs::write(&conf, "").unwrap();
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "- /big/**\n- tmp/\n+ *.{jpg,png,txt}\n- *\n").unwrap();
    let flags = vec!["--filter-from".to_string(), rules.display().to_string()];
    let want = rclone_keys(&rclone, &conf, &root, &flags);
    let data = tempfile::tempdir().unwrap();
    let src = format!("file://{}", root.display());
    let mut args = vec!["relay", src.as_str(), "a:bkt-a/in/", "--json"];
    args.extend(flags.iter().map(String::as_str));
    let out = Command::new(laminar_bin())
        .env("LAMINAR_DATA_DIR", data.path())
        .arg("--config")
        .arg(c.config.path())
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["objects_copied"], want.len() as u64);
    // The bucket holds those keys and no others, each byte for byte.
    let landed = laminar_keys(Some(c.config.path()), "a:bkt-a/in/", &[]);
    assert_eq!(landed, want);
    let back = dir.path().join("back");
    c.a.download_dir("bkt-a/in", &back).expect("download with rclone");
    for key in &want {
        assert_eq!(std::fs::read(back.join(key)).unwrap(), std::fs::read(root.join(key)).unwrap(), "{key}");
    }
    // The same rules listed on the bucket select the same keys as on the tree.
    assert_eq!(laminar_keys(Some(c.config.path()), "a:bkt-a/in/", &flags), want);
    // `size` and `ls` count and name what lsjson lists, relative to the path given.
    let size = laminar_tests::laminar_with(c.config.path(), &["size", "a:bkt-a/in/", "--json"]);
    let size: serde_json::Value = serde_json::from_slice(&size.stdout).unwrap();
    let bytes: u64 = want.iter().map(|k| std::fs::metadata(root.join(k)).unwrap().len()).sum();
    assert_eq!((size["count"].as_u64(), size["bytes"].as_u64()), (Some(want.len() as u64), Some(bytes)));
    let ls = laminar_tests::laminar_with(c.config.path(), &["ls", "a:bkt-a/in/dir"]);
    let ls: Vec<String> = String::from_utf8(ls.stdout).unwrap().lines().map(|l| l.trim().to_string()).collect();
    let in_dir: Vec<String> = want
        .iter()
        .filter_map(|k| k.strip_prefix("dir/"))
        .map(|k| format!("{} {k}", std::fs::metadata(root.join("dir").join(k)).unwrap().len()))
        .collect();
    assert_eq!(ls, in_dir);
}

#[test]
fn a_bad_rule_is_one_line_naming_its_file_and_line_and_nothing_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root);
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "+ *.jpg\n# fine\n*.png\n").unwrap();
    let out_dir = dir.path().join("out");
    let data = dir.path().join("data");
    for (flags, says) in [
        (vec!["--filter-from".to_string(), rules.display().to_string()], "rules: line 3: a rule is \"+ GLOB\""),
        (vec!["--include".to_string(), "a[".to_string()], "--include \"a[\": mismatched '['"),
        (vec!["--min-size".to_string(), "lots".to_string()], "--min-size \"lots\": give a size"),
        (vec!["--max-age".to_string(), "soon".to_string()], "--max-age \"soon\": give an age"),
    ] {
        let out = Command::new(laminar_bin())
            .env("LAMINAR_DATA_DIR", &data)
            .arg("relay")
            .arg(format!("file://{}", root.display()))
            .arg(format!("file://{}", out_dir.display()))
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{flags:?}: {err}");
        assert!(!out_dir.exists() || std::fs::read_dir(&out_dir).unwrap().next().is_none(), "nothing copied");
    }
}
