//! Why a vsock device could not be built.

use std::io;

/// Errors from building a [`VsockDevice`](super::VsockDevice).
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved (0, 1, 2, 0xffffffff) or does not fit in 32 bits.
    #[error("guest CID {0} is reserved or out of range (use 3..=4294967294)")]
    BadCid(u64),
    /// The queue size is not a power of two in range.
    #[error("queue size {0} must be a power of two between 4 and 32768")]
    BadQueueSize(u16),
    /// The per-connection buffer is out of range.
    #[error("tx buffer size {0} must be between 1 and 67108864 bytes")]
    BadTxBufferSize(u32),
    /// A connection limit of zero.
    #[error("the device needs room for at least one connection")]
    ZeroConnections,
    /// The listening socket could not be made non-blocking or is not listening.
    #[error("the --uds-path listener is unusable")]
    Listener(#[source] io::Error),
    /// The broker socket could not be made non-blocking.
    #[error("the broker socket is unusable")]
    Broker(#[source] io::Error),
    /// A sibling link is unusable or names a CID it may not.
    #[error("sibling link to CID {cid} refused: {reason}")]
    BadLink {
        /// The sibling's CID.
        cid: u64,
        /// Why.
        reason: &'static str,
    },
    /// epoll, eventfd or timerfd could not be created.
    #[error("cannot set up the device's event loop")]
    Setup(#[source] io::Error),
}
