//! The benchmarks in their tiny mode, so that none of them rots. No timing is checked:
//! each benchmark must run, verify every destination, and write its raw JSON, and the
//! report must render from that JSON.

use laminar_bench::compare::{compare, CompareOptions};
use laminar_bench::limit::{limit, limit_tools, LimitOptions};
use laminar_bench::pair::Endpoints;
use laminar_bench::report;
use laminar_bench::scale::{scale, ScaleOptions};
use laminar_bench::servers::{find_tool, require_servers};

fn release_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(path.is_file(), "{} not found: run `cargo build --release --workspace --bins` first", path.display());
    path
}

fn tools_or_skip(names: &[&str]) -> bool {
    let missing: Vec<_> = names.iter().filter(|n| find_tool(n).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(!require_servers(), "{missing:?} not installed but LAMINAR_REQUIRE_SERVERS is set");
    eprintln!("skipping: {missing:?} not installed (tests/run.sh installs them)");
    false
}

fn compare_tiny(endpoints: Endpoints, out: &std::path::Path) {
    let opts = CompareOptions {
        workload: "tiny".to_string(),
        endpoints,
        runs: 1,
        laminar: release_binary("laminar"),
        out_dir: out.to_path_buf(),
    };
    let c = compare(&opts).expect("tiny comparison runs and every destination verifies");
    assert_eq!(c.runs.len(), 3);
    assert!(c.runs.iter().all(|r| r.wall_seconds > 0.0 && r.cpu_seconds >= 0.0));
    let lam = c.runs.iter().find(|r| r.tool == "laminar").unwrap();
    assert!(lam.ram_buffer_bytes.is_some_and(|b| b > 0), "laminar's --json report gives its RAM tier");
    assert!(c.runs.iter().all(|r| r.server_cpu_seconds.is_some()), "each run measures the servers' CPU");
    let md = report::table(&c);
    assert!(md.contains("| laminar |") && md.contains("rclone-tuned"), "{md}");
    assert!(out.join(format!("compare-{}-tiny.json", endpoints.name())).is_file());
}

#[test]
fn compare_runs_in_tiny_mode_on_seaweedfs() {
    if !tools_or_skip(&["weed", "rclone"]) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    compare_tiny(Endpoints::Weed, out.path());
}

#[test]
fn limit_runs_in_tiny_mode_on_seaweedfs_with_signed_requests() {
    if !tools_or_skip(&["weed", "rclone"]) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let l = limit(&LimitOptions {
        workload: "tiny".into(),
        endpoints: Endpoints::Weed,
        runs: 1,
        connections: 2,
        laminar: release_binary("laminar"),
        bench: release_binary("laminar-bench"),
        out_dir: out.path().to_path_buf(),
    })
    .expect("the bare relay signs its requests, and every tool's copy verifies");
    let tools: Vec<&str> = l.runs.iter().map(|r| r.tool.as_str()).collect();
    assert_eq!(tools, limit_tools(Endpoints::Weed));
    assert!(tools.contains(&"rclone-tuned"), "rclone runs beside the bare relay on SeaweedFS");
    assert!(l.runs.iter().all(|r| r.server_cpu_seconds.is_some_and(|s| s > 0.0)), "{:?}", l.runs);
    assert!(out.path().join("limit-weed-tiny.json").is_file());
}

#[test]
fn compare_limit_scale_and_report_run_in_tiny_mode_on_synthetic_endpoints() {
    if !tools_or_skip(&["rclone"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    compare_tiny(Endpoints::Synthetic, &out);

    let l = limit(&LimitOptions {
        workload: "tiny".into(),
        endpoints: Endpoints::Synthetic,
        runs: 1,
        connections: 4,
        laminar: release_binary("laminar"),
        bench: release_binary("laminar-bench"),
        out_dir: out.clone(),
    })
    .expect("the bare relay and Laminar run and verify");
    let tools: Vec<&str> = l.runs.iter().map(|r| r.tool.as_str()).collect();
    assert_eq!(tools, limit_tools(Endpoints::Synthetic));

    let s = scale(&ScaleOptions {
        workloads: vec!["tiny".into()],
        workers: vec![1, 2],
        laminar: release_binary("laminar"),
        out_dir: out.clone(),
    })
    .expect("scale runs at each worker count");
    assert_eq!(s.points.iter().map(|p| p.workers).collect::<Vec<_>>(), [1, 2]);

    let md_path = report::write(&out).expect("the report renders from the raw JSON");
    let md = std::fs::read_to_string(md_path).unwrap();
    for needle in ["## Targets", "`tiny` on synthetic endpoints", "## The limit", "## Scaling with workers"] {
        assert!(md.contains(needle), "RESULTS.md lacks {needle:?}:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("laminar"), "{svg:.200}");
}

#[test]
fn micro_benchmarks_run_in_tiny_mode() {
    use laminar_bench::micro::{run, table, Mode};

    let results = run(Mode::Tiny);
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    for expected in ["crc32c", "Hasher sha256", "crc32c_combine", "pool acquire", "parse GET", "parse PUT", "SigV4"] {
        assert!(names.iter().any(|n| n.contains(expected)), "no {expected:?} benchmark in {names:?}");
    }
    for r in &results {
        assert!(r.iterations > 0, "{} ran no iterations", r.name);
        assert!(r.seconds >= 0.0 && r.ns_per_op.is_finite(), "{r:?}");
        assert!(r.bytes_per_second.is_none_or(|b| b.is_finite()), "{r:?}");
    }
    let again = run(Mode::Tiny);
    let checksums = |rs: &[laminar_bench::micro::MicroResult]| rs.iter().map(|r| r.checksum).collect::<Vec<_>>();
    assert_eq!(checksums(&results), checksums(&again), "each benchmark computes the same in every run");
    let md = table(&results);
    assert_eq!(md.lines().count(), results.len() + 2, "{md}");
}

#[test]
fn the_stage_benchmark_runs_in_tiny_mode_beside_fio() {
    if !tools_or_skip(&["fio"]) {
        return;
    }
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let opts = laminar_bench::stage::StageBenchOptions {
        dir: dir.path().join("stage"),
        size_bytes: 8 << 20,
        block_bytes: 1 << 20,
        depth: 2,
        runs: 1,
        laminar: release_binary("laminar"),
        out_dir: None,
    };
    let report = laminar_bench::stage::run(&opts).unwrap();
    assert_eq!(report.runs.len(), 4, "laminar and fio, write and read");
    assert!(report.runs.iter().all(|r| r.bytes_per_second > 0.0), "{:?}", report.runs);
    // What was read back is what was written: the same pattern, so the same CRC every time.
    let again = laminar_bench::stage::run(&opts).unwrap();
    assert_eq!(report.checksum, again.checksum);
    assert!(laminar_bench::stage::section(&report).contains("| write |"));
}

#[test]
fn the_sort_benchmark_runs_in_tiny_mode() {
    use laminar_bench::sort::{run, summary, SortBenchOptions};

    let dir = tempfile::tempdir().unwrap();
    let opts = SortBenchOptions {
        keys: 20_000,
        memory_budget_bytes: 256 << 10, // `sort --keys 20000 --budget 256KiB`
        dir: dir.path().to_path_buf(),
        seed: 1,
        baseline: true,
    };
    let report = run(&opts).expect("the sorted listing is in order, whole, and the same as the input");
    assert_eq!(report.stats.entries, 20_000);
    assert!(report.stats.runs_spilled > 4 && report.stats.bytes_spilled > 0, "{:?}", report.stats);
    let baseline = report.baseline.as_ref().unwrap();
    assert_eq!(report.checksum, baseline.checksum, "the sorter and the in-memory sort agree");
    assert_eq!(run(&opts).unwrap().checksum, report.checksum, "the same listing from the same seed");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch directory is gone");
    let text = summary(&report);
    assert!(text.contains("runs spilled") && text.contains(&report.checksum), "{text}");
}

/// The cloud comparison in tiny mode, both ways, under the `real` profile (latency,
/// per-connection caps, Drive's create limit, Dropbox's commit limit, tokens expiring):
/// every tool's destination is checked by the emulator's own hash of every file, and the
/// section for RESULTS.md renders.
#[test]
fn cloud_compare_runs_in_tiny_mode_both_ways_under_the_real_profile() {
    use laminar_bench::cloud::compare::{cloud_compare, cloud_section, CloudOptions, Direction, CLOUD_TOOLS};
    if !tools_or_skip(&["rclone"]) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut done = Vec::new();
    for direction in [Direction::DropboxToDrive, Direction::DriveToDropbox] {
        let opts = CloudOptions {
            workload: "tiny".into(),
            scale: 1.0,
            objects: 1.0,
            profile: "real".into(),
            direction,
            runs: 1,
            laminar: release_binary("laminar"),
            out_dir: out.path().to_path_buf(),
        };
        let c = cloud_compare(&opts).expect("the tiny cloud comparison runs and every destination verifies");
        assert_eq!(c.runs.len(), CLOUD_TOOLS.len());
        assert!(c.runs.iter().all(|r| r.run.wall_seconds > 0.0 && r.requests > 0), "{:?}", c.runs);
        assert!(out.path().join(format!("cloud-real-{}-tiny.json", direction.name())).is_file());
        done.push(c);
    }
    let md = cloud_section(&done);
    assert!(
        md.contains("| laminar-direct |") && md.contains("drive-to-dropbox") && md.contains("Profile `real`"),
        "{md}"
    );
}

/// `laminar-bench chaos --tiny`: a relay killed at random points and resumed each time;
/// nothing lost, nothing corrupt, nothing committed sent again beyond the parts in
/// flight at the kills, and its section renders.
#[test]
fn the_chaos_benchmark_runs_in_tiny_mode() {
    use laminar_bench::chaos::{run, section, ChaosOptions};

    let out = tempfile::tempdir().unwrap();
    let opts = ChaosOptions {
        kills: 4,
        tiny: true,
        laminar: release_binary("laminar"),
        seed: 7,
        out_dir: Some(out.path().to_path_buf()),
    };
    let report = run(&opts).expect("the chaos run completes");
    eprintln!("{}", report.summary());
    assert!(report.kills > 0 && report.resumes == report.kills, "{report:?}");
    assert!(report.clean(), "{}: {report:?}", report.summary());
    assert!(out.path().join("chaos-tiny.json").is_file());
    assert!(section(&report).contains("kills") && section(&report).contains("0 corrupt"));
}
