//! A loader that hands over a start_info block with a bad magic gets a clear message
//! on the console and a clean stop with status 4 (`BAD_BOOT_INFO`), under host-shim and
//! in QEMU.
//!
//! Neither loader can be told to write a bad block, so the test wraps the real guest:
//! the same segments plus a 32-bit trampoline as the PVH entry, which overwrites the
//! magic at `(%ebx)` and jumps to the guest's own entry.

use host_shim::elf;
use host_shim::testing::ElfBuilder;
use system_tests::{Machine, guest_image, kvm_available, run_qemu, run_shim};

const BAD_MAGIC: u32 = 0xdead_beef;

fn guest_with_bad_magic(test: &str) -> std::path::PathBuf {
    let bytes = std::fs::read(guest_image()).expect("guest image");
    let image = elf::parse(&bytes).expect("the guest is a valid PVH ELF");
    // Just above the guest's image: RAM that neither loader uses for itself (QEMU's
    // boot code and data live in low memory).
    let trampoline = image
        .segments
        .iter()
        .map(|s| s.end())
        .max()
        .unwrap()
        .next_multiple_of(4096);
    let mut code = vec![0xc7, 0x03]; // mov dword [ebx], imm32
    code.extend_from_slice(&BAD_MAGIC.to_le_bytes());
    code.push(0xb8); // mov eax, imm32
    code.extend_from_slice(&image.pvh_entry.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xe0]); // jmp eax
    let mut b = ElfBuilder::new()
        .segment(trampoline, &code)
        .pvh_entry(trampoline);
    for s in &image.segments {
        let data = &bytes[s.offset as usize..(s.offset + s.filesz) as usize];
        b = b.segment_with_memsz(s.paddr, data, s.memsz);
    }
    let path =
        std::env::temp_dir().join(format!("guest-bad-magic-{test}-{}.elf", std::process::id()));
    std::fs::write(&path, b.build()).expect("write wrapped guest");
    path
}

const EXPECTED: &str = "start_info magic is 0xdeadbeef, expected 0x336ec578";

#[test]
fn under_host_shim() {
    if !kvm_available("bad_boot_info::under_host_shim") {
        return;
    }
    let kernel = guest_with_bad_magic("shim");
    let run = run_shim(&kernel, "", &["--timeout", "120"]);
    let _ = std::fs::remove_file(&kernel);
    run.assert_contains(EXPECTED);
    run.assert_contains("error: pvh: bad start_info at 0x");
    assert_eq!(run.code(), Some(4), "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn in_qemu() {
    let kernel = guest_with_bad_magic("qemu");
    let run = run_qemu(Machine::Microvm, &kernel, "", &[]);
    let _ = std::fs::remove_file(&kernel);
    run.0.assert_contains(EXPECTED);
    assert_eq!(
        run.guest_status(),
        Some(4),
        "{:?}\n{}",
        run.0.status,
        run.0.stdout
    );
}
