//! The broker: how a jailed vsock device gets the host connections it may not make itself.
//!
//! The device opens no paths. The (unjailed) parent holds one end of a SOCK_SEQPACKET
//! socketpair, the device the other. Each message is one fixed 24-byte record ([`MSG_LEN`]):
//!
//! | kind | direction | `id` | `arg` | fd |
//! |---|---|---|---|---|
//! | CONNECT (1) | device to parent | request id | port | none |
//! | CONNECTED (2) | parent to device | request id | 0 | the connected stream |
//! | FAILED (3) | parent to device | request id | errno | none |
//! | SIBLING_LINK (4) | parent to device | 0 | the sibling's CID | a SOCK_SEQPACKET link |
//!
//! The parent ([`BrokerServer`]) connects to exactly `<uds-path>_<decimal port>` and to
//! nothing else, without blocking (a listener whose backlog is full is retried until a
//! deadline), and treats every byte from the device as hostile: a message must be exactly one
//! record of a known kind with its reserved field zero, fds sent by the device are closed,
//! and it answers each request once, without ever blocking on the device. Answers the
//! device's socket has no room for wait, in order, until it reads ([`super::answers`]);
//! while [`BrokerLimits::max_unread`] wait, the server reads no more requests.
//!
//! Sibling links: the supervisor pairs two devices of a group with a SOCK_SEQPACKET
//! socketpair ([`link_pair`]) and hands each end to its device with SIBLING_LINK
//! ([`LinkSender`]); a new link for a CID replaces the old one (a respawned sibling).

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, recvmsg, sendmsg, socket, socketpair, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::answers::Answers;
use super::packet::valid_guest_cid;

/// Size of every broker message.
pub const MSG_LEN: usize = 24;

/// Message kinds.
pub mod kind {
    /// Device asks for a connection to `<uds-path>_<arg>`.
    pub const CONNECT: u32 = 1;
    /// Parent answers with the connected stream.
    pub const CONNECTED: u32 = 2;
    /// Parent answers that the connection failed (`arg`: errno).
    pub const FAILED: u32 = 3;
    /// Parent hands over a link to the sibling with CID `arg`.
    pub const SIBLING_LINK: u32 = 4;
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Wire {
    kind: u32,
    reserved: u32,
    id: u64,
    arg: u64,
}

const _: () = assert!(std::mem::size_of::<Wire>() == MSG_LEN);

/// Broker errors.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A message that is not one well-formed record.
    #[error("malformed broker message: {0}")]
    Malformed(&'static str),
    /// A message came with the wrong number of file descriptors.
    #[error("broker message {kind} came with {got} file descriptors, expected {want}")]
    Fds {
        /// Message kind.
        kind: u32,
        /// Descriptors received.
        got: usize,
        /// Descriptors expected.
        want: usize,
    },
    /// The other end has closed.
    #[error("the other end of the broker socket has closed")]
    Closed,
    /// A socket operation failed.
    #[error("broker socket I/O failed")]
    Io(#[source] io::Error),
}

impl From<Errno> for BrokerError {
    fn from(e: Errno) -> Self {
        BrokerError::Io(e.into())
    }
}

/// What a device asks of its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Connect to `<uds-path>_<port>`; answer quoting `id`.
    Connect {
        /// Request id, echoed in the answer.
        id: u64,
        /// Host port.
        port: u32,
    },
}

/// What a parent tells its device (the fd travels alongside, see [`Reply::carries_fd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The connection for request `id` is made; its stream comes with the message.
    Connected {
        /// Request id.
        id: u64,
    },
    /// The connection for request `id` failed with `errno`.
    Failed {
        /// Request id.
        id: u64,
        /// Why (a positive errno).
        errno: i32,
    },
    /// A link to the sibling with `peer_cid` comes with the message.
    SiblingLink {
        /// The sibling's guest CID.
        peer_cid: u64,
    },
}

