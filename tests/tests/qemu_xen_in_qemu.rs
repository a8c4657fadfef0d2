//! The guest under QEMU's own Xen emulation (`scripts/qemu-xen-in-qemu.sh`): a second,
//! independent implementation of the Xen interface (KVM's Xen HVM support with QEMU's
//! emulated xenstore, event channels and grant tables, and its `xen-disk` and
//! `xen-net-device` PV backends), run by Debian's QEMU 10 inside the same Linux L1 VM
//! as `shim_in_qemu.rs` (QEMU TCG on the host, so no usable host KVM is needed). The
//! same assertions as under host-shim and real Xen: the Xen self-tests, a PV disk
//! workload, the PV network service with a client in the L1; and the runner's own
//! errors for bad input.
//!
//! The first run builds the L1 image and the L1's QEMU from Debian packages (downloads
//! cached under `~/.cache/pvh-xen`); a failed download fails the tests, it does not skip
//! them. They skip (loudly) only when the host has no QEMU at all.

use std::process::Command;
use std::time::Duration;

use system_tests::{
    Run, TempDir, XEN_SELFTESTS, assert_one_error_line, guest_image, ping_echo_client,
    run_with_limit, with_unusable_cache, workspace_root, write_script,
};

/// The runner's bound on one whole run (L1 boot included); generous, since the tests
/// of this file run in parallel on a shared 2-core machine under TCG. A cached run
/// takes about 10 s alone.
const RUNNER_TIMEOUT: &str = "600";
/// The harness's safety net, above the runner's own timeout.
const LIMIT: Duration = Duration::from_secs(700);
/// The host's QEMU, which runs the L1.
const QEMU: &str = "qemu-system-x86_64";

/// Whether the host's QEMU is installed. When it is not, says so loudly on stderr: the
/// caller must skip, never pretend to pass.
fn qemu_installed(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(QEMU).is_file()));
    if !found {
        // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
        // and a skip must be seen.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: {QEMU} is not installed (scripts/setup.sh installs it); \
             this test did not run"
        );
    }
    found
}

fn runner() -> Command {
    Command::new(workspace_root().join("scripts").join("qemu-xen-in-qemu.sh"))
}

/// Runs the runner on the real guest image with `cmdline` and more options.
fn run_in_qemu_xen(cmdline: &str, opts: &[&str]) -> Run {
    let mut cmd = runner();
    cmd.arg("--kernel")
        .arg(guest_image())
        .args(["--timeout", RUNNER_TIMEOUT, "--cmdline", cmdline])
        .args(opts);
    run_with_limit(cmd, LIMIT)
}

