//! The device interfaces the guest's upper layers use: [`BlockDevice`] and
//! [`NetDevice`].
//!
//! blkfront and netfront implement them over Xen's shared rings; the emulated-device
//! drivers (ATA, e1000) implement the same traits, so the block workload and the smoltcp
//! glue above cannot tell which path is underneath. Both traits are poll-driven and
//! never block: the caller submits work, then calls `poll` when the device's interrupt
//! or event fired (or on a timer, to recover from a lost one), and collects
//! completions.

use alloc::vec::Vec;
use core::fmt;

/// What a block device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Number of sectors, in units of [`BlockInfo::sector_size`].
    pub sectors: u64,
    /// Bytes per sector (512 or a larger power of two).
    pub sector_size: u32,
    /// Writes are refused.
    pub read_only: bool,
    /// A [`BlockOp::Flush`] makes earlier completed writes durable.
    pub flush: bool,
    /// Requests the device can have in flight at once.
    pub queue_depth: u32,
    /// Largest transfer of one request, in bytes.
    pub max_transfer: u32,
}

impl BlockInfo {
    /// Checks a request against the device before any driver queues it, by the rules
    /// of [`BlockDevice::submit`]: a read carries no data, a write exactly `count`
    /// sectors of it, neither is empty, larger than [`BlockInfo::max_transfer`] or past
    /// the end; a flush carries neither sectors nor data. A write to a read-only
    /// device, or a flush to one without [`BlockInfo::flush`], is
    /// [`BlockError::Unsupported`]; anything else malformed is
    /// [`BlockError::BadRequest`]. Every block driver calls this one check.
    pub fn check(
        &self,
        op: BlockOp,
        sector: u64,
        count: u32,
        data: &[u8],
    ) -> Result<(), BlockError> {
        match op {
            BlockOp::Read | BlockOp::Write => {
                let write = op == BlockOp::Write;
                if write && self.read_only {
                    return Err(BlockError::Unsupported);
                }
                let bytes = u64::from(count) * u64::from(self.sector_size);
                let data_ok = if write {
                    data.len() as u64 == bytes
                } else {
                    data.is_empty()
                };
                let end = sector.checked_add(u64::from(count));
                if count == 0
                    || !data_ok
                    || bytes > u64::from(self.max_transfer)
                    || end.is_none_or(|e| e > self.sectors)
                {
                    return Err(BlockError::BadRequest);
                }
            }
            BlockOp::Flush => {
                if count != 0 || !data.is_empty() {
                    return Err(BlockError::BadRequest);
                }
                if !self.flush {
                    return Err(BlockError::Unsupported);
                }
            }
        }
        Ok(())
    }
}

/// What a block request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOp {
    /// Read `count` sectors from `sector`.
    Read,
    /// Write the request's data at `sector`.
    Write,
    /// Make every write completed before this request durable (no data).
    Flush,
}

/// Errors of block devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Every request slot is in use: poll for completions, then retry.
    Busy,
    /// The request is malformed: zero or too many sectors, a data length that is not
    /// a whole number of sectors, beyond the end of the device.
    BadRequest,
    /// A write to a read-only device, or a flush the device does not offer.
    Unsupported,
    /// The device answered the request with an I/O error.
    Io,
    /// The device broke the protocol (a response for no request, a bad length) and
    /// was shut down; nothing more will complete.
    Protocol,
    /// The device is not connected (or was disconnected by the other side).
    Disconnected,
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Busy => "no free request slot",
            Self::BadRequest => "malformed block request",
            Self::Unsupported => "operation not supported by the device",
            Self::Io => "I/O error",
            Self::Protocol => "device broke the protocol",
            Self::Disconnected => "device disconnected",
        })
    }
}

impl core::error::Error for BlockError {}

/// One finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct BlockCompletion {
    /// The tag [`BlockDevice::submit`] returned.
    pub tag: u64,
    /// What the request did.
    pub op: BlockOp,
    /// The result. On success of a read, `data` holds the sectors read.
    pub result: Result<(), BlockError>,
    /// Data read (empty for writes, flushes and failures).
    pub data: Vec<u8>,
}

/// A block device with a queue of requests in flight.
pub trait BlockDevice {
    /// Geometry and features.
    fn info(&self) -> BlockInfo;

