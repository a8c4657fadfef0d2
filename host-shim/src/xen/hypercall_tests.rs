//! Xen's behaviour, pinned: each test names the Xen source it follows.

use std::sync::Arc;

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::event_channel::*;
use pv_drivers::abi::grant_table::*;
use pv_drivers::abi::memory::*;
use pv_drivers::abi::sched::*;
use pv_drivers::abi::vcpu::*;
use pv_drivers::abi::xen::*;
use pv_drivers::hypercall::XENVER_VERSION;

use super::{Call, Ctx, Mode};
use crate::kvm::PagingState;
use crate::testing::xen_without_kvm;
use crate::xen::Xen;
use crate::xen::guest_mem::PAGE_SIZE;

/// Where argument structures go (paging off: virtual = physical).
const ARG: u64 = 0x1_0000;
/// A second scratch area (extent lists, runstate areas).
const LIST: u64 = 0x2_0000;
const RAM_MIB: u64 = 2;

fn rig() -> Arc<Xen> {
    let (xen, _) = xen_without_kvm(RAM_MIB);
    // Blocking hypercalls return at once.
    xen.stop();
    xen
}

fn call_of(mode: Mode, nr: u32, args: &[u64]) -> Call {
    let mut a = [0u64; 5];
    a[..args.len()].copy_from_slice(args);
    Call {
        nr: nr.into(),
        args: a,
        mode,
        page: None,
    }
}

fn run(xen: &Xen, call: &Call) -> super::Outcome {
    let paging = PagingState::default();
    let mut fetch = || Some(paging);
    let mut console = |_: &[u8]| {};
    xen.hypercall(call, &mut Ctx::new(&mut fetch, &mut console))
}

fn call_in(xen: &Xen, mode: Mode, nr: u32, args: &[u64]) -> i64 {
    run(xen, &call_of(mode, nr, args)).ret
}

/// Runs a hypercall, and again each time it is preempted, as the guest does; returns
/// the last result and the number of runs.
fn call_to_end(xen: &Xen, mode: Mode, nr: u32, args: &[u64]) -> (i64, u32) {
    let mut out = run(xen, &call_of(mode, nr, args));
    let mut runs = 1;
    while let super::After::Continue(next) = out.after {
        assert_eq!((next.nr, next.mode), (u64::from(nr), mode));
        out = run(xen, &next);
        runs += 1;
        assert!(runs < 100, "a continuation makes progress");
    }
    (out.ret, runs)
}

fn call(xen: &Xen, nr: u32, args: &[u64]) -> i64 {
    call_in(xen, Mode::Long, nr, args)
}

fn err(e: XenErrno) -> i64 {
    e.as_neg()
}

fn put(xen: &Xen, at: u64, bytes: &[u8]) {
    xen.ram().write_phys(at, bytes).expect("scratch in RAM");
}

fn get<const N: usize>(xen: &Xen, at: u64) -> [u8; N] {
    let mut b = [0u8; N];
    xen.ram().read_phys(at, &mut b).expect("scratch in RAM");
    b
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// Maps shared_info at guest frame `gfn` with `XENMEM_add_to_physmap` from code in
/// `mode` (the structure in that mode's layout); returns the result.
fn map_shared_info(xen: &Xen, mode: Mode, gfn: u64) -> i64 {
    let req = match mode {
        Mode::Long => XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_SHARED_INFO,
            idx: 0,
            gpfn: gfn,
        }
        .to_bytes()
        .to_vec(),
        Mode::Compat => {
            let mut req = Vec::new();
            req.extend_from_slice(&DOMID_SELF.to_le_bytes());
            req.extend_from_slice(&0u16.to_le_bytes());
            for v in [XENMAPSPACE_SHARED_INFO, 0, gfn as u32] {
                req.extend_from_slice(&v.to_le_bytes());
            }
            req
        }
    };
    put(xen, ARG, &req);
    call_in(
        xen,
        mode,
        HYPERVISOR_MEMORY_OP,
        &[XENMEM_ADD_TO_PHYSMAP.into(), ARG],
    )
}

// ---- grant_table_op: set_version (xen/common/grant_table.c, gnttab_set_version) -------

#[test]
fn set_version_answers_as_a_xen_offering_only_v1() {
    let xen = rig();
    for (asked, want) in [
        (1u32, 0),
        (0, err(XenErrno::EINVAL)),
        (2, err(XenErrno::ENOSYS)),
        (3, err(XenErrno::EINVAL)),
    ] {
        put(&xen, ARG, &asked.to_le_bytes());
        let ret = call(
            &xen,
            HYPERVISOR_GRANT_TABLE_OP,
            &[GNTTABOP_SET_VERSION.into(), ARG, 1],
        );
        assert_eq!(ret, want, "version {asked}");
        // The version in force is written back whatever the answer.
        assert_eq!(get::<4>(&xen, ARG), 1u32.to_le_bytes(), "version {asked}");
    }
}

// ---- grant_table_op: the count (xen/common/grant_table.c, do_grant_table_op) ----------

/// `count` is an `unsigned int`: the register's upper half is not looked at (2^40 is
/// 0, nothing done), a count negative as an int is -EINVAL, and a batch of any size
/// is done element by element (found by running the hostile guest on Xen 4.17, which
/// answered 0 where the shim refused counts above 512).
#[test]
fn grant_table_op_takes_its_count_as_xen_s_unsigned_int() {
    let xen = rig();
    // An unmapped array: with the count read as 0 it is never looked at.
    let beyond_ram = 1u64 << 40;
    for cmd in [GNTTABOP_COPY, GNTTABOP_MAP_GRANT_REF] {
        let ret = call(
            &xen,
            HYPERVISOR_GRANT_TABLE_OP,
            &[cmd.into(), beyond_ram, 1 << 40],
        );
        let want = if cmd == GNTTABOP_COPY {
            0
        } else {
            // The shim maps no grants for its guest (it is never a backend).
            err(XenErrno::ENOSYS)
        };
        assert_eq!(ret, want, "cmd {cmd}");
    }
    for count in [0x8000_0000u64, 0xffff_ffff, 0x1_8000_0000] {
        let ret = call(
            &xen,
            HYPERVISOR_GRANT_TABLE_OP,
            &[GNTTABOP_COPY.into(), ARG, count],
        );
        assert_eq!(ret, err(XenErrno::EINVAL), "count {count:#x}");
    }
    // 600 elements, each refused with a status of its own, none left as it was. The
    // batch is preempted twice (after 256 elements, then 512) and continued.
    const N: u64 = 600;
    put_refused_copies(&xen, LIST, N);
    let ret = call_to_end(
        &xen,
        Mode::Long,
        HYPERVISOR_GRANT_TABLE_OP,
        &[GNTTABOP_COPY.into(), LIST, N],
    );
    assert_eq!(ret, (0, 3));
    assert_copies_refused(&xen, LIST, N);
}

