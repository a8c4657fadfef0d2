//! The guest's block benchmark (`blk.bench=on`, the shared benchmark plan's item 3) end
//! to end: the whole matrix on a PV disk (blkfront/blkback) and on host-shim's IDE
//! disk (bus-master DMA and PIO), and on QEMU's own IDE (`-M pc`), where nothing
//! listens to the phase marks.
//!
//! Each run must print the 16 `blk-result:` lines in matrix order, one after another
//! (the console is held during a phase, and nothing else is printed between phases
//! of a passing run), each a JSON object with fio's keys whose numbers agree with one
//! another; then `blk: PASS` and exit status 0. Timeouts are generous safety nets:
//! on kvm-pvm a 64 KiB phase takes seconds, so each phase has only a few requests.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use system_tests::{
    Machine, Run, ScratchImage, expect_pattern, guest_image, kvm_available, run_qemu,
    run_with_limit, shim_binary,
};

/// Requests per phase (`blk.bench-ops=`).
const OPS: u64 = 8;
/// The benchmark's region: the first 4 MiB of an 8 MiB image.
const CMDLINE: &str = "blk.bench=on blk.bench-ops=8 blk.size=4M";
const IMAGE_BYTES: u64 = 8 << 20;
const REGION_BYTES: usize = 4 << 20;
/// The shim's own timeout and the harness's kill limit (safety nets only).
const SHIM_TIMEOUT_S: u64 = 550;
const LIMIT: Duration = Duration::from_secs(600);

/// (rw, bs, iodepth) of phase `n` (from 1), as the plan orders them: for bs, for qd,
/// for rw.
fn planned(n: usize) -> (&'static str, u64, u64) {
    let i = n - 1;
    let rw = ["read", "write", "randread", "randwrite"][i % 4];
    let qd = [1, 32][(i / 4) % 2];
    let bs = [4096, 65536][i / 8];
    (rw, bs, qd)
}

fn num(v: &Value, key: &str, line: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned number in {line}"))
}

/// Checks the benchmark's console output; returns the parsed result objects.
#[track_caller]
fn check_results(run: &Run) -> Vec<Value> {
    let all = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("blk-result: "))
        .collect();
    assert_eq!(at.len(), 16, "16 blk-result lines expected\n{all}");
    // Nothing between the result lines: no output escaped from a measured phase.
    assert!(
        at.windows(2).all(|w| w[1] == w[0] + 1),
        "other output between the blk-result lines\n{all}"
    );
    assert!(
        lines[at[0] - 1].starts_with(&format!("blk: bench: 16 phases of {OPS} requests")),
        "{all}"
    );
    assert_eq!(lines[at[15] + 1].trim_end(), "blk: PASS", "{all}");

    let mut results = Vec::new();
    for (k, &i) in at.iter().enumerate() {
        let line = lines[i];
        let v: Value = serde_json::from_str(&line["blk-result: ".len()..])
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let (rw, bs, qd) = planned(k + 1);
        assert_eq!(num(&v, "phase", line), k as u64 + 1, "{line}");
        assert_eq!(v["rw"], rw, "{line}");
        assert_eq!(num(&v, "bs", line), bs, "{line}");
        assert_eq!(num(&v, "iodepth", line), qd, "{line}");
        assert!(num(&v, "device_queue_depth", line) >= 1, "{line}");
        if let Some(reason) = v.get("skipped") {
            // Neither disk here has a transfer limit below 64 KiB, nor is read-only.
            panic!("phase skipped ({reason}): {line}");
        }
        let ios = num(&v, "ios", line);
        assert_eq!(ios, OPS, "{line}");
        assert_eq!(num(&v, "io_bytes", line), ios * bs, "{line}");
        assert_eq!(num(&v, "errors", line), 0, "{line}");
        let runtime = num(&v, "runtime_ns", line);
        let clat = &v["clat_ns"];
        let (min, max) = (num(clat, "min", line), num(clat, "max", line));
        let mean = clat["mean"]
            .as_f64()
            .unwrap_or_else(|| panic!("no mean: {line}"));
        assert!(min > 0, "a request took no time: {line}");
        assert!(min as f64 <= mean && mean <= max as f64, "{line}");
        // Every request was submitted after the Start mark and completed before End.
        assert!(max <= runtime, "{line}");
        let pct = clat["percentile"]
            .as_object()
            .unwrap_or_else(|| panic!("no percentiles: {line}"));
        let keys = host_shim::bench::fio::percentile_keys();
        assert_eq!(pct.len(), keys.len(), "{line}");
        let values: Vec<u64> = keys
            .iter()
            .map(|p| {
                pct.get(p)
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("percentile {p} missing: {line}"))
            })
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "percentiles decrease: {line}"
        );
        assert!(min <= values[0] && values[16] <= max, "{line}");
        results.push(v);
    }
    results
}

