//! The real guest image boots under host-shim (KVM) by its PVH note, and every way a
//! guest can end is reported as documented. Skips loudly where /dev/kvm is absent.

use system_tests::{assert_good_boot, guest_image, kvm_available, run_shim, stats_json};

const TIMEOUT: &str = "120";

#[test]
fn boots_and_passes_selftests() {
    if !kvm_available("shim_boot::boots_and_passes_selftests") {
        return;
    }
    let cmdline = "selftest=boot loglevel=info";
    let run = run_shim(guest_image(), cmdline, &["--timeout", TIMEOUT]);
    assert_good_boot(&run, cmdline);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    // The shim hands over COM1 like a PC, and the TSC frequency in Xen's time leaf.
    run.assert_line("console: com1");
    run.assert_contains("(from HypervisorLeaf)");
}

#[test]
fn memory_size_reaches_the_guest() {
    if !kvm_available("shim_boot::memory_size_reaches_the_guest") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=boot",
        &["--timeout", TIMEOUT, "--mem", "512"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("selftest: start_info: PASS (511 MiB RAM");
}

#[test]
fn stats_count_exits_by_kind_as_json() {
    if !kvm_available("shim_boot::stats_count_exits_by_kind_as_json") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=none",
        &["--timeout", TIMEOUT, "--stats"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let v = stats_json(&run.stderr);
    let exits = &v["stats"]["exits"];
    // Every serial console byte is a port write; the exit port is one more. The line
    // the guest writes to the Xen PV console ring costs no port write.
    let io_out = exits["io_out"].as_u64().expect("exits.io_out");
    let pv_line = "xen: hello on the PV console\n";
    assert!(run.stdout.contains(pv_line), "{}", run.stdout);
    let console_bytes = (run.stdout.len() - pv_line.len()) as u64;
    assert!(
        io_out > console_bytes,
        "io_out {io_out} <= console bytes {console_bytes}: {v}"
    );
    assert!(exits["io_in"].as_u64().expect("exits.io_in") > 0, "{v}");
    assert_eq!(exits["shutdown"].as_u64(), Some(0), "{v}");
}

#[test]
fn page_fault_is_reported_and_exit_status_is_3() {
    if !kvm_available("shim_boot::page_fault_is_reported_and_exit_status_is_3") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=fault", &["--timeout", TIMEOUT]);
    run.assert_contains("EXCEPTION: #PF page fault (vector 14)");
    run.assert_contains("cr2=0x100000000");
    assert_eq!(run.code(), Some(3), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn triple_fault_is_reported_with_status_126() {
    if !kvm_available("shim_boot::triple_fault_is_reported_with_status_126") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=triple", &["--timeout", TIMEOUT]);
    run.assert_contains("selftest: triple: loading an empty IDT and raising #UD");
    assert_eq!(run.code(), Some(126), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("triple-fault"),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(
        run.stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn guest_that_never_exits_is_stopped_by_timeout() {
    if !kvm_available("shim_boot::guest_that_never_exits_is_stopped_by_timeout") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=hang", &["--timeout", "3"]);
    run.assert_contains("selftest: hang: spinning forever");
    assert_eq!(run.code(), Some(124), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("did not exit within 3 s"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn bad_guest_cmdline_is_the_guests_error() {
    if !kvm_available("shim_boot::bad_guest_cmdline_is_the_guests_error") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=bogus", &["--timeout", TIMEOUT]);
    run.assert_contains("error: cmdline: bad option 'selftest=bogus'");
    assert_eq!(run.code(), Some(5));
}

#[test]
fn panic_is_reported_with_exit_status_2() {
    if !kvm_available("shim_boot::panic_is_reported_with_exit_status_2") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=panic", &["--timeout", TIMEOUT]);
    run.assert_contains("PANIC: panicked at ");
    run.assert_contains("selftest: deliberate panic");
    assert_eq!(run.code(), Some(2), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    if !kvm_available("shim_boot::stack_overflow_hits_the_guard_page_and_is_reported") {
        return;
    }
    let run = run_shim(guest_image(), "selftest=stack", &["--timeout", TIMEOUT]);
    run.assert_contains("selftest: stack: recursing into the guard page");
    run.assert_contains("EXCEPTION: #DF double fault (vector 8)");
    assert_eq!(run.code(), Some(3), "{}\n{}", run.stdout, run.stderr);
}