/// `n` `GNTTABOP_copy` elements at `at`, each a copy from a frame of domain 0 (not
/// the caller's, so each is refused with a status of its own), status preset to a
/// sentinel.
fn put_refused_copies(xen: &Xen, at: u64, n: u64) {
    let element = GnttabCopy {
        len: 8,
        status: 0x7777,
        ..GnttabCopy::default()
    };
    for i in 0..n {
        put(xen, at + i * GnttabCopy::SIZE as u64, &element.to_bytes());
    }
}

/// Every element [`put_refused_copies`] put at `at` was run: its status is an error.
fn assert_copies_refused(xen: &Xen, at: u64, n: u64) {
    for i in 0..n {
        let at = at + i * GnttabCopy::SIZE as u64 + 36;
        let status = i16::from_le_bytes(get::<2>(xen, at));
        assert!(status < 0, "element {i}: status {status}");
    }
}

// ---- multicall (xen/common/multicall.c, do_multicall; x86 hvm_do_multicall_call) -------

/// One 64-bit `multicall_entry`: `op`, `result` (preset to a sentinel), `args[6]`.
fn mc_entry(op: u64, args: &[u64]) -> [u64; 8] {
    let mut e = [0u64; 8];
    e[0] = op;
    e[1] = 0x5555;
    e[2..2 + args.len()].copy_from_slice(args);
    e
}

fn put_words<T: Copy>(xen: &Xen, at: u64, words: &[T], to_le: fn(T) -> Vec<u8>) {
    let bytes: Vec<u8> = words.iter().flat_map(|&w| to_le(w)).collect();
    put(xen, at, &bytes);
}

/// Xen serves multicall to HVM and PVH guests (found by the hostile guest on Xen 4.17,
/// where the shim had answered -ENOSYS): each entry runs as its own hypercall and gets
/// its result; an unknown one -ENOSYS, a nested multicall -EINVAL; `nr_calls` is a
/// `uint32_t` (2^40 is 0); an entry outside RAM ends the call with -EFAULT.
#[test]
fn multicall_runs_each_entry_and_writes_its_result() {
    let xen = rig();
    let entries = [
        mc_entry(HYPERVISOR_XEN_VERSION.into(), &[XENVER_VERSION.into()]),
        mc_entry(99, &[1, 2, 3]),
        mc_entry(HYPERVISOR_MULTICALL.into(), &[LIST, 1]),
        mc_entry(HYPERVISOR_XEN_VERSION.into(), &[XENVER_VERSION.into()]),
    ];
    for (i, e) in entries.iter().enumerate() {
        put_words(&xen, LIST + 64 * i as u64, e, |w: u64| {
            w.to_le_bytes().to_vec()
        });
    }
    let ret = call(&xen, HYPERVISOR_MULTICALL, &[LIST, entries.len() as u64]);
    assert_eq!(ret, 0);
    let result = |i: u64| i64::from_le_bytes(get::<8>(&xen, LIST + 64 * i + 8));
    let (major, minor) = crate::xen::XEN_VERSION;
    let version = i64::from(major) << 16 | i64::from(minor);
    assert_eq!(result(0), version);
    assert_eq!(result(1), err(XenErrno::ENOSYS));
    assert_eq!(result(2), err(XenErrno::EINVAL));
    assert_eq!(result(3), version);
    // Arguments are not written back.
    assert_eq!(
        le_u64(&get::<8>(&xen, LIST + 16)),
        u64::from(XENVER_VERSION)
    );
    // The multicall counts once as a hypercall, its entries apart.
    let stats = xen.stats();
    assert_eq!(stats.hypercalls.get("multicall"), Some(&1));
    assert_eq!(stats.hypercalls.values().sum::<u64>(), 1);
    assert_eq!(stats.multicall_entries.values().sum::<u64>(), 4);

    // The count is 32 bits: 2^40 calls are none, and the list is never read.
    assert_eq!(call(&xen, HYPERVISOR_MULTICALL, &[1 << 40, 1 << 40]), 0);
    assert_eq!(
        call(&xen, HYPERVISOR_MULTICALL, &[1 << 40, 1]),
        err(XenErrno::EFAULT)
    );
    // A list running out of RAM: the entries before the edge are done.
    let last = (RAM_MIB << 20) - 64;
    put_words(
        &xen,
        last,
        &mc_entry(HYPERVISOR_XEN_VERSION.into(), &[XENVER_VERSION.into()]),
        |w: u64| w.to_le_bytes().to_vec(),
    );
    assert_eq!(
        call(&xen, HYPERVISOR_MULTICALL, &[last, 2]),
        err(XenErrno::EFAULT)
    );
    assert_eq!(i64::from_le_bytes(get::<8>(&xen, last + 8)), version);
}

/// A 32-bit caller's entries are 32 bytes of 32-bit fields, its result 32 bits.
#[test]
fn a_32_bit_caller_s_multicall_uses_the_compat_layout() {
    let xen = rig();
    let entries: [[u32; 8]; 2] = [
        [
            HYPERVISOR_XEN_VERSION,
            0x5555,
            XENVER_VERSION,
            0,
            0,
            0,
            0,
            0,
        ],
        [77, 0x5555, 0, 0, 0, 0, 0, 0],
    ];
    for (i, e) in entries.iter().enumerate() {
        put_words(&xen, LIST + 32 * i as u64, e, |w: u32| {
            w.to_le_bytes().to_vec()
        });
    }
    let ret = call_in(&xen, Mode::Compat, HYPERVISOR_MULTICALL, &[LIST, 2]);
    assert_eq!(ret, 0);
    let (major, minor) = crate::xen::XEN_VERSION;
    let result = |i: u64| i32::from_le_bytes(get::<4>(&xen, LIST + 32 * i + 4));
    assert_eq!(
        i64::from(result(0)),
        i64::from(major) << 16 | i64::from(minor)
    );
    assert_eq!(i64::from(result(1)), err(XenErrno::ENOSYS));
    // The first argument right after the result is untouched.
    assert_eq!(u32::from_le_bytes(get::<4>(&xen, LIST + 8)), XENVER_VERSION);
}

