//! The hand-framed front-end: 12-byte header + payload, fds as SCM_RIGHTS, replies and acks
//! read and checked.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{feat, read_u32, read_u64, req, FLAG_NEED_REPLY, FLAG_REPLY, TIMEOUT, VERSION};

/// A message received from the back-end.
#[derive(Debug)]
pub struct Received {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Received {
    /// Asserts this is a well-formed reply to `request` with a payload of `len` bytes.
    pub fn assert_reply(&self, request: u32, len: usize) {
        assert_eq!(self.request, request, "reply echoes the request code");
        assert_eq!(
            self.flags,
            VERSION | FLAG_REPLY,
            "reply flags: version 1 and REPLY, nothing else"
        );
        assert_eq!(self.size as usize, len, "reply size for request {request}");
        assert_eq!(self.payload.len(), len);
    }
}

/// Outcome of reading from a socket the server may have closed.
#[derive(Debug)]
pub enum ReadOutcome {
    Message(Received),
    Closed,
}

/// Front-end side of the connection, framing messages by hand.
#[derive(Debug)]
pub struct Frontend {
    sock: UnixStream,
}

impl Frontend {
    pub fn new(sock: UnixStream) -> Self {
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        sock.set_write_timeout(Some(TIMEOUT))
            .expect("write timeout");
        Frontend { sock }
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Raw bytes with optional fds attached to the first byte. Errors are returned, not
    /// panicked on: after a protocol error the server may already have closed.
    pub fn try_send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = [IoSlice::new(&bytes[sent..])];
            let cmsgs = [ControlMessage::ScmRights(fds)];
            let cm: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
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
                Ok(n) => sent += n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) {
        self.try_send_raw(bytes, fds).expect("send to the back-end");
    }

    /// Header (request, flags, size) + payload.
    pub fn frame(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + payload.len());
        b.extend_from_slice(&request.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        b.extend_from_slice(payload);
        b
    }

    pub fn send_flags(&self, request: u32, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.send_raw(&Self::frame(request, flags, payload), &raw);
    }

    /// A request without NEED_REPLY.
    pub fn send(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_flags(request, VERSION, payload, fds);
    }

    /// A request with NEED_REPLY.
    pub fn send_need_reply(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_flags(request, VERSION | FLAG_NEED_REPLY, payload, fds);
    }

    /// Reads one message or EOF/ECONNRESET (the server closed). Panics on timeout.
    pub fn read(&self) -> ReadOutcome {
        let mut hdr = [0u8; 12];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < hdr.len() {
            let mut cmsg = nix::cmsg_space!([RawFd; 8]);
            let mut iov = [IoSliceMut::new(&mut hdr[got..])];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) if got == 0 => return ReadOutcome::Closed,
                Err(nix::Error::EAGAIN) => {
                    panic!("no message from the back-end within {TIMEOUT:?}")
                }
                Err(e) => panic!("recvmsg: {e}"),
            };
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` for us via SCM_RIGHTS and
                        // nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if msg.bytes == 0 {
                assert_eq!(got, 0, "back-end closed in the middle of a header");
                return ReadOutcome::Closed;
            }
            got += msg.bytes;
        }
        let request = read_u32(&hdr[0..]);
        let flags = read_u32(&hdr[4..]);
        let size = read_u32(&hdr[8..]);
        assert!(size <= 4096, "back-end sent a {size}-byte payload");
        let mut payload = vec![0u8; size as usize];
        (&self.sock)
            .read_exact(&mut payload)
            .expect("read the reply payload");
        ReadOutcome::Message(Received {
            request,
            flags,
            size,
            payload,
            fds,
        })
    }

    /// Reads one message; panics if the server closed instead.
    pub fn recv(&self) -> Received {
        match self.read() {
            ReadOutcome::Message(m) => m,
            ReadOutcome::Closed => panic!("back-end closed the connection"),
        }
    }

    /// Reads a REPLY_ACK for `request` and returns its value.
    pub fn recv_ack(&self, request: u32) -> u64 {
        let m = self.recv();
        m.assert_reply(request, 8);
        assert!(m.fds.is_empty(), "an ack carries no fds");
        read_u64(&m.payload)
    }

    /// Sends `request` with NEED_REPLY and expects a zero (success) ack.
    pub fn ok(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_need_reply(request, payload, fds);
        assert_eq!(self.recv_ack(request), 0, "request {request} was refused");
    }

    /// Sends `request` with NEED_REPLY and expects a non-zero (failure) ack.
    pub fn refused(&self, request: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        self.send_need_reply(request, payload, fds);
        assert_ne!(
            self.recv_ack(request),
            0,
            "malformed request {request} was acknowledged as a success"
        );
    }

    /// Sends a request that has an explicit reply and returns that reply, checked.
    pub fn call(
        &self,
        request: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        reply_len: usize,
    ) -> Received {
        self.send(request, payload, fds);
        let m = self.recv();
        m.assert_reply(request, reply_len);
        m
    }

    /// GET_FEATURES and the offered value. Used as a barrier: since the back-end handles
    /// messages in order, a GET_FEATURES reply arriving next proves nothing else (no
    /// stray ack) was sent before it.
    pub fn sync(&self) {
        self.send(req::GET_FEATURES, &[], &[]);
        let m = self.recv();
        assert_eq!(
            m.request,
            req::GET_FEATURES,
            "an unexpected message arrived before the GET_FEATURES reply"
        );
        m.assert_reply(req::GET_FEATURES, 8);
        assert_eq!(read_u64(&m.payload), feat::OFFERED);
    }

    /// Asserts that the back-end closed the connection.
    pub fn expect_closed(&self) {
        match self.read() {
            ReadOutcome::Closed => {}
            ReadOutcome::Message(m) => panic!(
                "expected the back-end to close; got request {} flags {:#x} size {}",
                m.request, m.flags, m.size
            ),
        }
    }

    /// Half-closes our side: the back-end sees EOF.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// Writes through `std::io::Write` (no fds), for fragmented sends.
    pub fn write_all(&self, bytes: &[u8]) {
        (&self.sock).write_all(bytes).expect("write");
    }
}
