//! A PV NIC attacked from the guest (`xen/include/public/io/netif.h`; what is fatal and
//! what is only refused follows Linux's `drivers/net/xen-netback`, as the shim's
//! netback does). The connection is negotiated here over xenbus, not by netfront: a
//! transmit and a receive ring granted, one event channel, `request-rx-copy`,
//! `feature-sg`, `feature-rx-notify`. On it go requests no correct netfront sends:
//!
//! - **transmit, refused** (every data slot `NETIF_RSP_ERROR`, the ring still
//!   serving): sizes 0 and 13, references never granted, beyond the table and
//!   another domain's, a fragment never granted, fragments larger than the first slot
//!   announced (also 17 pages under a 65535-byte frame), a chain of 20 slots, a GSO
//!   extra though GSO is not offered, a blank checksum over an IPv4 header that
//!   claims 65535 bytes;
//! - **receive, refused** (`status` negative): buffers granted read-only, never
//!   granted, beyond the table, granted to another domain; canary pages show the
//!   backend wrote none of them;
//! - **fatal** (the backend closes the device, as Linux netback disables the vif):
//!   a transmit producer 1000 ahead (last on the first connection), then one per new
//!   connection: a first slot and a fragment crossing their page, extras of type
//!   none and beyond the last, an extra whose `MORE` flag runs into a request, a chain
//!   of 22 slots, a receive producer 1000 ahead;
//! - **xenbus** (the backend refuses to connect): a transmit ring never granted, a
//!   receive ring granted read-only, the xenstore's event channel, a ring reference
//!   that is not a number, no `request-rx-copy`, `multi-queue-num-queues` of 0, of 2
//!   (multi-queue is not offered) and not a number.
//!
//! Frames to receive come from the host: each good transmitted frame is an ARP request
//! for the host's address (`net.gw=`), which the host answers. A good frame every few
//! attacks, and an ARP reply received in a granted buffer before and after the receive
//! attacks, show the ring still works. The frontend starts over (`Closed`, then
//! `Initialising`) after each connection, and leaves the vif in `InitWait` for netfront
//! (the well-behaved NIC of `net.ip=`).
//!
//! Request ids are not attacked: a backend only echoes them (Linux's checks none), so
//! an id out of range or repeated is the frontend's own problem.
//!
//! Runs on the first vif, when the machine has one.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::sync::atomic::Ordering;

use guest_kernel::ioopts::IoOptions;
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::grant_table::GrantRef;
use pv_drivers::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest,
    NetifTxResponse, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4,
};
use pv_drivers::abi::xen::DomId;
use pv_drivers::frontend::FrontendEnv;
use pv_drivers::ring::{NetifRxFrontRing, NetifTxFrontRing};
use pv_drivers::shmem::{RawSharedMemory, SharedMemory};
use pv_drivers::xenbus::{self, Frontend, XenbusState};
use pv_drivers::xenstore::{TxId, XsError};

use super::super::pv::{self, GuestEnv, Woken};
use super::super::{memory, xen};
use super::{CANARY, Cat, NO_SUCH_DOMAIN, REPLY_NS, Tally, store_port, wait_for_event_until};
use crate::kprintln;

/// A reference far beyond any grant table.
const BEYOND: GrantRef = 1 << 30;
/// Where the ring producer of a runaway frontend points: well past a ring.
const RUNAWAY: u32 = 1000;
/// Receive attempts, each with a fresh ARP request, before the host's reply must have
/// come (other frames from the host may come first).
const ARP_TRIES: usize = 64;
/// Offsets in the transmit page: the ARP request, and a copy of its bytes from 20 on
/// (the second slot of a two-slot frame).
const ARP_AT: u16 = 0;
const ARP_TAIL_AT: u16 = 2048;
const ARP_LEN: u16 = 60;
const ARP_SPLIT: u16 = 20;

/// The frontend keys a connection writes.
const KEYS: [&str; 7] = [
    "multi-queue-num-queues",
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "feature-sg",
    "feature-rx-notify",
    "request-rx-copy",
];

