//! The host side of a PV network device: a [`Link`] that carries Ethernet frames, with
//! two implementations: [`Tap`], a Linux TAP interface (`/dev/net/tun`,
//! `Documentation/networking/tuntap.rst`), and [`MemLink`], an in-memory pair for
//! tests.
//!
//! # TAP
//! [`Tap::open`] attaches to the TAP interface of that name, creating it if absent
//! (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI`: a created interface lives as long as the
//! file descriptor; one made persistent beforehand with `ip tuntap add` stays). When
//! [`TapOptions::up`] is set it also brings the link up (`SIOCSIFFLAGS` with `IFF_UP`,
//! which needs `CAP_NET_ADMIN`); addresses, routes and bridges are left to the user
//! (`ip addr add 10.0.0.1/24 dev NAME`).
//!
//! With [`TapOptions::vnet_hdr`] (`IFF_VNET_HDR`, `TUNSETOFFLOAD` with `TUN_F_CSUM`)
//! every frame carries a 10-byte `struct virtio_net_hdr`: the host kernel may then hand
//! over frames with a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), which
//! [`Tap::recv_frame`] completes in the same pass that copies the frame (the checksum
//! the host would have computed while copying anyway), and frames it has already
//! checked (`VIRTIO_NET_HDR_F_DATA_VALID`) are reported as such, which netback passes
//! to the guest as `NETRXF_data_validated`. Segmentation offloads are not enabled (the
//! guest does not negotiate GSO), so frames never exceed the interface MTU. Without
//! it, frames are plain Ethernet frames with complete checksums.
//!
//! The descriptor is non-blocking. [`Link::arm`] starts (once) a small poller thread
//! that waits in `poll(2)` on the descriptor and runs the given notifier when a frame
//! is readable; it is one-shot, so a backend that stops reading (no guest buffers)
//! is not woken again until it drains the link and re-arms.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::xen::evtchn::Notifier;

/// Largest frame a link carries (the 16-bit size of a netif request).
pub const MAX_FRAME: usize = 65535;