/// Xen preempts a long multicall between entries and continues it
/// (common/multicall.c: `hypercall_create_continuation(__HYPERVISOR_multicall, "hi",
/// call_list, nr_calls - i)` with `call_list` advanced past the entries done): the
/// shim after [`super::PREEMPT_AFTER`] entries, the continuation's arguments in the
/// caller's layout. The guest runs the hypercall again and the list goes on where it
/// stopped; every entry runs once.
#[test]
fn a_long_multicall_is_preempted_and_continues_where_it_stopped() {
    use super::{After, PREEMPT_AFTER};
    let (major, minor) = crate::xen::XEN_VERSION;
    let version = i64::from(major) << 16 | i64::from(minor);
    let done = u64::from(PREEMPT_AFTER);
    for (mode, size) in [(Mode::Long, 64u64), (Mode::Compat, 32)] {
        let xen = rig();
        const N: u64 = 1000;
        for i in 0..N {
            let at = LIST + size * i;
            match mode {
                Mode::Long => put_words(
                    &xen,
                    at,
                    &mc_entry(HYPERVISOR_XEN_VERSION.into(), &[XENVER_VERSION.into()]),
                    |w: u64| w.to_le_bytes().to_vec(),
                ),
                Mode::Compat => put_words(
                    &xen,
                    at,
                    &[
                        HYPERVISOR_XEN_VERSION,
                        0x5555,
                        XENVER_VERSION,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                    |w: u32| w.to_le_bytes().to_vec(),
                ),
            }
        }
        let result = |i: u64| match mode {
            Mode::Long => i64::from_le_bytes(get::<8>(&xen, LIST + size * i + 8)),
            Mode::Compat => i64::from(i32::from_le_bytes(get::<4>(&xen, LIST + size * i + 4))),
        };
        let first = run(&xen, &call_of(mode, HYPERVISOR_MULTICALL, &[LIST, N]));
        assert_eq!(
            first.after,
            After::Continue(call_of(
                mode,
                HYPERVISOR_MULTICALL,
                &[LIST + size * done, N - done]
            )),
            "{mode:?}"
        );
        assert_eq!(result(done - 1), version);
        assert_eq!(result(done), 0x5555, "{mode:?}: the next entry waits");

        // From the start again, to the end: 1000 entries in four runs.
        let (ret, runs) = call_to_end(&xen, mode, HYPERVISOR_MULTICALL, &[LIST, N]);
        assert_eq!((ret, runs), (0, 4), "{mode:?}");
        assert!((0..N).all(|i| result(i) == version), "{mode:?}");
        let stats = xen.stats();
        assert_eq!(stats.hypercalls.get("multicall"), Some(&5));
        assert_eq!(stats.hypercall_continuations, 4);
        assert_eq!(stats.multicall_entries.values().sum::<u64>(), done + N);
    }
}

/// `console_io` writes as Xen's `guest_console_write` does: in chunks of 127 bytes,
/// a long write preempted between chunks and continued with the rest (`"iih"`:
/// command, count left, buffer advanced), and a chunk that cannot be read ending the
/// call with -EFAULT after the chunks before it were written.
#[test]
fn console_writes_go_in_chunks_and_long_ones_are_continued() {
    use super::{After, PREEMPT_AFTER};
    let xen = rig();
    let text: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    put(&xen, LIST, &text);
    let paging = PagingState::default();
    let mut fetch = || Some(paging);
    let printed = std::cell::RefCell::new(Vec::new());
    let mut console = |b: &[u8]| printed.borrow_mut().extend_from_slice(b);
    let write = |count: u64, at: u64| {
        call_of(
            Mode::Long,
            HYPERVISOR_CONSOLE_IO,
            &[CONSOLEIO_WRITE.into(), count, at],
        )
    };
    let mut out = xen.hypercall(
        &write(text.len() as u64, LIST),
        &mut Ctx::new(&mut fetch, &mut console),
    );
    let first = u64::from(PREEMPT_AFTER) * 127;
    assert_eq!(
        out.after,
        After::Continue(write(text.len() as u64 - first, LIST + first))
    );
    let mut runs = 1;
    while let After::Continue(next) = out.after {
        out = xen.hypercall(&next, &mut Ctx::new(&mut fetch, &mut console));
        runs += 1;
    }
    assert_eq!((out.ret, runs), (0, 2));
    assert_eq!(*printed.borrow(), text, "every byte once, in order");

    // The last page of RAM, then beyond it: the first 127 bytes are written.
    printed.borrow_mut().clear();
    let last = (RAM_MIB << 20) - 127;
    put(&xen, last, &[b'z'; 127]);
    let out = xen.hypercall(&write(300, last), &mut Ctx::new(&mut fetch, &mut console));
    assert_eq!(out.ret, err(XenErrno::EFAULT));
    assert_eq!(printed.borrow()[..], [b'z'; 127]);
    // The count is 32 bits: 2^40 + 3 is 3.
    printed.borrow_mut().clear();
    let out = xen.hypercall(
        &write((1 << 40) + 3, LIST),
        &mut Ctx::new(&mut fetch, &mut console),
    );
    assert_eq!((out.ret, &printed.borrow()[..]), (0, &b"abc"[..]));
}

/// An entry preempted itself (here a `GNTTABOP_copy` of 600 elements) has its
/// continued arguments written back into the entry, and the multicall continues at
/// that entry (Xen: "Translate sub-call continuation to guest layout" and copy the
/// entry back); the entries after it run once the entry is done.
#[test]
fn a_preempted_multicall_entry_continues_in_place() {
    use super::After;
    let xen = rig();
    const N: u64 = 600;
    let size = GnttabCopy::SIZE as u64;
    put_refused_copies(&xen, ARG, N);
    let entries = [
        mc_entry(
            HYPERVISOR_GRANT_TABLE_OP.into(),
            &[GNTTABOP_COPY.into(), ARG, N],
        ),
        mc_entry(HYPERVISOR_XEN_VERSION.into(), &[XENVER_VERSION.into()]),
    ];
    for (i, e) in entries.iter().enumerate() {
        put_words(&xen, LIST + 64 * i as u64, e, |w: u64| {
            w.to_le_bytes().to_vec()
        });
    }
    let first = run(&xen, &call_of(Mode::Long, HYPERVISOR_MULTICALL, &[LIST, 2]));
    assert_eq!(
        first.after,
        After::Continue(call_of(Mode::Long, HYPERVISOR_MULTICALL, &[LIST, 2]))
    );
    let args: Vec<u64> = (0..3)
        .map(|k| le_u64(&get::<8>(&xen, LIST + 16 + 8 * k)))
        .collect();
    assert_eq!(args, [u64::from(GNTTABOP_COPY), ARG + 256 * size, N - 256]);
    let result = |i: u64| i64::from_le_bytes(get::<8>(&xen, LIST + 64 * i + 8));
    assert_eq!((result(0), result(1)), (0x5555, 0x5555));

    let mut out = first;
    let mut runs = 1;
    while let After::Continue(next) = out.after {
        out = run(&xen, &next);
        runs += 1;
        assert!(runs < 10);
    }
    assert_eq!((out.ret, runs), (0, 3));
    assert_eq!(result(0), 0);
    assert!(result(1) > 0, "the entry after it ran: {}", result(1));
    assert_copies_refused(&xen, ARG, N);
}

/// `SCHEDOP_shutdown` from inside a multicall ends the guest as a direct one does.
#[test]
fn a_shutdown_inside_a_multicall_shuts_down() {
    let xen = rig();
    put(&xen, ARG, &SHUTDOWN_POWEROFF.to_le_bytes());
    put_words(
        &xen,
        LIST,
        &mc_entry(HYPERVISOR_SCHED_OP.into(), &[SCHEDOP_SHUTDOWN.into(), ARG]),
        |w: u64| w.to_le_bytes().to_vec(),
    );
    let call = Call {
        nr: HYPERVISOR_MULTICALL.into(),
        args: [LIST, 1, 0, 0, 0],
        mode: Mode::Long,
        page: None,
    };
    let paging = PagingState::default();
    let mut fetch = || Some(paging);
    let mut console = |_: &[u8]| {};
    let out = xen.hypercall(&call, &mut Ctx::new(&mut fetch, &mut console));
    assert_eq!(out.ret, 0);
    assert_eq!(out.after, super::After::Shutdown(SHUTDOWN_POWEROFF));
}

// ---- privileged hypercalls (xen/common/domctl.c, sysctl.c, x86 platform_hypercall.c) --

#[test]
fn privileged_hypercalls_are_refused_as_xen_refuses_a_domu() {
    let xen = rig();
    for (nr, version) in [
        (HYPERVISOR_DOMCTL, 0x15u32),
        (HYPERVISOR_SYSCTL, 0x15),
        (HYPERVISOR_PLATFORM_OP, 0x0300_0001),
    ] {
        let mut op = [0u8; 16];
        op[4..8].copy_from_slice(&version.to_le_bytes());
        put(&xen, ARG, &op);
        assert_eq!(
            call(&xen, nr, &[ARG]),
            err(XenErrno::EPERM),
            "hypercall {nr}"
        );
        op[4..8].copy_from_slice(&(version + 1).to_le_bytes());
        put(&xen, ARG, &op);
        assert_eq!(
            call(&xen, nr, &[ARG]),
            err(XenErrno::EACCES),
            "hypercall {nr}"
        );
        assert_eq!(
            call(&xen, nr, &[1 << 40]),
            err(XenErrno::EFAULT),
            "hypercall {nr}"
        );
    }
}

// ---- EVTCHNOP_init_control (xen/common/event_fifo.c) ----------------------------------

#[test]
fn fifo_init_control_is_checked_as_xen_checks_it_then_refused() {
    let xen = rig();
    let init = |gfn: u64, offset: u32, vcpu: u32| {
        let req = EvtchnInitControl {
            control_gfn: gfn,
            offset,
            vcpu,
            ..Default::default()
        };
        put(&xen, ARG, &req.to_bytes());
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_INIT_CONTROL.into(), ARG],
        )
    };
    let ram_pfn = 0x30;
    assert_eq!(
        init(0x10_0000, 0, 0),
        err(XenErrno::EINVAL),
        "frame outside RAM"
    );
    assert_eq!(
        init(u64::MAX, 0, 0),
        err(XenErrno::EINVAL),
        "frame overflowing"
    );
    assert_eq!(init(ram_pfn, 0, 1), err(XenErrno::ENOENT), "no vCPU 1");
    assert_eq!(init(ram_pfn, 4, 0), err(XenErrno::EINVAL), "misaligned");
    assert_eq!(
        init(ram_pfn, 4096 - 64, 0),
        err(XenErrno::EINVAL),
        "crosses the page"
    );
    // A valid request: refused as by a Xen without FIFO support; Linux falls back.
    assert_eq!(init(ram_pfn, 8, 0), err(XenErrno::EOPNOTSUPP));
    put(&xen, ARG, &[0; 8]);
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_EXPAND_ARRAY.into(), ARG]
        ),
        err(XenErrno::EOPNOTSUPP)
    );
    put(&xen, ARG, &[0xff; 8]);
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_SET_PRIORITY.into(), ARG]
        ),
        err(XenErrno::EINVAL),
        "set_priority on a port that does not exist"
    );
}

