//! The worker thread of a started queue: one epoll thread per queue, woken by the driver's
//! kicks, by commands from the connection thread (stop, sleep, wake, poke) and by the device's
//! own event fds; it runs the device's [`QueueHandler`] on the queue's [`QueueIo`].

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{Interest, Progress, QueueHandler};
use crate::vring::{QueueIo, VringError};

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
        // Edge-triggered: every kick (eventfd write) reports the fd once, so its counter never
        // needs to be read (a system call per wake-up saved); see `Thread::event`.
        epoll
            .ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(KICK_EVENTS, TOKEN_KICK),
            )
            .map_err(VringError::Worker)?;
        add(ctl.as_raw_fd(), TOKEN_CTL).map_err(VringError::Worker)?;
        let fds = handler.event_fds();
        let interest: Vec<Interest> = (0..fds.len())
            .map(|i| handler.initial_interest(i))
            .collect();
        for (i, (fd, want)) in fds.iter().zip(&interest).enumerate() {
            if *want != Interest::None {
                epoll
                    .ctl(
                        ControlOperation::Add,
                        *fd,
                        EpollEvent::new(events(*want), TOKEN_DEV + i as u64),
                    )
                    .map_err(VringError::Worker)?;
            }
        }
        let dev = DeviceFds::new(fds, interest);
        let name = format!("{}-q{}", device, io.index);
        let state = Thread {
            io,
            handler,
            kick,
            epoll,
            dev,
            ctl: ctl.clone(),
            cmds: cmds.clone(),
            poll_us,
            asleep: false,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || state.run())
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

/// The device's event fds as registered with the worker's epoll: what each is watched for
/// (the handler changes it through [`QueueIo::set_interest`]), and whether they are all
/// suspended while the queue sleeps (a sleeping device touches nothing, so a readable tap or
/// socket must not wake it).
struct DeviceFds {
    fds: Vec<RawFd>,
    interest: Vec<Interest>,
    suspended: bool,
}

impl DeviceFds {
    fn new(fds: Vec<RawFd>, interest: Vec<Interest>) -> Self {
        DeviceFds {
            fds,
            interest,
            suspended: false,
        }
    }

    /// Applies the interest changes the handler asked for since the last call.
    fn apply(&mut self, epoll: &Epoll, io: &mut QueueIo) {
        if io.interest_changes.is_empty() {
            return;
        }
        for (i, want) in std::mem::take(&mut io.interest_changes) {
            let Some(&had) = self.interest.get(i) else {
                tracing::error!(
                    queue = io.index,
                    fd_index = i,
                    "interest change for an unknown event fd"
                );
                continue;
            };
            self.interest[i] = want;
            if !self.suspended {
                self.register(epoll, i, had, want);
            }
        }
    }

    /// Stops (or resumes) watching every device fd.
    fn suspend(&mut self, epoll: &Epoll, suspended: bool) {
        if self.suspended == suspended {
            return;
        }
        self.suspended = suspended;
        for i in 0..self.fds.len() {
            let w = self.interest[i];
            if suspended {
                self.register(epoll, i, w, Interest::None);
            } else {
                self.register(epoll, i, Interest::None, w);
            }
        }
    }

    fn register(&self, epoll: &Epoll, i: usize, had: Interest, want: Interest) {
        let op = match (had, want) {
            (a, b) if a == b => return,
            (Interest::None, _) => ControlOperation::Add,
            (_, Interest::None) => ControlOperation::Delete,
            _ => ControlOperation::Modify,
        };
        if let Err(e) = epoll.ctl(
            op,
            self.fds[i],
            EpollEvent::new(events(want), TOKEN_DEV + i as u64),
        ) {
            tracing::error!(fd_index = i, error = %e, "cannot change what the queue worker waits for");
        }
    }
}

/// The epoll events of an interest (`None` is only ever deleted, never registered).
fn events(interest: Interest) -> EventSet {
    match interest {
        Interest::None | Interest::Readable => EventSet::IN,
        Interest::Writable => EventSet::OUT,
        Interest::Both => EventSet::IN | EventSet::OUT,
    }
}

const TOKEN_KICK: u64 = 0;
/// What the kick is watched for: readable, edge-triggered.
const KICK_EVENTS: EventSet = EventSet::IN.union(EventSet::EDGE_TRIGGERED);
const TOKEN_CTL: u64 = 1;
const TOKEN_DEV: u64 = 2;

