# Common tasks: each a thin call of a command the README documents. `just --list`
# shows them. (The README's two commands stay plain shell: `just` is not on a fresh
# machine.)

# Build the binaries (laminar and laminar-bench), release mode.
build:
    cargo build --release --workspace --bins

# Everything CI runs: installs test servers, fmt, clippy, all tests.
test:
    tests/run.sh

# Relay a generated dataset through the engine, verify it, clean up.
demo:
    cargo run --release -- demo

# Run the appliance with a local config (default ./laminar.toml; `laminar init` writes one).
up config="laminar.toml" listen="127.0.0.1:7070":
    cargo run --release -- --config {{config}} serve --listen {{listen}}

# Check this host's network and kernel settings for a relay appliance.
tune bandwidth="10Gbit" rtt="50ms":
    cargo run --release -- tune check --bandwidth {{bandwidth}} --rtt {{rtt}}

# The benchmark suite: Laminar beside rclone (synthetic and SeaweedFS endpoints), the bare-relay
# limit, worker scaling, the stage beside fio and micro-benchmarks; results into bench/RESULTS.md.
bench runs="3":
    cargo build --release --workspace --bins
    for w in large mixed small pareto; do target/release/laminar-bench compare --endpoints synthetic --workload $w --runs {{runs}}; done
    target/release/laminar-bench limit --workload large --runs {{runs}}
    target/release/laminar-bench limit --workload mixed --runs {{runs}}
    target/release/laminar-bench scale --workers 1,2,4,8,16 --workloads large,small
    for w in mixed small; do target/release/laminar-bench compare --endpoints weed --workload $w --runs {{runs}}; done
    target/release/laminar-bench limit --endpoints weed --workload mixed --runs {{runs}}
    target/release/laminar-bench limit --endpoints weed --workload small --runs {{runs}} --connections 256
    target/release/laminar-bench stage --runs {{runs}}
    cargo bench -p laminar-bench --bench micro -- --write
    target/release/laminar-bench report

# Regenerate bench/RESULTS.md from the raw JSON.
report:
    cargo run --release -p laminar-bench -- report

# Build the container image from the local binary, with no registry (see containers/README.md).
image tag="laminar:local": build
    rm -rf target/image-context
    containers/stage-rootfs.sh target/image-context target/release/laminar
    podman build --runtime runc -f containers/Containerfile.local -t {{tag}} target/image-context
