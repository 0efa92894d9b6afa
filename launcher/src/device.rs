//! The device process (`launcher __device block ...`), exec'd by the launcher in its new
//! namespaces with its fds at fixed numbers: compile the seccomp policy, adopt the fds, enter
//! the jail, build the device and serve.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::signal::Signal;
use nix::sys::stat::SFlag;

use crate::block::{self, BlockOptions, BlockSetupError};
use crate::cli::{DeviceBlockArgs, SandboxMode, TestTriggers};
use crate::escape::{self, EscapeTargets};
use crate::jail::{self, JailConfig, JailError, LandlockStatus, Limits};
use crate::serve::{self, ServeError};
use vu_core::control::{Request, Response};

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
    Setup(#[from] BlockSetupError),
}

/// Runs a block device process to the end.
pub fn run_block(args: &DeviceBlockArgs) -> Result<(), DeviceError> {
    // Already blocked across exec by the launcher; blocked again here before any thread.
    let signals = serve::block_signals()?;
    // Die with the launcher (set before exec too; set again in case exec cleared it).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(DeviceError::ParentDeath)?;
    let _span = tracing::info_span!("device", kind = "block").entered();

    let triggers = honoured(&args.test);
    // Each passed fd is adopted exactly once: the numbers must be distinct and not stdio.
    let mut fds = vec![args.fd_image, args.fd_socket, args.fd_control];
    fds.extend(args.fd_seccomp);
    let mut sorted = fds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != fds.len() || sorted.first().is_some_and(|&fd| fd < 3) {
        return Err(DeviceError::Fd {
            fd: args.fd_image,
            what: "the passed fds",
            problem: format!("numbers {fds:?} must be distinct and above 2"),
        });
    }
    // Counted before the jail: the count may come from the cgroup files under /proc and /sys.
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let jail = match args.sandbox {
        SandboxMode::Jail => {
            let fd = args.fd_seccomp.ok_or(DeviceError::NoFilters)?;
            let filters = adopt(fd, "the seccomp filters", &[SFlag::S_IFREG])?;
            Some(JailConfig {
                hostname: "vu-block".into(),
                keep_fds: vec![0, 1, 2, args.fd_image, args.fd_socket, args.fd_control],
                limits: Limits::default(),
                // Read and closed here: the jail's first step closes everything not kept.
                filters: jail::filters::read_passed(filters)?,
            })
        }
        SandboxMode::None => {
            tracing::warn!("{UNJAILED_WARNING}");
            None
        }
    };

    let image = File::from(adopt(
        args.fd_image,
        "the image",
        &[SFlag::S_IFREG, SFlag::S_IFBLK],
    )?);
    let listener = UnixListener::from(adopt(args.fd_socket, "the socket", &[SFlag::S_IFSOCK])?);
    let control = UnixStream::from(adopt(
        args.fd_control,
        "the control channel",
        &[SFlag::S_IFSOCK],
    )?);

    let targets = EscapeTargets {
        host_socket: triggers.test_escape_host_socket.clone(),
        host_abstract: triggers.test_escape_host_abstract.clone(),
        host_pid: triggers.test_escape_host_pid,
        host_port: triggers.test_escape_host_port,
    };
    if let Some(cfg) = &jail {
        let report = jail::enter_with(cfg, || {
            if triggers.test_escape_battery {
                escape::battery_before_seccomp(&targets);
            }
        })?;
        let seccomp = if args.seccomp_log { "log" } else { "kill" };
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
    }
    if triggers.test_escape_battery {
        if jail.is_some() {
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

    let mut opts = BlockOptions::new(args.image_name.clone(), &args.device);
    opts.cpus = cpus;
    let prepared = block::build(&opts, image)?;
    serve::run(prepared, listener, control, Box::new(test_trigger), signals)?;
    Ok(())
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