/// Runs the device on the ring until it is drained (or the device is busy) with driver
/// notifications re-enabled, if the queue is enabled.
pub(crate) fn process(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    io.process_requested = false;
    io.refresh_memory();
    if !io.shared.enabled.load(Ordering::Acquire) {
        return;
    }
    io.notify_resumed();
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

/// Waits for the device's requests, publishes them and records the ring indexes.
pub(crate) fn quiesce(io: &mut QueueIo, handler: &mut dyn QueueHandler) {
    handler.drain(io);
    io.flush();
    io.shared
        .last_avail
        .store(io.next_avail() as u32, Ordering::Release);
    io.shared
        .last_used
        .store(io.next_used() as u32, Ordering::Release);
}

/// Everything the worker thread owns.
struct Thread {
    io: QueueIo,
    handler: Box<dyn QueueHandler>,
    kick: EventFd,
    epoll: Epoll,
    dev: DeviceFds,
    ctl: Arc<EventFd>,
    cmds: Arc<Mutex<VecDeque<Command>>>,
    poll_us: u32,
    asleep: bool,
}

/// The command loop asked the thread to return (Stop: the queue is quiesced).
struct Stopped;

impl Thread {
    fn run(mut self) -> QueueIo {
        let mut events = vec![EpollEvent::default(); 8];
        let poll = Duration::from_micros(u64::from(self.poll_us));
        if !self.io.resubmit.is_empty() || self.io.shared.enabled.load(Ordering::Acquire) {
            process(&mut self.io, self.handler.as_mut());
            self.io.flush();
        }
        loop {
            self.dev.apply(&self.epoll, &mut self.io);
            if self.poll_us > 0 && !self.asleep {
                poll_queue(&mut self.io, self.handler.as_mut(), &self.cmds, poll);
            }
            self.settle();
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(queue = self.io.index, error = %e, "epoll failed; queue worker stops");
                    quiesce(&mut self.io, self.handler.as_mut());
                    return self.io;
                }
            };
            let mut want_process = false;
            for ev in &events[..n] {
                if self.event(ev.data(), &mut want_process).is_err() {
                    return self.io;
                }
            }
            // A kick and a sleep command in one wait: the kick's work waits for the wake
            // (a sleeping device takes no request).
            if want_process && !self.asleep {
                process(&mut self.io, self.handler.as_mut());
            }
            self.io.flush();
        }
    }

    /// Lets the handler complete what has finished since it last looked
    /// (`QueueHandler::before_sleep`), until nothing is left, right before the wait; what
    /// finishes later makes one of the handler's event fds ready (or, for io_uring task
    /// work, interrupts the wait with EINTR, and the loop comes back here).
    fn settle(&mut self) {
        if self.asleep {
            return;
        }
        while self.handler.before_sleep(&mut self.io) {
            // Completions make room: a handler that stopped taking requests (Busy) or asked
            // for it takes more now.
            let requested = std::mem::take(&mut self.io.process_requested);
            if requested || !self.io.drained() {
                process(&mut self.io, self.handler.as_mut());
            }
            self.io.flush();
        }
    }

    /// One ready fd of the epoll set; sets `want_process` if the ring should be looked at
    /// (a command may also clear it).
    fn event(&mut self, token: u64, want_process: &mut bool) -> Result<(), Stopped> {
        match token {
            TOKEN_KICK => {
                if self.asleep {
                    // The kick stays pending: `wake_up` watches the fd again, which reports
                    // it at once (it has a non-zero count).
                    return Ok(());
                }
                // Not read: with an edge-triggered wait each kick is reported once anyway,
                // and the count saturates rather than blocks the kernel's signals.
                self.io.shared.stats.kicks.fetch_add(1, Ordering::Relaxed);
                *want_process = true;
            }
            TOKEN_CTL => {
                let _ = self.ctl.read();
                return self.commands(want_process);
            }
            t => {
                if self.asleep {
                    // Suspended since; an event reported in the same wait is left for
                    // after wake.
                    return Ok(());
                }
                let i = (t - TOKEN_DEV) as usize;
                self.handler.handle_event(i, &mut self.io);
                let requested = std::mem::take(&mut self.io.process_requested);
                if (requested || !self.io.drained()) && !self.asleep {
                    *want_process = true;
                }
            }
        }
        Ok(())
    }

    /// Runs every queued command.
    fn commands(&mut self, want_process: &mut bool) -> Result<(), Stopped> {
        loop {
            let cmd = self
                .cmds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            match cmd {
                None => return Ok(()),
                Some(Command::Stop) => {
                    quiesce(&mut self.io, self.handler.as_mut());
                    return Err(Stopped);
                }
                Some(Command::Sleep(ack)) => {
                    quiesce(&mut self.io, self.handler.as_mut());
                    if !self.asleep {
                        self.fall_asleep();
                    }
                    let _ = ack.send(());
                }
                Some(Command::Wake) => {
                    if self.asleep {
                        self.wake_up();
                        *want_process = true;
                    }
                }
                Some(Command::Poke) => *want_process = !self.asleep,
            }
        }
    }

    /// Stops watching the kick and the device's fds.
    fn fall_asleep(&mut self) {
        self.asleep = true;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            self.kick.as_raw_fd(),
            EpollEvent::default(),
        );
        self.dev.apply(&self.epoll, &mut self.io);
        self.dev.suspend(&self.epoll, true);
    }

    /// Watches the kick and the device's fds again.
    fn wake_up(&mut self) {
        self.asleep = false;
        let _ = self.epoll.ctl(
            ControlOperation::Add,
            self.kick.as_raw_fd(),
            EpollEvent::new(KICK_EVENTS, TOKEN_KICK),
        );
        self.dev.suspend(&self.epoll, false);
    }
}
