//! Seeds of `block_request`: every request type on every device variant, the chain layouts
//! a driver uses, and hostile ones.

use vu_core_fuzz::{layout, BlockInput, BlockRequest, BlockVariant};

const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;
const GET_ID: u32 = 8;
const GET_LIFETIME: u32 = 10;
const DISCARD: u32 = 11;
const WRITE_ZEROES: u32 = 13;
const UNMAP: u32 = 1;
/// Sectors of the target's image (512 KiB).
const CAPACITY: u64 = 1024;

fn req(ty: u32, sector: u64, len: u32) -> BlockRequest {
    BlockRequest {
        ty,
        sector,
        len,
        layout: 0,
        data: Vec::new(),
    }
}

/// An OUT request with `len` bytes of a recognizable pattern.
fn write(sector: u64, len: u32) -> BlockRequest {
    BlockRequest {
        data: (0..len).map(|i| (i % 251) as u8).collect(),
        ..req(OUT, sector, len)
    }
}

/// An OUT request whose data the target makes up (its pattern): only as the last request.
fn big_write(sector: u64, len: u32) -> BlockRequest {
    req(OUT, sector, len)
}

/// A DISCARD or WRITE_ZEROES request with these (sector, sectors, flags) segments.
fn ranges(ty: u32, segs: &[(u64, u32, u32)]) -> BlockRequest {
    let mut data = Vec::new();
    for &(sector, n, flags) in segs {
        data.extend_from_slice(&sector.to_le_bytes());
        data.extend_from_slice(&n.to_le_bytes());
        data.extend_from_slice(&flags.to_le_bytes());
    }
    BlockRequest {
        len: data.len() as u32,
        data,
        ..req(ty, 0, 0)
    }
}

fn with_layout(mut r: BlockRequest, layout: u8) -> BlockRequest {
    r.layout = layout;
    r
}

fn batch(variant: BlockVariant, requests: Vec<BlockRequest>) -> BlockInput {
    BlockInput {
        variant,
        event_idx: false,
        indirect: false,
        writeback: true,
        flush: true,
        straddle: false,
        requests,
    }
}

/// Every group of seeds.
pub(crate) fn seeds() -> Vec<(&'static str, BlockInput)> {
    [request_seeds(), layout_seeds(), engine_seeds()].concat()
}

/// Each request type, in range and out of it.
fn request_seeds() -> Vec<(&'static str, BlockInput)> {
    use BlockVariant::*;
    vec![
        ("read", batch(Sync, vec![req(IN, 0, 4096)])),
        (
            "write_then_read_elsewhere",
            batch(Sync, vec![write(8, 1024), req(IN, 100, 1024)]),
        ),
        (
            "flush_get_id",
            batch(
                Sync,
                vec![req(FLUSH, 0, 0), req(GET_ID, 0, 20), req(GET_ID, 0, 8)],
            ),
        ),
        (
            "discard_write_zeroes",
            batch(
                Sync,
                vec![
                    ranges(DISCARD, &[(0, 8, 0), (64, 16, 0)]),
                    ranges(WRITE_ZEROES, &[(128, 8, UNMAP), (256, 8, 0)]),
                    ranges(DISCARD, &[(0, 8, UNMAP)]),
                ],
            ),
        ),
        (
            "read_only",
            batch(
                ReadOnly,
                vec![
                    req(IN, 0, 512),
                    write(0, 512),
                    ranges(DISCARD, &[(0, 1, 0)]),
                ],
            ),
        ),
        (
            "out_of_range",
            batch(
                Sync,
                vec![
                    req(IN, CAPACITY - 1, 1024),
                    req(IN, 0, 100),
                    req(IN, u64::MAX, 512),
                    write(CAPACITY, 512),
                ],
            ),
        ),
        (
            "unsupported",
            batch(Sync, vec![req(GET_LIFETIME, 0, 48), req(99, 0, 0)]),
        ),
    ]
}

/// Chain layouts a driver uses, and hostile ones.
fn layout_seeds() -> Vec<(&'static str, BlockInput)> {
    use layout::*;
    use BlockVariant::*;
    vec![
        (
            "layouts",
            BlockInput {
                indirect: true,
                straddle: true,
                ..batch(
                    Sync,
                    vec![
                        with_layout(req(IN, 0, 8192), SPLIT_HEADER | 3),
                        with_layout(req(IN, 16, 4096), STATUS_IN_DATA | 1),
                        with_layout(write(32, 2048), INDIRECT | 2),
                        with_layout(req(GET_ID, 0, 20), INDIRECT | STATUS_IN_DATA),
                    ],
                )
            },
        ),
        (
            "hostile",
            batch(
                Sync,
                vec![
                    with_layout(req(IN, 0, 512), FLIP_DATA),
                    with_layout(write(0, 512), WRITABLE_HEADER),
                    with_layout(req(IN, 0, 512), NO_STATUS),
                    with_layout(write(0, 512), NO_STATUS),
                    with_layout(req(IN, 0, 512), INDIRECT),
                ],
            ),
        ),
    ]
}

/// The io_uring engine: batches, large copies handed to the kernel, write-through, EVENT_IDX.
fn engine_seeds() -> Vec<(&'static str, BlockInput)> {
    use BlockVariant::*;
    vec![
        (
            "uring_batch",
            BlockInput {
                event_idx: true,
                ..batch(
                    Uring,
                    vec![
                        req(IN, 0, 4096),
                        write(64, 4096),
                        req(FLUSH, 0, 0),
                        req(IN, 200, 512),
                    ],
                )
            },
        ),
        (
            "uring_offload_large",
            batch(
                UringOffload,
                vec![
                    req(IN, 0, 128 << 10),
                    req(IN, 512, 64 << 10),
                    req(FLUSH, 0, 0),
                    big_write(768, 64 << 10),
                ],
            ),
        ),
        (
            "writethrough",
            BlockInput {
                writeback: false,
                flush: false,
                ..batch(
                    Uring,
                    vec![write(0, 4096), ranges(WRITE_ZEROES, &[(8, 8, 0)])],
                )
            },
        ),
    ]
}
