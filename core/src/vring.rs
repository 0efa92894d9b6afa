//! Virtqueues: the per-queue runtime a device sees (`QueueIo`): ring access, descriptor chains
//! taken and completed, notifications. The thread that drives it is in `worker/`; what it
//! shares with the connection thread is in `vring_shared.rs`.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

use crate::chain::Chain;
use crate::device::Interest;
use crate::dirty_log::DirtyLog;
use crate::inflight::InflightQueue;
use crate::memory::{host_span, GuestMem, GuestMemAtomic};
use crate::waker::QueueWaker;
use crate::warn_ratelimited;

pub use crate::vring_shared::{QueueStats, VringShared};

const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Completion counters kept by the worker until its next `flush`.
#[derive(Debug, Default)]
struct Unpublished {
    completed: u64,
    bytes_from_driver: u64,
    bytes_to_driver: u64,
}

/// Everything needed to start a queue's runtime.
#[derive(Debug)]
pub struct QueueSetup {
    /// Queue index.
    pub index: usize,
    /// Negotiated ring size.
    pub size: u16,
    /// Guest physical addresses of the rings.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// First available index to process (SET_VRING_BASE).
    pub base: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// VIRTIO_RING_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
}

/// Errors when a queue cannot start.
#[derive(Debug, thiserror::Error)]
pub enum VringError {
    /// The ring does not fit in guest memory, or its size is invalid.
    #[error("vring {0} is not valid in guest memory")]
    Invalid(usize),
    /// The ring's used index could not be read.
    #[error("cannot read the used ring of vring {0}")]
    UsedRing(usize),
    /// Creating the worker's epoll or eventfd failed.
    #[error("cannot set up the queue worker")]
    Worker(#[source] std::io::Error),
}

/// A queue's per-head tables: chain slots, held flags, fetch numbers (see `QueueIo`).
type PerHead = (Vec<Chain>, Vec<bool>, Vec<Option<u64>>);

/// The runtime of one started queue, as the device sees it.
#[derive(Debug)]
pub struct QueueIo {
    pub(crate) index: usize,
    queue: Queue,
    size: u16,
    used_ring: u64,
    avail_ring: u64,
    indirect: bool,
    mem_atomic: GuestMemAtomic,
    mem: Arc<GuestMem>,
    slots: Vec<Chain>,
    busy: Vec<bool>,
    /// Per head held by the device: the fetch number (`fetch_seq`) it was read from the
    /// available ring with, or `None` if it came from `resubmit` (see `unpop`).
    fetched: Vec<Option<u64>>,
    /// Entries read from the available ring so far (including refused ones), less those
    /// given back by `unpop`.
    fetch_seq: u64,
    in_device: usize,
    pub(crate) resubmit: VecDeque<u16>,
    inflight: Option<InflightQueue>,
    counter: u64,
    next_used: Wrapping<u16>,
    signalled_used: Wrapping<u16>,
    pending_used: u16,
    /// Counters of completions not yet added to `shared.stats` (published by `flush`, once
    /// per batch instead of an atomic add per request).
    unpublished: Unpublished,
    drained: bool,
    broken: bool,
    chain_errors: bool,
    /// Host addresses of the rings in `mem`, translated once per memory snapshot (see
    /// `translate_rings`); `None` where a ring does not lie in one region (the vm-memory
    /// accessors are used then).
    used_host: Option<usize>,
    avail_host: Option<usize>,
    log: Arc<DirtyLog>,
    pub(crate) shared: Arc<VringShared>,
    /// `set_interest` calls not yet applied by the worker.
    pub(crate) interest_changes: Vec<(usize, Interest)>,
    /// `request_process` was called since the worker last ran `process`.
    pub(crate) process_requested: bool,
    /// Asks the worker for a `process` (`waker`).
    pub(crate) waker: QueueWaker,
    /// Signal the driver once when the queue first runs enabled: see `notify_resumed`.
    notify_on_start: bool,
}

impl QueueIo {
    /// Builds the runtime; recovers in-flight requests when `inflight` holds any.
    /// (Public so device tests can drive a queue without a connection.)
    pub fn new(
        setup: &QueueSetup,
        mem_atomic: GuestMemAtomic,
        inflight: Option<InflightQueue>,
        log: Arc<DirtyLog>,
        shared: Arc<VringShared>,
    ) -> Result<Self, VringError> {
        Self::build(setup, mem_atomic, inflight, log, shared, |n| {
            (
                (0..n).map(|_| Chain::default()).collect(),
                vec![false; n],
                vec![None; n],
            )
        })
    }

