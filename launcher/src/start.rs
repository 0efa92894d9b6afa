//! `launcher start`: open everything each device needs in the launcher (image and its lock,
//! listening socket, compiled seccomp filters), bind the control socket, and hand the devices
//! to the supervisor, which starts one jailed process per device and keeps them running.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use crate::block::{self, BlockOptions, BlockSetupError};
use crate::cli::{BlockArgs, SandboxMode, StartArgs, StartCommand, SupervisorArgs};
use crate::config::{self, ConfigError};
use crate::control_socket::{self, ControlSocketError};
use crate::device::UNJAILED_WARNING;
use crate::jail::{self, FilterMode};
use crate::socket::{self, SocketError, SocketFile};
use crate::spawn::Confinement;
use crate::supervise::{self, SuperviseError};
use crate::supervisor::{self, CrashPolicy, DeviceSpec, SupervisorError};

/// The fd numbers a block device process receives.
pub const BLOCK_FD_IMAGE: RawFd = 3;
/// The listening socket's fd in the device.
pub const BLOCK_FD_SOCKET: RawFd = 4;
/// The control channel's fd in the device.
pub const BLOCK_FD_CONTROL: RawFd = 5;
/// The compiled seccomp filters' fd in the device (read and closed before the jail).
pub const BLOCK_FD_SECCOMP: RawFd = 6;

/// Default of `--max-crashes`.
pub const DEFAULT_MAX_CRASHES: u32 = 5;
/// Default of `--crash-window`, in seconds.
pub const DEFAULT_CRASH_WINDOW: u64 = 30;

/// Why `launcher start` failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Signals could not be blocked.
    #[error(transparent)]
    Signals(#[from] SuperviseError),
    /// The config file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The image cannot be served.
    #[error("device {name}")]
    Setup {
        /// The device.
        name: String,
        /// The cause.
        #[source]
        source: BlockSetupError,
    },
    /// The seccomp policy does not compile.
    #[error("cannot compile the seccomp policy for the block device")]
    Policy(#[source] jail::FilterError),
    /// The compiled filters could not be handed over.
    #[error(transparent)]
    PassFilters(#[from] jail::FilterPassError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The control socket could not be set up.
    #[error(transparent)]
    ControlSocket(#[from] ControlSocketError),
    /// Supervising failed, or a device died while starting.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Runs `launcher start` to the end. `log_filter` is passed on to the devices.
pub fn start(args: &StartArgs, log_filter: &str) -> Result<(), StartError> {
    match (&args.device, &args.config) {
        (Some(StartCommand::Block(b)), _) => start_block(b, log_filter),
        (None, Some(path)) => start_config(path, &args.supervisor, log_filter),
        // clap requires one of them.
        (None, None) => Err(ConfigError::Missing.into()),
    }
}

/// Runs `launcher start block` to the end: one device under the supervisor.
pub fn start_block(args: &BlockArgs, log_filter: &str) -> Result<(), StartError> {
    // Before any device or thread exists, so that no SIGINT, SIGTERM or SIGCHLD is lost.
    let signals = supervise::block_signals()?;
    let policy = crash_policy(&args.supervisor, None, None);
    let control_path = control_socket::resolve(args.supervisor.control.as_deref(), None)?;
    let spec = prepare_block(args, log_filter)?;
    let control = control_socket::bind(&control_path)?;
    supervisor::run(vec![spec], control, policy, &signals)?;
    Ok(())
}

/// Runs `launcher start --config FILE` to the end.
pub fn start_config(path: &Path, sup: &SupervisorArgs, log_filter: &str) -> Result<(), StartError> {
    let signals = supervise::block_signals()?;
    let cfg = config::load(path)?;
    let policy = crash_policy(sup, cfg.max_crashes, cfg.crash_window);
    let control_path = control_socket::resolve(sup.control.as_deref(), cfg.control.as_deref())?;
    let mut specs = Vec::new();
    for dev in &cfg.devices {
        specs.push(prepare_block(dev, log_filter)?);
    }
    let control = control_socket::bind(&control_path)?;
    supervisor::run(specs, control, policy, &signals)?;
    Ok(())
}

fn crash_policy(sup: &SupervisorArgs, max: Option<u32>, window: Option<u64>) -> CrashPolicy {
    CrashPolicy {
        max_crashes: sup.max_crashes.or(max).unwrap_or(DEFAULT_MAX_CRASHES),
        window: Duration::from_secs(sup.crash_window.or(window).unwrap_or(DEFAULT_CRASH_WINDOW)),
    }
}

/// Opens and checks everything one block device needs, and binds its socket.
pub fn prepare_block(args: &BlockArgs, log_filter: &str) -> Result<DeviceSpec, StartError> {
    let sandbox = &args.sandbox;
    if sandbox.sandbox == SandboxMode::None {
        tracing::warn!(device = %args.name, "{UNJAILED_WARNING}");
    }
    let setup = |source| StartError::Setup {
        name: args.name.clone(),
        source,
    };
    let opts = BlockOptions::from(args);
    let image = block::open_image(&opts).map_err(setup)?;
    block::check(&opts, &image).map_err(setup)?;
    // Compiled here, where the policy directory is readable, and passed to each device
    // process in a sealed memfd: a bad policy fails before anything runs.
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
    Ok(DeviceSpec {
        name: args.name.clone(),
        kind: "block",
        image_path: args.file.clone(),
        resources: Resources {
            image,
            listener,
            socket,
            filters,
        },
        args: dev_args,
        confinement,
        sandbox: sandbox.sandbox,
        jail_user: sandbox.jail_user,
    })
}

/// What the launcher holds for a device across its processes: the image (and its lock), the
/// listening socket and the compiled filters are passed again to every new process.
#[derive(Debug)]
pub struct Resources {
    /// The image.
    pub image: File,
    /// The listening vhost-user socket.
    pub listener: UnixListener,
    /// Its file, removed when the launcher exits.
    pub socket: SocketFile,
    /// The compiled filters in a sealed memfd (jailed devices).
    pub filters: Option<OwnedFd>,
}
