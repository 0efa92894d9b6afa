//! The `net_tx` input: the negotiated header shape and a list of transmit chains described
//! by their shape (how many descriptors, readable or writable, how long, where in guest
//! memory, direct or in an indirect table, loops and bad heads), which `build` lays out in
//! guest memory as a driver would.
//!
//! Layout: `features: u8 | flags: u8 | qsize: u8 | seed: u8`, then chains: `ctl: u8`
//! followed by `(ctl & 7) + 1` descriptors of 4 bytes each, `flags: u8 | place: u8 |
//! len: u16 LE`. `features & 3`: 0 VERSION_1, 1 MRG_RXBUF only, 2 neither (10-byte header),
//! 3 VERSION_1 with every offload. `flags`: bit 0 INDIRECT_DESC negotiated, bit 1 EVENT_IDX.
//! Queue size `4 << (qsize % 7)`. `ctl`: bit 3 an indirect table, bit 4 an out-of-range
//! head, bit 5 the last descriptor points back at the first (a loop), bit 6 the head is
//! offered twice. Descriptor `flags`: bit 0 device-writable, bit 1 INDIRECT set on it, bit 2
//! length + 64 KiB. `place % 8`: 0-4 fresh bytes in region A, 5 region B, 6 straddling the
//! end of region A, 7 outside guest memory. Everything is read leniently: any byte string
//! is an input.

/// Guest memory: region A and region B with a hole between (guest address, length).
pub const NET_REGIONS: [(u64, usize); 2] = [(0, 0x80000), (0x100000, 0x20000)];
/// The descriptor table (room for the largest queue).
pub const DESC_TABLE: u64 = 0;
/// Indirect tables, 8 descriptors apart.
pub const INDIRECT_BASE: u64 = 0x4000;
/// The available ring.
pub const AVAIL: u64 = 0x6000;
/// The used ring.
pub const USED: u64 = 0x7000;
/// Buffers in region A from here to its end; region B is all buffers.
pub const DATA_A: u64 = 0x10000;
/// Most chains per input.
pub const MAX_CHAINS: usize = 64;
/// Descriptor flags (virtio 1.2, 2.7.5).
pub const F_NEXT: u16 = 1;
/// Device-writable.
pub const F_WRITE: u16 = 2;
/// An indirect table.
pub const F_INDIRECT: u16 = 4;

/// One descriptor's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescSpec {
    /// Bit 0 writable, bit 1 INDIRECT, bit 2 + 64 KiB.
    pub flags: u8,
    /// Where its buffer lies (see the module documentation).
    pub place: u8,
    /// Its length (plus 64 KiB with flag bit 2).
    pub len: u16,
}

/// One chain's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSpec {
    /// Bit 3 indirect, bit 4 bad head, bit 5 loop, bit 6 offered twice.
    pub ctl: u8,
    /// Its descriptors (1 to 8).
    pub descs: Vec<DescSpec>,
}

/// A `net_tx` input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTxInput {
    /// Header shape and offloads (`& 3`).
    pub features: u8,
    /// Bit 0 INDIRECT_DESC, bit 1 EVENT_IDX.
    pub flags: u8,
    /// Queue size `4 << (qsize % 7)`.
    pub qsize: u8,
    /// Unused (it varied buffer contents before the target wrote a fixed pattern); kept so
    /// that inputs keep their layout.
    pub seed: u8,
    /// The chains, in the order they are offered.
    pub chains: Vec<ChainSpec>,
}

impl NetTxInput {
    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        4 << (self.qsize % 7)
    }
}

/// The most bytes `parse_net_tx` reads: the 4-byte header and `MAX_CHAINS` chains of 8
/// descriptors (1 + 8 * 4 bytes each). Bytes after it are never read, so `.ci/fuzz.sh`
/// gives libFuzzer this as `-max_len`.
pub const MAX_NET_TX_INPUT: usize = 4 + MAX_CHAINS * 33;

