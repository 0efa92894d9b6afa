//! The names of the test-only escape attempts (`--test-escape ATTEMPT`), and the sets the
//! battery runs in each phase. The attempts themselves are in `escape.rs`, compiled only into
//! builds with debug assertions.

use clap::ValueEnum;

/// One escape attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EscapeAttempt {
    /// open("/etc/passwd"): read a host file.
    #[value(name = "open_host_file")]
    OpenHostFile,
    /// open("/proc/self/status"): reach procfs.
    #[value(name = "open_proc")]
    OpenProc,
    /// open("/escape", O_CREAT): write to the root.
    #[value(name = "create_file")]
    CreateFile,
    /// execve("/bin/sh"): run a host program.
    #[value(name = "exec_shell")]
    ExecShell,
    /// connect() to a host UNIX socket path.
    #[value(name = "connect_host_socket")]
    ConnectHostSocket,
    /// connect() to a host abstract UNIX socket.
    #[value(name = "connect_abstract_socket")]
    ConnectAbstractSocket,
    /// connect() to a TCP port on the host's 127.0.0.1.
    #[value(name = "tcp_connect_host")]
    TcpConnectHost,
    /// kill(host pid, 0): signal a host process.
    #[value(name = "kill_host_pid")]
    KillHostPid,
    /// ptrace(PTRACE_ATTACH, host pid).
    #[value(name = "ptrace_host_pid")]
    PtraceHostPid,
    /// socket(AF_INET).
    #[value(name = "inet_socket")]
    InetSocket,
    /// socket(AF_INET6).
    #[value(name = "inet6_socket")]
    Inet6Socket,
    /// socket(AF_NETLINK).
    #[value(name = "netlink_socket")]
    NetlinkSocket,
    /// mmap(PROT_EXEC): map executable memory.
    #[value(name = "mmap_exec")]
    MmapExec,
    /// mprotect(PROT_EXEC) on writable memory.
    #[value(name = "mprotect_exec")]
    MprotectExec,
    /// mount a tmpfs.
    #[value(name = "mount")]
    Mount,
    /// unshare(CLONE_NEWUSER): a nested user namespace, where it would be root again.
    #[value(name = "unshare_user")]
    UnshareUser,
    /// unshare(CLONE_NEWNS).
    #[value(name = "unshare_mount")]
    UnshareMount,
    /// chroot("/").
    #[value(name = "chroot")]
    Chroot,
    /// capset: raise every capability again.
    #[value(name = "raise_caps")]
    RaiseCaps,
}

/// Attempts that only seccomp stops: every other layer lets these calls through (a socket in
/// an empty network namespace, executable anonymous memory), so phase `jail` reports them
/// ALLOWED and phase `final` must show them killed or refused.
pub const SECCOMP_ONLY: &[EscapeAttempt] = &[
    EscapeAttempt::InetSocket,
    EscapeAttempt::Inet6Socket,
    EscapeAttempt::NetlinkSocket,
    EscapeAttempt::MmapExec,
    EscapeAttempt::MprotectExec,
];

/// Attempts that seccomp answers with an errno instead of killing (`openat` returns ENOENT in
/// device policies): the battery runs these after seccomp too.
pub const SECCOMP_ERRNO: &[EscapeAttempt] = &[EscapeAttempt::OpenHostFile, EscapeAttempt::OpenProc];

/// Attempts harmless to run without a jail (`--sandbox none`), as a control that the targets
/// are reachable: the others would, unjailed, mount over the host's root, trace the test, or
/// replace the device with a shell.
pub const SAFE_UNJAILED: &[EscapeAttempt] = &[
    EscapeAttempt::OpenHostFile,
    EscapeAttempt::OpenProc,
    EscapeAttempt::ConnectHostSocket,
    EscapeAttempt::ConnectAbstractSocket,
    EscapeAttempt::TcpConnectHost,
    EscapeAttempt::KillHostPid,
    EscapeAttempt::InetSocket,
    EscapeAttempt::Inet6Socket,
    EscapeAttempt::NetlinkSocket,
    EscapeAttempt::MmapExec,
    EscapeAttempt::MprotectExec,
];

impl EscapeAttempt {
    /// Every attempt.
    pub fn all() -> &'static [EscapeAttempt] {
        EscapeAttempt::value_variants()
    }

    /// The attempt's name on the command line and in reports.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}
