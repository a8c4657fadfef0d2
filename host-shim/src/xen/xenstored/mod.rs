//! The shim's xenstore daemon, in process: the database, domains, watches,
//! transactions and quotas of Xen's xenstored, served to each guest over its xenstore
//! ring page (`xen/include/public/io/xs_wire.h`) and to the shim's own backends
//! through a typed dom0 API.
//!
//! Behaviour follows C xenstored (`tools/xenstored/{core,domain,transaction,watch}.c`
//! of xen.git) and the protocol description `docs/misc/xenstore.txt`, so that a guest
//! written for Xen cannot tell the difference:
//! - the tree, paths (absolute, relative to `/local/domain/<id>`, or special `@...`;
//!   xenstored's character set and length limits) and permissions ([`Perms`]); new nodes take
//!   their parent's permissions and belong to the unprivileged domain creating them;
//! - every wire operation with xenstored's argument checks and error choices (the
//!   reply to an error is `XS_ERROR` with the errno's name, e.g. `"ENOENT\0"`);
//! - watches with the initial event, relative paths, depth, `@introduceDomain` and
//!   `@releaseDomain`, and delivery only to domains allowed to read the node;
//! - transactions with generation-based conflict detection (`EAGAIN` on commit);
//! - xenstored's quotas ([`Quotas`], `ENOSPC` when exceeded) and a bound on each
//!   connection's queued output: a guest that never reads its replies stops being
//!   read, and watch events beyond the bound are dropped (counted in the stats).
//!
//! Domain 0 is the privileged domain. It has no ring here: the shim's backends act as
//! dom0 through [`Xenstored::dom0`], and their watch events are queued for
//! [`Xenstored::take_dom0_events`]. [`Xenstored::introduce_domain`] plays the
//! toolstack's part too, creating the nodes libxl writes for a new domain.
//!
//! [`RingServer`] moves bytes between a domain's ring page and [`Xenstored::handle`].

mod ops;
mod path;
mod perms;
mod ring;
mod stats;
mod transaction;
mod tree;
mod watch;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;

use pv_drivers::abi::errno::XenErrno;
use pv_drivers::abi::xen::{DOMID_ANY, DOMID_FIRST_RESERVED, DOMID_SELF};
use pv_drivers::abi::xs_wire::{
    XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XENSTORE_SERVER_FEATURE_DOMID_ANY,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_WATCHDEPTH,
};
use serde::Serialize;

pub use perms::{Access, PermEntry, Perms};
/// The message header and types [`Xenstored::handle`] takes (from `pv_drivers`).
pub use pv_drivers::abi::xs_wire::{XsdSockmsg, XsdSockmsgType};
pub use ring::{GuestRing, MAX_REQUESTS_PER_PUMP, PumpResult, RingServer};
pub use stats::XenstoredStats;

use ops::View;
use perms::Caller;
use transaction::Transaction;
use tree::{Db, Node};
use watch::{Fire, Match, Watch};

/// The `XENSTORE_SERVER_FEATURE_*` bits this daemon offers: the ring's `error` field,
/// watch depth, and `DOMID_ANY` in permissions. (Not `RECONNECTION`.)
pub const SERVER_FEATURES: u32 = XENSTORE_SERVER_FEATURE_ERROR
    | XENSTORE_SERVER_FEATURE_WATCHDEPTH
    | XENSTORE_SERVER_FEATURE_DOMID_ANY;

/// A xenstore error: the errno a request failed with. On the wire it travels as its
/// name (`"ENOENT"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum XsError {
    /// The request failed with this error.
    #[error("xenstore: {name} ({0})", name = .0.name())]
    Errno(XenErrno),
}

impl XsError {
    /// The errno.
    pub fn errno(self) -> XenErrno {
        let Self::Errno(e) = self;
        e
    }
}

impl From<XenErrno> for XsError {
    fn from(e: XenErrno) -> Self {
        Self::Errno(e)
    }
}

/// Limits per unprivileged domain (dom0 is exempt, as in xenstored, except from the
/// output bounds). Defaults are C xenstored's; 0 disables a limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quotas {
    /// Nodes a domain may own (`nodes`: 1000).
    pub nodes: u32,
    /// Watches a domain may hold (`watches`: 128).
    pub watches: u32,
    /// Transactions a domain may have open (`transactions`: 10).
    pub transactions: u32,
    /// Nodes one transaction may touch (`transaction-nodes`: 1024).
    pub transaction_nodes: u32,
    /// Permission entries per node (`node-permissions`: 5).
    pub node_permissions: u32,
    /// Size of a node as xenstored accounts it: 16 bytes, 8 per permission, the value
    /// and the child names with NULs (`node-size`: 2048).
    pub node_size: u32,
    /// Path length below `/local/domain/<id>/` (`path-max`: `XENSTORE_REL_PATH_MAX`).
    /// Every caller is also held to `XENSTORE_ABS_PATH_MAX` for the whole path.
    pub path_max: u32,
    /// Replies a domain may leave unread before its requests stop being read
    /// (`outstanding`: 20).
    pub outstanding: u32,
    /// Bytes (replies and events) queued for one ring: requests stop being read at
    /// this, and watch events that would exceed it are dropped (shim's own bound,
    /// in place of xenstored's per-domain memory quota; applies to dom0 too).
    pub output_bytes: u32,
    /// Bytes of watch events queued for the dom0 API before events are dropped.
    pub dom0_event_bytes: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            nodes: 1000,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            node_permissions: 5,
            node_size: 2048,
            path_max: XENSTORE_REL_PATH_MAX as u32,
            outstanding: 20,
            output_bytes: 128 * 1024,
            dom0_event_bytes: 1024 * 1024,
        }
    }
}

/// A transaction of the dom0 API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId(u32);

