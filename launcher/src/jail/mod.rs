//! The jail a device process runs in, as one readable sequence: [`enter`].
//!
//! The launcher has already opened everything the device needs and started it with `clone`
//! in new user, pid, mount, network, ipc, uts and cgroup namespaces, mapped to an unprivileged
//! host user (see `crate::spawn`), and the device has `exec`'d into a fresh address space.
//! From there the device confines itself, one small step per file, in this order:
//!
//! 0. `preflight`: one thread only (every step below is per thread), pid 1 of its namespace.
//! 1. `fds`: close every fd not on the keep-list.
//! 2. `namespaces`: set the hostname; forbid nested namespaces (needs /proc: before the pivot).
//! 3. `mounts`: make every mount private, pivot_root into an empty tmpfs, detach the old
//!    root, remount the new root read-only, nodev, nosuid, noexec.
//! 4. `limits`: RLIMIT_NOFILE, RLIMIT_CORE = 0, RLIMIT_DATA; not dumpable.
//! 5. `capabilities`: lock the securebits, empty the bounding and ambient sets, then the
//!    effective, permitted and inheritable sets.
//! 6. `no_new_privs`.
//! 7. `landlock`: a ruleset that handles every filesystem (and network, and scope) right and
//!    grants none; where the kernel lacks landlock this is reported, not fatal.
//! 8. `filters`: seccomp, last, before any thread starts (compiled by the launcher and read
//!    before step 1).

pub mod capabilities;
pub mod fds;
pub mod filters;
pub mod landlock;
pub mod limits;
pub mod mounts;
pub mod namespaces;
pub mod no_new_privs;
pub mod policy;
pub mod policy_names;
pub mod preflight;
pub mod seccomp;
pub mod syscalls_x86_64;

use std::io;
use std::os::fd::RawFd;

pub use filters::{FilterError, FilterMode, FilterPassError, Filters};
pub use landlock::LandlockStatus;
pub use limits::Limits;

/// Everything the jail needs, prepared before the first step.
#[derive(Debug)]
pub struct JailConfig {
    /// Hostname inside the uts namespace.
    pub hostname: String,
    /// The fds that stay open (0, 1, 2 and the device's fds); every other one is closed.
    pub keep_fds: Vec<RawFd>,
    /// Resource limits.
    pub limits: Limits,
    /// The compiled seccomp filters, installed last.
    pub filters: Filters,
}

/// What the jail could enforce where enforcement depends on the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailReport {
    /// How much of the landlock ruleset the kernel enforces.
    pub landlock: LandlockStatus,
}

/// Why a jail step failed. The device never runs with a partial jail: it exits instead.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// More than one thread exists.
    #[error("{0} threads exist; the jail is entered while the process has a single thread")]
    Threads(usize),
    /// Not started by the launcher in a new pid namespace.
    #[error(
        "this process is pid {0}, not pid 1 of its own pid namespace: device processes are \
         started by `launcher start`"
    )]
    NotNamespaceInit(i32),
    /// Reading process state failed.
    #[error("cannot read {0}")]
    Inspect(&'static str, #[source] io::Error),
    /// close_range failed.
    #[error("cannot close inherited file descriptors")]
    CloseFds(#[source] io::Error),
    /// sethostname failed.
    #[error("cannot set the hostname")]
    Hostname(#[source] nix::Error),
    /// A nested-namespace limit could not be set.
    #[error("cannot forbid nested namespaces ({0})")]
    NamespaceLimit(String, #[source] io::Error),
    /// A mount step failed.
    #[error("cannot set up the empty root: {0} failed")]
    Mount(&'static str, #[source] nix::Error),
    /// No directory to mount the new root on.
    #[error("no directory to mount the new root on (tried {0})")]
    NoMountPoint(String),
    /// setrlimit or prctl failed.
    #[error("cannot set {0}")]
    Limit(&'static str, #[source] nix::Error),
    /// A capability step failed.
    #[error("cannot drop capabilities: {0}")]
    Capabilities(&'static str, #[source] io::Error),
    /// prctl(PR_SET_NO_NEW_PRIVS) failed or did not stick.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
    /// The landlock ruleset could not be applied (an unsupported kernel is not an error).
    #[error("cannot apply the landlock ruleset")]
    Landlock(#[source] ::landlock::RulesetError),
    /// The seccomp filter could not be installed.
    #[error("cannot install the seccomp filter")]
    Seccomp(#[source] FilterError),
}

/// Enters the jail: see the module documentation for the sequence.
pub fn enter(cfg: &JailConfig) -> Result<JailReport, JailError> {
    enter_with(cfg, || {})
}

/// [`enter`], running `before_seccomp` between the landlock and seccomp steps (the test-only
/// escape battery uses it to probe every layer beneath seccomp).
pub fn enter_with(
    cfg: &JailConfig,
    before_seccomp: impl FnOnce(),
) -> Result<JailReport, JailError> {
    preflight::check_single_threaded()?;
    preflight::check_pid_namespace_init()?;
    fds::close_all_except(&cfg.keep_fds)?;
    namespaces::set_hostname(&cfg.hostname)?;
    namespaces::forbid_nested()?;
    mounts::pivot_to_empty_root()?;
    limits::apply(&cfg.limits)?;
    capabilities::drop_all()?;
    no_new_privs::set()?;
    let landlock = landlock::deny_all()?;
    before_seccomp();
    filters::install(&cfg.filters).map_err(JailError::Seccomp)?;
    Ok(JailReport { landlock })
}
