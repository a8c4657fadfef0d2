#!/usr/bin/env bash
# The whole test suite: formatting, lints (host and guest target, shell scripts), host
# unit tests, front-against-back and driver-against-model tests, and whole-system tests
# that boot the real guest image under host-shim (when /dev/kvm exists), under QEMU, on
# real Xen in QEMU and under host-shim or QEMU's Xen inside QEMU.
#
# The runners' caches (downloaded Debian packages, the L1 and dom0 images) start empty
# in every run, as on a fresh machine: XDG_CACHE_HOME is a new directory, removed at the
# end. PVH_TEST_CACHE=DIR reuses DIR instead (quicker when iterating; proves less).
set -euo pipefail
cd "$(dirname "$0")/.."
prog="test"
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh
./scripts/setup.sh

if [ -n "${PVH_TEST_CACHE:-}" ]; then
    mkdir -p "$PVH_TEST_CACHE"
    export XDG_CACHE_HOME=$PVH_TEST_CACHE
    echo "== runners' caches: reusing $XDG_CACHE_HOME (PVH_TEST_CACHE)"
    cache=
else
    cache=$(mktemp -d "${TMPDIR:-/tmp}/pvh-test-cache.XXXXXX")
    export XDG_CACHE_HOME=$cache
    unset DEB_CACHE XEN_IN_QEMU_CACHE SHIM_IN_QEMU_KERNEL_PKG SHIM_IN_QEMU_SHIM
    echo "== runners' caches: empty, in $cache (removed at the end)"
fi
log=$(mktemp)
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { rm -rf "$log" ${cache:+"$cache"}; }
trap cleanup EXIT

echo "== shellcheck"
shellcheck -x scripts/*.sh scripts/lib/*.sh scripts/l1/* scripts/xen/dom0-init scripts/xen/hotplug-* .ci/run

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== clippy (host)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== clippy (guest target)"
cargo clippy -p guest-kernel -p pvh-boot -p pv-drivers -p hw-devices --target x86_64-unknown-none \
    --release --quiet -- -D warnings
echo "== check (static host-shim for scripts/shim-in-qemu.sh)"
cargo check -p host-shim --release --target x86_64-unknown-linux-musl --quiet
if [ ! -e /dev/kvm ]; then
    echo "WARNING: /dev/kvm is absent: the tests that boot the guest under host-shim will SKIP" >&2
fi
echo "== cargo test"
start=$(date +%s)
status=0
cargo test --workspace --release 2>&1 | tee "$log" || status=$?
echo "== cargo test took $(($(date +%s) - start)) s"
# One closing line for the whole run (cargo prints one per test binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^SKIPPED:/ { s++ }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
