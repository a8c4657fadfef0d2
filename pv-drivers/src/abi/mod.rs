//! Mirrors of Xen's public headers. One file per header; each names its source.

pub mod elfnote;
pub mod start_info;
