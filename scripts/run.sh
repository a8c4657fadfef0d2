#!/usr/bin/env bash
# The product's main job:
#   1. build the guest image and host-shim; boot the guest under host-shim (when
#      /dev/kvm exists) and in QEMU (-M microvm, -M pc), and show its console;
#   2. measure PV against emulated I/O: `host-shim bench` (every path, the default
#      matrix) on this host's /dev/kvm; print the comparison and where the files are.
#
#   scripts/run.sh [--quick] [--in-qemu] [--no-bench] [--out DIR]
#
#   --quick     the benchmark's short matrix (about 2 minutes instead of about 7)
#   --in-qemu   also measure in the second place, inside QEMU (scripts/shim-in-qemu.sh
#               --bench: host-shim on a nested KVM in a TCG L1; the short matrix, about
#               3 minutes), and write one report with a section per place
#   --no-bench  only the boots
#   --out DIR   where the results go (default: bench-results)
#
# The benchmark needs root (its own network namespace and TAPs inside it): run as
# root, or sudo asks. Exit status: the boots' (non-zero if one failed), else the
# benchmark's (0 every path measured, 1 some failed, 125 bad input, 130 Ctrl-C).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prog="run"
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

tell() { echo "$prog: $*" >&2; }
quick=() in_qemu='' bench=1 out=bench-results
while [ "$#" -gt 0 ]; do
    case $1 in
        --quick) quick=(--quick); shift ;;
        --in-qemu) in_qemu=1; shift ;;
        --no-bench) bench=''; shift ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        -h | --help) sed -n '/^#   scripts\/run.sh/,/^#   --out/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (--help for usage)" ;;
    esac
done

cd "$root"
./scripts/setup.sh || die "scripts/setup.sh failed (see above)"
demo=0
cargo xtask demo || demo=$?
[ -n "$bench" ] || exit "$demo"

host_place=1
if [ ! -c /dev/kvm ]; then
    tell "SKIPPED the benchmark on this host: no /dev/kvm (--in-qemu measures inside QEMU, which needs none)"
    host_place=''
    [ -n "$in_qemu" ] || exit "$demo"
fi
tell "building the guest image and host-shim (release)"
cargo build --release --quiet -p guest-kernel --target x86_64-unknown-none
cargo build --release --quiet -p host-shim --bin host-shim
target=$(cargo_target_dir)
guest=$target/x86_64-unknown-none/release/guest-kernel
shim=$target/release/host-shim
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "the benchmark needs root (a network namespace and TAPs) and sudo is not installed"
    as_root=(sudo)
fi
mkdir -p "$out"
places=()
status=0
if [ -n "$host_place" ]; then
    tell "measuring PV against emulated I/O on this host's /dev/kvm (host-shim bench ${quick[*]:-(default matrix)})"
    "${as_root[@]}" "$shim" bench --kernel "$guest" --out "$out/host" "${quick[@]}" || status=$?
    [ ! -f "$out/host/bench.json" ] || places+=("$out/host")
fi
if [ -n "$in_qemu" ] && [ "$status" -ne 130 ]; then
    tell "measuring in the second place: inside QEMU (scripts/shim-in-qemu.sh --bench)"
    mkdir -p "$out/qemu"
    qstatus=0
    # Always the short matrix there: under sustained traffic the network guest inside
    # QEMU sometimes triple-faults (README), and 2-second tests rarely meet it.
    "${as_root[@]}" ./scripts/shim-in-qemu.sh --bench --kernel "$guest" --timeout 3600 --l1-mem 2048 \
        -- --quick --place "inside QEMU: host-shim on a nested KVM (kvm_amd) in a TCG L1" \
        >"$out/qemu/bench.json.part" || qstatus=$?
    if [ -s "$out/qemu/bench.json.part" ]; then
        mv -f "$out/qemu/bench.json.part" "$out/qemu/bench.json"
        places+=("$out/qemu")
    else
        rm -f "$out/qemu/bench.json.part"
        warn "the benchmark inside QEMU wrote no report (status $qstatus)"
    fi
    [ "$qstatus" -eq 0 ] || status=$qstatus
fi
if [ "${#places[@]}" -gt 1 ]; then
    "$shim" bench-report --out "$out" "${places[@]/%//bench.json}"
fi
if [ "${#places[@]}" -eq 0 ]; then
    tell "no benchmark report was written (status $status)"
    [ "$status" -ne 0 ] || status=1
    exit "$status"
fi
tell "results: ${places[*]} (bench.json: every figure; bench.md: the tables; bench.svg: the chart)"
[ "${#places[@]}" -eq 1 ] || tell "both places in one report: $out/bench.md, $out/bench.svg"
[ "$demo" -eq 0 ] || { tell "the demo boots failed (status $demo): see above"; exit "$demo"; }
exit "$status"
