//! Queues in one worker group (`WorkerGroup`, `Worker::spawn_in`): they run on one thread,
//! work one hands the other through an event fd is done by that thread, and each queue keeps
//! its own life: one sleeps or stops while the other serves, and the thread ends with the
//! group's last handle; a queue that wakes another signals its driver only once that one has
//! run too. Driven directly (queues on anonymous guest memory), without a
//! connection.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::worker::{Worker, WorkerGroup};
use vu_core::{Progress, QueueHandler, QueueIo, QueueWaker};

const SIZE: u16 = 8;
/// Each queue's rings and buffers sit in their own 64 KiB of guest memory.
const AREA: u64 = 0x10000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Completes every request. Records the threads it ran on; `hand_to` is written once per
/// `process` that completed something (work for the other queue), and its own `event` makes
/// it ask for a `process`.
struct Handler {
    event: Arc<EventFd>,
    hand_to: Option<Arc<EventFd>>,
    /// Woken instead of (or as well as) `hand_to`.
    wake: Option<QueueWaker>,
    threads: Arc<Mutex<Vec<ThreadId>>>,
    /// Each `process` that finds work waits for one message here first.
    hold: Option<Mutex<mpsc::Receiver<()>>>,
}

impl QueueHandler for Handler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.event.as_raw_fd()]
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        self.threads
            .lock()
            .expect("threads")
            .push(std::thread::current().id());
        if let Some(hold) = &self.hold {
            if q.avail_pending() {
                let _ = hold.lock().expect("hold").recv_timeout(TIMEOUT);
            }
        }
        let mut any = false;
        while let Some(head) = q.pop() {
            q.complete(head, 0);
            any = true;
        }
        if any {
            if let Some(h) = &self.hand_to {
                let _ = h.write(1);
            }
            if let Some(w) = &self.wake {
                assert!(w.wake(), "the other queue runs on a worker");
            }
        }
        Progress::Drained
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        let _ = self.event.read();
        q.request_process();
    }
}

/// One queue's driver side, in its own area of the shared guest memory.
struct Driver {
    mem: GuestMemoryMmap<LogBitmap>,
    base: u64,
    avail_idx: u16,
    kick: EventFd,
}

impl Driver {
    fn desc(&self) -> u64 {
        self.base + 0x1000
    }
    fn avail(&self) -> u64 {
        self.base + 0x2000
    }
    fn used(&self) -> u64 {
        self.base + 0x3000
    }

    /// Makes a one-descriptor chain available; kicks if asked.
    fn offer(&mut self, kick: bool) {
        let d = self.avail_idx % SIZE;
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&(self.base + 0x8000 + 64 * u64::from(d)).to_le_bytes());
        desc[8..12].copy_from_slice(&16u32.to_le_bytes());
        desc[12..14].copy_from_slice(&2u16.to_le_bytes());
        self.mem
            .write_slice(&desc, GuestAddress(self.desc() + 16 * u64::from(d)))
            .expect("descriptor");
        self.mem
            .write_obj(d, GuestAddress(self.avail() + 4 + 2 * u64::from(d)))
            .expect("avail entry");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail() + 2),
                Ordering::Release,
            )
            .expect("avail idx");
        if kick {
            self.kick.write(1).expect("kick");
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .load(GuestAddress(self.used() + 2), Ordering::Acquire)
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

    /// The used index stays at `n` for a while.
    fn stays(&self, n: u16) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        self.used_idx() == n
    }
}

struct Queue {
    driver: Driver,
    event: Arc<EventFd>,
    threads: Arc<Mutex<Vec<ThreadId>>>,
}

fn memory() -> GuestMemoryMmap<LogBitmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 * AREA as usize)]).expect("guest memory")
}

/// Queue `index` on `group`; its handler hands work to `hand_to`.
fn start(
    group: &Arc<WorkerGroup>,
    mem: &GuestMemoryMmap<LogBitmap>,
    index: usize,
    hand_to: Option<Arc<EventFd>>,
) -> (Queue, Worker) {
    let (q, w, _) = start_waking(group, mem, index, hand_to, None, Extra::default());
    (q, w)
}

