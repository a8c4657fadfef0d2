//! The guest under host-shim inside QEMU (`scripts/shim-in-qemu.sh`): a Linux L1 in QEMU
//! TCG loads kvm_amd and runs a static host-shim, so these tests need no usable KVM on
//! the host and always run. The same assertions as under host-shim on the host
//! (`shim_boot.rs`, `xen.rs`, `pv_io.rs`: PV disk on a file, PV network on a TAP with a
//! client in the L1), and the runner's own errors for bad input.
//!
//! The first run builds the L1 image from Debian packages (downloads cached under
//! `~/.cache/pvh-xen`); a failed download fails the tests, it does not skip them.

use std::process::Command;
use std::time::Duration;

use system_tests::{
    Run, TempDir, assert_good_boot, assert_one_error_line, assert_xen_selftests_passed,
    guest_image, ping_echo_client, run_with_limit, stats_json, with_unusable_cache, workspace_root,
    write_script,
};

/// The runner's bound on one whole run (L1 boot included); generous, since the tests
/// of this file run in parallel on a shared 2-core machine under TCG.
const RUNNER_TIMEOUT: &str = "600";
/// host-shim's own bound inside the L1.
const SHIM_TIMEOUT: &str = "300";
/// The harness's safety net, above the runner's own timeout.
const LIMIT: Duration = Duration::from_secs(700);

fn runner() -> Command {
    Command::new(workspace_root().join("scripts").join("shim-in-qemu.sh"))
}

/// Runs the runner with `opts` before `--` and `shim_args` after it, for the real
/// guest image.
fn run_in_qemu(opts: &[&str], shim_args: &[&str]) -> Run {
    let mut cmd = runner();
    cmd.arg("--kernel")
        .arg(guest_image())
        .args(["--timeout", RUNNER_TIMEOUT])
        .args(opts)
        .arg("--")
        .args(["--timeout", SHIM_TIMEOUT])
        .args(shim_args);
    run_with_limit(cmd, LIMIT)
}

/// Asserts that the runner failed with status 125 and one error line naming `what`.
#[track_caller]
fn assert_runner_error(run: &Run, what: &str) {
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("shim-in-qemu: error: ") && l.contains(what)),
        "stderr lacks an error naming {what:?}:\n{}",
        run.stderr
    );
}

#[test]
fn boots_and_passes_selftests_under_the_shim_in_qemu() {
    let cmdline = "selftest=boot loglevel=info";
    let run = run_in_qemu(&[], &["--cmdline", cmdline]);
    assert_good_boot(&run, cmdline);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("console: com1");
    run.assert_contains("(from HypervisorLeaf)");
    // The console carries the guest's output only: nothing of the L1 in between.
    assert!(
        run.stdout.starts_with("guest-kernel "),
        "stdout: {}",
        run.stdout
    );
}

/// A triple fault inside QEMU: host-shim reports it (status 126), and since KVM on AMD
/// reinitialises the vCPU on a shutdown intercept (its registers then read as the
/// reset state), the runner adds the L1's KVM trace of the shutdown: the guest's RIP
/// and the event it was delivering.
#[test]
fn a_triple_fault_inside_qemu_is_traced_with_its_rip() {
    let run = run_in_qemu(&[], &["--cmdline", "selftest=triple"]);
    assert_eq!(run.code(), Some(126), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("selftest: triple: loading an empty IDT and raising #UD");
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("the L1's KVM traced a guest shutdown"))
        .unwrap_or_else(|| panic!("no shutdown trace on stderr:\n{}", run.stderr));
    assert!(line.contains("reason shutdown rip 0x"), "{line}");
}