fn wire(b: &[u8]) -> Result<Wire, BrokerError> {
    if b.len() != MSG_LEN {
        return Err(BrokerError::Malformed("wrong length"));
    }
    let w = Wire::read_from_bytes(b).map_err(|_| BrokerError::Malformed("wrong length"))?;
    if w.reserved != 0 {
        return Err(BrokerError::Malformed("reserved field is not zero"));
    }
    Ok(w)
}

fn encode(kind: u32, id: u64, arg: u64) -> [u8; MSG_LEN] {
    let mut out = [0u8; MSG_LEN];
    out.copy_from_slice(
        Wire {
            kind,
            reserved: 0,
            id,
            arg,
        }
        .as_bytes(),
    );
    out
}

impl Request {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        match *self {
            Request::Connect { id, port } => encode(kind::CONNECT, id, u64::from(port)),
        }
    }

    /// Parses one message from a device: exactly one record, a known kind, a port that
    /// fits in 32 bits.
    pub fn decode(b: &[u8]) -> Result<Request, BrokerError> {
        let w = wire(b)?;
        match w.kind {
            kind::CONNECT => {
                let port = u32::try_from(w.arg).map_err(|_| BrokerError::Malformed("port"))?;
                Ok(Request::Connect { id: w.id, port })
            }
            _ => Err(BrokerError::Malformed("unknown request kind")),
        }
    }
}

impl Reply {
    /// The wire bytes.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        match *self {
            Reply::Connected { id } => encode(kind::CONNECTED, id, 0),
            Reply::Failed { id, errno } => {
                encode(kind::FAILED, id, u64::from(errno.unsigned_abs()))
            }
            Reply::SiblingLink { peer_cid } => encode(kind::SIBLING_LINK, 0, peer_cid),
        }
    }

    /// Parses one message from a parent.
    pub fn decode(b: &[u8]) -> Result<Reply, BrokerError> {
        let w = wire(b)?;
        match w.kind {
            kind::CONNECTED if w.arg == 0 => Ok(Reply::Connected { id: w.id }),
            kind::FAILED => {
                let errno = i32::try_from(w.arg)
                    .ok()
                    .filter(|e| *e > 0)
                    .ok_or(BrokerError::Malformed("errno"))?;
                Ok(Reply::Failed { id: w.id, errno })
            }
            kind::SIBLING_LINK if w.id == 0 && valid_guest_cid(w.arg) => {
                Ok(Reply::SiblingLink { peer_cid: w.arg })
            }
            _ => Err(BrokerError::Malformed("unknown or inconsistent reply")),
        }
    }

    /// Whether the message carries a file descriptor.
    pub fn carries_fd(&self) -> bool {
        !matches!(self, Reply::Failed { .. })
    }
}

/// A SOCK_SEQPACKET socketpair for the broker channel: (device end, parent end).
pub fn broker_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    seqpacket_pair()
}

/// A SOCK_SEQPACKET socketpair linking two sibling devices, one end for each.
pub fn link_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    seqpacket_pair()
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends one message (with `fd` if given) without blocking.
pub(crate) fn send_msg(
    sock: BorrowedFd<'_>,
    msg: &[u8; MSG_LEN],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), BrokerError> {
    let iov = [IoSlice::new(msg)];
    let raw: [RawFd; 1] = [fd.map(|f| f.as_raw_fd()).unwrap_or(-1)];
    let cmsgs: &[ControlMessage] = if fd.is_some() {
        &[ControlMessage::ScmRights(&raw)]
    } else {
        &[]
    };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None)?;
    if n != MSG_LEN {
        return Err(BrokerError::Malformed("short send"));
    }
    Ok(())
}

