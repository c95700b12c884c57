//! `laminar sync` and `laminar move` against a real S3 server (SeaweedFS) and local
//! trees. Every case checks what each side holds afterwards, byte for byte: a sync
//! makes the destination the source's image and deletes only after every copy
//! succeeded, refuses a mass deletion unless allowed, keeps what filters exclude and
//! moves deletions to a backup when asked; a move empties the source only of what
//! landed verified.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;

use laminar_tests::{clouds, laminar_in as laminar, stdout_json as json};

fn put(root: &Path, key: &str, bytes: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn tree(root: &Path, n: usize) {
    for i in 0..n {
        put(root, &format!("d{}/f{i:02}.bin", i % 3), &vec![i as u8; 100 + i * 37]);
    }
}

/// Every file under `root`, by key, with its bytes.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for e in read {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let key = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(key, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_sync_makes_the_bucket_the_trees_image_and_refuses_a_mass_deletion() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root, 30);
    let data = dir.path().join("data");
    let cfg = Some(c.config.path());
    let src = format!("file://{}", root.display());
    let bucket = |name: &str| {
        let back = dir.path().join(name);
        c.b.download_dir("bkt-b/s", &back).unwrap();
        files(&back)
    };
    let first = json(&laminar(cfg, &data, &["sync", &src, "b:bkt-b/s/", "--json"]));
    assert_eq!((first["objects_copied"].as_u64(), first["objects_deleted"].as_u64()), (Some(30), Some(0)));
    // Two gone, one new, one changed at the source; a key the filter keeps out stays.
    std::fs::remove_file(root.join("d0/f00.bin")).unwrap();
    std::fs::remove_file(root.join("d1/f01.bin")).unwrap();
    put(&root, "new.bin", b"new");
    put(&root, "d2/f02.bin", b"changed");
    let keep = dir.path().join("keep.txt");
    std::fs::write(&keep, b"not the tree's").unwrap();
    c.b.upload_file(&keep, "bkt-b/s/notes.keep").unwrap();
    let second = laminar(cfg, &data, &["sync", &src, "b:bkt-b/s/", "--json", "--exclude", "*.keep"]);
    assert_eq!(second.status.code(), Some(0));
    let r = json(&second);
    assert_eq!((r["objects_copied"].as_u64(), r["objects_deleted"].as_u64()), (Some(2), Some(2)));
    let mut want = files(&root);
    let mut held = bucket("back1");
    assert_eq!(held.remove("notes.keep").as_deref(), Some(&b"not the tree's"[..]), "excluded: not deleted");
    assert_eq!(held, want, "the bucket is the tree's image");
    // Ten of 29 gone at the source: over 10%, so nothing is deleted without --max-delete.
    for i in 3..13 {
        std::fs::remove_file(root.join(format!("d{}/f{i:02}.bin", i % 3))).unwrap();
    }
    let refused = laminar(cfg, &data, &["sync", &src, "b:bkt-b/s/", "--exclude", "*.keep"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("nothing deleted: the sync would delete 10 of the destination's 29 objects"), "{err}");
    assert!(err.contains("--max-delete 10"), "{err}");
    assert_eq!(bucket("back2").len(), 30, "nothing deleted");
    assert_eq!(
        laminar(cfg, &data, &["sync", &src, "b:bkt-b/s/", "--max-delete", "5", "--exclude", "*.keep"]).status.code(),
        Some(1)
    );
    // A dry run names what would go, and deletes nothing.
    let dry =
        laminar(cfg, &data, &["sync", &src, "b:bkt-b/s/", "--max-delete", "10", "--dry-run", "--exclude", "*.keep"]);
    assert_eq!(dry.status.code(), Some(0));
    let out = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(out.lines().filter(|l| l.starts_with("would delete s/")).count(), 10, "{out}");
    assert_eq!(bucket("back3").len(), 30);
    // Allowed, into a backup on the same store: the ten move there, keys kept.
    let moved = laminar(
        cfg,
        &data,
        &["sync", &src, "b:bkt-b/s/", "--max-delete", "10", "--backup-dir", "b:bkt-b/old/", "--exclude", "*.keep"],
    );
    assert_eq!(moved.status.code(), Some(0));
    let mut held = bucket("back4");
    held.remove("notes.keep");
    want = files(&root);
    assert_eq!(held, want);
    let old = dir.path().join("old");
    c.b.download_dir("bkt-b/old", &old).unwrap();
    let old = files(&old);
    assert_eq!(old.len(), 10);
    assert_eq!(old["d0/f03.bin"], vec![3u8; 100 + 3 * 37], "the backup holds the deleted bytes");
}

#[test]
fn a_sync_with_a_failed_copy_deletes_nothing_and_a_move_keeps_what_did_not_land() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("tree"), dir.path().join("out"));
    tree(&root, 12);
    let data = dir.path().join("data");
    let (src, dst) = (format!("file://{}", root.display()), format!("file://{}", out.display()));
    // At the destination: an extra object, and d1 a link, which Laminar never writes through.
    put(&out, "extra.bin", b"extra");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    symlink(&elsewhere, out.join("d1")).unwrap();
    let sync = laminar(None, &data, &["sync", &src, &dst, "--max-delete", "100"]);
    assert_eq!(sync.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&sync.stderr).contains("nothing deleted: the sync deletes only after every copy"));
    assert_eq!(std::fs::read(out.join("extra.bin")).unwrap(), b"extra", "not deleted");
    assert!(files(&elsewhere).is_empty(), "nothing written through the link");
    // A move: what landed verified leaves the source; what failed (below the link) stays.
    let before = files(&root);
    let moved = laminar(None, &data, &["move", &src, &dst]);
    assert_eq!(moved.status.code(), Some(1));
    let left = files(&root);
    let landed = files(&out);
    for (key, bytes) in &before {
        if key.starts_with("d1/") {
            assert_eq!(left.get(key), Some(bytes), "{key} failed to land, so it stays");
        } else {
            assert!(!left.contains_key(key), "{key} landed, so it left the source");
            assert_eq!(landed.get(key), Some(bytes), "{key}");
        }
    }
}

#[test]
fn a_move_into_s3_empties_the_tree_of_what_landed_verified() {
    let Some(c) = clouds() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    tree(&root, 9);
    let before = files(&root);
    let data = dir.path().join("data");
    let src = format!("file://{}", root.display());
    let out = laminar(Some(c.config.path()), &data, &["move", &src, "a:bkt-a/m/", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["objects_deleted"], 9);
    assert!(files(&root).is_empty(), "the tree is empty");
    let back = dir.path().join("back");
    c.a.download_dir("bkt-a/m", &back).unwrap();
    assert_eq!(files(&back), before, "the bucket holds every object, byte for byte");
}
