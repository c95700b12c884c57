//! The NVMe stage and routing, end to end through the `laminar` binary between real
//! SeaweedFS servers: forced staging, spilling when the destination is slower (a
//! pacing proxy), crash leftovers, the quota, and a disk that fills up. Stage
//! directories are on the temp dir's file system (ext4 here), which enforces O_DIRECT
//! alignment, unlike /dev/shm.

use std::path::Path;
use std::process::{Command, Output};

use laminar_tests::disk::SmallDisk;
use laminar_tests::proxy::{Fault, Proxy};
use laminar_tests::{clouds, laminar_bin, Clouds};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn load(c: &Clouds, prefix: &str, sizes: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    for (i, size) in sizes.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(i as u64 + *size as u64);
        let bytes: Vec<u8> = (0..*size).map(|_| rng.u8(..)).collect();
        std::fs::write(dir.path().join(format!("obj-{i:02}-{size}")), bytes).unwrap();
    }
    c.a.upload_dir(dir.path(), &format!("bkt-a/{prefix}")).unwrap();
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON object on stdout")
}

/// Files left anywhere under `dir` (stage files, not the directories or locks).
fn stage_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

const LARGE: [&str; 4] = ["--multipart-cutoff", "8MiB", "--part-size", "5MiB"];

#[test]
fn a_forced_stage_relay_is_byte_exact_on_both_drivers_and_leaves_the_stage_empty() {
    let Some(c) = clouds() else { return };
    // Block and chunk boundaries small, and large objects with aligned and unaligned tails.
    load(&c, "sizes", &[0, 1, 4095, 4096, 4097, 12 * MIB + 1, 10 * MIB, 15 * MIB - 4095]);
    for driver in ["io_uring", "epoll"] {
        let stage = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let dst = format!("b:bkt-b/{driver}");
        let mut args = vec!["relay", "a:bkt-a/sizes", &dst, "--json", "--route", "stage", "--driver", driver];
        let stage_dir = stage.path().to_str().unwrap();
        args.extend(["--stage-dir", stage_dir]);
        args.extend(LARGE);
        let out = c.laminar(&args);
        assert_eq!(out.status.code(), Some(0));
        let report = json(&out);
        assert_eq!(report["routes"]["stage"], 3, "{report}");
        assert_eq!(report["routes"]["ram"], 5, "{report}");
        let decision = report["route_decisions"].as_array().unwrap().iter().find(|d| d["route"] == "stage").unwrap();
        assert_eq!(decision["reason"], "--route stage");
        c.b.rclone_check_download(&c.a, "bkt-a/sizes", &format!("bkt-b/{driver}")).unwrap();
        assert!(stage_files(stage.path()).is_empty(), "stage left files: {:?}", stage_files(stage.path()));
    }
}

#[test]
fn a_slow_destination_makes_auto_spill_and_every_byte_arrives() {
    let Some(c) = clouds() else { return };
    load(&c, "slow", &[10 * MIB; 8]);
    // The destination through a proxy that takes 24 MiB/s: the source is far faster.
    let proxy = Proxy::start(c.b.addr(), Fault::PaceRequests { bytes_per_second: 24 << 20 });
    let text = std::fs::read_to_string(c.config.path()).unwrap()
        + "\n"
        + &c.b.remote_toml("slow").replace(&c.b.endpoint, &format!("http://{}", proxy.addr()));
    std::fs::write(c.config.path(), text).unwrap();
    let stage = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let relay = |prefix: &str, spill_wait: &[&str]| {
        let dst = format!("slow:bkt-b/{prefix}");
        let mut args = vec!["relay", "a:bkt-a/slow", &dst, "--json", "--transfers", "1", "--part-streams", "2"];
        args.extend(["--stage-dir", stage.path().to_str().unwrap()]);
        args.extend(LARGE);
        args.extend(spill_wait);
        let out = c.laminar(&args);
        assert_eq!(out.status.code(), Some(0));
        json(&out)
    };
    // By default a part must keep the source idle for 5 s before spilling pays: a
    // 5 MiB part at this pace keeps it waiting well under a second, so every object
    // streams (the destination sets the pace either way).
    let report = relay("paced", &[]);
    assert_eq!(report["routes"]["stage"].as_u64().unwrap_or(0), 0, "spilled below --spill-wait: {report}");
    c.b.rclone_check_download(&c.a, "bkt-a/slow", "bkt-b/paced").unwrap();
    // With a short wait, the same destination makes auto spill.
    let report = relay("slow", &["--spill-wait", "20ms"]);
    let spilled = report["routes"]["stage"].as_u64().unwrap_or(0);
    assert!(spilled >= 1, "nothing spilled to the stage: {report}");
    // Each staged byte was read from the source and written to the stage once.
    let staged = report["stage_bytes_written"].as_u64().unwrap();
    assert!(staged > 0 && staged <= 80 * MIB as u64, "{staged} bytes staged for 80 MiB: {report}");
    let reasons: Vec<&str> =
        report["route_decisions"].as_array().unwrap().iter().filter_map(|d| d["reason"].as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("slower than the source")), "{reasons:?}");
    c.b.rclone_check_download(&c.a, "bkt-a/slow", "bkt-b/slow").unwrap();
    assert!(stage_files(stage.path()).is_empty());
}

