//! The Xen interface end to end: the real guest's `selftest=xen` under host-shim (the
//! shim plays Xen), the same image without Xen (`--no-xen`, QEMU), and the counters
//! the shim reports. Skips loudly where /dev/kvm is absent.

use system_tests::{
    Machine, assert_xen_selftests_passed, guest_image, kvm_available, run_qemu, run_shim,
    stats_json,
};

const TIMEOUT: &str = "120";

#[test]
fn selftest_xen_passes_under_the_shim_and_ends_with_schedop_shutdown() {
    if !kvm_available("xen::selftest_xen_passes_under_the_shim") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=xen",
        &["--timeout", TIMEOUT, "--stats"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains("xen: Xen 4.17 at CPUID 0x40000000, hypercall MSR 0x40000000, domid 1");
    run.assert_line("xen: hello on the PV console");
    assert_xen_selftests_passed(&run);
    run.assert_contains("selftest: xen_evtchn_loopback: PASS (ports ");
    run.assert_line("guest: exit status 0");
    // The xenstore client blocks in SCHEDOP_poll rather than spinning: its 30 ms wait
    // with nothing to come took a few polls (the shim ends each after 10 ms at most).
    // The client's other waits end at once: the shim answers during the notification.
    run.assert_contains("selftest: xen_store_wait_blocks: PASS (woke ");
    let [waits, wakeups] = line_numbers(&run.stdout, "xen: xenstore client waited ")[..] else {
        panic!("{}", run.stdout);
    };
    assert!(
        waits >= 2 && wakeups <= waits + 10,
        "{waits} waits, {wakeups} wake-ups"
    );

    let v = stats_json(&run.stderr);
    assert_eq!(v["outcome"]["kind"], "xen_shutdown", "{v}");
    assert_eq!(v["outcome"]["reason"], 0, "{v}");
    let xen = &v["stats"]["xen"];
    let calls = &xen["hypercalls"];
    for name in [
        "memory_op.add_to_physmap",
        "hvm_op.set_evtchn_upcall_vector",
        "event_channel_op.alloc_unbound",
        "event_channel_op.bind_interdomain",
        "event_channel_op.send",
        "grant_table_op.copy",
        "vcpu_op.set_singleshot_timer",
        "sched_op.shutdown",
    ] {
        assert!(calls[name].as_u64().unwrap_or(0) >= 1, "{name}: {v}");
    }
    assert_eq!(xen["hypercall_errors"], 0, "{v}");
    // The long multicall (1000 entries) and grant copy (600 elements) were preempted
    // after every 256 elements and continued by the guest running the hypercall
    // instruction again: 3 + 2 continuations, each entry run once.
    assert_eq!(xen["hypercall_continuations"], 5, "{v}");
    assert_eq!(calls["multicall"], 4, "{v}");
    let entries: u64 = xen["multicall_entries"]
        .as_object()
        .map(|m| m.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(entries, 1000, "{v}");
    // The xenstore wait blocks in SCHEDOP_poll (then, after a spurious return, in hlt).
    assert!(calls["sched_op.poll"].as_u64() >= Some(1), "{v}");
    assert!(xen["upcalls_injected"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert!(xen["timer_fires"].as_u64().unwrap_or(0) >= 1, "{v}");
    let store = &xen["xenstore"];
    assert_eq!(store["transaction_conflicts"], 2, "{v}");
    assert_eq!(store["errors"]["EACCES"], 1, "{v}");
    // Every hypercall went through the hypercall page's port exit.
    let total: u64 = calls
        .as_object()
        .expect("hypercalls map")
        .values()
        .map(|n| n.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        v["stats"]["exits"]["hypercall"].as_u64(),
        Some(total),
        "{v}"
    );
}

/// The numbers in the line starting with `prefix`.
fn line_numbers(stdout: &str, prefix: &str) -> Vec<u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line '{prefix}...' in:\n{stdout}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// PIO exits at `port` in the shim's stats (0 if none).
fn port_exits(v: &serde_json::Value, port: &str) -> u64 {
    v["stats"]["pio_ports"][port].as_u64().unwrap_or(0)
}

#[test]
fn console_xen_logs_through_the_pv_console_ring() {
    if !kvm_available("xen::console_xen_logs_through_the_pv_console_ring") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=xen console=xen",
        &["--timeout", TIMEOUT, "--stats"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    // Lines from before the Xen interface came up (buffered, then replayed), from
    // after, and the exit line.
    assert!(
        run.stdout.starts_with("guest-kernel "),
        "early lines first: {}",
        run.stdout
    );
    run.assert_line("console: xen (from Xen bring-up)");
    run.assert_contains("pvh: memmap: ");
    run.assert_contains("xen: Xen 4.17 at CPUID 0x40000000");
    assert_xen_selftests_passed(&run);
    run.assert_line("guest: exit status 0");
    assert!(!run.stdout.contains("warning: console"), "{}", run.stdout);
    // Not one byte went out by COM1 (its line-status register is read before every
    // byte) or port 0xe9: everything came through the ring and its backend.
    let v = stats_json(&run.stderr);
    assert_eq!(port_exits(&v, "0x3fd"), 0, "{v}");
    assert_eq!(port_exits(&v, "0xe9"), 0, "{v}");
    let sends = v["stats"]["xen"]["hypercalls"]["event_channel_op.send"]
        .as_u64()
        .unwrap_or(0);
    assert!(sends >= 50, "one notification per log line at least: {v}");
}

#[test]
fn console_xenio_logs_through_console_io() {
    if !kvm_available("xen::console_xenio_logs_through_console_io") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=none console=xenio",
        &["--timeout", TIMEOUT, "--stats"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    // console_io output is Xen's log, not a guest console: as on Xen, it is kept apart
    // (on the shim's stderr, each line prefixed with the domain), and the guest wrote
    // nothing to a console of its own.
    let log: Vec<&str> = run.stderr.lines().collect();
    assert!(
        log.iter().any(|l| l.starts_with("(d1) guest-kernel ")),
        "{}",
        run.stderr
    );
    for line in [
        "(d1) console: xenio (from Xen bring-up)",
        "(d1) guest: exit status 0",
    ] {
        assert!(log.contains(&line), "{line:?} not in\n{}", run.stderr);
    }
    assert!(!run.stdout.contains("guest-kernel "), "{}", run.stdout);
    let v = stats_json(&run.stderr);
    assert_eq!(port_exits(&v, "0x3fd"), 0, "{v}");
    assert_eq!(port_exits(&v, "0xe9"), 0, "{v}");
    assert!(
        v["stats"]["xen"]["hypercalls"]["console_io"]
            .as_u64()
            .unwrap_or(0)
            >= 10,
        "{v}"
    );
}

#[test]
fn console_xen_without_xen_falls_back_to_the_uart() {
    let run = run_qemu(
        Machine::Microvm,
        guest_image(),
        "selftest=none console=xen,xenio",
        &[],
    );
    assert_eq!(run.guest_status(), Some(0), "{}", run.0.stdout);
    // The buffered early lines were replayed on the fallback.
    run.0.assert_contains("guest-kernel ");
    run.0.assert_contains("pvh: memmap: ");
    run.0.assert_line("xen: not present");
    run.0
        .assert_line("warning: console: the Xen PV console ring is not available");
    run.0
        .assert_line("warning: console: Xen refused console_io (or there is no Xen)");
    run.0
        .assert_line("warning: console: no console left; falling back to com1");
    run.0.assert_line("guest: exit status 0");
}

#[test]
fn domain_id_and_name_come_from_the_command_line() {
    if !kvm_available("xen::domain_id_and_name_come_from_the_command_line") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=xen",
        &["--timeout", TIMEOUT, "--domid", "7", "--name", "web-7"],
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    run.assert_contains(
        "selftest: xen_store_identity: PASS (domid 7, name web-7, home /local/domain/7)",
    );
}

#[test]
fn without_xen_the_guest_says_so_and_the_xen_selftest_fails() {
    if !kvm_available("xen::without_xen_the_guest_says_so") {
        return;
    }
    let run = run_shim(
        guest_image(),
        "selftest=xen",
        &["--timeout", TIMEOUT, "--no-xen"],
    );
    run.assert_line("xen: not present");
    run.assert_contains("selftest: xen_present: FAIL");
    run.assert_contains("(from Pit)");
    assert_eq!(run.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn qemu_has_no_xen_and_the_xen_selftest_fails() {
    let run = run_qemu(Machine::Microvm, guest_image(), "selftest=xen", &[]);
    run.0.assert_line("xen: not present");
    run.0.assert_contains("selftest: xen_present: FAIL");
    assert_eq!(run.guest_status(), Some(1), "{}", run.0.stdout);
}

#[test]
fn bad_domain_id_or_name_is_refused() {
    for args in [
        ["--domid", "0"],
        ["--domid", "32752"],
        ["--name", "has space"],
        ["--name", ""],
    ] {
        let mut all = vec!["--timeout", TIMEOUT];
        all.extend(args);
        let run = run_shim(guest_image(), "", &all);
        assert_ne!(run.code(), Some(0), "{args:?} accepted: {}", run.stderr);
        assert!(run.stderr.contains("host-shim"), "{args:?}: {}", run.stderr);
    }
}