    /// Queues a request. `sector` is in units of the device's sector size. For a
    /// read, `count` sectors are read and `data` must be empty; for a write, `data`
    /// is the whole payload (a multiple of the sector size) and `count` must equal
    /// its length in sectors; for a flush, both are zero. The data is copied before
    /// this returns. Returns a tag that the completion carries.
    ///
    /// Requests may be batched: the device may hold back the notification until
    /// [`BlockDevice::kick`] or until its queue fills.
    fn submit(
        &mut self,
        op: BlockOp,
        sector: u64,
        count: u32,
        data: &[u8],
    ) -> Result<u64, BlockError>;

    /// Publishes queued requests and notifies the device if it needs it.
    fn kick(&mut self);

    /// Collects finished requests into `done` (appending); returns how many.
    fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError>;

    /// Requests submitted and not yet collected by [`BlockDevice::poll`].
    fn in_flight(&self) -> u32;
}

/// Errors of network devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// No room to transmit now: poll, then retry.
    Busy,
    /// The frame is empty or longer than the device takes.
    BadFrame,
    /// The device broke the protocol and was shut down.
    Protocol,
    /// The device is not connected.
    Disconnected,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Busy => "transmit queue full",
            Self::BadFrame => "frame empty or too long",
            Self::Protocol => "device broke the protocol",
            Self::Disconnected => "device disconnected",
        })
    }
}

impl core::error::Error for NetError {}

/// What a network device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetInfo {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// Largest Ethernet frame (header included, no FCS) it sends or receives.
    pub max_frame: usize,
}

/// An Ethernet device.
pub trait NetDevice {
    /// Address and limits.
    fn info(&self) -> NetInfo;

    /// Whether a frame of `len` bytes can be queued now.
    fn can_transmit(&self, len: usize) -> bool;

    /// Queues one Ethernet frame (no FCS) for transmission; `fill` writes its `len`
    /// bytes into the device's buffer. May hold back the notification until
    /// [`NetDevice::kick`].
    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), NetError>;

    /// Publishes queued frames and notifies the device if it needs it.
    fn kick(&mut self);

    /// Hands the next received frame to `take`; false if none is waiting.
    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError>;

    /// Reaps transmit completions, refills receive buffers; call when the device's
    /// event fired (or on a timer).
    fn poll(&mut self) -> Result<(), NetError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: BlockInfo = BlockInfo {
        sectors: 100,
        sector_size: 512,
        read_only: false,
        flush: true,
        queue_depth: 8,
        max_transfer: 4096,
    };

    #[test]
    fn one_check_serves_every_block_driver() {
        use BlockError::{BadRequest, Unsupported};
        let w = [0u8; 1024];
        assert_eq!(DISK.check(BlockOp::Read, 98, 2, &[]), Ok(()));
        assert_eq!(DISK.check(BlockOp::Write, 0, 2, &w), Ok(()));
        assert_eq!(DISK.check(BlockOp::Flush, 0, 0, &[]), Ok(()));
        for (op, sector, count, data, want) in [
            (BlockOp::Read, 0, 0, &[][..], BadRequest),
            (BlockOp::Read, 99, 2, &[], BadRequest),
            (BlockOp::Read, u64::MAX, 1, &[], BadRequest),
            (BlockOp::Read, 0, 9, &[], BadRequest),
            (BlockOp::Read, 0, 2, &w, BadRequest),
            (BlockOp::Write, 0, 1, &w, BadRequest),
            (BlockOp::Flush, 0, 1, &[], BadRequest),
            (BlockOp::Flush, 0, 0, &w, BadRequest),
        ] {
            assert_eq!(
                DISK.check(op, sector, count, data),
                Err(want),
                "{op:?} {sector} {count}"
            );
        }
        let ro = BlockInfo {
            read_only: true,
            flush: false,
            ..DISK
        };
        assert_eq!(ro.check(BlockOp::Write, 0, 2, &w), Err(Unsupported));
        assert_eq!(ro.check(BlockOp::Flush, 0, 0, &[]), Err(Unsupported));
        assert_eq!(ro.check(BlockOp::Read, 0, 2, &[]), Ok(()));
    }
}
