//! The rate limit: at most `max_bytes` per `period`, as QEMU's virtio-rng (`max-bytes`,
//! `period`) and rust-vmm's vhost-device-rng (`--max-bytes`, `--period`) count it. A window
//! of one period opens at the first request after the previous window ended and carries a
//! budget of `max_bytes`; a request is filled with at most what is left of it (possibly
//! partly), and once it is spent requests wait for the next window. Time is passed in, so
//! the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

/// Longest period accepted (about 49.7 days, what fits a 32-bit count of milliseconds).
pub const MAX_PERIOD: Duration = Duration::from_millis(u32::MAX as u64);

/// Budget bookkeeping for one device.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    max_bytes: u64,
    period: Duration,
    left: u64,
    /// End of the current window; `None` before the first request (or after a reset).
    window_end: Option<Instant>,
}

impl RateLimiter {
    /// `max_bytes` > 0 and 0 < `period` <= `MAX_PERIOD` (checked by the device).
    pub(crate) fn new(max_bytes: u64, period: Duration) -> Self {
        RateLimiter {
            max_bytes,
            period,
            left: 0,
            window_end: None,
        }
    }

    /// Bytes that may be served at `now`; opens a new window (with a full budget) when the
    /// last one has ended.
    pub(crate) fn available(&mut self, now: Instant) -> u64 {
        if self.window_end.is_none_or(|end| now >= end) {
            // `Instant + MAX_PERIOD` cannot overflow on Linux (a 64-bit seconds count); if it
            // ever did, the window would never end, which only errs on the safe side.
            self.window_end = Some(now.checked_add(self.period).unwrap_or(now));
            self.left = self.max_bytes;
        }
        self.left
    }

    /// `n` bytes were served (never more than `available` said).
    pub(crate) fn consume(&mut self, n: u64) {
        self.left = self.left.saturating_sub(n);
    }

    /// How long until the current window ends (zero if it has).
    pub(crate) fn refill_in(&self, now: Instant) -> Duration {
        self.window_end
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(now))
    }

    /// Forgets the current window: the next request opens one with a full budget.
    pub(crate) fn reset(&mut self) {
        self.window_end = None;
        self.left = 0;
    }

    /// Bytes per period.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The period.
    pub(crate) fn period(&self) -> Duration {
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_window_carries_max_bytes_and_refills_after_the_period() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1000, 100 * MS);
        assert_eq!(l.available(t0), 1000);
        l.consume(600);
        assert_eq!(l.available(t0 + 10 * MS), 400);
        l.consume(400);
        assert_eq!(l.available(t0 + 50 * MS), 0);
        assert_eq!(l.refill_in(t0 + 50 * MS), 50 * MS);
        // The window ends 100 ms after it opened: a full budget again.
        assert_eq!(l.available(t0 + 100 * MS), 1000);
        assert_eq!(l.refill_in(t0 + 100 * MS), 100 * MS);
    }

    #[test]
    fn a_window_opens_at_the_first_request_after_the_last_one_ended() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 100 * MS);
        assert_eq!(l.available(t0), 10);
        l.consume(10);
        // Idle for a long time: the next request opens a window of its own.
        let t1 = t0 + 1234 * MS;
        assert_eq!(l.available(t1), 10);
        l.consume(3);
        assert_eq!(l.refill_in(t1 + 40 * MS), 60 * MS);
        assert_eq!(l.available(t1 + 99 * MS), 7);
    }

    #[test]
    fn never_more_than_max_bytes_per_window() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(4096, 10 * MS);
        let mut served = 0u64;
        let mut windows = 0u64;
        let mut last_end = None;
        // Requests of 1500 bytes every 0.5 ms for a second of simulated time.
        for i in 0..2000u32 {
            let now = t0 + Duration::from_micros(500 * u64::from(i));
            let a = l.available(now);
            if l.window_end != last_end {
                windows += 1;
                last_end = l.window_end;
            }
            let n = a.min(1500);
            l.consume(n);
            served += n;
        }
        assert_eq!(windows, 100);
        assert_eq!(served, 100 * 4096);
    }

    #[test]
    fn consume_saturates_and_reset_forgets_the_window() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(5, MAX_PERIOD);
        assert_eq!(l.available(t0), 5);
        l.consume(u64::MAX);
        assert_eq!(l.available(t0 + MS), 0);
        assert_eq!(l.refill_in(t0 + MS), MAX_PERIOD - MS);
        l.reset();
        assert_eq!(l.refill_in(t0), Duration::ZERO);
        assert_eq!(l.available(t0 + 2 * MS), 5);
        assert_eq!((l.max_bytes(), l.period()), (5, MAX_PERIOD));
    }
}
