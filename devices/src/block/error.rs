//! Why a block device could not be built or resized.

use std::io;

/// Errors from building or resizing a [`BlockDevice`](super::BlockDevice).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image has no sectors.
    #[error("the image is empty")]
    EmptyImage,
    /// The image size is not a whole number of 512-byte sectors.
    #[error("image size {0} bytes is not a multiple of 512")]
    NotSectorMultiple(u64),
    /// The image size is not a whole number of logical blocks.
    #[error("image size {size} bytes is not a multiple of the logical block size {block_size}")]
    NotBlockMultiple {
        /// Image size in bytes.
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// The serial does not fit in the 20-byte GET_ID answer.
    #[error("serial is {0} bytes long; at most 20 bytes fit")]
    SerialTooLong(usize),
    /// The logical block size is not one we offer.
    #[error("logical block size {0} is not supported (use 512 or 4096)")]
    BadBlockSize(u32),
    /// The queue size is not a power of two in range.
    #[error("queue size {0} must be a power of two between 4 and 32768")]
    BadQueueSize(u16),
    /// No queues.
    #[error("the device needs at least one queue")]
    ZeroQueues,
    /// More queues than vhost-user can address.
    #[error("{0} queues requested; at most 256 are supported")]
    TooManyQueues(u16),
    /// The image is a FIFO, character device, directory...
    #[error("the image is neither a regular file nor a block device")]
    NotAFileOrBlockDevice,
    /// fstat, fcntl or a block-device ioctl failed.
    #[error("cannot inspect the image")]
    Probe(#[source] io::Error),
    /// O_DIRECT was asked for but the filesystem refuses it.
    #[error("cannot enable O_DIRECT on the image (drop --direct)")]
    Direct(#[source] io::Error),
    /// The file descriptor cannot write, but the device was asked to be writable.
    #[error("the image was opened read-only but the device is read-write")]
    OpenedReadOnly,
    /// O_DIRECT on a block device whose sectors are larger than the logical block size.
    #[error(
        "logical block size {logical} is smaller than the host device's sector size {host}; \
         use a logical block size of at least {host} with O_DIRECT"
    )]
    DirectBlockSize {
        /// Configured logical block size.
        logical: u32,
        /// The host device's logical sector size.
        host: u32,
    },
    /// io_uring could not be set up or lacks an operation we need.
    #[error("io_uring is not available ({0}); use --engine sync")]
    IoUringUnavailable(String),
    /// An engine name we do not know.
    #[error("unknown engine {0:?} (expected \"io_uring\" or \"sync\")")]
    UnknownEngine(String),
    /// A resize to a size that is zero or not a multiple of the logical block size.
    #[error(
        "new size {size} bytes is not a non-zero multiple of the logical block size {block_size}"
    )]
    ResizeMisaligned {
        /// Requested size in bytes.
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// A resize that would shrink the disk under the guest.
    #[error("new size {requested} bytes is smaller than the current {current} bytes; shrinking is refused")]
    ResizeShrink {
        /// Current size in bytes.
        current: u64,
        /// Requested size in bytes.
        requested: u64,
    },
    /// A block device can only take the size it has.
    #[error("a block device cannot be resized to {requested} bytes; it has {actual} bytes (grow the device first)")]
    ResizeBlockDevice {
        /// Requested size in bytes.
        requested: u64,
        /// Size of the host device in bytes.
        actual: u64,
    },
    /// Growing the image file failed.
    #[error("cannot grow the image")]
    Resize(#[source] io::Error),
}
