//! Seeds for `net_tx`: frames as drivers send them (header and frame in one buffer or two, a
//! 64 KiB TSO frame over several buffers, an indirect table) and the malformed shapes the
//! device must drop (short header, too long, writable buffers, outside memory, a loop, bad
//! and repeated heads).

use vu_core_fuzz::net_tx::{ChainSpec, DescSpec, NetTxInput};

fn d(flags: u8, place: u8, len: u16) -> DescSpec {
    DescSpec { flags, place, len }
}

fn chain(ctl: u8, descs: &[DescSpec]) -> ChainSpec {
    ChainSpec {
        ctl: ctl & !7,
        descs: descs.to_vec(),
    }
}

fn input(features: u8, flags: u8, chains: Vec<ChainSpec>) -> NetTxInput {
    NetTxInput {
        features,
        flags,
        qsize: 6,
        seed: 0x5a,
        chains,
    }
}

pub fn seeds() -> Vec<(&'static str, NetTxInput)> {
    let frame = |n: u16| vec![d(0, 0, 12 + n)];
    vec![
        ("one_buffer", input(0, 0, vec![chain(0, &frame(60))])),
        (
            "header_apart",
            input(0, 2, vec![chain(0, &[d(0, 0, 12), d(0, 5, 1514)])]),
        ),
        (
            "legacy_header",
            input(2, 0, vec![chain(0, &[d(0, 0, 10), d(0, 0, 60)])]),
        ),
        (
            "tso_64k",
            input(
                3,
                1,
                vec![chain(
                    0,
                    &[d(0, 0, 12), d(0, 0, 32768), d(0, 5, 32768), d(0, 0, 13)],
                )],
            ),
        ),
        (
            "indirect",
            input(
                0,
                1,
                vec![chain(8, &[d(0, 0, 12), d(0, 0, 100), d(0, 5, 200)])],
            ),
        ),
        (
            "many_frames",
            input(
                1,
                2,
                (0..40).map(|i| chain(0, &frame(60 + i * 37))).collect(),
            ),
        ),
        ("short_header", input(0, 0, vec![chain(0, &[d(0, 0, 11)])])),
        (
            "too_long",
            input(0, 0, vec![chain(0, &[d(0, 0, 12), d(4, 5, 100)])]),
        ),
        (
            "writable_only",
            input(0, 0, vec![chain(0, &[d(1, 0, 1500)])]),
        ),
        (
            "read_after_write",
            input(
                0,
                0,
                vec![chain(0, &[d(0, 0, 12), d(1, 0, 64), d(0, 0, 64)])],
            ),
        ),
        (
            "outside_memory",
            input(0, 0, vec![chain(0, &[d(0, 0, 12), d(0, 7, 64)])]),
        ),
        (
            "straddles_end",
            input(0, 0, vec![chain(0, &[d(0, 0, 12), d(0, 6, 200)])]),
        ),
        (
            "loop",
            input(0, 0, vec![chain(0x20, &[d(0, 0, 12), d(0, 0, 64)])]),
        ),
        (
            "nested_indirect",
            input(0, 1, vec![chain(8, &[d(2, 0, 32)])]),
        ),
        (
            "bad_and_repeated_heads",
            input(
                0,
                0,
                vec![
                    chain(0x10, &frame(60)),
                    chain(0x40, &frame(70)),
                    chain(0, &frame(80)),
                ],
            ),
        ),
    ]
}
