//! virtio-blk (virtio 1.2, section 5.2) on the shared disk-image code, behind the
//! modern virtio-pci transport ([`super::virtio_pci`]).
//!
//! One request queue. A request is a descriptor chain: the 16-byte header (type,
//! reserved, sector) readable by the device, the data (readable for a write, writable
//! for a read), and a last writable status byte. Served: `VIRTIO_BLK_T_IN`, `OUT`,
//! `FLUSH` (the same durability rule as the other disks: a flush is `fdatasync`, a
//! write is done once `pwrite` returned) and `GET_ID`; anything else is
//! `VIRTIO_BLK_S_UNSUPP`. Offered: `SEG_MAX` (queue size - 2, as QEMU), `SIZE_MAX`
//! ([`SIZE_MAX`] bytes a segment), `BLK_SIZE`, `FLUSH`, `RO` for a read-only image,
//! indirect descriptors and `EVENT_IDX`; a request beyond `seg_max` segments or with a
//! segment beyond `size_max` gets `VIRTIO_BLK_S_IOERR`.
//!
//! The guest is hostile: a chain that is not whole ([`whole_chain`]: it loops, runs
//! longer than the queue, names a descriptor beyond it or adds up to more than 2^32
//! bytes), points outside RAM or is too short is dropped and counted; a request
//! past the end of the disk, not in whole sectors, larger than [`MAX_REQUEST`] or a
//! write to a read-only disk gets `VIRTIO_BLK_S_IOERR`. Requests are served on the
//! device's thread when the doorbell KVM absorbs rings ([`super::virtio_pci::VirtioWorker`]),
//! or in the notify exit where there is no doorbell.

use std::io::{Read as _, Write as _};

use virtio_bindings::virtio_blk as blk;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

use super::GuestMemory;
use super::virtio_pci::{F_EVENT_IDX, F_INDIRECT_DESC, VirtioDevice, drain_queue, whole_chain};
use crate::hostio::disk::DiskImage;

/// The virtio device type.
pub const VIRTIO_ID_BLOCK: u16 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK as u16;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest request (data bytes) served; larger ones fail with `IOERR`.
pub const MAX_REQUEST: usize = 4 << 20;
/// `size_max`: the largest segment (one descriptor's data) in bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// `seg_max`: the most data segments in a request (the queue size less the header and
/// status descriptors, as QEMU offers).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

const SECTOR: u64 = 512;

/// Feature bits (`virtio_blk.h`, `virtio_ring.h`), as masks.
const F_SIZE_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SIZE_MAX;
const F_SEG_MAX: u64 = 1 << blk::VIRTIO_BLK_F_SEG_MAX;
const F_RO: u64 = 1 << blk::VIRTIO_BLK_F_RO;
const F_BLK_SIZE: u64 = 1 << blk::VIRTIO_BLK_F_BLK_SIZE;
const F_FLUSH: u64 = 1 << blk::VIRTIO_BLK_F_FLUSH;

/// Request types and status values.
const T_IN: u32 = blk::VIRTIO_BLK_T_IN;
const T_OUT: u32 = blk::VIRTIO_BLK_T_OUT;
const T_FLUSH: u32 = blk::VIRTIO_BLK_T_FLUSH;
const T_GET_ID: u32 = blk::VIRTIO_BLK_T_GET_ID;
const S_OK: u8 = blk::VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = blk::VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = blk::VIRTIO_BLK_S_UNSUPP as u8;
/// Bytes of a `GET_ID` answer.
const ID_BYTES: usize = blk::VIRTIO_BLK_ID_BYTES as usize;

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
    /// Requests failed with `IOERR` (range, size, read-only, limits, host I/O).
    pub io_errors: u64,
    /// Of those, requests beyond `seg_max` segments or with a segment beyond `size_max`.
    pub limit_errors: u64,
    /// Chains dropped as malformed (not whole, no header or status, bad addresses).
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
    /// `stats.ring_errors` at the last reset: more since means the device needs one.
    ring_errors_at_reset: u64,
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
            ring_errors_at_reset: 0,
        }
    }

    /// The configuration space (`struct virtio_blk_config` up to `blk_size`).
    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        // size_max at 8; seg_max at 12; geometry (not offered) at 16; blk_size at 20.
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }

    /// Serves one request; returns the bytes written into the chain (data + status),
    /// or `None` for a chain too broken to answer.
    fn serve(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        let descriptors = chain.clone().count() as u64;
        self.stats.max_chain = self.stats.max_chain.max(descriptors);
        if !whole_chain(&chain) {
            return None;
        }
        let within_limits = within_limits(chain.clone().map(|d| d.len()));
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
            T_IN | T_OUT if !within_limits => {
                self.stats.limit_errors += 1;
                S_IOERR
            }
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
        F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX | ro
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
        self.ring_errors_at_reset = self.stats.ring_errors;
    }

    fn needs_reset(&self) -> bool {
        self.stats.ring_errors > self.ring_errors_at_reset
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.stats).unwrap_or_default()
    }
}

