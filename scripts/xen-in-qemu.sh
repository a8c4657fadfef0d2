#!/usr/bin/env bash
# Boots this project's guest as a PVH domU on real Xen, inside QEMU (TCG).
#
# From Debian packages only (Xen 4.17 hypervisor and tools, a Debian 6.1 Linux kernel
# as PV dom0, busybox-static) it builds a small dom0 boot image, cached under
# $XEN_IN_QEMU_CACHE (default ~/.cache/pvh-xen) and keyed by the exact .deb files and
# the dom0 files in scripts/xen/; boots Xen with that dom0 in QEMU; and in dom0 runs
# xenstored and xenconsoled and `xl create -F` of the guest (type "pvh"). The guest's
# console (port 0xe9, which Xen forwards as "(dN)" lines, and its PV console, which
# xenconsoled logs) is streamed to stdout; progress and errors go to stderr.
# The comments where each QEMU, Xen and dom0 setting is made say which failure it
# avoids (each was found by one).
#
# Exit status: the guest's own status (see README "Guest exit statuses"): 0 when xl
# reports a shutdown with reason poweroff; on a crash, the status the guest printed
# ("guest: exit status N"), else 126; 126 also for any other shutdown reason;
# 124 the guest ran past --timeout; 125 a runner error (bad input, download, build,
# QEMU, Xen or dom0 failure); 1 when the guest succeeded but --dom0-script failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
XEN_DIR="$ROOT/scripts/xen"
prog=xen-in-qemu
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
DEB_SAY_PREFIX=$prog
# shellcheck source=scripts/lib/debian.sh
. "$ROOT/scripts/lib/debian.sh"

usage() {
    cat <<'EOF'
usage: scripts/xen-in-qemu.sh [options]
  --kernel ELF         guest image (default: build target/x86_64-unknown-none/release/guest-kernel)
  --cmdline STR        guest command line (default: empty, the guest's defaults)
  --timeout SECS       time the guest may run, from `xl create` to its end (default 300)
  --mem MIB            guest memory (default 64)
  --disk FILE          attach FILE (raw image) as the guest's vbd xvda, read-write:
                       QEMU gives it to dom0 as a virtio disk, blkback exports it;
                       repeatable (up to 4: xvda, xvdb, ... from dom0's vda, vdb, ...)
  --net                give the guest a vif on bridge xenbr0 (dom0 is 10.0.0.1/24)
  --dom0-script FILE   run FILE (a busybox sh script) in dom0 once the domain exists;
                       it gets XENRUN_DOMID, XENRUN_NAME, XENRUN_DISK, XENRUN_NET
  --xl LINE            an extra line for the guest's xl config (repeatable; a later
                       setting overrides an earlier one), e.g. --xl 'cpus = "1"'
  --xen-args STR       extra Xen command-line options
  --verbose            copy the whole serial log (Xen, dom0) to stderr as it comes
  --keep               keep the run directory (serial log, initrd) and print its path
  -h, --help           this text
Environment: XEN_IN_QEMU_CACHE (dom0 image cache), DEB_CACHE (downloaded .debs).
EOF
}

# This runner always reports its progress (the others only with -v).
say() { echo "$prog: $*" >&2; }

kernel=
cmdline=
timeout=300
mem=64
disks=()
net=0
dom0_script=
xen_args=
xl_lines=()
verbose=0
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --kernel | --cmdline | --timeout | --mem | --disk | --dom0-script | --xen-args | --xl)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
        --kernel) kernel=$2 ;;
        --cmdline) cmdline=$2 ;;
        --timeout) timeout=$2 ;;
        --mem) mem=$2 ;;
        --disk) disks+=("$2") ;;
        --dom0-script) dom0_script=$2 ;;
        --xen-args) xen_args=$2 ;;
        --xl) xl_lines+=("$2") ;;
        esac
        shift 2
        ;;
    --net) net=1; shift ;;
    --verbose) verbose=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

# --- Check the input before anything is downloaded or built. ---
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "${#1}" -le 6 ]; }
{ is_uint "$timeout" && [ "$timeout" -ge 1 ]; } || die "--timeout wants whole seconds >= 1, not '$timeout'"
{ is_uint "$mem" && [ "$mem" -ge 16 ] && [ "$mem" -le 1024 ]; } ||
    die "--mem wants MiB in 16..1024 (dom0 leaves about 1.5 GiB), not '$mem'"