/// One received message: its bytes (possibly the wrong length), whether it was truncated,
/// and every descriptor that came with it (owned, so dropping closes them).
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one message without blocking: `Ok(None)` when none is waiting,
/// `Err(Closed)` when the other end has closed. Longer messages and truncated descriptor
/// lists are reported as malformed (their descriptors closed).
pub(crate) fn recv_msg(sock: BorrowedFd<'_>) -> Result<Option<Received>, BrokerError> {
    let mut buf = [0u8; MSG_LEN + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
        Ok(m) => m,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(Errno::ECONNRESET) => return Err(BrokerError::Closed),
        Err(e) => return Err(e.into()),
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed `r` in our table for this message
                    // (SCM_RIGHTS); nothing else refers to it, so we take ownership.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if n == 0 && fds.is_empty() && !truncated {
        return Err(BrokerError::Closed);
    }
    if truncated {
        return Err(BrokerError::Malformed("message too long"));
    }
    Ok(Some(Received {
        bytes: buf[..n].to_vec(),
        fds,
    }))
}

/// Hands sibling links to one device (cloneable; usable from any thread while a
/// [`BrokerServer`] serves the same device).
#[derive(Debug, Clone)]
pub struct LinkSender {
    sock: Arc<OwnedFd>,
}

impl LinkSender {
    /// Gives the device its end of a link to the sibling whose guest CID is `peer_cid`.
    pub fn send_sibling_link(
        &self,
        peer_cid: u64,
        link: BorrowedFd<'_>,
    ) -> Result<(), BrokerError> {
        if !valid_guest_cid(peer_cid) {
            return Err(BrokerError::Malformed("sibling CID"));
        }
        send_msg(
            self.sock.as_fd(),
            &Reply::SiblingLink { peer_cid }.encode(),
            Some(link),
        )
    }
}

/// Limits of a [`BrokerServer`].
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// How long a connection may be retried while the listener's backlog is full.
    pub connect_timeout: Duration,
    /// Requests being retried at once; more are refused with EAGAIN.
    pub max_pending: usize,
    /// Answers held for a device that is not reading them as fast as they come (each
    /// CONNECTED holds its stream); while this many are held no more requests are read, so
    /// at most `max_unread + max_pending` are ever held.
    pub max_unread: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            connect_timeout: Duration::from_secs(2),
            max_pending: 64,
            max_unread: 256,
        }
    }
}

/// What a [`BrokerServer`] did, for the parent's logs and tests.
#[derive(Debug, Default)]
pub struct BrokerCounters {
    /// Connections made and handed over.
    pub connected: AtomicU64,
    /// Requests answered with FAILED.
    pub failed: AtomicU64,
    /// Malformed messages from the device (dropped).
    pub malformed: AtomicU64,
    /// Answers dropped: the device's end was gone, or its socket refused them.
    pub undelivered: AtomicU64,
    /// Answers held now, waiting for the device to read (see [`BrokerLimits::max_unread`]).
    pub held: AtomicU64,
}

struct Pending {
    id: u64,
    port: u32,
    deadline: Instant,
    next_try: Instant,
    delay: Duration,
}

/// The parent's side of one device's broker: serves CONNECT requests on a thread of the
/// parent until the device's end closes or [`BrokerServer::stopper`] is signalled.
#[derive(Debug)]
pub struct BrokerServer {
    sock: Arc<OwnedFd>,
    uds_path: PathBuf,
    limits: BrokerLimits,
    stop: Arc<EventFd>,
    counters: Arc<BrokerCounters>,
}

impl BrokerServer {
    /// A server for the device at the other end of `parent_end` (see [`broker_pair`]),
    /// connecting to `<uds_path>_<port>`.
    pub fn new(parent_end: OwnedFd, uds_path: impl AsRef<Path>) -> Result<Self, BrokerError> {
        Self::with_limits(parent_end, uds_path, BrokerLimits::default())
    }

