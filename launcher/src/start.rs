//! `launcher start block`: open everything the device needs in the launcher (image and its
//! lock, listening socket, control socketpair), start one device process (jailed unless
//! `--sandbox none`), and supervise it until a signal or its death.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::block::{self, BlockOptions, BlockSetupError};
use crate::cli::{BlockArgs, SandboxMode};
use crate::device::UNJAILED_WARNING;
use crate::jail::{self, FilterMode};
use crate::socket::{self, SocketError};
use crate::spawn::{self, Confinement, SpawnError, SpawnRequest};
use crate::supervise::{self, DeviceExit, Ending, SuperviseError, Supervised};

/// The fd numbers a block device process receives.
pub const BLOCK_FD_IMAGE: RawFd = 3;
/// The listening socket's fd in the device.
pub const BLOCK_FD_SOCKET: RawFd = 4;
/// The control channel's fd in the device.
pub const BLOCK_FD_CONTROL: RawFd = 5;
/// The compiled seccomp filters' fd in the device (read and closed before the jail).
pub const BLOCK_FD_SECCOMP: RawFd = 6;

/// Why `launcher start block` failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Supervising failed, or signals could not be blocked.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The image cannot be served.
    #[error(transparent)]
    Setup(#[from] BlockSetupError),
    /// The seccomp policy does not compile.
    #[error("cannot compile the seccomp policy for the block device")]
    Policy(#[source] jail::FilterError),
    /// The compiled filters could not be handed over.
    #[error(transparent)]
    PassFilters(#[from] jail::FilterPassError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The control socketpair could not be created.
    #[error("cannot create the control channel")]
    Control(#[source] io::Error),
    /// The device process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The device process ended on its own or badly.
    #[error("device {device} (pid {pid}) {exit}")]
    DeviceDied {
        /// The device kind.
        device: &'static str,
        /// Its pid.
        pid: i32,
        /// How it ended.
        exit: DeviceExit,
    },
    /// A second signal: the device was killed without draining or flushing.
    #[error("device {0} killed on a second signal without draining or flushing")]
    Killed(&'static str),
}

/// What the launcher does after its device process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Report and exit.
    Exit,
}

/// Decides what follows a device's death. Restart with backoff belongs to the supervisor
/// issue and goes here: the image fd (and its lock), the listening socket and the policy are
/// still held by the launcher, so a new device process can be spawned on them.
pub fn after_exit(_exit: &DeviceExit) -> AfterExit {
    AfterExit::Exit
}

/// Runs `launcher start block` to the end. `log_filter` is passed on to the device.
pub fn start_block(args: &BlockArgs, log_filter: &str) -> Result<(), StartError> {
    // Before the device exists, so that no SIGINT, SIGTERM or SIGCHLD is lost.
    let signals = supervise::block_signals()?;
    let sandbox = &args.sandbox;
    if sandbox.sandbox == SandboxMode::None {
        tracing::warn!("{UNJAILED_WARNING}");
    }

    let opts = BlockOptions::from(args);
    let image = block::open_image(&opts)?;
    block::check(&opts, &image)?;
    // Compiled here, where the policy directory is readable, and passed to the device in a
    // sealed memfd: a bad policy fails before anything runs.
    let filters = match sandbox.sandbox {
        SandboxMode::Jail => {
            let mode = if sandbox.seccomp.seccomp_log {
                tracing::warn!(
                    "--seccomp-log: forbidden system calls are logged, not stopped; for policy \
                     development only"
                );
                FilterMode::Log
            } else {
                FilterMode::Kill
            };
            let f = jail::filters::compile(
                "block",
                sandbox.seccomp.seccomp_policy_dir.as_deref(),
                mode,
            )
            .map_err(StartError::Policy)?;
            Some(jail::filters::to_sealed_memfd(&f)?)
        }
        SandboxMode::None => None,
    };
    let (listener, socket) = socket::bind(&args.socket)?;
    let (control, device_control) = UnixStream::pair().map_err(StartError::Control)?;

    let mut dev_args: Vec<OsString> = vec![
        "--log-level".into(),
        log_filter.into(),
        "__device".into(),
        "block".into(),
        "--fd-image".into(),
        BLOCK_FD_IMAGE.to_string().into(),
        "--fd-socket".into(),
        BLOCK_FD_SOCKET.to_string().into(),
        "--fd-control".into(),
        BLOCK_FD_CONTROL.to_string().into(),
        "--image-name".into(),
        args.file.clone().into(),
        "--sandbox".into(),
        sandbox.sandbox.as_str().into(),
    ];
    dev_args.extend(args.device.to_args());
    if filters.is_some() {
        dev_args.push("--fd-seccomp".into());
        dev_args.push(BLOCK_FD_SECCOMP.to_string().into());
    }
    if sandbox.seccomp.seccomp_log {
        dev_args.push("--seccomp-log".into());
    }
    if cfg!(debug_assertions) {
        dev_args.extend(args.test.to_args());
    } else if args.test.any() {
        tracing::warn!("test-only options are ignored in release builds");
    }
    let confinement = match sandbox.sandbox {
        SandboxMode::Jail => Confinement::Jail(sandbox.jail_user),
        SandboxMode::None => Confinement::None,
    };
    let mut fds = vec![
        (image.as_fd(), BLOCK_FD_IMAGE),
        (listener.as_fd(), BLOCK_FD_SOCKET),
        (device_control.as_fd(), BLOCK_FD_CONTROL),
    ];
    if let Some(f) = &filters {
        fds.push((f.as_fd(), BLOCK_FD_SECCOMP));
    }
    let pid = spawn::spawn(&SpawnRequest {
        device: "block",
        args: dev_args,
        fds,
        confinement,
    })?;
    drop(device_control);
    drop(filters);
    tracing::info!(
        device = "block",
        pid = pid.as_raw(),
        sandbox = sandbox.sandbox.as_str(),
        jail_user = %format_args!("{}:{}", sandbox.jail_user.uid, sandbox.jail_user.gid),
        "device process started"
    );

    let ending = supervise::supervise(
        &Supervised {
            device: "block",
            pid,
            control,
            socket: &socket,
        },
        &signals,
    );
    socket.remove();
    // Held until here: the image lock and the listening socket outlive the device process.
    tracing::debug!(
        image_fd = image.as_raw_fd(),
        socket_fd = listener.as_raw_fd(),
        "releasing the device's resources"
    );
    match ending? {
        Ending::Stopped => {
            tracing::info!(device = "block", "stopped");
            Ok(())
        }
        Ending::Killed => Err(StartError::Killed("block")),
        Ending::DeviceDied(exit) => match after_exit(&exit) {
            AfterExit::Exit => Err(StartError::DeviceDied {
                device: "block",
                pid: pid.as_raw(),
                exit,
            }),
        },
    }
}
