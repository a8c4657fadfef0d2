//! Boots tiny hand-assembled guests in-process under KVM and checks console output,
//! outcome and counters. Each test prints `SKIPPED: ...` and passes when KVM is absent.

mod common;

use std::time::Duration;

use common::{Asm, LOAD, hello_kernel, kvm_usable};
use host_shim::{Capture, ConsoleSink, Kernel, Outcome, RunReport, VmConfig, Vmm};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `image` with a captured console; a safety timeout keeps a broken test from hanging.
fn boot(image: Vec<u8>, cmdline: &str, timeout: Duration) -> (RunReport, String) {
    let capture = Capture::new();
    let mut config = VmConfig::new(Kernel::from_bytes("test.elf", image));
    config.mem_mib = 16;
    config.cmdline = cmdline.into();
    config.timeout = Some(timeout);
    config.console = ConsoleSink::new(capture.clone());
    let vmm = Vmm::new(config).expect("VM set up");
    let report = vmm.run().expect("run");
    (report, capture.text())
}

#[test]
fn hello_on_debug_console_then_exit_status() {
    if !kvm_usable("hello_on_debug_console_then_exit_status") {
        return;
    }
    let (report, out) = boot(hello_kernel("Hello from PVH\n", 42), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 42 }, "{out}");
    assert_eq!(report.exit_code, 42);
    assert_eq!(out, "Hello from PVH\n");
    let s = &report.stats;
    assert_eq!(s.pio_ports.get(&0xe9), Some(&15));
    assert_eq!(s.pio_ports.get(&0xf4), Some(&1));
    assert_eq!(s.exits.io_out, 16);
    assert!(report.run_time_ns > 0);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["outcome"]["kind"], "exited");
    assert_eq!(json["outcome"]["status"], 42);
    assert_eq!(json["stats"]["pio_ports"]["0xe9"], 15);
}

#[test]
fn entry_state_start_info_and_cmdline() {
    if !kvm_usable("entry_state_start_info_and_cmdline") {
        return;
    }
    let mut a = Asm::new();
    // cmp dword [ebx], XEN_HVM_START_MAGIC_VALUE
    a.raw(&[0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33])
        .jump(0x75, "fail");
    // mov eax, cr0; cmp eax, 0x11 (PE|ET, paging off)
    a.raw(&[0x0f, 0x20, 0xc0, 0x83, 0xf8, 0x11])
        .jump(0x75, "fail");
    // mov eax, cr4; test eax, eax
    a.raw(&[0x0f, 0x20, 0xe0, 0x85, 0xc0]).jump(0x75, "fail");
    // mov eax, cs; cmp eax, 0x08 (also checks a flat data segment works: [ebx] above)
    a.raw(&[0x8c, 0xc8, 0x83, 0xf8, 0x08]).jump(0x75, "fail");
    // Print the command line: mov esi, [ebx + 24] (cmdline_paddr)
    a.raw(&[0x8b, 0x73, 0x18]);
    a.label("next")
        .raw(&[0x8a, 0x06, 0x84, 0xc0]) // mov al, [esi]; test al, al
        .jump(0x74, "done")
        .raw(&[0xe6, 0xe9, 0x46]) // out 0xe9, al; inc esi
        .jump(0xeb, "next");
    a.label("done").exit(0);
    a.label("fail").exit(1);
    let (report, out) = boot(a.kernel(), "console=hvc0 io=pv", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    assert_eq!(out, "console=hvc0 io=pv");
}

#[test]
fn com1_scratch_register_and_output() {
    if !kvm_usable("com1_scratch_register_and_output") {
        return;
    }
    let mut a = Asm::new();
    a.mov_dx(0x3ff)
        .raw(&[0xb0, 0x5a, 0xee, 0xb0, 0x00, 0xec]) // mov al, 0x5a; out dx, al; mov al, 0; in al, dx
        .raw(&[0x3c, 0x5a])
        .jump(0x75, "fail");
    a.mov_dx(0x3f8);
    for b in b"COM1 ok\n" {
        a.raw(&[0xb0, *b, 0xee]);
    }
    a.exit(0);
    a.label("fail").exit(1);
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    assert_eq!(out, "COM1 ok\n");
}

#[test]
fn in_kernel_pit_counts_down_without_exits() {
    if !kvm_usable("in_kernel_pit_counts_down_without_exits") {
        return;
    }
    let mut a = Asm::new();
    // Channel 0, lobyte/hibyte, mode 2, count 0xffff.
    a.out8(0x43, 0x34).out8(0x40, 0xff).out8(0x40, 0xff);
    // Latch and read twice: cx = first count, dx = second.
    a.out8(0x43, 0x00)
        .raw(&[0xe4, 0x40, 0x88, 0xc1, 0xe4, 0x40, 0x88, 0xc5]);
    a.print("."); // takes a while: a port exit to user space
    a.out8(0x43, 0x00)
        .raw(&[0xe4, 0x40, 0x88, 0xc2, 0xe4, 0x40, 0x88, 0xc6]);
    a.raw(&[0x66, 0x39, 0xd1]).jump(0x74, "fail"); // cmp cx, dx; je fail
    a.exit(0);
    a.label("fail").exit(1);
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    assert!(
        !report.stats.pio_ports.contains_key(&0x40),
        "{:?}",
        report.stats
    );
    assert!(
        !report.stats.pio_ports.contains_key(&0x43),
        "{:?}",
        report.stats
    );
}

#[test]
fn string_io_is_split_into_accesses() {
    if !kvm_usable("string_io_is_split_into_accesses") {
        return;
    }
    let mut a = Asm::new();
    let text = b"rep outsb works\n";
    // mov esi, msg; mov ecx, len; mov dx, 0xe9; rep outsb
    let code_len = 5 + 5 + 4 + 2 + 4;
    let msg = a.here() + code_len + 2;
    a.raw(&[0xbe]).raw(&msg.to_le_bytes());
    a.raw(&[0xb9]).raw(&(text.len() as u32).to_le_bytes());
    a.mov_dx(0xe9).raw(&[0xf3, 0x6e]);
    a.out8(0xf4, 7); // 4 bytes
    a.raw(&[0xeb, 0xfe]); // 2 bytes
    a.raw(text);
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 7 }, "{out}");
    assert_eq!(out, "rep outsb works\n");
}

