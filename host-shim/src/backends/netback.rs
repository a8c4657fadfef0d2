//! netback: the PV network backend (`xen/include/public/io/netif.h`), one queue,
//! grant copy only, over a [`Link`] (a TAP device, or an in-memory link in tests).
//!
//! # xenbus
//! [`Netback::new`] prepares; the first [`Backend::run_once`] creates the device's
//! nodes as libxl does ([`create_device`]) with the backend keys `mac` (the guest's
//! address), `handle`, `feature-rx-copy` = 1, `feature-rx-flip` = 0, `feature-sg` = 1
//! and `feature-split-event-channels` (when configured), watches the frontend's `state`
//! and moves to `InitWait`. When the frontend is `Initialised` or `Connected` it reads
//! `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or `event-channel-tx`/`-rx`),
//! `request-rx-copy` (must be 1: page flipping is not supported), `feature-sg`,
//! `feature-rx-notify` and `feature-no-csum-offload`, maps both rings, binds the
//! port(s) and moves to `Connected`. A frontend asking for several queues, or with
//! malformed keys, gets an `error` node and `Closing`. Frontend `Closing` → backend
//! `Closing`; frontend `Closed` (or its directory gone) → unmapped, unbound, `Closed`;
//! a frontend that starts again from `Initialising` finds the backend in `InitWait`.
//!
//! # Guest transmit
//! Requests are copied out of the ring once and assembled slot by slot: the first
//! carries the frame size (and `NETTXF_extra_info`, `NETTXF_more_data`), extra-info
//! slots follow while `XEN_NETIF_EXTRA_FLAG_MORE` says so (each answered
//! `NETIF_RSP_NULL`, as the header defines for auxiliary requests), then the
//! fragments. The rules, and which breaches end the connection, follow Linux netback
//! (`xenvif_tx_build_gops`, `xenvif_count_requests`, `xenvif_get_extras`):
//!
//! - **Fatal** (Linux's `xenvif_fatal_tx_err`; here the `error` node and `Closing`,
//!   counted in `tx_fatal_errors` and by kind): an extra-info slot of type
//!   `XEN_NETIF_EXTRA_TYPE_NONE` or beyond the last type (the frontend and the backend
//!   no longer agree where slots begin); a slot whose `offset + size` crosses its page;
//!   a chain that needs more than [`FATAL_TX_SLOTS`] slots. A malformed ring (a request
//!   producer more than a ring ahead) ends the connection too (`protocol_errors`).
//! - **Refused** (every data slot of the frame answered `NETIF_RSP_ERROR`, as Linux's
//!   `xenvif_tx_err`; the interface keeps serving): more than [`MAX_TX_SLOTS`] slots;
//!   fragments adding up to more than the first slot announced; a frame smaller than an
//!   Ethernet header; a GSO or hash extra (neither is offered); a frame larger than
//!   [`NetbackConfig::max_tx_frame`]; a grant copy that fails (a reference never
//!   granted, beyond the table, revoked or another domain's); a blank checksum
//!   (`NETTXF_csum_blank`, which Linux netfront uses) that cannot be filled in.
//!   Multicast filter extras are accepted and ignored (no filtering is offered).
//!
//! A good frame is copied out with grant copies, its checksum filled in when the
//! frontend left it blank, written to the link and answered `NETIF_RSP_OKAY` slot by
//! slot. A link that refuses a frame (queue full, interface down) drops it: counted,
//! still `OKAY` to the guest, as a NIC would do.
//!
//! # Guest receive
//! Frames read from the link are grant-copied into the buffers the frontend posted,
//! one page per slot (`NETRXF_more_data` on all but the last; multi-slot only when the
//! frontend set `feature-sg`, otherwise longer frames are dropped and counted), and
//! answered in the slots of the requests they used (`NETRXF_data_validated` when the
//! link vouches for the checksum). When too few buffers are posted the frame is held
//! and the link is not read further: it queues (a TAP queues up to its `txqueuelen` and
//! then drops in the host kernel) until the frontend posts buffers and notifies
//! (`feature-rx-notify`; a frontend without it, which modern Linux netback refuses,
//! gets its held frame on the next wake-up of any kind).
//!
//! # Wake-ups
//! The thread of [`super::spawn`] runs [`Backend::run_once`] on a [`Kick`]: the
//! frontend's events raise [`Kick::EVENT`], the frontend's state node
//! [`Kick::XENBUS`], and the link [`LINK`] (a one-shot [`Link::arm`] re-armed each
//! time the link has been drained; for a TAP, a poller thread blocked in `poll(2)`).
//!
//! # Counters
//! [`Backend::stats`]: frames, bytes and slots each way, grant copies, events each way,
//! batch sizes, transmit errors by kind (`tx_errors`, fatal ones also in
//! `tx_fatal_errors`), receive copy errors, ring protocol errors, connections made and
//! refused (`connect_errors`), drops.

