//! The queue worker and a handler's own event fds: after `handle_event` the worker runs
//! `process` when the handler asks for it (`QueueIo::request_process`), also when the last
//! `pop` found the ring empty, and not otherwise. Driven directly (a `QueueIo` on anonymous
//! guest memory and `Worker::spawn`), without a connection.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::worker::Worker;
use vu_core::{Progress, QueueHandler, QueueIo};

const SIZE: u16 = 8;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x8000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Completes every request with length 0. Its one event fd stands for "the device can work
/// again"; `ask` chooses whether the handler then calls `request_process`.
struct Handler {
    event: Arc<EventFd>,
    ask: bool,
    calls: Arc<AtomicUsize>,
}

impl QueueHandler for Handler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.event.as_raw_fd()]
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        self.calls.fetch_add(1, Ordering::SeqCst);
        while let Some(head) = q.pop() {
            q.complete(head, 0);
        }
        Progress::Drained
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        let _ = self.event.read();
        if self.ask {
            q.request_process();
        }
    }
}

struct Driver {
    mem: GuestMemoryMmap<LogBitmap>,
    avail_idx: u16,
}

impl Driver {
    /// Makes a one-descriptor chain available without kicking.
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

    fn used_idx(&self) -> u16 {
        self.mem
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .expect("used idx")
    }

    fn wait_used(&self, n: u16) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while self.used_idx() != n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

fn readable(fd: &EventFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, owned by this frame, for a descriptor `fd` keeps open.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

fn start(ask: bool) -> (Driver, Worker, EventFd, Arc<EventFd>, Arc<AtomicUsize>) {
    let mem: GuestMemoryMmap<LogBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory");
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let shared = Arc::new(VringShared::default());
    shared.enabled.store(true, Ordering::SeqCst);
    let setup = QueueSetup {
        index: 0,
        size: SIZE,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        base: 0,
        event_idx: false,
        indirect: false,
    };
    let io = QueueIo::new(&setup, atomic, None, DirtyLog::new(), shared).expect("queue");
    let event = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = Handler {
        event: event.clone(),
        ask,
        calls: calls.clone(),
    };
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let kick2 = kick.try_clone().expect("dup kick");
    let worker = Worker::spawn(io, Box::new(handler), kick2, "events", 0).expect("worker");
    let driver = Driver { mem, avail_idx: 0 };
    (driver, worker, kick, event, calls)
}

#[test]
fn requested_process_runs_after_the_event_even_when_the_ring_was_drained() {
    let (mut d, worker, kick, event, calls) = start(true);
    d.offer();
    kick.write(1).expect("kick");
    assert!(d.wait_used(1), "the kicked request completes");
    // The last pop found the ring empty. A request offered without a kick is picked up
    // because the handler asks for `process` from its event.
    d.offer();
    event.write(1).expect("event");
    assert!(
        d.wait_used(2),
        "the event's process pass takes the new request"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    drop(worker);
}

#[test]
fn without_a_request_an_event_after_a_drained_ring_does_not_process() {
    let (mut d, worker, kick, event, calls) = start(false);
    d.offer();
    kick.write(1).expect("kick");
    assert!(d.wait_used(1), "the kicked request completes");
    let before = calls.load(Ordering::SeqCst);
    d.offer();
    event.write(1).expect("event");
    // The worker handles the event (it reads the eventfd) but does not run `process`.
    let deadline = Instant::now() + TIMEOUT;
    while readable(&event) {
        assert!(
            Instant::now() < deadline,
            "the worker never handled the event"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Give a (wrong) process pass time to happen.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(calls.load(Ordering::SeqCst), before, "no process pass");
    assert_eq!(d.used_idx(), 1, "the unkicked request waits");
    kick.write(1).expect("kick");
    assert!(d.wait_used(2), "a kick still takes it");
    drop(worker);
}