#[test]
fn unclaimed_ports_and_mmio_read_all_ones() {
    if !kvm_usable("unclaimed_ports_and_mmio_read_all_ones") {
        return;
    }
    let mut a = Asm::new();
    a.mov_dx(0x510)
        .raw(&[0x31, 0xc0, 0xed]) // xor eax, eax; in eax, dx
        .raw(&[0x83, 0xf8, 0xff])
        .jump(0x75, "fail"); // cmp eax, -1
    a.out8(0x80, 0x12); // POST code: nobody listens
    a.raw(&[0xa1]).raw(&0xd000_0000u32.to_le_bytes()); // mov eax, [0xd0000000]
    a.raw(&[0x83, 0xf8, 0xff]).jump(0x75, "fail");
    a.raw(&[0xa3]).raw(&0xd000_0000u32.to_le_bytes()); // mov [0xd0000000], eax
    a.exit(0);
    a.label("fail").exit(1);
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    let s = &report.stats;
    assert_eq!((s.unclaimed.pio_reads, s.unclaimed.pio_writes), (1, 1));
    assert_eq!((s.unclaimed.mmio_reads, s.unclaimed.mmio_writes), (1, 1));
    assert_eq!((s.exits.mmio_read, s.exits.mmio_write), (1, 1));
    assert_eq!(s.pio_ports.get(&0x510), Some(&1));
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_usable("triple_fault_is_reported") {
        return;
    }
    // lidt of a zero-limit IDT, then ud2: #UD, #GP, #DF, shutdown. (`int3` or `int n`
    // instead make kvm-pvm's instruction emulator give up with an internal error.)
    let mut a = Asm::new();
    let idtr = a.here() + 9;
    a.raw(&[0x0f, 0x01, 0x1d]).raw(&idtr.to_le_bytes()); // lidt [idtr]
    a.raw(&[0x0f, 0x0b]); // ud2
    a.raw(&[0; 6]); // the IDTR image: limit 0, base 0
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    match &report.outcome {
        Outcome::TripleFault { cpu } => {
            let cpu = cpu.expect("registers");
            assert_eq!(cpu.cr0 & 1, 1);
        }
        other => panic!("expected a triple fault, got {other:?} ({out})"),
    }
    assert_eq!(report.exit_code, 126);
    assert_eq!(report.stats.exits.shutdown, 1);
    assert!(
        report
            .outcome
            .to_string()
            .starts_with("guest triple-faulted (rip=0x")
    );
}

