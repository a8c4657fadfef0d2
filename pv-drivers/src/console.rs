//! The PV console ring of `xen/include/public/io/console.h`, both halves: the guest's
//! [`ConsoleFront`] and the backend's [`ConsoleBack`] (the host shim's console).
//!
//! The page is a [`XenconsInterface`]: two byte rings, `out` (2048 bytes, guest to
//! backend) and `in` (1024 bytes, backend to guest), each with a free-running `u32`
//! producer and consumer index masked by the ring size (`MASK_XENCONS_IDX`). Either
//! side notifies the other over the console event channel after moving an index; the
//! event channel is the caller's business.
//!
//! The rules are those of Linux's `hvc_xen.c` (guest) and Xen's
//! `tools/console/daemon/io.c` (backend): read the peer's index, barrier, touch the
//! bytes, barrier, then publish our own index. Each half keeps the indices it owns
//! privately (they are only ever written to the page, never read back), and checks the
//! peer's index before use: more than a ring between producer and consumer is a
//! [`ConsoleError`]. A consumer that sees it skips to the producer (the bytes in
//! between are garbage) so that the ring works again if the peer behaves afterwards; a
//! producer cannot repair the peer's consumer index and just reports the error. Work
//! per call is bounded by the ring size whatever the peer writes.

use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::{Ordering, fence};

use crate::abi::console::{
    XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XENCONSOLE_CONNECTED, XENCONSOLE_DISCONNECTED,
    XenconsInterface, mask_xencons_in_idx, mask_xencons_out_idx,
};
use crate::shmem::SharedMemory;

const IN: usize = offset_of!(XenconsInterface, in_);
const OUT: usize = offset_of!(XenconsInterface, out);
const IN_CONS: usize = offset_of!(XenconsInterface, in_cons);
const IN_PROD: usize = offset_of!(XenconsInterface, in_prod);
const OUT_CONS: usize = offset_of!(XenconsInterface, out_cons);
const OUT_PROD: usize = offset_of!(XenconsInterface, out_prod);
const CONNECTION: usize = offset_of!(XenconsInterface, connection);

/// What went wrong on the console page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleError {
    /// The shared memory is smaller than a `struct xencons_interface`.
    MemoryTooSmall {
        /// Bytes offered.
        len: usize,
    },
    /// `out_prod - out_cons` exceeds the 2048-byte `out` ring: an index is corrupt.
    OutputIndices {
        /// `out_prod` as seen.
        prod: u32,
        /// `out_cons` as seen.
        cons: u32,
    },
    /// `in_prod - in_cons` exceeds the 1024-byte `in` ring: an index is corrupt.
    InputIndices {
        /// `in_prod` as seen.
        prod: u32,
        /// `in_cons` as seen.
        cons: u32,
    },
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MemoryTooSmall { len } => write!(
                f,
                "console page of {len} bytes is smaller than struct xencons_interface ({})",
                XenconsInterface::SIZE
            ),
            Self::OutputIndices { prod, cons } => write!(
                f,
                "console out ring indices are corrupt (out_prod {prod}, out_cons {cons})"
            ),
            Self::InputIndices { prod, cons } => write!(
                f,
                "console in ring indices are corrupt (in_prod {prod}, in_cons {cons})"
            ),
        }
    }
}

fn check_len<M: SharedMemory>(mem: &M) -> Result<(), ConsoleError> {
    if mem.len() < XenconsInterface::SIZE {
        return Err(ConsoleError::MemoryTooSmall { len: mem.len() });
    }
    Ok(())
}

/// Copies `data` into the ring of `size` bytes at `base`, starting at masked index
/// `at` and wrapping to the start of the ring.
fn copy_in<M: SharedMemory>(mem: &M, base: usize, size: usize, at: usize, data: &[u8]) {
    let (head, tail) = data.split_at(data.len().min(size - at));
    mem.write_bytes(base + at, head);
    mem.write_bytes(base, tail);
}

/// Copies `buf.len()` bytes out of the ring of `size` bytes at `base`, starting at
/// masked index `at` and wrapping to the start of the ring.
fn copy_out<M: SharedMemory>(mem: &M, base: usize, size: usize, at: usize, buf: &mut [u8]) {
    let first = buf.len().min(size - at);
    let (head, tail) = buf.split_at_mut(first);
    mem.read_bytes(base + at, head);
    mem.read_bytes(base, tail);
}

