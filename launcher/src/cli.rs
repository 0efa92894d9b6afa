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
    after_help = "Devices:\n  launcher start block --help    serve a disk image as vhost-user-blk\n  \
                  launcher start --config FILE   serve the devices a TOML file names\n  \
                  launcher ctl --help            control a running launcher\n\n\
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
    /// Start device servers in the foreground under a supervisor; it runs until SIGINT or
    /// SIGTERM.
    Start(StartArgs),

    /// Control a running launcher through its control socket.
    Ctl(CtlArgs),

    /// The device process itself, started by `launcher start` (not for operators).
    #[command(name = "__device", subcommand, hide = true)]
    Device(DeviceCommand),
}

/// `launcher start`: one device (`launcher start block ...`) or those of a config file.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = CONFIG_HELP
)]
pub struct StartArgs {
    /// Serve the devices described in this TOML file (see below).
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,

    /// Supervisor options.
    #[command(flatten)]
    pub supervisor: SupervisorArgs,

    /// One device, from the command line.
    #[command(subcommand)]
    pub device: Option<StartCommand>,
}

/// The config file format, in `launcher start --help`.
pub const CONFIG_HELP: &str = "Config file (TOML):\n  \
    control = \"/run/vm0/launcher.sock\"   # optional: the control socket (--control wins)\n  \
    max_crashes = 5                       # optional: see --max-crashes\n  \
    crash_window = 30                     # optional: see --crash-window\n\n  \
    [[device]]\n  \
    name = \"disk0\"                        # unique; letters, digits, '-', '_', '.'\n  \
    kind = \"block\"\n  \
    socket = \"/run/vm0/disk0.sock\"\n  \
    file = \"/var/lib/vm0/disk0.raw\"\n  \
    # optional, as the options of `launcher start block`:\n  \
    read_only = false\n  direct = false\n  num_queues = 1\n  queue_size = 256\n  \
    serial = \"disk0\"\n  logical_block_size = 512\n  engine = \"io_uring\"   # or \"sync\"\n  \
    writethrough = false\n  sandbox = \"jail\"       # or \"none\"\n  \
    jail_user = \"65534:65534\"";

/// Options of the supervisor, for `launcher start --config` and `launcher start block`.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
#[command(next_help_heading = "Supervisor")]
pub struct SupervisorArgs {
    /// The control socket `launcher ctl` talks to (mode 0600; only this user and root are
    /// served). Default: the config file's `control`, else $VU_LAUNCHER_CONTROL, else
    /// $XDG_RUNTIME_DIR/vu-launcher/control.sock, else /run/vu-launcher/control.sock for root,
    /// else /tmp/vu-launcher-UID/control.sock (the directory is created with mode 0700).
    /// Removed on exit.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// A device that crashes more than N times within --crash-window is held in the failed
    /// state (until `launcher ctl start DEV`) instead of being restarted again. A crashed
    /// device is restarted on the same socket after a backoff of 100 ms, doubling with each
    /// recent crash up to 5 s. [default: 5]
    #[arg(long, value_name = "N")]
    pub max_crashes: Option<u32>,

    /// The window of --max-crashes, in seconds. [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub crash_window: Option<u64>,
}

/// Environment variable for `--control` (of `launcher start` and `launcher ctl`).
pub const CONTROL_ENV: &str = "VU_LAUNCHER_CONTROL";

