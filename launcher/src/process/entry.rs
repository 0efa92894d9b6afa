//! The device process (`launcher __device KIND ...`), exec'd by the launcher in its new
//! namespaces with its fds at the numbers its arguments give: read the seccomp filters, adopt
//! the fds, enter the jail, build the device (the kind does that, from its fds) and serve.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::signal::Signal;
use nix::sys::stat::SFlag;
use vu_core::control::{Request, Response};

#[cfg(debug_assertions)]
use super::escape::{self, EscapeTargets};
use super::serve::{self, ServeError};
use crate::cli::{DeviceCommand, SandboxMode, TestTriggers};
use crate::jail::{self, JailConfig, JailError, LandlockStatus, Limits};
use crate::kinds::{DeviceEnv, KindError};

/// Logged by the launcher and by the device on every start with `--sandbox none`.
pub const UNJAILED_WARNING: &str = "--sandbox none: the device runs WITHOUT A JAIL (no \
    namespaces, no seccomp, no landlock, every privilege of the launcher): a compromised \
    device owns the host. For debugging only";

/// Why the device process failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A signal could not be blocked, or the server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The parent-death signal could not be set.
    #[error("cannot set the parent-death signal")]
    ParentDeath(#[source] nix::Error),
    /// The seccomp filters were not passed, or not readable.
    #[error(transparent)]
    Filters(#[from] jail::FilterPassError),
    /// A jailed device started without its filters.
    #[error("--sandbox jail needs --fd-seccomp: device processes are started by `launcher start`")]
    NoFilters,
    /// A passed fd is missing or of the wrong kind.
    #[error("fd {fd} ({what}) {problem}")]
    Fd {
        /// The fd number.
        fd: RawFd,
        /// What it should be.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A jail step failed.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The device could not be built.
    #[error(transparent)]
    Setup(KindError),
}

/// Runs a device process to the end.
pub fn run(cmd: &DeviceCommand) -> Result<(), DeviceError> {
    // Already blocked across exec by the launcher; blocked again here before any thread.
    let signals = serve::block_signals()?;
    // Die with the launcher (set before exec too; set again in case exec cleared it).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(DeviceError::ParentDeath)?;
    let kind = cmd.kind.name();
    let _span = tracing::info_span!("device", kind).entered();
    let args = &cmd.process;
    let triggers = honoured(&cmd.test);
    let passed = passed_fds(cmd)?;
    // Counted before the jail: the count may come from the cgroup files under /proc and /sys.
    let env = DeviceEnv {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    let jail = match args.sandbox {
        SandboxMode::Jail => {
            let fd = args.fd_seccomp.ok_or(DeviceError::NoFilters)?;
            let filters = adopt(fd, "the seccomp filters", &[SFlag::S_IFREG])?;
            let mut keep_fds = vec![0, 1, 2, args.fd_socket, args.fd_control];
            keep_fds.extend(&cmd.kind_fds);
            Some(JailConfig {
                hostname: format!("vu-{kind}"),
                keep_fds,
                limits: Limits {
                    open_files: cmd.options.open_files(),
                    ..Limits::default()
                },
                // Read and closed here: the jail's first step closes everything not kept.
                filters: jail::filters::read_passed(filters)?,
            })
        }
        SandboxMode::None => {
            tracing::warn!("{UNJAILED_WARNING}");
            None
        }
    };
    // Adopted in fd order, so that a missing one is reported by its number.
    let mut owned = std::collections::BTreeMap::new();
    for (fd, what, types) in passed {
        owned.insert(fd, adopt(fd, what, types)?);
    }
    let mut take = |fd: RawFd| owned.remove(&fd);
    let kind_fds: Vec<OwnedFd> = cmd.kind_fds.iter().filter_map(|fd| take(*fd)).collect();
    let (Some(listener), Some(control)) = (take(args.fd_socket), take(args.fd_control)) else {
        return Err(DeviceError::Fd {
            fd: args.fd_socket,
            what: "the passed fds",
            problem: "were not all adopted".into(),
        });
    };
    let listener = UnixListener::from(listener);
    let control = UnixStream::from(control);

    if let Some(cfg) = &jail {
        enter_jail(cfg, &triggers, args.seccomp_log)?;
    }
    after_jail(&triggers, jail.is_some());

    let prepared = cmd
        .options
        .build(kind_fds, &env)
        .map_err(DeviceError::Setup)?;
    serve::run(prepared, listener, control, Box::new(test_trigger), signals)?;
    Ok(())
}

/// A passed fd: its number, what it is, the file types it may be.
type PassedFd = (RawFd, &'static str, &'static [SFlag]);

/// The fds the command names, checked to be distinct and above stdio, sorted by number.
fn passed_fds(cmd: &DeviceCommand) -> Result<Vec<PassedFd>, DeviceError> {
    const SOCKET: &[SFlag] = &[SFlag::S_IFSOCK];
    let args = &cmd.process;
    let specs = cmd
        .kind
        .fds_for(cmd.kind_fds.len())
        .ok_or(DeviceError::Fd {
            fd: cmd.kind_fds.first().copied().unwrap_or(-1),
            what: "the kind's fds",
            problem: format!(
                "{} were passed, which its kind {} does not declare",
                cmd.kind_fds.len(),
                cmd.kind.name()
            ),
        })?;
    let mut fds: Vec<PassedFd> = specs
        .iter()
        .zip(&cmd.kind_fds)
        .map(|(spec, fd)| (*fd, spec.what, spec.types))
        .collect();
    fds.push((args.fd_socket, "the socket", SOCKET));
    fds.push((args.fd_control, "the control channel", SOCKET));
    let mut numbers: Vec<RawFd> = fds.iter().map(|f| f.0).collect();
    numbers.extend(args.fd_seccomp);
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != numbers.len() || sorted.first().is_some_and(|&fd| fd < 3) {
        return Err(DeviceError::Fd {
            fd: numbers.first().copied().unwrap_or(-1),
            what: "the passed fds",
            problem: format!("numbers {numbers:?} must be distinct and above 2"),
        });
    }
    fds.sort_by_key(|f| f.0);
    Ok(fds)
}

/// Enters the jail, running the test-only escape battery between its last two layers when
/// asked, and says how much of it the kernel enforces.
fn enter_jail(
    cfg: &JailConfig,
    triggers: &TestTriggers,
    seccomp_log: bool,
) -> Result<(), DeviceError> {
    #[cfg(debug_assertions)]
    let targets = escape_targets(triggers);
    #[cfg(not(debug_assertions))]
    let _ = triggers;
    let report = jail::enter_with(cfg, || {
        #[cfg(debug_assertions)]
        if triggers.test_escape_battery {
            escape::battery_before_seccomp(&targets);
        }
    })?;
    let seccomp = if seccomp_log { "log" } else { "kill" };
    match report.landlock {
        LandlockStatus::Enforced => tracing::info!(seccomp, "jailed"),
        LandlockStatus::PartiallyEnforced(abi) => tracing::info!(
            seccomp,
            landlock_abi = abi,
            "jailed; landlock enforces the rights of the kernel's ABI (this build knows newer)"
        ),
        LandlockStatus::NotEnforced => tracing::warn!(
            seccomp,
            "jailed, but landlock is not enforced: the kernel lacks it or has it disabled \
             (the other jail layers stand)"
        ),
    }
    Ok(())
}

/// The test-only triggers that run once the jail is whole (debug builds only).
fn after_jail(triggers: &TestTriggers, jailed: bool) {
    #[cfg(debug_assertions)]
    {
        let targets = escape_targets(triggers);
        if triggers.test_escape_battery {
            if jailed {
                escape::battery_after_seccomp(&targets);
            } else {
                escape::battery_unjailed(&targets);
            }
        }
        if let Some(a) = triggers.test_escape {
            escape::single_after_seccomp(a, &targets);
        }
        if triggers.test_forbidden_syscall {
            escape::forbidden_syscall();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (triggers, jailed);
}

#[cfg(debug_assertions)]
fn escape_targets(t: &TestTriggers) -> EscapeTargets {
    EscapeTargets {
        host_socket: t.test_escape_host_socket.clone(),
        host_abstract: t.test_escape_host_abstract.clone(),
        host_pid: t.test_escape_host_pid,
        host_port: t.test_escape_host_port,
    }
}

/// Answers `TestTrigger` requests from the supervisor: honoured in builds with debug
/// assertions only. "crash" aborts (as pid 1 of its pid namespace the device ignores its own
/// SIGABRT, so glibc's abort ends in a forced SIGSEGV), "exit" exits with status 3,
/// "forbidden-syscall" makes a system call the seccomp policy forbids (SIGSYS).
fn test_trigger(req: &Request) -> Option<Response> {
    let Request::TestTrigger(name) = req else {
        return None;
    };
    if !cfg!(debug_assertions) {
        return Some(Response::Error(
            "test triggers are honoured by debug builds only".into(),
        ));
    }
    tracing::warn!(trigger = %name, "test trigger");
    match name.as_str() {
        "crash" => std::process::abort(),
        "exit" => std::process::exit(3),
        "forbidden-syscall" => {
            #[cfg(debug_assertions)]
            escape::forbidden_syscall();
            Some(Response::Error("the forbidden system call returned".into()))
        }
        other => Some(Response::Error(format!(
            "unknown test trigger {other:?} (crash, exit, forbidden-syscall)"
        ))),
    }
}

/// The test triggers, in builds with debug assertions; none in release builds.
fn honoured(t: &TestTriggers) -> TestTriggers {
    if cfg!(debug_assertions) {
        t.clone()
    } else {
        if t.any() {
            tracing::warn!("test-only options are ignored in release builds");
        }
        TestTriggers::default()
    }
}

/// Takes ownership of an fd passed by the launcher after checking it is open and of one of
/// the `kinds`.
fn adopt(
    fd: RawFd,
    what: &'static str,
    kinds: &[SFlag],
) -> Result<std::os::fd::OwnedFd, DeviceError> {
    let err = |problem: String| DeviceError::Fd { fd, what, problem };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` into `st` on success and nothing on failure (a
    // number that is not an open fd gives EBADF).
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(err(format!(
            "is not open ({})",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if !kinds.contains(&kind) {
        return Err(err(format!("is not a {kinds:?}")));
    }
    // SAFETY: the fd is open (fstat succeeded), was passed to this process for this purpose
    // alone, and the numbers were checked to be distinct, so nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
