//! The request queue: each round takes a batch of requests, reads entropy for all of them
//! with one `readv` straight into their device-writable buffers, completes them and publishes
//! the batch with one `flush`.
//!
//! A request gets at most `MAX_REQUEST_BYTES`, and at most what the rate limit has left (so
//! it may be filled partly, as in QEMU). Its readable buffers are ignored; a request with no
//! writable buffer is completed with length 0. The handler never spins:
//!
//! - rate limit spent: it stops taking requests and arms its timerfd for the next period;
//! - source has nothing (EAGAIN): it waits for the source to become readable (epoll), or, for
//!   sources epoll cannot watch (/dev/hwrng), retries on the timer from 1 ms up to 100 ms;
//! - source at EOF or failing: no bytes are made up; the requests it holds wait, the state
//!   shows in status and the log, and the read is retried on the timer from 100 ms doubling
//!   up to 5 s, so a source that recovers (a file that grows, a FIFO's next writer, a
//!   hardware RNG back from an error) is served again.
//!
//! Requests taken but not filled are completed with length 0 by `drain` (before the queue
//! stops, sleeps or is snapshotted): nothing is held across it. A long stream of requests is
//! served in slices (`YIELD_ROUNDS`, `YIELD_BYTES`) so that the worker sees its commands.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;
use vu_core::{warn_ratelimited, DeviceError, Interest, Progress, QueueHandler, QueueIo};

use super::source::ReadOutcome;
use super::stats::{Counters, SourceState};
use super::Shared;

/// Largest number of iovecs one `readv` takes (Linux UIO_MAXIOV).
pub(crate) const IOV_MAX: usize = 1024;
/// Most bytes one request gets: a larger buffer is filled this far and completed.
pub const MAX_REQUEST_BYTES: u32 = 64 << 10;
/// Most requests one round takes.
const MAX_BATCH: usize = 64;
/// Most bytes one round reads.
const MAX_ROUND_BYTES: u64 = 1 << 20;
/// After this many rounds or bytes in one `process` call the worker gets control back.
const YIELD_ROUNDS: u32 = 256;
const YIELD_BYTES: u64 = 16 << 20;
/// Retry delays while a source that epoll cannot watch returns EAGAIN.
const POLL_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));
/// Retry delays while the source is at EOF or failing.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Indexes into `event_fds()`.
const TIMER: usize = 0;
const WAKER: usize = 1;
const SOURCE: usize = 2;

/// What the handler waits for before it takes requests again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    None,
    /// The timerfd: the rate limit's next period, or a retry of the source.
    Timer,
    /// The source to become readable.
    Source,
}

/// iovecs naming guest buffers, reused across rounds.
#[derive(Debug, Default)]
struct IoVecs(Vec<libc::iovec>);

// SAFETY: `IoVecs` only stores addresses and lengths and never dereferences them; they are
// handed to the kernel by the thread that owns the handler, while the chains they belong to
// (which keep the guest memory mapped) are held.
unsafe impl Send for IoVecs {}

/// The handler of the rng device's one queue.
#[derive(Debug)]
pub(crate) struct RngQueue {
    shared: Arc<Shared>,
    timer: TimerFd,
    /// Written to hand the worker back control mid-stream (read in `handle_event`).
    waker: EventFd,
    /// Requests taken and not completed, in the order they were taken.
    held: Vec<u16>,
    /// Bytes planned for the first `planned.len()` held requests in this round.
    planned: Vec<u32>,
    iov: IoVecs,
    wait: Wait,
    poll_backoff: Duration,
    retry_backoff: Duration,
    /// The last read returned data (so `SourceState` is `Ok`).
    source_ok: bool,
}