use std::sync::Arc;

use pv_drivers::abi::netif::{
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_DATA_VALIDATED, NETRXF_MORE_DATA,
    NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, NetifExtraInfo, NetifRxResponse,
    NetifTxRequest, NetifTxResponse, XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_NR_SLOTS_MIN,
};
use pv_drivers::netfront::{ETH_HLEN, fill_checksum};
use pv_drivers::ring::{NetifRxBackRing, NetifTxBackRing, RingError, XEN_PAGE_SIZE};
use pv_drivers::xenbus::{XenbusState, parse_bool, parse_u32};
use serde::Serialize;

use super::spec::format_mac;
use super::{Backend, BackendEnv, DevicePaths, Kick, create_device, read_state, write_state};
use crate::hostio::tap::{FrameMeta, Link};
use crate::xen::xenstored::Xenstored;

/// The [`Kick`] reason a link raises when a frame is waiting.
pub const LINK: u32 = 4;

/// Most slots (the first and its fragments, extras excluded) of a frame that is sent:
/// `XEN_NETIF_NR_SLOTS_MIN`, what netif.h says every backend must take.
pub const MAX_TX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// A chain needing more slots than this ends the connection; one longer than
/// [`MAX_TX_SLOTS`] but not this long is only refused. Linux netback's
/// `fatal_skb_slots` (20) slots after the first, and the first.
pub const FATAL_TX_SLOTS: usize = 21;
/// Frames taken from the link per round before the ring is published (a bound on
/// latency, not on throughput: the next round follows at once).
const RX_BUDGET: usize = 256;

/// How a netback is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetbackConfig {
    /// The device id (`vif/<devid>`).
    pub devid: u32,
    /// The guest's MAC address, published in the `mac` nodes.
    pub mac: [u8; 6],
    /// Offer `feature-split-event-channels`.
    pub split_event_channels: bool,
    /// Largest frame accepted from the guest.
    pub max_tx_frame: usize,
}

impl NetbackConfig {
    /// Device `devid` with MAC `mac` (e.g. [`super::spec::default_mac`]), split event
    /// channels offered, frames up to 65535 bytes.
    pub fn new(devid: u32, mac: [u8; 6]) -> Self {
        Self {
            devid,
            mac,
            split_event_channels: true,
            max_tx_frame: crate::hostio::tap::MAX_FRAME,
        }
    }
}

/// Why a transmitted frame was refused (or the connection ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxFault {
    /// Size 0 or smaller than an Ethernet header.
    Size,
    /// Larger than the configured maximum.
    TooBig,
    /// The fragments add up to more than the first slot announced.
    FirstSlotTooSmall,
    /// `offset + size` beyond the page (fatal).
    Offset,
    /// More than [`MAX_TX_SLOTS`] slots (fatal beyond [`FATAL_TX_SLOTS`]).
    TooManySlots,
    /// An extra-info slot of a type not negotiated (GSO, hash).
    BadExtra,
    /// An extra-info slot of no type at all, or beyond the last (fatal).
    ExtraType,
    /// A grant copy failed (bad, foreign or revoked grant).
    BadGrant,
    /// A blank checksum could not be filled in.
    Checksum,
}

/// Counters of transmit errors by kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TxErrors {
    /// Size 0 or shorter than an Ethernet header.
    pub size: u64,
    /// Larger than the maximum frame.
    pub too_big: u64,
    /// Fragments larger than the first slot's frame size.
    pub first_slot_too_small: u64,
    /// A slot crossing its page (fatal).
    pub offset: u64,
    /// Too many slots in one frame (fatal beyond [`FATAL_TX_SLOTS`]).
    pub too_many_slots: u64,
    /// An extra-info slot of a type not negotiated (GSO, hash).
    pub bad_extra: u64,
    /// An extra-info slot of type none or beyond the last (fatal).
    pub extra_type: u64,
    /// A failed grant copy.
    pub bad_grant: u64,
    /// A blank checksum that could not be filled in.
    pub checksum: u64,
}

