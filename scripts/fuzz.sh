#!/usr/bin/env bash
# Fuzzing at scale: runs each cargo-fuzz target of host-shim/fuzz (libFuzzer, with
# AddressSanitizer unless told otherwise) for a while and prints, per target, the
# executions, their rate,
# libFuzzer's coverage (`cov`: edges, `ft`: features), the corpus size and the crashes.
#
#   scripts/fuzz.sh [--seconds N] [--runs N] [--targets a,b,...] [--sanitizer S]
#                   [--out FILE] [--keep]
#
#   --seconds N   time per target (default 60); with --runs, whichever ends first
#   --runs N      executions per target (e.g. 10000000)
#   --targets L   a comma list (default: every target in host-shim/fuzz/fuzz_targets)
#   --sanitizer S address (default) or none: without AddressSanitizer the targets run
#                 3-5 times faster; Rust's own checks (bounds, panics) and the bodies'
#                 assertions still hold, what is lost is the detection of bad accesses
#                 in unsafe code and of leaks
#   --out FILE    also write the table (markdown) to FILE
#   --keep        afterwards, replace host-shim/fuzz/seeds/TARGET by the smallest set of
#                 its inputs that keeps the coverage of seeds and corpus together
#                 (libFuzzer's -set_cover_merge=1), to commit
#
# The corpus of each target grows in host-shim/fuzz/corpus/TARGET (not in git); the
# inputs worth keeping go to host-shim/fuzz/seeds/TARGET (in git), which every run starts
# from. A crash stops that target's run: its input is in host-shim/fuzz/artifacts/TARGET,
# and `cargo +nightly fuzz run TARGET FILE` (from host-shim/) replays it. Needs the
# nightly toolchain and cargo-fuzz, which it installs when absent (rustup and
# `cargo install`, network needed once). Exit status: 0 no crash, 1 some target crashed,
# 125 bad input or a failure of the script itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prog="fuzz"
# shellcheck source=scripts/lib/common.sh
. "$here/lib/common.sh"

seconds=60 runs='' targets='' out='' keep='' sanitizer=address
while [ "$#" -gt 0 ]; do
    case $1 in
        --seconds) need_value "$@"; seconds=$2; shift 2 ;;
        --runs) need_value "$@"; runs=$2; shift 2 ;;
        --targets) need_value "$@"; targets=$2; shift 2 ;;
        --sanitizer) need_value "$@"; sanitizer=$2; shift 2 ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h | --help) sed -n '/^#   scripts\/fuzz.sh/,/^#                 (libFuzzer/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (--help for usage)" ;;
    esac
done
[[ $seconds =~ ^[1-9][0-9]{0,6}$ ]] || die "--seconds '$seconds' is not a number of seconds (1 to 9999999)"
[ -z "$runs" ] || [[ $runs =~ ^[1-9][0-9]{0,11}$ ]] || die "--runs '$runs' is not a positive count"
case $sanitizer in address | none) ;; *) die "--sanitizer '$sanitizer' is neither address nor none" ;; esac

fuzz_dir="$root/host-shim/fuzz"
all=$(cd "$fuzz_dir/fuzz_targets" && for f in *.rs; do echo "${f%.rs}"; done)
if [ -z "$targets" ]; then
    mapfile -t list <<<"$all"
else
    IFS=, read -r -a list <<<"$targets"
    for t in "${list[@]}"; do
        grep -qxF "$t" <<<"$all" || die "no fuzz target '$t' (there are: $(echo "$all" | paste -sd, -))"
    done
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "$prog: installing the nightly toolchain (cargo-fuzz needs it)" >&2
    rustup toolchain install nightly --profile minimal >&2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "$prog: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked >&2
fi

cd "$root/host-shim"
echo "$prog: building the targets (nightly, sanitizer: $sanitizer)" >&2
cargo +nightly fuzz build -s "$sanitizer" >&2

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
table="| target | executions | exec/s | cov (edges) | ft (features) | corpus | crashes |
|---|---:|---:|---:|---:|---:|---:|"
crashed=''
for t in "${list[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    limits=(-max_total_time="$seconds")
    [ -z "$runs" ] || limits+=(-runs="$runs")
    echo "$prog: $t: up to ${seconds}s${runs:+ or $runs runs}" >&2
    status=0
    cargo +nightly fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        "${limits[@]}" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$logs/$t" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t" | tail -1)
    last=$(grep -E '^#[0-9]+' "$logs/$t" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    crashes=0
    if [ "$status" -ne 0 ]; then
        if grep -qE '^(==[0-9]+==ERROR|SUMMARY: |.*panicked at)' "$logs/$t"; then
            crashes=1 crashed=1
            warn "$t crashed: $(grep -m1 -E 'panicked at|==ERROR' "$logs/$t")"
            warn "its input is in host-shim/fuzz/artifacts/$t/"
        else
            tail -5 "$logs/$t" >&2
            die "$t: cargo fuzz failed (status $status) without a crash report"
        fi
    fi
    if [ -n "$keep" ] && [ "$crashes" -eq 0 ]; then
        rm -rf "fuzz/seeds/$t.new"
        mkdir -p "fuzz/seeds/$t.new"
        cargo +nightly fuzz run -s "$sanitizer" "$t" "fuzz/seeds/$t.new" "${seeds[@]}" "fuzz/corpus/$t" -- \
            -set_cover_merge=1 >"$logs/$t.merge" 2>&1 || {
            tail -5 "$logs/$t.merge" >&2
            die "$t: merging the corpus into fuzz/seeds/$t failed"
        }
        rm -rf "fuzz/seeds/$t"
        mv "fuzz/seeds/$t.new" "fuzz/seeds/$t"
        echo "$prog: $t: kept $(find "fuzz/seeds/$t" -type f | wc -l) inputs in host-shim/fuzz/seeds/$t" >&2
    fi
    table+="
| $t | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | $corpus | $crashes |"
done

echo "$table"
if [ -n "$out" ]; then
    {
        echo "Fuzzing, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, sanitizer $sanitizer, up to ${seconds}s${runs:+ or $runs runs} a target:"
        echo
        echo "$table"
    } >"$out"
fi
[ -z "$crashed" ] || exit 1
