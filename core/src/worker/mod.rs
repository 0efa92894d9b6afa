//! Queue workers: threads that run started queues, woken by the driver's kicks, by commands
//! from the connection thread (stop, sleep, wake, poke) and by the device's own event fds,
//! running the device's [`QueueHandler`] on each queue's [`QueueIo`].
//!
//! A queue runs on a thread of its own ([`Worker::spawn`]), or on a [`WorkerGroup`]'s thread
//! with the other queues of its group ([`Worker::spawn_in`]) when the device asks for it
//! (`VhostUserDevice::worker_group`): queues that hand work to each other (vsock's TX queue
//! owes the driver a credit update that its RX queue sends) then do it in one wake-up instead
//! of waking a second thread. Each queue keeps its own life: it starts, sleeps, wakes and
//! stops on its own, and a group's thread ends when the group's last handle is gone.

mod run;
mod slot;
mod thread;

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::device::QueueHandler;
use crate::vring::{QueueIo, VringError};

pub(crate) use run::{process, quiesce};
use thread::{Thread, TOKEN_CTL};

/// A queue about to join a worker thread.
struct NewQueue {
    id: u64,
    io: QueueIo,
    handler: Box<dyn QueueHandler>,
    kick: EventFd,
}

/// Commands from the connection thread to a worker thread, each for one of its queues.
enum Command {
    Add(Box<NewQueue>, mpsc::Sender<std::io::Result<()>>),
    Stop(u64, mpsc::Sender<QueueIo>),
    Sleep(u64, mpsc::Sender<()>),
    Wake(u64),
    Poke(u64),
    /// The group is gone: the thread ends.
    Exit,
}

/// The command queue of a worker thread.
struct Commands {
    queue: VecDeque<Command>,
    /// The thread has ended: commands are dropped (their answer channels with them).
    closed: bool,
}

/// A worker thread that queues join: one queue's own, or a device's group of queues.
pub struct WorkerGroup {
    ctl: Arc<EventFd>,
    cmds: Arc<Mutex<Commands>>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerGroup")
            .field("queues_started", &self.next_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl WorkerGroup {
    /// Starts a worker thread named `name` with no queue yet. With `poll_us` > 0 it
    /// busy-polls each of its queues for that long after running out of work before it
    /// sleeps (not while the device has requests in the kernel).
    pub fn spawn(name: String, poll_us: u32) -> Result<Arc<Self>, VringError> {
        let ctl = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VringError::Worker)?);
        let cmds = Arc::new(Mutex::new(Commands {
            queue: VecDeque::new(),
            closed: false,
        }));
        let epoll = Epoll::new().map_err(VringError::Worker)?;
        epoll
            .ctl(
                ControlOperation::Add,
                ctl.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_CTL),
            )
            .map_err(VringError::Worker)?;
        let state = Thread {
            slots: Vec::new(),
            epoll,
            ctl: ctl.clone(),
            cmds: cmds.clone(),
            poll_us,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || state.run())
            .map_err(VringError::Worker)?;
        Ok(Arc::new(WorkerGroup {
            ctl,
            cmds,
            next_id: AtomicU64::new(0),
            thread: Some(thread),
        }))
    }

    fn send(&self, cmd: Command) {
        let mut c = self.cmds.lock().unwrap_or_else(|e| e.into_inner());
        if c.closed {
            // Dropped here: whoever waits for its answer learns that none comes.
            return;
        }
        c.queue.push_back(cmd);
        drop(c);
        let _ = self.ctl.write(1);
    }
}

impl Drop for WorkerGroup {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.send(Command::Exit);
            let _ = t.join();
        }
    }
}

/// Handle to a queue running on a worker thread.
#[derive(Debug)]
pub struct Worker {
    group: Arc<WorkerGroup>,
    id: u64,
    stopped: bool,
}

impl Worker {
    /// Starts a worker thread of its own for `io`, woken by `kick`; see
    /// [`WorkerGroup::spawn`] for `poll_us`.
    pub fn spawn(
        io: QueueIo,
        handler: Box<dyn QueueHandler>,
        kick: EventFd,
        device: &str,
        poll_us: u32,
    ) -> Result<Self, VringError> {
        let group = WorkerGroup::spawn(format!("{}-q{}", device, io.index), poll_us)?;
        Worker::spawn_in(&group, io, handler, kick)
    }

    /// Runs `io` on `group`'s thread, woken by `kick`. The handler's event fds must differ
    /// from those of the group's other queues (one epoll set watches them all). Like a
    /// thread of its own, the queue first processes what its ring already holds.
    pub fn spawn_in(
        group: &Arc<WorkerGroup>,
        io: QueueIo,
        handler: Box<dyn QueueHandler>,
        kick: EventFd,
    ) -> Result<Self, VringError> {
        let id = group.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let q = NewQueue {
            id,
            io,
            handler,
            kick,
        };
        group.send(Command::Add(Box::new(q), tx));
        match rx.recv() {
            Ok(Ok(())) => Ok(Worker {
                group: group.clone(),
                id,
                stopped: false,
            }),
            Ok(Err(e)) => Err(VringError::Worker(e)),
            Err(_) => Err(VringError::Worker(std::io::Error::other(
                "the queue worker thread has ended",
            ))),
        }
    }

    /// Wakes the worker to look at the ring again (e.g. after SET_VRING_ENABLE).
    pub fn poke(&self) {
        self.group.send(Command::Poke(self.id));
    }

    /// Drains the device's requests and blocks until the queue is quiet.
    pub fn sleep(&self) {
        let (tx, rx) = mpsc::channel();
        self.group.send(Command::Sleep(self.id, tx));
        let _ = rx.recv();
    }

    /// Resumes after `sleep`.
    pub fn wake(&self) {
        self.group.send(Command::Wake(self.id));
    }

    /// Drains and stops the queue; the runtime, for its ring indexes (None if the worker
    /// thread has ended).
    pub fn stop(mut self) -> Option<QueueIo> {
        self.stopped = true;
        self.take_out()
    }

    fn take_out(&self) -> Option<QueueIo> {
        let (tx, rx) = mpsc::channel();
        self.group.send(Command::Stop(self.id, tx));
        rx.recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.take_out();
        }
    }
}