/// Asserts that stderr has `line` as a whole line.
#[track_caller]
fn assert_stderr_line(run: &Run, line: &str) {
    assert!(
        run.stderr.lines().any(|l| l == line),
        "stderr lacks {line:?}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}

/// Asserts that the runner failed with status 125 and one error line naming `what`.
#[track_caller]
fn assert_runner_error(run: &Run, what: &str) {
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("qemu-xen-in-qemu: error: "))
        .collect();
    assert!(
        errors.len() == 1 && errors[0].contains(what),
        "stderr lacks exactly one error line naming {what:?}:\n{}",
        run.stderr
    );
}

/// The one `selftest=xen` test QEMU cannot pass: its Xen emulation has no
/// `GNTTABOP_copy` (target/i386/kvm/xen-emu.c answers `-ENOSYS`; its PV backends map
/// grants from QEMU itself), which real Xen and host-shim implement.
const NO_GRANT_COPY: &str = "selftest: xen_grant_copy: FAIL (GNTTABOP_copy: hypercall failed: Function not implemented (ENOSYS))";
/// QEMU's Xen emulation has no `multicall` either (-ENOSYS, 38).
const NO_MULTICALL: &str = "selftest: xen_long_multicall: FAIL (multicall returned -38)";

#[test]
fn selftest_xen_passes_under_qemu_xen_emulation() {
    if !qemu_installed("selftest_xen_passes_under_qemu_xen_emulation") {
        return;
    }
    let run = run_in_qemu_xen("selftest=xen", &[]);
    // The console carries the guest's output only: nothing of the L1 or SeaBIOS.
    assert!(
        run.stdout.starts_with("guest-kernel "),
        "stdout: {}",
        run.stdout
    );
    // QEMU's Xen emulation, at the version the runner asks for (xen-version=0x4000a).
    run.assert_contains("xen: Xen 4.10 at CPUID 0x40000000, hypercall MSR 0x40000000");
    // Every test passes except grant copy and multicall, which meet QEMU's ENOSYS
    // (QEMU 10.0 from bookworm-backports; once a QEMU implements them, this test fails
    // and must change).
    run.assert_line(NO_GRANT_COPY);
    run.assert_line(NO_MULTICALL);
    let missing = ["xen_grant_copy", "xen_long_multicall"];
    for test in XEN_SELFTESTS.iter().filter(|t| !missing.contains(t)) {
        run.assert_contains(&format!("selftest: {test}: PASS"));
    }
    run.assert_line(&format!(
        "selftest: {} passed, 2 failed",
        XEN_SELFTESTS.len() - 2
    ));
    // KVM's in-kernel SCHEDOP_poll returns at once here; the wait still blocks (in hlt).
    run.assert_contains("selftest: xen_store_wait_blocks: PASS (woke ");
    run.assert_line("guest: exit status 1");
    assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn pv_disk_works_under_qemu_xen_emulation() {
    if !qemu_installed("pv_disk_works_under_qemu_xen_emulation") {
        return;
    }
    // QEMU's xen-disk backend on a copy of the image in the L1: the guest writes a
    // pattern, flushes, reads it back and verifies it.
    let dir = tempdir();
    let img = dir.0.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("create the disk image");
    let run = run_in_qemu_xen(
        "blk.workload=write-pattern,verify-pattern blk.size=256K blk.bs=16K blk.qd=4 \
         blk.seed=7 selftest=none",
        &["--disk", img.to_str().expect("UTF-8 temp path")],
    );
    run.assert_contains("blk: vbd devices: [\"51712\"]");
    run.assert_contains("blk: 2048 sectors of 512 bytes");
    run.assert_contains("mismatches 0");
    run.assert_line("blk: PASS");
    run.assert_line("guest: exit status 0");
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn pv_network_works_under_qemu_xen_emulation() {
    if !qemu_installed("pv_network_works_under_qemu_xen_emulation") {
        return;
    }
    // QEMU's xen-net-device on a TAP in the L1 (10.0.0.1/24): a client there pings the
    // guest and talks to its TCP echo port, and the guest stops after that connection.
    let dir = tempdir();
    let client = dir.0.join("client.sh");
    write_script(
        &client,
        ping_echo_client("10.0.0.2", "hello through xen-net-device"),
    )
    .expect("write the client");
    let run = run_in_qemu_xen(
        "net.ip=10.0.0.2/24 net.exit-after=1 selftest=none",
        &[
            "--net",
            "--l1-script",
            client.to_str().expect("UTF-8 temp path"),
        ],
    );
    run.assert_contains("net: vif devices: [\"0\"]");
    run.assert_line("net: PASS");
    for line in [
        "client: ping answered",
        "client: echo said: hello through xen-net-device",
        "qemu-xen-in-qemu: the --l1-script exited with status 0",
    ] {
        assert_stderr_line(&run, line);
    }
    run.assert_line("guest: exit status 0");
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn guest_status_and_hooks_pass_through() {
    if !qemu_installed("guest_status_and_hooks_pass_through") {
        return;
    }
    // The guest panics (status 2 through the isa-debug-exit port, then
    // SCHEDOP_shutdown(crash), whose register dump the runner holds back); the pre-hook
    // sees the L1's KVM and the guest image; the hook alongside reports its status.
    let dir = tempdir();
    let pre = dir.0.join("pre.sh");
    write_script(
        &pre,
        "test -c /dev/kvm\ntest -s /l1/guest.elf\necho pre-hook: ok\n",
    )
    .expect("write the pre-hook");
    let script = dir.0.join("script.sh");
    write_script(&script, "exit 7\n").expect("write the hook");
    let run = run_in_qemu_xen(
        "selftest=panic",
        &[
            "--l1-pre",
            pre.to_str().expect("UTF-8 temp path"),
            "--l1-script",
            script.to_str().expect("UTF-8 temp path"),
        ],
    );
    run.assert_contains("PANIC: panicked at ");
    run.assert_line("guest: exit status 2");
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
    assert_stderr_line(&run, "pre-hook: ok");
    assert_stderr_line(
        &run,
        "qemu-xen-in-qemu: the --l1-script exited with status 7",
    );
    assert!(
        !run.stderr.lines().any(|l| l.starts_with("RAX=")),
        "a register dump on stderr:\n{}",
        run.stderr
    );
}

#[test]
fn runner_timeout_stops_the_run() {
    if !qemu_installed("runner_timeout_stops_the_run") {
        return;
    }
    let mut cmd = runner();
    cmd.arg("--kernel")
        .arg(guest_image())
        .args(["--timeout", "3", "--cmdline", "selftest=hang"]);
    let run = run_with_limit(cmd, LIMIT);
    assert_eq!(run.code(), Some(124), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("qemu-xen-in-qemu: error: timed out: the run did not end within 3 s"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    // Refused before anything is built, downloaded or booted (so this runs without
    // QEMU too): one error line, status 125.
    let cases: [(&[&str], &str); 6] = [
        (
            &["--kernel", "/nonexistent/guest.elf"],
            "guest kernel '/nonexistent/guest.elf': no such file",
        ),
        (&["--kernel", "/"], "guest kernel '/': not a regular file"),
        (
            &["--disk", "/nonexistent/disk.img"],
            "--disk '/nonexistent/disk.img': no such file",
        ),
        (&["--bogus"], "unknown option '--bogus'"),
        (&["--timeout", "soon"], "--timeout 'soon'"),
        (&["--l1-ip", "10.0.0.1"], "--l1-ip '10.0.0.1'"),
    ];
    for (args, what) in cases {
        let mut cmd = runner();
        cmd.args(args);
        let run = run_with_limit(cmd, LIMIT);
        assert_runner_error(&run, what);
        assert_eq!(run.stdout, "", "no guest output expected");
    }
}

#[test]
fn an_unforeseen_failure_is_one_error_line() {
    let mut cmd = runner();
    with_unusable_cache(&mut cmd)
        .arg("--kernel")
        .arg(guest_image());
    let run = run_with_limit(cmd, LIMIT);
    assert_one_error_line(&run, "qemu-xen-in-qemu");
}

fn tempdir() -> TempDir {
    TempDir::new("qemu-xen-in-qemu-test")
}
