//! Bodies of the blkback and netback fuzz targets: a hostile frontend domain against
//! the shim's real PV backends, in one process over a [`Loopback`] (real grant rules,
//! event channels and xenstored), with the backend driven step by step on the calling
//! thread ([`Backend::run_once`]) instead of its own, so that every input replays
//! exactly.
//!
//! The frontend's bytes become mostly valid steps: xenbus handshakes with good and
//! bad keys (ring references, ring orders, ports, protocols), requests built from
//! pools of real and bogus values (operations, segment counts and ranges, sectors at
//! and past the end, grants that are good, read-only, made out to another domain,
//! revoked, never made, or the ring itself), indirect pages full of hostile
//! descriptors, raw bytes written over the shared rings, lying producer indices, state
//! flips and reconnections; for netback also receive buffers and frames of every size
//! from the host side of its link.
//!
//! Checked after every step: pages the backend was not granted for writing (read-only,
//! foreign, never granted) keep their canary; every response the frontend reads has a
//! status of its protocol; the disk image keeps its size; every frame netback puts on
//! the link is a whole Ethernet frame within its limit. At the end, after the backend
//! shut down, no grant of the frontend is still pinned.

use std::sync::Arc;

use pv_drivers::abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SEGMENTS_PER_INDIRECT_PAGE, BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment,
};
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, NetifExtraInfo, NetifRxRequest, NetifTxRequest, XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_MAX,
};
use pv_drivers::frontend::{FrontendEnv, PAGE_SIZE};
use pv_drivers::ring::{BlkifFrontRing, NetifRxFrontRing, NetifTxFrontRing, SRING_REQ_PROD};
use pv_drivers::shmem::SharedMemory;
use serde::Serialize;

use super::fuzz::Bytes;
use crate::backends::blkback::{Blkback, BlkbackOptions, DiskImage, DiskOptions};
use crate::backends::loopback::{LoopFront, Loopback, Window};
use crate::backends::netback::{LINK, Netback, NetbackConfig};
use crate::backends::{Backend, DevicePaths, Kick};
use crate::hostio::disk::SECTOR_SIZE;
use crate::hostio::tap::{Link, MemLink};
use crate::xen::xenstored::{DomainConfig, Quotas};

/// The frontend domain.
const DOMID: u16 = 9;
/// Pages of its RAM.
const RAM_PAGES: usize = 28;
/// Steps per input.
const MAX_STEPS: usize = 48;
/// Sectors of the fuzzed disk.
const DISK_SECTORS: u64 = 64;
/// The fill of pages the backend must never write.
const CANARY: u8 = 0xc5;

/// What a backend fuzz run did, for the seeded tests that check the inputs reach
/// past the handshake.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackendRun {
    /// Steps taken.
    pub steps: usize,
    /// Times the backend was connected after a handshake step.
    pub connected: usize,
    /// Responses the frontend read, by status: success, error, other protocol values.
    pub ok: u64,
    /// Error responses.
    pub errors: u64,
    /// Other statuses (`EOPNOTSUPP`, `NULL`).
    pub other: u64,
    /// Frames that reached the host side of the link (netback).
    pub frames_out: u64,
    /// The backend's counters at the end.
    pub stats: serde_json::Value,
}

/// The frontend's pages that the steps name: one granted for writing, one granted
/// read-only, one granted to another domain, one never granted, and a page of
/// indirect descriptors (or netback's second data page).
struct Pages {
    front: LoopFront,
    good: (GrantRef, Window),
    read_only: (GrantRef, Window),
    foreign: (GrantRef, Window),
    ungranted: Window,
    extra: (GrantRef, Window),
    /// A grant that was made and then ended.
    revoked: GrantRef,
}

impl Pages {
    fn new(lb: &Arc<Loopback>) -> Self {
        let mut front = lb.front();
        let mut page = |fill: u8, to: Option<(u16, bool)>| {
            let (pfn, win) = front.alloc_pages(1).expect("page");
            win.write_bytes(0, &[fill; PAGE_SIZE]);
            let gref = to.map(|(dom, ro)| front.grant(dom, pfn, ro).expect("grant"));
            (gref.unwrap_or(0), win)
        };
        let good = page(0x11, Some((0, false)));
        let read_only = page(CANARY, Some((0, true)));
        let foreign = page(CANARY, Some((7, false)));
        let (_, ungranted) = page(CANARY, None);
        let extra = page(0x22, Some((0, true)));
        let (gone, _) = page(0x33, Some((0, false)));
        front.end_grant(gone).expect("end grant");
        // The freed reference goes to the next grant: make that one to another domain
        // (revoked from domain 0 and reused elsewhere, as a guest does), so that a
        // later ring or buffer grant cannot take the number and the attacks that name
        // it stay attacks.
        let (pfn, win) = front.alloc_pages(1).expect("page");
        win.write_bytes(0, &[CANARY; PAGE_SIZE]);
        let _regranted = front.grant(7, pfn, true).expect("grant");
        Self {
            front,
            good,
            read_only,
            foreign,
            ungranted,
            extra,
            revoked: gone,
        }
    }

    /// A grant reference a hostile frontend might name.
    fn gref(&self, b: &mut Bytes<'_>, ring: &[GrantRef]) -> GrantRef {
        match b.u8() % 16 {
            0..=9 => self.good.0,
            10 => self.read_only.0,
            11 => self.foreign.0,
            12 => self.revoked,
            13 => ring.first().copied().unwrap_or(0),
            14 => self.extra.0,
            _ => [0, 1900, 4095, u32::MAX, b.u32()][usize::from(b.u8() % 5)],
        }
    }

    /// Panics if the backend wrote a page it had no writable grant for.
    fn check_canaries(&self) {
        for (what, win) in [
            ("read-only", &self.read_only.1),
            ("foreign", &self.foreign.1),
            ("never granted", &self.ungranted),
        ] {
            let mut buf = [0u8; PAGE_SIZE];
            win.read_bytes(0, &mut buf);
            // One `memcmp`: this runs after every step.
            assert!(
                buf == [CANARY; PAGE_SIZE],
                "the backend wrote the {what} page"
            );
        }
    }

