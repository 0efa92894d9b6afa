//! The rng data path: `iodepth` requests in flight on one queue, each one device-writable
//! descriptor (as Linux's driver and rust-vmm's vhost-device-rng expect) of `bs` bytes with
//! its own preallocated buffer; completions are reaped in batches and resubmitted at once,
//! the available index is published once per batch and the device kicked only when it asks.
//! Nothing is allocated per request.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::bench::config::Notify;
use crate::bench::control::QueueFds;
use crate::bench::histogram::Histogram;
use crate::bench::memory::QueueLayout;
use crate::bench::procstat::thread_cpu_ns;
use crate::bench::ring::{DriverRing, DESC_F_WRITE};

/// What the driver does.
#[derive(Debug, Clone)]
pub struct RngWork {
    /// Bytes per request buffer.
    pub bs: u32,
    /// Requests in flight.
    pub iodepth: usize,
    /// Requests to run (`None`: for `runtime`).
    pub budget: Option<u64>,
    /// Run time (when there is no budget).
    pub runtime: Duration,
    /// Completion notification.
    pub notify: Notify,
    /// Zero each buffer before submitting it and count completions whose first 16 bytes
    /// are still all zero (a server that does not fill what it reports).
    pub check: bool,
    /// Give up after this long without a completion.
    pub stall_timeout: Duration,
}

/// What the driver measured.
#[derive(Debug, Clone, Default)]
pub struct RngResult {
    /// Completion latencies in ns.
    pub latency: Histogram,
    /// Requests completed.
    pub completed: u64,
    /// Bytes the server reported written (used lengths).
    pub bytes: u64,
    /// Completions with fewer bytes than the buffer (zero included).
    pub short: u64,
    /// Completions with used length 0.
    pub empty: u64,
    /// Completions whose first 16 bytes were still zero (`check`).
    pub unfilled: u64,
    /// Kicks sent.
    pub kicks: u64,
    /// Sleeps on the call eventfd.
    pub waits: u64,
    /// CPU time of the driver thread, ns.
    pub cpu_ns: u64,
    /// From the start to the last completion.
    pub elapsed: Duration,
    /// Final available index (what the server must report on GET_VRING_BASE).
    pub final_avail: u16,
}

/// The driver of the one rng queue.
#[derive(Debug)]
pub struct RngDriver {
    work: RngWork,
    ring: DriverRing,
    fds: QueueFds,
    layout: QueueLayout,
    submitted_ns: Vec<u64>,
    busy: Vec<bool>,
    issued: u64,
}

impl RngDriver {
    /// Builds the driver and writes each slot's descriptor.
    pub fn new(work: RngWork, mut ring: DriverRing, fds: QueueFds, layout: QueueLayout) -> Self {
        for i in 0..work.iodepth {
            ring.set_desc(i as u16, layout.buffer(i), work.bs, DESC_F_WRITE, 0);
        }
        RngDriver {
            submitted_ns: vec![0; work.iodepth],
            busy: vec![false; work.iodepth],
            issued: 0,
            ring,
            fds,
            layout,
            work,
        }
    }

    fn submit(&mut self, i: usize, now_ns: u64) {
        if self.work.check {
            self.ring
                .memory()
                .zero(self.layout.buffer(i), u64::from(self.work.bs));
        }
        self.submitted_ns[i] = now_ns;
        self.busy[i] = true;
        self.ring.push_avail(i as u16);
        self.issued += 1;
    }

    fn more(&self, now: Instant, deadline: Instant) -> bool {
        match self.work.budget {
            Some(b) => self.issued < b,
            None => now < deadline,
        }
    }

    fn kick(&mut self, r: &mut RngResult) -> Result<()> {
        if self.ring.publish() {
            r.kicks += 1;
            self.fds.kick.write(1)?;
        }
        Ok(())
    }

    /// Waits for a completion (spins with `Notify::Poll`); fails after `stall_timeout`
    /// without progress.
    fn wait(&mut self, epoll: &Epoll, r: &mut RngResult, since: Instant) -> Result<()> {
        let mut events = [EpollEvent::default(); 1];
        loop {
            if self.ring.used_idx() != self.ring.last_used() {
                return Ok(());
            }
            if self.work.notify == Notify::Poll {
                std::hint::spin_loop();
            } else if !self.ring.arm_notification() {
                r.waits += 1;
                match epoll.wait(100, &mut events) {
                    Ok(n) if n > 0 => {
                        let _ = self.fds.call.read();
                    }
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => bail!("epoll_wait on the call eventfd: {e}"),
                }
            }
            if since.elapsed() > self.work.stall_timeout {
                bail!(
                    "no request completed for {:?}: the server is stuck, rate limited or gone \
                     ({} requests made available, device used index {}, driver reaped to {})",
                    self.work.stall_timeout,
                    self.issued,
                    self.ring.used_idx(),
                    self.ring.last_used()
                );
            }
        }
    }

    fn reap(&mut self, i: u32, len: u32, now_ns: u64, r: &mut RngResult) -> Result<()> {
        let i = i as usize;
        if i >= self.busy.len() || !self.busy[i] {
            bail!("the server used descriptor {i}, which is no request in flight");
        }
        if len > self.work.bs {
            bail!(
                "the server reports {len} bytes written into a {}-byte buffer",
                self.work.bs
            );
        }
        self.busy[i] = false;
        r.completed += 1;
        r.bytes += u64::from(len);
        r.short += u64::from(len < self.work.bs);
        r.empty += u64::from(len == 0);
        r.latency.record(now_ns - self.submitted_ns[i]);
        if self.work.check && len > 0 {
            let mut head = [0u8; 16];
            let n = (len as usize).min(16);
            self.ring
                .memory()
                .read(self.layout.buffer(i), &mut head[..n]);
            r.unfilled += u64::from(head[..n].iter().all(|&b| b == 0));
        }
        Ok(())
    }

    /// Runs until the budget or the run time is used up and every request has completed.
    pub fn run(mut self) -> Result<RngResult> {
        let mut r = RngResult::default();
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.fds.call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        if self.work.notify == Notify::Poll {
            self.ring.suppress_notification();
        }
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let deadline = start + self.work.runtime;
        let mut in_flight = 0usize;
        for i in 0..self.work.iodepth {
            if !self.more(start, deadline) {
                break;
            }
            self.submit(i, 0);
            in_flight += 1;
        }
        self.kick(&mut r)?;
        let mut last_progress = start;
        while in_flight > 0 {
            self.wait(&epoll, &mut r, last_progress)?;
            let now = Instant::now();
            last_progress = now;
            let now_ns = now.duration_since(start).as_nanos() as u64;
            let used = self.ring.used_idx();
            while let Some((id, len)) = self.ring.pop_used(used) {
                self.reap(id, len, now_ns, &mut r)?;
                in_flight -= 1;
                if self.more(now, deadline) {
                    self.submit(id as usize, now_ns);
                    in_flight += 1;
                }
            }
            if self.work.notify == Notify::Poll {
                self.ring.suppress_notification();
            }
            self.kick(&mut r)?;
            r.elapsed = now.duration_since(start);
        }
        r.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        r.final_avail = self.issued as u16;
        Ok(r)
    }
}