/// The path every 64-bit PVH guest takes: PAE, EFER.LME, CR0.PG, far jump to 64-bit code.
#[test]
fn long_mode_transition_from_pvh_entry() {
    if !kvm_usable("long_mode_transition_from_pvh_entry") {
        return;
    }
    let mut a = Asm::new();
    let store = |a: &mut Asm, addr: u32, v: u32| {
        a.raw(&[0xc7, 0x05])
            .raw(&addr.to_le_bytes())
            .raw(&v.to_le_bytes());
    };
    // PML4 0x200000 -> PDPT 0x201000 -> PD 0x202000 with two 2 MiB identity pages.
    store(&mut a, 0x20_0000, 0x20_1003);
    store(&mut a, 0x20_1000, 0x20_2003);
    store(&mut a, 0x20_2000, 0x83);
    store(&mut a, 0x20_2008, 0x20_0083);
    a.raw(&[0xb8])
        .raw(&0x20_0000u32.to_le_bytes())
        .raw(&[0x0f, 0x22, 0xd8]); // cr3
    a.raw(&[0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0]); // cr4 |= PAE
    a.raw(&[0xb9]).raw(&0xc000_0080u32.to_le_bytes()); // ecx = EFER
    a.raw(&[0x0f, 0x32, 0x0d])
        .raw(&0x100u32.to_le_bytes())
        .raw(&[0x0f, 0x30]); // LME
    a.raw(&[0x0f, 0x20, 0xc0, 0x0d])
        .raw(&0x8000_0000u32.to_le_bytes()); // cr0 |= PG
    a.raw(&[0x0f, 0x22, 0xc0]);
    let gdt_ptr = a.here() + 14; // after lgdt (7 bytes) and ljmp (7 bytes)
    let gdt = gdt_ptr + 8;
    let long = gdt + 16;
    a.raw(&[0x0f, 0x01, 0x15]).raw(&gdt_ptr.to_le_bytes());
    a.raw(&[0xea]).raw(&long.to_le_bytes()).raw(&[0x08, 0x00]);
    a.raw(&15u16.to_le_bytes())
        .raw(&gdt.to_le_bytes())
        .raw(&[0, 0]);
    a.raw(&0u64.to_le_bytes())
        .raw(&0x00af_9a00_0000_ffffu64.to_le_bytes());
    assert_eq!(a.here(), long);
    a.print("64-bit\n").exit(0); // same encodings in 64-bit mode
    let (report, out) = boot(a.kernel(), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    assert_eq!(out, "64-bit\n");
}

/// COM1's transmit interrupt travels eventfd -> irqfd -> in-kernel 8259 -> LAPIC LINT0
/// (ExtINT) -> the guest's IDT.
#[test]
fn com1_interrupt_reaches_the_guest() {
    if !kvm_usable("com1_interrupt_reaches_the_guest") {
        return;
    }
    const HANDLER: u32 = LOAD + 0x100;
    const IDTR: u32 = LOAD + 0xf0;
    const VECTOR: u32 = 0x24; // PIC base 0x20 + IRQ 4
    let gate = 0x3000 + VECTOR * 8;
    let mut a = Asm::new();
    a.raw(&[0xbc]).raw(&0x5000u32.to_le_bytes()); // mov esp, 0x5000
    let store = |a: &mut Asm, addr: u32, v: u32| {
        a.raw(&[0xc7, 0x05])
            .raw(&addr.to_le_bytes())
            .raw(&v.to_le_bytes());
    };
    // 32-bit interrupt gate: selector 0x08, present, DPL 0.
    store(&mut a, gate, (HANDLER & 0xffff) | 0x08 << 16);
    store(&mut a, gate + 4, (HANDLER & 0xffff_0000) | 0x8e00);
    a.raw(&[0x0f, 0x01, 0x1d]).raw(&IDTR.to_le_bytes()); // lidt [IDTR]
    // 8259 pair: vectors 0x20/0x28, cascade on IRQ 2, only IRQ 4 unmasked.
    for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
        a.out8(port, v);
    }
    for (port, v) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
        a.out8(port, v);
    }
    a.out8(0x21, 0xef).out8(0xa1, 0xff);
    a.mov_dx(0x3f9).raw(&[0xb0, 0x02, 0xee]); // IER = transmitter empty
    a.raw(&[0xfb]).label("wait").raw(&[0xf4]).jump(0xeb, "wait"); // sti; hlt loop
    let mut code = a.assemble();
    assert!(code.len() <= 0xf0);
    code.resize(0xf0, 0x90);
    code.extend_from_slice(&((VECTOR * 8 + 7) as u16).to_le_bytes());
    code.extend_from_slice(&0x3000u32.to_le_bytes());
    code.resize(0x100, 0x90);
    code.extend_from_slice(&Asm::new().print("irq4\n").exit(0).assemble());
    let (report, out) = boot(common::pvh_kernel(&code), "", TIMEOUT);
    assert_eq!(report.outcome, Outcome::Exited { status: 0 }, "{out}");
    assert_eq!(out, "irq4\n");
}

