//! The xenstore client: typed requests over the ring, reply matching, watch events,
//! transactions (`docs/misc/xenstore.txt`).
//!
//! The client is synchronous: each request is written, then the client pumps the
//! response stream until the reply with the request's id arrives. Everything else that
//! arrives meanwhile is dispatched: `XS_WATCH_EVENT`s go to the watch queue, replies
//! nobody is waiting for (say, the late reply to a request that timed out) are dropped
//! and counted. Replies are matched by `req_id` only, as Linux and Mini-OS do
//! (xenstored copies `tx_id` too, but the protocol never made that a promise for every
//! reply type).
//!
//! Nothing here blocks forever. Waiting goes through [`XsEvents::wait`], which reports
//! a timeout; a call gives up with [`XsError::Timeout`] after
//! [`Limits::max_idle_waits`] consecutive timeouts without progress, after
//! [`Limits::max_spurious_wakeups`] consecutive wake-ups without progress, or after
//! processing [`Limits::max_messages_per_call`] messages without finding what it waits
//! for (a peer flooding us with events).
//!
//! Errors that leave the byte streams out of step (bad ring indices, an oversized
//! header, a timeout with half a request in the ring, a connection error reported by
//! the server) make the client *broken*: every later call fails with
//! [`XsError::Broken`] until [`XenStore::reconnect`] succeeds.

use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Deref;

use super::error::{ProtocolError, XsError};
use super::ring::XsRing;
use super::watch::{Delivery, Watches};
use super::wire::{
    Message, MessageReader, Permissions, RequestBuilder, WatchEvent, check_path, check_token,
    parse_directory, parse_string, parse_transaction_id,
};
use crate::abi::errno::XenErrno;
use crate::abi::xen::DomId;
use crate::abi::xs_wire::{XsdSockmsgType, xsd_error_from_payload};
use crate::shmem::SharedMemory;

/// What [`XsEvents::wait`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The store event channel fired (or may have: a spurious wake-up is allowed).
    Event,
    /// The environment's wait deadline passed without an event.
    TimedOut,
}

/// The environment of the client: the store event channel and a way to wait on it.
///
/// - In the guest kernel, `notify` is `EVTCHNOP_send` on the store port
///   (`HVM_PARAM_STORE_EVTCHN`) and `wait` blocks (e.g. `hlt` with the upcall enabled,
///   or `SCHEDOP_poll` with a timeout) until that port is pending or a deadline passes,
///   then clears the pending bit. An event that fired between the client's last look at
///   the ring and the call to `wait` must make `wait` return at once: latch it (the
///   pending bit does exactly this), never lose it.
/// - In host tests, `notify` may run an in-process server synchronously, and `wait` may
///   run it again and report whether it did anything.
pub trait XsEvents {
    /// Tells the server that the ring changed (bytes produced or consumed).
    fn notify(&mut self);
    /// Waits for the server to signal, for at most the environment's wait period.
    fn wait(&mut self) -> WaitOutcome;
}

impl<T: XsEvents + ?Sized> XsEvents for &mut T {
    fn notify(&mut self) {
        (**self).notify();
    }
    fn wait(&mut self) -> WaitOutcome {
        (**self).wait()
    }
}

/// Bounds that keep every call finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Consecutive [`WaitOutcome::TimedOut`] without progress before a call fails with
    /// [`XsError::Timeout`]. The kernel's wait period times this is the deadline.
    pub max_idle_waits: u32,
    /// Consecutive [`WaitOutcome::Event`] without progress before a call fails (a peer
    /// that signals without producing anything).
    pub max_spurious_wakeups: u32,
    /// Messages a single call processes while looking for its reply or event.
    pub max_messages_per_call: u32,
    /// Attempts [`XenStore::transaction`] makes before it returns `EAGAIN`.
    pub transaction_attempts: u32,
    /// Capacity of the watch-event queue.
    pub watch_queue_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_idle_waits: 4,
            max_spurious_wakeups: 1024,
            max_messages_per_call: 4096,
            transaction_attempts: 16,
            watch_queue_len: 256,
        }
    }
}

