//! Building the device, its config space, cache mode, resize and snapshots.

use std::fs::File;

use virtio_bindings::virtio_blk::*;
use vu_core::VhostUserDevice;

use super::super::{BlockConfig, BlockDevice, BlockError, Engine};

fn image(size: u64) -> File {
    let f = tempfile::tempfile().expect("tempfile");
    f.set_len(size).expect("set_len");
    f
}

fn cfg(file: File) -> BlockConfig {
    BlockConfig {
        file,
        read_only: false,
        direct: false,
        num_queues: 2,
        queue_size: 128,
        serial: Some("abc".into()),
        logical_block_size: 512,
        engine: Engine::Sync,
        writeback: true,
        cpus: 0,
    }
}

fn config(dev: &BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; dev.config_size()];
    dev.read_config(0, &mut b);
    b
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

#[test]
fn engine_names() {
    assert_eq!(
        "io_uring".parse::<Engine>().expect("io_uring"),
        Engine::IoUring
    );
    assert_eq!("sync".parse::<Engine>().expect("sync"), Engine::Sync);
    assert!(matches!(
        "aio".parse::<Engine>(),
        Err(BlockError::UnknownEngine(_))
    ));
    assert_eq!(Engine::IoUring.to_string(), "io_uring");
    assert_eq!(Engine::Sync.to_string(), "sync");
    assert_eq!(Engine::default(), Engine::IoUring);
}

#[test]
fn new_refuses_bad_images_and_options() {
    let err = |c: BlockConfig| BlockDevice::new(c).expect_err("must be refused");
    assert!(matches!(err(cfg(image(0))), BlockError::EmptyImage));
    assert!(matches!(
        err(cfg(image(1000))),
        BlockError::NotSectorMultiple(1000)
    ));
    let mut c = cfg(image(4096 + 512));
    c.logical_block_size = 4096;
    assert!(matches!(err(c), BlockError::NotBlockMultiple { .. }));
    let mut c = cfg(image(4096));
    c.logical_block_size = 1024;
    assert!(matches!(err(c), BlockError::BadBlockSize(1024)));
    let mut c = cfg(image(4096));
    c.serial = Some("x".repeat(21));
    let e = err(c);
    assert!(matches!(e, BlockError::SerialTooLong(21)), "{e}");
    for qs in [0u16, 2, 100, 65535] {
        let mut c = cfg(image(4096));
        c.queue_size = qs;
        assert!(matches!(err(c), BlockError::BadQueueSize(q) if q == qs));
    }
    let mut c = cfg(image(4096));
    c.num_queues = 0;
    assert!(matches!(err(c), BlockError::ZeroQueues));
    let dir = tempfile::tempdir().expect("tempdir");
    let e = err(cfg(File::open(dir.path()).expect("open dir")));
    assert!(matches!(e, BlockError::NotAFileOrBlockDevice), "{e}");
    // A read-only descriptor for a read-write device.
    let path = dir.path().join("img");
    std::fs::write(&path, vec![0u8; 4096]).expect("write");
    let e = err(cfg(File::open(&path).expect("open ro")));
    assert!(matches!(e, BlockError::OpenedReadOnly), "{e}");
    let mut c = cfg(File::open(&path).expect("open ro"));
    c.read_only = true;
    let dev = BlockDevice::new(c).expect("read-only device");
    assert_eq!(dev.capacity_sectors(), 8);
    assert!(dev.device_features() & (1 << VIRTIO_BLK_F_RO) != 0);
    // Messages say what is wrong.
    assert!(BlockError::NotSectorMultiple(1000)
        .to_string()
        .contains("multiple of 512"));
    assert!(BlockError::IoUringUnavailable("x".into())
        .to_string()
        .contains("--engine sync"));
}

