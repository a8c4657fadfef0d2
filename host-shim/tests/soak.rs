//! `host-shim soak` through the binary, short: 2000 block requests and 2000 frames
//! through one shim, and nothing grew, on every kind of path: the PV disk and NIC;
//! the emulated IDE disk (DMA) with virtio-net; virtio-blk with the emulated e1000;
//! the IDE disk by PIO with the e1000 (the full size, 10^6 of each, is a manual run:
//! see the README). Needs /dev/kvm,
//! root (a private network namespace, a TAP) and ping; each missing one is a loud
//! SKIPPED line. Also: a shim that dies at once is a clear error with status 2, not a
//! hang, and bad input is one error line and 125.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use common::{guest_kernel, hello_kernel, kvm_usable, scratch_dir};

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

fn soak(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_host-shim"))
        .arg("soak")
        .args(args)
        .output()
        .expect("run host-shim soak");
    Run {
        status: out.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether the soak's own checks refused this host (no namespace, no ping): prints
/// the loud SKIPPED line then.
fn refused_by_host(run: &Run, test: &str) -> bool {
    let host_reasons = [
        "private network namespace",
        "is not on PATH",
        "cannot set up",
    ];
    if run.status == 125 && host_reasons.iter().any(|r| run.stderr.contains(r)) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {} ({test})", run.stderr.trim());
        return true;
    }
    false
}

/// A short soak with the disk on `disk` and the NIC on `net`: both counts reached on
/// the path's own device counters, nothing grew, and free grants judged exactly where
/// the path uses grants.
fn short_soak(disk: &str, net: &str) {
    let test = format!("short soak, disk {disk}, NIC {net}");
    if !kvm_usable(&test) {
        return;
    }
    let kernel = guest_kernel();
    let dir = scratch_dir("host-shim-soak", &format!("short-{disk}-{net}"));
    let run = soak(&[
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--disk",
        disk,
        "--net",
        net,
        "--requests",
        "2000",
        "--packets",
        "2000",
        "--samples",
        "2",
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--json",
    ]);
    if refused_by_host(&run, &test) {
        return;
    }
    assert_eq!(
        run.status, 0,
        "{test}: stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    assert_eq!(doc["passed"], true, "{doc}");
    assert_eq!(doc["grew"], false, "{doc}");
    assert_eq!(doc["disk"]["path"], disk, "{doc}");
    assert_eq!(doc["net"]["path"], net, "{doc}");
    // Counted by the device beyond the warm-up's writes, and at least what the guest
    // says it did after the warm-up.
    let after = doc["block_requests_after_warm_up"].as_u64().unwrap();
    assert!(after >= 2000, "{doc}");
    assert!(
        after >= doc["guest_requests_after_warm_up"].as_u64().unwrap(),
        "{doc}"
    );
    assert!(
        doc["guest_requests_after_warm_up"].as_u64().unwrap() >= 2000,
        "{doc}"
    );
    assert!(doc["frames"].as_u64().unwrap() >= 2000, "{doc}");
    for w in doc["windows"].as_array().expect("windows") {
        let path = if w["window"] == "block" { disk } else { net };
        assert_eq!(w["path"], path, "{w}");
        let checks = w["checks"].as_array().expect("checks");
        assert_eq!(checks.len(), 5, "{w}");
        for c in checks {
            assert_eq!(c["grew"], false, "{c}");
            // Grants are judged on the Xen paths and only there.
            let grants = c["what"] == "guest free grant refs";
            assert_eq!(c["applies"], !grants || path == "xen", "{c}");
        }
    }
    // Warm-up and 3 phases; start and 3 ping runs.
    let samples = doc["samples"].as_array().expect("samples");
    let count = |w: &str| samples.iter().filter(|s| s["window"] == w).count();
    assert_eq!((count("block"), count("network")), (4, 4), "{doc}");
    for s in samples {
        let path = if s["window"] == "block" { disk } else { net };
        if path == "xen" {
            assert!(s["free_grants"].as_u64().is_some(), "{s}");
        } else {
            assert_eq!(s["free_grants"], "n/a", "{s}");
        }
        assert!(s["rss_kib"].as_u64().unwrap() > 0, "{s}");
        assert!(s["free_frames"].as_u64().unwrap() > 0, "{s}");
    }
}

#[test]
fn a_short_soak_on_the_pv_paths_reaches_its_counts_and_nothing_grows() {
    short_soak("xen", "xen");
}

#[test]
fn a_short_soak_on_ide_dma_and_virtio_net_reaches_its_counts_and_nothing_grows() {
    short_soak("ide-dma", "virtio");
}

#[test]
fn a_short_soak_on_virtio_blk_and_e1000_reaches_its_counts_and_nothing_grows() {
    short_soak("virtio", "e1000");
}

#[test]
fn a_short_soak_on_ide_pio_and_e1000_reaches_its_counts_and_nothing_grows() {
    short_soak("ide-pio", "e1000");
}

#[test]
fn a_shim_that_dies_at_once_is_a_clear_error() {
    let dir = scratch_dir("host-shim-soak", "dies");
    let kernel = dir.join("hello.elf");
    std::fs::write(&kernel, hello_kernel("x", 0)).expect("write kernel");
    let fake = dir.join("fake-shim");
    std::fs::write(&fake, "#!/bin/sh\necho 'dying early' >&2\nexit 3\n").expect("write fake");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = soak(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--shim",
        fake.to_str().unwrap(),
        "--requests",
        "10",
        "--packets",
        "10",
        "--timeout",
        "20",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    if refused_by_host(&run, "dying shim") {
        return;
    }
    assert_eq!(
        run.status, 2,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let errors: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("host-shim: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("the shim ended before"), "{}", errors[0]);
    assert!(errors[0].contains("dying early"), "{}", errors[0]);
    assert!(run.stdout.contains("soak: FAILED"), "{}", run.stdout);
}

#[test]
fn bad_input_is_one_error_line_and_125() {
    let dir = scratch_dir("host-shim-soak", "bad");
    for args in [
        &["--kernel", "/nonexistent/k.elf", "--requests", "10"][..],
        &["--kernel", "k", "--requests", "0"][..],
        &["--kernel", "k", "--packets", "x"][..],
        &["--kernel", "k", "--timeout", "0"][..],
        &["--kernel", "k", "--disk", "e1000"][..],
        &["--kernel", "k", "--disk", ""][..],
        &["--kernel", "k", "--net", "ide-pio"][..],
        &["--kernel", "k", "--net", "xen,e1000"][..],
        &["--kernel", "k", "--block-size", "1000"][..],
        &["--kernel", "k", "--block-size", "0"][..],
        &["--kernel", "k", "--block-size", "128K"][..],
        &["--kernel", "k", "--block-size", "4Q"][..],
        &["--kernel", "k", "--ping-preload", "0"][..],
        &["--kernel", "k", "--ping-preload", "65"][..],
    ] {
        let mut args = args.to_vec();
        let d = dir.to_str().unwrap();
        args.extend(["--dir", d]);
        let run = soak(&args);
        assert_eq!(run.status, 125, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("host-shim: error: "),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    // A wrong path names the known ones, and a NIC is not a disk.
    let d = dir.to_str().unwrap();
    let run = soak(&["--kernel", "k", "--disk", "e1000", "--dir", d]);
    assert!(
        run.stderr.contains("known: xen, ide-dma, ide-pio, virtio"),
        "{}",
        run.stderr
    );
    let run = soak(&["--kernel", "k", "--net", "ide-dma", "--dir", d]);
    assert!(
        run.stderr.contains("known: xen, e1000, virtio"),
        "{}",
        run.stderr
    );
}