/// Counters of what the client saw (for diagnostics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XsStats {
    /// Requests sent (fully or partly).
    pub requests: u64,
    /// Replies matched to a request (including `XS_ERROR` replies).
    pub replies: u64,
    /// `XS_ERROR` replies among them.
    pub error_replies: u64,
    /// Messages with no outstanding request to match (dropped).
    pub stray_replies: u64,
    /// Watch events queued.
    pub watch_events: u64,
    /// Watch events merged into an identical queued one.
    pub watch_events_merged: u64,
    /// Watch events dropped: unknown token or malformed payload.
    pub watch_events_dropped: u64,
    /// Queued watch events dropped because the queue was full.
    pub watch_events_overflowed: u64,
    /// Notifications sent.
    pub notifications: u64,
    /// Calls to [`XsEvents::wait`].
    pub waits: u64,
    /// Calls that ended in [`XsError::Timeout`].
    pub timeouts: u64,
    /// Transaction attempts repeated after `EAGAIN`.
    pub transaction_retries: u64,
    /// Successful reconnections.
    pub reconnects: u64,
    /// Stale response bytes discarded when connecting.
    pub discarded_bytes: u64,
}

/// A transaction id (`tx_id` in the header); [`TxId::NONE`] is "no transaction".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TxId(u32);

impl TxId {
    /// Not in a transaction.
    pub const NONE: Self = Self(0);

    /// The id as it travels in the header.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// An id from its wire value.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }
}

/// An error type a [`XenStore::transaction`] body may return: it must be able to carry
/// an [`XsError`] and say whether it is one, so the loop can spot `EAGAIN`.
pub trait TransactionError: From<XsError> {
    /// The store error inside, if this is one.
    fn xs_error(&self) -> Option<XsError>;
}

impl TransactionError for XsError {
    fn xs_error(&self) -> Option<XsError> {
        Some(*self)
    }
}

/// Progress accounting for one blocking call.
#[derive(Debug, Default)]
struct Budget {
    idle: u32,
    spurious: u32,
    messages: u32,
}

impl Budget {
    fn progress(&mut self) {
        self.idle = 0;
        self.spurious = 0;
    }
}

/// A xenstore connection over a shared ring page.
///
/// `P` points to the page (`&M`, `Box<M>`, `Arc<M>`, ... with `M: SharedMemory`); `E`
/// is the event-channel environment.
#[derive(Debug)]
pub struct XenStore<P, E> {
    ring: XsRing<P>,
    events: E,
    reader: MessageReader,
    watches: Watches,
    limits: Limits,
    stats: XsStats,
    next_req_id: u32,
    next_token: u32,
    /// The fully sent request whose reply we wait for.
    outstanding: Option<u32>,
    /// Its reply, once dispatched.
    reply: Option<Message>,
    broken: bool,
}

