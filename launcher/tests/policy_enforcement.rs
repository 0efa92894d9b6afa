//! The compiled filters of every device kind (`DEVICES`), installed in a forked child: allowed
//! calls work, forbidden ones kill the process with SIGSYS (or are only logged in log mode),
//! `return ERRNO` rules fail with their errno.
//!
//! The filters are compiled before fork; the child only makes raw syscalls and `_exit`s
//! (a forked child of a multi-threaded test process may only do async-signal-safe things).

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use seccompiler::BpfProgram;

use launcher::jail::seccomp::{device_filters, install, SeccompMode, DEVICES};

/// Exit statuses the child uses.
const OK: i32 = 0;
const INSTALL_FAILED: i32 = 90;
const WRONG_RESULT: i32 = 91;

/// How the child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Killed(Signal),
}

/// Forks; the child installs `filters` and exits with `body()`'s status.
fn in_child(filters: &[BpfProgram], body: fn() -> i32) -> End {
    // SAFETY: the child only calls setrlimit, prctl, seccomp, the raw syscalls of `body` and
    // _exit, all async-signal-safe; it allocates nothing (the filters were built before fork).
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // No core file for the SIGSYS we provoke.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit reads the struct we pass; `none` lives across the call.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
            let status = match install(filters) {
                Ok(()) => body(),
                Err(_) => INSTALL_FAILED,
            };
            // SAFETY: _exit ends the process without running atexit handlers or destructors.
            unsafe { libc::_exit(status) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => End::Exited(code),
            WaitStatus::Signaled(_, sig, _) => End::Killed(sig),
            other => panic!("unexpected wait status {other:?}"),
        },
    }
}

fn filters(device: &str, mode: SeccompMode) -> Vec<BpfProgram> {
    device_filters(device, None, mode).unwrap_or_else(|e| panic!("{device} filters: {e}"))
}

/// `getpid` is allowed.
fn allowed() -> i32 {
    // SAFETY: getpid has no arguments and cannot fail.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    if pid > 0 {
        OK
    } else {
        WRONG_RESULT
    }
}

/// `ptrace` is not in the policy.
fn forbidden_ptrace() -> i32 {
    // SAFETY: PTRACE_PEEKUSER of pid 0 with integer arguments; the filter kills us before the
    // kernel looks at them.
    unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKUSER, 0, 0, 0) };
    OK
}

/// `getppid` is not in the policy, and harmless if only logged.
fn forbidden_getppid() -> i32 {
    // SAFETY: getppid has no arguments.
    let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
    if ppid > 0 {
        OK
    } else {
        WRONG_RESULT
    }
}

/// `openat` answers ENOENT, even for a path that exists.
fn openat_enoent() -> i32 {
    let path = c"/";
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd == -1 && Errno::last() == Errno::ENOENT {
        OK
    } else {
        WRONG_RESULT
    }
}

/// `clone3` answers ENOSYS (so that glibc falls back to `clone`, whose flags are checked).
fn clone3_enosys() -> i32 {
    // SAFETY: the filter answers before the kernel reads the (null) argument structure.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    if r == -1 && Errno::last() == Errno::ENOSYS {
        OK
    } else {
        WRONG_RESULT
    }
}

/// `clone` with a namespace flag is not allowed.
fn clone_newuser() -> i32 {
    let flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
    // SAFETY: if the filter let it through this would fork; it kills us first.
    unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    OK
}

/// Executable memory is not allowed.
fn mmap_exec() -> i32 {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; never used.
    unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    OK
}

/// A non-executable anonymous mapping is allowed.
fn mmap_rw() -> i32 {
    // SAFETY: as above; the mapping is left to process exit.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p > 0 {
        OK
    } else {
        WRONG_RESULT
    }
}

/// An ioctl no device policy allows (TCGETS) is not allowed.
fn ioctl_tcgets() -> i32 {
    let mut buf = [0u8; 128];
    // SAFETY: TCGETS writes a struct termios (60 bytes) into `buf`, which is larger.
    unsafe { libc::syscall(libc::SYS_ioctl, 0, libc::TCGETS, buf.as_mut_ptr()) };
    OK
}

#[test]
fn allowed_syscall_runs() {
    for d in DEVICES {
        let f = filters(d, SeccompMode::Kill);
        assert_eq!(in_child(&f, allowed), End::Exited(OK), "{d}");
        assert_eq!(in_child(&f, mmap_rw), End::Exited(OK), "{d}");
    }
}

#[test]
fn forbidden_syscall_kills_with_sigsys() {
    for d in DEVICES {
        let f = filters(d, SeccompMode::Kill);
        for (name, body) in [
            ("ptrace", forbidden_ptrace as fn() -> i32),
            ("getppid", forbidden_getppid),
            ("clone(CLONE_NEWUSER)", clone_newuser),
            ("mmap(PROT_EXEC)", mmap_exec),
            ("ioctl(TCGETS)", ioctl_tcgets),
        ] {
            assert_eq!(
                in_child(&f, body),
                End::Killed(Signal::SIGSYS),
                "{d}: {name}"
            );
        }
    }
}

#[test]
fn errno_rules_answer_their_errno() {
    for d in DEVICES {
        let f = filters(d, SeccompMode::Kill);
        assert_eq!(in_child(&f, openat_enoent), End::Exited(OK), "{d}: openat");
        assert_eq!(in_child(&f, clone3_enosys), End::Exited(OK), "{d}: clone3");
    }
}

#[test]
fn log_mode_lets_forbidden_calls_through_but_keeps_errno_rules() {
    for d in DEVICES {
        let f = filters(d, SeccompMode::Log);
        assert_eq!(in_child(&f, forbidden_getppid), End::Exited(OK), "{d}");
        assert_eq!(in_child(&f, openat_enoent), End::Exited(OK), "{d}");
        assert_eq!(in_child(&f, allowed), End::Exited(OK), "{d}");
    }
}

#[test]
fn every_kind_has_filters() {
    for k in launcher::kinds::KINDS {
        assert!(
            DEVICES.contains(&k.name()),
            "no filters for kind {}",
            k.name()
        );
    }
}
