//! Why a request was refused.

use crate::device::DeviceError;
use crate::dirty_log::DirtyLogError;
use crate::inflight::InflightError;
use crate::memory::MemoryError;
use crate::message::{Request, UnknownRequest};
use crate::snapshot::SnapshotError;
use crate::vring::VringError;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Unknown request code.
    #[error(transparent)]
    UnknownRequest(#[from] UnknownRequest),
    /// A request we do not implement or whose feature was not negotiated.
    #[error("{0:?} is not supported or not negotiated")]
    NotNegotiated(Request),
    /// Payload size is wrong for the request.
    #[error("{request:?}: payload of {got} bytes, expected {expected}")]
    PayloadSize {
        /// The request.
        request: Request,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: String,
    },
    /// Wrong number of file descriptors for the request.
    #[error("{request:?}: {got} file descriptors, expected {expected}")]
    FdCount {
        /// The request.
        request: Request,
        /// Descriptors received.
        got: usize,
        /// Descriptors expected.
        expected: usize,
    },
    /// Vring index out of range.
    #[error("vring index {0} out of range")]
    BadIndex(u64),
    /// Invalid value for a field.
    #[error("invalid {0}")]
    Invalid(String),
    /// Features the back-end did not offer.
    #[error("features {0:#x} were not offered")]
    UnofferedFeatures(u64),
    /// Configuration change on a running ring.
    #[error("vring {0} is running")]
    RingRunning(usize),
    /// Memory table errors.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Dirty log errors.
    #[error(transparent)]
    Log(#[from] DirtyLogError),
    /// Inflight errors.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// Vring start errors.
    #[error(transparent)]
    Vring(#[from] VringError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Address translation failed.
    #[error("ring address {0:#x} does not translate into guest memory")]
    BadAddress(u64),
    /// An eventfd could not be duplicated or created.
    #[error("eventfd error")]
    EventFd(#[source] std::io::Error),
    /// The snapshot was refused.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The device is asleep and the request would need it awake.
    #[error("device is asleep")]
    Asleep,
}