/// The guest half: writes `out`, reads `in`.
#[derive(Debug)]
pub struct ConsoleFront<M> {
    mem: M,
    /// `out_prod`, owned by the guest.
    out_prod: u32,
    /// `in_cons`, owned by the guest.
    in_cons: u32,
}

impl<M: SharedMemory> ConsoleFront<M> {
    /// Attaches to the console page in `mem` (on Xen, the page of
    /// `HVM_PARAM_CONSOLE_PFN` or `start_info.console`), continuing from the indices
    /// it holds: output already queued (e.g. by an earlier boot stage) stays queued.
    /// Indices that are already inconsistent are reset to an empty ring.
    pub fn new(mem: M) -> Result<Self, ConsoleError> {
        check_len(&mem)?;
        let out_cons = mem.load_u32(OUT_CONS, Ordering::Relaxed);
        let mut out_prod = mem.load_u32(OUT_PROD, Ordering::Relaxed);
        let in_prod = mem.load_u32(IN_PROD, Ordering::Relaxed);
        let mut in_cons = mem.load_u32(IN_CONS, Ordering::Relaxed);
        if out_prod.wrapping_sub(out_cons) as usize > XENCONS_OUT_SIZE {
            out_prod = out_cons;
            mem.store_u32(OUT_PROD, out_prod, Ordering::Release);
        }
        if in_prod.wrapping_sub(in_cons) as usize > XENCONS_IN_SIZE {
            in_cons = in_prod;
            mem.store_u32(IN_CONS, in_cons, Ordering::Release);
        }
        Ok(Self {
            mem,
            out_prod,
            in_cons,
        })
    }

    /// Whether the backend has said it services the console (`connection` is
    /// `XENCONSOLE_CONNECTED`). Note that a zeroed page reads as connected.
    pub fn is_connected(&self) -> bool {
        self.mem.load_u8(CONNECTION, Ordering::Acquire) == XENCONSOLE_CONNECTED
    }

    /// The shared memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Reads `out_cons` and returns the bytes of `out` still in use.
    fn out_used(&self) -> Result<usize, ConsoleError> {
        let cons = self.mem.load_u32(OUT_CONS, Ordering::Relaxed);
        // hvc_xen __write_console: "mb(); /* update queue values before going on */":
        // our stores into the ring must not pass this read of out_cons, which the
        // backend publishes only after it has read the bytes it frees.
        fence(Ordering::Acquire);
        let used = self.out_prod.wrapping_sub(cons) as usize;
        if used > XENCONS_OUT_SIZE {
            return Err(ConsoleError::OutputIndices {
                prod: self.out_prod,
                cons,
            });
        }
        Ok(used)
    }

    /// Bytes written but not yet consumed by the backend (0 once it has drained).
    pub fn output_pending(&self) -> Result<usize, ConsoleError> {
        self.out_used()
    }

    /// Writes as much of `data` into `out` as fits and returns how much that was
    /// (possibly 0 when the ring is full). The caller then notifies the backend, and,
    /// if not everything fit, waits (yield, or the backend's event) and writes the
    /// rest. Fails, writing nothing, if the backend's `out_cons` is corrupt.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        let used = self.out_used()?;
        let n = data.len().min(XENCONS_OUT_SIZE - used);
        if n == 0 {
            return Ok(0);
        }
        copy_in(
            &self.mem,
            OUT,
            XENCONS_OUT_SIZE,
            mask_xencons_out_idx(self.out_prod),
            &data[..n],
        );
        // hvc_xen __write_console: "wmb(); /* write ring before updating pointer */".
        fence(Ordering::Release);
        self.out_prod = self.out_prod.wrapping_add(n as u32);
        self.mem
            .store_u32(OUT_PROD, self.out_prod, Ordering::Relaxed);
        Ok(n)
    }

    /// Reads up to `buf.len()` bytes of input from `in` and returns how many (the
    /// caller notifies the backend if that is not 0). If the backend's `in_prod` is
    /// corrupt, the pending input is dropped (the guest's `in_cons` skips to it) and
    /// the error returned.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        let prod = self.mem.load_u32(IN_PROD, Ordering::Relaxed);
        // hvc_xen domU_read_console: "mb(); /* get pointers before reading ring */".
        fence(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.in_cons) as usize;
        if avail > XENCONS_IN_SIZE {
            let e = ConsoleError::InputIndices {
                prod,
                cons: self.in_cons,
            };
            self.in_cons = prod;
            self.mem.store_u32(IN_CONS, prod, Ordering::Release);
            return Err(e);
        }
        let n = buf.len().min(avail);
        if n == 0 {
            return Ok(0);
        }
        copy_out(
            &self.mem,
            IN,
            XENCONS_IN_SIZE,
            mask_xencons_in_idx(self.in_cons),
            &mut buf[..n],
        );
        // hvc_xen domU_read_console: "mb(); /* read ring before consuming */": the
        // backend may refill these bytes once it sees in_cons move.
        fence(Ordering::Release);
        self.in_cons = self.in_cons.wrapping_add(n as u32);
        self.mem.store_u32(IN_CONS, self.in_cons, Ordering::Relaxed);
        Ok(n)
    }
}