impl<P, E> XenStore<P, E>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    /// Connects with the default [`Limits`]. See [`XenStore::connect_with`].
    pub fn connect(page: P, events: E) -> Result<Self, XsError> {
        Self::connect_with(page, events, Limits::default())
    }

    /// Connects to the xenstore page: waits (bounded) while a reconnection someone
    /// else started is in progress, takes the ring indices from the page, and discards
    /// responses a previous owner left unread (as Linux's `xb_init_comms()` does).
    pub fn connect_with(page: P, events: E, limits: Limits) -> Result<Self, XsError> {
        // The indices are not looked at until a reconnection in progress is over:
        // until then the guest "must ignore all fields except the Connection state".
        let ring = XsRing::new(page)?;
        let mut xs = Self {
            ring,
            events,
            reader: MessageReader::new(),
            watches: Watches::new(limits.watch_queue_len),
            limits,
            stats: XsStats::default(),
            next_req_id: 0,
            next_token: 0,
            outstanding: None,
            reply: None,
            broken: false,
        };
        xs.await_connected()?;
        xs.ring.resync()?;
        xs.stats.discarded_bytes = xs.ring.discard_responses()?.into();
        Ok(xs)
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.watches.set_capacity(limits.watch_queue_len);
    }

    /// The counters so far.
    pub fn stats(&self) -> XsStats {
        self.stats
    }

    /// The event environment (e.g. to reach a test server).
    pub fn events_mut(&mut self) -> &mut E {
        &mut self.events
    }

    /// The ring (e.g. to read `server_features`).
    pub fn ring(&self) -> &XsRing<P> {
        &self.ring
    }

    /// Takes the ring indices from the page again, as [`XenStore::connect`] does,
    /// after someone else moved bytes through the same page while this client was idle
    /// (a test that speaks raw wire messages, such as the guest's `selftest=hostile`).
    /// Nothing may be outstanding: a half-read message or an unanswered request is
    /// forgotten. Registered watches are kept (the server still has them).
    pub fn resync(&mut self) -> Result<(), XsError> {
        self.ring.resync()?;
        self.reader.reset();
        self.reply = None;
        self.outstanding = None;
        Ok(())
    }

    /// Whether an earlier fatal error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// A token no other call of this client has returned: `prefix` and a counter.
    pub fn unique_token(&mut self, prefix: &str) -> String {
        self.next_token = self.next_token.wrapping_add(1);
        alloc::format!("{prefix}{}", self.next_token)
    }

    /// `XS_READ`: the value at `path` (raw bytes; xenstore values need not be text).
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        self.request(RequestBuilder::new(XsdSockmsgType::Read).path(path)?, tx)
    }

    /// Whether `path` exists (an `XS_READ` that may fail with `ENOENT`).
    pub fn exists(&mut self, tx: TxId, path: &str) -> Result<bool, XsError> {
        match self.read(tx, path) {
            Ok(_) => Ok(true),
            Err(XsError::Xen(XenErrno::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `XS_WRITE`: stores `value` at `path`, creating missing parents.
    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        let req = RequestBuilder::new(XsdSockmsgType::Write)
            .path(path)?
            .bytes(value)?;
        self.request(req, tx).map(drop)
    }

    /// `XS_MKDIR`: makes sure `path` exists.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request(RequestBuilder::new(XsdSockmsgType::Mkdir).path(path)?, tx)
            .map(drop)
    }

    /// `XS_RM`: removes `path` and everything below it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.request(RequestBuilder::new(XsdSockmsgType::Rm).path(path)?, tx)
            .map(drop)
    }

    /// `XS_DIRECTORY`: the names of `path`'s children. A listing longer than a payload
    /// fails with `E2BIG` (`XS_DIRECTORY_PART` is not implemented).
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        let reply = self.request(
            RequestBuilder::new(XsdSockmsgType::Directory).path(path)?,
            tx,
        )?;
        Ok(parse_directory(&reply)?)
    }

    /// `XS_GET_PERMS`: `path`'s permissions.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Permissions, XsError> {
        let reply = self.request(
            RequestBuilder::new(XsdSockmsgType::GetPerms).path(path)?,
            tx,
        )?;
        Ok(Permissions::parse(&reply)?)
    }

    /// `XS_SET_PERMS`: replaces `path`'s permissions.
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &Permissions) -> Result<(), XsError> {
        let mut req = RequestBuilder::new(XsdSockmsgType::SetPerms).path(path)?;
        for p in perms.entries() {
            req = req.display(format_args!("{}{}", p.access.letter() as char, p.domid))?;
        }
        self.request(req, tx).map(drop)
    }

    /// `XS_WATCH`: asks for an event whenever `path` or anything below it changes.
    /// xenstored fires every new watch once straight away. Events are collected with
    /// [`XenStore::next_watch_event`] / [`XenStore::wait_watch_event`].
    ///
    /// `EEXIST` (this path and token are already watched) is returned as an error, and
    /// the watch stays registered.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_token(token)?;
        let req = RequestBuilder::new(XsdSockmsgType::Watch)
            .path(path)?
            .string(token)?;
        // Registered before sending: the first event may overtake the reply.
        let known = self.watches.is_registered(path, token);
        self.watches.register(path, token);
        // "The tx_id in a WATCH request is ignored"; send none.
        match self.request(req, TxId::NONE) {
            Ok(_) => Ok(()),
            Err(e @ XsError::Xen(XenErrno::EEXIST)) => Err(e),
            Err(e) => {
                if !known {
                    self.watches.unregister(path, token);
                }
                Err(e)
            }
        }
    }

    /// `XS_UNWATCH`. The watch is forgotten locally (and its queued events dropped)
    /// whatever the server answers.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_token(token)?;
        let req = RequestBuilder::new(XsdSockmsgType::Unwatch)
            .path(path)?
            .string(token)?;
        let ours = self.watches.is_registered(path, token);
        self.watches.unregister(path, token);
        match self.request(req, TxId::NONE) {
            // The server has no such watch although we registered it: it is gone
            // either way. (QEMU's xenstore answers ENOENT when removing any watch but
            // the first on a path.)
            Err(XsError::Xen(XenErrno::ENOENT)) if ours => Ok(()),
            r => r.map(drop),
        }
    }

    /// Forgets a watch locally without telling the server (when the connection is
    /// dead anyway); its events are dropped from now on.
    pub fn forget_watch(&mut self, path: &str, token: &str) {
        self.watches.unregister(path, token);
    }

    /// The watches registered, as `(path, token)`.
    pub fn watches(&self) -> impl Iterator<Item = (&str, &str)> {
        self.watches
            .registered()
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
    }

    /// `XS_TRANSACTION_START`.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let req = RequestBuilder::new(XsdSockmsgType::TransactionStart).string("")?;
        let reply = self.request(req, TxId::NONE)?;
        Ok(TxId(parse_transaction_id(&reply)?))
    }

    /// `XS_TRANSACTION_END`: commits (`T`) or aborts (`F`) `tx`. A commit that
    /// conflicts with another writer fails with `EAGAIN`; the id is dead either way.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        if tx == TxId::NONE {
            return Err(XsError::InvalidArgument);
        }
        let req = RequestBuilder::new(XsdSockmsgType::TransactionEnd).string(if commit {
            "T"
        } else {
            "F"
        })?;
        self.request(req, tx).map(drop)
    }

    /// Runs `body` in a transaction and commits it, starting again (in this one loop,
    /// at most [`Limits::transaction_attempts`] times) whenever the start, the body or
    /// the commit fails with `EAGAIN`. Any other error from `body` aborts the
    /// transaction and is returned. After the last attempt the result is `EAGAIN`.
    ///
    /// `body` may run several times, so it must not have effects outside the store
    /// that a repeat would double.
    pub fn transaction<T, Er>(
        &mut self,
        mut body: impl FnMut(&mut Tx<'_, P, E>) -> Result<T, Er>,
    ) -> Result<T, Er>
    where
        Er: TransactionError,
    {
        let again = XsError::Xen(XenErrno::EAGAIN);
        for attempt in 0..self.limits.transaction_attempts.max(1) {
            if attempt > 0 {
                self.stats.transaction_retries += 1;
            }
            let id = match self.transaction_start() {
                Ok(id) => id,
                Err(e) if e.is_again() => continue,
                Err(e) => return Err(e.into()),
            };
            let result = body(&mut Tx { xs: self, id });
            match result {
                Ok(value) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(value),
                    Err(e) if e.is_again() => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(err) => {
                    let xs_err = err.xs_error();
                    if xs_err.is_none_or(|e| e.connection_usable()) {
                        // Best effort: the body's error is the one to report.
                        let _ = self.transaction_end(id, false);
                    }
                    if xs_err == Some(again) {
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Err(again.into())
    }

    /// `XS_GET_DOMAIN_PATH`: the home path of `domid` (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let req = RequestBuilder::new(XsdSockmsgType::GetDomainPath).display(domid)?;
        let reply = self.request(req, TxId::NONE)?;
        let path = parse_string(&reply)?;
        if !path.starts_with('/') || check_path(&path).is_err() {
            return Err(ProtocolError::MalformedReply.into());
        }
        Ok(path)
    }

    /// Processes whatever has arrived, without waiting: watch events are queued, stray
    /// replies dropped.
    pub fn poll(&mut self) -> Result<(), XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let r = self.pump(&mut Budget::default());
        self.settle(r, false).map(drop)
    }

    /// The oldest queued watch event, or the oldest with `token`, after processing
    /// what has arrived; `None` if there is none. Events for other tokens stay queued.
    /// Never waits.
    pub fn next_watch_event(&mut self, token: Option<&str>) -> Result<Option<WatchEvent>, XsError> {
        if let Some(ev) = self.watches.pop(token) {
            return Ok(Some(ev));
        }
        self.poll()?;
        Ok(self.watches.pop(token))
    }

    /// Waits (bounded, see [`Limits`]) for a watch event, the oldest one or the oldest
    /// with `token`. Events for other tokens stay queued. A `token` that no registered
    /// watch uses is [`XsError::InvalidArgument`].
    pub fn wait_watch_event(&mut self, token: Option<&str>) -> Result<WatchEvent, XsError> {
        if let Some(t) = token
            && !self.watches.has_token(t)
        {
            return Err(XsError::InvalidArgument);
        }
        let mut budget = Budget::default();
        loop {
            if let Some(ev) = self.watches.pop(token) {
                return Ok(ev);
            }
            if self.broken {
                return Err(XsError::Broken);
            }
            let r = self.pump(&mut budget);
            let consumed = self.settle(r, false)?;
            if budget.messages > self.limits.max_messages_per_call {
                return self.settle(Err(XsError::Timeout), false);
            }
            if consumed > 0 {
                budget.progress();
                continue;
            }
            let r = self.check_server().and_then(|()| self.idle(&mut budget));
            self.settle(r, false)?;
        }
    }

    /// Number of watch events queued.
    pub fn queued_watch_events(&self) -> usize {
        self.watches.queued()
    }

    /// Resets the ring with the reconnection protocol of `xenstore-ring.txt` (if the
    /// server offers it): requests the reset, waits (bounded) for the server to
    /// finish, takes the fresh indices, and registers every watch again (the server
    /// dropped them, and its transactions: ids from before are dead). Clears
    /// [`XenStore::is_broken`] on success.
    pub fn reconnect(&mut self) -> Result<(), XsError> {
        if !self.ring.can_reconnect() {
            return Err(XsError::ReconnectUnsupported);
        }
        // Until the server is done the streams are unusable, whatever happens next.
        self.broken = true;
        self.ring.request_reconnect();
        self.notify();
        self.await_connected()?;
        self.ring.resync()?;
        self.reader.reset();
        self.reply = None;
        self.outstanding = None;
        self.watches.clear_queue();
        self.broken = false;
        self.stats.reconnects += 1;
        let watches = self.watches.registered().to_vec();
        let mut first_error = None;
        for (path, token) in watches {
            let req = RequestBuilder::new(XsdSockmsgType::Watch)
                .path(&path)?
                .string(&token)?;
            if let Err(e) = self.request(req, TxId::NONE) {
                self.watches.unregister(&path, &token);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends one request and returns the payload of its reply, or the error it carries.
    fn request(&mut self, req: RequestBuilder, tx: TxId) -> Result<Vec<u8>, XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let kind = req.kind();
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        let id = self.next_req_id;
        let msg = req.finish(id, tx.raw());
        self.stats.requests += 1;

        let mut sent = 0;
        let r = self.exchange(&msg, id, &mut sent);
        self.outstanding = None;
        self.reply = None;
        // Half a request in the ring: the server would read our next one as its tail.
        let torn = sent > 0 && sent < msg.len();
        let reply = self.settle(r, torn)?;

        self.stats.replies += 1;
        match reply.kind() {
            Some(XsdSockmsgType::Error) => {
                self.stats.error_replies += 1;
                Err(xsd_error_from_payload(&reply.payload).map_or(
                    XsError::Protocol(ProtocolError::UnknownErrorName),
                    XsError::Xen,
                ))
            }
            Some(k) if k == kind => Ok(reply.payload),
            _ => Err(ProtocolError::UnexpectedReply {
                sent: kind.as_raw(),
                got: reply.header.type_,
            }
            .into()),
        }
    }

    /// Writes `msg` (as space allows) and pumps responses until the reply to `id`.
    fn exchange(&mut self, msg: &[u8], id: u32, sent: &mut usize) -> Result<Message, XsError> {
        let mut budget = Budget::default();
        loop {
            let mut progress = false;
            if *sent < msg.len() {
                let n = self.ring.write(&msg[*sent..])?;
                if n > 0 {
                    *sent += n;
                    progress = true;
                    self.notify();
                    if *sent == msg.len() {
                        // Only a complete request can be answered; anything carrying
                        // its id before that is a stray.
                        self.outstanding = Some(id);
                    }
                }
            }
            progress |= self.pump(&mut budget)? > 0;
            if let Some(reply) = self.reply.take() {
                return Ok(reply);
            }
            if budget.messages > self.limits.max_messages_per_call {
                return Err(XsError::Timeout);
            }
            if progress {
                budget.progress();
                continue;
            }
            self.check_server()?;
            self.idle(&mut budget)?;
        }
    }

    /// Reads and dispatches complete messages until the ring is empty or the budget's
    /// message count runs out; notifies the server if bytes were consumed. Returns the
    /// number of bytes consumed.
    fn pump(&mut self, budget: &mut Budget) -> Result<usize, XsError> {
        let mut total = 0;
        let result = loop {
            if budget.messages > self.limits.max_messages_per_call {
                break Ok(());
            }
            let ring = &mut self.ring;
            match self.reader.poll(|buf| ring.read(buf)) {
                Ok((n, msg)) => {
                    total += n;
                    match msg {
                        Some(msg) => {
                            budget.messages += 1;
                            self.dispatch(msg);
                        }
                        None => break Ok(()),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        // xenstore-ring.txt: "Whenever the ring structure is updated the event channel
        // must be signalled" -- the server may be waiting for room to write.
        if total > 0 {
            self.notify();
        }
        result.map(|()| total)
    }

    /// Routes one complete message.
    fn dispatch(&mut self, msg: Message) {
        match msg.kind() {
            Some(XsdSockmsgType::WatchEvent) => match WatchEvent::parse(&msg.payload) {
                Ok(ev) => match self.watches.deliver(ev) {
                    Delivery::Queued => self.stats.watch_events += 1,
                    Delivery::Merged => self.stats.watch_events_merged += 1,
                    Delivery::Overflowed => {
                        self.stats.watch_events += 1;
                        self.stats.watch_events_overflowed += 1;
                    }
                    Delivery::Unknown => self.stats.watch_events_dropped += 1,
                },
                Err(_) => self.stats.watch_events_dropped += 1,
            },
            _ if self.reply.is_none() && self.outstanding == Some(msg.header.req_id) => {
                self.outstanding = None;
                self.reply = Some(msg);
            }
            _ => self.stats.stray_replies += 1,
        }
    }

    /// Fails if the server reported a connection error in the page.
    fn check_server(&self) -> Result<(), XsError> {
        match self.ring.server_error() {
            Some(code) => Err(XsError::ServerError(code)),
            None => Ok(()),
        }
    }

    /// Waits once, charging the budget; [`XsError::Timeout`] when it runs out.
    fn idle(&mut self, budget: &mut Budget) -> Result<(), XsError> {
        self.stats.waits += 1;
        match self.events.wait() {
            WaitOutcome::Event => {
                budget.spurious += 1;
                if budget.spurious > self.limits.max_spurious_wakeups {
                    return Err(XsError::Timeout);
                }
            }
            WaitOutcome::TimedOut => {
                budget.idle += 1;
                if budget.idle >= self.limits.max_idle_waits.max(1) {
                    return Err(XsError::Timeout);
                }
            }
        }
        Ok(())
    }

    /// Waits (bounded) while a ring reconnection is in progress.
    fn await_connected(&mut self) -> Result<(), XsError> {
        let mut budget = Budget::default();
        while self.ring.reconnecting() {
            let r = self.idle(&mut budget);
            self.settle(r, false)?;
        }
        Ok(())
    }

    /// Books the outcome of a call: counts timeouts and marks the connection broken
    /// after a fatal error (or when `torn`, a half-written request).
    fn settle<T>(&mut self, r: Result<T, XsError>, torn: bool) -> Result<T, XsError> {
        if let Err(e) = &r {
            if *e == XsError::Timeout {
                self.stats.timeouts += 1;
            }
            if e.is_fatal() || torn {
                self.broken = true;
            }
        }
        r
    }

    fn notify(&mut self) {
        self.stats.notifications += 1;
        self.events.notify();
    }
}

/// A transaction in progress, handed to the body of [`XenStore::transaction`]. Its
/// operations carry the transaction's id.
#[derive(Debug)]
pub struct Tx<'a, P, E> {
    xs: &'a mut XenStore<P, E>,
    id: TxId,
}

impl<P, E> Tx<'_, P, E>
where
    P: Deref<Target: SharedMemory>,
    E: XsEvents,
{
    /// The transaction's id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// The client, for calls that take an explicit [`TxId`] (pass [`Tx::id`]).
    pub fn store(&mut self) -> &mut XenStore<P, E> {
        self.xs
    }

    /// [`XenStore::read`] in the transaction.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.xs.read(self.id, path)
    }

    /// [`XenStore::exists`] in the transaction.
    pub fn exists(&mut self, path: &str) -> Result<bool, XsError> {
        self.xs.exists(self.id, path)
    }

    /// [`XenStore::write`] in the transaction.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.xs.write(self.id, path, value)
    }

    /// [`XenStore::mkdir`] in the transaction.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.mkdir(self.id, path)
    }

    /// [`XenStore::rm`] in the transaction.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.rm(self.id, path)
    }

    /// [`XenStore::directory`] in the transaction.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.directory(self.id, path)
    }

    /// [`XenStore::get_perms`] in the transaction.
    pub fn get_perms(&mut self, path: &str) -> Result<Permissions, XsError> {
        self.xs.get_perms(self.id, path)
    }

    /// [`XenStore::set_perms`] in the transaction.
    pub fn set_perms(&mut self, path: &str, perms: &Permissions) -> Result<(), XsError> {
        self.xs.set_perms(self.id, path, perms)
    }
}
