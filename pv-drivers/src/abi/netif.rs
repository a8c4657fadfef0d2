//! `xen/include/public/io/netif.h`: the PV network device's ring messages (transmit,
//! receive and control rings), the extra-info slots, flags, status codes and limits.
//!
//! Three ring types are defined over these messages (the ring discipline is in
//! [`crate::ring`]): `netif_tx` (12-byte slots, 256 per page), `netif_rx` (8-byte
//! slots, 256 per page) and `xen_netif_ctrl` (16-byte slots, 128 per page).
//!
//! A [`NetifExtraInfo`] has no slot type of its own: it overlays a transmit request
//! slot (after a request with [`NETTXF_EXTRA_INFO`]) or a receive response slot
//! (after a response with [`NETRXF_EXTRA_INFO`]). Convert with
//! [`NetifExtraInfo::to_tx_request`], [`NetifExtraInfo::from_tx_request`] and their
//! receive counterparts. Because an extra-info slot carries no id, the backend must
//! put each receive response in the slot of the request it answers.

use super::grant_table::GrantRef;

/// `XEN_NETIF_NR_SLOTS_MIN`: the fewest slots per packet a backend must accept from a
/// frontend that did not negotiate otherwise (old Linux `MAX_SKB_FRAGS`).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// `XEN_NETIF_MAX_TX_SIZE`: the largest packet a transmit request can describe
/// (`size` is 16 bits).
pub const XEN_NETIF_MAX_TX_SIZE: u16 = 0xFFFF;

/// `NETTXF_csum_blank` (`_NETTXF_csum_blank` = 0): the protocol checksum field is
/// blank in the packet (checksum offload).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated` (`_NETTXF_data_validated` = 1): the packet data has been
/// validated against the protocol checksum.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data` (`_NETTXF_more_data` = 2): the packet continues in the next
/// request.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info` (`_NETTXF_extra_info` = 3): the request is followed by
/// [`NetifExtraInfo`] slot(s).
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_data_validated` (`_NETRXF_data_validated` = 0): the packet data has been
/// validated against the protocol checksum.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank` (`_NETRXF_csum_blank` = 1): the protocol checksum field is
/// blank in the packet.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data` (`_NETRXF_more_data` = 2): the packet continues in the next
/// response.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info` (`_NETRXF_extra_info` = 3): the response is followed by
/// [`NetifExtraInfo`] slot(s).
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// `NETRXF_gso_prefix` (`_NETRXF_gso_prefix` = 4): the packet has a GSO prefix
/// (deprecated, kept for compatibility).
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// `NETIF_RSP_DROPPED`: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`: the request failed.
pub const NETIF_RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`: the request succeeded.
pub const NETIF_RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: no response: the status of a slot that held an auxiliary
/// request (an extra-info slot).
pub const NETIF_RSP_NULL: i16 = 1;

/// `XEN_NETIF_EXTRA_TYPE_NONE`: never used (invalid).
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_EXTRA_TYPE_GSO`: `u.gso` (segmentation offload parameters).
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: `u.mcast` (add a multicast filter address).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`: `u.mcast` (remove a multicast filter address).
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `XEN_NETIF_EXTRA_TYPE_HASH`: `u.hash` (the packet's hash value).
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// `XEN_NETIF_EXTRA_TYPE_MAX`: one more than the largest extra-info type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// `XEN_NETIF_EXTRA_FLAG_MORE` (`_XEN_NETIF_EXTRA_FLAG_MORE` = 0): another extra-info
/// slot follows this one.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_GSO_TYPE_NONE`.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`: TCP over IPv4 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`: TCP over IPv6 segmentation.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV4`: bit number of [`XEN_NETIF_CTRL_HASH_TYPE_IPV4`],
/// and the `htype` of a hash extra-info slot.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT: u8 = 0;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT: u8 = 1;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV6`.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT: u8 = 2;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT: u8 = 3;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV4`: hash over the IPv4 source and destination
/// addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`: hash over the IPv4 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV6`: hash over the IPv6 source and destination
/// addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`: hash over the IPv6 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT;

