//! The command line: what the operator can ask for, with the limits checked here so that a bad
//! value is a usage error (exit code 2) before anything is opened.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::escape::EscapeAttempt;

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

    /// The device process itself, started by `launcher start` (not for operators).
    #[command(name = "__device", subcommand, hide = true)]
    Device(DeviceCommand),
}

/// The devices `launcher start` knows.
#[derive(Debug, Subcommand)]
pub enum StartCommand {
    /// Serve a disk image (or block device) as a vhost-user-blk device.
    ///
    /// Opens the image, binds the socket, and starts one device process that serves it in a
    /// jail (see --sandbox); logs "listening on SOCKET" once the jailed device is ready, and
    /// serves one front-end at a time. On SIGINT or SIGTERM the device stops serving, drains
    /// in-flight requests and flushes the image; the launcher removes the socket and exits 0.
    /// A second signal kills the device and exits at once with status 1. If the device dies,
    /// the launcher says how (exit status, or signal; SIGSYS is reported as a seccomp
    /// violation) and exits 1.
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

    /// How the disk is offered to the guest.
    #[command(flatten)]
    pub device: BlockDeviceArgs,

    /// How the device process is confined.
    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// Test-only triggers (hidden).
    #[command(flatten)]
    pub test: TestTriggers,
}

/// The block device's own options: shared by `launcher start block` and the device process.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct BlockDeviceArgs {
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

impl BlockDeviceArgs {
    /// The same options as command-line arguments, for the device process.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if self.read_only {
            v.push("--read-only".into());
        }
        if self.direct {
            v.push("--direct".into());
        }
        v.push("--num-queues".into());
        v.push(self.num_queues.to_string().into());
        v.push("--queue-size".into());
        v.push(self.queue_size.to_string().into());
        if let Some(s) = &self.serial {
            v.push("--serial".into());
            v.push(s.into());
        }
        v.push("--logical-block-size".into());
        v.push(self.logical_block_size.bytes().to_string().into());
        v.push("--engine".into());
        v.push(
            match self.engine {
                EngineArg::IoUring => "io_uring",
                EngineArg::Sync => "sync",
            }
            .into(),
        );
        if self.writethrough {
            v.push("--writethrough".into());
        }
        v
    }
}

/// Where and how a device process is confined.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "Sandbox")]
pub struct SandboxArgs {
    /// How the device process is confined. `jail`: the device runs in its own user, pid,
    /// mount, network, ipc, uts and cgroup namespaces, as --jail-user, in an empty read-only
    /// root, with rlimits, no capabilities, no_new_privs, a landlock ruleset granting no
    /// filesystem access and a seccomp filter (default action: kill the device). `none`: no
    /// confinement at all, for debugging only; a warning says so on every start.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SandboxMode::Jail)]
    pub sandbox: SandboxMode,

    /// Host user (and group) the jailed device runs as: UID or UID:GID (the group defaults to
    /// the UID). Inside its user namespace it is root without capabilities; outside it is
    /// this user. Give each device its own unused id where possible. A launcher that is not
    /// root can only use its own uid.
    #[arg(
        long,
        value_name = "UID[:GID]",
        default_value = "65534:65534",
        value_parser = parse_jail_user
    )]
    pub jail_user: JailUser,

    /// Seccomp options.
    #[command(flatten)]
    pub seccomp: SeccompArgs,
}

/// Seccomp options. The launcher compiles the policy and passes the filters to the device.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub struct SeccompArgs {
    /// Log system calls the seccomp policy forbids (in the kernel audit log) instead of
    /// killing the device. For policy development only: the filter then stops nothing.
    #[arg(long)]
    pub seccomp_log: bool,

    /// Read the seccomp policies from DIR instead of those built into the binary. DIR has the
    /// layout of jail-policies/x86_64 (block_device.policy and the files it @includes). The
    /// launcher reads and compiles them and hands the filters to the device.
    #[arg(long, value_name = "DIR")]
    pub seccomp_policy_dir: Option<PathBuf>,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// The full jail.
    Jail,
    /// No jail (debugging only).
    None,
}

