//! The queue worker at light load: kicks are watched edge-triggered and never read (each
//! still wakes the worker, also after a sleep), work that a handler finishes on the worker
//! thread without any event fd is collected before every sleep (`before_sleep`) and
//! notified, and the queue's counters are published once per flush. With EVENT_IDX (the
//! driver kicks only when it crosses the device's avail_event, and the device notifies only
//! when it crosses the driver's used_event) and without: a missed kick or notification hangs
//! the driver, so every step here waits with a deadline. Driven directly (a `QueueIo` on
//! anonymous guest memory and `Worker::spawn`), without a connection.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::worker::Worker;
use vu_core::{Progress, QueueHandler, QueueIo};

const SIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x8000;
const TIMEOUT: Duration = Duration::from_secs(20);
const USED_EVENT: u64 = AVAIL + 4 + 2 * SIZE as u64;
const AVAIL_EVENT: u64 = USED + 4 + 8 * SIZE as u64;

/// `vring_need_event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Completes every request at once (`Inline`), or holds what it pops and completes it only
/// in `before_sleep` (`OnWorker`: like io_uring completions that task work posts on the
/// worker thread, signalled by no event fd).
enum Mode {
    Inline,
    OnWorker,
}

struct Handler {
    mode: Mode,
    held: VecDeque<u16>,
    /// How many times `before_sleep` completed something.
    collected: Arc<Mutex<usize>>,
}

impl QueueHandler for Handler {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            match self.mode {
                Mode::Inline => q.complete(head, 4),
                Mode::OnWorker => self.held.push_back(head),
            }
        }
        Progress::Drained
    }

    fn before_sleep(&mut self, q: &mut QueueIo) -> bool {
        if self.held.is_empty() {
            return false;
        }
        while let Some(head) = self.held.pop_front() {
            q.complete(head, 4);
        }
        *self.collected.lock().expect("lock") += 1;
        true
    }

    fn in_flight(&self) -> usize {
        self.held.len()
    }

    fn drain(&mut self, q: &mut QueueIo) {
        self.before_sleep(q);
    }
}

/// The driver: offers one-descriptor chains, kicks as a driver does (only when the device
/// asks for it, with EVENT_IDX), and waits for completions on the call eventfd.
struct Driver {
    mem: GuestMemoryMmap<LogBitmap>,
    event_idx: bool,
    avail_idx: u16,
    kicked_idx: u16,
    kick: EventFd,
    call: EventFd,
    kicks: usize,
}

impl Driver {
    /// Makes a chain available and publishes it (one request per publish).
    fn offer(&mut self) {
        let d = self.avail_idx % SIZE;
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&(BUF + 64 * u64::from(d)).to_le_bytes());
        desc[8..12].copy_from_slice(&16u32.to_le_bytes());
        desc[12..14].copy_from_slice(&2u16.to_le_bytes());
        self.mem
            .write_slice(&desc, GuestAddress(DESC + 16 * u64::from(d)))
            .expect("descriptor");
        self.mem
            .write_obj(d, GuestAddress(AVAIL + 4 + 2 * u64::from(d)))
            .expect("avail entry");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .expect("avail idx");
    }

    /// Kicks if the device asked for it (always without EVENT_IDX, unless it set NO_NOTIFY).
    fn kick_if_needed(&mut self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let (new, old) = (self.avail_idx, self.kicked_idx);
        self.kicked_idx = new;
        let needed = if self.event_idx {
            let event: u16 = self
                .mem
                .load(GuestAddress(AVAIL_EVENT), Ordering::Acquire)
                .expect("avail_event");
            need_event(event, new, old)
        } else {
            let flags: u16 = self
                .mem
                .load(GuestAddress(USED), Ordering::Acquire)
                .expect("used flags");
            flags & 1 == 0
        };
        if needed {
            self.kicks += 1;
            self.kick.write(1).expect("kick");
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .expect("used idx")
    }

    /// Waits until the device has used `n` requests in all, sleeping on the call eventfd
    /// with notifications enabled (as an interrupt-driven driver): a device that publishes
    /// without the notification the driver asked for fails here.
    fn wait_used(&mut self, n: u16) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let used = self.used_idx();
            if used == n {
                return;
            }
            // Ask to be told about the next completion after what was seen, then look again
            // (the device may have published meanwhile, without a notification).
            self.mem
                .store(used, GuestAddress(USED_EVENT), Ordering::Release)
                .expect("used_event");
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.used_idx() != used {
                continue;
            }
            assert!(
                wait_readable(&self.call, deadline),
                "no notification: used index {used}, expected {n} (the device missed a kick or a call)"
            );
            let _ = self.call.read();
        }
    }
}

