//! Counters and the source's health, shared by the device (status) and its queue handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters since the device was built (they survive reconnects, not the process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Entropy bytes written into guest buffers.
    pub bytes_total: u64,
    /// Requests completed (including those completed empty).
    pub requests_total: u64,
    /// Requests without a device-writable buffer, completed with length 0.
    pub empty_requests_total: u64,
    /// Times requests waited for the rate limit's next period.
    pub rate_limit_waits_total: u64,
    /// Times the source had nothing (EAGAIN) and requests waited for it.
    pub source_waits_total: u64,
    /// Reads that found the source at its end (EOF).
    pub source_eof_total: u64,
    /// Reads that failed.
    pub source_errors_total: u64,
}

/// The source's health as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SourceState {
    /// The last read returned data (or nothing was read yet).
    #[default]
    Ok,
    /// The last read hit end of file; requests wait, the read is retried with backoff.
    Eof,
    /// The last read failed with this error; requests wait, the read is retried.
    Error(String),
}

impl SourceState {
    /// "ok", "eof" or "error".
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceState::Ok => "ok",
            SourceState::Eof => "eof",
            SourceState::Error(_) => "error",
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceState::Error(e) => write!(f, "error: {e}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
    pub empty_requests: AtomicU64,
    pub rate_limit_waits: AtomicU64,
    pub source_waits: AtomicU64,
    pub source_eof: AtomicU64,
    pub source_errors: AtomicU64,
    pub state: Mutex<SourceState>,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RngStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RngStats {
            bytes_total: get(&self.bytes),
            requests_total: get(&self.requests),
            empty_requests_total: get(&self.empty_requests),
            rate_limit_waits_total: get(&self.rate_limit_waits),
            source_waits_total: get(&self.source_waits),
            source_eof_total: get(&self.source_eof),
            source_errors_total: get(&self.source_errors),
        }
    }

    pub(crate) fn state(&self) -> SourceState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the new state; returns the previous one.
    pub(crate) fn set_state(&self, s: SourceState) -> SourceState {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *g, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_print_for_status() {
        assert_eq!(SourceState::Ok.to_string(), "ok");
        assert_eq!(SourceState::Eof.to_string(), "eof");
        assert_eq!(
            SourceState::Error("Input/output error".into()).to_string(),
            "error: Input/output error"
        );
        let c = Counters::default();
        Counters::add(&c.bytes, 5);
        assert_eq!(c.snapshot().bytes_total, 5);
        assert_eq!(c.set_state(SourceState::Eof), SourceState::Ok);
        assert_eq!(c.state(), SourceState::Eof);
    }
}
