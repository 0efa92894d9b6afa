//! The receive queue of a pair: frames from the tap into the driver's buffers.
//!
//! The queue keeps a few of the driver's chains taken ahead (`held`), enough for the largest
//! frame it expects, and reads each frame straight into them with one readv (offering as
//! many as recent frames needed), followed by its own buffer for what does not fit. A frame that fits is done: its chains are completed (with
//! num_buffers in the first header when buffers are mergeable) and the rest stay held for the
//! next frame. One that does not fit waits, its tail in the queue's buffer, until the driver
//! posts enough buffers; meanwhile the tap is not watched, so further frames wait in the tap
//! (the kernel drops them when its queue is full). Held chains go back to the ring (unpop)
//! whenever the queue drains for a sleep or a stop.
//!
//! All ring work happens in `process`: the worker turns driver notifications back on when it
//! returns `Drained`, which it does only when the ring has nothing more to take. A tap event
//! only asks for `process`.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vu_core::{warn_ratelimited, Interest, Progress, QueueHandler, QueueIo};

use super::backend::{IoVecs, TapFd, MAX_IOVS};
use super::config::{HDR_LEN, NUM_BUFFERS_OFFSET};
use super::stats::Counters;

/// Frames per `process` call: then the worker looks at its commands, and comes back at once
/// since the tap is still readable.
const BUDGET: usize = 64;

/// The queue's own buffer: a header and the largest frame a tap hands over with GSO (64 KiB
/// plus headers), with room to spare. A longer frame is cut by the tap and dropped.
pub(crate) const BOUNCE_LEN: usize = HDR_LEN + 65536 + 4096;

/// Most chains held ahead of frames.
const MAX_HELD: usize = 256;

/// How the driver takes frames, from the negotiated features.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RxMode {
    /// Header length (10 or 12).
    pub(crate) hdr_len: usize,
    /// MRG_RXBUF: a frame may span several chains.
    pub(crate) mergeable: bool,
    /// Bytes (header included) to hold chains for before reading: the largest frame expected.
    pub(crate) want: usize,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    head: u16,
    room: usize,
}

/// A frame read but not delivered: `len` bytes (header included), the first `in_guest` of
/// them already in the first held chains, the rest in the bounce buffer at their own offsets.
#[derive(Debug, Clone, Copy)]
struct Pending {
    len: usize,
    in_guest: usize,
}

enum Read {
    /// A frame was delivered or dropped.
    Frame,
    /// The tap has no frame.
    Empty,
    /// A frame waits for more buffers.
    Waiting,
    /// Reading the tap failed.
    Failed,
}

/// The receive handler of one queue pair.
pub(crate) struct RxHandler {
    tap: Arc<TapFd>,
    counters: Arc<Counters>,
    mode: RxMode,
    held: VecDeque<Held>,
    held_room: usize,
    bounce: Box<[u8]>,
    pending: Option<Pending>,
    /// The tap is registered with the worker (readable).
    watching: bool,
    /// The tap may have a frame (no EAGAIN since its last event).
    tap_ready: bool,
    /// This queue of a multi-queue tap is detached (its ring is disabled).
    detached: bool,
    /// Recent frame sizes (header included), a decaying maximum: each read offers the kernel
    /// held chains for about this much, and the bounce buffer for the rest, so that small
    /// frames do not drag dozens of iovecs through every readv.
    estimate: usize,
    iov: IoVecs,
}

impl RxHandler {
    pub(crate) fn new(tap: Arc<TapFd>, counters: Arc<Counters>, mode: RxMode) -> Self {
        RxHandler {
            tap,
            counters,
            mode,
            held: VecDeque::new(),
            held_room: 0,
            bounce: vec![0u8; BOUNCE_LEN].into_boxed_slice(),
            pending: None,
            watching: true,
            tap_ready: true,
            // Attach on the first run: a queue a previous device detached is attached again.
            detached: true,
            estimate: mode.want,
            iov: IoVecs::default(),
        }
    }

    fn watch(&mut self, q: &mut QueueIo, on: bool) {
        if self.watching != on {
            self.watching = on;
            q.set_interest(
                0,
                if on {
                    Interest::Readable
                } else {
                    Interest::None
                },
            );
        }
    }

    fn set_attached(&mut self, attached: bool) {
        if self.detached != attached {
            return;
        }
        match self.tap.set_attached(attached) {
            Ok(()) => self.detached = !attached,
            Err(e) => {
                warn_ratelimited!(error = %e, attached, "cannot attach or detach a tap queue")
            }
        }
    }