#[test]
fn config_space_layout() {
    let mut c = cfg(image(1 << 20));
    c.logical_block_size = 4096;
    c.num_queues = 3;
    let dev = BlockDevice::new(c).expect("device");
    assert_eq!(dev.config_size(), 60);
    assert_eq!(dev.name(), "block");
    assert_eq!(dev.num_queues(), 3);
    assert_eq!(dev.max_queue_size(), 128);
    let b = config(&dev);
    assert_eq!(u64::from_le_bytes(b[0..8].try_into().expect("8")), 2048);
    assert_eq!(u32_at(&b, 8), 0, "size_max");
    assert_eq!(u32_at(&b, 12), 126, "seg_max");
    assert_eq!(&b[16..20], &[0; 4], "geometry");
    assert_eq!(u32_at(&b, 20), 4096, "blk_size");
    assert_eq!(b[24], 0, "physical_block_exp");
    assert_eq!(b[25], 0, "alignment_offset");
    assert_eq!(u16_at(&b, 26), 1, "min_io_size");
    assert_eq!(u32_at(&b, 28), 0, "opt_io_size");
    assert_eq!(b[32], 1, "writeback");
    assert_eq!(b[33], 0);
    assert_eq!(u16_at(&b, 34), 3, "num_queues");
    assert_eq!(u32_at(&b, 36), 1 << 22, "max_discard_sectors");
    assert_eq!(u32_at(&b, 40), 16, "max_discard_seg");
    assert_eq!(u32_at(&b, 44), 8, "discard_sector_alignment");
    assert_eq!(u32_at(&b, 48), 1 << 22, "max_write_zeroes_sectors");
    assert_eq!(u32_at(&b, 52), 16, "max_write_zeroes_seg");
    assert_eq!(b[56], 1, "write_zeroes_may_unmap");
    assert_eq!(&b[57..60], &[0; 3]);
    // Partial reads see the same bytes.
    let mut part = [0u8; 2];
    dev.read_config(34, &mut part);
    assert_eq!(part, [3, 0]);
    let f = dev.device_features();
    for bit in [
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_BLK_F_MQ,
    ] {
        assert!(f & (1 << bit) != 0, "feature {bit}");
    }
    assert!(f & (1 << VIRTIO_BLK_F_RO) == 0);
}

#[test]
fn only_the_writeback_byte_is_writable() {
    let dev = BlockDevice::new(cfg(image(4096))).expect("device");
    dev.write_config(32, &[0]).expect("writeback = 0");
    assert_eq!(config(&dev)[32], 0);
    assert!(dev.disk.write_through());
    dev.write_config(32, &[1]).expect("writeback = 1");
    assert_eq!(config(&dev)[32], 1);
    assert!(!dev.disk.write_through());
    assert!(dev.write_config(32, &[2]).is_err());
    assert!(dev.write_config(32, &[0, 0]).is_err());
    assert!(dev.write_config(0, &[0; 8]).is_err());
    assert!(dev.write_config(33, &[0]).is_err());
    assert_eq!(config(&dev)[32], 1);
    // Without FLUSH negotiated the device writes through whatever the byte says.
    dev.set_features(1 << VIRTIO_BLK_F_CONFIG_WCE)
        .expect("features");
    assert!(dev.disk.write_through());
    assert_eq!(config(&dev)[32], 0);
    // Reset restores the initial mode.
    dev.reset();
    assert_eq!(config(&dev)[32], 1);
    assert!(!dev.disk.write_through());
}

#[test]
fn resize_grows_the_file_and_the_capacity() {
    let dev = BlockDevice::new(cfg(image(4096))).expect("device");
    assert_eq!(dev.capacity_sectors(), 8);
    dev.resize(8192).expect("grow");
    assert_eq!(dev.capacity_sectors(), 16);
    assert_eq!(dev.disk.file.metadata().expect("stat").len(), 8192);
    assert_eq!(&config(&dev)[0..8], &16u64.to_le_bytes());
    assert!(matches!(
        dev.resize(4096),
        Err(BlockError::ResizeShrink { .. })
    ));
    assert!(matches!(
        dev.resize(8192 + 100),
        Err(BlockError::ResizeMisaligned { .. })
    ));
    dev.resize(8192).expect("same size is fine");
    dev.flush().expect("flush");
}

#[test]
fn snapshot_restore() {
    let dev = BlockDevice::new(cfg(image(4096))).expect("device");
    let feats = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_CONFIG_WCE);
    dev.set_features(feats).expect("features");
    dev.write_config(32, &[0]).expect("writeback 0");
    let snap = dev.snapshot().expect("snapshot");
    dev.sleep().expect("sleep");

    let other = BlockDevice::new(cfg(image(4096))).expect("device");
    assert_eq!(config(&other)[32], 1);
    other.restore(&snap).expect("restore");
    assert_eq!(config(&other)[32], 0);
    assert!(other.disk.write_through());

    let bigger = BlockDevice::new(cfg(image(8192))).expect("device");
    let e = bigger.restore(&snap).expect_err("capacity mismatch");
    assert!(e.to_string().contains("8 sectors"), "{e}");
    assert!(bigger.restore(&[0xff; 3]).is_err());
}

#[test]
fn io_uring_engine_starts_queues() {
    let mut c = cfg(image(4096));
    c.engine = Engine::IoUring;
    match BlockDevice::new(c) {
        Ok(dev) => {
            let h = dev.start_queue(0).expect("queue 0");
            assert_eq!(h.event_fds().len(), 1);
            assert!(dev.start_queue(2).is_err());
        }
        // Sandboxes may forbid io_uring; the error must say what to do.
        Err(e) => assert!(e.to_string().contains("--engine sync"), "{e}"),
    }
}