    /// Every grant the frontend made, for the final "nothing pinned" check.
    fn grants(&self) -> [GrantRef; 5] {
        [
            self.good.0,
            self.read_only.0,
            self.foreign.0,
            self.extra.0,
            self.revoked,
        ]
    }
}

/// The frontend domain (`ram_pages` pages of RAM) and domain 0, as
/// `Loopback::new(DOMID, "fuzz", ram_pages)` builds them, the daemon a clone of one
/// built once ([`super::fresh_xenstored`]).
fn loopback(ram_pages: usize) -> Arc<Loopback> {
    let store = super::fresh_xenstored(&Quotas::default(), &[(DOMID, DomainConfig::named("fuzz"))]);
    Loopback::with_daemon(DOMID, store, ram_pages).expect("loopback")
}

/// Panics if any of `grefs` is still pinned by a backend.
fn check_unpinned(lb: &Loopback, grefs: &[GrantRef]) {
    for &g in grefs {
        if let Some((r, w)) = lb.pins(g) {
            assert_eq!((r, w), (0, 0), "grant {g} still pinned after shutdown");
        }
    }
}

/// Writes the frontend's `name` node (as dom0: permissions are not what is fuzzed).
fn front_write(lb: &Loopback, paths: &DevicePaths, name: &str, value: &str) {
    let path = paths.front(name);
    let _ = lb.with_store(|xs| xs.dom0().write(None, &path, value.as_bytes()));
}