/// Counters of one netback.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NetbackStats {
    /// Frames the guest sent that reached the link (or were dropped by it).
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit requests consumed (every slot).
    pub tx_slots: u64,
    /// Frames answered `NETIF_RSP_ERROR`, or that ended the connection, by kind.
    pub tx_errors: TxErrors,
    /// Connections ended by a fatal transmit error (counted by kind in `tx_errors`).
    pub tx_fatal_errors: u64,
    /// Guest frames the link refused (dropped).
    pub tx_link_drops: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Receive slots used.
    pub rx_slots: u64,
    /// Frames too long for the guest (no `feature-sg`, or beyond 64 KiB): dropped.
    pub rx_dropped_too_long: u64,
    /// Frames from the link while no frontend was connected: dropped.
    pub rx_dropped_unconnected: u64,
    /// Receive slots whose grant copy failed (answered `NETIF_RSP_ERROR`).
    pub rx_copy_errors: u64,
    /// Times a frame had to wait for the guest to post buffers.
    pub rx_stalls: u64,
    /// Grant copies done (both directions).
    pub grant_copies: u64,
    /// Bytes moved by grant copies.
    pub grant_copy_bytes: u64,
    /// Wake-ups with a frontend event.
    pub events_from_front: u64,
    /// Events sent to the frontend for transmit responses.
    pub notify_tx: u64,
    /// Events sent to the frontend for receive responses.
    pub notify_rx: u64,
    /// Wake-ups by the link.
    pub link_wakeups: u64,
    /// Link read errors.
    pub link_errors: u64,
    /// Transmit service rounds that consumed requests, and requests per round.
    pub tx_batches: u64,
    /// Largest transmit batch.
    pub tx_batch_max: u64,
    /// Receive rounds that delivered frames.
    pub rx_batches: u64,
    /// Largest receive batch (frames).
    pub rx_batch_max: u64,
    /// Ring protocol violations (the device was closed).
    pub protocol_errors: u64,
    /// Connections made.
    pub connects: u64,
    /// Connections refused: keys missing or malformed, rings that cannot be mapped,
    /// event channels that cannot be bound, page flipping asked for.
    pub connect_errors: u64,
}

/// Where the device is in its xenbus life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nodes not created yet.
    New,
    /// Waiting for the frontend.
    InitWait,
    /// Serving.
    Connected,
    /// Closing (our error or the frontend's wish).
    Closing,
    /// Closed.
    Closed,
}

/// A frame being assembled from transmit requests.
struct TxPacket {
    first: NetifTxRequest,
    /// At most [`FATAL_TX_SLOTS`]` - 1`: a longer chain ends the connection.
    frags: Vec<NetifTxRequest>,
    /// Extra-info slots are still to come.
    in_extras: bool,
    /// The last data slot said `NETTXF_more_data`.
    more: bool,
    /// An extra of a type not negotiated came with it.
    bad_extra: bool,
}

/// One connection's rings and ports.
struct Conn<M> {
    tx: NetifTxBackRing<M>,
    rx: NetifRxBackRing<M>,
    tx_port: u32,
    rx_port: u32,
    sg: bool,
    tx_pkt: Option<TxPacket>,
    /// A frame from the link waiting for receive buffers.
    held: Option<(Vec<u8>, FrameMeta)>,
}

/// The network backend of one vif.
pub struct Netback<E: BackendEnv, L: Link> {
    env: E,
    link: L,
    kick: Arc<Kick>,
    config: NetbackConfig,
    paths: DevicePaths,
    phase: Phase,
    conn: Option<Conn<E::Mapping>>,
    frame: Vec<u8>,
    link_armed: bool,
    last_error: Option<String>,
    stats: NetbackStats,
}

