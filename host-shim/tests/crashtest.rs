//! `host-shim crashtest` through the binary: with KVM, the real guest on every disk
//! path is killed twice and nothing it saw flushed is lost; without KVM, fake shims
//! (scripts standing in for `host-shim run`) prove that a lying one is caught, that
//! one dying early or staying silent is a clear error and not a hang, and that bad
//! input is one error line and status 125.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use common::{guest_kernel, hello_kernel, kvm_usable, scratch_dir};

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

fn crashtest(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_host-shim"))
        .arg("crashtest")
        .args(args)
        .output()
        .expect("run host-shim crashtest");
    Run {
        status: out.status.code().expect("exited normally"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An executable shell script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_str().expect("utf-8 path").to_owned()
}

/// A valid PVH kernel (the fake shims never boot it; the crash test checks it first).
fn kernel(dir: &Path) -> String {
    let path = dir.join("hello.elf");
    std::fs::write(&path, hello_kernel("x", 0)).expect("write kernel");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn every_path_keeps_what_it_flushed_through_two_kills() {
    if !kvm_usable("crashtest on every path") {
        return;
    }
    let kernel = guest_kernel();
    let dir = scratch_dir("host-shim-crashtest", "real");
    let run = crashtest(&[
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--paths",
        "xen,ide-dma,virtio",
        "--rounds",
        "2",
        "--size",
        "256K",
        "--seed",
        "16",
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert_eq!(
        run.status, 0,
        "stderr: {}\nstdout: {}",
        run.stderr, run.stdout
    );
    let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    assert_eq!(doc["passed"], true);
    assert_eq!(doc["sectors_lost"], 0);
    let paths = doc["paths"].as_array().expect("paths");
    let names: Vec<_> = paths.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["xen", "ide-dma", "virtio"]);
    for p in paths {
        let name = &p["path"];
        assert_eq!(p["kills"], 2, "{name}");
        assert_eq!(p["durable_points_checked"], 2, "{name}");
        assert_eq!(p["sectors_checked"], 2 * 512, "{name}");
        assert_eq!(p["sectors_lost"], 0, "{name}");
        assert!(p["durable_lines"].as_u64().unwrap() >= 2, "{name}");
        assert!(p["error"].is_null(), "{name}: {}", p["error"]);
        for r in p["per_round"].as_array().unwrap() {
            // The kill came after the planned line: at least that many were seen.
            assert!(
                r["durable_lines"].as_u64() >= r["after_lines"].as_u64(),
                "{r}"
            );
        }
    }
    // --dir is kept; the images in it are removed after their path.
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn a_shim_that_acknowledges_flushes_it_never_made_is_caught() {
    let dir = scratch_dir("host-shim-crashtest", "lying");
    let kernel = kernel(&dir);
    // Six lines claiming all of generation 1 durable, then nothing written.
    let shim = script(
        &dir,
        "lying.sh",
        "for i in 1 2 3 4 5 6; do echo 'blk-durable: gen=2 next=0'; done\nexec sleep 60",
    );
    let images = dir.join("images");
    let run = crashtest(&[
        "--kernel",
        &kernel,
        "--shim",
        &shim,
        "--paths",
        "virtio",
        "--rounds",
        "1",
        "--size",
        "16K",
        "--seed",
        "5",
        "--dir",
        images.to_str().unwrap(),
    ]);
    assert_eq!(run.status, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "LOST sector at byte 0: wanted generation 1 or newer, found stale (generation 0)"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("| virtio | 1 | 1 | 6 | 1 | 32 | 0 | 32 | DATA LOST |")
    );
    assert!(run.stdout.ends_with("crashtest: FAIL: 32 sector(s) lost\n"));
    assert!(images.join("crash-virtio-round1-lost.img").is_file());
}

#[test]
fn a_shim_that_dies_or_stays_silent_is_an_error_not_a_hang() {
    let dir = scratch_dir("host-shim-crashtest", "failing");
    let kernel = kernel(&dir);
    let early = script(&dir, "early.sh", "echo booting\necho oops >&2\nexit 3");
    let silent = script(&dir, "silent.sh", "echo booting\nexec sleep 60");
    for (shim, want) in [
        (
            &early,
            "host-shim: error: crashtest: xen round 1: the shim closed its output before \
             the kill (it exited: exit status: 3); shim stderr: [oops]; console tail: [booting]",
        ),
        (
            &silent,
            "host-shim: error: crashtest: xen round 1: no durable line 1 within 1 s; shim \
             stderr: []; console tail: [booting]",
        ),
    ] {
        let run = crashtest(&[
            "--kernel",
            &kernel,
            "--shim",
            shim,
            "--paths",
            "xen",
            "--rounds",
            "3",
            "--size",
            "16K",
            "--timeout",
            "1",
            "--json",
        ]);
        assert_eq!(run.status, 2, "{}", run.stderr);
        // One error, then the path stops.
        assert_eq!(run.stderr, format!("{want}\n"));
        let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
        assert_eq!(doc["passed"], false);
        assert_eq!(doc["paths"][0]["rounds"], 0);
    }
}

#[test]
fn bad_input_is_one_error_line_and_125() {
    let dir = scratch_dir("host-shim-crashtest", "bad");
    let kernel = kernel(&dir);
    let not_elf = dir.join("not.elf");
    std::fs::write(&not_elf, b"hello").unwrap();
    for (args, want) in [
        (vec!["--kernel", &kernel, "--rounds", "0"], "--rounds"),
        (vec!["--kernel", &kernel, "--size", "1000"], "--size 1000"),
        (vec!["--kernel", &kernel, "--size", "2G"], "--size"),
        (
            vec!["--kernel", &kernel, "--size", "x"],
            "'x' is not a size",
        ),
        (
            vec!["--kernel", &kernel, "--paths", "e1000"],
            "unknown path 'e1000'",
        ),
        (vec!["--kernel", &kernel, "--qd", "0"], "--qd"),
        (vec!["--kernel", &kernel, "--timeout", "0"], "--timeout"),
        (
            vec!["--kernel", "/nonexistent/k.elf"],
            "kernel /nonexistent/k.elf: cannot read",
        ),
        (vec!["--kernel", not_elf.to_str().unwrap()], "not.elf"),
        (
            vec!["--kernel", &kernel, "--dir", "/proc/version/x"],
            "cannot create /proc/version/x",
        ),
        (vec!["--paths", "xen"], "--kernel"),
    ] {
        let run = crashtest(&args);
        assert_eq!(run.status, 125, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "", "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.starts_with("host-shim: error: ") && run.stderr.contains(want),
            "{args:?}: {:?} should mention {want:?}",
            run.stderr
        );
    }
}