/// A state value for the frontend's `state` node: mostly real, sometimes garbage.
fn front_state(b: &mut Bytes<'_>) -> &'static str {
    ["1", "2", "3", "4", "5", "6", "0", "", "x", "99999999999"][usize::from(b.u8() % 10)]
}

/// Writes `len` fuzz bytes over `mem` at a fuzz-chosen offset.
fn scribble(b: &mut Bytes<'_>, mem: &impl SharedMemory) {
    let len = usize::from(b.u8() % 32) + 1;
    let at = usize::from(b.u16()) % mem.len().saturating_sub(len).max(1);
    let data = b.take(len).to_vec();
    mem.write_bytes(at, &data);
}

// ---- blkback -------------------------------------------------------------------------

/// Fuzzes blkback with a hostile frontend over a 64-sector in-memory disk image (read-only
/// or not, features from the input). See the module documentation for what is checked.
pub fn fuzz_blkback(data: &[u8]) -> BackendRun {
    let mut b = Bytes::new(data);
    let size = DISK_SECTORS * SECTOR_SIZE;
    let image = super::fuzz_devices::MemImage::new(size);
    let disk = DiskImage::open(
        image.path(),
        DiskOptions {
            read_only: b.u8().is_multiple_of(4),
            ..Default::default()
        },
    )
    .expect("image");
    let f = b.u8();
    let opts = BlkbackOptions {
        max_indirect_segments: [0, 8, 256][usize::from(f % 3)],
        max_ring_page_order: u32::from(f >> 2 & 3),
        persistent: f & 0x10 != 0,
        flush: f & 0x20 == 0,
        barrier: f & 0x40 == 0,
    };
    let lb = loopback(RAM_PAGES);
    let kick = Kick::new();
    let mut back = Blkback::new(lb.back(), kick, 51712, disk, opts).expect("blkback");
    let paths = back.paths().clone();
    let mut pages = Pages::new(&lb);
    let mut run = BackendRun::default();
    let mut ring: Option<BlkifFrontRing<Window>> = None;
    let mut ring_refs: Vec<GrantRef> = Vec::new();
    let mut all_grants: Vec<GrantRef> = pages.grants().to_vec();
    let mut corrupted = false;
    let mut descriptors_name_ring = false;
    let mut next_id = 0u64;

    while run.steps < MAX_STEPS && !b.is_empty() {
        run.steps += 1;
        let mut reasons = Kick::EVENT;
        // The first step is always a handshake, so that most inputs reach the rings.
        let op = if run.steps == 1 { 0 } else { b.u8() % 48 };
        match op {
            // A handshake: a fresh ring (sometimes of a refused order), keys good or
            // bad, then the state.
            0 => {
                let order = match b.u8() % 8 {
                    0 => 1 + u32::from(b.u8() % 3),
                    _ => 0,
                };
                let (pfn, mem) = match pages.front.alloc_pages(1 << order) {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                ring = BlkifFrontRing::new(mem).ok();
                corrupted = false;
                ring_refs = (0..1u64 << order)
                    .filter_map(|i| pages.front.grant(0, pfn + i, b.u8().is_multiple_of(8)).ok())
                    .collect();
                all_grants.extend(&ring_refs);
                if ring_refs.is_empty() {
                    continue;
                }
                if b.u8().is_multiple_of(8) {
                    ring_refs[0] = pages.gref(&mut b, &[]);
                }
                if order == 0 && b.flag() {
                    front_write(&lb, &paths, "ring-ref", &ring_refs[0].to_string());
                } else {
                    front_write(&lb, &paths, "ring-page-order", &order.to_string());
                    for (i, g) in ring_refs.iter().enumerate() {
                        front_write(&lb, &paths, &format!("ring-ref{i}"), &g.to_string());
                    }
                }
                let port = match b.u8() % 8 {
                    0 => b.u32().to_string(),
                    1 => "port".into(),
                    _ => pages.front.alloc_unbound(0).map_or(0, |p| p).to_string(),
                };
                front_write(&lb, &paths, "event-channel", &port);
                let protocol = match b.u8() % 16 {
                    0 => "x86_32-abi",
                    1 => "",
                    2 => "x86_64-abi\0x",
                    _ => "x86_64-abi",
                };
                front_write(&lb, &paths, "protocol", protocol);
                let persistent = match b.u8() % 8 {
                    0 => front_state(&mut b),
                    1 => "0",
                    _ => "1",
                };
                front_write(&lb, &paths, "feature-persistent", persistent);
                front_write(
                    &lb,
                    &paths,
                    "state",
                    if b.u8().is_multiple_of(8) { "4" } else { "3" },
                );
                reasons |= Kick::XENBUS;
            }
            // State flips: closing, closed, starting over, garbage.
            1 => {
                front_write(&lb, &paths, "state", front_state(&mut b));
                reasons = Kick::XENBUS;
            }
            // Raw bytes over the ring, or a producer index that lies.
            2 => {
                if let Some(r) = &ring {
                    if b.flag() {
                        scribble(&mut b, r.memory());
                    } else {
                        r.memory().store_u32(
                            SRING_REQ_PROD,
                            b.u32(),
                            std::sync::atomic::Ordering::SeqCst,
                        );
                    }
                    corrupted = true;
                }
            }
            // Descriptors for indirect requests, in the read-only extra page.
            3 => {
                let n = usize::from(b.u8()) % BLKIF_SEGMENTS_PER_INDIRECT_PAGE;
                for i in 0..n.min(16) {
                    let seg = BlkifRequestSegment::new(
                        pages.gref(&mut b, &ring_refs),
                        b.u8() % 10,
                        b.u8() % 10,
                    );
                    pages.extra.1.write_bytes(i * 8, &seg.to_bytes());
                    // A read into the ring's own page corrupts it: the frontend's doing.
                    descriptors_name_ring |= ring_refs.contains(&seg.gref);
                }
            }
            // A request (several in a row now and then).
            _ => {
                let Some(r) = ring.as_mut() else { continue };
                for _ in 0..1 + usize::from(b.u8() % 4) {
                    next_id += 1;
                    let req = blk_request(&mut b, &pages, &ring_refs, next_id);
                    corrupted |= if req.operation == BLKIF_OP_INDIRECT {
                        descriptors_name_ring
                    } else {
                        let n = usize::from(req.nr_segments).min(req.seg.len());
                        req.seg[..n].iter().any(|s| ring_refs.contains(&s.gref))
                    };
                    if r.push_request(&req).is_err() {
                        break;
                    }
                }
                r.push_requests_and_check_notify();
            }
        }
        back.run_once(reasons);
        if back.stats_handle().lock().map(|s| s.connects).unwrap_or(0) > 0 {
            run.connected += 1;
        }
        // The frontend reads what came back; a ring it corrupted itself may hold
        // anything, so statuses are checked only on an intact one.
        if let Some(r) = ring.as_mut() {
            while let Ok(Some(rsp)) = r.take_response() {
                match rsp.status {
                    BLKIF_RSP_OKAY => run.ok += 1,
                    BLKIF_RSP_ERROR => run.errors += 1,
                    BLKIF_RSP_EOPNOTSUPP => run.other += 1,
                    s => assert!(corrupted, "blkback answered status {s}"),
                }
            }
        }
        pages.check_canaries();
        assert_eq!(image.len(), size, "the disk image changed size");
    }
    run.stats = back.stats();
    back.shutdown();
    drop(back);
    check_unpinned(&lb, &all_grants);
    run
}

/// A blkif request from the pools: real and bogus operations, segment counts, ranges
/// and sectors, and grants of every kind.
fn blk_request(b: &mut Bytes<'_>, pages: &Pages, ring: &[GrantRef], id: u64) -> BlkifRequest {
    let ops = [
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_INDIRECT,
        BLKIF_OP_DISCARD,
    ];
    let k = b.u8();
    let operation = if k & 0xf0 == 0xf0 {
        b.u8()
    } else {
        ops[usize::from(k % 8)]
    };
    let sector = match b.u8() % 8 {
        0..=4 => u64::from(b.u8()) % DISK_SECTORS,
        5 => DISK_SECTORS - 1 - u64::from(b.u8() % 8),
        6 => DISK_SECTORS + u64::from(b.u8() % 4),
        _ => b.u64(),
    };
    if operation == BLKIF_OP_INDIRECT {
        let mut ind = BlkifRequestIndirect {
            operation,
            indirect_op: [
                BLKIF_OP_READ,
                BLKIF_OP_WRITE,
                BLKIF_OP_FLUSH_DISKCACHE,
                b.u8(),
            ][usize::from(b.u8() % 4)],
            nr_segments: match b.u8() % 4 {
                0 => 0,
                1 => b.u16(),
                _ => u16::from(b.u8() % 17),
            },
            id,
            sector_number: sector,
            ..Default::default()
        };
        for g in ind.indirect_grefs.iter_mut().take(usize::from(b.u8() % 3)) {
            *g = if b.u8().is_multiple_of(4) {
                pages.gref(b, ring)
            } else {
                pages.extra.0
            };
        }
        return BlkifRequest::from_indirect(&ind);
    }
    let mut req = BlkifRequest {
        operation,
        id,
        sector_number: sector,
        ..Default::default()
    };
    let n = match b.u8() % 16 {
        0 => 0,
        1 => b.u8(),
        2..=5 => 1 + b.u8() % 11,
        _ => 1 + b.u8() % 2,
    };
    req.nr_segments = n;
    for s in req.seg.iter_mut().take(usize::from(n)) {
        let (first, last) = if b.u8().is_multiple_of(8) {
            (b.u8() % 10, b.u8() % 10)
        } else {
            let first = b.u8() % 8;
            (first, first + b.u8() % (8 - first))
        };
        *s = BlkifRequestSegment::new(pages.gref(b, ring), first, last);
    }
    req
}

// ---- netback -------------------------------------------------------------------------

/// Fuzzes netback with a hostile frontend and frames from the host, over an in-memory
/// link. See the module documentation for what is checked.
pub fn fuzz_netback(data: &[u8]) -> BackendRun {
    let mut b = Bytes::new(data);
    let lb = loopback(RAM_PAGES);
    let (guest_end, host) = MemLink::pair(8);
    let mut host = host;
    let kick = Kick::new();
    let mut config = NetbackConfig::new(0, [0x02, 0x16, 0x3e, 0, 9, 0]);
    config.split_event_channels = b.flag();
    let max_frame = config.max_tx_frame;
    let mut back = Netback::new(lb.back(), guest_end, kick, config);
    let paths = back.paths().clone();
    let mut pages = Pages::new(&lb);
    let mut run = BackendRun::default();
    let mut tx: Option<NetifTxFrontRing<Window>> = None;
    let mut rx: Option<NetifRxFrontRing<Window>> = None;
    let mut ring_refs: Vec<GrantRef> = Vec::new();
    let mut all_grants: Vec<GrantRef> = pages.grants().to_vec();
    let mut corrupted = false;
    let mut next_id = 0u16;
    // The first wake-up creates the device's nodes.
    back.run_once(0);

    while run.steps < MAX_STEPS && !b.is_empty() {
        run.steps += 1;
        let mut reasons = Kick::EVENT;
        // The first step is always a handshake, so that most inputs reach the rings.
        let op = if run.steps == 1 { 0 } else { b.u8() % 48 };
        match op {
            // A handshake: two rings, keys good or bad, then the state. Mostly the
            // frontend starts over first (`Closed`, `Initialising`), as it must after
            // a fatal error has left the backend `Closing`.
            0 => {
                if !b.u8().is_multiple_of(4) {
                    for state in ["6", "1"] {
                        front_write(&lb, &paths, "state", state);
                        back.run_once(Kick::XENBUS);
                    }
                }
                let mut ring_page = |b: &mut Bytes<'_>| {
                    let (pfn, mem) = pages.front.alloc_pages(1).ok()?;
                    let g = if b.u8().is_multiple_of(8) {
                        pages.gref(b, &[])
                    } else {
                        pages.front.grant(0, pfn, b.u8().is_multiple_of(8)).ok()?
                    };
                    Some((g, mem))
                };
                let (Some((tg, tm)), Some((rg, rm))) = (ring_page(&mut b), ring_page(&mut b))
                else {
                    continue;
                };
                tx = NetifTxFrontRing::new(tm).ok();
                rx = NetifRxFrontRing::new(rm).ok();
                corrupted = false;
                ring_refs = vec![tg, rg];
                all_grants.extend(&ring_refs);
                front_write(&lb, &paths, "tx-ring-ref", &tg.to_string());
                front_write(&lb, &paths, "rx-ring-ref", &rg.to_string());
                let mut port = |b: &mut Bytes<'_>| match b.u8() % 8 {
                    0 => b.u32().to_string(),
                    1 => "-1".into(),
                    _ => pages.front.alloc_unbound(0).map_or(0, |p| p).to_string(),
                };
                if b.flag() {
                    let (t, r) = (port(&mut b), port(&mut b));
                    front_write(&lb, &paths, "event-channel-tx", &t);
                    front_write(&lb, &paths, "event-channel-rx", &r);
                } else {
                    let p = port(&mut b);
                    front_write(&lb, &paths, "event-channel", &p);
                }
                for key in [
                    "request-rx-copy",
                    "feature-sg",
                    "feature-rx-notify",
                    "feature-no-csum-offload",
                    "multi-queue-num-queues",
                ] {
                    let v = match b.u8() % 8 {
                        0 => front_state(&mut b),
                        1 => "0",
                        _ => "1",
                    };
                    if key != "multi-queue-num-queues" || b.u8().is_multiple_of(4) {
                        front_write(&lb, &paths, key, v);
                    }
                }
                front_write(
                    &lb,
                    &paths,
                    "state",
                    if b.u8().is_multiple_of(8) { "4" } else { "3" },
                );
                reasons |= Kick::XENBUS;
            }
            1 => {
                front_write(&lb, &paths, "state", front_state(&mut b));
                reasons = Kick::XENBUS;
            }
            2 => {
                let mem = if b.flag() {
                    tx.as_ref().map(|r| r.memory().clone())
                } else {
                    rx.as_ref().map(|r| r.memory().clone())
                };
                if let Some(mem) = mem {
                    if b.flag() {
                        scribble(&mut b, &mem);
                    } else {
                        mem.store_u32(SRING_REQ_PROD, b.u32(), std::sync::atomic::Ordering::SeqCst);
                    }
                    corrupted = true;
                }
            }
            // Frames from the host, of every size (some larger than a page).
            3..=10 => {
                let len = match b.u8() % 4 {
                    0 => usize::from(b.u8() % 20),
                    1 => usize::from(b.u16()) % 9000,
                    _ => 60 + usize::from(b.u8()) * 4,
                };
                let mut frame = vec![0u8; len];
                for (i, x) in frame.iter_mut().enumerate() {
                    *x = i as u8;
                }
                let _ = host.send_frame(&frame);
                reasons |= LINK;
            }
            // Receive buffers.
            11..=20 => {
                let Some(r) = rx.as_mut() else { continue };
                for _ in 0..1 + usize::from(b.u8() % 8) {
                    next_id = next_id.wrapping_add(1);
                    let req = NetifRxRequest {
                        id: if b.u8().is_multiple_of(8) {
                            b.u16()
                        } else {
                            next_id
                        },
                        pad: 0,
                        gref: pages.gref(&mut b, &ring_refs),
                    };
                    // A buffer in a ring's own page: the frontend corrupts its ring.
                    corrupted |= ring_refs.contains(&req.gref);
                    if r.push_request(&req).is_err() {
                        break;
                    }
                }
                r.push_requests_and_check_notify();
            }
            // A transmitted frame: a first slot, extras, fragments.
            _ => {
                let Some(r) = tx.as_mut() else { continue };
                let slots = match b.u8() % 8 {
                    0 => 1 + usize::from(b.u8() % 24),
                    1 | 2 => 1 + usize::from(b.u8() % 3),
                    _ => 1,
                };
                for i in 0..slots {
                    next_id = next_id.wrapping_add(1);
                    let more = i + 1 < slots;
                    let mut flags = if more { NETTXF_MORE_DATA } else { 0 };
                    let k = b.u8();
                    match k % 32 {
                        1..=4 => flags |= NETTXF_CSUM_BLANK,
                        5 | 6 if i == 0 => flags |= NETTXF_EXTRA_INFO,
                        7 => flags = b.u16(),
                        _ => {}
                    }
                    // Sizes and offsets that cross the page end the connection, so
                    // they are rarer than the other faults.
                    let size = match b.u8() % 16 {
                        0 => b.u16(),
                        1..=3 => u16::from(b.u8() % 14),
                        _ => 14 + u16::from(b.u8()) * 4,
                    };
                    let offset = match b.u8() % 16 {
                        0 => b.u16(),
                        _ => u16::from(b.u8()),
                    };
                    let req = NetifTxRequest {
                        gref: pages.gref(&mut b, &ring_refs),
                        offset,
                        flags,
                        id: next_id,
                        size,
                    };
                    if r.push_request(&req).is_err() {
                        break;
                    }
                    // The extras a first slot asks for: mostly well-formed ones (types
                    // 0 and 5 and up end the connection), sometimes none, so that the
                    // next request is read as one.
                    let mut due = i == 0 && flags & NETTXF_EXTRA_INFO != 0;
                    while due && !b.u8().is_multiple_of(4) {
                        let type_ = b.u8() % (XEN_NETIF_EXTRA_TYPE_MAX + 1);
                        due = b.u8().is_multiple_of(4);
                        let more = if due { XEN_NETIF_EXTRA_FLAG_MORE } else { 0 };
                        let extra = NetifExtraInfo::mcast(type_, [1, 0, 0x5e, 0, 0, 1], more);
                        if r.push_request(&extra.to_tx_request()).is_err() {
                            break;
                        }
                    }
                }
                r.push_requests_and_check_notify();
            }
        }
        back.run_once(reasons);
        if back.counters().connects > 0 {
            run.connected += 1;
        }
        if let Some(r) = tx.as_mut() {
            while let Ok(Some(rsp)) = r.take_response() {
                match rsp.status {
                    NETIF_RSP_OKAY => run.ok += 1,
                    NETIF_RSP_ERROR => run.errors += 1,
                    NETIF_RSP_NULL => run.other += 1,
                    s => assert!(corrupted, "netback answered transmit status {s}"),
                }
            }
        }
        if let Some(r) = rx.as_mut() {
            while let Ok(Some(rsp)) = r.take_response() {
                match rsp.status {
                    s if s > 0 => run.ok += 1,
                    NETIF_RSP_ERROR => run.errors += 1,
                    s => assert!(
                        corrupted || s == NETIF_RSP_NULL || s == 0,
                        "netback answered receive status {s}"
                    ),
                }
                if rsp.status > 0 && !corrupted {
                    assert!(
                        usize::from(rsp.offset) + rsp.status as usize <= PAGE_SIZE,
                        "a receive response beyond its page: {rsp:?}"
                    );
                }
            }
        }
        while let Some(f) = host.recv_timeout(std::time::Duration::ZERO) {
            assert!(
                (14..=max_frame).contains(&f.len()),
                "netback sent a {}-byte frame",
                f.len()
            );
            run.frames_out += 1;
        }
        pages.check_canaries();
    }
    run.stats = back.stats();
    back.shutdown();
    drop(back);
    check_unpinned(&lb, &all_grants);
    run
}

