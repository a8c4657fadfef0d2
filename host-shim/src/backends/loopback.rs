//! A frontend domain and domain 0 in one process, for front-against-back tests.
//!
//! [`Loopback`] holds a guest's "RAM" (byte-buffer pages), its grant table (the
//! guest-side [`GrantTable`] and the hypervisor-side [`HostGrantTable`] over the same
//! entries), a pair of event-channel tables and the shim's own [`Xenstored`] serving a
//! xenstore ring. [`LoopFront`] is the frontend's [`FrontendEnv`]; [`LoopBack`] is the
//! backend's [`BackendEnv`]. Backends run on their real threads ([`super::spawn`]);
//! the frontend side is driven by the test, which waits for events with
//! [`Loopback::wait_front_event`].
//!
//! Grant rules are the real ones (pins, read-only, foreign domain), so hostile tests
//! can check that a backend cannot reach pages it was not granted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::grant_table::{GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GrantRef};
use pv_drivers::abi::xen::DomId;
use pv_drivers::follow::StoreAccess;
use pv_drivers::frontend::{EnvError, FrontendEnv, PAGE_SIZE};
use pv_drivers::grant::{GrantTable, HostGrantTable};
use pv_drivers::shmem::{HeapSharedMemory, PagedMemory, SharedMemory};
use pv_drivers::xenstore::{WaitOutcome, XenStore, XsError as ClientError, XsEvents};

use super::BackendEnv;
use crate::xen::evtchn::Notifier;
use crate::xen::xenstored::{Quotas, RingServer, Xenstored, XsError};

/// How long the frontend's xenstore client waits for a reply or watch event before
/// its wait reports a timeout (generous: backends run on other threads).
pub const XS_WAIT: Duration = Duration::from_secs(10);

/// Grant-table frames of the loopback guest.
const GRANT_FRAMES: usize = 4;

/// A shared handle to byte-buffer memory (one guest page, a grant table, or a view
/// of several pages).
#[derive(Clone, Debug)]
pub struct Mem(Arc<HeapSharedMemory>);

impl Mem {
    fn new(len: usize) -> Self {
        Self(Arc::new(HeapSharedMemory::new(len)))
    }
}

macro_rules! delegate_shared_memory {
    ($ty:ty, $self:ident => $inner:expr) => {
        impl SharedMemory for $ty {
            fn len(&$self) -> usize {
                $inner.len()
            }
            fn load_u8(&$self, o: usize, ord: Ordering) -> u8 {
                $inner.load_u8(o, ord)
            }
            fn store_u8(&$self, o: usize, v: u8, ord: Ordering) {
                $inner.store_u8(o, v, ord)
            }
            fn load_u16(&$self, o: usize, ord: Ordering) -> u16 {
                $inner.load_u16(o, ord)
            }
            fn store_u16(&$self, o: usize, v: u16, ord: Ordering) {
                $inner.store_u16(o, v, ord)
            }
            fn compare_exchange_u16(&$self, o: usize, c: u16, n: u16) -> Result<u16, u16> {
                $inner.compare_exchange_u16(o, c, n)
            }
            fn load_u32(&$self, o: usize, ord: Ordering) -> u32 {
                $inner.load_u32(o, ord)
            }
            fn store_u32(&$self, o: usize, v: u32, ord: Ordering) {
                $inner.store_u32(o, v, ord)
            }
            fn compare_exchange_u32(&$self, o: usize, c: u32, n: u32) -> Result<u32, u32> {
                $inner.compare_exchange_u32(o, c, n)
            }
            fn load_u64(&$self, o: usize, ord: Ordering) -> u64 {
                $inner.load_u64(o, ord)
            }
            fn store_u64(&$self, o: usize, v: u64, ord: Ordering) {
                $inner.store_u64(o, v, ord)
            }
            fn swap_u64(&$self, o: usize, v: u64, ord: Ordering) -> u64 {
                $inner.swap_u64(o, v, ord)
            }
            fn fetch_or_u64(&$self, o: usize, v: u64, ord: Ordering) -> u64 {
                $inner.fetch_or_u64(o, v, ord)
            }
            fn fetch_and_u64(&$self, o: usize, v: u64, ord: Ordering) -> u64 {
                $inner.fetch_and_u64(o, v, ord)
            }
            fn read_bytes(&$self, o: usize, buf: &mut [u8]) {
                $inner.read_bytes(o, buf)
            }
            fn write_bytes(&$self, o: usize, data: &[u8]) {
                $inner.write_bytes(o, data)
            }
        }
    };
}

