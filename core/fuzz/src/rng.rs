//! `rng_request`: a batch of entropy requests for the rng device (virtio 1.2, 5.4), each a
//! chain of any shape (device-writable, device-readable and out-of-memory buffers of any
//! length, in the ring or an indirect table), over one of several sources and rate limits.

use crate::ring::{DescSpec, Kind};
use crate::{take, u16_at, u32_at};

/// At most this many requests per input.
pub const MAX_RNG_REQUESTS: usize = 32;
/// At most this many descriptors per request.
pub const MAX_RNG_DESCS: usize = 8;
/// Largest buffer (twice what the device fills per request).
pub const MAX_RNG_BUF: u32 = 128 << 10;
/// Times the target refills a pipe or socket source the device waits for.
pub const MAX_RNG_REFILLS: usize = 4;

/// The source and rate limit serving the batch (`RngInput::variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngVariant {
    /// A memfd (a regular file: never blocks, ends at EOF), no limit.
    File = 0,
    /// A memfd, at most 1000 bytes per (long) period.
    FileLimited = 1,
    /// A memfd, at most 1 byte per period.
    FileTiny = 2,
    /// A memfd, at most 100 000 bytes per period (more than one request takes).
    FileWide = 3,
    /// A pipe (non-blocking, polled), no limit.
    Pipe = 4,
    /// A pipe, at most 3000 bytes per period.
    PipeLimited = 5,
    /// A pipe whose writer is gone: end of file at once.
    PipeEof = 6,
    /// A stream socket, no limit.
    Socket = 7,
}

impl RngVariant {
    /// Every variant, by number.
    pub const ALL: [RngVariant; 8] = [
        RngVariant::File,
        RngVariant::FileLimited,
        RngVariant::FileTiny,
        RngVariant::FileWide,
        RngVariant::Pipe,
        RngVariant::PipeLimited,
        RngVariant::PipeEof,
        RngVariant::Socket,
    ];

    /// Whether the source is a file (reads are never short before its end).
    pub fn is_file(self) -> bool {
        matches!(
            self,
            RngVariant::File
                | RngVariant::FileLimited
                | RngVariant::FileTiny
                | RngVariant::FileWide
        )
    }

    /// The rate limit in bytes per period, if any.
    pub fn max_bytes(self) -> Option<u64> {
        match self {
            RngVariant::FileLimited => Some(1000),
            RngVariant::FileTiny => Some(1),
            RngVariant::FileWide => Some(100_000),
            RngVariant::PipeLimited => Some(3000),
            _ => None,
        }
    }
}

/// Queue sizes by the two bits of `flags` (QEMU's vhost-user-rng uses 4).
pub const RNG_QUEUE_SIZES: [u16; 4] = [4, 16, 128, 256];

/// One request: its descriptors and whether they sit in an indirect table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RngRequest {
    /// In an indirect table.
    pub indirect: bool,
    /// The chain (empty: one empty descriptor).
    pub descs: Vec<DescSpec>,
}

/// An `rng_request` input.
///
/// Layout: `flags: u8 | avail: u32 | refill: u16`, then requests, each `shape: u8` (bits
/// 0-2: descriptors - 1, bit 3: indirect) and per descriptor `spec: u16` (bits 14-15: kind,
/// 0 or 1 writable, 2 readable, 3 writable outside guest memory; bits 0-13: length, see
/// `desc_len`), all LE. `flags`: bits 0-2 the variant, bit 3 EVENT_IDX, bit 4 INDIRECT_DESC,
/// bit 5 buffers straddle the guest memory regions, bits 6-7 the queue size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngInput {
    /// Source and limit.
    pub variant: RngVariant,
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub indirect: bool,
    /// Buffers start just below the region boundary.
    pub straddle: bool,
    /// Index into `RNG_QUEUE_SIZES`.
    pub queue_size: u8,
    /// Bytes the source holds at the start (a file: before its end; a pipe or socket: what
    /// is written into it, as far as it takes).
    pub avail: u32,
    /// Bytes written into a pipe or socket source each time the device waits for it.
    pub refill: u16,
    /// The batch.
    pub requests: Vec<RngRequest>,
}

/// A length from its 14-bit code: bits 12-13 all set, a large buffer of (bits 0-11 + 1) *
/// 32 bytes, up to `MAX_RNG_BUF`; otherwise the code's low 12 bits (0 to 4095 bytes). Most
/// random codes give small buffers, which cost little to fill and check.
pub fn desc_len(code: u16) -> u32 {
    let c = u32::from(code & 0x3fff);
    if c >> 12 == 3 {
        ((c & 0xfff) + 1) * 32
    } else {
        c & 0xfff
    }
}

