//! Starting one device process: `clone` into new namespaces, map the jail user, `exec` the
//! launcher's own binary into the device entry point (`launcher __device <kind> ...`).
//!
//! Everything the child needs is prepared before `clone`: the argument vector, the fds to
//! keep (already duplicated above the numbers they will take), the signal mask, an `O_PATH`
//! fd of our own executable and two pipes. Between `clone` and `exec` the child makes only
//! raw system calls (no allocation, no locks): it waits until the parent has written its
//! uid/gid maps, drops supplementary groups, becomes uid/gid 0 of its user namespace (the
//! jail user on the host: until then it has the launcher's host ids), starts a session (so that a terminal's Ctrl-C
//! does not reach it: the launcher forwards signals), moves the kept fds to 3, 4, 5...,
//! blocks SIGINT and SIGTERM (a pid-namespace init drops signals it does not handle unless
//! they are blocked; the device takes them with `sigwait`) and execs. A failure before exec
//! comes back to the parent through a close-on-exec pipe as (stage, errno).
//!
//! With [`Confinement::None`] the same happens without new namespaces or id maps.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};

use crate::cli::JailUser;

/// The namespaces a jailed device gets.
pub const JAIL_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// Stack for the child between clone and exec (it needs little; this is generous).
const CHILD_STACK: usize = 256 << 10;

/// Release bit: the parent wrote the id maps; become uid/gid 0 of the new user namespace
/// (the jail user on the host). Until then the child still has the launcher's host ids.
const RELEASE_SWITCH_IDS: u8 = 1;
/// Release bit: setgroups is allowed; drop every supplementary group.
const RELEASE_CLEAR_GROUPS: u8 = 2;

/// How the device process is confined from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// New namespaces, running as this host user.
    Jail(JailUser),
    /// None at all (debugging only).
    None,
}

/// What to start.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// The device kind, for messages.
    pub device: &'a str,
    /// Arguments after argv[0] (`__device <kind> ...`).
    pub args: Vec<OsString>,
    /// Fds to pass, each with the number it gets in the device (3, 4, 5...).
    pub fds: Vec<(BorrowedFd<'a>, RawFd)>,
    /// Jail or not.
    pub confinement: Confinement,
}

/// Where the child was when it failed before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    ParentDeathSignal = 1,
    Release = 2,
    Groups = 3,
    Ids = 4,
    Session = 5,
    Fds = 6,
    SignalMask = 7,
    Exec = 8,
}

impl Stage {
    fn from_u8(b: u8) -> Option<Stage> {
        [
            Stage::ParentDeathSignal,
            Stage::Release,
            Stage::Groups,
            Stage::Ids,
            Stage::Session,
            Stage::Fds,
            Stage::SignalMask,
            Stage::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            Stage::ParentDeathSignal => "setting the parent-death signal",
            Stage::Release => "waiting for the launcher",
            Stage::Groups => "dropping supplementary groups",
            Stage::Ids => "becoming uid 0 and gid 0 of its user namespace",
            Stage::Session => "starting a session",
            Stage::Fds => "moving the device's file descriptors",
            Stage::SignalMask => "setting the signal mask",
            Stage::Exec => "executing the launcher binary (the jail user must be allowed to)",
        }
    }
}