delegate_shared_memory!(Mem, self => self.0);

/// A window of `len` bytes at `start` of a larger [`Mem`] (a guest's view of pages
/// it allocated together).
#[derive(Clone, Debug)]
pub struct Window {
    mem: Mem,
    start: usize,
    len: usize,
}

impl Window {
    fn check(&self, o: usize, n: usize) -> usize {
        debug_assert!(o.checked_add(n).is_some_and(|end| end <= self.len));
        if o.saturating_add(n) <= self.len {
            self.start + o
        } else {
            // Past the window: aim at a spot that is out of the underlying memory too,
            // where loads read zero and stores are dropped.
            usize::MAX / 2
        }
    }
}

impl SharedMemory for Window {
    fn len(&self) -> usize {
        self.len
    }
    fn load_u8(&self, o: usize, ord: Ordering) -> u8 {
        self.mem.load_u8(self.check(o, 1), ord)
    }
    fn store_u8(&self, o: usize, v: u8, ord: Ordering) {
        self.mem.store_u8(self.check(o, 1), v, ord)
    }
    fn load_u16(&self, o: usize, ord: Ordering) -> u16 {
        self.mem.load_u16(self.check(o, 2), ord)
    }
    fn store_u16(&self, o: usize, v: u16, ord: Ordering) {
        self.mem.store_u16(self.check(o, 2), v, ord)
    }
    fn compare_exchange_u16(&self, o: usize, c: u16, n: u16) -> Result<u16, u16> {
        self.mem.compare_exchange_u16(self.check(o, 2), c, n)
    }
    fn load_u32(&self, o: usize, ord: Ordering) -> u32 {
        self.mem.load_u32(self.check(o, 4), ord)
    }
    fn store_u32(&self, o: usize, v: u32, ord: Ordering) {
        self.mem.store_u32(self.check(o, 4), v, ord)
    }
    fn compare_exchange_u32(&self, o: usize, c: u32, n: u32) -> Result<u32, u32> {
        self.mem.compare_exchange_u32(self.check(o, 4), c, n)
    }
    fn load_u64(&self, o: usize, ord: Ordering) -> u64 {
        self.mem.load_u64(self.check(o, 8), ord)
    }
    fn store_u64(&self, o: usize, v: u64, ord: Ordering) {
        self.mem.store_u64(self.check(o, 8), v, ord)
    }
    fn swap_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.mem.swap_u64(self.check(o, 8), v, ord)
    }
    fn fetch_or_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.mem.fetch_or_u64(self.check(o, 8), v, ord)
    }
    fn fetch_and_u64(&self, o: usize, v: u64, ord: Ordering) -> u64 {
        self.mem.fetch_and_u64(self.check(o, 8), v, ord)
    }
    fn read_bytes(&self, o: usize, buf: &mut [u8]) {
        if o.saturating_add(buf.len()) <= self.len {
            self.mem.read_bytes(self.start + o, buf)
        } else {
            debug_assert!(false, "read past a window");
            buf.fill(0);
        }
    }
    fn write_bytes(&self, o: usize, data: &[u8]) {
        if o.saturating_add(data.len()) <= self.len {
            self.mem.write_bytes(self.start + o, data)
        } else {
            debug_assert!(false, "write past a window");
        }
    }
}