impl<E: BackendEnv, L: Link> Netback<E, L> {
    /// A backend for `vif/<config.devid>` of `env`'s frontend domain, forwarding to
    /// `link`; `kick` must be the one given to [`super::spawn`].
    pub fn new(env: E, link: L, kick: Arc<Kick>, config: NetbackConfig) -> Self {
        let paths = DevicePaths::new("vif", env.frontend_domid(), config.devid);
        Self {
            env,
            link,
            kick,
            config,
            paths,
            phase: Phase::New,
            conn: None,
            frame: Vec::new(),
            link_armed: false,
            last_error: None,
            stats: NetbackStats::default(),
        }
    }

    /// The device's xenstore paths.
    pub fn paths(&self) -> &DevicePaths {
        &self.paths
    }

    /// Counters so far.
    pub fn counters(&self) -> NetbackStats {
        self.stats
    }

    fn set_state(&mut self, state: XenbusState) {
        let path = self.paths.back("state");
        let _ = self.env.with_store(|xs| write_state(xs, &path, state));
    }

    /// Reports a fatal error as libxenbus does (`error` node), then `Closing`.
    fn fail(&mut self, msg: &str) {
        self.last_error = Some(msg.to_string());
        let path = self.paths.back("error");
        let _ = self
            .env
            .with_store(|xs| xs.dom0().write(None, &path, msg.as_bytes()));
        self.disconnect();
        self.phase = Phase::Closing;
        self.set_state(XenbusState::Closing);
    }

    fn create(&mut self) -> Result<(), String> {
        let mac = format_mac(&self.config.mac);
        let devid = self.config.devid.to_string();
        let mut back = vec![
            ("mac", mac.clone()),
            ("handle", devid.clone()),
            ("feature-rx-copy", "1".to_string()),
            ("feature-rx-flip", "0".to_string()),
            ("feature-sg", "1".to_string()),
        ];
        if self.config.split_event_channels {
            back.push(("feature-split-event-channels", "1".to_string()));
        }
        let front = [("mac", mac), ("handle", devid)];
        let domid = self.env.frontend_domid();
        let paths = self.paths.clone();
        self.env
            .with_store(|xs| create_device(xs, domid, &paths, &front, &back))
            .map_err(|e| format!("creating {}: {e}", paths.backend))?;
        self.env
            .watch(&paths.front("state"), self.kick.notifier(Kick::XENBUS))
            .map_err(|e| format!("watching {}: {e}", paths.frontend))?;
        self.phase = Phase::InitWait;
        self.set_state(XenbusState::InitWait);
        Ok(())
    }

    /// Follows the frontend's state.
    fn follow_frontend(&mut self) {
        let path = self.paths.front("state");
        let front = self.env.with_store(|xs| read_state(xs, &path));
        match (front, self.phase) {
            (XenbusState::Initialised | XenbusState::Connected, Phase::InitWait) => {
                if let Err(msg) = self.connect() {
                    self.stats.connect_errors += 1;
                    self.fail(&msg);
                }
            }
            (XenbusState::Closing, Phase::Connected | Phase::InitWait) => {
                self.disconnect();
                self.phase = Phase::Closing;
                self.set_state(XenbusState::Closing);
            }
            (XenbusState::Closed | XenbusState::Unknown, p) if p != Phase::Closed => {
                self.disconnect();
                self.phase = Phase::Closed;
                self.set_state(XenbusState::Closed);
            }
            (XenbusState::Initialising | XenbusState::InitWait, Phase::Closed) => {
                // The frontend starts over (e.g. a rebooted guest driver).
                let path = self.paths.back("error");
                let _ = self.env.with_store(|xs| xs.dom0().rm(None, &path));
                self.phase = Phase::InitWait;
                self.set_state(XenbusState::InitWait);
            }
            _ => {}
        }
    }

