//! A queue worker and its handler's event fds: what it waits for (`initial_interest` at
//! start, an fd the handler does not want watched yet is not; then what the handler asks with
//! `QueueIo::set_interest`), and `process` after an event when the handler asks for it
//! (`QueueIo::request_process`) even though the ring was drained.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::worker::Worker;
use vu_core::{Interest, Progress, QueueHandler, QueueIo};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Event fd 0 starts unwatched, fd 1 watched; handling fd 1 asks for fd 0 to be watched.
struct Handler {
    fds: [RawFd; 2],
    events: mpsc::Sender<usize>,
    quiet: Arc<EventFd>,
}

impl QueueHandler for Handler {
    fn event_fds(&self) -> Vec<RawFd> {
        self.fds.to_vec()
    }

    fn initial_interest(&self, index: usize) -> Interest {
        if index == 0 {
            Interest::None
        } else {
            Interest::Readable
        }
    }

    fn process(&mut self, _q: &mut QueueIo) -> Progress {
        Progress::Drained
    }

    fn handle_event(&mut self, index: usize, q: &mut QueueIo) {
        let _ = self.events.send(index);
        if index == 1 {
            // Level-triggered: stop watching fd 1 (still readable) and start on fd 0.
            q.set_interest(1, Interest::None);
            q.set_interest(0, Interest::Readable);
        } else {
            q.set_interest(0, Interest::None);
            let _ = self.quiet.write(1);
        }
    }
}

/// Sends "p" for each `process`, "eN" for each event on fd N; fd 0 asks for `process`.
struct Requester {
    fds: [RawFd; 2],
    log: mpsc::Sender<&'static str>,
}

impl QueueHandler for Requester {
    fn event_fds(&self) -> Vec<RawFd> {
        self.fds.to_vec()
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        let _ = self.log.send("p");
        assert_eq!(q.pop(), None, "empty ring");
        Progress::Drained
    }

    fn handle_event(&mut self, index: usize, q: &mut QueueIo) {
        // Stop watching: each fd stays readable (level-triggered).
        q.set_interest(index, Interest::None);
        if index == 0 {
            let _ = self.log.send("e0");
            q.request_process();
        } else {
            let _ = self.log.send("e1");
        }
    }
}

#[test]
fn process_follows_an_event_when_the_handler_asks() {
    let asks = EventFd::new(0).expect("eventfd");
    let quiet = EventFd::new(0).expect("eventfd");
    let (tx, rx) = mpsc::channel();
    let handler = Requester {
        fds: [asks.as_raw_fd(), quiet.as_raw_fd()],
        log: tx,
    };
    let shared = Arc::new(VringShared::default());
    shared.enabled.store(true, Ordering::Release);
    let io = queue(shared);
    let kick = EventFd::new(0).expect("kick");
    let worker = Worker::spawn(io, Box::new(handler), kick, "test", 0).expect("worker");
    assert_eq!(
        rx.recv_timeout(TIMEOUT),
        Ok("p"),
        "an enabled queue starts with process"
    );
    quiet.write(1).expect("signal");
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("e1"));
    asks.write(1).expect("signal");
    assert_eq!(
        rx.recv_timeout(TIMEOUT),
        Ok("e0"),
        "no process after an event on a drained ring unless asked"
    );
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("p"), "asked for");
    drop(worker.stop());
    assert!(rx.try_recv().is_err());
}

fn queue(shared: Arc<VringShared>) -> QueueIo {
    let mem =
        GuestMemoryMmap::<LogBitmap>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
    let setup = QueueSetup {
        index: 0,
        size: 8,
        desc: 0x1000,
        avail: 0x2000,
        used: 0x3000,
        base: 0,
        event_idx: false,
        indirect: false,
    };
    QueueIo::new(
        &setup,
        GuestMemoryAtomic::new(mem),
        None,
        DirtyLog::new(),
        shared,
    )
    .expect("queue")
}

#[test]
fn an_fd_starts_unwatched_when_the_handler_says_so() {
    let ready = EventFd::new(0).expect("eventfd");
    let later = EventFd::new(0).expect("eventfd");
    let quiet = Arc::new(EventFd::new(0).expect("eventfd"));
    // Readable before the worker starts: watched, it would be reported by the first wait.
    ready.write(1).expect("signal");
    let (tx, rx) = mpsc::channel();
    let handler = Handler {
        fds: [ready.as_raw_fd(), later.as_raw_fd()],
        events: tx,
        quiet: quiet.clone(),
    };
    let kick = EventFd::new(0).expect("kick");
    let worker =
        Worker::spawn(queue(Arc::default()), Box::new(handler), kick, "test", 0).expect("worker");
    later.write(1).expect("signal");
    assert_eq!(
        rx.recv_timeout(TIMEOUT),
        Ok(1),
        "fd 1 first: fd 0 unwatched"
    );
    assert_eq!(
        rx.recv_timeout(TIMEOUT),
        Ok(0),
        "fd 0 once the handler asked for it"
    );
    // Both fds are still readable but unwatched now: the worker reports nothing more.
    assert_eq!(quiet.read().expect("quiet"), 1);
    drop(worker.stop());
    assert!(rx.try_recv().is_err(), "no event after both were unwatched");
}
