//! The rng kind (`launcher start rng`): host entropy served as vhost-user-rng (virtio device
//! id 4). The launcher opens the entropy source (never the device: it has no paths to open)
//! and checks that it can be served; the device process fills the guest's buffers from the fd
//! it receives, within the rate limit.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use nix::sys::stat::SFlag;
use vu_devices::rng::{RngConfig, RngDevice, RngError, DEFAULT_QUEUE_SIZE, MAX_PERIOD};

use super::{DeviceEnv, DeviceKind, FdSpec, KindError, Opened, Prepared};
use crate::cli::MAX_QUEUE_SIZE;

/// The rate-limit period when only `--max-bytes` is given (QEMU's rng-random default).
pub const DEFAULT_PERIOD_MS: u64 = 65536;

/// The rng kind.
#[derive(Debug)]
pub struct Rng;

/// The entropy source's fd in the device process.
pub const FD_SOURCE: FdSpec = FdSpec {
    flag: "fd-source",
    what: "the entropy source",
    types: &[SFlag::S_IFCHR, SFlag::S_IFREG, SFlag::S_IFIFO],
    repeats: false,
};

/// The options of `launcher start rng` (after the common ones), the keys of a `kind = "rng"`
/// device in a config file, and what the device process is given back.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "Entropy")]
pub struct RngArgs {
    /// Where the bytes come from: a character device (/dev/urandom, /dev/hwrng), a FIFO or a
    /// regular file. The launcher opens it; the jailed device only reads the open file. A
    /// source that ends (a file at its end) or fails is reported in the log and in `launcher
    /// ctl status`, and is retried with a backoff; meanwhile the guest gets no bytes (never
    /// made-up ones).
    #[arg(long, value_name = "FILE", default_value = "/dev/urandom")]
    pub source: PathBuf,

    /// Rate limit: at most N bytes per --period, as QEMU's rng-random and vhost-device-rng
    /// limit. Requests beyond it wait, without spinning, until the next period; a request may
    /// be filled in part with what is left. Default: no limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bytes: Option<u64>,

    /// The rate limit's period in milliseconds (needs --max-bytes). [default: 65536, as QEMU]
    #[arg(long, value_name = "MS", requires = "max_bytes",
          value_parser = clap::value_parser!(u64).range(1..=MAX_PERIOD.as_millis() as u64))]
    pub period: Option<u64>,

    /// Largest virtqueue size the front-end may set, in descriptors: a power of two from 1 to
    /// 32768 (QEMU's vhost-user-rng-pci uses 4).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUE_SIZE, value_parser = parse_rng_queue_size)]
    pub queue_size: u16,
}

impl DeviceKind for Rng {
    type Options = RngArgs;
    const NAME: &'static str = "rng";
    const ABOUT: &'static str = "Serve host entropy as a vhost-user-rng device";
    const LONG_ABOUT: &'static str = "Serve host entropy as a vhost-user-rng device (virtio \
        entropy device, id 4).\n\n\
        Opens the source (default /dev/urandom), binds the socket and starts one jailed device \
        process that fills the guest's buffers from the open source, within the rate limit if \
        one is set (--max-bytes, --period). Logs \"listening on SOCKET\" once the device is \
        ready. SIGINT or SIGTERM stop it; a device that dies is started again on the same \
        socket (see --max-crashes). QEMU: -device vhost-user-rng-pci,chardev=ID.";
    const EXAMPLE: &'static str = "Examples:\n  \
        launcher start rng --socket /run/vm0/rng0.sock\n  \
        launcher start rng --socket /run/vm0/rng0.sock --source /dev/hwrng --max-bytes 1024 --period 1000";
    const FDS: &'static [FdSpec] = &[FD_SOURCE];

