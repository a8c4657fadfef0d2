#!/usr/bin/env bash
# The whole test suite: formatting, lints (host and guest target), host unit tests,
# front-against-back tests, and whole-system tests that boot the real guest image
# under host-shim (when /dev/kvm exists) and under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last of
# which is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^SKIPPED:/ { s++ }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