impl TxId {
    /// The id xenstored gave it (never 0).
    pub fn id(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A watch event for the dom0 API.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The changed path (relative if the watch was set with a relative path).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// What the toolstack writes for a new domain ([`Xenstored::introduce_domain_with`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name`.
    pub name: String,
    /// The domain's UUID: creates `/vm/<uuid>` and `vm` (letters, digits, `-`, `_`).
    pub uuid: Option<String>,
    /// `memory/static-max` and `memory/target`, in KiB.
    pub memory_kib: Option<u64>,
    /// vCPUs: `cpu/<n>/availability` = `online` for each.
    pub vcpus: Option<u32>,
    /// `store/port`: the xenstore event channel in the domain.
    pub store_port: Option<u32>,
    /// `store/ring-ref`: the frame of the xenstore page.
    pub store_ring_ref: Option<u64>,
}

impl DomainConfig {
    /// A configuration with only a name.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

/// `/local/domain/<domid>`: a domain's home directory.
pub fn domain_path(domid: u16) -> String {
    path::domain_path(domid)
}

/// Who is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ConnKey {
    /// The in-shim dom0 API.
    Api,
    /// A domain's ring.
    Ring(u16),
}

impl ConnKey {
    fn domid(self) -> u16 {
        match self {
            Self::Api => 0,
            Self::Ring(d) => d,
        }
    }
}

/// One queued message.
#[derive(Clone, Debug)]
struct OutMsg {
    /// Header and payload.
    bytes: Vec<u8>,
    /// Bytes already handed out.
    sent: usize,
    /// A reply (counts as outstanding) rather than a watch event.
    reply: bool,
    /// For a watch event that takes part in duplicate suppression: its payload.
    dedup: Option<Vec<u8>>,
}

/// A connection: a domain's ring, or the dom0 API.
#[derive(Clone, Debug)]
struct Connection {
    domid: u16,
    target: Option<u16>,
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
    next_tx: u32,
    output: VecDeque<OutMsg>,
    output_bytes: usize,
    outstanding: usize,
    pending_events: HashSet<Vec<u8>>,
    /// Stopped after a protocol error: nothing more is read or sent.
    ignored: bool,
}

impl Connection {
    fn new(domid: u16) -> Self {
        Self {
            domid,
            target: None,
            watches: Vec::new(),
            transactions: BTreeMap::new(),
            next_tx: 1,
            output: VecDeque::new(),
            output_bytes: 0,
            outstanding: 0,
            pending_events: HashSet::new(),
            ignored: false,
        }
    }

    fn caller(&self) -> Caller {
        Caller {
            domid: self.domid,
            target: self.target,
        }
    }

    fn queue_reply(&mut self, bytes: Vec<u8>) {
        self.output_bytes += bytes.len();
        self.outstanding += 1;
        self.output.push_back(OutMsg {
            bytes,
            sent: 0,
            reply: true,
            dedup: None,
        });
    }

    /// Queues a watch event unless it is too long, an identical one is pending
    /// (special `@` events excepted, as in xenstored's `send_event()`), or the queue
    /// is full.
    fn queue_event(&mut self, payload: Vec<u8>, limit: usize, stats: &mut XenstoredStats) {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            stats.watch_events_dropped += 1;
            return;
        }
        let dedup = payload.first() != Some(&b'@');
        if dedup && self.pending_events.contains(&payload) {
            stats.watch_events_coalesced += 1;
            return;
        }
        let bytes = wire::encode(XsdSockmsgType::WatchEvent.as_raw(), 0, 0, &payload);
        if limit != 0 && self.output_bytes + bytes.len() > limit {
            stats.watch_events_dropped += 1;
            return;
        }
        self.output_bytes += bytes.len();
        stats.watch_events += 1;
        let dedup = dedup.then(|| {
            self.pending_events.insert(payload.clone());
            payload
        });
        self.output.push_back(OutMsg {
            bytes,
            sent: 0,
            reply: false,
            dedup,
        });
    }

    /// Up to `max` bytes of the queued stream.
    fn take(&mut self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = self.output.front_mut() else {
                break;
            };
            let n = (max - out.len()).min(front.bytes.len() - front.sent);
            out.extend_from_slice(&front.bytes[front.sent..front.sent + n]);
            front.sent += n;
            self.output_bytes -= n;
            if front.sent == front.bytes.len()
                && let Some(done) = self.output.pop_front()
            {
                if done.reply {
                    self.outstanding -= 1;
                }
                if let Some(key) = done.dedup {
                    self.pending_events.remove(&key);
                }
            }
        }
        out
    }

    /// Drops watches, transactions and queued output; returns the number of
    /// transactions dropped.
    fn reset(&mut self) -> usize {
        let dropped = self.transactions.len();
        self.watches.clear();
        self.transactions.clear();
        self.output.clear();
        self.output_bytes = 0;
        self.outstanding = 0;
        self.pending_events.clear();
        dropped
    }
}

/// What the daemon remembers of an introduced domain.
#[derive(Clone, Debug, Default)]
struct DomainRecord {
    /// `/vm/<uuid>`, if the toolstack part created it.
    uuid: Option<String>,
}

/// The xenstore daemon. It is `Send`: the shim may keep it behind a lock shared by
/// the threads serving rings and backends.
///
/// A clone is a deep copy (the daemon holds plain data only: no handle is shared), so
/// a clone of a freshly built daemon is a fresh daemon: the fuzz targets build their
/// starting tree once and clone it per input (`testing::fresh_xenstored`).
#[derive(Clone, Debug)]
pub struct Xenstored {
    db: Db,
    quotas: Quotas,
    conns: BTreeMap<ConnKey, Connection>,
    domains: BTreeMap<u16, DomainRecord>,
    stats: XenstoredStats,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Xenstored>();
    assert_send::<RingServer>();
};

