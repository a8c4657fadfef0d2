//! Bodies of the fuzz targets in `host-shim/fuzz/`, as library functions, so that a
//! plain `cargo test` runs them too (on seeded pseudo-random inputs) and a long
//! `cargo +nightly fuzz run` explores further with the same code.
//!
//! Both decode the fuzzer's bytes into mostly valid, structured steps (as Cloud
//! Hypervisor's targets do), so the input reaches past the first check: a byte stream
//! read by [`Bytes`], which yields zeros once it runs dry.

use std::mem::offset_of;
use std::sync::atomic::Ordering;

use pv_drivers::abi::console::XenconsInterface;
use pv_drivers::abi::event_channel::*;
use pv_drivers::abi::grant_table::*;
use pv_drivers::abi::hvm::*;
use pv_drivers::abi::memory::*;
use pv_drivers::abi::sched::*;
use pv_drivers::abi::xen::*;
use pv_drivers::abi::xs_wire::XenstoreDomainInterface;
use pv_drivers::shmem::SharedMemory;

use super::{TEST_DOMID, xen_without_kvm};
use crate::devices::console::ConsoleSink;
use crate::kvm::PagingState;
use crate::xen::XenStats;
use crate::xen::guest_mem::PAGE_SIZE;
use crate::xen::hypercall::{After, Ctx, Mode};
use crate::xen::xenstored::{DomainConfig, GuestRing, Quotas, RingServer, XsdSockmsg};