# The command line goes inside a double-quoted xl config string.
case "$cmdline" in
*'"'* | *\\* | *$'\n'*) die "--cmdline may not contain double quotes, backslashes or newlines" ;;
esac
[ "${#cmdline}" -le 1000 ] || die "--cmdline is longer than 1000 characters"
for line in "${xl_lines[@]}"; do
    case "$line" in *$'\n'*) die "--xl takes one line" ;; esac
done

check_kernel() {
    local k=$1 magic
    [ -e "$k" ] || die "guest kernel '$k' does not exist"
    [ -f "$k" ] || die "guest kernel '$k' is not a regular file"
    [ -r "$k" ] || die "guest kernel '$k' is not readable"
    magic=$(od -An -tx1 -N20 "$k" | tr -d ' \n')
    [ "${magic:0:8}" = 7f454c46 ] || die "guest kernel '$k' is not an ELF file"
    # ELF64 x86-64, or ELF32 for i386 or x86-64: Xen's loader takes both classes (the
    # PVH entry is 32-bit code either way).
    case "${magic:8:2}/${magic:36:4}" in
        02/3e00 | 01/0300 | 01/3e00) ;;
        01/* | 02/*) die "guest kernel '$k' is not an x86 ELF (e_machine ${magic:36:4})" ;;
        *) die "guest kernel '$k' is neither ELF32 nor ELF64" ;;
    esac
}
if [ -n "$kernel" ]; then
    check_kernel "$kernel"
    kernel=$(realpath "$kernel")
fi
[ "${#disks[@]}" -le 4 ] || die "at most 4 --disk images (xvda to xvdd)"
letters=(a b c d)
for i in "${!disks[@]}"; do
    disk=${disks[$i]}
    [ -f "$disk" ] || die "disk image '$disk' does not exist or is not a regular file"
    { [ -r "$disk" ] && [ -w "$disk" ]; } || die "disk image '$disk' must be readable and writable"
    disk=$(realpath "$disk")
    # QEMU's option syntax: a comma in a path would have to be doubled.
    case "$disk" in *,*) die "disk image path may not contain a comma: '$disk'" ;; esac
    disks[i]=$disk
done
# The guest's vbds (xvda, ...) and dom0's virtio disks behind them (/dev/vda, ...).
xl_disks=() dom0_disks=()
for i in "${!disks[@]}"; do
    xl_disks+=("\"format=raw, vdev=xvd${letters[$i]}, access=rw, script=block-xenrun, target=/dev/vd${letters[$i]}\"")
    dom0_disks+=("/dev/vd${letters[$i]}")
done
if [ -n "$dom0_script" ]; then
    { [ -f "$dom0_script" ] && [ -r "$dom0_script" ]; } || die "dom0 script '$dom0_script' is not a readable file"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run scripts/setup.sh"
for tool in apt-get dpkg-deb gzip sha256sum flock od realpath readelf timeout tail awk; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done

start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))s"; }

if [ -z "$kernel" ]; then
    say "building the guest (cargo build --release -p guest-kernel --target x86_64-unknown-none)"
    (cd "$ROOT" && cargo build --release --quiet -p guest-kernel --target x86_64-unknown-none) ||
        die "building the guest failed"
    kernel="$(cargo_target_dir)/x86_64-unknown-none/release/guest-kernel"
    check_kernel "$kernel"
fi

# --- The dom0 boot image (Xen, dom0 kernel, dom0 initramfs), built once per inputs. ---
CACHE=${XEN_IN_QEMU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvh-xen}
XEN_VERSION=4.17
# Bump when the way the image is assembled changes (the dom0 files are hashed anyway).
IMAGE_FORMAT=1
# Modules dom0 loads, dependencies added from each module's own `depends=`.
DOM0_MODULES=(xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback xen-netback
    bridge loop virtio_pci virtio_blk)
# Binaries from xen-utils / xenstore-utils that dom0 runs.
DOM0_XEN_BINS=(xl xenstored xenconsoled xen-init-dom0 xenconsole)

dom0_kernel_pkg() {
    # Debian's linux-image-amd64 names the current 6.1 ABI package of bookworm.
    local pkg
    pkg=$({ apt-cache depends linux-image-amd64 2>/dev/null || true; } | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        say "apt lists lack linux-image-amd64: running apt-get update"
        if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi ||
            die "apt-get update failed"
        pkg=$({ apt-cache depends linux-image-amd64 2>/dev/null || true; } | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || die "cannot tell which linux-image package linux-image-amd64 stands for"
    echo "$pkg"
}

# find_lib STAGE NAME: the path of shared library NAME inside the staging tree.
find_lib() {
    local d
    for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu "usr/lib/xen-$XEN_VERSION/lib/x86_64-linux-gnu" lib64; do
        if [ -e "$1/$d/$2" ]; then
            echo "$1/$d/$2"
            return 0
        fi
    done
    return 1
}

# copy_with_libs STAGE ROOT FILE...: copies the shared libraries FILEs need (transitively)
# into ROOT/lib/x86_64-linux-gnu.
copy_with_libs() {
    local stage=$1 root=$2 f lib path
    shift 2
    local queue=("$@")
    while [ ${#queue[@]} -gt 0 ]; do
        f=${queue[0]}
        queue=("${queue[@]:1}")
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$root/lib/x86_64-linux-gnu/$lib" ] && continue
            path=$(find_lib "$stage" "$lib") || die "dom0 image: no package provides $lib (needed by ${f#"$stage"/})"
            cp -L "$path" "$root/lib/x86_64-linux-gnu/$lib"
            queue+=("$root/lib/x86_64-linux-gnu/$lib")
        done
    done
}

# add_module STAGE ROOT KVER NAME: copies module NAME and its dependencies, appending
# them (dependencies first) to ROOT/etc/xenrun/modules.
add_module() {
    local stage=$1 root=$2 kver=$3 name=$4 alt file rel dep
    grep -qx "[^ ]*/$name.ko" "$root/etc/xenrun/modules" 2>/dev/null && return 0
    alt=$(echo "$name" | tr '_-' '-_')
    file=$(find "$stage/lib/modules/$kver/kernel" \( -name "$name.ko" -o -name "$name.ko.xz" \
        -o -name "$alt.ko" -o -name "$alt.ko.xz" \) -print -quit 2>/dev/null || true)
    [ -n "$file" ] || die "dom0 image: kernel $kver has no module $name"
    rel=${file#"$stage/lib/modules/"}
    # sed reads to the end (no `q`): quitting early would kill tr with SIGPIPE, which
    # pipefail and the ERR trap report as a failure.
    for dep in $(tr '\0' '\n' <"$file" | sed -n '/^depends=/{s///;p}' | tr ',' ' '); do
        add_module "$stage" "$root" "$kver" "$dep"
    done
    grep -qx "${rel%.xz}" "$root/etc/xenrun/modules" 2>/dev/null && return 0
    mkdir -p "$(dirname "$root/lib/modules/$rel")"
    case "$file" in
    *.xz) xz -dc "$file" >"$root/lib/modules/${rel%.xz}" ;;
    *) cp "$file" "$root/lib/modules/$rel" ;;
    esac
    echo "${rel%.xz}" >>"$root/etc/xenrun/modules"
}

