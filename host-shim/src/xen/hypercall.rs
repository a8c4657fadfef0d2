//! Hypercall dispatch: number → handler, arguments checked, Xen errno values returned.
//!
//! A hypercall arrives as a [`Call`]: its number and arguments from the caller's
//! registers and the caller's mode. From 64-bit code the arguments are `rdi rsi rdx
//! r10 r8`; from 32-bit code `ebx ecx edx esi edi`, and the structures whose layout
//! differs in 32-bit code are read and written in that layout ([`super::compat`]), as
//! Xen's compat layer does.
//!
//! Hypercalls the shim does not implement return `-ENOSYS`, as Xen does for a number it
//! does not know; sub-operations it does not implement return what Xen returns for an
//! unknown sub-op (`-ENOSYS`). Structures are copied in from guest-virtual addresses,
//! checked, acted on, and copied back; a bad address gives `-EFAULT` and changes
//! nothing.

use std::sync::atomic::Ordering;

use pv_drivers::abi::Pod;
use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::event_channel::*;
use pv_drivers::abi::grant_table::*;
use pv_drivers::abi::hvm::*;
use pv_drivers::abi::memory::*;
use pv_drivers::abi::sched::*;
use pv_drivers::abi::vcpu::*;
use pv_drivers::abi::xen::*;
use pv_drivers::shmem::SharedMemory;

use super::compat;
use super::evtchn::Binding;
use super::guest_mem::{Fault, PAGE_SIZE};
use super::{State, Xen, XenStats};

use crate::kvm::{PagingState, Registers};

/// The mode of the code that made a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 64-bit code (long mode with a 64-bit code segment).
    Long,
    /// 32-bit code: compat argument registers and structure layouts.
    Compat,
}

impl Mode {
    /// The mode of code running with `paging`'s code segment and EFER.
    pub fn of(paging: &PagingState) -> Self {
        if paging.long_mode_code {
            Mode::Long
        } else {
            Mode::Compat
        }
    }
}

/// One hypercall: number, arguments and the caller's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// The hypercall number (`rax`/`eax`).
    pub nr: u64,
    /// Up to five arguments, zero-extended from 32 bits for a 32-bit caller.
    pub args: [u64; 5],
    /// The caller's mode.
    pub mode: Mode,
    /// The mode the hypercall page the call came through was written for, when it came
    /// through one (a `KVM_EXIT_XEN` hypercall did not).
    pub page: Option<Mode>,
}

impl Call {
    /// The call in `regs`, made by code in `mode`.
    pub fn from_registers(regs: &Registers, mode: Mode) -> Self {
        let low = |r: u64| r & 0xffff_ffff;
        let (nr, args) = match mode {
            Mode::Long => (regs.rax, [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8]),
            Mode::Compat => (
                low(regs.rax),
                [regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi].map(low),
            ),
        };
        Self {
            nr,
            args,
            mode,
            page: None,
        }
    }
}

/// What the vCPU loop does after a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Return `ret` to the guest and resume it.
    Resume,
    /// The guest asked to shut down (`SCHEDOP_shutdown`).
    Shutdown(u32),
    /// The hypercall was preempted with work left (Xen's continuation,
    /// `hypercall_create_continuation`): the guest is to run the same hypercall
    /// instruction again, with the number in `rax` and these arguments in its argument
    /// registers, which say where to go on. In between the guest may take interrupts.
    Continue(Call),
}

/// Elements of guest-sized work (multicall entries, `GNTTABOP_copy` elements,
/// reservation extents) one hypercall does before it is preempted and continued, as
/// Xen preempts long hypercalls (`hypercall_preempt_check`). Xen's test is whether
/// anything else wants the CPU; a fixed count keeps the shim deterministic. Either way
/// the first element is always done, so every continuation makes progress.
pub const PREEMPT_AFTER: u32 = 256;

/// A hypercall's result: the value for `rax`, and what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// 0, a positive result, or a negated Xen errno.
    pub ret: i64,
    /// What next.
    pub after: After,
}

type HResult = Result<i64, XenErrno>;

/// Reads the guest's paging state at most once per hypercall, when a pointer
/// argument needs translating.
pub struct Ctx<'a> {
    paging: Option<PagingState>,
    mode: Mode,
    fetch: &'a mut dyn FnMut() -> Option<PagingState>,
    /// Where console_io output goes.
    pub console: &'a mut dyn FnMut(&[u8]),
    /// Inside a multicall (which may not nest).
    in_multicall: bool,
    /// Elements of work done in this hypercall (see [`PREEMPT_AFTER`]).
    work: u32,
    /// The arguments the hypercall continues with, once it has been preempted.
    continuation: Option<[u64; 5]>,
    /// Preemption is off: the multicall around the running entry could not be
    /// continued at it.
    pinned: bool,
}

impl<'a> Ctx<'a> {
    /// `fetch` reads the vCPU's control registers; `console` prints.
    pub fn new(
        fetch: &'a mut dyn FnMut() -> Option<PagingState>,
        console: &'a mut dyn FnMut(&[u8]),
    ) -> Self {
        Self {
            paging: None,
            mode: Mode::Long,
            fetch,
            console,
            in_multicall: false,
            work: 0,
            continuation: None,
            pinned: false,
        }
    }

    /// Counts one element of work done.
    fn did(&mut self) {
        self.work = self.work.saturating_add(1);
    }

    /// Preempts the hypercall if it has done its share of work: it is to continue with
    /// `args`, and the caller returns at once. Not when the arguments do not fit a
    /// 32-bit caller's registers (an array running past 4 GiB): the hypercall then goes
    /// on, as it would have without preemption, and fails at that element.
    fn preempt(&mut self, args: [u64; 5]) -> bool {
        let fits = self.mode == Mode::Long || args.iter().all(|&a| a <= u64::from(u32::MAX));
        if self.work < PREEMPT_AFTER || !fits || self.pinned {
            return false;
        }
        self.continuation = Some(args);
        true
    }

    fn paging(&mut self) -> Result<PagingState, XenErrno> {
        if self.paging.is_none() {
            self.paging = (self.fetch)();
        }
        self.paging.ok_or(XenErrno::EFAULT)
    }
}

fn efault(_: Fault) -> XenErrno {
    XenErrno::EFAULT
}

impl Xen {
    fn get<T: Pod>(&self, ctx: &mut Ctx<'_>, gva: u64) -> Result<T, XenErrno> {
        let paging = ctx.paging()?;
        let mut buf = vec![0u8; size_of::<T>()];
        self.ram.read_virt(&paging, gva, &mut buf).map_err(efault)?;
        // SAFETY: `T: Pod` accepts every bit pattern, `buf` holds exactly
        // `size_of::<T>()` initialised bytes, and `read_unaligned` has no alignment
        // requirement.
        Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
    }

    fn put<T: Pod>(&self, ctx: &mut Ctx<'_>, gva: u64, value: &T) -> Result<(), XenErrno> {
        let paging = ctx.paging()?;
        // SAFETY: `T: Pod` has no padding, so all `size_of::<T>()` bytes of `value` are
        // initialised; the slice borrows `value` only for this call.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        };
        self.ram.write_virt(&paging, gva, bytes).map_err(efault)
    }

    /// `domid` as the caller means it: DOMID_SELF or its own id; anything else is
    /// another domain, which an unprivileged guest may not name (`-EPERM`), or one that
    /// does not exist (`-ESRCH`).
    fn own_domain(&self, domid: DomId) -> Result<(), XenErrno> {
        if domid == DOMID_SELF || domid == self.config.domid {
            Ok(())
        } else if domid == 0 {
            Err(XenErrno::EPERM)
        } else {
            Err(XenErrno::ESRCH)
        }
    }

