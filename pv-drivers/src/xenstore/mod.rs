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
//! In a host test against a server running in the same process (see this module's
//! tests, or the shim's xenstored): create a `HeapSharedMemory` of a page, give the
//! server the same memory (`Arc`), build an [`XsEvents`] whose `notify` wakes (or
//! directly runs) the server and whose `wait` blocks until the server signals or a
//! short timeout, then `XenStore::connect(page, events)` and issue requests:
//!
//! ```text
//! let page = Arc::new(HeapSharedMemory::new(4096));
//! let server = spawn_server(page.clone());           // serves the page
//! let mut xs = XenStore::connect(page, events)?;     // events: notify/wait pair
//! xs.write(TxId::NONE, "data/x", b"1")?;
//! xs.watch("data", "tok")?;
//! let ev = xs.wait_watch_event(Some("tok"))?;        // the initial firing
//! let n = xs.transaction(|tx| { let v = tx.read("data/x")?; tx.write("data/y", &v) })?;
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