build_dom0_image() {
    local out=$1 stage=$2 kpkg=$3
    shift 3
    local root="$stage.root" kver b
    say "building the dom0 image (Xen $XEN_VERSION, $kpkg, busybox) into $out"
    deb_extract "$stage" "$@" || die "cannot fetch or unpack the Debian packages"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc/xen/scripts,etc/xenrun} \
        "$root"/{proc,sys,dev,run,tmp,var,root,xenrun} "$root/usr/lib/xen-$XEN_VERSION/bin"

    # busybox-static provides the shell and every small tool.
    cp "$stage/bin/busybox" "$root/bin/busybox"
    for b in $("$stage/bin/busybox" --list); do
        [ "$b" = busybox ] || ln -s busybox "$root/bin/$b"
    done
    cp "$stage/bin/busybox" "$out/busybox" # the runner packs its per-run archive with it

    # The Xen tools (called by full path), xenstore clients, the loader, libraries.
    for b in "${DOM0_XEN_BINS[@]}"; do
        cp "$stage/usr/lib/xen-$XEN_VERSION/bin/$b" "$root/usr/lib/xen-$XEN_VERSION/bin/$b"
    done
    cp "$stage/usr/bin/xenstore" "$root/usr/bin/xenstore"
    for b in read write rm ls list exists chmod watch; do
        ln -s xenstore "$root/usr/bin/xenstore-$b"
    done
    cp -L "$stage/lib64/ld-linux-x86-64.so.2" "$root/lib64/ld-linux-x86-64.so.2"
    copy_with_libs "$stage" "$root" "$root/usr/lib/xen-$XEN_VERSION/bin/"* "$root/usr/bin/xenstore"
    # xl's threads need libgcc_s at exit (glibc dlopens it for pthread_cancel/unwinding).
    cp -L "$(find_lib "$stage" libgcc_s.so.1)" "$root/lib/x86_64-linux-gnu/"

    # Tools' configuration; the small hotplug scripts replace the stock ones.
    cat >"$root/etc/xen/xl.conf" <<'EOF'