/// Reads a `net_tx` input; never fails.
pub fn parse_net_tx(data: &[u8]) -> NetTxInput {
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let mut input = NetTxInput {
        features: b(0),
        flags: b(1),
        qsize: b(2),
        seed: b(3),
        chains: Vec::new(),
    };
    let mut rest = data.get(4..).unwrap_or(&[]);
    while let Some((&ctl, tail)) = rest.split_first() {
        if input.chains.len() == MAX_CHAINS {
            break;
        }
        let n = usize::from(ctl & 7) + 1;
        let mut descs = Vec::with_capacity(n);
        let mut t = tail;
        for _ in 0..n {
            let d = t.get(..4).unwrap_or(t);
            let g = |i: usize| d.get(i).copied().unwrap_or(0);
            descs.push(DescSpec {
                flags: g(0),
                place: g(1),
                len: u16::from_le_bytes([g(2), g(3)]),
            });
            t = t.get(4..).unwrap_or(&[]);
        }
        input.chains.push(ChainSpec { ctl, descs });
        rest = t;
    }
    input
}

/// Writes a `net_tx` input.
pub fn encode_net_tx(input: &NetTxInput) -> Vec<u8> {
    let mut out = vec![input.features, input.flags, input.qsize, input.seed];
    for c in &input.chains {
        let n = c.descs.len().clamp(1, 8);
        out.push((c.ctl & !7) | (n as u8 - 1));
        for d in c.descs.iter().take(n) {
            out.push(d.flags);
            out.push(d.place);
            out.extend_from_slice(&d.len.to_le_bytes());
        }
    }
    out
}

/// A descriptor as laid out in a table: address, length, flags, next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl RawDesc {
    /// The 16 bytes of a split-ring descriptor.
    pub fn bytes(&self) -> [u8; 16] {
        crate::descriptor(self.addr, self.len, self.flags, self.next)
    }
}

/// What goes into guest memory at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// An indirect table.
    Bytes(Vec<u8>),
    /// One descriptor of the ring's table.
    Desc([u8; 16]),
}

/// What a driver would write for `input`: writes into guest memory (descriptor tables) and
/// the available ring's entries. Buffer contents are the target's: it writes a fixed
/// pattern into the buffer areas once (each 4-byte word its own guest address), which the
/// device only reads.
#[derive(Debug, Default)]
pub struct Layout {
    /// What to write where, in order (later ones win).
    pub writes: Vec<(u64, Fill)>,
    /// Available ring entries, in order.
    pub avail: Vec<u16>,
}

