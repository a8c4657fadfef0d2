//! A frontend that follows its backend's xenbus state while it works.
//!
//! blkfront and netfront each register a watch on their backend's `state` once
//! connected ([`Follower::watch_token`]). When the backend goes `Closing` (an
//! `xl block-detach`, a backend error, dom0 shutting down) the frontend must notice,
//! fail what is in flight and close its end, or the toolstack waits for it and the I/O
//! layer above waits for completions that never come. Watch events arrive on the
//! xenstore ring, not on the device's event channel; [`Followed`] bridges the two: it
//! wraps a device, and every `poll` of the device first looks (cheaply: one counter
//! read, unless the store's event channel fired) for the device's watch events and
//! hands them to [`Follower::on_backend_change`].
//!
//! The layers above keep seeing a plain [`BlockDevice`]/[`NetDevice`]; a closed device
//! fails their requests with `Disconnected`, and [`Followed::backend_state`] says why.

use core::fmt;
use core::ops::Deref;

use alloc::string::String;
use alloc::vec::Vec;

use crate::device::{BlockCompletion, BlockDevice, BlockError, BlockInfo, BlockOp, NetDevice};
use crate::device::{NetError, NetInfo};
use crate::shmem::SharedMemory;
use crate::xenbus::XenbusState;
use crate::xenstore::{XenStore, XsEvents};

/// A frontend with a watch on its backend's `state`.
pub trait Follower {
    /// Why following failed.
    type Error: fmt::Display;

    /// The token of the watch; `None` when none is registered (not connected, or
    /// closed).
    fn watch_token(&self) -> Option<&str>;

    /// The watch fired: reads the backend's state and, if it is closing or gone,
    /// closes this end. Returns the backend's state.
    fn on_backend_change<P, X>(
        &mut self,
        xs: &mut XenStore<P, X>,
    ) -> Result<XenbusState, Self::Error>
    where
        P: Deref<Target: SharedMemory>,
        X: XsEvents;
}

/// Where [`Followed`] finds the xenstore client.
pub trait StoreAccess {
    /// The client's ring memory.
    type Pages: Deref<Target: SharedMemory>;
    /// The client's environment.
    type Events: XsEvents;

    /// A number that changes whenever the store's event channel fired (so that an
    /// unchanged value means no watch event can have arrived since it was read).
    /// Returning a new value every time is correct, only slower.
    fn activity(&self) -> u64;

    /// Runs `f` on the client; `None` if there is none (or it is in use).
    fn with_store<R>(
        &self,
        f: impl FnOnce(&mut XenStore<Self::Pages, Self::Events>) -> R,
    ) -> Option<R>;
}

/// What following the backend has seen, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Times the store was looked at (its activity counter had changed).
    pub checks: u64,
    /// Watch events for this device.
    pub events: u64,
    /// Times handling them failed.
    pub errors: u64,
}

/// `D`, following its backend through `S` (see the module documentation).
pub struct Followed<D, S> {
    dev: D,
    store: S,
    seen: Option<u64>,
    backend: Option<XenbusState>,
    last_error: Option<String>,
    stats: FollowStats,
}

impl<D: Follower, S: StoreAccess> Followed<D, S> {
    /// Wraps `dev`; the first poll looks at the store.
    pub fn new(dev: D, store: S) -> Self {
        Self {
            dev,
            store,
            seen: None,
            backend: None,
            last_error: None,
            stats: FollowStats::default(),
        }
    }

    /// Handles the device's queued watch events, if the store's event channel fired
    /// since the last look. Returns the backend's state if an event was handled.
    pub fn check_backend(&mut self) -> Option<XenbusState> {
        let now = self.store.activity();
        if self.seen == Some(now) {
            return None;
        }
        // Read before looking: an event after this point changes it again.
        self.seen = Some(now);
        self.stats.checks += 1;
        let token = String::from(self.dev.watch_token()?);
        let dev = &mut self.dev;
        let result = self.store.with_store(|xs| {
            let mut events = 0u64;
            while let Ok(Some(_)) = xs.next_watch_event(Some(&token)) {
                events += 1;
            }
            (events > 0).then(|| (events, dev.on_backend_change(xs)))
        });
        let Some(Some((events, handled))) = result else {
            if result.is_none() {
                // The store was busy: look again next time.
                self.seen = None;
            }
            return None;
        };
        self.stats.events += events;
        match handled {
            Ok(state) => {
                self.backend = Some(state);
                Some(state)
            }
            Err(e) => {
                self.stats.errors += 1;
                self.last_error = Some(alloc::format!("{e}"));
                None
            }
        }
    }

    /// The backend's state at the last watch event handled.
    pub fn backend_state(&self) -> Option<XenbusState> {
        self.backend
    }

    /// The last error handling a watch event.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Counters.
    pub fn stats(&self) -> FollowStats {
        self.stats
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }
}

impl<D: Follower + BlockDevice, S: StoreAccess> BlockDevice for Followed<D, S> {
    fn info(&self) -> BlockInfo {
        self.dev.info()
    }

    fn submit(
        &mut self,
        op: BlockOp,
        sector: u64,
        sectors: u32,
        data: &[u8],
    ) -> Result<u64, BlockError> {
        self.dev.submit(op, sector, sectors, data)
    }

    fn kick(&mut self) {
        self.dev.kick();
    }

    fn poll(&mut self, done: &mut Vec<BlockCompletion>) -> Result<usize, BlockError> {
        self.check_backend();
        self.dev.poll(done)
    }

    fn in_flight(&self) -> u32 {
        self.dev.in_flight()
    }
}

