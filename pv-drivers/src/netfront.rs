//! netfront: the PV network frontend (`xen/include/public/io/netif.h`), one queue.
//!
//! # Negotiation ([`Netfront::connect`])
//! Waits for the backend to reach `InitWait`; reads `mac` (our own directory's, else
//! the backend's; validated: six hex octets, unicast, not all zero), `feature-rx-copy` (required: page flipping is not
//! supported), `feature-sg` and `feature-split-event-channels`; grants the two ring
//! pages and the data buffers, allocates one event channel (or two when split channels
//! are offered and wanted), posts every receive buffer, then writes in one transaction
//! `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or `event-channel-tx`/`-rx`),
//! `request-rx-copy` = 1, `feature-rx-notify` = 1, `feature-sg` (1 when the backend
//! offers it), `feature-no-csum-offload` = 1, and moves `Initialising → Connected`;
//! then waits for the backend's `Connected`. Multi-queue is not used (the single-queue
//! keys are what a backend expects from a frontend that asks for one queue).
//!
//! # Data path
//! - **Transmit**: each transmit buffer is a page granted read-only to the backend
//!   once, for the life of the connection; a frame is copied into as many buffers as
//!   it needs (one per 4 KiB), the first request carrying the frame size and
//!   `NETTXF_more_data` when more follow (only with `feature-sg`; without it, frames
//!   are limited to one page). Request ids are buffer indices, checked on the way back.
//! - **Receive**: each receive buffer is a page granted writable once. The ring is kept
//!   full: the buffer posted at ring index `i` gets id `i % RING_SIZE`, so each
//!   response slot names its buffer by position (as Linux netfront does: extra-info
//!   slots carry no id) and the response's `id` is checked against it. A frame is
//!   copied out of its buffers into a queue as soon as its last slot arrives, and the
//!   buffers are posted again at once.
//! - **Notifications** follow `ring.h` (`req_event`/`rsp_event`), in [`crate::ring`].
//!
//! # Checksums
//! Frames handed to [`NetDevice::transmit`] carry complete checksums (the network stack
//! computes them), so transmit requests carry neither `NETTXF_csum_blank` nor
//! `NETTXF_data_validated` (the driver cannot vouch for data it did not check).
//! `feature-no-csum-offload` = 1 asks the backend not to send blank checksums; should
//! one arrive anyway (`NETRXF_csum_blank`), the TCP/UDP checksum over IPv4/IPv6 is
//! computed here ([`fill_checksum`]) before the frame is handed up, and a frame whose
//! checksum cannot be filled in is dropped (counted). `NETRXF_data_validated` needs no
//! action: the stack verifies checksums anyway.
//!
//! # A hostile backend
//! Every response is checked: ring producer overruns are [`NetError::Protocol`] (the
//! device stops for good); a bad receive id, a negative status, `offset + size` beyond
//! the page, a chain longer than [`MAX_RX_SLOTS`] or a frame longer than the maximum
//! drop that frame; an unknown transmit id is ignored. Each is counted in
//! [`NetfrontStats`]. Nothing the backend writes can make the driver panic or touch
//! memory outside its own buffers.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use crate::abi::grant_table::GrantRef;
use crate::abi::netif::{
    NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA,
    NETTXF_MORE_DATA, NetifExtraInfo, NetifRxRequest, NetifTxRequest, XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
};
use crate::abi::xen::DomId;
use crate::device::{NetDevice, NetError, NetInfo};
use crate::frontend::{EnvError, FrontendEnv, PAGE_SIZE};
use crate::grant::GrantError;
use crate::ring::{NetifRxFrontRing, NetifTxFrontRing, RingError};
use crate::shmem::SharedMemory;
use crate::xenbus::{self, Frontend, XenbusError, XenbusState};
use crate::xenstore::{TxId, XenStore, XsEvents};

/// Ethernet header length: the smallest frame that means anything.
pub const ETH_HLEN: usize = 14;
/// The usual largest Ethernet frame (1500-byte MTU, no FCS).
pub const ETH_FRAME_MAX: usize = 1514;
/// Most transmit slots one frame may use (`XEN_NETIF_NR_SLOTS_MIN`: every backend
/// accepts this many).
pub const MAX_TX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Most data slots of one received frame: a 64 KiB frame at an unaligned offset needs
/// 17; anything longer is a lying backend.
pub const MAX_RX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Most extra-info slots accepted after one receive response (one of each type).
const MAX_RX_EXTRAS: usize = 4;
/// Received frames held for [`NetDevice::receive`] before new ones are dropped.
const RX_QUEUE_MAX: usize = 512;

/// How the frontend is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetfrontConfig {
    /// Transmit buffers (pages), at most the ring size (256).
    pub tx_buffers: u16,
    /// Receive buffers (pages) kept posted, at most the ring size (256).
    pub rx_buffers: u16,
    /// Largest frame sent or accepted (header included, no FCS). Clamped to one page
    /// when the backend lacks `feature-sg`, and to 65535.
    pub max_frame: usize,
    /// Use split event channels when the backend offers them.
    pub split_event_channels: bool,
    /// Xenbus state changes to wait through for each step of the handshake.
    pub max_state_events: u32,
}

