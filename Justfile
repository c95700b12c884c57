# Common tasks. `just --list` shows them.

# Relay a generated dataset through the engine, verify it, clean up.
demo:
    cargo run --release -- demo

# Everything CI runs: installs test servers, fmt, clippy, all tests.
test:
    tests/run.sh

# The benchmark suite: Laminar beside rclone (synthetic and SeaweedFS endpoints), the bare-relay
# limit, worker scaling and micro-benchmarks; results into bench/RESULTS.md.
bench runs="3":
    cargo build --release --workspace --bins
    for w in large mixed small pareto; do target/release/laminar-bench compare --endpoints synthetic --workload $w --runs {{runs}}; done
    target/release/laminar-bench limit --workload large --runs {{runs}}
    target/release/laminar-bench limit --workload mixed --runs {{runs}}
    target/release/laminar-bench scale --workers 1,2,4,8,16 --workloads large,small
    for w in mixed small; do target/release/laminar-bench compare --endpoints weed --workload $w --runs {{runs}}; done
    cargo bench -p laminar-bench --bench micro -- --write
    target/release/laminar-bench report

# Regenerate bench/RESULTS.md from the raw JSON.
report:
    cargo run --release -p laminar-bench -- report
