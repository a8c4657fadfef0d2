#!/usr/bin/env bash
# Builds a stock Debian Linux guest for host-shim: the kernel that scripts/shim-in-qemu.sh
# boots as its L1 (bookworm-backports 6.12, `vmlinux` booted by its PVH note) and an
# initramfs with busybox-static, the kernel modules asked for (with their dependencies,
# uncompressed, in load order) and an init script of the caller's. Everything comes
# from Debian packages (scripts/lib/debian.sh, cached like the L1's).
#
#   scripts/linux-guest.sh --out DIR --init FILE [--module NAME]... [--add SRC:DEST]...
#
# Writes DIR/vmlinux and DIR/initrd (a newc archive: /init = FILE, /bin/busybox with
# its applets, /lib/modules/*.ko, /modules = the load order, one path per line relative
# to /lib/modules, and each --add SRC at DEST). The init script is busybox sh; it can
# load the modules with `while read -r m; do insmod "/lib/modules/$m"; done </modules`.
# Boot it with `host-shim run --no-xen --kernel DIR/vmlinux --initrd DIR/initrd
# --cmdline "console=ttyS0 ..."` (inside scripts/shim-in-qemu.sh on hosts whose KVM
# cannot run Linux, such as kvm-pvm).
#
# Errors are one line `linux-guest: error: ...` and exit status 125.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prog=linux-guest
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

usage() {
    sed -n '/^#   scripts\/linux-guest.sh/,/^# Errors/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
}

out='' init='' verbose=''
modules=() adds=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --out) need_value "$@"; out=$2; shift 2 ;;
        --init) need_value "$@"; init=$2; shift 2 ;;
        --module) need_value "$@"; modules+=("$2"); shift 2 ;;
        --add) need_value "$@"; adds+=("$2"); shift 2 ;;
        -v | --verbose) verbose=1; shift ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (--help for usage)" ;;
    esac
done
[ -n "$out" ] || die "--out DIR is required"
[ -n "$init" ] || die "--init FILE is required"
{ [ -f "$init" ] && [ -r "$init" ]; } || die "--init '$init' is not a readable file"
for a in "${adds[@]}"; do
    case $a in
        *:/*) [ -f "${a%%:*}" ] || die "--add '$a': '${a%%:*}' is not a file" ;;
        *) die "--add '$a': want SRC:/ABSOLUTE/DEST" ;;
    esac
done
for m in "${modules[@]}"; do
    [[ $m =~ ^[A-Za-z0-9_-]+$ ]] || die "--module '$m' is not a module name"
done
mkdir -p "$out" || die "cannot create --out '$out'"

# The L1's settings that l1.sh reads (its image builder only; nothing boots here).
qemu=qemu-system-x86_64 timeout=1 l1_mem=256 l1_cpu='' l1_append=''
# shellcheck source=scripts/lib/l1.sh
. "$here/lib/l1.sh"
l1_start
l1_image

say "unpacking $L1_KERNEL_PKG and busybox-static"
x=$tmp/x
root=$tmp/root
deb_extract "$x" "$L1_KERNEL_PKG" busybox-static || die "cannot unpack the guest's Debian packages"
kdir=$(find "$x/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit 2>/dev/null || true)
[ -n "$kdir" ] || die "$L1_KERNEL_PKG has no /lib/modules/VERSION"

mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib/modules}
cp "$x/bin/busybox" "$root/bin/busybox"
for a in $("$x/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
done
: >"$root/modules"
for m in "${modules[@]}"; do
    for f in $(l1_module_order "$kdir" "$m"); do
        grep -qxF "${f%.xz}" "$root/modules" && continue
        mkdir -p "$root/lib/modules/$(dirname "$f")"
        xz -dc "$kdir/$f" >"$root/lib/modules/${f%.xz}"
        echo "${f%.xz}" >>"$root/modules"
    done
done
install -m 755 "$init" "$root/init"
for a in "${adds[@]}"; do
    mkdir -p "$root$(dirname "${a#*:}")"
    cp "${a%%:*}" "$root${a#*:}"
done
l1_pack "$root" "$out/initrd" || die "cannot pack the initramfs"
cp "$L1_IMAGE/vmlinux" "$out/vmlinux"
say "wrote $out/vmlinux and $out/initrd ($(wc -l <"$root/modules") modules)"
