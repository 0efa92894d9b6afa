//! The vsock packet header (virtio 1.2, 5.10.6 "Device Operation"): its wire layout, the
//! operation and type constants, and the checks every packet from a guest or a sibling passes
//! before the device acts on it.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HEADER_LEN: usize = 44;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// Largest payload one packet carries between siblings (the Linux driver's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE; larger packets are refused).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// Packet operations (`op`).
pub mod op {
    /// Not a valid operation.
    pub const INVALID: u16 = 0;
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset / refused.
    pub const RST: u16 = 3;
    /// Half or full close (`flags`: [`super::SHUTDOWN_RCV`], [`super::SHUTDOWN_SEND`]).
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// The sender's credit (buf_alloc, fwd_cnt).
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Socket types (`type`).
pub mod ty {
    /// Stream sockets.
    pub const STREAM: u16 = 1;
    /// Seqpacket sockets (VIRTIO_VSOCK_F_SEQPACKET).
    pub const SEQPACKET: u16 = 2;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Event queue: VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// `struct virtio_vsock_hdr` as it lies in memory (little endian, no padding).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct WireHeader {
    src_cid: U64,
    dst_cid: U64,
    src_port: U32,
    dst_port: U32,
    len: U32,
    ty: U16,
    op: U16,
    flags: U32,
    buf_alloc: U32,
    fwd_cnt: U32,
}

const _: () = assert!(std::mem::size_of::<WireHeader>() == HEADER_LEN);

/// A packet header in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`ty`]).
    pub ty: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// SHUTDOWN flags, or seqpacket EOM/EOR on RW.
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from that buffer (free running).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `b`; `None` if `b` is shorter.
    pub fn decode(b: &[u8]) -> Option<Header> {
        let (w, _) = WireHeader::read_from_prefix(b).ok()?;
        Some(Header {
            src_cid: w.src_cid.get(),
            dst_cid: w.dst_cid.get(),
            src_port: w.src_port.get(),
            dst_port: w.dst_port.get(),
            len: w.len.get(),
            ty: w.ty.get(),
            op: w.op.get(),
            flags: w.flags.get(),
            buf_alloc: w.buf_alloc.get(),
            fwd_cnt: w.fwd_cnt.get(),
        })
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let w = WireHeader {
            src_cid: self.src_cid.into(),
            dst_cid: self.dst_cid.into(),
            src_port: self.src_port.into(),
            dst_port: self.dst_port.into(),
            len: self.len.into(),
            ty: self.ty.into(),
            op: self.op.into(),
            flags: self.flags.into(),
            buf_alloc: self.buf_alloc.into(),
            fwd_cnt: self.fwd_cnt.into(),
        };
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(w.as_bytes());
        out
    }

    /// An RST answering `self` (source and destination swapped, no credit, same type).
    pub fn rst_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ty: self.ty,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than a header.
    #[error("packet is shorter than its header")]
    Short,
    /// The source CID is not the sender's.
    #[error("source CID {0} is not the sender's")]
    Spoofed(u64),
    /// A type the device does not speak.
    #[error("unknown socket type {0}")]
    BadType(u16),
    /// An operation outside 1..=7.
    #[error("unknown operation {0}")]
    BadOp(u16),
    /// `len` does not match the payload (more than is there, payload on a control packet,
    /// or more than a packet may carry).
    #[error("length field {len} does not fit the {avail} payload bytes")]
    BadLen {
        /// The header's `len`.
        len: u32,
        /// Payload bytes actually present.
        avail: u32,
    },
}

/// Whether `cid` may be a guest's CID: not 0, 1 (reserved), 2 (host), and below
/// 0xffffffff (reserved, and the upper 32 bits are zero).
pub fn valid_guest_cid(cid: u64) -> bool {
    cid > HOST_CID && cid < u64::from(u32::MAX)
}

/// Checks a header against the payload bytes that came with it. `src_cid` is the only CID
/// the sender may use; `seqpacket`: whether VIRTIO_VSOCK_F_SEQPACKET was negotiated.
/// `exact`: the payload must be exactly `len` bytes (a sibling's message), otherwise it may
/// be longer (a guest's buffer; the rest is ignored, as the spec allows). How much payload a
/// packet may carry is the receiver's business (credit, [`MAX_PAYLOAD`] between siblings).
pub fn check(
    h: &Header,
    avail: u32,
    src_cid: u64,
    seqpacket: bool,
    exact: bool,
) -> Result<(), PacketError> {
    if h.src_cid != src_cid {
        return Err(PacketError::Spoofed(h.src_cid));
    }
    match h.ty {
        ty::STREAM => {}
        ty::SEQPACKET if seqpacket => {}
        t => return Err(PacketError::BadType(t)),
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op) {
        return Err(PacketError::BadOp(h.op));
    }
    let bad_len = if h.op == op::RW {
        h.len > avail || (exact && h.len != avail)
    } else {
        h.len != 0 || (exact && avail != 0)
    };
    if bad_len {
        return Err(PacketError::BadLen { len: h.len, avail });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1025,
            dst_port: 52,
            len: 5,
            ty: ty::STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[36..40], &65536u32.to_le_bytes());
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(Header::decode(&b[..43]), None);
        let mut longer = b.to_vec();
        longer.extend_from_slice(b"hello");
        assert_eq!(Header::decode(&longer), Some(h));
    }

    #[test]
    fn checks() {
        let h = sample();
        assert_eq!(check(&h, 5, 3, false, true), Ok(()));
        assert_eq!(check(&h, 9, 3, false, false), Ok(()));
        assert_eq!(
            check(&h, 9, 3, false, true),
            Err(PacketError::BadLen { len: 5, avail: 9 })
        );
        assert_eq!(
            check(&h, 4, 3, false, false),
            Err(PacketError::BadLen { len: 5, avail: 4 })
        );
        assert_eq!(check(&h, 5, 4, false, true), Err(PacketError::Spoofed(3)));
        let s = Header {
            ty: ty::SEQPACKET,
            ..h
        };
        assert_eq!(check(&s, 5, 3, false, true), Err(PacketError::BadType(2)));
        assert_eq!(check(&s, 5, 3, true, true), Ok(()));
        for bad in [op::INVALID, 8, u16::MAX] {
            let b = Header { op: bad, ..h };
            assert_eq!(check(&b, 5, 3, false, true), Err(PacketError::BadOp(bad)));
        }
        let req = Header {
            op: op::REQUEST,
            len: 0,
            ..h
        };
        assert_eq!(check(&req, 0, 3, false, true), Ok(()));
        assert_eq!(check(&req, 100, 3, false, false), Ok(()));
        let req_len = Header { len: 1, ..req };
        assert!(check(&req_len, 1, 3, false, true).is_err());
        let big = Header {
            len: MAX_PAYLOAD + 1,
            ..h
        };
        assert!(check(&big, MAX_PAYLOAD + 1, 3, false, true).is_ok());
    }

    #[test]
    fn rst_reply_swaps_addresses() {
        let r = sample().rst_reply();
        assert_eq!((r.src_cid, r.dst_cid), (2, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1025));
        assert_eq!((r.op, r.len, r.buf_alloc, r.fwd_cnt), (op::RST, 0, 0, 0));
    }

    #[test]
    fn guest_cids() {
        for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX, 1 << 32] {
            assert!(!valid_guest_cid(bad), "{bad}");
        }
        for good in [3, 4, 1000, u64::from(u32::MAX) - 1] {
            assert!(valid_guest_cid(good), "{good}");
        }
    }
}
