# shellcheck shell=bash
# shellcheck disable=SC2154 # prog, tmp and the settings come from the runner (below)
# The L1 Linux VM shared by scripts/shim-in-qemu.sh and scripts/qemu-xen-in-qemu.sh:
# QEMU TCG on an AMD CPU model with SVM (-cpu EPYC), Debian's bookworm-backports 6.12
# kernel + busybox-static (all from Debian packages), scripts/l1/init as PID 1, which
# loads kvm_amd, runs the per-run program and reports how it ended.
#
# Source it after scripts/lib/common.sh (prog, die, say, the ERR trap), and set these
# settings (the runners' options):
#   qemu timeout l1_mem l1_cpu l1_append verbose
#
# l1_check_settings checks --timeout and --l1-mem (dies on a bad value)
# l1_input_file WHAT PATH
#                   prints PATH made absolute if it is a regular readable file; dies
#                   naming WHAT otherwise
# l1_start          makes the private $tmp directory and the traps that clean it up
# l1_image          sets L1_IMAGE: the cached L1 kernel + base initramfs (built once),
#                   and L1_KERNEL_PKG: the Debian kernel package it came from
# l1_pack DIR OUT   packs DIR as a newc archive OUT (the kernel unpacks concatenated
#                   archives in turn: base, then more)
# l1_boot INITRD    boots the L1 with INITRD, relays its output, and exits with the
#                   status the per-run program reported (see scripts/l1/init)
#
# L1_ACCEL in the environment replaces QEMU's `-accel tcg,thread=multi` (for
# experiments, e.g. tcg,thread=single).
#
# Cached between runs (no temporary files are left): the Debian packages in
# $DEB_CACHE (scripts/lib/debian.sh) and the L1 kernel + base initramfs in
# ${XDG_CACHE_HOME:-~/.cache}/pvh-xen/shim-in-qemu/<key>, keyed by the package files,
# this file and the L1 scripts.

l1_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# EPYC without the features TCG lacks (QEMU warns about each otherwise).
# shellcheck disable=SC2034 # the runners' default --l1-cpu
L1_CPU_DEFAULT=EPYC,-fxsr-opt,-misalignsse,-osvw,-topoext,-nrip-save,-xsavec
# What the per-run program's status is called in messages.
L1_WHAT=${L1_WHAT:-"host-shim's status"}