/// Whether a request whose descriptors have these lengths (header, data segments,
/// status) keeps to `seg_max` and `size_max`.
fn within_limits(lengths: impl Iterator<Item = u32>) -> bool {
    let mut descriptors = 0u32;
    for len in lengths {
        descriptors += 1;
        if len > SIZE_MAX || descriptors > SEG_MAX + 2 {
            return false;
        }
    }
    true
}

impl VirtioBlk {
    /// Serves every available request; returns whether the driver wants an interrupt.
    fn drain(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut ring_errors = 0;
        let interrupt = drain_queue(queue, mem, &mut ring_errors, |chain| {
            self.serve(mem, chain).unwrap_or_else(|| {
                self.stats.bad_chains += 1;
                0
            })
        });
        self.stats.ring_errors += ring_errors;
        interrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostio::disk::DiskOptions;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    struct Rig {
        mem: GuestMemoryMmap,
        blk: VirtioBlk,
        path: std::path::PathBuf,
    }

    fn rig(tag: &str, read_only: bool) -> Rig {
        let path =
            std::env::temp_dir().join(format!("virtio-blk-unit-{tag}-{}.img", std::process::id()));
        let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let disk = DiskImage::open(
            &path,
            DiskOptions {
                read_only,
                ..Default::default()
            },
        )
        .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        Rig {
            mem,
            blk: VirtioBlk::new(disk, "serial-number-of-the-disk"),
            path,
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(kind: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h
    }

    impl Rig {
        /// Runs one chain through the device: (used length, status byte).
        fn request(&mut self, descs: &[RawDescriptor], hdr: &[u8]) -> (u32, u8) {
            self.mem.write_slice(hdr, GuestAddress(HDR)).unwrap();
            self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let vq = MockSplitQueue::new(&self.mem, 16);
            vq.build_desc_chain(descs).unwrap();
            let q: Queue = vq.create_queue().unwrap();
            self.blk.activate(1 << 32, vec![q], self.mem.clone());
            self.blk.notify(0);
            let used_len: u32 = self
                .mem
                .read_obj(GuestAddress(vq.used_addr().0 + 8))
                .unwrap();
            let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
            (used_len, status)
        }

        fn data(&self, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
            b
        }
    }

    #[test]
    fn reads_writes_flushes_and_names_itself() {
        let mut r = rig("rw", false);
        let read = [
            desc(HDR, 16, 0),
            desc(DATA, 1024, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert_eq!(r.request(&read, &header(T_IN, 3)), (1025, S_OK));
        assert_eq!(r.data(1024)[..2], [3, 3]);
        assert_eq!(r.data(1024)[512], 4);

        r.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        let write = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)];
        assert_eq!(r.request(&write, &header(T_OUT, 7)), (1, S_OK));
        let image = std::fs::read(&r.path).unwrap();
        assert_eq!(image[7 * 512..8 * 512], [0x5a; 512]);

        let flush = [desc(HDR, 16, 0), desc(STATUS, 1, WRITE)];
        assert_eq!(r.request(&flush, &header(T_FLUSH, 0)), (1, S_OK));
        let id = [
            desc(HDR, 16, 0),
            desc(DATA, 20, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert_eq!(r.request(&id, &header(T_GET_ID, 0)), (21, S_OK));
        assert_eq!(&r.data(20), b"serial-number-of-the");
        let s = r.blk.stats;
        assert_eq!((s.reads, s.writes, s.flushes, s.get_ids), (1, 1, 1, 1));
        assert_eq!(s.bytes_read, 1024);
        assert_eq!(s.bytes_written, 512);
    }

    /// Regression (the hostile guest of #16): a chain that loops was served as far as
    /// rust-vmm's walk went (its status byte written into a data buffer), and one of
    /// more than 2^32 bytes as the descriptors before the one that overflowed.
    #[test]
    fn chains_that_are_not_whole_are_dropped() {
        const NEXT: u16 = 1; // VRING_DESC_F_NEXT
        let mut r = rig("whole", false);
        r.mem
            .write_slice(&header(T_IN, 0), GuestAddress(HDR))
            .unwrap();
        r.mem
            .write_slice(&[0xa5; 1024], GuestAddress(DATA))
            .unwrap();
        let vq = MockSplitQueue::new(&r.mem, 16);
        let d = |addr, len, flags, next| {
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        };
        // Header, data, header, ...
        vq.add_desc_chains(&[d(HDR, 16, NEXT, 1), d(DATA, 512, WRITE | NEXT, 0)], 0)
            .unwrap();
        // Header, 4 GiB - 1 of data, status.
        let huge = [
            d(HDR, 16, NEXT, 3),
            d(DATA, u32::MAX, WRITE | NEXT, 4),
            d(STATUS, 1, WRITE, 0),
        ];
        vq.add_desc_chains(&huge, 2).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        r.blk.activate(1 << 32, vec![q], r.mem.clone());
        r.blk.notify(0);
        assert_eq!(r.blk.stats.bad_chains, 2);
        assert_eq!(r.blk.stats.reads, 0);
        assert_eq!(r.data(1024), vec![0xa5; 1024], "nothing written");
        let used = |i: u64| -> (u32, u32) {
            let at = vq.used_addr().0 + 4 + 8 * i;
            (
                r.mem.read_obj(GuestAddress(at)).unwrap(),
                r.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        };
        assert_eq!((used(0), used(1)), ((0, 0), (2, 0)));
    }

    #[test]
    fn bad_requests_get_an_error_status_and_broken_chains_are_dropped() {
        let mut r = rig("bad", true);
        let read = |len| {
            [
                desc(HDR, 16, 0),
                desc(DATA, len, WRITE),
                desc(STATUS, 1, WRITE),
            ]
        };
        // Past the end (128 sectors), not whole sectors, a write to a read-only disk,
        // an unknown type.
        assert_eq!(r.request(&read(1024), &header(T_IN, 127)).1, S_IOERR);
        assert_eq!(
            r.request(&read(1024), &header(T_IN, u64::MAX / 256)).1,
            S_IOERR
        );
        assert_eq!(r.request(&read(100), &header(T_IN, 0)).1, S_IOERR);
        let write = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)];
        assert_eq!(r.request(&write, &header(T_OUT, 0)).1, S_IOERR);
        assert_eq!(r.request(&read(512), &header(99, 0)).1, S_UNSUPP);
        assert_eq!(r.blk.stats.io_errors, 4);
        assert_eq!(r.blk.stats.unsupported, 1);
        assert_eq!(std::fs::read(&r.path).unwrap()[0], 0, "nothing written");

        // No writable byte for the status, a header shorter than 16 bytes, a buffer
        // outside guest RAM: used with length 0, counted, nothing written.
        let no_status = [desc(HDR, 16, 0), desc(DATA, 512, 0)];
        assert_eq!(r.request(&no_status, &header(T_IN, 0)), (0, 0xee));
        let short = [desc(HDR, 8, 0), desc(STATUS, 1, WRITE)];
        assert_eq!(r.request(&short, &header(T_IN, 0)), (0, 0xee));
        let outside = [
            desc(HDR, 16, 0),
            desc(0x10_0000_0000, 512, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert_eq!(r.request(&outside, &header(T_IN, 0)).0, 0);
        assert_eq!(r.blk.stats.bad_chains, 3);
        // A segment beyond size_max: IOERR, nothing read.
        let mut r2 = rig("limits", false);
        let big = [
            desc(HDR, 16, 0),
            desc(DATA, SIZE_MAX + 512, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert_eq!(r2.request(&big, &header(T_IN, 0)).1, S_IOERR);
        assert_eq!(r2.blk.stats.limit_errors, 1);
        assert_eq!(r2.blk.stats.bytes_read, 0);
        // seg_max: header + 254 segments + status is the most.
        let at_most = std::iter::repeat_n(512, SEG_MAX as usize + 2);
        assert!(within_limits(at_most));
        assert!(!within_limits(std::iter::repeat_n(
            512,
            SEG_MAX as usize + 3
        )));
        assert!(!within_limits([16, SIZE_MAX + 1, 1].into_iter()));
        // The offered features follow the image: read-only here.
        assert_ne!(r.blk.features() & F_RO, 0);
    }

    #[test]
    fn the_configuration_reports_capacity_and_limits() {
        let r = rig("cfg", false);
        let mut c = [0u8; 24];
        r.blk.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 128);
        assert_eq!(u32::from_le_bytes(c[8..12].try_into().unwrap()), SIZE_MAX);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        let mut far = [9u8; 4];
        r.blk.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
    }
}
