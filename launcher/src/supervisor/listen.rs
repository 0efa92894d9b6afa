//! Where each device's listening socket comes from: a path the launcher binds (`--socket`),
//! a listening socket it inherits by number (`--fd`, as libvirt passes one), or a socket
//! systemd passed (socket activation, `crate::systemd::activation`): the one named by
//! `--socket-name` (`socket_name` in a config file), or, for a device that names none, the
//! only one passed.
//!
//! Inherited sockets are claimed before the launcher opens anything of its own, so that no
//! fd it opens can be taken for one, and each is checked: open, an AF_UNIX stream socket,
//! listening. They are made blocking and close-on-exec (the device process receives its
//! socket explicitly), and their files are never removed: the launcher did not create them.
//! Every socket systemd passed must be served by a device, and every name must match one.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use super::socket::SocketFile;
use crate::cli::ListenOn;
use crate::systemd::activation::PassedSocket;

/// Why a device has no listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// An inherited socket cannot be served.
    #[error("device {device}: {what} {problem}")]
    Inherited {
        /// The device.
        device: String,
        /// Which fd ("fd 3", "fd 3 (passed by systemd as \"disk0\")").
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Neither a path nor an fd, and systemd passed nothing.
    #[error(
        "device {0}: no socket: give --socket PATH (`socket` in a config file) or --fd N, or \
         start the launcher with systemd socket activation"
    )]
    NoSocket(String),
    /// Several sockets were passed and the device names none.
    #[error(
        "device {device}: systemd passed {count} sockets ({names}); name the one it serves with \
         --socket-name (`socket_name` in a config file)"
    )]
    Ambiguous {
        /// The device.
        device: String,
        /// How many were passed.
        count: usize,
        /// Their names.
        names: String,
    },
    /// No passed socket has the name.
    #[error("device {device}: systemd passed no socket named {name:?} (passed: {names})")]
    UnknownName {
        /// The device.
        device: String,
        /// The name it asked for.
        name: String,
        /// The names passed.
        names: String,
    },
    /// Another device already serves that socket.
    #[error("device {device}: {what} is already served by device {other}")]
    Taken {
        /// The device.
        device: String,
        /// The socket.
        what: String,
        /// The device that serves it.
        other: String,
    },
    /// Passed sockets no device serves.
    #[error(
        "systemd passed sockets that no device serves: {0} (a device serves one with \
         --socket-name NAME, `socket_name` in a config file; a lone device without --socket \
         or --fd serves the only one)"
    )]
    Unused(String),
}

/// A device's listening socket, as far as it is known before the launcher opens anything.
#[derive(Debug)]
pub enum Listen {
    /// To be bound at this path.
    Bind(PathBuf),
    /// Inherited and checked: the listener and its address (never removed).
    Inherited(UnixListener, SocketFile),
}

/// A passed socket and the device that took it.
struct Slot {
    passed: PassedSocket,
    taken_by: Option<String>,
}

impl Slot {
    fn what(&self) -> String {
        format!(
            "fd {} (passed by systemd as {:?})",
            self.passed.number, self.passed.name
        )
    }
}

/// Decides where each device (`(name, where)`, in order) listens, taking the sockets systemd
/// passed (`passed`) and the inherited fds the devices name. Every passed socket must be
/// taken.
pub fn plan(
    devices: &[(String, ListenOn)],
    passed: Vec<PassedSocket>,
) -> Result<Vec<Listen>, ListenError> {
    let mut p = Planner::new(passed);
    let mut out = Vec::new();
    for (device, on) in devices {
        out.push(match on {
            ListenOn::Path(path) => Listen::Bind(path.clone()),
            ListenOn::Fd(fd) => p.fd(device, *fd)?,
            ListenOn::Activated(Some(name)) => p.named(device, name)?,
            ListenOn::Activated(None) => p.only(device)?,
        });
    }
    let unused: Vec<String> = p
        .slots
        .iter()
        .filter(|s| s.taken_by.is_none())
        .map(Slot::what)
        .collect();
    if !unused.is_empty() {
        return Err(ListenError::Unused(unused.join(", ")));
    }
    Ok(out)
}

/// The inherited sockets, as devices take them.
struct Planner {
    slots: Vec<Slot>,
    /// The names systemd gave, for messages.
    names: String,
    /// Inherited fds (`--fd`) that are not passed sockets, and who took them.
    fds_taken: Vec<(RawFd, String)>,
}

impl Planner {
    fn new(passed: Vec<PassedSocket>) -> Planner {
        let names = passed
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect::<Vec<_>>()
            .join(", ");
        Planner {
            slots: passed
                .into_iter()
                .map(|passed| Slot {
                    passed,
                    taken_by: None,
                })
                .collect(),
            names,
            fds_taken: Vec::new(),
        }
    }

