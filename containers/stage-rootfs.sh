#!/usr/bin/env bash
# Stages a build context for containers/Containerfile.local: an already-built
# `laminar` binary and the shared libraries it loads, laid out as a root file system,
# so that an image can be built with no registry and no network.
#
# Usage:
#   containers/stage-rootfs.sh CONTEXT_DIR [BINARY]
#   podman build -f containers/Containerfile.local -t laminar:local CONTEXT_DIR
#
#   CONTEXT_DIR  created if missing; CONTEXT_DIR/rootfs and CONTEXT_DIR/data must not
#                exist yet (a stale rootfs could carry libraries from another build).
#   BINARY       default: target/release/laminar of this checkout.
#
# What the context holds afterwards (the Containerfile copies rootfs/ to / owned by
# root, and data/ to /var/lib/laminar owned by laminar):
#   rootfs/usr/local/bin/laminar   the binary
#   rootfs/lib/..., rootfs/lib64/  every library `ldd` lists, at the path the dynamic
#                                  loader asks for (symlinks resolved into plain files)
#   rootfs/etc/passwd, etc/group   root and laminar (uid/gid 10001, as in Containerfile)
#   rootfs/tmp/                    mode 1777; `laminar demo` and tempfile need it
#   rootfs/var/lib/                so that only /var/lib/laminar is laminar's
#   data/stage/                    the stage inside the data directory
#
# A statically linked binary (ldd: "not a dynamic executable") gets no libraries.
# The libraries come from this host, so the image runs what this host runs: build
# the binary on the host whose glibc you want in the image.
set -euo pipefail
# The build copies modes as they are here: directories 0755 and files 0644 or 0755,
# whatever the caller's umask, so that the unprivileged user can read them.
umask 022

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
[[ $1 != -h && $1 != --help ]] || usage

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
context="$1"
binary="${2:-$repo_root/target/release/laminar}"
# The same ids as the reference image, so a data volume moves between the two.
laminar_uid=10001
laminar_gid=10001

if [[ ! -x $binary ]]; then
    echo "stage-rootfs: $binary is not an executable file; build it first: cargo build --release -p laminar-control" >&2
    exit 1
fi
command -v ldd >/dev/null || { echo "stage-rootfs: ldd not found (it comes with libc-bin / glibc)" >&2; exit 1; }

mkdir -p "$context"
rootfs="$context/rootfs"
data="$context/data"
for dir in "$rootfs" "$data"; do
    if [[ -e $dir ]]; then
        echo "stage-rootfs: $dir already exists; remove it first (rm -rf '$dir')" >&2
        exit 1
    fi
done
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib" "$data/stage"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/local/bin/laminar"

# ldd prints "name => /path (addr)", "/path (addr)" for the loader, and
# "linux-vdso.so.1 (addr)" for the kernel's vDSO, which has no file.
if ! ldd_out="$(LC_ALL=C ldd "$binary" 2>&1)"; then
    if grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
        ldd_out=""
    else
        echo "stage-rootfs: ldd $binary failed:" >&2
        echo "$ldd_out" >&2
        exit 1
    fi
fi
libs=0
while read -r line; do
    if grep -q 'not found' <<<"$line"; then
        echo "stage-rootfs: ldd cannot resolve a library of $binary: $line" >&2
        exit 1
    fi
    path=""
    if [[ $line =~ =\>\ (/[^ ]+) ]]; then
        path="${BASH_REMATCH[1]}"
    elif [[ $line =~ ^(/[^ ]+)\  ]]; then
        path="${BASH_REMATCH[1]}"
    fi
    [[ -n $path ]] || continue
    # Keep the path the loader asks for (on merged-/usr hosts /lib is a link to
    # usr/lib; the image has real directories), but copy the file it points at.
    mkdir -p "$rootfs$(dirname "$path")"
    cp -L "$path" "$rootfs$path"
    libs=$((libs + 1))
done <<<"$ldd_out"

# Names for `ps` and `id` inside the container; the image runs by number either way.
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
laminar:x:$laminar_uid:$laminar_gid:Laminar relay:/var/lib/laminar:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
laminar:x:$laminar_gid:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"

echo "stage-rootfs: staged $binary and $libs libraries in $context"