    fn open(opts: &RngArgs, _device: &str) -> Result<Opened, KindError> {
        let source = open_source(&opts.source)?;
        // Built once here on a duplicate, so that a bad source fails `launcher start`.
        let device = RngDevice::new(config(opts, source.try_clone()?)).map_err(|e| {
            RngSetupError::Device {
                path: opts.source.clone(),
                source: e,
            }
        })?;
        tracing::info!(
            source = %opts.source.display(),
            kind = device.source_kind().as_str(),
            max_bytes = opts.max_bytes,
            period_ms = opts.max_bytes.map(|_| period_ms(opts)),
            queue_size = opts.queue_size,
            "entropy source opened"
        );
        Ok(Opened {
            fds: vec![OwnedFd::from(source)],
            describe: vec![("source", opts.source.display().to_string())],
            companion: None,
        })
    }

    fn build(opts: &RngArgs, fds: Vec<OwnedFd>, _env: &DeviceEnv) -> Result<Prepared, KindError> {
        let source = fds
            .into_iter()
            .next()
            .ok_or("the entropy source fd is missing")?;
        let device = RngDevice::new(config(opts, File::from(source)))?;
        Ok(Prepared {
            device,
            flush: Box::new(|| Ok(())),
            poll_us: 0,
        })
    }
}

fn period_ms(opts: &RngArgs) -> u64 {
    opts.period.unwrap_or(DEFAULT_PERIOD_MS)
}

fn config(opts: &RngArgs, source: File) -> RngConfig {
    RngConfig {
        source,
        queue_size: opts.queue_size,
        max_bytes: opts.max_bytes,
        period: opts
            .max_bytes
            .map(|_| Duration::from_millis(period_ms(opts))),
    }
}

/// Why the entropy source cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RngSetupError {
    /// The source does not exist.
    #[error("entropy source {0} does not exist")]
    Missing(PathBuf),
    /// A directory, socket...
    #[error("entropy source {0} is not a character device, FIFO or regular file")]
    NotASource(PathBuf),
    /// Opening failed.
    #[error("cannot open entropy source {path}")]
    Open {
        /// The source.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The device refused it.
    #[error("cannot serve entropy source {path}")]
    Device {
        /// The source.
        path: PathBuf,
        /// The cause.
        #[source]
        source: RngError,
    },
}

/// Opens the source for reading, without blocking on a FIFO that has no writer yet.
fn open_source(path: &PathBuf) -> Result<File, RngSetupError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => RngSetupError::Missing(path.clone()),
        _ => RngSetupError::Open {
            path: path.clone(),
            source: e,
        },
    })?;
    let ft = meta.file_type();
    if !(ft.is_char_device() || ft.is_fifo() || ft.is_file()) {
        return Err(RngSetupError::NotASource(path.clone()));
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| RngSetupError::Open {
            path: path.clone(),
            source,
        })
}

/// A queue size: a power of two from 1 to 32768.
pub fn parse_rng_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of descriptors"))?;
    if n == 0 || n > u32::from(MAX_QUEUE_SIZE) || !n.is_power_of_two() {
        return Err(format!(
            "queue size {n} is not a power of two from 1 to {MAX_QUEUE_SIZE}"
        ));
    }
    u16::try_from(n).map_err(|_| format!("queue size {n} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_sizes() {
        assert_eq!(parse_rng_queue_size("1"), Ok(1));
        assert_eq!(parse_rng_queue_size("4"), Ok(4));
        assert_eq!(parse_rng_queue_size("32768"), Ok(32768));
        for bad in ["0", "3", "65536", "x", "-4"] {
            assert!(parse_rng_queue_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_are_checked_before_the_device_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = open_source(&dir.path().join("nope")).expect_err("missing");
        assert!(matches!(e, RngSetupError::Missing(_)), "{e}");
        let e = open_source(&dir.path().to_path_buf()).expect_err("a directory");
        assert!(matches!(e, RngSetupError::NotASource(_)), "{e}");
        assert!(open_source(&PathBuf::from("/dev/urandom")).is_ok());
    }
}
