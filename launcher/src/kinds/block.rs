//! The block kind (`launcher start block`): a disk image or host block device served as
//! vhost-user-blk. The launcher opens (and locks) the image and checks that it can be served;
//! the device process builds the device from the fd it receives, never from a path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use nix::sys::stat::SFlag;
use vu_devices::block::{BlockConfig, BlockDevice, BlockError, Engine};

use super::image_lock::{self, ImageLockError};
use super::{DeviceEnv, DeviceKind, FdSpec, KindError, Opened, Prepared};
use crate::cli::common::parse_queue_size;

/// Largest number of queues a block device may have.
pub const MAX_NUM_QUEUES: u16 = 64;
/// Longest virtio-blk serial number, in bytes (VIRTIO_BLK_ID_BYTES).
pub const MAX_SERIAL_BYTES: usize = 20;

/// The block kind.
#[derive(Debug)]
pub struct Block;

/// The image's fd in the device process.
pub const FD_IMAGE: FdSpec = FdSpec {
    flag: "fd-image",
    what: "the image",
    types: &[SFlag::S_IFREG, SFlag::S_IFBLK],
    repeats: false,
};

impl DeviceKind for Block {
    type Options = BlockArgs;
    const NAME: &'static str = "block";
    const ABOUT: &'static str = "Serve a disk image (or block device) as a vhost-user-blk device";
    const LONG_ABOUT: &'static str = "Serve a disk image (or block device) as a vhost-user-blk \
        device.\n\n\
        Opens the image, binds the socket, and starts one device process that serves it in a \
        jail (see --sandbox); logs \"listening on SOCKET\" once the jailed device is ready, and \
        serves one front-end at a time. The image is locked as QEMU locks images, the way \
        qemu-storage-daemon's export does: while it is served writable, a QEMU VM cannot open \
        it as a drive, an image a VM has as a drive is refused (unless --read-only), read-only \
        users share, and two of our servers never serve one image writable. On SIGINT or SIGTERM the device stops serving, drains \
        in-flight requests and flushes the image; the launcher removes the socket and exits 0. \
        A second signal kills the device and exits at once with status 1. If the device dies, \
        the launcher says how (exit status, or signal; SIGSYS is reported as a seccomp \
        violation) and starts a new device process on the same socket after a backoff, however \
        often a device that was ready dies (see --max-crashes for one that never gets ready); \
        a device that dies before it was ever ready makes the launcher exit 1. \
        `launcher ctl` controls it through --control.";
    const EXAMPLE: &'static str =
        "Example:\n  launcher start block --socket /run/vm0/disk0.sock --file /var/lib/vm0/disk0.raw";
    const FDS: &'static [FdSpec] = &[FD_IMAGE];
    const TYPE: &'static str = "block";
    // `--read-only`, and `--blk-file` (an alias of `--file`).
    const FEATURES: &'static [&'static str] = &["read-only", "blk-file"];

    fn open(opts: &BlockArgs, _device: &str) -> Result<Opened, KindError> {
        let o = BlockOptions::from(opts);
        let image = open_image(&o)?;
        check(&o, &image)?;
        Ok(Opened {
            fds: vec![OwnedFd::from(image)],
            describe: vec![("image", opts.file.display().to_string())],
            companion: None,
        })
    }

    fn release(fds: &[OwnedFd]) {
        if let Some(image) = fds.first() {
            image_lock::unlock(image);
        }
    }

    fn build(opts: &BlockArgs, fds: Vec<OwnedFd>, env: &DeviceEnv) -> Result<Prepared, KindError> {
        let image = fds.into_iter().next().ok_or("the image fd is missing")?;
        let mut o = BlockOptions::from(opts);
        o.cpus = env.cpus;
        Ok(build(&o, File::from(image))?)
    }
}