impl Default for NetfrontConfig {
    fn default() -> Self {
        Self {
            tx_buffers: 64,
            rx_buffers: 128,
            max_frame: ETH_FRAME_MAX,
            split_event_channels: true,
            max_state_events: 16,
        }
    }
}

/// Errors of setting up or tearing down a netfront.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetfrontError {
    /// A xenstore/xenbus operation failed.
    Xenbus(XenbusError),
    /// The environment failed (memory, grants, event channels).
    Env(EnvError),
    /// A shared ring could not be set up.
    Ring(RingError),
    /// The `mac` node is not a usable unicast address.
    BadMac(String),
    /// The backend does not offer `feature-rx-copy` (page flipping is not supported).
    NoRxCopy,
    /// The backend closed (or vanished) instead of connecting.
    BackendClosed(XenbusState),
    /// The configuration asks for no buffers or more than the ring holds.
    BadConfig,
}

impl fmt::Display for NetfrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xenbus(e) => write!(f, "xenbus: {e}"),
            Self::Env(e) => write!(f, "{e}"),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::BadMac(m) => write!(f, "mac {m:?} is not a unicast address"),
            Self::NoRxCopy => f.write_str("backend does not offer feature-rx-copy"),
            Self::BackendClosed(s) => write!(f, "backend went to {s} instead of connecting"),
            Self::BadConfig => f.write_str("buffer counts must be 1..=256"),
        }
    }
}

impl core::error::Error for NetfrontError {}

impl From<XenbusError> for NetfrontError {
    fn from(e: XenbusError) -> Self {
        Self::Xenbus(e)
    }
}
impl From<EnvError> for NetfrontError {
    fn from(e: EnvError) -> Self {
        Self::Env(e)
    }
}
impl From<RingError> for NetfrontError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// Receive-side errors, by kind (each drops the frame it occurs in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxErrors {
    /// A response's id is not the buffer posted in its slot.
    pub bad_id: u64,
    /// A response with a negative (error) status.
    pub bad_status: u64,
    /// `offset + size` beyond the page.
    pub bad_offset: u64,
    /// A `more_data` chain longer than [`MAX_RX_SLOTS`] (or too many extra slots).
    pub chain_too_long: u64,
    /// A frame longer than the maximum, or shorter than an Ethernet header.
    pub bad_length: u64,
    /// An extra-info slot of an unknown type.
    pub bad_extra: u64,
    /// A blank checksum that could not be filled in (not TCP/UDP over IP).
    pub csum_failed: u64,
    /// A frame dropped because [`NetDevice::receive`] was not called often enough.
    pub queue_overflow: u64,
}

/// Counters of one netfront.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetfrontStats {
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit ring slots used.
    pub tx_slots: u64,
    /// Transmit responses with an error status (`NETIF_RSP_ERROR`/`DROPPED`).
    pub tx_failed: u64,
    /// Transmit responses with an unknown id or an impossible status (ignored).
    pub tx_bad_response: u64,
    /// `transmit` refused for lack of room.
    pub tx_busy: u64,
    /// Frames received and handed up (or queued).
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Receive slots consumed (data and extra info).
    pub rx_slots: u64,
    /// Receive buffers posted (initial fill and refills).
    pub rx_refills: u64,
    /// Frames whose blank checksum was filled in here.
    pub rx_csum_filled: u64,
    /// Events sent on the transmit channel.
    pub notify_tx: u64,
    /// Events sent on the receive channel (new buffers, with `feature-rx-notify`).
    pub notify_rx: u64,
    /// Calls of [`NetDevice::poll`].
    pub polls: u64,
    /// Receive errors by kind.
    pub rx_errors: RxErrors,
}

/// The event-channel ports of a connected netfront (equal unless split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPorts {
    /// Transmit completions arrive here.
    pub tx: u32,
    /// Received frames arrive here.
    pub rx: u32,
}

/// Parses a `mac` node: `xx:xx:xx:xx:xx:xx` (hex, either case), unicast, not zero.
pub fn parse_mac(text: &[u8]) -> Option<[u8; 6]> {
    if text.len() != 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, octet) in mac.iter_mut().enumerate() {
        let at = i * 3;
        if i > 0 && text[at - 1] != b':' {
            return None;
        }
        let hex = |b: u8| char::from(b).to_digit(16);
        *octet = (hex(text[at])? * 16 + hex(text[at + 1])?) as u8;
    }
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

/// Why [`fill_checksum`] could not fill a checksum in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumError {
    /// Not IPv4/IPv6 (after at most one VLAN tag), or a truncated header.
    NotIp,
    /// An IPv4 fragment, IPv6 extension headers, or not TCP/UDP.
    Unsupported,
}

