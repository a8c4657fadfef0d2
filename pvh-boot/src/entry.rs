//! The PVH entry: ELF note, 32-bit start-up code, boot GDT, boot page tables, stack.
//!
//! `pvh.pandoc` fixes the entry state: 32-bit protected mode, paging off, flat 4 GiB
//! `%cs`/`%ds`/`%es`/`%ss` (their descriptor tables need not be valid), interrupts
//! off, `%ebx` = physical address of `hvm_start_info`. Nothing else may be assumed:
//! no stack, no GDT, no page tables. So this code brings its own.
//!
//! The page tables are static data (no loop at boot: ring 0 is emulated instruction
//! by instruction on kvm-pvm hosts). They identity-map 0..4 GiB: the first 2 MiB with
//! 4 KiB pages, the rest with 2 MiB pages; 3..4 GiB (the MMIO hole: LAPIC, IOAPIC, PCI
//! BARs) is uncached. Page 0 is mapped at entry because loaders put boot data there
//! (QEMU's memory map sits at 0x5a8); once the kernel has copied the boot information
//! out it calls [`unmap_page_zero`] so that a null dereference faults.
//!
//! Below the boot stack lies a guard page; [`unmap_stack_guard`] unmaps it so that a
//! stack overflow faults (and is reported from the double-fault IST stack) instead of
//! overwriting the kernel's data. The linker script keeps it in the first 2 MiB, where
//! the boot page tables have 4 KiB entries.
//!
//! The kernel provides `extern "C" fn pvh_rust_entry(start_info_paddr: u64) -> !`.

/// Bytes of the boot stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

/// The highest physical address (exclusive) that the boot page tables map.
pub const IDENTITY_MAP_END: u64 = 4 << 30;

/// Start of the window that the boot page tables map uncached (PCD|PWT), up to
/// [`IDENTITY_MAP_END`]: the PC's MMIO hole (PCI BARs, IOAPIC, LAPIC). Device registers
/// are only reached there.
pub const UNCACHED_START: u64 = 3 << 30;

