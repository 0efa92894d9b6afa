//! The feature bits we offer and the `virtio_blk_config` space (virtio 1.2, 5.2.4).

use virtio_bindings::virtio_blk::*;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::disk::{Disk, SECTOR_SIZE};

/// Size of the config space we expose.
pub(crate) const CONFIG_SIZE: usize = 60;
/// Offset of the only driver-writable field, `writeback`.
pub(crate) const WRITEBACK_OFFSET: usize = 32;

/// Limits for DISCARD and WRITE_ZEROES, in 512-byte sectors and segments per request.
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub(crate) const MAX_DISCARD_SEG: u32 = 16;
pub(crate) const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
pub(crate) const MAX_WRITE_ZEROES_SEG: u32 = 16;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Device feature bits for a disk that is (or is not) read-only.
pub(crate) fn device_features(read_only: bool) -> u64 {
    let mut f = bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_TOPOLOGY)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_CONFIG_WCE)
        | bit(VIRTIO_BLK_F_MQ);
    if read_only {
        f |= bit(VIRTIO_BLK_F_RO);
    } else {
        f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    f
}

/// Whether `features` has `VIRTIO_BLK_F_*` bit `b`.
pub(crate) fn has(features: u64, b: u32) -> bool {
    features & bit(b) != 0
}

/// `struct virtio_blk_config`, little-endian, no padding.
#[derive(Debug, Default, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct BlkConfig {
    capacity: U64,
    size_max: U32,
    seg_max: U32,
    cylinders: U16,
    heads: u8,
    sectors: u8,
    blk_size: U32,
    physical_block_exp: u8,
    alignment_offset: u8,
    min_io_size: U16,
    opt_io_size: U32,
    writeback: u8,
    unused0: u8,
    num_queues: U16,
    max_discard_sectors: U32,
    max_discard_seg: U32,
    discard_sector_alignment: U32,
    max_write_zeroes_sectors: U32,
    max_write_zeroes_seg: U32,
    write_zeroes_may_unmap: u8,
    unused1: [u8; 3],
}

const _: () = assert!(std::mem::size_of::<BlkConfig>() == CONFIG_SIZE);

/// The config space as it reads now (capacity and writeback are live).
pub(crate) fn config_bytes(disk: &Disk, num_queues: u16, queue_size: u16) -> [u8; CONFIG_SIZE] {
    let lbs = disk.logical_block_size;
    let exp = (disk.physical_block_size / lbs).trailing_zeros() as u8;
    let in_blocks = |bytes: u32| bytes / lbs;
    let c = BlkConfig {
        capacity: disk.capacity().into(),
        seg_max: u32::from(queue_size.saturating_sub(2)).into(),
        blk_size: lbs.into(),
        physical_block_exp: exp,
        min_io_size: u16::try_from(in_blocks(disk.io_min).max(1 << exp))
            .unwrap_or(u16::MAX)
            .into(),
        opt_io_size: in_blocks(disk.io_opt).into(),
        writeback: u8::from(disk.writeback()),
        num_queues: num_queues.into(),
        max_discard_sectors: MAX_DISCARD_SECTORS.into(),
        max_discard_seg: MAX_DISCARD_SEG.into(),
        discard_sector_alignment: (lbs / SECTOR_SIZE as u32).into(),
        max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS.into(),
        max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG.into(),
        write_zeroes_may_unmap: 1,
        ..Default::default()
    };
    let mut out = [0u8; CONFIG_SIZE];
    out.copy_from_slice(c.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_read_only() {
        let rw = device_features(false);
        let ro = device_features(true);
        assert!(has(rw, VIRTIO_BLK_F_DISCARD) && has(rw, VIRTIO_BLK_F_WRITE_ZEROES));
        assert!(!has(rw, VIRTIO_BLK_F_RO));
        assert!(has(ro, VIRTIO_BLK_F_RO) && !has(ro, VIRTIO_BLK_F_DISCARD));
        for f in [rw, ro] {
            assert!(has(f, VIRTIO_BLK_F_FLUSH) && has(f, VIRTIO_BLK_F_CONFIG_WCE));
            assert!(!has(f, VIRTIO_BLK_F_SIZE_MAX) && !has(f, VIRTIO_BLK_F_GEOMETRY));
        }
    }
}
