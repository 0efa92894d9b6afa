//! What a queue's worker shares with the connection thread: the call and error eventfds
//! (swapped while the queue runs), the enable flag, counters, dirty-log settings and where the
//! rings stood when the queue last quiesced.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Counters for one queue, readable while it runs; the worker adds its completions once per
/// batch (at each `QueueIo::flush`).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Requests completed.
    pub completed: AtomicU64,
    /// Bytes the driver offered to the device (readable buffers of completed requests).
    pub bytes_from_driver: AtomicU64,
    /// Bytes the device wrote back (used lengths).
    pub bytes_to_driver: AtomicU64,
    /// Malformed chains completed with an error.
    pub chain_errors: AtomicU64,
    /// Notifications sent to the driver.
    pub notifications: AtomicU64,
    /// Kicks received.
    pub kicks: AtomicU64,
    /// Requests the device holds (taken, not completed), as of the worker's last flush.
    pub in_flight: AtomicU64,
}

/// State shared between the connection thread and a queue's worker.
#[derive(Debug)]
pub struct VringShared {
    /// Where to signal used buffers; swapped on SET_VRING_CALL while running.
    pub call: Mutex<Option<EventFd>>,
    /// The call eventfd was signalled since it was set (`replace_call`).
    call_signalled: AtomicBool,
    /// Where to signal errors (SET_VRING_ERR).
    pub err: Mutex<Option<EventFd>>,
    /// SET_VRING_ENABLE.
    pub enabled: AtomicBool,
    /// Counters.
    pub stats: QueueStats,
    /// VHOST_VRING_F_LOG: log used-ring writes at `log_addr`.
    pub log_used: AtomicBool,
    /// Guest address used-ring writes are logged at.
    pub log_addr: AtomicU64,
    /// Available index as of the last quiesce (sleep/stop).
    pub last_avail: AtomicU32,
    /// Used index as of the last quiesce.
    pub last_used: AtomicU32,
}

impl Default for VringShared {
    fn default() -> Self {
        VringShared {
            call: Mutex::new(None),
            call_signalled: AtomicBool::new(false),
            err: Mutex::new(None),
            enabled: AtomicBool::new(false),
            stats: QueueStats::default(),
            log_used: AtomicBool::new(false),
            log_addr: AtomicU64::new(0),
            last_avail: AtomicU32::new(0),
            last_used: AtomicU32::new(0),
        }
    }
}

impl VringShared {
    /// Signals the call eventfd, if there is one (returns whether there was).
    pub(crate) fn signal_call(&self) -> bool {
        let guard = self.call.lock().unwrap_or_else(|e| e.into_inner());
        self.signal(&guard)
    }

    /// Signals `call` (the locked call eventfd), if there is one.
    fn signal(&self, call: &Option<EventFd>) -> bool {
        let Some(fd) = call.as_ref() else {
            return false;
        };
        let _ = fd.write(1);
        self.call_signalled.store(true, Ordering::Relaxed);
        self.stats.notifications.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Sets the call eventfd (SET_VRING_CALL). If the one it replaces was signalled, the new
    /// one is signalled once too: the front-end need not read the old one any more. QEMU
    /// gives each ring its masked notifier first, which it reads only while it masks guest
    /// notifiers, and the real eventfd after the kick that starts the ring, so a queue's
    /// first completions, signalled in between, would otherwise go untold for good (a guest
    /// stalled after a device respawn). A driver takes a spurious notification as a look at
    /// an unchanged used ring.
    pub(crate) fn replace_call(&self, fd: Option<EventFd>) {
        let mut guard = self.call.lock().unwrap_or_else(|e| e.into_inner());
        *guard = fd;
        if self.call_signalled.swap(false, Ordering::Relaxed) {
            self.signal(&guard);
        }
    }

    pub(crate) fn signal_err(&self) {
        let guard = self.err.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = guard.as_ref() {
            let _ = fd.write(1);
        }
    }
}