impl SandboxMode {
    /// As spelled on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Jail => "jail",
            SandboxMode::None => "none",
        }
    }
}

/// `--jail-user UID[:GID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailUser {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

fn parse_jail_user(s: &str) -> Result<JailUser, String> {
    let id = |part: &str, what: &str| -> Result<u32, String> {
        let n: u32 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a numeric {what} id"))?;
        if n == u32::MAX {
            return Err(format!("{what} id {n} is not a valid id"));
        }
        Ok(n)
    };
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (id(u, "user")?, id(g, "group")?),
        None => {
            let u = id(s, "user")?;
            (u, u)
        }
    };
    Ok(JailUser { uid, gid })
}

/// Test-only triggers: hidden from --help, and ignored unless the binary was built with debug
/// assertions (release builds never honour them). See `launcher::escape`.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub struct TestTriggers {
    /// Run the escape battery in the device: every attempt after all jail layers but seccomp,
    /// then the attempts seccomp answers with an errno after seccomp.
    #[arg(long, hide = true)]
    pub test_escape_battery: bool,

    /// Run one escape attempt in the device after the whole jail, seccomp included.
    #[arg(long, hide = true, value_name = "ATTEMPT", value_enum)]
    pub test_escape: Option<EscapeAttempt>,

    /// Make a forbidden system call in the device after the whole jail.
    #[arg(long, hide = true)]
    pub test_forbidden_syscall: bool,

    /// A host UNIX socket path the escape attempts try to connect to.
    #[arg(long, hide = true, value_name = "PATH")]
    pub test_escape_host_socket: Option<PathBuf>,

    /// A host abstract UNIX socket name (without the leading NUL) the attempts try.
    #[arg(long, hide = true, value_name = "NAME")]
    pub test_escape_host_abstract: Option<String>,

    /// A host process the attempts try to signal and trace.
    #[arg(long, hide = true, value_name = "PID")]
    pub test_escape_host_pid: Option<i32>,

    /// A TCP port listening on the host's 127.0.0.1 that the attempts try to reach.
    #[arg(long, hide = true, value_name = "PORT")]
    pub test_escape_host_port: Option<u16>,
}

impl TestTriggers {
    /// Whether any trigger is set.
    pub fn any(&self) -> bool {
        *self != TestTriggers::default()
    }

    /// The same options as command-line arguments, for the device process.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if self.test_escape_battery {
            v.push("--test-escape-battery".into());
        }
        if let Some(a) = self.test_escape {
            v.push("--test-escape".into());
            v.push(a.name().into());
        }
        if self.test_forbidden_syscall {
            v.push("--test-forbidden-syscall".into());
        }
        if let Some(p) = &self.test_escape_host_socket {
            v.push("--test-escape-host-socket".into());
            v.push(p.into());
        }
        if let Some(n) = &self.test_escape_host_abstract {
            v.push("--test-escape-host-abstract".into());
            v.push(n.into());
        }
        if let Some(p) = self.test_escape_host_pid {
            v.push("--test-escape-host-pid".into());
            v.push(p.to_string().into());
        }
        if let Some(p) = self.test_escape_host_port {
            v.push("--test-escape-host-port".into());
            v.push(p.to_string().into());
        }
        v
    }
}

/// The hidden device entry points (`launcher __device ...`), started by the launcher itself.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// A block device process.
    Block(DeviceBlockArgs),
}

/// `launcher __device block`: the device process, with its fds already in place.
#[derive(Debug, Args)]
pub struct DeviceBlockArgs {
    /// The image, opened (and locked) by the launcher.
    #[arg(long, value_name = "FD")]
    pub fd_image: RawFd,

