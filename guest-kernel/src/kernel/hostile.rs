//! `selftest=hostile`: the guest attacks its hypervisor from inside, then checks that
//! a well-behaved device beside the attacked one still works.
//!
//! The attacks use the real interfaces (the hypercall page, the xenstore ring, raw
//! blkif and netif rings) with values no correct guest sends:
//!
//! - **hypercall**: unknown and PV-only hypercall numbers; every family with pointers
//!   that are not mapped (page 0, beyond the identity map, non-canonical, wrapping),
//!   huge counts, unknown sub-operations, other domains and vCPUs that do not exist
//!   (`xen.h`, `memory.h`, `hvm_op.h`, `grant_table.h`, `vcpu.h`, `sched.h`).
//! - **evtchn**: send/close/unmask/status/bind on ports that do not exist or are not
//!   ours, unknown VIRQs and vCPUs, and exhausting the port space (`event_channel.h`).
//! - **xenstore**: paths outside the domain, permission escapes, watch and transaction
//!   floods beyond the quotas, an oversized value, 120 requests whose replies are not
//!   read (xenstored must stop taking requests at its quota of unread replies, then
//!   answer them all in order); raw wire messages with unterminated
//!   or malformed payloads, unknown and privileged types, unknown transactions
//!   (`xs_wire.h`); and, last of all, a header whose length exceeds
//!   `XENSTORE_PAYLOAD_MAX`, after which xenstored stops serving the ring (as C
//!   xenstored does) and says so in the page's `error` field.
//! - **blkif**: a raw ring to a PV disk (negotiated here, not by blkfront) carrying
//!   requests with 0 or 12+ segments, `first_sect > last_sect`, `last_sect` 8+, sectors
//!   past the end, grants never given, given read-only (for reads) or to another domain,
//!   unknown operations, indirect requests with bad counts, bad operations and bad
//!   pages; good requests in between show the ring still works; a producer index far
//!   ahead of the consumer ends the connection (blkif.h: the backend closes it); then
//!   connection keys the backend must refuse (a ring never granted, read-only, beyond
//!   the table or not a number, bad `ring-page-order`s, the xenstore's or a malformed
//!   event channel, an unknown protocol, `multi-queue-num-queues` 0 and 2), after
//!   which a good connection must still read.
//! - **netif**: a raw netif connection to the first vif (negotiated here, not by
//!   netfront; [`netif`]): transmit requests with sizes 0 and 13, references never
//!   granted, beyond the table or another domain's, fragments larger than the frame,
//!   20 slots, an un-negotiated GSO extra, a lying IPv4 header under a blank checksum;
//!   receive buffers read-only, never granted, beyond the table, another domain's;
//!   good frames (ARP requests the host answers) in between; then what Linux netback
//!   treats as fatal, each ending its own connection (producers 1000 ahead, slots
//!   crossing their page, extras of no or an unknown type, 22 slots), and xenbus keys
//!   the backend must refuse to connect with.
//! - **ide**, **virtio**: the emulated disks, when present ([`ide`], [`virtio`]).
//! - **e1000**, **virtio-net**: the emulated NICs, when present ([`e1000`],
//!   [`virtio_net`]): rings and buffers outside RAM, absurd ring lengths and indices,
//!   malformed chains and headers, a register storm; frames to receive are asked of the
//!   host test's peer on the NIC's TAP, which also says whether any attack frame
//!   reached the wire ([`peer`], `pv_drivers::netprobe`).
//!
//! Every attack must be refused (an error return, an error response, an `XS_ERROR`
//! reply, a dropped frame, a backend closing the device) without touching memory it
//! was not granted (canary pages are checked); then the block workload of the command
//! line runs on the well-behaved disk (`blk.device=`) and, with `net.ip=`, the network services on the
//! well-behaved NIC (netfront on the vif the attacks left, by default the same one).
//! `hostile.skip=GROUP[,GROUP...]` leaves groups out (the categories, and the
//! xenstore attacks' `xenstore-raw`, `xenstore-unread` and `xenstore-oversized`; and
//! `xenstore-unterminated`, the three raw messages with no NUL in their payload, the
//! empty one among them, on which Xen 4.17's C xenstored stops answering): each
//! prints `hostile: GROUP: skipped (hostile.skip=)`.
//!
//! The summary line is
//! `hostile: N attacks, N refused, N unexpected; well-behaved disk: PASS`, followed by
//! `; well-behaved NIC: PASS` when there is one; the mode passes only if nothing was
//! unexpected and the disk and the NIC passed.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use guest_kernel::cmdline::Options;
use guest_kernel::ioopts::IoOptions;
use pv_drivers::abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_RESERVED_1, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, BlkifRequest, BlkifRequestIndirect,
    BlkifRequestSegment,
};
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_IPI, EVTCHNOP_INIT_CONTROL,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnStatus,
};
use pv_drivers::abi::grant_table::{
    GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTTABOP_COPY, GNTTABOP_MAP_GRANT_REF,
    GNTTABOP_QUERY_SIZE, GNTTABOP_SET_VERSION, GNTTABOP_SETUP_TABLE, GnttabCopy, GnttabCopyPtr,
    GnttabSetupTable,
};
use pv_drivers::abi::hvm::{HVM_PARAM_STORE_PFN, HVMOP_GET_PARAM};
use pv_drivers::abi::memory::{
    XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP, XENMEM_CURRENT_RESERVATION,
    XENMEM_DECREASE_RESERVATION, XENMEM_MAXIMUM_RESERVATION, XENMEM_MEMORY_MAP,
    XENMEM_POPULATE_PHYSMAP, XenAddToPhysmap, XenMemoryReservation,
};
use pv_drivers::abi::sched::{SCHEDOP_POLL, SCHEDOP_REMOTE_SHUTDOWN, SCHEDOP_SHUTDOWN, SchedPoll};
use pv_drivers::abi::vcpu::{
    VCPUOP_INITIALISE, VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, VCPUOP_REGISTER_VCPU_INFO,
};
use pv_drivers::abi::xen::{
    CONSOLEIO_WRITE, DOMID_SELF, DomId, HYPERVISOR_CONSOLE_IO, HYPERVISOR_DOMCTL,
    HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_HVM_OP,
    HYPERVISOR_MEMORY_OP, HYPERVISOR_MMU_UPDATE, HYPERVISOR_MULTICALL, HYPERVISOR_PLATFORM_OP,
    HYPERVISOR_SCHED_OP, HYPERVISOR_SYSCTL, HYPERVISOR_UPDATE_VA_MAPPING, HYPERVISOR_VCPU_OP,
    HYPERVISOR_VM_ASSIST, HYPERVISOR_XEN_VERSION, VIRQ_TIMER,
};
use pv_drivers::abi::xs_wire::{
    XENSTORE_ERROR_PROTO, XENSTORE_SERVER_FEATURE_ERROR, XsdSockmsg, XsdSockmsgType,
};
use pv_drivers::frontend::FrontendEnv;
use pv_drivers::hypercall::{Hypercall, HypercallError, XenHypercalls as _};
use pv_drivers::ring::BlkifFrontRing;
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};
use pv_drivers::xenbus::{self, Frontend, XenbusState};
use pv_drivers::xenstore::ring::XsRing;
use pv_drivers::xenstore::{Access, Permissions, TxId, XsError};

use super::pv::{self, GuestEnv, Woken};
use super::{block, memory, net, xen};
use crate::kprintln;

mod e1000;
mod ide;
mod netif;
mod peer;
mod virtio;
mod virtio_net;

/// Guest-virtual addresses no hypercall argument may reach: page 0 (unmapped after
/// boot), far beyond the identity map, non-canonical, and one that wraps.
const BAD_PTRS: [u64; 4] = [
    0x10,
    0x0000_7fff_ffff_f000,
    0x8000_0000_0000_0000,
    u64::MAX - 3,
];

/// A count no interface accepts.
const HUGE: u64 = 1 << 40;
/// The largest count of an interface whose count is an `unsigned int` that Xen
/// checks as an int (grant_table_op, multicall): HUGE would be read as 0 there.
const HUGE_INT: u64 = 0x7fff_ffff;

/// A domain that does not exist (an ordinary id: 0x7ff0 and up are `DOMID_SELF` and
/// the other special ids).
const NO_SUCH_DOMAIN: DomId = 77;

/// How long one response may take (a generous bound on a slow, shared machine).
const REPLY_NS: u64 = 10_000_000_000;

/// Attack categories, for the summary.
#[derive(Clone, Copy, Debug)]
enum Cat {
    Hypercall,
    Evtchn,
    Xenstore,
    Blkif,
    Netif,
    Ide,
    Virtio,
    E1000,
    VirtioNet,
}

const CATS: [Cat; 9] = [
    Cat::Hypercall,
    Cat::Evtchn,
    Cat::Xenstore,
    Cat::Blkif,
    Cat::Netif,
    Cat::Ide,
    Cat::Virtio,
    Cat::E1000,
    Cat::VirtioNet,
];

impl Cat {
    fn name(self) -> &'static str {
        match self {
            Cat::Hypercall => "hypercall",
            Cat::Evtchn => "evtchn",
            Cat::Xenstore => "xenstore",
            Cat::Blkif => "blkif",
            Cat::Netif => "netif",
            Cat::Ide => "ide",
            Cat::Virtio => "virtio",
            Cat::E1000 => "e1000",
            Cat::VirtioNet => "virtio-net",
        }
    }
}

/// Attacks made and refused, by category.
#[derive(Default)]
struct Tally {
    attacks: [u32; CATS.len()],
    refused: [u32; CATS.len()],
    /// Attacks that were not refused, and set-up steps that failed.
    unexpected: u32,
}

impl Tally {
    /// Records one attack: `refused` is whether the hypervisor refused it as it must;
    /// `got` describes what came back.
    fn check(&mut self, cat: Cat, what: &str, refused: bool, got: impl fmt::Display) {
        self.attacks[cat as usize] += 1;
        if refused {
            self.refused[cat as usize] += 1;
            log::debug!("hostile: {} {what}: refused ({got})", cat.name());
        } else {
            self.unexpected += 1;
            kprintln!("hostile: UNEXPECTED: {} {what}: {got}", cat.name());
        }
    }

    /// A hypercall that must return an error.
    fn expect_err(&mut self, cat: Cat, what: &str, ret: i64) {
        self.check(cat, what, ret < 0, Ret(ret));
    }

    /// A step of the test itself failed (not an attack): the run cannot pass.
    fn broken(&mut self, what: &str, why: impl fmt::Display) {
        self.unexpected += 1;
        kprintln!("hostile: UNEXPECTED: set-up {what}: {why}");
    }