/// Why a device process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// /proc/self/exe could not be opened.
    #[error("cannot open the launcher's own executable")]
    Exe(#[source] io::Error),
    /// An argument holds a NUL byte.
    #[error("argument {0:?} contains a NUL byte")]
    Nul(OsString),
    /// The fds could not be duplicated.
    #[error("cannot prepare the device's file descriptors")]
    Fds(#[source] nix::Error),
    /// pipe2 failed.
    #[error("cannot create a pipe")]
    Pipe(#[source] nix::Error),
    /// The control socketpair could not be created.
    #[error("cannot create the control channel")]
    Socketpair(#[source] io::Error),
    /// The kind's companion could not prepare the process's own fds.
    #[error("cannot prepare the device's per-process resources")]
    Companion(#[source] io::Error),
    /// clone failed.
    #[error("cannot create the {0} device process{1}")]
    Clone(String, &'static str, #[source] nix::Error),
    /// Writing the uid/gid maps failed.
    #[error("cannot map the jail user {uid}:{gid} in the device's user namespace ({file}){hint}")]
    IdMap {
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
        /// The /proc file.
        file: &'static str,
        /// What to do.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The child could not be released.
    #[error("cannot release the device process")]
    Release(#[source] io::Error),
    /// The child failed before exec.
    #[error("the {device} device process failed before it started: {stage}")]
    Child {
        /// The device kind.
        device: String,
        /// What it was doing.
        stage: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// Everything the child reads between clone and exec: plain data and pointers into buffers
/// the parent keeps alive until clone has returned.
struct ChildPlan {
    release_rd: RawFd,
    release_wr: RawFd,
    err_rd: RawFd,
    err_wr: RawFd,
    moves: Vec<(RawFd, RawFd)>,
    first_unkept: libc::c_uint,
    exe: RawFd,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    mask: SigSet,
}

/// Starts a device process; returns its pid (in the launcher's pid namespace) once it has
/// exec'd. The caller waits for it.
pub fn spawn(req: &SpawnRequest<'_>) -> Result<Pid, SpawnError> {
    let exe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open("/proc/self/exe")
        .map_err(SpawnError::Exe)?;

    let args = exec_args(&req.args)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // The device gets an empty environment: its options are all on the command line.
    let envp: Vec<*const libc::c_char> = vec![std::ptr::null()];

    let (high, first_unkept) = raise_fds(&req.fds)?;

    let (release_rd, release_wr) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    let (err_rd, err_wr) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);

    let plan = ChildPlan {
        release_rd: release_rd.as_raw_fd(),
        release_wr: release_wr.as_raw_fd(),
        err_rd: err_rd.as_raw_fd(),
        err_wr: err_wr.as_raw_fd(),
        moves: high.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect(),
        first_unkept: libc::c_uint::try_from(first_unkept).unwrap_or(3),
        exe: exe.as_raw_fd(),
        argv,
        envp,
        mask,
    };
    let (flags, what) = match req.confinement {
        Confinement::Jail(_) => (
            JAIL_NAMESPACES,
            " (new user, pid, mount, network, ipc, uts and cgroup namespaces)",
        ),
        Confinement::None => (CloneFlags::empty(), ""),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child runs `child_main` on `stack`, which is large enough for it, in a copy
    // of this address space (no CLONE_VM). Other threads of the launcher (control clients) may
    // hold locks or be mid-allocation at the moment of the copy, but the child only makes raw
    // system calls and reads `plan` (no allocation, no locks) until it execs or _exits, so
    // nothing it touches can be in an inconsistent state.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(&plan)),
            &mut stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| SpawnError::Clone(req.device.to_string(), what, e))?;

    // The parent's side: the child's ends and the high copies are the child's business now.
    drop(release_rd);
    drop(err_wr);
    drop(high);
    release_and_wait(pid, req, release_wr, err_rd)
}

/// `argv` of the device process: "launcher", then `args`.
fn exec_args(args: &[OsString]) -> Result<Vec<CString>, SpawnError> {
    let mut out = vec![CString::new("launcher").map_err(|_| SpawnError::Nul("launcher".into()))?];
    for a in args {
        out.push(CString::new(a.as_bytes()).map_err(|_| SpawnError::Nul(a.clone()))?);
    }
    Ok(out)
}

/// Copies of the kept fds above every target number, so that moving them into place in the
/// child never overwrites one not moved yet; and the first number not kept.
fn raise_fds(
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> Result<(Vec<(OwnedFd, RawFd)>, RawFd), SpawnError> {
    let first_unkept = fds.iter().map(|(_, t)| *t + 1).max().unwrap_or(3).max(3);
    let high = fds
        .iter()
        .map(|(fd, target)| {
            let copy =
                fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(first_unkept)).map_err(SpawnError::Fds)?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            Ok((unsafe { OwnedFd::from_raw_fd(copy) }, *target))
        })
        .collect::<Result<_, SpawnError>>()?;
    Ok((high, first_unkept))
}

/// After clone: writes the id maps (jailed), releases the child and waits until it has
/// exec'd, or reports where it failed.
fn release_and_wait(
    pid: Pid,
    req: &SpawnRequest<'_>,
    release_wr: OwnedFd,
    err_rd: OwnedFd,
) -> Result<Pid, SpawnError> {
    let abort = |e: SpawnError| {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        e
    };
    let release = match req.confinement {
        Confinement::Jail(user) => write_id_maps(pid, user).map_err(abort)?,
        Confinement::None => 0,
    };
    // A child that already failed cannot be released; its report below says why.
    let released = File::from(release_wr).write_all(&[release]);

    // EOF: the child exec'd (the pipe is close-on-exec). Otherwise: (stage, errno).
    let mut report = Vec::new();
    File::from(err_rd)
        .read_to_end(&mut report)
        .map_err(|e| abort(SpawnError::Release(e)))?;
    if report.is_empty() {
        released.map_err(|e| abort(SpawnError::Release(e)))?;
        return Ok(pid);
    }
    let _ = waitpid(pid, None);
    let stage = report.first().copied().and_then(Stage::from_u8);
    let errno = report
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(0);
    Err(SpawnError::Child {
        device: req.device.to_string(),
        stage: stage.map_or("unknown stage", Stage::describe),
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Maps uid 0 and gid 0 of the device's user namespace to the jail user. With privilege
/// (CAP_SETGID over our namespace) setgroups stays allowed so that the child can drop the
/// supplementary groups it inherited; without, the kernel demands setgroups "deny" first and
/// the groups stay (they are the unprivileged launcher's own).
fn write_id_maps(pid: Pid, user: JailUser) -> Result<u8, SpawnError> {
    let proc_file = |name: &str| format!("/proc/{pid}/{name}");
    let err = |file: &'static str, source: io::Error| {
        let hint = if source.raw_os_error() == Some(libc::EPERM) {
            "; a launcher that is not root can only map its own ids: pass --jail-user UID:GID \
             with its own uid and gid"
        } else {
            ""
        };
        SpawnError::IdMap {
            uid: user.uid,
            gid: user.gid,
            file,
            hint,
            source,
        }
    };
    std::fs::write(proc_file("uid_map"), format!("0 {} 1\n", user.uid))
        .map_err(|e| err("uid_map", e))?;
    let gid_map = format!("0 {} 1\n", user.gid);
    match std::fs::write(proc_file("gid_map"), &gid_map) {
        Ok(()) => Ok(RELEASE_SWITCH_IDS | RELEASE_CLEAR_GROUPS),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            std::fs::write(proc_file("setgroups"), "deny").map_err(|e| err("setgroups", e))?;
            std::fs::write(proc_file("gid_map"), &gid_map).map_err(|e| err("gid_map", e))?;
            Ok(RELEASE_SWITCH_IDS)
        }
        Err(e) => Err(err("gid_map", e)),
    }
}

/// The child between clone and exec. Only raw, async-signal-safe system calls on integers and
/// on pointers into `p` (fds, NUL-terminated argument strings, a sigset), all valid in this
/// copy of the parent's memory; nothing allocates or takes a lock.
fn child_main(p: &ChildPlan) -> isize {
    close(p.release_wr);
    close(p.err_rd);
    // Die with the launcher: a device never outlives its supervisor.
    // SAFETY: PR_SET_PDEATHSIG takes an integer signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        child_fail(p, Stage::ParentDeathSignal);
    }
    let mut release = 0u8;
    loop {
        // SAFETY: reads at most one byte into `release`.
        let r = unsafe { libc::read(p.release_rd, std::ptr::addr_of_mut!(release).cast(), 1) };
        if r == 1 {
            break;
        }
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r == 0 {
            set_errno(libc::ECANCELED);
        }
        child_fail(p, Stage::Release);
    }
    close(p.release_rd);
    if release & RELEASE_CLEAR_GROUPS != 0 {
        // SAFETY: setgroups with an empty list reads no memory. The raw syscall (not glibc's
        // wrapper, which signals every thread) applies to this, the only, thread.
        let r =
            unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) };
        if r != 0 {
            child_fail(p, Stage::Groups);
        }
    }
    if release & RELEASE_SWITCH_IDS != 0 {
        // SAFETY: setresgid/setresuid take integers. Raw syscalls: they apply to this, the
        // only, thread (glibc's wrappers would signal every thread).
        let r = unsafe { libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32) };
        if r != 0 {
            child_fail(p, Stage::Ids);
        }
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32) };
        if r != 0 {
            child_fail(p, Stage::Ids);
        }
    }
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        child_fail(p, Stage::Session);
    }
    for &(src, dst) in &p.moves {
        // SAFETY: dup2 on integers; `dst` is free or one of our own inherited fds.
        if unsafe { libc::dup2(src, dst) } < 0 {
            child_fail(p, Stage::Fds);
        }
    }
    // Anything else inherited without close-on-exec stays out of the device (best effort:
    // the device's jail closes every fd not kept anyway).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            p.first_unkept,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // SAFETY: `p.mask` is a valid sigset; the old mask is not wanted.
    if unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, p.mask.as_ref(), std::ptr::null_mut()) }
        != 0
    {
        child_fail(p, Stage::SignalMask);
    }
    // SAFETY: `p.exe` is an O_PATH fd of our executable; the path is empty (AT_EMPTY_PATH);
    // argv and envp are NULL-terminated arrays of NUL-terminated strings kept alive by the
    // parent's copy of memory we share copy-on-write.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            p.exe,
            c"".as_ptr(),
            p.argv.as_ptr(),
            p.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    child_fail(p, Stage::Exec)
}

fn close(fd: RawFd) {
    // SAFETY: closes a pipe end this process inherited and no Rust object owns in it.
    unsafe { libc::close(fd) };
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

fn set_errno(v: i32) {
    nix::errno::Errno::set_raw(v);
}

/// Reports (stage, errno) to the parent and exits.
fn child_fail(p: &ChildPlan, stage: Stage) -> ! {
    let mut msg = [0u8; 5];
    msg[0] = stage as u8;
    msg[1..].copy_from_slice(&errno().to_ne_bytes());
    // SAFETY: writes the 5-byte stack buffer to the error pipe.
    unsafe { libc::write(p.err_wr, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit ends the process without running anything of the parent's.
    unsafe { libc::_exit(127) }
}
