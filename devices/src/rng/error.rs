//! Why an rng device could not be built.

use std::io;
use std::time::Duration;

/// Errors from building an [`RngDevice`](super::RngDevice).
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The queue size is not a power of two in range.
    #[error("queue size {0} must be a power of two between 1 and 32768")]
    BadQueueSize(u16),
    /// Only one of the two rate-limit settings was given.
    #[error("a rate limit needs both a byte count and a period (or neither)")]
    HalfRateLimit,
    /// A rate limit of zero bytes would never serve anything.
    #[error("the rate limit must allow at least one byte per period")]
    ZeroMaxBytes,
    /// The period is zero or beyond what we accept.
    #[error("rate-limit period {0:?} must be longer than zero and at most {max:?}", max = super::limiter::MAX_PERIOD)]
    BadPeriod(Duration),
    /// A directory cannot be read as a byte stream.
    #[error("the entropy source is a directory")]
    Directory,
    /// The descriptor was opened write-only.
    #[error("the entropy source is not open for reading")]
    NotReadable,
    /// fstat or fcntl failed.
    #[error("cannot inspect the entropy source")]
    Probe(#[source] io::Error),
    /// O_NONBLOCK could not be set on a source that may block.
    #[error("cannot make the entropy source non-blocking")]
    NonBlocking(#[source] io::Error),
}