    /// The listening vhost-user socket, bound by the launcher.
    #[arg(long, value_name = "FD")]
    pub fd_socket: RawFd,

    /// The device's end of the control socketpair.
    #[arg(long, value_name = "FD")]
    pub fd_control: RawFd,

    /// The image's path, for messages only (the device never opens it).
    #[arg(long, value_name = "PATH")]
    pub image_name: PathBuf,

    /// The block options.
    #[command(flatten)]
    pub device: BlockDeviceArgs,

    /// Jail or not.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SandboxMode::Jail)]
    pub sandbox: SandboxMode,

    /// The compiled seccomp filters, in a sealed memfd (required with `--sandbox jail`).
    #[arg(long, value_name = "FD")]
    pub fd_seccomp: Option<RawFd>,

    /// The filters log forbidden calls instead of killing (for the device's messages).
    #[arg(long)]
    pub seccomp_log: bool,

    /// Test-only triggers.
    #[command(flatten)]
    pub test: TestTriggers,
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
        let Command::Start(StartCommand::Block(args)) = cli.command else {
            panic!("not start block");
        };
        let b = &args.device;
        assert_eq!(b.num_queues, 1);
        assert_eq!(b.queue_size, 256);
        assert_eq!(b.logical_block_size, LogicalBlockSize::B512);
        assert_eq!(b.engine, EngineArg::IoUring);
        assert!(!b.read_only && !b.direct && !b.writethrough);
        assert_eq!(b.serial, None);
        assert_eq!(args.sandbox.sandbox, SandboxMode::Jail);
        assert_eq!(
            args.sandbox.jail_user,
            JailUser {
                uid: 65534,
                gid: 65534
            }
        );
        assert!(!args.test.any());
    }

    #[test]
    fn jail_user_takes_uid_or_uid_and_gid() {
        assert_eq!(
            parse_jail_user("1000"),
            Ok(JailUser {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            parse_jail_user("1000:2000"),
            Ok(JailUser {
                uid: 1000,
                gid: 2000
            })
        );
        for bad in ["", "x", "1:", ":1", "1:2:3", "-1", "4294967295"] {
            assert!(parse_jail_user(bad).is_err(), "{bad}");
        }
    }

    /// What `launcher start block` passes to the device parses back to the same options.
    #[test]
    fn device_arguments_round_trip() {
        let start = [
            "launcher",
            "start",
            "block",
            "--socket",
            "/s",
            "--file",
            "/f",
            "--read-only",
            "--direct",
            "--num-queues",
            "3",
            "--queue-size",
            "64",
            "--serial",
            "abc",
            "--logical-block-size",
            "4096",
            "--engine",
            "sync",
            "--writethrough",
            "--seccomp-log",
            "--seccomp-policy-dir",
            "/p",
            "--test-escape",
            "mount",
            "--test-escape-host-pid",
            "7",
        ];
        let Command::Start(StartCommand::Block(args)) =
            Cli::try_parse_from(start).expect("parses").command
        else {
            panic!("not start block");
        };
        let mut dev: Vec<OsString> = ["launcher", "__device", "block"]
            .iter()
            .map(OsString::from)
            .collect();
        for s in [
            "--fd-image",
            "3",
            "--fd-socket",
            "4",
            "--fd-control",
            "5",
            "--image-name",
            "/f",
        ] {
            dev.push(s.into());
        }
        dev.extend(args.device.to_args());
        dev.push("--seccomp-log".into());
        dev.extend(args.test.to_args());
        let Command::Device(DeviceCommand::Block(d)) =
            Cli::try_parse_from(dev).expect("device args parse").command
        else {
            panic!("not __device block");
        };
        assert_eq!(d.device, args.device);
        assert!(d.seccomp_log && args.sandbox.seccomp.seccomp_log);
        assert_eq!(d.test, args.test);
        assert_eq!((d.fd_image, d.fd_socket, d.fd_control), (3, 4, 5));
    }
}
