//! The block device: the launcher opens (and locks) the image and checks that it can be
//! served; the device process builds the device from the fd it receives, never from a path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use vu_devices::block::{BlockConfig, BlockDevice, BlockError, Engine};

use crate::cli::{BlockArgs, BlockDeviceArgs, EngineArg};
use crate::serve::Prepared;

/// What to serve, independent of how it was asked for (command line now, control socket later).
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// The image path.
    pub file: PathBuf,
    /// Open read-only and offer a read-only disk.
    pub read_only: bool,
    /// Open with O_DIRECT.
    pub direct: bool,
    /// Number of queues.
    pub num_queues: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Serial number.
    pub serial: Option<String>,
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
    /// The I/O engine.
    pub engine: Engine,
    /// Start with a write-back cache (false: write-through).
    pub writeback: bool,
    /// Bounded queue polling in microseconds (0: off).
    pub poll_us: u32,
    /// CPUs the device may run on (0: unknown), counted before the jail
    /// (`BlockConfig::cpus`).
    pub cpus: usize,
}

impl From<&BlockArgs> for BlockOptions {
    fn from(a: &BlockArgs) -> Self {
        BlockOptions::new(a.file.clone(), &a.device)
    }
}

impl BlockOptions {
    /// The options for image `file`.
    pub fn new(file: PathBuf, a: &BlockDeviceArgs) -> Self {
        BlockOptions {
            file,
            read_only: a.read_only,
            direct: a.direct,
            num_queues: a.num_queues,
            queue_size: a.queue_size,
            serial: a.serial.clone(),
            logical_block_size: a.logical_block_size.bytes(),
            engine: match a.engine {
                EngineArg::IoUring => Engine::IoUring,
                EngineArg::Sync => Engine::Sync,
            },
            writeback: !a.writethrough,
            poll_us: a.poll_us,
            cpus: 0,
        }
    }
}

/// Why the block device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockSetupError {
    /// The image does not exist.
    #[error("image {0} does not exist")]
    Missing(PathBuf),
    /// The image is neither a regular file nor a block device.
    #[error("image {0} is not a regular file or block device")]
    NotAFile(PathBuf),
    /// Permission denied.
    #[error("permission denied opening image {path} {mode}{hint}")]
    Permission {
        /// The image.
        path: PathBuf,
        /// "read-only" or "read-write".
        mode: &'static str,
        /// A suggestion, possibly empty.
        hint: &'static str,
    },
    /// Another process holds a lock on the image.
    #[error("image {0} is in use by another server (it holds a lock on it)")]
    Locked(PathBuf),
    /// The image is on a read-only filesystem but was to be opened read-write.
    #[error("image {0} is on a read-only filesystem; pass --read-only")]
    ReadOnlyFs(PathBuf),
    /// The filesystem refuses O_DIRECT.
    #[error(
        "the filesystem holding image {0} does not support O_DIRECT (--direct); drop --direct"
    )]
    DirectUnsupported(PathBuf),
    /// Opening failed otherwise.
    #[error("cannot open image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The device refused the image or the options.
    #[error("cannot serve image {path}")]
    Device {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BlockError,
    },
}

