#!/usr/bin/env bash
# Boots the guest under host-shim inside a QEMU TCG virtual machine, for hosts whose own
# KVM is missing or unusable (e.g. kvm-pvm, see shared/design/ENVIRONMENT.md).
#
#   scripts/shim-in-qemu.sh [OPTIONS] [-- HOST-SHIM-RUN-ARGS...]
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
#   --timeout SECS    bound on the whole run, L1 boot included (default 600)
#   --l1-mem MIB      L1 memory (default 1024)
#   --l1-cpu MODEL    QEMU CPU model for the L1 (default EPYC minus what TCG lacks;
#                     it must offer SVM)
#   --l1-append STR   more L1 kernel parameters (e.g. loglevel=7 with -v)
#   --qemu PATH       QEMU binary (default qemu-system-x86_64, QEMU 10 recommended)
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

die() { echo "$prog: error: $*" >&2; exit 125; }
usage() {
    sed -n '/^#   scripts\/shim-in-qemu.sh/,/^# `l1-modprobe/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
}

# EPYC without the features TCG lacks (QEMU warns about each otherwise).
l1_cpu=EPYC,-fxsr-opt,-misalignsse,-osvw,-topoext,-nrip-save,-xsavec
shim=${SHIM_IN_QEMU_SHIM:-}
kernel='' pre='' script='' timeout=600 l1_mem=1024 qemu=qemu-system-x86_64 verbose='' l1_append=''
files=()
need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ "$#" -gt 0 ]; do
    case $1 in
        --kernel) need_value "$@"; kernel=$2; shift 2 ;;
        --shim) need_value "$@"; shim=$2; shift 2 ;;
        --file) need_value "$@"; files+=("$2"); shift 2 ;;
        --l1-pre) need_value "$@"; pre=$2; shift 2 ;;
        --l1-script) need_value "$@"; script=$2; shift 2 ;;
        --timeout) need_value "$@"; timeout=$2; shift 2 ;;
        --l1-mem) need_value "$@"; l1_mem=$2; shift 2 ;;
        --l1-cpu) need_value "$@"; l1_cpu=$2; shift 2 ;;
        --qemu) need_value "$@"; qemu=$2; shift 2 ;;
        --l1-append) need_value "$@"; l1_append=$2; shift 2 ;;
        -v | --verbose) verbose=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        *) die "unknown option '$1' (host-shim's arguments go after '--'; --help for usage)" ;;
    esac
done
shim_args=("$@")
say() { if [ -n "$verbose" ]; then echo "$prog: $*" >&2; fi; }

# ---- check the input before building or downloading anything
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout '$timeout' is not a whole number of seconds"
if ! [[ $l1_mem =~ ^[1-9][0-9]*$ ]] || [ "$l1_mem" -lt 256 ]; then
    die "--l1-mem '$l1_mem' is not a size in MiB >= 256"
fi
for a in "${shim_args[@]}"; do
    case $a in
        --kernel | --kernel=*) die "give the guest kernel as the runner's --kernel (before '--'), not as a host-shim argument" ;;
    esac
done
# A regular readable file, by its absolute path.
input_file() { # WHAT PATH
    [ -e "$2" ] || die "$1 '$2': no such file"
    [ -f "$2" ] || die "$1 '$2': not a regular file"
    [ -r "$2" ] || die "$1 '$2': not readable"
    realpath "$2"
}
[ -z "$kernel" ] || kernel=$(input_file "guest kernel" "$kernel")
[ -z "$shim" ] || shim=$(input_file "host-shim binary" "$shim")
[ -z "$pre" ] || pre=$(input_file "--l1-pre script" "$pre")
[ -z "$script" ] || script=$(input_file "--l1-script script" "$script")
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
    f=$(input_file "--file" "$f")
    not_shadowing "--file" "$f"
    abs_files+=("$f")
done
if ! command -v "$qemu" >/dev/null; then
    die "QEMU not found: '$qemu' is not installed or not executable (scripts/setup.sh installs QEMU 10)"