    /// As [`BrokerServer::new`], with explicit limits.
    pub fn with_limits(
        parent_end: OwnedFd,
        uds_path: impl AsRef<Path>,
        limits: BrokerLimits,
    ) -> Result<Self, BrokerError> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BrokerError::Io)?;
        Ok(BrokerServer {
            sock: Arc::new(parent_end),
            uds_path: uds_path.as_ref().to_path_buf(),
            limits,
            stop: Arc::new(stop),
            counters: Arc::new(BrokerCounters::default()),
        })
    }

    /// A handle that hands sibling links to this device.
    pub fn link_sender(&self) -> LinkSender {
        LinkSender {
            sock: self.sock.clone(),
        }
    }

    /// An eventfd that stops [`BrokerServer::run`] when written.
    pub fn stopper(&self) -> Arc<EventFd> {
        self.stop.clone()
    }

    /// Counters, readable while the server runs.
    pub fn counters(&self) -> Arc<BrokerCounters> {
        self.counters.clone()
    }

    /// The path a request for `port` connects to: `<uds-path>_<decimal port>`.
    pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
        let mut p = OsString::from(uds_path.as_os_str());
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Serves requests until the device's end closes (Ok) or the stopper is written (Ok).
    pub fn run(self) -> Result<(), BrokerError> {
        let mut pending: Vec<Pending> = Vec::new();
        let mut answers = Answers::default();
        loop {
            let timeout = next_timeout(&pending);
            let reading = answers.len() < self.limits.max_unread;
            if !self.wait(timeout, reading, !answers.is_empty())? {
                return Ok(());
            }
            self.retry(&mut pending, &mut answers);
            self.deliver(&mut answers);
            while answers.len() < self.limits.max_unread {
                match recv_msg(self.sock.as_fd()) {
                    Ok(Some(m)) => self.handle(m, &mut pending, &mut answers),
                    Ok(None) => break,
                    Err(BrokerError::Closed) => return Ok(()),
                    Err(BrokerError::Malformed(why)) => self.malformed(why),
                    Err(e) => return Err(e),
                }
                self.deliver(&mut answers);
            }
        }
    }

    fn deliver(&self, answers: &mut Answers) {
        if !answers.is_empty() {
            answers.deliver(self.sock.as_fd(), &self.counters);
        }
    }

    /// Waits for the socket (readable while `reading`, writable while `writing`), the
    /// stopper or `timeout`; false when it is time to stop. A device that hung up wakes
    /// the wait either way.
    fn wait(
        &self,
        timeout: Option<Duration>,
        reading: bool,
        writing: bool,
    ) -> Result<bool, BrokerError> {
        let mut events = 0;
        if reading {
            events |= libc::POLLIN;
        }
        if writing {
            events |= libc::POLLOUT;
        }
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, 60_000) as libc::c_int);
        // SAFETY: `fds` is a live array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(BrokerError::Io(e));
        }
        Ok(fds[1].revents == 0)
    }

    fn malformed(&self, why: &'static str) {
        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
        vu_core::warn_ratelimited!(
            reason = why,
            "vsock broker: malformed message from the device dropped"
        );
    }

    fn handle(&self, m: Received, pending: &mut Vec<Pending>, answers: &mut Answers) {
        if !m.fds.is_empty() {
            // The device has no business sending descriptors; they close with `m`.
            return self.malformed("file descriptors from the device");
        }
        let Request::Connect { id, port } = match Request::decode(&m.bytes) {
            Ok(r) => r,
            Err(BrokerError::Malformed(why)) => return self.malformed(why),
            Err(_) => return self.malformed("undecodable"),
        };
        match try_connect(&Self::port_path(&self.uds_path, port)) {
            Attempt::Done(fd) => answers.push(Reply::Connected { id }, Some(fd)),
            Attempt::Failed(errno) => answers.push(Reply::Failed { id, errno }, None),
            Attempt::Retry if pending.len() < self.limits.max_pending => {
                let now = Instant::now();
                pending.push(Pending {
                    id,
                    port,
                    deadline: now + self.limits.connect_timeout,
                    next_try: now + RETRY_FIRST,
                    delay: RETRY_FIRST,
                });
            }
            Attempt::Retry => answers.push(
                Reply::Failed {
                    id,
                    errno: libc::EAGAIN,
                },
                None,
            ),
        }
    }

    fn retry(&self, pending: &mut Vec<Pending>, answers: &mut Answers) {
        let now = Instant::now();
        pending.retain_mut(|p| {
            if p.next_try > now {
                return true;
            }
            let id = p.id;
            match try_connect(&Self::port_path(&self.uds_path, p.port)) {
                Attempt::Done(fd) => answers.push(Reply::Connected { id }, Some(fd)),
                Attempt::Failed(errno) => answers.push(Reply::Failed { id, errno }, None),
                Attempt::Retry if now >= p.deadline => answers.push(
                    Reply::Failed {
                        id,
                        errno: libc::ETIMEDOUT,
                    },
                    None,
                ),
                Attempt::Retry => {
                    p.delay = (p.delay * 2).min(RETRY_MAX);
                    p.next_try = (now + p.delay).min(p.deadline);
                    return true;
                }
            }
            false
        });
    }
}