core::arch::global_asm!(
    // XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h). The descriptor is
    // the physical entry address; QEMU reads it as 8 bytes from an ELF64 image and Xen
    // accepts any of 1/2/4/8 bytes, so emit a quad. The section stays 4-aligned so that
    // loaders that walk notes by the PT_NOTE alignment find it.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4", // namesz: "Xen\0" (XEN_NOTE_NAME)
    ".long 8", // descsz
    ".long {note_type}",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start32",
    ".balign 4",
    ".popsection",
    //
    // Boot GDT: null, 64-bit code (0x08), flat data (0x10), 32-bit code (0x18).
    ".pushsection .rodata.pvh_gdt, \"a\"",
    ".balign 16",
    "pvh_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    ".quad 0x00cf9a000000ffff",
    "pvh_gdt_end:",
    ".balign 8",
    "pvh_gdt_ptr:",
    ".word pvh_gdt_end - pvh_gdt - 1",
    ".quad pvh_gdt",
    ".popsection",
    //
    // Boot page tables (static: see the module comment).
    ".pushsection .data.pvh_page_tables, \"aw\"",
    ".balign 4096",
    "pvh_pml4:",
    ".quad pvh_pdpt + 0x3", // present | writable
    ".fill 511, 8, 0",
    "pvh_pdpt:",
    ".quad pvh_pd0 + 0x3",
    ".quad pvh_pd1 + 0x3",
    ".quad pvh_pd2 + 0x3",
    ".quad pvh_pd3 + 0x3",
    ".fill 508, 8, 0",
    "pvh_pd0:",
    ".quad pvh_pt0 + 0x3",
    ".set pvh_i, 1",
    ".rept 511",
    ".quad (pvh_i << 21) | 0x83", // present | writable | 2 MiB page
    ".set pvh_i, pvh_i + 1",
    ".endr",
    "pvh_pd1:",
    ".rept 512",
    ".quad (pvh_i << 21) | 0x83",
    ".set pvh_i, pvh_i + 1",
    ".endr",
    "pvh_pd2:",
    ".rept 512",
    ".quad (pvh_i << 21) | 0x83",
    ".set pvh_i, pvh_i + 1",
    ".endr",
    "pvh_pd3:",
    ".rept 512",
    ".quad (pvh_i << 21) | 0x9b", // ... | PWT | PCD: the MMIO hole is uncached
    ".set pvh_i, pvh_i + 1",
    ".endr",
    ".global pvh_pt0",
    "pvh_pt0:",
    ".set pvh_j, 0",
    ".rept 512",
    ".quad (pvh_j << 12) | 0x3",
    ".set pvh_j, pvh_j + 1",
    ".endr",
    ".popsection",
    //
    ".pushsection .bss.pvh_stack, \"aw\", @nobits",
    ".balign 4096",
    ".global pvh_stack_guard",
    "pvh_stack_guard:",
    ".skip 4096",
    "pvh_stack_bottom:",
    ".skip {stack_size}",
    "pvh_stack_top:",
    ".popsection",
    //
    ".pushsection .text.pvh32, \"ax\"",
    ".code32",
    ".global pvh_start32",
    "pvh_start32:",
    "cli",
    "cld",
    "mov %ebx, %esi", // keep the start_info address across the code below
    "lgdt pvh_gdt_ptr",
    "mov $0x10, %eax",
    "mov %eax, %ds",
    "mov %eax, %es",
    "mov %eax, %ss",
    "mov %eax, %fs",
    "mov %eax, %gs",
    "mov $pvh_stack_top, %esp",
    // CR4.PAE, then CR3, then EFER.LME, then CR0.PG: the order long mode requires.
    "mov %cr4, %eax",
    "or $0x20, %eax",
    "mov %eax, %cr4",
    "mov $pvh_pml4, %eax",
    "mov %eax, %cr3",
    "mov $0xc0000080, %ecx",
    "rdmsr",
    "or $0x100, %eax",
    "wrmsr",
    "mov %cr0, %eax",
    "or $0x80010001, %eax", // PG | WP | PE
    "mov %eax, %cr0",
    "ljmp $0x08, $pvh_start64",
    //
    ".code64",
    "pvh_start64:",
    "mov $0x10, %eax",
    "mov %eax, %ds",
    "mov %eax, %es",
    "mov %eax, %ss",
    "mov %eax, %fs",
    "mov %eax, %gs",
    "mov $pvh_stack_top, %esp",
    "mov %esi, %edi", // first argument: start_info physical address (zero-extended)
    "xor %ebp, %ebp",
    "call pvh_rust_entry",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".popsection",
    stack_size = const BOOT_STACK_SIZE,
    note_type = const pv_drivers::abi::elfnote::XEN_ELFNOTE_PHYS32_ENTRY,
    options(att_syntax)
);

unsafe extern "C" {
    static mut pvh_pt0: [u64; 512];
    static pvh_stack_guard: u8;
}

/// Clears the boot page-table entry of the 4 KiB page at `addr` (below 2 MiB).
///
/// # Safety
/// Nothing may use the page afterwards.
unsafe fn unmap_low_page(addr: u64) {
    let index = (addr >> 12) as usize;
    assert!(
        index < 512,
        "page {addr:#x} is not covered by the 4 KiB boot page table"
    );
    // SAFETY: `pvh_pt0` is the boot page table for the first 2 MiB, defined above and
    // live for the kernel's lifetime, and `index` < 512; clearing an entry and flushing
    // its TLB entry only removes the mapping of that page, which the caller guarantees
    // is unused.
    unsafe {
        (&raw mut pvh_pt0)
            .cast::<u64>()
            .add(index)
            .write_volatile(0);
        core::arch::asm!("invlpg [{0}]", in(reg) addr, options(nostack, preserves_flags));
    }
}

/// Unmaps physical page 0 from the boot page tables.
///
/// # Safety
/// Nothing may still refer to data in page 0 (copy the boot information out first).
pub unsafe fn unmap_page_zero() {
    // SAFETY: the caller guarantees page 0 is no longer used.
    unsafe { unmap_low_page(0) }
}

/// Unmaps the guard page below the boot stack.
pub fn unmap_stack_guard() {
    let guard = (&raw const pvh_stack_guard) as u64;
    // SAFETY: the guard page is reserved for exactly this and never used as memory.
    unsafe { unmap_low_page(guard) }
}
