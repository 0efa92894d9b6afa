//! Light load for a queue's driver: a fixed request rate (open loop) and bursts with think
//! time (see [`Pace`]). The closed loop is in `driver.rs`.
//!
//! At a fixed rate, a periodic CLOCK_MONOTONIC timer (absolute, so it does not drift) wakes
//! the driver at each send time; the driver sends what is due, one publish and at most one
//! kick per send, and sleeps on the timer and the call eventfd together. A request due while
//! `iodepth` are in flight waits for a slot, and its latency still counts from when it was
//! due: a server that stalls is charged for every request the stall delayed.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::config::Pace;
use super::driver::{QueueDriver, QueueResult};
use super::procstat::thread_cpu_ns;

const TOKEN_CALL: u64 = 0;
const TOKEN_TIMER: u64 = 1;

/// CLOCK_MONOTONIC in nanoseconds.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// A periodic timerfd on absolute CLOCK_MONOTONIC times.
struct Ticker {
    fd: OwnedFd,
}

impl Ticker {
    /// Expires at `first_ns` (CLOCK_MONOTONIC), then every `interval_ns`.
    fn new(first_ns: u64, interval_ns: u64) -> Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the fd it returns is ours alone.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let spec = libc::itimerspec {
            it_interval: timespec(interval_ns.max(1)),
            it_value: timespec(first_ns.max(1)),
        };
        // SAFETY: `spec` is a valid itimerspec we own; the old value is not asked for.
        let r = unsafe {
            libc::timerfd_settime(
                fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        Ok(Ticker { fd })
    }

    /// Consumes the expirations (the clock, not their count, says what is due).
    fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `n`, which we own; the fd is non-blocking.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }
}

/// Lets this thread's sleeps end on time (the default timer slack is 50 us).
fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// The waiting side of a paced run: the call eventfd (and the ticker) in one epoll set,
/// with the stall check.
struct Waiter {
    epoll: Epoll,
    events: [EpollEvent; 2],
    ticker: Option<Ticker>,
    last_progress_ns: u64,
}

