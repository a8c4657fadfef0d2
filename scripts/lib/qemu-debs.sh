# shellcheck shell=bash
# shellcheck disable=SC2154 # tmp comes from the runner (scripts/lib/l1.sh's l1_start)
# A self-contained QEMU (qemu-system-x86_64 + the shared libraries it loads + the
# firmware a `-M pc -kernel` boot reads) from Debian packages, for an initramfs.
# Source it after scripts/lib/debian.sh and scripts/lib/l1.sh (qemu_debs_cpio packs
# with l1_pack into $tmp); the caller defines die() and say().
#
# Which packages: apt itself resolves qemu-system-x86 from bookworm-backports on an
# empty system (`apt-get -s` with an empty dpkg status, no Recommends), which fixes a
# version for every package of the Depends closure. Of that closure only what the
# binary needs is fetched: starting from the roots (qemu-system-x86, qemu-system-data
# for the option ROMs, seabios for the BIOS), the Depends of every package that
# supplies a file of the binary's NEEDED closure are fetched, until every NEEDED
# soname is found (none found and none left to fetch is an error naming the soname).
# So the list comes from the package index, not from this file or the host's install.

# The firmware `-M pc` reads with -kernel (PVH) and -nodefaults, by package path.
QEMU_DEBS_FIRMWARE="usr/share/seabios/bios-256k.bin usr/share/qemu/pvh.bin
usr/share/qemu/linuxboot_dma.bin usr/share/qemu/kvmvapic.bin"
QEMU_DEBS_ROOTS="qemu-system-x86 qemu-system-data seabios"
QEMU_DEBS_SUITE=bookworm-backports

# qemu_debs_resolve: prints `name=version` for every package apt would install for
# qemu-system-x86 from $QEMU_DEBS_SUITE on an empty system.
qemu_debs_resolve() {
    local out
    out=$(apt-get -s -q -o Dir::State::status=/dev/null -o APT::Install-Recommends=false \
        -t "$QEMU_DEBS_SUITE" install qemu-system-x86 2>&1) || {
        deb_say "apt cannot resolve qemu-system-x86 from $QEMU_DEBS_SUITE: $(tail -1 <<<"$out")"
        return 1
    }
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' <<<"$out"
}

# The library directories of an unpacked package tree.
qemu_debs_libdirs() { # TREE
    local d
    for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
        [ -d "$1/$d" ] && echo "$1/$d"
    done
    return 0
}