impl Xenstored {
    /// A daemon with xenstored's initial tree (`/`, `/tool/xenstored`, the special
    /// `@releaseDomain` and `@introduceDomain` nodes) and dom0's `domid` and `name`,
    /// as `xen-init-dom0` writes them.
    pub fn new(quotas: Quotas) -> Self {
        let mut xs = Self {
            db: Db::default(),
            quotas,
            conns: BTreeMap::new(),
            domains: BTreeMap::new(),
            stats: XenstoredStats::default(),
        };
        xs.conns.insert(ConnKey::Api, Connection::new(0));
        xs.conns.insert(ConnKey::Ring(0), Connection::new(0));
        xs.domains.insert(0, DomainRecord::default());

        let closed = Perms::new(0, Access::None);
        let node = |db: &mut Db, perms: &Perms, child: Option<&str>| {
            let mut n = Node::new(perms.clone());
            if let Some(c) = child {
                n.add_child(c);
            }
            n.generation = db.next_generation();
            n
        };
        for (path, child) in [
            ("/", Some("tool")),
            ("/tool", Some("xenstored")),
            ("/tool/xenstored", None),
            ("@introduceDomain", None),
        ] {
            let n = node(&mut xs.db, &closed, child);
            xs.db.put(path, n);
        }
        let release = Perms::new(0, Access::None).grant(DOMID_ANY, Access::Read);
        let n = node(&mut xs.db, &release, None);
        xs.db.put("@releaseDomain", n);

        let mut dom0 = xs.dom0();
        for (path, value) in [
            ("/local/domain/0/domid", "0"),
            ("/local/domain/0/name", "Domain-0"),
        ] {
            // Cannot fail: dom0 writing a valid path into an empty tree.
            let _ = dom0.write(None, path, value.as_bytes());
        }
        xs
    }

    /// The limits in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The counters.
    pub fn stats(&self) -> &XenstoredStats {
        &self.stats
    }

    /// Introduces a domain with only a name: [`Self::introduce_domain_with`].
    pub fn introduce_domain(&mut self, domid: u16, name: &str) -> Result<(), XsError> {
        self.introduce_domain_with(domid, &DomainConfig::named(name))
    }