/// Boots the benchmark under host-shim on `disk` (a `--disk` spec) with `extra`
/// guest options.
fn shim_bench(disk: &str, extra: &str) -> Run {
    let mut cmd = Command::new(shim_binary());
    cmd.args(["run", "--kernel"])
        .arg(guest_image())
        .args(["--cmdline", &format!("{CMDLINE} {extra}")])
        .args(["--timeout", &SHIM_TIMEOUT_S.to_string(), "--disk", disk]);
    let run = run_with_limit(cmd, LIMIT);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("guest: exit status 0");
    run
}

/// What the write phases leave: every write sends the one buffer, the pattern of
/// seed 1 at the region's start, and the sequential ones start at its first block;
/// nothing past the region is touched.
fn check_image(img: &ScratchImage) {
    let data = img.read();
    expect_pattern(&data[..64 << 10], 1, 0);
    assert!(
        data[REGION_BYTES..].iter().all(|&b| b == 0),
        "a write landed outside the region"
    );
}

#[test]
fn bench_on_a_pv_disk() {
    if !kvm_available("blk_bench::bench_on_a_pv_disk") {
        return;
    }
    let img = ScratchImage::new("bench-pv", IMAGE_BYTES);
    let run = shim_bench(img.path(), "");
    let results = check_results(&run);
    // blkfront's queue depth is its ring's (at least the matrix's 32).
    assert!(
        results
            .iter()
            .all(|r| r["device_queue_depth"].as_u64() >= Some(32))
    );
    check_image(&img);
}

fn bench_on_ide(mode: &str) {
    let img = ScratchImage::new(&format!("bench-ide-{mode}"), IMAGE_BYTES);
    let disk = format!("{},if=ide", img.path());
    let run = shim_bench(&disk, &format!("blk.device=ide:0 blk.ata={mode}"));
    run.assert_contains("blk: ide:0: \"PVH-SHIM HARDDISK\"");
    let results = check_results(&run);
    // One value for the whole run: what the driver says it queues.
    let depth = &results[0]["device_queue_depth"];
    assert!(results.iter().all(|r| &r["device_queue_depth"] == depth));
    check_image(&img);
}

#[test]
fn bench_on_an_ide_disk_with_dma() {
    if kvm_available("blk_bench::bench_on_an_ide_disk_with_dma") {
        bench_on_ide("dma");
    }
}

#[test]
fn bench_on_an_ide_disk_with_pio() {
    if kvm_available("blk_bench::bench_on_an_ide_disk_with_pio") {
        bench_on_ide("pio");
    }
}

/// QEMU's `-M pc` has nothing at the mark port: the writes go nowhere and the matrix
/// runs as under the shim.
#[test]
fn bench_on_qemus_ide_ignores_the_marks() {
    let img = ScratchImage::new("bench-qemu-ide", IMAGE_BYTES);
    let drive = format!("file={},if=ide,format=raw", img.path());
    let run = run_qemu(
        Machine::Pc,
        guest_image(),
        &format!("{CMDLINE} blk.device=ide:0 blk.ata=dma"),
        &["-drive", &drive],
    );
    assert_eq!(
        run.guest_status(),
        Some(0),
        "{}\n{}",
        run.0.stdout,
        run.0.stderr
    );
    run.0.assert_contains("blk: ide:0: \"QEMU HARDDISK\"");
    check_results(&run.0);
    check_image(&img);
}
