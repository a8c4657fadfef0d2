#!/usr/bin/env bash
# Installs what building and testing need, on a fresh Debian 12 machine of this
# project's kind. Idempotent and quick when everything is already there.
#   - QEMU 10 (qemu-system-x86) from bookworm-backports: Debian 12's QEMU 7.2 loses
#     nested interrupt wake-ups (about once per 1,000 round trips, and it can freeze
#     the L1; QEMU 10 showed none in 84,000); one QEMU version only, since QEMU refuses
#     module files of another build.
#   - the Rust toolchain pinned by rust-toolchain.toml, with the x86_64-unknown-none
#     target (the guest), the x86_64-unknown-linux-musl target (a static host-shim for
#     scripts/shim-in-qemu.sh; it links with Rust's own musl, no musl-tools), rustfmt
#     and clippy.
#   - zstd, to unpack the Debian kernel that scripts/shim-in-qemu.sh boots as its L1;
#     binutils (readelf) for scripts/xen-in-qemu.sh; iputils-ping, with which the PV
#     network tests ping the guest through a TAP; shellcheck, which the test command
#     runs over every script; iperf3 and fio, the real clients of the I/O benchmark.
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

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v readelf >/dev/null || missing+=(binutils)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v fio >/dev/null || missing+=(fio)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    say "cargo not found: install rustup (https://rustup.rs), then rerun"
    exit 1
fi
# rust-toolchain.toml names the channel, target and components; `rustup show` installs
# whatever of it is missing.
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
for t in x86_64-unknown-none x86_64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done
say "ok: $(qemu-system-x86_64 --version | head -1); $(rustc --version)"
