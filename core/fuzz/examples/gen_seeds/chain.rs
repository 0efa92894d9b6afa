//! Seeds of `descriptor_chain`: chains of every shape, and chains that break a rule.

use vu_core_fuzz::{descriptor, ChainInput, CHAIN_REGIONS};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

fn chain_memory(descs: &[(u64, [u8; 16])], len: usize) -> Vec<u8> {
    let mut mem = vec![0u8; len];
    for (addr, d) in descs {
        let a = *addr as usize;
        mem[a..a + 16].copy_from_slice(d);
    }
    mem
}

/// A queue of 8 with its table at 0, reading and writing 64 bytes.
fn base() -> ChainInput {
    ChainInput {
        queue_size: 8,
        head: 0,
        indirect_ok: true,
        table: 0,
        offset: 0,
        len: 64,
        memory: vec![],
    }
}

/// `base` over `len` bytes of memory holding `descs`.
fn c(descs: &[(u64, [u8; 16])], len: usize) -> ChainInput {
    ChainInput {
        memory: chain_memory(descs, len),
        ..base()
    }
}

/// Every group of seeds.
pub(crate) fn seeds() -> Vec<(&'static str, ChainInput)> {
    [shape_seeds(), rule_seeds()].concat()
}

/// Well-formed chains, direct and indirect.
fn shape_seeds() -> Vec<(&'static str, ChainInput)> {
    vec![
        ("single", c(&[(0, descriptor(0x200, 32, 0, 0))], 0x240)),
        (
            "read_write",
            c(
                &[
                    (0, descriptor(0x200, 16, NEXT, 1)),
                    (16, descriptor(0x300, 64, NEXT | WRITE, 2)),
                    (32, descriptor(0x400, 8, WRITE, 0)),
                ],
                0x410,
            ),
        ),
        (
            "indirect",
            c(
                &[
                    (0, descriptor(0x100, 32, INDIRECT, 0)),
                    (0x100, descriptor(0x200, 16, NEXT, 1)),
                    (0x110, descriptor(0x300, 16, WRITE, 0)),
                ],
                0x310,
            ),
        ),
        (
            "odd_queue_size_offset",
            ChainInput {
                queue_size: 7,
                head: 6,
                offset: 10,
                len: 1000,
                ..c(
                    &[
                        (96, descriptor(0x200, 40, NEXT, 2)),
                        (32, descriptor(0x300, 40, WRITE | NEXT, 3)),
                        (48, descriptor(0x340, 40, WRITE, 0)),
                    ],
                    0x380,
                )
            },
        ),
        (
            "region_1_table",
            ChainInput {
                table: CHAIN_REGIONS[1].0 as u32,
                memory: vec![],
                ..base()
            },
        ),
        (
            "region_1_buffer",
            c(
                &[(0, descriptor(CHAIN_REGIONS[1].0 + 0x100, 64, WRITE, 0))],
                0x10,
            ),
        ),
    ]
}

/// Chains that break a rule.
fn rule_seeds() -> Vec<(&'static str, ChainInput)> {
    vec![
        (
            "indirect_not_negotiated",
            ChainInput {
                indirect_ok: false,
                ..c(
                    &[
                        (0, descriptor(0x100, 16, INDIRECT, 0)),
                        (0x100, descriptor(0x200, 16, 0, 0)),
                    ],
                    0x210,
                )
            },
        ),
        (
            "nested_indirect",
            c(
                &[
                    (0, descriptor(0x100, 16, INDIRECT, 0)),
                    (0x100, descriptor(0x180, 16, INDIRECT, 0)),
                ],
                0x190,
            ),
        ),
        (
            "loop",
            c(
                &[
                    (0, descriptor(0x200, 16, NEXT, 1)),
                    (16, descriptor(0x200, 16, NEXT, 0)),
                ],
                0x210,
            ),
        ),
        (
            "next_out_of_range",
            c(&[(0, descriptor(0x200, 16, NEXT, 9))], 0x210),
        ),
        (
            "read_after_write",
            c(
                &[
                    (0, descriptor(0x200, 16, NEXT | WRITE, 1)),
                    (16, descriptor(0x300, 16, 0, 0)),
                ],
                0x310,
            ),
        ),
        (
            "crosses_into_hole",
            c(
                &[(
                    0,
                    descriptor(CHAIN_REGIONS[0].1 as u64 - 0x100, 0x200, WRITE, 0),
                )],
                0x10,
            ),
        ),
        (
            "zero_length_and_huge",
            c(
                &[
                    (0, descriptor(0x200, 0, NEXT, 1)),
                    (16, descriptor(0x200, u32::MAX, NEXT | WRITE, 2)),
                    (32, descriptor(0x300, 16, WRITE, 0)),
                ],
                0x310,
            ),
        ),
    ]
}
