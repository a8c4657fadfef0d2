//! The shim's implementation of the Xen interface (in progress).

pub mod xenstored;
