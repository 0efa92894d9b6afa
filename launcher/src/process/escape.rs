//! Test-only escape attempts, run inside a jailed device to show that the jail holds.
//!
//! They are reached only through hidden options (`--test-escape-battery`, `--test-escape`,
//! `--test-forbidden-syscall`) and only in binaries built with debug assertions: the device
//! process ignores them in release builds. Each attempt issues the system call a compromised
//! device would use and reports on stderr, one line each:
//!
//! ```text
//! ESCAPE-TEST <phase>/<attempt>: blocked (<errno>)
//! ESCAPE-TEST <phase>/<attempt>: ALLOWED
//! ```
//!
//! Phase `jail` runs after every jail layer but seccomp (so it shows what namespaces, the empty
//! root, capabilities, no_new_privs and landlock stop on their own); phase `final` runs after
//! seccomp, in the jail as it serves. In the final phase most attempts are forbidden system
//! calls and kill the device with SIGSYS before they can report: that is the expected result,
//! and the launcher reports it as a seccomp violation. A line `ESCAPE-TEST final/<attempt>:
//! attempting` precedes each single final attempt so that a test knows the kill came from it.
//! With `--sandbox none`, phase `unjailed` runs the harmless attempts as a control.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;

#[cfg(test)]
use super::escape_names::SECCOMP_ONLY;
use super::escape_names::{EscapeAttempt, SAFE_UNJAILED, SECCOMP_ERRNO};

/// Host objects the attempts aim at, given by the test.
#[derive(Debug, Clone, Default)]
pub struct EscapeTargets {
    /// A listening UNIX socket path on the host.
    pub host_socket: Option<PathBuf>,
    /// A listening abstract UNIX socket name on the host (without the leading NUL).
    pub host_abstract: Option<String>,
    /// A host process id.
    pub host_pid: Option<i32>,
    /// A TCP port listening on the host's 127.0.0.1.
    pub host_port: Option<u16>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The system call failed with this errno.
    Blocked(Errno),
    /// It succeeded: the jail leaks.
    Allowed,
    /// The test gave no target for it.
    Skipped(&'static str),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Blocked(e) => write!(f, "blocked ({e:?})"),
            Outcome::Allowed => f.write_str("ALLOWED"),
            Outcome::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

/// Phase `jail` of the battery: every attempt, after every layer but seccomp.
pub fn battery_before_seccomp(targets: &EscapeTargets) {
    for &a in EscapeAttempt::all() {
        report("jail", a, &attempt(a, targets));
    }
}

/// Without a jail (`--sandbox none`), phase `unjailed`: the attempts in [`SAFE_UNJAILED`].
pub fn battery_unjailed(targets: &EscapeTargets) {
    for &a in SAFE_UNJAILED {
        report("unjailed", a, &attempt(a, targets));
    }
}

/// Phase `final` of the battery: the attempts seccomp answers with an errno.
pub fn battery_after_seccomp(targets: &EscapeTargets) {
    for &a in SECCOMP_ERRNO {
        report("final", a, &attempt(a, targets));
    }
}

/// One attempt in the final jail (it may well kill the device).
pub fn single_after_seccomp(a: EscapeAttempt, targets: &EscapeTargets) {
    eprintln!("ESCAPE-TEST final/{}: attempting", a.name());
    report("final", a, &attempt(a, targets));
}

/// Makes a system call every device policy forbids. Under a kill-mode filter the device dies
/// by SIGSYS here; under `--seccomp-log` the call is logged, fails harmlessly (this process is
/// not traced) and the device goes on.
pub fn forbidden_syscall() {
    eprintln!("FORBIDDEN-SYSCALL: calling ptrace(PTRACE_PEEKUSER, self)");
    let me = nix::unistd::getpid().as_raw();
    // SAFETY: PTRACE_PEEKUSER on ourselves reads nothing into our memory (the data argument
    // is unused for PEEKUSER at the syscall level and the call fails with ESRCH as we are not
    // traced); all arguments are plain integers.
    let r = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKUSER, me, 0usize, 0usize) };
    eprintln!(
        "FORBIDDEN-SYSCALL: ptrace returned {r} ({:?}): the filter did not kill the device",
        Errno::last()
    );
}

fn report(phase: &str, a: EscapeAttempt, o: &Outcome) {
    eprintln!("ESCAPE-TEST {phase}/{}: {o}", a.name());
}

/// Turns a raw return value into Ok or the errno.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn outcome(r: Result<(), Errno>) -> Outcome {
    match r {
        Ok(()) => Outcome::Allowed,
        Err(e) => Outcome::Blocked(e),
    }
}

