//! Message framing over a UNIX stream socket, with file descriptors passed as SCM_RIGHTS.

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use zerocopy::{FromBytes, IntoBytes};

use crate::message::{Header, MAX_FDS, MAX_PAYLOAD};

/// Errors while reading or writing framed messages.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("peer closed the connection mid-message")]
    Truncated,
    /// A socket call failed.
    #[error("socket error")]
    Io(#[from] std::io::Error),
    /// recvmsg/sendmsg failed.
    #[error("socket error")]
    Sys(#[from] nix::Error),
    /// The header's version or flags are wrong, or the payload is too large.
    #[error("invalid header: request {request}, flags {flags:#x}, size {size}")]
    BadHeader {
        /// Request code.
        request: u32,
        /// Flags word.
        flags: u32,
        /// Announced payload size.
        size: u32,
    },
    /// More file descriptors arrived than a message may carry.
    #[error("too many file descriptors on one message")]
    TooManyFds,
    /// The kernel truncated the ancillary data.
    #[error("ancillary data truncated")]
    ControlTruncated,
}

/// One received message: header, payload and the file descriptors that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header as received (already validated).
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// File descriptors, owned from the moment they arrive.
    pub fds: Vec<OwnedFd>,
}

/// A framed vhost-user connection.
#[derive(Debug)]
pub struct Connection {
    sock: UnixStream,
}

impl Connection {
    /// Wraps a connected stream socket.
    pub fn new(sock: UnixStream) -> Self {
        Connection { sock }
    }

    /// The underlying socket.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Receives one message. Returns `Closed` on a clean EOF before a header.
    pub fn recv(&mut self) -> Result<Message, ConnectionError> {
        let mut hdr_buf = [0u8; Header::SIZE];
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut got = 0usize;
        // The header, and the descriptors attached to its first byte.
        while got < Header::SIZE {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let (n, truncated) = {
                let mut iov = [IoSliceMut::new(&mut hdr_buf[got..])];
                let msg = match recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                };
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed `fd` in our table for us
                            // via SCM_RIGHTS; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC))
            };
            if truncated {
                return Err(ConnectionError::ControlTruncated);
            }
            if n == 0 {
                return Err(if got == 0 {
                    ConnectionError::Closed
                } else {
                    ConnectionError::Truncated
                });
            }
            got += n;
        }
        if fds.len() > MAX_FDS {
            return Err(ConnectionError::TooManyFds);
        }
        let header = Header::read_from_bytes(&hdr_buf).map_err(|_| ConnectionError::Truncated)?;
        if !header.is_valid() {
            return Err(ConnectionError::BadHeader {
                request: header.request,
                flags: header.flags,
                size: header.size,
            });
        }
        let size = header.size as usize;
        debug_assert!(size <= MAX_PAYLOAD);
        let mut payload = vec![0u8; size];
        let mut off = 0;
        while off < size {
            match self.sock.read(&mut payload[off..]) {
                Ok(0) => return Err(ConnectionError::Truncated),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Message {
            header,
            payload,
            fds,
        })
    }

    /// Sends a header, a payload and optionally file descriptors, in one sendmsg.
    pub fn send(&self, header: &Header, body: &[u8], fds: &[RawFd]) -> Result<(), ConnectionError> {
        let hdr = header.as_bytes();
        let total = hdr.len() + body.len();
        let mut sent = 0usize;
        let mut first = true;
        while sent < total {
            let (a, b): (&[u8], &[u8]) = if sent < hdr.len() {
                (&hdr[sent..], body)
            } else {
                (&body[sent - hdr.len()..], &[])
            };
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            let cmsgs = [ControlMessage::ScmRights(fds)];
            let cm: &[ControlMessage] = if first && !fds.is_empty() {
                &cmsgs
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cm,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => {
                    sent += n;
                    first = false;
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