/// What one frontend port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontPort {
    /// Waiting for domain 0 to bind.
    Unbound,
    /// Bound to domain 0's port.
    Bound(u32),
}

/// Counters of the loopback "hypervisor".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Frontend `notify` calls that reached a backend.
    pub events_to_back: u64,
    /// Backend `notify` calls that reached the frontend.
    pub events_to_front: u64,
    /// Grant copies done by backends, and the bytes they moved.
    pub grant_copies: u64,
    /// Bytes moved by grant copies.
    pub grant_copy_bytes: u64,
    /// Grant copies refused (bad, foreign or read-only grants).
    pub grant_errors: u64,
    /// Mappings created.
    pub maps: u64,
}

struct State {
    /// Guest RAM, one contiguous buffer; frame `pfn` is bytes `pfn*4096..`.
    ram_pages: usize,
    /// Next never-allocated frame, and frames returned by `free_pages` by count.
    next_pfn: usize,
    free: BTreeMap<usize, Vec<usize>>,
    guest_grants: GrantTable<Mem>,
    host_grants: HostGrantTable<Mem>,
    front_ports: BTreeMap<u32, FrontPort>,
    back_ports: BTreeMap<u32, (u32, Notifier)>,
    pending: BTreeSet<u32>,
    store: Xenstored,
    ring: RingServer,
    watchers: HashMap<String, Notifier>,
    stats: LoopStats,
    /// The daemon wrote to the frontend's xenstore ring since the frontend's client
    /// last waited: the latched "event channel" of [`LoopXs::wait`]. Whoever pumps
    /// (the frontend or a backend thread) sets it.
    xs_signal: bool,
    /// Times the daemon wrote to the frontend's ring (its "event channel" fired).
    xs_activity: u64,
}

/// A frontend domain and domain 0, in one process.
pub struct Loopback {
    domid: DomId,
    ram: Mem,
    xs_page: Mem,
    state: Mutex<State>,
    /// Signalled when the frontend has an event pending or xenstore changed.
    cv: Condvar,
}

impl Loopback {
    /// A guest `domid` (named `name` in xenstore) with `ram_pages` pages of RAM.
    pub fn new(domid: DomId, name: &str, ram_pages: usize) -> Result<Arc<Self>, String> {
        let mut store = Xenstored::new(Quotas::default());
        store
            .introduce_domain(domid, name)
            .map_err(|e| format!("introduce {domid}: {e}"))?;
        Self::with_daemon(domid, store, ram_pages)
    }

