//! virtio-blk (virtio 1.2, section 5.2) on a raw image file or host block device.
//!
//! `disk.rs` holds the image and its synchronous I/O, `request.rs` parses and executes
//! requests, `discard.rs` does DISCARD/WRITE_ZEROES, `config.rs` the feature bits and config
//! space, and `sync_engine.rs` / `uring_engine.rs` the two per-queue handlers.

mod config;
mod discard;
mod disk;
mod error;
mod iovec;
mod metrics;
mod nowait;
mod request;
mod sync_engine;
mod uring_engine;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH};
use vu_core::backend_client::{ConfigNotifier, NotifyError};
use vu_core::{DeviceError, QueueHandler, VhostUserDevice};

pub use error::BlockError;

use config::{config_bytes, device_features, has, CONFIG_SIZE, WRITEBACK_OFFSET};
use disk::{Disk, DiskParams, Geometry, SECTOR_SIZE};

/// How requests reach the image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// One io_uring per queue, requests in flight concurrently.
    #[default]
    IoUring,
    /// preadv/pwritev on the queue's worker thread, one request at a time.
    Sync,
}

impl FromStr for Engine {
    type Err = BlockError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "io_uring" => Ok(Engine::IoUring),
            "sync" => Ok(Engine::Sync),
            other => Err(BlockError::UnknownEngine(other.to_string())),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::IoUring => "io_uring",
            Engine::Sync => "sync",
        })
    }
}

/// What to serve and how.
#[derive(Debug)]
pub struct BlockConfig {
    /// The image, already opened by the caller (read-write unless `read_only`; with O_DIRECT
    /// if `direct`).
    pub file: File,
    /// Offer a read-only disk (VIRTIO_BLK_F_RO); writes fail.
    pub read_only: bool,
    /// The file was opened with O_DIRECT (it is set here if it was not).
    pub direct: bool,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest queue size (power of two, 4..=32768).
    pub queue_size: u16,
    /// GET_ID answer, at most 20 bytes.
    pub serial: Option<String>,
    /// Logical block size offered to the guest: 512 or 4096.
    pub logical_block_size: u32,
    /// The I/O engine.
    pub engine: Engine,
    /// Initial cache mode: true is write-back (the guest flushes), false write-through.
    pub writeback: bool,
    /// CPUs the device process may run on (0: unknown). With the io_uring engine on a
    /// buffered image and fewer queues than CPUs, large reads and writes (64 KiB and up) that
    /// arrive while others are in flight are handed to io_uring's kernel workers, so that
    /// their copies run on the spare CPUs in parallel with the queue thread. With as many
    /// queues as CPUs (or 0 here) every buffered copy stays on its queue thread.
    pub cpus: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Writes made durable before completion (write-through mode).
    pub durable_writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Discard requests.
    pub discards: u64,
    /// Write-zeroes requests.
    pub write_zeroes: u64,
    /// Requests answered with IOERR.
    pub io_errors: u64,
    /// Requests answered with UNSUPP.
    pub unsupported: u64,
    /// Buffered reads and writes handed to io_uring's kernel workers (`BlockConfig::cpus`).
    pub offloaded: u64,
    /// Bytes of reads that succeeded.
    pub read_bytes: u64,
    /// Bytes of writes that succeeded.
    pub written_bytes: u64,
}

/// Device state kept in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct BlockState {
    capacity: u64,
    writeback: bool,
    features: u64,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct BlockDevice {
    disk: Arc<Disk>,
    num_queues: u16,
    queue_size: u16,
    engine: Engine,
    /// Large buffered copies may go to io_uring's kernel workers (`BlockConfig::cpus`).
    offload: bool,
    initial_writeback: bool,
    features: Mutex<u64>,
    notifier: Mutex<Option<Arc<ConfigNotifier>>>,
    resize_lock: Mutex<()>,
}

fn check_config(cfg: &BlockConfig) -> Result<[u8; 20], BlockError> {
    if cfg.num_queues == 0 {
        return Err(BlockError::ZeroQueues);
    }
    if cfg.num_queues > 256 {
        return Err(BlockError::TooManyQueues(cfg.num_queues));
    }
    let qs = cfg.queue_size;
    if !qs.is_power_of_two() || !(4..=32768).contains(&qs) {
        return Err(BlockError::BadQueueSize(qs));
    }
    if !matches!(cfg.logical_block_size, 512 | 4096) {
        return Err(BlockError::BadBlockSize(cfg.logical_block_size));
    }
    let mut serial = [0u8; 20];
    if let Some(s) = cfg.serial.as_deref() {
        let b = s.as_bytes();
        if b.len() > serial.len() {
            return Err(BlockError::SerialTooLong(b.len()));
        }
        serial[..b.len()].copy_from_slice(b);
    }
    Ok(serial)
}