/// `XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`: no hashing; the backend steers packets as
/// it likes.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ`: the Toeplitz hash, keyed by
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_KEY`.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;

/// `XEN_NETIF_CTRL_TYPE_INVALID`.
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS`: query the supported hash types.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS`: `data[0]` = hash types to calculate.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_KEY`: `data[0]` = grant of the key page,
/// `data[1]` = key size in octets.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE`: query the largest mapping table.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE`: `data[0]` = mapping table entries.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING`: `data[0]` = grant of the (sub-)table,
/// `data[1]` = entries, `data[2]` = offset in entries.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM`: `data[0]` =
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
/// `XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE`: `data[0]` = queue; query how many
/// grants the backend can keep mapped.
pub const XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
/// `XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING`: `data[0]` = queue, `data[1]` = grant of a
/// page of [`XenNetifGref`], `data[2]` = entries.
pub const XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
/// `XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING`: as `ADD_GREF_MAPPING`, to unmap.
pub const XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

/// `XEN_NETIF_CTRL_STATUS_SUCCESS`.
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// `XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED`.
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// `XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER`.
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// `XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW`.
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// `XEN_NETIF_CTRLF_GREF_readonly` (`_XEN_NETIF_CTRLF_GREF_readonly` = 0): map the
/// grant read-only.
pub const XEN_NETIF_CTRLF_GREF_READONLY: u16 = 1 << 0;

/// `struct netif_tx_request`: one fragment of a packet to transmit. The first
/// fragment's `size` is the whole packet's size; later fragments carry their own.
/// A fragment must not cross its page: `offset + size <= 4096` (netback's check).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxRequest {
    /// Grant reference of the buffer page.
    pub gref: GrantRef,
    /// Offset of the data within the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// Packet size (first fragment) or fragment size (later ones) in bytes.
    pub size: u16,
}

pod_bytes!(NetifTxRequest {
    gref,
    offset,
    flags,
    id,
    size
});

/// `struct netif_tx_response`: occupies the first 4 bytes of a 12-byte slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxResponse {
    /// The `id` of the transmit request.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

pod_bytes!(NetifTxResponse { id, status });

/// `struct netif_rx_request`: a granted page offered for one received fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxRequest {
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// `pad`: unused.
    pub pad: u16,
    /// Grant reference of the page to receive into.
    pub gref: GrantRef,
}

pod_bytes!(NetifRxRequest { id, pad, gref });

/// `struct netif_rx_response`: a received fragment. Linux netfront ignores `id` and
/// assumes the response sits in the slot of its request; backends must ensure so.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxResponse {
    /// The `id` of the receive request.
    pub id: u16,
    /// Offset in the page of the start of the received data.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Negative: `NETIF_RSP_*`; otherwise the fragment's size in bytes.
    pub status: i16,
}

pod_bytes!(NetifRxResponse {
    id,
    offset,
    flags,
    status
});

/// `struct netif_extra_info`: an extra-info slot. `u` is the C union, whose member
/// `type_` selects: `gso { size: u16, type: u8, pad: u8, features: u16 }`,
/// `mcast { addr: [u8; 6] }`, `hash { type: u8, algorithm: u8, value: [u8; 4] }`;
/// read it with the accessors.
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraInfo {
    /// `type`: `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u` (2-aligned in C because of its `uint16_t` members).
    pub u: [u8; 6],
}

pod_bytes!(NetifExtraInfo { type_, flags, u });

impl NetifExtraInfo {
    /// A GSO slot: `size` = largest segment payload (e.g. the TCP MSS), `gso_type` =
    /// `XEN_NETIF_GSO_TYPE_*`, `features` = GSO features (none are defined).
    pub fn gso(size: u16, gso_type: u8, features: u16, flags: u8) -> Self {
        let [s0, s1] = size.to_le_bytes();
        let [f0, f1] = features.to_le_bytes();
        Self {
            type_: XEN_NETIF_EXTRA_TYPE_GSO,
            flags,
            u: [s0, s1, gso_type, 0, f0, f1],
        }
    }

    /// A multicast filter slot: `type_` is [`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`] or
    /// [`XEN_NETIF_EXTRA_TYPE_MCAST_DEL`].
    pub fn mcast(type_: u8, addr: [u8; 6], flags: u8) -> Self {
        Self {
            type_,
            flags,
            u: addr,
        }
    }

    /// A hash slot: `htype` is a `_XEN_NETIF_CTRL_HASH_TYPE_*` bit number, `algorithm`
    /// a `XEN_NETIF_CTRL_HASH_ALGORITHM_*` value.
    pub fn hash(htype: u8, algorithm: u8, value: u32, flags: u8) -> Self {
        let [v0, v1, v2, v3] = value.to_le_bytes();
        Self {
            type_: XEN_NETIF_EXTRA_TYPE_HASH,
            flags,
            u: [htype, algorithm, v0, v1, v2, v3],
        }
    }

