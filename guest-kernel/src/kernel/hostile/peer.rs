//! The guest's side of the conversation with the host test's peer through a NIC under
//! attack ([`pv_drivers::netprobe`]), the same for the e1000 and virtio-net: frames
//! asked for (the receive attacks need frames to arrive at the right moment), attack
//! frames marked as such, and a good frame whose answer says how many attack frames
//! reached the wire.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use pv_drivers::netprobe::{self, Message, Op};

use super::super::pv;
use super::REPLY_NS;

/// A NIC as the attacks use it while it is well set up.
pub(super) trait Wire {
    /// The NIC's Ethernet address.
    fn mac(&self) -> [u8; 6];
    /// Sends `frame`; whether the device took it.
    fn send(&mut self, frame: &[u8]) -> bool;
    /// The next frame received before `deadline` (`pv::now_ns`), if any.
    fn receive(&mut self, deadline: u64) -> Option<Vec<u8>>;
}

/// Asks the peer for `count` frames of `len` bytes, sent to this NIC.
pub(super) fn request(w: &mut impl Wire, count: u16, len: u16) -> bool {
    let mut f = [0u8; netprobe::MIN_FRAME];
    let msg = Message {
        op: Op::Request,
        a: count,
        b: len,
    };
    netprobe::write(&mut f, netprobe::BROADCAST, w.mac(), msg) && w.send(&f)
}

/// The `len`-byte frame of attack `n` from `mac` (at least the protocol's header): the
/// peer counts it if it ever arrives.
pub(super) fn attack_frame(mac: [u8; 6], n: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(netprobe::HEADER)];
    let msg = Message {
        op: Op::Attack,
        a: n,
        b: 0,
    };
    netprobe::write(&mut f, netprobe::BROADCAST, mac, msg);
    f
}

/// Whether `frame` is a `Data` frame of the peer's, whole.
pub(super) fn is_data(frame: &[u8]) -> bool {
    matches!(netprobe::parse(frame), Some((netprobe::PEER_MAC, m)) if m.op == Op::Data)
        && netprobe::filler_intact(frame)
}

/// Sends good frame `seq` and waits for the peer's answer; returns how many frames the
/// peer has seen from this NIC that were attacks or not of the protocol.
pub(super) fn good_exchange(w: &mut impl Wire, seq: u16) -> Result<u16, String> {
    let mut f = vec![0u8; 200];
    let msg = Message {
        op: Op::Good,
        a: seq,
        b: 0,
    };
    netprobe::write(&mut f, netprobe::BROADCAST, w.mac(), msg);
    if !w.send(&f) {
        return Err("the device did not take the good frame".into());
    }
    let deadline = pv::now_ns().saturating_add(REPLY_NS);
    loop {
        let Some(r) = w.receive(deadline) else {
            return Err("no answer from the peer".into());
        };
        match netprobe::parse(&r) {
            Some((netprobe::PEER_MAC, m)) if m.op == Op::Ack && m.a == seq => {
                if !netprobe::filler_intact(&r) {
                    return Err(format!("the answer ({} bytes) arrived damaged", r.len()));
                }
                return Ok(m.b);
            }
            // Anything else (a frame asked for earlier that came late) is not the answer.
            other => log::debug!("hostile: peer: skipping {other:?}"),
        }
    }
}