    /// Reads the frontend's keys, maps the rings, binds the ports.
    fn connect(&mut self) -> Result<(), String> {
        let front = self.paths.frontend.clone();
        let keys = self.env.with_store(|xs| FrontKeys::read(xs, &front))?;
        if !keys.rx_copy {
            return Err("request-rx-copy is not 1: page flipping is not supported".into());
        }
        let tx_map = self
            .env
            .map_grants(&[keys.tx_ring_ref], true)
            .map_err(|e| format!("mapping tx-ring-ref {}: GNTST {e}", keys.tx_ring_ref))?;
        let rx_map = self
            .env
            .map_grants(&[keys.rx_ring_ref], true)
            .map_err(|e| format!("mapping rx-ring-ref {}: GNTST {e}", keys.rx_ring_ref))?;
        let tx = NetifTxBackRing::attach(tx_map).map_err(|e| format!("tx ring: {e}"))?;
        let rx = NetifRxBackRing::attach(rx_map).map_err(|e| format!("rx ring: {e}"))?;
        let notifier = self.kick.notifier(Kick::EVENT);
        let tx_port = self
            .env
            .bind(keys.tx_port, notifier.clone())
            .map_err(|e| format!("binding event channel {}: {e:?}", keys.tx_port))?;
        let rx_port = if keys.rx_port == keys.tx_port {
            tx_port
        } else {
            match self.env.bind(keys.rx_port, notifier) {
                Ok(p) => p,
                Err(e) => {
                    self.env.unbind(tx_port);
                    return Err(format!("binding event channel {}: {e:?}", keys.rx_port));
                }
            }
        };
        self.conn = Some(Conn {
            tx,
            rx,
            tx_port,
            rx_port,
            sg: keys.sg,
            tx_pkt: None,
            held: None,
        });
        self.stats.connects += 1;
        self.phase = Phase::Connected;
        self.set_state(XenbusState::Connected);
        Ok(())
    }

    fn disconnect(&mut self) {
        if let Some(c) = self.conn.take() {
            self.env.unbind(c.tx_port);
            if c.rx_port != c.tx_port {
                self.env.unbind(c.rx_port);
            }
            // The mappings unpin when the rings drop here.
        }
    }

    fn protocol_error(&mut self, e: RingError) {
        self.stats.protocol_errors += 1;
        self.fail(&format!("ring protocol violation: {e}"));
    }

    /// Serves the transmit ring until it is empty.
    fn serve_tx(&mut self) {
        let mut batch = 0u64;
        loop {
            loop {
                let Some(conn) = self.conn.as_mut() else {
                    return;
                };
                match conn.tx.take_request() {
                    Ok(Some(req)) => {
                        batch += 1;
                        self.stats.tx_slots += 1;
                        self.tx_slot(req);
                    }
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(e),
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            if conn.tx.push_responses_and_check_notify() {
                self.env.notify(conn.tx_port);
                self.stats.notify_tx += 1;
            }
            match conn.tx.final_check_for_requests() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return self.protocol_error(e),
            }
        }
        if batch > 0 {
            self.stats.tx_batches += 1;
            self.stats.tx_batch_max = self.stats.tx_batch_max.max(batch);
        }
    }

    fn respond_tx(&mut self, id: u16, status: i16) {
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.tx.push_response(&NetifTxResponse { id, status })
        {
            // Only possible if this code answered a request twice: a bug, not a
            // guest's doing. Stop the device rather than corrupt the ring.
            self.protocol_error(e);
        }
    }

    fn count_fault(&mut self, fault: TxFault) {
        let e = &mut self.stats.tx_errors;
        match fault {
            TxFault::Size => e.size += 1,
            TxFault::TooBig => e.too_big += 1,
            TxFault::FirstSlotTooSmall => e.first_slot_too_small += 1,
            TxFault::Offset => e.offset += 1,
            TxFault::TooManySlots => e.too_many_slots += 1,
            TxFault::BadExtra => e.bad_extra += 1,
            TxFault::ExtraType => e.extra_type += 1,
            TxFault::BadGrant => e.bad_grant += 1,
            TxFault::Checksum => e.checksum += 1,
        }
    }

    /// A transmit request no correct frontend sends and after which the ring cannot be
    /// trusted: counted, and the connection ends (Linux's `xenvif_fatal_tx_err`). No
    /// response is written: the rings are gone.
    fn tx_fatal(&mut self, fault: TxFault, what: &str) {
        self.count_fault(fault);
        self.stats.tx_fatal_errors += 1;
        self.fail(&format!("fatal transmit error: {what}"));
    }

    /// Takes one transmit request into the packet being assembled.
    fn tx_slot(&mut self, req: NetifTxRequest) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let Some(pkt) = conn.tx_pkt.as_mut() else {
            conn.tx_pkt = Some(TxPacket {
                first: req,
                frags: Vec::new(),
                in_extras: req.flags & NETTXF_EXTRA_INFO != 0,
                more: req.flags & NETTXF_MORE_DATA != 0,
                bad_extra: false,
            });
            return self.tx_maybe_complete();
        };
        if pkt.in_extras {
            let extra = NetifExtraInfo::from_tx_request(&req);
            // xenvif_get_extras: a slot read as an extra whose type is none or unknown
            // means the two ends disagree on where requests begin; nothing after it
            // can be parsed.
            if extra.type_ == XEN_NETIF_EXTRA_TYPE_NONE || extra.type_ >= XEN_NETIF_EXTRA_TYPE_MAX {
                return self.tx_fatal(
                    TxFault::ExtraType,
                    &format!("extra-info slot of type {}", extra.type_),
                );
            }
            pkt.in_extras = extra.has_more();
            // Multicast filter updates are accepted and ignored (no filtering is
            // offered); GSO and hashing were not offered.
            if !matches!(
                extra.type_,
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD | XEN_NETIF_EXTRA_TYPE_MCAST_DEL
            ) {
                pkt.bad_extra = true;
            }
            self.respond_tx(0, NETIF_RSP_NULL);
        } else {
            let (offset, size) = (usize::from(req.offset), usize::from(req.size));
            pkt.more = req.flags & NETTXF_MORE_DATA != 0;
            pkt.frags.push(req);
            // xenvif_count_requests: a fragment crossing its page, or a chain running
            // past the fatal slot count, is a malicious frontend.
            if offset + size > XEN_PAGE_SIZE {
                return self.tx_fatal(
                    TxFault::Offset,
                    &format!("fragment at offset {offset} of {size} bytes crosses its page"),
                );
            }
            if pkt.more && 1 + pkt.frags.len() >= FATAL_TX_SLOTS {
                return self.tx_fatal(
                    TxFault::TooManySlots,
                    &format!("a chain of more than {FATAL_TX_SLOTS} slots"),
                );
            }
        }
        self.tx_maybe_complete();
    }