/// What to serve, resolved from [`BlockArgs`].
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
        BlockOptions {
            file: a.file.clone(),
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

/// The options of `launcher start block` (after the common ones), the keys of a `kind =
/// "block"` device in a config file, and what the device process is given back.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "Disk")]
pub struct BlockArgs {
    /// Disk image to serve: a raw image file or a block device. Its size must be a non-zero
    /// multiple of --logical-block-size. Also accepted as --blk-file (the vhost-user spec's
    /// name).
    #[arg(long, value_name = "IMAGE", aliases = ["image-name", "blk-file"])]
    pub file: PathBuf,

    /// Open the image read-only and offer a read-only disk (VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,

    /// Open the image with O_DIRECT, bypassing the host page cache. The filesystem must
    /// support it.
    #[arg(long)]
    pub direct: bool,

    /// Number of virtqueues (request queues), 1 to 64.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NUM_QUEUES))
    )]
    pub num_queues: u16,

    /// Maximum size of each virtqueue, in descriptors: a power of two from 4 to 32768.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_queue_size)]
    pub queue_size: u16,

    /// Serial number the guest sees (VIRTIO_BLK_T_GET_ID), at most 20 bytes. Default: none
    /// (the guest reads an empty serial).
    #[arg(long, value_name = "ID", value_parser = parse_serial)]
    pub serial: Option<String>,

    /// Logical block size reported to the guest, in bytes.
    #[arg(long, value_name = "BYTES", value_enum, default_value_t = LogicalBlockSize::B512)]
    pub logical_block_size: LogicalBlockSize,

    /// I/O engine that carries out guest requests on the image.
    #[arg(long, value_name = "ENGINE", value_enum, default_value_t = EngineArg::IoUring)]
    pub engine: EngineArg,

    /// Start with the disk cache in write-through mode: every write is made durable before it
    /// completes. Default: write-back (the guest sends flushes); the guest may change the mode.
    #[arg(long)]
    pub writethrough: bool,

    /// After running out of work, each queue thread keeps checking its ring for up to this many
    /// microseconds before sleeping (driver notifications are suppressed meanwhile), as long as
    /// none of its requests is in the kernel; with I/O in flight it sleeps until a completion
    /// or a kick. Trades CPU (a busy core per queue while the guest is active) for latency:
    /// it pays off where requests finish on the queue thread (buffered images in the page
    /// cache), much less on a disk. 0: off.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub poll_us: u32,
}

/// The logical block sizes a block device may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogicalBlockSize {
    /// 512-byte blocks.
    #[value(name = "512")]
    B512,
    /// 4096-byte blocks.
    #[value(name = "4096")]
    B4096,
}

impl LogicalBlockSize {
    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        match self {
            LogicalBlockSize::B512 => 512,
            LogicalBlockSize::B4096 => 4096,
        }
    }
}

/// The I/O engines, as spelled on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// Asynchronous I/O with io_uring: several requests in flight per queue.
    #[value(name = "io_uring")]
    IoUring,
    /// Blocking preadv/pwritev: one request at a time per queue.
    #[value(name = "sync")]
    Sync,
}

pub fn parse_serial(s: &str) -> Result<String, String> {
    if s.len() > MAX_SERIAL_BYTES {
        return Err(format!(
            "serial `{s}` is {} bytes long; the limit is {MAX_SERIAL_BYTES}",
            s.len()
        ));
    }
    if s.bytes().any(|b| b == 0) {
        return Err("serial contains a NUL byte".to_string());
    }
    Ok(s.to_string())
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
    /// Another program holds the image (QEMU's image locks, or another server of ours).
    #[error(transparent)]
    Locked(#[from] ImageLockError),
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
    lock_image(&file, opts)?;
    Ok(file)
}

/// Takes the image's locks (see [`image_lock`]): QEMU's, as qemu-storage-daemon's export
/// takes them, and our servers' own.
///
/// A server of ours that has just stopped can hold its lock a little longer than its processes
/// live: the kernel tears io_uring contexts down asynchronously, and a ring that registered
/// the image keeps its open file description (and so its locks) until then. So a lock held by
/// one of our servers is retried for a moment (a restart right after a stop succeeds); a
/// server that really has the image still gets the error. QEMU's holders are reported at once.
fn lock_image(file: &File, opts: &BlockOptions) -> Result<(), BlockSetupError> {
    let path = &opts.file;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    let mut said = false;
    loop {
        match image_lock::lock(file, path, opts.read_only) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_ours() && std::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!(image = %path.display(), "image is locked by another server; waiting up to {} ms for it", LOCK_WAIT.as_millis());
                    said = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long `open_image` waits for a lock held by another server of ours before it gives up.
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
fn build(opts: &BlockOptions, file: File) -> Result<Prepared, BlockSetupError> {
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