/// `sizeof(struct virtio_net_hdr)` (without `num_buffers`), the TAP default.
const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start`, stored at
/// `csum_start + csum_offset`.
const VNET_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has been verified.
const VNET_F_DATA_VALID: u8 = 2;

/// What a link knows of a frame it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// The protocol checksum is known to be correct.
    pub data_validated: bool,
}

/// A carrier of Ethernet frames (no FCS) between a backend and the host.
pub trait Link: Send + 'static {
    /// Sends one frame. `WouldBlock` (queue full) and other errors mean the frame was
    /// dropped; the caller counts it.
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Receives one frame into `buf` (replacing its contents); `Ok(None)` when none
    /// is waiting.
    fn recv_frame(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<FrameMeta>>;

    /// Runs `wake` once, from any thread, when a frame may be ready to receive (at
    /// once if one already is). One-shot: call again after
    /// [`recv_frame`](Link::recv_frame) returned `None`.
    fn arm(&mut self, wake: Notifier);

    /// The link's own counters, for `--stats`.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// How to open a TAP interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// Use `IFF_VNET_HDR` with checksum offload (see the module documentation).
    pub vnet_hdr: bool,
    /// Bring the interface up (needs `CAP_NET_ADMIN`).
    pub up: bool,
}

/// The TAP poller thread's shared state.
struct Poller {
    armed: Mutex<Option<Notifier>>,
    cv: Condvar,
    stop: AtomicBool,
    stop_fd: EventFd,
}

/// A TAP interface.
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
    poller: Option<(Arc<Poller>, JoinHandle<()>)>,
    rx_buf: Vec<u8>,
    /// Frames whose partial checksum was completed here.
    csum_completed: u64,
    /// Frames with an unusable virtio header (dropped).
    bad_headers: u64,
}

/// `ifr_name` from an interface name: 1..=15 bytes, no NUL, `/` or whitespace.
fn ifr_name(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (a name array and a union of integers, addresses
    // and a pointer): all-zero bytes are a valid value of it.
    unsafe { std::mem::zeroed() }
}

impl Tap {
    /// Opens (creating if absent) TAP interface `name`.
    pub fn open(name: &str, options: TapOptions) -> io::Result<Self> {
        let ifname = ifr_name(name)?;
        let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut req = zeroed_ifreq();
        req.ifr_name = ifname;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if options.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one and lives
        // across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if options.vnet_hdr {
            let hdr_len = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid.
            if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: TUNSETOFFLOAD takes its flags by value.
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::TUN_F_CSUM as libc::c_ulong,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let tap = Self {
            file,
            name: name.into(),
            vnet_hdr: options.vnet_hdr,
            poller: None,
            rx_buf: vec![0; VNET_HDR_LEN + MAX_FRAME],
            csum_completed: 0,
            bad_headers: 0,
        };
        if options.up {
            tap.set_up()?;
        }
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor (readable when a frame is waiting).
    pub fn readiness_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Brings the interface up (needs `CAP_NET_ADMIN`).
    pub fn set_up(&self) -> io::Result<()> {
        set_link_up(&self.name)
    }

    fn start_poller(&mut self) -> io::Result<Arc<Poller>> {
        if let Some((p, _)) = &self.poller {
            return Ok(p.clone());
        }
        let poller = Arc::new(Poller {
            armed: Mutex::new(None),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            stop_fd: EventFd::new(EFD_NONBLOCK)?,
        });
        let p = poller.clone();
        let fd = self.file.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name(format!("tap-{}", self.name))
            .spawn(move || poll_loop(&p, fd))?;
        self.poller = Some((poller.clone(), thread));
        Ok(poller)
    }
}

/// The poller thread: waits to be armed, then for the TAP to be readable (or for the
/// stop event), then runs the notifier once.
fn poll_loop(p: &Poller, fd: RawFd) {
    loop {
        {
            let mut armed = p.armed.lock().unwrap_or_else(|e| e.into_inner());
            while armed.is_none() && !p.stop.load(Ordering::Acquire) {
                armed = p.cv.wait(armed).unwrap_or_else(|e| e.into_inner());
            }
        }
        if p.stop.load(Ordering::Acquire) {
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: p.stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of two valid pollfd structures, alive across the
        // call; `fd` stays open until this thread is joined (Tap's Drop).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if p.stop.load(Ordering::Acquire) {
            return;
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                // Not expected on a valid descriptor; do not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let wake = p.armed.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(wake) = wake {
                wake();
            }
        }
    }
}

/// Brings interface `name` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`).
pub fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` was just created and nothing else owns it.
    let sock = unsafe { File::from_raw_fd(sock) };
    let mut req = zeroed_ifreq();
    req.ifr_name = ifr_name(name)?;
    // SAFETY: SIOCGIFFLAGS fills the `ifreq`, which lives across the call.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut req,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS has just written the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `ifreq`, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some((p, thread)) = self.poller.take() {
            p.stop.store(true, Ordering::Release);
            let _ = p.stop_fd.write(1);
            {
                let _guard = p.armed.lock().unwrap_or_else(|e| e.into_inner());
                p.cv.notify_all();
            }
            let _ = thread.join();
        }
    }
}

/// Completes a partial checksum as `VIRTIO_NET_HDR_F_NEEDS_CSUM` describes: the
/// one's-complement sum from `start` to the end (the field holds the pseudo-header
/// sum), complemented, stored at `start + offset`.
pub(crate) fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if start >= frame.len() || field + 2 > frame.len() {
        return false;
    }
    let mut sum: u64 = 0;
    let mut chunks = frame[start..].chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

impl Link for Tap {
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let hdr = [0u8; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: if self.vnet_hdr { VNET_HDR_LEN } else { 0 },
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs describe live buffers that writev only reads; the
        // descriptor is ours.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_mut_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<FrameMeta>> {
        loop {
            // SAFETY: `rx_buf` is a live buffer of its length; read(2) writes at most
            // that many bytes into it.
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    self.rx_buf.as_mut_ptr().cast(),
                    self.rx_buf.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let n = n as usize;
            if !self.vnet_hdr {
                buf.clear();
                buf.extend_from_slice(&self.rx_buf[..n]);
                return Ok(Some(FrameMeta::default()));
            }
            if n < VNET_HDR_LEN {
                self.bad_headers += 1;
                continue;
            }
            let h = &self.rx_buf[..VNET_HDR_LEN];
            let flags = h[0];
            let csum_start = usize::from(u16::from_le_bytes([h[6], h[7]]));
            let csum_offset = usize::from(u16::from_le_bytes([h[8], h[9]]));
            buf.clear();
            buf.extend_from_slice(&self.rx_buf[VNET_HDR_LEN..n]);
            let mut meta = FrameMeta {
                data_validated: flags & VNET_F_DATA_VALID != 0,
            };
            if flags & VNET_F_NEEDS_CSUM != 0 {
                if !complete_checksum(buf, csum_start, csum_offset) {
                    self.bad_headers += 1;
                    continue;
                }
                self.csum_completed += 1;
                meta.data_validated = true;
            }
            return Ok(Some(meta));
        }
    }

    fn arm(&mut self, wake: Notifier) {
        match self.start_poller() {
            Ok(p) => {
                *p.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
                p.cv.notify_all();
            }
            // No thread: wake at once, so the backend polls on its own kicks.
            Err(_) => wake(),
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "tap": self.name,
            "vnet_hdr": self.vnet_hdr,
            "csum_completed": self.csum_completed,
            "bad_headers": self.bad_headers,
        })
    }
}

/// One direction of a [`MemLink`] pair.
#[derive(Default)]
struct MemQueue {
    frames: VecDeque<Vec<u8>>,
    waker: Option<Notifier>,
}

#[derive(Default)]
struct MemShared {
    /// `queues[i]`: frames waiting for end `i`.
    queues: Mutex<[MemQueue; 2]>,
    cv: Condvar,
}

/// One end of an in-memory link pair: what one end sends, the other receives.
pub struct MemLink {
    shared: Arc<MemShared>,
    side: usize,
    capacity: usize,
}

impl MemLink {
    /// Two connected ends, each holding at most `capacity` frames for its reader.
    pub fn pair(capacity: usize) -> (Self, Self) {
        let shared = Arc::new(MemShared::default());
        let end = |side| Self {
            shared: shared.clone(),
            side,
            capacity,
        };
        (end(0), end(1))
    }

    /// Waits up to `timeout` for a frame to this end.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(f) = q[self.side].frames.pop_front() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q = self
                .shared
                .cv
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Frames waiting for this end.
    pub fn pending(&self) -> usize {
        self.shared.queues.lock().unwrap_or_else(|e| e.into_inner())[self.side]
            .frames
            .len()
    }
}

impl Link for MemLink {
    fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let wake = {
            let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let peer = &mut q[1 - self.side];
            if peer.frames.len() >= self.capacity {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            peer.frames.push_back(frame.to_vec());
            peer.waker.take()
        };
        self.shared.cv.notify_all();
        if let Some(w) = wake {
            w();
        }
        Ok(())
    }

    fn recv_frame(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<FrameMeta>> {
        let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        Ok(q[self.side].frames.pop_front().map(|f| {
            *buf = f;
            FrameMeta::default()
        }))
    }

    fn arm(&mut self, wake: Notifier) {
        let ready = {
            let mut q = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
            let me = &mut q[self.side];
            if me.frames.is_empty() {
                me.waker = Some(wake.clone());
                false
            } else {
                true
            }
        };
        if ready {
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn mem_link_carries_frames_and_wakes_once() {
        let (mut a, mut b) = MemLink::pair(2);
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        b.arm(Arc::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        a.send_frame(b"one").unwrap();
        a.send_frame(b"two").unwrap();
        assert!(a.send_frame(b"three").is_err(), "capacity");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "one-shot");
        let mut buf = Vec::new();
        assert!(b.recv_frame(&mut buf).unwrap().is_some());
        assert_eq!(buf, b"one");
        assert_eq!(b.recv_timeout(Duration::from_millis(10)).unwrap(), b"two");
        assert!(b.recv_frame(&mut buf).unwrap().is_none());
        b.send_frame(b"back").unwrap();
        assert_eq!(a.recv_timeout(Duration::from_secs(1)).unwrap(), b"back");
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(ifr_name("tap0").is_ok());
        assert!(ifr_name("").is_err());
        assert!(ifr_name("a-very-long-name0").is_err());
        assert!(ifr_name("a/b").is_err());
    }

    #[test]
    fn partial_checksums_are_completed() {
        // A UDP-like segment: the field holds a pseudo-header sum of 0x1234.
        let mut f = vec![0u8; 40];
        for (i, b) in f.iter_mut().enumerate().skip(20) {
            *b = i as u8;
        }
        f[26..28].copy_from_slice(&0x1234u16.to_be_bytes());
        assert!(complete_checksum(&mut f, 20, 6));
        // The receiver's check: the segment (checksum in place) plus the
        // pseudo-header sum folds to all ones.
        let mut sum: u32 = 0x1234;
        for c in f[20..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert!(!complete_checksum(&mut f, 39, 6));
        assert!(!complete_checksum(&mut f, 50, 0));
    }
}