/// The fuzzer's bytes, consumed front to back; zeros once exhausted.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    /// The next little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    /// The next little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A boolean.
    pub fn flag(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

// ---- the hypercall dispatcher ----------------------------------------------------------

/// Guest RAM of the hypercall target, MiB.
const RAM_MIB: u64 = 2;
/// How many times one step runs a preempted hypercall again.
const MAX_CONTINUATIONS: usize = 3;
/// The page tables of the paging-on mode (PML4, PDPT, PD: the first 2 MiB identity
/// mapped with one large page).
const PML4: u64 = 0x1000;
/// Where the guest's shared_info page goes.
const SHARED_PFN: u64 = 0x8;
/// Where the guest's two grant-table frames go.
const GRANT_PFN: u64 = 0xa;
/// Where structured arguments are written, and the area raw pokes land in.
const SCRATCH: u64 = 0x1_0000;
const SCRATCH_LEN: u64 = 0x4000;
/// Pages a grant or a copy names: a few around the scratch area, some not RAM.
const PFN_POOL: [u64; 8] = [
    SCRATCH / PAGE_SIZE,
    SCRATCH / PAGE_SIZE + 1,
    0x30,
    0x31,
    GRANT_PFN,
    0x1ff,
    0x200,
    0xfffff,
];
/// Steps per input.
const MAX_STEPS: usize = 64;

const HYPERCALLS: [u32; 12] = [
    HYPERVISOR_XEN_VERSION,
    HYPERVISOR_CONSOLE_IO,
    HYPERVISOR_MEMORY_OP,
    HYPERVISOR_HVM_OP,
    HYPERVISOR_EVENT_CHANNEL_OP,
    HYPERVISOR_GRANT_TABLE_OP,
    HYPERVISOR_VCPU_OP,
    HYPERVISOR_SCHED_OP,
    HYPERVISOR_SET_TIMER_OP,
    HYPERVISOR_MULTICALL,
    HYPERVISOR_MMU_UPDATE,
    HYPERVISOR_SCHED_OP_COMPAT,
];

/// A domain id a guest might write.
fn domid(b: &mut Bytes<'_>) -> DomId {
    match b.u8() % 5 {
        0 | 1 => DOMID_SELF,
        2 => TEST_DOMID,
        3 => 0,
        _ => b.u16(),
    }
}

/// A page frame number a guest might name.
fn pfn(b: &mut Bytes<'_>) -> u64 {
    match b.u8() {
        0..=239 => PFN_POOL[usize::from(b.u8()) % PFN_POOL.len()],
        240..=247 => u64::from(b.u16()),
        _ => b.u64(),
    }
}

/// A small port number, or anything.
fn port(b: &mut Bytes<'_>) -> u32 {
    match b.u8() % 8 {
        0 => b.u32(),
        n => u32::from(n) + u32::from(b.u8() % 4) * 8,
    }
}

/// A hypercall argument: a small number, a pointer into the scratch area, or anything.
fn arg(b: &mut Bytes<'_>) -> u64 {
    match b.u8() % 4 {
        0 => u64::from(b.u8()),
        1 => SCRATCH + u64::from(b.u16()) % SCRATCH_LEN,
        2 => b.u64(),
        _ => SCRATCH,
    }
}

/// One hypercall to make: number, arguments, and a structure to place at `SCRATCH`
/// first.
struct Call {
    nr: u32,
    args: [u64; 5],
    scratch: Vec<u8>,
}

impl Call {
    fn op(nr: u32, cmd: u32, scratch: &[u8]) -> Self {
        Self {
            nr,
            args: [cmd.into(), SCRATCH, 0, 0, 0],
            scratch: scratch.to_vec(),
        }
    }
}

/// A mostly valid call of one of the implemented hypercalls.
fn structured_call(b: &mut Bytes<'_>, special: crate::xen::Special) -> Call {
    match b.u8() % 9 {
        0 => {
            let req = XenAddToPhysmap {
                domid: domid(b),
                size: 0,
                space: u32::from(b.u8() % 4),
                idx: match b.u8() % 4 {
                    0 => XENMAPIDX_GRANT_TABLE_STATUS,
                    1 => b.u64(),
                    _ => u64::from(b.u8() % 4),
                },
                gpfn: pfn(b),
            };
            Call::op(HYPERVISOR_MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, &req.to_bytes())
        }
        1 => {
            let cmd = u32::from(b.u8() % 12);
            let p = port(b);
            let bytes = match cmd {
                EVTCHNOP_ALLOC_UNBOUND => EvtchnAllocUnbound {
                    dom: domid(b),
                    remote_dom: domid(b),
                    port: 0,
                }
                .to_bytes()
                .to_vec(),
                EVTCHNOP_BIND_INTERDOMAIN => EvtchnBindInterdomain {
                    remote_dom: domid(b),
                    _pad: 0,
                    remote_port: p,
                    local_port: 0,
                }
                .to_bytes()
                .to_vec(),
                EVTCHNOP_BIND_VIRQ => EvtchnBindVirq {
                    virq: u32::from(b.u8() % 8),
                    vcpu: u32::from(b.u8() % 2),
                    port: 0,
                }
                .to_bytes()
                .to_vec(),
                EVTCHNOP_BIND_VCPU => EvtchnBindVcpu {
                    port: p,
                    vcpu: u32::from(b.u8() % 2),
                }
                .to_bytes()
                .to_vec(),
                EVTCHNOP_STATUS => EvtchnStatus {
                    dom: domid(b),
                    port: p,
                    ..EvtchnStatus::zeroed()
                }
                .to_bytes()
                .to_vec(),
                // close, send, unmask, bind_ipi: a port (or vCPU) first.
                _ => {
                    let mut v = p.to_le_bytes().to_vec();
                    v.extend_from_slice(&[0; 4]);
                    v
                }
            };
            Call::op(HYPERVISOR_EVENT_CHANNEL_OP, cmd, &bytes)
        }
        2 => {
            let cmd = [
                HVMOP_SET_PARAM,
                HVMOP_GET_PARAM,
                HVMOP_SET_EVTCHN_UPCALL_VECTOR,
            ][usize::from(b.u8() % 3)];
            let bytes = if cmd == HVMOP_SET_EVTCHN_UPCALL_VECTOR {
                XenHvmEvtchnUpcallVector {
                    vcpu: u32::from(b.u8() % 2),
                    vector: b.u8(),
                    _pad: [0; 3],
                }
                .to_bytes()
                .to_vec()
            } else {
                let index = u32::from(b.u8() % 40);
                let value = match b.u8() % 3 {
                    0 => hvm_callback_via_vector(b.u8()),
                    1 => u64::from(b.u8()),
                    _ => b.u64(),
                };
                XenHvmParam {
                    domid: domid(b),
                    pad: 0,
                    index,
                    value,
                }
                .to_bytes()
                .to_vec()
            };
            Call::op(HYPERVISOR_HVM_OP, cmd, &bytes)
        }
        3 => {
            let count = b.u8() % 4;
            let mut bytes = Vec::new();
            for _ in 0..count {
                let flags = u16::from(b.u8() % 4) | if b.u8() == 0xff { b.u16() } else { 0 };
                let end = |is_ref: bool, b: &mut Bytes<'_>| GnttabCopyPtr {
                    u: if is_ref {
                        u64::from(b.u16() % 1100)
                    } else {
                        pfn(b)
                    },
                    domid: domid(b),
                    offset: b.u16() % 4200,
                    _pad: 0,
                };
                let op = GnttabCopy {
                    source: end(flags & GNTCOPY_SOURCE_GREF != 0, b),
                    dest: end(flags & GNTCOPY_DEST_GREF != 0, b),
                    len: b.u16() % 4200,
                    flags,
                    // Not GNTST_okay: the shim must write each status.
                    status: GNTST_GENERAL_ERROR,
                    _pad: 0,
                };
                bytes.extend_from_slice(&op.to_bytes());
            }
            let mut call = Call::op(HYPERVISOR_GRANT_TABLE_OP, GNTTABOP_COPY, &bytes);
            call.args[2] = if b.u8() == 0 {
                b.u64()
            } else {
                u64::from(count)
            };
            call
        }
        4 => {
            let cmd = u32::from(b.u8() % 12);
            let bytes = match cmd {
                GNTTABOP_QUERY_SIZE => GnttabQuerySize {
                    dom: domid(b),
                    ..GnttabQuerySize::zeroed()
                }
                .to_bytes()
                .to_vec(),
                _ => b.u32().to_le_bytes().to_vec(),
            };
            let mut call = Call::op(HYPERVISOR_GRANT_TABLE_OP, cmd, &bytes);
            call.args[2] = u64::from(b.u8() % 3);
            call
        }
        5 => {
            let cmd = u32::from(b.u8() % 8);
            let mut call = Call::op(HYPERVISOR_SCHED_OP, cmd, &[]);
            call.scratch = match cmd {
                SCHEDOP_POLL => {
                    let nr = u32::from(b.u8() % 5);
                    let mut v = SchedPoll {
                        ports: SCRATCH + 64,
                        nr_ports: if b.u8() == 0 { b.u32() } else { nr },
                        _pad: 0,
                        timeout: u64::from(b.u8()),
                    }
                    .to_bytes()
                    .to_vec();
                    v.resize(64, 0);
                    for _ in 0..nr {
                        v.extend_from_slice(&port(b).to_le_bytes());
                    }
                    v
                }
                _ => u32::from(b.u8() % 9).to_le_bytes().to_vec(),
            };
            call
        }
        6 => {
            let cmd = u32::from(b.u8() % 16);
            let t = match b.u8() % 3 {
                0 => 0,
                1 => u64::from(b.u32()),
                _ => b.u64(),
            };
            let mut bytes = t.to_le_bytes().to_vec();
            bytes.extend_from_slice(&u64::from(b.u8() % 3).to_le_bytes());
            let mut call = Call::op(HYPERVISOR_VCPU_OP, cmd, &bytes);
            call.args = [cmd.into(), u64::from(b.u8() % 2), SCRATCH, 0, 0];
            call
        }
        7 => {
            // console_io write of a few bytes, or xen_version into the scratch area.
            if b.flag() {
                let len = u64::from(b.u8());
                Call {
                    nr: HYPERVISOR_CONSOLE_IO,
                    args: [u64::from(b.u8() % 3), len, SCRATCH, 0, 0],
                    scratch: Vec::new(),
                }
            } else {
                Call::op(HYPERVISOR_XEN_VERSION, u32::from(b.u8() % 10), &[])
            }
        }
        _ => {
            // A notification on a ring the shim serves (xenstore or console).
            let p = if b.flag() {
                special.store_port
            } else {
                special.console_port
            };
            Call::op(HYPERVISOR_EVENT_CHANNEL_OP, EVTCHNOP_SEND, &p.to_le_bytes())
        }
    }
}

