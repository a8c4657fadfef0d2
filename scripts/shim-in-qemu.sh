#!/usr/bin/env bash
# Boots the guest under host-shim inside a QEMU TCG virtual machine, for hosts whose own
# KVM is missing or unusable (e.g. kvm-pvm, whose instruction emulator runs guest ring-0
# code 500-1000x slower than native and cannot boot a stock Linux at all).
#
#   scripts/shim-in-qemu.sh [OPTIONS] [-- HOST-SHIM-RUN-ARGS...]
#   scripts/shim-in-qemu.sh --bench [OPTIONS] [-- HOST-SHIM-BENCH-ARGS...] >bench.json
#
# QEMU emulates an AMD CPU with SVM (-cpu EPYC); inside it a small Linux ("L1", Debian's
# bookworm-backports 6.12 kernel + busybox-static, all from Debian packages) loads
# kvm_amd and runs a static (musl) build of `host-shim run --kernel GUEST ARGS...`.
# The guest console streams to stdout, host-shim's stderr to stderr, and this script
# exits with host-shim's status (the guest's own status, 124 timeout, 125 shim error,
# 126 guest crash). The runner's own errors are one line on stderr,
# `shim-in-qemu: error: ...`, and exit 125; its --timeout expiring exits 124.
#
# Options (before `--`):
#   --kernel FILE     guest ELF (default: build the project's guest image)
#   --shim FILE       a static host-shim (default: $SHIM_IN_QEMU_SHIM, else build it
#                     for x86_64-unknown-linux-musl)
#   --file PATH       copy PATH into the L1 at the same absolute path, so that host-shim
#                     arguments can name it unchanged (repeatable; e.g. a --disk image).
#                     The copy lives in L1 RAM (see --l1-mem); writes stay in the L1.
#   --l1-pre FILE     sh script run in the L1 before host-shim starts (e.g. `tunctl -t
#                     tap0; ip link set tap0 up`); a non-zero exit stops the run (125)
#   --l1-script FILE  sh script run in the L1 alongside host-shim once it has started
#                     (e.g. a ping or nc client); killed if still running when
#                     host-shim ends; its status is reported on stderr
#   --l1-post FILE    sh script run in the L1 after host-shim ends (e.g. to check the
#                     --file disk image the guest wrote); its output goes to stderr, and
#                     its non-zero status is reported there
#   --timeout SECS    bound on the whole run, L1 boot included (default 600)
#   --l1-mem MIB      L1 memory (default 1024)
#   --l1-cpu MODEL    QEMU CPU model for the L1 (default EPYC minus what TCG lacks;
#                     it must offer SVM)
#   --l1-append STR   more L1 kernel parameters (e.g. loglevel=7 with -v)
#   --qemu PATH       QEMU binary (default qemu-system-x86_64, QEMU 10 recommended)
#   --bench           run `host-shim bench` in the L1 instead of `host-shim run` (the
#                     I/O benchmark's second place): this host's iperf3 and ping, with
#                     the shared libraries they load, go into the L1; the report
#                     (bench.json) comes out on stdout, the progress on stderr. No
#                     host fio baseline there (--no-host-fio: Debian's fio needs 80 MB
#                     of libraries); give no --out or --json
#   -v, --verbose     progress messages and the L1 kernel log on stderr
# Inside the L1: busybox (ip, tunctl, ping, nc, ...), /dev/net/tun (tun loaded), and
# `l1-modprobe bridge|veth` for more.
#
# Cached between runs (no temporary files are left): the Debian packages in
# $DEB_CACHE (scripts/lib/debian.sh) and the L1 kernel + base initramfs in
# ${XDG_CACHE_HOME:-~/.cache}/pvh-xen/shim-in-qemu/<key>, keyed by the package files
# and the L1 scripts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prog="shim-in-qemu"
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

usage() {
    sed -n '/^#   scripts\/shim-in-qemu.sh/,/^# `l1-modprobe/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
}

# shellcheck source=scripts/lib/l1.sh
. "$here/lib/l1.sh"
l1_cpu=$L1_CPU_DEFAULT
shim=${SHIM_IN_QEMU_SHIM:-}
kernel='' pre='' script='' post='' timeout=600 l1_mem=1024 qemu=qemu-system-x86_64 verbose='' l1_append='' bench=''
files=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --kernel) need_value "$@"; kernel=$2; shift 2 ;;
        --shim) need_value "$@"; shim=$2; shift 2 ;;
        --file) need_value "$@"; files+=("$2"); shift 2 ;;
        --l1-pre) need_value "$@"; pre=$2; shift 2 ;;
        --l1-script) need_value "$@"; script=$2; shift 2 ;;
        --l1-post) need_value "$@"; post=$2; shift 2 ;;
        --timeout) need_value "$@"; timeout=$2; shift 2 ;;
        --l1-mem) need_value "$@"; l1_mem=$2; shift 2 ;;
        --l1-cpu) need_value "$@"; l1_cpu=$2; shift 2 ;;
        --qemu) need_value "$@"; qemu=$2; shift 2 ;;
        --l1-append) need_value "$@"; l1_append=$2; shift 2 ;;
        --bench) bench=1; shift ;;
        -v | --verbose) verbose=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        *) die "unknown option '$1' (host-shim's arguments go after '--'; --help for usage)" ;;
    esac
done
shim_args=("$@")

# ---- check the input before building or downloading anything
l1_check_settings
for a in "${shim_args[@]}"; do
    case $a in
        --kernel | --kernel=*) die "give the guest kernel as the runner's --kernel (before '--'), not as a host-shim argument" ;;
        --out | --out=* | --json)
            [ -z "$bench" ] || die "with --bench the report comes out on stdout: no $a" ;;
    esac
