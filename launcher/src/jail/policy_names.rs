//! The names a policy may use: syscalls (x86_64 numbers), constants in argument expressions,
//! and errnos of `return ERRNO`.

use super::syscalls_x86_64::SYSCALLS;

/// The x86_64 number of a syscall name.
pub fn syscall_nr(name: &str) -> Option<i64> {
    SYSCALLS
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|i| SYSCALLS[i].1)
}

/// The name of an x86_64 syscall number.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    SYSCALLS
        .iter()
        .find(|(_, n)| *n == nr)
        .map(|(name, _)| *name)
}

macro_rules! constants {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as u64)),*]
    };
}

/// The named constants argument expressions may use (x86_64 values), with the values from
/// `libc`. Block-device ioctl numbers are written in hex in the policies, with their name in
/// the comment.
#[rustfmt::skip]
pub const CONSTANTS: &[(&str, u64)] = constants![
    // mmap / mprotect / mremap / madvise
    PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC,
    MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE, MAP_POPULATE, MAP_STACK,
    MREMAP_MAYMOVE, MADV_DONTNEED, MADV_FREE, MADV_DONTDUMP,
    // fcntl
    F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC, F_ADD_SEALS, F_GET_SEALS,
    F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_SEAL, FD_CLOEXEC,
    // clone
    CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_PIDFD, CLONE_PTRACE, CLONE_VFORK,
    CLONE_PARENT, CLONE_THREAD, CLONE_NEWNS, CLONE_SYSVSEM, CLONE_SETTLS, CLONE_PARENT_SETTID,
    CLONE_CHILD_CLEARTID, CLONE_DETACHED, CLONE_UNTRACED, CLONE_CHILD_SETTID, CLONE_NEWCGROUP,
    CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_IO,
    // prctl
    PR_SET_NAME, PR_GET_NAME, PR_SET_NO_NEW_PRIVS,
    // sockets
    AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET,
    SOCK_CLOEXEC, SOCK_NONBLOCK,
    MSG_CMSG_CLOEXEC, MSG_NOSIGNAL, MSG_DONTWAIT, MSG_PEEK, MSG_WAITALL, MSG_TRUNC,
    SHUT_RD, SHUT_WR, SHUT_RDWR,
    // memfd_create, fallocate, *stat*at, preadv2 / pwritev2, eventfd2, epoll
    MFD_CLOEXEC, MFD_ALLOW_SEALING,
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
    AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, AT_STATX_SYNC_AS_STAT,
    RWF_DSYNC, RWF_HIPRI, RWF_NOWAIT,
    EFD_CLOEXEC, EFD_NONBLOCK, EPOLL_CLOEXEC,
    // signals
    SIGABRT, SIGKILL, SIGTERM, SIGINT, SIGCHLD,
];

/// Operations of `io_uring_register` (from the kernel UAPI; `libc` does not carry them).
const IO_URING_CONSTANTS: &[(&str, u64)] = &[
    ("IORING_REGISTER_BUFFERS", 0),
    ("IORING_UNREGISTER_BUFFERS", 1),
    ("IORING_REGISTER_FILES", 2),
    ("IORING_UNREGISTER_FILES", 3),
    ("IORING_REGISTER_EVENTFD", 4),
    ("IORING_UNREGISTER_EVENTFD", 5),
    ("IORING_REGISTER_PROBE", 8),
    ("IORING_REGISTER_RESTRICTIONS", 11),
    ("IORING_REGISTER_ENABLE_RINGS", 12),
];

/// The value of a named constant.
pub fn constant(name: &str) -> Option<u64> {
    CONSTANTS
        .iter()
        .chain(IO_URING_CONSTANTS)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as u32)),*]
    };
}

/// Errno names `return ERRNO` accepts.
#[rustfmt::skip]
const ERRNOS: &[(&str, u32)] = errnos![
    EPERM, ENOENT, ESRCH, EINTR, EIO, ENXIO, E2BIG, EBADF, EAGAIN, ENOMEM, EACCES, EFAULT, EBUSY,
    EEXIST, ENODEV, EINVAL, ENOTTY, ENOSPC, ESPIPE, EROFS, ENOSYS, EOPNOTSUPP, ENOTSUP,
    EAFNOSUPPORT,
];

/// The number of an errno name.
pub fn errno(name: &str) -> Option<u32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
