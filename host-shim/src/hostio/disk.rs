//! A raw disk image file: the host side of every disk the shim offers (blkback, the
//! emulated IDE disk, virtio-blk), so that a difference between their numbers comes from
//! the device protocol and not from the host code.
//!
//! Durability rule, the same for every device: a write is complete once `pwrite`
//! returned, and a flush (a PV flush or barrier, ATA FLUSH CACHE, a virtio flush) is
//! `fdatasync`.
//!
//! One writer per image, as QEMU locks its images: a writable image is locked
//! exclusively and a read-only one shared (`flock(2)`, taken when the image is opened,
//! before any guest runs, and held as long as it is open), so a second writer (the same
//! file given twice, or to two shims at once) and a reader beside a writer are refused
//! with a clear error instead of one guest silently destroying the other's data.
//! Read-only users may share an image. The lock is advisory: programs that do not take
//! it (`dd`, `fio`) are not kept out.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes per sector of every disk the shim offers.
pub const SECTOR_SIZE: u64 = 512;

/// Alignment of the bounce buffer for `O_DIRECT` I/O (a page: enough for any logical
/// block size the host's disks use).
const DIRECT_ALIGN: usize = 4096;

/// How to open a disk image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Refuse writes (open the file read-only).
    pub read_only: bool,
    /// Create the file if missing, and give an empty file this size in bytes.
    pub create_size: Option<u64>,
    /// Bypass the host page cache (`O_DIRECT`). Requests are 512-byte aligned, so the
    /// file must live on a device whose logical block size is 512.
    pub direct: bool,
}

/// A buffer whose usable part starts at a [`DIRECT_ALIGN`]-aligned address.
#[derive(Debug, Default)]
struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    /// `len` bytes at an aligned address (contents unspecified).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw.resize(len + DIRECT_ALIGN, 0);
        }
        let skip = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        &mut self.raw[skip..skip + len]
    }
}

/// Takes the image's lock: exclusive for a writer, shared for a reader; refused at
/// once (no waiting) when another holder conflicts.
fn lock(file: &File, read_only: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let kind = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() != io::ErrorKind::WouldBlock {
        return Err(e);
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        if read_only {
            "in use: another user holds it for writing (its lock is exclusive)"
        } else {
            "in use: another user has it open (one writer per image; given twice, or to \
             another running host-shim?)"
        },
    ))
}

/// A raw disk image file.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    bytes: u64,
    read_only: bool,
    direct: bool,
    bounce: AlignedBuf,
}

impl DiskImage {
    /// Opens (or creates, see [`DiskOptions::create_size`]) the image at `path`.
    pub fn open(path: impl AsRef<Path>, opts: DiskOptions) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut o = OpenOptions::new();
        o.read(true).write(!opts.read_only);
        if opts.create_size.is_some() && !opts.read_only {
            o.create(true);
        }
        if opts.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(&path)?;
        lock(&file, opts.read_only)?;
        let mut bytes = file.metadata()?.len();
        if let Some(size) = opts.create_size
            && bytes == 0
            && !opts.read_only
        {
            file.set_len(size)?;
            bytes = size;
        }
        Ok(Self {
            file,
            path,
            bytes,
            read_only: opts.read_only,
            direct: opts.direct,
            bounce: AlignedBuf::default(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes, when opened.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Size in 512-byte sectors (a partial last sector is not part of the disk).
    pub fn sectors(&self) -> u64 {
        self.bytes / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the file is open with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.direct {
            let bounce = self.bounce.get(buf.len());
            self.file.read_exact_at(bounce, offset)?;
            buf.copy_from_slice(bounce);
            Ok(())
        } else {
            self.file.read_exact_at(buf, offset)
        }
    }

    /// Writes `data` at `offset`; returns once the write system call completed.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        if self.direct {
            let bounce = self.bounce.get(data.len());
            bounce.copy_from_slice(data);
            self.file.write_all_at(bounce, offset)
        } else {
            self.file.write_all_at(data, offset)
        }
    }

    /// Makes completed writes durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("disk-unit-{}-{tag}.img", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn disk_image_create_read_write_and_read_only() {
        let path = temp("rw");
        let opts = DiskOptions {
            create_size: Some(10 * 512 + 100),
            ..Default::default()
        };
        let mut d = DiskImage::open(&path, opts).unwrap();
        // A partial last sector is not part of the disk.
        assert_eq!(d.sectors(), 10);
        d.write_at(512, &[7; 1024]).unwrap();
        d.flush().unwrap();
        let mut buf = [0u8; 1536];
        d.read_at(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 0));
        assert!(buf[512..].iter().all(|&b| b == 7));
        // Reopening an existing file keeps its size and data.
        drop(d);
        let mut d = DiskImage::open(&path, opts).unwrap();
        assert_eq!(d.sectors(), 10);
        // Past the end is an error, not a short read.
        assert!(d.read_at(10 * 512, &mut buf[..512]).is_err());
        drop(d);
        let ro_opts = DiskOptions {
            read_only: true,
            ..Default::default()
        };
        let mut ro = DiskImage::open(&path, ro_opts).unwrap();
        assert!(ro.read_only());
        assert!(ro.write_at(0, &[1; 512]).is_err());
        ro.read_at(512, &mut buf[..512]).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 7));
        // One writer per image: readers share it, a writer beside anyone is refused,
        // and the lock goes with the last holder.
        let ro2 = DiskImage::open(&path, ro_opts).unwrap();
        let busy = DiskImage::open(&path, opts).unwrap_err();
        assert_eq!(busy.kind(), io::ErrorKind::ResourceBusy);
        assert!(busy.to_string().contains("one writer per image"), "{busy}");
        drop((ro, ro2));
        let w = DiskImage::open(&path, opts).unwrap();
        assert!(DiskImage::open(&path, opts).is_err(), "a second writer");
        let e = DiskImage::open(&path, ro_opts).unwrap_err();
        assert!(e.to_string().contains("holds it for writing"), "{e}");
        drop(w);
        assert!(DiskImage::open(&path, opts).is_ok());
        // A missing file is not created without a size.
        let missing = temp("missing");
        assert!(DiskImage::open(&missing, DiskOptions::default()).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut b = AlignedBuf::default();
        for len in [0, 1, 512, 4096, 100_000] {
            let s = b.get(len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % DIRECT_ALIGN, 0);
        }
    }
}
