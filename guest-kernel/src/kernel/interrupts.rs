//! GDT, TSS, IDT, the interrupt entry stubs and their dispatch.
//!
//! Every vector gets a 16-byte assembly stub (`isr_stubs + 16 * vector`) that pushes
//! a dummy error code where the CPU pushes none, then the vector, and jumps to common
//! code that saves the general registers and calls [`interrupt_dispatch`] with a
//! [`TrapFrame`]. Stable Rust has no `x86-interrupt` ABI, so the stubs are ours.
//!
//! CPU exceptions are fatal: the handler prints the vector, error code, RIP, CR2 and
//! the registers, and exits with `exit_status::EXCEPTION`. The double fault runs on
//! its own IST stack so that a kernel stack overflow is still reported.
//!
//! External interrupts: [`register`] puts a handler on a vector; [`route_gsi`] routes an
//! IOAPIC line to a vector whose handler sets a device's `DeviceEvent` (vectors
//! [`GSI_VECTOR_BASE`]`+ gsi`); [`route_msi`] hands out a vector of its own (from
//! [`MSI_VECTOR_BASE`], never given back, as routes are never undone) for a device's
//! message-signalled interrupt, with the message that reaches it, and its handler sets
//! the device's `DeviceEvent` the same way.

use super::event::{DeviceEvent, EventState};
use super::{apic, arch, exit, ioapic};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use guest_kernel::exit_status;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::registers::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Vector of the LAPIC spurious interrupt (no EOI for it).
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector of the LAPIC error interrupt.
pub const APIC_ERROR_VECTOR: u8 = 0xfe;
/// First vector available to devices and timers.
pub const FIRST_DYNAMIC_VECTOR: u8 = 0x20;

const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK_SIZE: usize = 16 * 1024;

/// The state saved by the entry stubs, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

core::arch::global_asm!(
    ".pushsection .text.isr, \"ax\"",
    ".balign 16",
    ".global isr_stubs",
    "isr_stubs:",
    ".set isr_vec, 0",
    ".rept 256",
    ".balign 16",
    // Vectors for which the CPU pushes an error code: #DF #TS #NP #SS #GP #PF #AC #CP
    // #VC #SX.
    ".if (isr_vec == 8) || (isr_vec == 10) || (isr_vec == 11) || (isr_vec == 12) || (isr_vec == 13) || (isr_vec == 14) || (isr_vec == 17) || (isr_vec == 21) || (isr_vec == 29) || (isr_vec == 30)",
    ".else",
    "pushq $0",
    ".endif",
    "pushq $isr_vec",
    "jmp isr_common",
    ".set isr_vec, isr_vec + 1",
    ".endr",
    "isr_common:",
    "pushq %rax",
    "pushq %rbx",
    "pushq %rcx",
    "pushq %rdx",
    "pushq %rsi",
    "pushq %rdi",
    "pushq %rbp",
    "pushq %r8",
    "pushq %r9",
    "pushq %r10",
    "pushq %r11",
    "pushq %r12",
    "pushq %r13",
    "pushq %r14",
    "pushq %r15",
    "mov %rsp, %rdi",
    "cld",
    // 22 quadwords above a 16-byte aligned frame base: %rsp is 16-byte aligned here.
    "call {dispatch}",
    "popq %r15",
    "popq %r14",
    "popq %r13",
    "popq %r12",
    "popq %r11",
    "popq %r10",
    "popq %r9",
    "popq %r8",
    "popq %rbp",
    "popq %rdi",
    "popq %rsi",
    "popq %rdx",
    "popq %rcx",
    "popq %rbx",
    "popq %rax",
    "add $16, %rsp",
    "iretq",
    ".popsection",
    dispatch = sym interrupt_dispatch,
    options(att_syntax)
);

unsafe extern "C" {
    static isr_stubs: u8;
}

/// One IDT gate (Intel SDM Vol. 3, 6.14.1: 64-bit interrupt gate).
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Gate([u64; 2]);

#[repr(C, align(4096))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate([0; 2]); 256]);

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);
static mut DOUBLE_FAULT_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static TABLES: Once<Tables> = Once::new();

/// Handlers for vectors 32..=255: `fn(&mut TrapFrame)` stored as `usize` (0 = none).
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Loads the kernel's GDT (code, data, TSS), the TSS and the IDT.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST)] = top;
        tss
    });
    let t = TABLES.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        Tables {
            gdt,
            code,
            data,
            tss,
        }
    });
    t.gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a
    // `static` and therefore for the rest of the kernel's life.
    unsafe {
        CS::set_reg(t.code);
        DS::set_reg(t.data);
        ES::set_reg(t.data);
        SS::set_reg(t.data);
        load_tss(t.tss);
    }

    // `isr_stubs` is the start of the stub table defined in the asm above.
    let base = (&raw const isr_stubs) as u64;
    let cs = t.code.0;
    let gates = (&raw mut IDT).cast::<Gate>();
    for vector in 0..256usize {
        let handler = base + 16 * vector as u64;
        let ist = if vector == 8 {
            u64::from(DOUBLE_FAULT_IST) + 1
        } else {
            0
        };
        // Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
        let low = (handler & 0xffff)
            | (u64::from(cs) << 16)
            | (ist << 32)
            | (0x8e << 40)
            | ((handler >> 16) & 0xffff) << 48;
        // SAFETY: `vector` < 256 indexes the static IDT; this runs at boot on the only
        // CPU with interrupts off, so nothing else reads or writes the IDT meanwhile.
        unsafe { gates.add(vector).write(Gate([low, handler >> 32])) };
    }
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(&raw const IDT),
    };
    // SAFETY: the IDT is a `static` that outlives every interrupt, and every gate
    // points at a stub in this image.
    unsafe { lidt(&ptr) };
}

