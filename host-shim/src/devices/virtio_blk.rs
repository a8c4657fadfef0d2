//! virtio-blk (virtio 1.2, section 5.2) on the shared disk-image code, behind the
//! modern virtio-pci transport ([`super::virtio_pci`]).
//!
//! One request queue. A request is a descriptor chain: the 16-byte header (type,
//! reserved, sector) readable by the device, the data (readable for a write, writable
//! for a read), and a last writable status byte. Served: `VIRTIO_BLK_T_IN`, `OUT`,
//! `FLUSH` (the same durability rule as the other disks: a flush is `fdatasync`, a
//! write is done once `pwrite` returned) and `GET_ID`; anything else is
//! `VIRTIO_BLK_S_UNSUPP`. Offered: `SEG_MAX` (queue size - 2, as QEMU), `BLK_SIZE`,
//! `FLUSH`, `RO` for a read-only image, indirect descriptors and `EVENT_IDX`.
//!
//! The guest is hostile: a chain that loops, points outside RAM or is too short is
//! dropped and counted (rust-vmm's `virtio-queue` walks it with a bound); a request
//! past the end of the disk, not in whole sectors, larger than [`MAX_REQUEST`] or a
//! write to a read-only disk gets `VIRTIO_BLK_S_IOERR`. Requests are served in the
//! notify exit, on the vCPU thread (a worker woken by an ioeventfd is still to come).

use std::io::{Read as _, Write as _};

use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

use super::GuestMemory;
use super::virtio_pci::VirtioDevice;
use crate::hostio::disk::DiskImage;

/// The virtio device type.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest request (data bytes) served; larger ones fail with `IOERR`.
pub const MAX_REQUEST: usize = 4 << 20;

const SECTOR: u64 = 512;

/// Feature bits (`virtio_blk.h`, `virtio_ring.h`).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_INDIRECT_DESC: u64 = 1 << 28;
const F_EVENT_IDX: u64 = 1 << 29;

/// Request types and status values.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Bytes of a `GET_ID` answer.
const ID_BYTES: usize = 20;

/// What the device did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct BlkStats {
    /// Requests by type.
    pub reads: u64,
    /// Writes.
    pub writes: u64,
    /// Flushes.
    pub flushes: u64,
    /// `GET_ID`s.
    pub get_ids: u64,
    /// Requests of types not served.
    pub unsupported: u64,
    /// Bytes moved each way.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests failed with `IOERR` (range, size, read-only, host I/O).
    pub io_errors: u64,
    /// Chains dropped as malformed (no header or status, bad addresses).
    pub bad_chains: u64,
    /// Ring errors (the queue's addresses or indices unusable).
    pub ring_errors: u64,
    /// Longest chain seen, in descriptors.
    pub max_chain: u64,
}

/// A virtio-blk device on a disk image.
pub struct VirtioBlk {
    disk: DiskImage,
    id: [u8; ID_BYTES],
    queue: Option<Queue>,
    mem: Option<GuestMemory>,
    stats: BlkStats,
}

