//! The answers a [`super::broker::BrokerServer`] owes its device, held while the device's
//! socket has no room for them (a device slow to read its end, a burst of requests answered
//! at once). They go out in order as room comes back and are never dropped while the device
//! is there: a CONNECTED dropped on the floor would close a host program's freshly accepted
//! stream and leave the guest's connection waiting for an answer that never comes.
//!
//! The queue is bounded by its owner: the server stops reading requests while it holds
//! [`super::broker::BrokerLimits::max_unread`] answers, so a device that never reads holds
//! up only itself (its requests wait in its own bounded queue).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::broker::{send_msg, BrokerCounters, BrokerError, Reply};

/// Errors after which the device's end is gone: nothing held can be delivered any more.
const GONE: [i32; 3] = [libc::EPIPE, libc::ECONNRESET, libc::ENOTCONN];

/// Answers waiting for room in the device's socket, in the order they were made.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    q: VecDeque<(Reply, Option<OwnedFd>)>,
}

impl Answers {
    /// Answers held.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Queues an answer (with the stream a CONNECTED hands over) behind those held.
    pub fn push(&mut self, reply: Reply, fd: Option<OwnedFd>) {
        self.q.push_back((reply, fd));
    }

    /// Sends held answers in order while the socket takes them. An answer the socket
    /// refuses for another reason than lack of room is turned into a FAILED quoting the
    /// error (a CONNECTED's stream is closed), or dropped if it was one already; once the
    /// device's end is gone everything held is dropped. Counters count what was sent and
    /// what was dropped; `held` is kept equal to what is left.
    pub fn deliver(&mut self, sock: BorrowedFd<'_>, counters: &BrokerCounters) {
        while let Some((reply, fd)) = self.q.front_mut() {
            match send_msg(sock, &reply.encode(), fd.as_ref().map(|f| f.as_fd())) {
                Ok(()) => {
                    let c = match reply {
                        Reply::Connected { .. } => Some(&counters.connected),
                        Reply::Failed { .. } => Some(&counters.failed),
                        Reply::SiblingLink { .. } => None,
                    };
                    if let Some(c) = c {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    self.q.pop_front();
                }
                Err(e) => {
                    let errno = match &e {
                        BrokerError::Io(io) => io.raw_os_error().unwrap_or(libc::EIO),
                        _ => libc::EIO,
                    };
                    if errno == libc::EAGAIN || errno == libc::EINTR {
                        break;
                    }
                    if GONE.contains(&errno) {
                        let n = self.q.len() as u64;
                        counters.undelivered.fetch_add(n, Ordering::Relaxed);
                        self.q.clear();
                        break;
                    }
                    vu_core::warn_ratelimited!(error = %e, "vsock broker: an answer the device's socket refused");
                    match *reply {
                        Reply::Connected { id } => {
                            *reply = Reply::Failed { id, errno };
                            *fd = None;
                        }
                        _ => {
                            counters.undelivered.fetch_add(1, Ordering::Relaxed);
                            self.q.pop_front();
                        }
                    }
                }
            }
        }
        counters.held.store(self.q.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsock::broker::{broker_pair, recv_msg};

    fn set_sndbuf(fd: BorrowedFd<'_>, bytes: libc::c_int) {
        // SAFETY: `fd` is an open socket (borrowed) and the option value is a live c_int of
        // the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    #[test]
    fn answers_wait_for_room_and_go_out_in_order() {
        let (dev, parent) = broker_pair().expect("pair");
        set_sndbuf(parent.as_fd(), 1);
        let counters = BrokerCounters::default();
        let mut a = Answers::default();
        for id in 0..50 {
            a.push(Reply::Failed { id, errno: 2 }, None);
        }
        a.deliver(parent.as_fd(), &counters);
        let sent = 50 - a.len();
        assert!(sent > 0 && sent < 50, "the small socket took {sent}");
        assert_eq!(counters.held.load(Ordering::Relaxed), a.len() as u64);
        let mut next = 0;
        while next < 50 {
            while let Some(m) = recv_msg(dev.as_fd()).expect("recv") {
                let r = Reply::decode(&m.bytes).expect("reply");
                assert_eq!(r, Reply::Failed { id: next, errno: 2 });
                next += 1;
            }
            a.deliver(parent.as_fd(), &counters);
        }
        assert!(a.is_empty());
        assert_eq!(counters.failed.load(Ordering::Relaxed), 50);
        assert_eq!(counters.undelivered.load(Ordering::Relaxed), 0);
        assert_eq!(counters.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn answers_for_a_device_that_is_gone_are_dropped() {
        let (dev, parent) = broker_pair().expect("pair");
        let counters = BrokerCounters::default();
        let mut a = Answers::default();
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        a.push(Reply::Connected { id: 1 }, Some(r));
        a.push(Reply::Failed { id: 2, errno: 2 }, None);
        drop(dev);
        a.deliver(parent.as_fd(), &counters);
        assert!(a.is_empty());
        assert_eq!(counters.undelivered.load(Ordering::Relaxed), 2);
        assert_eq!(counters.connected.load(Ordering::Relaxed), 0);
    }
}
