//! The block device's metrics count what the guest's requests did, through the core's real
//! handler and workers, for both engines: bytes only of requests that succeeded, errors by
//! virtio status. (Both engines; io_uring buffered and with O_DIRECT.)

mod common;

use std::fs::OpenOptions;

use common::{seg, Frontend};
use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::*;
use vu_core::{Metric, VhostUserDevice};
use vu_devices::block::{BlockConfig, BlockDevice, Engine};

const SIZE: u64 = 4 << 20;

fn value(m: &[Metric], full: &str, label: Option<(&str, &str)>) -> f64 {
    m.iter()
        .find(|x| {
            x.full_name() == full
                && label.is_none_or(|(k, v)| x.labels.contains(&(k.into(), v.into())))
        })
        .unwrap_or_else(|| panic!("no {full} {label:?} in {m:?}"))
        .value
}

fn counts(engine: Engine, direct: bool) {
    let image = NamedTempFile::new().expect("image");
    image.as_file().set_len(SIZE).expect("size image");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image.path())
        .expect("open image");
    let cfg = BlockConfig {
        file,
        read_only: false,
        direct,
        num_queues: 1,
        queue_size: 64,
        serial: None,
        logical_block_size: 512,
        engine,
        writeback: true,
        cpus: 0,
    };
    let dev = match BlockDevice::new(cfg) {
        Ok(d) => d,
        Err(e) if engine == Engine::IoUring => {
            eprintln!("skipping io_uring test: {e}");
            return;
        }
        Err(e) => panic!("device: {e}"),
    };
    let mut fe = Frontend::new(dev.clone(), 1, 64);
    fe.block(0, VIRTIO_BLK_T_OUT, 0, &[1; 4096], 0);
    fe.block(0, VIRTIO_BLK_T_OUT, 8, &[2; 8192], 0);
    fe.block(0, VIRTIO_BLK_T_IN, 0, &[], 4096);
    // Out of range: an error, neither a read nor bytes.
    fe.block(0, VIRTIO_BLK_T_IN, SIZE / 512, &[], 4096);
    fe.block(0, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    fe.block(0, VIRTIO_BLK_T_DISCARD, 0, &seg(64, 8, 0), 0);
    fe.block(0, 99, 0, &[], 512);

    let m = dev.metrics();
    for x in &m {
        x.validate().expect("valid");
    }
    assert_eq!(value(&m, "block_writes_total", None), 2.0);
    assert_eq!(value(&m, "block_reads_total", None), 1.0);
    assert_eq!(value(&m, "block_written_bytes_total", None), 12288.0);
    assert_eq!(value(&m, "block_read_bytes_total", None), 4096.0);
    assert_eq!(value(&m, "block_flushes_total", None), 1.0);
    assert_eq!(value(&m, "block_discards_total", None), 1.0);
    assert_eq!(
        value(&m, "block_errors_total", Some(("status", "ioerr"))),
        1.0
    );
    assert_eq!(
        value(&m, "block_errors_total", Some(("status", "unsupp"))),
        1.0
    );
    assert_eq!(value(&m, "block_capacity_bytes", None), SIZE as f64);
    assert_eq!(value(&m, "block_writeback", None), 1.0);
}

#[test]
fn sync_engine_counts_requests_bytes_and_errors() {
    counts(Engine::Sync, false);
}

#[test]
fn io_uring_engine_counts_requests_bytes_and_errors() {
    counts(Engine::IoUring, false);
}

/// O_DIRECT: inline non-blocking I/O or the ring, as the kernel allows.
#[test]
fn io_uring_engine_counts_direct_requests_bytes_and_errors() {
    counts(Engine::IoUring, true);
}