/// Routes `vector` (>= 32) to `handler`; the dispatcher sends the EOI afterwards.
pub fn register(vector: u8, handler: fn(&mut TrapFrame)) {
    assert!(
        vector >= FIRST_DYNAMIC_VECTOR,
        "vectors below 32 are CPU exceptions"
    );
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}

/// First vector of the IOAPIC's lines: GSI n arrives on `GSI_VECTOR_BASE + n`.
pub const GSI_VECTOR_BASE: u8 = 0x40;

/// A routed IOAPIC line: the event it sets (an `Arc` turned into a raw pointer, null if
/// none) and whether it is level-triggered.
struct GsiSlot {
    event: AtomicPtr<EventState>,
    level: AtomicBool,
}

static GSI_SLOTS: [GsiSlot; ioapic::MAX_PINS] = [const {
    GsiSlot {
        event: AtomicPtr::new(core::ptr::null_mut()),
        level: AtomicBool::new(false),
    }
}; ioapic::MAX_PINS];

/// Why [`route_gsi`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No IOAPIC was found at boot.
    NoIoApic,
    /// The IOAPIC has no such pin.
    NoSuchGsi(u8),
    /// Another device's event already has this line (lines are not shared here).
    Busy(u8),
    /// Every vector for message-signalled interrupts is handed out.
    NoVectors,
    /// This CPU's APIC id does not fit a message address's 8-bit destination.
    NoMsiDestination(u32),
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoIoApic => write!(f, "no IOAPIC"),
            Self::NoSuchGsi(g) => write!(f, "the IOAPIC has no GSI {g}"),
            Self::Busy(g) => write!(f, "GSI {g} is already routed"),
            Self::NoVectors => write!(f, "no vector left for MSI"),
            Self::NoMsiDestination(id) => {
                write!(f, "APIC id {id} does not fit an MSI address")
            }
        }
    }
}

/// Routes IOAPIC line `gsi` to vector `GSI_VECTOR_BASE + gsi` of this CPU, whose
/// interrupt sets `event`; returns the vector.
///
/// A level-triggered line's handler masks the pin before the EOI (the device holds
/// the line asserted until its driver acknowledges it, which happens outside the
/// handler); `event.rearm()` unmasks it after the driver's poll.
pub fn route_gsi(
    gsi: u8,
    trigger: ioapic::Trigger,
    polarity: ioapic::Polarity,
    event: &DeviceEvent,
) -> Result<u8, RouteError> {
    if ioapic::pins() == 0 {
        return Err(RouteError::NoIoApic);
    }
    let slot = GSI_SLOTS
        .get(usize::from(gsi))
        .filter(|_| gsi < ioapic::pins())
        .ok_or(RouteError::NoSuchGsi(gsi))?;
    let vector = GSI_VECTOR_BASE + gsi;
    let ptr = Arc::into_raw(event.state().clone()).cast_mut();
    if slot
        .event
        .compare_exchange(
            core::ptr::null_mut(),
            ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `ptr` came from `Arc::into_raw` just above and was not stored.
        drop(unsafe { Arc::from_raw(ptr) });
        return Err(RouteError::Busy(gsi));
    }
    slot.level
        .store(trigger == ioapic::Trigger::Level, Ordering::Release);
    register(vector, gsi_interrupt);
    if !ioapic::route(gsi, vector, trigger, polarity, apic::id()) {
        return Err(RouteError::NoSuchGsi(gsi));
    }
    Ok(vector)
}

/// First vector handed out by [`route_msi`] (above the IOAPIC's lines).
pub const MSI_VECTOR_BASE: u8 = GSI_VECTOR_BASE + ioapic::MAX_PINS as u8;
/// Vectors [`route_msi`] may hand out: up to the fixed ones (the wait timer at 0xf0).
const MSI_VECTORS: usize = (super::event::WAIT_TIMER_VECTOR - MSI_VECTOR_BASE) as usize;
/// The next of them not handed out yet.
static MSI_NEXT: AtomicUsize = AtomicUsize::new(0);
/// The event each handed-out vector sets (an `Arc` as a raw pointer; null: none yet).
static MSI_EVENTS: [AtomicPtr<EventState>; MSI_VECTORS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MSI_VECTORS];