    fn total(&self) -> (u32, u32) {
        (self.attacks.iter().sum(), self.refused.iter().sum())
    }
}

/// A raw hypercall result, printed as Xen's errno name when it is one.
struct Ret(i64);

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match pv_drivers::hypercall::check(self.0) {
            Ok(v) => write!(f, "returned {v}"),
            Err(e) => write!(f, "{e}"),
        }
    }
}

fn ret_of<T>(r: Result<T, HypercallError>) -> i64 {
    match r {
        Ok(_) => 0,
        Err(HypercallError::Xen(e)) => e.as_neg(),
        Err(HypercallError::Unknown(v)) => v,
        Err(HypercallError::Grant { status, .. }) => i64::from(status),
        Err(HypercallError::TooLarge) => -22,
    }
}

/// Runs the attacks, then the block workload of the command line on the well-behaved
/// disk and the network services (`net.ip=`) on the well-behaved NIC, then the
/// terminal xenstore attack; prints the summary. True if every attack was refused and
/// the disk (and the NIC, when asked for) passed.
pub fn run(io: &IoOptions<'_>, opts: &Options<'_>) -> bool {
    kprintln!("hostile: attacking the hypervisor from inside");
    let Some(x) = xen::get() else {
        kprintln!("hostile: FAIL (no Xen)");
        return false;
    };
    let skip = |group: &str| {
        let s = opts.hostile_skips(group);
        if s {
            kprintln!("hostile: {group}: skipped (hostile.skip=)");
        }
        s
    };
    let mut t = Tally::default();
    if !skip("hypercall") {
        hypercalls(x, &mut t);
    }
    if !skip("evtchn") {
        event_channels(x, &mut t);
    }
    if !skip("xenstore") {
        xenstore(x, &mut t, &skip);
    }
    if !skip("blkif") {
        blkif(&mut t, io);
    }
    if !skip("netif") {
        netif::attacks(&mut t, io);
    }
    if !skip("ide") {
        ide::attacks(&mut t);
    }
    if !skip("virtio") {
        virtio::attacks(&mut t);
    }
    if !skip("e1000") {
        e1000::attacks(&mut t);
    }
    if !skip("virtio-net") {
        virtio_net::attacks(&mut t);
    }
    let disk = match &io.blk {
        Some(b) => block::run(b, io.virtio),
        None => {
            kprintln!("hostile: no blk.workload= for the well-behaved disk");
            false
        }
    };
    // Netfront needs xenstore to connect: before the last attack.
    let nic = io.net.as_ref().map(|n| net::run(n, io.virtio));
    // Last: after it the xenstore ring is no longer served.
    if !opts.hostile_skips("xenstore") && !skip("xenstore-oversized") {
        xenstore_oversized(x, &mut t);
    }
    for c in CATS {
        kprintln!(
            "hostile: {}: {} attacks, {} refused",
            c.name(),
            t.attacks[c as usize],
            t.refused[c as usize]
        );
    }
    let (attacks, refused) = t.total();
    let verdict = |ok| if ok { "PASS" } else { "FAIL" };
    let nic_part = match nic {
        Some(ok) => format!("; well-behaved NIC: {}", verdict(ok)),
        None => String::new(),
    };
    kprintln!(
        "hostile: {attacks} attacks, {refused} refused, {} unexpected; well-behaved disk: {}{nic_part}",
        t.unexpected,
        verdict(disk)
    );
    t.unexpected == 0 && refused == attacks && disk && nic != Some(false)
}

// ---- hypercalls ------------------------------------------------------------------

/// Issues a raw hypercall.
///
/// # Safety
///
/// Every argument the hypercall interprets as a guest address must either be one of
/// [`BAD_PTRS`] (mapped nowhere: the hypervisor can only fail to reach it) or point to
/// memory of the caller's valid for what the hypercall reads and writes there.
unsafe fn raw(x: &xen::Xen, nr: u32, args: [u64; 5]) -> i64 {
    // SAFETY: forwarded from the caller.
    unsafe { x.hv.hypercall(nr, args) }
}

/// The address of a local argument structure.
fn at<T>(v: &mut T) -> u64 {
    v as *mut T as u64
}

fn hypercalls(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Hypercall;
    // Unknown numbers and PV-only hypercalls (a PVH guest has none of them), with
    // garbage arguments: a huge count and an unmapped pointer.
    for nr in [
        HYPERVISOR_MMU_UPDATE,
        HYPERVISOR_UPDATE_VA_MAPPING,
        44,
        48,
        55,
        63,
        64,
        100,
        127,
    ] {
        // SAFETY: the only pointer-like arguments are BAD_PTRS.
        let r = unsafe { raw(x, nr, [BAD_PTRS[1], HUGE, BAD_PTRS[2], 0, 0]) };
        t.expect_err(c, &format!("hypercall {nr} with garbage"), r);
    }
    multicalls(x, t);
    for (i, &bad) in BAD_PTRS.iter().enumerate() {
        let calls: [(&str, u32, [u64; 5]); 12] = [
            (
                "xen_version extraversion",
                HYPERVISOR_XEN_VERSION,
                [1, bad, 0, 0, 0],
            ),
            (
                "console_io write of 2^31-1 bytes",
                HYPERVISOR_CONSOLE_IO,
                [CONSOLEIO_WRITE.into(), HUGE_INT, bad, 0, 0],
            ),
            (
                "memory_op add_to_physmap",
                HYPERVISOR_MEMORY_OP,
                [XENMEM_ADD_TO_PHYSMAP.into(), bad, 0, 0, 0],
            ),
            (
                "memory_op memory_map",
                HYPERVISOR_MEMORY_OP,
                [XENMEM_MEMORY_MAP.into(), bad, 0, 0, 0],
            ),
            (
                "hvm_op get_param",
                HYPERVISOR_HVM_OP,
                [HVMOP_GET_PARAM.into(), bad, 0, 0, 0],
            ),
            (
                "grant_table_op copy x 2^31-1",
                HYPERVISOR_GRANT_TABLE_OP,
                [GNTTABOP_COPY.into(), bad, HUGE_INT, 0, 0],
            ),
            (
                "grant_table_op query_size",
                HYPERVISOR_GRANT_TABLE_OP,
                [GNTTABOP_QUERY_SIZE.into(), bad, 1, 0, 0],
            ),
            (
                "grant_table_op setup_table",
                HYPERVISOR_GRANT_TABLE_OP,
                [GNTTABOP_SETUP_TABLE.into(), bad, 1, 0, 0],
            ),
            (
                "event_channel_op send",
                HYPERVISOR_EVENT_CHANNEL_OP,
                [EVTCHNOP_SEND.into(), bad, 0, 0, 0],
            ),
            (
                "vcpu_op register_vcpu_info",
                HYPERVISOR_VCPU_OP,
                [VCPUOP_REGISTER_VCPU_INFO.into(), 0, bad, 0, 0],
            ),
            (
                "sched_op poll",
                HYPERVISOR_SCHED_OP,
                [SCHEDOP_POLL.into(), bad, 0, 0, 0],
            ),
            (
                "sched_op shutdown",
                HYPERVISOR_SCHED_OP,
                [SCHEDOP_SHUTDOWN.into(), bad, 0, 0, 0],
            ),
        ];
        for (what, nr, args) in calls {
            // SAFETY: the only pointer argument of each call is `bad`, a BAD_PTR.
            let r = unsafe { raw(x, nr, args) };
            t.expect_err(c, &format!("{what} at bad pointer {i}"), r);
        }
    }
    // Unknown sub-operations.
    for (nr, name) in [
        (HYPERVISOR_XEN_VERSION, "xen_version"),
        (HYPERVISOR_CONSOLE_IO, "console_io"),
        (HYPERVISOR_MEMORY_OP, "memory_op"),
        (HYPERVISOR_HVM_OP, "hvm_op"),
        (HYPERVISOR_EVENT_CHANNEL_OP, "event_channel_op"),
        (HYPERVISOR_GRANT_TABLE_OP, "grant_table_op"),
        (HYPERVISOR_SCHED_OP, "sched_op"),
        (HYPERVISOR_VM_ASSIST, "vm_assist"),
    ] {
        // SAFETY: the pointer argument is a BAD_PTR.
        let r = unsafe { raw(x, nr, [0x3f, BAD_PTRS[1], 1, 0, 0]) };
        t.expect_err(c, &format!("{name} unknown sub-operation 0x3f"), r);
    }
    // SAFETY: vCPU 0, unknown command, bad pointer.
    let r = unsafe { raw(x, HYPERVISOR_VCPU_OP, [99, 0, BAD_PTRS[1], 0, 0]) };
    t.expect_err(c, "vcpu_op unknown command", r);
    // Domain 0's privileges.
    for (nr, name) in [
        (HYPERVISOR_PLATFORM_OP, "platform_op"),
        (HYPERVISOR_SYSCTL, "sysctl"),
        (HYPERVISOR_DOMCTL, "domctl"),
    ] {
        let mut buf = [0u64; 64];
        // SAFETY: `buf` is ours and larger than any of these structures.
        let r = unsafe { raw(x, nr, [at(&mut buf), 0, 0, 0, 0]) };
        t.expect_err(c, &format!("{name} from a domU"), r);
    }

    memory_op(x, t);
    grant_table_op(x, t);
    vcpu_and_sched_op(x, t);
}

/// Multicall (which Xen serves to PVH guests too): lists of 2^31-1 entries at
/// unmapped addresses, and entries that are garbage themselves (an unknown hypercall,
/// a multicall inside the multicall, a hypercall with an unmapped pointer), each of
/// which must fail in its own `result` while the multicall goes on.
fn multicalls(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Hypercall;
    for (i, &bad) in BAD_PTRS.iter().enumerate() {
        // SAFETY: the list pointer is a BAD_PTR.
        let r = unsafe { raw(x, HYPERVISOR_MULTICALL, [bad, HUGE_INT, 0, 0, 0]) };
        t.expect_err(
            c,
            &format!("multicall of 2^31-1 entries at bad pointer {i}"),
            r,
        );
    }
    // multicall_entry: op, result, args[6].
    let entry = |op: u32, args: [u64; 2]| [u64::from(op), 0x5555, args[0], args[1], 0, 0, 0, 0];
    let mut list = [
        entry(99, [1, 2]),
        entry(HYPERVISOR_MULTICALL, [0, 1]),
        entry(HYPERVISOR_XEN_VERSION, [1, BAD_PTRS[1]]),
        entry(HYPERVISOR_XEN_VERSION, [0, 0]),
    ];
    let inner = at(&mut list);
    list[1][2] = inner;
    // SAFETY: `list` is ours, 4 entries; its entries' pointers are BAD_PTRS or `list`.
    let r = unsafe { raw(x, HYPERVISOR_MULTICALL, [inner, 4, 0, 0, 0]) };
    let results = [list[0][1], list[1][1], list[2][1], list[3][1]].map(|v| v as i64);
    let version =
        x.hv.xen_version()
            .map(|v| i64::from(v.major) << 16 | i64::from(v.minor));
    for (k, what) in [
        (0, "an unknown hypercall"),
        (1, "a multicall inside the multicall"),
        (2, "xen_version with a bad pointer"),
    ] {
        t.check(
            c,
            &format!("multicall entry: {what}"),
            r == 0 && results[k] < 0 && Ok(results[3]) == version,
            format_args!("multicall {}, results {results:?}", Ret(r)),
        );
    }
}