#[test]
fn selftest_xen_passes_under_the_shim_in_qemu() {
    let run = run_in_qemu(&[], &["--cmdline", "selftest=xen", "--stats"]);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("xen: Xen 4.17 at CPUID 0x40000000, hypercall MSR 0x40000000, domid 1");
    run.assert_line("xen: hello on the PV console");
    assert_xen_selftests_passed(&run);
    run.assert_line("guest: exit status 0");

    // host-shim's stderr reaches ours.
    let v = stats_json(&run.stderr);
    assert_eq!(v["outcome"]["kind"], "xen_shutdown", "{v}");
    let xen = &v["stats"]["xen"];
    assert_eq!(xen["hypercall_errors"], 0, "{v}");
    // Here the hypercalls are `vmcall`s that KVM hands over (KVM_EXIT_XEN), so the
    // continued long multicall and grant copy went through that exit: KVM's own
    // completion (result, step over the `vmcall`) is done first, then the guest is
    // set back to the instruction.
    assert_eq!(xen["vmcall_intercepted"], true, "{v}");
    assert_eq!(xen["hypercall_continuations"], 5, "{v}");
    assert!(xen["upcalls_injected"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(xen["timer_fires"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(xen["xenstore"]["transaction_conflicts"], 2, "{v}");
}

#[test]
fn guest_status_files_and_hooks_pass_through() {
    // The guest image goes in at another path (with a space), a --file at its own
    // path; the pre-hook finds both, /dev/kvm and a TAP it creates; the guest panics,
    // which ends host-shim, and so the runner, with status 2; the hook alongside the
    // shim reports its status.
    let dir = tempdir();
    let copy = dir.0.join("guest copy.elf");
    std::fs::copy(guest_image(), &copy).expect("copy the guest image");
    let data = dir.0.join("data.txt");
    std::fs::write(&data, "hello from the host\n").expect("write the data file");
    let pre = dir.0.join("pre.sh");
    write_script(
        &pre,
        format!(
            "set -e\ntest -s '{}'\ngrep -qx 'hello from the host' '{}'\n\
             test -c /dev/kvm\ntest -c /dev/net/tun\n\
             tunctl -t tap0 >/dev/null\nip link set tap0 up\necho pre-hook: ok\n",
            copy.display(),
            data.display()
        ),
    )
    .expect("write the pre-hook");
    let script = dir.0.join("script.sh");
    write_script(&script, "exit 7\n").expect("write the hook");
    let mut cmd = runner();
    cmd.arg("--kernel")
        .arg(&copy)
        .args(["--timeout", RUNNER_TIMEOUT])
        .arg("--file")
        .arg(&data)
        .arg("--l1-pre")
        .arg(&pre)
        .arg("--l1-script")
        .arg(&script)
        .arg("--")
        .args(["--timeout", SHIM_TIMEOUT, "--cmdline", "selftest=panic"]);
    let run = run_with_limit(cmd, LIMIT);
    run.assert_contains("PANIC: panicked at ");
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
    for line in [
        "pre-hook: ok",
        "shim-in-qemu: the --l1-script exited with status 7",
    ] {
        assert!(
            run.stderr.lines().any(|l| l == line),
            "stderr lacks {line:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn pv_disk_works_under_the_shim_in_qemu() {
    // blkback inside the L1 on a --file image: the guest writes a pattern, flushes,
    // reads it back and verifies it (the writes stay in the L1's copy).
    let dir = tempdir();
    let img = dir.0.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("create the disk image");
    let img = img.to_str().expect("UTF-8 temp path");
    let run = run_in_qemu(
        &["--file", img],
        &[
            "--cmdline",
            "blk.workload=write-pattern,verify-pattern blk.size=256K blk.bs=16K blk.qd=4 blk.seed=7",
            "--disk",
            img,
        ],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("blk: vbd devices: [\"51712\"]");
    run.assert_contains("mismatches 0");
    run.assert_line("blk: PASS");
    run.assert_line("guest: exit status 0");
}

#[test]
fn pv_network_works_under_the_shim_in_qemu() {
    // netback inside the L1 on a TAP the pre-hook configures; a client in the L1 pings
    // the guest and talks to its TCP echo port, and the guest stops after that one
    // connection.
    let dir = tempdir();
    let pre = dir.0.join("pre.sh");
    write_script(
        &pre,
        "set -e\ntunctl -t tap0 >/dev/null\nip addr add 10.203.0.1/24 dev tap0\nip link set tap0 up\n",
    )
    .expect("write the pre-hook");
    let client = dir.0.join("client.sh");
    write_script(
        &client,
        ping_echo_client("10.203.0.2", "hello through netback"),
    )
    .expect("write the client");
    let run = run_in_qemu(
        &[
            "--l1-pre",
            pre.to_str().expect("UTF-8 temp path"),
            "--l1-script",
            client.to_str().expect("UTF-8 temp path"),
        ],
        &[
            "--cmdline",
            "net.ip=10.203.0.2/24 net.exit-after=1",
            "--net",
            "tap=tap0",
        ],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_line("net: PASS");
    for line in [
        "client: ping answered",
        "client: echo said: hello through netback",
        "shim-in-qemu: the --l1-script exited with status 0",
    ] {
        assert!(
            run.stderr.lines().any(|l| l == line),
            "stderr lacks {line:?}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn kvm_amd_failing_to_load_is_reported() {
    // Without SVM: the L1 boots but kvm_amd refuses to load.
    let run = run_in_qemu(
        &["--l1-cpu", "qemu64,-svm"],
        &["--cmdline", "selftest=boot"],
    );
    assert_runner_error(&run, "kvm_amd did not load");
    assert_eq!(run.stdout, "", "no guest output expected");
}

#[test]
fn runner_timeout_stops_the_run() {
    let mut cmd = runner();
    cmd.arg("--kernel").arg(guest_image()).args([
        "--timeout",
        "3",
        "--",
        "--cmdline",
        "selftest=hang",
    ]);
    let run = run_with_limit(cmd, LIMIT);
    assert_eq!(run.code(), Some(124), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("shim-in-qemu: error: timed out: the run did not end within 3 s"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let mut cmd = runner();
    cmd.args(["--kernel", "/nonexistent/guest.elf", "--", "--cmdline", "x"]);
    let run = run_with_limit(cmd, LIMIT);
    assert_runner_error(&run, "guest kernel '/nonexistent/guest.elf': no such file");
}

#[test]
fn missing_qemu_is_a_clear_error() {
    let mut cmd = runner();
    cmd.arg("--kernel").arg(guest_image()).args([
        "--qemu",
        "/nonexistent/qemu-system-x86_64",
        "--",
    ]);
    let run = run_with_limit(cmd, LIMIT);
    assert_runner_error(&run, "QEMU not found");
}

#[test]
fn an_unforeseen_failure_is_one_error_line() {
    // Any existing file passes as --shim: the run fails at the cache, before QEMU.
    let mut cmd = runner();
    with_unusable_cache(&mut cmd)
        .arg("--kernel")
        .arg(guest_image())
        .arg("--shim")
        .arg(guest_image())
        .arg("--");
    let run = run_with_limit(cmd, LIMIT);
    assert_one_error_line(&run, "shim-in-qemu");
}

#[test]
fn bad_runner_arguments_are_refused() {
    for (args, what) in [
        (&["--bogus"][..], "unknown option '--bogus'"),
        (&["--timeout", "soon"], "--timeout 'soon'"),
        (
            &["--file", "/nonexistent/disk.img"],
            "--file '/nonexistent/disk.img'",
        ),
        (
            &["--", "--kernel", "x"],
            "give the guest kernel as the runner's --kernel",
        ),
    ] {
        let mut cmd = runner();
        cmd.arg("--kernel").arg(guest_image()).args(args);
        let run = run_with_limit(cmd, LIMIT);
        assert_runner_error(&run, what);
    }
}

fn tempdir() -> TempDir {
    TempDir::new("shim-in-qemu-test")
}
