//! The event queue (2), when the front-end hands it over (crosvm does; QEMU keeps it and
//! sends TRANSPORT_RESET itself after a migration). A TRANSPORT_RESET is owed whenever the
//! device lost its connections: a fresh process (the one before may have died with
//! connections open), a reset, a restore. The guest then resets its connected sockets and
//! reads the CID again; listening sockets stay.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vu_core::{Progress, QueueHandler, QueueIo};

use super::packet::EVENT_TRANSPORT_RESET;
use super::shared::Shared;
use super::stats;

/// The event queue's handler.
#[derive(Debug)]
pub(crate) struct EventHandler {
    shared: Arc<Shared>,
}

impl EventHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        EventHandler { shared }
    }
}

impl QueueHandler for EventHandler {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while self.shared.reset_event.load(Ordering::Acquire) {
            let Some(head) = q.pop() else {
                return Progress::Drained;
            };
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            let chain = q.chain(head);
            if chain.write_at(0, &event) == event.len() {
                q.complete(head, event.len() as u32);
                self.shared.reset_event.store(false, Ordering::Release);
                stats::bump(&self.shared.counters.transport_resets);
                tracing::info!("vsock: TRANSPORT_RESET sent to the guest");
            } else {
                q.complete(head, 0);
            }
        }
        // Nothing to say: leave the driver's buffers where they are.
        Progress::Busy
    }
}