impl QueueDriver {
    /// Runs the queue at a fixed rate or in bursts (`work.pace`); see the module comment.
    pub(super) fn run_paced(
        mut self,
        start_barrier: &Barrier,
        abort: &AtomicBool,
    ) -> Result<QueueResult> {
        let mut r = QueueResult::default();
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.fds.call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_CALL),
        )?;
        tight_timer_slack();
        let mut w = Waiter {
            epoll,
            events: [EpollEvent::default(); 2],
            ticker: None,
            last_progress_ns: 0,
        };
        start_barrier.wait();
        let cpu0 = thread_cpu_ns();
        let base = mono_ns();
        match self.work.pace {
            Pace::Rate { batch, .. } => {
                let t = Ticker::new(base + self.work.phase_ns, self.work.interval_ns)?;
                w.epoll.ctl(
                    ControlOperation::Add,
                    t.fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_TIMER),
                )?;
                w.ticker = Some(t);
                self.rate_loop(&mut w, &mut r, base, batch, abort)?;
            }
            Pace::Think { batch, think } => {
                self.think_loop(&mut w, &mut r, base, batch, think, abort)?
            }
            Pace::Closed => bail!("the closed loop runs in driver.rs"),
        }
        r.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        r.final_avail = self.issued as u16;
        Ok(r)
    }

    /// Whether request number `planned` (0-based) is still to be sent at `now_ns`.
    fn wanted(&self, planned: u64, now_ns: u64) -> bool {
        match self.work.budget {
            Some(b) => planned < b,
            None => now_ns < self.work.runtime.as_nanos() as u64,
        }
    }

    /// Reaps what the server used at `now_ns`; returns the freed slots through `free`.
    fn reap(
        &mut self,
        r: &mut QueueResult,
        now_ns: u64,
        free: &mut Vec<usize>,
        abort: &AtomicBool,
    ) -> Result<usize> {
        let used = self.ring.used_idx();
        let mut n = 0;
        while let Some((id, _len)) = self.ring.pop_used(used) {
            free.push(self.complete(id, now_ns, r, abort)?);
            n += 1;
        }
        if n > 0 {
            r.elapsed = Duration::from_nanos(now_ns);
        }
        Ok(n)
    }

    /// Sleeps until a completion or a tick, unless completions arrived meanwhile.
    fn wait(
        &mut self,
        w: &mut Waiter,
        r: &mut QueueResult,
        in_flight: usize,
        now_ns: u64,
        abort: &AtomicBool,
    ) -> Result<()> {
        if in_flight > 0 && self.ring.arm_notification() {
            return Ok(());
        }
        if abort.load(Ordering::Relaxed) {
            bail!(
                "queue {}: stopped because another queue failed",
                self.work.index
            );
        }
        if in_flight > 0
            && now_ns.saturating_sub(w.last_progress_ns) > self.work.stall_timeout.as_nanos() as u64
        {
            abort.store(true, Ordering::Relaxed);
            bail!(
                "queue {}: no request completed for {:?} ({in_flight} in flight): the server is stuck or gone",
                self.work.index,
                self.work.stall_timeout
            );
        }
        r.waits += 1;
        match w.epoll.wait(100, &mut w.events) {
            Ok(n) => {
                for ev in &w.events[..n] {
                    if ev.data() == TOKEN_CALL {
                        let _ = self.fds.call.read();
                    } else if let Some(t) = &w.ticker {
                        t.clear();
                    }
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => bail!("epoll_wait on the call eventfd and the timer: {e}"),
        }
    }

    /// The open loop: `batch` requests due every `interval_ns`, whatever the server does.
    fn rate_loop(
        &mut self,
        w: &mut Waiter,
        r: &mut QueueResult,
        base: u64,
        batch: usize,
        abort: &AtomicBool,
    ) -> Result<()> {
        let (interval, phase) = (self.work.interval_ns.max(1), self.work.phase_ns);
        let mut free: Vec<usize> = (0..self.work.iodepth).rev().collect();
        let mut backlog: VecDeque<u64> = VecDeque::new();
        let (mut tick, mut planned, mut counted_late) = (0u64, 0u64, 0usize);
        let mut generating = true;
        loop {
            let now = mono_ns() - base;
            while generating {
                let due = phase + tick * interval;
                if due > now {
                    break;
                }
                for _ in 0..batch {
                    if !self.wanted(planned, due) {
                        generating = false;
                        break;
                    }
                    backlog.push_back(due);
                    planned += 1;
                }
                tick += 1;
            }
            if self.reap(r, now, &mut free, abort)? > 0 {
                w.last_progress_ns = now;
            }
            let mut in_flight = self.work.iodepth - free.len();
            if in_flight == 0 {
                // The stall clock runs only while something is in flight.
                w.last_progress_ns = now;
            }
            let mut sent = false;
            while !backlog.is_empty() && !free.is_empty() {
                let (Some(due), Some(i)) = (backlog.pop_front(), free.pop()) else {
                    break;
                };
                counted_late = counted_late.saturating_sub(1);
                r.lag.record(now - due);
                self.submit(i, due, now);
                in_flight += 1;
                sent = true;
            }
            // Whatever is still due waits for a slot: late (counted once).
            r.late += (backlog.len() - counted_late) as u64;
            counted_late = backlog.len();
            if sent {
                self.kick(r);
            }
            if !generating && backlog.is_empty() && in_flight == 0 {
                return Ok(());
            }
            self.wait(w, r, in_flight, now, abort)?;
        }
    }

    /// Bursts: `batch` requests, wait for all, think, again.
    fn think_loop(
        &mut self,
        w: &mut Waiter,
        r: &mut QueueResult,
        base: u64,
        batch: usize,
        think: Duration,
        abort: &AtomicBool,
    ) -> Result<()> {
        let mut planned = 0u64;
        let mut free: Vec<usize> = Vec::with_capacity(batch);
        loop {
            let now = mono_ns() - base;
            if !self.wanted(planned, now) {
                return Ok(());
            }
            let mut in_flight = 0;
            for i in 0..batch {
                if !self.wanted(planned, now) {
                    break;
                }
                self.submit(i, now, now);
                planned += 1;
                in_flight += 1;
            }
            self.kick(r);
            w.last_progress_ns = now;
            while in_flight > 0 {
                let now = mono_ns() - base;
                free.clear();
                let n = self.reap(r, now, &mut free, abort)?;
                if n > 0 {
                    w.last_progress_ns = now;
                    in_flight -= n;
                    continue;
                }
                self.wait(w, r, in_flight, now, abort)?;
            }
            if self.wanted(planned, mono_ns() - base) && !think.is_zero() {
                std::thread::sleep(think);
            }
        }
    }
}