/// The 16-bit one's-complement sum of `data` added to `sum` (not folded).
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so the u32 never overflows, however long the data.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Computes and stores the TCP or UDP checksum of an Ethernet frame (IPv4 without
/// fragmentation, or IPv6 with TCP/UDP as the first next header), whatever the
/// checksum field held: what a receiver does with a `csum_blank` frame.
pub fn fill_checksum(frame: &mut [u8]) -> Result<(), ChecksumError> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = u16::from_be_bytes([
        *frame.get(12).ok_or(ChecksumError::NotIp)?,
        *frame.get(13).ok_or(ChecksumError::NotIp)?,
    ]);
    if ethertype == 0x8100 {
        let t = frame.get(16..18).ok_or(ChecksumError::NotIp)?;
        ethertype = u16::from_be_bytes([t[0], t[1]]);
        l3 += 4;
    }
    let (proto, l4, l4_len, pseudo) = match ethertype {
        0x0800 => {
            let ip = frame.get(l3..l3 + 20).ok_or(ChecksumError::NotIp)?;
            if ip[0] >> 4 != 4 {
                return Err(ChecksumError::NotIp);
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ihl < 20 || total < ihl || l3 + total > frame.len() {
                return Err(ChecksumError::NotIp);
            }
            if frag & 0x3fff != 0 {
                return Err(ChecksumError::Unsupported);
            }
            let l4_len = total - ihl;
            let mut pseudo = sum16(0, &ip[12..20]);
            pseudo = sum16(pseudo, &[0, ip[9]]);
            pseudo = sum16(pseudo, &(l4_len as u16).to_be_bytes());
            (ip[9], l3 + ihl, l4_len, pseudo)
        }
        0x86dd => {
            let ip = frame.get(l3..l3 + 40).ok_or(ChecksumError::NotIp)?;
            if ip[0] >> 4 != 6 {
                return Err(ChecksumError::NotIp);
            }
            let l4_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if l3 + 40 + l4_len > frame.len() {
                return Err(ChecksumError::NotIp);
            }
            let mut pseudo = sum16(0, &ip[8..40]);
            pseudo = sum16(pseudo, &(l4_len as u32).to_be_bytes());
            pseudo = sum16(pseudo, &[0, 0, 0, ip[6]]);
            (ip[6], l3 + 40, l4_len, pseudo)
        }
        _ => return Err(ChecksumError::NotIp),
    };
    let field = match proto {
        6 if l4_len >= 20 => 16,
        17 if l4_len >= 8 => 6,
        _ => return Err(ChecksumError::Unsupported),
    };
    let seg = &mut frame[l4..l4 + l4_len];
    seg[field..field + 2].fill(0);
    let mut csum = !fold(sum16(pseudo, seg));
    if proto == 17 && csum == 0 {
        // UDP: zero means "no checksum"; a computed zero is sent as all ones.
        csum = 0xffff;
    }
    seg[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Pages allocated together, each granted once to the backend.
struct Pool<M> {
    pfn: u64,
    pages: M,
    grefs: Vec<GrantRef>,
}

impl<M: SharedMemory> Pool<M> {
    fn alloc<E: FrontendEnv<Pages = M>>(
        env: &mut E,
        count: usize,
        to: DomId,
        readonly: bool,
    ) -> Result<Self, EnvError> {
        let (pfn, pages) = env.alloc_pages(count)?;
        let mut pool = Self {
            pfn,
            pages,
            grefs: Vec::with_capacity(count),
        };
        for i in 0..count as u64 {
            match env.grant(to, pfn + i, readonly) {
                Ok(g) => pool.grefs.push(g),
                Err(e) => {
                    pool.release(env);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Ends every grant, then frees the pages, unless the backend still holds one
    /// (then the pages are leaked: it may still write them).
    fn release<E: FrontendEnv<Pages = M>>(self, env: &mut E) -> bool {
        let mut all_ended = true;
        for g in &self.grefs {
            if let Err(EnvError::Grant(GrantError::StillInUse(_))) = env.end_grant(*g) {
                all_ended = false;
            }
        }
        if all_ended {
            env.free_pages(self.pfn, self.pages);
        }
        all_ended
    }
}

/// A frame being received, slot by slot.
struct RxPartial {
    data: Vec<u8>,
    /// Flags of the first slot (checksum information).
    flags: u16,
    /// Data slots so far.
    slots: usize,
    /// Extra-info slots still expected.
    extras_expected: bool,
    extras: usize,
    /// Whether the last data slot said `more_data`.
    more: bool,
    /// Set once the frame is known bad: the rest of its chain is consumed and dropped.
    bad: bool,
}

/// The PV network frontend over `E`.
pub struct Netfront<E: FrontendEnv> {
    env: E,
    dir: String,
    backend_path: String,
    backend_domid: DomId,
    mac: [u8; 6],
    sg: bool,
    max_frame: usize,
    ports: EventPorts,
    tx_ring: Option<NetifTxFrontRing<E::Pages>>,
    rx_ring: Option<NetifRxFrontRing<E::Pages>>,
    ring_pfns: [u64; 2],
    ring_grefs: [GrantRef; 2],
    tx_pool: Option<Pool<E::Pages>>,
    rx_pool: Option<Pool<E::Pages>>,
    /// Transmit buffers not in flight.
    tx_free: Vec<u16>,
    /// Whether each transmit buffer is in flight.
    tx_busy: Vec<bool>,
    /// Receive buffers not posted.
    rx_free: Vec<u16>,
    /// The buffer posted in each receive ring slot.
    rx_slot: Vec<Option<u16>>,
    rx_partial: Option<RxPartial>,
    rx_queue: VecDeque<Vec<u8>>,
    scratch: Vec<u8>,
    connected: bool,
    error: Option<NetError>,
    stats: NetfrontStats,
    /// The token of our watch on the backend's `state`, while it is registered.
    watch: Option<String>,
}

impl<E: FrontendEnv> Netfront<E> {
    /// Connects to the backend of `device/vif/<id>`: the whole xenbus handshake
    /// described in the module documentation. Blocks (through the xenstore client's
    /// bounded waits) until the backend is `Connected`. On failure everything
    /// allocated is released and the frontend is left `Closing` if it had announced
    /// itself.
    pub fn connect<P, X>(
        env: E,
        xs: &mut XenStore<P, X>,
        id: &str,
        config: NetfrontConfig,
    ) -> Result<Self, NetfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        if !(1..=256).contains(&config.tx_buffers) || !(1..=256).contains(&config.rx_buffers) {
            return Err(NetfrontError::BadConfig);
        }
        let dev = Frontend::open(xs, "vif", id)?;
        let waiting = |s: XenbusState| {
            !matches!(
                s,
                XenbusState::Unknown | XenbusState::Initialising | XenbusState::Reconfiguring
            )
        };
        let state = dev.wait_for_backend(xs, waiting, config.max_state_events)?;
        if matches!(state, XenbusState::Closing | XenbusState::Closed) {
            return Err(NetfrontError::BackendClosed(state));
        }
        // The toolstack's `mac` in our own directory, as Linux's netfront reads it
        // (libxl writes it on both ends, QEMU's Xen emulation only there), else the
        // backend's.
        let raw_mac = match xs.read(TxId::NONE, &dev.node("mac")) {
            Err(crate::xenstore::XsError::Xen(crate::abi::errno::XenErrno::ENOENT)) => xs
                .read(TxId::NONE, &dev.backend_node("mac"))
                .map_err(XenbusError::from)?,
            r => r.map_err(XenbusError::from)?,
        };
        let mac = parse_mac(&raw_mac)
            .ok_or_else(|| NetfrontError::BadMac(String::from_utf8_lossy(&raw_mac).into()))?;
        if !xenbus::read_feature(xs, TxId::NONE, &dev.backend_node("feature-rx-copy"))? {
            return Err(NetfrontError::NoRxCopy);
        }
        let sg = xenbus::read_feature(xs, TxId::NONE, &dev.backend_node("feature-sg"))?;
        let split = config.split_event_channels
            && xenbus::read_feature(
                xs,
                TxId::NONE,
                &dev.backend_node("feature-split-event-channels"),
            )?;
        let max_frame = config
            .max_frame
            .clamp(ETH_HLEN, usize::from(XEN_NETIF_MAX_TX_SIZE))
            .min(if sg { usize::MAX } else { PAGE_SIZE });

        let mut nf = Self {
            env,
            dir: dev.dir.clone(),
            backend_path: dev.backend.path.clone(),
            backend_domid: dev.backend.domid,
            mac,
            sg,
            max_frame,
            ports: EventPorts { tx: 0, rx: 0 },
            tx_ring: None,
            rx_ring: None,
            ring_pfns: [0; 2],
            ring_grefs: [0; 2],
            tx_pool: None,
            rx_pool: None,
            tx_free: Vec::new(),
            tx_busy: Vec::new(),
            rx_free: Vec::new(),
            rx_slot: Vec::new(),
            rx_partial: None,
            rx_queue: VecDeque::new(),
            scratch: Vec::new(),
            connected: false,
            error: None,
            stats: NetfrontStats::default(),
            watch: None,
        };
        if let Err(e) = nf.setup(split, config) {
            nf.release();
            return Err(e);
        }
        if let Err(e) = nf.announce(xs, &dev, split, config) {
            let _ = dev.switch_state(xs, XenbusState::Closing);
            nf.release();
            return Err(e);
        }
        Ok(nf)
    }

    /// Allocates and grants rings and buffers, allocates ports, posts receive buffers.
    fn setup(&mut self, split: bool, config: NetfrontConfig) -> Result<(), NetfrontError> {
        let to = self.backend_domid;
        let env = &mut self.env;
        let (tx_pfn, tx_mem) = env.alloc_pages(1)?;
        self.ring_pfns[0] = tx_pfn;
        let tx_ring = NetifTxFrontRing::new(tx_mem)?;
        self.tx_ring = Some(tx_ring);
        self.ring_grefs[0] = env.grant(to, tx_pfn, false)?;
        let (rx_pfn, rx_mem) = env.alloc_pages(1)?;
        self.ring_pfns[1] = rx_pfn;
        let rx_ring = NetifRxFrontRing::new(rx_mem)?;
        let rx_size = rx_ring.size() as usize;
        let tx_size = self.tx_ring.as_ref().map_or(0, |r| r.size() as usize);
        self.rx_ring = Some(rx_ring);
        self.ring_grefs[1] = env.grant(to, rx_pfn, false)?;

        let tx_count = usize::from(config.tx_buffers).min(tx_size);
        let rx_count = usize::from(config.rx_buffers).min(rx_size);
        self.tx_pool = Some(Pool::alloc(env, tx_count, to, true)?);
        self.rx_pool = Some(Pool::alloc(env, rx_count, to, false)?);
        self.tx_free = (0..tx_count as u16).rev().collect();
        self.tx_busy = vec![false; tx_count];
        self.rx_free = (0..rx_count as u16).rev().collect();
        self.rx_slot = vec![None; rx_size];

        self.ports.tx = env.alloc_unbound(to)?;
        self.ports.rx = if split {
            env.alloc_unbound(to)?
        } else {
            self.ports.tx
        };
        // Initial fill; the ring is fresh, so this cannot fail.
        self.refill()
            .map_err(|_| NetfrontError::Ring(RingError::Full))?;
        Ok(())
    }

    /// Writes the frontend's nodes, switches to Connected, waits for the backend.
    fn announce<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
        dev: &Frontend,
        split: bool,
        config: NetfrontConfig,
    ) -> Result<(), NetfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        let [tx_ref, rx_ref] = self.ring_grefs;
        let ports = self.ports;
        let sg = self.sg;
        xs.transaction(|tx| {
            let mut put = |name: &str, value: &str| tx.write(&dev.node(name), value.as_bytes());
            put("tx-ring-ref", &alloc::format!("{tx_ref}"))?;
            put("rx-ring-ref", &alloc::format!("{rx_ref}"))?;
            if split {
                put("event-channel-tx", &alloc::format!("{}", ports.tx))?;
                put("event-channel-rx", &alloc::format!("{}", ports.rx))?;
            } else {
                put("event-channel", &alloc::format!("{}", ports.tx))?;
            }
            put("request-rx-copy", "1")?;
            put("feature-rx-notify", "1")?;
            put("feature-sg", if sg { "1" } else { "0" })?;
            put("feature-no-csum-offload", "1")?;
            Ok::<(), XenbusError>(())
        })?;
        dev.switch_state(xs, XenbusState::Connected)?;
        let settled = |s: XenbusState| {
            matches!(
                s,
                XenbusState::Connected | XenbusState::Closing | XenbusState::Closed
            )
        };
        let state = dev.wait_for_backend(xs, settled, config.max_state_events)?;
        if state != XenbusState::Connected {
            return Err(NetfrontError::BackendClosed(state));
        }
        // Watch the backend from now on, so that its closing is noticed.
        let token = xs.unique_token("netfront-");
        xs.watch(&self.backend_state_path(), &token)
            .map_err(XenbusError::Store)?;
        self.watch = Some(token);
        self.connected = true;
        Ok(())
    }

    /// The token of the watch on the backend's `state` (registered once connected,
    /// removed when the device closes): on an event with it, call
    /// [`Netfront::on_xenbus_event`].
    pub fn watch_token(&self) -> Option<&str> {
        self.watch.as_deref()
    }

    fn unwatch<P, X>(&mut self, xs: &mut XenStore<P, X>)
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        if let Some(token) = self.watch.take() {
            let _ = xs.unwatch(&self.backend_state_path(), &token);
        }
    }

    /// The event-channel ports: the guest routes both to [`NetDevice::poll`].
    pub fn ports(&self) -> EventPorts {
        self.ports
    }

    /// The backend's `state` node (the one [`Netfront::watch_token`] watches).
    pub fn backend_state_path(&self) -> String {
        xenbus::join(&self.backend_path, "state")
    }

    /// Whether the device is connected and has not failed.
    pub fn is_connected(&self) -> bool {
        self.connected && self.error.is_none()
    }

    /// Whether the backend offered (and we use) multi-slot frames.
    pub fn scatter_gather(&self) -> bool {
        self.sg
    }

    /// Counters so far.
    pub fn stats(&self) -> NetfrontStats {
        self.stats
    }

    /// Follows a change of the backend's state (the watch [`Netfront::watch_token`]
    /// fired): when it is closing or gone, stops the device, switches to `Closed` and
    /// releases what the backend no longer holds (a page it still maps is leaked, not
    /// reused). Returns the backend's state.
    pub fn on_xenbus_event<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
    ) -> Result<XenbusState, NetfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        let state = match xenbus::read_state(xs, TxId::NONE, &self.backend_path) {
            Ok(s) => s,
            Err(XenbusError::Store(crate::xenstore::XsError::Xen(
                crate::abi::errno::XenErrno::ENOENT,
            ))) => XenbusState::Unknown,
            Err(e) => return Err(e.into()),
        };
        let gone = matches!(
            state,
            XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
        );
        if gone && (self.connected || self.tx_ring.is_some()) {
            // As Linux's netfront does (`xenbus_frontend_closed`): straight to Closed,
            // which is what the backend (Linux's netback stays Closing until then) and
            // the toolstack (`xl network-detach`) wait for.
            self.connected = false;
            self.unwatch(xs);
            xenbus::switch_state(xs, &self.dir, XenbusState::Closed)?;
            self.release();
        }
        Ok(state)
    }

    /// Closes the device from this side: `Closing`, waits (bounded) for the backend
    /// to close, `Closed`, then releases rings, buffers and ports.
    pub fn disconnect<P, X>(&mut self, xs: &mut XenStore<P, X>) -> Result<(), NetfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        self.connected = false;
        xenbus::switch_state(xs, &self.dir, XenbusState::Closing)?;
        let closed = |s: XenbusState| {
            matches!(
                s,
                XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
            )
        };
        let r = xenbus::wait_for_state(xs, &self.backend_path, closed, 16);
        self.unwatch(xs);
        xenbus::switch_state(xs, &self.dir, XenbusState::Closed)?;
        self.release();
        r.map(drop).map_err(Into::into)
    }

    /// Releases everything: ends grants (leaking any page the backend still holds),
    /// closes ports. Idempotent.
    fn release(&mut self) {
        self.connected = false;
        let env = &mut self.env;
        for pool in [self.tx_pool.take(), self.rx_pool.take()]
            .into_iter()
            .flatten()
        {
            pool.release(env);
        }
        let rings = [
            self.tx_ring.take().map(|r| r.into_memory()),
            self.rx_ring.take().map(|r| r.into_memory()),
        ];
        for (i, mem) in rings.into_iter().enumerate() {
            let Some(mem) = mem else { continue };
            let gref = core::mem::take(&mut self.ring_grefs[i]);
            let ended = gref == 0
                || !matches!(
                    env.end_grant(gref),
                    Err(EnvError::Grant(GrantError::StillInUse(_)))
                );
            if ended {
                env.free_pages(self.ring_pfns[i], mem);
            }
        }
        if self.ports.tx != 0 {
            env.close_port(self.ports.tx);
        }
        if self.ports.rx != 0 && self.ports.rx != self.ports.tx {
            env.close_port(self.ports.rx);
        }
        self.ports = EventPorts { tx: 0, rx: 0 };
        self.tx_free.clear();
        self.rx_free.clear();
    }

    fn check(&self) -> Result<(), NetError> {
        match self.error {
            Some(e) => Err(e),
            None if !self.connected => Err(NetError::Disconnected),
            None => Ok(()),
        }
    }

    /// Maps a ring error: a peer's protocol violation stops the device for good.
    fn ring_failed(&mut self, e: RingError) -> NetError {
        if e.is_protocol_error() {
            self.error = Some(NetError::Protocol);
            NetError::Protocol
        } else {
            NetError::Busy
        }
    }

    fn slots_for(len: usize) -> usize {
        len.div_ceil(PAGE_SIZE)
    }

    /// Collects transmit completions, freeing their buffers.
    fn reap_tx(&mut self) -> Result<(), NetError> {
        let Some(ring) = self.tx_ring.as_mut() else {
            return Err(NetError::Disconnected);
        };
        loop {
            loop {
                let rsp = match ring.take_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(self.ring_failed(e)),
                };
                // NETIF_RSP_NULL answers an extra-info slot and carries no id; this
                // driver sends none, so it is unexpected, and its id means nothing.
                let id = usize::from(rsp.id);
                if rsp.status == NETIF_RSP_NULL || self.tx_busy.get(id) != Some(&true) {
                    self.stats.tx_bad_response += 1;
                    continue;
                }
                self.tx_busy[id] = false;
                self.tx_free.push(rsp.id);
                match rsp.status {
                    NETIF_RSP_OKAY => {}
                    s if s < 0 => self.stats.tx_failed += 1,
                    _ => self.stats.tx_bad_response += 1,
                }
            }
            match ring.final_check_for_responses() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.ring_failed(e)),
            }
        }
    }

    /// Collects received frames into the queue, recycling their buffers.
    fn reap_rx(&mut self) -> Result<(), NetError> {
        loop {
            loop {
                let Some(ring) = self.rx_ring.as_mut() else {
                    return Err(NetError::Disconnected);
                };
                let index = ring.rsp_cons();
                let rsp = match ring.take_response() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(self.ring_failed(e)),
                };
                let slot = (index as usize) % self.rx_slot.len();
                self.stats.rx_slots += 1;
                // Every slot up to the validated rsp_prod held a posted buffer.
                let buf = self.rx_slot[slot].take();
                self.rx_slot_done(slot, buf, &rsp);
                if let Some(b) = buf {
                    self.rx_free.push(b);
                }
            }
            let Some(ring) = self.rx_ring.as_mut() else {
                return Err(NetError::Disconnected);
            };
            match ring.final_check_for_responses() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.ring_failed(e)),
            }
        }
    }

    /// Handles one receive response in ring slot `slot` whose buffer is `buf`.
    fn rx_slot_done(
        &mut self,
        slot: usize,
        buf: Option<u16>,
        rsp: &crate::abi::netif::NetifRxResponse,
    ) {
        let p = self.rx_partial.get_or_insert_with(|| RxPartial {
            data: Vec::new(),
            flags: rsp.flags,
            slots: 0,
            extras_expected: false,
            extras: 0,
            more: false,
            bad: false,
        });
        let errors = &mut self.stats.rx_errors;
        if p.extras_expected {
            // An extra-info slot: no id, no data. GSO and hash information is
            // advisory to this driver (neither was negotiated), so it is skipped.
            let extra = NetifExtraInfo::from_rx_response(rsp);
            p.extras += 1;
            if extra.type_ == 0 || extra.type_ >= crate::abi::netif::XEN_NETIF_EXTRA_TYPE_MAX {
                errors.bad_extra += 1;
                p.bad = true;
            }
            p.extras_expected = extra.has_more();
            if p.extras_expected && p.extras >= MAX_RX_EXTRAS {
                errors.chain_too_long += 1;
                p.bad = true;
                p.extras_expected = false;
            }
        } else {
            p.slots += 1;
            if p.slots == 1 {
                p.flags = rsp.flags;
                p.extras_expected = rsp.flags & NETRXF_EXTRA_INFO != 0;
            }
            p.more = rsp.flags & NETRXF_MORE_DATA != 0;
            if !p.bad {
                let offset = usize::from(rsp.offset);
                if buf.is_none() || usize::from(rsp.id) != slot {
                    errors.bad_id += 1;
                    p.bad = true;
                } else if rsp.status < 0 {
                    errors.bad_status += 1;
                    p.bad = true;
                } else if offset + rsp.status as usize > PAGE_SIZE {
                    errors.bad_offset += 1;
                    p.bad = true;
                } else if p.slots > MAX_RX_SLOTS {
                    errors.chain_too_long += 1;
                    p.bad = true;
                } else if p.data.len() + rsp.status as usize > self.max_frame {
                    errors.bad_length += 1;
                    p.bad = true;
                } else if let (Some(b), Some(pool)) = (buf, self.rx_pool.as_ref()) {
                    let len = rsp.status as usize;
                    let at = p.data.len();
                    p.data.resize(at + len, 0);
                    pool.pages
                        .read_bytes(usize::from(b) * PAGE_SIZE + offset, &mut p.data[at..]);
                }
            }
        }
        if p.extras_expected || p.more {
            // The frame goes on in the next slot. A chain too long to hold a frame is
            // marked bad and consumed (and dropped) until the backend ends it.
            if !p.bad && p.slots + p.extras > MAX_RX_SLOTS + MAX_RX_EXTRAS {
                errors.chain_too_long += 1;
                p.bad = true;
            }
            return;
        }
        let Some(mut p) = self.rx_partial.take() else {
            return;
        };
        if p.bad {
            return;
        }
        if p.data.len() < ETH_HLEN {
            self.stats.rx_errors.bad_length += 1;
            return;
        }
        if p.flags & NETRXF_CSUM_BLANK != 0 {
            if fill_checksum(&mut p.data).is_err() {
                self.stats.rx_errors.csum_failed += 1;
                return;
            }
            self.stats.rx_csum_filled += 1;
        }
        if self.rx_queue.len() >= RX_QUEUE_MAX {
            self.stats.rx_errors.queue_overflow += 1;
            return;
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += p.data.len() as u64;
        self.rx_queue.push_back(p.data);
    }

    /// Posts every free receive buffer the ring has room for; notifies the backend
    /// if it asked (`feature-rx-notify`).
    fn refill(&mut self) -> Result<(), NetError> {
        let (Some(ring), Some(pool)) = (self.rx_ring.as_mut(), self.rx_pool.as_ref()) else {
            return Err(NetError::Disconnected);
        };
        let mask = ring.size() - 1;
        while ring.free_requests() > 0 {
            let Some(b) = self.rx_free.pop() else { break };
            let slot = ring.req_prod_pvt() & mask;
            let req = NetifRxRequest {
                id: slot as u16,
                pad: 0,
                gref: pool.grefs[usize::from(b)],
            };
            if let Err(e) = ring.push_request(&req) {
                self.rx_free.push(b);
                return Err(self.ring_failed(e));
            }
            self.rx_slot[slot as usize] = Some(b);
            self.stats.rx_refills += 1;
        }
        if ring.push_requests_and_check_notify() && self.connected {
            self.env.notify(self.ports.rx);
            self.stats.notify_rx += 1;
        }
        Ok(())
    }
}

