//! The guest's xenstore client (`docs/misc/xenstore.txt`, `docs/misc/xenstore-ring.txt`,
//! `xen/include/public/io/xs_wire.h`).
//!
//! Layered as the house style asks:
//! - [`ring`]: the byte rings of the shared page, barriers and index checks;
//! - [`wire`]: message encoding with limits enforced, reassembly, reply parsers, typed
//!   permissions;
//! - `watch`: registered watches and the bounded queue of their events;
//! - [`client`]: the client, [`XenStore`]: typed requests, reply matching, transactions;
//! - [`error`]: the error type, [`XsError`].
//!
//! The xenbus conventions on top (device state, backend lookup) are in
//! [`crate::xenbus`].
//!
//! # Driving it
//!
//! The client is generic over the page (`P: Deref<Target: SharedMemory>`: `&M`,
//! `Box<M>`, `Arc<M>`, ...) and over the event-channel environment ([`XsEvents`]).
//!
//! In the kernel: map the page named by `HVM_PARAM_STORE_PFN` and wrap it in a
//! `RawSharedMemory`; implement [`XsEvents`] with `notify` = `EVTCHNOP_send` on the
//! port of `HVM_PARAM_STORE_EVTCHN` and `wait` = block until that port is pending
//! (clearing it) or a deadline passes; then
//! `XenStore::connect(Box::new(page), events)?` and use it.
//!
//! In a host test against a server in the same process (this module's tests use a
//! small one; the shim's xenstored works the same way): give client and server the
//! same page (`&HeapSharedMemory`, or an `Arc` when the server has its own thread),
//! and an [`XsEvents`] whose `notify` runs (or wakes) the server and whose `wait` runs
//! it again, or blocks until it signals, reporting [`WaitOutcome::TimedOut`] when
//! nothing happened:
//!
//! ```text
//! let page = HeapSharedMemory::new(XenstoreDomainInterface::SIZE);
//! // server set up on &page (e.g. RingServer::attach + Xenstored::introduce_domain)
//! struct Ev<'a> { /* &mut server, &page */ }
//! impl XsEvents for Ev<'_> {
//!     fn notify(&mut self) { server.pump(&page); }
//!     fn wait(&mut self) -> WaitOutcome {
//!         if server.pump(&page).moved_anything { WaitOutcome::Event } else { WaitOutcome::TimedOut }
//!     }
//! }
//! let mut xs = XenStore::connect(&page, Ev { .. })?;
//! xs.write(TxId::NONE, "data/x", b"1")?;
//! xs.watch("data", "tok")?;
//! let ev = xs.wait_watch_event(Some("tok"))?;        // the initial firing
//! let v = xs.transaction(|tx| { let v = tx.read("data/x")?; tx.write("data/y", &v)?; Ok::<_, XsError>(v) })?;
//! ```

pub mod client;
pub mod error;
pub mod ring;
mod watch;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

pub use client::{Limits, TransactionError, Tx, TxId, WaitOutcome, XenStore, XsEvents, XsStats};
pub use error::{ProtocolError, XsError};
pub use ring::XsRing;
pub use wire::{Access, Perm, Permissions, WatchEvent};
