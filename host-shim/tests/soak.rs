//! `host-shim soak` through the binary, short: 2000 block requests and 2000 frames
//! through one shim, and nothing grew (the full size, 10^6 of each, is a manual run:
//! see the README). Needs /dev/kvm, root (a private network namespace, a TAP) and
//! ping; each missing one is a loud SKIPPED line. Also: a shim that dies at once is a
//! clear error with status 2, not a hang, and bad input is one error line and 125.

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

#[test]
fn a_short_soak_reaches_its_counts_and_nothing_grows() {
    if !kvm_usable("short soak") {
        return;
    }
    let kernel = guest_kernel();
    let dir = scratch_dir("host-shim-soak", "short");
    let run = soak(&[
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
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
    if refused_by_host(&run, "short soak") {
        return;
    }
    assert_eq!(
        run.status, 0,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    assert_eq!(doc["passed"], true, "{doc}");
    assert_eq!(doc["grew"], false, "{doc}");
    assert!(doc["blkback_requests"].as_u64().unwrap() >= 2000, "{doc}");
    assert!(doc["netback_frames"].as_u64().unwrap() >= 2000, "{doc}");
    for w in doc["windows"].as_array().expect("windows") {
        let checks = w["checks"].as_array().expect("checks");
        assert_eq!(checks.len(), 5, "{w}");
        for c in checks {
            assert_eq!(c["grew"], false, "{c}");
        }
    }
    // Warm-up and 3 phases; start and 3 ping runs.
    let samples = doc["samples"].as_array().expect("samples");
    let count = |w: &str| samples.iter().filter(|s| s["window"] == w).count();
    assert_eq!((count("block"), count("network")), (4, 4), "{doc}");
    for s in samples {
        assert!(
            s["free_grants"].as_u64().is_some(),
            "the guest has Xen: {s}"
        );
        assert!(s["rss_kib"].as_u64().unwrap() > 0, "{s}");
    }
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
}
