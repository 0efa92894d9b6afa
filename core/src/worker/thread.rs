//! The loop of a worker thread: one epoll set for the queues it holds (one, or a device's
//! group), woken by the driver's kicks, by commands from the connection thread and by the
//! devices' own event fds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::EventFd;

use super::run::{poll_queue, process};
use super::slot::{split_token, Slot, TokenFd};
use super::{Command, Commands};

/// The token of the command eventfd (no queue's range reaches it).
pub(super) const TOKEN_CTL: u64 = u64::MAX;

/// Most passes over the queues after one wait while their wakers keep waking them; then the
/// events are looked at again (without sleeping) before the next pass.
const WAKER_PASSES: usize = 4;

/// Everything a worker thread owns.
pub(super) struct Thread {
    pub slots: Vec<Slot>,
    pub epoll: Epoll,
    pub ctl: Arc<EventFd>,
    pub cmds: Arc<Mutex<Commands>>,
    pub poll_us: u32,
}

/// The thread was asked to end (its group is gone).
struct Exit;

/// Closes the command queue when the thread ends, also by a panic: commands sent later are
/// dropped at once, so that nobody waits for an answer that cannot come.
struct CloseOnExit(Arc<Mutex<Commands>>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.closed = true;
        c.queue.clear();
    }
}

impl Thread {
    pub fn run(mut self) {
        let _close = CloseOnExit(self.cmds.clone());
        let mut events = vec![EpollEvent::default(); 16];
        let poll = Duration::from_micros(u64::from(self.poll_us));
        loop {
            for s in &mut self.slots {
                s.apply_interest(&self.epoll);
            }
            if self.poll_us > 0 {
                for s in self.slots.iter_mut().filter(|s| !s.asleep) {
                    poll_queue(&mut s.io, s.handler.as_mut(), &self.cmds, poll);
                }
            }
            for s in &mut self.slots {
                settle(s);
            }
            // A queue woken through its waker is processed after this look at the events,
            // without sleeping first.
            let timeout = if self.slots.iter().any(Slot::woken) {
                0
            } else {
                -1
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "epoll failed; queue worker stops");
                    for s in self.slots.drain(..) {
                        s.remove(&self.epoll);
                    }
                    return;
                }
            };
            for ev in &events[..n] {
                if self.event(ev.data()).is_err() {
                    for s in self.slots.drain(..) {
                        s.remove(&self.epoll);
                    }
                    return;
                }
            }
            // A kick and a sleep command in one wait: the kick's work waits for the wake (a
            // sleeping device takes no request). A queue of the group woken through its
            // waker while another ran (vsock's transmit side waking the receive side for a
            // credit update) runs in the same pass, and the queues publish and signal only
            // after all have run: the driver is woken once for what the pass did, with the
            // answer ready, not once per queue with the first signal ahead of the answer.
            for _ in 0..WAKER_PASSES {
                for s in &mut self.slots {
                    s.take_wake();
                    if std::mem::take(&mut s.want_process) && !s.asleep {
                        process(&mut s.io, s.handler.as_mut());
                    }
                }
                if !self.slots.iter().any(Slot::woken) {
                    break;
                }
            }
            for s in &mut self.slots {
                s.io.flush();
            }
        }
    }

    /// One ready fd of the epoll set.
    fn event(&mut self, token: u64) -> Result<(), Exit> {
        if token == TOKEN_CTL {
            let _ = self.ctl.read();
            return self.commands();
        }
        let (id, fd) = split_token(token);
        // A queue that left in this wait's commands: its events are stale.
        let Some(s) = self.slots.iter_mut().find(|s| s.id == id) else {
            return Ok(());
        };
        if s.asleep {
            // The kick stays pending (`Slot::wake` watches it again, which reports it at once:
            // it has a non-zero count); a device event reported in the same wait is left for
            // after the wake.
            return Ok(());
        }
        match fd {
            TokenFd::Kick => {
                // Not read: with an edge-triggered wait each kick is reported once anyway, and
                // the count saturates rather than blocks the kernel's signals.
                s.io.shared
                    .stats
                    .kicks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.want_process = true;
            }
            TokenFd::Device(i) => {
                s.handler.handle_event(i, &mut s.io);
                let requested = std::mem::take(&mut s.io.process_requested);
                if requested || !s.io.drained() {
                    s.want_process = true;
                }
            }
        }
        Ok(())
    }

    /// Runs every queued command.
    fn commands(&mut self) -> Result<(), Exit> {
        loop {
            let cmd = self
                .cmds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .queue
                .pop_front();
            let Some(cmd) = cmd else {
                return Ok(());
            };
            match cmd {
                Command::Add(q, reply) => {
                    let q = *q;
                    match Slot::register(q.id, q.io, q.handler, q.kick, &self.epoll, &self.ctl) {
                        Ok(mut s) => {
                            // Answered first: the connection thread goes on with the
                            // front-end's next message while the queue looks at its ring.
                            let _ = reply.send(Ok(()));
                            s.start();
                            self.slots.push(s);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Stop(id, reply) => {
                    if let Some(at) = self.slots.iter().position(|s| s.id == id) {
                        let s = self.slots.remove(at);
                        let _ = reply.send(s.remove(&self.epoll));
                    }
                }
                Command::Sleep(id, ack) => {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                        s.sleep(&self.epoll);
                    }
                    let _ = ack.send(());
                }
                Command::Wake(id) => {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                        s.wake(&self.epoll);
                    }
                }
                Command::Poke(id) => {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                        s.want_process = !s.asleep;
                    }
                }
                Command::Exit => return Err(Exit),
            }
        }
    }
}

/// Lets the handler complete what has finished since it last looked
/// (`QueueHandler::before_sleep`), until nothing is left, right before the wait; what finishes
/// later makes one of the handler's event fds ready (or, for io_uring task work, interrupts the
/// wait with EINTR, and the loop comes back here).
fn settle(s: &mut Slot) {
    if s.asleep {
        return;
    }
    while s.handler.before_sleep(&mut s.io) {
        // Completions make room: a handler that stopped taking requests (Busy) or asked for it
        // takes more now.
        let requested = std::mem::take(&mut s.io.process_requested);
        if requested || !s.io.drained() {
            process(&mut s.io, s.handler.as_mut());
        }
        s.io.flush();
    }
}