/// The message a device sends for an interrupt routed by [`route_msi`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute {
    /// The vector.
    pub vector: u8,
    /// The message address: 0xFEE00000 with the destination APIC id in bits 19:12
    /// (physical destination mode, no redirection hint; Intel SDM Vol. 3, 11.11.1).
    pub address: u64,
    /// The message data: the vector, fixed delivery, edge-triggered.
    pub data: u32,
}

/// Hands out a vector of this CPU whose interrupt sets `event`, and the message
/// (address, data) that raises it. MSIs are edge-triggered: nothing to mask or re-arm.
pub fn route_msi(event: &DeviceEvent) -> Result<MsiRoute, RouteError> {
    let dest = apic::id();
    // An 8-bit destination in the address (no extended destination id here).
    if dest > 0xff {
        return Err(RouteError::NoMsiDestination(dest));
    }
    let i = MSI_NEXT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| {
            (i < MSI_VECTORS).then_some(i + 1)
        })
        .map_err(|_| RouteError::NoVectors)?;
    let ptr = Arc::into_raw(event.state().clone()).cast_mut();
    MSI_EVENTS[i].store(ptr, Ordering::Release);
    let vector = MSI_VECTOR_BASE + i as u8;
    register(vector, msi_interrupt);
    Ok(MsiRoute {
        vector,
        address: 0xfee0_0000 | u64::from(dest) << 12,
        data: u32::from(vector),
    })
}

fn msi_interrupt(frame: &mut TrapFrame) {
    let Some(slot) = (frame.vector as usize)
        .checked_sub(usize::from(MSI_VECTOR_BASE))
        .and_then(|i| MSI_EVENTS.get(i))
    else {
        return;
    };
    let ptr = slot.load(Ordering::Acquire);
    if ptr.is_null() {
        return;
    }
    // SAFETY: a non-null slot holds a pointer from `Arc::into_raw` whose reference is
    // never released (vectors are never given back), so the state is alive.
    unsafe { &*ptr }.set();
}

fn gsi_interrupt(frame: &mut TrapFrame) {
    let Some(gsi) = (frame.vector as usize)
        .checked_sub(usize::from(GSI_VECTOR_BASE))
        .filter(|&g| g < ioapic::MAX_PINS)
    else {
        return;
    };
    let slot = &GSI_SLOTS[gsi];
    let ptr = slot.event.load(Ordering::Acquire);
    if slot.level.load(Ordering::Acquire) {
        // Masked before the dispatcher's EOI clears Remote IRR: otherwise the
        // still-asserted line is delivered again at once, forever.
        ioapic::mask(gsi as u8);
    }
    if ptr.is_null() {
        return;
    }
    // SAFETY: a non-null slot holds a pointer from `Arc::into_raw` whose reference is
    // never released (routes are not undone), so the state is alive.
    let state = unsafe { &*ptr };
    if slot.level.load(Ordering::Relaxed) {
        state.masked(gsi as u8);
    }
    state.set();
}

/// Loads an empty IDT and raises an exception: the CPU cannot deliver it, nor the
/// double fault that follows, and shuts down (a triple fault). A test hook.
///
/// The exception is a fault (`ud2`), not a software interrupt: kvm-pvm emulates
/// `int3`/`int n` through a broken IDT as an emulation failure, not a shutdown.
pub fn triple_fault() -> ! {
    let ptr = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::new(0),
    };
    // SAFETY: deliberately makes every interrupt undeliverable; the next instruction
    // raises #UD, which ends this virtual machine.
    unsafe {
        lidt(&ptr);
        core::arch::asm!("ud2");
    }
    arch::halt_forever()
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved 31",
];

extern "C" fn interrupt_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    if vector < 32 {
        report_exception(frame);
    }
    if vector == usize::from(SPURIOUS_VECTOR) {
        return; // no EOI for spurious interrupts (SDM 10.9)
    }
    let h = HANDLERS
        .get(vector)
        .map_or(0, |h| h.load(Ordering::Acquire));
    if h != 0 {
        // SAFETY: only `register` stores non-zero values, and it stores valid
        // `fn(&mut TrapFrame)` pointers.
        let f: fn(&mut TrapFrame) = unsafe { core::mem::transmute(h) };
        f(frame);
    } else {
        log::warn!("unexpected interrupt vector {vector:#x}");
    }
    apic::eoi();
}

fn report_exception(f: &TrapFrame) -> ! {
    use core::fmt::Write as _;
    let mut c = super::console::EmergencyConsole;
    let name = EXCEPTION_NAMES[f.vector as usize & 31];
    let _ = writeln!(
        c,
        "EXCEPTION: {name} (vector {}) error_code={:#x} rip={:#x} cr2={:#x}",
        f.vector,
        f.error_code,
        f.rip,
        arch::cr2()
    );
    let _ = writeln!(
        c,
        "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\n  r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  cs={:#x} ss={:#x} rflags={:#x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
        f.cs,
        f.ss,
        f.rflags
    );
    exit::exit(exit_status::EXCEPTION)
}