// ---- memory_op reservations (xen/common/memory.c) --------------------------------------

fn reservation(xen: &Xen, list: &[u64], order: u32) -> XenMemoryReservation {
    for (i, pfn) in list.iter().enumerate() {
        put(xen, LIST + 8 * i as u64, &pfn.to_le_bytes());
    }
    XenMemoryReservation {
        extent_start: LIST,
        nr_extents: list.len() as u64,
        extent_order: order,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 3],
    }
}

fn memory(xen: &Xen, cmd: u32, req: &XenMemoryReservation) -> i64 {
    put(xen, ARG, &req.to_bytes());
    call(xen, HYPERVISOR_MEMORY_OP, &[cmd.into(), ARG])
}

fn current(xen: &Xen) -> i64 {
    put(xen, ARG, &DOMID_SELF.to_le_bytes());
    call(
        xen,
        HYPERVISOR_MEMORY_OP,
        &[XENMEM_CURRENT_RESERVATION.into(), ARG],
    )
}

#[test]
fn released_pages_read_zero_count_and_can_be_populated_again() {
    let xen = rig();
    let full = current(&xen);
    assert_eq!(full, (RAM_MIB << 20) as i64 / PAGE_SIZE as i64);
    put(&xen, 0x40 * PAGE_SIZE, &[0xa5; 64]);

    let req = reservation(&xen, &[0x40, 0x41], 0);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &req), 2);
    assert_eq!(
        get::<64>(&xen, 0x40 * PAGE_SIZE),
        [0; 64],
        "a released page reads zero"
    );
    assert_eq!(current(&xen), full - 2);
    // A page already released stops the operation at that extent (guest_remove_page
    // -ENOENT): nothing done.
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &req), 0);

    // populate_physmap brings released pages back, and only those.
    let one = reservation(&xen, &[0x40], 0);
    assert_eq!(memory(&xen, XENMEM_POPULATE_PHYSMAP, &one), 1);
    assert_eq!(memory(&xen, XENMEM_POPULATE_PHYSMAP, &one), 0);
    assert_eq!(current(&xen), full - 1);

    // increase_reservation (a translated guest: allocated, placed nowhere) fills the
    // reservation up to its maximum and no further.
    let alloc = XenMemoryReservation {
        nr_extents: 2,
        ..reservation(&xen, &[], 0)
    };
    assert_eq!(memory(&xen, XENMEM_INCREASE_RESERVATION, &alloc), 1);
    assert_eq!(current(&xen), full);
}