impl<E: FrontendEnv> NetDevice for Netfront<E> {
    fn info(&self) -> NetInfo {
        NetInfo {
            mac: self.mac,
            max_frame: self.max_frame,
        }
    }

    fn can_transmit(&self, len: usize) -> bool {
        let slots = Self::slots_for(len);
        self.check().is_ok()
            && (1..=self.max_frame).contains(&len)
            && self.tx_free.len() >= slots
            && self
                .tx_ring
                .as_ref()
                .is_some_and(|r| r.free_requests() as usize >= slots)
    }

    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), NetError> {
        self.check()?;
        let slots = Self::slots_for(len);
        if len == 0 || len > self.max_frame || slots > MAX_TX_SLOTS || (slots > 1 && !self.sg) {
            return Err(NetError::BadFrame);
        }
        if !self.can_transmit(len) {
            self.reap_tx()?;
            if !self.can_transmit(len) {
                self.stats.tx_busy += 1;
                return Err(NetError::Busy);
            }
        }
        self.scratch.clear();
        self.scratch.resize(len, 0);
        fill(&mut self.scratch);
        let (Some(ring), Some(pool)) = (self.tx_ring.as_mut(), self.tx_pool.as_ref()) else {
            return Err(NetError::Disconnected);
        };
        for (i, chunk) in self.scratch.chunks(PAGE_SIZE).enumerate() {
            let Some(b) = self.tx_free.pop() else {
                // can_transmit checked the count; unreachable, but never panic.
                return Err(NetError::Busy);
            };
            pool.pages.write_bytes(usize::from(b) * PAGE_SIZE, chunk);
            let more = i + 1 < slots;
            let req = NetifTxRequest {
                gref: pool.grefs[usize::from(b)],
                offset: 0,
                flags: if more { NETTXF_MORE_DATA } else { 0 },
                id: b,
                // The first request carries the whole frame's size.
                size: if i == 0 {
                    len as u16
                } else {
                    chunk.len() as u16
                },
            };
            if let Err(e) = ring.push_request(&req) {
                self.tx_free.push(b);
                return Err(self.ring_failed(e));
            }
            self.tx_busy[usize::from(b)] = true;
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        self.stats.tx_slots += slots as u64;
        Ok(())
    }

    fn kick(&mut self) {
        if self.check().is_err() {
            return;
        }
        if let Some(ring) = self.tx_ring.as_mut()
            && ring.push_requests_and_check_notify()
        {
            self.env.notify(self.ports.tx);
            self.stats.notify_tx += 1;
        }
    }

    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
        if self.rx_queue.is_empty() {
            self.check()?;
            self.reap_rx()?;
            self.refill()?;
        }
        match self.rx_queue.pop_front() {
            Some(frame) => {
                take(&frame);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn poll(&mut self) -> Result<(), NetError> {
        self.check()?;
        self.stats.polls += 1;
        self.reap_tx()?;
        self.reap_rx()?;
        self.refill()?;
        self.kick();
        Ok(())
    }
}

impl<E: FrontendEnv> crate::follow::Follower for Netfront<E> {
    type Error = NetfrontError;

    fn watch_token(&self) -> Option<&str> {
        Netfront::watch_token(self)
    }

    fn on_backend_change<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
    ) -> Result<XenbusState, NetfrontError>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents,
    {
        self.on_xenbus_event(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netfront_mac_parsing_is_strict() {
        assert_eq!(
            parse_mac(b"00:16:3e:AA:bb:0f"),
            Some([0x00, 0x16, 0x3e, 0xaa, 0xbb, 0x0f])
        );
        for bad in [
            &b"00:16:3e:aa:bb"[..],
            b"00:16:3e:aa:bb:0f:",
            b"00-16-3e-aa-bb-0f",
            b"01:16:3e:aa:bb:0f",
            b"00:00:00:00:00:00",
            b"0g:16:3e:aa:bb:0f",
            b"",
            b"+0:16:3e:aa:bb:0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    /// Independent reference: sum of 16-bit words over the pseudo-header and segment.
    fn verify(frame: &[u8], l3: usize, v6: bool) -> bool {
        let (l4, len, mut words): (usize, usize, Vec<u8>) = if v6 {
            let len = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) as usize;
            let mut p = frame[l3 + 8..l3 + 40].to_vec();
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, frame[l3 + 6]]);
            (l3 + 40, len, p)
        } else {
            let ihl = (frame[l3] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize;
            let mut p = frame[l3 + 12..l3 + 20].to_vec();
            p.extend_from_slice(&[0, frame[l3 + 9]]);
            p.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (l3 + ihl, total - ihl, p)
        };
        words.extend_from_slice(&frame[l4..l4 + len]);
        if words.len() % 2 == 1 {
            words.push(0);
        }
        let mut s: u64 = 0;
        for w in words.chunks(2) {
            s += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s == 0xffff
    }

    fn ipv4_frame(proto: u8, payload: usize) -> Vec<u8> {
        let l4 = if proto == 6 { 20 } else { 8 };
        let total = 20 + l4 + payload;
        let mut f = vec![0u8; ETH_HLEN + total + 3];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[ETH_HLEN..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        for (i, b) in ip[20..total].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        f
    }

    #[test]
    fn netfront_fills_tcp_and_udp_checksums() {
        for (proto, payload) in [(6u8, 0usize), (6, 101), (17, 1), (17, 1400)] {
            let mut f = ipv4_frame(proto, payload);
            fill_checksum(&mut f).unwrap();
            assert!(
                verify(&f, ETH_HLEN, false),
                "v4 proto {proto} len {payload}"
            );
        }
        // IPv6 UDP behind a VLAN tag.
        let payload = 33;
        let mut f = vec![0u8; ETH_HLEN + 4 + 40 + 8 + payload];
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[16..18].copy_from_slice(&[0x86, 0xdd]);
        let ip = &mut f[18..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        ip[6] = 17;
        for (i, b) in ip[8..].iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        fill_checksum(&mut f).unwrap();
        assert!(verify(&f, 18, true));
        // Not IP, fragments, other protocols, truncated headers.
        assert_eq!(fill_checksum(&mut [0u8; 10]), Err(ChecksumError::NotIp));
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(fill_checksum(&mut arp), Err(ChecksumError::NotIp));
        let mut frag = ipv4_frame(17, 10);
        frag[ETH_HLEN + 6] = 0x20;
        assert_eq!(fill_checksum(&mut frag), Err(ChecksumError::Unsupported));
        let mut icmp = ipv4_frame(1, 10);
        assert_eq!(fill_checksum(&mut icmp), Err(ChecksumError::Unsupported));
        let mut lying = ipv4_frame(6, 10);
        lying[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(fill_checksum(&mut lying), Err(ChecksumError::NotIp));
    }
}
