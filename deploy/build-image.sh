#!/usr/bin/env bash
# Builds the tunneld container image from already-built binaries, with no registry download: the
# image is FROM scratch and its root filesystem is assembled here (see deploy/Containerfile).
#
#   cargo build --release --bins && deploy/build-image.sh               # podman, localhost/tunneld:latest
#   deploy/build-image.sh --engine docker --tag tunneld:1.0              # Docker CE
#   deploy/build-image.sh --bin-dir target/debug --context-dir /tmp/ctx  # keep the context to look at
#
# Options:
#   --bin-dir DIR      where tunneld and tunnelctl are (default: target/release of this repository)
#   --engine NAME      podman (default when installed) or docker
#   --tag NAME         image name (default localhost/tunneld:latest)
#   --context-dir DIR  assemble the build context in DIR (must not exist) and keep it; default: a
#                      temporary directory, removed afterwards
#   --no-strip         keep the binaries' debug information (bigger image)
#   --rootfs-only      assemble the context and stop (no engine needed; implies keeping it)
#
# The engine runs with the caller's environment, so CONTAINERS_CONF / CONTAINERS_STORAGE_CONF (podman)
# or DOCKER_HOST (docker) choose where the image goes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$repo/target/release"
engine=""
tag="localhost/tunneld:latest"
context=""
strip_bins=1
rootfs_only=0
# The unprivileged user the daemon switches to (TUNNELD_USER in the Containerfile). A fixed id, so
# files on the host can be given to it; 65532 is unlikely to belong to a host account.
tunneld_id=65532

die() {
  echo "build-image.sh: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --engine) engine="${2:?--engine needs podman or docker}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    --context-dir) context="${2:?--context-dir needs a directory}"; shift 2 ;;
    --no-strip) strip_bins=0; shift ;;
    --rootfs-only) rootfs_only=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

for b in tunneld tunnelctl; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build it first (cargo build --release --bins)"
done
if [ "$rootfs_only" = 0 ]; then
  if [ -z "$engine" ]; then
    if command -v podman >/dev/null 2>&1; then engine=podman
    elif command -v docker >/dev/null 2>&1; then engine=docker
    else die "neither podman nor docker is installed"
    fi
  fi
  case "$engine" in podman | docker) ;; *) die "--engine must be podman or docker, not $engine" ;; esac
  command -v "$engine" >/dev/null 2>&1 || die "$engine is not installed"
fi

if [ -z "$context" ]; then
  if [ "$rootfs_only" = 1 ]; then die "--rootfs-only needs --context-dir"; fi
  context="$(mktemp -d "${TMPDIR:-/tmp}/tunneld-image.XXXXXX")"
  trap 'rm -rf "$context"' EXIT
else
  [ ! -e "$context" ] || die "--context-dir $context already exists"
  mkdir -p "$context"
fi
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/etc/tunneld" "$rootfs/var/lib/tunneld"

# The binaries.
for b in tunneld tunnelctl; do
  install -m 0755 "$bin_dir/$b" "$rootfs/usr/bin/$b"
  if [ "$strip_bins" = 1 ]; then
    strip --strip-debug "$rootfs/usr/bin/$b"
  fi
done

# Every shared library they load, at the path the loader finds it (symlinks resolved), and the
# loader itself at the path written in the binaries (PT_INTERP).
copy_libs() {
  local lib
  # ldd prints "libx.so => /path (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
  for lib in $(ldd "$1" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }'); do
    if [ ! -e "$rootfs$lib" ]; then
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    fi
  done
}
for b in tunneld tunnelctl; do
  ldd "$bin_dir/$b" >/dev/null 2>&1 || die "ldd $bin_dir/$b failed (is it a dynamically linked Linux binary?)"
  if ldd "$bin_dir/$b" | grep -q 'not found'; then
    die "$bin_dir/$b needs a library that is not installed: $(ldd "$bin_dir/$b" | grep 'not found' | tr -s ' \t' ' ')"
  fi
  copy_libs "$bin_dir/$b"
done

# Users: root, and the one the daemon switches to. No login shell exists in the image.
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/nonexistent
tunneld:x:$tunneld_id:$tunneld_id:tunnel-gateway daemon:/var/lib/tunneld:/nonexistent
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
tunneld:x:$tunneld_id:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
chmod 0755 "$rootfs/etc/tunneld" "$rootfs/var/lib/tunneld"

cp "$repo/deploy/Containerfile" "$context/Containerfile"
if [ "$rootfs_only" = 1 ]; then
  echo "build-image.sh: build context assembled in $context"
  exit 0
fi

version="$("$bin_dir/tunneld" --version | awk '{ print $2 }')"
echo "build-image.sh: building $tag (tunneld $version) with $engine from $bin_dir"
"$engine" build \
  --file "$context/Containerfile" \
  --tag "$tag" \
  --label "org.opencontainers.image.title=tunneld" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.description=tunnel-gateway VPN gateway daemon" \
  "$context"
size="$("$engine" image inspect --format '{{.Size}}' "$tag")"
echo "build-image.sh: built $tag, $size bytes"
