//! The benchmarks in their tiny mode, so that none of them rots.

use laminar_bench::compare::{compare, table, CompareOptions};
use laminar_bench::servers::{find_tool, require_servers};

#[test]
fn compare_runs_in_tiny_mode() {
    if (find_tool("weed").is_none() || find_tool("rclone").is_none()) && !require_servers() {
        eprintln!("skipping: SeaweedFS or rclone not installed (tests/run.sh installs them)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let laminar = exe.parent().and_then(|d| d.parent()).unwrap().join("laminar");
    assert!(laminar.is_file(), "{} not found: run `cargo build --workspace --bins` first", laminar.display());
    let out = tempfile::tempdir().unwrap();
    let opts = CompareOptions {
        workload: "tiny".to_string(),
        runs: 1,
        laminar,
        out_dir: out.path().to_path_buf(),
        write_results: false,
    };
    let c = compare(&opts).expect("tiny comparison runs and every destination verifies");
    assert_eq!(c.runs.len(), 3);
    assert!(c.runs.iter().all(|r| r.wall_seconds > 0.0 && r.cpu_seconds >= 0.0));
    let md = table(&c);
    assert!(md.contains("| laminar |") && md.contains("rclone-tuned"), "{md}");
    assert!(out.path().join("compare-tiny.json").is_file());
}
