//! 2-level event channels over the `shared_info` page, both halves
//! (`xen/include/public/xen.h`, "Event channel endpoints per domain" and `struct
//! vcpu_info`; `xen/include/public/event_channel.h`).
//!
//! Each port has a PENDING and a MASK bit in `shared_info`; each vCPU a selector word
//! `evtchn_pending_sel` (bit `w`: word `w` of PENDING may have news) and an
//! `evtchn_upcall_pending` flag.
//!
//! * [`HostEvents`] is what the hypervisor does (Xen's `xen/common/event_2l.c`; in this
//!   product the shim): [`HostEvents::set_pending`] (`evtchn_2l_set_pending`: a 0-to-1
//!   PENDING transition on an unmasked port sets the selector bit, and a newly set
//!   selector bit sets `evtchn_upcall_pending`, whose 0-to-1 transition is the moment
//!   to inject the upcall) and [`HostEvents::unmask`] (`EVTCHNOP_unmask`: clearing the
//!   MASK of a pending port raises the selector and upcall as a new event would).
//! * [`GuestEvents`] is the guest: mask, unmask, clear, and the upcall scan
//!   ([`GuestEvents::upcall`]) that clears `evtchn_upcall_pending` *before* taking the
//!   selector with an exchange, then clears each PENDING bit *before* handling its
//!   event, and goes round again while the hypervisor has set `evtchn_upcall_pending`
//!   meanwhile. In that order every 0-to-1 PENDING transition is delivered exactly
//!   once, and an event raised while its handler runs is delivered again.
//! * [`HandlerRegistry`] maps the 4096 ports to handlers and counts spurious events.
//!
//! All bit updates are atomic read-modify-writes (`lock`-prefixed on x86, like Xen's
//! `guest_test_and_set_bit`), with sequentially consistent ordering where a store on
//! one side must be seen by a load on the other (set PENDING then test MASK, against
//! clear MASK then test PENDING).
//!
//! The guest side trusts nothing it reads: port numbers come from bit positions, so a
//! garbage bitmap yields at worst spurious events. The hypervisor side runs no loop
//! whose length the guest controls.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::event_channel::{EVTCHN_2L_NR_CHANNELS, EvtchnPort};
use crate::abi::xen::{EVTCHN_WORDS, SharedInfo, VcpuInfo, XEN_LEGACY_MAX_VCPUS, XenUlong};
use crate::shmem::SharedMemory;

/// Ports of the 2-level ABI on x86_64: 64 words of 64 bits (`EVTCHN_2L_NR_CHANNELS`).
pub const NR_EVENT_CHANNELS: usize = EVTCHN_2L_NR_CHANNELS as usize;
/// Ports per PENDING/MASK word (`BITS_PER_EVTCHN_WORD`).
pub const BITS_PER_EVTCHN_WORD: usize = XenUlong::BITS as usize;
/// Byte offset of `evtchn_pending[]` in `shared_info`.
pub const EVTCHN_PENDING_OFFSET: usize = offset_of!(SharedInfo, evtchn_pending);
/// Byte offset of `evtchn_mask[]` in `shared_info`.
pub const EVTCHN_MASK_OFFSET: usize = offset_of!(SharedInfo, evtchn_mask);

/// Byte offset of `vcpu_info[vcpu]` in `shared_info`.
pub const fn vcpu_info_offset(vcpu: usize) -> usize {
    offset_of!(SharedInfo, vcpu_info) + vcpu * size_of::<VcpuInfo>()
}

/// Byte offset of `vcpu_info[vcpu].evtchn_upcall_pending`.
pub const fn upcall_pending_offset(vcpu: usize) -> usize {
    vcpu_info_offset(vcpu) + offset_of!(VcpuInfo, evtchn_upcall_pending)
}

/// Byte offset of `vcpu_info[vcpu].evtchn_pending_sel`.
pub const fn pending_sel_offset(vcpu: usize) -> usize {
    vcpu_info_offset(vcpu) + offset_of!(VcpuInfo, evtchn_pending_sel)
}

/// `vcpu_info[0].evtchn_upcall_pending` (offset 0).
pub const VCPU0_UPCALL_PENDING_OFFSET: usize = upcall_pending_offset(0);
/// `vcpu_info[0].evtchn_pending_sel` (offset 8).
pub const VCPU0_PENDING_SEL_OFFSET: usize = pending_sel_offset(0);

// The flag is the low byte of an 8-aligned word (followed by `evtchn_upcall_mask` and
// padding), so it is set and cleared with 64-bit atomics on that word, as Xen's
// `test_and_set_bit(0, (unsigned long *)&vcpu_info(v, evtchn_upcall_pending))` does.
const _: () = assert!(VCPU0_UPCALL_PENDING_OFFSET.is_multiple_of(8));
const _: () = assert!(size_of::<VcpuInfo>().is_multiple_of(8));
const _: () = assert!(VCPU0_PENDING_SEL_OFFSET == 8);
const _: () = assert!(EVTCHN_PENDING_OFFSET.is_multiple_of(8));
const _: () = assert!(EVTCHN_MASK_OFFSET.is_multiple_of(8));
const _: () = assert!(SharedInfoAbi::Long.mask_offset() == EVTCHN_MASK_OFFSET);
const _: () = assert!(SharedInfoAbi::Long.sel_in_vcpu_info() == 8);
const _: () = assert!(SharedInfoAbi::Compat.mask_offset() == 0x880);
const _: () = assert!(SharedInfoAbi::Long.ports() == NR_EVENT_CHANNELS);
const _: () = assert!(NR_EVENT_CHANNELS == EVTCHN_WORDS * BITS_PER_EVTCHN_WORD);
// One selector bit per PENDING word.
const _: () = assert!(EVTCHN_WORDS == XenUlong::BITS as usize);

/// The `evtchn_upcall_pending` byte within its 64-bit word.
const UPCALL_PENDING_BYTE: u64 = 0xFF;

/// How many rounds [`GuestEvents::upcall`] makes before it leaves the rest to its
/// caller (see [`UpcallSummary::more_pending`]).
pub const DEFAULT_MAX_ROUNDS: u32 = 16;

/// Errors of the event-channel code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnError {
    /// The shared memory is too small to be a `shared_info` page.
    SharedInfoTooSmall(usize),
    /// The port is not a 2-level port (0 < port < 4096 for handlers; port < 4096 for
    /// the bitmaps).
    BadPort(EvtchnPort),
    /// The vCPU has no `vcpu_info` slot in `shared_info`.
    BadVcpu(u32),
    /// A handler is already registered for the port.
    PortBusy(EvtchnPort),
}

impl fmt::Display for EvtchnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SharedInfoTooSmall(len) => {
                write!(f, "{len} bytes is too small for shared_info")
            }
            Self::BadPort(p) => write!(f, "event channel port {p} out of range"),
            Self::BadVcpu(v) => write!(f, "vCPU {v} has no vcpu_info in shared_info"),
            Self::PortBusy(p) => write!(f, "event channel port {p} already has a handler"),
        }
    }
}

impl core::error::Error for EvtchnError {}