/// The backend half: drains `out`, fills `in`.
#[derive(Debug)]
pub struct ConsoleBack<M> {
    mem: M,
    /// `out_cons`, owned by the backend.
    out_cons: u32,
    /// `in_prod`, owned by the backend.
    in_prod: u32,
}

impl<M: SharedMemory> ConsoleBack<M> {
    /// Attaches to the guest's console page in `mem`, continuing from the indices it
    /// holds (output the guest queued before the backend attached is delivered).
    /// Backend-owned indices that are already inconsistent are reset to an empty ring.
    pub fn new(mem: M) -> Result<Self, ConsoleError> {
        check_len(&mem)?;
        let out_prod = mem.load_u32(OUT_PROD, Ordering::Relaxed);
        let mut out_cons = mem.load_u32(OUT_CONS, Ordering::Relaxed);
        let in_cons = mem.load_u32(IN_CONS, Ordering::Relaxed);
        let mut in_prod = mem.load_u32(IN_PROD, Ordering::Relaxed);
        if out_prod.wrapping_sub(out_cons) as usize > XENCONS_OUT_SIZE {
            out_cons = out_prod;
            mem.store_u32(OUT_CONS, out_cons, Ordering::Release);
        }
        if in_prod.wrapping_sub(in_cons) as usize > XENCONS_IN_SIZE {
            in_prod = in_cons;
            mem.store_u32(IN_PROD, in_prod, Ordering::Release);
        }
        Ok(Self {
            mem,
            out_cons,
            in_prod,
        })
    }

    /// Sets `connection`: `XENCONSOLE_CONNECTED` once the backend services the
    /// console, `XENCONSOLE_DISCONNECTED` otherwise.
    pub fn set_connected(&self, connected: bool) {
        let flag = if connected {
            XENCONSOLE_CONNECTED
        } else {
            XENCONSOLE_DISCONNECTED
        };
        self.mem.store_u8(CONNECTION, flag, Ordering::Release);
    }

    /// The shared memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Consumes everything the guest has written to `out`, handing it to `sink` in
    /// one call (a private copy, taken once), and returns the number of bytes (the
    /// caller notifies the guest if that is not 0). If `out_prod` is more than a ring
    /// ahead of `out_cons` (or behind it), the bytes are garbage: they are skipped,
    /// `out_cons` is set to `out_prod`, and the error returned.
    pub fn drain_output(&mut self, sink: &mut impl FnMut(&[u8])) -> Result<usize, ConsoleError> {
        let prod = self.mem.load_u32(OUT_PROD, Ordering::Relaxed);
        // xenconsoled buffer_append: reads out_cons/out_prod, then "xen_mb()" before
        // reading the ring: the bytes up to prod were written before prod was.
        fence(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.out_cons) as usize;
        if avail > XENCONS_OUT_SIZE {
            let e = ConsoleError::OutputIndices {
                prod,
                cons: self.out_cons,
            };
            self.out_cons = prod;
            self.mem.store_u32(OUT_CONS, prod, Ordering::Release);
            return Err(e);
        }
        if avail == 0 {
            return Ok(0);
        }
        let mut buf = [0u8; XENCONS_OUT_SIZE];
        copy_out(
            &self.mem,
            OUT,
            XENCONS_OUT_SIZE,
            mask_xencons_out_idx(self.out_cons),
            &mut buf[..avail],
        );
        // xenconsoled buffer_append: "xen_mb()" between reading the ring and freeing
        // it with out_cons: the guest may overwrite the bytes once it sees out_cons.
        fence(Ordering::Release);
        self.out_cons = prod;
        self.mem.store_u32(OUT_CONS, prod, Ordering::Relaxed);
        sink(&buf[..avail]);
        Ok(avail)
    }

