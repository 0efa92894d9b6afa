//! The narrow trait a device implements. The core does everything protocol-shaped: feature
//! negotiation for core bits, memory, vrings, inflight tracking, notifications, workers.

use std::os::fd::RawFd;
use std::sync::Arc;

use crate::backend_client::ConfigNotifier;
use crate::vring::QueueIo;

/// Errors a device reports to the core.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The front-end asked for something the device does not support.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An argument from the front-end is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The device's backing store failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// Snapshot data could not be applied.
    #[error("cannot restore device state: {0}")]
    Restore(String),
    /// Anything else, with its reason.
    #[error("{0}")]
    Other(String),
}

/// What a queue worker should do after `QueueHandler::process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The available ring was drained (`QueueIo::pop` returned `None`).
    Drained,
    /// The device stopped taking requests early (for example its submission queue is full);
    /// the worker calls `process` again after the next device event.
    Busy,
}

/// Per-queue device logic, run on the queue's worker thread.
pub trait QueueHandler: Send {
    /// Extra file descriptors the worker should poll for this queue (e.g. an io_uring
    /// completion eventfd). When one becomes readable `handle_event(i)` is called.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Take requests from the queue (`q.pop()`), start or finish them, complete them with
    /// `q.complete()`.
    fn process(&mut self, q: &mut QueueIo) -> Progress;

    /// Called while the worker busy-polls (`--poll-us`): pick up finished device work
    /// without blocking, complete it, and return true if anything was completed.
    fn poll(&mut self, _q: &mut QueueIo) -> bool {
        false
    }

    /// `event_fds()[index]` became readable.
    fn handle_event(&mut self, _index: usize, _q: &mut QueueIo) {}

    /// Whether requests are in flight inside the device.
    fn in_flight(&self) -> usize {
        0
    }

    /// Block until every request taken from the queue has been completed. Called before the
    /// queue stops, sleeps or is snapshotted: afterwards nothing may touch guest memory.
    fn drain(&mut self, _q: &mut QueueIo) {}
}

/// A virtio device served over vhost-user.
pub trait VhostUserDevice: Send + Sync + 'static {
    /// Short name for logs ("block").
    fn name(&self) -> &str;

    /// Number of queues the device offers (GET_QUEUE_NUM).
    fn num_queues(&self) -> usize;

    /// Largest queue size the device accepts.
    fn max_queue_size(&self) -> u16 {
        crate::message::MAX_QUEUE_SIZE as u16
    }

    /// Device-specific virtio feature bits. The core adds VERSION_1, EVENT_IDX,
    /// INDIRECT_DESC, PROTOCOL_FEATURES and LOG_ALL.
    fn device_features(&self) -> u64;

    /// Extra protocol features the device wants offered (e.g. CONFIG).
    fn protocol_features(&self) -> u64 {
        0
    }

    /// The driver's accepted features (device bits plus core bits).
    fn set_features(&self, _features: u64) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Size of the device config space in bytes.
    fn config_size(&self) -> usize {
        0
    }

    /// Reads `buf.len()` bytes of config space at `offset` (bounds already checked).
    fn read_config(&self, _offset: usize, _buf: &mut [u8]) {}

    /// Writes config space (bounds already checked). Read-only fields must be refused.
    fn write_config(&self, _offset: usize, _data: &[u8]) -> Result<(), DeviceError> {
        Err(DeviceError::Unsupported("config space is read-only"))
    }

    /// A queue starts: return the handler its worker will drive.
    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError>;

    /// A queue stopped; its handler has been drained and dropped.
    fn stop_queue(&self, _index: usize) {}

    /// Back to the state after construction (RESET_DEVICE, disconnect).
    fn reset(&self) {}

    /// Every queue has drained: make what was acknowledged durable and stop touching the
    /// backing store until `wake`.
    fn sleep(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Resume after `sleep`.
    fn wake(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Device state for a snapshot (called while asleep).
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(Vec::new())
    }

    /// Restore device state from `snapshot` (called while asleep). On error nothing changes.
    fn restore(&self, _data: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Changes the device's size (block: capacity in bytes) and tells the driver.
    fn resize(&self, _new_size: u64) -> Result<(), DeviceError> {
        Err(DeviceError::Unsupported("this device cannot be resized"))
    }

    /// Device-specific facts and counters for status reports, as (name, value) pairs.
    fn status_fields(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Gives the device a way to raise a config-change notification to the front-end.
    fn set_config_notifier(&self, _notifier: Arc<ConfigNotifier>) {}
}