/// The word offset (relative to a bitmap) and bit of `port`.
fn locate(port: EvtchnPort) -> Result<(usize, u64), EvtchnError> {
    match usize::try_from(port) {
        Ok(p) if p < NR_EVENT_CHANNELS => Ok((
            (p / BITS_PER_EVTCHN_WORD) * size_of::<XenUlong>(),
            1 << (p % BITS_PER_EVTCHN_WORD),
        )),
        _ => Err(EvtchnError::BadPort(port)),
    }
}

fn vcpu_index(vcpu: u32) -> Result<usize, EvtchnError> {
    match usize::try_from(vcpu) {
        Ok(v) if v < XEN_LEGACY_MAX_VCPUS => Ok(v),
        _ => Err(EvtchnError::BadVcpu(vcpu)),
    }
}

fn check_len<M: SharedMemory>(mem: &M) -> Result<(), EvtchnError> {
    if mem.len() < SharedInfo::SIZE {
        Err(EvtchnError::SharedInfoTooSmall(mem.len()))
    } else {
        Ok(())
    }
}

/// What [`HostEvents::set_pending`] did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetPending {
    /// The port was already pending: this event merges with the undelivered one (the
    /// ABI counts no events, it only flags them).
    Coalesced,
    /// Newly pending but masked: it is delivered when the guest unmasks the port.
    Masked,
    /// Newly pending; the vCPU's selector bit or upcall flag was already set, so an
    /// upcall is already on its way (or in progress) and will find this event.
    Queued,
    /// Newly pending and `evtchn_upcall_pending` went from 0 to 1: inject the upcall
    /// (Xen's `vcpu_mark_events_pending` → `hvm_assert_evtchn_irq`).
    Inject,
}

impl SetPending {
    /// Whether the caller must now inject the vCPU's upcall interrupt.
    pub fn must_inject(self) -> bool {
        self == Self::Inject
    }

    /// Whether the port went from not pending to pending.
    pub fn newly_pending(self) -> bool {
        self != Self::Coalesced
    }
}

/// Which layout of `shared_info` (and `vcpu_info`) the 2-level ABI uses: a 64-bit
/// guest's, or the 32-bit one ("compat") Xen gives a guest that installed its hypercall
/// page or set `HVM_PARAM_CALLBACK_IRQ` from 32-bit code (`hvm_latch_shinfo_size`).
/// In the 32-bit layout the PENDING and MASK words and the selector are 32 bits wide,
/// so there are 1024 ports, MASK starts at 0x880 instead of 0xa00 and the selector sits
/// at offset 4 of `vcpu_info` instead of 8; the flags and the time record do not move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharedInfoAbi {
    /// 64-bit words: 4096 ports.
    #[default]
    Long,
    /// 32-bit words: 1024 ports.
    Compat,
}

impl SharedInfoAbi {
    /// Bits per PENDING/MASK word (and selector bits).
    pub const fn word_bits(self) -> usize {
        match self {
            Self::Long => 64,
            Self::Compat => 32,
        }
    }

    /// Ports the 2-level ABI has in this layout.
    pub const fn ports(self) -> usize {
        self.word_bits() * self.word_bits()
    }

    /// Offset of `evtchn_mask[]` in `shared_info`.
    pub const fn mask_offset(self) -> usize {
        EVTCHN_PENDING_OFFSET + self.word_bits() * self.word_bits() / 8
    }

    /// Offset of `evtchn_pending_sel` in `vcpu_info`.
    pub const fn sel_in_vcpu_info(self) -> usize {
        self.word_bits() / 8
    }

    /// Offset of `wc_version` (then `wc_sec`, `wc_nsec`) in `shared_info`.
    pub const fn wallclock_offset(self) -> usize {
        EVTCHN_PENDING_OFFSET + 2 * self.word_bits() * self.word_bits() / 8
    }

    /// Offset of `wc_sec_hi` in `shared_info` (in `arch_shared_info` for 32-bit).
    pub const fn wc_sec_hi_offset(self) -> usize {
        match self {
            Self::Long => self.wallclock_offset() + 12,
            Self::Compat => 0x924,
        }
    }

    /// The byte offset (relative to a bitmap) of `port`'s word and its bit in that word.
    fn locate(self, port: EvtchnPort) -> Result<(usize, u64), EvtchnError> {
        let bits = self.word_bits();
        match usize::try_from(port) {
            Ok(p) if p < self.ports() => Ok(((p / bits) * bits / 8, 1 << (p % bits))),
            _ => Err(EvtchnError::BadPort(port)),
        }
    }

    /// Atomically ORs `bits` into the word at `at` (8- or 4-aligned), returning its old
    /// value. A 32-bit word is updated through the 64-bit word holding it, which leaves
    /// the other half alone.
    fn fetch_or<M: SharedMemory>(self, mem: &M, at: usize, bits: u64) -> u64 {
        match self {
            Self::Long => mem.fetch_or_u64(at, bits, Ordering::SeqCst),
            Self::Compat => {
                let shift = (at % 8) * 8;
                (mem.fetch_or_u64(at - at % 8, bits << shift, Ordering::SeqCst) >> shift)
                    & 0xffff_ffff
            }
        }
    }

    /// Atomically ANDs `bits` into the word at `at`, returning its old value.
    fn fetch_and<M: SharedMemory>(self, mem: &M, at: usize, bits: u64) -> u64 {
        match self {
            Self::Long => mem.fetch_and_u64(at, bits, Ordering::SeqCst),
            Self::Compat => {
                let shift = (at % 8) * 8;
                let keep = !(0xffff_ffffu64 << shift);
                (mem.fetch_and_u64(at - at % 8, (bits << shift) | keep, Ordering::SeqCst) >> shift)
                    & 0xffff_ffff
            }
        }
    }

    fn load<M: SharedMemory>(self, mem: &M, at: usize) -> u64 {
        match self {
            Self::Long => mem.load_u64(at, Ordering::SeqCst),
            Self::Compat => mem.load_u32(at, Ordering::SeqCst).into(),
        }
    }
}

/// The hypervisor's half: sets PENDING bits and raises upcalls in a guest's
/// `shared_info` (which the guest may be scribbling on at the same time).
#[derive(Debug)]
pub struct HostEvents<M> {
    mem: M,
    /// vCPU 0's `vcpu_info` where the guest placed it (`VCPUOP_register_vcpu_info`):
    /// the memory and the offset in it. `None`: `shared_info.vcpu_info[0]`.
    vcpu0: Option<(M, usize)>,
    abi: SharedInfoAbi,
}

impl<M: SharedMemory> HostEvents<M> {
    /// Wraps the guest's `shared_info` page (64-bit layout).
    pub fn new(mem: M) -> Result<Self, EvtchnError> {
        check_len(&mem)?;
        Ok(Self {
            mem,
            vcpu0: None,
            abi: SharedInfoAbi::Long,
        })
    }