    /// `--fd N`: a passed socket at that number, or any other inherited fd.
    fn fd(&mut self, device: &str, fd: RawFd) -> Result<Listen, ListenError> {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.passed.number == fd) {
            return take_slot(slot, device);
        }
        if let Some((_, other)) = self.fds_taken.iter().find(|(n, _)| *n == fd) {
            return Err(ListenError::Taken {
                device: device.to_string(),
                what: format!("fd {fd}"),
                other: other.clone(),
            });
        }
        let owned = claim_fd(device, fd)?;
        self.fds_taken.push((fd, device.to_string()));
        inherited(device, owned, &format!("fd {fd}"))
    }

    /// `--socket-name NAME`: the passed socket of that name.
    fn named(&mut self, device: &str, name: &str) -> Result<Listen, ListenError> {
        let names = &self.names;
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.passed.name == name)
            .ok_or_else(|| ListenError::UnknownName {
                device: device.to_string(),
                name: name.to_string(),
                names: if names.is_empty() {
                    "none".into()
                } else {
                    names.clone()
                },
            })?;
        take_slot(slot, device)
    }

    /// Neither a path, an fd nor a name: the only passed socket.
    fn only(&mut self, device: &str) -> Result<Listen, ListenError> {
        match &mut self.slots[..] {
            [] => Err(ListenError::NoSocket(device.to_string())),
            [slot] => take_slot(slot, device),
            slots => Err(ListenError::Ambiguous {
                device: device.to_string(),
                count: slots.len(),
                names: self.names.clone(),
            }),
        }
    }
}

/// Takes a passed socket for `device`.
fn take_slot(slot: &mut Slot, device: &str) -> Result<Listen, ListenError> {
    let what = slot.what();
    if let Some(other) = &slot.taken_by {
        return Err(ListenError::Taken {
            device: device.to_string(),
            what,
            other: other.clone(),
        });
    }
    let fd = slot
        .passed
        .fd
        .try_clone()
        .map_err(|e| ListenError::Inherited {
            device: device.to_string(),
            what: what.clone(),
            problem: format!("cannot be duplicated: {e}"),
        })?;
    slot.taken_by = Some(device.to_string());
    inherited(device, fd, &what)
}

/// Takes ownership of inherited fd `fd` (`--fd`), if it is open.
fn claim_fd(device: &str, fd: RawFd) -> Result<OwnedFd, ListenError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is acceptable to the
    // kernel (EBADF for a closed one).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ListenError::Inherited {
            device: device.to_string(),
            what: format!("fd {fd}"),
            problem: "is not open: --fd names a listening socket this process inherits".into(),
        });
    }
    // SAFETY: the fd is open (F_GETFD succeeded) and nothing in the launcher owns it: inherited
    // fds are claimed before the launcher opens any file of its own, each number once
    // (`plan` refuses a number two devices name, and the ones systemd passed are owned there).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks an inherited socket and makes it the device's listener.
fn inherited(device: &str, fd: OwnedFd, what: &str) -> Result<Listen, ListenError> {
    let shown = check_listener(fd.as_fd()).map_err(|problem| ListenError::Inherited {
        device: device.to_string(),
        what: what.to_string(),
        problem,
    })?;
    tracing::info!(device, socket = %shown.display(), "serving the inherited listening socket, {what}");
    Ok(Listen::Inherited(
        UnixListener::from(fd),
        SocketFile::inherited(shown),
    ))
}

/// Checks that `fd` is a listening AF_UNIX stream socket and prepares it (blocking,
/// close-on-exec). Returns its address for messages: the path, `@name` for an abstract one,
/// else `fd N`.
pub fn check_listener(fd: BorrowedFd<'_>) -> Result<PathBuf, String> {
    let n = fd.as_raw_fd();
    let st = fstat(fd).map_err(|e| format!("cannot be inspected: {e}"))?;
    let ty = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if ty != SFlag::S_IFSOCK {
        return Err(format!("is not a socket but {}", file_type(ty)));
    }
    let addr: SockaddrStorage = getsockname(n).map_err(|e| format!("cannot be inspected: {e}"))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(format!(
            "is not a UNIX socket ({:?}); vhost-user runs over AF_UNIX stream sockets",
            addr.family()
        ));
    }
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(t) => return Err(format!("is a {t:?} socket, not a stream socket")),
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err("is not listening: bind it and call listen() before passing it".into())
        }
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| format!("cannot be inspected: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| format!("cannot be made blocking: {e}"))?;
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("cannot be made close-on-exec: {e}"))?;
    let unix = addr.as_unix_addr();
    let shown = match (
        unix.and_then(|u| u.path()),
        unix.and_then(|u| u.as_abstract()),
    ) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(name)) => {
            let mut s = std::ffi::OsString::from("@");
            s.push(std::ffi::OsStr::from_bytes(name));
            PathBuf::from(s)
        }
        _ => PathBuf::from(format!("fd {n}")),
    };
    Ok(shown)
}

