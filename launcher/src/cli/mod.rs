//! The command line: what the operator can ask for, with the limits checked here so that a bad
//! value is a usage error (exit code 2) before anything is opened.
//!
//! `common.rs` holds the options every device kind shares, `kind_commands.rs` builds
//! `launcher start KIND` and the device process's `launcher __device KIND` from the kinds'
//! own option definitions (`crate::kinds`), and `config.rs` reads config files with the same
//! definitions.

pub mod common;
pub mod config;
pub mod conventions;
pub mod kind_commands;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use common::{
    parse_fd, parse_jail_user, parse_name, parse_queue_size, parse_socket_name, DeviceArgs,
    JailUser, ListenOn, SandboxArgs, SandboxMode, SeccompArgs, TestTriggers, MAX_QUEUE_SIZE,
    MIN_QUEUE_SIZE,
};
pub use kind_commands::{DeviceCommand, StartDevice};

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
                  launcher start rng --help      serve host entropy as vhost-user-rng\n  \
                  launcher start --config FILE   serve the devices a TOML file names\n  \
                  launcher ctl --help            control a running launcher\n\n\
                  Run as vu-vhost-user-KIND (a symlink to the launcher), it is `launcher start \
                  KIND`: one back-end of that kind, as the vhost-user spec's back-end program \
                  conventions describe (--fd, --socket-path, --print-capabilities).\n\n\
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
    Start(Box<StartArgs>),

    /// Control a running launcher through its control socket.
    Ctl(CtlArgs),

    /// The device process itself, started by `launcher start` (not for operators).
    #[command(name = "__device", subcommand, hide = true)]
    Device(DeviceCommand),
}

/// `launcher start`: one device (`launcher start KIND ...`) or those of a config file.
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
    pub device: Option<StartDevice>,
}

/// The config file format, in `launcher start --help`.
pub const CONFIG_HELP: &str = "Config file (TOML):\n  \
    control = \"/run/vm0/launcher.sock\"   # optional: the control socket (--control wins)\n  \
    max_crashes = 5                       # optional: see --max-crashes\n  \
    crash_window = 30                     # optional: see --crash-window\n  \
    metrics = \"127.0.0.1:9100\"           # optional: see --metrics\n\n  \
    [[device]]\n  \
    name = \"disk0\"                        # unique; letters, digits, '-', '_', '.'\n  \
    kind = \"block\"                        # a kind of `launcher start KIND`\n  \
    socket = \"/run/vm0/disk0.sock\"        # or socket_name = \"disk0\", or fd = 3 (--help)\n  \
    file = \"/var/lib/vm0/disk0.raw\"\n  \
    # optional: every option of `launcher start KIND` (and the sandbox options), with '_'\n  \
    # for '-': a flag is true or false, a number an integer, anything else a string\n  \
    read_only = false\n  num_queues = 1\n  queue_size = 256\n  serial = \"disk0\"\n  \
    engine = \"io_uring\"   # or \"sync\"\n  \
    sandbox = \"jail\"      # or \"none\"\n  \
    jail_user = \"65534:65534\"\n\n  \
    [[device]]\n  \
    name = \"rng0\"\n  \
    kind = \"rng\"\n  \
    socket = \"/run/vm0/rng0.sock\"";

/// Options of the supervisor, for `launcher start --config` and `launcher start KIND`.
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

    /// Serve no control socket (`launcher ctl` cannot reach this launcher). The default of
    /// `vu-vhost-user-KIND` programs unless --control or $VU_LAUNCHER_CONTROL names one.
    #[arg(long, conflicts_with = "control")]
    pub no_control: bool,

    /// A device whose processes die before they ever become ready (a configuration it cannot
    /// start with) more than N times in a row within --crash-window is held in the failed
    /// state (until `launcher ctl start DEV`) instead of being started again. A device that
    /// was ready and serving is always started again when its process dies, however often:
    /// on the same socket, after a backoff of 100 ms doubling with each crash in a row up to
    /// 5 s (a process that served for 30 s starts the count over). [default: 5]
    #[arg(long, value_name = "N")]
    pub max_crashes: Option<u32>,

    /// The window of --max-crashes, in seconds: failed starts further apart do not add up.
    /// [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub crash_window: Option<u64>,

    /// Serve metrics in Prometheus' text format at http://ADDR:PORT/metrics, for example
    /// 127.0.0.1:9100 or [::1]:9100 (port 0: a free port, logged). Off by default; also
    /// `metrics = "ADDR:PORT"` in a config file. Whoever reaches the address can read them:
    /// keep it on loopback or a management network. `launcher ctl metrics` prints the same.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
}

/// Parses `--metrics` (and the config file's `metrics`): an IP address and a port.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("`{s}` is not an ADDR:PORT address (such as 127.0.0.1:9100 or [::1]:9100)")
    })
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
    /// Every device's metrics in Prometheus' text format, as `launcher start --metrics`
    /// serves them: per device its state, crashes, restarts, uptime and front-end, per queue
    /// its counters, and what each kind counts.
    Metrics,
    /// Test-only (debug builds): relay a test trigger (crash, exit, forbidden-syscall) to a
    /// device, or have the supervisor kill the device's next N processes before they are
    /// ready (fail-starts N).
    #[command(hide = true)]
    TestTrigger {
        /// The device.
        dev: String,
        /// The trigger and its arguments.
        #[arg(required = true, num_args = 1..)]
        trigger: Vec<String>,
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

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid log filter `{s}`: {e}"))
}

#[cfg(test)]
mod tests;
