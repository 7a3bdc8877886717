#!/usr/bin/env bash
# The test command (see README): installs what the tests need, builds every binary, then runs all
# tests -- the unit tests of every crate, and the end-to-end tests (real tunneld, real openconnect,
# real TUN devices, in network namespaces the tests create and remove). Exits non-zero if any test
# fails. The end-to-end tests need root and /dev/net/tun; without them they FAIL, they never skip.
#
# Environment:
#   E2E_THREADS   parallel end-to-end tests (default 1: timing-sensitive tests on a 2-core machine)
#   E2E_RUST_LOG  RUST_LOG for the tunneld under test (default "info")
#   E2E_KEEP=1    keep each test's temp dir (configs, daemon and client logs, script env records)
#   SKIP_INSTALL=1  do not apt-get install anything
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages and a program each one provides (the check that says it is present).
packages=(
  "openconnect:openconnect"
  "iperf3:iperf3"
  "nftables:nft"
  "iproute2:ip"
  "iputils-ping:ping"
  "curl:curl"
  "openssl:openssl"
  "python3:python3"
  "procps:sysctl"
  "prometheus:promtool"
  "util-linux:setpriv"
  "podman:podman"
  "runc:runc"
  "shellcheck:shellcheck"
  "systemd:systemd-analyze"
)

install_missing() {
  local missing=() entry pkg prog
  for entry in "${packages[@]}"; do
    pkg="${entry%%:*}"
    prog="${entry#*:}"
    command -v "$prog" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "test.sh: all test dependencies present"
    return 0
  fi
  if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    echo "test.sh: missing ${missing[*]} and SKIP_INSTALL=1; the tests that need them will fail" >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing ${missing[*]}; run as root so they can be installed" >&2
    return 1
  fi
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_missing

echo "test.sh: building all binaries (tunneld and tunnelctl are what the end-to-end tests run)"
cargo build --workspace --bins

# Both phases always run, so a failing unit test does not hide the end-to-end results; the exit
# status is non-zero if either failed.
status=0

echo "test.sh: unit and integration tests of the crates"
cargo test --no-fail-fast --workspace --exclude e2e || status=1

echo "test.sh: end-to-end tests (network namespaces, openconnect, TUN)"
# anyhow errors of failed e2e tests carry the daemon/client log; skip their stack backtraces.
RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}" cargo test --no-fail-fast -p e2e -- --test-threads="${E2E_THREADS:-1}" || status=1

if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (see the test output above)" >&2
fi
exit "$status"