    /// Out of buffers: stop watching the tap until the driver posts some.
    fn starve(&mut self, q: &mut QueueIo) -> Progress {
        if self.watching {
            Counters::inc(&self.counters.rx_no_buffers);
        }
        self.watch(q, false);
        Progress::Drained
    }

    fn run(&mut self, q: &mut QueueIo) -> Progress {
        self.set_attached(true);
        for _ in 0..BUDGET {
            if self.pending.is_some() {
                if !self.deliver_pending(q) {
                    return self.starve(q);
                }
                continue;
            }
            if !self.tap_ready {
                self.watch(q, true);
                return Progress::Busy;
            }
            let max = if self.mode.mergeable { MAX_HELD } else { 1 };
            self.fill(q, self.mode.want, max);
            if self.held.is_empty() {
                return self.starve(q);
            }
            match self.read(q) {
                Read::Frame => {}
                Read::Empty => {
                    self.tap_ready = false;
                    self.watch(q, true);
                    return Progress::Busy;
                }
                Read::Waiting => return self.starve(q),
                Read::Failed => {
                    // Tried again on the next kick; a dead tap must not wake the worker.
                    self.watch(q, false);
                    return Progress::Busy;
                }
            }
        }
        self.watch(q, true);
        Progress::Busy
    }

    /// Takes chains until `target` bytes or `max` chains are held, or the ring is empty.
    /// Chains too small for a header are returned unused.
    fn fill(&mut self, q: &mut QueueIo, target: usize, max: usize) {
        while self.held_room < target && self.held.len() < max {
            let Some(head) = q.pop() else {
                return;
            };
            let room = q.chain(head).writable_len() as usize;
            if room < self.mode.hdr_len {
                Counters::inc(&self.counters.rx_bad_buffers);
                q.complete(head, 0);
                continue;
            }
            self.held.push_back(Held { head, room });
            self.held_room += room;
        }
    }

    /// Reads one frame into the held chains (then the bounce buffer) and delivers it.
    fn read(&mut self, q: &mut QueueIo) -> Read {
        self.iov.clear();
        let mut room = 0;
        for h in &self.held {
            let segs = q.chain(h.head).writable();
            if self.iov.len() + segs.len() >= MAX_IOVS {
                break;
            }
            for s in segs {
                self.iov.push(s.host, s.len as usize);
            }
            room += h.room;
            if room >= self.estimate || !self.mode.mergeable {
                break;
            }
        }
        let spill = BOUNCE_LEN.saturating_sub(room);
        if spill > 0 {
            self.iov
                .push(self.bounce.as_mut_ptr() as usize + room, spill);
        }
        let n = match self.tap.readv(&self.iov) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Empty,
            Err(e) => {
                Counters::inc(&self.counters.rx_read_errors);
                warn_ratelimited!(queue = q.index(), error = %e, "cannot read the tap");
                return Read::Failed;
            }
        };
        if n > room + spill || (!self.mode.mergeable && n > room) {
            Counters::inc(&self.counters.rx_dropped_too_big);
            return Read::Frame;
        }
        if n < self.mode.hdr_len {
            Counters::inc(&self.counters.rx_dropped_malformed);
            return Read::Frame;
        }
        self.estimate = n.max(self.estimate - self.estimate / 32);
        if n <= room {
            self.complete_frame(q, n);
            return Read::Frame;
        }
        Counters::inc(&self.counters.rx_copied);
        self.pending = Some(Pending {
            len: n,
            in_guest: room,
        });
        if self.deliver_pending(q) {
            Read::Frame
        } else {
            Read::Waiting
        }
    }

    /// Delivers the pending frame if the driver has posted room for it: copies its tail from
    /// the bounce buffer into the held chains. False if it still waits.
    fn deliver_pending(&mut self, q: &mut QueueIo) -> bool {
        let Some(p) = self.pending else {
            return true;
        };
        let max = if self.mode.mergeable {
            usize::from(q.size())
        } else {
            1
        };
        self.fill(q, p.len, max);
        if self.held_room < p.len {
            if self.held.len() < max {
                return false;
            }
            // As many chains as the ring has descriptors, and still too small: it never fits.
            // (A driver whose chains take several descriptors each, and which posts less
            // than a frame in all, makes it wait for good, as QEMU's own device would.)
            Counters::inc(&self.counters.rx_dropped_too_big);
            self.pending = None;
            return true;
        }
        let mut skip = p.in_guest;
        let mut src = &self.bounce[p.in_guest..p.len];
        for h in &self.held {
            if src.is_empty() {
                break;
            }
            if skip >= h.room {
                skip -= h.room;
                continue;
            }
            let n = (h.room - skip).min(src.len());
            let done = q.chain(h.head).write_at(skip as u32, &src[..n]);
            if done != n {
                warn_ratelimited!(queue = q.index(), "receive buffer is not writable");
            }
            src = &src[n..];
            skip = 0;
        }
        self.pending = None;
        self.complete_frame(q, p.len);
        true
    }

    /// The frame of `len` bytes fills the first held chains: sets num_buffers in its header
    /// and completes them.
    fn complete_frame(&mut self, q: &mut QueueIo, len: usize) {
        let mut count = 0usize;
        let mut acc = 0;
        for h in &self.held {
            count += 1;
            acc += h.room;
            if acc >= len {
                break;
            }
        }
        if self.mode.hdr_len == HDR_LEN {
            if let Some(first) = self.held.front() {
                set_num_buffers(q, first.head, count as u16);
            }
        }
        let mut left = len;
        for _ in 0..count {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            let used = h.room.min(left);
            left -= used;
            self.held_room -= h.room;
            q.complete(h.head, used as u32);
        }
        Counters::inc(&self.counters.rx_packets);
        Counters::add(&self.counters.rx_bytes, (len - self.mode.hdr_len) as u64);
    }

    /// Before a sleep or a stop: the part of a waiting frame already in guest buffers moves
    /// to the bounce buffer, and every held chain goes back to the ring.
    fn give_back(&mut self, q: &mut QueueIo) {
        if let Some(p) = self.pending {
            let saved = self.save_guest_part(q, p.in_guest);
            self.pending = if saved == p.in_guest {
                Some(Pending {
                    len: p.len,
                    in_guest: 0,
                })
            } else {
                Counters::inc(&self.counters.rx_dropped_stopped);
                None
            };
        }
        while let Some(h) = self.held.pop_back() {
            if !q.unpop(h.head) {
                // A refused chain was taken in between: this one cannot go back.
                Counters::inc(&self.counters.rx_bad_buffers);
                q.complete(h.head, 0);
            }
        }
        self.held_room = 0;
    }
}