    /// `u.gso.size`.
    pub fn gso_size(&self) -> u16 {
        u16::from_le_bytes([self.u[0], self.u[1]])
    }
    /// `u.gso.type`: `XEN_NETIF_GSO_TYPE_*`.
    pub fn gso_type(&self) -> u8 {
        self.u[2]
    }
    /// `u.gso.features`.
    pub fn gso_features(&self) -> u16 {
        u16::from_le_bytes([self.u[4], self.u[5]])
    }
    /// `u.mcast.addr`.
    pub fn mcast_addr(&self) -> [u8; 6] {
        self.u
    }
    /// `u.hash.type`: a `_XEN_NETIF_CTRL_HASH_TYPE_*` bit number.
    pub fn hash_type(&self) -> u8 {
        self.u[0]
    }
    /// `u.hash.algorithm`: `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub fn hash_algorithm(&self) -> u8 {
        self.u[1]
    }
    /// `u.hash.value`, stored least significant byte first.
    pub fn hash_value(&self) -> u32 {
        u32::from_le_bytes([self.u[2], self.u[3], self.u[4], self.u[5]])
    }
    /// Whether another extra-info slot follows ([`XEN_NETIF_EXTRA_FLAG_MORE`]).
    pub fn has_more(&self) -> bool {
        self.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0
    }

    /// The transmit-ring slot carrying this extra info (its last 4 bytes zero: "padding
    /// for tx").
    pub fn to_tx_request(&self) -> NetifTxRequest {
        let mut slot = [0u8; NetifTxRequest::SIZE];
        slot[..Self::SIZE].copy_from_slice(&self.to_bytes());
        NetifTxRequest::from_bytes(&slot)
    }

    /// Reads a transmit-ring slot as extra info.
    pub fn from_tx_request(slot: &NetifTxRequest) -> Self {
        Self::from_prefix(&slot.to_bytes()).unwrap_or_default()
    }

    /// The receive-response slot carrying this extra info (same 8 bytes).
    pub fn to_rx_response(&self) -> NetifRxResponse {
        NetifRxResponse::from_bytes(&self.to_bytes())
    }

    /// Reads a receive-response slot as extra info.
    pub fn from_rx_response(slot: &NetifRxResponse) -> Self {
        Self::from_bytes(&slot.to_bytes())
    }
}

/// `struct xen_netif_ctrl_request`: a control-ring request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenNetifCtrlRequest {
    /// Request identifier, echoed in the response.
    pub id: u16,
    /// `type`: `XEN_NETIF_CTRL_TYPE_*`.
    pub type_: u16,
    /// Arguments, by type.
    pub data: [u32; 3],
}

pod_bytes!(XenNetifCtrlRequest { id, type_, data });

/// `struct xen_netif_ctrl_response`: a control-ring response (responses may come in
/// any order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenNetifCtrlResponse {
    /// The request's `id`.
    pub id: u16,
    /// The request's `type`.
    pub type_: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Result, by type and status.
    pub data: u32,
}

pod_bytes!(XenNetifCtrlResponse {
    id,
    type_,
    status,
    data
});

/// `struct xen_netif_gref`: an entry of the table passed by
/// `XEN_NETIF_CTRL_TYPE_{ADD,DEL}_GREF_MAPPING`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenNetifGref {
    /// `ref`: grant reference (in).
    pub ref_: GrantRef,
    /// `XEN_NETIF_CTRLF_GREF_*` (in).
    pub flags: u16,
    /// `XEN_NETIF_CTRL_STATUS_*` (out; `DEL_GREF_MAPPING` only).
    pub status: u16,
}

pod_bytes!(XenNetifGref {
    ref_,
    flags,
    status
});

