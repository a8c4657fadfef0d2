# shellcheck shell=bash
# What every script of this project shares: messages, the catch-all error report, option
# and quoting helpers, and where cargo puts its output. Source it first, after setting
# `prog` (the script's name in messages):
#
#   prog=shim-in-qemu
#   . "$(dirname "$0")/lib/common.sh"
#
# die MSG          prints "$prog: error: MSG" on stderr and exits 125 (a runner error)
# warn MSG         prints "$prog: warning: MSG" on stderr
# say MSG          a progress message on stderr, only when $verbose is non-empty
# need_value OPT [VALUE...]
#                  dies unless the option has a non-empty value (call with "$@")
# quote STR        STR single-quoted for sh
# cargo_target_dir prints cargo's target directory for this workspace (honours
#                  CARGO_TARGET_DIR and .cargo/config.toml: asks `cargo metadata`)
# check_qemu QEMU  dies unless QEMU runs; sets qemu_version; warns before version 10
#
# The ERR trap: any command that fails where the script did not expect it (set -e
# would end the script silently) ends it with exactly one line
#   PROG: error: unexpected failure: 'COMMAND' exited with status N (FILE line L)
# and status 125. A command substitution that fails inside reports from there; the
# status 125 it ends with tells the enclosing shell that the failure was already
# reported, so every failure is reported once. `die` exits 125 for the same reason.

set -o errtrace # the ERR trap holds in functions and subshells too
# shellcheck disable=SC2154 # prog is set by the script that sources this file

die() {
    echo "$prog: error: $*" >&2
    exit 125
}

warn() { echo "$prog: warning: $*" >&2; }

say() { if [ -n "${verbose:-}" ]; then echo "$prog: $*" >&2; fi; }

# shellcheck disable=SC2317 # called by the ERR trap
common_on_err() { # STATUS LINE FILE COMMAND
    if [ "$1" -ne 125 ]; then
        echo "$prog: error: unexpected failure: '$4' exited with status $1 (${3#"$common_root"/} line $2)" >&2
    fi
    exit 125
}
common_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
trap 'common_on_err "$?" "$LINENO" "${BASH_SOURCE[0]:-$0}" "$BASH_COMMAND"' ERR

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }

quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

cargo_target_dir() {
    local dir
    dir=$(cd "$common_root" && cargo metadata --no-deps --format-version 1 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    [ -n "$dir" ] || die "cannot ask cargo for its target directory (cargo metadata failed)"
    echo "$dir"
}

check_qemu() { # QEMU
    if ! command -v "$1" >/dev/null; then
        die "QEMU not found: '$1' is not installed or not executable (scripts/setup.sh installs QEMU 10)"
    fi
    qemu_version=$("$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p') || true
    [ -n "$qemu_version" ] || die "'$1' does not run as QEMU ('$1 --version' failed)"
    case $qemu_version in
        10.* | 1[1-9].*) ;;
        *) warn "QEMU $qemu_version: versions before 10 lose nested interrupt wake-ups (use QEMU 10)" ;;
    esac
}