# The file that PATH, in the unpacked package $work/pkg/NAME/..., names: its symlinks
# followed inside that tree (an absolute target is relative to the package's root).
qemu_debs_real() { # PATH
    local p=$1 t top n=0
    top=${p#"$work/pkg/"}
    top=$work/pkg/${top%%/*}
    while [ -L "$p" ] && [ "$n" -lt 20 ]; do
        t=$(readlink "$p")
        case $t in
            /*) p=$top$t ;;
            *) p=$(dirname "$p")/$t ;;
        esac
        n=$((n + 1))
    done
    echo "$p"
}

# qemu_debs_tree OUT WORK [RESOLVED]: builds OUT/ with bin/qemu-system-x86_64, lib/
# (its NEEDED closure, ld-linux-x86-64.so.2 included: run the binary as
# `OUT/lib/ld-linux-x86-64.so.2 --library-path OUT/lib OUT/bin/qemu-system-x86_64`),
# share/ (the firmware, for -L) and packages (the .deb files used, one a line).
# WORK is scratch space. RESOLVED is qemu_debs_resolve's output (resolved if empty).
qemu_debs_tree() {
    local out=$1 work=$2 resolved=${3:-} name spec d f soname bin
    local -A version=() fetched=() provider=() seen=()
    local -a closure missing next
    [ -n "$resolved" ] || resolved=$(qemu_debs_resolve) || return 1
    while IFS='=' read -r name spec; do version[$name]=$spec; done <<<"$resolved"
    for name in $QEMU_DEBS_ROOTS; do
        [ -n "${version[$name]:-}" ] || { deb_say "apt's resolution of qemu-system-x86 lacks $name"; return 1; }
    done
    mkdir -p "$work/pkg" "$out/bin" "$out/lib" "$out/share"
    : >"$out/packages"

    # Downloads and unpacks each NAME into $work/pkg/NAME (uses the caller's locals).
    _qemu_debs_fetch() { # NAME...
        local n d
        for n in "$@"; do
            d=$(deb_fetch "$n=${version[$n]}") || return 1
            mkdir -p "$work/pkg/$n"
            dpkg-deb -x "$d" "$work/pkg/$n" || { deb_say "cannot unpack $d"; return 1; }
            echo "$d" >>"$out/packages"
            fetched[$n]=1
        done
    }
    # shellcheck disable=SC2086 # a list of names
    _qemu_debs_fetch $QEMU_DEBS_ROOTS || return 1
    bin=$work/pkg/qemu-system-x86/usr/bin/qemu-system-x86_64
    [ -x "$bin" ] || { deb_say "qemu-system-x86 has no usr/bin/qemu-system-x86_64"; return 1; }

    while :; do
        # Every soname that the fetched packages' library directories hold.
        provider=()
        for name in "${!fetched[@]}"; do
            for d in $(qemu_debs_libdirs "$work/pkg/$name"); do
                for f in "$d"/*.so*; do
                    [ -e "$f" ] || continue
                    soname=${f##*/}
                    [ -n "${provider[$soname]:-}" ] || provider[$soname]=$f
                done
            done
        done
        # The binary's NEEDED closure over them.
        closure=("$bin") missing=() seen=()
        local i=0
        while [ "$i" -lt "${#closure[@]}" ]; do
            for soname in $(readelf -dW "${closure[$i]}" 2>/dev/null |
                sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
                [ -z "${seen[$soname]:-}" ] || continue
                seen[$soname]=1
                if [ -n "${provider[$soname]:-}" ]; then
                    closure+=("$(qemu_debs_real "${provider[$soname]}")")
                else
                    missing+=("$soname")
                fi
            done
            i=$((i + 1))
        done
        [ "${#missing[@]}" -gt 0 ] || break
        # Fetch the Depends of the packages that supply the closure (and the roots).
        local -A users=()
        for name in $QEMU_DEBS_ROOTS; do users[$name]=1; done
        for f in "${closure[@]}"; do
            f=${f#"$work/pkg/"}
            users[${f%%/*}]=1
        done
        next=()
        for name in $(for n in "${!users[@]}"; do echo "$n=${version[$n]}"; done |
            xargs apt-cache depends --no-recommends --no-suggests --no-conflicts \
                --no-breaks --no-replaces --no-enhances 2>/dev/null |
            sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^<][^ ]*\)$/\2/p' | sort -u); do
            name=${name%:any}
            [ -n "${version[$name]:-}" ] && [ -z "${fetched[$name]:-}" ] && next+=("$name")
        done
        if [ "${#next[@]}" -eq 0 ]; then
            deb_say "no package of qemu-system-x86's Depends provides ${missing[*]}"
            return 1
        fi
        _qemu_debs_fetch "${next[@]}" || return 1
    done

    cp "$bin" "$out/bin/"
    for soname in "${!seen[@]}"; do
        cp "$(qemu_debs_real "${provider[$soname]}")" "$out/lib/$soname"
    done
    # The program interpreter (PT_INTERP), by its soname.
    [ -f "$out/lib/ld-linux-x86-64.so.2" ] || {
        deb_say "the NEEDED closure of qemu-system-x86_64 lacks ld-linux-x86-64.so.2"
        return 1
    }
    for f in $QEMU_DEBS_FIRMWARE; do
        for name in $QEMU_DEBS_ROOTS; do
            if [ -e "$work/pkg/$name/$f" ]; then cp "$(qemu_debs_real "$work/pkg/$name/$f")" "$out/share/${f##*/}"; continue 2; fi
        done
        deb_say "no package of $QEMU_DEBS_ROOTS has /$f"
        return 1
    done
    sort -o "$out/packages" "$out/packages"
}

# qemu_debs_cpio: sets QEMU_DEBS_CPIO to a cached newc archive holding the tree of
# qemu_debs_tree under l1/qemu/ (for the L1 initramfs; packed with $L1_IMAGE's busybox,
# see scripts/lib/l1.sh), and QEMU_DEBS_PACKAGES to the list of .deb files it came from.
# Cached in ${XDG_CACHE_HOME:-~/.cache}/pvh-xen/qemu-xen-in-qemu/<key>, keyed by apt's
# resolution (name=version of every package) and this file; other keys are removed.
# apt's resolution itself is kept there per state of apt's lists (resolved-<stamp>).
qemu_debs_cpio() {
    local cache_root lists resolved key dir work start old
    cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/pvh-xen/qemu-xen-in-qemu
    mkdir -p "$cache_root"
    # apt's answer only changes with its package lists: kept per state of the lists
    # (asking apt takes seconds).
    lists=$({ find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%f %s %T@\n' 2>/dev/null || true; } |
        sort | sha256sum | cut -c1-16)
    resolved=$(cat "$cache_root/resolved-$lists" 2>/dev/null || true)
    if [ -z "$resolved" ]; then
        resolved=$(qemu_debs_resolve) || die "cannot resolve qemu-system-x86 from $QEMU_DEBS_SUITE (run scripts/setup.sh)"
        for old in "$cache_root"/resolved-*; do
            [ "$old" = "$cache_root/resolved-$lists" ] || rm -f "$old"
        done
        echo "$resolved" >"$cache_root/.resolved.$$"
        mv -f "$cache_root/.resolved.$$" "$cache_root/resolved-$lists"
    fi
    key=$(cat "${BASH_SOURCE[0]}" <(echo "$resolved") | sha256sum | cut -c1-16)
    dir=$cache_root/$key
    QEMU_DEBS_CPIO=$dir/qemu.cpio
    # shellcheck disable=SC2034 # for the caller
    QEMU_DEBS_PACKAGES=$dir/packages
    [ -f "$QEMU_DEBS_CPIO" ] && return 0
    exec 7>"$cache_root/.lock"
    flock 7
    if [ ! -f "$QEMU_DEBS_CPIO" ]; then
        start=$(date +%s)
        say "building the L1's QEMU from Debian packages (cache $dir)"
        work=$tmp/qemu-debs
        rm -rf "$work"
        mkdir -p "$work/root/l1"
        qemu_debs_tree "$work/root/l1/qemu" "$work/x" "$resolved" ||
            die "cannot build QEMU for the L1 from Debian packages"
        mkdir -p "$work/out"
        mv "$work/root/l1/qemu/packages" "$work/out/packages"
        l1_pack "$work/root" "$work/out/qemu.cpio" || die "cannot pack the L1's QEMU"
        rm -rf "$dir.new"
        mv "$work/out" "$dir.new"
        mv "$dir.new" "$dir"
        rm -rf "$work"
        for old in "$cache_root"/*; do
            case $old in "$dir" | "$cache_root"/resolved-*) ;; *) rm -rf "$old" ;; esac
        done
        say "the L1's QEMU built in $(($(date +%s) - start)) s"
    fi
    flock -u 7
    exec 7>&-
}