l1_check_settings() {
    [[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout '$timeout' is not a whole number of seconds"
    if ! [[ $l1_mem =~ ^[1-9][0-9]*$ ]] || [ "$l1_mem" -lt 256 ]; then
        die "--l1-mem '$l1_mem' is not a size in MiB >= 256"
    fi
}

l1_input_file() { # WHAT PATH
    [ -e "$2" ] || die "$1 '$2': no such file"
    [ -f "$2" ] || die "$1 '$2': not a regular file"
    [ -r "$2" ] || die "$1 '$2': not readable"
    realpath "$2"
}

qpid='' pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
l1_cleanup() {
    local p
    for p in $qpid "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in $qpid "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}

l1_start() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$prog.XXXXXX")
    trap l1_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---- the L1 image: kernel + base initramfs, cached

# L1_MODULES: loaded at boot (kvm_amd, tun) or on demand (bridge, veth), with their deps.
L1_MODULES="kvm_amd tun bridge veth"

# Finds the .ko.xz of module NAME (dashes and underscores are the same) under $1.
l1_module_file() { # TREE NAME
    local pat
    pat=${2//[-_]/[-_]}
    find "$1" -name "$pat.ko.xz" -print -quit 2>/dev/null || true
}

# Prints the insmod order for NAME: its dependencies (recursively) first.
l1_module_order() { # TREE NAME
    local f deps d
    f=$(l1_module_file "$1" "$2")
    [ -n "$f" ] || die "the kernel package has no module '$2'"
    deps=$(xz -dc "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' ')
    for d in $deps; do l1_module_order "$1" "$d"; done
    echo "${f#"$1"/}"
}

l1_build_image() { # IMAGE KPKG
    local image=$1 kpkg=$2 work=$tmp/image x kdir bz setup_sects payload_off payload_len off m order f
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
    bz=$(find "$x/boot" -name 'vmlinuz-*' -print -quit 2>/dev/null || true)
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
    kdir=$(find "$x/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit 2>/dev/null || true)
    [ -n "$kdir" ] || die "$kpkg has no /lib/modules/VERSION"
    : >"$work/root/lib/modules/l1.deps"
    for m in $L1_MODULES; do
        order=$(l1_module_order "$kdir" "$m" | awk '!seen[$0]++')
        for f in $order; do
            [ -e "$work/root/lib/modules/${f%.xz}" ] && continue
            mkdir -p "$work/root/lib/modules/$(dirname "$f")"
            xz -dc "$kdir/$f" >"$work/root/lib/modules/${f%.xz}"
        done
        echo "${m//-/_} ${order//$'\n'/ }" | sed 's/\.xz\b//g' >>"$work/root/lib/modules/l1.deps"
    done
    install -m 755 "$l1_here/l1/init" "$work/root/init"
    install -m 755 "$l1_here/l1/l1-modprobe" "$work/root/bin/l1-modprobe"
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

l1_image() {
    local cache_root kpkg debs kdeb bbdeb key start old
    DEB_SAY_PREFIX=$prog
    # shellcheck source=scripts/lib/debian.sh
    . "$l1_here/lib/debian.sh"
    cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/pvh-xen/shim-in-qemu
    mkdir -p "$cache_root"
    # One downloader and builder at a time (tests run in parallel, and deb_fetch
    # downloads straight into the cache); other keys are stale and removed once a new
    # one is built.
    exec 9>"$cache_root/.lock"
    flock 9

    # The bookworm-backports kernel (6.12: KVM with Xen emulation, kvm_amd as a module):
    # $SHIM_IN_QEMU_KERNEL_PKG if set, else the newest one already in $DEB_CACHE, else
    # the one bookworm-backports' linux-image-amd64 names (asking apt takes seconds).
    kpkg=${SHIM_IN_QEMU_KERNEL_PKG:-}
    if [ -z "$kpkg" ]; then
        # (No cache directory yet on a fresh machine: find fails, and that means "none".)
        kpkg=$({ find "$DEB_CACHE" -maxdepth 1 -name 'linux-image-6.1[2-9].*+deb12-amd64_*_amd64.deb' 2>/dev/null || true; } |
            sort -V | tail -1 | sed 's|.*/||; s|_.*||')
    fi
    if [ -z "$kpkg" ]; then
        kpkg=$({ apt-cache depends linux-image-amd64/bookworm-backports 2>/dev/null || true; } |
            sed -n 's/^ *Depends: \(linux-image-6\.[0-9.]*+deb12-amd64\)$/\1/p;T;q')
        [ -n "$kpkg" ] || die "cannot find the bookworm-backports kernel package (apt-cache depends linux-image-amd64/bookworm-backports): run scripts/setup.sh"
    fi
    debs=$(deb_fetch "$kpkg" busybox-static) || die "cannot download the L1's Debian packages ($kpkg, busybox-static)"
    kdeb=$(sed -n 1p <<<"$debs")
    bbdeb=$(sed -n 2p <<<"$debs")
    key=$(cat "$l1_here/lib/l1.sh" "$l1_here/l1/init" "$l1_here/l1/l1-modprobe" \
        <(basename "$kdeb") <(basename "$bbdeb") | sha256sum | cut -c1-16)
    L1_IMAGE=$cache_root/$key
    # The kernel package, for whoever needs more of it (scripts/linux-guest.sh).
    # shellcheck disable=SC2034 # for the caller
    L1_KERNEL_PKG=$kpkg

    if [ ! -f "$L1_IMAGE/base.cpio" ]; then
        start=$(date +%s)
        l1_build_image "$L1_IMAGE" "$kpkg"
        for old in "$cache_root"/*; do
            [ "$old" = "$L1_IMAGE" ] || rm -rf "$old"
        done
        say "L1 image built in $(($(date +%s) - start)) s"
    fi
    flock -u 9
    exec 9>&-
}

l1_pack() { # DIR OUT
    (cd "$1" && find . | "$L1_IMAGE/busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$2"
}

# ---- boot the L1

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

l1_boot() { # INITRD
    local initrd=$1 start qstatus marks err hook code p
    mkfifo "$tmp/stderr"
    cat "$tmp/stderr" >&2 &
    pids+=($!)
    log=$tmp/l1.log
    : >"$log"
    say "booting the L1 in QEMU $qemu_version (TCG, -cpu $l1_cpu, ${l1_mem} MiB)"
    start=$EPOCHREALTIME
    # -nodefaults: no NIC, VGA or floppy to probe. The PVH entry of vmlinux takes -initrd.
    timeout -k 5 "$timeout" "$qemu" -M pc -accel "${L1_ACCEL:-tcg,thread=multi}" -cpu "$l1_cpu" -smp 2 \
        -m "$l1_mem" -nodefaults -display none -no-reboot \
        -chardev stdio,id=out,signal=off -serial chardev:out \
        -chardev file,id=err,path="$tmp/stderr" -serial chardev:err \
        -chardev file,id=log,path="$log" -serial chardev:log \
        -kernel "$L1_IMAGE/vmlinux" -initrd "$initrd" \
        -append "console=ttyS2 loglevel=4 rdinit=/init panic=-1 8250.nr_uarts=3 tsc=reliable $l1_append" \
        </dev/null &
    qpid=$!
    if [ -n "$verbose" ]; then
        tail -n +1 -f --pid="$qpid" "$log" | sed -u 's/^/L1: /' >&2 &
        pids+=($!)
    fi
    qstatus=0
    wait "$qpid" || qstatus=$?
    qpid=
    say "QEMU ended with status $qstatus after $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }") s"
    # Let the relays drain and end. Opening the FIFO read-write never blocks, and its
    # close gives `cat` EOF even if QEMU never opened it; `tail --pid` ends with QEMU.
    exec 8<>"$tmp/stderr"
    exec 8>&-
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()

    if [ "$qstatus" -eq 124 ] || [ "$qstatus" -eq 137 ]; then
        [ -n "$verbose" ] || l1_tail
        echo "$prog: error: timed out: the run did not end within $timeout s (--timeout)" >&2
        exit 124
    fi
    marks=$(tr -d '\r' <"$log" | grep -a -E '^(L1-ERROR|L1-SCRIPT-EXIT|L1-POST-EXIT|SHIM-EXIT) ' || true)
    err=$(sed -n 's/^L1-ERROR //p' <<<"$marks" | head -1)
    [ -z "$err" ] || exit 125 # init already said so on stderr
    hook=$(sed -n 's/^L1-SCRIPT-EXIT //p' <<<"$marks" | tail -1)
    case $hook in
        '') ;;
        killed) echo "$prog: the --l1-script was still running when ${L1_MAIN:-host-shim} ended: killed" >&2 ;;
        *) echo "$prog: the --l1-script exited with status $hook" >&2 ;;
    esac
    post=$(sed -n 's/^L1-POST-EXIT //p' <<<"$marks" | tail -1)
    [ -z "$post" ] || [ "$post" = 0 ] || echo "$prog: the --l1-post script exited with status $post" >&2
    code=$(sed -n 's/^SHIM-EXIT \([0-9]*\)$/\1/p' <<<"$marks" | tail -1)
    if [ -z "$code" ]; then
        [ -n "$verbose" ] || l1_tail
        die "the L1 VM ended (QEMU status $qstatus) without reporting $L1_WHAT"
    fi
    exit "$code"
}
