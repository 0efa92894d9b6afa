//! Seeds of `rng_request`: what Linux's virtio_rng and QEMU's queue of four send, on every
//! source and limit, large and split buffers, and hostile chains.

use vu_core_fuzz::ring::{DescSpec, Kind};
use vu_core_fuzz::{RngInput, RngRequest, RngVariant};

fn w(len: u32) -> DescSpec {
    DescSpec {
        kind: Kind::Writable,
        len,
    }
}

fn r(len: u32) -> DescSpec {
    DescSpec {
        kind: Kind::Readable,
        len,
    }
}

fn out(len: u32) -> DescSpec {
    DescSpec {
        kind: Kind::Outside,
        len,
    }
}

fn req(descs: Vec<DescSpec>) -> RngRequest {
    RngRequest {
        indirect: false,
        descs,
    }
}

fn ind(descs: Vec<DescSpec>) -> RngRequest {
    RngRequest {
        indirect: true,
        descs,
    }
}

/// `n` one-buffer requests of `len` bytes each.
fn reads(n: usize, len: u32) -> Vec<RngRequest> {
    (0..n).map(|_| req(vec![w(len)])).collect()
}

fn batch(variant: RngVariant, queue_size: u8, requests: Vec<RngRequest>) -> RngInput {
    RngInput {
        variant,
        event_idx: false,
        indirect: false,
        straddle: false,
        queue_size,
        avail: 1 << 20,
        refill: 0,
        requests,
    }
}

/// Every group of seeds.
pub(crate) fn seeds() -> Vec<(&'static str, RngInput)> {
    [source_seeds(), shape_seeds()].concat()
}

/// The sources and limits, with the requests a guest sends.
fn source_seeds() -> Vec<(&'static str, RngInput)> {
    use RngVariant::*;
    vec![
        // Linux's hw_random reads 64 bytes at a time (rng_buffer), QEMU's queue has 4.
        ("linux_read", batch(File, 0, reads(1, 64))),
        ("queue_of_four", batch(File, 0, reads(4, 4096))),
        (
            "file_ends",
            RngInput {
                avail: 100,
                ..batch(File, 1, reads(3, 64))
            },
        ),
        ("limited", batch(FileLimited, 1, reads(6, 512))),
        ("tiny_limit", batch(FileTiny, 0, reads(3, 16))),
        ("wide_limit", batch(FileWide, 2, reads(4, 64 << 10))),
        (
            "pipe_refilled",
            RngInput {
                avail: 100,
                refill: 4096,
                ..batch(Pipe, 1, reads(6, 1024))
            },
        ),
        (
            "pipe_limited",
            RngInput {
                avail: 10_000,
                refill: 2000,
                ..batch(PipeLimited, 1, reads(4, 2048))
            },
        ),
        ("pipe_at_eof", batch(PipeEof, 0, reads(2, 64))),
        (
            "socket",
            RngInput {
                avail: 3000,
                refill: 1500,
                ..batch(Socket, 1, reads(4, 1024))
            },
        ),
        (
            "socket_empty",
            RngInput {
                avail: 0,
                refill: 64,
                ..batch(Socket, 0, reads(2, 64))
            },
        ),
    ]
}

/// Chain shapes: large and split buffers, indirect tables, hostile chains.
fn shape_seeds() -> Vec<(&'static str, RngInput)> {
    use RngVariant::*;
    vec![
        (
            "beyond_the_cap",
            batch(
                File,
                2,
                vec![req(vec![w(128 << 10)]), req(vec![w(40 << 10), w(40 << 10)])],
            ),
        ),
        (
            "split_buffers",
            batch(
                File,
                2,
                vec![req(vec![w(1); 8]), req(vec![w(100), w(0), w(3000)])],
            ),
        ),
        (
            "indirect",
            RngInput {
                indirect: true,
                event_idx: true,
                ..batch(
                    File,
                    1,
                    vec![ind(vec![w(512); 8]), ind(vec![w(64)]), req(vec![w(64)])],
                )
            },
        ),
        (
            "straddle",
            RngInput {
                straddle: true,
                ..batch(
                    File,
                    1,
                    vec![req(vec![w(8192)]), req(vec![w(5000), w(5000)])],
                )
            },
        ),
        (
            "hostile",
            batch(
                File,
                2,
                vec![
                    req(vec![r(64)]),
                    req(vec![w(64), r(64)]),
                    req(vec![r(16), w(64)]),
                    req(vec![out(64)]),
                    req(vec![w(64), out(4096)]),
                    req(vec![w(0)]),
                    req(vec![]),
                    ind(vec![w(64)]),
                    req(vec![w(64)]),
                ],
            ),
        ),
        (
            "hostile_limited",
            batch(
                PipeLimited,
                1,
                vec![
                    req(vec![r(8)]),
                    req(vec![out(8)]),
                    req(vec![w(5000)]),
                    req(vec![w(10)]),
                ],
            ),
        ),
    ]
}