fn check_size(size: u64, block_size: u32) -> Result<(), BlockError> {
    if size == 0 {
        return Err(BlockError::EmptyImage);
    }
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::NotSectorMultiple(size));
    }
    if !size.is_multiple_of(u64::from(block_size)) {
        return Err(BlockError::NotBlockMultiple { size, block_size });
    }
    Ok(())
}

/// Checks the descriptor's access mode and O_DIRECT against the configuration; sets
/// O_DIRECT if asked for and missing. Returns whether O_DIRECT is in effect.
fn check_fd_flags(cfg: &BlockConfig) -> Result<bool, BlockError> {
    let fd = cfg.file.as_raw_fd();
    // SAFETY: F_GETFL only reads the flags of a descriptor we own (through `cfg.file`).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(BlockError::Probe(io::Error::last_os_error()));
    }
    if !cfg.read_only && flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(BlockError::OpenedReadOnly);
    }
    let has_direct = flags & libc::O_DIRECT != 0;
    if cfg.direct && !has_direct {
        // SAFETY: F_SETFL only changes the status flags of a descriptor we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
            return Err(BlockError::Direct(io::Error::last_os_error()));
        }
        return Ok(true);
    }
    Ok(has_direct)
}

impl BlockDevice {
    /// Validates the configuration and the image and builds the device.
    pub fn new(cfg: BlockConfig) -> Result<Arc<Self>, BlockError> {
        let serial = check_config(&cfg)?;
        let geometry = Geometry::probe(&cfg.file)?;
        check_size(geometry.size, cfg.logical_block_size)?;
        let direct = check_fd_flags(&cfg)?;
        if direct && geometry.host_sector > cfg.logical_block_size {
            return Err(BlockError::DirectBlockSize {
                logical: cfg.logical_block_size,
                host: geometry.host_sector,
            });
        }
        if cfg.engine == Engine::IoUring {
            uring_engine::probe().map_err(|e| BlockError::IoUringUnavailable(e.to_string()))?;
        }
        let disk = Disk::new(DiskParams {
            file: cfg.file,
            geometry,
            read_only: cfg.read_only,
            direct,
            logical_block_size: cfg.logical_block_size,
            serial,
            writeback: cfg.writeback,
        });
        let offload =
            cfg.engine == Engine::IoUring && !direct && cfg.cpus > usize::from(cfg.num_queues);
        Ok(Arc::new(BlockDevice {
            disk: Arc::new(disk),
            num_queues: cfg.num_queues,
            queue_size: cfg.queue_size,
            engine: cfg.engine,
            offload,
            initial_writeback: cfg.writeback,
            features: Mutex::new(0),
            notifier: Mutex::new(None),
            resize_lock: Mutex::new(()),
        }))
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity()
    }

    /// Grows the disk to `new_size_bytes` and tells the front-end its config changed. A
    /// regular file is extended; a block device must already have that size. Shrinking is
    /// refused. The resize stands even if the front-end cannot be notified (logged).
    pub fn resize(&self, new_size_bytes: u64) -> Result<(), BlockError> {
        let _guard = self.resize_lock.lock().unwrap_or_else(|e| e.into_inner());
        let block_size = self.disk.logical_block_size;
        if check_size(new_size_bytes, block_size).is_err() {
            return Err(BlockError::ResizeMisaligned {
                size: new_size_bytes,
                block_size,
            });
        }
        let current = self.disk.capacity() * SECTOR_SIZE;
        if new_size_bytes < current {
            return Err(BlockError::ResizeShrink {
                current,
                requested: new_size_bytes,
            });
        }
        if self.disk.block_dev {
            let actual = Geometry::block_device_size(&self.disk.file).map_err(BlockError::Probe)?;
            if actual != new_size_bytes {
                return Err(BlockError::ResizeBlockDevice {
                    requested: new_size_bytes,
                    actual,
                });
            }
        } else if new_size_bytes != current {
            self.disk
                .file
                .set_len(new_size_bytes)
                .map_err(BlockError::Resize)?;
        }
        self.disk.set_capacity(new_size_bytes / SECTOR_SIZE);
        tracing::info!(
            sectors = new_size_bytes / SECTOR_SIZE,
            "block device resized"
        );
        self.notify_config_change();
        Ok(())
    }

    fn notify_config_change(&self) {
        let notifier = self
            .notifier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let res = match notifier {
            Some(n) => n.notify_config_change(),
            None => Err(NotifyError::NoChannel),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot notify the front-end of the config change; the guest sees the new capacity when it next reads the config");
        }
    }