    /// Wraps the guest's `shared_info` page, with vCPU 0's `vcpu_info` at `offset` in
    /// `vcpu_info` instead of in `shared_info`.
    pub fn with_vcpu0_info(mem: M, vcpu_info: M, offset: usize) -> Result<Self, EvtchnError> {
        check_len(&mem)?;
        if offset
            .checked_add(size_of::<VcpuInfo>())
            .is_none_or(|end| end > vcpu_info.len())
        {
            return Err(EvtchnError::SharedInfoTooSmall(vcpu_info.len()));
        }
        Ok(Self {
            mem,
            vcpu0: Some((vcpu_info, offset)),
            abi: SharedInfoAbi::Long,
        })
    }

    /// The same view in layout `abi`.
    pub fn with_abi(self, abi: SharedInfoAbi) -> Self {
        Self { abi, ..self }
    }

    /// Where `field` (an offset in `vcpu_info`) of `vcpu`'s `vcpu_info` is.
    fn vcpu_field(&self, vcpu: usize, field: usize) -> (&M, usize) {
        match &self.vcpu0 {
            Some((mem, offset)) if vcpu == 0 => (mem, offset + field),
            _ => (&self.mem, vcpu_info_offset(vcpu) + field),
        }
    }

    /// The page.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Marks `port` pending for delivery to `vcpu` (Xen's `evtchn_2l_set_pending`):
    /// test-and-set PENDING; if it was clear and MASK is clear, test-and-set the
    /// selector bit; if that was clear, test-and-set `evtchn_upcall_pending`.
    pub fn set_pending(&self, port: EvtchnPort, vcpu: u32) -> Result<SetPending, EvtchnError> {
        let (word, bit) = self.abi.locate(port)?;
        let vcpu = vcpu_index(vcpu)?;
        let old = self
            .abi
            .fetch_or(&self.mem, EVTCHN_PENDING_OFFSET + word, bit);
        if old & bit != 0 {
            return Ok(SetPending::Coalesced);
        }
        // SeqCst against the guest's "clear MASK, then test PENDING" in `unmask`: one
        // of the two sides sees the other's write, so the event is not stranded.
        if self.abi.load(&self.mem, self.abi.mask_offset() + word) & bit != 0 {
            return Ok(SetPending::Masked);
        }
        Ok(self.raise(port, vcpu))
    }

    /// Sets `port`'s selector bit and then the upcall flag, reporting whether the upcall
    /// must be injected.
    fn raise(&self, port: EvtchnPort, vcpu: usize) -> SetPending {
        let sel = 1u64 << (port as usize / self.abi.word_bits());
        let (mem, at) = self.vcpu_field(vcpu, self.abi.sel_in_vcpu_info());
        let old = self.abi.fetch_or(mem, at, sel);
        if old & sel != 0 {
            return SetPending::Queued;
        }
        if self.mark_upcall_pending_index(vcpu) {
            SetPending::Inject
        } else {
            SetPending::Queued
        }
    }

    /// Xen's `vcpu_mark_events_pending`: sets `vcpu`'s `evtchn_upcall_pending`;
    /// `true` if it was clear, i.e. the upcall must be injected now.
    pub fn mark_upcall_pending(&self, vcpu: u32) -> Result<bool, EvtchnError> {
        Ok(self.mark_upcall_pending_index(vcpu_index(vcpu)?))
    }

    fn mark_upcall_pending_index(&self, vcpu: usize) -> bool {
        // The flag is the first byte of an 8-byte aligned word (`vcpu_info` is at
        // least 8-aligned where the shim places it; see `register_vcpu_info`).
        let (mem, at) = self.vcpu_field(vcpu, offset_of!(VcpuInfo, evtchn_upcall_pending));
        let old = mem.fetch_or_u64(at, 1, Ordering::SeqCst);
        old & 1 == 0
    }

    /// `EVTCHNOP_unmask` for `port`, bound to `vcpu` (Xen's `evtchn_2l_unmask`): clears
    /// MASK; if it was set and the port is pending, raises the selector bit and the
    /// upcall as [`set_pending`](Self::set_pending) would. Returns whether the upcall
    /// must be injected.
    pub fn unmask(&self, port: EvtchnPort, vcpu: u32) -> Result<bool, EvtchnError> {
        let (word, bit) = self.abi.locate(port)?;
        let vcpu = vcpu_index(vcpu)?;
        let old = self
            .abi
            .fetch_and(&self.mem, self.abi.mask_offset() + word, !bit);
        if old & bit == 0 {
            return Ok(false);
        }
        if self.abi.load(&self.mem, EVTCHN_PENDING_OFFSET + word) & bit == 0 {
            return Ok(false);
        }
        Ok(self.raise(port, vcpu).must_inject())
    }

    /// Clears `port`'s PENDING bit (Xen's `evtchn_2l_clear_pending`, used when a port
    /// is closed or reset).
    pub fn clear_pending(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let (word, bit) = self.abi.locate(port)?;
        self.abi
            .fetch_and(&self.mem, EVTCHN_PENDING_OFFSET + word, !bit);
        Ok(())
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        let (word, bit) = self.abi.locate(port)?;
        Ok(self.abi.load(&self.mem, EVTCHN_PENDING_OFFSET + word) & bit != 0)
    }

    /// Whether `port` is masked (Xen's `evtchn_2l_is_masked`).
    pub fn is_masked(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        let (word, bit) = self.abi.locate(port)?;
        Ok(self.abi.load(&self.mem, self.abi.mask_offset() + word) & bit != 0)
    }
}

fn test_bit<M: SharedMemory>(
    mem: &M,
    bitmap: usize,
    port: EvtchnPort,
) -> Result<bool, EvtchnError> {
    let (word, bit) = locate(port)?;
    Ok(mem.load_u64(bitmap + word, Ordering::SeqCst) & bit != 0)
}

/// What the guest must do after [`GuestEvents::unmask`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmask {
    /// The port is unmasked and was not pending: nothing more to do. An event that
    /// arrives from now on raises an upcall as usual.
    Done,
    /// The port is pending. Its event was raised while it was masked, so no selector
    /// bit or upcall announces it; the MASK bit has been set again and the guest must
    /// issue `EVTCHNOP_unmask` for the port, which clears MASK and raises the upcall.
    ///
    /// This is Linux's choice for HVM guests (`evtchn_2l_unmask`), and the one that is
    /// right for PVH: setting the selector and `evtchn_upcall_pending` from the guest
    /// would not make the hypervisor inject the upcall vector, which it does only on
    /// its own 0-to-1 transition of `evtchn_upcall_pending`. MASK is set again first
    /// because `EVTCHNOP_unmask` raises the upcall only for a port that was masked.
    NeedsHypercall,
}

/// What one [`GuestEvents::upcall`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpcallSummary {
    /// Events handed to the handler.
    pub delivered: u32,
    /// Scan rounds made (each clears `evtchn_upcall_pending` and takes the selector).
    pub rounds: u32,
    /// `evtchn_upcall_pending` was set again after the last allowed round: the caller
    /// must call [`GuestEvents::upcall`] again soon (from a deferred context), because
    /// the hypervisor raises no new upcall while the flag stays set.
    pub more_pending: bool,
}