    /// Writes as much of `data` into `in` as fits and returns how much that was (the
    /// caller notifies the guest if that is not 0, and keeps the rest for later).
    /// Fails, writing nothing, if the guest's `in_cons` is corrupt (xenconsoled: "ring
    /// is screwed: ignore it").
    pub fn push_input(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        let cons = self.mem.load_u32(IN_CONS, Ordering::Relaxed);
        // xenconsoled ring_free_bytes: reads in_cons/in_prod, then "xen_mb()": our
        // stores into the ring must not pass this read of in_cons, which the guest
        // publishes only after it has read the bytes it frees.
        fence(Ordering::Acquire);
        let used = self.in_prod.wrapping_sub(cons) as usize;
        if used > XENCONS_IN_SIZE {
            return Err(ConsoleError::InputIndices {
                prod: self.in_prod,
                cons,
            });
        }
        let n = data.len().min(XENCONS_IN_SIZE - used);
        if n == 0 {
            return Ok(0);
        }
        copy_in(
            &self.mem,
            IN,
            XENCONS_IN_SIZE,
            mask_xencons_in_idx(self.in_prod),
            &data[..n],
        );
        // xenconsoled handle_tty_read: "xen_wmb()" between filling the ring and
        // publishing in_prod.
        fence(Ordering::Release);
        self.in_prod = self.in_prod.wrapping_add(n as u32);
        self.mem.store_u32(IN_PROD, self.in_prod, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shmem::HeapSharedMemory;
    use std::vec::Vec;

    fn page() -> HeapSharedMemory {
        HeapSharedMemory::new(4096)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn drain(back: &mut ConsoleBack<&HeapSharedMemory>) -> Vec<u8> {
        let mut got = Vec::new();
        back.drain_output(&mut |b: &[u8]| got.extend_from_slice(b))
            .unwrap();
        got
    }

    #[test]
    fn output_round_trip_with_wrap_around() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        assert_eq!(front.write(b""), Ok(0));
        assert_eq!(
            back.drain_output(&mut |_: &[u8]| panic!("nothing to drain")),
            Ok(0)
        );
        assert_eq!(front.write(b"hello, "), Ok(7));
        assert_eq!(front.write(b"world\n"), Ok(6));
        assert_eq!(front.output_pending(), Ok(13));
        assert_eq!(drain(&mut back), b"hello, world\n");
        assert_eq!(front.output_pending(), Ok(0));
        // 1500 + 1500 bytes crosses the end of the 2048-byte ring.
        for seed in 0..5 {
            let data = pattern(1500, seed);
            assert_eq!(front.write(&data), Ok(1500));
            assert_eq!(drain(&mut back), data);
        }
        assert_eq!(mem.load_u32(OUT_PROD, Ordering::Relaxed), 13 + 5 * 1500);
        assert_eq!(mem.load_u32(OUT_CONS, Ordering::Relaxed), 13 + 5 * 1500);
    }

    #[test]
    fn full_output_ring_takes_what_fits() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        let data = pattern(5000, 7);
        assert_eq!(front.write(&data), Ok(XENCONS_OUT_SIZE));
        assert_eq!(front.write(&data[XENCONS_OUT_SIZE..]), Ok(0));
        assert_eq!(drain(&mut back), &data[..XENCONS_OUT_SIZE]);
        assert_eq!(front.write(&data[XENCONS_OUT_SIZE..]), Ok(XENCONS_OUT_SIZE));
        assert_eq!(
            drain(&mut back),
            &data[XENCONS_OUT_SIZE..2 * XENCONS_OUT_SIZE]
        );
        assert_eq!(front.write(&data[2 * XENCONS_OUT_SIZE..]), Ok(904));
        assert_eq!(drain(&mut back), &data[2 * XENCONS_OUT_SIZE..]);
    }

    #[test]
    fn input_round_trip_with_wrap_around_and_full_ring() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(front.read(&mut buf), Ok(0));
        let data = pattern(3000, 1);
        assert_eq!(back.push_input(&data), Ok(XENCONS_IN_SIZE));
        assert_eq!(back.push_input(&data), Ok(0));
        // Read in small pieces: 700 then the rest.
        assert_eq!(front.read(&mut buf[..700]), Ok(700));
        assert_eq!(&buf[..700], &data[..700]);
        assert_eq!(back.push_input(&data[1024..]), Ok(700));
        assert_eq!(front.read(&mut buf), Ok(1024));
        assert_eq!(&buf[..324], &data[700..1024]);
        assert_eq!(&buf[324..1024], &data[1024..1724]);
        assert_eq!(front.read(&mut buf), Ok(0));
    }