/// The pages and references the attacks use, kept across connections.
struct Pages {
    tx_ring: &'static RawSharedMemory,
    tx_ring_ref: GrantRef,
    rx_ring: &'static RawSharedMemory,
    rx_ring_ref: GrantRef,
    /// The receive ring page again, read-only (a ring the backend cannot write).
    rx_ring_ro: GrantRef,
    /// The ARP request and, at `ARP_TAIL_AT`, its tail; granted read-only.
    tx: GrantRef,
    /// Fragments, and a frame whose IPv4 header lies; granted read-only.
    tx2: GrantRef,
    /// The good receive buffer, granted writable.
    rx: (RawSharedMemory, GrantRef),
    /// Canary pages: granted read-only, and granted to another domain.
    ro: (RawSharedMemory, GrantRef),
    foreign: (RawSharedMemory, GrantRef),
    /// A reference claimed but never granted.
    never: GrantRef,
    /// Every reference granted here, ended at the end.
    granted: Vec<GrantRef>,
}

/// One connection's rings and port.
struct Conn {
    tx: NetifTxFrontRing<&'static RawSharedMemory>,
    rx: NetifRxFrontRing<&'static RawSharedMemory>,
    port: u32,
}

/// The raw vif: its xenbus device, the environment, the current connection.
struct RawVif {
    dev: Frontend,
    env: GuestEnv,
    backend: DomId,
    conn: Option<Conn>,
    next_id: u16,
    /// Where the ARP requests come from and go to.
    mac: [u8; 6],
    ip: Ipv4Addr,
    host: Ipv4Addr,
}

/// The xenstore keys of one connection attempt (good ones unless an attack changes
/// one).
struct Keys {
    tx_ring_ref: String,
    rx_ring_ref: String,
    event_channel: Option<String>,
    rx_copy: bool,
    /// `multi-queue-num-queues`, if written.
    queues: Option<&'static str>,
}

pub(super) fn attacks(t: &mut Tally, io: &IoOptions<'_>) {
    let ids = pv::list_devices("vif");
    let Some(id) = ids.first() else {
        kprintln!("hostile: netif: no vif, skipped");
        return;
    };
    let Some(net) = io.net else {
        t.broken(
            "netif",
            "no net.ip=/net.gw=: the host must answer ARP for the receive attacks",
        );
        return;
    };
    let Some(host) = net.gw else {
        t.broken("netif", "no net.gw=: the host's address, which answers ARP");
        return;
    };
    kprintln!("hostile: netif: attacking vif {id} over raw rings");
    let mut v = match RawVif::open(id, net.ip, host) {
        Ok(v) => v,
        Err(e) => {
            t.broken("raw netif device", e);
            return;
        }
    };
    let p = match Pages::new(&mut v) {
        Ok(p) => p,
        Err(e) => {
            t.broken("netif pages", e);
            return;
        }
    };
    match v.connect(&p, &p.keys()) {
        Ok(XenbusState::Connected) => {
            first_connection(t, &mut v, &p);
        }
        Ok(s) => t.broken("raw netif connection", format_args!("backend went {s}")),
        Err(e) => t.broken("raw netif connection", e),
    }
    if let Err(e) = v.start_over() {
        t.broken("netif start over", e);
        return;
    }
    fatal_attacks(t, &mut v, &p);
    xenbus_attacks(t, &mut v, &p);
    canaries(t, &p);
    for g in &p.granted {
        let _ = v.env.end_grant(*g);
    }
    if let Err(e) = v.forget_keys() {
        t.broken("netif keys", e);
    }
    kprintln!("hostile: netif: vif {id} left in InitWait for netfront");
}

// ---- the first connection: refused requests, then a runaway producer ----------------

