//! The transmit queue of a pair: frames from the driver's chains to the tap, one writev each,
//! straight from guest memory. A full tap (EAGAIN) keeps the frame and waits for the tap to be
//! writable; a frame the tap refuses, or a malformed chain, is dropped and counted, and the
//! queue goes on.

use std::os::fd::RawFd;
use std::sync::Arc;

use vu_core::{warn_ratelimited, Interest, Progress, QueueHandler, QueueIo};

use super::backend::{IoVecs, TapFd, MAX_IOVS};
use super::config::MAX_FRAME;
use super::stats::Counters;

/// Frames per `process` call: then the worker looks at its commands, woken again at once by
/// the (writable) tap.
const BUDGET: usize = 256;

enum Sent {
    /// Written, or dropped (counted).
    Done,
    /// The tap is full: try again when it is writable.
    Full,
}

/// The transmit handler of one queue pair.
pub(crate) struct TxHandler {
    tap: Arc<TapFd>,
    counters: Arc<Counters>,
    hdr_len: usize,
    /// A frame the tap had no room for.
    pending: Option<u16>,
    /// The tap is registered with the worker (writable).
    watching: bool,
    iov: IoVecs,
}

impl TxHandler {
    pub(crate) fn new(tap: Arc<TapFd>, counters: Arc<Counters>, hdr_len: usize) -> Self {
        TxHandler {
            tap,
            counters,
            hdr_len,
            pending: None,
            watching: false,
            iov: IoVecs::default(),
        }
    }

    fn watch(&mut self, q: &mut QueueIo, on: bool) {
        if self.watching != on {
            self.watching = on;
            q.set_interest(
                0,
                if on {
                    Interest::Writable
                } else {
                    Interest::None
                },
            );
        }
    }

    fn send(&mut self, q: &mut QueueIo, head: u16) -> Sent {
        let chain = q.chain(head);
        let len = chain.readable_len() as usize;
        let segs = chain.readable();
        if len < self.hdr_len || len > self.hdr_len + MAX_FRAME || segs.len() > MAX_IOVS {
            Counters::inc(&self.counters.tx_dropped_malformed);
            warn_ratelimited!(
                queue = q.index(),
                len,
                buffers = segs.len(),
                "malformed transmit chain dropped"
            );
            q.complete(head, 0);
            return Sent::Done;
        }
        self.iov.clear();
        for s in segs {
            self.iov.push(s.host, s.len as usize);
        }
        match self.tap.writev(&self.iov) {
            Ok(_) => {
                Counters::inc(&self.counters.tx_packets);
                Counters::add(&self.counters.tx_bytes, (len - self.hdr_len) as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Sent::Full,
            Err(e) => {
                Counters::inc(&self.counters.tx_dropped_write_error);
                warn_ratelimited!(queue = q.index(), error = %e, "the tap refused a frame; dropped");
            }
        }
        q.complete(head, 0);
        Sent::Done
    }
}

impl QueueHandler for TxHandler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.tap.raw()]
    }

    /// Only watched (for room) while a frame waits.
    fn initial_interest(&self, _index: usize) -> Interest {
        Interest::None
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        if let Some(head) = self.pending {
            if let Sent::Full = self.send(q, head) {
                self.watch(q, true);
                return Progress::Busy;
            }
            self.pending = None;
        }
        for _ in 0..BUDGET {
            let Some(head) = q.pop() else {
                self.watch(q, false);
                return Progress::Drained;
            };
            if let Sent::Full = self.send(q, head) {
                Counters::inc(&self.counters.tx_tap_full);
                self.pending = Some(head);
                self.watch(q, true);
                return Progress::Busy;
            }
        }
        self.watch(q, true);
        Progress::Busy
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        if q.is_enabled() {
            q.request_process();
        } else {
            self.watch(q, false);
        }
    }

    fn drain(&mut self, q: &mut QueueIo) {
        if let Some(head) = self.pending.take() {
            // Back to the ring: sent when the queue runs again (or by the next device).
            if !q.unpop(head) {
                Counters::inc(&self.counters.tx_dropped_write_error);
                q.complete(head, 0);
            }
        }
    }
}

impl std::fmt::Debug for TxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxHandler")
            .field("hdr_len", &self.hdr_len)
            .field("pending", &self.pending)
            .finish()
    }
}