    /// [`Self::new`] with the daemon given: one where `domid` is introduced, such as
    /// a clone of one built earlier.
    pub fn with_daemon(
        domid: DomId,
        store: Xenstored,
        ram_pages: usize,
    ) -> Result<Arc<Self>, String> {
        let table = Mem::new(GRANT_FRAMES * PAGE_SIZE);
        let guest_grants = GrantTable::new(table.clone()).map_err(|e| e.to_string())?;
        let host_grants = HostGrantTable::new(table);
        let xs_page = Mem::new(PAGE_SIZE);
        let mut ring = RingServer::new(domid);
        ring.attach(&xs_page);
        Ok(Arc::new(Self {
            domid,
            ram: Mem::new(ram_pages * PAGE_SIZE),
            xs_page,
            state: Mutex::new(State {
                ram_pages,
                next_pfn: 0,
                free: BTreeMap::new(),
                guest_grants,
                host_grants,
                front_ports: BTreeMap::new(),
                back_ports: BTreeMap::new(),
                pending: BTreeSet::new(),
                store,
                ring,
                watchers: HashMap::new(),
                stats: LoopStats::default(),
                xs_signal: false,
                xs_activity: 0,
            }),
            cv: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frontend's environment.
    pub fn front(self: &Arc<Self>) -> LoopFront {
        LoopFront(self.clone())
    }

    /// Domain 0's environment, for backends.
    pub fn back(self: &Arc<Self>) -> LoopBack {
        LoopBack(self.clone())
    }

    /// A xenstore client for the frontend, connected to the in-process daemon.
    pub fn xenstore(
        self: &Arc<Self>,
    ) -> Result<XenStore<Arc<HeapSharedMemory>, LoopXs>, ClientError> {
        XenStore::connect(self.xs_page.0.clone(), LoopXs(self.clone()))
    }

    /// The guest's RAM (all frames, frame `pfn` at `pfn * 4096`), for tests that
    /// look at or tamper with guest memory.
    pub fn ram(&self) -> &Mem {
        &self.ram
    }

    /// Runs `f` on xenstored as domain 0 (a toolstack or a test), then serves the
    /// frontend's ring and wakes watchers.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Xenstored) -> R) -> R {
        let r = f(&mut self.lock().store);
        self.pump();
        r
    }

    /// Serves the frontend's xenstore ring and routes domain 0's watch events;
    /// returns whether anything moved on the ring.
    fn pump(&self) -> bool {
        let (moved, wake) = {
            let mut st = self.lock();
            let st = &mut *st;
            let mut moved = false;
            for _ in 0..64 {
                let r = st.ring.pump(&mut st.store, &self.xs_page);
                moved |= r.notify;
                if !r.more {
                    break;
                }
            }
            st.xs_signal |= moved;
            st.xs_activity += u64::from(moved);
            let mut wake: Vec<Notifier> = Vec::new();
            for ev in st.store.take_dom0_events() {
                if let Some(n) = st.watchers.get(&ev.token)
                    && !wake.iter().any(|w| Arc::ptr_eq(w, n))
                {
                    wake.push(n.clone());
                }
            }
            (moved, wake)
        };
        for n in wake {
            n();
        }
        if moved {
            self.cv.notify_all();
        }
        moved
    }

    /// Takes the frontend ports a backend signalled since the last call.
    pub fn take_front_events(&self) -> Vec<u32> {
        std::mem::take(&mut self.lock().pending)
            .into_iter()
            .collect()
    }

    /// Waits until a backend signals a frontend port (returns true), or `timeout`
    /// passes (false). Does not consume the events.
    pub fn wait_front_event(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Counters so far.
    pub fn stats(&self) -> LoopStats {
        self.lock().stats.clone()
    }

    /// `(readers, writers)` pinning grant `gref` now.
    pub fn pins(&self, gref: GrantRef) -> Option<(u32, u32)> {
        self.lock().host_grants.pins(gref)
    }

    /// The guest frame granted in `gref`, if it is in RAM.
    fn granted_frame(&self, st: &State, frame: u64) -> Option<usize> {
        let frame = usize::try_from(frame).ok()?;
        (frame < st.ram_pages).then_some(frame)
    }

    fn copy(
        &self,
        gref: GrantRef,
        offset: u16,
        len: usize,
        write: bool,
        f: impl FnOnce(usize),
    ) -> Result<(), i16> {
        let mut st = self.lock();
        if usize::from(offset) + len > PAGE_SIZE {
            st.stats.grant_errors += 1;
            return Err(GNTST_GENERAL_ERROR);
        }
        let access = match st.host_grants.begin_access(gref, 0, write) {
            Ok(a) => a,
            Err(e) => {
                st.stats.grant_errors += 1;
                return Err(e.gntst());
            }
        };
        let frame = self.granted_frame(&st, access.frame());
        if let Some(frame) = frame {
            f(frame * PAGE_SIZE + usize::from(offset));
            st.stats.grant_copies += 1;
            st.stats.grant_copy_bytes += len as u64;
        } else {
            st.stats.grant_errors += 1;
        }
        let _ = st.host_grants.end_access(access);
        frame.map(|_| ()).ok_or(GNTST_BAD_GNTREF)
    }
}

/// The frontend's environment on a [`Loopback`].
pub struct LoopFront(Arc<Loopback>);

impl FrontendEnv for LoopFront {
    type Pages = Window;

    fn alloc_pages(&mut self, count: usize) -> Result<(u64, Window), EnvError> {
        if count == 0 {
            return Err(EnvError::NoMemory);
        }
        let lb = &self.0;
        let pfn = {
            let mut st = lb.lock();
            match st.free.get_mut(&count).and_then(Vec::pop) {
                Some(pfn) => pfn,
                None => {
                    let pfn = st.next_pfn;
                    if pfn + count > st.ram_pages {
                        return Err(EnvError::NoMemory);
                    }
                    st.next_pfn += count;
                    pfn
                }
            }
        };
        let win = Window {
            mem: lb.ram.clone(),
            start: pfn * PAGE_SIZE,
            len: count * PAGE_SIZE,
        };
        // Zeroed, as the trait promises (a recycled allocation holds old data).
        win.write_bytes(0, &vec![0; win.len]);
        Ok((pfn as u64, win))
    }

    fn free_pages(&mut self, pfn: u64, pages: Window) {
        let count = pages.len / PAGE_SIZE;
        self.0
            .lock()
            .free
            .entry(count)
            .or_default()
            .push(pfn as usize);
    }

    fn grant(&mut self, to: DomId, pfn: u64, readonly: bool) -> Result<GrantRef, EnvError> {
        Ok(self.0.lock().guest_grants.grant_access(to, pfn, readonly)?)
    }

    fn end_grant(&mut self, gref: GrantRef) -> Result<(), EnvError> {
        Ok(self.0.lock().guest_grants.end_access_and_free(gref)?)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<u32, EnvError> {
        if remote != 0 {
            return Err(EnvError::Evtchn(-(XenErrno::ESRCH as i32)));
        }
        let mut st = self.0.lock();
        let port = (1..4096u32)
            .find(|p| !st.front_ports.contains_key(p))
            .ok_or(EnvError::Evtchn(-(XenErrno::ENOSPC as i32)))?;
        st.front_ports.insert(port, FrontPort::Unbound);
        Ok(port)
    }

    fn notify(&mut self, port: u32) {
        let n = {
            let mut st = self.0.lock();
            match st.front_ports.get(&port) {
                Some(FrontPort::Bound(back)) => {
                    let n = st.back_ports.get(back).map(|(_, n)| n.clone());
                    if n.is_some() {
                        st.stats.events_to_back += 1;
                    }
                    n
                }
                _ => None,
            }
        };
        if let Some(n) = n {
            n();
        }
    }

    fn close_port(&mut self, port: u32) {
        let mut st = self.0.lock();
        if let Some(FrontPort::Bound(back)) = st.front_ports.remove(&port) {
            st.back_ports.remove(&back);
        }
        st.pending.remove(&port);
    }

    fn domid(&self) -> DomId {
        self.0.domid
    }
}

/// The frontend's xenstore events on a [`Loopback`]: a notify serves the ring at once;
/// a wait serves it and, if nothing moved, waits for a backend's change.
pub struct LoopXs(Arc<Loopback>);

impl XsEvents for LoopXs {
    fn notify(&mut self) {
        self.0.pump();
    }

    fn wait(&mut self) -> WaitOutcome {
        let lb = &self.0;
        let deadline = Instant::now() + XS_WAIT;
        loop {
            // Serve the ring, then take the latched signal: set by this pump or by a
            // backend's (whose store change may have put a watch event on the ring
            // before this call, which must not be lost).
            lb.pump();
            let mut st = lb.lock();
            if std::mem::take(&mut st.xs_signal) {
                return WaitOutcome::Event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WaitOutcome::TimedOut;
            }
            // A backend's pump signals `cv` after it set the latch.
            let _ = lb
                .cv
                .wait_timeout(st, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The frontend's xenstore client, shared by a test and devices that follow their
/// backends (`pv_drivers::follow::Followed`); its activity is the count of the daemon's
/// writes to the frontend's ring, the loopback's "xenstore event channel".
#[derive(Clone)]
pub struct FrontStore {
    lb: Arc<Loopback>,
    xs: Arc<Mutex<XenStore<Arc<HeapSharedMemory>, LoopXs>>>,
}

impl FrontStore {
    /// Connects a client to `lb`'s xenstore.
    pub fn new(lb: &Arc<Loopback>) -> Result<Self, ClientError> {
        Ok(Self {
            lb: lb.clone(),
            xs: Arc::new(Mutex::new(lb.xenstore()?)),
        })
    }

    /// The client, for the test's own operations.
    pub fn lock(&self) -> MutexGuard<'_, XenStore<Arc<HeapSharedMemory>, LoopXs>> {
        self.xs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StoreAccess for FrontStore {
    type Pages = Arc<HeapSharedMemory>;
    type Events = LoopXs;

    fn activity(&self) -> u64 {
        self.lb.lock().xs_activity
    }

    fn with_store<R>(
        &self,
        f: impl FnOnce(&mut XenStore<Arc<HeapSharedMemory>, LoopXs>) -> R,
    ) -> Option<R> {
        Some(f(&mut *self.xs.try_lock().ok()?))
    }
}

/// Domain 0's environment on a [`Loopback`].
#[derive(Clone)]
pub struct LoopBack(Arc<Loopback>);

/// A backend's mapping of granted frames on a [`Loopback`]; unpins on drop.
pub struct LoopMapping {
    lb: Arc<Loopback>,
    accesses: Vec<pv_drivers::grant::GrantAccess>,
    pages: PagedMemory<Window>,
}

impl Drop for LoopMapping {
    fn drop(&mut self) {
        let mut st = self.lb.lock();
        for access in self.accesses.drain(..) {
            let _ = st.host_grants.end_access(access);
        }
    }
}

delegate_shared_memory!(LoopMapping, self => self.pages);

impl BackendEnv for LoopBack {
    type Mapping = LoopMapping;

    fn frontend_domid(&self) -> DomId {
        self.0.domid
    }

    fn map_grants(&self, grefs: &[GrantRef], write: bool) -> Result<LoopMapping, i16> {
        let lb = &self.0;
        let mut map = LoopMapping {
            lb: lb.clone(),
            accesses: Vec::with_capacity(grefs.len()),
            pages: PagedMemory::new(),
        };
        let mut st = lb.lock();
        for &gref in grefs {
            let access = st
                .host_grants
                .begin_access(gref, 0, write)
                .map_err(|e| e.gntst())?;
            let Some(frame) = lb.granted_frame(&st, access.frame()) else {
                let _ = st.host_grants.end_access(access);
                // `map` unpins what it holds when dropped, after the lock is released.
                drop(st);
                return Err(GNTST_BAD_GNTREF);
            };
            let win = Window {
                mem: lb.ram.clone(),
                start: frame * PAGE_SIZE,
                len: PAGE_SIZE,
            };
            map.accesses.push(access);
            if map.pages.set_page(map.accesses.len() - 1, win).is_err() {
                drop(st);
                return Err(GNTST_GENERAL_ERROR);
            }
        }
        st.stats.maps += 1;
        drop(st);
        Ok(map)
    }

    fn copy_from_grant(&self, gref: GrantRef, offset: u16, buf: &mut [u8]) -> Result<(), i16> {
        let ram = self.0.ram.clone();
        self.0
            .copy(gref, offset, buf.len(), false, |at| ram.read_bytes(at, buf))
    }

    fn copy_to_grant(&self, gref: GrantRef, offset: u16, data: &[u8]) -> Result<(), i16> {
        let ram = self.0.ram.clone();
        self.0.copy(gref, offset, data.len(), true, |at| {
            ram.write_bytes(at, data)
        })
    }

    fn bind(&self, remote_port: u32, kick: Notifier) -> Result<u32, XenErrno> {
        let mut st = self.0.lock();
        if st.front_ports.get(&remote_port) != Some(&FrontPort::Unbound) {
            return Err(XenErrno::EINVAL);
        }
        let local = (1..1024u32)
            .find(|p| !st.back_ports.contains_key(p))
            .ok_or(XenErrno::ENOSPC)?;
        st.back_ports.insert(local, (remote_port, kick));
        st.front_ports.insert(remote_port, FrontPort::Bound(local));
        Ok(local)
    }

    fn notify(&self, port: u32) {
        let mut st = self.0.lock();
        let Some(&(front, _)) = st.back_ports.get(&port) else {
            return;
        };
        st.stats.events_to_front += 1;
        st.pending.insert(front);
        drop(st);
        self.0.cv.notify_all();
    }

    fn unbind(&self, port: u32) {
        let mut st = self.0.lock();
        if let Some((front, _)) = st.back_ports.remove(&port)
            && st.front_ports.get(&front) == Some(&FrontPort::Bound(port))
        {
            st.front_ports.insert(front, FrontPort::Unbound);
        }
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Xenstored) -> R) -> R {
        self.0.with_store(f)
    }

    fn watch(&self, path: &str, kick: Notifier) -> Result<(), XsError> {
        {
            let mut st = self.0.lock();
            let token = format!("dom0-watch-{}", st.watchers.len());
            st.store.dom0().watch(path, &token)?;
            st.watchers.insert(token, kick);
        }
        self.0.pump();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Kick;

    #[test]
    fn grants_ports_and_store_behave_like_xen() {
        let lb = Loopback::new(4, "front", 16).unwrap();
        let mut front = lb.front();
        let back = lb.back();
        let (pfn, page) = front.alloc_pages(2).unwrap();
        page.write_bytes(4096 + 10, b"hello");
        let ro = front.grant(0, pfn + 1, true).unwrap();
        let mut buf = [0u8; 5];
        back.copy_from_grant(ro, 10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Read-only: no writes, no writable mapping; a page end is a page end.
        assert!(back.copy_to_grant(ro, 0, b"x").is_err());
        assert!(back.map_grants(&[ro], true).is_err());
        assert!(back.copy_from_grant(ro, 4095, &mut buf).is_err());
        // A grant to another domain is not domain 0's.
        let foreign = front.grant(7, pfn, false).unwrap();
        assert!(back.copy_from_grant(foreign, 0, &mut buf).is_err());
        assert_eq!(lb.pins(foreign), Some((0, 0)));
        // A mapping pins until dropped, and a failed multi-map leaves nothing pinned.
        let rw = front.grant(0, pfn, false).unwrap();
        let map = back.map_grants(&[rw, ro], false).unwrap();
        assert_eq!(map.len(), 8192);
        let mut hello = [0u8; 5];
        map.read_bytes(4096 + 10, &mut hello);
        assert_eq!(&hello, b"hello");
        assert!(
            front.end_grant(rw).is_err(),
            "a mapped grant cannot be ended"
        );
        drop(map);
        assert!(back.map_grants(&[rw, foreign], false).is_err());
        assert_eq!(lb.pins(rw), Some((0, 0)));
        front.end_grant(rw).unwrap();
        // Events both ways.
        let port = front.alloc_unbound(0).unwrap();
        let kick = Kick::new();
        let local = back.bind(port, kick.notifier(Kick::EVENT)).unwrap();
        assert!(back.bind(port, kick.notifier(Kick::EVENT)).is_err());
        front.notify(port);
        assert_eq!(kick.take(), Kick::EVENT);
        back.notify(local);
        assert!(lb.wait_front_event(Duration::from_secs(1)));
        assert_eq!(lb.take_front_events(), vec![port]);
        // The frontend's xenstore client sees domain 0's writes.
        lb.with_store(|xs| xs.dom0().write(None, "/local/domain/4/data/x", b"1"))
            .unwrap();
        let mut xs = lb.xenstore().unwrap();
        assert_eq!(
            xs.read(pv_drivers::xenstore::TxId::NONE, "data/x").unwrap(),
            b"1"
        );
    }
}
