//! How a started queue runs: on its own worker thread (`worker.rs`, what a device server
//! does), or inline on the thread that handles the front-end's messages (for fuzzing and
//! deterministic tests: no thread, no epoll, every step at a known point).

use std::sync::atomic::Ordering;

use crate::device::QueueHandler;
use crate::vring::QueueIo;
use crate::worker::{process, quiesce, Worker};

/// A started queue.
#[derive(Debug)]
pub(crate) enum QueueRunner {
    /// On its worker thread.
    Thread(Worker),
    /// On the caller's thread.
    Inline(Box<InlineQueue>),
}

impl QueueRunner {
    /// Looks at the ring again (SET_VRING_ENABLE).
    pub(crate) fn poke(&mut self) {
        match self {
            QueueRunner::Thread(w) => w.poke(),
            QueueRunner::Inline(q) => q.process(),
        }
    }

    /// Processes the ring as after a kick. A worker thread waits for the real kick instead.
    pub(crate) fn kick(&mut self) {
        if let QueueRunner::Inline(q) = self {
            q.kick();
        }
    }

    /// Drains the device's requests; nothing more is taken until `wake`.
    pub(crate) fn sleep(&mut self) {
        match self {
            QueueRunner::Thread(w) => w.sleep(),
            QueueRunner::Inline(q) => q.sleep(),
        }
    }

    /// Resumes after `sleep`.
    pub(crate) fn wake(&mut self) {
        match self {
            QueueRunner::Thread(w) => w.wake(),
            QueueRunner::Inline(q) => q.wake(),
        }
    }

    /// Drains and stops; the runtime, for its ring indexes.
    pub(crate) fn stop(self) -> Option<QueueIo> {
        match self {
            QueueRunner::Thread(w) => w.stop(),
            QueueRunner::Inline(q) => Some((*q).stop()),
        }
    }
}

/// A queue run on the caller's thread. It processes its ring when it starts (as a worker
/// does), when poked, on wake and on `kick`; the kick eventfd and the device's event fds are
/// not watched, and `QueueHandler::poll` (busy polling) is never called.
pub(crate) struct InlineQueue {
    io: QueueIo,
    handler: Box<dyn QueueHandler>,
    asleep: bool,
}

impl std::fmt::Debug for InlineQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineQueue")
            .field("queue", &self.io.index)
            .field("asleep", &self.asleep)
            .finish()
    }
}

impl InlineQueue {
    /// Starts the queue; unless `asleep`, processes what the ring (or the inflight area)
    /// already holds, as a worker thread does when it starts.
    pub(crate) fn start(io: QueueIo, handler: Box<dyn QueueHandler>, asleep: bool) -> Self {
        let mut q = InlineQueue {
            io,
            handler,
            asleep,
        };
        if !asleep && (!q.io.resubmit.is_empty() || q.io.shared.enabled.load(Ordering::Acquire)) {
            q.process();
        }
        q
    }

    fn process(&mut self) {
        if self.asleep {
            return;
        }
        process(&mut self.io, self.handler.as_mut());
        self.io.flush();
        // What finished on this thread meanwhile, as a worker collects it before it sleeps.
        while self.handler.before_sleep(&mut self.io) {
            self.io.flush();
        }
        // Nothing waits on the device's event fds here.
        self.io.interest_changes.clear();
    }

    fn kick(&mut self) {
        if self.asleep {
            return;
        }
        self.io.shared.stats.kicks.fetch_add(1, Ordering::Relaxed);
        self.process();
    }

    fn sleep(&mut self) {
        quiesce(&mut self.io, self.handler.as_mut());
        self.asleep = true;
    }

    fn wake(&mut self) {
        if self.asleep {
            self.asleep = false;
            self.process();
        }
    }

    fn stop(mut self) -> QueueIo {
        quiesce(&mut self.io, self.handler.as_mut());
        self.io
    }
}
