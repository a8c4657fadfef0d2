//! The real guest image boots in QEMU (TCG) by its PVH note, on `-M microvm` and
//! `-M pc`, and each exit path reports what it should.

use system_tests::{Machine, assert_good_boot, guest_image, run_qemu};

fn boots_and_passes(machine: Machine, cpu: &str) {
    let cmdline = "selftest=boot loglevel=info";
    let run = run_qemu(machine, guest_image(), cmdline, &["-cpu", cpu]);
    assert_good_boot(&run.0, cmdline);
    assert_eq!(
        run.guest_status(),
        Some(0),
        "{:?}\n{}",
        run.0.status,
        run.0.stdout
    );
}

#[test]
fn microvm_boots_and_passes_selftests() {
    boots_and_passes(Machine::Microvm, "qemu64");
}

#[test]
fn pc_boots_and_passes_selftests() {
    boots_and_passes(Machine::Pc, "qemu64");
}

#[test]
fn x2apic_cpu_boots_and_passes_selftests() {
    // `-cpu max` offers x2APIC: the APIC driver takes the MSR path.
    let cmdline = "selftest=boot";
    let run = run_qemu(Machine::Microvm, guest_image(), cmdline, &["-cpu", "max"]);
    assert_good_boot(&run.0, cmdline);
    run.0.assert_contains("apic: x2APIC");
}

#[test]
fn page_fault_is_reported_with_cr2_and_exit_status_3() {
    let run = run_qemu(Machine::Microvm, guest_image(), "selftest=fault", &[]);
    run.0
        .assert_contains("EXCEPTION: #PF page fault (vector 14) error_code=0x0 rip=0x");
    run.0.assert_contains("cr2=0x100000000");
    assert_eq!(run.guest_status(), Some(3));
}

#[test]
fn triple_fault_ends_qemu_without_debug_exit() {
    let run = run_qemu(Machine::Pc, guest_image(), "selftest=triple", &[]);
    run.0
        .assert_contains("selftest: triple: loading an empty IDT and raising #UD");
    // -no-reboot turns the reset into an exit with status 0: no guest status.
    assert_eq!(run.0.code(), Some(0));
    assert_eq!(run.guest_status(), None);
}

#[test]
fn bad_cmdline_option_stops_with_status_5() {
    let run = run_qemu(Machine::Microvm, guest_image(), "heap=lots", &[]);
    run.0
        .assert_line("error: cmdline: bad option 'heap=lots': expected a size from 64K to 1024M");
    assert_eq!(run.guest_status(), Some(5));
}

#[test]
fn debug_port_console_carries_the_output_when_selected() {
    let dir = std::env::temp_dir().join(format!("e9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("e9.log");
    let debugcon = format!("file:{}", log.display());
    let run = run_qemu(
        Machine::Microvm,
        guest_image(),
        "console=e9 selftest=boot",
        &["-debugcon", &debugcon],
    );
    assert_eq!(run.guest_status(), Some(0));
    // Nothing on COM1: everything went to port 0xe9.
    assert!(
        !run.0.stdout.contains("selftest:"),
        "COM1 output despite console=e9:\n{}",
        run.0.stdout
    );
    let e9 = std::fs::read_to_string(&log).unwrap();
    assert!(e9.contains("selftest: 5 passed, 0 failed"), "{e9}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bigger_memory_is_seen() {
    let run = run_qemu(
        Machine::Microvm,
        guest_image(),
        "selftest=boot",
        &["-m", "512"],
    );
    assert_eq!(run.guest_status(), Some(0), "{}", run.0.stdout);
    run.0
        .assert_contains("selftest: start_info: PASS (511 MiB RAM");
}

#[test]
fn panic_is_reported_with_exit_status_2() {
    let run = run_qemu(Machine::Microvm, guest_image(), "selftest=panic", &[]);
    run.0
        .assert_contains("PANIC: panicked at guest-kernel/src/kernel/mod.rs:");
    run.0.assert_contains("selftest: deliberate panic");
    assert_eq!(run.guest_status(), Some(2));
}

#[test]
fn stack_overflow_hits_the_guard_page_and_is_reported() {
    let run = run_qemu(Machine::Microvm, guest_image(), "selftest=stack", &[]);
    run.0
        .assert_contains("selftest: stack: recursing into the guard page");
    run.0
        .assert_contains("EXCEPTION: #DF double fault (vector 8)");
    assert_eq!(run.guest_status(), Some(3));
}