impl<D: Follower + NetDevice, S: StoreAccess> NetDevice for Followed<D, S> {
    fn info(&self) -> NetInfo {
        self.dev.info()
    }

    fn can_transmit(&self, len: usize) -> bool {
        self.dev.can_transmit(len)
    }

    fn transmit(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<(), NetError> {
        self.dev.transmit(len, fill)
    }

    fn kick(&mut self) {
        self.dev.kick();
    }

    fn receive(&mut self, take: &mut dyn FnMut(&[u8])) -> Result<bool, NetError> {
        self.dev.receive(take)
    }

    fn poll(&mut self) -> Result<(), NetError> {
        self.check_backend();
        self.dev.poll()
    }
}

#[cfg(test)]
mod tests {
    use core::cell::{Cell, RefCell};

    use super::*;
    use crate::xenbus;
    use crate::xenstore::TxId;
    use crate::xenstore::test_server::{Client, Page, Server, SyncEvents, setup};

    /// A device that watches `backend/state` and closes (drops its watch) when the
    /// backend is closing.
    struct Fake {
        token: Option<String>,
        calls: u32,
    }

    impl Follower for Fake {
        type Error = xenbus::XenbusError;

        fn watch_token(&self) -> Option<&str> {
            self.token.as_deref()
        }

        fn on_backend_change<P, X>(
            &mut self,
            xs: &mut XenStore<P, X>,
        ) -> Result<XenbusState, Self::Error>
        where
            P: Deref<Target: SharedMemory>,
            X: XsEvents,
        {
            self.calls += 1;
            let st = xenbus::read_state(xs, TxId::NONE, "backend")?;
            if st == XenbusState::Closing
                && let Some(t) = self.token.take()
            {
                xs.unwatch("backend/state", &t)
                    .map_err(xenbus::XenbusError::Store)?;
            }
            Ok(st)
        }
    }

    /// The client behind a `RefCell`, and an activity counter the test moves.
    struct Access {
        xs: RefCell<Client>,
        activity: Cell<u64>,
    }

    impl StoreAccess for &Access {
        type Pages = Page;
        type Events = SyncEvents;

        fn activity(&self) -> u64 {
            self.activity.get()
        }

        fn with_store<R>(&self, f: impl FnOnce(&mut Client) -> R) -> Option<R> {
            Some(f(&mut *self.xs.try_borrow_mut().ok()?))
        }
    }

    /// Another domain writes `path`; the server delivers the watch events.
    fn set(server: &Server, path: &str, value: &[u8]) {
        let mut s = server.borrow_mut();
        s.set(path, value);
        s.step();
    }

    fn rig() -> (Access, Server) {
        let (mut xs, server, _) = setup();
        xs.write(TxId::NONE, "backend/state", b"4").unwrap();
        xs.watch("backend/state", "dev").unwrap();
        xs.watch("other", "other").unwrap();
        let access = Access {
            xs: RefCell::new(xs),
            activity: Cell::new(1),
        };
        (access, server)
    }

    #[test]
    fn events_are_handled_only_after_store_activity() {
        let (access, server) = rig();
        let fake = Fake {
            token: Some("dev".into()),
            calls: 0,
        };
        let mut f = Followed::new(fake, &access);
        // The first look handles the watch's initial event.
        assert_eq!(f.check_backend(), Some(XenbusState::Connected));
        assert_eq!(f.device().calls, 1);
        // The backend closes, but the store's event channel has not fired yet: no look.
        set(&server, "backend/state", b"5");
        assert_eq!(f.check_backend(), None);
        assert_eq!(f.device().calls, 1);
        // It fired: the device follows and drops its watch.
        access.activity.set(2);
        assert_eq!(f.check_backend(), Some(XenbusState::Closing));
        assert_eq!(f.backend_state(), Some(XenbusState::Closing));
        assert_eq!(f.device().calls, 2);
        assert_eq!(f.device().watch_token(), None);
        // Without a watch, nothing more is handled.
        access.activity.set(3);
        set(&server, "backend/state", b"6");
        assert_eq!(f.check_backend(), None);
        assert_eq!(f.device().calls, 2);
        assert_eq!(
            f.stats(),
            FollowStats {
                checks: 3,
                events: 2,
                errors: 0
            }
        );
    }

    #[test]
    fn other_tokens_stay_queued_and_a_busy_store_is_looked_at_again() {
        let (access, server) = rig();
        let fake = Fake {
            token: Some("dev".into()),
            calls: 0,
        };
        let mut f = Followed::new(fake, &access);
        // Busy: nothing handled, and the next poll looks even without new activity.
        let held = access.xs.borrow_mut();
        assert_eq!(f.check_backend(), None);
        drop(held);
        assert_eq!(f.check_backend(), Some(XenbusState::Connected));
        // Another watch's event is left for its owner.
        set(&server, "other", b"x");
        access.activity.set(2);
        assert_eq!(f.check_backend(), None);
        let ev = access.xs.borrow_mut().next_watch_event(None).unwrap();
        assert_eq!(ev.map(|e| e.token), Some("other".into()));
    }

    #[test]
    fn a_failing_handler_is_counted_and_reported() {
        let (access, server) = rig();
        set(&server, "backend/state", b"garbage");
        let fake = Fake {
            token: Some("dev".into()),
            calls: 0,
        };
        let mut f = Followed::new(fake, &access);
        assert_eq!(f.check_backend(), None);
        assert_eq!(f.stats().errors, 1);
        assert!(
            f.last_error().is_some_and(|e| e.contains("state")),
            "{:?}",
            f.last_error()
        );
    }
}