/// The code of a length (inverse of `desc_len` where it can be: lengths above 4095 are
/// rounded down to 32 bytes).
pub fn len_code(len: u32) -> u16 {
    if len < 0x1000 {
        len as u16
    } else {
        (0x3000 | (len.min(MAX_RNG_BUF) / 32 - 1)) as u16
    }
}

/// Reads an `rng_request` input; never fails.
pub fn parse_rng(mut data: &[u8]) -> RngInput {
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let avail = u32_at(&mut data);
    let refill = u16_at(&mut data);
    let mut requests = Vec::new();
    while !data.is_empty() && requests.len() < MAX_RNG_REQUESTS {
        let shape = take(&mut data, 1)[0];
        let n = usize::from(shape & 7) + 1;
        let mut descs = Vec::with_capacity(n);
        for _ in 0..n {
            if data.is_empty() {
                break;
            }
            let spec = u16_at(&mut data);
            let kind = match spec >> 14 {
                0 | 1 => Kind::Writable,
                2 => Kind::Readable,
                _ => Kind::Outside,
            };
            descs.push(DescSpec {
                kind,
                len: desc_len(spec),
            });
        }
        requests.push(RngRequest {
            indirect: shape & 8 != 0,
            descs,
        });
    }
    RngInput {
        variant: RngVariant::ALL[usize::from(flags & 7)],
        event_idx: flags & 1 << 3 != 0,
        indirect: flags & 1 << 4 != 0,
        straddle: flags & 1 << 5 != 0,
        queue_size: flags >> 6,
        avail,
        refill,
        requests,
    }
}

/// Writes an `rng_request` input. A request without descriptors is written with one (an
/// empty readable one).
pub fn encode_rng(input: &RngInput) -> Vec<u8> {
    let bit = |b: bool, n: u8| if b { 1u8 << n } else { 0 };
    let mut out = vec![
        input.variant as u8
            | bit(input.event_idx, 3)
            | bit(input.indirect, 4)
            | bit(input.straddle, 5)
            | (input.queue_size & 3) << 6,
    ];
    out.extend_from_slice(&input.avail.to_le_bytes());
    out.extend_from_slice(&input.refill.to_le_bytes());
    for r in &input.requests {
        let empty = [DescSpec {
            kind: Kind::Readable,
            len: 0,
        }];
        let descs = if r.descs.is_empty() {
            &empty[..]
        } else {
            &r.descs[..r.descs.len().min(MAX_RNG_DESCS)]
        };
        out.push((descs.len() - 1) as u8 | bit(r.indirect, 3));
        for d in descs {
            let kind: u16 = match d.kind {
                Kind::Writable => 0,
                Kind::Readable => 2,
                Kind::Outside => 3,
            };
            out.extend_from_slice(&(kind << 14 | len_code(d.len)).to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(len: u32) -> DescSpec {
        DescSpec {
            kind: Kind::Writable,
            len,
        }
    }

    #[test]
    fn rng_round_trip() {
        let input = RngInput {
            variant: RngVariant::PipeLimited,
            event_idx: true,
            indirect: true,
            straddle: false,
            queue_size: 2,
            avail: 70000,
            refill: 512,
            requests: vec![
                RngRequest {
                    indirect: false,
                    descs: vec![w(64)],
                },
                RngRequest {
                    indirect: true,
                    descs: vec![
                        DescSpec {
                            kind: Kind::Readable,
                            len: 16,
                        },
                        w(MAX_RNG_BUF),
                        DescSpec {
                            kind: Kind::Outside,
                            len: 1,
                        },
                    ],
                },
            ],
        };
        assert_eq!(parse_rng(&encode_rng(&input)), input);
    }

    #[test]
    fn lengths() {
        for len in [0, 1, 4095, 4096, 8192, 65536, 65568, MAX_RNG_BUF] {
            assert_eq!(desc_len(len_code(len)), len, "{len}");
        }
        assert_eq!(desc_len(0x3fff), MAX_RNG_BUF);
        assert_eq!(desc_len(0xffff), MAX_RNG_BUF);
    }

    #[test]
    fn short_inputs_parse() {
        for n in 0..24 {
            let _ = parse_rng(&vec![0xffu8; n]);
        }
    }
}
