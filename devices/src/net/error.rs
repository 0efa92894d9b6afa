//! Why a net device could not be built.

use std::io;

/// Errors from building a [`NetDevice`](super::NetDevice).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Zero queue pairs, or more than vhost-user can address.
    #[error("{0} queue pairs requested; 1 to 128 are supported")]
    BadQueuePairs(u16),
    /// Not one descriptor per queue pair.
    #[error("{taps} tap descriptors for {queue_pairs} queue pairs (one per pair is needed)")]
    TapCount {
        /// Descriptors given.
        taps: usize,
        /// Queue pairs configured.
        queue_pairs: u16,
    },
    /// The queue size is not a power of two in range.
    #[error("queue size {0} must be a power of two between 4 and 32768")]
    BadQueueSize(u16),
    /// The MTU is outside what Ethernet and virtio allow.
    #[error("MTU {0} is out of range (68 to 65535)")]
    BadMtu(u16),
    /// The MAC address does not parse, or is all zeroes or multicast.
    #[error("{0:?} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    /// A descriptor is neither a tap queue nor a socket.
    #[error("descriptor of queue pair {0} is neither a tap nor a socket")]
    NotATap(usize),
    /// A tap queue lacks a flag the device needs.
    #[error("tap of queue pair {pair} was opened without {missing}")]
    TapFlags {
        /// Queue pair.
        pair: usize,
        /// The missing flag.
        missing: &'static str,
    },
    /// Several queue pairs on a tap that is not multi-queue.
    #[error("{0} queue pairs need a multi-queue tap")]
    NotMultiQueue(u16),
    /// fstat, fcntl or an ioctl on a descriptor failed.
    #[error("cannot set up the descriptor of queue pair {0}")]
    Probe(usize, #[source] io::Error),
}
