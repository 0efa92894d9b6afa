//! `descriptor_chain`: guest memory, a queue size and a head for `Chain::walk`.

use crate::{take, u16_at, u32_at};

/// Guest memory of `descriptor_chain`: two 16 KiB regions with a hole between them (small,
/// so that resetting and comparing all of guest memory on every run stays cheap).
pub const CHAIN_REGIONS: [(u64, usize); 2] = [(0, 0x4000), (0x8000, 0x4000)];
/// Descriptor table addresses are masked to this (region 0, hole, region 1, beyond).
pub const CHAIN_TABLE_MASK: u32 = 0xffff;
/// Queue sizes are taken modulo one more than this: 2048 descriptors fill guest memory, so
/// a larger queue walks no other code, only longer loops (a chain may run for the whole
/// queue size before it is refused as too long, which at 65535 takes milliseconds).
pub const CHAIN_MAX_QUEUE_SIZE: u16 = 2048;

/// A `descriptor_chain` input.
///
/// Layout: `queue_size: u16 (modulo CHAIN_MAX_QUEUE_SIZE + 1) | head: u16 | flags: u8 (bit 0: indirect allowed) |
/// table: u32 (masked with `CHAIN_TABLE_MASK`) | offset: u32 | len: u16 | memory`, all LE. `memory` is
/// written at guest address 0 (region 0) and what does not fit continues in region 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainInput {
    /// Queue size handed to `Chain::walk` (any value up to `CHAIN_MAX_QUEUE_SIZE`, even 0 or
    /// not a power of two).
    pub queue_size: u16,
    /// Head index.
    pub head: u16,
    /// INDIRECT_DESC negotiated.
    pub indirect_ok: bool,
    /// Descriptor table guest address (masked with `CHAIN_TABLE_MASK`).
    pub table: u32,
    /// Offset for `read_at` / `write_at`.
    pub offset: u32,
    /// Length for `read_at` / `write_at`.
    pub len: u16,
    /// Guest memory contents.
    pub memory: Vec<u8>,
}

/// Reads a `descriptor_chain` input; never fails.
pub fn parse_chain(mut data: &[u8]) -> ChainInput {
    ChainInput {
        queue_size: u16_at(&mut data) % (CHAIN_MAX_QUEUE_SIZE + 1),
        head: u16_at(&mut data),
        indirect_ok: take(&mut data, 1).first().is_some_and(|b| b & 1 != 0),
        table: u32_at(&mut data) & CHAIN_TABLE_MASK,
        offset: u32_at(&mut data),
        len: u16_at(&mut data),
        memory: data.to_vec(),
    }
}

/// Writes a `descriptor_chain` input.
pub fn encode_chain(c: &ChainInput) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&c.queue_size.to_le_bytes());
    out.extend_from_slice(&c.head.to_le_bytes());
    out.push(c.indirect_ok as u8);
    out.extend_from_slice(&c.table.to_le_bytes());
    out.extend_from_slice(&c.offset.to_le_bytes());
    out.extend_from_slice(&c.len.to_le_bytes());
    out.extend_from_slice(&c.memory);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_round_trip() {
        let c = ChainInput {
            queue_size: 8,
            head: 3,
            indirect_ok: true,
            table: 0x1000,
            offset: 4,
            len: 100,
            memory: vec![7; 32],
        };
        assert_eq!(parse_chain(&encode_chain(&c)), c);
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..20 {
            let _ = parse_chain(&vec![0xffu8; n]);
        }
    }
}