/// A long extent list is preempted between extents and continued with the next
/// extent's index in `cmd`'s upper bits (common/memory.c: `hypercall_create_continuation(
/// __HYPERVISOR_memory_op, "lh", op | (rc << MEMOP_EXTENT_SHIFT), arg)`); the result at
/// the end counts every extent.
#[test]
fn a_long_extent_list_is_preempted_and_continued_at_the_next_extent() {
    use super::{After, PREEMPT_AFTER};
    let xen = rig();
    let full = current(&xen);
    let pfns: Vec<u64> = (0x60..0x60 + 300).collect();
    let req = reservation(&xen, &pfns, 0);
    put(&xen, ARG, &req.to_bytes());
    let cmd = u64::from(XENMEM_DECREASE_RESERVATION);
    let first = run(
        &xen,
        &call_of(Mode::Long, HYPERVISOR_MEMORY_OP, &[cmd, ARG]),
    );
    let next = cmd | u64::from(PREEMPT_AFTER) << super::MEMOP_EXTENT_SHIFT;
    assert_eq!(
        first.after,
        After::Continue(call_of(Mode::Long, HYPERVISOR_MEMORY_OP, &[next, ARG]))
    );
    assert_eq!(current(&xen), full - i64::from(PREEMPT_AFTER));
    put(&xen, ARG, &req.to_bytes()); // `current` wrote over it
    let (ret, runs) = call_to_end(&xen, Mode::Long, HYPERVISOR_MEMORY_OP, &[next, ARG]);
    assert_eq!((ret, runs), (300, 1));
    assert_eq!(current(&xen), full - 300);
}

#[test]
fn reservation_operations_stop_where_xen_stops_them() {
    let xen = rig();
    let full = current(&xen);
    // A continuation: cmd's upper bits are the extent to start at.
    let req = reservation(&xen, &[0x40, 0x41, 0x42], 0);
    let cmd = XENMEM_DECREASE_RESERVATION | (1 << 6);
    assert_eq!(
        memory(&xen, cmd, &req),
        3,
        "extents 1 and 2 done, counted from 0"
    );
    assert_eq!(current(&xen), full - 2);
    assert_eq!(
        memory(&xen, XENMEM_DECREASE_RESERVATION | (3 << 6), &req),
        3
    );
    // An order above the domU limit (9) does nothing.
    let big = reservation(&xen, &[0x100], 10);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &big), 0);
    // An order-1 extent: two pages.
    let pair = reservation(&xen, &[0x80], 1);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &pair), 1);
    assert_eq!(current(&xen), full - 4);
    // Another domain, or an unreadable structure: the start extent, no errno.
    let other = XenMemoryReservation {
        domid: 0,
        ..reservation(&xen, &[0x90], 0)
    };
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &other), 0);
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_MEMORY_OP,
            &[(XENMEM_DECREASE_RESERVATION | 1 << 6).into(), 1 << 40]
        ),
        1
    );
    // An extent list outside RAM stops at once; pages outside RAM are not released.
    let unreadable = XenMemoryReservation {
        extent_start: 1 << 40,
        ..reservation(&xen, &[0x90], 0)
    };
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &unreadable), 0);
    let outside = reservation(&xen, &[0x10_0000], 0);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &outside), 0);
    // The shim's own pages (here the xenstore ring at the top of RAM) stay.
    let store = (RAM_MIB << 20) / PAGE_SIZE - 2;
    let ring = reservation(&xen, &[store], 0);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &ring), 0);
    assert_eq!(current(&xen), full - 4);
    // Other queries refuse a start extent.
    put(&xen, ARG, &DOMID_SELF.to_le_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_MEMORY_OP,
            &[(XENMEM_CURRENT_RESERVATION | 1 << 6).into(), ARG]
        ),
        err(XenErrno::EINVAL)
    );
}

