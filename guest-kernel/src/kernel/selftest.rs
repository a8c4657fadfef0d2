//! In-guest self-tests (`selftest=boot`, the default) and the test hooks
//! (`fault`, `triple`, `hang`).
//!
//! Each test prints `selftest: NAME: PASS (detail)` or `selftest: NAME: FAIL (why)`;
//! the summary line is `selftest: N passed, M failed`, and the exit status says
//! whether all passed. Assertions are about behaviour, never about speed.

use super::{apic, arch, interrupts, memory, time};
use crate::kprintln;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_kernel::frames::PAGE_SIZE;
use pvh_boot::start_info::BootInfo;

/// Vector used by the APIC timer test.
const TIMER_TEST_VECTOR: u8 = 0x30;

type TestResult = Result<String, String>;

/// Runs the boot self-tests; returns (passed, failed).
pub fn run_boot(boot: &BootInfo, mem: &memory::MemoryInfo) -> (u32, u32) {
    let tests: [(&str, &dyn Fn() -> TestResult); 5] = [
        ("start_info", &|| test_start_info(boot)),
        ("heap", &test_heap),
        ("frames", &|| test_frames(boot, mem)),
        ("time", &test_time),
        ("apic_timer", &test_apic_timer),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        match test() {
            Ok(detail) => {
                passed += 1;
                kprintln!("selftest: {name}: PASS ({detail})");
            }
            Err(why) => {
                failed += 1;
                kprintln!("selftest: {name}: FAIL ({why})");
            }
        }
    }
    kprintln!("selftest: {passed} passed, {failed} failed");
    (passed, failed)
}

macro_rules! check {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($why)*));
        }
    };
}

fn test_start_info(boot: &BootInfo) -> TestResult {
    check!(boot.memmap.total_ram() > 0, "memory map has no RAM");
    let (ks, ke) = memory::kernel_image();
    check!(
        boot.memmap.is_ram(ks, ke),
        "kernel image [{ks:#x}, {ke:#x}) is not inside RAM"
    );
    check!(
        boot.memmap
            .regions()
            .windows(2)
            .all(|w| w[0].end <= w[1].start),
        "memory map not sorted and disjoint"
    );
    Ok(alloc::format!(
        "{} MiB RAM in {} regions, kernel [{ks:#x}, {ke:#x})",
        boot.memmap.total_ram() >> 20,
        boot.memmap.regions().len()
    ))
}

fn test_heap() -> TestResult {
    let (used_before, _) = memory::heap_usage();
    {
        let v: Vec<u64> = (0..1000).collect();
        check!(v.iter().sum::<u64>() == 499_500, "vector sum wrong");
        let mut m = BTreeMap::new();
        for i in 0..100u32 {
            m.insert(i.wrapping_mul(2_654_435_761), i);
        }
        check!(
            m.len() == 100 && m.values().sum::<u32>() == 4950,
            "BTreeMap contents wrong"
        );
        let s = alloc::format!("{}-{}", "heap", 42);
        check!(s == "heap-42", "formatting into String wrong");
        let big = alloc::vec![0xa5u8; 64 * 1024];
        check!(
            big.iter().all(|&b| b == 0xa5),
            "64 KiB allocation corrupted"
        );
    }
    let (used_after, free) = memory::heap_usage();
    check!(
        used_after == used_before,
        "leak: {used_before} bytes in use before, {used_after} after"
    );
    Ok(alloc::format!("{} KiB free", free >> 10))
}

