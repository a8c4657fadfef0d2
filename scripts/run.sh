#!/usr/bin/env bash
# The product's main job: build the guest image and host-shim, boot the guest under
# host-shim (when /dev/kvm exists) and in QEMU (-M microvm, -M pc), show its console.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo xtask demo
