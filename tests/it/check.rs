//! `laminar check SRC DST` against real SeaweedFS servers and local trees: a copy
//! the same is exit 0; one object deleted, one rewritten (same size), one added at the
//! destination are each named, and exit 1; bytes changed in place behind a record
//! that still vouches for them are found by `--download` alone; a copy another tool
//! made (no record, no hash both stores report) is compared by size and says so.

use std::path::Path;

use laminar_tests::{clouds, laminar_in as laminar, stdout_json as json};

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let key = if i % 3 == 0 { format!("d{}/f{i}.bin", i % 2) } else { format!("f{i}.bin") };
            (key, (0..(i * 1000 + 7)).map(|b| (b * 7 + i) as u8).collect())
        })
        .collect();
    for (key, bytes) in &files {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    files
}

fn problems(report: &serde_json::Value, kind: &str) -> Vec<String> {
    let mut keys: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == kind)
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

#[test]
fn missing_extra_and_differing_objects_are_each_named_and_exit_1() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let files = tree(&root);
    let data = dir.path().join("data");
    let cfg = Some(c.config.path());
    let src = format!("file://{}", root.display());
    assert_eq!(laminar(cfg, &data, &["relay", &src, "a:bkt-a/t/"]).status.code(), Some(0));
    assert_eq!(laminar(cfg, &data, &["relay", "a:bkt-a/t/", "b:bkt-b/t/"]).status.code(), Some(0));
    let same = laminar(cfg, &data, &["check", "a:bkt-a/t", "b:bkt-b/t", "--json"]);
    assert_eq!(same.status.code(), Some(0));
    let r = json(&same);
    assert_eq!((r["objects_checked"].as_u64(), r["objects_matched"].as_u64()), (Some(12), Some(12)));
    // Behind Laminar's back: one deleted, one rewritten with as many other bytes, one added.
    c.b.rclone_ok(&["deletefile", "weed:bkt-b/t/f1.bin"]).unwrap();
    let (key, bytes) = &files[4];
    let other: Vec<u8> = bytes.iter().map(|b| b ^ 0x55).collect();
    let scratch = dir.path().join("scratch");
    std::fs::write(&scratch, &other).unwrap();
    c.b.upload_file(&scratch, &format!("bkt-b/t/{key}")).unwrap();
    c.b.upload_file(&scratch, "bkt-b/t/d0/new.bin").unwrap();
    let found = laminar(cfg, &data, &["check", "a:bkt-a/t", "b:bkt-b/t", "--json"]);
    assert_eq!(found.status.code(), Some(1));
    let r = json(&found);
    assert_eq!(problems(&r, "missing"), ["t/f1.bin"]);
    assert_eq!(problems(&r, "differs"), [format!("t/{key}")]);
    assert_eq!(problems(&r, "extra"), ["t/d0/new.bin"]);
    assert_eq!(r["objects_matched"], 10);
    // Without --json: one line each on standard error, the counts on standard output.
    let text = laminar(cfg, &data, &["check", "a:bkt-a/t", "b:bkt-b/t"]);
    assert_eq!(text.status.code(), Some(1));
    let err = String::from_utf8_lossy(&text.stderr);
    assert!(err.contains(" ERROR missing: t/f1.bin") && err.contains(" ERROR extra: t/d0/new.bin"), "{err}");
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("10 the same, 1 missing, 1 differing, 1 extra"), "{out}");
    // --one-way: what only the destination holds is no difference; the rest still is.
    let one_way = json(&laminar(cfg, &data, &["check", "a:bkt-a/t", "b:bkt-b/t", "--json", "--one-way"]));
    assert_eq!((one_way["objects_extra"].as_u64(), one_way["objects_missing"].as_u64()), (Some(0), Some(1)));
    // Filters apply to both sides: excluding what differs leaves a clean check.
    let filtered = laminar(
        cfg,
        &data,
        &["check", "a:bkt-a/t", "b:bkt-b/t", "--exclude", "f1.bin", "--exclude", key, "--exclude", "new.bin"],
    );
    assert_eq!(filtered.status.code(), Some(0), "{}", String::from_utf8_lossy(&filtered.stdout));
    // The source is untouched by any of it.
    let back = dir.path().join("back");
    c.a.download_dir("bkt-a/t", &back).unwrap();
    for (key, bytes) in &files {
        assert_eq!(&std::fs::read(back.join(key)).unwrap(), bytes, "{key}");
    }
}

#[test]
fn bytes_changed_in_place_are_found_by_download_and_a_foreign_copy_is_compared_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    let files = tree(&root);
    let out_dir = dir.path().join("out");
    let data = dir.path().join("data");
    let (src, dst) = (format!("file://{}", root.display()), format!("file://{}", out_dir.display()));
    assert_eq!(laminar(None, &data, &["relay", &src, &dst]).status.code(), Some(0));
    // A byte flipped in place: the copy's record of its source version still holds.
    let (key, bytes) = &files[5];
    let mut flipped = bytes.clone();
    flipped[100] ^= 1;
    std::fs::write(out_dir.join(key), &flipped).unwrap();
    let listed = laminar(None, &data, &["check", &src, &dst, "--json"]);
    assert_eq!(listed.status.code(), Some(0), "the listing and the record cannot see it");
    let read = laminar(None, &data, &["check", &src, &dst, "--json", "--download"]);
    assert_eq!(read.status.code(), Some(1));
    let r = json(&read);
    assert_eq!(problems(&r, "differs"), std::slice::from_ref(key));
    assert!(r["problems"][0]["reason"].as_str().unwrap().contains("contents differ"), "{r}");
    assert_eq!(std::fs::read(out_dir.join(key)).unwrap(), flipped, "a check writes nothing");
    // A copy no Laminar wrote: no record, no hash; compared by size, and said so.
    let foreign = dir.path().join("foreign");
    for (key, bytes) in &files {
        let path = foreign.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let other = format!("file://{}", foreign.display());
    let sized = laminar(None, &data, &["check", &src, &other]);
    assert_eq!(sized.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&sized.stdout).contains("size only: 12 objects"));
    assert_eq!(laminar(None, &data, &["check", &src, &other, "--download"]).status.code(), Some(0));
}
