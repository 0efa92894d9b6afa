//! The snapshot format: a versioned header, a CRC32 over the body, and a postcard body holding
//! the handler's negotiated state, each vring's state and the device's own blob.
//!
//! Layout: magic `b"VUSNAP\0\x01"` | format version u32 LE | body length u64 LE | crc32 u32 LE
//! | body. A truncated, corrupt or newer-version snapshot is refused before anything changes.

use serde::{Deserialize, Serialize};

/// File magic.
pub const MAGIC: [u8; 8] = *b"VUSNAP\0\x01";
/// Format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Largest body we will decode (guards against a hostile length field).
pub const MAX_BODY: u64 = 64 << 20;

/// One vring as snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringSnapshot {
    /// Ring size (0: never configured).
    pub size: u16,
    /// Guest physical addresses of descriptor table, available ring and used ring.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Next available index.
    pub next_avail: u16,
    /// Next used index.
    pub next_used: u16,
    /// SET_VRING_ENABLE state.
    pub enabled: bool,
    /// The ring was running when snapshotted.
    pub started: bool,
}

/// Everything a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Device name ("block"); restore into another kind of device is refused.
    pub device: String,
    /// Negotiated virtio features.
    pub acked_features: u64,
    /// Negotiated protocol features.
    pub acked_protocol_features: u64,
    /// Device status byte (SET_STATUS).
    pub status: u8,
    /// Per-vring state.
    pub vrings: Vec<VringSnapshot>,
    /// The device's own state.
    pub device_state: Vec<u8>,
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than its header or its announced body.
    #[error("snapshot is truncated ({have} of {need} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not a snapshot.
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    /// Written by a newer build.
    #[error("snapshot format version {0} is newer than this build understands ({FORMAT_VERSION})")]
    NewerVersion(u32),
    /// Version 0 or otherwise unusable.
    #[error("snapshot format version {0} is not supported")]
    BadVersion(u32),
    /// Body length beyond what we accept.
    #[error("snapshot body of {0} bytes is too large")]
    TooLarge(u64),
    /// CRC mismatch.
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// The body does not decode.
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    /// Trailing bytes after the body.
    #[error("snapshot has {0} trailing bytes")]
    Trailing(usize),
    /// Snapshot of another device kind.
    #[error("snapshot is of a {found} device, this is a {expected} device")]
    WrongDevice {
        /// Device kind in the snapshot.
        found: String,
        /// This device's kind.
        expected: String,
    },
    /// The device rejected its state.
    #[error("device refused the snapshot: {0}")]
    Device(String),
    /// Encoding failed.
    #[error("cannot encode snapshot: {0}")]
    Encode(String),
}

/// Serialises a snapshot.
pub fn encode(body: &SnapshotBody) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_allocvec(body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses and checks a snapshot.
pub fn decode(data: &[u8]) -> Result<SnapshotBody, SnapshotError> {
    if data.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            have: data.len(),
            need: HEADER_LEN,
        });
    }
    if data[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut u4 = [0u8; 4];
    let mut u8b = [0u8; 8];
    u4.copy_from_slice(&data[8..12]);
    let version = u32::from_le_bytes(u4);
    if version > FORMAT_VERSION {
        return Err(SnapshotError::NewerVersion(version));
    }
    if version == 0 {
        return Err(SnapshotError::BadVersion(version));
    }
    u8b.copy_from_slice(&data[12..20]);
    let len = u64::from_le_bytes(u8b);
    if len > MAX_BODY {
        return Err(SnapshotError::TooLarge(len));
    }
    u4.copy_from_slice(&data[20..24]);
    let stored = u32::from_le_bytes(u4);
    let need = HEADER_LEN + len as usize;
    if data.len() < need {
        return Err(SnapshotError::Truncated {
            have: data.len(),
            need,
        });
    }
    if data.len() > need {
        return Err(SnapshotError::Trailing(data.len() - need));
    }
    let payload = &data[HEADER_LEN..need];
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotBody {
        SnapshotBody {
            device: "block".into(),
            acked_features: 0x1_3000_0000,
            acked_protocol_features: 0x1f,
            status: 0xf,
            vrings: vec![VringSnapshot {
                size: 256,
                next_avail: 7,
                started: true,
                ..Default::default()
            }],
            device_state: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(decode(&encode(&b).expect("encode")).expect("decode"), b);
    }

    #[test]
    fn refuses_damage() {
        let data = encode(&sample()).expect("encode");
        assert!(matches!(
            decode(&data[..10]),
            Err(SnapshotError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&data[..data.len() - 1]),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut bad = data.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(SnapshotError::BadMagic));
        let mut newer = data.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            decode(&newer),
            Err(SnapshotError::NewerVersion(FORMAT_VERSION + 1))
        );
        let mut flipped = data.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode(&flipped),
            Err(SnapshotError::Checksum { .. })
        ));
        let mut long = data.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(SnapshotError::Trailing(1)));
        let mut huge = data;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(SnapshotError::TooLarge(u64::MAX)));
    }
}