fn test_frames(boot: &BootInfo, mem: &memory::MemoryInfo) -> TestResult {
    let mut guard = memory::FRAMES.lock();
    let frames = guard.as_mut().ok_or("no frame allocator")?;
    let free_before = frames.free_frames();
    let mut got = [0u64; 4];
    for slot in got.iter_mut() {
        *slot = frames.alloc().ok_or("out of frames")?;
    }
    let (ks, ke) = memory::kernel_image();
    let heap = (mem.heap_start, mem.heap_start + mem.heap_bytes);
    for (i, &f) in got.iter().enumerate() {
        check!(f.is_multiple_of(PAGE_SIZE), "frame {f:#x} unaligned");
        check!(
            boot.memmap.is_ram(f, f + PAGE_SIZE),
            "frame {f:#x} not in RAM"
        );
        check!(
            f + PAGE_SIZE <= ks || f >= ke,
            "frame {f:#x} inside the kernel image"
        );
        check!(
            f + PAGE_SIZE <= heap.0 || f >= heap.1,
            "frame {f:#x} inside the heap"
        );
        check!(!got[..i].contains(&f), "frame {f:#x} handed out twice");
        check!(
            boot.occupied().all(|(s, e)| f + PAGE_SIZE <= s || f >= e),
            "frame {f:#x} overlaps boot data"
        );
    }
    // Write a distinct pattern into each frame, then read all back.
    for &f in &got {
        // SAFETY: the frame was just allocated to us and is identity-mapped RAM.
        unsafe { core::ptr::write_bytes(f as *mut u8, (f >> 12) as u8, PAGE_SIZE as usize) };
    }
    for &f in &got {
        // SAFETY: as above; still owned by this test.
        let page = unsafe { core::slice::from_raw_parts(f as *const u8, PAGE_SIZE as usize) };
        check!(
            page.iter().all(|&b| b == (f >> 12) as u8),
            "frame {f:#x} lost its pattern"
        );
    }
    check!(
        frames.free(ks).is_err(),
        "freeing a kernel-image address was accepted"
    );
    for &f in &got {
        frames
            .free(f)
            .map_err(|e| alloc::format!("free({f:#x}) failed: {e:?}"))?;
    }
    check!(
        frames.free_frames() == free_before,
        "free count not restored"
    );
    Ok(alloc::format!("{} frames free", free_before))
}

fn test_time() -> TestResult {
    let clock = time::clock().ok_or("TSC not calibrated")?;
    check!(
        guest_kernel::time::plausible_tsc_khz(clock.khz),
        "TSC {} kHz implausible",
        clock.khz
    );
    let a = time::now_ns().ok_or("no clock")?;
    let b = time::now_ns().ok_or("no clock")?;
    check!(b >= a, "time went backwards: {a} then {b}");
    Ok(alloc::format!("TSC {} kHz, monotonic", clock.khz))
}

static TIMER_FIRED_TSC: AtomicU64 = AtomicU64::new(0);

fn on_timer(_: &mut interrupts::TrapFrame) {
    TIMER_FIRED_TSC.store(arch::rdtsc(), Ordering::Release);
}

fn test_apic_timer() -> TestResult {
    const WAIT_NS: u64 = 1_000_000;
    let clock = time::clock().ok_or("TSC not calibrated")?;
    interrupts::register(TIMER_TEST_VECTOR, on_timer);
    TIMER_FIRED_TSC.store(0, Ordering::Release);
    let armed = arch::rdtsc();
    apic::oneshot(TIMER_TEST_VECTOR, WAIT_NS)?;
    // Give up after 5 s of TSC time: a bound against a timer that never fires, so the
    // test fails instead of hanging. (Not an assertion on speed.)
    let give_up = armed.saturating_add(clock.ticks_for_ns(5_000_000_000));
    while TIMER_FIRED_TSC.load(Ordering::Acquire) == 0 && arch::rdtsc() < give_up {
        arch::sti();
        core::hint::spin_loop();
        arch::cli();
    }
    let fired = TIMER_FIRED_TSC.load(Ordering::Acquire);
    check!(fired != 0, "timer interrupt never arrived");
    let waited = clock.ns_at(fired) - clock.ns_at(armed);
    check!(
        waited >= WAIT_NS,
        "fired after {waited} ns, before the requested {WAIT_NS} ns"
    );
    Ok(alloc::format!(
        "one-shot {} us fired after {} us",
        WAIT_NS / 1000,
        waited / 1000
    ))
}

/// `selftest=fault`: read an address the boot page tables leave unmapped.
pub fn page_fault() -> ! {
    kprintln!("selftest: fault: reading unmapped address 0x100000000");
    // SAFETY: deliberately faults; the page-fault handler reports and exits, so this
    // read never returns a value.
    let v = unsafe { core::ptr::read_volatile(0x1_0000_0000 as *const u64) };
    panic!("read of an unmapped address returned {v:#x}");
}

/// `selftest=stack`: recurse until the boot stack runs into its guard page. The page
/// fault cannot be delivered on the exhausted stack, so the CPU raises a double fault,
/// which runs on its own IST stack and is reported.
pub fn overflow_stack() -> ! {
    kprintln!("selftest: stack: recursing into the guard page");
    let depth = recurse(0);
    panic!("stack overflow went undetected after {depth} frames");
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    if depth == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[31])
}

/// `selftest=hang`: never exit (the VMM's timeout must end the guest).
pub fn hang() -> ! {
    kprintln!("selftest: hang: spinning forever");
    loop {
        core::hint::spin_loop();
    }
}
