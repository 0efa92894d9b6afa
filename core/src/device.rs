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

/// What a queue worker waits for on one of its handler's event fds (`QueueHandler::event_fds`).
/// Every event fd starts as `QueueHandler::initial_interest` says (`Readable` by default); a
/// handler changes it with `QueueIo::set_interest`, for example to stop watching a tap that
/// has frames while the driver has posted no receive buffers (a level-triggered wait would
/// otherwise spin), or to wait for room to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Not watched.
    None,
    /// Readable (EPOLLIN).
    Readable,
    /// Writable (EPOLLOUT).
    Writable,
    /// Readable or writable.
    Both,
}

/// Per-queue device logic, run on the queue's worker thread.
pub trait QueueHandler: Send {
    /// Extra file descriptors the worker should poll for this queue (e.g. an io_uring
    /// completion eventfd, a tap, a socket). When one becomes ready `handle_event(i)` is
    /// called. Each is watched as `initial_interest` says (readability by default) until the
    /// handler says otherwise (`QueueIo::set_interest`); none is watched while the queue
    /// sleeps.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// What the worker waits for on `event_fds()[index]` when the queue starts; `Readable`
    /// unless the handler says otherwise (a fd it only writes to, for example, starts as
    /// `None` and is watched for `Writable` only once a write would block).
    fn initial_interest(&self, _index: usize) -> Interest {
        Interest::Readable
    }

    /// Take requests from the queue (`q.pop()`), start or finish them, complete them with
    /// `q.complete()`.
    fn process(&mut self, q: &mut QueueIo) -> Progress;

    /// Called while the worker busy-polls (`--poll-us`): pick up finished device work
    /// without blocking, complete it, and return true if anything was completed.
    fn poll(&mut self, _q: &mut QueueIo) -> bool {
        false
    }

    /// Called before the worker sleeps, and again after a wait that a signal cut short:
    /// complete device work that has already finished, without blocking, and return true
    /// if anything was completed (the worker then publishes it and asks again). An
    /// optimisation, not a way to learn of completions: work that finishes later must still
    /// make one of `event_fds()` ready. It saves a round trip where the work is often done
    /// by the time the worker would wait: io_uring completions, for example, that the kernel
    /// posts as task work when the worker returns from a system call (typically the wait
    /// they interrupted). Collected here, the ring's fd is no longer ready when the worker
    /// waits, instead of returning at once for `handle_event`. Default: nothing to collect.
    fn before_sleep(&mut self, _q: &mut QueueIo) -> bool {
        false
    }

    /// `event_fds()[index]` became ready (readable or writable, as its interest says). The
    /// worker calls `process` afterwards if the ring was not drained when last looked at, or
    /// if the handler asked for it (`QueueIo::request_process`).
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

    /// Core protocol features the device asks the core not to offer (default: none). For
    /// devices whose front-end reconnects without negotiating again: QEMU's vhost-user-rng
    /// keeps its record of the memory regions it sent with ADD_MEM_REG across a reconnect
    /// and never sends them to a new back-end, so the rng device withholds
    /// CONFIGURE_MEM_SLOTS (QEMU then sends the whole table with SET_MEM_TABLE each time).
    fn withheld_protocol_features(&self) -> u64 {
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

    /// The worker thread queue `index` runs on: `None` (the default) for a thread of its
    /// own; queues for which the device names the same group share one thread (one epoll set,
    /// one wake-up for work they hand each other). Grouped handlers' event fds must differ.
    fn worker_group(&self, _index: usize) -> Option<usize> {
        None
    }

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

    /// Device-specific metrics for the supervisor's Prometheus exposition (`launcher start
    /// --metrics`), typed: counters and gauges with units and labels. Names start with the
    /// device's kind (`block_reads`); see [`crate::metrics`]. Cheap: called on every scrape.
    fn metrics(&self) -> Vec<crate::metrics::Metric> {
        Vec::new()
    }

    /// Gives the device a way to raise a config-change notification to the front-end.
    fn set_config_notifier(&self, _notifier: Arc<ConfigNotifier>) {}
}