/// Writes num_buffers into the header at the start of chain `head`'s writable buffers.
fn set_num_buffers(q: &QueueIo, head: u16, count: u16) {
    let nb = count.to_le_bytes();
    let chain = q.chain(head);
    match chain.writable().first() {
        Some(s) if s.len as usize >= HDR_LEN => {
            // SAFETY: the segment's host address maps `s.len` (>= 12) bytes of guest memory,
            // kept mapped by the chain the queue holds until it is completed; the driver
            // shares that memory, hence a volatile write of a byte array (alignment 1).
            // Completing the chain marks the segment dirty for logging.
            unsafe { std::ptr::write_volatile((s.host + NUM_BUFFERS_OFFSET) as *mut [u8; 2], nb) };
        }
        _ => {
            chain.write_at(NUM_BUFFERS_OFFSET as u32, &nb);
        }
    }
}

impl RxHandler {
    /// Copies the first `len` bytes of the held chains into the bounce buffer; returns how
    /// many it could.
    fn save_guest_part(&mut self, q: &QueueIo, len: usize) -> usize {
        let mut off = 0;
        for h in &self.held {
            let chain = q.chain(h.head);
            let Some(mem) = chain.memory() else {
                return off;
            };
            for s in chain.writable() {
                let n = (s.len as usize).min(len - off);
                if n == 0 {
                    return off;
                }
                if mem
                    .read_slice(&mut self.bounce[off..off + n], GuestAddress(s.addr))
                    .is_err()
                {
                    return off;
                }
                off += n;
            }
        }
        off
    }
}

impl QueueHandler for RxHandler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.tap.raw()]
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        self.run(q)
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        self.tap_ready = true;
        if q.is_enabled() {
            q.request_process();
        } else {
            // A disabled ring takes nothing: let the kernel steer frames to other queues.
            self.set_attached(false);
            self.watch(q, false);
        }
    }

    fn drain(&mut self, q: &mut QueueIo) {
        self.give_back(q);
    }
}

impl Drop for RxHandler {
    fn drop(&mut self) {
        if self.pending.is_some() {
            Counters::inc(&self.counters.rx_dropped_stopped);
        }
    }
}

impl std::fmt::Debug for RxHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxHandler")
            .field("mode", &self.mode)
            .field("held", &self.held.len())
            .field("pending", &self.pending)
            .finish()
    }
}
