//! A small in-process xenstore server for the client's tests: enough of xenstored's
//! behaviour (tree, relative paths, watches, transactions, permissions) to exercise
//! the client, plus knobs to make it misbehave. Not the shim's xenstored.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Deref;
use core::sync::atomic::Ordering;

use super::client::{WaitOutcome, XsEvents};
use super::ring::{
    CONNECTION, ERROR, REQ, REQ_CONS, REQ_PROD, RSP, RSP_CONS, RSP_PROD, SERVER_FEATURES,
};
use super::wire::{Access, HEADER_LEN, Permissions, split_strings};
use crate::abi::errno::XenErrno;
use crate::abi::xen::DomId;
use crate::abi::xs_wire::{
    XENSTORE_CONNECTED, XENSTORE_PAYLOAD_MAX, XENSTORE_RECONNECT, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION, XsdSockmsg,
    XsdSockmsgType, mask_xenstore_idx,
};
use crate::shmem::SharedMemory;

/// A node of the tree.
#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    perms: Permissions,
}

/// An open transaction: a private copy of the tree.
#[derive(Debug)]
struct Transaction {
    nodes: BTreeMap<String, Node>,
    generation: u64,
    changed: Vec<String>,
}

/// Replaces normal handling of a request: given the request header and payload, the
/// raw bytes to queue as the response (`None`: handle normally).
pub(crate) type Override = Box<dyn FnMut(&XsdSockmsg, &[u8]) -> Option<Vec<u8>> + Send>;

/// Runs after every successful write: given the absolute path and value, extra writes
/// to make (absolute path, value), as if another domain (a backend) made them.
pub(crate) type OnWrite = Box<dyn FnMut(&str, &[u8]) -> Vec<(String, Vec<u8>)> + Send>;

/// Ways to misbehave.
#[derive(Default)]
pub(crate) struct Faults {
    /// Never touch the ring.
    pub dead: bool,
    /// The next N commits fail with `EAGAIN`.
    pub fail_commits: u32,
    /// At most this many response bytes per step (0: no limit).
    pub chunk: usize,
    /// Before each of the next N replies, send a reply with a wrong request id.
    pub stray_replies: u32,
    /// Fire a new watch's initial event before the `WATCH` reply.
    pub event_before_reply: bool,
    /// On every step, fire every registered watch (a peer rewriting its nodes in a
    /// loop).
    pub storm: bool,
    /// Custom responses.
    pub override_reply: Option<Override>,
    /// Backend behaviour.
    pub on_write: Option<OnWrite>,
}

/// The server.
pub(crate) struct TestServer<P> {
    page: P,
    domid: DomId,
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
    nodes: BTreeMap<String, Node>,
    generation: u64,
    txs: BTreeMap<u32, Transaction>,
    next_tx: u32,
    watches: Vec<(String, String)>,
    /// The request at hand was answered already (a watch and its first event).
    answered: bool,
    pub faults: Faults,
    /// Headers of the requests received, in order.
    pub log: Vec<XsdSockmsg>,
}

impl<P: Deref<Target: SharedMemory>> TestServer<P> {
    /// A server for domain `domid` on `page`, with `/local/domain/<domid>` present.
    pub fn new(page: P, domid: DomId) -> Self {
        let mut s = Self {
            page,
            domid,
            inbuf: Vec::new(),
            out: VecDeque::new(),
            nodes: BTreeMap::new(),
            generation: 0,
            txs: BTreeMap::new(),
            next_tx: 0,
            watches: Vec::new(),
            answered: false,
            faults: Faults::default(),
            log: Vec::new(),
        };
        s.nodes.insert(
            "/".to_string(),
            Node {
                value: Vec::new(),
                perms: Permissions::new(0, Access::Read),
            },
        );
        let home = s.home();
        s.set(&home, b"");
        s
    }

    fn home(&self) -> String {
        format!("/local/domain/{}", self.domid)
    }

    /// Writes a node directly (as the toolstack or a backend would), firing watches.
    pub fn set(&mut self, path: &str, value: &[u8]) {
        let abs = self.canonical(path);
        let domid = self.domid;
        create(&mut self.nodes, &abs, domid);
        if let Some(n) = self.nodes.get_mut(&abs) {
            n.value = value.to_vec();
        }
        self.generation += 1;
        self.fire(&abs);
    }