fn memory_op(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Hypercall;
    // add_to_physmap: a grant frame far beyond the table, an unknown space, another
    // domain.
    for (what, domid, space, idx) in [
        (
            "grant frame 2^31",
            DOMID_SELF,
            XENMAPSPACE_GRANT_TABLE,
            1u64 << 31,
        ),
        ("unknown space 99", DOMID_SELF, 99, 0),
        ("for domain 0", 0, XENMAPSPACE_GRANT_TABLE, 0),
        (
            "for a domain that does not exist",
            NO_SUCH_DOMAIN,
            XENMAPSPACE_GRANT_TABLE,
            0,
        ),
    ] {
        let mut a = XenAddToPhysmap {
            domid,
            size: 0,
            space,
            idx,
            gpfn: 0x7ff_ffff,
        };
        // SAFETY: `a` is an add_to_physmap argument of ours.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_MEMORY_OP,
                [XENMEM_ADD_TO_PHYSMAP.into(), at(&mut a), 0, 0, 0],
            )
        };
        t.expect_err(c, &format!("memory_op add_to_physmap {what}"), r);
    }
    let mut dom: DomId = 0;
    // SAFETY: `dom` is a domid argument of ours.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_MEMORY_OP,
            [XENMEM_CURRENT_RESERVATION.into(), at(&mut dom), 0, 0, 0],
        )
    };
    t.expect_err(c, "memory_op current_reservation of domain 0", r);
    // Reservation operations return how many extents they did: none of these may do
    // any (and, above all, none may hand out or take away memory).
    let shared_info_pfn = 0u64; // page 0 is not ours to give back either
    let mut pfns = [shared_info_pfn; 4];
    // The pages a hypervisor may still give us (Xen: max_pages - tot_pages; xl leaves
    // 1 MiB of slack, the shim none): populating pages that are there takes new pages
    // (Xen orphans the old ones), which only this headroom may pay for.
    let reservation = |cmd: u32| {
        let mut dom: DomId = DOMID_SELF;
        // SAFETY: `dom` is a domid argument of ours.
        unsafe { raw(x, HYPERVISOR_MEMORY_OP, [cmd.into(), at(&mut dom), 0, 0, 0]) }
    };
    let headroom =
        reservation(XENMEM_MAXIMUM_RESERVATION) - reservation(XENMEM_CURRENT_RESERVATION);
    for (what, op, extent_start, nr_extents, order, domid) in [
        (
            "decrease_reservation x 2^40 at a bad pointer",
            XENMEM_DECREASE_RESERVATION,
            BAD_PTRS[1],
            HUGE,
            0,
            DOMID_SELF,
        ),
        (
            "populate_physmap x 2^40 at a bad pointer",
            XENMEM_POPULATE_PHYSMAP,
            BAD_PTRS[2],
            HUGE,
            0,
            DOMID_SELF,
        ),
        (
            "populate_physmap of order 40",
            XENMEM_POPULATE_PHYSMAP,
            at(&mut pfns),
            1,
            40,
            DOMID_SELF,
        ),
        (
            "decrease_reservation of domain 0",
            XENMEM_DECREASE_RESERVATION,
            at(&mut pfns),
            1,
            0,
            0,
        ),
    ] {
        let mut r = XenMemoryReservation {
            extent_start,
            nr_extents,
            extent_order: order,
            mem_flags: 0,
            domid,
            _pad: [0; 3],
        };
        // SAFETY: `r` is ours; `extent_start` is a BAD_PTR or `pfns`, ours.
        let done = unsafe { raw(x, HYPERVISOR_MEMORY_OP, [op.into(), at(&mut r), 0, 0, 0]) };
        t.check(c, &format!("memory_op {what}"), done <= 0, Ret(done));
    }
    let mut r = XenMemoryReservation {
        extent_start: at(&mut pfns),
        nr_extents: 4,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 3],
    };
    // SAFETY: `r` and its extent list `pfns` are ours.
    let done = unsafe {
        raw(
            x,
            HYPERVISOR_MEMORY_OP,
            [XENMEM_POPULATE_PHYSMAP.into(), at(&mut r), 0, 0, 0],
        )
    };
    let over = reservation(XENMEM_CURRENT_RESERVATION) - reservation(XENMEM_MAXIMUM_RESERVATION);
    t.check(
        c,
        "memory_op populate_physmap of pages that are there (within the headroom only)",
        done <= headroom.clamp(0, 4) && over <= 0,
        format_args!(
            "{} done with a headroom of {headroom}; {over} pages over the maximum",
            Ret(done)
        ),
    );
}

fn grant_table_op(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Hypercall;
    let mut frames = [0u64; 1];
    let mut setup = GnttabSetupTable {
        dom: DOMID_SELF,
        _pad0: 0,
        nr_frames: 1 << 20,
        status: 0,
        _pad1: [0; 3],
        frame_list: at(&mut frames),
    };
    // SAFETY: `setup` is ours, and so is its one-frame list. A hypervisor must refuse
    // 2^20 frames (the table has 2 mapped) before writing any list entry.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_GRANT_TABLE_OP,
            [GNTTABOP_SETUP_TABLE.into(), at(&mut setup), 1, 0, 0],
        )
    };
    let status = setup.status;
    t.check(
        c,
        "grant_table_op setup_table of 2^20 frames",
        r < 0 || status < 0,
        format_args!("{} status {status}", Ret(r)),
    );
    let mut v: u32 = 7;
    // SAFETY: `v` is a set_version argument of ours.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_GRANT_TABLE_OP,
            [GNTTABOP_SET_VERSION.into(), at(&mut v), 1, 0, 0],
        )
    };
    t.expect_err(c, "grant_table_op set_version 7", r);
    // SAFETY: the pointer is a BAD_PTR.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_GRANT_TABLE_OP,
            [GNTTABOP_MAP_GRANT_REF.into(), BAD_PTRS[1], HUGE_INT, 0, 0],
        )
    };
    t.expect_err(
        c,
        "grant_table_op map_grant_ref x 2^31-1 at a bad pointer",
        r,
    );
    // Copies the table does not allow (the typed wrapper checks each op's status).
    let Some((page, _view)) = memory::alloc_zeroed(1) else {
        t.broken("grant copy page", "out of memory");
        return;
    };
    let pfn = page >> 12;
    let self_id = x.domain_id().unwrap_or(DOMID_SELF);
    let never_granted = match x.grants.lock().claim() {
        Ok(r) => r,
        Err(e) => {
            t.broken("claiming a grant reference", e);
            return;
        }
    };
    for (what, source, dest, flags, len) in [
        (
            "from a reference never granted",
            GnttabCopyPtr::gref(never_granted, self_id, 0),
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            GNTCOPY_SOURCE_GREF,
            64,
        ),
        (
            "from a reference beyond the table",
            GnttabCopyPtr::gref(1 << 30, self_id, 0),
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            GNTCOPY_SOURCE_GREF,
            64,
        ),
        (
            "to a reference beyond the table",
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            GnttabCopyPtr::gref(u64::from(u32::MAX) as u32, self_id, 0),
            GNTCOPY_DEST_GREF,
            64,
        ),
        (
            "to a frame beyond RAM",
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            GnttabCopyPtr::gmfn(1 << 36, DOMID_SELF, 0),
            0,
            64,
        ),
        (
            "from a frame of domain 0",
            GnttabCopyPtr::gmfn(1, 0, 0),
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            0,
            64,
        ),
        (
            "beyond the end of the page",
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 4000),
            GnttabCopyPtr::gmfn(pfn, DOMID_SELF, 0),
            0,
            200,
        ),
    ] {
        let mut op = [GnttabCopy {
            source,
            dest,
            len,
            flags,
            ..GnttabCopy::default()
        }];
        // A refused copy is a GNTST_* status (the call itself succeeds).
        let r = x.hv.gnttab_copy(&mut op);
        t.check(
            c,
            &format!("grant copy {what}"),
            r.is_err(),
            format_args!("{r:?}"),
        );
    }
    let _ = x.grants.lock().free(never_granted);
}

fn vcpu_and_sched_op(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Hypercall;
    let far = x.now_ns().saturating_add(3_600_000_000_000);
    for vcpu in [1, 64, u32::MAX] {
        let r = ret_of(x.hv.vcpu_set_singleshot_timer(vcpu, far, false));
        t.expect_err(
            c,
            &format!("vcpu_op set_singleshot_timer on vCPU {vcpu}"),
            r,
        );
        let mut buf = [0u64; 512];
        // SAFETY: `buf` is ours and larger than a vcpu_guest_context argument.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_VCPU_OP,
                [VCPUOP_INITIALISE.into(), vcpu.into(), at(&mut buf), 0, 0],
            )
        };
        t.expect_err(c, &format!("vcpu_op initialise vCPU {vcpu}"), r);
        let mut area = BAD_PTRS[1];
        // SAFETY: the argument is ours; the area it names is a BAD_PTR.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_VCPU_OP,
                [
                    VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA.into(),
                    vcpu.into(),
                    at(&mut area),
                    0,
                    0,
                ],
            )
        };
        t.expect_err(
            c,
            &format!("vcpu_op register_runstate_memory_area on vCPU {vcpu}"),
            r,
        );
    }
    let mut ports = [0u32; 1];
    for (what, nr_ports, list) in [
        ("2^20 ports", 1u32 << 20, at(&mut ports)),
        ("ports at a bad pointer", 1, BAD_PTRS[0]),
    ] {
        let mut p = SchedPoll {
            ports: list,
            nr_ports,
            _pad: 0,
            // A deadline now: a hypervisor that accepted it must not sleep for long.
            timeout: x.now_ns() + 1_000_000,
        };
        // SAFETY: `p` is ours; its list is `ports` (ours, read only) or a BAD_PTR.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_SCHED_OP,
                [SCHEDOP_POLL.into(), at(&mut p), 0, 0, 0],
            )
        };
        t.expect_err(c, &format!("sched_op poll of {what}"), r);
    }
    // remote_shutdown of domain 0 and of a domain that does not exist.
    for dom in [0u32, u32::from(NO_SUCH_DOMAIN)] {
        let mut req = [dom, 0u32];
        // SAFETY: `req` is a sched_remote_shutdown of ours (domid, reason).
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_SCHED_OP,
                [SCHEDOP_REMOTE_SHUTDOWN.into(), at(&mut req), 0, 0, 0],
            )
        };
        t.expect_err(c, &format!("sched_op remote_shutdown of domain {dom}"), r);
    }
    // vm_assist of an unknown type.
    // SAFETY: no pointer arguments.
    let r = unsafe { raw(x, HYPERVISOR_VM_ASSIST, [0, 31, 0, 0, 0]) };
    t.expect_err(c, "vm_assist of type 31", r);
}