done
# The host clients the bench drives, from this host (scripts/setup.sh installs them).
bench_tools="iperf3 ping"
if [ -n "$bench" ]; then
    command -v iperf3 >/dev/null || die "iperf3 is not installed (Debian package iperf3; scripts/setup.sh installs it)"
    command -v ping >/dev/null || die "ping is not installed (Debian package iputils-ping; scripts/setup.sh installs it)"
    command -v ldd >/dev/null || die "ldd is not installed (Debian package libc-bin)"
fi
[ -z "$kernel" ] || kernel=$(l1_input_file "guest kernel" "$kernel")
[ -z "$shim" ] || shim=$(l1_input_file "host-shim binary" "$shim")
[ -z "$pre" ] || pre=$(l1_input_file "--l1-pre script" "$pre")
[ -z "$script" ] || script=$(l1_input_file "--l1-script script" "$script")
[ -z "$post" ] || post=$(l1_input_file "--l1-post script" "$post")
# Files keep their absolute paths in the L1; these are the L1's own.
not_shadowing() { # WHAT PATH
    case $2 in
        /bin/* | /sbin/* | /lib/* | /l1/* | /init | /dev/* | /proc/* | /sys/*)
            die "$1 '$2': its path would shadow the L1's own files (copy it elsewhere first)" ;;
    esac
}
[ -z "$kernel" ] || not_shadowing "guest kernel" "$kernel"
abs_files=()
for f in "${files[@]}"; do
    f=$(l1_input_file "--file" "$f")
    not_shadowing "--file" "$f"
    abs_files+=("$f")
done
check_qemu "$qemu"

l1_start

# ---- the guest and a static host-shim
cargo_build() { # WHAT ARGS...
    local what=$1
    shift
    say "building $what"
    (cd "$root" && cargo build --release --quiet "$@") >&2 || die "building $what failed"
}
if [ -z "$kernel" ]; then
    cargo_build "the guest image" -p guest-kernel --target x86_64-unknown-none
    kernel=$(cargo_target_dir)/x86_64-unknown-none/release/guest-kernel
fi
if [ -z "$shim" ]; then
    # The musl target links a static-pie binary with Rust's own musl and crt objects:
    # no musl-tools needed (no C dependencies).
    cargo_build "host-shim (static, musl)" -p host-shim --bin host-shim --target x86_64-unknown-linux-musl
    shim=$(cargo_target_dir)/x86_64-unknown-linux-musl/release/host-shim
fi

# ---- the L1 image: kernel + base initramfs, cached (scripts/lib/l1.sh)
l1_image

# ---- the per-run archive: host-shim, the guest, --file copies, hooks, arguments
stage=$tmp/run
mkdir -p "$stage/l1"
cp "$shim" "$stage/l1/host-shim"
chmod 755 "$stage/l1/host-shim"
for f in "$kernel" "${abs_files[@]}"; do
    mkdir -p "$stage$(dirname "$f")"
    cp "$f" "$stage$f"
done
[ -z "$pre" ] || install -m 755 "$pre" "$stage/l1/pre"
if [ -n "$bench" ]; then
    # Each client and the shared objects it loads (ldd's list, the loader included),
    # run through that loader with --library-path: the L1 has no libc of its own.
    mkdir -p "$stage/l1/clients/lib" "$stage/l1/bin"
    for t in $bench_tools; do
        bin=$(command -v "$t")
        libs=$(ldd "$bin" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
        [ -n "$libs" ] || die "ldd lists no shared library of $bin"
        for l in $libs; do cp -L "$l" "$stage/l1/clients/lib/"; done
        cp -L "$bin" "$stage/l1/clients/$t"
        printf '#!/bin/sh\nexec /l1/clients/lib/ld-linux-x86-64.so.2 --library-path /l1/clients/lib /l1/clients/%s "$@"\n' "$t" >"$stage/l1/bin/$t"
        chmod 755 "$stage/l1/bin/$t"
    done
    [ -f "$stage/l1/clients/lib/ld-linux-x86-64.so.2" ] || die "the clients' loader is not ld-linux-x86-64.so.2"
    # The program: host-shim bench, then its report on stdout.
    cat >"$stage/l1/main" <<'EOF'
#!/bin/sh
PATH=/l1/bin:$PATH
export PATH
/l1/host-shim bench "$@" --no-host-fio --out /l1/bench-out >&2
code=$?
[ -f /l1/bench-out/bench.json ] && cat /l1/bench-out/bench.json
exit "$code"
EOF
    chmod 755 "$stage/l1/main"
fi
[ -z "$script" ] || install -m 755 "$script" "$stage/l1/script"
[ -z "$post" ] || install -m 755 "$post" "$stage/l1/post"
# run.conf: `set -- --kernel GUEST ARGS...`, each argument single-quoted for sh.
{
    printf 'set --'
    for a in --kernel "$kernel" "${shim_args[@]}"; do printf ' %s' "$(quote "$a")"; done
    printf '\n'
} >"$stage/l1/run.conf"
l1_pack "$stage" "$tmp/run.cpio" || die "cannot pack the per-run archive"
# The kernel unpacks concatenated newc archives in turn: base, then this run's files.
cat "$L1_IMAGE/base.cpio" "$tmp/run.cpio" >"$tmp/initrd"
rm -f "$tmp/run.cpio"
rm -rf "$stage"

# ---- boot the L1; exits with host-shim's status
l1_boot "$tmp/initrd"