fn first_connection(t: &mut Tally, v: &mut RawVif, p: &Pages) {
    let c = Cat::Netif;
    if let Err(e) = v.expect_arp_reply(p) {
        t.broken("an ARP reply before the attacks", e);
    }
    let extra = |e: NetifExtraInfo| e.to_tx_request();
    let mut chain17 = alloc::vec![req(p.tx, 0, NETTXF_MORE_DATA, 0xffff)];
    chain17.extend((0..17).map(|i| req(p.tx2, 0, more_unless(i == 16), 4096)));
    let mut chain20 = alloc::vec![req(p.tx, 0, NETTXF_MORE_DATA, 20 * 60)];
    chain20.extend((0..19).map(|i| req(p.tx2, 0, more_unless(i == 18), 60)));
    let gso = NetifExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0, 0);
    let tx_attacks: Vec<(&str, Vec<NetifTxRequest>)> = alloc::vec![
        ("transmit of size 0", alloc::vec![req(p.tx, 0, 0, 0)]),
        (
            "transmit of 13 bytes (shorter than an Ethernet header)",
            alloc::vec![req(p.tx, 0, 0, 13)]
        ),
        (
            "transmit from a reference never granted",
            alloc::vec![req(p.never, 0, 0, 60)]
        ),
        (
            "transmit from a reference beyond the table",
            alloc::vec![req(BEYOND, 0, 0, 60)]
        ),
        (
            "transmit from a grant for another domain",
            alloc::vec![req(p.foreign.1, 0, 0, 60)]
        ),
        (
            "transmit whose fragment was never granted",
            alloc::vec![req(p.tx, 0, NETTXF_MORE_DATA, 120), req(p.never, 0, 0, 60)]
        ),
        (
            "fragments larger than the first slot announced",
            alloc::vec![req(p.tx, 0, NETTXF_MORE_DATA, 100), req(p.tx2, 0, 0, 200)]
        ),
        (
            "a 65535-byte frame with 17 fragments of 4096 (over 64 KiB)",
            chain17
        ),
        ("a chain of 20 slots (more than 18)", chain20),
        (
            "a GSO extra (GSO is not offered)",
            alloc::vec![req(p.tx, 0, NETTXF_EXTRA_INFO, 60), extra(gso)]
        ),
        (
            "a blank checksum over an IPv4 header claiming 65535 bytes",
            alloc::vec![req(p.tx2, 0, NETTXF_CSUM_BLANK, 60)]
        ),
    ];
    for (i, (what, reqs)) in tx_attacks.iter().enumerate() {
        match v.tx_exchange(reqs) {
            Ok(rsps) => {
                let errors = rsps.iter().filter(|r| r.status == NETIF_RSP_ERROR).count();
                let nulls = rsps.iter().filter(|r| r.status == NETIF_RSP_NULL).count();
                t.check(
                    c,
                    what,
                    errors > 0 && errors + nulls == rsps.len(),
                    format_args!("statuses {:?}", Statuses(&rsps)),
                );
            }
            Err(e) => t.check(c, what, false, e),
        }
        // Every few attacks, a good frame: the ring still works.
        if i % 4 == 3
            && let Err(e) = v.good_arp(p, false)
        {
            t.broken("a good frame between attacks", e);
        }
    }
    if let Err(e) = v.good_arp(p, true) {
        t.broken("a good two-slot frame", e);
    }

    // Receive buffers the backend must not write.
    for (what, gref) in [
        ("receive into a read-only grant", p.ro.1),
        ("receive into a reference never granted", p.never),
        ("receive into a reference beyond the table", BEYOND),
        ("receive into a grant for another domain", p.foreign.1),
    ] {
        match v.receive_one(p, gref) {
            Ok(rsp) => t.check(
                c,
                what,
                rsp.status < 0,
                format_args!("status {}", rsp.status),
            ),
            Err(e) => t.check(c, what, false, e),
        }
    }
    canaries(t, p);
    match v.expect_arp_reply(p) {
        Ok(()) => kprintln!("hostile: netif: the rings still carry frames both ways"),
        Err(e) => t.broken("an ARP reply after the attacks", e),
    }

    // Last: a transmit producer far ahead. The backend must close the device.
    let closed = v.runaway_tx();
    t.check(
        c,
        "transmit producer 1000 ahead",
        closed.is_ok(),
        format_args!("{closed:?}"),
    );
}

// ---- fatal requests, each on a connection of its own ---------------------------------

