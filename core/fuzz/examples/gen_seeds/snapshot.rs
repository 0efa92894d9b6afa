//! Seeds of `snapshot_decode`: a typical snapshot, and damaged ones.

use vu_core::snapshot::{encode, SnapshotBody, VringSnapshot};

use crate::dispatch::{EVENT_IDX, PROTOCOL_ALL, PROTOCOL_FEATURES, VERSION_1};

/// Every seed.
pub(crate) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let typical = SnapshotBody {
        device: "block".into(),
        acked_features: VERSION_1 | PROTOCOL_FEATURES | EVENT_IDX,
        acked_protocol_features: PROTOCOL_ALL,
        status: 0xf,
        vrings: vec![
            VringSnapshot {
                size: 256,
                desc: 0x1000,
                avail: 0x2000,
                used: 0x3000,
                next_avail: 17,
                next_used: 15,
                enabled: true,
                started: true,
            },
            VringSnapshot::default(),
        ],
        device_state: b"capacity=2048".to_vec(),
    };
    let good = encode(&typical).expect("encode");
    let empty = encode(&SnapshotBody::default()).expect("encode");
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    vec![
        ("typical", good.clone()),
        ("empty", empty),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("bad_crc", bad_crc),
        ("newer_version", newer),
        ("bad_magic", bad_magic),
        ("header_only", good[..24].to_vec()),
    ]
}
