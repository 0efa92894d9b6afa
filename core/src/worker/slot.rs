//! One queue on a worker thread: its runtime, its handler, its kick, and the handler's event
//! fds as registered with the thread's epoll set.
//!
//! Each queue has its own range of epoll tokens (`token_base()`): the kick is the base, event
//! fd `i` is `base + 1 + i`, so that an event reported for a queue that has since left the
//! thread matches nothing.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::run::{process, quiesce};
use crate::device::{Interest, QueueHandler};
use crate::vring::QueueIo;

/// Bits of an epoll token that name the fd within its queue's range.
pub(super) const TOKEN_BITS: u32 = 8;
/// Most event fds one handler may have (the rest of its token range).
pub(super) const MAX_EVENT_FDS: usize = (1 << TOKEN_BITS) - 1;
/// What the kick is watched for: readable, edge-triggered. Every kick (eventfd write) is
/// reported once, so its counter never needs to be read (a system call per wake-up saved).
const KICK_EVENTS: EventSet = EventSet::IN.union(EventSet::EDGE_TRIGGERED);

/// A started queue as its worker thread holds it.
pub(super) struct Slot {
    /// Unique within the thread, never reused.
    pub id: u64,
    pub io: QueueIo,
    pub handler: Box<dyn QueueHandler>,
    kick: EventFd,
    dev: DeviceFds,
    pub asleep: bool,
    /// The ring should be looked at after this wait's events.
    pub want_process: bool,
}

impl Slot {
    /// Registers the kick and the handler's event fds; on error nothing stays registered.
    pub fn register(
        id: u64,
        io: QueueIo,
        handler: Box<dyn QueueHandler>,
        kick: EventFd,
        epoll: &Epoll,
        ctl: &Arc<EventFd>,
    ) -> std::io::Result<Slot> {
        let fds = handler.event_fds();
        if fds.len() > MAX_EVENT_FDS {
            return Err(std::io::Error::other(
                "a queue handler has too many event fds",
            ));
        }
        let base = id << TOKEN_BITS;
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(KICK_EVENTS, base),
        )?;
        let interest: Vec<Interest> = (0..fds.len())
            .map(|i| handler.initial_interest(i))
            .collect();
        let mut dev = DeviceFds {
            fds,
            interest: vec![Interest::None; interest.len()],
            base,
            suspended: false,
        };
        for (i, want) in interest.into_iter().enumerate() {
            if want == Interest::None {
                continue;
            }
            if let Err(e) = dev.ctl(epoll, i, ControlOperation::Add, want) {
                dev.suspend(epoll, true);
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    kick.as_raw_fd(),
                    EpollEvent::default(),
                );
                return Err(e);
            }
            dev.interest[i] = want;
        }
        io.waker.attach(ctl.clone());
        Ok(Slot {
            id,
            io,
            handler,
            kick,
            dev,
            asleep: false,
            want_process: false,
        })
    }

    /// The first look at the ring, as a queue starts: what it (or the inflight area)
    /// already holds.
    pub fn start(&mut self) {
        if !self.io.resubmit.is_empty() || self.io.shared.enabled.load(Ordering::Acquire) {
            process(&mut self.io, self.handler.as_mut());
            self.io.flush();
        }
    }

    /// Quiesces the queue and takes everything of it out of the epoll set: the slot can
    /// leave the thread.
    pub fn remove(mut self, epoll: &Epoll) -> QueueIo {
        self.io.waker.detach();
        quiesce(&mut self.io, self.handler.as_mut());
        if !self.asleep {
            self.unwatch_kick(epoll);
        }
        self.dev.suspend(epoll, true);
        self.io
    }

    /// Whether a wake through the queue's waker waits (a sleeping queue takes it after its
    /// wake).
    pub fn woken(&self) -> bool {
        !self.asleep && self.io.waker.is_pending()
    }

    /// Takes a pending wake into `want_process`.
    pub fn take_wake(&mut self) {
        if !self.asleep && self.io.waker.take() {
            self.want_process = true;
        }
    }

    /// Applies the interest changes the handler asked for since the last call.
    pub fn apply_interest(&mut self, epoll: &Epoll) {
        self.dev.apply(epoll, &mut self.io);
    }

    /// Quiesces the queue and, unless it already sleeps, stops watching its kick and the
    /// device's fds.
    pub fn sleep(&mut self, epoll: &Epoll) {
        quiesce(&mut self.io, self.handler.as_mut());
        if !self.asleep {
            self.asleep = true;
            self.unwatch_kick(epoll);
            self.dev.apply(epoll, &mut self.io);
            self.dev.suspend(epoll, true);
        }
    }

    /// Watches the kick and the device's fds again; the ring is looked at after the wait.
    pub fn wake(&mut self, epoll: &Epoll) {
        if !self.asleep {
            return;
        }
        self.asleep = false;
        // A kick that came while asleep is still counted: the new registration reports it.
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            self.kick.as_raw_fd(),
            EpollEvent::new(KICK_EVENTS, self.id << TOKEN_BITS),
        ) {
            tracing::error!(queue = self.io.index, error = %e, "cannot watch the queue's kick again");
        }
        self.dev.suspend(epoll, false);
        self.want_process = true;
    }

    fn unwatch_kick(&self, epoll: &Epoll) {
        let _ = epoll.ctl(
            ControlOperation::Delete,
            self.kick.as_raw_fd(),
            EpollEvent::default(),
        );
    }
}

/// The device's event fds as registered with the worker's epoll: what each is watched for
/// (the handler changes it through [`QueueIo::set_interest`]), and whether they are all
/// suspended while the queue sleeps (a sleeping device touches nothing, so a readable tap or
/// socket must not wake it).
struct DeviceFds {
    fds: Vec<RawFd>,
    interest: Vec<Interest>,
    /// The queue's first epoll token (its kick's).
    base: u64,
    suspended: bool,
}

impl DeviceFds {
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
        if let Err(e) = self.ctl(epoll, i, op, want) {
            tracing::error!(fd_index = i, error = %e, "cannot change what the queue worker waits for");
        }
    }

    fn ctl(
        &self,
        epoll: &Epoll,
        i: usize,
        op: ControlOperation,
        want: Interest,
    ) -> std::io::Result<()> {
        epoll.ctl(
            op,
            self.fds[i],
            EpollEvent::new(events(want), self.base + 1 + i as u64),
        )
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

/// Which fd of its queue a token names.
pub(super) enum TokenFd {
    Kick,
    Device(usize),
}

/// Splits a token into its queue's id and the fd.
pub(super) fn split_token(token: u64) -> (u64, TokenFd) {
    let id = token >> TOKEN_BITS;
    match (token & MAX_EVENT_FDS as u64) as usize {
        0 => (id, TokenFd::Kick),
        i => (id, TokenFd::Device(i - 1)),
    }
}