/// The guest's half for one vCPU: masks, unmasks and scans for events in its own
/// `shared_info`.
#[derive(Debug)]
pub struct GuestEvents<M> {
    mem: M,
    vcpu: usize,
    /// The port at which the next scan starts: one past the last port delivered, so
    /// that a busy low port cannot starve higher ones (Linux keeps the same per-CPU
    /// cursor, `current_word_idx`/`current_bit_idx`).
    cursor: AtomicU32,
}

impl<M: SharedMemory> GuestEvents<M> {
    /// Wraps the `shared_info` page for vCPU `vcpu`.
    pub fn new(mem: M, vcpu: u32) -> Result<Self, EvtchnError> {
        check_len(&mem)?;
        Ok(Self {
            mem,
            vcpu: vcpu_index(vcpu)?,
            cursor: AtomicU32::new(0),
        })
    }

    /// The page.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Sets `port`'s MASK bit: its events stay pending, without upcalls.
    pub fn mask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let (word, bit) = locate(port)?;
        self.mem
            .fetch_or_u64(EVTCHN_MASK_OFFSET + word, bit, Ordering::SeqCst);
        Ok(())
    }

    /// Masks every port (what a guest does before it enables event delivery, so that
    /// only ports it binds and unmasks can interrupt it).
    pub fn mask_all(&self) {
        for w in 0..EVTCHN_WORDS {
            self.mem.store_u64(
                EVTCHN_MASK_OFFSET + w * size_of::<XenUlong>(),
                u64::MAX,
                Ordering::SeqCst,
            );
        }
    }

    /// Clears `port`'s MASK bit. If the port is pending, masks it again and returns
    /// [`Unmask::NeedsHypercall`]: the caller must then issue `EVTCHNOP_unmask`.
    pub fn unmask(&self, port: EvtchnPort) -> Result<Unmask, EvtchnError> {
        let (word, bit) = locate(port)?;
        self.mem
            .fetch_and_u64(EVTCHN_MASK_OFFSET + word, !bit, Ordering::SeqCst);
        // SeqCst: pairs with `set_pending`'s "set PENDING, then test MASK".
        if self
            .mem
            .load_u64(EVTCHN_PENDING_OFFSET + word, Ordering::SeqCst)
            & bit
            == 0
        {
            return Ok(Unmask::Done);
        }
        self.mem
            .fetch_or_u64(EVTCHN_MASK_OFFSET + word, bit, Ordering::SeqCst);
        Ok(Unmask::NeedsHypercall)
    }

    /// Clears `port`'s PENDING bit; `true` if it was set.
    pub fn clear_pending(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        let (word, bit) = locate(port)?;
        let old = self
            .mem
            .fetch_and_u64(EVTCHN_PENDING_OFFSET + word, !bit, Ordering::SeqCst);
        Ok(old & bit != 0)
    }

    /// Whether `port` is pending.
    pub fn is_pending(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        test_bit(&self.mem, EVTCHN_PENDING_OFFSET, port)
    }

    /// Whether `port` is masked.
    pub fn is_masked(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        test_bit(&self.mem, EVTCHN_MASK_OFFSET, port)
    }

    /// Whether this vCPU's `evtchn_upcall_pending` is set.
    pub fn upcall_pending(&self) -> bool {
        self.mem
            .load_u64(upcall_pending_offset(self.vcpu), Ordering::SeqCst)
            & UPCALL_PENDING_BYTE
            != 0
    }

    /// The upcall handler's work, with at most [`DEFAULT_MAX_ROUNDS`] rounds: delivers
    /// every pending, unmasked port announced to this vCPU to `deliver`, each after its
    /// PENDING bit has been cleared.
    pub fn upcall(&self, deliver: impl FnMut(EvtchnPort)) -> UpcallSummary {
        self.upcall_bounded(DEFAULT_MAX_ROUNDS, deliver)
    }

    /// [`upcall`](Self::upcall) dispatching to `registry`.
    pub fn dispatch(&self, registry: &mut HandlerRegistry) -> UpcallSummary {
        self.upcall(|port| {
            registry.dispatch(port);
        })
    }

    /// [`upcall`](Self::upcall) with an explicit bound on the rounds (at least one).
    ///
    /// Each round: clear `evtchn_upcall_pending`, then exchange the selector with 0
    /// ("the guest clears evtchn_upcall_pending before scanning": a hypervisor that
    /// sets a selector bit after the exchange finds the flag clear and raises a new
    /// upcall), then scan the announced words. Rounds repeat while the hypervisor has
    /// set the flag again meanwhile, as Linux's `__xen_evtchn_do_upcall` does.
    pub fn upcall_bounded(
        &self,
        max_rounds: u32,
        mut deliver: impl FnMut(EvtchnPort),
    ) -> UpcallSummary {
        let mut summary = UpcallSummary::default();
        for round in 1..=max_rounds.max(1) {
            summary.rounds = round;
            self.mem.fetch_and_u64(
                upcall_pending_offset(self.vcpu),
                !UPCALL_PENDING_BYTE,
                Ordering::SeqCst,
            );
            let sel = self
                .mem
                .swap_u64(pending_sel_offset(self.vcpu), 0, Ordering::SeqCst);
            summary.delivered = summary
                .delivered
                .saturating_add(self.scan(sel, &mut deliver));
            if !self.upcall_pending() {
                return summary;
            }
        }
        summary.more_pending = true;
        summary
    }

    /// Delivers the pending, unmasked ports of the words in `sel`, starting at the
    /// cursor and going round once: the cursor's word is visited first for the bits
    /// at and above the cursor, and last for the bits below it.
    fn scan(&self, sel: u64, deliver: &mut impl FnMut(EvtchnPort)) -> u32 {
        if sel == 0 {
            return 0;
        }
        let start = self.cursor.load(Ordering::Relaxed) as usize % NR_EVENT_CHANNELS;
        let (start_word, start_bit) = (start / BITS_PER_EVTCHN_WORD, start % BITS_PER_EVTCHN_WORD);
        let mut delivered = 0u32;
        for visit in 0..=EVTCHN_WORDS {
            let w = (start_word + visit) % EVTCHN_WORDS;
            if sel & (1 << w) == 0 {
                continue;
            }
            let range = if visit == 0 {
                u64::MAX << start_bit
            } else if visit == EVTCHN_WORDS {
                (1u64 << start_bit) - 1
            } else {
                u64::MAX
            };
            let off = w * size_of::<XenUlong>();
            let pending = self
                .mem
                .load_u64(EVTCHN_PENDING_OFFSET + off, Ordering::SeqCst);
            let masked = self
                .mem
                .load_u64(EVTCHN_MASK_OFFSET + off, Ordering::SeqCst);
            let mut bits = pending & !masked & range;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let bit = 1u64 << b;
                // Clear before handling: an event raised during the handler sets the
                // bit again and is delivered again. Only the clearer of a set bit
                // delivers it, so two scanners never both deliver one event.
                let old =
                    self.mem
                        .fetch_and_u64(EVTCHN_PENDING_OFFSET + off, !bit, Ordering::SeqCst);
                if old & bit == 0 {
                    continue;
                }
                let port = w * BITS_PER_EVTCHN_WORD + b;
                self.cursor
                    .store(((port + 1) % NR_EVENT_CHANNELS) as u32, Ordering::Relaxed);
                deliver(port as EvtchnPort);
                delivered = delivered.saturating_add(1);
            }
        }
        delivered
    }
}