# dom0 of scripts/xen-in-qemu.sh: dom0's memory is fixed by dom0_mem=, no ballooning.
autoballoon="off"
EOF
    cp "$XEN_DIR/hotplug-block" "$root/etc/xen/scripts/block-xenrun"
    cp "$XEN_DIR/hotplug-vif" "$root/etc/xen/scripts/vif-xenrun"
    cp "$XEN_DIR/dom0-init" "$root/init"
    chmod 755 "$root/init" "$root/etc/xen/scripts/"*
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"

    kver=${kpkg#linux-image-}
    : >"$root/etc/xenrun/modules"
    for b in "${DOM0_MODULES[@]}"; do
        add_module "$stage" "$root" "$kver" "$b"
    done

    (cd "$root" && find . | "$stage/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$out/dom0.cpio.gz"
    cp "$stage/boot/vmlinuz-$kver" "$out/vmlinuz"
    # QEMU's multiboot loader takes the uncompressed hypervisor ELF.
    gzip -dc "$stage/boot/xen-$XEN_VERSION-amd64.gz" >"$out/xen"
}

dom0_image() {
    local kpkg debs key dir tmp
    kpkg=$(dom0_kernel_pkg)
    local pkgs=(busybox-static "xen-hypervisor-$XEN_VERSION-amd64" "xen-utils-$XEN_VERSION" xenstore-utils
        libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 "libxenmisc$XEN_VERSION" libxenstore4
        libxentoollog1 libxentoolcore1 libxendevicemodel1 libxenhypfs1 libyajl2 libc6 libgcc-s1 libuuid1
        liblzma5 libzstd1 zlib1g libbz2-1.0 libext2fs2 libcom-err2 libncurses6 libtinfo6 "$kpkg")
    debs=$(deb_fetch "${pkgs[@]}") || die "cannot download the Debian packages for dom0 (see above)"
    key=$({
        echo "format $IMAGE_FORMAT"
        echo "modules ${DOM0_MODULES[*]}"
        echo "bins ${DOM0_XEN_BINS[*]}"
        while IFS= read -r b; do basename "$b"; done <<<"$debs"
        cat "$XEN_DIR/dom0-init" "$XEN_DIR/hotplug-block" "$XEN_DIR/hotplug-vif"
    } | sha256sum | cut -c1-16)
    dir="$CACHE/dom0-$key"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -f "$dir/complete" ]; then
        tmp=$(mktemp -d "$CACHE/build.XXXXXX")
        mkdir "$tmp/out"
        # A failed build leaves nothing behind (die exits; the trap removes $tmp).
        trap 'rm -rf "$tmp"' EXIT
        build_dom0_image "$tmp/out" "$tmp/stage" "$kpkg" "${pkgs[@]}"
        while IFS= read -r b; do basename "$b"; done <<<"$debs" >"$tmp/out/packages"
        touch "$tmp/out/complete"
        rm -rf "$dir"
        mv "$tmp/out" "$dir"
        rm -rf "$tmp"
        trap - EXIT
        say "dom0 image built ($(du -sh "$dir" | cut -f1)) in $(elapsed)"
    fi
    # Images and builds unused for two weeks (other inputs, killed builds) go.
    touch "$dir"
    find "$CACHE" -mindepth 1 -maxdepth 1 \( -name 'dom0-*' -o -name 'build.*' \) -mtime +14 \
        -exec rm -rf {} + 2>/dev/null || true
    exec 9>&-
    DOM0_DIR=$dir
    case "$DOM0_DIR" in *,*) die "cache directory path may not contain a comma: $DOM0_DIR" ;; esac
}