    /// Reads a node directly.
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.nodes
            .get(&self.canonical(path))
            .map(|n| n.value.clone())
    }

    /// Drops every watch without telling the client (a server that lost them).
    pub fn forget_watches(&mut self) {
        self.watches.clear();
    }

    /// Number of watches registered.
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Number of open transactions.
    pub fn open_transactions(&self) -> usize {
        self.txs.len()
    }

    /// Queues raw bytes on the response stream.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.out.extend(bytes);
    }

    /// Queues a message.
    pub fn push(&mut self, type_: u32, req_id: u32, tx_id: u32, payload: &[u8]) {
        self.push_raw(&message(type_, req_id, tx_id, payload));
    }

    fn canonical(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.home())
        }
    }

    /// Advertises ring reconnection and the error field.
    pub fn enable_reconnect(&mut self) {
        self.page.store_u32(
            SERVER_FEATURES,
            XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR,
            Ordering::Release,
        );
    }

    /// One round: take the request bytes there are, answer complete requests, put as
    /// many response bytes in the ring as fit. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        if self.faults.dead {
            return false;
        }
        if self.page.load_u32(CONNECTION, Ordering::Acquire) == XENSTORE_RECONNECT {
            // xenstore-ring.txt: drop partial packets, empty the queues, forget
            // watches and transactions, then report the ring connected.
            self.inbuf.clear();
            self.out.clear();
            self.watches.clear();
            self.txs.clear();
            for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, ERROR] {
                self.page.store_u32(off, 0, Ordering::Relaxed);
            }
            self.page
                .store_u32(CONNECTION, XENSTORE_CONNECTED, Ordering::Release);
            return true;
        }
        let mut progress = false;
        // Requests.
        let cons = self.page.load_u32(REQ_CONS, Ordering::Acquire);
        let prod = self.page.load_u32(REQ_PROD, Ordering::Acquire);
        let avail = prod.wrapping_sub(cons);
        if avail as usize <= XENSTORE_RING_SIZE && avail > 0 {
            for i in 0..avail {
                let at = REQ + mask_xenstore_idx(cons.wrapping_add(i));
                self.inbuf.push(self.page.load_u8(at, Ordering::Relaxed));
            }
            self.page.store_u32(REQ_CONS, prod, Ordering::Release);
            progress = true;
        }
        while self.inbuf.len() >= HEADER_LEN {
            let h = XsdSockmsg::from_prefix(&self.inbuf).unwrap();
            assert!(
                h.len as usize <= XENSTORE_PAYLOAD_MAX,
                "client sent too much"
            );
            let end = HEADER_LEN + h.len as usize;
            if self.inbuf.len() < end {
                break;
            }
            let payload: Vec<u8> = self.inbuf[HEADER_LEN..end].to_vec();
            self.inbuf.drain(..end);
            self.log.push(h);
            self.handle(h, &payload);
        }
        if self.faults.storm {
            let events: Vec<Vec<u8>> = self
                .watches
                .iter()
                .map(|(p, t)| [p.as_bytes(), b"\0", t.as_bytes(), b"\0"].concat())
                .collect();
            for e in events {
                self.push(XsdSockmsgType::WatchEvent.as_raw(), 0, 0, &e);
            }
        }
        // Responses.
        let prod = self.page.load_u32(RSP_PROD, Ordering::Acquire);
        let cons = self.page.load_u32(RSP_CONS, Ordering::Acquire);
        let used = prod.wrapping_sub(cons) as usize;
        if used <= XENSTORE_RING_SIZE {
            let mut n = (XENSTORE_RING_SIZE - used).min(self.out.len());
            if self.faults.chunk != 0 {
                n = n.min(self.faults.chunk);
            }
            for i in 0..n {
                let b = self.out.pop_front().unwrap();
                let at = RSP + mask_xenstore_idx(prod.wrapping_add(i as u32));
                self.page.store_u8(at, b, Ordering::Relaxed);
            }
            if n > 0 {
                self.page
                    .store_u32(RSP_PROD, prod.wrapping_add(n as u32), Ordering::Release);
                progress = true;
            }
        }
        progress
    }

    fn reply(&mut self, h: XsdSockmsg, payload: &[u8]) {
        if self.faults.stray_replies > 0 {
            self.faults.stray_replies -= 1;
            self.push(h.type_, h.req_id.wrapping_add(1000), h.tx_id, b"stray\0");
        }
        self.push(h.type_, h.req_id, h.tx_id, payload);
    }

    fn error(&mut self, h: XsdSockmsg, e: XenErrno) {
        let mut p = e.name().as_bytes().to_vec();
        p.push(0);
        self.reply(
            XsdSockmsg {
                type_: XsdSockmsgType::Error.as_raw(),
                ..h
            },
            &p,
        );
    }

    fn handle(&mut self, h: XsdSockmsg, payload: &[u8]) {
        if let Some(f) = self.faults.override_reply.as_mut()
            && let Some(raw) = f(&h, payload)
        {
            self.push_raw(&raw);
            return;
        }
        self.answered = false;
        match self.execute(h, payload) {
            Ok(_) if self.answered => {}
            Ok(reply) => self.reply(h, &reply),
            Err(e) => self.error(h, e),
        }
    }

    fn execute(&mut self, h: XsdSockmsg, payload: &[u8]) -> Result<Vec<u8>, XenErrno> {
        use XsdSockmsgType as T;
        let kind = XsdSockmsgType::from_raw(h.type_).ok_or(XenErrno::EINVAL)?;
        // A written value is raw bytes, not strings.
        let strings = match kind {
            T::Write => Vec::new(),
            _ => split_strings(payload).map_err(|_| XenErrno::EINVAL)?,
        };
        let arg = |i: usize| strings.get(i).copied().ok_or(XenErrno::EINVAL);
        let ok = b"OK\0".to_vec();
        match kind {
            T::Read => {
                let path = self.canonical(arg(0)?);
                let tree = self.tree(h.tx_id)?;
                tree.get(&path)
                    .map(|n| n.value.clone())
                    .ok_or(XenErrno::ENOENT)
            }
            T::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(XenErrno::EINVAL)?;
                let path = core::str::from_utf8(&payload[..nul]).map_err(|_| XenErrno::EINVAL)?;
                let path = self.canonical(path);
                let value = payload[nul + 1..].to_vec();
                self.modify(h.tx_id, &path, |tree, domid| {
                    create(tree, &path, domid);
                    tree.get_mut(&path).unwrap().value = value.clone();
                    Ok(())
                })?;
                if h.tx_id == 0 {
                    self.backend_reacts(&path, &value);
                }
                Ok(ok)
            }
            T::Mkdir => {
                let path = self.canonical(arg(0)?);
                self.modify(h.tx_id, &path, |tree, domid| {
                    create(tree, &path, domid);
                    Ok(())
                })?;
                Ok(ok)
            }
            T::Rm => {
                let path = self.canonical(arg(0)?);
                self.modify(h.tx_id, &path, |tree, _| {
                    if !tree.contains_key(&path) {
                        return if tree.contains_key(parent(&path)) {
                            Ok(())
                        } else {
                            Err(XenErrno::ENOENT)
                        };
                    }
                    let below = format!("{path}/");
                    tree.retain(|k, _| k != &path && !k.starts_with(&below));
                    Ok(())
                })?;
                Ok(ok)
            }
            T::Directory => {
                let path = self.canonical(arg(0)?);
                let tree = self.tree(h.tx_id)?;
                if !tree.contains_key(&path) {
                    return Err(XenErrno::ENOENT);
                }
                let prefix = if path == "/" {
                    path
                } else {
                    format!("{path}/")
                };
                let mut out = Vec::new();
                for k in tree.keys() {
                    if let Some(rest) = k.strip_prefix(&prefix)
                        && !rest.is_empty()
                        && !rest.contains('/')
                    {
                        out.extend_from_slice(rest.as_bytes());
                        out.push(0);
                    }
                }
                if out.len() > XENSTORE_PAYLOAD_MAX {
                    return Err(XenErrno::E2BIG);
                }
                Ok(out)
            }
            T::GetPerms => {
                let path = self.canonical(arg(0)?);
                let tree = self.tree(h.tx_id)?;
                let node = tree.get(&path).ok_or(XenErrno::ENOENT)?;
                let mut out = Vec::new();
                for p in node.perms.entries() {
                    out.push(p.access.letter());
                    out.extend(p.domid.to_string().bytes());
                    out.push(0);
                }
                Ok(out)
            }
            T::SetPerms => {
                let path = self.canonical(arg(0)?);
                let mut wire = Vec::new();
                for s in &strings[1..] {
                    wire.extend_from_slice(s.as_bytes());
                    wire.push(0);
                }
                let perms = Permissions::parse(&wire).map_err(|_| XenErrno::EINVAL)?;
                self.modify(h.tx_id, &path, |tree, _| {
                    tree.get_mut(&path).ok_or(XenErrno::ENOENT)?.perms = perms.clone();
                    Ok(())
                })?;
                Ok(ok)
            }
            T::Watch => {
                let (path, token) = (arg(0)?.to_string(), arg(1)?.to_string());
                if self.watches.contains(&(path.clone(), token.clone())) {
                    return Err(XenErrno::EEXIST);
                }
                self.watches.push((path.clone(), token.clone()));
                let event = [path.as_bytes(), b"\0", token.as_bytes(), b"\0"].concat();
                if self.faults.event_before_reply {
                    self.push(XsdSockmsgType::WatchEvent.as_raw(), 0, 0, &event);
                    self.reply(h, &ok);
                } else {
                    self.reply(h, &ok);
                    self.push(XsdSockmsgType::WatchEvent.as_raw(), 0, 0, &event);
                }
                self.answered = true;
                Ok(Vec::new())
            }
            T::Unwatch => {
                let w = (arg(0)?.to_string(), arg(1)?.to_string());
                let before = self.watches.len();
                self.watches.retain(|x| *x != w);
                if self.watches.len() == before {
                    return Err(XenErrno::ENOENT);
                }
                Ok(ok)
            }
            T::TransactionStart => {
                if h.tx_id != 0 {
                    return Err(XenErrno::EBUSY);
                }
                self.next_tx += 1;
                let id = self.next_tx;
                self.txs.insert(
                    id,
                    Transaction {
                        nodes: self.nodes.clone(),
                        generation: self.generation,
                        changed: Vec::new(),
                    },
                );
                Ok(format!("{id}\0").into_bytes())
            }
            T::TransactionEnd => {
                let tx = self.txs.remove(&h.tx_id).ok_or(XenErrno::ENOENT)?;
                match arg(0)? {
                    "F" => Ok(ok),
                    "T" => {
                        if self.faults.fail_commits > 0 {
                            self.faults.fail_commits -= 1;
                            return Err(XenErrno::EAGAIN);
                        }
                        if tx.generation != self.generation {
                            return Err(XenErrno::EAGAIN);
                        }
                        self.nodes = tx.nodes;
                        self.generation += 1;
                        for p in tx.changed {
                            self.fire(&p);
                            if let Some(v) = self.nodes.get(&p).map(|n| n.value.clone()) {
                                self.backend_reacts(&p, &v);
                            }
                        }
                        Ok(ok)
                    }
                    _ => Err(XenErrno::EINVAL),
                }
            }
            T::GetDomainPath => {
                let d = arg(0)?;
                Ok(format!("/local/domain/{d}\0").into_bytes())
            }
            _ => Err(XenErrno::ENOSYS),
        }
    }

    fn tree(&self, tx: u32) -> Result<&BTreeMap<String, Node>, XenErrno> {
        if tx == 0 {
            Ok(&self.nodes)
        } else {
            self.txs.get(&tx).map(|t| &t.nodes).ok_or(XenErrno::ENOENT)
        }
    }

    /// Applies `f` to the tree of `tx`; outside a transaction, fires watches.
    fn modify(
        &mut self,
        tx: u32,
        path: &str,
        f: impl FnOnce(&mut BTreeMap<String, Node>, DomId) -> Result<(), XenErrno>,
    ) -> Result<(), XenErrno> {
        let domid = self.domid;
        if tx == 0 {
            f(&mut self.nodes, domid)?;
            self.generation += 1;
            self.fire(path);
        } else {
            let t = self.txs.get_mut(&tx).ok_or(XenErrno::ENOENT)?;
            f(&mut t.nodes, domid)?;
            t.changed.push(path.to_string());
        }
        Ok(())
    }

    fn backend_reacts(&mut self, path: &str, value: &[u8]) {
        let Some(mut f) = self.faults.on_write.take() else {
            return;
        };
        let writes = f(path, value);
        self.faults.on_write = Some(f);
        for (p, v) in writes {
            self.set(&p, &v);
        }
    }

    /// Queues an event for every watch on `abs` or a parent of it.
    fn fire(&mut self, abs: &str) {
        let home = format!("{}/", self.home());
        let mut events = Vec::new();
        for (wpath, token) in &self.watches {
            let wabs = self.canonical(wpath);
            let hit = abs == wabs || wabs == "/" || abs.starts_with(&format!("{wabs}/"));
            if !hit {
                continue;
            }
            let epath = if wpath.starts_with('/') {
                abs.to_string()
            } else {
                abs.strip_prefix(&home).unwrap_or(abs).to_string()
            };
            events.push([epath.as_bytes(), b"\0", token.as_bytes(), b"\0"].concat());
        }
        for e in events {
            self.push(XsdSockmsgType::WatchEvent.as_raw(), 0, 0, &e);
        }
    }
}

