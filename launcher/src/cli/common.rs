//! Options every device kind shares: where it listens (a path, an inherited fd, or a socket
//! systemd passed), its name, and how its process is
//! confined; plus the hidden test-only triggers.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::process::escape_names::EscapeAttempt;

/// Smallest virtqueue size a device takes.
pub const MIN_QUEUE_SIZE: u16 = 4;
/// Largest virtqueue size (the virtio limit for split rings).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Where a device listens and what it is called. At most one of `--socket`, `--fd` and
/// `--socket-name`; with none of them the device serves the one socket systemd passed
/// (socket activation: LISTEN_FDS).
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct DeviceArgs {
    /// Path of the vhost-user listening socket to create. Its directory must exist; a stale
    /// socket file (no server behind it) is replaced, a live one is an error. Removed on exit.
    /// Also accepted as --socket-path (the vhost-user spec's name).
    #[arg(long, value_name = "PATH", alias = "socket-path")]
    pub socket: Option<PathBuf>,

    /// Serve the listening socket inherited as file descriptor FDNUM (as libvirt passes it,
    /// the vhost-user spec's --fd): an AF_UNIX stream socket, already bound and listening.
    /// The launcher never removes its file.
    #[arg(
        long,
        value_name = "FDNUM",
        conflicts_with = "socket",
        value_parser = parse_fd
    )]
    pub fd: Option<RawFd>,

    /// Serve the socket that systemd passed under this name (socket activation:
    /// FileDescriptorName= of the .socket unit, as LISTEN_FDNAMES gives it). Needed only when
    /// several sockets are passed; with one, a device with neither --socket nor --fd serves it.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["socket", "fd"],
        value_parser = parse_socket_name
    )]
    pub socket_name: Option<String>,

    /// The device's name, for `launcher ctl`. Default: the kind followed by 0 (`block0`,
    /// `rng0`...).
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
}

/// Where a device's listening socket comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenOn {
    /// Bind a socket at this path (`--socket`).
    Path(PathBuf),
    /// An inherited listening socket (`--fd`).
    Fd(RawFd),
    /// A socket passed by systemd: the one with this name, or the only one.
    Activated(Option<String>),
}

impl DeviceArgs {
    /// Where the device's listening socket comes from.
    pub fn listen_on(&self) -> ListenOn {
        match (&self.socket, self.fd, &self.socket_name) {
            (Some(p), _, _) => ListenOn::Path(p.clone()),
            (None, Some(fd), _) => ListenOn::Fd(fd),
            (None, None, n) => ListenOn::Activated(n.clone()),
        }
    }
}

impl std::fmt::Display for ListenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenOn::Path(p) => write!(f, "socket {}", p.display()),
            ListenOn::Fd(fd) => write!(f, "fd {fd}"),
            ListenOn::Activated(Some(n)) => write!(f, "passed socket {n:?}"),
            ListenOn::Activated(None) => f.write_str("the passed socket"),
        }
    }
}

/// `--fd`: a descriptor number above stderr.
pub fn parse_fd(s: &str) -> Result<RawFd, String> {
    let fd: RawFd = s
        .parse()
        .map_err(|_| format!("`{s}` is not a file descriptor number"))?;
    if fd < 3 {
        return Err(format!(
            "fd {fd} is stdin, stdout or stderr; a listening socket is passed as fd 3 or above"
        ));
    }
    Ok(fd)
}

/// `--socket-name`: a name systemd accepts for FileDescriptorName= (printable ASCII, no ':',
/// at most 255 characters).
pub fn parse_socket_name(s: &str) -> Result<String, String> {
    let ok =
        !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "socket name `{s}` must be 1 to 255 printable ASCII characters without ':' or spaces"
        ))
    }
}

/// Where and how a device process is confined.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[command(next_help_heading = "Sandbox")]
pub struct SandboxArgs {
    /// How the device process is confined. `jail`: the device runs in its own user, pid,
    /// mount, network, ipc, uts and cgroup namespaces, as --jail-user, in an empty read-only
    /// root, with rlimits, no capabilities, no_new_privs, a landlock ruleset granting no
    /// filesystem access and a seccomp filter (default action: kill the device). `none`: no
    /// confinement at all, for debugging only; a warning says so on every start.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SandboxMode::Jail)]
    pub sandbox: SandboxMode,

    /// Host user (and group) the jailed device runs as: UID or UID:GID (the group defaults to
    /// the UID). Inside its user namespace it is root without capabilities; outside it is
    /// this user. Give each device its own unused id where possible. A launcher that is not
    /// root can only use its own uid.
    #[arg(
        long,
        value_name = "UID[:GID]",
        default_value = "65534:65534",
        value_parser = parse_jail_user
    )]
    pub jail_user: JailUser,

    /// Seccomp options.
    #[command(flatten)]
    pub seccomp: SeccompArgs,
}

