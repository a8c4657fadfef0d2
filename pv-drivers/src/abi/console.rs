//! `xen/include/public/io/console.h`: the PV console page
//! (`HVM_PARAM_CONSOLE_PFN`, notified on `HVM_PARAM_CONSOLE_EVTCHN`).
//!
//! Indices (`XENCONS_RING_IDX`) run free and are masked by the size of their ring
//! (`MASK_XENCONS_IDX(idx, ring)`); the ring discipline belongs to the ring code.

/// Bytes of the `in` ring (backend to guest): `sizeof(in)`.
pub const XENCONS_IN_SIZE: usize = 1024;
/// Bytes of the `out` ring (guest to backend): `sizeof(out)`.
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `MASK_XENCONS_IDX(idx, in)`.
pub const fn mask_xencons_in_idx(idx: u32) -> usize {
    idx as usize & (XENCONS_IN_SIZE - 1)
}

/// `MASK_XENCONS_IDX(idx, out)`.
pub const fn mask_xencons_out_idx(idx: u32) -> usize {
    idx as usize & (XENCONS_OUT_SIZE - 1)
}

/// `XENCONSOLE_CONNECTED`: the backend is connected and will service the console.
pub const XENCONSOLE_CONNECTED: u8 = 0;
/// `XENCONSOLE_DISCONNECTED`: the initial state.
pub const XENCONSOLE_DISCONNECTED: u8 = 1;

/// `struct xencons_interface`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenconsInterface {
    /// `in`: input from the backend.
    pub in_: [u8; XENCONS_IN_SIZE],
    /// `out`: output to the backend.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// `in_cons`.
    pub in_cons: u32,
    /// `in_prod`.
    pub in_prod: u32,
    /// `out_cons`.
    pub out_cons: u32,
    /// `out_prod`.
    pub out_prod: u32,
    /// `XENCONSOLE_*`, written by the backend.
    pub connection: u8,
    /// Implicit C padding: the structure is 4-byte aligned.
    pub _pad: [u8; 3],
}

impl Default for XenconsInterface {
    fn default() -> Self {
        Self::zeroed()
    }
}

pod_bytes!(XenconsInterface {
    in_,
    out,
    in_cons,
    in_prod,
    out_cons,
    out_prod,
    connection,
    _pad,
});

const _: () = assert!(core::mem::offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out_prod) == 3084);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, connection) == 3088);
const _: () = assert!(core::mem::size_of::<XenconsInterface>() == 3092);
const _: () = assert!(XENCONS_IN_SIZE.is_power_of_two() && XENCONS_OUT_SIZE.is_power_of_two());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_layout_and_masks() {
        let mut page = XenconsInterface {
            connection: XENCONSOLE_DISCONNECTED,
            ..Default::default()
        };
        page.out_prod = 2049;
        page.out[1] = b'!';
        let b = page.to_bytes();
        assert_eq!(b[1025], b'!');
        assert_eq!(&b[3084..3088], &2049u32.to_le_bytes());
        assert_eq!(b[3088], 1);
        assert_eq!(mask_xencons_out_idx(page.out_prod), 1);
        assert_eq!(mask_xencons_in_idx(1025), 1);
        assert_eq!(XenconsInterface::from_bytes(&b), page);
    }
}
