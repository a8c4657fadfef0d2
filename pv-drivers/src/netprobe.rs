//! The frames a guest and a host-side peer exchange through a NIC under attack
//! (`selftest=hostile` in the guest, `tests/tests/hostile_guest.rs` on the host): the
//! guest asks the peer for frames to receive, tells it of frames it sent on purpose,
//! and learns from it whether any frame of an attack reached the wire.
//!
//! Every frame is Ethernet with EtherType [`ETHERTYPE`] (0x88B5, IEEE 802's local
//! experimental type, so no stack on either side takes it for its own), then
//! [`MAGIC`], an [`Op`] byte, a zero byte and two big-endian `u16` arguments; the rest
//! is [`filler`], a function of the byte's offset, so a frame can be checked whole.
//!
//! | op        | from  | `a`             | `b`                                        |
//! |-----------|-------|-----------------|--------------------------------------------|
//! | `Request` | guest | frames wanted   | their length in bytes                      |
//! | `Good`    | guest | a sequence      | 0                                          |
//! | `Attack`  | guest | the attack      | 0: never meant to leave the NIC            |
//! | `Data`    | peer  | a sequence      | 0                                          |
//! | `Ack`     | peer  | the `Good`'s    | frames seen from that sender that were     |
//! |           |       | sequence        | `Attack`s or not of this protocol          |

/// The EtherType of every frame of the protocol.
pub const ETHERTYPE: u16 = 0x88b5;
/// What the payload begins with.
pub const MAGIC: [u8; 4] = *b"HSTL";
/// Bytes before the filler: Ethernet header, magic, op, a zero byte, `a`, `b`.
pub const HEADER: usize = 14 + 4 + 1 + 1 + 2 + 2;
/// The shortest frame either side sends (Ethernet's minimum without FCS).
pub const MIN_FRAME: usize = 60;
/// The broadcast address (the guest's frames go to it).
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// The peer's source address (locally administered).
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x48, 0x53, 0x54, 0x4c];

/// What a frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Guest to peer: send me `a` frames of `b` bytes.
    Request,
    /// Guest to peer: a frame sent on purpose; answer with an `Ack`.
    Good,
    /// Guest: the frame of an attack, which the device must not send.
    Attack,
    /// Peer to guest: a frame asked for.
    Data,
    /// Peer to guest: the answer to a `Good`.
    Ack,
}

impl Op {
    fn byte(self) -> u8 {
        match self {
            Op::Request => b'R',
            Op::Good => b'G',
            Op::Attack => b'X',
            Op::Data => b'D',
            Op::Ack => b'A',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'R' => Op::Request,
            b'G' => Op::Good,
            b'X' => Op::Attack,
            b'D' => Op::Data,
            b'A' => Op::Ack,
            _ => return None,
        })
    }
}

/// A frame's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub op: Op,
    pub a: u16,
    pub b: u16,
}

/// The filler byte at offset `i` of a frame.
pub fn filler(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0x5a
}

/// Fills `frame` (at least [`HEADER`] bytes, else false) as a frame from `src` to
/// `dst` carrying `msg`.
pub fn write(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], msg: Message) -> bool {
    if frame.len() < HEADER {
        return false;
    }
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    frame[14..18].copy_from_slice(&MAGIC);
    frame[18] = msg.op.byte();
    frame[19] = 0;
    frame[20..22].copy_from_slice(&msg.a.to_be_bytes());
    frame[22..24].copy_from_slice(&msg.b.to_be_bytes());
    for (i, b) in frame.iter_mut().enumerate().skip(HEADER) {
        *b = filler(i);
    }
    true
}

/// The sender and message of `frame`, if it is a frame of the protocol (its filler is
/// not looked at: see [`filler_intact`]).
pub fn parse(frame: &[u8]) -> Option<([u8; 6], Message)> {
    if frame.len() < HEADER
        || frame[12..14] != ETHERTYPE.to_be_bytes()
        || frame[14..18] != MAGIC
        || frame[19] != 0
    {
        return None;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&frame[6..12]);
    let op = Op::from_byte(frame[18])?;
    let a = u16::from_be_bytes([frame[20], frame[21]]);
    let b = u16::from_be_bytes([frame[22], frame[23]]);
    Some((src, Message { op, a, b }))
}

/// Whether every byte after the header is the [`filler`] of its offset.
pub fn filler_intact(frame: &[u8]) -> bool {
    frame
        .iter()
        .enumerate()
        .skip(HEADER)
        .all(|(i, &b)| b == filler(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_others_are_not_taken() {
        let mut f = [0u8; 100];
        let m = Message {
            op: Op::Request,
            a: 3,
            b: 1514,
        };
        assert!(write(&mut f, BROADCAST, [2, 0, 0, 0, 0, 9], m));
        assert_eq!(parse(&f), Some(([2, 0, 0, 0, 0, 9], m)));
        assert!(filler_intact(&f));
        f[99] ^= 1;
        assert!(!filler_intact(&f));
        for op in [Op::Good, Op::Attack, Op::Data, Op::Ack] {
            assert_eq!(Op::from_byte(op.byte()), Some(op));
        }
        // Not the protocol: another EtherType, another magic, an unknown op, too short.
        let mut g = f;
        g[13] = 0;
        assert_eq!(parse(&g), None);
        let mut g = f;
        g[14] = b'h';
        assert_eq!(parse(&g), None);
        let mut g = f;
        g[18] = b'?';
        assert_eq!(parse(&g), None);
        assert_eq!(parse(&f[..HEADER - 1]), None);
        assert!(!write(&mut [0u8; HEADER - 1], BROADCAST, PEER_MAC, m));
    }
}