DOM0_DIR=
dom0_image

# --- The per-run archive: guest image, xl config, parameters, dom0 script. ---
run=$(mktemp -d "${TMPDIR:-/tmp}/xen-in-qemu.XXXXXX")
qemu_pid=
tail_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
    if [ "$keep" = 1 ]; then say "run directory kept: $run"; else rm -rf "$run"; fi
}
trap cleanup EXIT
case "$run" in *,*) die "run directory path may not contain a comma: $run" ;; esac

name=guest
mkdir -p "$run/archive/xenrun"
cp "$kernel" "$run/archive/xenrun/guest.elf"
{
    echo "# Written by scripts/xen-in-qemu.sh for this run; see scripts/xen/guest.cfg."
    echo "name = \"$name\""
    echo 'type = "pvh"'
    echo 'kernel = "/xenrun/guest.elf"'
    echo "cmdline = \"$cmdline\""
    echo "memory = $mem"
    echo 'vcpus = 1'
    # TCG has no invariant TSC: without this Xen traps RDTSC(P), which QEMU mis-reports.
    echo 'tsc_mode = "native"'
    echo 'on_poweroff = "destroy"'
    echo 'on_reboot = "destroy"'
    echo 'on_crash = "destroy"'
    if [ "${#disks[@]}" -gt 0 ]; then
        (
            IFS=,
            echo "disk = [ ${xl_disks[*]} ]"
        )
    fi
    if [ "$net" = 1 ]; then
        echo 'vif = [ "mac=00:16:3e:00:00:01, bridge=xenbr0, script=vif-xenrun" ]'
    fi
    for line in "${xl_lines[@]}"; do
        echo "$line"
    done
} >"$run/archive/xenrun/guest.cfg"
{
    echo "XENRUN_NAME=$name"
    echo "XENRUN_TIMEOUT=$timeout"
    echo "XENRUN_NET=$net"
    echo "XENRUN_DISK=\"${dom0_disks[*]}\""
    [ "$verbose" = 1 ] && echo "XENRUN_XL_VERBOSE=1"
} >"$run/archive/xenrun/params"
if [ -n "$dom0_script" ]; then
    cp "$dom0_script" "$run/archive/xenrun/dom0-script"
    chmod 755 "$run/archive/xenrun/dom0-script"