#[test]
fn a_32_bit_caller_passes_its_extent_list_in_compat_layout() {
    let xen = rig();
    let full = current(&xen);
    // compat_memory_reservation: handle, nr_extents, extent_order, mem_flags, domid.
    let mut req = Vec::new();
    for v in [LIST as u32, 2, 0, 0] {
        req.extend_from_slice(&v.to_le_bytes());
    }
    req.extend_from_slice(&DOMID_SELF.to_le_bytes());
    req.extend_from_slice(&[0, 0]);
    put(&xen, ARG, &req);
    // compat_pfn_t: 4 bytes each.
    put(&xen, LIST, &[0x50, 0, 0, 0, 0x51, 0, 0, 0]);
    let ret = call_in(
        &xen,
        Mode::Compat,
        HYPERVISOR_MEMORY_OP,
        &[XENMEM_DECREASE_RESERVATION.into(), ARG],
    );
    assert_eq!(ret, 2);
    assert_eq!(current(&xen), full - 2);
}

// ---- runstate and vm_assist (xen/common/domain.c, vcpu.h) ------------------------------

#[test]
fn the_runstate_area_is_written_at_once_and_follows_blocking() {
    let xen = rig();
    put(&xen, ARG, &LIST.to_le_bytes());
    let register = || {
        call(
            &xen,
            HYPERVISOR_VCPU_OP,
            &[VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA.into(), 0, ARG],
        )
    };
    assert_eq!(register(), 0);
    let area = get::<48>(&xen, LIST);
    assert_eq!(area[..4], 0u32.to_le_bytes(), "running");
    let entry = le_u64(&area[8..]);
    assert_eq!(le_u64(&area[16..]), entry, "running since time 0");

    // vm_assist: only the runstate update flag, for an HVM guest.
    assert_eq!(
        call(&xen, HYPERVISOR_VM_ASSIST, &[0, 0]),
        err(XenErrno::EINVAL)
    );
    assert_eq!(
        call(&xen, HYPERVISOR_VM_ASSIST, &[7, 5]),
        err(XenErrno::ENOSYS)
    );
    assert_eq!(call(&xen, HYPERVISOR_VM_ASSIST, &[0, 5]), 0);

    // A block (which returns at once here) passes through "blocked" and back.
    assert_eq!(call(&xen, HYPERVISOR_SCHED_OP, &[SCHEDOP_BLOCK.into()]), 0);
    let area = get::<48>(&xen, LIST);
    assert_eq!(area[..4], 0u32.to_le_bytes(), "running again");
    let entry2 = le_u64(&area[8..]);
    assert!(entry2 >= entry, "{entry2} < {entry}");
    assert_eq!(
        entry2 >> 63,
        0,
        "the update flag is cleared after the update"
    );
    // Every nanosecond is accounted: time[running] + time[blocked] = the entry time.
    assert_eq!(le_u64(&area[16..]) + le_u64(&area[16 + 16..]), entry2);

    // 0 unregisters: a later block writes nothing.
    put(&xen, LIST, &[0xee; 48]);
    put(&xen, ARG, &0u64.to_le_bytes());
    assert_eq!(register(), 0);
    call(&xen, HYPERVISOR_SCHED_OP, &[SCHEDOP_BLOCK.into()]);
    assert_eq!(get::<48>(&xen, LIST), [0xee; 48]);
}

#[test]
fn a_32_bit_caller_gets_the_44_byte_runstate_layout() {
    let xen = rig();
    put(&xen, LIST, &[0xee; 48]);
    // The handle is the low half of the 8-byte union.
    put(&xen, ARG, &(LIST | 0xdead_0000_0000_0000).to_le_bytes());
    let ret = call_in(
        &xen,
        Mode::Compat,
        HYPERVISOR_VCPU_OP,
        &[VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA.into(), 0, ARG],
    );
    assert_eq!(ret, 0);
    let area = get::<48>(&xen, LIST);
    let entry = le_u64(&area[4..]);
    assert_eq!(le_u64(&area[12..]), entry, "time[running] at offset 12");
    assert_eq!(area[44..], [0xee; 4], "nothing past 44 bytes");
}

// ---- 32-bit callers --------------------------------------------------------------------

#[test]
fn a_32_bit_caller_uses_its_own_registers_and_structure_layouts() {
    use crate::kvm::Registers;
    let regs = Registers {
        rax: 0xffff_ffff_0000_0011,
        rbx: 0x1_0000_0001,
        rcx: 2,
        rdx: 3,
        rsi: 4,
        rdi: 5,
        r10: 99,
        r8: 98,
        rip: 0,
    };
    let compat = Call::from_registers(&regs, Mode::Compat);
    assert_eq!((compat.nr, compat.args), (0x11, [1, 2, 3, 4, 5]));
    let long = Call::from_registers(&regs, Mode::Long);
    assert_eq!(long.args, [5, 4, 3, 99, 98]);

    // add_to_physmap in the compat layout maps shared_info.
    let xen = rig();
    assert_eq!(map_shared_info(&xen, Mode::Compat, 0x33), 0);
    // The shared_info page is there now: the shim published the time in it.
    assert_ne!(get::<4096>(&xen, 0x33 * PAGE_SIZE), [0; 4096]);

    // sched_poll's compat layout (16 bytes): a bad port in the list is -EINVAL, so the
    // list pointer was read from offset 0 and nr_ports from offset 4.
    let mut poll = Vec::new();
    for v in [LIST as u32, 1, 0, 0] {
        poll.extend_from_slice(&v.to_le_bytes());
    }
    put(&xen, ARG, &poll);
    put(&xen, LIST, &0xfff0u32.to_le_bytes());
    let ret = call_in(
        &xen,
        Mode::Compat,
        HYPERVISOR_SCHED_OP,
        &[SCHEDOP_POLL.into(), ARG],
    );
    assert_eq!(ret, err(XenErrno::EINVAL));
}

#[test]
fn a_call_through_a_page_of_the_other_mode_is_refused_not_misread() {
    let xen = rig();
    let mut fetch = || Some(PagingState::default());
    let mut console = |_: &[u8]| {};
    let call = Call {
        nr: HYPERVISOR_XEN_VERSION.into(),
        args: [0; 5],
        mode: Mode::Long,
        page: Some(Mode::Compat),
    };
    let out = xen.hypercall(&call, &mut Ctx::new(&mut fetch, &mut console));
    assert_eq!(out.ret, err(XenErrno::ENOSYS));
    let stats = xen.stats();
    assert_eq!(stats.hypercalls.get("refused.mode_mismatch"), Some(&1));
    assert!(!stats.hypercalls.contains_key("xen_version.version"));
    let ok = Call {
        page: Some(Mode::Long),
        ..call
    };
    let out = xen.hypercall(&ok, &mut Ctx::new(&mut fetch, &mut console));
    assert_eq!(out.ret, 4 << 16 | 17);
}

