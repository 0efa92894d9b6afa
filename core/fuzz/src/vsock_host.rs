//! The host's side of `vsock_tx`: the broker's parent end (connection requests in, answers
//! with a stream out) and host programs' streams, with what each must carry: the bytes the
//! guest sent on its connection (after the `OK` line a host program that connected through
//! the listener reads first), checked as they arrive, and the bytes it wrote to the guest.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::sys::socket::{
    connect, recv, sendmsg, socket, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use vu_devices::vsock::broker::{Reply, Request, MSG_LEN};

/// The next connection request from the device, if one waits: (request id, port).
pub fn broker_request(parent: BorrowedFd<'_>) -> Result<Option<(u64, u32)>, String> {
    let mut buf = [0u8; MSG_LEN + 1];
    match recv(parent.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => match Request::decode(&buf[..n]) {
            Ok(Request::Connect { id, port }) => Ok(Some((id, port))),
            Err(e) => Err(format!("the device sent a malformed broker request: {e}")),
        },
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(format!("broker recv: {e}")),
    }
}

/// Sends the device an answer (with `fd` when it carries one).
pub fn broker_reply(parent: BorrowedFd<'_>, reply: Reply, fd: Option<BorrowedFd<'_>>) {
    let msg = reply.encode();
    let iov = [IoSlice::new(&msg)];
    let raw: [RawFd; 1] = [fd.map_or(-1, |f| f.as_raw_fd())];
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if fd.is_some() { &rights } else { &[] };
    let n = sendmsg::<()>(
        parent.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .expect("broker answer");
    assert_eq!(n, MSG_LEN, "broker answer sent whole");
}

/// The `n` bytes (at most 64 KiB) host program `stream` writes from position `from` of its
/// stream: a window of a pseudo-random pattern that depends on both, so that bytes
/// delivered out of order, twice, or from another stream differ from what was written. The
/// pattern is not the one the guest's payloads come from (`payload_bytes`), so that guest
/// bytes sent back to the guest cannot pass for a host program's. (A slice, not a
/// byte-by-byte generator: host programs write up to 32 KiB per step, and every iteration
/// of a loop here would be instrumented.)
pub fn host_bytes(stream: usize, from: usize, n: usize) -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    let pattern = P.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..(192 << 10))
            .map(|_| {
                x ^= x << 7;
                x ^= x >> 9;
                (x >> 24) as u8
            })
            .collect()
    });
    let at = stream.wrapping_mul(4099).wrapping_add(from) % (128 << 10);
    &pattern[at..at + n]
}

/// One host program's stream.
#[derive(Debug)]
pub struct HostStream {
    /// (host port, guest port); the host port of a program that connected through the
    /// listener is known once the guest has seen the device's REQUEST.
    pub key: (u32, u32),
    /// Our end (None once closed, or for a program that was gone from the start).
    pub sock: Option<UnixStream>,
    /// It connected through the listener.
    pub host_init: bool,
    /// The `OK <port>\n` line is owed to it (the guest accepted).
    pub ok_line: Option<Vec<u8>>,
    /// What it should receive: the OK line, then the guest's payloads on the connection.
    pub expect: Vec<u8>,
    /// Bytes received so far (matching `expect`).
    pub recv: usize,
    /// What it wrote to the guest.
    pub sent: Vec<u8>,
    /// Bytes of `sent` the guest received.
    pub delivered: usize,
    /// It read end of file.
    pub eof: bool,
}

impl HostStream {
    /// A stream for connection `key`. `sock` must be non-blocking already (`stream_pair`
    /// and `connect_nonblocking` make it so when they create it: an `ioctl` per stream
    /// less, about one per input).
    pub fn new(key: (u32, u32), sock: Option<UnixStream>, host_init: bool) -> Self {
        HostStream {
            key,
            sock,
            host_init,
            ok_line: None,
            expect: Vec::new(),
            recv: 0,
            sent: Vec::new(),
            delivered: 0,
            eof: false,
        }
    }

    /// Reads what has arrived, checking it against `expect`; returns the bytes read.
    pub fn read_all(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let Some(s) = self.sock.as_mut() else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            match s.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(total);
                }
                Ok(n) => {
                    let want = self.expect.get(self.recv..self.recv + n);
                    if want != Some(&buf[..n]) {
                        return Err(format!(
                            "host stream {:?}: bytes {}..{} are not what the guest sent ({} expected in all)",
                            self.key,
                            self.recv,
                            self.recv + n,
                            self.expect.len()
                        ));
                    }
                    self.recv += n;
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return Ok(total);
                }
                Err(e) => return Err(format!("host stream read: {e}")),
            }
        }
    }

    /// Writes up to `n` more bytes toward the guest; returns how many went.
    pub fn write(&mut self, index: usize, n: usize) -> usize {
        let Some(s) = self.sock.as_mut() else {
            return 0;
        };
        let bytes = host_bytes(index, self.sent.len(), n);
        match s.write(bytes) {
            Ok(k) => {
                self.sent.extend_from_slice(&bytes[..k]);
                k
            }
            Err(_) => 0,
        }
    }

    /// The guest received `data` on this connection: it must be the next bytes written.
    pub fn delivered(&mut self, data: &[u8]) -> Result<(), String> {
        let want = self.sent.get(self.delivered..self.delivered + data.len());
        if want != Some(data) {
            return Err(format!(
                "guest received bytes {}..{} on {:?} that the host program did not write ({} written)",
                self.delivered,
                self.delivered + data.len(),
                self.key,
                self.sent.len()
            ));
        }
        self.delivered += data.len();
        Ok(())
    }

    /// Guest payload bytes the program received (without the OK line).
    pub fn data_received(&self) -> usize {
        self.recv - self.ok_len().min(self.recv)
    }

    /// Whether the program received its whole OK line.
    pub fn got_ok(&self) -> bool {
        self.ok_line.is_some() && self.recv >= self.ok_len()
    }

    fn ok_len(&self) -> usize {
        self.ok_line.as_ref().map_or(0, Vec::len)
    }

    /// The guest accepted: the OK line is owed (once).
    pub fn accept(&mut self, host_port: u32) {
        if self.ok_line.is_none() {
            let line = format!("OK {host_port}\n").into_bytes();
            self.expect.extend_from_slice(&line);
            self.ok_line = Some(line);
        }
    }

    /// Shuts the write side.
    pub fn shut_write(&mut self) {
        if let Some(s) = &self.sock {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Closes it (what arrived is read first).
    pub fn close(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.read_all(buf)?;
        self.sock = None;
        Ok(())
    }
}

/// A connected pair: (ours, the device's end as an fd), both non-blocking from the start.
/// The device's end gets a small send buffer, so that guest data waits in the device when the
/// program does not read. (The launcher's broker makes its streams non-blocking too; the
/// device reads each stream's flags and sets O_NONBLOCK only where it is missing.)
pub fn stream_pair() -> (UnixStream, OwnedFd) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let _ = nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::SndBuf, &4096);
    (UnixStream::from(a), b)
}

/// A host program's stream to the listener at `addr`, non-blocking from the start (one
/// `socket` and one `connect`; `UnixStream::connect_addr` and `set_nonblocking` take an
/// `ioctl` more). A blocking `connect` would wait only on a full backlog, where this one
/// fails (`EAGAIN`, and the program is not there) instead. The backlog has not filled in
/// any campaign so far (an input connects 16 programs at most, and a blocking `connect` on
/// a full backlog would have hung the target).
pub fn connect_nonblocking(addr: &UnixAddr) -> Option<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    connect(fd.as_raw_fd(), addr).ok()?;
    Some(UnixStream::from(fd))
}