fi
(cd "$run/archive" && find . | "$DOM0_DIR/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$run/run.cpio.gz"
# Linux unpacks concatenated (compressed) cpio archives in order.
cat "$DOM0_DIR/dom0.cpio.gz" "$run/run.cpio.gz" >"$run/initrd"

# --- Boot Xen in QEMU and follow the serial line. ---
serial="$run/serial.log"
: >"$serial"
xen_cmdline="console=com1 com1=115200,8n1 dom0_mem=384M,max:384M dom0_max_vcpus=2 loglvl=all guest_loglvl=all $xen_args"
dom0_cmdline="console=hvc0 earlyprintk=xen rdinit=/init loglevel=4"
# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
qemu_args=(-M pc -accel tcg,thread=multi -cpu EPYC,-monitor,-smap -m 2048 -smp 2
    -display none -vga none -monitor none -nic none -serial stdio -no-reboot
    -kernel "$DOM0_DIR/xen" -append "$xen_cmdline"
    -initrd "$DOM0_DIR/vmlinuz $dom0_cmdline,$run/initrd")
for disk in "${disks[@]}"; do
    qemu_args+=(-drive "file=$disk,format=raw,if=virtio,cache=writeback")
done
say "booting Xen $XEN_VERSION + dom0 in QEMU TCG (guest: $(basename "$kernel"), cmdline \"$cmdline\")"
# dom0 enforces --timeout on the guest; `limit` is the net under Xen's and dom0's boot.
# QEMU gets its own, a little longer, so that it ends even if this script is killed.
limit=$((timeout + 300))
qemu_start=$(date +%s)
timeout -k 10 "$((limit + 30))" qemu-system-x86_64 "${qemu_args[@]}" </dev/null >"$serial" 2>"$run/qemu.err" &
qemu_pid=$!

# The console filter: guest lines to stdout, dom0's progress to stderr, the rest to
# stderr only with --verbose. Xen prints a domU's port-0xe9 output as "(dN) text".
tail -n +1 -F --pid="$qemu_pid" "$serial" 2>/dev/null | awk -v verbose="$verbose" '
    { sub(/\r+$/, "") }
    /^\(d[0-9]+\) / { sub(/^\(d[0-9]+\) /, ""); print; fflush(); next }
    /^\(XEN\) \(d[0-9]+\) / { sub(/^\(XEN\) \(d[0-9]+\) /, ""); print; fflush(); next }
    /^xenrun-pv: / { sub(/^xenrun-pv: /, ""); print; fflush(); next }
    /^xenrun-script: / { sub(/^xenrun-script: /, "dom0-script: "); print; fflush(); next }
    /^xenrun: / { sub(/^xenrun: /, "xen-in-qemu: dom0: "); print > "/dev/stderr"; fflush("/dev/stderr"); next }
    verbose == 1 { print > "/dev/stderr"; fflush("/dev/stderr") }
' &
tail_pid=$!

read_result() { sed -n 's/\r*$//; s/^XENRUN-RESULT: //p' "$serial" | head -n 1; }
result=
while kill -0 "$qemu_pid" 2>/dev/null; do
    result=$(read_result)
    [ -n "$result" ] && break
    if [ "$(($(date +%s) - qemu_start))" -ge "$limit" ]; then
        break
    fi
    sleep 1
done
# QEMU may have powered off between two looks.
[ -n "$result" ] || result=$(read_result)
if [ -n "$result" ]; then
    # dom0 powers off; if Xen only halts, QEMU stays: stop it after a grace period.
    for _ in $(seq 20); do
        kill -0 "$qemu_pid" 2>/dev/null || break
        sleep 1
    done
fi
if kill -0 "$qemu_pid" 2>/dev/null; then
    kill "$qemu_pid" 2>/dev/null || true
fi
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
wait "$tail_pid" 2>/dev/null || true
tail_pid=

show_log_tail() {
    say "last lines of the serial log (Xen + dom0):"
    sed 's/\r*$//' "$serial" | tail -n "${1:-60}" | sed 's/^/  | /' >&2
    # EPYC asks for a few features TCG lacks; QEMU warns about each, harmlessly.
    { grep -v "TCG doesn't support requested feature" "$run/qemu.err" || true; } | sed 's/^/  qemu: /' >&2
}

guest_status=$(sed -n 's/\r*$//; s/^\(([^)]*) \)*guest: exit status \([0-9]*\)$/\2/p' "$serial" | tail -n 1)
script_status=$(sed -n 's/\r*$//; s/^XENRUN-SCRIPT: \([0-9]*\).*/\1/p' "$serial" | tail -n 1)
status=
case "$result" in
"shutdown 0")
    say "xl reports shutdown (poweroff); guest status ${guest_status:-not printed} ($(elapsed))"
    status=${guest_status:-0}
    ;;
"shutdown 3")
    say "xl reports the domain crashed (reason 3); guest status ${guest_status:-not printed} ($(elapsed))"
    if [ -n "$guest_status" ] && [ "$guest_status" != 0 ]; then status=$guest_status; else status=126; fi
    show_log_tail 40
    ;;
shutdown*)
    say "xl reports shutdown with reason code ${result#shutdown } (1 reboot, 2 suspend, 4 watchdog, 5 soft reset), not poweroff ($(elapsed))"
    status=126
    show_log_tail 40
    ;;
timeout)
    say "the guest ran longer than --timeout ${timeout}s: dom0 destroyed it"
    status=124
    ;;
error*)
    say "dom0 could not run the guest: ${result#error }"
    status=125
    show_log_tail 60
    ;;
*)
    if [ "$(($(date +%s) - qemu_start))" -ge "$limit" ]; then
        say "no result after $((limit))s: Xen or dom0 did not come up in time"
        status=124
    else
        say "QEMU ended before dom0 reported a result (Xen panic, dom0 crash, QEMU error)"
        status=125
    fi
    show_log_tail 80
    ;;
esac
if [ -n "$dom0_script" ]; then
    if [ -z "$script_status" ]; then
        say "the dom0 script did not report a status"
        [ "$status" != 0 ] || status=125
    elif [ "$script_status" != 0 ]; then
        say "the dom0 script failed with status $script_status"
        [ "$status" != 0 ] || status=1
    fi
fi
exit "$status"