fn file_type(ty: SFlag) -> &'static str {
    match ty {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn passed(l: UnixListener, name: &str) -> PassedSocket {
        let fd = OwnedFd::from(l);
        PassedSocket {
            number: fd.as_raw_fd(),
            fd,
            name: name.into(),
        }
    }

    fn listener(dir: &std::path::Path, name: &str) -> UnixListener {
        UnixListener::bind(dir.join(name)).expect("bind")
    }

    #[test]
    fn checks_what_an_inherited_fd_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = listener(dir.path(), "ok.sock");
        l.set_nonblocking(true).expect("nonblocking");
        let shown = check_listener(l.as_fd()).expect("a listening UNIX stream socket");
        assert_eq!(shown, dir.path().join("ok.sock"));
        let fl = fcntl(l.as_fd(), FcntlArg::F_GETFL).expect("getfl");
        assert!(!OFlag::from_bits_truncate(fl).contains(OFlag::O_NONBLOCK));

        let f = std::fs::File::create(dir.path().join("file")).expect("file");
        let e = check_listener(f.as_fd()).expect_err("a file");
        assert!(e.contains("regular file"), "{e}");
        let t = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let e = check_listener(t.as_fd()).expect_err("tcp");
        assert!(e.contains("not a UNIX socket"), "{e}");
        let d = UnixDatagram::bind(dir.path().join("dgram")).expect("dgram");
        let e = check_listener(d.as_fd()).expect_err("datagram");
        assert!(e.contains("not a stream socket"), "{e}");
        let (a, _b) = UnixStream::pair().expect("pair");
        let e = check_listener(a.as_fd()).expect_err("connected");
        assert!(e.contains("not listening"), "{e}");
    }

    #[test]
    fn a_lone_device_takes_the_only_passed_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = passed(listener(dir.path(), "a.sock"), "unknown");
        let plan = plan(&[("block0".into(), ListenOn::Activated(None))], vec![p]).expect("plan");
        let [Listen::Inherited(_, file)] = &plan[..] else {
            panic!("{plan:?}")
        };
        assert_eq!(file.path(), dir.path().join("a.sock"));
        assert!(!file.is_ours());
    }

    #[test]
    fn names_pick_passed_sockets_and_leftovers_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let two = || {
            vec![
                passed(listener(dir.path(), &format!("{}a", rand())), "disk0"),
                passed(listener(dir.path(), &format!("{}b", rand())), "disk1"),
            ]
        };
        let named = |n: &str| ListenOn::Activated(Some(n.into()));
        plan(
            &[("d1".into(), named("disk1")), ("d0".into(), named("disk0"))],
            two(),
        )
        .expect("both named");
        let e = plan(&[("d0".into(), named("disk0"))], two()).expect_err("one unused");
        assert!(
            matches!(&e, ListenError::Unused(s) if s.contains("\"disk1\"")),
            "{e}"
        );
        let e = plan(&[("d0".into(), named("disk9"))], two()).expect_err("no such name");
        assert!(e.to_string().contains("\"disk9\"") && e.to_string().contains("\"disk0\""));
        let e = plan(&[("d0".into(), ListenOn::Activated(None))], two()).expect_err("ambiguous");
        assert!(matches!(e, ListenError::Ambiguous { count: 2, .. }), "{e}");
        let e = plan(
            &[("d0".into(), named("disk0")), ("d1".into(), named("disk0"))],
            two(),
        )
        .expect_err("twice");
        assert!(matches!(e, ListenError::Taken { .. }), "{e}");
        let e = plan(&[("d0".into(), ListenOn::Activated(None))], vec![]).expect_err("none");
        assert!(matches!(e, ListenError::NoSocket(_)), "{e}");
        // A path needs nothing passed, but leaves passed sockets unused.
        let p = PathBuf::from("/x.sock");
        plan(&[("d0".into(), ListenOn::Path(p.clone()))], vec![]).expect("a path");
        let e = plan(&[("d0".into(), ListenOn::Path(p))], two()).expect_err("unused");
        assert!(matches!(e, ListenError::Unused(_)), "{e}");
    }

    #[test]
    fn a_closed_fd_is_refused() {
        let e = plan(&[("d0".into(), ListenOn::Fd(999_999))], vec![]).expect_err("closed");
        assert!(e.to_string().contains("fd 999999 is not open"), "{e}");
    }

    fn rand() -> u32 {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}