fn attempt(a: EscapeAttempt, t: &EscapeTargets) -> Outcome {
    use EscapeAttempt as A;
    match a {
        A::OpenHostFile => outcome(open(c"/etc/passwd", libc::O_RDONLY)),
        A::OpenProc => outcome(open(c"/proc/self/status", libc::O_RDONLY)),
        A::CreateFile => outcome(open(c"/escape", libc::O_WRONLY | libc::O_CREAT)),
        A::ExecShell => outcome(exec_shell()),
        A::ConnectHostSocket => match &t.host_socket {
            Some(p) => outcome(connect_unix(p.as_os_str().as_bytes(), false)),
            None => Outcome::Skipped("no --test-escape-host-socket"),
        },
        A::ConnectAbstractSocket => match &t.host_abstract {
            Some(n) => outcome(connect_unix(n.as_bytes(), true)),
            None => Outcome::Skipped("no --test-escape-host-abstract"),
        },
        A::TcpConnectHost => match t.host_port {
            Some(port) => outcome(tcp_connect_loopback(port)),
            None => Outcome::Skipped("no --test-escape-host-port"),
        },
        A::KillHostPid => match t.host_pid {
            // SAFETY: signal 0 only checks that the process exists and may be signalled.
            Some(pid) => outcome(check(unsafe { libc::kill(pid, 0) }.into()).map(drop)),
            None => Outcome::Skipped("no --test-escape-host-pid"),
        },
        A::PtraceHostPid => match t.host_pid {
            Some(pid) => outcome(ptrace_attach(pid)),
            None => Outcome::Skipped("no --test-escape-host-pid"),
        },
        A::InetSocket => outcome(socket(libc::AF_INET, libc::SOCK_STREAM, 0)),
        A::Inet6Socket => outcome(socket(libc::AF_INET6, libc::SOCK_STREAM, 0)),
        A::NetlinkSocket => outcome(socket(libc::AF_NETLINK, libc::SOCK_RAW, 0)),
        A::MmapExec => outcome(mmap_exec()),
        A::MprotectExec => outcome(mprotect_exec()),
        A::Mount => outcome(mount_tmpfs()),
        A::UnshareUser => {
            // SAFETY: unshare only changes this process's namespaces (it fails in the jail).
            outcome(check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()).map(drop))
        }
        A::UnshareMount => {
            // SAFETY: as above.
            outcome(check(unsafe { libc::unshare(libc::CLONE_NEWNS) }.into()).map(drop))
        }
        // SAFETY: the path is a NUL-terminated literal.
        A::Chroot => outcome(check(unsafe { libc::chroot(c"/".as_ptr()) }.into()).map(drop)),
        A::RaiseCaps => outcome(raise_caps()),
    }
}

fn open(path: &std::ffi::CStr, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: `path` is NUL-terminated; the mode argument is read only with O_CREAT.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600) }.into())?;
    // The fd fits: it came from open(2).
    close(fd as libc::c_int);
    if flags & libc::O_CREAT != 0 {
        // SAFETY: as above.
        unsafe { libc::unlink(path.as_ptr()) };
    }
    Ok(())
}

fn close(fd: libc::c_int) {
    // SAFETY: `fd` was just returned to us and is owned by nothing else.
    unsafe { libc::close(fd) };
}

fn exec_shell() -> Result<(), Errno> {
    let argv = [
        c"sh".as_ptr(),
        c"-c".as_ptr(),
        c"exit 0".as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings that outlive
    // the call. If it succeeded this process would be replaced: the test would see the device
    // exit instead of a report, and fail.
    check(unsafe { libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()) }.into())
        .map(drop)
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> Result<(), Errno> {
    // SAFETY: socket takes plain integers.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) }.into())?;
    close(fd as libc::c_int);
    Ok(())
}

fn connect_unix(name: &[u8], abstract_ns: bool) -> Result<(), Errno> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let start = usize::from(abstract_ns);
    if start + name.len() >= addr.sun_path.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (dst, &b) in addr.sun_path[start..].iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    // The family, then the path and its NUL, or a NUL and the abstract name (no terminator).
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: socket takes plain integers.
    let fd = check(
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )? as libc::c_int;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len as libc::socklen_t) };
    let r = check(r.into()).map(drop);
    close(fd);
    r
}

fn tcp_connect_loopback(port: u16) -> Result<(), Errno> {
    // SAFETY: socket takes plain integers.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }.into(),
    )? as libc::c_int;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in of the given size.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let r = check(r.into()).map(drop);
    close(fd);
    r
}

fn ptrace_attach(pid: i32) -> Result<(), Errno> {
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr and data.
    check(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, pid, 0usize, 0usize) })?;
    // SAFETY: as above, detaching the process we just attached.
    unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    Ok(())
}

const PAGE: usize = 4096;

fn mmap_exec() -> Result<(), Errno> {
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: `p` is the mapping made above, of PAGE bytes, used by nothing else.
    unsafe { libc::munmap(p, PAGE) };
    Ok(())
}

fn mprotect_exec() -> Result<(), Errno> {
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: `p` is the mapping made above; nothing else refers to it.
    let r = check(unsafe { libc::mprotect(p, PAGE, libc::PROT_READ | libc::PROT_EXEC) }.into());
    // SAFETY: as above.
    unsafe { libc::munmap(p, PAGE) };
    r.map(drop)
}

fn mount_tmpfs() -> Result<(), Errno> {
    // SAFETY: all strings are NUL-terminated literals; no data argument.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(r.into())?;
    // SAFETY: undo the mount made above.
    unsafe { libc::umount2(c"/".as_ptr(), libc::MNT_DETACH) };
    Ok(())
}

fn raise_caps() -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let full = Data {
        effective: u32::MAX,
        permitted: u32::MAX,
        inheritable: 0,
    };
    let data = [full; 2];
    // SAFETY: capset reads a version-3 header and two data structs, both valid for the call.
    check(unsafe { libc::syscall(libc::SYS_capset, std::ptr::addr_of_mut!(hdr), data.as_ptr()) })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_the_special_sets_are_attempts() {
        let names: std::collections::BTreeSet<String> =
            EscapeAttempt::all().iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), EscapeAttempt::all().len());
        assert!(names.contains("open_host_file"));
        for a in SECCOMP_ONLY.iter().chain(SECCOMP_ERRNO) {
            assert!(EscapeAttempt::all().contains(a));
        }
    }

    #[test]
    fn outcome_lines() {
        assert_eq!(
            Outcome::Blocked(Errno::ENOENT).to_string(),
            "blocked (ENOENT)"
        );
        assert_eq!(Outcome::Allowed.to_string(), "ALLOWED");
    }
}