/// An event handler: called with the port, in the upcall's context.
pub type Handler = Box<dyn FnMut(EvtchnPort) + Send>;

/// Port-to-handler table for all 4096 ports, with delivery counters.
pub struct HandlerRegistry {
    handlers: Vec<Option<Handler>>,
    delivered: u64,
    spurious: u64,
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("registered", &self.registered())
            .field("delivered", &self.delivered)
            .field("spurious", &self.spurious)
            .finish()
    }
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl HandlerRegistry {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            handlers: (0..NR_EVENT_CHANNELS).map(|_| None).collect(),
            delivered: 0,
            spurious: 0,
        }
    }

    fn slot(port: EvtchnPort) -> Result<usize, EvtchnError> {
        // Port 0 is reserved by Xen (`ECS_RESERVED`) and never bound.
        match usize::try_from(port) {
            Ok(p) if p != 0 && p < NR_EVENT_CHANNELS => Ok(p),
            _ => Err(EvtchnError::BadPort(port)),
        }
    }

    /// Installs `handler` for `port`; refuses port 0, ports beyond the 2-level range,
    /// and a port that already has one.
    pub fn register(&mut self, port: EvtchnPort, handler: Handler) -> Result<(), EvtchnError> {
        let slot = &mut self.handlers[Self::slot(port)?];
        if slot.is_some() {
            return Err(EvtchnError::PortBusy(port));
        }
        *slot = Some(handler);
        Ok(())
    }

    /// Removes and returns `port`'s handler.
    pub fn unregister(&mut self, port: EvtchnPort) -> Option<Handler> {
        let slot = Self::slot(port).ok()?;
        self.handlers[slot].take()
    }

    /// Whether `port` has a handler.
    pub fn is_registered(&self, port: EvtchnPort) -> bool {
        Self::slot(port).is_ok_and(|s| self.handlers[s].is_some())
    }

    /// Number of ports with a handler.
    pub fn registered(&self) -> usize {
        self.handlers.iter().filter(|h| h.is_some()).count()
    }

    /// Calls `port`'s handler; `false` (and counted as spurious) if it has none.
    pub fn dispatch(&mut self, port: EvtchnPort) -> bool {
        let handler = Self::slot(port)
            .ok()
            .and_then(|s| self.handlers[s].as_mut());
        match handler {
            Some(h) => {
                h(port);
                self.delivered = self.delivered.wrapping_add(1);
                true
            }
            None => {
                self.spurious = self.spurious.wrapping_add(1);
                false
            }
        }
    }

    /// Events handed to a handler so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Events for ports without a handler so far.
    pub fn spurious(&self) -> u64 {
        self.spurious
    }
}

/// Test helpers: a [`SharedMemory`] handle that several owners (threads, both halves
/// of a test) hold at once, and a wrapper that lets a test act at chosen moments of
/// the other side's protocol.
#[cfg(test)]
pub(crate) mod test_mem {
    use crate::shmem::{HeapSharedMemory, SharedMemory};
    use core::sync::atomic::Ordering;
    use std::sync::Arc;

    #[derive(Clone, Debug)]
    pub(crate) struct SharedArc(pub Arc<HeapSharedMemory>);

    impl SharedArc {
        pub(crate) fn new(len: usize) -> Self {
            Self(Arc::new(HeapSharedMemory::new(len)))
        }
    }