    /// Finishes the packet if its last slot has arrived.
    fn tx_maybe_complete(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let Some(pkt) = conn.tx_pkt.as_ref() else {
            return;
        };
        if pkt.in_extras || pkt.more {
            return;
        }
        let Some(pkt) = conn.tx_pkt.take() else {
            return;
        };
        let result = self.tx_send(&pkt);
        let status = match result {
            Ok(()) => NETIF_RSP_OKAY,
            Err(TxFault::Offset) => {
                let (offset, size) = (pkt.first.offset, pkt.first.size);
                return self.tx_fatal(
                    TxFault::Offset,
                    &format!(
                        "first slot at offset {offset} of a {size}-byte frame crosses its page"
                    ),
                );
            }
            Err(f) => {
                self.count_fault(f);
                NETIF_RSP_ERROR
            }
        };
        self.respond_tx(pkt.first.id, status);
        for f in &pkt.frags {
            self.respond_tx(f.id, status);
        }
    }

    /// Checks, copies out and sends one complete frame. The checks come in Linux
    /// netback's order: the chain (slots, sizes), the frame size, the first slot within
    /// its page; then what this backend adds (extras not negotiated, its frame limit).
    /// Two differ from Linux's on purpose or for now: the slot limit counts the first
    /// slot ([`MAX_TX_SLOTS`], what netif.h promises; Linux takes one more), and the
    /// minimum size is checked on the whole frame, where Linux checks the first slot's
    /// own share (no frontend we know puts less than a header in the first slot).
    fn tx_send(&mut self, pkt: &TxPacket) -> Result<(), TxFault> {
        if 1 + pkt.frags.len() > MAX_TX_SLOTS {
            return Err(TxFault::TooManySlots);
        }
        let total = usize::from(pkt.first.size);
        let rest: usize = pkt.frags.iter().map(|f| usize::from(f.size)).sum();
        let first_len = total.checked_sub(rest).ok_or(TxFault::FirstSlotTooSmall)?;
        if total < ETH_HLEN {
            return Err(TxFault::Size);
        }
        if usize::from(pkt.first.offset) + first_len > XEN_PAGE_SIZE {
            return Err(TxFault::Offset);
        }
        if pkt.bad_extra {
            return Err(TxFault::BadExtra);
        }
        if total > self.config.max_tx_frame {
            return Err(TxFault::TooBig);
        }
        let slots = std::iter::once((&pkt.first, first_len))
            .chain(pkt.frags.iter().map(|f| (f, usize::from(f.size))));
        self.frame.clear();
        self.frame.resize(total, 0);
        let mut at = 0;
        for (req, len) in slots {
            if len == 0 {
                continue;
            }
            self.env
                .copy_from_grant(req.gref, req.offset, &mut self.frame[at..at + len])
                .map_err(|_| TxFault::BadGrant)?;
            self.stats.grant_copies += 1;
            self.stats.grant_copy_bytes += len as u64;
            at += len;
        }
        if pkt.first.flags & NETTXF_CSUM_BLANK != 0 {
            fill_checksum(&mut self.frame).map_err(|_| TxFault::Checksum)?;
        }
        match self.link.send_frame(&self.frame) {
            Ok(()) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += total as u64;
            }
            Err(_) => self.stats.tx_link_drops += 1,
        }
        Ok(())
    }

    /// Moves frames from the link into the guest's posted buffers.
    fn serve_rx(&mut self) {
        let mut batch = 0u64;
        let mut stalled = false;
        while batch < RX_BUDGET as u64 {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let (frame, meta) = match conn.held.take() {
                Some(h) => h,
                None => {
                    let mut buf = Vec::new();
                    match self.link.recv_frame(&mut buf) {
                        Ok(Some(meta)) => (buf, meta),
                        Ok(None) => {
                            self.arm_link();
                            break;
                        }
                        Err(_) => {
                            self.stats.link_errors += 1;
                            self.arm_link();
                            break;
                        }
                    }
                }
            };
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let max = if conn.sg {
                crate::hostio::tap::MAX_FRAME
            } else {
                XEN_PAGE_SIZE
            };
            if frame.is_empty() || frame.len() > max {
                self.stats.rx_dropped_too_long += 1;
                continue;
            }
            let needed = frame.len().div_ceil(XEN_PAGE_SIZE) as u32;
            let available = match conn.rx.unconsumed_requests() {
                Ok(n) => n,
                Err(e) => return self.protocol_error(e),
            };
            if available < needed {
                // Ask to be told of the next buffer, and look once more (ring.h's
                // final check) before waiting for it.
                let more = match conn.rx.final_check_for_requests() {
                    Ok(_) => conn.rx.unconsumed_requests().unwrap_or(0),
                    Err(e) => return self.protocol_error(e),
                };
                conn.held = Some((frame, meta));
                if more < needed {
                    self.stats.rx_stalls += 1;
                    stalled = true;
                    break;
                }
                continue;
            }
            self.rx_deliver(&frame, meta);
            batch += 1;
        }
        if let Some(conn) = self.conn.as_mut()
            && conn.rx.push_responses_and_check_notify()
        {
            self.env.notify(conn.rx_port);
            self.stats.notify_rx += 1;
        }
        if batch > 0 {
            self.stats.rx_batches += 1;
            self.stats.rx_batch_max = self.stats.rx_batch_max.max(batch);
        }
        if batch as usize >= RX_BUDGET && !stalled {
            // More may be waiting: come back after the other work.
            self.kick.raise(LINK);
        }
    }

    /// Copies one frame into posted buffers (enough are there) and answers them.
    fn rx_deliver(&mut self, frame: &[u8], meta: FrameMeta) {
        let chunks = frame.chunks(XEN_PAGE_SIZE);
        let n = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let req = match conn.rx.take_request() {
                Ok(Some(r)) => r,
                // Counted as available a moment ago; the ring cannot shrink.
                Ok(None) => return,
                Err(e) => return self.protocol_error(e),
            };
            let mut flags = 0;
            if i + 1 < n {
                flags |= NETRXF_MORE_DATA;
            }
            if i == 0 && meta.data_validated {
                flags |= NETRXF_DATA_VALIDATED;
            }
            let status = match self.env.copy_to_grant(req.gref, 0, chunk) {
                Ok(()) => {
                    self.stats.grant_copies += 1;
                    self.stats.grant_copy_bytes += chunk.len() as u64;
                    chunk.len() as i16
                }
                Err(_) => {
                    self.stats.rx_copy_errors += 1;
                    NETIF_RSP_ERROR
                }
            };
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags,
                status,
            };
            self.stats.rx_slots += 1;
            if let Err(e) = conn.rx.push_response(&rsp) {
                return self.protocol_error(e);
            }
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
    }

    fn arm_link(&mut self) {
        self.link.arm(self.kick.notifier(LINK));
        self.link_armed = true;
    }
}