impl VirtioBlk {
    /// A device on `disk`, whose serial (`GET_ID`) is `id` (truncated to 20 bytes).
    pub fn new(disk: DiskImage, id: &str) -> Self {
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            disk,
            id: serial,
            queue: None,
            mem: None,
            stats: BlkStats::default(),
        }
    }

    /// The configuration space (`struct virtio_blk_config` up to `blk_size`).
    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        // size_max (not offered) at 8; seg_max at 12; geometry at 16; blk_size at 20.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }

    /// Serves one request; returns the bytes written into the chain (data + status),
    /// or `None` for a chain too broken to answer.
    fn serve(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        let descriptors = chain.clone().count() as u64;
        self.stats.max_chain = self.stats.max_chain.max(descriptors);
        let mut reader = Reader::new(mem, chain.clone()).ok()?;
        let writer = Writer::new(mem, chain).ok()?;
        let header: [u8; 16] = reader.read_obj().ok()?;
        let kind = u32::from_le_bytes(header[0..4].try_into().ok()?);
        let sector = u64::from_le_bytes(header[8..16].try_into().ok()?);
        // The status is the chain's last writable byte.
        let writable = writer.available_bytes();
        if writable == 0 {
            return None;
        }
        let mut data = writer;
        let mut status_w = data.split_at(writable - 1).ok()?;
        let status = match kind {
            T_IN => {
                self.stats.reads += 1;
                self.read(sector, &mut data)
            }
            T_OUT => {
                self.stats.writes += 1;
                self.write(sector, &mut reader)
            }
            T_FLUSH => {
                self.stats.flushes += 1;
                if self.disk.flush().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            T_GET_ID => {
                self.stats.get_ids += 1;
                let n = data.available_bytes().min(ID_BYTES);
                if data.write_all(&self.id[..n]).is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            _ => {
                self.stats.unsupported += 1;
                S_UNSUPP
            }
        };
        if status == S_IOERR {
            self.stats.io_errors += 1;
        }
        status_w.write_obj(status).ok()?;
        Some(u32::try_from(data.bytes_written() + 1).unwrap_or(u32::MAX))
    }

    /// The byte range of `len` bytes at `sector`, if it is whole sectors on the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len as u64)?;
        ((len as u64).is_multiple_of(SECTOR)
            && len <= MAX_REQUEST
            && end <= self.disk.sectors() * SECTOR)
            .then_some(offset)
    }

    fn read(&mut self, sector: u64, data: &mut Writer<'_>) -> u8 {
        let len = data.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            return S_IOERR;
        };
        let mut buf = vec![0u8; len];
        if self.disk.read_at(offset, &mut buf).is_err() || data.write_all(&buf).is_err() {
            return S_IOERR;
        }
        self.stats.bytes_read += len as u64;
        S_OK
    }

    fn write(&mut self, sector: u64, data: &mut Reader<'_>) -> u8 {
        let len = data.available_bytes();
        let Some(offset) = self.range(sector, len) else {
            return S_IOERR;
        };
        if self.disk.read_only() {
            return S_IOERR;
        }
        let mut buf = vec![0u8; len];
        if data.read_exact(&mut buf).is_err() || self.disk.write_at(offset, &buf).is_err() {
            return S_IOERR;
        }
        self.stats.bytes_written += len as u64;
        S_OK
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI (what QEMU's virtio-blk-pci reports).
        (0x01, 0x00, 0x00)
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() { F_RO } else { 0 };
        F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX | ro
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Everything offered is read-only (no WCE or config writes negotiated).
    }

    fn activate(&mut self, features: u64, queues: Vec<Queue>, mem: GuestMemory) {
        let mut queues = queues;
        if let Some(q) = queues.first_mut() {
            q.set_event_idx(features & F_EVENT_IDX != 0);
        }
        self.queue = queues.into_iter().next().filter(|q| q.ready());
        self.mem = Some(mem);
    }

    fn notify(&mut self, index: u16) -> bool {
        if index != 0 {
            return false;
        }
        let (Some(mut queue), Some(mem)) = (self.queue.take(), self.mem.clone()) else {
            return false;
        };
        let interrupt = self.drain(&mut queue, &mem);
        self.queue = Some(queue);
        interrupt
    }

    fn reset(&mut self) {
        self.queue = None;
        self.mem = None;
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.stats).unwrap_or_default()
    }
}

impl VirtioBlk {
    /// Serves every available request; returns whether the driver wants an interrupt.
    fn drain(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut served = false;
        loop {
            if queue.disable_notification(mem).is_err() {
                self.stats.ring_errors += 1;
                return false;
            }
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = match self.serve(mem, chain) {
                    Some(len) => len,
                    None => {
                        self.stats.bad_chains += 1;
                        0
                    }
                };
                if queue.add_used(mem, head, len).is_err() {
                    self.stats.ring_errors += 1;
                    return false;
                }
                served = true;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.stats.ring_errors += 1;
                    return false;
                }
            }
        }
        served && queue.needs_notification(mem).unwrap_or(true)
    }
}