// ---- event channels ---------------------------------------------------------------

fn event_channels(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Evtchn;
    let bad_ports = [4095u32, 4096, 1 << 20, u32::MAX];
    // A free port (4095) may be unmasked and its status read, as on Xen; it cannot be
    // sent on or closed. Ports beyond the table refuse everything.
    for p in bad_ports {
        t.expect_err(c, &format!("send on port {p}"), ret_of(x.hv.evtchn_send(p)));
        t.expect_err(c, &format!("close port {p}"), ret_of(x.hv.evtchn_close(p)));
        if p > 4095 {
            t.expect_err(
                c,
                &format!("unmask port {p}"),
                ret_of(x.hv.evtchn_unmask(p)),
            );
            t.expect_err(
                c,
                &format!("status of port {p}"),
                ret_of(x.hv.evtchn_status(p)),
            );
        }
    }
    t.expect_err(c, "send on port 0", ret_of(x.hv.evtchn_send(0)));
    t.expect_err(c, "close port 0", ret_of(x.hv.evtchn_close(0)));
    t.expect_err(c, "bind VIRQ 9999", ret_of(x.hv.evtchn_bind_virq(9999, 0)));
    t.expect_err(
        c,
        "bind the timer VIRQ to vCPU 7",
        ret_of(x.hv.evtchn_bind_virq(VIRQ_TIMER, 7)),
    );
    if x.timer_port().is_some() {
        t.expect_err(
            c,
            "bind the timer VIRQ a second time",
            ret_of(x.hv.evtchn_bind_virq(VIRQ_TIMER, 0)),
        );
    }
    for (what, remote_dom, remote_port) in [
        ("port 9999 of domain 0", 0, 9999),
        ("a port of a domain that does not exist", NO_SUCH_DOMAIN, 1),
        ("our own port 0", DOMID_SELF, 0),
        ("our own port beyond the table", DOMID_SELF, 1 << 20),
    ] {
        let mut b = EvtchnBindInterdomain {
            remote_dom,
            _pad: 0,
            remote_port,
            local_port: 0,
        };
        // SAFETY: `b` is a bind_interdomain argument of ours.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_EVENT_CHANNEL_OP,
                [EVTCHNOP_BIND_INTERDOMAIN.into(), at(&mut b), 0, 0, 0],
            )
        };
        t.expect_err(c, &format!("bind_interdomain to {what}"), r);
    }
    for (what, dom) in [
        ("for domain 0", 0),
        ("for a domain that does not exist", NO_SUCH_DOMAIN),
    ] {
        let mut a = EvtchnAllocUnbound {
            dom,
            remote_dom: 0,
            port: 0,
        };
        // SAFETY: `a` is an alloc_unbound argument of ours.
        let r = unsafe {
            raw(
                x,
                HYPERVISOR_EVENT_CHANNEL_OP,
                [EVTCHNOP_ALLOC_UNBOUND.into(), at(&mut a), 0, 0, 0],
            )
        };
        t.expect_err(c, &format!("alloc_unbound {what}"), r);
        if r >= 0 {
            let _ = x.hv.evtchn_close(a.port);
        }
    }
    let mut s = EvtchnStatus {
        dom: 0,
        port: 1,
        ..EvtchnStatus::default()
    };
    // SAFETY: `s` is an evtchn_status argument of ours.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_EVENT_CHANNEL_OP,
            [EVTCHNOP_STATUS.into(), at(&mut s), 0, 0, 0],
        )
    };
    t.expect_err(c, "status of a port of domain 0", r);
    let mut vcpu = [9u32, 0];
    // SAFETY: `vcpu` is a bind_ipi argument of ours (vcpu, port).
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_EVENT_CHANNEL_OP,
            [EVTCHNOP_BIND_IPI.into(), at(&mut vcpu), 0, 0, 0],
        )
    };
    t.expect_err(c, "bind_ipi to vCPU 9", r);
    // SAFETY: the pointer is a BAD_PTR.
    let r = unsafe {
        raw(
            x,
            HYPERVISOR_EVENT_CHANNEL_OP,
            [EVTCHNOP_INIT_CONTROL.into(), BAD_PTRS[1], 0, 0, 0],
        )
    };
    t.expect_err(c, "FIFO init_control at a bad pointer", r);

    // Exhaust the port space: allocation must end with an error, not grow without
    // bound; every port goes back afterwards and allocation works again.
    let mut ports = Vec::new();
    let mut last = Ok(0);
    while ports.len() < 70_000 {
        match x.hv.evtchn_alloc_unbound(0) {
            Ok(p) => ports.push(p),
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    let n = ports.len();
    t.check(
        c,
        "allocating ports until refused",
        last.is_err(),
        format_args!("{n} ports allocated, then {}", Ret(ret_of(last))),
    );
    let mut close_failed = 0;
    for p in ports {
        if x.hv.evtchn_close(p).is_err() {
            close_failed += 1;
        }
    }
    match x.hv.evtchn_alloc_unbound(0) {
        Ok(p) if close_failed == 0 => {
            kprintln!("hostile: evtchn: port space exhausted after {n} ports, all closed again");
            let _ = x.hv.evtchn_close(p);
        }
        Ok(p) => {
            let _ = x.hv.evtchn_close(p);
            t.broken(
                "closing the flood's ports",
                format_args!("{close_failed} closes failed"),
            );
        }
        Err(e) => t.broken("allocating a port after the flood", e),
    }
}

// ---- xenstore ------------------------------------------------------------------------

/// Whether xenstored refused the request (an `XS_ERROR` reply).
fn refused<T>(r: &Result<T, XsError>) -> bool {
    matches!(r, Err(XsError::Xen(_)))
}

fn xenstore(x: &xen::Xen, t: &mut Tally, skip: &dyn Fn(&str) -> bool) {
    let c = Cat::Xenstore;
    let Some(me) = x.domain_id() else {
        t.broken("xenstore", "domain id unknown");
        return;
    };
    let mut guard = x.store.lock();
    let Some(xs) = guard.as_mut() else {
        t.broken("xenstore", "no connection");
        return;
    };
    let other = NO_SUCH_DOMAIN;
    // Outside our home.
    for path in [
        "/local/domain/0/hostile",
        "/hostile",
        "/tool/hostile",
        "/local/domain/hostile",
        &*format!("/local/domain/{other}/hostile"),
        &*format!("/local/domain/{}/hostile", me.wrapping_add(1)),
    ] {
        let r = xs.write(TxId::NONE, path, b"x");
        t.check(
            c,
            &format!("write {path}"),
            refused(&r),
            format_args!("{r:?}"),
        );
        let r = xs.mkdir(TxId::NONE, &format!("{path}-dir"));
        t.check(
            c,
            &format!("mkdir {path}-dir"),
            refused(&r),
            format_args!("{r:?}"),
        );
    }
    for path in [
        "/local/domain/0",
        "/local",
        "/tool",
        "/local/domain/0/backend",
    ] {
        let r = xs.rm(TxId::NONE, path);
        t.check(c, &format!("rm {path}"), refused(&r), format_args!("{r:?}"));
    }
    // The backend's nodes are readable by us, never writable.
    let first_vbd = xenbus::list_devices(xs, "vbd")
        .ok()
        .and_then(|v| v.into_iter().next());
    let backend = first_vbd
        .and_then(|id| Frontend::open(xs, "vbd", &id).ok())
        .map(|f| f.backend.path);
    if let Some(b) = &backend {
        for name in ["state", "sectors", "feature-flush-cache"] {
            let path = xenbus::join(b, name);
            let r = xs.write(TxId::NONE, &path, b"1");
            t.check(
                c,
                &format!("write the backend's {name}"),
                refused(&r),
                format_args!("{r:?}"),
            );
        }
    }
    // Permission escapes: take over nodes of domain 0, give nodes away, grant
    // ourselves access to others' nodes.
    let mine = Permissions::new(me, Access::Both);
    let mut escapes: Vec<(String, Permissions)> = Vec::new();
    escapes.push(("/local/domain/0".into(), mine.clone()));
    escapes.push(("/local".into(), mine.clone()));
    if let Some(b) = &backend {
        escapes.push((xenbus::join(b, "state"), mine.clone()));
        escapes.push((
            b.clone(),
            Permissions::new(0, Access::Read).with(me, Access::Both),
        ));
    }
    for (path, perms) in &escapes {
        let r = xs.set_perms(TxId::NONE, path, perms);
        t.check(
            c,
            &format!("set_perms on {path}"),
            refused(&r),
            format_args!("{r:?}"),
        );
    }
    // Our own node handed to domain 0 (a way around the node quota) and to a domain
    // that does not exist.
    if let Err(e) = xs.write(TxId::NONE, "data/hostile/own", b"1") {
        t.broken("writing hostile/own", e);
    } else {
        for owner in [0, other] {
            let r = xs.set_perms(
                TxId::NONE,
                "data/hostile/own",
                &Permissions::new(owner, Access::Both),
            );
            t.check(
                c,
                &format!("set_perms giving our node to domain {owner}"),
                refused(&r),
                format_args!("{r:?}"),
            );
        }
    }
    // A value larger than the quota allows.
    let big = alloc::vec![b'v'; 3000];
    let r = xs.write(TxId::NONE, "data/hostile/big", &big);
    t.check(
        c,
        "write a 3000-byte value",
        refused(&r),
        format_args!("{r:?}"),
    );

    // Watch flood: registration must be refused at the quota.
    let mut tokens = Vec::new();
    let mut last = Ok(());
    while tokens.len() < 600 {
        let token = format!("hostile-{}", tokens.len());
        match xs.watch("data/hostile/watched", &token) {
            Ok(()) => tokens.push(token),
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    let n = tokens.len();
    t.check(
        c,
        "watch flood",
        refused(&last),
        format_args!("{n} watches, then {last:?}"),
    );
    for token in &tokens {
        if xs.unwatch("data/hostile/watched", token).is_err() {
            xs.forget_watch("data/hostile/watched", token);
        }
    }
    while let Ok(Some(_)) = xs.next_watch_event(None) {}
    // Transaction flood.
    let mut txs = Vec::new();
    let mut last = Ok(TxId::NONE);
    while txs.len() < 300 {
        match xs.transaction_start() {
            Ok(tx) => txs.push(tx),
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    let n = txs.len();
    t.check(
        c,
        "transaction flood",
        refused(&last),
        format_args!("{n} transactions, then {last:?}"),
    );
    for tx in txs {
        let _ = xs.transaction_end(tx, false);
    }
    // More permission entries than a node may carry.
    let mut crowded = Permissions::new(me, Access::Read);
    for d in 0..8 {
        crowded = crowded.with(100 + d, Access::Read);
    }
    let r = xs.set_perms(TxId::NONE, "data/hostile/own", &crowded);
    t.check(
        c,
        "set_perms with 9 entries",
        refused(&r),
        format_args!("{r:?}"),
    );
    // Node flood: nodes of our own until the quota refuses one (40 to a directory, so
    // that the count, not one directory's size, is what runs out).
    let mut nodes = 0u32;
    let mut last = Ok(());
    while nodes < 3000 {
        let path = format!("data/hostile/n/{}/{}", nodes / 40, nodes % 40);
        match xs.write(TxId::NONE, &path, b"") {
            Ok(()) => nodes += 1,
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    t.check(
        c,
        "node flood",
        refused(&last),
        format_args!("{nodes} nodes, then {last:?}"),
    );
    if let Err(e) = xs.rm(TxId::NONE, "data/hostile/n") {
        t.broken("removing the node flood", e);
    }
    kprintln!(
        "hostile: xenstore: quotas held at {} watches, {n} transactions, {nodes} nodes",
        tokens.len()
    );

    // Raw wire messages the client would never send.
    if !skip("xenstore-raw") {
        xenstore_raw(x, xs, t, me, skip("xenstore-unterminated"));
    }
    if !skip("xenstore-unread") {
        xenstore_unread_replies(x, xs, t, me);
    }
    let r = xs.read(TxId::NONE, "domid");
    match r {
        Ok(_) => {}
        Err(e) => t.broken("reading domid after the xenstore attacks", e),
    }
    let _ = xs.rm(TxId::NONE, "data/hostile");
}

/// Requests sent by [`xenstore_unread_replies`] before it reads a reply.
const UNREAD_REQUESTS: u32 = 120;
/// The size of the value each of them reads: one reply nearly fills the 1 KiB ring.
const UNREAD_VALUE: usize = 1000;
/// The most requests xenstored may take while no reply is read: one reply in the
/// ring (and the start of the next), and its quota of unread replies (`outstanding`,
/// 20 as in C xenstored), with one of slack for a reply half in the ring.
const UNREAD_BOUND: u32 = 23;

/// A domain that sends requests and never reads the replies (xenstored's
/// `quota-outstanding`): 120 reads of a 1000-byte value are pushed as fast as the
/// request ring takes them. xenstored must stop taking requests once its quota of
/// unread replies is queued (so its memory for this domain stays bounded), and once
/// the replies are read it must serve the rest, losing none and keeping their order.
fn xenstore_unread_replies<P, E>(
    x: &xen::Xen,
    xs: &mut pv_drivers::xenstore::XenStore<P, E>,
    t: &mut Tally,
    me: DomId,
) where
    P: core::ops::Deref<Target: SharedMemory>,
    E: pv_drivers::xenstore::XsEvents,
{
    let c = Cat::Xenstore;
    let what = "120 requests whose replies are not read (the outstanding quota)";
    let path = format!("/local/domain/{me}/data/hostile-big");
    let value = [b'v'; UNREAD_VALUE];
    if let Err(e) = xs.write(TxId::NONE, &path, &value) {
        t.broken("writing the value for the unread replies", e);
        return;
    }
    let Some(page) = store_page(x) else {
        t.broken("xenstore page", "HVM_PARAM_STORE_PFN unreadable");
        return;
    };
    let mut ring = match XsRing::attach(&page) {
        Ok(r) => r,
        Err(e) => {
            t.broken("attaching to the xenstore ring", e);
            return;
        }
    };
    let mut payload = path.clone().into_bytes();
    payload.push(0);
    let request = |id: u32| {
        let h = XsdSockmsg {
            type_: XsdSockmsgType::Read.as_raw(),
            req_id: id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        let mut m = h.to_bytes().to_vec();
        m.extend_from_slice(&payload);
        m
    };
    let msg_len = 16 + payload.len() as u32;
    // Pushes requests (whole or in part) while the ring has room; returns the bytes
    // of `pending` sent.
    let mut next = 0u32;
    let mut pending: Vec<u8> = Vec::new();
    let sent_bytes = core::cell::Cell::new(0u64);
    let mut push = |ring: &mut XsRing<&RawSharedMemory>| -> Result<bool, &'static str> {
        let mut moved = false;
        loop {
            if pending.is_empty() {
                if next == UNREAD_REQUESTS {
                    return Ok(moved);
                }
                pending = request(next);
                next += 1;
            }
            let n = ring.write(&pending).map_err(|_| "request ring broken")?;
            if n == 0 {
                return Ok(moved);
            }
            moved = true;
            sent_bytes.set(sent_bytes.get() + n as u64);
            pending.drain(..n);
        }
    };
    // Phase 1: push until xenstored stops taking requests (the request ring stays
    // full, or everything was taken) and nothing moves for 20 waits.
    let deadline = x.now_ns().saturating_add(REPLY_NS);
    let mut quiet = 0;
    let mut broken = None;
    while quiet < 20 && x.now_ns() < deadline {
        match push(&mut ring) {
            Ok(true) => {
                quiet = 0;
                let _ = x.hv.evtchn_send(store_port(x));
            }
            Ok(false) => quiet += 1,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
        x.store_wait_until(x.now_ns().saturating_add(2_000_000).min(deadline));
    }
    let in_ring = ring.request_space().map(|free| 1024 - free).unwrap_or(1024);
    let taken = ((sent_bytes.get() - u64::from(in_ring)) / u64::from(msg_len)) as u32;

    // Phase 2: read every reply, pushing the rest of the requests as room appears.
    let mut replies = 0u32;
    let mut in_order = true;
    let mut got: Vec<u8> = Vec::new();
    // The limit is on silence (a slow xenstored, a loaded dom0 under TCG, took more
    // than 10 s for the 120 but kept answering), within a bound on the whole: the
    // deadline moves with each reply but never past `end`.
    let end = x.now_ns().saturating_add(6 * REPLY_NS);
    let mut deadline = x.now_ns().saturating_add(REPLY_NS).min(end);
    while broken.is_none() && replies < UNREAD_REQUESTS && x.now_ns() < deadline {
        if let Err(e) = push(&mut ring) {
            broken = Some(e);
            break;
        }
        let _ = x.hv.evtchn_send(store_port(x));
        let mut buf = [0u8; 1024];
        let n = match ring.read(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                broken = Some("reply ring broken");
                break;
            }
        };
        if n > 0 {
            deadline = x.now_ns().saturating_add(REPLY_NS).min(end);
        }
        got.extend_from_slice(&buf[..n]);
        while let Some(h) = XsdSockmsg::from_prefix(&got) {
            let len = 16 + h.len as usize;
            if h.len > 4096 {
                broken = Some("oversized reply");
                break;
            }
            if got.len() < len {
                break;
            }
            if h.type_ != XsdSockmsgType::WatchEvent.as_raw() {
                in_order &= h.type_ == XsdSockmsgType::Read.as_raw()
                    && h.req_id == replies
                    && got[16..len] == value[..];
                replies += 1;
            }
            got.drain(..len);
        }
        if n == 0 {
            x.store_wait_until(x.now_ns().saturating_add(2_000_000).min(deadline));
        }
    }
    let ok = broken.is_none()
        && taken <= UNREAD_BOUND
        && replies == UNREAD_REQUESTS
        && in_order
        && got.is_empty();
    t.check(
        c,
        what,
        ok,
        format_args!(
            "{taken} taken before any reply was read (at most {UNREAD_BOUND}), \
             {replies} replies, in order {in_order}, {} bytes left over, {broken:?}",
            got.len()
        ),
    );
    if ok {
        kprintln!(
            "hostile: xenstore: {taken} of {UNREAD_REQUESTS} requests taken while no reply \
             was read; then all {replies} replies, in order"
        );
    }
    // The client's own indices are behind the ones moved here.
    if let Err(e) = xs.resync() {
        t.broken("resync after the unread replies", e);
    }
    if let Err(e) = xs.rm(TxId::NONE, &path) {
        t.broken("removing the value of the unread replies", e);
    }
}

/// The page of the xenstore ring, as a second view for raw messages.
fn store_page(x: &xen::Xen) -> Option<RawSharedMemory> {
    let pfn = x.hv.hvm_get_param(HVM_PARAM_STORE_PFN).ok()?;
    // SAFETY: the toolstack's xenstore page, reserved in the memory map and shared
    // with xenstored (never Rust data); the caller holds the xenstore client's lock,
    // so nothing else moves bytes through it meanwhile.
    Some(unsafe { RawSharedMemory::new((pfn << 12) as *mut u8, 4096) })
}

/// Sends `msg` (a header and payload, already encoded) and returns the reply's type
/// and payload.
fn raw_exchange(
    x: &xen::Xen,
    ring: &mut XsRing<&RawSharedMemory>,
    msg: &[u8],
) -> Result<(u32, Vec<u8>), &'static str> {
    let deadline = x.now_ns().saturating_add(REPLY_NS);
    let mut sent = 0;
    let mut got: Vec<u8> = Vec::new();
    let mut want = 16usize;
    loop {
        if sent < msg.len() {
            sent += ring
                .write(&msg[sent..])
                .map_err(|_| "request ring broken")?;
            let _ = x.hv.evtchn_send(store_port(x));
        }
        let mut buf = [0u8; 1024];
        let n = ring
            .read(&mut buf[..(want - got.len()).min(1024)])
            .map_err(|_| "reply ring broken")?;
        if n > 0 {
            // The ring had no room for all xenstored had to send (watch events queue
            // up behind a reply): a consumer tells the producer it made room
            // (xenstore-ring.txt), or C xenstored waits for ever.
            let _ = x.hv.evtchn_send(store_port(x));
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() == 16 && want == 16 {
            let h = XsdSockmsg::from_prefix(&got).ok_or("short header")?;
            if h.len > 4096 {
                return Err("oversized reply");
            }
            want = 16 + h.len as usize;
        }
        if got.len() == want && want >= 16 {
            let h = XsdSockmsg::from_prefix(&got).ok_or("short header")?;
            if h.type_ == XsdSockmsgType::WatchEvent.as_raw() {
                // Not ours: a watch firing. Skip it.
                got.clear();
                want = 16;
                continue;
            }
            return Ok((h.type_, got.split_off(16)));
        }
        if n == 0 {
            if x.now_ns() >= deadline {
                return Err("no reply");
            }
            x.store_wait_until(x.now_ns().saturating_add(10_000_000).min(deadline));
        }
    }
}

fn store_port(x: &xen::Xen) -> u32 {
    x.hv.hvm_get_param(pv_drivers::abi::hvm::HVM_PARAM_STORE_EVTCHN)
        .unwrap_or(0) as u32
}

fn message(type_: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let h = XsdSockmsg {
        type_,
        req_id: 0x4057,
        tx_id,
        len: payload.len() as u32,
    };
    let mut m = h.to_bytes().to_vec();
    m.extend_from_slice(payload);
    m
}

fn xenstore_raw<P, E>(
    x: &xen::Xen,
    xs: &mut pv_drivers::xenstore::XenStore<P, E>,
    t: &mut Tally,
    me: DomId,
    skip_unterminated: bool,
) where
    P: core::ops::Deref<Target: SharedMemory>,
    E: pv_drivers::xenstore::XsEvents,
{
    use XsdSockmsgType as T;
    let c = Cat::Xenstore;
    let Some(page) = store_page(x) else {
        t.broken("xenstore page", "HVM_PARAM_STORE_PFN unreadable");
        return;
    };
    let mut ring = match XsRing::attach(&page) {
        Ok(r) => r,
        Err(e) => {
            t.broken("attaching to the xenstore ring", e);
            return;
        }
    };
    let long_path = alloc::vec![b'a'; 3500];
    let mut long = b"/".to_vec();
    long.extend_from_slice(&long_path);
    long.push(0);
    let me_s = format!("{me}\0");
    let cases: [(&str, u32, u32, &[u8]); 17] = [
        (
            "READ of an unterminated path",
            T::Read.as_raw(),
            0,
            b"domid",
        ),
        ("WRITE without any NUL", T::Write.as_raw(), 0, b"hostile/x"),
        ("READ of an empty payload", T::Read.as_raw(), 0, b""),
        (
            "READ of a path with '..'",
            T::Read.as_raw(),
            0,
            b"/local/../x\0",
        ),
        (
            "READ of a path with a space",
            T::Read.as_raw(),
            0,
            b"host ile\0",
        ),
        ("READ of a 3501-byte path", T::Read.as_raw(), 0, &long),
        ("message type 999", 999, 0, b"domid\0"),
        (
            "a WATCH_EVENT from the guest",
            T::WatchEvent.as_raw(),
            0,
            b"domid\0t\0",
        ),
        ("an ERROR from the guest", T::Error.as_raw(), 0, b"EINVAL\0"),
        (
            "READ in a transaction that does not exist",
            T::Read.as_raw(),
            0xdead_beef,
            b"domid\0",
        ),
        (
            "TRANSACTION_END of a transaction that does not exist",
            T::TransactionEnd.as_raw(),
            0x0bad_cafe,
            b"T\0",
        ),
        (
            "INTRODUCE of a domain",
            T::Introduce.as_raw(),
            0,
            b"32752\x00123\x004\x00",
        ),
        ("RELEASE of domain 0", T::Release.as_raw(), 0, b"0\0"),
        ("SET_TARGET", T::SetTarget.as_raw(), 0, me_s.as_bytes()),
        ("CONTROL check", T::Control.as_raw(), 0, b"check\0"),
        (
            "GET_DOMAIN_PATH of a non-number",
            T::GetDomainPath.as_raw(),
            0,
            b"x\0",
        ),
        (
            "SET_PERMS with garbage permissions",
            T::SetPerms.as_raw(),
            0,
            b"data/hostile/own\0zz\0",
        ),
    ];
    // The payloads without a NUL (the first three cases, the empty one among them).
    let unterminated = |payload: &[u8]| !payload.contains(&0);
    for (what, type_, tx, payload) in cases {
        if skip_unterminated && unterminated(payload) {
            continue;
        }
        match raw_exchange(x, &mut ring, &message(type_, tx, payload)) {
            Ok((ty, body)) => {
                let name = core::str::from_utf8(&body)
                    .unwrap_or("?")
                    .trim_end_matches('\0');
                t.check(
                    c,
                    what,
                    ty == T::Error.as_raw(),
                    format_args!("reply type {ty} '{name}'"),
                );
            }
            Err(e) => t.check(c, what, false, e),
        }
    }
    if let Err(e) = xs.resync() {
        t.broken("resync after the raw messages", e);
    }
}

/// The terminal attack: a header announcing more than `XENSTORE_PAYLOAD_MAX` bytes.
/// xenstored must stop serving the ring (the connection is not usable afterwards:
/// nothing runs after this that needs it). A server that advertises
/// `XENSTORE_SERVER_FEATURE_ERROR` must say so with `XENSTORE_ERROR_PROTO` in the page's
/// `error` field (as the shim's xenstored and newer C xenstored do); one that does not
/// (Xen 4.17's C xenstored) can only show it by silence: a well-formed read sent after
/// the header is never answered.
fn xenstore_oversized(x: &xen::Xen, t: &mut Tally) {
    let c = Cat::Xenstore;
    let what = "a header of 5000 bytes (the ring is then no longer served)";
    let mut guard = x.store.lock();
    let Some(page) = store_page(x) else {
        t.broken("xenstore page", "HVM_PARAM_STORE_PFN unreadable");
        return;
    };
    let mut ring = match XsRing::attach(&page) {
        Ok(r) => r,
        Err(e) => {
            t.broken("attaching to the xenstore ring", e);
            return;
        }
    };
    let mut m = message(XsdSockmsgType::Write.as_raw(), 0, b"junk");
    m[12..16].copy_from_slice(&5000u32.to_le_bytes());
    let _ = ring.discard_responses();
    let sent = ring.write(&m).unwrap_or(0);
    let _ = x.hv.evtchn_send(store_port(x));
    let deadline = x.now_ns().saturating_add(REPLY_NS);
    if ring.server_features() & XENSTORE_SERVER_FEATURE_ERROR != 0 {
        while ring.server_error().is_none() && x.now_ns() < deadline {
            x.store_wait_until(x.now_ns().saturating_add(10_000_000).min(deadline));
        }
        let err = ring.server_error();
        t.check(
            c,
            what,
            sent == m.len() && err == Some(XENSTORE_ERROR_PROTO),
            format_args!("sent {sent}, page error {err:?}"),
        );
    } else {
        let probe = message(XsdSockmsgType::Read.as_raw(), 0, b"domid\0");
        let probed = ring.write(&probe).unwrap_or(0);
        let _ = x.hv.evtchn_send(store_port(x));
        let answered = || ring.response_bytes().map_or(true, |n| n > 0);
        while !answered() && x.now_ns() < deadline {
            x.store_wait_until(x.now_ns().saturating_add(10_000_000).min(deadline));
        }
        let answered = answered();
        let fate = if answered {
            "was answered"
        } else {
            "was not answered"
        };
        kprintln!(
            "hostile: xenstore: no error field (server features {:#x}): a read after the \
             oversized header {fate}",
            ring.server_features()
        );
        t.check(
            c,
            what,
            sent == m.len() && probed == probe.len() && !answered,
            format_args!(
                "sent {sent}, no error field (server features {:#x}); a read sent after it \
                 {fate} within {} s",
                ring.server_features(),
                REPLY_NS / 1_000_000_000
            ),
        );
    }
    // The client must not be used again.
    *guard = None;
}

// ---- blkif ---------------------------------------------------------------------------

/// A raw blkif connection: the ring and what the attacks need.
struct RawVbd {
    ring: BlkifFrontRing<&'static RawSharedMemory>,
    env: GuestEnv,
    port: u32,
    dev: Frontend,
    sectors: u64,
    flush: bool,
    indirect: bool,
}

fn blkif(t: &mut Tally, io: &IoOptions<'_>) {
    let ids = pv::list_devices("vbd");
    // The attacked disk is the first vbd that is not the well-behaved one.
    let good = io.blk.as_ref().and_then(|b| match b.device {
        Some(guest_kernel::ioopts::BlkDeviceSel::Xen(id)) => Some(id),
        _ => None,
    });
    let Some(id) = ids.iter().find(|id| Some(id.as_str()) != good) else {
        t.broken(
            "blkif",
            format_args!("no vbd to attack besides {good:?} (found {ids:?})"),
        );
        return;
    };
    kprintln!("hostile: blkif: attacking vbd {id} over a raw ring");
    let mut v = match connect_raw(id) {
        Ok(v) => v,
        Err(e) => {
            t.broken("raw blkif connection", e);
            return;
        }
    };
    blkif_attacks(t, &mut v);
    blkif_xenbus_attacks(t, &mut v, id);
}

/// The frontend keys a blkif connection attempt writes (good ones unless an attack
/// changes one); `None` leaves the key out.
#[derive(Clone)]
struct VbdKeys {
    ring_ref: String,
    event_channel: Option<String>,
    ring_page_order: Option<String>,
    protocol: String,
    queues: Option<&'static str>,
}

/// Every key a [`VbdKeys`] may write (removed before each attempt).
const VBD_KEYS: [&str; 6] = [
    "ring-ref",
    "ring-ref0",
    "event-channel",
    "ring-page-order",
    "protocol",
    "multi-queue-num-queues",
];

/// Connection attempts blkback must refuse (blkif.h's negotiation; Linux's
/// `xen-blkback/xenbus.c` refuses each too): it must go `Closing` with an `error`
/// node instead of `Connected`. After them a good connection must still carry a read.
fn blkif_xenbus_attacks(t: &mut Tally, v: &mut RawVbd, id: &str) {
    use XenbusState as S;
    let c = Cat::Blkif;
    let Some(x) = xen::get() else { return };
    let backend = v.dev.backend.domid;
    let pages = (|| -> Result<_, String> {
        let (ring_pfn, ring) = v.env.alloc_pages(1).map_err(|e| format!("{e}"))?;
        let ring: &'static RawSharedMemory = Box::leak(Box::new(ring));
        let good = v
            .env
            .grant(backend, ring_pfn, false)
            .map_err(|e| format!("{e}"))?;
        let ro = v
            .env
            .grant(backend, ring_pfn, true)
            .map_err(|e| format!("{e}"))?;
        let never = x.grants.lock().claim().map_err(|e| format!("{e}"))?;
        Ok((ring, good, ro, never))
    })();
    let (ring, good, ro, never) = match pages {
        Ok(p) => p,
        Err(e) => {
            t.broken("blkif xenbus pages", e);
            return;
        }
    };
    let order_beyond = {
        let mut guard = x.store.lock();
        guard
            .as_mut()
            .and_then(|xs| {
                xenbus::read_u32(xs, TxId::NONE, &v.dev.backend_node("max-ring-page-order")).ok()
            })
            .unwrap_or(0)
            + 1
    };
    let base = VbdKeys {
        ring_ref: format!("{good}"),
        event_channel: None,
        ring_page_order: None,
        protocol: "x86_64-abi".into(),
        queues: None,
    };
    let attacks = [
        (
            "a ring never granted",
            VbdKeys {
                ring_ref: format!("{never}"),
                ..base.clone()
            },
        ),
        (
            "a ring granted read-only",
            VbdKeys {
                ring_ref: format!("{ro}"),
                ..base.clone()
            },
        ),
        (
            "a ring reference beyond the table",
            VbdKeys {
                ring_ref: format!("{}", 1u32 << 30),
                ..base.clone()
            },
        ),
        (
            "a ring reference that is not a number",
            VbdKeys {
                ring_ref: "12ab".into(),
                ..base.clone()
            },
        ),
        (
            "ring-page-order beyond max-ring-page-order",
            VbdKeys {
                ring_page_order: Some(format!("{order_beyond}")),
                ..base.clone()
            },
        ),
        (
            "ring-page-order 1 without ring-ref1",
            VbdKeys {
                ring_page_order: Some("1".into()),
                ..base.clone()
            },
        ),
        (
            "ring-page-order 2^32",
            VbdKeys {
                ring_page_order: Some("4294967296".into()),
                ..base.clone()
            },
        ),
        (
            "the xenstore's event channel",
            VbdKeys {
                event_channel: Some(format!("{}", store_port(x))),
                ..base.clone()
            },
        ),
        (
            "an event channel that is not a number",
            VbdKeys {
                event_channel: Some("-1".into()),
                ..base.clone()
            },
        ),
        (
            "an unknown protocol",
            VbdKeys {
                protocol: "x86_65-abi".into(),
                ..base.clone()
            },
        ),
        (
            "multi-queue-num-queues 0",
            VbdKeys {
                queues: Some("0"),
                ..base.clone()
            },
        ),
        (
            "multi-queue-num-queues 2 (not offered)",
            VbdKeys {
                queues: Some("2"),
                ..base.clone()
            },
        ),
    ];
    for (what, keys) in &attacks {
        let r = vbd_try_connect(v, keys);
        t.check(
            c,
            what,
            matches!(r, Ok(S::Closing | S::Closed)),
            format_args!("{r:?}"),
        );
    }
    let _ = ring;
    let _ = v.env.end_grant(ro);
    // The backend still connects a good frontend, and the ring carries a read.
    match connect_raw(id) {
        Ok(mut fresh) => {
            let mut ok = false;
            if let Some((pa, buf)) = memory::alloc_zeroed(1) {
                match fresh.env.grant(backend, pa >> 12, false) {
                    Ok(g) => {
                        let seg = BlkifRequestSegment {
                            gref: g,
                            first_sect: 0,
                            last_sect: 7,
                            ..BlkifRequestSegment::default()
                        };
                        let r = fresh.exchange(&request(1, BLKIF_OP_READ, 0, &[seg], 1));
                        ok = r == Ok(BLKIF_RSP_OKAY);
                        if !ok {
                            t.broken(
                                "a good read after the xenbus attacks",
                                format_args!("{r:?}"),
                            );
                        }
                        let _ = fresh.env.end_grant(g);
                    }
                    Err(e) => t.broken("a good read after the xenbus attacks", e),
                }
                let _ = buf;
            }
            if ok {
                kprintln!("hostile: blkif: a good connection after the xenbus attacks reads");
            }
            if let Some(xs) = x.store.lock().as_mut() {
                let _ = fresh.dev.switch_state(xs, S::Closed);
            }
            fresh.env.close_port(fresh.port);
        }
        Err(e) => t.broken("a good blkif connection after the xenbus attacks", e),
    }
}

/// One connection attempt with `keys` on a device the frontend has closed: starts
/// over (`Initialising`, the backend `InitWait`), writes the keys (a fresh event
/// channel unless `keys` names one), goes `Initialised` and returns the state the
/// backend went to; then closes again.
fn vbd_try_connect(v: &mut RawVbd, keys: &VbdKeys) -> Result<XenbusState, String> {
    use XenbusState as S;
    let x = xen::get().ok_or("no Xen")?;
    let backend = v.dev.backend.domid;
    let port = v.env.alloc_unbound(backend).map_err(|e| format!("{e}"))?;
    let r = (|| {
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        let dev = &v.dev;
        dev.switch_state(xs, S::Closed)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(xs, |s| s == S::Closed, 64)
            .map_err(|e| format!("waiting for Closed: {e}"))?;
        forget_vbd_keys(xs, dev)?;
        dev.switch_state(xs, S::Initialising)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(xs, |s| s == S::InitWait, 64)
            .map_err(|e| format!("waiting for InitWait: {e}"))?;
        let channel = keys
            .event_channel
            .clone()
            .unwrap_or_else(|| format!("{port}"));
        let mut nodes = alloc::vec![
            ("ring-ref", keys.ring_ref.as_str()),
            ("event-channel", channel.as_str()),
            ("protocol", keys.protocol.as_str()),
        ];
        if let Some(o) = &keys.ring_page_order {
            // A multi-page ring names its pages ring-refN.
            nodes[0].0 = "ring-ref0";
            nodes.push(("ring-page-order", o.as_str()));
        }
        if let Some(q) = keys.queues {
            nodes.push(("multi-queue-num-queues", q));
        }
        let st = vbd_offer(xs, dev, &nodes)?;
        dev.switch_state(xs, S::Closed)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(xs, |s| s == S::Closed, 64)
            .map_err(|e| format!("waiting for Closed: {e}"))?;
        forget_vbd_keys(xs, dev)?;
        Ok(st)
    })();
    v.env.close_port(port);
    r
}

/// Writes the frontend's connection `nodes`, goes `Initialised` and returns the state
/// the backend went to (`Connected`, or `Closing`/`Closed` if it refused).
fn vbd_offer<P, E>(
    xs: &mut pv_drivers::xenstore::XenStore<P, E>,
    dev: &Frontend,
    nodes: &[(&str, &str)],
) -> Result<XenbusState, String>
where
    P: core::ops::Deref<Target: SharedMemory>,
    E: pv_drivers::xenstore::XsEvents,
{
    use XenbusState as S;
    for &(name, value) in nodes {
        xenbus::write_str(xs, TxId::NONE, &dev.node(name), value)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    dev.switch_state(xs, S::Initialised)
        .map_err(|e| format!("{e}"))?;
    dev.wait_for_backend(
        xs,
        |s| matches!(s, S::Connected | S::Closing | S::Closed),
        64,
    )
    .map_err(|e| format!("waiting for the backend: {e}"))
}

/// Removes every key a [`VbdKeys`] may have written.
fn forget_vbd_keys<P, E>(
    xs: &mut pv_drivers::xenstore::XenStore<P, E>,
    dev: &Frontend,
) -> Result<(), String>
where
    P: core::ops::Deref<Target: SharedMemory>,
    E: pv_drivers::xenstore::XsEvents,
{
    for name in VBD_KEYS {
        match xs.rm(TxId::NONE, &dev.node(name)) {
            Ok(()) | Err(XsError::Xen(XenErrno::ENOENT)) => {}
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok(())
}

fn connect_raw(id: &str) -> Result<RawVbd, String> {
    use XenbusState as S;
    let x = xen::get().ok_or("no Xen")?;
    let mut env = GuestEnv::new().ok_or("no Xen environment")?;
    let mut guard = x.store.lock();
    let xs = guard.as_mut().ok_or("no xenstore")?;
    let dev = Frontend::open(xs, "vbd", id).map_err(|e| format!("open: {e}"))?;
    if dev.state(xs).ok() != Some(S::Initialising) {
        dev.switch_state(xs, S::Initialising)
            .map_err(|e| format!("{e}"))?;
    }
    let st = dev
        .wait_for_backend(xs, |s| matches!(s, S::InitWait | S::Connected), 64)
        .map_err(|e| format!("waiting for InitWait: {e}"))?;
    let backend = dev.backend.domid;
    let (pfn, mem) = env.alloc_pages(1).map_err(|e| format!("{e}"))?;
    let mem: &'static RawSharedMemory = Box::leak(Box::new(mem));
    let ring = BlkifFrontRing::new(mem).map_err(|e| format!("{e}"))?;
    let gref = env.grant(backend, pfn, false).map_err(|e| format!("{e}"))?;
    let port = env.alloc_unbound(backend).map_err(|e| format!("{e}"))?;
    let (gref_s, port_s) = (format!("{gref}"), format!("{port}"));
    let nodes = [
        ("ring-ref", gref_s.as_str()),
        ("event-channel", port_s.as_str()),
        ("protocol", "x86_64-abi"),
    ];
    let st2 = vbd_offer(xs, &dev, &nodes).map_err(|e| format!("{e} (was {st})"))?;
    if st2 != S::Connected {
        return Err(format!("backend went {st2}"));
    }
    let b = |n: &str| dev.backend_node(n);
    let sectors = xenbus::read_u64(xs, TxId::NONE, &b("sectors")).map_err(|e| format!("{e}"))?;
    let flush = xenbus::read_feature(xs, TxId::NONE, &b("feature-flush-cache")).unwrap_or(false);
    let indirect =
        xenbus::read_u32(xs, TxId::NONE, &b("feature-max-indirect-segments")).unwrap_or(0) > 0;
    dev.switch_state(xs, S::Connected)
        .map_err(|e| format!("{e}"))?;
    Ok(RawVbd {
        ring,
        env,
        port,
        dev,
        sectors,
        flush,
        indirect,
    })
}

impl RawVbd {
    /// Sends `req` and waits for its response; returns the status.
    fn exchange(&mut self, req: &BlkifRequest) -> Result<i16, String> {
        self.ring
            .push_request(req)
            .map_err(|e| format!("push: {e}"))?;
        if self.ring.push_requests_and_check_notify() {
            self.env.notify(self.port);
        }
        let ev = self.env.event();
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        loop {
            if let Some(rsp) = self
                .ring
                .take_response()
                .map_err(|e| format!("response: {e}"))?
            {
                if rsp.id == req.id {
                    return Ok(rsp.status);
                }
                return Err(format!(
                    "response for id {} while waiting for {}",
                    rsp.id, req.id
                ));
            }
            if self
                .ring
                .final_check_for_responses()
                .map_err(|e| format!("{e}"))?
            {
                continue;
            }
            if wait_for_event_until(&ev, deadline) == Woken::Deadline && pv::now_ns() >= deadline {
                return Err("no response".into());
            }
        }
    }
}

fn wait_for_event_until(ev: &pv::DeviceEvent, deadline: u64) -> Woken {
    let w = pv::wait_for_event(
        ev,
        deadline.min(pv::now_ns().saturating_add(pv::RECOVERY_TICK_NS)),
    );
    ev.take();
    w
}

fn request(id: u64, op: u8, sector: u64, segs: &[BlkifRequestSegment], nr: u8) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: nr,
        handle: 0,
        id,
        sector_number: sector,
        ..BlkifRequest::default()
    };
    for (slot, s) in r.seg.iter_mut().zip(segs) {
        *slot = *s;
    }
    r
}

const CANARY: u8 = 0xc5;

fn blkif_attacks(t: &mut Tally, v: &mut RawVbd) {
    let c = Cat::Blkif;
    let x = match xen::get() {
        Some(x) => x,
        None => return,
    };
    let backend = v.dev.backend.domid;
    // Pages: one granted writable (the good buffer), one read-only, one granted to a
    // domain that does not exist, one never granted; all but the good one hold a
    // canary that must survive.
    let Some((good_pa, good)) = memory::alloc_zeroed(1) else {
        t.broken("blkif pages", "out of memory");
        return;
    };
    let Some((ro_pa, ro)) = memory::alloc_zeroed(1) else {
        t.broken("blkif pages", "out of memory");
        return;
    };
    let Some((foreign_pa, foreign)) = memory::alloc_zeroed(1) else {
        t.broken("blkif pages", "out of memory");
        return;
    };
    let Some((ind_pa, ind)) = memory::alloc_zeroed(1) else {
        t.broken("blkif pages", "out of memory");
        return;
    };
    let canary = [CANARY; 4096];
    ro.write_bytes(0, &canary);
    foreign.write_bytes(0, &canary);
    let grants = (
        v.env.grant(backend, good_pa >> 12, false),
        v.env.grant(backend, ro_pa >> 12, true),
        v.env.grant(NO_SUCH_DOMAIN, foreign_pa >> 12, false),
        v.env.grant(backend, ind_pa >> 12, true),
        x.grants.lock().claim(),
    );
    let (Ok(g_good), Ok(g_ro), Ok(g_foreign), Ok(g_ind), Ok(g_never)) = grants else {
        t.broken("blkif grants", "grant table full");
        return;
    };
    let end = v.sectors;
    let seg = |g, f, l| BlkifRequestSegment::new(g, f, l);
    let full = seg(g_good, 0, 7);
    let mut full11 = [full; 11];
    full11[10] = seg(g_never, 0, 7);
    let mut id = 0x1000u64;
    let mut next_id = || {
        id += 1;
        id
    };
    let mut attacks: Vec<(&str, BlkifRequest)> = alloc::vec![
        (
            "read of 0 segments",
            request(next_id(), BLKIF_OP_READ, 0, &[], 0)
        ),
        (
            "write of 0 segments",
            request(next_id(), BLKIF_OP_WRITE, 0, &[], 0)
        ),
        (
            "read of 12 segments",
            request(next_id(), BLKIF_OP_READ, 0, &[full; 11], 12)
        ),
        (
            "read of 255 segments",
            request(next_id(), BLKIF_OP_READ, 0, &[full; 11], 255)
        ),
        (
            "read with first_sect > last_sect",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(g_good, 5, 2)], 1)
        ),
        (
            "read with last_sect 8",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(g_good, 0, 8)], 1)
        ),
        (
            "write with first and last_sect 255",
            request(next_id(), BLKIF_OP_WRITE, 0, &[seg(g_good, 255, 255)], 1)
        ),
        (
            "read at the last sector + 1",
            request(next_id(), BLKIF_OP_READ, end, &[seg(g_good, 0, 0)], 1)
        ),
        (
            "read across the end",
            request(next_id(), BLKIF_OP_READ, end - 1, &[seg(g_good, 0, 1)], 1)
        ),
        (
            "write at sector 2^64 - 1 (wraps)",
            request(next_id(), BLKIF_OP_WRITE, u64::MAX, &[full], 1)
        ),
        (
            "read into a reference never granted",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(g_never, 0, 7)], 1)
        ),
        (
            "write from a reference never granted",
            request(next_id(), BLKIF_OP_WRITE, 0, &[seg(g_never, 0, 7)], 1)
        ),
        (
            "read into a reference beyond the table",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(1 << 30, 0, 7)], 1)
        ),
        (
            "read into a read-only grant",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(g_ro, 0, 7)], 1)
        ),
        (
            "read into a grant for another domain",
            request(next_id(), BLKIF_OP_READ, 0, &[seg(g_foreign, 0, 7)], 1)
        ),
        (
            "write whose 11th segment was never granted",
            request(next_id(), BLKIF_OP_WRITE, 0, &full11, 11)
        ),
        (
            "unknown operation 99",
            request(next_id(), 99, 0, &[full], 1)
        ),
        (
            "reserved operation 4",
            request(next_id(), BLKIF_OP_RESERVED_1, 0, &[full], 1)
        ),
        (
            "discard (not offered)",
            request(next_id(), BLKIF_OP_DISCARD, 0, &[], 0)
        ),
    ];
    if v.flush {
        // A flush may carry a write's data (Linux's blkback writes it), but
        // not more segments than a request holds.
        attacks.push((
            "flush with 12 segments",
            request(next_id(), BLKIF_OP_FLUSH_DISKCACHE, 0, &[full], 12),
        ));
    }
    // Indirect requests: bad counts, a bad operation, a page never granted, a page
    // whose descriptors are bad.
    let ind_req = |id, op, nr: u16, page| {
        let mut r = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: op,
            nr_segments: nr,
            id,
            sector_number: 0,
            handle: 0,
            ..BlkifRequestIndirect::default()
        };
        r.indirect_grefs[0] = page;
        BlkifRequest::from_indirect(&r)
    };
    let bad_descs = [seg(g_never, 0, 7), seg(g_good, 7, 0), seg(g_ro, 0, 7)];
    for (i, s) in bad_descs.iter().enumerate() {
        ind.write_bytes(i * 8, &s.to_bytes());
    }
    attacks.extend([
        (
            "indirect of 0 segments",
            ind_req(next_id(), BLKIF_OP_READ, 0, g_ind),
        ),
        (
            "indirect of 60000 segments",
            ind_req(next_id(), BLKIF_OP_READ, 60000, g_ind),
        ),
        (
            "indirect with operation 99",
            ind_req(next_id(), 99, 1, g_ind),
        ),
        (
            "indirect with a nested indirect operation",
            ind_req(next_id(), BLKIF_OP_INDIRECT, 1, g_ind),
        ),
        (
            "indirect whose page was never granted",
            ind_req(next_id(), BLKIF_OP_READ, 1, g_never),
        ),
        (
            "indirect whose page is beyond the table",
            ind_req(next_id(), BLKIF_OP_READ, 1, 1 << 30),
        ),
        (
            "indirect read into a reference never granted",
            ind_req(next_id(), BLKIF_OP_READ, 1, g_ind),
        ),
        (
            "indirect read of 3 bad descriptors",
            ind_req(next_id(), BLKIF_OP_READ, 3, g_ind),
        ),
    ]);
    if !v.indirect {
        kprintln!("hostile: blkif: the backend offers no indirect segments");
    }
    let good_read = |id| request(id, BLKIF_OP_READ, 0, &[full], 1);
    for (i, (what, req)) in attacks.iter().enumerate() {
        match v.exchange(req) {
            Ok(status) => t.check(
                c,
                what,
                status != BLKIF_RSP_OKAY,
                format_args!("status {status}"),
            ),
            Err(e) => t.check(c, what, false, e),
        }
        // Every few attacks, a good request: the ring still works.
        if i % 8 == 7 {
            match v.exchange(&good_read(next_id())) {
                Ok(BLKIF_RSP_OKAY) => {}
                Ok(s) => t.broken("a good read between attacks", format_args!("status {s}")),
                Err(e) => t.broken("a good read between attacks", e),
            }
        }
    }
    let mut check = [0u8; 4096];
    for (name, page) in [("read-only", &ro), ("foreign", &foreign)] {
        page.read_bytes(0, &mut check);
        let changed = check.iter().filter(|&&b| b != CANARY).count();
        t.check(
            c,
            &format!("the {name} page's canary"),
            changed == 0,
            format_args!("{changed} bytes changed"),
        );
    }
    match v.exchange(&good_read(next_id())) {
        Ok(BLKIF_RSP_OKAY) => kprintln!("hostile: blkif: the ring still serves good requests"),
        Ok(s) => t.broken("a good read after the attacks", format_args!("status {s}")),
        Err(e) => t.broken("a good read after the attacks", e),
    }
    let _ = good;

    // Last: a producer index far ahead of the consumer. The backend must stop serving
    // the ring: the shim's blkback drops it and closes the device; Linux's halts it
    // ("Frontend provided bogus ring requests ... Halting ring processing") and stays
    // Connected, so a backend that answers nothing more counts too (and the guest
    // must survive either).
    let prod = v.ring.req_prod_pvt();
    // The shared ring: req_prod at 0, rsp_prod at 8.
    let rsp_prod_before = v.ring.memory().load_u32(8, Ordering::Acquire);
    v.ring
        .memory()
        .store_u32(0, prod.wrapping_add(5000), Ordering::Release);
    v.env.notify(v.port);
    let closed = {
        let mut guard = x.store.lock();
        match guard.as_mut() {
            Some(xs) => v
                .dev
                .wait_for_backend(
                    xs,
                    |s| matches!(s, XenbusState::Closing | XenbusState::Closed),
                    64,
                )
                .map_err(|e| format!("{e}")),
            None => Err("no xenstore".into()),
        }
    };
    let rsp_prod_after = v.ring.memory().load_u32(8, Ordering::Acquire);
    let halted = rsp_prod_after == rsp_prod_before;
    t.check(
        c,
        "request producer 5000 ahead",
        closed.is_ok() || halted,
        format_args!(
            "{closed:?}; responses produced {}",
            rsp_prod_after.wrapping_sub(rsp_prod_before)
        ),
    );
    if closed.is_err() && halted {
        kprintln!("hostile: blkif: the backend halted the runaway ring without closing it");
    }
    if let Some(xs) = x.store.lock().as_mut() {
        let _ = v.dev.switch_state(xs, XenbusState::Closed);
    }
    v.env.close_port(v.port);
}