/// Lays `input` out in guest memory (see the module documentation).
pub fn build(input: &NetTxInput) -> Layout {
    let size = input.queue_size();
    let mut out = Layout::default();
    let (a_end, b_start, b_len) = (
        NET_REGIONS[0].1 as u64,
        NET_REGIONS[1].0,
        NET_REGIONS[1].1 as u64,
    );
    let mut cursor_a = DATA_A;
    let mut cursor_b = b_start;
    let mut next_slot: u16 = 0;
    for (ci, c) in input.chains.iter().enumerate() {
        let n = c.descs.len().clamp(1, 8) as u16;
        let indirect = c.ctl & 8 != 0;
        let mut descs = Vec::with_capacity(usize::from(n));
        for d in c.descs.iter().take(usize::from(n)) {
            let len = u32::from(d.len) + if d.flags & 4 != 0 { 0x10000 } else { 0 };
            let addr = match d.place % 8 {
                0..=4 => {
                    if cursor_a + u64::from(len) > a_end {
                        cursor_a = DATA_A;
                    }
                    let a = cursor_a;
                    cursor_a = (cursor_a + u64::from(len) + 7) & !7;
                    a
                }
                5 => {
                    if cursor_b + u64::from(len) > b_start + b_len {
                        cursor_b = b_start;
                    }
                    let a = cursor_b;
                    cursor_b = (cursor_b + u64::from(len) + 7) & !7;
                    a
                }
                6 => a_end - u64::from(d.len % 64) - 1,
                _ => 0x200000 + u64::from(d.len),
            };
            let mut flags = 0;
            if d.flags & 1 != 0 {
                flags |= F_WRITE;
            }
            if d.flags & 2 != 0 {
                flags |= F_INDIRECT;
            }
            descs.push(RawDesc {
                addr,
                len,
                flags,
                next: 0,
            });
        }
        // Link them: in a table of their own (indirect) or at consecutive slots of the ring.
        let first = if indirect { 0 } else { next_slot % size };
        for i in 0..n {
            let idx = if indirect { i } else { (first + i) % size };
            let last = i + 1 == n;
            if !last {
                descs[usize::from(i)].flags |= F_NEXT;
                descs[usize::from(i)].next = if indirect { i + 1 } else { (idx + 1) % size };
            } else if c.ctl & 0x20 != 0 {
                descs[usize::from(i)].flags |= F_NEXT;
                descs[usize::from(i)].next = first;
            }
        }
        let head = next_slot % size;
        if indirect {
            let table = INDIRECT_BASE + 128 * (ci as u64 % 64);
            let bytes: Vec<u8> = descs.iter().flat_map(|d| d.bytes()).collect();
            out.writes.push((table, Fill::Bytes(bytes)));
            let d = RawDesc {
                addr: table,
                len: 16 * u32::from(n),
                flags: F_INDIRECT,
                next: 0,
            };
            out.writes
                .push((DESC_TABLE + 16 * u64::from(head), Fill::Desc(d.bytes())));
            next_slot = next_slot.wrapping_add(1);
        } else {
            for (i, d) in descs.iter().enumerate() {
                let idx = (first + i as u16) % size;
                out.writes
                    .push((DESC_TABLE + 16 * u64::from(idx), Fill::Desc(d.bytes())));
            }
            next_slot = next_slot.wrapping_add(n);
        }
        let offered = if c.ctl & 0x10 != 0 {
            size + u16::from(c.ctl & 7)
        } else {
            head
        };
        out.avail.push(offered);
        if c.ctl & 0x40 != 0 {
            out.avail.push(offered);
        }
    }
    out.avail.truncate(usize::from(size));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_round_trip_and_anything_parses() {
        let input = NetTxInput {
            features: 3,
            flags: 1,
            qsize: 2,
            seed: 9,
            chains: vec![ChainSpec {
                ctl: 8 | 1,
                descs: vec![
                    DescSpec {
                        flags: 0,
                        place: 0,
                        len: 12,
                    },
                    DescSpec {
                        flags: 0,
                        place: 5,
                        len: 60,
                    },
                ],
            }],
        };
        let bytes = encode_net_tx(&input);
        assert_eq!(parse_net_tx(&bytes), input);
        let _ = build(&parse_net_tx(&[0xff; 300]));
        let _ = build(&parse_net_tx(&[]));
    }

    #[test]
    fn nothing_after_max_input_is_read() {
        // Chains of 8 descriptors (ctl 7) all the way: every byte up to the maximum is read.
        let mut longest = vec![7u8; MAX_NET_TX_INPUT];
        let full = parse_net_tx(&longest);
        assert_eq!(full.chains.len(), MAX_CHAINS);
        *longest.last_mut().unwrap() = 8;
        assert_ne!(parse_net_tx(&longest), full);
        longest.extend_from_slice(&[0xff; 100]);
        assert_eq!(parse_net_tx(&longest).chains.len(), MAX_CHAINS);
        assert_eq!(
            parse_net_tx(&longest),
            parse_net_tx(&longest[..MAX_NET_TX_INPUT])
        );
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let data: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(parse_net_tx(&data), parse_net_tx(&data[..MAX_NET_TX_INPUT]));
        }
    }
}
