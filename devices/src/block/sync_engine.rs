//! The synchronous engine: each request runs to completion on the queue's worker thread
//! (preadv/pwritev straight into guest memory).

use std::sync::Arc;

use vu_core::{Progress, QueueHandler, QueueIo};

use super::disk::Disk;
use super::iovec::IoVecs;
use super::request::{classify, execute_sync, publish_early};

/// One queue served synchronously.
#[derive(Debug)]
pub(crate) struct SyncHandler {
    disk: Arc<Disk>,
    iov: IoVecs,
}

impl SyncHandler {
    pub(crate) fn new(disk: Arc<Disk>) -> Self {
        SyncHandler {
            disk,
            iov: IoVecs::default(),
        }
    }
}

impl QueueHandler for SyncHandler {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            let chain = q.chain(head);
            let action = classify(&self.disk, chain);
            let used = execute_sync(&self.disk, chain, action, &mut self.iov);
            let early = publish_early(chain);
            q.complete(head, used);
            if early {
                q.flush();
            }
        }
        Progress::Drained
    }
}