/// Opens the image as `opts` asks: O_RDONLY or O_RDWR, plus O_DIRECT and O_CLOEXEC.
pub fn open_image(opts: &BlockOptions) -> Result<File, BlockSetupError> {
    let path = &opts.file;
    // stat first: opening a FIFO would block, and a directory gives a confusing errno.
    let meta = std::fs::metadata(path).map_err(|e| classify_open_error(opts, e))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(BlockSetupError::NotAFile(path.clone()));
    }
    let mut flags = libc::O_CLOEXEC;
    if opts.direct {
        flags |= libc::O_DIRECT;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| classify_open_error(opts, e))?;
    // Two servers writing one image corrupt it: take an exclusive lock (shared when
    // read-only). The lock lives as long as the open file, that is as long as the device.
    let op = if opts.read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    } | libc::LOCK_NB;
    // A server that has just stopped can hold the lock a little longer than its processes
    // live: the kernel tears io_uring contexts down asynchronously, and a ring that registered
    // the image keeps it open until then. So a held lock is retried for a moment (a restart
    // right after a stop succeeds); a server that really has the image still gets the error.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    let mut said = false;
    loop {
        // SAFETY: flock only reads its integer arguments; `file` is a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(BlockSetupError::Open {
                path: path.clone(),
                source: e,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(BlockSetupError::Locked(path.clone()));
        }
        if !said {
            tracing::info!(image = %path.display(), "image is locked; waiting up to {} ms for it", LOCK_WAIT.as_millis());
            said = true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

/// How long `open_image` waits for a lock held by someone else before it gives up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Turns an errno from stat/open into an error that says what to do.
fn classify_open_error(opts: &BlockOptions, e: io::Error) -> BlockSetupError {
    let path = opts.file.clone();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => BlockSetupError::Missing(path),
        (io::ErrorKind::PermissionDenied, _) => BlockSetupError::Permission {
            path,
            mode: if opts.read_only {
                "read-only"
            } else {
                "read-write"
            },
            hint: if opts.read_only {
                ""
            } else {
                " (pass --read-only to serve it read-only)"
            },
        },
        (_, Some(libc::EROFS)) => BlockSetupError::ReadOnlyFs(path),
        (_, Some(libc::EINVAL)) if opts.direct => BlockSetupError::DirectUnsupported(path),
        _ => BlockSetupError::Open { path, source: e },
    }
}

/// In the launcher: checks that `file` (from [`open_image`]) can be served as `opts` asks,
/// by building the device on a duplicate of it, so that a bad image is reported before any
/// device process starts. Logs what will be served.
pub fn check(opts: &BlockOptions, file: &File) -> Result<(), BlockSetupError> {
    let dup = file.try_clone().map_err(|source| BlockSetupError::Open {
        path: opts.file.clone(),
        source,
    })?;
    let device = new_device(opts, dup)?;
    tracing::info!(
        image = %opts.file.display(),
        sectors = device.capacity_sectors(),
        read_only = opts.read_only,
        direct = opts.direct,
        engine = %opts.engine,
        num_queues = opts.num_queues,
        queue_size = opts.queue_size,
        logical_block_size = opts.logical_block_size,
        writeback = opts.writeback,
        "image opened"
    );
    Ok(())
}

/// In the device process: builds the device on the image fd received from the launcher.
pub fn build(opts: &BlockOptions, file: File) -> Result<Prepared, BlockSetupError> {
    let device = new_device(opts, file)?;
    tracing::debug!(sectors = device.capacity_sectors(), "block device built");
    let flusher = device.clone();
    Ok(Prepared {
        device,
        flush: Box::new(move || flusher.flush()),
        poll_us: opts.poll_us,
    })
}

fn new_device(opts: &BlockOptions, file: File) -> Result<Arc<BlockDevice>, BlockSetupError> {
    let cfg = BlockConfig {
        file,
        read_only: opts.read_only,
        direct: opts.direct,
        num_queues: opts.num_queues,
        queue_size: opts.queue_size,
        serial: opts.serial.clone(),
        logical_block_size: opts.logical_block_size,
        engine: opts.engine,
        writeback: opts.writeback,
        cpus: opts.cpus,
    };
    BlockDevice::new(cfg).map_err(|source| BlockSetupError::Device {
        path: opts.file.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(file: PathBuf) -> BlockOptions {
        BlockOptions {
            file,
            read_only: false,
            direct: true,
            num_queues: 1,
            queue_size: 256,
            serial: None,
            logical_block_size: 512,
            engine: Engine::Sync,
            writeback: true,
            poll_us: 0,
            cpus: 0,
        }
    }

    #[test]
    fn einval_with_direct_suggests_dropping_it() {
        let o = opts(PathBuf::from("/img"));
        let e = classify_open_error(&o, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(e, BlockSetupError::DirectUnsupported(_)));
        assert!(e.to_string().contains("drop --direct"), "{e}");
    }

    #[test]
    fn missing_and_not_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = open_image(&opts(dir.path().join("nope"))).expect_err("missing");
        assert!(matches!(e, BlockSetupError::Missing(_)), "{e}");
        let e = open_image(&opts(dir.path().to_path_buf())).expect_err("a directory");
        assert!(matches!(e, BlockSetupError::NotAFile(_)), "{e}");
    }
}