fi
qemu_version=$("$qemu" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p')
[ -n "$qemu_version" ] || die "'$qemu' does not run as QEMU ('$qemu --version' failed)"
case $qemu_version in
    10.* | 1[1-9].*) ;;
    *) echo "$prog: warning: QEMU $qemu_version: versions before 10 lose nested interrupt wake-ups (use QEMU 10)" >&2 ;;
esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shim-in-qemu.XXXXXX")
qpid='' pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local p
    for p in $qpid "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in $qpid "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the guest and a static host-shim
cargo_build() { # WHAT ARGS...
    local what=$1
    shift
    say "building $what"
    (cd "$root" && cargo build --release --quiet "$@") >&2 || die "building $what failed"
}
if [ -z "$kernel" ]; then
    cargo_build "the guest image" -p guest-kernel --target x86_64-unknown-none
    kernel=$root/target/x86_64-unknown-none/release/guest-kernel
fi
if [ -z "$shim" ]; then
    # The musl target links a static-pie binary with Rust's own musl and crt objects:
    # no musl-tools needed (no C dependencies).
    cargo_build "host-shim (static, musl)" -p host-shim --bin host-shim --target x86_64-unknown-linux-musl
    shim=$root/target/x86_64-unknown-linux-musl/release/host-shim
fi

# ---- the L1 image: kernel + base initramfs, cached
DEB_SAY_PREFIX=$prog
# shellcheck source=scripts/lib/debian.sh
. "$here/lib/debian.sh"
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/pvh-xen/shim-in-qemu
mkdir -p "$cache_root"
# One downloader and builder at a time (tests run in parallel, and deb_fetch downloads
# straight into the cache); other keys are stale and removed once a new one is built.
exec 9>"$cache_root/.lock"
flock 9

