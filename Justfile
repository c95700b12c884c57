# Common tasks. `just --list` shows them.

# Relay a generated dataset through the engine, verify it, clean up.
demo:
    cargo run --release -- demo

# Everything CI runs: installs test servers, fmt, clippy, all tests.
test:
    tests/run.sh

# Laminar beside rclone on two SeaweedFS servers (1,000 x 16 KiB + 4 x 256 MiB), results into bench/RESULTS.md.
bench runs="3":
    cargo build --release --workspace --bins
    target/release/laminar-bench compare --workload mixed --runs {{runs}} --write-results

# Regenerate bench/RESULTS.md from the raw JSON.
report:
    cargo run --release -p laminar-bench -- report
