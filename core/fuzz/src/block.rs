//! `block_request`: a batch of virtio-blk requests (virtio 1.2, 5.2.6) for the block device,
//! each with its header values, data length and the shape of its descriptor chain.

use crate::{take, u32_at, u64_at};

/// At most this many requests per input.
pub const MAX_BLOCK_REQUESTS: usize = 16;
/// Data bytes of one request are clamped to this (twice the size from which the io_uring
/// engine may hand a copy to the kernel's workers).
pub const MAX_BLOCK_DATA: u32 = 128 << 10;

/// Which device serves the batch (`BlockInput::variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockVariant {
    /// Synchronous engine, read-write.
    Sync = 0,
    /// Synchronous engine, read-only disk.
    ReadOnly = 1,
    /// io_uring engine.
    Uring = 2,
    /// io_uring engine that may hand large copies to the kernel's workers.
    UringOffload = 3,
}

/// Bits of `BlockRequest::layout`: how the chain is built.
pub mod layout {
    /// Bits 0-1: the data in 1 to 4 descriptors.
    pub const PIECES: u8 = 3;
    /// The 16-byte header in two descriptors.
    pub const SPLIT_HEADER: u8 = 1 << 2;
    /// The status byte at the end of the last data descriptor (when the data is writable).
    pub const STATUS_IN_DATA: u8 = 1 << 3;
    /// No status byte.
    pub const NO_STATUS: u8 = 1 << 4;
    /// The chain in an indirect table.
    pub const INDIRECT: u8 = 1 << 5;
    /// Hostile: the data device-writable where the request reads it, and the other way round.
    pub const FLIP_DATA: u8 = 1 << 6;
    /// Hostile: the header device-writable.
    pub const WRITABLE_HEADER: u8 = 1 << 7;
}

/// One request of a `block_request` input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockRequest {
    /// Header: request type.
    pub ty: u32,
    /// Header: sector.
    pub sector: u64,
    /// Bytes of data buffers (at most `MAX_BLOCK_DATA`; see `data_len`).
    pub len: u32,
    /// `layout` bits.
    pub layout: u8,
    /// Contents of device-readable data (shorter than `len`: the rest is a pattern). Empty
    /// when the data is device-writable.
    pub data: Vec<u8>,
}

/// A `block_request` input.
///
/// Layout: `flags: u8`, then requests, each `type: u32 | sector: u64 | len: u32 | layout: u8`
/// followed, when its data is device-readable, by up to `len` data bytes, all LE. `flags`:
/// bits 0-1 the variant, bit 2 EVENT_IDX, bit 3 INDIRECT_DESC, bit 4 write-back cache, bit
/// 5 FLUSH negotiated, bit 6 buffers start just below the boundary between the two guest
/// memory regions (so the first ones straddle it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInput {
    /// The device.
    pub variant: BlockVariant,
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
    /// Write-back cache (else write-through).
    pub writeback: bool,
    /// VIRTIO_BLK_F_FLUSH negotiated.
    pub flush: bool,
    /// Buffers straddle the guest memory region boundary.
    pub straddle: bool,
    /// The batch, made available together.
    pub requests: Vec<BlockRequest>,
}

/// Whether a request of type `ty` naturally has device-writable data (IN, GET_ID).
pub fn data_writable(ty: u32) -> bool {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN};
    matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID)
}

impl BlockRequest {
    /// Whether the device reads this request's data (after `FLIP_DATA`).
    pub fn data_readable(&self) -> bool {
        data_writable(self.ty) == (self.layout & layout::FLIP_DATA != 0)
    }
}

/// A request's data length from its 4 input bytes: the value itself up to
/// `MAX_BLOCK_DATA`; above, a length spread over every scale (bits 0-16 shifted right by bits
/// 17-20), so that random bytes give small requests as often as large ones.
fn data_len(v: u32) -> u32 {
    if v <= MAX_BLOCK_DATA {
        v
    } else {
        (v & 0x1_ffff) >> ((v >> 17) & 0xf)
    }
}

/// Reads a `block_request` input; never fails.
pub fn parse_block(mut data: &[u8]) -> BlockInput {
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let variant = match flags & 3 {
        0 => BlockVariant::Sync,
        1 => BlockVariant::ReadOnly,
        2 => BlockVariant::Uring,
        _ => BlockVariant::UringOffload,
    };
    let mut requests = Vec::new();
    while !data.is_empty() && requests.len() < MAX_BLOCK_REQUESTS {
        let mut r = BlockRequest {
            ty: u32_at(&mut data),
            sector: u64_at(&mut data),
            len: data_len(u32_at(&mut data)),
            layout: take(&mut data, 1).first().copied().unwrap_or(0),
            data: Vec::new(),
        };
        if r.data_readable() {
            r.data = take(&mut data, r.len as usize).to_vec();
        }
        requests.push(r);
    }
    BlockInput {
        variant,
        event_idx: flags & 1 << 2 != 0,
        indirect: flags & 1 << 3 != 0,
        writeback: flags & 1 << 4 != 0,
        flush: flags & 1 << 5 != 0,
        straddle: flags & 1 << 6 != 0,
        requests,
    }
}

/// Writes a `block_request` input. A request's readable data shorter than its `len` is read
/// back with the next request's bytes as data: only the last request may be short (the rest
/// of its data is then the pattern).
pub fn encode_block(input: &BlockInput) -> Vec<u8> {
    let bit = |b: bool, n: u8| if b { 1u8 << n } else { 0 };
    let mut out = vec![
        input.variant as u8
            | bit(input.event_idx, 2)
            | bit(input.indirect, 3)
            | bit(input.writeback, 4)
            | bit(input.flush, 5)
            | bit(input.straddle, 6),
    ];
    for r in &input.requests {
        out.extend_from_slice(&r.ty.to_le_bytes());
        out.extend_from_slice(&r.sector.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.push(r.layout);
        if r.data_readable() {
            out.extend_from_slice(&r.data[..r.data.len().min(r.len as usize)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip() {
        let input = BlockInput {
            variant: BlockVariant::UringOffload,
            event_idx: true,
            indirect: false,
            writeback: true,
            flush: true,
            straddle: true,
            requests: vec![
                BlockRequest {
                    ty: 1,
                    sector: 8,
                    len: 1024,
                    layout: layout::SPLIT_HEADER | 2,
                    data: vec![5; 1024],
                },
                BlockRequest {
                    ty: 0,
                    sector: u64::MAX,
                    len: 512,
                    layout: layout::INDIRECT,
                    data: vec![],
                },
            ],
        };
        assert_eq!(parse_block(&encode_block(&input)), input);
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..40 {
            let _ = parse_block(&vec![0xffu8; n]);
        }
    }
}
