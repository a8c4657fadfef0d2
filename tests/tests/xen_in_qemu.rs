//! The guest as a PVH domU on real Xen: Debian's Xen 4.17 with a Debian Linux PV dom0,
//! booted in QEMU TCG by `scripts/xen-in-qemu.sh`, which builds (and caches) the dom0
//! image from Debian packages, `xl create -F`s the guest and exits with its status.
//! Nothing here is skipped: QEMU and the Debian archive are part of this project's
//! machines (scripts/setup.sh), so a download or boot failure fails the test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use system_tests::{Run, guest_image, qemu_binary, run_with_limit, workspace_root};

/// The guest's own limit inside dom0 (from `xl create` to the domain's end).
const GUEST_TIMEOUT: &str = "180";
/// Safety net for a whole run: a cold dom0-image build (downloads included) plus
/// booting Xen and dom0 under TCG and the runner's own margin.
const RUN_LIMIT: Duration = Duration::from_secs(900);

const XEN_TESTS: [&str; 7] = [
    "xen_store_identity",
    "xen_store_rw",
    "xen_store_watch",
    "xen_store_transaction",
    "xen_evtchn_loopback",
    "xen_grant_copy",
    "xen_timer",
];

fn runner(args: &[&str], kernel: Option<&Path>) -> Run {
    qemu_binary();
    let mut cmd = Command::new(workspace_root().join("scripts").join("xen-in-qemu.sh"));
    if let Some(k) = kernel {
        cmd.arg("--kernel").arg(k);
    }
    cmd.args(args);
    run_with_limit(cmd, RUN_LIMIT)
}

#[track_caller]
fn assert_stderr(run: &Run, fragment: &str) {
    assert!(
        run.stderr.contains(fragment),
        "stderr lacks {fragment:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn selftest_xen_passes_on_real_xen_and_xl_reports_poweroff() {
    let run = runner(
        &["--cmdline", "selftest=xen", "--timeout", GUEST_TIMEOUT],
        Some(guest_image()),
    );
    assert_eq!(
        run.code(),
        Some(0),
        "the guest failed on real Xen\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout,
        run.stderr
    );
    run.assert_line("pvh: cmdline: \"selftest=xen\"");
    run.assert_contains("xen: Xen 4.17 at CPUID 0x40000000, hypercall MSR 0x40000000, domid ");
    // Through the PV console ring and xenconsoled, not port 0xe9.
    run.assert_line("xen: hello on the PV console");
    for test in XEN_TESTS {
        run.assert_contains(&format!("selftest: {test}: PASS"));
    }
    run.assert_line("selftest: 8 passed, 0 failed");
    run.assert_line("guest: exit status 0");
    // xl itself saw SCHEDOP_shutdown(poweroff): reason code 0, not 3 (crash).
    assert_stderr(&run, "has shut down, reason code 0 0x0");
    assert_stderr(&run, "xen-in-qemu: xl reports shutdown (poweroff)");
}

#[test]
fn a_panicking_guest_is_reported_as_a_crash_with_its_status() {
    let run = runner(
        &["--cmdline", "selftest=panic", "--timeout", GUEST_TIMEOUT],
        Some(guest_image()),
    );
    run.assert_contains("PANIC: ");
    run.assert_line("guest: exit status 2");
    assert_stderr(&run, "has shut down, reason code 3 0x3");
    assert_stderr(&run, "xl reports the domain crashed");
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn bad_input_is_refused_before_anything_is_built() {
    let missing = workspace_root().join("target").join("no-such-guest-kernel");
    let run = runner(&[], Some(&missing));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(
        &run,
        &format!(
            "xen-in-qemu: error: guest kernel '{}' does not exist",
            missing.display()
        ),
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    let not_elf = workspace_root().join("Cargo.toml");
    let run = runner(&[], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "is not an ELF file");

    let run = runner(&["--cmdline", "a\"b"], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "--cmdline may not contain double quotes");

    let run = runner(&["--timeout", "soon"], Some(&not_elf));
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "--timeout wants whole seconds");

    // Checked before the default guest build would start.
    let run = runner(&["--disk", "/nonexistent/disk.img"], None);
    assert_eq!(run.code(), Some(125), "{}\n{}", run.stdout, run.stderr);
    assert_stderr(&run, "disk image '/nonexistent/disk.img' does not exist");
}