#[test]
fn set_timer_op_takes_its_deadline_from_two_registers_in_32_bit_code() {
    let xen = rig();
    // A deadline above 4 s of system time: its high half is in ecx.
    let far = 1u64 << 40;
    let ret = call_in(
        &xen,
        Mode::Compat,
        HYPERVISOR_SET_TIMER_OP,
        &[far & 0xffff_ffff, far >> 32],
    );
    assert_eq!(ret, 0);
    assert_eq!(xen.timer_deadline(), Some(far));
}

// ---- HVM_PARAM_CALLBACK_IRQ (xen/arch/x86/hvm/irq.c, hvm_set_callback_via) -------------

#[test]
fn any_callback_via_is_accepted_and_read_back_as_xen_does() {
    use pv_drivers::abi::hvm::*;
    let xen = rig();
    let param = |op: u32, value: u64| {
        let p = XenHvmParam {
            domid: DOMID_SELF,
            index: HVM_PARAM_CALLBACK_IRQ,
            value,
            ..Default::default()
        };
        put(&xen, ARG, &p.to_bytes());
        let ret = call(&xen, HYPERVISOR_HVM_OP, &[op.into(), ARG]);
        (ret, le_u64(&get::<16>(&xen, ARG)[8..]))
    };
    // Linux's "trick toolstack" GSI 1, a vector callback, a PCI INTx and an unknown
    // type: all taken (Xen's set_param never fails for it), and read back verbatim.
    for via in [1, 2 << 56 | 0xf3, 1 << 56 | 3 << 11, 7 << 56] {
        assert_eq!(param(HVMOP_SET_PARAM, via).0, 0, "{via:#x}");
        assert_eq!(param(HVMOP_GET_PARAM, 0), (0, via));
    }
}

// ---- VCPUOP_register_vcpu_info (xen/common/domain.c, map_vcpu_info) --------------------

#[test]
fn vcpu_info_moves_once_with_everything_marked_pending_and_events_follow_it() {
    let xen = rig();
    let shared_pfn = 0x30u64;
    assert_eq!(map_shared_info(&xen, Mode::Long, shared_pfn), 0);
    let register = |gfn: u64, offset: u32| {
        let r = VcpuRegisterVcpuInfo {
            mfn: gfn,
            offset,
            rsvd: 0,
        };
        put(&xen, ARG, &r.to_bytes());
        call(
            &xen,
            HYPERVISOR_VCPU_OP,
            &[VCPUOP_REGISTER_VCPU_INFO.into(), 0, ARG],
        )
    };
    let (pfn, offset) = (0x31u64, 0x40u32);
    let at = pfn * PAGE_SIZE + u64::from(offset);
    assert_eq!(
        register(pfn, 4096 - 32),
        err(XenErrno::EINVAL),
        "crosses the page"
    );
    assert_eq!(register(pfn, 0x44), err(XenErrno::EINVAL), "misaligned");
    assert_eq!(register(0x10_0000, 0), err(XenErrno::EINVAL), "not RAM");
    assert_eq!(register(pfn, offset), 0);
    assert_eq!(register(pfn, 0), err(XenErrno::EINVAL), "only once");
    let info = get::<64>(&xen, at);
    assert_eq!(info[0], 1, "upcall pending");
    assert_eq!(le_u64(&info[8..]), u64::MAX, "every selector bit");
    // The time record was copied/refreshed: same scale as in shared_info.
    let shared_time = get::<32>(&xen, shared_pfn * PAGE_SIZE + 32);
    assert_eq!(info[32 + 24..32 + 32], shared_time[24..32]);
    assert_ne!(info[32 + 24..32 + 28], [0; 4]);

    // An event now marks its selector bit in the placed vcpu_info, not in shared_info.
    put(&xen, at, &[0; 16]);
    put(&xen, ARG, &[0; 8]);
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_BIND_IPI.into(), ARG]
        ),
        0
    );
    let port = u32::from_le_bytes(get::<8>(&xen, ARG)[4..8].try_into().unwrap());
    put(&xen, ARG, &port.to_le_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_SEND.into(), ARG]
        ),
        0
    );
    let info = get::<16>(&xen, at);
    assert_eq!(info[0], 1, "upcall pending in the placed vcpu_info");
    assert_eq!(le_u64(&info[8..]), 1 << (port / 64));
    assert_eq!(
        get::<16>(&xen, shared_pfn * PAGE_SIZE)[8..],
        [0; 8],
        "not in shared_info"
    );
    // The page is the guest's vcpu_info now: it cannot be given back.
    let req = reservation(&xen, &[pfn], 0);
    assert_eq!(memory(&xen, XENMEM_DECREASE_RESERVATION, &req), 0);
}

// ---- the shared_info layout (xen/arch/x86/hvm/hvm.c, hvm_latch_shinfo_size) ----------

#[test]
fn a_32_bit_callback_setup_latches_the_32_bit_shared_info_layout() {
    use pv_drivers::abi::hvm::*;
    let xen = rig();
    let p = XenHvmParam {
        domid: DOMID_SELF,
        index: HVM_PARAM_CALLBACK_IRQ,
        value: 1,
        ..Default::default()
    };
    put(&xen, ARG, &p.to_bytes());
    assert_eq!(
        call_in(
            &xen,
            Mode::Compat,
            HYPERVISOR_HVM_OP,
            &[HVMOP_SET_PARAM.into(), ARG]
        ),
        0
    );
    let shared = 0x30u64 * PAGE_SIZE;
    assert_eq!(map_shared_info(&xen, Mode::Compat, 0x30), 0);
    // The wallclock in the 32-bit place, none in the 64-bit one.
    assert_ne!(get::<4>(&xen, shared + 0x904), [0; 4]);
    assert_eq!(get::<4>(&xen, shared + 0xc04), [0; 4]);
    // Ports: 1024 of them, events in 32-bit words.
    put(&xen, ARG, &[0; 8]);
    assert_eq!(
        call_in(
            &xen,
            Mode::Compat,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_BIND_IPI.into(), ARG]
        ),
        0
    );
    let port = u32::from_le_bytes(get::<8>(&xen, ARG)[4..8].try_into().unwrap());
    put(&xen, ARG, &port.to_le_bytes());
    assert_eq!(
        call_in(
            &xen,
            Mode::Compat,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_SEND.into(), ARG]
        ),
        0
    );
    let word = u32::from_le_bytes(get::<4>(&xen, shared + 0x800 + 4 * u64::from(port / 32)));
    assert_eq!(word, 1 << (port % 32));
    let sel = u32::from_le_bytes(get::<4>(&xen, shared + 4));
    assert_eq!(sel, 1 << (port / 32));
    put(&xen, ARG, &1024u32.to_le_bytes());
    assert_eq!(
        call_in(
            &xen,
            Mode::Compat,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_SEND.into(), ARG]
        ),
        err(XenErrno::EINVAL),
        "port 1024 does not exist for a 32-bit guest"
    );
}