    /// Reads an argument structure whose 32-bit layout differs: `T` from 64-bit code,
    /// `N` bytes decoded by `decode` from 32-bit code.
    fn get_abi<T: Pod, const N: usize>(
        &self,
        ctx: &mut Ctx<'_>,
        gva: u64,
        decode: fn(&[u8; N]) -> T,
    ) -> Result<T, XenErrno> {
        match ctx.mode {
            Mode::Long => self.get(ctx, gva),
            Mode::Compat => Ok(decode(&self.get(ctx, gva)?)),
        }
    }

    /// Runs `call`.
    pub fn hypercall(&self, call: &Call, ctx: &mut Ctx<'_>) -> Outcome {
        ctx.mode = call.mode;
        ctx.work = 0;
        ctx.continuation = None;
        ctx.pinned = false;
        let nr = call.nr;
        let (name, result) = match call.page {
            Some(page) if page != call.mode => {
                // The stub's argument registers and result width are those of the
                // page's mode: running it would be a different hypercall.
                if !self.warned_mode_mismatch.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "host-shim: warning: the guest called hypercall {nr} from {} code \
                         through a hypercall page installed in {} code; refused with \
                         -ENOSYS (write the hypercall MSR again after changing modes)",
                        mode_name(call.mode),
                        mode_name(page)
                    );
                }
                ("refused.mode_mismatch".to_owned(), Err(XenErrno::ENOSYS))
            }
            _ => self.dispatch(nr, call.args, ctx),
        };
        let continuation = ctx.continuation.take();
        let mut st = self.lock();
        let stats: &mut XenStats = &mut st.stats;
        *stats.hypercalls.entry(name).or_default() += 1;
        stats.hypercall_continuations += u64::from(continuation.is_some());
        let ret = match result {
            Ok(v) => v,
            Err(e) => {
                stats.hypercall_errors += 1;
                e.as_neg()
            }
        };
        let after = match st.shutdown {
            Some(req)
                if nr == u64::from(HYPERVISOR_SCHED_OP)
                    || nr == u64::from(HYPERVISOR_MULTICALL) =>
            {
                After::Shutdown(req.reason)
            }
            _ => match continuation {
                Some(args) => After::Continue(Call { args, ..*call }),
                None => After::Resume,
            },
        };
        Outcome { ret, after }
    }

    fn dispatch(&self, nr: u64, a: [u64; 5], ctx: &mut Ctx<'_>) -> (String, HResult) {
        let Ok(nr) = u32::try_from(nr) else {
            return ("invalid".into(), Err(XenErrno::ENOSYS));
        };
        let op = a[0] as u32;
        let named = |group: &str, sub: &str| format!("{group}.{sub}");
        // A 64-bit argument is split over two registers in 32-bit code (low first).
        let wide = |lo: u64, hi: u64| match ctx.mode {
            Mode::Long => lo,
            Mode::Compat => lo | hi << 32,
        };
        match nr {
            HYPERVISOR_XEN_VERSION => (
                named("xen_version", xenver_name(op)),
                self.xen_version(op, a[1], ctx),
            ),
            HYPERVISOR_CONSOLE_IO => ("console_io".into(), self.console_io(op, a[1], a[2], ctx)),
            HYPERVISOR_MEMORY_OP => (
                named("memory_op", memory_op_name(op)),
                self.memory_op(op, a[1], ctx),
            ),
            HYPERVISOR_HVM_OP => (named("hvm_op", hvm_op_name(op)), self.hvm_op(op, a[1], ctx)),
            HYPERVISOR_EVENT_CHANNEL_OP => (
                named("event_channel_op", evtchn_op_name(op)),
                self.event_channel_op(op, a[1], ctx),
            ),
            HYPERVISOR_GRANT_TABLE_OP => (
                named("grant_table_op", gnttab_op_name(op)),
                self.grant_table_op(op, a[1], a[2], ctx),
            ),
            HYPERVISOR_VCPU_OP => (
                named("vcpu_op", vcpu_op_name(op)),
                self.vcpu_op(op, a[1] as u32, a[2], ctx),
            ),
            HYPERVISOR_SCHED_OP => (
                named("sched_op", sched_op_name(op)),
                self.sched_op(op, a[1], ctx),
            ),
            HYPERVISOR_SET_TIMER_OP => (
                "set_timer_op".into(),
                self.set_timer(wide(a[0], a[1]), false),
            ),
            HYPERVISOR_VM_ASSIST => ("vm_assist".into(), self.vm_assist(op, a[1])),
            HYPERVISOR_MULTICALL => ("multicall".into(), self.multicall(a[0], a[1] as u32, ctx)),
            HYPERVISOR_PLATFORM_OP | HYPERVISOR_SYSCTL | HYPERVISOR_DOMCTL => {
                (privileged_name(nr).into(), self.privileged(nr, a[0], ctx))
            }
            _ => (format!("unknown_{nr}"), Err(XenErrno::ENOSYS)),
        }
    }

    // ---- multicall ---------------------------------------------------------------

    /// `HYPERVISOR_multicall(call_list, nr_calls)` as Xen serves an HVM/PVH guest
    /// (common/multicall.c, do_multicall; x86 hvm_do_multicall_call): `nr_calls` is a
    /// `uint32_t`; each `multicall_entry` (`op`, `result`, `args[6]`: 64 bytes, or 32
    /// in a 32-bit caller's layout) is read, its hypercall run as if called directly
    /// (an unknown one gets -ENOSYS in `result`), and `result` written back; an entry
    /// that cannot be read or written ends the call with -EFAULT; a multicall inside a
    /// multicall is -EINVAL. A long list is preempted between entries and continues
    /// from the next one (`call_list` advanced, `nr_calls` reduced, as Xen's
    /// continuation); an entry preempted itself has its continued arguments written
    /// back into the entry, and the multicall continues at it.
    fn multicall(&self, list: u64, nr: u32, ctx: &mut Ctx<'_>) -> HResult {
        if ctx.in_multicall {
            return Err(XenErrno::EINVAL);
        }
        ctx.in_multicall = true;
        let r = self.multicall_entries(list, nr, ctx);
        ctx.in_multicall = false;
        r
    }

    fn multicall_entries(&self, list: u64, nr: u32, ctx: &mut Ctx<'_>) -> HResult {
        let size = match ctx.mode {
            Mode::Long => 64,
            Mode::Compat => 32,
        };
        let nr = u64::from(nr);
        for i in 0..nr {
            // Guest-supplied base: a list running off the address space is a bad
            // address, not an overflow.
            let at = (i * size).checked_add(list).ok_or(XenErrno::EFAULT)?;
            if i > 0 && ctx.preempt([at, nr - i, 0, 0, 0]) {
                return Ok(0);
            }
            let (op, args) = match ctx.mode {
                Mode::Long => {
                    let e: [u64; 8] = self.get(ctx, at)?;
                    (e[0], [e[2], e[3], e[4], e[5], e[6]])
                }
                Mode::Compat => {
                    let e: [u32; 8] = self.get(ctx, at)?;
                    (
                        u64::from(e[0]),
                        [e[2], e[3], e[4], e[5], e[6]].map(u64::from),
                    )
                }
            };
            // The entry may be preempted only if the multicall can continue at it.
            ctx.pinned = ctx.mode == Mode::Compat && at > u64::from(u32::MAX);
            let (name, result) = self.dispatch(op, args, ctx);
            ctx.pinned = false;
            {
                let mut st = self.lock();
                *st.stats.multicall_entries.entry(name).or_default() += 1;
            }
            if let Some(rest) = ctx.continuation.take() {
                // The entry's own continuation replaces its arguments; the entry runs
                // again when the multicall continues at it (`result` is written then).
                match ctx.mode {
                    Mode::Long => self.put(ctx, at + 16, &rest)?,
                    Mode::Compat => self.put(ctx, at + 8, &rest.map(|a| a as u32))?,
                }
                ctx.continuation = Some([at, nr - i, 0, 0, 0]);
                return Ok(0);
            }
            ctx.did();
            let ret = match result {
                Ok(v) => v,
                Err(e) => e.as_neg(),
            };
            match ctx.mode {
                Mode::Long => self.put(ctx, at + 8, &ret)?,
                Mode::Compat => self.put(ctx, at + 4, &(ret as i32))?,
            }
        }
        Ok(0)
    }

    // ---- xen_version -------------------------------------------------------------

    fn xen_version(&self, cmd: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        let (major, minor) = super::XEN_VERSION;
        match cmd {
            XENVER_VERSION => Ok(i64::from(major) << 16 | i64::from(minor)),
            XENVER_EXTRAVERSION => {
                let mut v = [0u8; 16];
                v[..5].copy_from_slice(b".0-ks");
                self.put(ctx, arg, &v)?;
                Ok(0)
            }
            XENVER_COMPILE_INFO => {
                // compiler[64], compile_by[16], compile_domain[32], compile_date[32]
                let mut v = [0u8; 144];
                v[..8].copy_from_slice(b"rustc   ");
                v[64..73].copy_from_slice(b"host-shim");
                self.put(ctx, arg, &v)?;
                Ok(0)
            }
            XENVER_CAPABILITIES => {
                let mut v = [0u8; 1024];
                let caps = b"hvm-3.0-x86_64";
                v[..caps.len()].copy_from_slice(caps);
                self.put(ctx, arg, &v)?;
                Ok(0)
            }
            XENVER_CHANGESET => {
                let mut v = [0u8; 64];
                v[..9].copy_from_slice(b"host-shim");
                self.put(ctx, arg, &v)?;
                Ok(0)
            }
            XENVER_PLATFORM_PARAMETERS => {
                // virt_start (`xen_ulong_t`): none for an HVM guest.
                match ctx.mode {
                    Mode::Long => self.put(ctx, arg, &0u64)?,
                    Mode::Compat => self.put(ctx, arg, &0u32)?,
                }
                Ok(0)
            }
            XENVER_GET_FEATURES => {
                // struct xen_feature_info { unsigned int submap_idx; uint32_t submap; }
                let req: [u32; 2] = self.get(ctx, arg)?;
                let submap = if req[0] == 0 { XEN_FEATURES_SUBMAP0 } else { 0 };
                self.put(ctx, arg, &[req[0], submap])?;
                Ok(0)
            }
            XENVER_PAGESIZE => Ok(PAGE_SIZE as i64),
            XENVER_GUEST_HANDLE => {
                self.put(ctx, arg, &[0u8; 16])?;
                Ok(0)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    // ---- console_io ----------------------------------------------------------------

    fn console_io(&self, cmd: u32, count: u64, buf: u64, ctx: &mut Ctx<'_>) -> HResult {
        match cmd {
            CONSOLEIO_WRITE => {
                // As Xen's `guest_console_write`: `count` is an `unsigned int` (the
                // register's upper half is not looked at), copied in chunks of its
                // 128-byte buffer; a chunk that cannot be read ends the call with
                // -EFAULT after the chunks before it were written, and a long write is
                // preempted between chunks and continued with the rest.
                let mut count = u64::from(count as u32);
                let mut buf = buf;
                let paging = ctx.paging()?;
                let mut out = Vec::new();
                let mut result = Ok(0);
                while count > 0 {
                    if !out.is_empty()
                        && ctx.preempt([u64::from(CONSOLEIO_WRITE), count, buf, 0, 0])
                    {
                        break;
                    }
                    let n = count.min(CONSOLE_CHUNK as u64);
                    let mut chunk = [0u8; CONSOLE_CHUNK];
                    let chunk = &mut chunk[..n as usize];
                    if let Err(e) = self.ram.read_virt(&paging, buf, chunk) {
                        result = Err(efault(e));
                        break;
                    }
                    out.extend_from_slice(chunk);
                    ctx.did();
                    count -= n;
                    // The next chunk's address; past the top of the address space
                    // there is none.
                    match buf.checked_add(n) {
                        Some(next) => buf = next,
                        None if count > 0 => {
                            result = Err(XenErrno::EFAULT);
                            break;
                        }
                        None => {}
                    }
                }
                if !out.is_empty() {
                    (ctx.console)(&out);
                }
                result
            }
            // No input source: nothing to read.
            CONSOLEIO_READ => Ok(0),
            _ => Err(XenErrno::ENOSYS),
        }
    }

    // ---- memory_op -----------------------------------------------------------------

    /// `HYPERVISOR_memory_op(cmd, arg)`. `cmd`'s bits above [`MEMOP_CMD_MASK`] are the
    /// extent to start at (Xen's continuations; a guest may pass one too).
    fn memory_op(&self, cmd: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        let start = cmd >> MEMOP_EXTENT_SHIFT;
        match cmd & MEMOP_CMD_MASK {
            op @ (XENMEM_INCREASE_RESERVATION
            | XENMEM_DECREASE_RESERVATION
            | XENMEM_POPULATE_PHYSMAP) => Ok(self.reservation(op, start, arg, ctx)),
            XENMEM_ADD_TO_PHYSMAP => {
                let req = self.get_abi(ctx, arg, compat::add_to_physmap)?;
                self.own_domain(req.domid)?;
                self.add_to_physmap(req.space, req.idx, req.gpfn)
            }
            _ if start != 0 => Err(XenErrno::EINVAL),
            XENMEM_MAXIMUM_RESERVATION | XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_GPFN => {
                let domid: DomId = self.get(ctx, arg)?;
                self.own_domain(domid)?;
                Ok(match cmd {
                    XENMEM_MAXIMUM_RESERVATION => self.config.ram_pages,
                    XENMEM_CURRENT_RESERVATION => self.lock().reservation.current(&self.config),
                    _ => self.config.max_gpfn,
                } as i64)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    /// `XENMEM_{increase,decrease}_reservation` and `XENMEM_populate_physmap` from
    /// extent `start`, as Xen runs them: the result is the number of extents done
    /// (counting the `start` skipped); a bad argument structure, another domain, an
    /// order above Xen's domU limit or an unreadable extent list stops the operation
    /// there, without an errno. A long list is preempted between extents and continues
    /// from the next (its index in `cmd`'s high bits, as Xen's continuation).
    ///
    /// The guest's RAM is one host mapping, so a released page is discarded (its host
    /// memory freed, its contents zero) and remembered; only released pages can be
    /// populated again. The shim's own pages (shared_info, grant frames, the xenstore
    /// and console rings) cannot be released, as if their removal failed. A
    /// translated guest's `increase_reservation` only allocates (Xen maps the pages
    /// nowhere), so it only counts against the reservation.
    fn reservation(&self, op: u32, start: u32, arg: u64, ctx: &mut Ctx<'_>) -> i64 {
        let start = u64::from(start);
        let (req, pfn_size) = match ctx.mode {
            Mode::Long => (self.get::<XenMemoryReservation>(ctx, arg), 8),
            Mode::Compat => (
                self.get(ctx, arg).map(|b| compat::memory_reservation(&b)),
                compat::PFN_SIZE,
            ),
        };
        let Ok(req) = req else {
            return start as i64;
        };
        if req.nr_extents > u64::from(u32::MAX >> MEMOP_EXTENT_SHIFT)
            || start >= req.nr_extents
            || self.own_domain(req.domid).is_err()
            || req.extent_order > DOMU_MAX_ORDER
            || (op == XENMEM_POPULATE_PHYSMAP && req.mem_flags & XENMEMF_POPULATE_ON_DEMAND != 0)
        {
            return start as i64;
        }
        let pages = 1u64 << req.extent_order;
        let mut done = start;
        while done < req.nr_extents {
            // `done` fits beside the command: `nr_extents` was checked above.
            let cmd = u64::from(op) | done << MEMOP_EXTENT_SHIFT;
            if done > start && ctx.preempt([cmd, arg, 0, 0, 0]) {
                break;
            }
            let at = done
                .checked_mul(pfn_size)
                .and_then(|off| req.extent_start.checked_add(off));
            let gpfn = if op == XENMEM_INCREASE_RESERVATION {
                0
            } else {
                let read = match (at, ctx.mode) {
                    (None, _) => Err(XenErrno::EFAULT),
                    (Some(at), Mode::Long) => self.get::<u64>(ctx, at),
                    (Some(at), Mode::Compat) => self.get::<u32>(ctx, at).map(u64::from),
                };
                match read {
                    Ok(gpfn) => gpfn,
                    Err(_) => break,
                }
            };
            let ok = match op {
                XENMEM_DECREASE_RESERVATION => self.release_pages(gpfn, pages),
                XENMEM_POPULATE_PHYSMAP => self.populate_pages(gpfn, pages),
                _ => self.lock().reservation.allocate(&self.config, pages),
            };
            if !ok {
                break;
            }
            ctx.did();
            done += 1;
        }
        done as i64
    }

    /// Releases `count` pages from `gpfn`; false (nothing released) if any of them is
    /// not populated RAM the guest may give back.
    fn release_pages(&self, gpfn: u64, count: u64) -> bool {
        let mut st = self.lock();
        let Some(end) = gpfn.checked_add(count) else {
            return false;
        };
        let shim_owned = |pfn: u64| {
            let gpa = pfn * PAGE_SIZE;
            gpa == self.config.store_page
                || gpa == self.config.console_page
                || st.shared_info.as_ref().is_some_and(|p| p.gpa() == gpa)
                || st.vcpu_info.as_ref().is_some_and(|(p, _)| p.gpa() == gpa)
                || {
                    let frames = st.grants.memory();
                    (0..frames.nr_pages()).any(|i| frames.page(i).is_some_and(|p| p.gpa() == gpa))
                }
        };
        let removable = (gpfn..end).all(|pfn| {
            pfn.checked_mul(PAGE_SIZE)
                .is_some_and(|gpa| self.ram.is_ram(gpa, PAGE_SIZE))
                && !st.reservation.released.contains(&pfn)
                && !shim_owned(pfn)
        });
        if !removable {
            return false;
        }
        for pfn in gpfn..end {
            self.ram.discard(pfn * PAGE_SIZE);
            st.reservation.released.insert(pfn);
        }
        true
    }

    /// Populates `count` released pages from `gpfn` again (they read as zero); false
    /// if any of them is not a released page.
    fn populate_pages(&self, gpfn: u64, count: u64) -> bool {
        let mut st = self.lock();
        let Some(end) = gpfn.checked_add(count) else {
            return false;
        };
        if !(gpfn..end).all(|pfn| st.reservation.released.contains(&pfn)) {
            return false;
        }
        for pfn in gpfn..end {
            st.reservation.released.remove(&pfn);
        }
        true
    }

    fn add_to_physmap(&self, space: u32, idx: u64, gpfn: u64) -> HResult {
        let page = self.ram.page(gpfn).map_err(|_| XenErrno::EINVAL)?;
        match space {
            XENMAPSPACE_SHARED_INFO => {
                if idx != 0 {
                    return Err(XenErrno::EINVAL);
                }
                self.map_shared_info_locked(&mut self.lock(), page);
                Ok(0)
            }
            XENMAPSPACE_GRANT_TABLE => {
                if idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 {
                    // Status frames exist only in grant-table v2.
                    return Err(XenErrno::EINVAL);
                }
                self.place_grant_frame(idx, page)
                    .map(|()| 0)
                    .map_err(|()| XenErrno::EINVAL)
            }
            _ => Err(XenErrno::EINVAL),
        }
    }

    fn map_shared_info_locked(&self, st: &mut State, page: super::guest_mem::SharedPage) {
        let mut contents = [0u8; PAGE_SIZE as usize];
        if let Some(old) = st.shared_info.as_ref() {
            old.mem().read_bytes(0, &mut contents);
        }
        page.mem().write_bytes(0, &contents);
        st.shared_info = Some(page);
        self.publish_time_locked(st);
        let early = std::mem::take(&mut st.early_pending);
        for port in early {
            self.raise_locked(st, port);
        }
    }

    // ---- hvm_op --------------------------------------------------------------------

    fn hvm_op(&self, op: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        match op {
            HVMOP_SET_PARAM | HVMOP_GET_PARAM => {
                let mut p: XenHvmParam = self.get(ctx, arg)?;
                self.own_domain(p.domid)?;
                if p.index >= HVM_NR_PARAMS {
                    return Err(XenErrno::EINVAL);
                }
                if op == HVMOP_SET_PARAM {
                    self.set_param(p.index, p.value, ctx.mode)?;
                } else {
                    p.value = self.get_param(p.index)?;
                    self.put(ctx, arg, &p)?;
                }
                Ok(0)
            }
            HVMOP_SET_EVTCHN_UPCALL_VECTOR => {
                let req: XenHvmEvtchnUpcallVector = self.get(ctx, arg)?;
                if req.vcpu != 0 {
                    return Err(XenErrno::ENOENT);
                }
                // Xen refuses the exception vectors.
                if req.vector < 0x10 {
                    return Err(XenErrno::EINVAL);
                }
                let mut st = self.lock();
                st.upcall_vector = Some(req.vector);
                // Events already pending are delivered now.
                if Self::upcall_pending_locked(&st) {
                    self.inject_upcall_locked(&mut st);
                }
                Ok(0)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    fn set_param(&self, index: u32, value: u64, mode: Mode) -> Result<(), XenErrno> {
        match index {
            HVM_PARAM_CALLBACK_IRQ => {
                // Xen takes any value (`hvm_set_callback_via` never fails; a type it
                // does not know means "none"). The shim delivers events through the
                // vCPU's upcall vector (HVMOP_set_evtchn_upcall_vector) or a callback
                // vector of 0x10 and above; a GSI or PCI INTx callback is recorded but
                // not raised (Linux sets GSI 1 only to mark itself enlightened, after
                // registering its per-vCPU vector).
                let mut st = self.lock();
                st.callback_via = value;
                // Like installing the hypercall page, this latches the shared_info
                // layout from the caller's mode.
                self.latch_shinfo_abi_locked(&mut st, mode);
                if Self::upcall_pending_locked(&st) {
                    self.inject_upcall_locked(&mut st);
                }
                Ok(())
            }
            // The toolstack's parameters are read-only to the guest.
            _ => Err(XenErrno::EPERM),
        }
    }

    fn get_param(&self, index: u32) -> Result<u64, XenErrno> {
        let st = self.lock();
        match index {
            HVM_PARAM_CALLBACK_IRQ => Ok(st.callback_via),
            HVM_PARAM_STORE_PFN => Ok(self.special.store_pfn),
            HVM_PARAM_STORE_EVTCHN => Ok(self.special.store_port.into()),
            HVM_PARAM_CONSOLE_PFN => Ok(self.special.console_pfn),
            HVM_PARAM_CONSOLE_EVTCHN => Ok(self.special.console_port.into()),
            _ => Err(XenErrno::EPERM),
        }
    }

    // ---- event_channel_op ------------------------------------------------------------

    fn event_channel_op(&self, cmd: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        let me = self.config.domid;
        let resolve = |d: DomId| if d == DOMID_SELF { me } else { d };
        match cmd {
            EVTCHNOP_ALLOC_UNBOUND => {
                let mut req: EvtchnAllocUnbound = self.get(ctx, arg)?;
                self.own_domain(req.dom)?;
                let remote = resolve(req.remote_dom);
                if remote != me && remote != 0 {
                    return Err(XenErrno::ESRCH);
                }
                let port = self
                    .lock()
                    .guest_ports
                    .alloc(Binding::Unbound { remote }, ())
                    .ok_or(XenErrno::ENOSPC)?;
                req.port = port;
                self.put(ctx, arg, &req).inspect_err(|_| {
                    self.lock().guest_ports.close(port);
                })?;
                Ok(0)
            }
            EVTCHNOP_BIND_INTERDOMAIN => {
                let mut req: EvtchnBindInterdomain = self.get(ctx, arg)?;
                let remote = resolve(req.remote_dom);
                let local = self.bind_interdomain(remote, req.remote_port)?;
                req.local_port = local;
                self.put(ctx, arg, &req).inspect_err(|_| {
                    self.close_port(local);
                })?;
                Ok(0)
            }
            EVTCHNOP_BIND_VIRQ => {
                let mut req: EvtchnBindVirq = self.get(ctx, arg)?;
                if req.virq >= NR_VIRQS {
                    return Err(XenErrno::EINVAL);
                }
                if req.vcpu != 0 {
                    return Err(XenErrno::ENOENT);
                }
                let port = {
                    let mut st = self.lock();
                    if st.guest_ports.find_virq(req.virq).is_some() {
                        return Err(XenErrno::EEXIST);
                    }
                    st.guest_ports
                        .alloc(Binding::Virq(req.virq), ())
                        .ok_or(XenErrno::ENOSPC)?
                };
                req.port = port;
                self.put(ctx, arg, &req).inspect_err(|_| {
                    self.lock().guest_ports.close(port);
                })?;
                Ok(0)
            }
            EVTCHNOP_BIND_IPI => {
                let mut req: EvtchnBindIpi = self.get(ctx, arg)?;
                if req.vcpu != 0 {
                    return Err(XenErrno::ENOENT);
                }
                let port = self
                    .lock()
                    .guest_ports
                    .alloc(Binding::Ipi, ())
                    .ok_or(XenErrno::ENOSPC)?;
                req.port = port;
                self.put(ctx, arg, &req).inspect_err(|_| {
                    self.lock().guest_ports.close(port);
                })?;
                Ok(0)
            }
            EVTCHNOP_CLOSE => {
                let req: EvtchnClose = self.get(ctx, arg)?;
                // xen/common/event_channel.c `evtchn_close()`: a port out of range, free
                // (ECS_FREE) or reserved (port 0, ECS_RESERVED) is -EINVAL.
                if self.lock().guest_ports.get(req.port).is_none() {
                    return Err(XenErrno::EINVAL);
                }
                self.close_port(req.port);
                Ok(0)
            }
            EVTCHNOP_SEND => {
                let req: EvtchnSend = self.get(ctx, arg)?;
                self.send(req.port)
            }
            EVTCHNOP_STATUS => {
                let mut req: EvtchnStatus = self.get(ctx, arg)?;
                self.own_domain(req.dom)?;
                let st = self.lock();
                if !st.guest_ports.is_valid(req.port) {
                    return Err(XenErrno::EINVAL);
                }
                req.vcpu = 0;
                req.u = [0; 2];
                match st.guest_ports.get(req.port) {
                    None => req.status = EVTCHNSTAT_CLOSED,
                    Some(Binding::Unbound { remote }) => req.set_unbound(remote),
                    Some(Binding::Interdomain { dom, port }) => req.set_interdomain(dom, port),
                    Some(Binding::Virq(v)) => req.set_virq(v),
                    Some(Binding::Ipi) => req.status = EVTCHNSTAT_IPI,
                }
                drop(st);
                self.put(ctx, arg, &req)?;
                Ok(0)
            }
            EVTCHNOP_UNMASK => {
                let req: EvtchnUnmask = self.get(ctx, arg)?;
                let mut st = self.lock();
                if !st.guest_ports.is_valid(req.port) {
                    return Err(XenErrno::EINVAL);
                }
                let inject = Self::events_locked(&st)
                    .is_some_and(|ev| ev.unmask(req.port, 0).unwrap_or(false));
                if inject {
                    self.inject_upcall_locked(&mut st);
                }
                Ok(0)
            }
            EVTCHNOP_BIND_VCPU => {
                let req: EvtchnBindVcpu = self.get(ctx, arg)?;
                if !self.lock().guest_ports.is_valid(req.port) {
                    return Err(XenErrno::EINVAL);
                }
                if req.vcpu != 0 {
                    return Err(XenErrno::ENOENT);
                }
                Ok(0)
            }
            EVTCHNOP_INIT_CONTROL => {
                // Checked as Xen checks it; a valid request is refused as by a Xen
                // built without FIFO event channels (`CONFIG_EVTCHN_FIFO=n`): guests
                // (Linux, Mini-OS) fall back to the 2-level ABI.
                let req: EvtchnInitControl = self.get(ctx, arg)?;
                if req.vcpu != 0 {
                    return Err(XenErrno::ENOENT);
                }
                if u64::from(req.offset) > PAGE_SIZE - FIFO_CONTROL_BLOCK_SIZE
                    || !req.offset.is_multiple_of(8)
                {
                    return Err(XenErrno::EINVAL);
                }
                let in_ram = req
                    .control_gfn
                    .checked_mul(PAGE_SIZE)
                    .is_some_and(|gpa| self.ram.is_ram(gpa, PAGE_SIZE));
                if !in_ram {
                    return Err(XenErrno::EINVAL);
                }
                Err(XenErrno::EOPNOTSUPP)
            }
            EVTCHNOP_EXPAND_ARRAY => {
                let _: EvtchnExpandArray = self.get(ctx, arg)?;
                Err(XenErrno::EOPNOTSUPP)
            }
            EVTCHNOP_SET_PRIORITY => {
                // The 2-level ABI has no priorities.
                let req: EvtchnSetPriority = self.get(ctx, arg)?;
                if !self.lock().guest_ports.is_valid(req.port) {
                    return Err(XenErrno::EINVAL);
                }
                Err(XenErrno::ENOSYS)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: u32) -> Result<u32, XenErrno> {
        let me = self.config.domid;
        if remote != me && remote != 0 {
            return Err(XenErrno::ESRCH);
        }
        let mut st = self.lock();
        let st = &mut *st;
        // The remote port must be waiting for us.
        let peer_binding = if remote == me {
            st.guest_ports.get(remote_port)
        } else {
            st.dom0_ports.get(remote_port)
        };
        if peer_binding != Some(Binding::Unbound { remote: me }) {
            return Err(XenErrno::EINVAL);
        }
        let local = st
            .guest_ports
            .alloc(
                Binding::Interdomain {
                    dom: remote,
                    port: remote_port,
                },
                (),
            )
            .ok_or(XenErrno::ENOSPC)?;
        let back = Binding::Interdomain {
            dom: me,
            port: local,
        };
        if remote == me {
            st.guest_ports.rebind(remote_port, back);
        } else {
            st.dom0_ports.rebind(remote_port, back);
        }
        // Xen marks the new local port pending: notifications sent to the unbound
        // port before the bind may otherwise be lost.
        self.raise_locked(st, local);
        Ok(local)
    }

    /// Closes a guest port; an interdomain peer reverts to unbound.
    fn close_port(&self, port: u32) {
        let me = self.config.domid;
        let mut st = self.lock();
        if let Some(ev) = Self::events_locked(&st) {
            let _ = ev.clear_pending(port);
        }
        st.early_pending.retain(|&p| p != port);
        if let Some(Binding::Interdomain { dom, port: peer }) = st.guest_ports.close(port) {
            if dom == me {
                st.guest_ports.rebind(peer, Binding::Unbound { remote: me });
            } else if dom == 0 {
                st.dom0_ports.rebind(peer, Binding::Unbound { remote: me });
            }
        }
    }

    fn send(&self, port: u32) -> HResult {
        let me = self.config.domid;
        let mut st = self.lock();
        match st.guest_ports.get(port) {
            None => Err(XenErrno::EINVAL),
            Some(Binding::Interdomain { dom, port: peer }) if dom == me => {
                self.raise_locked(&mut st, peer);
                Ok(0)
            }
            Some(Binding::Interdomain { port: peer, .. }) => {
                st.stats.events_to_dom0 += 1;
                let notify = st.dom0_ports.payload(peer).cloned().flatten();
                drop(st);
                if let Some(notify) = notify {
                    notify();
                }
                Ok(0)
            }
            Some(Binding::Ipi) => {
                self.raise_locked(&mut st, port);
                Ok(0)
            }
            // Nobody listens yet: the event is dropped, as on Xen.
            Some(Binding::Unbound { .. }) => Ok(0),
            Some(Binding::Virq(_)) => Err(XenErrno::EINVAL),
        }
    }

    // ---- grant_table_op --------------------------------------------------------------

    fn grant_table_op(&self, cmd: u32, arg: u64, count: u64, ctx: &mut Ctx<'_>) -> HResult {
        // Xen's `unsigned int count` (common/grant_table.c, do_grant_table_op): the
        // register's upper half is not looked at, and a count negative as an int is
        // -EINVAL. A long batch is preempted between elements and continues with the
        // next (`arg` advanced, `count` reduced), as Xen's continuation does.
        let count = u64::from(count as u32);
        if (count as u32 as i32) < 0 {
            return Err(XenErrno::EINVAL);
        }
        match cmd {
            GNTTABOP_QUERY_SIZE => {
                if count != 1 {
                    return Err(XenErrno::EINVAL);
                }
                let mut q: GnttabQuerySize = self.get(ctx, arg)?;
                match self.own_domain(q.dom) {
                    Ok(()) => {
                        q.nr_frames = self.grant_frames();
                        q.max_nr_frames = super::MAX_GRANT_FRAMES;
                        q.status = GNTST_OKAY;
                    }
                    Err(_) => q.status = GNTST_BAD_DOMAIN,
                }
                self.put(ctx, arg, &q)?;
                Ok(0)
            }
            GNTTABOP_SET_VERSION => {
                if count != 1 {
                    return Err(XenErrno::EINVAL);
                }
                // As Xen with `gnttab_max_version=1`: 0 and 3.. are -EINVAL, 2 is
                // -ENOSYS ("as before set_version was introduced"); the version in
                // force is written back in every case.
                let mut v: GnttabSetVersion = self.get(ctx, arg)?;
                let requested = v.version;
                v.version = 1;
                self.put(ctx, arg, &v)?;
                match requested {
                    1 => Ok(0),
                    2 => Err(XenErrno::ENOSYS),
                    _ => Err(XenErrno::EINVAL),
                }
            }
            GNTTABOP_COPY => {
                let size = match ctx.mode {
                    Mode::Long => GnttabCopy::SIZE as u64,
                    Mode::Compat => compat::COPY_SIZE as u64,
                };
                for i in 0..count {
                    // Guest-supplied base: an array running off the address space is
                    // a bad address, not an overflow.
                    let at = (i * size).checked_add(arg).ok_or(XenErrno::EFAULT)?;
                    if i > 0 && ctx.preempt([u64::from(cmd), at, count - i, 0, 0]) {
                        return Ok(0);
                    }
                    let mut op = self.get_abi(ctx, at, compat::gnttab_copy)?;
                    op.status = self.grant_copy(&op);
                    match ctx.mode {
                        Mode::Long => self.put(ctx, at, &op)?,
                        Mode::Compat => {
                            let status_at = at.checked_add(compat::COPY_STATUS_AT);
                            self.put(ctx, status_at.ok_or(XenErrno::EFAULT)?, &op.status)?;
                        }
                    }
                    ctx.did();
                }
                Ok(0)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    /// One `GNTTABOP_copy` element by the guest; returns its `GNTST_*` status.
    fn grant_copy(&self, op: &GnttabCopy) -> i16 {
        let len = u64::from(op.len);
        if u64::from(op.source.offset) + len > PAGE_SIZE
            || u64::from(op.dest.offset) + len > PAGE_SIZE
        {
            return GNTST_BAD_COPY_ARG;
        }
        let unknown = !(GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF);
        if op.flags & unknown != 0 {
            return GNTST_BAD_COPY_ARG;
        }
        let src = match self.copy_end(&op.source, op.flags & GNTCOPY_SOURCE_GREF != 0, false) {
            Ok(end) => end,
            Err(status) => return status,
        };
        let dst = match self.copy_end(&op.dest, op.flags & GNTCOPY_DEST_GREF != 0, true) {
            Ok(end) => end,
            Err(status) => {
                self.release_end(src);
                return status;
            }
        };
        let mut buf = vec![0u8; len as usize];
        let status = match self
            .ram
            .read_phys(src.pfn * PAGE_SIZE + u64::from(op.source.offset), &mut buf)
            .and_then(|()| {
                self.ram
                    .write_phys(dst.pfn * PAGE_SIZE + u64::from(op.dest.offset), &buf)
            }) {
            Ok(()) => GNTST_OKAY,
            Err(_) => GNTST_BAD_PAGE,
        };
        self.release_end(src);
        self.release_end(dst);
        status
    }

    // ---- vcpu_op ----------------------------------------------------------------------

    fn vcpu_op(&self, cmd: u32, vcpu: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        if vcpu != 0 {
            return Err(XenErrno::ENOENT);
        }
        match cmd {
            VCPUOP_SET_SINGLESHOT_TIMER => {
                let t = self.get_abi(ctx, arg, compat::singleshot_timer)?;
                if t.flags & !VCPU_SSHOTTMR_FUTURE != 0 {
                    return Err(XenErrno::EINVAL);
                }
                self.set_timer(t.timeout_abs_ns, t.flags & VCPU_SSHOTTMR_FUTURE != 0)
            }
            VCPUOP_STOP_SINGLESHOT_TIMER => {
                self.lock().timer_deadline = None;
                self.wake.notify_all();
                Ok(0)
            }
            VCPUOP_SET_PERIODIC_TIMER => {
                let t: VcpuSetPeriodicTimer = self.get(ctx, arg)?;
                // Xen refuses periods under 1 ms... rather, under its minimum; the
                // shim's minimum keeps a guest from busying the timer thread.
                if t.period_ns < 1_000_000 {
                    return Err(XenErrno::EINVAL);
                }
                let mut st = self.lock();
                st.timer_period = Some(t.period_ns);
                st.timer_deadline = Some(self.now_ns().saturating_add(t.period_ns));
                self.wake.notify_all();
                Ok(0)
            }
            VCPUOP_STOP_PERIODIC_TIMER => {
                self.lock().timer_period = None;
                Ok(0)
            }
            VCPUOP_IS_UP => Ok(1),
            VCPUOP_REGISTER_VCPU_INFO => {
                let req: VcpuRegisterVcpuInfo = self.get(ctx, arg)?;
                self.register_vcpu_info(req.mfn, req.offset)
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
                // `addr` is a union of a guest handle and a `uint64_t`: 8 bytes in both
                // modes; a 32-bit caller's handle is its low half. 0 unregisters.
                let addr: u64 = self.get(ctx, arg)?;
                let gva = match ctx.mode {
                    Mode::Long => addr,
                    Mode::Compat => addr & 0xffff_ffff,
                };
                let paging = ctx.paging()?;
                let mut st = self.lock();
                if gva == 0 {
                    st.runstate = None;
                    return Ok(0);
                }
                let now = self.now_ns();
                let area = super::Runstate {
                    gva,
                    paging,
                    compat: ctx.mode == Mode::Compat,
                    state: RUNSTATE_RUNNING,
                    entry_ns: now,
                    // Running since system time 0, as far as the guest can tell.
                    time: [now, 0, 0, 0],
                };
                // Xen writes the area at once; a bad address is not an error then,
                // only later updates are lost (as on Xen).
                self.write_runstate_locked(&st, &area);
                st.runstate = Some(area);
                Ok(0)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    /// Arms the one-shot timer at Xen system time `deadline_ns` (0 stops it, as in
    /// `set_timer_op`). With `future`, a deadline already past is `-ETIME`.
    fn set_timer(&self, deadline_ns: u64, future: bool) -> HResult {
        let mut st = self.lock();
        if deadline_ns == 0 {
            st.timer_deadline = None;
        } else {
            if future && deadline_ns < self.now_ns() {
                return Err(XenErrno::ETIME);
            }
            st.timer_deadline = Some(deadline_ns);
        }
        self.wake.notify_all();
        Ok(0)
    }

    /// `VCPUOP_register_vcpu_info` (Xen's `map_vcpu_info`): moves vCPU 0's
    /// `vcpu_info` to `offset` in guest frame `gfn`, once. Xen copies the current
    /// contents there, then marks every selector bit and the upcall pending so that
    /// nothing pending is lost, and refreshes the time record. The shim also wants the
    /// structure 8-byte aligned (its atomic updates are 64-bit; Linux and Mini-OS align
    /// it), and refuses the shim's own pages.
    fn register_vcpu_info(&self, gfn: u64, offset: u32) -> HResult {
        let offset = offset as usize;
        if offset > PAGE_SIZE as usize - VCPU_INFO_SIZE || !offset.is_multiple_of(8) {
            return Err(XenErrno::EINVAL);
        }
        let page = self.ram.page(gfn).map_err(|_| XenErrno::EINVAL)?;
        let gpa = page.gpa();
        if gpa == self.config.store_page || gpa == self.config.console_page {
            return Err(XenErrno::EINVAL);
        }
        let mut st = self.lock();
        if st.vcpu_info.is_some() {
            return Err(XenErrno::EINVAL);
        }
        let mut contents = [0u8; VCPU_INFO_SIZE];
        match Self::vcpu0_info_locked(&st) {
            Some((mem, at)) => mem.read_bytes(at, &mut contents),
            // No shared_info yet: a fresh vcpu_info, events masked (Xen's dummy).
            None => contents[super::VCPU_INFO_UPCALL_MASK] = 1,
        }
        page.mem().write_bytes(offset, &contents);
        match st.shinfo_abi {
            pv_drivers::evtchn::SharedInfoAbi::Long => {
                page.mem().store_u64(offset + 8, u64::MAX, Ordering::SeqCst);
            }
            pv_drivers::evtchn::SharedInfoAbi::Compat => {
                page.mem().store_u32(offset + 4, u32::MAX, Ordering::SeqCst);
            }
        }
        page.mem().store_u8(offset, 1, Ordering::SeqCst);
        st.vcpu_info = Some((page, offset));
        self.publish_time_locked(&mut st);
        self.inject_upcall_locked(&mut st);
        Ok(0)
    }

    // ---- sched_op ---------------------------------------------------------------------

    fn sched_op(&self, cmd: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        match cmd {
            SCHEDOP_YIELD => Ok(0),
            SCHEDOP_BLOCK => {
                // Xen enables event delivery, then blocks unless something is pending.
                let st = self.lock();
                if let Some((mem, at)) = Self::vcpu0_info_locked(&st) {
                    mem.store_u8(at + super::VCPU_INFO_UPCALL_MASK, 0, Ordering::Release);
                }
                if !Self::upcall_pending_locked(&st) && !st.stopping {
                    self.blocked_wait(st, super::BLOCK_SLICE);
                }
                Ok(0)
            }
            SCHEDOP_POLL => {
                let req = self.get_abi(ctx, arg, compat::sched_poll)?;
                if req.nr_ports > 128 {
                    return Err(XenErrno::EINVAL);
                }
                let mut ports = Vec::with_capacity(req.nr_ports as usize);
                for i in 0..u64::from(req.nr_ports) {
                    let at = req.ports.checked_add(i * 4).ok_or(XenErrno::EFAULT)?;
                    let port: u32 = self.get(ctx, at)?;
                    if !self.lock().guest_ports.is_valid(port) {
                        return Err(XenErrno::EINVAL);
                    }
                    ports.push(port);
                }
                let st = self.lock();
                let pending = |st: &State| {
                    Self::events_locked(st)
                        .is_some_and(|ev| ports.iter().any(|&p| ev.is_pending(p).unwrap_or(false)))
                };
                if !pending(&st) && !st.stopping {
                    let wait = if req.timeout == 0 {
                        super::BLOCK_SLICE
                    } else {
                        let left = req.timeout.saturating_sub(self.now_ns());
                        std::time::Duration::from_nanos(left).min(super::BLOCK_SLICE)
                    };
                    self.blocked_wait(st, wait);
                }
                Ok(0)
            }
            SCHEDOP_SHUTDOWN => {
                let req: SchedShutdown = self.get(ctx, arg)?;
                if req.reason > SHUTDOWN_MAX {
                    return Err(XenErrno::EINVAL);
                }
                self.lock().shutdown = Some(super::ShutdownRequest { reason: req.reason });
                Ok(0)
            }
            SCHEDOP_SHUTDOWN_CODE => {
                let req: SchedShutdown = self.get(ctx, arg)?;
                if req.reason > SHUTDOWN_MAX {
                    return Err(XenErrno::EINVAL);
                }
                Ok(0)
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }
}

impl Xen {
    /// Waits up to `wait` for an event with the vCPU blocked (its runstate area says
    /// so while it waits).
    fn blocked_wait(&self, st: std::sync::MutexGuard<'_, State>, wait: std::time::Duration) {
        let mut st = st;
        self.runstate_switch_locked(&mut st, RUNSTATE_BLOCKED);
        let (mut st, _) = self
            .wake
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner());
        self.runstate_switch_locked(&mut st, RUNSTATE_RUNNING);
    }

    /// Moves the vCPU's runstate to `state`, accounting the time spent in the old one,
    /// and updates the guest's area.
    fn runstate_switch_locked(&self, st: &mut State, state: u32) {
        let now = self.now_ns();
        let Some(area) = st.runstate.as_mut() else {
            return;
        };
        let old = area.state as usize % 4;
        area.time[old] = area.time[old].saturating_add(now.saturating_sub(area.entry_ns));
        area.state = state;
        area.entry_ns = now;
        let area = *area;
        self.write_runstate_locked(st, &area);
    }

    /// Writes `area` into the guest, with Xen's `XEN_RUNSTATE_UPDATE` protocol when
    /// the guest enabled `VMASST_TYPE_runstate_update_flag`: the flag is set in
    /// `state_entry_time` first and cleared last, so a reader can see a torn update.
    /// A fault loses the update, as on Xen.
    fn write_runstate_locked(&self, st: &State, area: &super::Runstate) {
        let flag = st.vm_assist & (1 << VMASST_TYPE_RUNSTATE_UPDATE_FLAG) != 0;
        let mark = if flag { XEN_RUNSTATE_UPDATE } else { 0 };
        let (bytes, entry_at) =
            compat::runstate_info(area.compat, area.state, area.entry_ns | mark, &area.time);
        let entry_gva = area.gva.wrapping_add(entry_at as u64);
        let write = |gva: u64, b: &[u8]| self.ram.write_virt(&area.paging, gva, b).is_ok();
        if flag && !write(entry_gva, &(area.entry_ns | mark).to_le_bytes()) {
            return;
        }
        if write(area.gva, &bytes) && flag {
            write(entry_gva, &area.entry_ns.to_le_bytes());
        }
    }

    /// `HYPERVISOR_vm_assist(cmd, type)`: an HVM guest may set only
    /// `VMASST_TYPE_runstate_update_flag` (Xen's `HVM_VM_ASSIST_MASK`).
    fn vm_assist(&self, cmd: u32, kind: u64) -> HResult {
        if kind != u64::from(VMASST_TYPE_RUNSTATE_UPDATE_FLAG) {
            return Err(XenErrno::EINVAL);
        }
        let bit = 1u64 << kind;
        let mut st = self.lock();
        match cmd {
            VMASST_CMD_ENABLE => st.vm_assist |= bit,
            VMASST_CMD_DISABLE => st.vm_assist &= !bit,
            _ => return Err(XenErrno::ENOSYS),
        }
        Ok(0)
    }

    /// `platform_op`, `sysctl`, `domctl`: as Xen answers an unprivileged domain. The
    /// structure is read (`-EFAULT`), its `interface_version` checked against Xen
    /// 4.17's (`-EACCES`), and then the XSM check refuses (`-EPERM`).
    fn privileged(&self, nr: u32, arg: u64, ctx: &mut Ctx<'_>) -> HResult {
        let [_cmd, version]: [u32; 2] = self.get(ctx, arg)?;
        let want = match nr {
            HYPERVISOR_PLATFORM_OP => XENPF_INTERFACE_VERSION,
            HYPERVISOR_SYSCTL => XEN_SYSCTL_INTERFACE_VERSION,
            _ => XEN_DOMCTL_INTERFACE_VERSION,
        };
        if version != want {
            return Err(XenErrno::EACCES);
        }
        Err(XenErrno::EPERM)
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Long => "64-bit",
        Mode::Compat => "32-bit",
    }
}

fn privileged_name(nr: u32) -> &'static str {
    match nr {
        HYPERVISOR_PLATFORM_OP => "platform_op",
        HYPERVISOR_SYSCTL => "sysctl",
        _ => "domctl",
    }
}

/// `memory.h`: the low bits of `memory_op`'s `cmd` are the operation, the rest the
/// extent a continuation starts at.
const MEMOP_EXTENT_SHIFT: u32 = 6;
const MEMOP_CMD_MASK: u32 = (1 << MEMOP_EXTENT_SHIFT) - 1;
/// `XENMEMF_populate_on_demand`.
const XENMEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
/// Xen's `domu_max_order` default: the largest extent a domU may name is 2^9 pages.
const DOMU_MAX_ORDER: u32 = 9;
/// `sizeof(struct vcpu_info)`.
const VCPU_INFO_SIZE: usize = 64;
/// `sizeof(evtchn_fifo_control_block_t)`: `ready` and 16 queue heads.
const FIFO_CONTROL_BLOCK_SIZE: u64 = 4 + 16 * 4;
/// `vcpu.h`: runstates and the update flag in `state_entry_time`.
const RUNSTATE_RUNNING: u32 = 0;
const RUNSTATE_BLOCKED: u32 = 2;
const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;
/// `xen.h`: `vm_assist` commands and the one type an HVM guest may use.
const VMASST_CMD_ENABLE: u32 = 0;
const VMASST_CMD_DISABLE: u32 = 1;
const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
/// The interface versions of Xen 4.17's privileged hypercalls (`platform.h`,
/// `sysctl.h`, `domctl.h`).
const XENPF_INTERFACE_VERSION: u32 = 0x0300_0001;
const XEN_SYSCTL_INTERFACE_VERSION: u32 = 0x15;
const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x15;

/// The chunk in which `console_io` writes are copied (Xen's `kbuf`, less its NUL).
const CONSOLE_CHUNK: usize = 127;

// `xen/include/public/version.h`.
const XENVER_VERSION: u32 = 0;
const XENVER_EXTRAVERSION: u32 = 1;
const XENVER_COMPILE_INFO: u32 = 2;
const XENVER_CAPABILITIES: u32 = 3;
const XENVER_CHANGESET: u32 = 4;
const XENVER_PLATFORM_PARAMETERS: u32 = 5;
const XENVER_GET_FEATURES: u32 = 6;
const XENVER_PAGESIZE: u32 = 7;
const XENVER_GUEST_HANDLE: u32 = 8;

/// `features.h` bits the shim reports in submap 0: XENFEAT_writable_page_tables (0),
/// XENFEAT_auto_translated_physmap (2), XENFEAT_supervisor_mode_kernel (3),
/// XENFEAT_hvm_callback_vector (8), XENFEAT_hvm_safe_pvclock (9),
/// XENFEAT_hvm_pirqs is not (no PIRQs).
const XEN_FEATURES_SUBMAP0: u32 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 8) | (1 << 9);

fn xenver_name(cmd: u32) -> &'static str {
    match cmd {
        XENVER_VERSION => "version",
        XENVER_EXTRAVERSION => "extraversion",
        XENVER_COMPILE_INFO => "compile_info",
        XENVER_CAPABILITIES => "capabilities",
        XENVER_CHANGESET => "changeset",
        XENVER_PLATFORM_PARAMETERS => "platform_parameters",
        XENVER_GET_FEATURES => "get_features",
        XENVER_PAGESIZE => "pagesize",
        XENVER_GUEST_HANDLE => "guest_handle",
        _ => "other",
    }
}

fn memory_op_name(cmd: u32) -> &'static str {
    match cmd & MEMOP_CMD_MASK {
        XENMEM_ADD_TO_PHYSMAP => "add_to_physmap",
        XENMEM_INCREASE_RESERVATION => "increase_reservation",
        XENMEM_DECREASE_RESERVATION => "decrease_reservation",
        XENMEM_POPULATE_PHYSMAP => "populate_physmap",
        XENMEM_MAXIMUM_RESERVATION => "maximum_reservation",
        XENMEM_CURRENT_RESERVATION => "current_reservation",
        XENMEM_MAXIMUM_GPFN => "maximum_gpfn",
        _ => "other",
    }
}

fn hvm_op_name(op: u32) -> &'static str {
    match op {
        HVMOP_SET_PARAM => "set_param",
        HVMOP_GET_PARAM => "get_param",
        HVMOP_SET_EVTCHN_UPCALL_VECTOR => "set_evtchn_upcall_vector",
        _ => "other",
    }
}

fn evtchn_op_name(op: u32) -> &'static str {
    match op {
        EVTCHNOP_BIND_INTERDOMAIN => "bind_interdomain",
        EVTCHNOP_BIND_VIRQ => "bind_virq",
        EVTCHNOP_CLOSE => "close",
        EVTCHNOP_SEND => "send",
        EVTCHNOP_STATUS => "status",
        EVTCHNOP_ALLOC_UNBOUND => "alloc_unbound",
        EVTCHNOP_BIND_IPI => "bind_ipi",
        EVTCHNOP_BIND_VCPU => "bind_vcpu",
        EVTCHNOP_UNMASK => "unmask",
        EVTCHNOP_INIT_CONTROL => "init_control",
        EVTCHNOP_EXPAND_ARRAY => "expand_array",
        EVTCHNOP_SET_PRIORITY => "set_priority",
        _ => "other",
    }
}

fn gnttab_op_name(op: u32) -> &'static str {
    match op {
        GNTTABOP_QUERY_SIZE => "query_size",
        GNTTABOP_SET_VERSION => "set_version",
        GNTTABOP_COPY => "copy",
        GNTTABOP_SETUP_TABLE => "setup_table",
        _ => "other",
    }
}

fn vcpu_op_name(op: u32) -> &'static str {
    match op {
        VCPUOP_SET_SINGLESHOT_TIMER => "set_singleshot_timer",
        VCPUOP_STOP_SINGLESHOT_TIMER => "stop_singleshot_timer",
        VCPUOP_SET_PERIODIC_TIMER => "set_periodic_timer",
        VCPUOP_STOP_PERIODIC_TIMER => "stop_periodic_timer",
        VCPUOP_IS_UP => "is_up",
        VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => "register_runstate_memory_area",
        VCPUOP_REGISTER_VCPU_INFO => "register_vcpu_info",
        _ => "other",
    }
}

fn sched_op_name(op: u32) -> &'static str {
    match op {
        SCHEDOP_YIELD => "yield",
        SCHEDOP_BLOCK => "block",
        SCHEDOP_SHUTDOWN => "shutdown",
        SCHEDOP_POLL => "poll",
        SCHEDOP_SHUTDOWN_CODE => "shutdown_code",
        _ => "other",
    }
}

#[cfg(test)]
#[path = "hypercall_tests.rs"]
mod tests;