// ---- blkfront against a lying backend ----------------------------------------------

/// What a [`fuzz_blkfront`] run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrontRun {
    /// Requests the frontend accepted.
    pub submitted: u64,
    /// Completions it delivered (each for a request it accepted, each once).
    pub completed: u64,
    /// Honest answers the backend gave (reads with data the frontend then returned).
    pub honest: u64,
    /// Lies the backend told: a wrong, duplicate or stale id, a wrong operation, a
    /// status outside the protocol, a response producer ahead of the requests, bytes
    /// over the ring, a state flip.
    pub lies: u64,
    /// Protocol violations the frontend detected and counted (it stops at the first).
    pub violations: u64,
    /// Whether the frontend was still connected at the end.
    pub connected: bool,
}

/// Fuzzes blkfront (the guest's PV block driver, `pv_drivers::blkfront`) against a
/// backend played by the input: xenstore nodes with good and bad geometry and
/// features, then requests answered honestly (read data copied into the granted
/// pages, which the frontend must return exactly) or with lies. Checks after every
/// poll that each completion belongs to an accepted request and arrives once, that an
/// honest read returns the backend's bytes, and that after a violation the device is
/// disconnected with nothing in flight; a panic anywhere is a crash.
pub fn fuzz_blkfront(data: &[u8]) -> FrontRun {
    use pv_drivers::abi::blkif::BlkifResponse;
    use pv_drivers::blkfront::{Blkfront, BlkfrontConfig};
    use pv_drivers::device::{BlockCompletion, BlockDevice, BlockOp};
    use pv_drivers::ring::{BlkifBackRing, SRING_RSP_PROD};
    use std::collections::HashMap;

    use crate::backends::{BackendEnv, create_device};

    let mut b = Bytes::new(data);
    let mut run = FrontRun::default();
    let lb = loopback(96);
    let paths = DevicePaths::new("vbd", DOMID, 768);
    let sectors = match b.u8() % 8 {
        0 => b.u64().to_string(),
        1 => "0".to_string(),
        2 => "x".to_string(),
        _ => "2048".to_string(),
    };
    let f = b.u8();
    let back = [
        ("sectors", sectors),
        (
            "sector-size",
            if f & 7 == 0 { "4096" } else { "512" }.to_string(),
        ),
        ("info", u32::from(f >> 3 & 1).to_string()),
        ("feature-flush-cache", u8::from(f & 0x10 != 0).to_string()),
        ("feature-persistent", u8::from(f & 0x20 != 0).to_string()),
        (
            "feature-max-indirect-segments",
            ["0", "32", "4294967295", "-1"][usize::from(f >> 6)].to_string(),
        ),
        ("max-ring-page-order", (b.u8() % 4).to_string()),
        ("state", "4".to_string()),
    ];
    if lb
        .with_store(|xs| create_device(xs, DOMID, &paths, &[], &back))
        .is_err()
    {
        return run;
    }
    let Ok(mut xs) = lb.xenstore() else {
        return run;
    };
    let config = BlkfrontConfig {
        persistent: b.flag(),
        max_queue_depth: 1 + u32::from(b.u8() % 16),
        max_pool_pages: 64,
        max_wait_events: 4,
        ..Default::default()
    };
    // A backend that offers nonsense is refused at connect: that is a pass.
    let Ok(mut dev) = Blkfront::connect(lb.front(), &mut xs, "768", config) else {
        return run;
    };
    let read = |name: &str| -> Option<u32> {
        let v = lb.with_store(|xs| xs.dom0().read(None, &paths.front(name)).ok())?;
        std::str::from_utf8(&v).ok()?.parse().ok()
    };
    let refs: Vec<GrantRef> = match read("ring-page-order") {
        None | Some(0) => read("ring-ref").into_iter().collect(),
        Some(o) => (0..1u32 << o.min(4))
            .filter_map(|i| read(&format!("ring-ref{i}")))
            .collect(),
    };
    let backend = lb.back();
    let Ok(map) = backend.map_grants(&refs, true) else {
        return run;
    };
    let Ok(mut ring) = BlkifBackRing::attach(map) else {
        return run;
    };
    let info = dev.info();
    // tag -> (op, sector count); and the bytes an honest read delivered.
    let mut pending: HashMap<u64, (BlockOp, u32)> = HashMap::new();
    // The bytes honest read answers put in the granted pages.
    let mut fills: Vec<u8> = Vec::new();
    // Requests the backend has taken and not answered yet.
    let mut taken: Vec<pv_drivers::abi::blkif::BlkifRequest> = Vec::new();
    let mut answered_ids: Vec<u64> = Vec::new();
    let mut steps = 0;
    while steps < MAX_STEPS && !b.is_empty() {
        steps += 1;
        match b.u8() % 8 {
            // The guest submits requests.
            0..=2 => {
                for _ in 0..1 + b.u8() % 4 {
                    let op =
                        [BlockOp::Read, BlockOp::Write, BlockOp::Flush][usize::from(b.u8() % 3)];
                    let count = if op == BlockOp::Flush {
                        0
                    } else {
                        1 + u32::from(b.u8() % 16)
                    };
                    let sector = u64::from(b.u16()) % info.sectors.max(1);
                    let data = vec![0x5a; count as usize * info.sector_size as usize];
                    let payload = if op == BlockOp::Write { &data[..] } else { &[] };
                    if let Ok(tag) = dev.submit(op, sector, count, payload) {
                        assert!(
                            pending.insert(tag, (op, count)).is_none(),
                            "tag {tag} reused"
                        );
                        run.submitted += 1;
                    }
                }
                dev.kick();
            }
            // The backend answers what it took, honestly or not.
            3..=5 => {
                while let Ok(Some(req)) = ring.take_request() {
                    taken.push(req);
                }
                let n = usize::from(b.u8() % 4) + 1;
                for req in taken.drain(..n.min(taken.len())).collect::<Vec<_>>() {
                    let op = if req.operation == pv_drivers::abi::blkif::BLKIF_OP_INDIRECT {
                        req.as_indirect().indirect_op
                    } else {
                        req.operation
                    };
                    let lie = b.u8();
                    let rsp = match lie % 16 {
                        0 => BlkifResponse::new(req.id ^ (1 + u64::from(b.u8())), op, 0),
                        1 => BlkifResponse::new(req.id, op.wrapping_add(1), 0),
                        2 => BlkifResponse::new(req.id, op, b.u16() as i16),
                        3 => match answered_ids.last() {
                            Some(&old) => BlkifResponse::new(old, op, 0),
                            None => BlkifResponse::new(req.id, op, 0),
                        },
                        4 => BlkifResponse::new(req.id, op, -1),
                        _ => {
                            // Honest: a read gets its data in the granted segments,
                            // found in the request or in its indirect pages.
                            if op == pv_drivers::abi::blkif::BLKIF_OP_READ {
                                let fill = b.u8();
                                fills.push(fill);
                                let segs = request_segments(&backend, &req);
                                for s in &segs {
                                    let len =
                                        usize::from(s.last_sect.saturating_sub(s.first_sect) + 1)
                                            * 512;
                                    let _ = backend.copy_to_grant(
                                        s.gref,
                                        u16::from(s.first_sect) * 512,
                                        &vec![fill; len.min(4096)],
                                    );
                                }
                            }
                            run.honest += 1;
                            BlkifResponse::new(req.id, op, 0)
                        }
                    };
                    if lie % 16 < 4 {
                        run.lies += 1;
                    }
                    answered_ids.push(req.id);
                    if ring.push_response(&rsp).is_err() {
                        break;
                    }
                }
                ring.push_responses_and_check_notify();
            }
            // A response producer far ahead, or bytes over the ring.
            6 => {
                run.lies += 1;
                if b.flag() {
                    let prod = ring
                        .memory()
                        .load_u32(SRING_RSP_PROD, std::sync::atomic::Ordering::SeqCst);
                    ring.memory().store_u32(
                        SRING_RSP_PROD,
                        prod.wrapping_add(u32::from(b.u16()) + 1),
                        std::sync::atomic::Ordering::SeqCst,
                    );
                } else {
                    scribble(&mut b, ring.memory());
                }
            }
            // The backend's state flips.
            _ => {
                run.lies += 1;
                let path = paths.back("state");
                let v = front_state(&mut b);
                let _ = lb.with_store(|xs| xs.dom0().write(None, &path, v.as_bytes()));
                let _ = dev.on_xenbus_event(&mut xs);
            }
        }
        let mut done: Vec<BlockCompletion> = Vec::new();
        let result = dev.poll(&mut done);
        for c in &done {
            let Some((op, count)) = pending.remove(&c.tag) else {
                panic!("completion for tag {} not in flight", c.tag);
            };
            assert_eq!(c.op, op, "completion of the wrong operation");
            if c.result.is_ok() && op == BlockOp::Read {
                assert_eq!(
                    c.data.len(),
                    count as usize * info.sector_size as usize,
                    "read length"
                );
                // Before any lie, a successful read is an honest answer: the bytes
                // the backend put in the pages it was granted, and nothing else.
                if run.lies == 0 && !c.data.is_empty() {
                    let first = c.data[0];
                    assert!(
                        fills.contains(&first) && c.data.iter().all(|&x| x == first),
                        "a read returned bytes the backend did not write"
                    );
                }
            }
            run.completed += 1;
        }
        if result.is_err() || !dev.is_connected() {
            // A stopped device holds nothing in flight, and its pending requests
            // were all failed.
            if dev.violation().is_some() {
                assert_eq!(dev.in_flight(), 0, "in flight after a violation");
                assert!(
                    pending.is_empty(),
                    "requests lost at a violation: {pending:?}"
                );
            }
        }
        assert!(dev.in_flight() as usize <= pending.len());
    }
    run.violations = dev.stats().violations;
    run.connected = dev.is_connected();
    run
}