/// What some tests add to a queue: a call eventfd, and a hold on its handler's `process`.
#[derive(Default)]
struct Extra {
    call: Option<EventFd>,
    hold: Option<mpsc::Receiver<()>>,
}

/// As `start`, with a waker to call after completing something; also returns this queue's
/// own waker.
fn start_waking(
    group: &Arc<WorkerGroup>,
    mem: &GuestMemoryMmap<LogBitmap>,
    index: usize,
    hand_to: Option<Arc<EventFd>>,
    wake: Option<QueueWaker>,
    extra: Extra,
) -> (Queue, Worker, QueueWaker) {
    let base = AREA * index as u64;
    let shared = Arc::new(VringShared::default());
    shared.enabled.store(true, Ordering::SeqCst);
    *shared.call.lock().expect("call") = extra.call;
    let setup = QueueSetup {
        index,
        size: SIZE,
        desc: base + 0x1000,
        avail: base + 0x2000,
        used: base + 0x3000,
        base: 0,
        event_idx: false,
        indirect: false,
    };
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let io = QueueIo::new(&setup, atomic, None, DirtyLog::new(), shared).expect("queue");
    let waker = io.waker();
    assert!(!waker.wake(), "no worker runs the queue yet");
    let event = Arc::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
    let threads = Arc::new(Mutex::new(Vec::new()));
    let handler = Handler {
        event: event.clone(),
        hand_to,
        wake,
        threads: threads.clone(),
        hold: extra.hold.map(Mutex::new),
    };
    let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let worker = Worker::spawn_in(group, io, Box::new(handler), kick.try_clone().expect("dup"))
        .expect("worker");
    let driver = Driver {
        mem: mem.clone(),
        base,
        avail_idx: 0,
        kick,
    };
    (
        Queue {
            driver,
            event,
            threads,
        },
        worker,
        waker,
    )
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

#[test]
fn grouped_queues_run_on_one_thread_and_hand_each_other_work_there() {
    let group = WorkerGroup::spawn("grp-one".into(), 0).expect("group");
    let mem = memory();
    // Queue 1 first (its event fd is what queue 0 hands work to).
    let (mut q1, w1) = start(&group, &mem, 1, None);
    let (mut q0, w0) = start(&group, &mem, 0, Some(q1.event.clone()));
    assert_eq!(threads_named("grp-one"), 1);

    // Queue 1's ring holds a request nobody kicks for: queue 0's work hands it over.
    q1.driver.offer(false);
    q0.driver.offer(true);
    assert!(q0.driver.wait_used(1), "queue 0 served");
    assert!(
        q1.driver.wait_used(1),
        "queue 1 served through the hand-over"
    );

    let t0 = q0.threads.lock().expect("threads").clone();
    let t1 = q1.threads.lock().expect("threads").clone();
    assert!(!t0.is_empty() && !t1.is_empty());
    assert!(
        t0.iter().chain(&t1).all(|t| *t == t0[0]),
        "every process call on the group's one thread"
    );
    assert_ne!(t0[0], std::thread::current().id());

    assert!(w0.stop().is_some());
    assert!(w1.stop().is_some());
    drop(group);
    assert_eq!(
        threads_named("grp-one"),
        0,
        "the thread ended with the group"
    );
}

#[test]
fn a_grouped_queue_sleeps_and_stops_on_its_own() {
    let group = WorkerGroup::spawn("grp-life".into(), 0).expect("group");
    let mem = memory();
    let (mut q0, w0) = start(&group, &mem, 0, None);
    let (mut q1, w1) = start(&group, &mem, 1, None);

    // Queue 0 sleeps: its kick waits; queue 1 is served meanwhile.
    w0.sleep();
    q0.driver.offer(true);
    q1.driver.offer(true);
    assert!(q1.driver.wait_used(1));
    assert!(q0.driver.stays(0), "a sleeping queue takes nothing");
    w0.wake();
    assert!(q0.driver.wait_used(1), "the kick is taken after the wake");

    // Queue 0 stops where it was; queue 1 still serves, also its event fd.
    let io = w0.stop().expect("runtime back");
    assert_eq!(io.next_avail(), 1);
    q0.driver.offer(true);
    q1.driver.offer(false);
    q1.event.write(1).expect("event");
    assert!(q1.driver.wait_used(2), "the other queue serves on");
    assert!(q0.driver.stays(1), "a stopped queue takes nothing");

    // The group lives on while a handle does (the caller's `Arc` is gone first here).
    drop(group);
    assert_eq!(threads_named("grp-life"), 1);
    q1.driver.offer(true);
    assert!(q1.driver.wait_used(3));
    drop(w1);
    assert_eq!(
        threads_named("grp-life"),
        0,
        "the last handle ends the thread"
    );
}

#[test]
fn a_waker_runs_its_queue_from_the_group_and_from_other_threads() {
    let group = WorkerGroup::spawn("grp-wake".into(), 0).expect("group");
    let mem = memory();
    let (mut q1, w1, wake1) = start_waking(&group, &mem, 1, None, None, Extra::default());
    let (mut q0, w0, _) =
        start_waking(&group, &mem, 0, None, Some(wake1.clone()), Extra::default());

    // Queue 0's work wakes queue 1 through its waker (same thread: a flag only).
    q1.driver.offer(false);
    q0.driver.offer(true);
    assert!(q0.driver.wait_used(1));
    assert!(q1.driver.wait_used(1), "queue 1 ran for the wake");

    // From this thread: the worker is woken through its command eventfd.
    q1.driver.offer(false);
    assert!(q1.driver.stays(1), "nothing runs the queue without a wake");
    assert!(wake1.wake());
    assert!(
        q1.driver.wait_used(2),
        "queue 1 ran for the other thread's wake"
    );

    // A stopped queue's waker says nobody will come.
    assert!(w1.stop().is_some());
    assert!(!wake1.wake());
    assert!(w0.stop().is_some());
}

/// Whether `fd` (non-blocking) has been signalled since the last look; clears it.
fn signalled(fd: &EventFd) -> bool {
    fd.read().is_ok()
}

#[test]
fn a_queue_signals_only_after_the_queues_it_woke_have_run() {
    let group = WorkerGroup::spawn("grp-pass".into(), 0).expect("group");
    let mem = memory();
    let call = || EventFd::new(EFD_NONBLOCK).expect("call");
    let (call1, call0) = (call(), call());
    let (release, hold) = mpsc::channel();
    // Queue 1 (first in the group, as vsock's receive queue) answers what queue 0 (its
    // transmit queue) wakes it for; its `process` waits for this test.
    let extra1 = Extra {
        call: Some(call1.try_clone().expect("dup")),
        hold: Some(hold),
    };
    let (mut q1, w1, wake1) = start_waking(&group, &mem, 1, None, None, extra1);
    let extra0 = Extra {
        call: Some(call0.try_clone().expect("dup")),
        hold: None,
    };
    let (mut q0, w0, _) = start_waking(&group, &mem, 0, None, Some(wake1), extra0);

    // A first request for queue 0 alone: a queue added to a group runs its ring once when it
    // starts, outside the group's passes, and may find this one there.
    q0.driver.offer(true);
    assert!(q0.driver.wait_used(1));
    let deadline = Instant::now() + TIMEOUT;
    while !signalled(&call0) {
        assert!(Instant::now() < deadline, "queue 0 never signalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    signalled(&call1);

    for round in 1..=3u16 {
        q1.driver.offer(false);
        q0.driver.offer(true);
        // Queue 0 has completed its request and woken queue 1, which is held: neither
        // signals yet, though queue 0's completion is done.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !signalled(&call0),
            "round {round}: queue 0 signalled before the queue it woke had run"
        );
        assert!(!signalled(&call1), "round {round}: queue 1 is held");
        release.send(()).expect("release");
        assert!(q1.driver.wait_used(round) && q0.driver.wait_used(round + 1));
        let deadline = Instant::now() + TIMEOUT;
        let (mut got0, mut got1) = (false, false);
        while !(got0 && got1) && Instant::now() < deadline {
            got0 |= signalled(&call0);
            got1 |= signalled(&call1);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(got0 && got1, "round {round}: both signalled once both ran");
    }
    assert!(w1.stop().is_some());
    assert!(w0.stop().is_some());
}