fn fatal_attacks(t: &mut Tally, v: &mut RawVif, p: &Pages) {
    let c = Cat::Netif;
    let x = |type_, flags| NetifExtraInfo::mcast(type_, [0; 6], flags).to_tx_request();
    let mut chain22 = alloc::vec![req(p.tx, 0, NETTXF_MORE_DATA, 22 * 60)];
    chain22.extend((0..21).map(|i| req(p.tx2, 0, more_unless(i == 20), 60)));
    let attacks: Vec<(&str, Vec<NetifTxRequest>)> = alloc::vec![
        (
            "a first slot crossing its page",
            alloc::vec![req(p.tx, 4000, 0, 200)]
        ),
        (
            "a fragment crossing its page",
            alloc::vec![
                req(p.tx, 0, NETTXF_MORE_DATA, 300),
                req(p.tx2, 4090, 0, 100)
            ]
        ),
        (
            "an extra of type none",
            alloc::vec![
                req(p.tx, 0, NETTXF_EXTRA_INFO, 60),
                x(XEN_NETIF_EXTRA_TYPE_NONE, 0)
            ]
        ),
        (
            "an extra of a type beyond the last",
            alloc::vec![
                req(p.tx, 0, NETTXF_EXTRA_INFO, 60),
                x(XEN_NETIF_EXTRA_TYPE_MAX, 0)
            ]
        ),
        // The request after the extra is read as one: the low byte of its reference
        // (0x100) is the type, none.
        (
            "an extra whose MORE flag runs into a request",
            alloc::vec![
                req(p.tx, 0, NETTXF_EXTRA_INFO, 60),
                x(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_FLAG_MORE),
                req(0x100, 0, 0, 60)
            ]
        ),
        ("a chain of 22 slots", chain22),
    ];
    for (what, reqs) in &attacks {
        if !v.reconnect(t, p, what) {
            continue;
        }
        let closed = v.fatal(reqs);
        t.check(c, what, closed.is_ok(), format_args!("{closed:?}"));
        if let Err(e) = v.start_over() {
            t.broken("netif start over", e);
            return;
        }
    }
    let what = "receive producer 1000 ahead";
    if v.reconnect(t, p, what) {
        let closed = v.runaway_rx(p);
        t.check(c, what, closed.is_ok(), format_args!("{closed:?}"));
        if let Err(e) = v.start_over() {
            t.broken("netif start over", e);
        }
    }
}

// ---- xenbus: connections the backend must refuse -------------------------------------

fn xenbus_attacks(t: &mut Tally, v: &mut RawVif, p: &Pages) {
    let c = Cat::Netif;
    let Some(x) = xen::get() else { return };
    let attacks = [
        (
            "a transmit ring never granted",
            Keys {
                tx_ring_ref: format!("{}", p.never),
                ..p.keys()
            },
        ),
        (
            "a receive ring granted read-only",
            Keys {
                rx_ring_ref: format!("{}", p.rx_ring_ro),
                ..p.keys()
            },
        ),
        (
            "the xenstore's event channel",
            Keys {
                event_channel: Some(format!("{}", store_port(x))),
                ..p.keys()
            },
        ),
        (
            "a ring reference that is not a number",
            Keys {
                tx_ring_ref: "0x1z".into(),
                ..p.keys()
            },
        ),
        (
            "no request-rx-copy (page flipping)",
            Keys {
                rx_copy: false,
                ..p.keys()
            },
        ),
        // netif.h: the number of queues must be greater than zero (Linux's netback
        // checks it since 2026); more than one needs `multi-queue-max-queues`, which
        // the backend does not offer.
        (
            "multi-queue-num-queues 0",
            Keys {
                queues: Some("0"),
                ..p.keys()
            },
        ),
        (
            "multi-queue-num-queues 2 (not offered)",
            Keys {
                queues: Some("2"),
                ..p.keys()
            },
        ),
        (
            "multi-queue-num-queues that is not a number",
            Keys {
                queues: Some("1q"),
                ..p.keys()
            },
        ),
    ];
    for (what, keys) in &attacks {
        let r = v.connect(p, keys);
        t.check(
            c,
            what,
            matches!(r, Ok(XenbusState::Closing | XenbusState::Closed)),
            format_args!("{r:?}"),
        );
        if let Err(e) = v.start_over() {
            t.broken("netif start over", e);
            return;
        }
    }
}