fn wait_readable(fd: &EventFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, owned by this frame, for a descriptor `fd` keeps open.
    unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) == 1 }
}

fn start(mode: Mode, event_idx: bool) -> (Driver, Worker, Arc<VringShared>, Arc<Mutex<usize>>) {
    let mem: GuestMemoryMmap<LogBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory");
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let shared = Arc::new(VringShared::default());
    shared.enabled.store(true, Ordering::SeqCst);
    let call = EventFd::new(EFD_NONBLOCK).expect("call");
    *shared.call.lock().expect("call lock") = Some(call.try_clone().expect("dup call"));
    let setup = QueueSetup {
        index: 0,
        size: SIZE,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        base: 0,
        event_idx,
        indirect: false,
    };
    let io = QueueIo::new(&setup, atomic, None, DirtyLog::new(), shared.clone()).expect("queue");
    let collected = Arc::new(Mutex::new(0));
    let handler = Handler {
        mode,
        held: VecDeque::new(),
        collected: collected.clone(),
    };
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let worker = Worker::spawn(
        io,
        Box::new(handler),
        kick.try_clone().expect("dup kick"),
        "light",
        0,
    )
    .expect("worker");
    let driver = Driver {
        mem,
        event_idx,
        avail_idx: 0,
        kicked_idx: 0,
        kick,
        call,
        kicks: 0,
    };
    (driver, worker, shared, collected)
}

/// One request at a time, then bursts published one request at a time (a kick only where
/// the device asks): every request completes and is notified, though no kick is ever read.
fn requests_one_by_one_and_in_bursts(mode: Mode, event_idx: bool) -> (Driver, usize) {
    let (mut d, worker, shared, collected) = start(mode, event_idx);
    let mut done = 0u16;
    for _ in 0..300 {
        d.offer();
        d.kick_if_needed();
        done += 1;
        d.wait_used(done);
    }
    for burst in 1..=SIZE {
        for _ in 0..burst {
            d.offer();
            d.kick_if_needed();
        }
        done = done.wrapping_add(burst);
        d.wait_used(done);
    }
    // Published once per flush: all of them, nothing held.
    let stats = &shared.stats;
    let total = 300 + (1..=u64::from(SIZE)).sum::<u64>();
    assert_eq!(stats.completed.load(Ordering::Relaxed), total);
    assert_eq!(stats.bytes_to_driver.load(Ordering::Relaxed), 4 * total);
    assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
    drop(worker);
    let n = *collected.lock().expect("lock");
    (d, n)
}

#[test]
fn unread_kicks_wake_the_worker_every_time_with_event_idx() {
    let (d, _) = requests_one_by_one_and_in_bursts(Mode::Inline, true);
    assert!(d.kicks >= 300, "each lone request needed its kick");
}

#[test]
fn unread_kicks_wake_the_worker_every_time_without_event_idx() {
    requests_one_by_one_and_in_bursts(Mode::Inline, false);
}

#[test]
fn work_finished_on_the_worker_is_collected_and_notified_before_it_sleeps() {
    for event_idx in [true, false] {
        let (_, collected) = requests_one_by_one_and_in_bursts(Mode::OnWorker, event_idx);
        assert!(collected >= 300, "before_sleep completed the requests");
    }
}

#[test]
fn a_kick_during_sleep_is_taken_after_wake() {
    let (mut d, worker, _shared, _) = start(Mode::Inline, true);
    d.offer();
    d.kick_if_needed();
    d.wait_used(1);
    worker.sleep();
    d.offer();
    d.kick_if_needed();
    assert_eq!(d.kicks, 2, "the device asked for the second kick");
    // A sleeping device takes nothing (checked for a while).
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(d.used_idx(), 1, "asleep: the request waits");
    worker.wake();
    d.wait_used(2);
    // And kicks keep working afterwards.
    d.offer();
    d.kick_if_needed();
    d.wait_used(3);
    drop(worker);
}
