//! The transmit queue of a pair: frames from the driver's chains to the tap, straight from
//! guest memory, in batches: up to `BATCH` frames' writevs go to the tap in one io_uring
//! submission (`uring.rs`), or one writev system call each where there is no ring. A full
//! tap (EAGAIN) keeps the frame, and those after it that met the full tap too, in order, and
//! the queue waits for the tap to be writable; a frame the tap refuses, or a malformed chain,
//! is dropped and counted, and the queue goes on.
//!
//! Order on the wire: the writes of a batch run one after the other, in ring order. Only a
//! tap whose send buffer is limited (TUNSETSNDBUF; unlimited by default) or a socket standing
//! in for one ever answers EAGAIN; on those, the first write that does not go through ends
//! the batch: the ring's writes are linked, so those after it are cancelled, not tried
//! (`uring.rs`), and the writev fallback stops there too. Room that appears between two
//! writes of a batch then cannot let a later, smaller frame overtake the one that met the
//! full tap. Linked writes cost CPU, so a tap whose send buffer is unlimited when the ring is
//! set up gets unlinked ones; if its buffer is limited later (by another holder of the tap)
//! and it fills, the writes are linked from then on: only that one batch may have let a frame
//! past the one that met the full tap.
//!
//! Batch size: a write after the one that met the full tap is prepared and cancelled for
//! nothing, so after a full tap the next batch is one frame more than the last got through,
//! and it doubles back to `BATCH` while batches go through whole.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use vu_core::{warn_ratelimited, Interest, Progress, QueueHandler, QueueIo};

use super::backend::{IoVecs, TapFd, MAX_IOVS};
use super::config::MAX_FRAME;
use super::stats::Counters;
use super::uring::{TapRing, NOT_TRIED};

/// Frames per `process` call: then the worker looks at its commands, woken again at once by
/// the (writable) tap.
const BUDGET: usize = 256;

/// Most frames per submission.
pub(crate) const BATCH: usize = 32;

/// The transmit handler of one queue pair.
pub(crate) struct TxHandler {
    tap: Arc<TapFd>,
    counters: Arc<Counters>,
    hdr_len: usize,
    /// Frames taken from the ring and not written yet, in ring order: the first met a full
    /// tap.
    waiting: VecDeque<u16>,
    /// The tap is registered with the worker (writable).
    watching: bool,
    /// None: one writev per frame (no io_uring, or it failed).
    ring: Option<TapRing>,
    /// The ring was set up (or tried): once, on the first frames.
    ring_tried: bool,
    /// Most frames in the next batch: `BATCH`, or after the tap was full one more than the
    /// last batch got through, doubling again while batches go through whole.
    batch_limit: usize,
    /// The frames of the batch at hand, and their iovec lists and results.
    batch: Vec<u16>,
    iovs: Vec<IoVecs>,
    results: Vec<i32>,
}

impl TxHandler {
    pub(crate) fn new(tap: Arc<TapFd>, counters: Arc<Counters>, hdr_len: usize) -> Self {
        TxHandler {
            tap,
            counters,
            hdr_len,
            waiting: VecDeque::new(),
            watching: false,
            ring: None,
            ring_tried: false,
            batch_limit: BATCH,
            batch: Vec::with_capacity(BATCH),
            iovs: (0..BATCH).map(|_| IoVecs::default()).collect(),
            results: Vec::with_capacity(BATCH),
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

    /// Takes the ring the last start of this queue left on the tap, or sets one up.
    pub(super) fn setup_ring(&mut self) {
        self.ring_tried = true;
        if let Some(mut r) = self.tap.take_ring() {
            if !r.linked() && self.tap.can_be_full() {
                r.link();
            }
            self.ring = Some(r);
            return;
        }
        match TapRing::new(&self.tap, BATCH as u32, self.tap.can_be_full()) {
            Ok(r) => self.ring = Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no io_uring for the tap; one writev per frame")
            }
        }
    }

    /// The descriptor of the ring in use, if any.
    #[cfg(test)]
    pub(super) fn ring_fd(&self) -> Option<RawFd> {
        self.ring.as_ref().map(TapRing::fd)
    }

    /// Checks the chain of `head` and puts its iovecs in the batch's next slot; a malformed
    /// chain is dropped (completed, counted). True if the frame joined the batch.
    fn add(&mut self, q: &mut QueueIo, head: u16) -> bool {
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
            return false;
        }
        let iov = &mut self.iovs[self.batch.len()];
        iov.clear();
        for s in segs {
            iov.push(s.host, s.len as usize);
        }
        self.batch.push(head);
        true
    }

