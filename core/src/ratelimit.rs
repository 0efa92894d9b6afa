//! Rate limiting for log lines a guest or front-end can trigger at will.

use std::sync::atomic::{AtomicU64, Ordering};

/// Allows `burst` events per second; counts the rest.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u64,
    second: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// A limiter allowing `burst` events per second.
    pub const fn new(burst: u64) -> Self {
        RateLimiter {
            burst,
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now. On the first allowed event of a new second, returns how many
    /// were suppressed before it through `suppressed`.
    pub fn allow(&self) -> Option<u64> {
        let now = coarse_seconds();
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.burst {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Seconds of a clock that ticks every few milliseconds: a guest flooding a warning makes
/// the limiter read the clock once per event, and the coarse clock is read without the
/// cycle counter.
fn coarse_seconds() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// Logs a warning at most `burst` times a second per call site.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::ratelimit::RateLimiter = $crate::ratelimit::RateLimiter::new(10);
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)*);
            } else {
                tracing::warn!($($arg)*);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_a_burst() {
        let l = RateLimiter::new(3);
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        // At most two seconds can be touched by this loop.
        assert!((3..=6).contains(&allowed), "allowed {allowed}");
    }
}
