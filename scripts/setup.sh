#!/usr/bin/env bash
# Installs what building and testing need, on a fresh Debian 12 machine of this
# project's kind. Idempotent and quick when everything is already there.
#   - QEMU 10 (qemu-system-x86) from bookworm-backports: Debian 12's QEMU 7.2 loses
#     nested interrupt wake-ups (see shared/design/ENVIRONMENT.md); one QEMU version
#     only, since QEMU refuses module files of another build.
#   - the Rust toolchain pinned by rust-toolchain.toml, with the x86_64-unknown-none
#     target, rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo "$@"; else
            say "need root to run: $*"; exit 1; fi
    else "$@"; fi
}

qemu_major() {
    qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}

if [ "$(qemu_major || true)" != "10" ]; then
    say "installing qemu-system-x86 10 from bookworm-backports"
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        need_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -t bookworm-backports qemu-system-x86 >/dev/null
    [ "$(qemu_major)" = "10" ] || { say "QEMU 10 did not install"; exit 1; }
fi

if ! command -v cargo >/dev/null; then
    say "cargo not found: install rustup (https://rustup.rs), then rerun"
    exit 1
fi
# rust-toolchain.toml names the channel, target and components; `rustup show` installs
# whatever of it is missing.
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target list --installed | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none
say "ok: $(qemu-system-x86_64 --version | head -1); $(rustc --version)"
