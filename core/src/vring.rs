//! Virtqueues: the per-queue runtime a device sees (`QueueIo`) and the worker thread that
//! drives it (one epoll thread per queue).

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::chain::Chain;
use crate::device::{Progress, QueueHandler};
use crate::dirty_log::DirtyLog;
use crate::inflight::InflightQueue;
use crate::memory::{host_span, GuestMem, GuestMemAtomic};
use crate::warn_ratelimited;

const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Counters for one queue, readable while it runs.
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
}

/// State shared between the connection thread and a queue's worker.
#[derive(Debug)]
pub struct VringShared {
    /// Where to signal used buffers; swapped on SET_VRING_CALL while running.
    pub call: Mutex<Option<EventFd>>,
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
    fn signal_call(&self) {
        let guard = self.call.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = guard.as_ref() {
            let _ = fd.write(1);
            self.stats.notifications.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn signal_err(&self) {
        let guard = self.err.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = guard.as_ref() {
            let _ = fd.write(1);
        }
    }
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

/// The runtime of one started queue, as the device sees it.
#[derive(Debug)]
pub struct QueueIo {
    index: usize,
    queue: Queue,
    size: u16,
    used_ring: u64,
    avail_ring: u64,
    indirect: bool,
    mem_atomic: GuestMemAtomic,
    mem: Arc<GuestMem>,
    slots: Vec<Chain>,
    busy: Vec<bool>,
    in_device: usize,
    resubmit: VecDeque<u16>,
    inflight: Option<InflightQueue>,
    counter: u64,
    next_used: Wrapping<u16>,
    signalled_used: Wrapping<u16>,
    pending_used: u16,
    drained: bool,
    broken: bool,
    chain_errors: bool,
    /// Host addresses of the rings in `mem`, translated once per memory snapshot (see
    /// `translate_rings`); `None` where a ring does not lie in one region (the vm-memory
    /// accessors are used then).
    used_host: Option<usize>,
    avail_host: Option<usize>,
    log: Arc<DirtyLog>,
    shared: Arc<VringShared>,
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
        let n = setup.size as usize;
        let mut io = QueueIo {
            index: idx,
            queue,
            size: setup.size,
            used_ring: setup.used,
            avail_ring: setup.avail,
            indirect: setup.indirect,
            mem_atomic,
            mem,
            slots: (0..n).map(|_| Chain::default()).collect(),
            busy: vec![false; n],
            in_device: 0,
            resubmit,
            inflight,
            counter,
            next_used: Wrapping(guest_used),
            signalled_used: Wrapping(guest_used),
            pending_used: 0,
            drained: false,
            broken: false,
            chain_errors: false,
            used_host: None,
            avail_host: None,
            log,
            shared,
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
            let head = if let Some(h) = self.resubmit.pop_front() {
                h
            } else {
                match self.next_avail_head() {
                    Some(h) => h,
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
        let stats = &self.shared.stats;
        stats
            .bytes_from_driver
            .fetch_add(self.slots[h].readable_len() as u64, Ordering::Relaxed);
        stats
            .bytes_to_driver
            .fetch_add(len as u64, Ordering::Relaxed);
        self.slots[h].release();
        self.busy[h] = false;
        self.in_device -= 1;
        self.shared.stats.completed.fetch_add(1, Ordering::Relaxed);
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

    /// Publishes completed requests and notifies the driver if it wants to be told.
    pub fn flush(&mut self) {
        if self.chain_errors {
            self.chain_errors = false;
            self.shared.signal_err();
        }
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
        if self.needs_notification(new) {
            self.shared.signal_call();
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

    fn disable_notification(&mut self) {
        let mem = self.mem.clone();
        let _ = self.queue.disable_notification(&*mem);
    }

    /// Re-enables driver notifications; returns true if more buffers arrived meanwhile.
    fn enable_notification(&mut self) -> bool {
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

/// Commands from the connection thread to a worker.
#[derive(Debug)]
enum Command {
    Stop,
    Sleep(mpsc::Sender<()>),
    Wake,
    Poke,
}

/// Handle to a running queue worker.
#[derive(Debug)]
pub struct Worker {
    ctl: Arc<EventFd>,
    cmds: Arc<Mutex<VecDeque<Command>>>,
    thread: Option<JoinHandle<QueueIo>>,
}

impl Worker {
    /// Starts a worker thread for `io`, woken by `kick`. With `poll_us` > 0 it busy-polls
    /// for that long after running out of work before it sleeps (not while the device has
    /// requests in the kernel).
    pub fn spawn(
        io: QueueIo,
        handler: Box<dyn QueueHandler>,
        kick: EventFd,
        device: &str,
        poll_us: u32,
    ) -> Result<Self, VringError> {
        let ctl = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VringError::Worker)?);
        let cmds = Arc::new(Mutex::new(VecDeque::new()));
        let epoll = Epoll::new().map_err(VringError::Worker)?;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(kick.as_raw_fd(), TOKEN_KICK).map_err(VringError::Worker)?;
        add(ctl.as_raw_fd(), TOKEN_CTL).map_err(VringError::Worker)?;
        for (i, fd) in handler.event_fds().into_iter().enumerate() {
            add(fd, TOKEN_DEV + i as u64).map_err(VringError::Worker)?;
        }
        let name = format!("{}-q{}", device, io.index);
        let (c2, q2) = (ctl.clone(), cmds.clone());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(io, handler, kick, epoll, c2, q2, poll_us))
            .map_err(VringError::Worker)?;
        Ok(Worker {
            ctl,
            cmds,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) {
        self.cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(cmd);
        let _ = self.ctl.write(1);
    }

    /// Wakes the worker to look at the ring again (e.g. after SET_VRING_ENABLE).
    pub fn poke(&self) {
        self.send(Command::Poke);
    }

    /// Drains the device's requests and blocks until the queue is quiet.
    pub fn sleep(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Sleep(tx));
        let _ = rx.recv();
    }

    /// Resumes after `sleep`.
    pub fn wake(&self) {
        self.send(Command::Wake);
    }

    /// Drains, stops the thread and returns the runtime (for its ring indexes).
    pub fn stop(mut self) -> Option<QueueIo> {
        self.send(Command::Stop);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.send(Command::Stop);
            let _ = t.join();
        }
    }
}

const TOKEN_KICK: u64 = 0;
const TOKEN_CTL: u64 = 1;
const TOKEN_DEV: u64 = 2;

fn process(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    io.refresh_memory();
    if !io.shared.enabled.load(Ordering::Acquire) {
        return;
    }
    loop {
        io.disable_notification();
        if handler.process(io) == Progress::Busy {
            break;
        }
        if !io.enable_notification() {
            break;
        }
    }
}

/// Busy-polls the available ring for up to `budget` after the last work found, as long as
/// none of the queue's requests is in the kernel (then it sleeps until their completion),
/// with driver notifications suppressed (NO_NOTIFY; with EVENT_IDX the avail event is left
/// behind, so the driver kicks at most once), then re-enables them and looks once more, so
/// that a request made available just before the enable is not missed. Stops early when a
/// command is waiting.
fn poll_queue(
    io: &mut QueueIo,
    handler: &mut dyn QueueHandler,
    cmds: &Mutex<VecDeque<Command>>,
    budget: Duration,
) {
    if !io.shared.enabled.load(Ordering::Acquire) || io.is_broken() {
        return;
    }
    io.disable_notification();
    let mut busy = false;
    let mut since = Instant::now();
    loop {
        let mut worked = handler.poll(io);
        if worked {
            busy = false;
        }
        if !busy && io.avail_pending() {
            io.refresh_memory();
            busy = handler.process(io) == Progress::Busy;
            worked = true;
        }
        if worked {
            io.flush();
            since = Instant::now();
        } else if since.elapsed() >= budget || handler.in_flight() > 0 {
            // Requests in the kernel: their completion wakes us (the device's event fd). A
            // thread that spins meanwhile saves nothing the kernel is not already waiting
            // for, and takes the CPU its I/O may need (io_uring's workers copying buffered
            // data, or, in a VM, the hypervisor's disk emulation).
            break;
        }
        if cmds.try_lock().is_ok_and(|q| !q.is_empty()) {
            break;
        }
        std::hint::spin_loop();
    }
    if io.enable_notification() && !busy {
        process(io, handler);
    }
    io.flush();
}

fn quiesce(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    handler.drain(io);
    io.flush();
    io.shared
        .last_avail
        .store(io.next_avail() as u32, Ordering::Release);
    io.shared
        .last_used
        .store(io.next_used() as u32, Ordering::Release);
}

fn run(
    mut io: QueueIo,
    mut handler: Box<dyn QueueHandler>,
    kick: EventFd,
    epoll: Epoll,
    ctl: Arc<EventFd>,
    cmds: Arc<Mutex<VecDeque<Command>>>,
    poll_us: u32,
) -> QueueIo {
    let mut events = vec![EpollEvent::default(); 8];
    let mut asleep = false;
    let poll = Duration::from_micros(u64::from(poll_us));
    if !io.resubmit.is_empty() || io.shared.enabled.load(Ordering::Acquire) {
        process(&mut io, handler.as_mut());
        io.flush();
    }
    loop {
        if poll_us > 0 && !asleep {
            poll_queue(&mut io, handler.as_mut(), &cmds, poll);
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => {
                tracing::error!(queue = io.index, error = %e, "epoll failed; queue worker stops");
                quiesce(&mut io, handler.as_mut());
                return io;
            }
        };
        let mut want_process = false;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_KICK => {
                    if asleep {
                        // Leave the kick pending; it is read after wake.
                        continue;
                    }
                    let _ = kick.read();
                    io.shared.stats.kicks.fetch_add(1, Ordering::Relaxed);
                    want_process = true;
                }
                TOKEN_CTL => {
                    let _ = ctl.read();
                    loop {
                        let cmd = cmds.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                        match cmd {
                            None => break,
                            Some(Command::Stop) => {
                                quiesce(&mut io, handler.as_mut());
                                return io;
                            }
                            Some(Command::Sleep(ack)) => {
                                quiesce(&mut io, handler.as_mut());
                                if !asleep {
                                    asleep = true;
                                    let _ = epoll.ctl(
                                        ControlOperation::Delete,
                                        kick.as_raw_fd(),
                                        EpollEvent::default(),
                                    );
                                }
                                let _ = ack.send(());
                            }
                            Some(Command::Wake) => {
                                if asleep {
                                    asleep = false;
                                    let _ = epoll.ctl(
                                        ControlOperation::Add,
                                        kick.as_raw_fd(),
                                        EpollEvent::new(EventSet::IN, TOKEN_KICK),
                                    );
                                    want_process = true;
                                }
                            }
                            Some(Command::Poke) => want_process = !asleep,
                        }
                    }
                }
                t => {
                    let i = (t - TOKEN_DEV) as usize;
                    handler.handle_event(i, &mut io);
                    if !io.drained() && !asleep {
                        want_process = true;
                    }
                }
            }
        }
        if want_process {
            process(&mut io, handler.as_mut());
        }
        io.flush();
    }
}