    /// Writes the batch: through the ring, or (one frame, or no ring) with writev.
    fn write_batch(&mut self) {
        let n = self.batch.len();
        if let (Some(ring), true) = (self.ring.as_mut(), n > 1) {
            match ring.run(&self.iovs[..n], &mut self.results) {
                Ok(()) => {
                    if self.results.iter().all(|&r| r == -libc::EOPNOTSUPP) {
                        // The descriptor does not take RWF_NOWAIT: plain writes from now on
                        // (the frames were not tried).
                        tracing::warn!("the tap refuses RWF_NOWAIT; one writev per frame");
                        self.ring = None;
                        self.results.fill(NOT_TRIED);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring on the tap failed; one writev per frame");
                    self.ring = None;
                }
            }
            return;
        }
        self.results.clear();
        self.results.resize(n, NOT_TRIED);
        for (iov, r) in self.iovs[..n].iter().zip(self.results.iter_mut()) {
            *r = match self.tap.writev(iov) {
                Ok(len) => len as i32,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
            if kept(*r) {
                // The rest waits behind it, in order.
                break;
            }
        }
    }

    /// Sends what waits, then what the ring has, at most `BUDGET` frames.
    fn run(&mut self, q: &mut QueueIo) -> Progress {
        if !self.ring_tried {
            self.setup_ring();
        }
        let mut done = 0;
        while done < BUDGET {
            let limit = if self.ring.is_none() {
                1
            } else {
                self.batch_limit
            };
            self.batch.clear();
            // A frame that waited already was counted when it first met the full tap.
            let retry = !self.waiting.is_empty();
            while self.batch.len() < limit {
                let head = match self.waiting.pop_front() {
                    Some(h) => h,
                    None => match q.pop() {
                        Some(h) => h,
                        None => break,
                    },
                };
                self.add(q, head);
            }
            if self.batch.is_empty() {
                self.watch(q, false);
                return Progress::Drained;
            }
            self.write_batch();
            let n = self.batch.len();
            done += n;
            let mut full = false;
            for i in 0..n {
                let head = self.batch[i];
                let r = self.results[i];
                if kept(r) {
                    if r == -libc::EAGAIN && !full {
                        full = true;
                        // The writes after the one that met the full tap are prepared and
                        // cancelled for nothing: the next batch is about what this one got
                        // through.
                        self.batch_limit = i + 1;
                        if !(retry && i == 0) {
                            Counters::inc(&self.counters.tx_tap_full);
                        }
                    }
                    // Kept, in order, for the next try; those the ring did not take go back
                    // in front of the rest too.
                    continue;
                }
                if r >= 0 {
                    Counters::inc(&self.counters.tx_packets);
                    let len = q.chain(head).readable_len() as usize;
                    Counters::add(&self.counters.tx_bytes, (len - self.hdr_len) as u64);
                } else {
                    Counters::inc(&self.counters.tx_dropped_write_error);
                    let e = std::io::Error::from_raw_os_error(-r);
                    warn_ratelimited!(queue = q.index(), error = %e, "the tap refused a frame; dropped");
                }
                q.complete(head, 0);
            }
            for i in (0..n).rev() {
                if kept(self.results[i]) {
                    self.waiting.push_front(self.batch[i]);
                }
            }
            if full {
                if let Some(ring) = self.ring.as_mut().filter(|r| !r.linked()) {
                    tracing::warn!(
                        queue = q.index(),
                        "the tap was full: its send buffer was limited after the queue \
                         started; a batch's writes are linked from now on"
                    );
                    ring.link();
                }
                self.watch(q, true);
                return Progress::Busy;
            }
            self.batch_limit = (self.batch_limit * 2).min(BATCH);
        }
        self.watch(q, true);
        Progress::Busy
    }
}

/// A write's result that keeps its frame for the next try, in order: not tried (cut off by
/// an earlier write of the batch), a full tap, or an interrupted call.
fn kept(r: i32) -> bool {
    r == NOT_TRIED || r == -libc::EAGAIN || r == -libc::EINTR || r == -libc::ECANCELED
}

impl Drop for TxHandler {
    /// The ring goes back to the tap for the queue's next start. It is idle: a batch's
    /// writes have all completed when `run` returns, and a ring that failed was dropped then.
    fn drop(&mut self) {
        if let Some(r) = self.ring.take() {
            self.tap.keep_ring(r);
        }
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
        self.run(q)
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        if q.is_enabled() {
            q.request_process();
        } else {
            self.watch(q, false);
        }
    }

    fn drain(&mut self, q: &mut QueueIo) {
        // Back to the ring, last taken first: sent when the queue runs again (or by the next
        // device). Nothing is in flight in the kernel (see `uring.rs`).
        while let Some(head) = self.waiting.pop_back() {
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
            .field("waiting", &self.waiting.len())
            .field("ring", &self.ring.is_some())
            .field("linked", &self.ring.as_ref().is_some_and(TapRing::linked))
            .finish()
    }
}