/// The segments of a blkif request as a backend reads them: in the request, or in its
/// indirect pages (fetched by grant copy; unreadable pages give none).
fn request_segments(
    backend: &impl crate::backends::BackendEnv,
    req: &pv_drivers::abi::blkif::BlkifRequest,
) -> Vec<BlkifRequestSegment> {
    if req.operation != BLKIF_OP_INDIRECT {
        let n = usize::from(req.nr_segments).min(req.seg.len());
        return req.seg[..n].to_vec();
    }
    let ind = req.as_indirect();
    let n = usize::from(ind.nr_segments);
    let mut segs = Vec::with_capacity(n);
    for (p, &gref) in ind
        .indirect_grefs
        .iter()
        .enumerate()
        .take(BlkifRequestIndirect::pages_for(ind.nr_segments))
    {
        let mut page = vec![0u8; PAGE_SIZE];
        if backend.copy_from_grant(gref, 0, &mut page).is_err() {
            break;
        }
        let here = (n - p * BLKIF_SEGMENTS_PER_INDIRECT_PAGE).min(BLKIF_SEGMENTS_PER_INDIRECT_PAGE);
        segs.extend(
            page.chunks_exact(8)
                .take(here)
                .filter_map(BlkifRequestSegment::from_prefix),
        );
    }
    segs
}