/// What a [`fuzz_hypercall`] run did.
#[derive(Debug)]
pub struct HypercallRun {
    /// The interface's counters at the end.
    pub stats: XenStats,
    /// `GNTTABOP_copy` elements that succeeded.
    pub copies_ok: u64,
}

/// Runs the hypercall dispatcher on one fuzz input. Panics if the shim misbehaves: a panic inside the dispatcher, a return
/// value that is neither a result nor a Xen errno, a grant left pinned after a
/// hypercall, an upcall on an exception vector, counters that do not add up, or an
/// inconsistent xenstored.
///
/// The input builds a guest with 2 MiB of RAM, paging off or on (identity mapped),
/// optionally already set up (shared_info, two grant frames, upcall vector), then
/// runs up to 64 steps: raw writes into guest memory and the grant table, the
/// guest's rings, raw hypercalls, and mostly valid structured hypercalls.
pub fn fuzz_hypercall(data: &[u8]) -> HypercallRun {
    let mut b = Bytes::new(data);
    let (xen, irq) = xen_without_kvm(RAM_MIB);
    let ram = xen.ram().clone();
    let special = xen.special();
    // The console ring is served as in the shim, to a sink that drops the bytes (no
    // writer thread: a thread per input would outlive it, and libFuzzer then runs the
    // input again under a leak scan).
    let _ = xen.attach_console(ConsoleSink::discard());
    // Blocking hypercalls return at once (as on a stop request) instead of sleeping.
    xen.stop();

    let setup = b.u8();
    let paging = if setup & 1 != 0 {
        let (pdpt, pd) = (PML4 + PAGE_SIZE, PML4 + 2 * PAGE_SIZE);
        for (at, entry) in [(PML4, pdpt | 3), (pdpt, pd | 3), (pd, 0x83)] {
            ram.write_phys(at, &u64::to_le_bytes(entry))
                .expect("page tables in RAM");
        }
        PagingState {
            cr0: (1 << 31) | (1 << 16) | 1,
            cr3: PML4,
            cr4: 1 << 5,
            efer: (1 << 10) | (1 << 8),
            long_mode_code: true,
        }
    } else {
        PagingState::default()
    };
    let mut prelude = Vec::new();
    if setup & 2 != 0 {
        let physmap = |space, idx, gpfn| {
            let req = XenAddToPhysmap {
                domid: DOMID_SELF,
                size: 0,
                space,
                idx,
                gpfn,
            };
            Call::op(HYPERVISOR_MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, &req.to_bytes())
        };
        prelude.push(physmap(XENMAPSPACE_SHARED_INFO, 0, SHARED_PFN));
        prelude.push(physmap(XENMAPSPACE_GRANT_TABLE, 0, GRANT_PFN));
        prelude.push(physmap(XENMAPSPACE_GRANT_TABLE, 1, GRANT_PFN + 1));
        let vector = XenHvmEvtchnUpcallVector {
            vcpu: 0,
            vector: 0xf3,
            _pad: [0; 3],
        };
        prelude.push(Call::op(
            HYPERVISOR_HVM_OP,
            HVMOP_SET_EVTCHN_UPCALL_VECTOR,
            &vector.to_bytes(),
        ));
    }

    let mut calls = 0u64;
    let mut copies_ok = 0u64;
    let mut run = |call: Call| {
        let _ = ram.write_phys(SCRATCH, &call.scratch);
        // Every fourth input calls from 32-bit code (compat layouts; a 32-bit caller's
        // registers hold 32 bits).
        let compat = setup & 12 == 12;
        let hypercall = crate::xen::hypercall::Call {
            nr: call.nr.into(),
            args: if compat {
                call.args.map(|a| a & 0xffff_ffff)
            } else {
                call.args
            },
            mode: if compat { Mode::Compat } else { Mode::Long },
            page: None,
        };
        let mut fetch = || Some(paging);
        let mut console = |_: &[u8]| {};
        let mut outcome = xen.hypercall(&hypercall, &mut Ctx::new(&mut fetch, &mut console));
        calls += 1;
        // A preempted hypercall is run again as the guest would, a few times (a
        // guest may also be stopped at any preemption point, so a list is not
        // always run to its end).
        for _ in 0..MAX_CONTINUATIONS {
            let After::Continue(next) = outcome.after else {
                break;
            };
            assert_eq!(
                (next.nr, next.mode, next.page),
                (hypercall.nr, hypercall.mode, hypercall.page),
                "a continuation is the same hypercall"
            );
            assert_eq!(xen.pinned_grants(), 0, "a preempted hypercall left a pin");
            outcome = xen.hypercall(&next, &mut Ctx::new(&mut fetch, &mut console));
            calls += 1;
        }
        if call.nr == HYPERVISOR_GRANT_TABLE_OP
            && call.args[0] == u64::from(GNTTABOP_COPY)
            && outcome.ret == 0
            && outcome.after == After::Resume
        {
            // Paging is off or the identity: the elements are where they were put.
            let n = (call.scratch.len() / GnttabCopy::SIZE).min(call.args[2] as usize);
            for i in 0..n as u64 {
                let mut raw = [0u8; GnttabCopy::SIZE];
                let at = SCRATCH + i * GnttabCopy::SIZE as u64;
                if ram.read_phys(at, &mut raw).is_ok()
                    && GnttabCopy::from_bytes(&raw).status == GNTST_OKAY
                {
                    copies_ok += 1;
                }
            }
        }
        assert!(
            outcome.ret >= -4095,
            "hypercall {} returned {}",
            call.nr,
            outcome.ret
        );
        if let After::Shutdown(reason) = outcome.after {
            assert!(reason <= SHUTDOWN_MAX, "shutdown reason {reason}");
        }
        assert_eq!(xen.pinned_grants(), 0, "hypercall {} left a pin", call.nr);
        for (_, vector) in irq.take() {
            assert!(vector >= 0x10, "upcall on exception vector {vector}");
        }
    };
    for call in prelude {
        run(call);
    }

    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        match b.u8() % 8 {
            0 => {
                // Raw bytes into the scratch area.
                let at = SCRATCH + u64::from(b.u16()) % SCRATCH_LEN;
                let len = usize::from(b.u8() % 32);
                let _ = ram.write_phys(at, b.take(len));
            }
            1 => {
                // A grant entry, in the layout the guest writes.
                let entry = GrantEntryV1 {
                    flags: match b.u8() % 5 {
                        0 => 0,
                        1 => GTF_PERMIT_ACCESS,
                        2 => GTF_PERMIT_ACCESS | GTF_READONLY,
                        3 => GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING,
                        _ => b.u16(),
                    },
                    domid: match b.u8() % 3 {
                        0 => TEST_DOMID,
                        1 => 0,
                        _ => b.u16(),
                    },
                    frame: pfn(&mut b) as u32,
                };
                let gref = u64::from(b.u16() % 1024);
                let _ = ram.write_phys(GRANT_PFN * PAGE_SIZE + gref * 8, &entry.to_bytes());
            }
            2 => {
                // Bytes on a ring the shim serves, with an index that may lie.
                let (page, data_at, prod_at, size) = if b.flag() {
                    (
                        special.store_pfn,
                        offset_of!(XenstoreDomainInterface, req),
                        offset_of!(XenstoreDomainInterface, req_prod),
                        1024u32,
                    )
                } else {
                    (
                        special.console_pfn,
                        offset_of!(XenconsInterface, out),
                        offset_of!(XenconsInterface, out_prod),
                        2048u32,
                    )
                };
                let Ok(ring) = ram.page(page) else { continue };
                let prod = ring.load_u32(prod_at, Ordering::Acquire);
                let len = usize::from(b.u8() % 64);
                let bytes = b.take(len);
                for (i, &byte) in bytes.iter().enumerate() {
                    let at = (prod.wrapping_add(i as u32) % size) as usize;
                    ring.store_u8(data_at + at, byte, Ordering::Relaxed);
                }
                let new = if b.u8() == 0 {
                    b.u32()
                } else {
                    prod.wrapping_add(bytes.len() as u32)
                };
                ring.store_u32(prod_at, new, Ordering::Release);
            }
            3 => {
                // Anything at all.
                let nr = match b.u8() {
                    0..=250 => HYPERCALLS[usize::from(b.u8()) % HYPERCALLS.len()],
                    _ => b.u32(),
                };
                let args = [
                    arg(&mut b),
                    arg(&mut b),
                    arg(&mut b),
                    arg(&mut b),
                    arg(&mut b),
                ];
                run(Call {
                    nr,
                    args,
                    scratch: Vec::new(),
                });
            }
            _ => run(structured_call(&mut b, special)),
        }
    }

    let stats = xen.stats();
    let total: u64 = stats.hypercalls.values().sum();
    assert_eq!(total, calls, "every hypercall counted once");
    assert!(stats.hypercall_errors <= calls);
    assert!(stats.hypercall_continuations <= calls);
    if let Some(store) = xen.xenstore() {
        assert_eq!(store.daemon.check(), Ok(()));
    }
    HypercallRun { stats, copies_ok }
}