    /// The moments at which [`Hooked`] calls its hook.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Moment {
        /// Just before a 16- or 32-bit compare-exchange at this offset.
        BeforeCmpxchg(usize),
        /// Just after a 64-bit swap at this offset.
        AfterSwap(usize),
    }

    /// Shared memory that calls `hook` at each [`Moment`], with the plain memory (so
    /// the hook can play the other side).
    pub(crate) struct Hooked<F: Fn(&SharedArc, Moment)> {
        pub(crate) mem: SharedArc,
        pub(crate) hook: F,
    }

    /// The methods every wrapper forwards unchanged to `self.inner()`.
    macro_rules! plain_methods {
        () => {
            fn len(&self) -> usize {
                self.inner().len()
            }
            fn load_u8(&self, o: usize, r: Ordering) -> u8 {
                self.inner().load_u8(o, r)
            }
            fn store_u8(&self, o: usize, v: u8, r: Ordering) {
                self.inner().store_u8(o, v, r)
            }
            fn load_u16(&self, o: usize, r: Ordering) -> u16 {
                self.inner().load_u16(o, r)
            }
            fn store_u16(&self, o: usize, v: u16, r: Ordering) {
                self.inner().store_u16(o, v, r)
            }
            fn load_u32(&self, o: usize, r: Ordering) -> u32 {
                self.inner().load_u32(o, r)
            }
            fn store_u32(&self, o: usize, v: u32, r: Ordering) {
                self.inner().store_u32(o, v, r)
            }
            fn load_u64(&self, o: usize, r: Ordering) -> u64 {
                self.inner().load_u64(o, r)
            }
            fn store_u64(&self, o: usize, v: u64, r: Ordering) {
                self.inner().store_u64(o, v, r)
            }
            fn fetch_or_u64(&self, o: usize, v: u64, r: Ordering) -> u64 {
                self.inner().fetch_or_u64(o, v, r)
            }
            fn fetch_and_u64(&self, o: usize, v: u64, r: Ordering) -> u64 {
                self.inner().fetch_and_u64(o, v, r)
            }
            fn read_bytes(&self, o: usize, buf: &mut [u8]) {
                self.inner().read_bytes(o, buf)
            }
            fn write_bytes(&self, o: usize, data: &[u8]) {
                self.inner().write_bytes(o, data)
            }
        };
    }

    impl SharedArc {
        fn inner(&self) -> &HeapSharedMemory {
            &self.0
        }
    }

    impl<F: Fn(&SharedArc, Moment)> Hooked<F> {
        fn inner(&self) -> &HeapSharedMemory {
            &self.mem.0
        }
    }

    impl SharedMemory for SharedArc {
        plain_methods!();
        fn compare_exchange_u16(&self, o: usize, c: u16, n: u16) -> Result<u16, u16> {
            self.0.compare_exchange_u16(o, c, n)
        }
        fn compare_exchange_u32(&self, o: usize, c: u32, n: u32) -> Result<u32, u32> {
            self.0.compare_exchange_u32(o, c, n)
        }
        fn swap_u64(&self, o: usize, v: u64, r: Ordering) -> u64 {
            self.0.swap_u64(o, v, r)
        }
    }

    impl<F: Fn(&SharedArc, Moment)> SharedMemory for Hooked<F> {
        plain_methods!();
        fn compare_exchange_u16(&self, o: usize, c: u16, n: u16) -> Result<u16, u16> {
            (self.hook)(&self.mem, Moment::BeforeCmpxchg(o));
            self.mem.0.compare_exchange_u16(o, c, n)
        }
        fn compare_exchange_u32(&self, o: usize, c: u32, n: u32) -> Result<u32, u32> {
            (self.hook)(&self.mem, Moment::BeforeCmpxchg(o));
            self.mem.0.compare_exchange_u32(o, c, n)
        }
        fn swap_u64(&self, o: usize, v: u64, r: Ordering) -> u64 {
            let old = self.mem.0.swap_u64(o, v, r);
            (self.hook)(&self.mem, Moment::AfterSwap(o));
            old
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_mem::{Hooked, Moment, SharedArc};
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::{Arc, Mutex};

    fn pair() -> (HostEvents<SharedArc>, GuestEvents<SharedArc>) {
        let mem = SharedArc::new(4096);
        (
            HostEvents::new(mem.clone()).unwrap(),
            GuestEvents::new(mem, 0).unwrap(),
        )
    }

    fn collect(guest: &GuestEvents<SharedArc>) -> Vec<EvtchnPort> {
        let mut got = Vec::new();
        let s = guest.upcall(|p| got.push(p));
        assert!(!s.more_pending);
        assert_eq!(s.delivered as usize, got.len());
        got
    }

    #[test]
    fn the_32_bit_layout_uses_32_bit_words_and_its_own_offsets() {
        let mem = SharedArc::new(4096);
        let host = HostEvents::new(mem.clone())
            .unwrap()
            .with_abi(SharedInfoAbi::Compat);
        let word = |at: usize| mem.load_u32(at, Ordering::SeqCst);
        // Port 40: word 1 (bytes 4..8 of PENDING), bit 8; selector bit 1 at vcpu_info+4.
        assert_eq!(host.set_pending(40, 0), Ok(SetPending::Inject));
        assert_eq!(word(0x800 + 4), 1 << 8);
        assert_eq!(word(0x800), 0);
        assert_eq!(word(4), 1 << 1, "the 32-bit evtchn_pending_sel");
        assert_eq!(mem.load_u8(0, Ordering::SeqCst), 1, "evtchn_upcall_pending");
        assert_eq!(word(8), 0, "nothing where the 64-bit selector would be");
        // The other half of the 64-bit words is left alone.
        mem.store_u32(0x800, 0xdead_beef, Ordering::SeqCst);
        host.clear_pending(40).unwrap();
        assert_eq!((word(0x800), word(0x804)), (0xdead_beef, 0));
        // MASK is at 0x880: a masked port is pending without an upcall.
        mem.store_u32(0x880 + 4, 1 << 9, Ordering::SeqCst);
        assert_eq!(host.set_pending(41, 0), Ok(SetPending::Masked));
        assert!(host.is_masked(41).unwrap() && host.is_pending(41).unwrap());
        mem.store_u8(0, 0, Ordering::SeqCst);
        mem.store_u32(4, 0, Ordering::SeqCst);
        assert!(
            host.unmask(41, 0).unwrap(),
            "unmasking the pending port raises it"
        );
        assert_eq!(word(0x880 + 4), 0);
        // 1024 ports: 1023 is the last.
        assert!(host.set_pending(1023, 0).is_ok());
        assert_eq!(word(0x800 + 31 * 4), 1 << 31);
        assert_eq!(host.set_pending(1024, 0), Err(EvtchnError::BadPort(1024)));
    }

    #[test]
    fn offsets_follow_the_abi() {
        assert_eq!(EVTCHN_PENDING_OFFSET, 2048);
        assert_eq!(EVTCHN_MASK_OFFSET, 2560);
        assert_eq!(VCPU0_UPCALL_PENDING_OFFSET, 0);
        assert_eq!(VCPU0_PENDING_SEL_OFFSET, 8);
        assert_eq!(upcall_pending_offset(1), 64);
        assert_eq!(pending_sel_offset(31), 31 * 64 + 8);
        assert_eq!(NR_EVENT_CHANNELS, 4096);

        // The bits land where SharedInfo's fields are.
        let (host, _) = pair();
        assert_eq!(host.set_pending(197, 1), Ok(SetPending::Inject));
        let mut raw = [0u8; 4096];
        host.memory().read_bytes(0, &mut raw);
        let si = SharedInfo::from_prefix(&raw).unwrap();
        assert_eq!(si.evtchn_pending[3], 1 << 5);
        assert_eq!(si.vcpu_info[1].evtchn_pending_sel, 1 << 3);
        assert_eq!(si.vcpu_info[1].evtchn_upcall_pending, 1);
        assert_eq!(si.vcpu_info[0], VcpuInfo::default());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let (host, guest) = pair();
        assert_eq!(host.set_pending(4096, 0), Err(EvtchnError::BadPort(4096)));
        assert_eq!(host.set_pending(1, 32), Err(EvtchnError::BadVcpu(32)));
        assert_eq!(
            host.unmask(u32::MAX, 0),
            Err(EvtchnError::BadPort(u32::MAX))
        );
        assert_eq!(guest.mask(4096), Err(EvtchnError::BadPort(4096)));
        assert_eq!(guest.unmask(4096), Err(EvtchnError::BadPort(4096)));
        assert!(GuestEvents::new(SharedArc::new(4096), 32).is_err());
        assert_eq!(
            HostEvents::new(SharedArc::new(3000)).err(),
            Some(EvtchnError::SharedInfoTooSmall(3000))
        );
        let mut reg = HandlerRegistry::new();
        assert_eq!(
            reg.register(0, Box::new(|_| {})),
            Err(EvtchnError::BadPort(0))
        );
        assert_eq!(
            reg.register(4096, Box::new(|_| {})),
            Err(EvtchnError::BadPort(4096))
        );
        assert!(!reg.dispatch(5000));
        assert_eq!(reg.spurious(), 1);
    }

    #[test]
    fn set_pending_and_scan_round_trip() {
        let (host, guest) = pair();
        assert_eq!(host.set_pending(3, 0), Ok(SetPending::Inject));
        assert_eq!(host.set_pending(3, 0), Ok(SetPending::Coalesced));
        // Same word: the selector bit is already set.
        assert_eq!(host.set_pending(4, 0), Ok(SetPending::Queued));
        // Other word: selector bit new, but the upcall flag is already set.
        assert_eq!(host.set_pending(100, 0), Ok(SetPending::Queued));
        assert!(guest.upcall_pending());
        assert_eq!(collect(&guest), vec![3, 4, 100]);
        assert!(!guest.upcall_pending());
        for p in [3, 4, 100] {
            assert_eq!(guest.is_pending(p), Ok(false));
        }
        assert_eq!(collect(&guest), vec![]);
        // After the scan the next event raises a new upcall.
        assert_eq!(host.set_pending(3, 0), Ok(SetPending::Inject));
        assert_eq!(collect(&guest), vec![3]);
    }

    #[test]
    fn masked_port_is_delivered_once_after_unmask() {
        let (host, guest) = pair();
        guest.mask(9).unwrap();
        assert_eq!(host.set_pending(9, 0), Ok(SetPending::Masked));
        assert_eq!(host.set_pending(9, 0), Ok(SetPending::Coalesced));
        assert!(!guest.upcall_pending());
        assert_eq!(collect(&guest), vec![]);
        // Even a scan that finds the word announced skips the masked port.
        assert_eq!(host.set_pending(10, 0), Ok(SetPending::Inject));
        assert_eq!(collect(&guest), vec![10]);
        assert_eq!(guest.is_pending(9), Ok(true));

        // The guest unmasks: pending, so it must ask the hypervisor.
        assert_eq!(guest.unmask(9), Ok(Unmask::NeedsHypercall));
        assert_eq!(guest.is_masked(9), Ok(true));
        assert_eq!(
            host.unmask(9, 0),
            Ok(true),
            "EVTCHNOP_unmask raises the upcall"
        );
        assert_eq!(guest.is_masked(9), Ok(false));
        assert_eq!(collect(&guest), vec![9]);
        assert_eq!(collect(&guest), vec![]);
        // A second unmask of an unmasked, idle port does nothing.
        assert_eq!(host.unmask(9, 0), Ok(false));
        assert_eq!(guest.unmask(9), Ok(Unmask::Done));
        // Unmasking a masked port that is not pending raises nothing.
        guest.mask(9).unwrap();
        assert_eq!(host.unmask(9, 0), Ok(false));
    }

    #[test]
    fn many_ports_across_all_words() {
        let (host, guest) = pair();
        let ports: Vec<EvtchnPort> = (1..NR_EVENT_CHANNELS as u32).step_by(7).collect();
        for &p in &ports {
            assert!(host.set_pending(p, 0).unwrap().newly_pending());
        }
        let mut got = collect(&guest);
        got.sort_unstable();
        assert_eq!(got, ports);
        // Every port at once, including 4095 and the word boundaries.
        for p in 0..NR_EVENT_CHANNELS as u32 {
            let _ = host.set_pending(p, 0).unwrap();
        }
        let mut got = collect(&guest);
        got.sort_unstable();
        assert_eq!(got, (0..NR_EVENT_CHANNELS as u32).collect::<Vec<_>>());
    }

    #[test]
    fn scan_resumes_after_the_last_delivered_port() {
        let (host, guest) = pair();
        for p in [5, 70, 4000] {
            let _ = host.set_pending(p, 0).unwrap();
        }
        // One round delivers all three in port order and leaves the cursor past 4000.
        let mut first = Vec::new();
        let _ = guest.upcall_bounded(1, |p| first.push(p));
        assert_eq!(first, vec![5, 70, 4000]);
        // The cursor is now past 4000: a new batch starts at 4000+1 and wraps.
        for p in [6, 4000, 4001, 4095] {
            let _ = host.set_pending(p, 0).unwrap();
        }
        assert_eq!(collect(&guest), vec![4001, 4095, 6, 4000]);
        // Cursor just past 4000 again; a lower bit in the cursor's own word comes last.
        for p in [3970, 4001] {
            let _ = host.set_pending(p, 0).unwrap();
        }
        assert_eq!(collect(&guest), vec![4001, 3970]);
    }

    #[test]
    fn events_raised_by_a_handler_are_delivered() {
        let (host, guest) = pair();
        let host = Arc::new(host);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut reg = HandlerRegistry::new();
        {
            // Port 200 chains to 2 (a lower port already scanned) and 300.
            let (host, log) = (host.clone(), log.clone());
            reg.register(
                200,
                Box::new(move |p| {
                    log.lock().unwrap().push(p);
                    let _ = host.set_pending(2, 0).unwrap();
                    let _ = host.set_pending(300, 0).unwrap();
                }),
            )
            .unwrap();
        }
        for p in [2, 300] {
            let log = log.clone();
            reg.register(p, Box::new(move |p| log.lock().unwrap().push(p)))
                .unwrap();
        }
        {
            // Port 50 re-raises itself once: delivered twice, once per raise.
            let (host, log) = (host.clone(), log.clone());
            let mut again = true;
            reg.register(
                50,
                Box::new(move |p| {
                    log.lock().unwrap().push(p);
                    if std::mem::take(&mut again) {
                        let _ = host.set_pending(50, 0).unwrap();
                    }
                }),
            )
            .unwrap();
        }
        let _ = host.set_pending(200, 0).unwrap();
        let _ = host.set_pending(50, 0).unwrap();
        let s = guest.dispatch(&mut reg);
        assert!(!s.more_pending);
        assert!(s.rounds >= 2, "new events need another round: {s:?}");
        let mut got = log.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, vec![2, 50, 50, 200, 300]);
        assert_eq!(reg.delivered(), 5);
        assert_eq!(reg.spurious(), 0);
        assert!(!guest.upcall_pending());
    }

    #[test]
    fn endless_self_raising_handler_hits_the_round_limit() {
        let (host, guest) = pair();
        let host = Arc::new(host);
        let mut reg = HandlerRegistry::new();
        let h = host.clone();
        reg.register(
            7,
            Box::new(move |p| {
                let _ = h.set_pending(p, 0).unwrap();
            }),
        )
        .unwrap();
        let _ = host.set_pending(7, 0).unwrap();
        let s = guest.dispatch(&mut reg);
        assert_eq!(s.rounds, DEFAULT_MAX_ROUNDS);
        assert_eq!(s.delivered, DEFAULT_MAX_ROUNDS);
        assert!(s.more_pending && guest.upcall_pending());
        assert!(reg.unregister(7).is_some());
        let s = guest.dispatch(&mut reg);
        assert!(!s.more_pending);
        assert_eq!(reg.spurious(), 1);
    }

    #[test]
    fn registry_counts_and_refuses_double_registration() {
        let mut reg = HandlerRegistry::new();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        reg.register(
            4095,
            Box::new(move |_| {
                h.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap();
        assert_eq!(
            reg.register(4095, Box::new(|_| {})),
            Err(EvtchnError::PortBusy(4095))
        );
        assert!(reg.is_registered(4095));
        assert_eq!(reg.registered(), 1);
        assert!(reg.dispatch(4095));
        assert!(!reg.dispatch(1));
        assert_eq!((reg.delivered(), reg.spurious()), (1, 1));
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        assert!(reg.unregister(4095).is_some());
        assert!(reg.unregister(4095).is_none());
        assert!(!reg.dispatch(4095));
        assert_eq!(reg.spurious(), 2);
    }

    #[test]
    fn garbage_in_shared_info_gives_spurious_events_not_crashes() {
        let (host, guest) = pair();
        // A hostile hypervisor sets every bit of the selector, flag and bitmaps.
        for off in (0..SharedInfo::SIZE).step_by(8) {
            host.memory().store_u64(off, u64::MAX, Ordering::Relaxed);
        }
        host.memory()
            .store_u64(EVTCHN_MASK_OFFSET, 0, Ordering::Relaxed);
        let mut reg = HandlerRegistry::new();
        let s = guest.dispatch(&mut reg);
        assert_eq!(s.delivered, 64, "only word 0 is unmasked");
        assert_eq!(reg.spurious(), 64);
    }

    /// An event raised just after the guest took the selector (the window the
    /// "clear `evtchn_upcall_pending` first" rule is about) is delivered by the same
    /// upcall: the hypervisor saw the flag clear and raised it again.
    #[test]
    fn event_raised_right_after_the_selector_exchange_is_not_lost() {
        let mem = SharedArc::new(4096);
        let host = HostEvents::new(mem.clone()).unwrap();
        let injected = Arc::new(AtomicU64::new(0));
        let inj = injected.clone();
        let fired = AtomicBool::new(false);
        let guest = GuestEvents::new(
            Hooked {
                mem: mem.clone(),
                hook: move |m: &SharedArc, at: Moment| {
                    if at == Moment::AfterSwap(VCPU0_PENDING_SEL_OFFSET)
                        && !fired.swap(true, Ordering::Relaxed)
                    {
                        let r = HostEvents::new(m).unwrap().set_pending(777, 0).unwrap();
                        assert!(r.newly_pending());
                        if r.must_inject() {
                            inj.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                },
            },
            0,
        )
        .unwrap();
        assert_eq!(host.set_pending(5, 0), Ok(SetPending::Inject));
        let mut got = Vec::new();
        let s = guest.upcall(|p| got.push(p));
        assert_eq!(got, [5, 777], "{s:?}");
        assert_eq!(injected.load(Ordering::Relaxed), 1);
        assert!(!guest.upcall_pending());
    }

    /// A hypervisor thread raises random ports (some repeatedly, to coalesce) and
    /// records every 0-to-1 transition; a guest thread scans only when an upcall was
    /// "injected", and also masks and unmasks ports 1 to 4 (through
    /// `EVTCHNOP_unmask`) as it goes. Every event of another port that became pending
    /// before a scan began is delivered by the end of that scan, and in the end each
    /// port is delivered exactly as often as it became pending.
    #[test]
    fn stress_every_set_is_delivered_once() {
        const SETS: usize = 50_000;
        const MASKABLE: usize = 4;
        let (host, guest) = pair();
        let host = Arc::new(host);
        let newly: Arc<Vec<AtomicU64>> =
            Arc::new((0..NR_EVENT_CHANNELS).map(|_| AtomicU64::new(0)).collect());
        let injections = Arc::new(AtomicU64::new(0));
        // The last injection the guest has handled.
        let progress = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));

        let hyp = {
            let (host, newly, injections, progress, done) = (
                host.clone(),
                newly.clone(),
                injections.clone(),
                progress.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                // Ends the guest's loop even if an assertion here fails.
                struct Done(Arc<AtomicBool>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::Release);
                    }
                }
                let _done = Done(done);
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                for i in 0..SETS {
                    // Every 32 events, let the guest catch up, so that there are many
                    // scans however the threads are scheduled.
                    if i % 32 == 0 {
                        while progress.load(Ordering::Acquire) < injections.load(Ordering::Acquire)
                        {
                            std::thread::yield_now();
                        }
                        // The guest is idle and has handled every upcall: nothing may
                        // be pending unless masked, and nothing announced.
                        let m = host.memory();
                        assert_eq!(m.load_u64(VCPU0_PENDING_SEL_OFFSET, Ordering::SeqCst), 0);
                        assert!(!GuestEvents::new(m, 0).unwrap().upcall_pending());
                        for w in 0..EVTCHN_WORDS {
                            let pending =
                                m.load_u64(EVTCHN_PENDING_OFFSET + 8 * w, Ordering::SeqCst);
                            let mask = m.load_u64(EVTCHN_MASK_OFFSET + 8 * w, Ordering::SeqCst);
                            assert_eq!(pending & !mask, 0, "word {w}: event stranded");
                        }
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the events go to 16 hot ports, so that many coalesce.
                    let port = if x & 1 == 0 {
                        (x >> 8) % 16 + 1
                    } else {
                        (x >> 8) % (NR_EVENT_CHANNELS as u64 - 1) + 1
                    } as u32;
                    let r = host.set_pending(port, 0).unwrap();
                    if r.newly_pending() {
                        newly[port as usize].fetch_add(1, Ordering::Release);
                    }
                    if r.must_inject() {
                        let k = injections.fetch_add(1, Ordering::Release) + 1;
                        // Often wait for the guest to take the upcall, so that the two
                        // sides interleave at every scale.
                        if x & 0x30 != 0 {
                            while progress.load(Ordering::Acquire) < k {
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            })
        };

        let mut delivered = vec![0u64; NR_EVENT_CHANNELS];
        let mut before = vec![0u64; NR_EVENT_CHANNELS];
        let mut seen = 0u64;
        let mut scans = 0u64;
        let mut rounds = 0u64;
        let mut masked: Vec<EvtchnPort> = Vec::new();
        let mut y: u64 = 12345;
        let unmask = |p: EvtchnPort, seen_inj: &AtomicU64| {
            if guest.unmask(p).unwrap() == Unmask::NeedsHypercall && host.unmask(p, 0).unwrap() {
                seen_inj.fetch_add(1, Ordering::Release);
            }
        };
        loop {
            let finished = done.load(Ordering::Acquire);
            let inj = injections.load(Ordering::Acquire);
            if inj > seen {
                seen = inj;
                // Every 8th scan is checked for completeness (snapshots cost 4096 loads).
                let check = scans.is_multiple_of(8);
                if check {
                    for (b, n) in before.iter_mut().zip(newly.iter()) {
                        *b = n.load(Ordering::Acquire);
                    }
                }
                loop {
                    let s = guest.upcall(|p| delivered[p as usize] += 1);
                    rounds += u64::from(s.rounds);
                    if !s.more_pending {
                        break;
                    }
                }
                scans += 1;
                for p in (MASKABLE + 1..NR_EVENT_CHANNELS).filter(|_| check) {
                    assert!(
                        delivered[p] >= before[p],
                        "port {p}: an event older than the scan was left behind"
                    );
                }
                // Now and then mask a port, and later unmask it. This happens before
                // the guest reports its progress: between clearing the mask bit and
                // the unmask hypercall's injection, a pending port is unmasked and not
                // yet announced, which the other thread must not see as idle.
                y = y.wrapping_mul(6364136223846793005).wrapping_add(1);
                if y >> 60 == 0 {
                    let p = ((y >> 20) % MASKABLE as u64 + 1) as u32;
                    guest.mask(p).unwrap();
                    masked.push(p);
                } else if y >> 60 == 1
                    && let Some(p) = masked.pop()
                {
                    unmask(p, &injections);
                }
                progress.store(seen, Ordering::Release);
            } else if finished {
                if let Some(p) = masked.pop() {
                    unmask(p, &injections);
                    continue;
                }
                break;
            } else {
                std::thread::yield_now();
            }
        }
        hyp.join().unwrap();

        for p in 0..NR_EVENT_CHANNELS {
            assert_eq!(
                delivered[p],
                newly[p].load(Ordering::Relaxed),
                "port {p}: delivered vs became pending"
            );
            assert_eq!(guest.is_pending(p as u32), Ok(false), "port {p} stranded");
        }
        let total: u64 = delivered.iter().sum();
        assert!(total > 1000 && total < SETS as u64, "{total} deliveries");
        assert!(
            scans >= (SETS / 32) as u64 && rounds >= scans,
            "{scans} scans, {rounds} rounds"
        );
    }
}