// ---- netfront against a lying backend ----------------------------------------------

/// Fuzzes netfront (the guest's PV network driver, `pv_drivers::netfront`) against a
/// backend played by the input: xenstore nodes with good and bad MACs and features,
/// then transmit responses and received frames given honestly (the frame copied into
/// the posted buffer) or with lies (wrong and duplicate ids, statuses outside the
/// protocol, offsets and lengths beyond the page, endless `more_data` chains, blank
/// checksums on frames that have none, response producers ahead, ring scribbles,
/// state flips). Checks that every frame the guest receives fits its maximum and that,
/// while the backend has told no lie, the guest receives exactly the frames it was
/// given, in order; a panic anywhere is a crash.
pub fn fuzz_netfront(data: &[u8]) -> FrontRun {
    use pv_drivers::abi::netif::{NETRXF_CSUM_BLANK, NETRXF_MORE_DATA, NetifTxResponse};
    use pv_drivers::device::NetDevice;
    use pv_drivers::netfront::{Netfront, NetfrontConfig};
    use pv_drivers::ring::{NetifRxBackRing, NetifTxBackRing, SRING_RSP_PROD};
    use std::collections::VecDeque;

    use crate::backends::{BackendEnv, create_device};

    let mut b = Bytes::new(data);
    let mut run = FrontRun::default();
    let lb = loopback(160);
    let paths = DevicePaths::new("vif", DOMID, 0);
    let f = b.u8();
    let back = [
        (
            "mac",
            if f & 7 == 0 {
                "00:16:3e:zz:00:01"
            } else {
                "00:16:3e:00:00:01"
            }
            .to_string(),
        ),
        ("feature-rx-copy", u8::from(f & 0x38 != 0).to_string()),
        ("feature-sg", u8::from(f & 0x40 != 0).to_string()),
        (
            "feature-split-event-channels",
            u8::from(f & 0x80 != 0).to_string(),
        ),
        ("state", "4".to_string()),
    ];
    if lb
        .with_store(|xs| create_device(xs, DOMID, &paths, &[], &back))
        .is_err()
    {
        return run;
    }
    let Ok(mut xs) = lb.xenstore() else {
        return run;
    };
    let max_frame = [1514, 9014, 65535][usize::from(b.u8() % 3)];
    let config = NetfrontConfig {
        tx_buffers: 1 + u16::from(b.u8() % 32),
        rx_buffers: 1 + u16::from(b.u8() % 32),
        max_frame,
        max_state_events: 4,
        ..NetfrontConfig::default()
    };
    let Ok(mut nf) = Netfront::connect(lb.front(), &mut xs, "0", config) else {
        return run;
    };
    let max_frame = nf.info().max_frame;
    let read = |name: &str| -> Option<u32> {
        let v = lb.with_store(|xs| xs.dom0().read(None, &paths.front(name)).ok())?;
        std::str::from_utf8(&v).ok()?.parse().ok()
    };
    let backend = lb.back();
    let (Some(txr), Some(rxr)) = (read("tx-ring-ref"), read("rx-ring-ref")) else {
        return run;
    };
    let (Ok(tm), Ok(rm)) = (
        backend.map_grants(&[txr], true),
        backend.map_grants(&[rxr], true),
    ) else {
        return run;
    };
    let (Ok(mut tx), Ok(mut rx)) = (NetifTxBackRing::attach(tm), NetifRxBackRing::attach(rm))
    else {
        return run;
    };
    // Frames the backend delivered honestly, in order, while it had not lied.
    let mut delivered: VecDeque<Vec<u8>> = VecDeque::new();
    let mut steps = 0;
    while steps < MAX_STEPS && !b.is_empty() {
        steps += 1;
        match b.u8() % 8 {
            // The guest transmits.
            0 | 1 => {
                for _ in 0..1 + b.u8() % 4 {
                    let len = 14 + usize::from(b.u16()) % 2000;
                    let fill = b.u8();
                    if nf.transmit(len, &mut |buf| buf.fill(fill)).is_ok() {
                        run.submitted += 1;
                    }
                }
                nf.kick();
            }
            // The backend answers transmits.
            2 => {
                while let Ok(Some(req)) = tx.take_request() {
                    let lie = b.u8() % 16;
                    let rsp = match lie {
                        0 => NetifTxResponse {
                            id: req.id ^ (1 + u16::from(b.u8())),
                            status: 0,
                        },
                        1 => NetifTxResponse {
                            id: req.id,
                            status: b.u16() as i16,
                        },
                        _ => NetifTxResponse {
                            id: req.id,
                            status: 0,
                        },
                    };
                    if lie < 2 {
                        run.lies += 1;
                    } else {
                        run.honest += 1;
                    }
                    if tx.push_response(&rsp).is_err() {
                        break;
                    }
                }
                tx.push_responses_and_check_notify();
            }
            // The backend delivers a frame into posted buffers.
            3..=5 => {
                let len = match b.u8() % 4 {
                    0 => 14 + usize::from(b.u16()) % 9000,
                    _ => 60 + usize::from(b.u8()) * 4,
                };
                let lie = b.u8() % 16;
                let mut frame = vec![0u8; len];
                let fill = b.u8();
                frame.fill(fill);
                frame[..6].fill(0xff);
                let mut off = 0;
                let mut chain = 0;
                let mut honest = lie >= 6;
                while off < len || (lie == 3 && chain < 40) {
                    let Ok(Some(req)) = rx.take_request() else {
                        // Not enough buffers: the frame is dropped unannounced.
                        honest = false;
                        break;
                    };
                    let n = (len - off.min(len)).min(PAGE_SIZE);
                    let _ =
                        backend.copy_to_grant(req.gref, 0, &frame[off.min(len)..off.min(len) + n]);
                    let more = off + n < len || (lie == 3 && chain + 1 < 40);
                    let mut rsp = pv_drivers::abi::netif::NetifRxResponse {
                        id: req.id,
                        offset: 0,
                        flags: if more { NETRXF_MORE_DATA } else { 0 },
                        status: n as i16,
                    };
                    match lie {
                        0 => rsp.id ^= 1 + u16::from(b.u8()),
                        1 => rsp.status = b.u16() as i16,
                        2 => rsp.offset = 4000 + u16::from(b.u8()),
                        4 => rsp.flags |= NETRXF_CSUM_BLANK,
                        5 => rsp.status = -1,
                        _ => {}
                    }
                    if rx.push_response(&rsp).is_err() {
                        honest = false;
                        break;
                    }
                    off += n.max(1);
                    chain += 1;
                }
                if lie < 6 {
                    run.lies += 1;
                } else if honest && len <= max_frame {
                    run.honest += 1;
                    delivered.push_back(frame);
                }
                if !honest || len > max_frame {
                    // From here on the expected stream is unknown.
                    run.lies += u64::from(lie >= 6);
                }
                rx.push_responses_and_check_notify();
            }
            // A response producer ahead, or bytes over a ring.
            6 => {
                run.lies += 1;
                let mem = if b.flag() { tx.memory() } else { rx.memory() };
                if b.flag() {
                    let prod = mem.load_u32(SRING_RSP_PROD, std::sync::atomic::Ordering::SeqCst);
                    mem.store_u32(
                        SRING_RSP_PROD,
                        prod.wrapping_add(u32::from(b.u16()) + 1),
                        std::sync::atomic::Ordering::SeqCst,
                    );
                } else {
                    scribble(&mut b, mem);
                }
            }
            // The backend's state flips.
            _ => {
                run.lies += 1;
                let path = paths.back("state");
                let v = front_state(&mut b);
                let _ = lb.with_store(|xs| xs.dom0().write(None, &path, v.as_bytes()));
            }
        }
        let _ = nf.poll();
        // A full receive queue drops frames by design: the stream is unknown after.
        let lied = run.lies > 0 || nf.stats().rx_errors.queue_overflow > 0;
        while let Ok(true) = nf.receive(&mut |frame: &[u8]| {
            assert!(frame.len() <= max_frame, "a {}-byte frame", frame.len());
            if !lied {
                let want = delivered.pop_front();
                assert_eq!(
                    want.as_deref(),
                    Some(frame),
                    "the guest received a frame the backend did not send"
                );
            }
            run.completed += 1;
        }) {}
    }
    run.violations = {
        let e = nf.stats().rx_errors;
        e.bad_id
            + e.bad_status
            + e.bad_offset
            + e.chain_too_long
            + e.bad_length
            + e.bad_extra
            + e.csum_failed
            + nf.stats().tx_bad_response
    };
    run.connected = nf.is_connected();
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// Seeded inputs through both bodies: they must reach past the handshake and get
    /// both good and error responses, or the fuzz target explores nothing.
    #[test]
    fn seeded_inputs_reach_the_request_paths() {
        let mut rng = Rng(0x5eed_b10c);
        let mut blk = BackendRun::default();
        let mut net = BackendRun::default();
        for _ in 0..300 {
            let input = rng.bytes(1200);
            let r = fuzz_blkback(&input);
            blk.connected += r.connected;
            blk.ok += r.ok;
            blk.errors += r.errors;
            blk.other += r.other;
            let r = fuzz_netback(&input);
            net.connected += r.connected;
            net.ok += r.ok;
            net.errors += r.errors;
            net.frames_out += r.frames_out;
            net.other += r.other;
        }
        assert!(blk.connected > 100, "{blk:?}");
        assert!(blk.ok > 50 && blk.errors > 50 && blk.other > 0, "{blk:?}");
        assert!(net.connected > 100, "{net:?}");
        assert!(
            net.ok > 50 && net.errors > 50 && net.frames_out > 50,
            "{net:?}"
        );
        assert!(net.other > 0, "{net:?}");
        eprintln!("blkback: {blk:?}\nnetback: {net:?}");
    }

    /// 300 seeded inputs through a lying-backend body, the runs added up.
    fn seeded_front(body: fn(&[u8]) -> FrontRun, seed: u64) -> FrontRun {
        let mut rng = Rng(seed);
        let mut sum = FrontRun::default();
        for _ in 0..300 {
            let r = body(&rng.bytes(600));
            sum.submitted += r.submitted;
            sum.completed += r.completed;
            sum.honest += r.honest;
            sum.lies += r.lies;
            sum.violations += r.violations;
        }
        sum
    }

    /// Seeded inputs against blkfront: the lying backend must get past the handshake,
    /// be answered honestly and caught lying, or the target explores nothing.
    #[test]
    fn seeded_lying_backends_reach_blkfront() {
        let sum = seeded_front(fuzz_blkfront, 0x11e5);
        eprintln!("blkfront: {sum:?}");
        assert!(sum.submitted > 500 && sum.completed > 300, "{sum:?}");
        assert!(
            sum.honest > 100 && sum.lies > 100 && sum.violations > 50,
            "{sum:?}"
        );
    }

    /// Seeded inputs against netfront, as for blkfront.
    #[test]
    fn seeded_lying_backends_reach_netfront() {
        let sum = seeded_front(fuzz_netfront, 0x7e7f);
        eprintln!("netfront: {sum:?}");
        assert!(sum.submitted > 500 && sum.completed > 100, "{sum:?}");
        assert!(
            sum.honest > 100 && sum.lies > 100 && sum.violations > 50,
            "{sum:?}"
        );
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for input in [&[][..], &[0], &[0, 0, 0, 0], &[0xff; 7]] {
            fuzz_blkback(input);
            fuzz_netback(input);
            fuzz_blkfront(input);
            fuzz_netfront(input);
        }
    }
}