impl RngQueue {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, DeviceError> {
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        let fd = timer.as_raw_fd();
        // SAFETY: F_GETFL only reads the status flags of the timerfd we just created.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: F_SETFL only changes the status flags of that timerfd: it must not block
        // when an expiry was already consumed.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(DeviceError::Io(std::io::Error::last_os_error()));
        }
        let source_ok = shared.counters.state() == SourceState::Ok;
        Ok(RngQueue {
            shared,
            timer,
            waker: EventFd::new(EFD_NONBLOCK)?,
            held: Vec::with_capacity(MAX_BATCH),
            planned: Vec::with_capacity(MAX_BATCH),
            iov: IoVecs(Vec::with_capacity(IOV_MAX)),
            wait: Wait::None,
            poll_backoff: POLL_BACKOFF.0,
            retry_backoff: RETRY_BACKOFF.0,
            source_ok,
        })
    }

    /// Bytes the rate limit allows now (unlimited: `u64::MAX`).
    fn budget(&self) -> u64 {
        match &self.shared.limiter {
            None => u64::MAX,
            Some(l) => l
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .available(Instant::now()),
        }
    }

    /// Tops up `held` with requests worth up to `budget` bytes (bounded by the round's
    /// limits); completes requests without a writable buffer at once.
    fn take_requests(&mut self, q: &mut QueueIo, budget: u64) {
        let cap = budget.min(MAX_ROUND_BYTES);
        let share =
            |q: &QueueIo, h: u16| u64::from(q.chain(h).writable_len().min(MAX_REQUEST_BYTES));
        let mut want: u64 = self.held.iter().map(|&h| share(q, h)).sum();
        while self.held.len() < MAX_BATCH && want < cap {
            let Some(head) = q.pop() else {
                return;
            };
            if q.chain(head).writable_len() == 0 {
                warn_ratelimited!(
                    head,
                    "rng request without a device-writable buffer; completed empty"
                );
                q.complete(head, 0);
                Counters::add(&self.shared.counters.requests, 1);
                Counters::add(&self.shared.counters.empty_requests, 1);
                continue;
            }
            want += share(q, head);
            self.held.push(head);
        }
    }

    /// Builds the round's iovecs over the held requests, in order, within `budget`.
    fn plan(&mut self, q: &QueueIo, budget: u64) {
        self.iov.0.clear();
        self.planned.clear();
        let mut left = budget.min(MAX_ROUND_BYTES);
        for &head in &self.held {
            if left == 0 || self.iov.0.len() >= IOV_MAX {
                break;
            }
            let chain = q.chain(head);
            let mut need = u64::from(chain.writable_len().min(MAX_REQUEST_BYTES)).min(left);
            let mut got = 0u64;
            for s in chain.writable() {
                if need == 0 || self.iov.0.len() >= IOV_MAX {
                    break;
                }
                let n = u64::from(s.len).min(need);
                if n == 0 {
                    continue;
                }
                self.iov.0.push(libc::iovec {
                    iov_base: s.host as *mut libc::c_void,
                    iov_len: n as usize,
                });
                need -= n;
                got += n;
            }
            if got == 0 {
                break;
            }
            self.planned.push(got as u32);
            left -= got;
        }
    }

    /// `n` bytes arrived for the planned requests, in order: completes every request that
    /// got bytes (the last one possibly partly); the others stay held.
    fn finish(&mut self, q: &mut QueueIo, n: usize) {
        let mut left = n as u64;
        let mut done = 0;
        for &want in &self.planned {
            if left == 0 {
                break;
            }
            let got = u64::from(want).min(left);
            q.complete(self.held[done], got as u32);
            left -= got;
            done += 1;
        }
        self.held.drain(..done);
        let c = &self.shared.counters;
        Counters::add(&c.bytes, n as u64);
        Counters::add(&c.requests, done as u64);
        if let Some(l) = &self.shared.limiter {
            l.lock()
                .unwrap_or_else(|e| e.into_inner())
                .consume(n as u64);
        }
        self.poll_backoff = POLL_BACKOFF.0;
        self.retry_backoff = RETRY_BACKOFF.0;
        if !self.source_ok {
            self.source_ok = true;
            let prev = c.set_state(SourceState::Ok);
            tracing::info!(was = %prev, "entropy source delivers again");
        }
    }

    fn arm(&mut self, after: Duration) {
        // A zero expiry would disarm the timer.
        let after = after.max(Duration::from_micros(1));
        if let Err(e) = self.timer.reset(after, None) {
            tracing::error!(error = %e, "cannot arm the rng queue timer");
        }
        self.wait = Wait::Timer;
    }

    fn wait_for_budget(&mut self) {
        let Some(l) = &self.shared.limiter else {
            return;
        };
        let after = l
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refill_in(Instant::now());
        Counters::add(&self.shared.counters.rate_limit_waits, 1);
        self.arm(after);
    }

    fn wait_for_source(&mut self, q: &mut QueueIo) {
        Counters::add(&self.shared.counters.source_waits, 1);
        if self.shared.source.pollable() {
            q.set_interest(SOURCE, Interest::Readable);
            self.wait = Wait::Source;
        } else {
            let after = self.poll_backoff;
            self.poll_backoff = (after * 2).min(POLL_BACKOFF.1);
            self.arm(after);
        }
    }

    /// The source hit EOF or failed: nothing is served until a retry reads data.
    fn source_failed(&mut self, state: SourceState) {
        let c = &self.shared.counters;
        match state {
            SourceState::Eof => Counters::add(&c.source_eof, 1),
            _ => Counters::add(&c.source_errors, 1),
        }
        self.source_ok = false;
        let retry = self.retry_backoff;
        let prev = c.set_state(state.clone());
        if prev != state {
            warn_ratelimited!(
                source = %state,
                retry_ms = retry.as_millis() as u64,
                "the entropy source gives nothing; requests wait (no bytes are made up) and the read is retried"
            );
        }
        self.retry_backoff = (retry * 2).min(RETRY_BACKOFF.1);
        self.arm(retry);
    }

    /// One round: take, plan, read, complete. `Ok(bytes)` to go on; `Err` with what
    /// `process` returns when the ring is empty (`Drained`) or the handler must wait
    /// (`Busy`).
    fn round(&mut self, q: &mut QueueIo) -> Result<u64, Progress> {
        if self.held.is_empty() && !q.avail_pending() {
            return Err(Progress::Drained);
        }
        let budget = self.budget();
        if budget == 0 {
            self.wait_for_budget();
            return Err(Progress::Busy);
        }
        self.take_requests(q, budget);
        if self.held.is_empty() {
            return Err(Progress::Drained);
        }
        self.plan(q, budget);
        if self.iov.0.is_empty() {
            // Cannot happen (a held request has a non-empty writable buffer); an empty
            // readv would read as EOF.
            tracing::error!("rng round planned no bytes");
            return Err(Progress::Drained);
        }
        // SAFETY: every iovec names part of a device-writable segment of a chain in `held`,
        // which `q` validated against guest memory and keeps mapped until it is completed
        // (after this read).
        match unsafe { self.shared.source.read(&self.iov.0) } {
            ReadOutcome::Data(n) => {
                self.finish(q, n);
                q.flush();
                Ok(n as u64)
            }
            ReadOutcome::WouldBlock => {
                self.wait_for_source(q);
                Err(Progress::Busy)
            }
            ReadOutcome::Eof => {
                self.source_failed(SourceState::Eof);
                Err(Progress::Busy)
            }
            ReadOutcome::Failed(e) => {
                self.source_failed(SourceState::Error(e.to_string()));
                Err(Progress::Busy)
            }
        }
    }
}