/// The frontend's connection keys.
struct FrontKeys {
    tx_ring_ref: u32,
    rx_ring_ref: u32,
    tx_port: u32,
    rx_port: u32,
    rx_copy: bool,
    sg: bool,
}

impl FrontKeys {
    fn read(xs: &mut Xenstored, dir: &str) -> Result<Self, String> {
        let mut d = xs.dom0();
        let mut get = |name: &str| -> Result<Option<Vec<u8>>, String> {
            match d.read(None, &format!("{dir}/{name}")) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.errno() == pv_drivers::abi::errno::XenErrno::ENOENT => Ok(None),
                Err(e) => Err(format!("reading {dir}/{name}: {e}")),
            }
        };
        let mut number = |name: &str| -> Result<Option<u32>, String> {
            get(name)?
                .map(|v| parse_u32(&v).map_err(|e| format!("{dir}/{name}: {e}")))
                .transpose()
        };
        let required = |v: Option<u32>, name: &str| v.ok_or(format!("{dir}/{name} is missing"));
        let queues = number("multi-queue-num-queues")?;
        match queues {
            // netif.h: "greater than zero" (Linux's netback refuses 0 since 2026).
            Some(0) => return Err(format!("{dir}/multi-queue-num-queues is 0")),
            Some(q) if q > 1 => {
                return Err(format!(
                    "{dir}/multi-queue-num-queues is {q}: multi-queue is not offered"
                ));
            }
            _ => {}
        }
        let tx_ring_ref = required(number("tx-ring-ref")?, "tx-ring-ref")?;
        let rx_ring_ref = required(number("rx-ring-ref")?, "rx-ring-ref")?;
        let (tx_port, rx_port) = match number("event-channel")? {
            Some(p) => (p, p),
            None => (
                required(number("event-channel-tx")?, "event-channel-tx")?,
                required(number("event-channel-rx")?, "event-channel-rx")?,
            ),
        };
        let mut flag = |name: &str| -> Result<bool, String> {
            get(name)?
                .map(|v| parse_bool(&v).map_err(|e| format!("{dir}/{name}: {e}")))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        let rx_copy = flag("request-rx-copy")?;
        let sg = flag("feature-sg")?;
        Ok(Self {
            tx_ring_ref,
            rx_ring_ref,
            tx_port,
            rx_port,
            rx_copy,
            sg,
        })
    }
}