// ---- the xenstore daemon ---------------------------------------------------------------

const WORDS: &[&str] = &[
    "data",
    "data/a",
    "data/a/b",
    "name",
    "/",
    "/local/domain/1/data/x",
    "/local/domain/2/data",
    "/local/domain/0/backend",
    "@releaseDomain",
    "@introduceDomain",
    "T",
    "F",
    "0",
    "1",
    "2",
    "-1",
    "4096",
    "n1",
    "r2",
    "b0",
    "w32757",
    "check",
    "",
];

/// One request: its fields from the input.
struct Request {
    type_: u32,
    tx_id: u32,
    payload: Vec<u8>,
    lie_len: Option<u16>,
}

impl Request {
    fn decode(b: &mut Bytes<'_>) -> Self {
        let type_ = match b.u8() {
            0..=249 => u32::from(b.u8() % 28),
            _ => b.u32(),
        };
        let tx_id = u32::from(b.u8() % 4);
        let mut payload = Vec::new();
        for _ in 0..b.u8() % 7 {
            if b.u8() < 224 {
                payload.extend_from_slice(WORDS[usize::from(b.u8()) % WORDS.len()].as_bytes());
            } else {
                let len = usize::from(b.u16() % 513);
                payload.extend_from_slice(b.take(len));
            }
            payload.push(0);
        }
        if b.u8() == 0 {
            payload.pop();
        }
        let lie_len = (b.u8() == 0).then(|| b.u16());
        Self {
            type_,
            tx_id,
            payload,
            lie_len,
        }
    }