// "Ring slot size is 12 octets": the tx request fills it, the response uses 4.
const _: () = assert!(core::mem::size_of::<NetifTxRequest>() == 12);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, offset) == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, flags) == 6);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, size) == 10);
const _: () = assert!(core::mem::size_of::<NetifTxResponse>() == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxResponse, status) == 2);
// "Ring slot size is 8 octets" on the receive ring.
const _: () = assert!(core::mem::size_of::<NetifRxRequest>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxRequest, gref) == 4);
const _: () = assert!(core::mem::size_of::<NetifRxResponse>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, offset) == 2);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, flags) == 4);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, status) == 6);
// "limited to 8 octets" so that it fits a tx request and an rx response slot.
const _: () = assert!(core::mem::size_of::<NetifExtraInfo>() == 8);
const _: () = assert!(core::mem::align_of::<NetifExtraInfo>() == 2);
const _: () = assert!(core::mem::offset_of!(NetifExtraInfo, u) == 2);
const _: () = assert!(NetifExtraInfo::SIZE <= NetifTxRequest::SIZE);
const _: () = assert!(NetifExtraInfo::SIZE == NetifRxResponse::SIZE);
const _: () = assert!(core::mem::size_of::<XenNetifCtrlRequest>() == 16);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlRequest, data) == 4);
const _: () = assert!(core::mem::size_of::<XenNetifCtrlResponse>() == 12);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, status) == 4);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, data) == 8);
const _: () = assert!(core::mem::size_of::<XenNetifGref>() == 8);
const _: () = assert!(core::mem::offset_of!(XenNetifGref, flags) == 4);
const _: () = assert!(core::mem::offset_of!(XenNetifGref, status) == 6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_and_rx_layouts_match_the_header_diagrams() {
        let tx = NetifTxRequest {
            gref: 0x0403_0201,
            offset: 0x0605,
            flags: NETTXF_MORE_DATA | NETTXF_CSUM_BLANK,
            id: 0x0a09,
            size: 0x0c0b,
        };
        assert_eq!(tx.to_bytes(), [1, 2, 3, 4, 5, 6, 5, 0, 9, 10, 11, 12]);
        assert_eq!(NetifTxRequest::from_bytes(&tx.to_bytes()), tx);

        let rsp = NetifTxResponse {
            id: 7,
            status: NETIF_RSP_DROPPED,
        };
        assert_eq!(rsp.to_bytes(), [7, 0, 0xfe, 0xff]);

        let rx = NetifRxRequest {
            id: 0x0201,
            pad: 0,
            gref: 0x0807_0605,
        };
        assert_eq!(rx.to_bytes(), [1, 2, 0, 0, 5, 6, 7, 8]);

        let rx_rsp = NetifRxResponse {
            id: 1,
            offset: 2,
            flags: NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO,
            status: 1514,
        };
        let b = rx_rsp.to_bytes();
        assert_eq!(&b[4..6], &9u16.to_le_bytes());
        assert_eq!(&b[6..8], &1514i16.to_le_bytes());
    }

    #[test]
    fn extra_info_overlays_tx_and_rx_slots() {
        let gso = NetifExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0, 0);
        assert_eq!(
            gso.to_bytes(),
            [XEN_NETIF_EXTRA_TYPE_GSO, 0, 0xa8, 0x05, 1, 0, 0, 0]
        );
        assert_eq!(gso.gso_size(), 1448);
        assert_eq!(gso.gso_type(), XEN_NETIF_GSO_TYPE_TCPV4);
        assert_eq!(gso.gso_features(), 0);
        assert!(!gso.has_more());

        let slot = gso.to_tx_request();
        assert_eq!(&slot.to_bytes()[8..], &[0; 4]);
        assert_eq!(NetifExtraInfo::from_tx_request(&slot), gso);
        assert_eq!(NetifExtraInfo::from_rx_response(&gso.to_rx_response()), gso);

        let mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
        let m = NetifExtraInfo::mcast(
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
            mac,
            XEN_NETIF_EXTRA_FLAG_MORE,
        );
        assert_eq!(m.mcast_addr(), mac);
        assert!(m.has_more());

        let h = NetifExtraInfo::hash(
            XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT,
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ as u8,
            0x1234_5678,
            0,
        );
        assert_eq!(h.to_bytes(), [4, 0, 1, 1, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(h.hash_type(), 1);
        assert_eq!(h.hash_algorithm(), 1);
        assert_eq!(h.hash_value(), 0x1234_5678);
        assert_eq!(XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, 2);
    }

    #[test]
    fn control_ring_layouts() {
        let req = XenNetifCtrlRequest {
            id: 1,
            type_: XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            data: [0x10, 40, 0],
        };
        let b = req.to_bytes();
        assert_eq!(&b[2..4], &3u16.to_le_bytes());
        assert_eq!(&b[4..8], &0x10u32.to_le_bytes());
        let rsp = XenNetifCtrlResponse {
            id: 1,
            type_: XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            status: XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
            data: 0,
        };
        assert_eq!(XenNetifCtrlResponse::from_bytes(&rsp.to_bytes()), rsp);
        let g = XenNetifGref {
            ref_: 9,
            flags: XEN_NETIF_CTRLF_GREF_READONLY,
            status: 0,
        };
        assert_eq!(g.to_bytes(), [9, 0, 0, 0, 1, 0, 0, 0]);
    }
}