# The bookworm-backports kernel (6.12: KVM with Xen emulation, kvm_amd as a module):
# $SHIM_IN_QEMU_KERNEL_PKG if set, else the newest one already in $DEB_CACHE, else the
# one bookworm-backports' linux-image-amd64 names (asking apt takes seconds).
kpkg=${SHIM_IN_QEMU_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
    kpkg=$(find "$DEB_CACHE" -maxdepth 1 -name 'linux-image-6.1[2-9].*+deb12-amd64_*_amd64.deb' 2>/dev/null |
        sort -V | tail -1 | sed 's|.*/||; s|_.*||')
fi
if [ -z "$kpkg" ]; then
    kpkg=$(apt-cache depends linux-image-amd64/bookworm-backports 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*+deb12-amd64\)$/\1/p' | head -1)
    [ -n "$kpkg" ] || die "cannot find the bookworm-backports kernel package (apt-cache depends linux-image-amd64/bookworm-backports): run scripts/setup.sh"
fi
debs=$(deb_fetch "$kpkg" busybox-static) || die "cannot download the L1's Debian packages ($kpkg, busybox-static)"
kdeb=$(sed -n 1p <<<"$debs")
bbdeb=$(sed -n 2p <<<"$debs")
key=$(cat "$0" "$here/l1/init" "$here/l1/l1-modprobe" <(basename "$kdeb") <(basename "$bbdeb") |
    sha256sum | cut -c1-16)
image=$cache_root/$key

# L1_MODULES: loaded at boot (kvm_amd, tun) or on demand (bridge, veth), with their deps.
L1_MODULES="kvm_amd tun bridge veth"

# Finds the .ko.xz of module NAME (dashes and underscores are the same) under $1.
module_file() { # TREE NAME
    local pat
    pat=${2//[-_]/[-_]}
    find "$1" -name "$pat.ko.xz" -print -quit
}

# Prints the insmod order for NAME: its dependencies (recursively) first.
module_order() { # TREE NAME
    local f deps d
    f=$(module_file "$1" "$2")
    [ -n "$f" ] || die "the kernel package has no module '$2'"
    deps=$(xz -dc "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
    for d in $deps; do module_order "$1" "$d"; done
    echo "${f#"$1"/}"
}

build_image() {
    local work=$tmp/image x kdir bz setup_sects payload_off payload_len off m order f
    local -a x_cat
    say "building the L1 image (cache $image)"
    x=$work/x
    mkdir -p "$work/root" "$x"
    deb_extract "$x" "$kpkg" busybox-static || die "cannot unpack the L1's Debian packages"

    # vmlinux from the bzImage: the boot protocol header (offsets 0x1f1, 0x248, 0x24c)
    # locates the compressed payload, an ELF with the PVH note, followed by 4 bytes of
    # its size. QEMU boots that ELF by its PVH note: no decompressor or real-mode
    # setup at TCG speed (measured: a whole run ~1-2 s shorter than -kernel bzImage),
    # and no need for the -dbg package (~1 GB unpacked) that ships vmlinux.
    bz=$(find "$x/boot" -name 'vmlinuz-*' -print -quit)
    [ -n "$bz" ] || die "$kpkg has no /boot/vmlinuz-*"
    b() { od -An -t "u$2" -j "$1" -N "$2" "$bz" | tr -d ' '; }
    setup_sects=$(b $((0x1f1)) 1)
    payload_off=$(b $((0x248)) 4)
    payload_len=$(b $((0x24c)) 4)
    off=$(((setup_sects + 1) * 512 + payload_off))
    case $(od -An -tx1 -j "$off" -N4 "$bz" | tr -d ' ') in
        28b52ffd) x_cat=(zstd -dcq) ;;
        fd377a58) x_cat=(xz -dcq --single-stream) ;;
        1f8b0800) x_cat=(gzip -dcq) ;;
        *) die "$bz: unknown compression of the kernel payload" ;;
    esac
    command -v "${x_cat[0]}" >/dev/null || die "${x_cat[0]} is needed to unpack the L1 kernel"
    dd if="$bz" iflag=skip_bytes,count_bytes skip="$off" count=$((payload_len - 4)) bs=1M status=none |
        "${x_cat[@]}" >"$work/vmlinux" ||
        die "cannot decompress the kernel payload of $bz"
    [ "$(head -c4 "$work/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
        die "the kernel payload of $bz is not an ELF"

    # The base initramfs: busybox, the modules (uncompressed for busybox insmod), init.
    mkdir -p "$work/root"/{bin,sbin,dev,proc,sys,tmp,etc,l1,lib/modules}
    cp "$x/bin/busybox" "$work/root/bin/busybox"
    for m in $("$x/bin/busybox" --list); do
        [ -e "$work/root/bin/$m" ] || ln -s busybox "$work/root/bin/$m"
    done
    kdir=$(find "$x/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit)
    [ -n "$kdir" ] || die "$kpkg has no /lib/modules/VERSION"
    : >"$work/root/lib/modules/l1.deps"
    for m in $L1_MODULES; do
        order=$(module_order "$kdir" "$m" | awk '!seen[$0]++')
        for f in $order; do
            [ -e "$work/root/lib/modules/${f%.xz}" ] && continue
            mkdir -p "$work/root/lib/modules/$(dirname "$f")"
            xz -dc "$kdir/$f" >"$work/root/lib/modules/${f%.xz}"
        done
        echo "${m//-/_} ${order//$'\n'/ }" | sed 's/\.xz\b//g' >>"$work/root/lib/modules/l1.deps"
    done
    install -m 755 "$here/l1/init" "$work/root/init"
    install -m 755 "$here/l1/l1-modprobe" "$work/root/bin/l1-modprobe"
    (cd "$work/root" && find . | "$x/bin/busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$work/base.cpio" ||
        die "cannot pack the base initramfs"
    cp "$x/bin/busybox" "$work/busybox" # the host's cpio for the per-run archive
    mkdir -p "$work/out"
    mv "$work/vmlinux" "$work/base.cpio" "$work/busybox" "$work/out/"
    rm -rf "$image.new"
    mv "$work/out" "$image.new"
    mv "$image.new" "$image"
    rm -rf "$work"
}

if [ ! -f "$image/base.cpio" ]; then
    start=$(date +%s)
    build_image
    for old in "$cache_root"/*; do
        [ "$old" = "$image" ] || rm -rf "$old"
    done
    say "L1 image built in $(($(date +%s) - start)) s"
fi
flock -u 9
exec 9>&-

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
[ -z "$script" ] || install -m 755 "$script" "$stage/l1/script"
# run.conf: `set -- --kernel GUEST ARGS...`, each argument single-quoted for sh.
# shellcheck disable=SC2001 # a sed script reads more plainly than ${1//\'/...} here
quote() { printf "'%s'" "$(sed "s/'/'\\\\''/g" <<<"$1")"; }
{
    printf 'set --'
    for a in --kernel "$kernel" "${shim_args[@]}"; do printf ' %s' "$(quote "$a")"; done
    printf '\n'
} >"$stage/l1/run.conf"
(cd "$stage" && find . | "$image/busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$tmp/run.cpio" ||
    die "cannot pack the per-run archive"
# The kernel unpacks concatenated newc archives in turn: base, then this run's files.
cat "$image/base.cpio" "$tmp/run.cpio" >"$tmp/initrd"
rm -f "$tmp/run.cpio"
rm -rf "$stage"

# ---- boot the L1
mkfifo "$tmp/stderr"
cat "$tmp/stderr" >&2 &
pids+=($!)
log=$tmp/l1.log
: >"$log"
say "booting the L1 in QEMU $qemu_version (TCG, -cpu $l1_cpu, ${l1_mem} MiB)"
start=$EPOCHREALTIME
# -nodefaults: no NIC, VGA or floppy to probe. The PVH entry of vmlinux takes -initrd.
timeout -k 5 "$timeout" "$qemu" -M pc -accel tcg,thread=multi -cpu "$l1_cpu" -smp 2 \
    -m "$l1_mem" -nodefaults -display none -no-reboot \
    -chardev stdio,id=out,signal=off -serial chardev:out \
    -chardev file,id=err,path="$tmp/stderr" -serial chardev:err \
    -chardev file,id=log,path="$log" -serial chardev:log \
    -kernel "$image/vmlinux" -initrd "$tmp/initrd" \
    -append "console=ttyS2 loglevel=4 rdinit=/init panic=-1 8250.nr_uarts=3 tsc=reliable $l1_append" \
    </dev/null &
qpid=$!
if [ -n "$verbose" ]; then
    tail -n +1 -f --pid="$qpid" "$log" | sed -u 's/^/L1: /' >&2 &
    pids+=($!)
fi
set +e
wait "$qpid"
qstatus=$?
set -e
qpid=
say "QEMU ended with status $qstatus after $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }") s"
# Let the relays drain and end. Opening the FIFO read-write never blocks, and its
# close gives `cat` EOF even if QEMU never opened it; `tail --pid` ends with QEMU.
exec 8<>"$tmp/stderr"
exec 8>&-
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

l1_tail() {
    local lines tail_lines
    lines=$(tr -d '\r' <"$log" | grep -a -v '^$' | tail -n 15 || true)
    if [ -n "$lines" ]; then
        echo "$prog: the last lines of the L1 console:" >&2
        mapfile -t tail_lines <<<"$lines"
        printf '  %s\n' "${tail_lines[@]}" >&2
    else
        echo "$prog: the L1 console is empty (the L1 kernel printed nothing)" >&2
    fi
}
if [ "$qstatus" -eq 124 ] || [ "$qstatus" -eq 137 ]; then
    [ -n "$verbose" ] || l1_tail
    echo "$prog: error: timed out: the run did not end within $timeout s (--timeout)" >&2
    exit 124
fi
marks=$(tr -d '\r' <"$log" | grep -a -E '^(L1-ERROR|L1-SCRIPT-EXIT|SHIM-EXIT) ' || true)
err=$(sed -n 's/^L1-ERROR //p' <<<"$marks" | head -1)
[ -z "$err" ] || exit 125 # init already said so on stderr
hook=$(sed -n 's/^L1-SCRIPT-EXIT //p' <<<"$marks" | tail -1)
case $hook in
    '') ;;
    killed) echo "$prog: the --l1-script was still running when host-shim ended: killed" >&2 ;;
    *) echo "$prog: the --l1-script exited with status $hook" >&2 ;;
esac
code=$(sed -n 's/^SHIM-EXIT \([0-9]*\)$/\1/p' <<<"$marks" | tail -1)
if [ -z "$code" ]; then
    [ -n "$verbose" ] || l1_tail
    die "the L1 VM ended (QEMU status $qstatus) without reporting host-shim's status"
fi
exit "$code"