    /// Does what the toolstack and xenstored do for a new domain: creates the nodes
    /// libxl creates (`libxl__domain_make()` and `libxl__build_post()`), then
    /// connects the domain (xenstored's `XS_INTRODUCE`) and fires
    /// `@introduceDomain`.
    ///
    /// - `/local/domain/<id>` and `cpu`, `memory`, `device`, `control`: owned by dom0,
    ///   readable by the domain (`n0 r<id>`);
    /// - `control/{shutdown,feature-poweroff,feature-reboot,feature-suspend,sysrq}`,
    ///   `device/suspend/event-channel`, `data`, `drivers`, `feature`, `attr`,
    ///   `error`: owned by the domain (`n<id>`);
    /// - `name`, `domid`, and from `config` `memory/*`, `cpu/<n>/availability`,
    ///   `store/*` (readable by the domain); `/vm/<uuid>` (`n0 r<id>`) with `name` and
    ///   the domain's `vm` link if a UUID is given; `/libxl/<id>/device` (`n0`).
    ///
    /// Errors: `EINVAL` for dom0, a reserved id or a bad UUID; `EEXIST` if the domain
    /// is already introduced.
    pub fn introduce_domain_with(
        &mut self,
        domid: u16,
        config: &DomainConfig,
    ) -> Result<(), XsError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(XenErrno::EINVAL.into());
        }
        if self.domains.contains_key(&domid) {
            return Err(XenErrno::EEXIST.into());
        }
        if let Some(uuid) = &config.uuid
            && (uuid.is_empty()
                || !uuid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(XenErrno::EINVAL.into());
        }
        self.domains.insert(
            domid,
            DomainRecord {
                uuid: config.uuid.clone(),
            },
        );
        if let Err(e) = self.toolstack_nodes(domid, config) {
            self.domains.remove(&domid);
            return Err(e.into());
        }
        self.connect(domid);
        Ok(())
    }

    /// The nodes libxl writes for a new domain (see [`Self::introduce_domain_with`]).
    fn toolstack_nodes(&mut self, domid: u16, config: &DomainConfig) -> Result<(), XenErrno> {
        let known = self.known_domains();
        let dom = path::domain_path(domid);
        let ro = Perms::new(0, Access::None).grant(domid, Access::Read);
        let rw = Perms::new(domid, Access::None);
        let none = Perms::new(0, Access::None);
        self.with_view(ConnKey::Api, 0, |v| {
            let mknod = |v: &mut View<'_>, p: &str, perms: &Perms| {
                v.mkdir(p)?;
                v.set_perms(p, perms.clone(), |d| known.contains(&d))
            };
            // libxl removes leftovers first and ignores failures there.
            let _ = v.rm(&dom);
            mknod(v, &dom, &ro)?;
            if let Some(uuid) = &config.uuid {
                let vm = format!("/vm/{uuid}");
                let _ = v.rm(&vm);
                mknod(v, &vm, &ro)?;
                v.write(&format!("{dom}/vm"), vm.as_bytes())?;
                v.write(&format!("{vm}/name"), config.name.as_bytes())?;
            }
            let libxl = format!("/libxl/{domid}");
            let _ = v.rm(&libxl);
            mknod(v, &libxl, &none)?;
            mknod(v, &format!("{libxl}/device"), &none)?;
            v.write(&format!("{dom}/name"), config.name.as_bytes())?;
            for sub in ["cpu", "memory", "device"] {
                mknod(v, &format!("{dom}/{sub}"), &ro)?;
            }
            mknod(v, &format!("{dom}/device/suspend/event-channel"), &rw)?;
            mknod(v, &format!("{dom}/control"), &ro)?;
            for sub in [
                "shutdown",
                "feature-poweroff",
                "feature-reboot",
                "feature-suspend",
                "sysrq",
            ] {
                mknod(v, &format!("{dom}/control/{sub}"), &rw)?;
            }
            for sub in ["data", "drivers", "feature", "attr", "error"] {
                mknod(v, &format!("{dom}/{sub}"), &rw)?;
            }
            if let Some(kib) = config.memory_kib {
                let kib = kib.to_string();
                v.write(&format!("{dom}/memory/static-max"), kib.as_bytes())?;
                v.write(&format!("{dom}/memory/target"), kib.as_bytes())?;
            }
            v.write(&format!("{dom}/domid"), domid.to_string().as_bytes())?;
            if let Some(port) = config.store_port {
                v.write(&format!("{dom}/store/port"), port.to_string().as_bytes())?;
            }
            if let Some(frame) = config.store_ring_ref {
                v.write(
                    &format!("{dom}/store/ring-ref"),
                    frame.to_string().as_bytes(),
                )?;
            }
            for cpu in 0..config.vcpus.unwrap_or(0) {
                v.write(&format!("{dom}/cpu/{cpu}/availability"), b"online")?;
            }
            Ok(())
        })
    }

    /// xenstored's part of introducing `domid`: its connection, and `@introduceDomain`.
    fn connect(&mut self, domid: u16) {
        self.domains.entry(domid).or_default();
        self.conns
            .insert(ConnKey::Ring(domid), Connection::new(domid));
        self.stats.domains_introduced += 1;
        self.fire_special("@introduceDomain", domid);
    }

    /// Releases a domain as the toolstack and xenstored do when it is destroyed: its
    /// connection goes (watches, transactions, queued output), the toolstack's nodes
    /// (`/local/domain/<id>`, `/vm/<uuid>`, `/libxl/<id>`) are removed, so is every
    /// node it owns, its entries in other nodes' permissions are dropped, and
    /// `@releaseDomain` fires.
    ///
    /// Errors: `EINVAL` for dom0, `ENOENT` if it is not introduced.
    pub fn release_domain(&mut self, domid: u16) -> Result<(), XsError> {
        if domid == 0 {
            return Err(XenErrno::EINVAL.into());
        }
        if !self.domains.contains_key(&domid) {
            return Err(XenErrno::ENOENT.into());
        }
        self.release(domid, true);
        Ok(())
    }

    fn release(&mut self, domid: u16, toolstack: bool) {
        // First, so that the domain hears nothing of its own nodes going.
        if let Some(conn) = self.conns.remove(&ConnKey::Ring(domid)) {
            self.stats.transactions_aborted += conn.transactions.len() as u64;
        }
        let record = self.domains.get(&domid).cloned().unwrap_or_default();
        if toolstack {
            let mut gone = vec![path::domain_path(domid), format!("/libxl/{domid}")];
            if let Some(uuid) = record.uuid {
                gone.push(format!("/vm/{uuid}"));
            }
            for p in gone {
                let _ = self.with_view(ConnKey::Api, 0, |v| v.rm(&p));
            }
        }
        self.remove_domain_nodes(domid);
        self.domains.remove(&domid);
        self.stats.domains_released += 1;
        self.fire_special("@releaseDomain", domid);
    }

    /// C xenstored's `domain_tree_remove()`: nodes owned by `domid` go with their
    /// subtrees; its entries in other permission lists are dropped. (The root and the
    /// special nodes are given to dom0 instead of being removed.)
    fn remove_domain_nodes(&mut self, domid: u16) {
        for p in self.db.paths() {
            let Some(node) = self.db.get(&p) else {
                continue;
            };
            let mut perms = node.perms.clone();
            if perms.owner() == domid {
                if p == "/" || p.starts_with('@') {
                    perms.set_owner(0);
                    perms.strip(domid);
                    self.db.replace_perms(&p, perms);
                } else {
                    let _ = self.with_view(ConnKey::Api, 0, |v| v.rm_node(&p));
                }
            } else if perms.strip(domid) {
                self.db.replace_perms(&p, perms);
            }
        }
    }

    /// Fires `name` (`@introduceDomain`, `@releaseDomain`) for `domid`: watches on
    /// `name` itself without a depth, and `name/<domid>` for watches on it or on
    /// `name` with a depth (xenstored's `fire_special_watches()`).
    fn fire_special(&mut self, name: &str, domid: u16) {
        let Some(node) = self.db.get(name) else {
            return;
        };
        let perms = Some(node.perms.clone());
        let parent_perms = self.db.get("/").map(|n| n.perms.clone());
        let fire = |path: String, how| Fire {
            path,
            how,
            perms: perms.clone(),
            parent_perms: parent_perms.clone(),
            old_perms: None,
        };
        let fires = vec![
            fire(name.to_owned(), Match::NoDepth),
            fire(format!("{name}/{domid}"), Match::Depth),
        ];
        self.dispatch_fires(fires);
    }

    /// Number of nodes in the database (special nodes included).
    pub fn node_count(&self) -> usize {
        self.db.len()
    }

    /// Checks the database's invariants (what `XS_CONTROL check` does): every node
    /// is listed by its parent, every listed child exists, ownership counts add up.
    pub fn check(&self) -> Result<(), String> {
        self.db.check()
    }

    /// Whether `domid` is introduced (dom0 always is).
    pub fn is_domain_introduced(&self, domid: u16) -> bool {
        self.domains.contains_key(&domid)
    }

    /// Whether `domid`'s ring is served: introduced and not stopped for a protocol
    /// error.
    pub fn is_connected(&self, domid: u16) -> bool {
        self.conns
            .get(&ConnKey::Ring(domid))
            .is_some_and(|c| !c.ignored)
    }

    /// Stops serving `domid`'s ring (after a protocol error, as xenstored's
    /// `ignore_connection()`): its watches, transactions and queued output are
    /// dropped and further requests refused. The domain stays introduced.
    pub fn ignore_connection(&mut self, domid: u16) {
        if let Some(conn) = self.conns.get_mut(&ConnKey::Ring(domid)) {
            self.stats.transactions_aborted += conn.reset() as u64;
            conn.ignored = true;
        }
    }

    /// A ring protocol violation by `domid`: counted, and the connection ignored.
    fn protocol_error(&mut self, domid: u16) {
        self.stats.protocol_errors += 1;
        self.ignore_connection(domid);
    }

    /// Whether another request from `domid` may be read: its connection is served,
    /// its queued output is under [`Quotas::output_bytes`], and (unprivileged) its
    /// unread replies under [`Quotas::outstanding`].
    pub fn can_accept_request(&self, domid: u16) -> bool {
        let Some(c) = self.conns.get(&ConnKey::Ring(domid)) else {
            return false;
        };
        let q = &self.quotas;
        !c.ignored
            && (q.output_bytes == 0 || c.output_bytes < q.output_bytes as usize)
            && (domid == 0 || q.outstanding == 0 || c.outstanding < q.outstanding as usize)
    }

    /// Bytes queued for `domid`'s ring.
    pub fn pending_output(&self, domid: u16) -> usize {
        self.conns
            .get(&ConnKey::Ring(domid))
            .map_or(0, |c| c.output_bytes)
    }

    /// Takes up to `max` bytes of the messages queued for `domid`'s ring (the ring is
    /// a byte stream: a message may be split across calls).
    pub fn take_output(&mut self, domid: u16, max: usize) -> Vec<u8> {
        self.conns
            .get_mut(&ConnKey::Ring(domid))
            .map_or_else(Vec::new, |c| c.take(max))
    }

    /// Handles one request from `domid`'s ring: `payload` is the message body (its
    /// length is taken from the slice, not from `header.len`). The reply (same type,
    /// `req_id` and `tx_id`, or `XS_ERROR`) and any watch events are queued for
    /// [`Self::take_output`].
    ///
    /// Fails with `ENOENT` only if `domid` has no connection (not introduced, or
    /// ignored after a protocol error); every problem with the request itself is
    /// answered on the wire.
    pub fn handle(
        &mut self,
        domid: u16,
        header: XsdSockmsg,
        payload: &[u8],
    ) -> Result<(), XsError> {
        let key = ConnKey::Ring(domid);
        if !self.is_connected(domid) {
            return Err(XenErrno::ENOENT.into());
        }
        self.stats.request(wire::type_name(header.type_));
        let mut initial_event = None;
        let (type_, body) = match self.dispatch(key, &header, payload, &mut initial_event) {
            Ok(body) if body.len() <= XENSTORE_PAYLOAD_MAX => (header.type_, body),
            Ok(_) => self.error_reply(XenErrno::E2BIG),
            Err(e) => self.error_reply(e),
        };
        let limit = self.quotas.output_bytes as usize;
        let Self { conns, stats, .. } = self;
        if let Some(conn) = conns.get_mut(&key) {
            conn.queue_reply(wire::encode(type_, header.req_id, header.tx_id, &body));
            if let Some(event) = initial_event {
                conn.queue_event(event, limit, stats);
            }
        }
        Ok(())
    }

    fn error_reply(&mut self, err: XenErrno) -> (u32, Vec<u8>) {
        let payload = wire::error_payload(err);
        let name = pv_drivers::abi::xs_wire::xsd_error_name(err).unwrap_or("EINVAL");
        self.stats.error(name);
        (XsdSockmsgType::Error.as_raw(), payload)
    }

    /// The typed API for in-shim backends, acting as dom0.
    pub fn dom0(&mut self) -> Dom0<'_> {
        Dom0 { xs: self }
    }

    /// Takes the watch events queued for dom0's API watches, oldest first.
    pub fn take_dom0_events(&mut self) -> Vec<WatchEvent> {
        let Some(conn) = self.conns.get_mut(&ConnKey::Api) else {
            return Vec::new();
        };
        let mut events = Vec::with_capacity(conn.output.len());
        while let Some(len) = conn.output.front().map(|m| m.bytes.len() - m.sent) {
            let bytes = conn.take(len);
            let payload = bytes.get(XsdSockmsg::SIZE..).unwrap_or_default();
            let mut parts = payload.split(|&b| b == 0);
            let path = parts.next().unwrap_or_default();
            let token = parts.next().unwrap_or_default();
            events.push(WatchEvent {
                path: String::from_utf8_lossy(path).into_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
            });
        }
        events
    }

    /// Domains that exist for permission entries: dom0 and the introduced ones.
    fn known_domains(&self) -> BTreeSet<u16> {
        let mut known: BTreeSet<u16> = self.domains.keys().copied().collect();
        known.insert(DOMID_ANY);
        known
    }

    /// Checks a path from `key`'s caller.
    fn canon(
        &self,
        key: ConnKey,
        raw: &[u8],
        allow_special: bool,
    ) -> Result<path::Canonical, XenErrno> {
        let domid = key.domid();
        let rel_max =
            (domid != 0 && self.quotas.path_max != 0).then_some(self.quotas.path_max as usize);
        path::canonicalize(raw, domid, allow_special, rel_max)
    }

    /// Runs `f` on the database as `key` sees it (in transaction `tx` if not 0), then
    /// tells the watches about the changes made outside a transaction.
    fn with_view<T>(
        &mut self,
        key: ConnKey,
        tx: u32,
        f: impl FnOnce(&mut View<'_>) -> Result<T, XenErrno>,
    ) -> Result<T, XenErrno> {
        let conn = self.conns.get_mut(&key).ok_or(XenErrno::ENOENT)?;
        let caller = conn.caller();
        let mut txn = match tx {
            0 => None,
            id => Some(conn.transactions.remove(&id).ok_or(XenErrno::ENOENT)?),
        };
        let mut view = View {
            db: &mut self.db,
            tx: txn.as_mut(),
            caller,
            quotas: &self.quotas,
            fires: Vec::new(),
        };
        let result = f(&mut view);
        let fires = view.fires;
        if let Some(t) = txn
            && let Some(conn) = self.conns.get_mut(&key)
        {
            conn.transactions.insert(tx, t);
        }
        self.dispatch_fires(fires);
        result
    }

    /// Queues an event for every watch that matches a change and whose connection may
    /// hear of it.
    fn dispatch_fires(&mut self, fires: Vec<Fire>) {
        let Self {
            conns,
            stats,
            quotas,
            ..
        } = self;
        for fire in &fires {
            for (key, conn) in conns.iter_mut() {
                if conn.ignored || conn.watches.is_empty() || !fire.permitted(&conn.caller()) {
                    continue;
                }
                let limit = match key {
                    ConnKey::Api => quotas.dom0_event_bytes,
                    ConnKey::Ring(_) => quotas.output_bytes,
                } as usize;
                let events: Vec<Vec<u8>> = conn
                    .watches
                    .iter()
                    .filter(|w| w.matches(&fire.path, fire.how))
                    .map(|w| w.event_payload(&fire.path))
                    .collect();
                for event in events {
                    conn.queue_event(event, limit, stats);
                }
            }
        }
    }

    /// Adds a watch for `key`; returns the payload of its initial event.
    fn add_watch(
        &mut self,
        key: ConnKey,
        raw: &[u8],
        token: &[u8],
        depth: Option<u32>,
    ) -> Result<Vec<u8>, XenErrno> {
        let c = self.canon(key, raw, true)?;
        let domid = key.domid();
        let limit =
            (domid != 0 && self.quotas.watches != 0).then_some(self.quotas.watches as usize);
        let conn = self.conns.get_mut(&key).ok_or(XenErrno::ENOENT)?;
        if conn
            .watches
            .iter()
            .any(|w| w.path == c.path && w.token == token)
        {
            return Err(XenErrno::EEXIST);
        }
        if limit.is_some_and(|max| conn.watches.len() >= max) {
            return Err(XenErrno::ENOSPC);
        }
        let prefix_len = if c.relative {
            path::domain_path(domid).len() + 1
        } else {
            0
        };
        let watch = Watch {
            path: c.path,
            token: token.to_vec(),
            depth,
            prefix_len,
        };
        let initial = watch.event_payload(&watch.path);
        conn.watches.push(watch);
        Ok(initial)
    }

    fn remove_watch(&mut self, key: ConnKey, raw: &[u8], token: &[u8]) -> Result<(), XenErrno> {
        let c = self.canon(key, raw, true)?;
        let conn = self.conns.get_mut(&key).ok_or(XenErrno::ENOENT)?;
        let i = conn
            .watches
            .iter()
            .position(|w| w.path == c.path && w.token == token)
            .ok_or(XenErrno::ENOENT)?;
        conn.watches.remove(i);
        Ok(())
    }

    fn transaction_start(&mut self, key: ConnKey) -> Result<u32, XenErrno> {
        let domid = key.domid();
        let limit = (domid != 0 && self.quotas.transactions != 0)
            .then_some(self.quotas.transactions as usize);
        let conn = self.conns.get_mut(&key).ok_or(XenErrno::ENOENT)?;
        if limit.is_some_and(|max| conn.transactions.len() >= max) {
            return Err(XenErrno::ENOSPC);
        }
        let id = loop {
            let id = conn.next_tx;
            conn.next_tx = conn.next_tx.wrapping_add(1).max(1);
            if !conn.transactions.contains_key(&id) {
                break id;
            }
        };
        conn.transactions.insert(id, Transaction::default());
        self.stats.transactions_started += 1;
        Ok(id)
    }

    fn transaction_end(&mut self, key: ConnKey, tx: u32, commit: bool) -> Result<(), XenErrno> {
        let conn = self.conns.get_mut(&key).ok_or(XenErrno::ENOENT)?;
        let txn = conn.transactions.remove(&tx).ok_or(XenErrno::ENOENT)?;
        if !commit {
            self.stats.transactions_aborted += 1;
            return Ok(());
        }
        let caller = conn.caller();
        match txn.commit(&mut self.db, &self.quotas, caller) {
            Ok(fires) => {
                self.stats.transactions_committed += 1;
                self.dispatch_fires(fires);
                Ok(())
            }
            Err(e) => {
                if e == XenErrno::EAGAIN {
                    self.stats.transaction_conflicts += 1;
                } else {
                    self.stats.transactions_aborted += 1;
                }
                Err(e)
            }
        }
    }

    /// Decodes and runs one wire request; returns the reply payload.
    fn dispatch(
        &mut self,
        key: ConnKey,
        header: &XsdSockmsg,
        payload: &[u8],
        initial_event: &mut Option<Vec<u8>>,
    ) -> Result<Vec<u8>, XenErrno> {
        use XsdSockmsgType as T;
        const OK: &[u8] = b"OK\0";
        let domid = key.domid();
        let privileged = domid == 0;
        let ty = T::from_raw(header.type_).ok_or(XenErrno::ENOSYS)?;
        if matches!(ty, T::WatchEvent | T::Error | T::GetQuota | T::SetQuota) {
            return Err(XenErrno::ENOSYS);
        }
        let privileged_only = matches!(
            ty,
            T::Control
                | T::Introduce
                | T::Release
                | T::IsDomainIntroduced
                | T::Resume
                | T::SetTarget
                | T::SetFeature
        );
        if privileged_only && !privileged {
            return Err(XenErrno::EACCES);
        }
        // WATCH and UNWATCH ignore the transaction id; every other request must
        // name an open transaction or none.
        let tx = if matches!(ty, T::Watch | T::Unwatch) {
            0
        } else {
            header.tx_id
        };
        if tx != 0
            && !self
                .conns
                .get(&key)
                .is_some_and(|c| c.transactions.contains_key(&tx))
        {
            return Err(XenErrno::ENOENT);
        }
        match ty {
            T::Read => {
                let p = self.canon(key, wire::onearg(payload)?, false)?;
                self.with_view(key, tx, |v| v.read_value(&p.path))
            }
            T::Directory => {
                let p = self.canon(key, wire::onearg(payload)?, false)?;
                let children = self.with_view(key, tx, |v| v.directory(&p.path))?;
                let mut out = Vec::new();
                for c in children {
                    out.extend_from_slice(c.as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
            T::DirectoryPart => {
                let args = wire::strings(payload);
                let [p, offset] = args[..] else {
                    return Err(XenErrno::EINVAL);
                };
                let p = self.canon(key, p, false)?;
                // C reads the offset with atoi() into an unsigned int.
                let offset = wire::atoi(offset) as u32 as usize;
                self.with_view(key, tx, |v| v.directory_part(&p.path, offset))
            }
            T::GetPerms => {
                let p = self.canon(key, wire::onearg(payload)?, true)?;
                Ok(self.with_view(key, tx, |v| v.get_perms(&p.path))?.to_wire())
            }
            T::Write => {
                let nul = payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(XenErrno::EINVAL)?;
                let p = self.canon(key, &payload[..nul], false)?;
                let value = &payload[nul + 1..];
                self.with_view(key, tx, |v| v.write(&p.path, value))?;
                Ok(OK.to_vec())
            }
            T::Mkdir => {
                let p = self.canon(key, wire::onearg(payload)?, false)?;
                self.with_view(key, tx, |v| v.mkdir(&p.path))?;
                Ok(OK.to_vec())
            }
            T::Rm => {
                let p = self.canon(key, wire::onearg(payload)?, false)?;
                self.with_view(key, tx, |v| v.rm(&p.path))?;
                Ok(OK.to_vec())
            }
            T::SetPerms => {
                let args = wire::strings(payload);
                let Some((p, entries)) = args.split_first().filter(|(_, e)| !e.is_empty()) else {
                    return Err(XenErrno::EINVAL);
                };
                let q = self.quotas.node_permissions as usize;
                if !privileged && q != 0 && entries.len() > q {
                    return Err(XenErrno::ENOSPC);
                }
                let perms = Perms::parse(entries)?;
                let known = self.known_domains();
                let p = self.canon(key, p, true)?;
                self.with_view(key, tx, |v| {
                    v.set_perms(&p.path, perms, |d| known.contains(&d))
                })?;
                Ok(OK.to_vec())
            }
            T::Watch => {
                let args = wire::strings(payload);
                let (p, token, depth) = match args[..] {
                    [p, token] => (p, token, None),
                    // Every domain here has XENSTORE_SERVER_FEATURE_WATCHDEPTH.
                    [p, token, depth] => {
                        let depth =
                            u32::try_from(wire::atoi(depth)).map_err(|_| XenErrno::EINVAL)?;
                        (p, token, Some(depth))
                    }
                    _ => return Err(XenErrno::EINVAL),
                };
                *initial_event = Some(self.add_watch(key, p, token, depth)?);
                Ok(OK.to_vec())
            }
            T::Unwatch => {
                let args = wire::strings(payload);
                let [p, token] = args[..] else {
                    return Err(XenErrno::EINVAL);
                };
                self.remove_watch(key, p, token)?;
                Ok(OK.to_vec())
            }
            T::ResetWatches => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.watches.clear();
                    self.stats.transactions_aborted += conn.transactions.len() as u64;
                    conn.transactions.clear();
                }
                Ok(OK.to_vec())
            }
            T::TransactionStart => {
                // No nested transactions.
                if tx != 0 {
                    return Err(XenErrno::EBUSY);
                }
                let id = self.transaction_start(key)?;
                Ok(format!("{id}\0").into_bytes())
            }
            T::TransactionEnd => {
                let commit = match wire::onearg(payload)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XenErrno::EINVAL),
                };
                if tx == 0 {
                    return Err(XenErrno::ENOENT);
                }
                self.transaction_end(key, tx, commit)?;
                Ok(OK.to_vec())
            }
            T::GetDomainPath => {
                let d = wire::parse_domid(wire::onearg(payload)?)?;
                Ok(format!("{}\0", path::domain_path(d)).into_bytes())
            }
            T::IsDomainIntroduced => {
                let d = wire::parse_domid(wire::onearg(payload)?)?;
                let yes = d == DOMID_SELF || self.is_domain_introduced(d);
                Ok(if yes { b"T\0" } else { b"F\0" }.to_vec())
            }
            T::Introduce => {
                let args = wire::strings(payload);
                let [d, _gfn, port, ..] = args[..] else {
                    return Err(XenErrno::EINVAL);
                };
                let d = wire::parse_domid(d)?;
                if wire::atoi(port) <= 0 || d == 0 || d >= DOMID_FIRST_RESERVED {
                    return Err(XenErrno::EINVAL);
                }
                // Introducing again would rebind the event channel: nothing to do here.
                if !self.is_domain_introduced(d) {
                    self.connect(d);
                }
                Ok(OK.to_vec())
            }
            T::Release => {
                let d = self.onearg_domain(payload)?;
                self.release(d, false);
                Ok(OK.to_vec())
            }
            T::Resume => {
                self.onearg_domain(payload)?;
                Ok(OK.to_vec())
            }
            T::SetTarget => {
                let args = wire::strings(payload);
                let [d, t, ..] = args[..] else {
                    return Err(XenErrno::EINVAL);
                };
                let (d, t) = (wire::parse_domid(d)?, wire::parse_domid(t)?);
                if !self.is_domain_introduced(t) {
                    return Err(XenErrno::ENOENT);
                }
                let conn = self
                    .conns
                    .get_mut(&ConnKey::Ring(d))
                    .ok_or(XenErrno::ENOENT)?;
                conn.target = Some(t);
                Ok(OK.to_vec())
            }
            T::GetFeature => {
                let args = wire::strings(payload);
                match args[..] {
                    [] => {}
                    _ if !privileged => return Err(XenErrno::EACCES),
                    [d] => {
                        if !self.is_domain_introduced(wire::parse_domid(d)?) {
                            return Err(XenErrno::ENOENT);
                        }
                    }
                    _ => return Err(XenErrno::EINVAL),
                }
                Ok(format!("{SERVER_FEATURES}\0").into_bytes())
            }
            T::SetFeature => {
                let args = wire::strings(payload);
                let [d, _features] = args[..] else {
                    return Err(XenErrno::EINVAL);
                };
                // Features can only be set before the domain is introduced, and
                // here a domain exists only once introduced.
                if self.is_domain_introduced(wire::parse_domid(d)?) {
                    Err(XenErrno::EBUSY)
                } else {
                    Err(XenErrno::ENOENT)
                }
            }
            T::Control => self.control(payload),
            T::WatchEvent | T::Error | T::GetQuota | T::SetQuota => Err(XenErrno::ENOSYS),
        }
    }

    /// A domain argument of `RELEASE` / `RESUME`: not dom0, and introduced.
    fn onearg_domain(&self, payload: &[u8]) -> Result<u16, XenErrno> {
        let d = wire::parse_domid(wire::onearg(payload)?)?;
        if d == 0 {
            return Err(XenErrno::EINVAL);
        }
        if !self.is_domain_introduced(d) {
            return Err(XenErrno::ENOENT);
        }
        Ok(d)
    }

    /// `XS_CONTROL` (dom0 only): `check` (the database's consistency), `help`,
    /// `print` (accepted, nothing to log to) and `quota` (the limits).
    fn control(&mut self, payload: &[u8]) -> Result<Vec<u8>, XenErrno> {
        let args = wire::strings(payload);
        let (&cmd, params) = args.split_first().ok_or(XenErrno::EINVAL)?;
        let text = match (cmd, params.len()) {
            (b"check", _) => {
                self.db.check().map_err(|_| XenErrno::EIO)?;
                "OK".to_owned()
            }
            (b"print", _) => "OK".to_owned(),
            (b"help", 0) => "check\nhelp\nprint <string>\nquota\n".to_owned(),
            (b"quota", 0) => {
                let q = &self.quotas;
                let mut s = String::from("Quota settings:\n");
                for (name, value) in [
                    ("nodes", q.nodes),
                    ("watches", q.watches),
                    ("transactions", q.transactions),
                    ("transaction-nodes", q.transaction_nodes),
                    ("node-permissions", q.node_permissions),
                    ("node-size", q.node_size),
                    ("path-max", q.path_max),
                    ("outstanding", q.outstanding),
                    ("output-bytes", q.output_bytes),
                ] {
                    s.push_str(&format!("{name:<17}: {value:8}\n"));
                }
                s
            }
            _ => return Err(XenErrno::EINVAL),
        };
        let mut out = text.into_bytes();
        out.push(0);
        Ok(out)
    }
}