    #[test]
    fn indices_wrap_around_u32_max() {
        let mem = page();
        let start = u32::MAX - 100;
        for off in [OUT_PROD, OUT_CONS, IN_PROD, IN_CONS] {
            mem.store_u32(off, start, Ordering::Relaxed);
        }
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        let data = pattern(1000, 9);
        assert_eq!(front.write(&data), Ok(1000));
        assert_eq!(drain(&mut back), data);
        assert_eq!(
            mem.load_u32(OUT_CONS, Ordering::Relaxed),
            start.wrapping_add(1000)
        );
        assert_eq!(back.push_input(&data), Ok(1000));
        let mut buf = [0u8; 1000];
        assert_eq!(front.read(&mut buf), Ok(1000));
        assert_eq!(&buf[..], &data[..]);
        assert_eq!(
            mem.load_u32(IN_CONS, Ordering::Relaxed),
            start.wrapping_add(1000)
        );
    }

    #[test]
    fn output_queued_before_the_backend_attached_is_delivered() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        assert_eq!(front.write(b"early boot"), Ok(10));
        let mut back = ConsoleBack::new(&mem).unwrap();
        assert_eq!(drain(&mut back), b"early boot");
        // A second front (say, a later boot stage) continues where the first stopped.
        let mut front2 = ConsoleFront::new(&mem).unwrap();
        assert_eq!(front2.write(b"!"), Ok(1));
        assert_eq!(drain(&mut back), b"!");
    }

    #[test]
    fn hostile_guest_out_prod_is_skipped_not_followed() {
        let mem = page();
        let mut back = ConsoleBack::new(&mem).unwrap();
        for bad in [2049u32, 0x8000_0000, u32::MAX] {
            let cons = mem.load_u32(OUT_CONS, Ordering::Relaxed);
            let prod = cons.wrapping_add(bad);
            mem.store_u32(OUT_PROD, prod, Ordering::Relaxed);
            let r = back.drain_output(&mut |_: &[u8]| panic!("garbage delivered"));
            assert_eq!(r, Err(ConsoleError::OutputIndices { prod, cons }));
            // Skipped: out_cons is the guest's out_prod now; nothing more to drain.
            assert_eq!(mem.load_u32(OUT_CONS, Ordering::Relaxed), prod);
            assert_eq!(drain(&mut back), b"");
        }
        // Exactly a full ring is legal.
        let cons = mem.load_u32(OUT_CONS, Ordering::Relaxed);
        mem.store_u32(OUT_PROD, cons.wrapping_add(2048), Ordering::Relaxed);
        assert_eq!(drain(&mut back).len(), 2048);
        // A guest that behaves again is served again (a fresh front re-reads the page).
        let mut front = ConsoleFront::new(&mem).unwrap();
        assert_eq!(front.write(b"ok"), Ok(2));
        assert_eq!(drain(&mut back), b"ok");
    }

    #[test]
    fn hostile_backend_out_cons_stops_the_writer() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        assert_eq!(front.write(b"abc"), Ok(3));
        // out_cons ahead of out_prod, or far behind it.
        for cons in [4u32, 100, 3u32.wrapping_sub(2049)] {
            mem.store_u32(OUT_CONS, cons, Ordering::Relaxed);
            assert_eq!(
                front.write(b"x"),
                Err(ConsoleError::OutputIndices { prod: 3, cons })
            );
            assert_eq!(mem.load_u32(OUT_PROD, Ordering::Relaxed), 3);
        }
        // The guest's own out_prod is never read back: a backend rewriting it does not
        // redirect the guest's writes.
        mem.store_u32(OUT_CONS, 3, Ordering::Relaxed);
        mem.store_u32(OUT_PROD, 1000, Ordering::Relaxed);
        assert_eq!(front.write(b"y"), Ok(1));
        assert_eq!(mem.load_u32(OUT_PROD, Ordering::Relaxed), 4);
        assert_eq!(mem.load_u8(OUT + 3, Ordering::Relaxed), b'y');
    }

    #[test]
    fn hostile_indices_on_the_input_ring() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        // Backend claims more than a ring of input: the guest drops it and resyncs.
        mem.store_u32(IN_PROD, 1025, Ordering::Relaxed);
        let mut buf = [0u8; 2048];
        assert_eq!(
            front.read(&mut buf),
            Err(ConsoleError::InputIndices {
                prod: 1025,
                cons: 0
            })
        );
        assert_eq!(mem.load_u32(IN_CONS, Ordering::Relaxed), 1025);
        assert_eq!(front.read(&mut buf), Ok(0));
        // The honest backend's private in_prod (0) now disagrees with in_cons (1025):
        // it refuses to write rather than scribble, as xenconsoled does.
        assert_eq!(
            back.push_input(b"z"),
            Err(ConsoleError::InputIndices {
                prod: 0,
                cons: 1025
            })
        );
        // A fresh backend attachment resynchronises on the guest's in_cons.
        let mut back = ConsoleBack::new(&mem).unwrap();
        assert_eq!(back.push_input(b"z"), Ok(1));
        assert_eq!(front.read(&mut buf), Ok(1));
        assert_eq!(buf[0], b'z');
    }

    #[test]
    fn inconsistent_pages_are_reset_on_attach() {
        let mem = page();
        mem.store_u32(OUT_PROD, 5000, Ordering::Relaxed);
        mem.store_u32(IN_PROD, 7000, Ordering::Relaxed);
        let mut front = ConsoleFront::new(&mem).unwrap();
        assert_eq!(mem.load_u32(OUT_PROD, Ordering::Relaxed), 0);
        assert_eq!(mem.load_u32(IN_CONS, Ordering::Relaxed), 7000);
        assert_eq!(front.write(b"a"), Ok(1));

        let mem = page();
        mem.store_u32(OUT_PROD, 5000, Ordering::Relaxed);
        mem.store_u32(IN_PROD, 7000, Ordering::Relaxed);
        let mut back = ConsoleBack::new(&mem).unwrap();
        assert_eq!(mem.load_u32(OUT_CONS, Ordering::Relaxed), 5000);
        assert_eq!(mem.load_u32(IN_PROD, Ordering::Relaxed), 0);
        assert_eq!(back.push_input(b"b"), Ok(1));
        assert_eq!(drain(&mut back), b"");
    }

    #[test]
    fn connection_flag_and_small_memory() {
        let mem = page();
        let front = ConsoleFront::new(&mem).unwrap();
        let back = ConsoleBack::new(&mem).unwrap();
        back.set_connected(false);
        assert!(!front.is_connected());
        back.set_connected(true);
        assert!(front.is_connected());
        let small = HeapSharedMemory::new(3091);
        assert_eq!(
            ConsoleFront::new(&small).unwrap_err(),
            ConsoleError::MemoryTooSmall { len: 3091 }
        );
        assert!(ConsoleBack::new(&small).is_err());
    }

    #[test]
    fn two_threads_stream_output_without_loss() {
        let mem = page();
        let mut front = ConsoleFront::new(&mem).unwrap();
        let mut back = ConsoleBack::new(&mem).unwrap();
        let data = pattern(1 << 20, 3);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut got = Vec::with_capacity(data.len());
                while got.len() < data.len() {
                    assert!(std::time::Instant::now() < deadline, "reader stalled");
                    if back
                        .drain_output(&mut |b: &[u8]| got.extend_from_slice(b))
                        .unwrap()
                        == 0
                    {
                        std::thread::yield_now();
                    }
                }
                got
            });
            let mut rest = &data[..];
            while !rest.is_empty() {
                assert!(std::time::Instant::now() < deadline, "writer stalled");
                // Odd-sized writes so that chunks straddle the ring's end.
                let n = front.write(&rest[..rest.len().min(777)]).unwrap();
                if n == 0 {
                    std::thread::yield_now();
                }
                rest = &rest[n..];
            }
            assert!(reader.join().unwrap() == data);
        });
    }
}