    /// Makes everything written so far durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        self.disk.sync()
    }

    /// Counters since start.
    pub fn stats(&self) -> BlockStats {
        let c = &self.disk.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        BlockStats {
            reads: get(&c.reads),
            writes: get(&c.writes),
            durable_writes: get(&c.durable_writes),
            flushes: get(&c.flushes),
            discards: get(&c.discards),
            write_zeroes: get(&c.write_zeroes),
            io_errors: get(&c.io_errors),
            unsupported: get(&c.unsupported),
            offloaded: get(&c.offloaded),
            read_bytes: get(&c.read_bytes),
            written_bytes: get(&c.written_bytes),
        }
    }

    fn apply_features(&self, features: u64) {
        *self.features.lock().unwrap_or_else(|e| e.into_inner()) = features;
        let flush = has(features, VIRTIO_BLK_F_FLUSH);
        self.disk.set_flush_acked(flush);
        if has(features, VIRTIO_BLK_F_CONFIG_WCE) && !flush {
            // virtio 1.2, 5.2.5.1: CONFIG_WCE without FLUSH starts in write-through.
            self.disk.set_writeback(false);
        }
    }
}

impl VhostUserDevice for BlockDevice {
    fn name(&self) -> &str {
        "block"
    }

    fn num_queues(&self) -> usize {
        usize::from(self.num_queues)
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn device_features(&self) -> u64 {
        device_features(self.disk.read_only)
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.apply_features(features);
        Ok(())
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let cfg = config_bytes(&self.disk, self.num_queues, self.queue_size);
        if let Some(src) = offset
            .checked_add(buf.len())
            .and_then(|end| cfg.get(offset..end))
        {
            buf.copy_from_slice(src);
        }
    }

    fn write_config(&self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        match (offset, data) {
            (WRITEBACK_OFFSET, &[v @ (0 | 1)]) => {
                self.disk.set_writeback(v == 1);
                tracing::info!(writeback = v == 1, "guest changed the cache mode");
                Ok(())
            }
            (WRITEBACK_OFFSET, &[v]) => Err(DeviceError::InvalidArgument(format!(
                "writeback value {v} (expected 0 or 1)"
            ))),
            _ => Err(DeviceError::InvalidArgument(format!(
                "config bytes {offset}+{} are read-only; only writeback (offset {WRITEBACK_OFFSET}, 1 byte) is writable",
                data.len()
            ))),
        }
    }

    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        if index >= usize::from(self.num_queues) {
            return Err(DeviceError::InvalidArgument(format!("queue {index}")));
        }
        Ok(match self.engine {
            Engine::Sync => Box::new(sync_engine::SyncHandler::new(self.disk.clone())),
            Engine::IoUring => Box::new(uring_engine::UringHandler::new(
                self.disk.clone(),
                self.queue_size,
                self.offload,
            )?),
        })
    }

    fn reset(&self) {
        *self.features.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        self.disk.set_flush_acked(true);
        self.disk.set_writeback(self.initial_writeback);
    }

    fn sleep(&self) -> Result<(), DeviceError> {
        self.disk.sync()?;
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        let state = BlockState {
            capacity: self.disk.capacity(),
            writeback: self.disk.writeback(),
            features: *self.features.lock().unwrap_or_else(|e| e.into_inner()),
        };
        postcard::to_allocvec(&state).map_err(|e| DeviceError::Other(e.to_string()))
    }

    fn restore(&self, data: &[u8]) -> Result<(), DeviceError> {
        let state: BlockState = postcard::from_bytes(data)
            .map_err(|e| DeviceError::Restore(format!("block state does not decode: {e}")))?;
        let capacity = self.disk.capacity();
        if state.capacity != capacity {
            return Err(DeviceError::Restore(format!(
                "the snapshot's disk has {} sectors, this image has {capacity}",
                state.capacity
            )));
        }
        self.apply_features(state.features);
        self.disk.set_writeback(state.writeback);
        Ok(())
    }

    fn resize(&self, new_size: u64) -> Result<(), DeviceError> {
        BlockDevice::resize(self, new_size).map_err(|e| DeviceError::InvalidArgument(e.to_string()))
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        let st = self.stats();
        let mut f = vec![
            (
                "capacity_bytes".to_string(),
                (self.disk.capacity() * 512).to_string(),
            ),
            (
                "cache".to_string(),
                if self.disk.writeback() {
                    "writeback"
                } else {
                    "writethrough"
                }
                .to_string(),
            ),
        ];
        for (k, v) in [
            ("reads", st.reads),
            ("writes", st.writes),
            ("durable_writes", st.durable_writes),
            ("flushes", st.flushes),
            ("discards", st.discards),
            ("write_zeroes", st.write_zeroes),
            ("io_errors", st.io_errors),
            ("unsupported", st.unsupported),
            ("offloaded", st.offloaded),
        ] {
            f.push((k.to_string(), v.to_string()));
        }
        f
    }

    fn metrics(&self) -> Vec<vu_core::Metric> {
        metrics::metrics(
            &self.stats(),
            self.disk.capacity().saturating_mul(disk::SECTOR_SIZE),
            self.disk.writeback(),
        )
    }

    fn set_config_notifier(&self, notifier: Arc<ConfigNotifier>) {
        *self.notifier.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }
}

#[cfg(test)]
mod tests;