/// The dom0 API: the database as domain 0 sees it (full access, no quotas), for the
/// shim's backends. Paths may be absolute or relative to `/local/domain/0`. Watch
/// events go to [`Xenstored::take_dom0_events`] (or [`Dom0::take_events`]).
#[derive(Debug)]
pub struct Dom0<'a> {
    xs: &'a mut Xenstored,
}

impl Dom0<'_> {
    fn run<T>(
        &mut self,
        tx: Option<TxId>,
        path: &str,
        allow_special: bool,
        f: impl FnOnce(&mut View<'_>, &str) -> Result<T, XenErrno>,
    ) -> Result<T, XsError> {
        let c = self
            .xs
            .canon(ConnKey::Api, path.as_bytes(), allow_special)?;
        let tx = tx.map_or(0, TxId::id);
        Ok(self.xs.with_view(ConnKey::Api, tx, |v| f(v, &c.path))?)
    }

    /// Reads a value.
    pub fn read(&mut self, tx: Option<TxId>, path: &str) -> Result<Vec<u8>, XsError> {
        self.run(tx, path, false, |v, p| v.read_value(p))
    }

    /// Writes a value (creating the node and missing parents). A value longer than
    /// `XENSTORE_PAYLOAD_MAX` is `E2BIG`: no guest could read it.
    pub fn write(&mut self, tx: Option<TxId>, path: &str, value: &[u8]) -> Result<(), XsError> {
        if value.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XenErrno::E2BIG.into());
        }
        self.run(tx, path, false, |v, p| v.write(p, value))
    }

    /// Creates a node (and missing parents) if it does not exist.
    pub fn mkdir(&mut self, tx: Option<TxId>, path: &str) -> Result<(), XsError> {
        self.run(tx, path, false, |v, p| v.mkdir(p))
    }

    /// Removes a node and its subtree (fine if it does not exist but its parent does).
    pub fn rm(&mut self, tx: Option<TxId>, path: &str) -> Result<(), XsError> {
        self.run(tx, path, false, |v, p| v.rm(p))
    }

    /// The names of a node's children.
    pub fn directory(&mut self, tx: Option<TxId>, path: &str) -> Result<Vec<String>, XsError> {
        self.run(tx, path, false, |v, p| v.directory(p))
    }

    /// A node's permissions (special `@` nodes included).
    pub fn get_perms(&mut self, tx: Option<TxId>, path: &str) -> Result<Perms, XsError> {
        self.run(tx, path, true, |v, p| v.get_perms(p))
    }

    /// Sets a node's permissions. Entries naming domains that are not introduced grant
    /// nothing; an owner that is not introduced is `ENOENT`.
    pub fn set_perms(
        &mut self,
        tx: Option<TxId>,
        path: &str,
        perms: &Perms,
    ) -> Result<(), XsError> {
        let known = self.xs.known_domains();
        let perms = perms.clone();
        self.run(tx, path, true, |v, p| {
            v.set_perms(p, perms, |d| known.contains(&d))
        })
    }

    /// Watches `path` (and below) with `token`; the initial event is queued at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.watch_depth(path, token, None)
    }

    /// Watches `path` down to `depth` levels below it.
    pub fn watch_depth(
        &mut self,
        path: &str,
        token: &str,
        depth: Option<u32>,
    ) -> Result<(), XsError> {
        if token.contains('\0') {
            return Err(XenErrno::EINVAL.into());
        }
        let initial = self
            .xs
            .add_watch(ConnKey::Api, path.as_bytes(), token.as_bytes(), depth)?;
        let limit = self.xs.quotas.dom0_event_bytes as usize;
        let Xenstored { conns, stats, .. } = &mut *self.xs;
        if let Some(conn) = conns.get_mut(&ConnKey::Api) {
            conn.queue_event(initial, limit, stats);
        }
        Ok(())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        Ok(self
            .xs
            .remove_watch(ConnKey::Api, path.as_bytes(), token.as_bytes())?)
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        Ok(TxId(self.xs.transaction_start(ConnKey::Api)?))
    }

    /// Ends a transaction: commits it (`EAGAIN` on a conflict: start again) or
    /// discards it.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        Ok(self.xs.transaction_end(ConnKey::Api, tx.0, commit)?)
    }

    /// Takes the queued watch events.
    pub fn take_events(&mut self) -> Vec<WatchEvent> {
        self.xs.take_dom0_events()
    }
}
