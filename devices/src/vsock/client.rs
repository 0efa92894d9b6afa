//! The device's side of the broker (see [`super::broker`]): asks the parent for host
//! connections and takes its answers and sibling links.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::broker::{recv_msg, send_msg, BrokerError, Reply, Request, MSG_LEN};

/// Requests waiting for room in the broker socket, at most (the table's limit on pending
/// requests keeps it far from this).
const MAX_OUTBOX: usize = 4096;

/// The device's end of the broker socket.
#[derive(Debug)]
pub(crate) struct BrokerClient {
    sock: OwnedFd,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Requests the socket had no room for, in order; sent when it drains
    /// ([`BrokerClient::flush`]).
    outbox: Mutex<VecDeque<[u8; MSG_LEN]>>,
}

impl BrokerClient {
    /// Wraps the device's end (made non-blocking).
    pub fn new(sock: OwnedFd) -> std::io::Result<Self> {
        super::iov::set_nonblocking(sock.as_fd())?;
        Ok(BrokerClient {
            sock,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            outbox: Mutex::new(VecDeque::new()),
        })
    }

    /// A fresh request id (record the request before sending it: the answer may come
    /// before `connect` returns).
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks for a connection to host port `port`, quoting request `id`. When the socket
    /// is full the request waits in order for [`BrokerClient::flush`].
    pub fn connect(&self, id: u64, port: u32) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        let msg = Request::Connect { id, port }.encode();
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if outbox.is_empty() {
            match self.send(&msg) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        if outbox.len() >= MAX_OUTBOX {
            return Err(BrokerError::Io(std::io::ErrorKind::WouldBlock.into()));
        }
        outbox.push_back(msg);
        Ok(())
    }

    /// Sends requests that waited for room, as far as the socket takes them.
    pub fn flush(&self) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(msg) = outbox.front() {
            match self.send(msg) {
                Ok(true) => {
                    outbox.pop_front();
                }
                Ok(false) => return,
                Err(_) => {
                    // The parent is gone; the requests' connections time out in the guest.
                    outbox.clear();
                    return;
                }
            }
        }
    }

    /// One message: Ok(false) when the socket has no room.
    fn send(&self, msg: &[u8; MSG_LEN]) -> Result<bool, BrokerError> {
        match send_msg(self.sock.as_fd(), msg, None) {
            Ok(()) => Ok(true),
            Err(BrokerError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => {
                if let BrokerError::Io(io) = &e {
                    if io.raw_os_error() == Some(libc::EPIPE) {
                        self.closed.store(true, Ordering::Release);
                    }
                }
                Err(e)
            }
        }
    }

    /// The next answer or link, if one is waiting. A reply with the wrong descriptors is
    /// malformed (its descriptors are closed).
    pub fn recv(&self) -> Result<Option<(Reply, Option<OwnedFd>)>, BrokerError> {
        let Some(mut m) = recv_msg(self.sock.as_fd()).inspect_err(|e| {
            if matches!(e, BrokerError::Closed) {
                self.closed.store(true, Ordering::Release);
            }
        })?
        else {
            return Ok(None);
        };
        let reply = Reply::decode(&m.bytes)?;
        let want = usize::from(reply.carries_fd());
        if m.fds.len() != want {
            return Err(BrokerError::Fds {
                kind: u32::from_ne_bytes([m.bytes[0], m.bytes[1], m.bytes[2], m.bytes[3]]),
                got: m.fds.len(),
                want,
            });
        }
        Ok(Some((reply, m.fds.pop())))
    }

    /// Whether the parent's end has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl AsRawFd for BrokerClient {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