/// Seccomp options. The launcher compiles the policy and passes the filters to the device.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub struct SeccompArgs {
    /// Log system calls the seccomp policy forbids (in the kernel audit log) instead of
    /// killing the device. For policy development only: the filter then stops nothing.
    #[arg(long)]
    pub seccomp_log: bool,

    /// Read the seccomp policies from DIR instead of those built into the binary. DIR has the
    /// layout of jail-policies/x86_64 (block_device.policy and the files it @includes). The
    /// launcher reads and compiles them and hands the filters to the device.
    #[arg(long, value_name = "DIR")]
    pub seccomp_policy_dir: Option<PathBuf>,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// The full jail.
    Jail,
    /// No jail (debugging only).
    None,
}

impl SandboxMode {
    /// As spelled on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Jail => "jail",
            SandboxMode::None => "none",
        }
    }
}

/// `--jail-user UID[:GID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailUser {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

pub fn parse_jail_user(s: &str) -> Result<JailUser, String> {
    let id = |part: &str, what: &str| -> Result<u32, String> {
        let n: u32 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a numeric {what} id"))?;
        if n == u32::MAX {
            return Err(format!("{what} id {n} is not a valid id"));
        }
        Ok(n)
    };
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (id(u, "user")?, id(g, "group")?),
        None => {
            let u = id(s, "user")?;
            (u, u)
        }
    };
    Ok(JailUser { uid, gid })
}

/// Test-only triggers: hidden from --help, and ignored unless the binary was built with debug
/// assertions (release builds never honour them). See `launcher::escape`.
#[derive(Debug, Clone, Default, Args, PartialEq, Eq)]
pub struct TestTriggers {
    /// Run the escape battery in the device: every attempt after all jail layers but seccomp,
    /// then the attempts seccomp answers with an errno after seccomp.
    #[arg(long, hide = true)]
    pub test_escape_battery: bool,

    /// Run one escape attempt in the device after the whole jail, seccomp included.
    #[arg(long, hide = true, value_name = "ATTEMPT", value_enum)]
    pub test_escape: Option<EscapeAttempt>,

    /// Make a forbidden system call in the device after the whole jail.
    #[arg(long, hide = true)]
    pub test_forbidden_syscall: bool,

    /// A host UNIX socket path the escape attempts try to connect to.
    #[arg(long, hide = true, value_name = "PATH")]
    pub test_escape_host_socket: Option<PathBuf>,

    /// A host abstract UNIX socket name (without the leading NUL) the attempts try.
    #[arg(long, hide = true, value_name = "NAME")]
    pub test_escape_host_abstract: Option<String>,

    /// A host process the attempts try to signal and trace.
    #[arg(long, hide = true, value_name = "PID")]
    pub test_escape_host_pid: Option<i32>,

    /// A TCP port listening on the host's 127.0.0.1 that the attempts try to reach.
    #[arg(long, hide = true, value_name = "PORT")]
    pub test_escape_host_port: Option<u16>,
}

impl TestTriggers {
    /// Whether any trigger is set.
    pub fn any(&self) -> bool {
        *self != TestTriggers::default()
    }

    /// The same options as command-line arguments, for the device process.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        if self.test_escape_battery {
            v.push("--test-escape-battery".into());
        }
        if let Some(a) = self.test_escape {
            v.push("--test-escape".into());
            v.push(a.name().into());
        }
        if self.test_forbidden_syscall {
            v.push("--test-forbidden-syscall".into());
        }
        if let Some(p) = &self.test_escape_host_socket {
            v.push("--test-escape-host-socket".into());
            v.push(p.into());
        }
        if let Some(n) = &self.test_escape_host_abstract {
            v.push("--test-escape-host-abstract".into());
            v.push(n.into());
        }
        if let Some(p) = self.test_escape_host_pid {
            v.push("--test-escape-host-pid".into());
            v.push(p.to_string().into());
        }
        if let Some(p) = self.test_escape_host_port {
            v.push("--test-escape-host-port".into());
            v.push(p.to_string().into());
        }
        v
    }
}

pub fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of descriptors"))?;
    if !(u32::from(MIN_QUEUE_SIZE)..=u32::from(MAX_QUEUE_SIZE)).contains(&n) || !n.is_power_of_two()
    {
        return Err(format!(
            "queue size {n} is not a power of two from {MIN_QUEUE_SIZE} to {MAX_QUEUE_SIZE}"
        ));
    }
    u16::try_from(n).map_err(|_| format!("queue size {n} is too large"))
}

/// A device name: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'.
pub fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with(['-', '.']);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "device name `{s}` must be 1 to 64 letters, digits, '-', '_' or '.', not starting \
             with '-' or '.'"
        ))
    }
}