    /// Puts the runtime back in the state `new` gives it for `setup` (without in-flight
    /// tracking), keeping its memory, dirty log and shared state, and reusing its per-head
    /// tables instead of allocating them again: for a driver that runs many independent
    /// sessions on one queue (a test, a fuzz target), as if the queue had been stopped and
    /// started again. Chains the device still held are released and forgotten (nothing is
    /// completed; the handler that held them must be dropped or drained as well). On error
    /// the queue is left as it was.
    pub fn reset(&mut self, setup: &QueueSetup) -> Result<(), VringError> {
        let mem_atomic = self.mem_atomic.clone();
        let (log, shared) = (self.log.clone(), self.shared.clone());
        let fresh = Self::build(setup, mem_atomic, None, log, shared, |n| {
            let mut slots = std::mem::take(&mut self.slots);
            let mut busy = std::mem::take(&mut self.busy);
            let mut fetched = std::mem::take(&mut self.fetched);
            // Slots not held were released when they were completed or refused.
            if self.in_device > 0 {
                for (slot, held) in slots.iter_mut().zip(&busy) {
                    if *held {
                        slot.release();
                    }
                }
            }
            slots.resize_with(n, Chain::default);
            busy.clear();
            busy.resize(n, false);
            fetched.clear();
            fetched.resize(n, None);
            (slots, busy, fetched)
        })?;
        *self = fresh;
        Ok(())
    }

