#!/usr/bin/env bash
# Boots the guest under QEMU's own Xen emulation (KVM_CAP_XEN_HVM: QEMU's emulated
# xenstore, event channels and grant tables, its xen-block and xen-net-device PV
# backends) as a second implementation of the Xen interface, next to real Xen
# (scripts/xen-in-qemu.sh) and host-shim. It needs a KVM with Xen emulation, so it runs
# inside the same L1 Linux VM as scripts/shim-in-qemu.sh (QEMU TCG, -cpu EPYC, Debian's
# bookworm-backports 6.12 kernel with kvm_amd, see scripts/lib/l1.sh); the L2 QEMU in
# there is Debian's bookworm-backports qemu-system-x86 10.x with the shared libraries it
# loads, all from Debian packages (scripts/lib/qemu-debs.sh).
#
#   scripts/qemu-xen-in-qemu.sh [OPTIONS]
#
# The L2 QEMU runs `-accel kvm,xen-version=0x4000a,kernel-irqchip=split -M pc -cpu host
# -m 64 -kernel GUEST -append CMDLINE` (see scripts/l1/qemu-xen). The guest console
# (COM1 and port 0xe9) streams to stdout, QEMU's messages to stderr, and this script
# exits with the guest's own status (isa-debug-exit at 0xf4, or 0 for
# SCHEDOP_shutdown(poweroff)); 126 if the guest ended without one (crash, triple
# fault). The runner's own errors are one line on stderr, `qemu-xen-in-qemu: error:
# ...`, and exit 125; its --timeout expiring exits 124.
#
# Options:
#   --kernel FILE     guest ELF (default: build the project's guest image)
#   --cmdline STR     the guest command line (QEMU -append; default empty)
#   --disk FILE       a PV disk (xen-disk vdev xvda, the guest's vbd 51712) backed by a
#                     copy of FILE in the L1's RAM (see --l1-mem): writes stay there
#   --net             a PV NIC (xen-net-device) on a TAP, tap0, in the L1, which has
#                     the address --l1-ip: an --l1-script there can reach the guest
#   --l1-ip CIDR      tap0's address in the L1 (default 10.0.0.1/24)
#   --l1-pre FILE     sh script run in the L1 before QEMU starts; a non-zero exit stops
#                     the run (125)
#   --l1-script FILE  sh script run in the L1 alongside QEMU (e.g. a ping or nc
#                     client); killed if still running when QEMU ends; its status is
#                     reported on stderr
#   --qemu-arg ARG    one more argument for the L2 QEMU (repeatable)
#   --timeout SECS    bound on the whole run, L1 boot included (default 600)
#   --l1-mem MIB      L1 memory (default 1024)
#   --l1-cpu MODEL    QEMU CPU model for the L1 (default EPYC minus what TCG lacks;
#                     it must offer SVM)
#   --l1-append STR   more L1 kernel parameters (e.g. loglevel=7 with -v)
#   --qemu PATH       the host's QEMU binary for the L1 (default qemu-system-x86_64, 10)
#   -v, --verbose     progress messages and the L1 kernel log on stderr
# Inside the L1: busybox (ip, tunctl, ping, nc, ...), /dev/net/tun, and
# `l1-modprobe bridge|veth` for more.
#
# Cached between runs (no temporary files are left): the Debian packages in
# $DEB_CACHE (scripts/lib/debian.sh), the L1 kernel + base initramfs (shared with
# scripts/shim-in-qemu.sh) and the L1's QEMU tree in
# ${XDG_CACHE_HOME:-~/.cache}/pvh-xen/{shim-in-qemu,qemu-xen-in-qemu}/<key>, keyed by
# the package files and the scripts that build them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prog="qemu-xen-in-qemu"
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

usage() {
    sed -n '/^#   scripts\/qemu-xen-in-qemu.sh/,/^# `l1-modprobe/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
}