#[test]
fn crash_leftovers_are_removed_and_the_quota_falls_back_to_ram() {
    let Some(c) = clouds() else { return };
    load(&c, "quota", &[12 * MIB, 12 * MIB]);
    let stage = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    // What a crashed run leaves: its run directory and a lock no process holds.
    let dead = stage.path().join("run-999999999");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("obj-0"), vec![1u8; 8192]).unwrap();
    std::fs::write(stage.path().join("run-999999999.lock"), b"").unwrap();
    // A quota smaller than one object: both stream RAM to RAM, with one warning.
    let mut args = vec!["relay", "a:bkt-a/quota", "b:bkt-b/quota", "--json", "--route", "stage", "--stage-max", "8MiB"];
    args.extend(["--stage-dir", stage.path().to_str().unwrap()]);
    args.extend(LARGE);
    let out = c.laminar(&args);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("removed 1 stage file"), "{stderr}");
    assert!(!dead.exists());
    assert_eq!(stderr.matches("stage quota").count(), 1, "one warning: {stderr}");
    let report = json(&out);
    assert_eq!(report["routes"]["stream"], 2, "{report}");
    assert!(report["route_decisions"][0]["reason"].as_str().unwrap().contains("quota is full"));
    c.b.rclone_check_download(&c.a, "bkt-a/quota", "bkt-b/quota").unwrap();
    assert!(stage_files(stage.path()).is_empty());
}

#[test]
fn large_objects_open_a_few_at_a_time_and_take_the_stage_in_turn() {
    let Some(c) = clouds() else { return };
    load(&c, "turns", &[10 * MIB; 6]);
    let stage = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    // Two part streams keep two large objects open at once, and the quota holds two:
    // each object waits for its turn and gets the stage, none falls back to RAM.
    let mut args = vec!["relay", "a:bkt-a/turns", "b:bkt-b/turns", "--json", "--route", "stage"];
    args.extend(["--stage-max", "20MiB", "--part-streams", "2", "--workers", "2"]);
    args.extend(["--stage-dir", stage.path().to_str().unwrap()]);
    args.extend(LARGE);
    let out = c.laminar(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["routes"]["stage"], 6, "{report}");
    assert_eq!(report["stage_bytes_written"], 60 * MIB as u64, "{report}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("stage quota"), "a quota warning");
    c.b.rclone_check_download(&c.a, "bkt-a/turns", "bkt-b/turns").unwrap();
    assert!(stage_files(stage.path()).is_empty());
}

#[test]
fn a_stage_disk_that_fills_up_loses_nothing() {
    let Some(c) = clouds() else { return };
    // Loop mounts need root and a loop device.
    let Some(disk) = SmallDisk::make_or_skip("the disk-full test") else { return };
    load(&c, "full", &[20 * MIB; 4]);
    // The operator allows far more than the disk holds: writes hit ENOSPC.
    let mut args = vec!["relay", "a:bkt-a/full", "b:bkt-b/full", "--json", "--route", "stage", "--stage-max", "1GiB"];
    args.extend(["--stage-dir", disk.path().to_str().unwrap(), "--part-streams", "8"]);
    args.extend(LARGE);
    let out = c.laminar(&args);
    assert_eq!(out.status.code(), Some(0));
    // Each object's stage file is allocated whole before any byte is read, so the
    // full disk shows there and that object streams RAM to RAM instead.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot make a stage file"), "the disk never filled: {stderr}");
    let report = json(&out);
    assert_eq!(report["objects_copied"], 4);
    assert!(report["routes"]["stage"].as_u64().unwrap_or(0) >= 1, "{report}");
    assert!(report["routes"]["stream"].as_u64().unwrap_or(0) >= 1, "{report}");
    c.b.rclone_check_download(&c.a, "bkt-a/full", "bkt-b/full").unwrap();
    assert!(stage_files(disk.path()).iter().all(|f| f.ends_with("lost+found")), "{:?}", stage_files(disk.path()));
}

#[test]
fn plan_shows_the_host_and_init_writes_a_config_it_never_overwrites() {
    let stage = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let dir = stage.path().to_str().unwrap();
    let out = Command::new(laminar_bin()).args(["plan", "--json", "--stage-dir", dir]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["workers"].as_u64().unwrap() >= 1);
    assert!(plan["ram_buffer_bytes"].as_u64().unwrap() > 0);
    assert_eq!(plan["stage"]["dir"], dir);
    assert!(plan["stage"]["quota_bytes"].as_u64().unwrap() > 0);
    // The temp dir is on ext4 here: O_DIRECT works and the plan says so.
    assert_eq!(plan["stage"]["o_direct"], plan["host"]["stage"]["o_direct"]);
    assert!(plan["host"]["memory"]["total_bytes"].as_u64().unwrap() > 0);
    let out = Command::new(laminar_bin()).args(["plan", "--stage-dir", dir, "--workers", "3"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("workers") && table.contains("3 (pinned to CPUs"), "{table}");
    // A size that is not one names the flag.
    let out = Command::new(laminar_bin()).args(["plan", "--stage-dir", dir, "--ram-buffer", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ram-buffer"));

    let target = tempfile::tempdir().unwrap();
    let out = Command::new(laminar_bin())
        .args(["init", target.path().to_str().unwrap(), "--stage-dir", dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(target.path().join("laminar.toml")).unwrap();
    for needle in ["[remotes.src]", "type = \"s3\"", "type = \"file\"", "--ram-buffer", "--stage-dir"] {
        assert!(written.contains(needle), "{needle} missing:\n{written}");
    }
    // The written config is valid: `laminar ls` reads it (and fails only on the URL).
    let out = Command::new(laminar_bin())
        .arg("--config")
        .arg(target.path().join("laminar.toml"))
        .args(["ls", "nope:x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown remote \"nope\"") && err.contains("defines disk, dst, src"), "{err}");
    let out = Command::new(laminar_bin())
        .args(["init", target.path().to_str().unwrap(), "--stage-dir", dir])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read_to_string(target.path().join("laminar.toml")).unwrap(), written);
}