#[test]
fn halted_guest_times_out() {
    if !kvm_usable("halted_guest_times_out") {
        return;
    }
    // cli; hlt; jmp back to hlt
    let image = common::pvh_kernel(&[0xfa, 0xf4, 0xeb, 0xfd]);
    let (report, _) = boot(image, "", Duration::from_secs(1));
    assert_eq!(report.outcome, Outcome::Timeout { timeout_ms: 1000 });
    assert_eq!(report.exit_code, 124);
    assert_eq!(report.outcome.to_string(), "guest did not exit within 1 s");
}

#[test]
fn spinning_guest_times_out() {
    if !kvm_usable("spinning_guest_times_out") {
        return;
    }
    let image = common::pvh_kernel(&[0xfa, 0xeb, 0xfe]); // cli; jmp .
    let (report, _) = boot(image, "", Duration::from_secs(1));
    assert_eq!(report.outcome, Outcome::Timeout { timeout_ms: 1000 });
    assert!(report.stats.exits.intr >= 1);
}

#[test]
fn a_spinning_guest_is_stopped_from_another_thread() {
    if !kvm_usable("a_spinning_guest_is_stopped_from_another_thread") {
        return;
    }
    let image = common::pvh_kernel(&[0xfa, 0xeb, 0xfe]); // cli; jmp .
    let mut config = VmConfig::new(Kernel::from_bytes("test.elf", image));
    config.mem_mib = 16;
    // The stop comes first; the timeout is only the test's safety net.
    config.timeout = Some(TIMEOUT);
    let vmm = Vmm::new(config).expect("VM set up");
    let stop = vmm.stop_handle();
    let runner = std::thread::spawn(move || vmm.run().expect("run"));
    // A stop sent before the vCPU even started still ends the run: the request waits
    // in the run's channel.
    stop.stop();
    let report = runner.join().expect("run thread");
    assert_eq!(report.outcome, Outcome::Stopped, "{report:?}");
    assert_eq!(report.exit_code, host_shim::vmm::EXIT_STOPPED);
    // A stop after the end does nothing.
    stop.stop();
}

#[test]
fn memory_above_4g_boots() {
    if !kvm_usable("memory_above_4g_boots") {
        return;
    }
    let capture = Capture::new();
    let mut config = VmConfig::new(Kernel::from_bytes("t", hello_kernel("big\n", 3)));
    config.mem_mib = 5000;
    config.timeout = Some(TIMEOUT);
    config.console = ConsoleSink::new(capture.clone());
    let report = Vmm::new(config).expect("set up").run().expect("run");
    assert_eq!(report.outcome, Outcome::Exited { status: 3 });
    assert_eq!(capture.text(), "big\n");
}
