//! The command line: what the operator can ask for, with the limits checked here so that a bad
//! value is a usage error (exit code 2) before anything is opened.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Largest number of queues a block device may have.
pub const MAX_NUM_QUEUES: u16 = 64;
/// Smallest virtqueue size the block device takes (it refuses smaller rings).
pub const MIN_QUEUE_SIZE: u16 = 4;
/// Largest virtqueue size (the virtio limit for split rings).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Longest virtio-blk serial number, in bytes (VIRTIO_BLK_ID_BYTES).
pub const MAX_SERIAL_BYTES: usize = 20;

/// Starts, jails and supervises vhost-user device processes.
///
/// Each device is served on a vhost-user UNIX socket that a VMM (QEMU, crosvm, Cloud
/// Hypervisor...) connects to.
#[derive(Debug, Parser)]
#[command(
    name = "launcher",
    version,
    propagate_version = true,
    after_help = "Devices:\n  launcher start block --help    serve a disk image as vhost-user-blk\n\n\
                  Exit status: 0 after a clean shutdown, 1 on a runtime error (the message names \
                  the path or value at fault), 2 on a usage error."
)]
pub struct Cli {
    /// Log filter for messages on stderr: a level (error, warn, info, debug, trace) or
    /// tracing-subscriber directives such as "info,vu_core=debug".
    ///
    /// The RUST_LOG environment variable is used when this option is absent. The readiness
    /// line "listening on SOCKET" is logged at level info.
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        default_value = "info",
        value_name = "FILTER",
        value_parser = parse_log_filter
    )]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a device server in the foreground; it runs until SIGINT or SIGTERM.
    #[command(subcommand)]
    Start(StartCommand),
}

/// The devices `launcher start` knows.
#[derive(Debug, Subcommand)]
pub enum StartCommand {
    /// Serve a disk image (or block device) as a vhost-user-blk device.
    ///
    /// Opens the image, binds the socket, logs "listening on SOCKET" and serves one front-end
    /// at a time. On SIGINT or SIGTERM it stops serving, drains in-flight requests, flushes the
    /// image, removes the socket and exits 0; a second signal exits at once with status 1.
    #[command(
        after_help = "Example:\n  launcher start block --socket /run/vm0/disk0.sock --file /var/lib/vm0/disk0.raw"
    )]
    Block(BlockArgs),
}

/// Options of `launcher start block`.
#[derive(Debug, Args)]
pub struct BlockArgs {
    /// Path of the vhost-user listening socket to create. Its directory must exist; a stale
    /// socket file (no server behind it) is replaced, a live one is an error.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,

    /// Disk image to serve: a raw image file or a block device. Its size must be a non-zero
    /// multiple of --logical-block-size.
    #[arg(long, value_name = "IMAGE")]
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

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of descriptors"))?;
    if !(u32::from(MIN_QUEUE_SIZE)..=u32::from(MAX_QUEUE_SIZE)).contains(&n) || !n.is_power_of_two()
    {
        return Err(format!(
            "queue size {n} is not a power of two from {MIN_QUEUE_SIZE} to {MAX_QUEUE_SIZE}"
        ));
    }
    u16::try_from(n).map_err(|_| format!("queue size {n} is too large"))
}

fn parse_serial(s: &str) -> Result<String, String> {
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

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid log filter `{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queue_size_must_be_a_power_of_two_in_range() {
        assert_eq!(parse_queue_size("4"), Ok(4));
        assert_eq!(parse_queue_size("32768"), Ok(32768));
        for bad in ["0", "1", "2", "3", "100", "65536", "-4", "x"] {
            assert!(parse_queue_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_is_at_most_20_bytes() {
        assert!(parse_serial("12345678901234567890").is_ok());
        assert!(parse_serial("123456789012345678901").is_err());
        assert!(parse_serial("a\0b").is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from([
            "launcher", "start", "block", "--socket", "/s", "--file", "/f",
        ])
        .expect("parses");
        let Command::Start(StartCommand::Block(b)) = cli.command;
        assert_eq!(b.num_queues, 1);
        assert_eq!(b.queue_size, 256);
        assert_eq!(b.logical_block_size, LogicalBlockSize::B512);
        assert_eq!(b.engine, EngineArg::IoUring);
        assert!(!b.read_only && !b.direct && !b.writethrough);
        assert_eq!(b.serial, None);
    }
}