impl<E: BackendEnv, L: Link> Backend for Netback<E, L> {
    fn name(&self) -> String {
        format!("vif {}", self.config.devid)
    }

    fn run_once(&mut self, reasons: u32) {
        if self.phase == Phase::New
            && let Err(msg) = self.create()
        {
            // Without its nodes the device cannot exist; stay New and retry on the
            // next wake-up.
            self.last_error = Some(msg);
            return;
        }
        if reasons & Kick::EVENT != 0 {
            self.stats.events_from_front += 1;
        }
        if reasons & LINK != 0 {
            self.stats.link_wakeups += 1;
            self.link_armed = false;
        }
        if reasons & Kick::XENBUS != 0 {
            self.follow_frontend();
        }
        if self.phase == Phase::Connected {
            self.serve_tx();
            self.serve_rx();
        } else if !self.link_armed {
            // Not connected: frames from the host have nowhere to go. Drain them so
            // that the link does not fill with stale traffic, and wait for more.
            let mut buf = Vec::new();
            while let Ok(Some(_)) = self.link.recv_frame(&mut buf) {
                self.stats.rx_dropped_unconnected += 1;
            }
            self.arm_link();
        }
    }

    fn stats(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.stats).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("link".into(), self.link.stats());
            o.insert("state".into(), format!("{:?}", self.phase).into());
            if let Some(e) = &self.last_error {
                o.insert("last_error".into(), e.clone().into());
            }
        }
        v
    }

    fn shutdown(&mut self) {
        self.disconnect();
    }
}