const RETRY_FIRST: Duration = Duration::from_millis(5);
const RETRY_MAX: Duration = Duration::from_millis(100);

fn next_timeout(pending: &[Pending]) -> Option<Duration> {
    let now = Instant::now();
    pending
        .iter()
        .map(|p| p.next_try.saturating_duration_since(now))
        .min()
}

enum Attempt {
    Done(OwnedFd),
    Failed(i32),
    Retry,
}

/// One non-blocking connect to a UNIX stream socket at `path`. AF_UNIX connects complete
/// at once or fail; EAGAIN means the listener's backlog is full.
fn try_connect(path: &Path) -> Attempt {
    let addr = match UnixAddr::new(path) {
        Ok(a) => a,
        Err(e) => return Attempt::Failed(e as i32),
    };
    let fd = match socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return Attempt::Failed(e as i32),
    };
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Attempt::Done(fd),
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => Attempt::Retry,
        Err(e) => Attempt::Failed(e as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_garbage() {
        let r = Request::Connect { id: 7, port: 1234 };
        assert_eq!(Request::decode(&r.encode()).ok(), Some(r));
        let mut b = r.encode();
        b[4] = 1; // reserved
        assert!(Request::decode(&b).is_err());
        let b = encode(kind::CONNECT, 1, u64::from(u32::MAX) + 1);
        assert!(Request::decode(&b).is_err());
        for k in [0, kind::CONNECTED, kind::FAILED, kind::SIBLING_LINK, 99] {
            assert!(Request::decode(&encode(k, 1, 1)).is_err(), "kind {k}");
        }
        assert!(Request::decode(&r.encode()[..23]).is_err());
        let mut long = r.encode().to_vec();
        long.push(0);
        assert!(Request::decode(&long).is_err());
        assert!(Request::decode(&[]).is_err());
    }

    #[test]
    fn replies_round_trip_and_refuse_garbage() {
        for r in [
            Reply::Connected { id: 9 },
            Reply::Failed { id: 9, errno: 111 },
            Reply::SiblingLink { peer_cid: 4 },
        ] {
            assert_eq!(Reply::decode(&r.encode()).ok(), Some(r));
        }
        assert!(Reply::decode(&encode(kind::CONNECTED, 1, 5)).is_err());
        assert!(Reply::decode(&encode(kind::FAILED, 1, 0)).is_err());
        assert!(Reply::decode(&encode(kind::FAILED, 1, 1 << 40)).is_err());
        assert!(Reply::decode(&encode(kind::SIBLING_LINK, 0, 2)).is_err());
        assert!(Reply::decode(&encode(kind::SIBLING_LINK, 3, 5)).is_err());
        assert!(Reply::decode(&encode(kind::CONNECT, 1, 1)).is_err());
        assert!(Reply::Connected { id: 1 }.carries_fd());
        assert!(!Reply::Failed { id: 1, errno: 2 }.carries_fd());
    }

    #[test]
    fn port_paths() {
        let p = BrokerServer::port_path(Path::new("/run/vm1/v.sock"), 52);
        assert_eq!(p, PathBuf::from("/run/vm1/v.sock_52"));
        let p = BrokerServer::port_path(Path::new("x"), u32::MAX);
        assert_eq!(p, PathBuf::from("x_4294967295"));
    }
}