// ---- handing work to KVM's Xen support ------------------------------------------------

#[test]
fn a_vmcall_guest_gets_its_timer_handed_to_kvm_and_a_page_guest_does_not() {
    use crate::xen::KvmXenRequest;
    let setup = |xen: &Xen| {
        assert_eq!(map_shared_info(xen, Mode::Long, 0x30), 0);
        let virq = EvtchnBindVirq {
            virq: VIRQ_TIMER,
            vcpu: 0,
            port: 0,
        };
        put(xen, ARG, &virq.to_bytes());
        assert_eq!(
            call(
                xen,
                HYPERVISOR_EVENT_CHANNEL_OP,
                &[EVTCHNOP_BIND_VIRQ.into(), ARG]
            ),
            0
        );
        u32::from_le_bytes(get::<12>(xen, ARG)[8..12].try_into().unwrap())
    };
    // Not allowed (no KVM Xen support, or --no-kvm-xen-accel): nothing.
    let xen = rig();
    setup(&xen);
    assert!(xen.kvm_xen_sync().is_empty());

    let xen = rig();
    xen.allow_kvm_xen();
    let port = setup(&xen);
    let reqs = xen.kvm_xen_sync();
    assert_eq!(
        reqs,
        [
            KvmXenRequest::SharedInfo {
                gfn: 0x30,
                long_mode: true
            },
            KvmXenRequest::VcpuInfo(0x30 * PAGE_SIZE),
            KvmXenRequest::Timer(port),
            // The xenstore channel: domain 0's end has a notifier (xenstored).
            KvmXenRequest::EvtchnSend {
                port: xen.special().store_port,
                dom0_port: xen.special().store_dom0_port,
            },
        ]
    );
    for r in reqs {
        xen.kvm_xen_applied(r, Ok(()));
    }
    assert!(xen.kvm_xen_sync().is_empty(), "all given");
    assert_eq!(
        xen.stats().kvm_handles,
        ["evtchn_send", "shared_info", "timer", "vcpu_info"]
    );
    // KVM now writes the time record: the shim no longer does.
    put(&xen, 0x30 * PAGE_SIZE + 32, &[0; 32]);
    let r = VcpuRegisterVcpuInfo {
        mfn: 0x31,
        offset: 0,
        rsvd: 0,
    };
    put(&xen, ARG, &r.to_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_VCPU_OP,
            &[VCPUOP_REGISTER_VCPU_INFO.into(), 0, ARG]
        ),
        0
    );
    assert_eq!(get::<32>(&xen, 0x31 * PAGE_SIZE + 32)[24..28], [0; 4]);
    assert_eq!(
        xen.kvm_xen_sync(),
        [KvmXenRequest::VcpuInfo(0x31 * PAGE_SIZE)]
    );
    // Closing the timer's port takes the timer back.
    put(&xen, ARG, &port.to_le_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_CLOSE.into(), ARG]
        ),
        0
    );
    assert!(xen.kvm_xen_sync().contains(&KvmXenRequest::Timer(0)));
    // Closing the xenstore channel takes its sends back.
    let store = xen.special().store_port;
    put(&xen, ARG, &store.to_le_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_CLOSE.into(), ARG]
        ),
        0
    );
    assert!(
        xen.kvm_xen_sync()
            .contains(&KvmXenRequest::EvtchnUnsend(store))
    );
    // A refusal leaves the work with the shim, for good.
    xen.kvm_xen_applied(KvmXenRequest::Timer(0), Err("EINVAL".into()));
    assert!(xen.kvm_xen_sync().is_empty());

    // A guest that installed the hypercall page: its hypercalls never reach KVM.
    let xen = rig();
    xen.allow_kvm_xen();
    xen.write_msr(crate::xen::HYPERCALL_MSR, 0x20 * PAGE_SIZE, Mode::Long)
        .expect("page");
    setup(&xen);
    assert!(xen.kvm_xen_sync().is_empty());
}

// ---- EVTCHNOP_close (xen/common/event_channel.c, evtchn_close) -----------------------

/// Found by the guest's `selftest=hostile`: closing a port that is not open succeeded.
#[test]
fn closing_a_port_that_is_not_open_is_einval_as_in_xen() {
    let xen = rig();
    let close = |port: u32| {
        put(&xen, ARG, &port.to_le_bytes());
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_CLOSE.into(), ARG],
        )
    };
    // Port 0 is reserved (ECS_RESERVED); 4095 is free (ECS_FREE); 4096 is out of range.
    for port in [0, 4095, 4096, u32::MAX] {
        assert_eq!(close(port), err(XenErrno::EINVAL), "port {port}");
    }
    // An open port closes once; the second close finds it free.
    put(&xen, ARG, &[0; 8]);
    put(&xen, ARG, &DOMID_SELF.to_le_bytes());
    assert_eq!(
        call(
            &xen,
            HYPERVISOR_EVENT_CHANNEL_OP,
            &[EVTCHNOP_ALLOC_UNBOUND.into(), ARG]
        ),
        0
    );
    let port = u32::from_le_bytes(get::<8>(&xen, ARG)[4..8].try_into().unwrap());
    assert_ne!(port, 0);
    assert_eq!(close(port), 0);
    assert_eq!(close(port), err(XenErrno::EINVAL));
}
