//! `launcher start`: open everything each device needs in the launcher (what its kind opens,
//! the listening socket, the compiled seccomp filters), bind the control socket, and hand the
//! devices to the supervisor, which starts one jailed process per device and keeps them
//! running.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use super::control_socket::{self, ControlSocketError};
use super::exit::{self, SuperviseError};
use super::listen::{self, Listen, ListenError};
use super::socket::{self, SocketError, SocketFile};
use super::{CrashPolicy, DeviceSpec, SupervisorError};
use crate::cli::config::{self, ConfigError};
use crate::cli::kind_commands::{device_process_args, DeviceLayout};
use crate::cli::{SandboxMode, StartArgs, StartDevice, SupervisorArgs};
use crate::jail::{self, FilterMode};
use crate::kinds::KindError;
use crate::metrics::{self, HttpError, MetricsListener};
use crate::process::entry::UNJAILED_WARNING;
use crate::process::spawn::Confinement;
use crate::systemd::activation::{self, ActivationError};

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
    /// What the device needs cannot be opened, or cannot be served.
    #[error("device {name}")]
    Setup {
        /// The device.
        name: String,
        /// The cause.
        #[source]
        source: KindError,
    },
    /// The seccomp policy does not compile.
    #[error("cannot compile the seccomp policy for the {0} device")]
    Policy(&'static str, #[source] jail::FilterError),
    /// The compiled filters could not be handed over.
    #[error(transparent)]
    PassFilters(#[from] jail::FilterPassError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The sockets systemd passed could not be taken.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// A device has no listening socket, or an inherited one cannot be served.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The control socket could not be set up.
    #[error(transparent)]
    ControlSocket(#[from] ControlSocketError),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] HttpError),
    /// Supervising failed, or a device died while starting.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Runs `launcher start` to the end. `log_filter` is passed on to the devices.
pub fn start(args: &StartArgs, log_filter: &str) -> Result<(), StartError> {
    match (&args.device, &args.config) {
        (Some(dev), _) => start_one(dev, log_filter),
        (None, Some(path)) => start_config(path, &args.supervisor, log_filter),
        // clap requires one of them.
        (None, None) => Err(ConfigError::Missing.into()),
    }
}

/// Runs `launcher start KIND` to the end: one device under the supervisor.
pub fn start_one(dev: &StartDevice, log_filter: &str) -> Result<(), StartError> {
    // Before any device or thread exists, so that no SIGINT, SIGTERM or SIGCHLD is lost.
    let signals = exit::block_signals()?;
    // Inherited sockets first, before the launcher opens anything of its own.
    let listen = claim_sockets(std::slice::from_ref(dev))?
        .pop()
        .ok_or_else(|| ListenError::NoSocket(dev.name()))?;
    let policy = crash_policy(&dev.supervisor, None, None);
    let control_path = control_path(&dev.supervisor, None)?;
    let metrics = bind_metrics(&dev.supervisor, None)?;
    let spec = prepare(dev, listen, log_filter)?;
    let control = control_path.map(|p| control_socket::bind(&p)).transpose()?;
    super::run(vec![spec], control, metrics, policy, &signals)?;
    Ok(())
}

/// Runs `launcher start --config FILE` to the end.
pub fn start_config(path: &Path, sup: &SupervisorArgs, log_filter: &str) -> Result<(), StartError> {
    let signals = exit::block_signals()?;
    let cfg = config::load(path)?;
    // Inherited sockets first, before the launcher opens anything of its own.
    let listens = claim_sockets(&cfg.devices)?;
    let policy = crash_policy(sup, cfg.max_crashes, cfg.crash_window);
    let control_path = control_path(sup, cfg.control.as_deref())?;
    let metrics = bind_metrics(sup, cfg.metrics)?;
    let mut specs = Vec::new();
    for (dev, listen) in cfg.devices.iter().zip(listens) {
        specs.push(prepare(dev, listen, log_filter)?);
    }
    let control = control_path.map(|p| control_socket::bind(&p)).transpose()?;
    super::run(specs, control, metrics, policy, &signals)?;
    Ok(())
}

/// The metrics endpoint (`--metrics`, else the config file's `metrics`), bound now so that
/// an address that cannot be served fails the start before any device runs.
fn bind_metrics(
    sup: &SupervisorArgs,
    config: Option<SocketAddr>,
) -> Result<Option<MetricsListener>, StartError> {
    Ok(sup.metrics.or(config).map(metrics::bind).transpose()?)
}

/// The control socket's path, or none with `--no-control`.
fn control_path(
    sup: &SupervisorArgs,
    config: Option<&Path>,
) -> Result<Option<std::path::PathBuf>, StartError> {
    if sup.no_control {
        return Ok(None);
    }
    Ok(Some(control_socket::resolve(
        sup.control.as_deref(),
        config,
    )?))
}

/// Takes the sockets systemd passed and the fds the devices name (`--fd`), checked, and
/// decides where each device listens (in the order of `devices`).
fn claim_sockets(devices: &[StartDevice]) -> Result<Vec<Listen>, StartError> {
    let passed = activation::take_passed()?;
    let wanted: Vec<_> = devices
        .iter()
        .map(|d| (d.name(), d.device.listen_on()))
        .collect();
    Ok(listen::plan(&wanted, passed)?)
}

fn crash_policy(sup: &SupervisorArgs, max: Option<u32>, window: Option<u64>) -> CrashPolicy {
    CrashPolicy {
        max_crashes: sup.max_crashes.or(max).unwrap_or(DEFAULT_MAX_CRASHES),
        window: Duration::from_secs(sup.crash_window.or(window).unwrap_or(DEFAULT_CRASH_WINDOW)),
    }
}

/// Opens and checks everything one device needs, and binds its socket (unless it was
/// inherited: `listen`).
pub fn prepare(
    dev: &StartDevice,
    listen: Listen,
    log_filter: &str,
) -> Result<DeviceSpec, StartError> {
    let name = dev.name();
    let kind = dev.kind.name();
    let sandbox = &dev.sandbox;
    if sandbox.sandbox == SandboxMode::None {
        tracing::warn!(device = %name, "{UNJAILED_WARNING}");
    }
    let opened = dev
        .options
        .open(&name)
        .map_err(|source| StartError::Setup {
            name: name.clone(),
            source,
        })?;
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
            let f =
                jail::filters::compile(kind, sandbox.seccomp.seccomp_policy_dir.as_deref(), mode)
                    .map_err(|e| StartError::Policy(kind, e))?;
            Some(jail::filters::to_sealed_memfd(&f)?)
        }
        SandboxMode::None => None,
    };
    let (listener, socket) = match listen {
        Listen::Bind(path) => socket::bind(&path)?,
        Listen::Inherited(listener, file) => (listener, file),
    };

    let kind_fds = opened.fds.len() + dev.kind.process_fds().len();
    let layout = DeviceLayout::new(kind_fds, filters.is_some());
    let mut args: Vec<OsString> = device_process_args(dev, &layout, log_filter);
    if cfg!(debug_assertions) {
        args.extend(dev.test.to_args());
    } else if dev.test.any() {
        tracing::warn!("test-only options are ignored in release builds");
    }
    let confinement = match sandbox.sandbox {
        SandboxMode::Jail => Confinement::Jail(sandbox.jail_user),
        SandboxMode::None => Confinement::None,
    };
    Ok(DeviceSpec {
        name,
        kind,
        describe: opened.describe,
        companion: opened.companion,
        resources: Resources {
            kind_fds: opened.fds,
            listener,
            socket,
            filters,
        },
        layout,
        args,
        confinement,
        sandbox: sandbox.sandbox,
        jail_user: sandbox.jail_user,
    })
}

/// What the launcher holds for a device across its processes: what its kind opened, the
/// listening socket and the compiled filters are passed again to every new process.
#[derive(Debug)]
pub struct Resources {
    /// What the kind opened, in the order of its fds.
    pub kind_fds: Vec<OwnedFd>,
    /// The listening vhost-user socket.
    pub listener: UnixListener,
    /// Its file, removed when the launcher exits (if the launcher created it).
    pub socket: SocketFile,
    /// The compiled filters in a sealed memfd (jailed devices).
    pub filters: Option<OwnedFd>,
}