fn canaries(t: &mut Tally, p: &Pages) {
    let mut check = [0u8; 4096];
    for (name, page) in [("read-only", &p.ro.0), ("foreign", &p.foreign.0)] {
        page.read_bytes(0, &mut check);
        let changed = check.iter().filter(|&&b| b != CANARY).count();
        t.check(
            Cat::Netif,
            &format!("the {name} page's canary"),
            changed == 0,
            format_args!("{changed} bytes changed"),
        );
    }
}

// ---- the raw connection ----------------------------------------------------------------

fn req(gref: GrantRef, offset: u16, flags: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id: 0,
        size,
    }
}

fn more_unless(last: bool) -> u16 {
    if last { 0 } else { NETTXF_MORE_DATA }
}

/// Transmit statuses, for a message.
struct Statuses<'a>(&'a [NetifTxResponse]);

impl core::fmt::Debug for Statuses<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.status))
            .finish()
    }
}

impl Pages {
    /// Allocates and grants the pages, and writes the frames (the ARP request for
    /// `v`'s host and its tail; a frame whose IPv4 header lies) and the canaries.
    fn new(v: &mut RawVif) -> Result<Self, String> {
        let x = xen::get().ok_or("no Xen")?;
        let b = v.backend;
        let mut granted = Vec::new();
        let mut page = |to: DomId, ro: bool| -> Result<(u64, RawSharedMemory, GrantRef), String> {
            let (pa, mem) = memory::alloc_zeroed(1).ok_or("out of memory")?;
            let g = v.env.grant(to, pa >> 12, ro).map_err(|e| format!("{e}"))?;
            granted.push(g);
            Ok((pa, mem, g))
        };
        let (_, tx_ring, tx_ring_ref) = page(b, false)?;
        let (rx_ring_pa, rx_ring, rx_ring_ref) = page(b, false)?;
        let (_, tx_page, tx) = page(b, true)?;
        let (_, tx2_page, tx2) = page(b, true)?;
        let (_, rx, rx_ref) = page(b, false)?;
        let (_, ro, ro_ref) = page(b, true)?;
        let (_, foreign, foreign_ref) = page(NO_SUCH_DOMAIN, false)?;
        let rx_ring_ro = v
            .env
            .grant(b, rx_ring_pa >> 12, true)
            .map_err(|e| format!("{e}"))?;
        granted.push(rx_ring_ro);
        let never = x.grants.lock().claim().map_err(|e| format!("{e}"))?;

        let arp = arp_request(v.mac, v.ip, v.host);
        tx_page.write_bytes(usize::from(ARP_AT), &arp);
        tx_page.write_bytes(usize::from(ARP_TAIL_AT), &arp[usize::from(ARP_SPLIT)..]);
        // An IPv4 header (version 4, 20 bytes) whose total length says 65535.
        let mut liar = arp;
        liar[12..14].copy_from_slice(&[0x08, 0x00]);
        liar[14..24].copy_from_slice(&[0x45, 0, 0xff, 0xff, 0, 0, 0, 0, 64, 17]);
        tx2_page.write_bytes(0, &liar);
        let canary = [CANARY; 4096];
        ro.write_bytes(0, &canary);
        foreign.write_bytes(0, &canary);
        Ok(Self {
            tx_ring: Box::leak(Box::new(tx_ring)),
            tx_ring_ref,
            rx_ring: Box::leak(Box::new(rx_ring)),
            rx_ring_ref,
            rx_ring_ro,
            tx,
            tx2,
            rx: (rx, rx_ref),
            ro: (ro, ro_ref),
            foreign: (foreign, foreign_ref),
            never,
            granted,
        })
    }

    /// The keys of a correct frontend (the event channel is the connection's own).
    fn keys(&self) -> Keys {
        Keys {
            tx_ring_ref: format!("{}", self.tx_ring_ref),
            rx_ring_ref: format!("{}", self.rx_ring_ref),
            event_channel: None,
            rx_copy: true,
            queues: None,
        }
    }
}