    fn header(&self, len: usize, req_id: u32) -> XsdSockmsg {
        XsdSockmsg {
            type_: self.type_,
            req_id,
            tx_id: self.tx_id,
            len: len as u32,
        }
    }
}

/// Every message in `bytes` is whole and within the payload limit.
fn check_stream(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let h = XsdSockmsg::from_prefix(bytes).expect("whole header");
        let len = h.len as usize;
        assert!(len <= 4096);
        bytes = bytes.get(16 + len..).expect("whole payload");
    }
}

/// Runs the xenstore daemon on one fuzz input, as guests reach it: wire requests
/// (`Xenstored::handle`) sent by guest 2 and domain 0 directly, and by guest 1 through
/// its ring page (`RingServer::pump`) in pieces, now and then with a lying length or a
/// corrupted ring index. After every step the daemon's database must be consistent and
/// every message it sends whole; a ring the server gave up on must say so.
pub fn fuzz_xenstore(data: &[u8]) {
    let mut b = Bytes::new(data);
    let quotas = if b.flag() {
        Quotas {
            nodes: 30,
            watches: 4,
            transactions: 2,
            transaction_nodes: 16,
            output_bytes: 2048,
            ..Quotas::default()
        }
    } else {
        Quotas::default()
    };
    let mut xs = super::fresh_xenstored(
        &quotas,
        &[
            (1, DomainConfig::named("one")),
            (2, DomainConfig::named("two")),
        ],
    );
    let mut server = RingServer::new(1);
    let mut guest = GuestRing::new();
    server.attach(guest.memory());

    for req_id in 0..256u32 {
        if b.is_empty() {
            break;
        }
        match b.u8() % 6 {
            0 => {
                // Guest 1 is served through its ring, whose output must not be taken
                // here (a message half written to the ring would tear the stream).
                let domain = [0, 2][usize::from(b.u8() % 2)];
                let request = Request::decode(&mut b);
                let header = request.header(request.payload.len(), req_id);
                // Keep the domains under test alive.
                if domain == 0 && matches!(header.type_, 8 | 9) {
                    continue;
                }
                if xs.handle(domain, header, &request.payload).is_ok() {
                    check_stream(&xs.take_output(domain, usize::MAX));
                }
            }
            1 => {
                let request = Request::decode(&mut b);
                let len = request.lie_len.map_or(request.payload.len(), usize::from);
                let mut bytes = request.header(len, req_id).to_bytes().to_vec();
                bytes.extend_from_slice(&request.payload);
                let cut = usize::from(b.u16()) % (bytes.len() + 1);
                guest.send(&bytes[..cut]);
                server.pump(&mut xs, guest.memory());
                guest.send(&bytes[cut..]);
                server.pump(&mut xs, guest.memory());
            }
            2 => {
                guest.receive();
                server.pump(&mut xs, guest.memory());
            }
            3 => {
                guest.set_req_prod(b.u32());
                server.pump(&mut xs, guest.memory());
            }
            4 => {
                guest.set_rsp_cons(b.u32());
                server.pump(&mut xs, guest.memory());
            }
            _ => {
                let path = WORDS[usize::from(b.u8()) % WORDS.len()];
                let len = usize::from(b.u8());
                let value = b.take(len).to_vec();
                let _ = xs.dom0().write(None, path, &value);
            }
        }
        if server.error().is_some() {
            assert_ne!(guest.error(), 0);
        }
        assert_eq!(xs.check(), Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Rng;

    #[test]
    fn hypercall_dispatcher_survives_pseudo_random_guests() {
        let mut rng = Rng(0x5eed_0fc0_ffee_0001);
        let mut seen = XenStats::default();
        let mut copies_ok = 0;
        for i in 0..3000u32 {
            let mut input = rng.bytes(700);
            // Half the guests start set up (shared_info, grant frames, upcall vector).
            if let Some(setup) = input.first_mut() {
                *setup |= ((i % 2) as u8) << 1;
            }
            let run = fuzz_hypercall(&input);
            copies_ok += run.copies_ok;
            let stats = run.stats;
            for (name, n) in stats.hypercalls {
                *seen.hypercalls.entry(name).or_default() += n;
            }
            seen.hypercall_errors += stats.hypercall_errors;
            seen.upcalls_injected += stats.upcalls_injected;
            seen.events_to_dom0 += stats.events_to_dom0;
        }
        // The inputs reach the interesting handlers, and not only their error paths.
        for name in [
            "memory_op.add_to_physmap",
            "event_channel_op.alloc_unbound",
            "event_channel_op.bind_interdomain",
            "event_channel_op.send",
            "grant_table_op.copy",
            "grant_table_op.query_size",
            "hvm_op.set_param",
            "sched_op.poll",
            "sched_op.block",
            "vcpu_op.set_singleshot_timer",
            "console_io",
        ] {
            assert!(
                seen.hypercalls.get(name).copied().unwrap_or(0) >= 5,
                "{name}: {seen:?}"
            );
        }
        let total: u64 = seen.hypercalls.values().sum();
        assert!(seen.hypercall_errors < total, "{seen:?}");
        assert!(
            seen.upcalls_injected > 0 && seen.events_to_dom0 > 0,
            "{seen:?}"
        );
        assert!(copies_ok > 0, "no grant copy ever succeeded");
    }

    /// A guest that does it right: it grants a page to itself and copies from it
    /// (the harness sees the copy succeed, so it does reach past the checks).
    #[test]
    fn a_well_formed_grant_copy_succeeds() {
        let input = [
            2, // set up: shared_info, grant frames, upcall vector
            // Grant entry 0x10: permit access to TEST_DOMID, frame PFN_POOL[0].
            1, 1, 0, 0, 0, 0x10, 0, //
            // GNTTABOP_copy, one element: from ref 0x10 (DOMID_SELF, offset 0) to
            // frame PFN_POOL[2] (DOMID_SELF, offset 0), 16 bytes; count 1.
            4, 3, 1, 1, 0, 0x10, 0, 0, 0, 0, 0, 2, 0, 0, 0, 16, 0, 1,
        ];
        let run = fuzz_hypercall(&input);
        assert_eq!(run.stats.hypercall_errors, 0, "{run:?}");
        assert_eq!(run.stats.hypercalls["grant_table_op.copy"], 1, "{run:?}");
        assert_eq!(run.copies_ok, 1, "{run:?}");
        // The same copy from a reference that grants nothing fails.
        let mut bad = input;
        bad[2] = 0; // flags 0: the entry grants nothing
        assert_eq!(fuzz_hypercall(&bad).copies_ok, 0);
    }

    #[test]
    fn xenstore_daemon_survives_pseudo_random_guests() {
        let mut rng = Rng(0x0ddb_a115_eed0_0002);
        for _ in 0..1500 {
            fuzz_xenstore(&rng.bytes(900));
        }
    }

    #[test]
    fn short_and_empty_inputs_are_fine() {
        for len in 0..64 {
            let input: Vec<u8> = (0..len).map(|i| (i * 37 + 5) as u8).collect();
            fuzz_hypercall(&input);
            fuzz_xenstore(&input);
        }
    }
}