L1_WHAT="the guest's status"
L1_MAIN=QEMU
# shellcheck source=scripts/lib/l1.sh
. "$here/lib/l1.sh"
l1_cpu=$L1_CPU_DEFAULT
kernel='' cmdline='' disk='' net='' l1_ip=10.0.0.1/24 pre='' script=''
timeout=600 l1_mem=1024 qemu=qemu-system-x86_64 verbose='' l1_append=''
qemu_args=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --kernel) need_value "$@"; kernel=$2; shift 2 ;;
        --cmdline) [ "$#" -ge 2 ] || die "--cmdline needs a value"; cmdline=$2; shift 2 ;;
        --disk) need_value "$@"; disk=$2; shift 2 ;;
        --net) net=1; shift ;;
        --l1-ip) need_value "$@"; l1_ip=$2; shift 2 ;;
        --l1-pre) need_value "$@"; pre=$2; shift 2 ;;
        --l1-script) need_value "$@"; script=$2; shift 2 ;;
        --qemu-arg) [ "$#" -ge 2 ] || die "--qemu-arg needs a value"; qemu_args+=("$2"); shift 2 ;;
        --timeout) need_value "$@"; timeout=$2; shift 2 ;;
        --l1-mem) need_value "$@"; l1_mem=$2; shift 2 ;;
        --l1-cpu) need_value "$@"; l1_cpu=$2; shift 2 ;;
        --qemu) need_value "$@"; qemu=$2; shift 2 ;;
        --l1-append) need_value "$@"; l1_append=$2; shift 2 ;;
        -v | --verbose) verbose=1; shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (--help for usage)" ;;
    esac
done

# ---- check the input before building or downloading anything
l1_check_settings
if ! [[ $l1_ip =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]]; then
    die "--l1-ip '$l1_ip' is not an IPv4 address with a prefix length (e.g. 10.0.0.1/24)"
fi
[ -z "$kernel" ] || kernel=$(l1_input_file "guest kernel" "$kernel")
[ -z "$disk" ] || disk=$(l1_input_file "--disk" "$disk")
[ -z "$pre" ] || pre=$(l1_input_file "--l1-pre script" "$pre")
[ -z "$script" ] || script=$(l1_input_file "--l1-script script" "$script")
check_qemu "$qemu"
command -v readelf >/dev/null || die "readelf not found (binutils; scripts/setup.sh installs it)"

l1_start

# ---- the guest
if [ -z "$kernel" ]; then
    say "building the guest image"
    (cd "$root" && cargo build --release --quiet -p guest-kernel --target x86_64-unknown-none) >&2 ||
        die "building the guest image failed"
    kernel=$(cargo_target_dir)/x86_64-unknown-none/release/guest-kernel
fi

# ---- the L1 image (kernel + base initramfs) and the L1's QEMU, both cached
l1_image
# shellcheck source=scripts/lib/qemu-debs.sh
. "$here/lib/qemu-debs.sh"
qemu_debs_cpio

# ---- the per-run archive: the helper, the guest, the disk, hooks, QEMU's arguments
stage=$tmp/run
mkdir -p "$stage/l1"
install -m 755 "$here/l1/qemu-xen" "$stage/l1/main"
cp "$kernel" "$stage/l1/guest.elf"
args=(-kernel /l1/guest.elf -append "$cmdline")
if [ -n "$disk" ]; then
    cp "$disk" "$stage/l1/disk0.img"
    args+=(-drive "file=/l1/disk0.img,if=none,id=disk0,format=raw"
        -device "xen-disk,vdev=xvda,drive=disk0")
fi
{
    echo 'set -e'
    if [ -n "$net" ]; then
        # A persistent TAP that QEMU's tap backend opens by name.
        echo 'tunctl -t tap0 >/dev/null'
        printf "ip addr add '%s' dev tap0\n" "$l1_ip"
        echo 'ip link set tap0 up'
    fi
    [ -z "$pre" ] || printf '. /l1/user-pre\n'
} >"$stage/l1/pre"
if [ -n "$net" ]; then
    args+=(-netdev "tap,id=net0,ifname=tap0,script=no,downscript=no"
        -device "xen-net-device,netdev=net0")
fi
[ -z "$pre" ] || install -m 644 "$pre" "$stage/l1/user-pre"
[ -z "$script" ] || install -m 755 "$script" "$stage/l1/script"
args+=("${qemu_args[@]}")
# run.conf: `set -- QEMU-ARGS...`, each argument single-quoted for sh.
{
    printf 'L1_PROG=%s\n' "$prog"
    printf 'set --'
    for a in "${args[@]}"; do printf ' %s' "$(quote "$a")"; done
    printf '\n'
} >"$stage/l1/run.conf"
l1_pack "$stage" "$tmp/run.cpio" || die "cannot pack the per-run archive"
# The kernel unpacks concatenated newc archives in turn: base, QEMU, this run's files.
cat "$L1_IMAGE/base.cpio" "$QEMU_DEBS_CPIO" "$tmp/run.cpio" >"$tmp/initrd"
rm -f "$tmp/run.cpio"
rm -rf "$stage"

# ---- boot the L1; exits with the guest's status
l1_boot "$tmp/initrd"