impl QueueHandler for RngQueue {
    fn event_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.timer.as_raw_fd(), self.waker.as_raw_fd()];
        if self.shared.source.pollable() {
            fds.push(self.shared.source.raw_fd());
        }
        fds
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        if self.wait != Wait::None {
            // The event that ends the wait asks for the next pass.
            return Progress::Busy;
        }
        let (mut rounds, mut bytes) = (0u32, 0u64);
        loop {
            match self.round(q) {
                Ok(n) => {
                    rounds += 1;
                    bytes += n;
                }
                Err(p) => return p,
            }
            if rounds >= YIELD_ROUNDS || bytes >= YIELD_BYTES {
                // Let the worker look at its commands; the waker brings it straight back.
                let _ = self.waker.write(1);
                return Progress::Busy;
            }
        }
    }

    fn handle_event(&mut self, index: usize, q: &mut QueueIo) {
        match index {
            TIMER => {
                // Non-blocking: an expiry already consumed (or re-armed) reads EAGAIN.
                let _ = self.timer.wait();
                if self.wait == Wait::Timer {
                    self.wait = Wait::None;
                    q.request_process();
                }
            }
            WAKER => {
                let _ = self.waker.read();
                q.request_process();
            }
            SOURCE => {
                // Watched only while waiting for it (it may stay readable, e.g. at EOF).
                q.set_interest(SOURCE, Interest::None);
                if self.wait == Wait::Source {
                    self.wait = Wait::None;
                    q.request_process();
                }
            }
            _ => {}
        }
    }

    fn in_flight(&self) -> usize {
        self.held.len()
    }

    fn drain(&mut self, q: &mut QueueIo) {
        let n = self.held.len();
        for head in self.held.drain(..) {
            q.complete(head, 0);
        }
        Counters::add(&self.shared.counters.requests, n as u64);
    }
}