/// An ARP request (RFC 826) from `mac`/`ip` for `target`, broadcast, padded to the
/// Ethernet minimum.
fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_LEN as usize] {
    let mut f = [0u8; ARP_LEN as usize];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// Whether `frame` is an ARP reply from `host`.
fn is_arp_reply(frame: &[u8], host: Ipv4Addr) -> bool {
    frame.get(12..14) == Some(&[0x08, 0x06][..])
        && frame.get(20..22) == Some(&[0, 2][..])
        && frame.get(28..32) == Some(&host.octets()[..])
}

impl RawVif {
    /// Looks the vif up and reads our MAC (the toolstack's, in our directory or else
    /// the backend's).
    fn open(id: &str, ip: Ipv4Addr, host: Ipv4Addr) -> Result<Self, String> {
        let x = xen::get().ok_or("no Xen")?;
        let env = GuestEnv::new().ok_or("no Xen environment")?;
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        let dev = Frontend::open(xs, "vif", id).map_err(|e| format!("open: {e}"))?;
        let raw = match xs.read(TxId::NONE, &dev.node("mac")) {
            Ok(m) => m,
            Err(_) => xs
                .read(TxId::NONE, &dev.backend_node("mac"))
                .map_err(|e| format!("reading mac: {e}"))?,
        };
        let mac = pv_drivers::netfront::parse_mac(&raw).ok_or("a malformed mac")?;
        let backend = dev.backend.domid;
        Ok(Self {
            dev,
            env,
            backend,
            conn: None,
            next_id: 0x100,
            mac,
            ip,
            host,
        })
    }

    /// Negotiates a connection with `keys` (a fresh event channel unless `keys` names
    /// one) and returns the state the backend went to: `Connected`, or `Closing` if it
    /// refused.
    fn connect(&mut self, p: &Pages, keys: &Keys) -> Result<XenbusState, String> {
        use XenbusState as S;
        let x = xen::get().ok_or("no Xen")?;
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        let dev = &self.dev;
        if dev.state(xs).ok() != Some(S::Initialising) {
            dev.switch_state(xs, S::Initialising)
                .map_err(|e| format!("{e}"))?;
        }
        dev.wait_for_backend(xs, |s| s == S::InitWait, 64)
            .map_err(|e| format!("waiting for InitWait: {e}"))?;
        let tx = NetifTxFrontRing::new(p.tx_ring).map_err(|e| format!("{e}"))?;
        let rx = NetifRxFrontRing::new(p.rx_ring).map_err(|e| format!("{e}"))?;
        let port = self
            .env
            .alloc_unbound(self.backend)
            .map_err(|e| format!("{e}"))?;
        self.conn = Some(Conn { tx, rx, port });
        let channel = keys
            .event_channel
            .clone()
            .unwrap_or_else(|| format!("{port}"));
        let mut nodes = alloc::vec![
            ("tx-ring-ref", keys.tx_ring_ref.as_str()),
            ("rx-ring-ref", keys.rx_ring_ref.as_str()),
            ("event-channel", channel.as_str()),
            ("feature-sg", "1"),
            ("feature-rx-notify", "1"),
        ];
        if keys.rx_copy {
            nodes.push(("request-rx-copy", "1"));
        } else {
            let _ = xs.rm(TxId::NONE, &dev.node("request-rx-copy"));
        }
        match keys.queues {
            Some(q) => nodes.push(("multi-queue-num-queues", q)),
            None => {
                let _ = xs.rm(TxId::NONE, &dev.node("multi-queue-num-queues"));
            }
        }
        for (name, value) in nodes {
            xenbus::write_str(xs, TxId::NONE, &dev.node(name), value)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        dev.switch_state(xs, S::Connected)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(
            xs,
            |s| matches!(s, S::Connected | S::Closing | S::Closed),
            64,
        )
        .map_err(|e| format!("waiting for Connected: {e}"))
    }

    /// A new good connection for the attack `what`; false (and counted) if the backend
    /// would not connect.
    fn reconnect(&mut self, t: &mut Tally, p: &Pages, what: &str) -> bool {
        match self.connect(p, &p.keys()) {
            Ok(XenbusState::Connected) => true,
            r => {
                t.broken(&format!("a connection for {what}"), format_args!("{r:?}"));
                false
            }
        }
    }

    /// The frontend starts over: `Closed` (the backend follows and lets the rings go),
    /// then `Initialising` (the backend waits again in `InitWait`).
    fn start_over(&mut self) -> Result<(), String> {
        use XenbusState as S;
        if let Some(conn) = self.conn.take() {
            self.env.close_port(conn.port);
        }
        let x = xen::get().ok_or("no Xen")?;
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        let dev = &self.dev;
        dev.switch_state(xs, S::Closed)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(xs, |s| s == S::Closed, 64)
            .map_err(|e| format!("waiting for Closed: {e}"))?;
        dev.switch_state(xs, S::Initialising)
            .map_err(|e| format!("{e}"))?;
        dev.wait_for_backend(xs, |s| s == S::InitWait, 64)
            .map_err(|e| format!("waiting for InitWait: {e}"))?;
        Ok(())
    }

    /// Removes the keys the connections wrote, so that netfront's own (it may use
    /// split event channels) are the only ones the backend finds.
    fn forget_keys(&mut self) -> Result<(), String> {
        let x = xen::get().ok_or("no Xen")?;
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        for name in KEYS {
            match xs.rm(TxId::NONE, &self.dev.node(name)) {
                Ok(()) | Err(XsError::Xen(XenErrno::ENOENT)) => {}
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
        Ok(())
    }

    /// Waits (bounded) for the backend to close the device.
    fn wait_closed(&mut self) -> Result<XenbusState, String> {
        use XenbusState as S;
        let x = xen::get().ok_or("no Xen")?;
        let mut guard = x.store.lock();
        let xs = guard.as_mut().ok_or("no xenstore")?;
        self.dev
            .wait_for_backend(xs, |s| matches!(s, S::Closing | S::Closed), 64)
            .map_err(|e| format!("{e}"))
    }

    fn conn(&mut self) -> Result<&mut Conn, String> {
        self.conn.as_mut().ok_or_else(|| "not connected".into())
    }

    /// Pushes `reqs` (ids filled in), notifies, and waits for one response per slot.
    fn tx_exchange(&mut self, reqs: &[NetifTxRequest]) -> Result<Vec<NetifTxResponse>, String> {
        self.push_tx(reqs)?;
        let ev = self.env.event();
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        let mut got = Vec::new();
        loop {
            let conn = self.conn()?;
            while let Some(rsp) = conn.tx.take_response().map_err(|e| format!("{e}"))? {
                got.push(rsp);
            }
            if got.len() >= reqs.len() {
                return Ok(got);
            }
            if conn
                .tx
                .final_check_for_responses()
                .map_err(|e| format!("{e}"))?
            {
                continue;
            }
            if wait_for_event_until(&ev, deadline) == Woken::Deadline && pv::now_ns() >= deadline {
                return Err(format!("{} of {} responses", got.len(), reqs.len()));
            }
        }
    }

    fn push_tx(&mut self, reqs: &[NetifTxRequest]) -> Result<(), String> {
        let mut id = self.next_id;
        let conn = self.conn.as_mut().ok_or("not connected")?;
        for r in reqs {
            // In an extra-info slot the id falls in the padding after the 8 bytes of
            // the extra: harmless.
            let r = NetifTxRequest { id, ..*r };
            id = id.wrapping_add(1);
            conn.tx.push_request(&r).map_err(|e| format!("push: {e}"))?;
        }
        let port = conn.port;
        if conn.tx.push_requests_and_check_notify() {
            self.env.notify(port);
        }
        self.next_id = id;
        Ok(())
    }

    /// Sends the ARP request, in one slot or two, and checks it is answered OKAY.
    fn good_arp(&mut self, p: &Pages, split: bool) -> Result<(), String> {
        let reqs: Vec<NetifTxRequest> = if split {
            alloc::vec![
                req(p.tx, ARP_AT, NETTXF_MORE_DATA, ARP_LEN),
                req(p.tx, ARP_TAIL_AT, 0, ARP_LEN - ARP_SPLIT),
            ]
        } else {
            alloc::vec![req(p.tx, ARP_AT, 0, ARP_LEN)]
        };
        let rsps = self.tx_exchange(&reqs)?;
        if rsps.iter().all(|r| r.status == NETIF_RSP_OKAY) {
            Ok(())
        } else {
            Err(format!("statuses {:?}", Statuses(&rsps)))
        }
    }

    /// Posts one receive buffer (reference `gref`), brings a frame from the host (an
    /// ARP request it answers) and returns the buffer's response.
    fn receive_one(&mut self, p: &Pages, gref: GrantRef) -> Result<NetifRxResponse, String> {
        let id = self.next_id;
        self.next_id = id.wrapping_add(1);
        {
            let conn = self.conn()?;
            conn.rx
                .push_request(&NetifRxRequest { id, pad: 0, gref })
                .map_err(|e| format!("push: {e}"))?;
            conn.rx.push_requests_and_check_notify();
            let port = conn.port;
            // Notified whatever the ring says: the backend may be holding a frame.
            self.env.notify(port);
        }
        self.good_arp(p, false)?;
        let ev = self.env.event();
        let deadline = pv::now_ns().saturating_add(REPLY_NS);
        loop {
            let conn = self.conn()?;
            if let Some(rsp) = conn.rx.take_response().map_err(|e| format!("{e}"))? {
                if rsp.id != id {
                    return Err(format!("response for id {} while waiting for {id}", rsp.id));
                }
                return Ok(rsp);
            }
            if conn
                .rx
                .final_check_for_responses()
                .map_err(|e| format!("{e}"))?
            {
                continue;
            }
            if wait_for_event_until(&ev, deadline) == Woken::Deadline && pv::now_ns() >= deadline {
                return Err("no frame received".into());
            }
        }
    }

    /// Receives into the good buffer until a frame is the host's ARP reply (other
    /// frames from the host may come first).
    fn expect_arp_reply(&mut self, p: &Pages) -> Result<(), String> {
        let mut frame = [0u8; 4096];
        for _ in 0..ARP_TRIES {
            let rsp = self.receive_one(p, p.rx.1)?;
            let (at, len) = (usize::from(rsp.offset), rsp.status);
            let Ok(len) = usize::try_from(len) else {
                return Err(format!("status {len} for a good buffer"));
            };
            let Some(buf) = frame.get_mut(..len).filter(|_| at + len <= 4096) else {
                return Err(format!("{len} bytes at {at}: beyond the page"));
            };
            p.rx.0.read_bytes(at, buf);
            if is_arp_reply(buf, self.host) {
                return Ok(());
            }
        }
        Err(format!(
            "no ARP reply from {} in {ARP_TRIES} frames",
            self.host
        ))
    }

    /// Pushes `reqs` and waits for the backend to close the device.
    fn fatal(&mut self, reqs: &[NetifTxRequest]) -> Result<XenbusState, String> {
        self.push_tx(reqs)?;
        self.wait_closed()
    }

    /// Moves the transmit ring's request producer `RUNAWAY` ahead of the consumer and
    /// waits for the backend to close the device.
    fn runaway_tx(&mut self) -> Result<XenbusState, String> {
        let conn = self.conn()?;
        let port = conn.port;
        let prod = conn.tx.req_prod_pvt();
        conn.tx
            .memory()
            .store_u32(0, prod.wrapping_add(RUNAWAY), Ordering::Release);
        self.env.notify(port);
        self.wait_closed()
    }

    /// The same on the receive ring. The backend looks at it when a frame comes: an
    /// ARP request brings one (the transmit ring is still sound).
    fn runaway_rx(&mut self, p: &Pages) -> Result<XenbusState, String> {
        let conn = self.conn()?;
        let prod = conn.rx.req_prod_pvt();
        conn.rx
            .memory()
            .store_u32(0, prod.wrapping_add(RUNAWAY), Ordering::Release);
        self.push_tx(&[req(p.tx, ARP_AT, 0, ARP_LEN)])?;
        self.wait_closed()
    }
}