/// A header and payload.
pub(crate) fn message(type_: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = XsdSockmsg {
        type_,
        req_id,
        tx_id,
        len: payload.len() as u32,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

/// Creates `path` and its missing parents with empty values.
fn create(tree: &mut BTreeMap<String, Node>, path: &str, domid: DomId) {
    let mut at = 0;
    loop {
        let end = path[at + 1..].find('/').map_or(path.len(), |i| at + 1 + i);
        let prefix = &path[..end];
        tree.entry(prefix.to_string()).or_insert_with(|| Node {
            value: Vec::new(),
            perms: Permissions::new(domid, Access::None),
        });
        if end == path.len() {
            break;
        }
        at = end;
    }
}

/// The page, shared by the client and the server of a single-threaded test.
pub(crate) type Page = alloc::rc::Rc<crate::shmem::HeapSharedMemory>;
/// A server on a [`Page`].
pub(crate) type Server = alloc::rc::Rc<core::cell::RefCell<TestServer<Page>>>;
/// The client of a single-threaded test.
pub(crate) type Client = super::client::XenStore<Page, SyncEvents>;

/// Events that run the server in the caller's thread: `notify` runs one server step,
/// `wait` runs one and reports an event if it did anything, a timeout if not.
pub(crate) struct SyncEvents {
    pub server: Server,
    /// Pretend an event fired whenever `wait` is called, even if nothing happened.
    pub always_event: bool,
    /// Before every server step, queue this many stray replies.
    pub flood: u32,
}

impl XsEvents for SyncEvents {
    fn notify(&mut self) {
        self.run();
    }

    fn wait(&mut self) -> WaitOutcome {
        if self.run() || self.always_event {
            WaitOutcome::Event
        } else {
            WaitOutcome::TimedOut
        }
    }
}

impl SyncEvents {
    fn run(&mut self) -> bool {
        let mut s = self.server.borrow_mut();
        for _ in 0..self.flood {
            s.push(XsdSockmsgType::Read.as_raw(), 0xdead, 0, b"flood");
        }
        s.step()
    }
}

/// A fresh page whose indices all start at `start`.
pub(crate) fn page_at(start: u32) -> Page {
    let page = alloc::rc::Rc::new(crate::shmem::HeapSharedMemory::new(4096));
    for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
        page.store_u32(off, start, Ordering::Relaxed);
    }
    page
}

/// A server for domain 5 on `page` and its events.
pub(crate) fn server_on(page: &Page) -> (Server, SyncEvents) {
    let server = alloc::rc::Rc::new(core::cell::RefCell::new(TestServer::new(page.clone(), 5)));
    let events = SyncEvents {
        server: server.clone(),
        always_event: false,
        flood: 0,
    };
    (server, events)
}

/// A connected client and its server (domain 5), indices starting at `start`.
pub(crate) fn setup_at(start: u32) -> (Client, Server, Page) {
    let page = page_at(start);
    let (server, events) = server_on(&page);
    let xs = super::client::XenStore::connect(page.clone(), events).unwrap();
    (xs, server, page)
}

/// [`setup_at`] with indices starting near the end of the `u32` range.
pub(crate) fn setup() -> (Client, Server, Page) {
    setup_at(u32::MAX - 100)
}
