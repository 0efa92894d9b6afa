//! Asking a queue's worker to run the queue's `process`, for work its handler learns of
//! from elsewhere (another queue of its group hands it something, or another thread).
//!
//! On the worker's own thread a wake is a flag the worker looks at before it waits: a queue
//! handing work to another queue of its group costs no system call. From another thread it
//! also writes the worker's command eventfd. A queue that runs on no worker thread (inline
//! queues, or before its worker has taken it) is not woken: [`QueueWaker::wake`] says so,
//! and the caller uses its own way (an event fd of the handler's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use vmm_sys_util::eventfd::EventFd;

/// A handle that asks a queue's worker to process the queue ([`crate::QueueIo::waker`]).
#[derive(Clone, Debug, Default)]
pub struct QueueWaker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: AtomicBool,
    /// The worker thread and its command eventfd, while the queue runs on one.
    worker: Mutex<Option<(ThreadId, Arc<EventFd>)>>,
}

impl QueueWaker {
    /// Asks for a `process` of the queue soon. False if the queue runs on no worker thread
    /// (nothing will come of it: the caller must wake the handler another way).
    pub fn wake(&self) -> bool {
        let worker = self.inner.worker.lock().unwrap_or_else(|e| e.into_inner());
        let Some((thread, ctl)) = worker.as_ref() else {
            return false;
        };
        if !self.inner.pending.swap(true, Ordering::AcqRel)
            && *thread != std::thread::current().id()
        {
            let _ = ctl.write(1);
        }
        true
    }

    /// The worker: the queue now runs on the calling thread, woken through `ctl`.
    pub(crate) fn attach(&self, ctl: Arc<EventFd>) {
        *self.inner.worker.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::thread::current().id(), ctl));
    }

    /// The worker: the queue leaves the thread.
    pub(crate) fn detach(&self) {
        *self.inner.worker.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.inner.pending.store(false, Ordering::Release);
    }

    /// The worker: whether a wake is pending.
    pub(crate) fn is_pending(&self) -> bool {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// The worker: takes a pending wake.
    pub(crate) fn take(&self) -> bool {
        self.inner.pending.swap(false, Ordering::AcqRel)
    }
}