/// `launcher ctl`.
#[derive(Debug, Args)]
#[command(after_help = CTL_HELP)]
pub struct CtlArgs {
    /// The launcher's control socket (default: as for `launcher start`).
    #[arg(long, global = true, value_name = "PATH", env = CONTROL_ENV)]
    pub control: Option<PathBuf>,

    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `launcher ctl --help` epilogue.
pub const CTL_HELP: &str = "Moving state into a fresh device process:\n  \
    launcher ctl sleep DEV\n  \
    launcher ctl snapshot DEV --out state.bin\n  \
    launcher ctl restart DEV        # or stop DEV, then start DEV\n  \
    launcher ctl sleep DEV          # the new process must be asleep to restore\n  \
    launcher ctl restore DEV --in state.bin\n  \
    launcher ctl wake DEV\n\n\
Exit status: 0 on success, 1 when the request failed (the reason is printed), 2 on a usage \
error.";

/// The commands of `launcher ctl`. DEV is a device name (`launcher ctl list`).
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every device: name, kind, state, pid, socket.
    List,
    /// Status of one device or of all: pid, state, uptime, restarts, last exit, front-end,
    /// negotiated features, per-queue counters, device fields.
    Status {
        /// The device (default: all).
        dev: Option<String>,
    },
    /// Stop taking requests, complete those in flight and flush; the device then touches
    /// neither guest memory nor its image until `wake`.
    Sleep {
        /// The device.
        dev: String,
    },
    /// Resume a sleeping device.
    Wake {
        /// The device.
        dev: String,
    },
    /// Write the state of a sleeping device to a file.
    Snapshot {
        /// The device.
        dev: String,
        /// Where to write the snapshot.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a sleeping device from a snapshot file; a corrupt or mismatched snapshot is
    /// refused and changes nothing.
    Restore {
        /// The device.
        dev: String,
        /// The snapshot.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// Stop the device process (drain, flush, exit); its socket stays bound.
    Stop {
        /// The device.
        dev: String,
    },
    /// Start a stopped or failed device; waits until it serves.
    Start {
        /// The device.
        dev: String,
    },
    /// Stop the device process and start a new one; waits until it serves.
    Restart {
        /// The device.
        dev: String,
    },
    /// Grow the device to SIZE bytes (suffixes K, M, G, T: powers of 1024); the guest is
    /// told of the new capacity.
    Resize {
        /// The device.
        dev: String,
        /// The new size.
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Test-only: relay a test trigger (crash, exit, forbidden-syscall) to a device (debug
    /// builds only).
    #[command(hide = true)]
    TestTrigger {
        /// The device.
        dev: String,
        /// The trigger.
        trigger: String,
    },
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown size suffix {c:?} (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (bytes, or with a K, M, G or T suffix)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size `{s}` is too large"))
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
    /// violation) and starts a new device process on the same socket after a backoff (see
    /// --max-crashes); a device that dies before it was ever ready makes the launcher exit 1.
    /// `launcher ctl` controls it through --control.
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

    /// The device's name, for `launcher ctl`.
    #[arg(long, value_name = "NAME", default_value = "block0", value_parser = parse_name)]
    pub name: String,

    /// Supervisor options.
    #[command(flatten)]
    pub supervisor: SupervisorArgs,

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
        if self.poll_us > 0 {
            v.push("--poll-us".into());
            v.push(self.poll_us.to_string().into());
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

pub(crate) fn parse_jail_user(s: &str) -> Result<JailUser, String> {
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

pub(crate) fn parse_queue_size(s: &str) -> Result<u16, String> {
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

pub(crate) fn parse_serial(s: &str) -> Result<String, String> {
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

/// A device name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'.
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with(['-', '.']);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "device name `{s}` must be 1 to 64 letters, digits, '-', '_' or '.', not starting \
             with '-' or '.'"
        ))
    }
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
    use std::path::Path;

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
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn start_takes_a_config_or_a_device() {
        let cli =
            Cli::try_parse_from(["launcher", "start", "--config", "/c.toml"]).expect("config");
        assert!(matches!(
            cli.command,
            Command::Start(StartArgs {
                config: Some(_),
                device: None,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["launcher", "start"]).is_err());
        let cli = Cli::try_parse_from([
            "launcher",
            "start",
            "block",
            "--socket",
            "/s",
            "--file",
            "/f",
            "--name",
            "d0",
            "--control",
            "/c.sock",
        ])
        .expect("block with a name and a control socket");
        let Command::Start(StartArgs {
            device: Some(StartCommand::Block(b)),
            ..
        }) = cli.command
        else {
            panic!("not start block");
        };
        assert_eq!(b.name, "d0");
        assert_eq!(b.supervisor.control.as_deref(), Some(Path::new("/c.sock")));
        assert!(Cli::try_parse_from([
            "launcher", "start", "block", "--socket", "/s", "--file", "/f", "--name", "-x",
        ])
        .is_err());
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from([
            "launcher", "start", "block", "--socket", "/s", "--file", "/f",
        ])
        .expect("parses");
        let Command::Start(StartArgs {
            device: Some(StartCommand::Block(args)),
            ..
        }) = cli.command
        else {
            panic!("not start block");
        };
        assert_eq!(args.name, "block0");
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
        let Command::Start(StartArgs {
            device: Some(StartCommand::Block(args)),
            ..
        }) = Cli::try_parse_from(start).expect("parses").command
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