    /// `new`, with the per-head tables (chain slots, held flags, fetch numbers) for a ring of
    /// `n` heads from `tables(n)`, called once the setup is known to be valid.
    fn build(
        setup: &QueueSetup,
        mem_atomic: GuestMemAtomic,
        inflight: Option<InflightQueue>,
        log: Arc<DirtyLog>,
        shared: Arc<VringShared>,
        tables: impl FnOnce(usize) -> PerHead,
    ) -> Result<Self, VringError> {
        let idx = setup.index;
        let mut queue = Queue::new(setup.size).map_err(|_| VringError::Invalid(idx))?;
        queue.set_desc_table_address(Some(setup.desc as u32), Some((setup.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(setup.avail as u32), Some((setup.avail >> 32) as u32));
        queue.set_used_ring_address(Some(setup.used as u32), Some((setup.used >> 32) as u32));
        queue.set_event_idx(setup.event_idx);
        queue.set_ready(true);
        let mem = mem_atomic.memory().into_inner();
        if !queue.is_valid(&*mem)
            || !setup.desc.is_multiple_of(16)
            || !setup.avail.is_multiple_of(2)
            || !setup.used.is_multiple_of(4)
        {
            return Err(VringError::Invalid(idx));
        }
        let guest_used: u16 = mem
            .load(GuestAddress(setup.used + 2), Ordering::Acquire)
            .map_err(|_| VringError::UsedRing(idx))?;
        let mut base = setup.base;
        let mut resubmit = VecDeque::new();
        let mut counter = 0;
        let mut inflight = inflight;
        if let Some(tracker) = inflight.as_mut() {
            let (heads, next) = tracker.recover(guest_used);
            counter = next;
            if !heads.is_empty() {
                // Everything fetched was either used or is still in flight.
                base = guest_used.wrapping_add(heads.len() as u16);
                tracing::info!(
                    queue = idx,
                    count = heads.len(),
                    "resubmitting in-flight requests"
                );
                resubmit.extend(heads);
            }
        }
        queue.set_next_avail(base);
        queue.set_next_used(guest_used);
        let (slots, busy, fetched) = tables(setup.size as usize);
        let mut io = QueueIo {
            index: idx,
            queue,
            size: setup.size,
            used_ring: setup.used,
            avail_ring: setup.avail,
            indirect: setup.indirect,
            mem_atomic,
            mem,
            slots,
            busy,
            fetched,
            fetch_seq: 0,
            in_device: 0,
            resubmit,
            inflight,
            counter,
            next_used: Wrapping(guest_used),
            signalled_used: Wrapping(guest_used),
            pending_used: 0,
            unpublished: Unpublished::default(),
            drained: false,
            broken: false,
            chain_errors: false,
            used_host: None,
            avail_host: None,
            log,
            shared,
            interest_changes: Vec::new(),
            waker: QueueWaker::default(),
            process_requested: false,
            notify_on_start: false,
        };
        io.translate_rings();
        Ok(io)
    }

    /// Translates the used ring (flags, index, `size` 8-byte elements, avail_event) and the
    /// available ring (flags, index, `size` entries, used_event) to host addresses in the
    /// current snapshot; both 2-byte aligned, for atomic accesses to the indexes.
    fn translate_rings(&mut self) {
        let size = u64::from(self.size);
        self.used_host = host_span(&self.mem, self.used_ring, 6 + 8 * size, 2);
        self.avail_host = host_span(&self.mem, self.avail_ring, 6 + 2 * size, 2);
    }

    /// The driver's available index (acquire: the entries it covers are visible after it).
    fn avail_idx(&self) -> Option<u16> {
        match self.avail_host {
            // SAFETY: `translate_rings` checked that the available ring lies in one mapped
            // region of `self.mem`, the snapshot the address belongs to (reset with it), which
            // `self.mem` keeps mapped; the index at offset 2 is 2-byte aligned (checked). The
            // driver writes it concurrently: an atomic load.
            Some(h) => Some(u16::from_le(unsafe {
                (*((h + 2) as *const AtomicU16)).load(Ordering::Acquire)
            })),
            None => self
                .mem
                .load::<u16>(GuestAddress(self.avail_ring + 2), Ordering::Acquire)
                .ok()
                .map(u16::from_le),
        }
    }

    /// The available ring's entry `i` (< size), or with `i == size` its used_event field.
    fn avail_entry(&self, i: u16) -> Option<u16> {
        match self.avail_host {
            // SAFETY: as in `avail_idx`; entry `i <= size` (used_event) is inside the
            // translated span of 6 + 2 * size bytes.
            Some(h) => Some(u16::from_le(unsafe {
                (*((h + 4 + 2 * i as usize) as *const AtomicU16)).load(Ordering::Acquire)
            })),
            None => self
                .mem
                .load::<u16>(
                    GuestAddress(self.avail_ring + 4 + 2 * u64::from(i)),
                    Ordering::Acquire,
                )
                .ok()
                .map(u16::from_le),
        }
    }

    /// Changes what the worker waits for on the handler's event fd `fd_index` (an index into
    /// `QueueHandler::event_fds()`), from the next wait on.
    pub fn set_interest(&mut self, fd_index: usize, interest: Interest) {
        self.interest_changes.push((fd_index, interest));
    }

    /// Asks the worker to run `QueueHandler::process` once the current `handle_event`
    /// returns, even if the last `pop` found the ring empty: for a handler that stopped
    /// taking requests until some event (a rate-limit timer, a source becoming readable)
    /// and can take them again now. (Without it the worker runs `process` after an event
    /// only while `drained()` is false.) Ignored while the queue sleeps or is disabled.
    pub fn request_process(&mut self) {
        self.process_requested = true;
    }

    /// Queue index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Current guest memory snapshot.
    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Adds the completions since the last call to the shared counters, and the number of
    /// requests held now (once per batch: `flush`).
    fn publish_stats(&mut self) {
        let stats = &self.shared.stats;
        stats
            .in_flight
            .store(self.in_device as u64, Ordering::Relaxed);
        let u = std::mem::take(&mut self.unpublished);
        if u.completed > 0 {
            stats.completed.fetch_add(u.completed, Ordering::Relaxed);
            stats
                .bytes_from_driver
                .fetch_add(u.bytes_from_driver, Ordering::Relaxed);
            stats
                .bytes_to_driver
                .fetch_add(u.bytes_to_driver, Ordering::Relaxed);
        }
    }

    /// Requests taken by the device and not yet completed.
    pub fn in_device(&self) -> usize {
        self.in_device
    }

    /// Next available index (what GET_VRING_BASE reports once drained).
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Next used index.
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Whether the last `pop` found the ring empty.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Loads the current guest memory snapshot.
    pub fn refresh_memory(&mut self) {
        let mem = self.mem_atomic.memory().into_inner();
        if !Arc::ptr_eq(&mem, &self.mem) {
            // Compared while the old snapshot is still alive, so a new one at the same
            // address cannot be mistaken for it.
            self.mem = mem;
            self.translate_rings();
        }
    }

    /// Takes the next request. Malformed chains are completed with length 0 here and never
    /// reach the device. Returns the head index; the chain is `chain(head)`.
    pub fn pop(&mut self) -> Option<u16> {
        loop {
            let (head, seq) = if let Some(h) = self.resubmit.pop_front() {
                (h, None)
            } else {
                match self.next_avail_head() {
                    Some(h) => {
                        self.fetch_seq += 1;
                        (h, Some(self.fetch_seq))
                    }
                    None => {
                        self.drained = true;
                        return None;
                    }
                }
            };
            let h = head as usize;
            if h >= self.slots.len() {
                warn_ratelimited!(
                    queue = self.index,
                    head,
                    "driver offered an out-of-range head"
                );
                self.chain_errors = true;
                self.shared
                    .stats
                    .chain_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.busy[h] {
                warn_ratelimited!(
                    queue = self.index,
                    head,
                    "driver offered a head that is in flight"
                );
                self.chain_errors = true;
                self.shared
                    .stats
                    .chain_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(t) = self.inflight.as_ref() {
                t.take(head, self.counter);
                self.counter = self.counter.wrapping_add(1);
            }
            let desc_table = GuestAddress(self.queue.desc_table());
            match self.slots[h].walk(&self.mem, desc_table, self.size, head, self.indirect) {
                Ok(()) => {
                    self.busy[h] = true;
                    self.fetched[h] = seq;
                    self.in_device += 1;
                    self.drained = false;
                    return Some(head);
                }
                Err(e) => {
                    warn_ratelimited!(queue = self.index, head, error = %e, "malformed descriptor chain");
                    self.chain_errors = true;
                    self.shared
                        .stats
                        .chain_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.slots[h].release();
                    self.push_used(head, 0);
                }
            }
        }
    }

    /// Gives back a chain taken with `pop` and not completed, as if it had never been taken:
    /// a later `pop` returns it again (walked again then). Nothing is reported to the driver;
    /// whatever the device wrote into the chain's buffers stays there (and is marked dirty
    /// when dirty logging is on). For a device that takes buffers before it knows how many it
    /// needs (a network device receiving a frame) and must give back those it did not use
    /// before the queue stops or sleeps.
    ///
    /// A chain read from the available ring can be given back only while it is the last
    /// entry read from it: give several back in the reverse order they were taken. (An entry
    /// refused by `pop` in between, completed with length 0, stops that.) A chain resubmitted
    /// after a reconnect can always be given back (it is resubmitted again first). Returns
    /// false, changing nothing, when `head` is not held or cannot be given back: the device
    /// must then complete it.
    pub fn unpop(&mut self, head: u16) -> bool {
        let h = head as usize;
        if h >= self.busy.len() || !self.busy[h] {
            return false;
        }
        match self.fetched[h] {
            Some(seq) => {
                if seq != self.fetch_seq {
                    return false;
                }
                self.fetch_seq -= 1;
                self.queue
                    .set_next_avail(self.queue.next_avail().wrapping_sub(1));
                if let Some(t) = self.inflight.as_ref() {
                    t.untake(head);
                }
            }
            // Still marked in flight: a device that dies now resubmits it again.
            None => self.resubmit.push_front(head),
        }
        if self.log.is_active() {
            for s in self.slots[h].writable() {
                self.log.mark(s.addr, s.len as u64);
            }
        }
        self.slots[h].release();
        self.busy[h] = false;
        self.fetched[h] = None;
        self.in_device -= 1;
        self.drained = false;
        true
    }

    /// Whether the front-end has enabled the queue (SET_VRING_ENABLE; always, without
    /// PROTOCOL_FEATURES). The worker only calls `QueueHandler::process` on an enabled queue;
    /// a handler acting on its own event fds checks this before it touches the ring.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Acquire)
    }

    /// Whether `pop` would find something: a request to resubmit, or an available index
    /// ahead of ours (one atomic load: for busy polling, and for a device that wants to know
    /// whether a request it just popped has company).
    pub fn avail_pending(&self) -> bool {
        if !self.resubmit.is_empty() {
            return true;
        }
        if self.broken {
            return false;
        }
        self.avail_idx()
            .is_some_and(|idx| idx != self.queue.next_avail())
    }

    /// A handle that asks the worker for a `process` of this queue, from the handler of
    /// another queue of its group or from another thread (see [`QueueWaker`]).
    pub fn waker(&self) -> QueueWaker {
        self.waker.clone()
    }

    /// Reads the next head index the driver made available, if any. Any guest address is a
    /// valid ring address (0 included). An available index more than a ring ahead of ours is
    /// a broken driver: the queue stops taking requests until it is restarted.
    fn next_avail_head(&mut self) -> Option<u16> {
        if self.broken {
            return None;
        }
        let next = self.queue.next_avail();
        let Some(idx) = self.avail_idx() else {
            return self.mark_broken("available ring is not readable");
        };
        let pending = idx.wrapping_sub(next);
        if pending == 0 {
            return None;
        }
        if pending > self.size {
            return self.mark_broken("driver published an invalid available index");
        }
        match self.avail_entry(next % self.size) {
            Some(h) => {
                self.queue.set_next_avail(next.wrapping_add(1));
                Some(h)
            }
            None => self.mark_broken("available ring is not readable"),
        }
    }

    fn mark_broken(&mut self, why: &'static str) -> Option<u16> {
        if !self.broken {
            tracing::warn!(
                queue = self.index,
                "{why}; the queue stops until it is restarted"
            );
            self.broken = true;
            self.chain_errors = true;
            self.shared
                .stats
                .chain_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Whether the driver broke the queue (it is restarted by the next SET_VRING_KICK).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The chain of a request the device holds.
    pub fn chain(&self, head: u16) -> &Chain {
        &self.slots[head as usize]
    }

    /// Completes a request: `len` bytes were written into its writable buffers.
    pub fn complete(&mut self, head: u16, len: u32) {
        let h = head as usize;
        if h >= self.busy.len() || !self.busy[h] {
            tracing::error!(
                queue = self.index,
                head,
                "device completed a request it does not hold"
            );
            return;
        }
        if self.log.is_active() {
            for s in self.slots[h].writable() {
                self.log.mark(s.addr, s.len as u64);
            }
        }
        let len = len.min(self.slots[h].writable_len());
        let u = &mut self.unpublished;
        u.bytes_from_driver += u64::from(self.slots[h].readable_len());
        u.bytes_to_driver += u64::from(len);
        u.completed += 1;
        self.slots[h].release();
        self.busy[h] = false;
        self.in_device -= 1;
        self.push_used(head, len);
    }

    fn push_used(&mut self, head: u16, len: u32) {
        let pos = (self.next_used.0 % self.size) as u64;
        let addr = GuestAddress(self.used_ring + 4 + pos * 8);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if let Some(h) = self.used_host {
            // SAFETY: `translate_rings` checked that the used ring (its `size` 8-byte
            // elements start at `h + 4`) lies inside one mapped region of `self.mem`, the
            // snapshot this address was translated in (redone whenever `mem` changes), and
            // `self.mem` keeps that mapping alive; `pos < size`. The driver shares the memory,
            // hence a volatile store of a byte array (alignment 1).
            unsafe { std::ptr::write_volatile((h + 4 + pos as usize * 8) as *mut [u8; 8], elem) };
            // Logged after the write, as vm-memory's accessors do: logging switched on between
            // a check and the write could otherwise miss it.
            self.log.mark(addr.0, 8);
        } else if self.mem.write_slice(&elem, addr).is_err() {
            warn_ratelimited!(queue = self.index, "used ring is not writable");
            return;
        }
        if let Some(t) = self.inflight.as_mut() {
            t.used(head);
        }
        self.next_used += Wrapping(1);
        self.pending_used = self.pending_used.wrapping_add(1);
    }

    /// Asks for one notification of the driver when the queue first runs enabled, if its
    /// used ring already has completions: the handler asks on the first start of a queue on
    /// a connection. A previous back-end (a process that was killed, a back-end before a
    /// reconnect) may have published completions and died before it signalled them; a driver
    /// that waits for that interrupt without a timeout (Linux's virtio_rng) would wait
    /// forever. A spurious notification is harmless: drivers look at the used ring.
    pub(crate) fn notify_on_first_run(&mut self) {
        self.notify_on_start = self.next_used.0 != 0;
    }

    /// See `notify_on_first_run`; kept pending until a call eventfd is set.
    pub(crate) fn notify_resumed(&mut self) {
        if self.notify_on_start && self.shared.signal_call() {
            self.notify_on_start = false;
        }
    }

    /// Publishes completed requests and notifies the driver if it wants to be told; updates
    /// the queue's counters (`VringShared::stats`).
    pub fn flush(&mut self) {
        if self.chain_errors {
            self.chain_errors = false;
            self.shared.signal_err();
        }
        self.publish_stats();
        if self.pending_used == 0 {
            return;
        }
        self.pending_used = 0;
        let new = self.next_used;
        match self.used_host {
            Some(h) => {
                // SAFETY: `translate_rings` checked that the used ring lies inside one mapped
                // region of `self.mem` (kept alive by it) with the index at `h + 2` 2-byte
                // aligned. Release: the elements written before are visible first.
                unsafe { (*((h + 2) as *const AtomicU16)).store(new.0.to_le(), Ordering::Release) };
                self.log.mark(self.used_ring + 2, 2);
            }
            None => {
                let _ = self
                    .mem
                    .store(new.0, GuestAddress(self.used_ring + 2), Ordering::Release);
            }
        }
        if let Some(t) = self.inflight.as_mut() {
            t.commit(new.0);
        }
        if self.log.is_active() && self.shared.log_used.load(Ordering::Relaxed) {
            let log_addr = self.shared.log_addr.load(Ordering::Relaxed);
            self.log.mark(log_addr, 6 + 8 * self.size as u64);
        }
        // Order the used index store before reading the driver's suppression state.
        fence(Ordering::SeqCst);
        if self.needs_notification(new) && !self.shared.signal_call() {
            // No call eventfd yet: a front-end sets it after the kick that starts the queue
            // (QEMU does), and a first run can publish before then. Owed until one is set
            // (`notify_resumed`; SET_VRING_CALL pokes the worker).
            self.notify_on_start = true;
        }
    }

    fn needs_notification(&mut self, new: Wrapping<u16>) -> bool {
        let old = self.signalled_used;
        if self.queue.event_idx_enabled() {
            // used_event sits right after the ring's `size` entries.
            let Some(event) = self.avail_entry(self.size) else {
                return true;
            };
            self.signalled_used = new;
            // vring_need_event(event, new, old)
            (new - Wrapping(event) - Wrapping(1)) < (new - old)
        } else {
            self.signalled_used = new;
            match self
                .mem
                .load::<u16>(GuestAddress(self.avail_ring), Ordering::Acquire)
            {
                Ok(flags) => flags & VRING_AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => true,
            }
        }
    }

    pub(crate) fn disable_notification(&mut self) {
        let mem = self.mem.clone();
        let _ = self.queue.disable_notification(&*mem);
    }

    /// Re-enables driver notifications; returns true if more buffers arrived meanwhile.
    pub(crate) fn enable_notification(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let mem = self.mem.clone();
        if !self.queue.enable_notification(&*mem).unwrap_or(false) {
            return false;
        }
        // "More buffers" only counts if the driver's index is sane: an index more than a ring
        // ahead makes `pop` find nothing, and looping on it would wedge the worker.
        match self.queue.avail_idx(&*mem, Ordering::Acquire) {
            Ok(idx) if idx.0.wrapping_sub(self.queue.next_avail()) <= self.size => true,
            _ => {
                warn_ratelimited!(
                    queue = self.index,
                    "driver published an invalid available index"
                );
                self.chain_errors = true;
                self.shared
                    .stats
                    .chain_errors
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}
