# shellcheck shell=bash
# Shared shell functions for the runners that build boot images from Debian packages.
# Source it: `. "$(dirname "$0")/lib/debian.sh"`. Nothing here installs packages on
# the host: packages are downloaded with `apt-get download` (using the host's apt
# lists, which scripts/setup.sh keeps current, bookworm-backports included) into a
# cache directory and unpacked with `dpkg-deb -x` into a staging tree.

# Where downloaded .deb files are kept between runs.
DEB_CACHE=${DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pvh-xen/debs}

deb_say() { echo "${DEB_SAY_PREFIX:-debian}: $*" >&2; }

# deb_cached NAME: the newest cached .deb of package NAME, or nothing.
deb_cached() {
    { find "$DEB_CACHE" -maxdepth 1 -name "${1}_*.deb" 2>/dev/null || true; } | sort -V | tail -1
}

# deb_fetch PKG[=VERSION|/SUITE]... : downloads each package (not its dependencies) into
# $DEB_CACHE unless a matching file is already there; prints the .deb paths, one per
# line, in argument order. Fails naming the package that could not be fetched.
deb_fetch() {
    # Called in `|| die` contexts, where set -e is off: every step checks itself.
    mkdir -p "$DEB_CACHE" || { deb_say "cannot create the package cache $DEB_CACHE"; return 1; }
    local spec name found
    for spec in "$@"; do
        name=${spec%%[=/]*}
        found=$(deb_cached "$name")
        if [ -z "$found" ]; then
            # Download into a private directory, then move: another runner fetching
            # the same package at once never sees a half-written file.
            local tmp
            tmp=$(mktemp -d "$DEB_CACHE/.fetch.XXXXXX") || { deb_say "cannot write to $DEB_CACHE"; return 1; }
            if ! (cd "$tmp" && apt-get download -qq "$spec" >/dev/null 2>&1); then
                # The lists may be stale on a fresh machine: refresh once, then retry.
                if [ -z "${DEB_UPDATED:-}" ]; then
                    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
                    DEB_UPDATED=1
                fi
                (cd "$tmp" && apt-get download -qq "$spec" >/dev/null 2>&1) || {
                    rm -rf "$tmp"
                    deb_say "cannot download Debian package '$spec' (apt-get download failed)"
                    return 1
                }
            fi
            mv -f "$tmp"/*.deb "$DEB_CACHE"/ 2>/dev/null || true
            rm -rf "$tmp"
            found=$(deb_cached "$name")
            [ -n "$found" ] || { deb_say "package '$spec' downloaded but no ${name}_*.deb in $DEB_CACHE"; return 1; }
        fi
        echo "$found"
    done
}

# deb_extract DEST PKG... : fetches the packages and unpacks all of them into DEST.
deb_extract() {
    local dest=$1 deb
    shift
    mkdir -p "$dest"
    local debs
    debs=$(deb_fetch "$@") || return 1
    while IFS= read -r deb; do
        dpkg-deb -x "$deb" "$dest" || { deb_say "cannot unpack $deb"; return 1; }
    done <<<"$debs"
}
