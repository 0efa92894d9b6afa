//! Socket I/O straight between guest buffers and host sockets: iovecs naming the segments of
//! a descriptor chain, `readv` into them and `sendmsg` from them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vu_core::Segment;

/// iovecs naming guest buffers (and, for one call, a header of ours). Capacity is kept, so
/// the hot path does not allocate once warmed up.
#[derive(Debug, Default)]
pub(crate) struct IoVecs {
    v: Vec<libc::iovec>,
}

// SAFETY: `IoVecs` only stores addresses and lengths; it never dereferences them. They are
// handed to the kernel by the thread that owns the queue handler, while the chain whose
// segments they name is held (not yet completed), which keeps that guest memory mapped.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Names `len` bytes of `segs` starting `skip` bytes in; returns how many it named
    /// (fewer if the segments end first).
    pub(crate) fn set(&mut self, segs: &[Segment], skip: u32, len: u32) -> u32 {
        self.v.clear();
        self.append(segs, skip, len)
    }

    /// As [`IoVecs::set`], after the iovecs already named.
    pub(crate) fn append(&mut self, segs: &[Segment], mut skip: u32, len: u32) -> u32 {
        let mut left = len;
        for s in segs {
            if left == 0 {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let n = (s.len - skip).min(left);
            self.v.push(libc::iovec {
                iov_base: (s.host + skip as usize) as *mut libc::c_void,
                iov_len: n as usize,
            });
            left -= n;
            skip = 0;
        }
        len - left
    }
}

impl IoVecs {
    /// How many iovecs are named.
    pub(crate) fn len(&self) -> usize {
        self.v.len()
    }

    /// Keeps the first `n` iovecs.
    pub(crate) fn truncate(&mut self, n: usize) {
        self.v.truncate(n);
    }
}

/// Makes `fd` non-blocking with fcntl (the device's seccomp policy has no ioctl for it); one
/// call if it is already.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL only reads the status flags of a descriptor the caller holds open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        // As the broker makes its streams.
        return Ok(());
    }
    // SAFETY: F_SETFL only changes the status flags of that descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts a connection on `listener` already non-blocking (and close-on-exec), with one
/// `accept4` instead of an `accept` and an fcntl pair.
pub(crate) fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<UnixStream> {
    // SAFETY: accept4 on a descriptor the caller holds open; null address pointers ask for
    // no peer address. A descriptor it returns is new and has no other owner.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4: open, a stream socket, owned by nobody else.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads from `fd` into the buffers `iov` names.
pub(crate) fn readv(fd: BorrowedFd<'_>, iov: &IoVecs) -> io::Result<usize> {
    if iov.v.is_empty() {
        return Ok(0);
    }
    loop {
        // SAFETY: every iovec names writable guest memory that the caller's held chain
        // keeps mapped for the duration of the call (`IoVecs::set` built them from the
        // chain's writable segments, inside one mapped region each); `fd` is open
        // (borrowed).
        let n = unsafe {
            libc::readv(
                fd.as_raw_fd(),
                iov.v.as_ptr(),
                iov.v.len().min(libc::c_int::MAX as usize) as libc::c_int,
            )
        };
        match result(n) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sends `head` (if not empty) followed by the buffers `iov` names, without blocking and
/// without SIGPIPE. Returns the bytes sent.
pub(crate) fn send(fd: BorrowedFd<'_>, head: &[u8], iov: &mut IoVecs) -> io::Result<usize> {
    if !head.is_empty() {
        iov.v.insert(
            0,
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
        );
    }
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.v.as_mut_ptr();
    msg.msg_iovlen = iov.v.len();
    // SAFETY: `msg` names `iov.v`, whose entries point at `head` (borrowed for this call)
    // and at guest memory the caller's held chain keeps mapped; sendmsg only reads them.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if !head.is_empty() {
        iov.v.remove(0);
    }
    result(n)
}

/// Sends bytes of ours without blocking and without SIGPIPE.
pub(crate) fn send_bytes(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a live slice for the duration of the call; send only reads it.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    result(n)
}

/// Receives into `buf` without blocking; with `peek` the data stays queued. For a
/// SEQPACKET socket the result is the message's full length even if `buf` was shorter
/// (MSG_TRUNC).
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    peek: bool,
    trunc: bool,
) -> io::Result<usize> {
    let mut flags = libc::MSG_DONTWAIT;
    if peek {
        flags |= libc::MSG_PEEK;
    }
    if trunc {
        flags |= libc::MSG_TRUNC;
    }
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes for the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            flags,
        )
    };
    result(n)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn set_skips_and_limits() {
        let segs = [
            Segment {
                addr: 0,
                len: 30,
                writable: true,
                host: 0x1000,
            },
            Segment {
                addr: 0,
                len: 100,
                writable: true,
                host: 0x5000,
            },
        ];
        let mut v = IoVecs::default();
        assert_eq!(v.set(&segs, 44, 50), 50);
        assert_eq!(v.v.len(), 1);
        assert_eq!(v.v[0].iov_base as usize, 0x5000 + 14);
        assert_eq!(v.v[0].iov_len, 50);
        assert_eq!(v.set(&segs, 10, 1000), 120);
        assert_eq!(v.v.len(), 2);
        assert_eq!(v.v[0].iov_base as usize, 0x1000 + 10);
        assert_eq!(v.v[1].iov_len, 100);
        assert_eq!(v.set(&segs, 200, 10), 0);
        assert!(v.v.is_empty());
    }

    #[test]
    fn streams_become_non_blocking_whatever_they_were() {
        let flags = |s: &UnixStream| {
            // SAFETY: F_GETFL only reads the flags of a descriptor `s` holds open.
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) }
        };
        let (a, b) = UnixStream::pair().expect("pair");
        b.set_nonblocking(true).expect("non-blocking");
        for s in [&a, &b] {
            set_nonblocking(s.as_fd()).expect("set");
            assert_ne!(flags(s) & libc::O_NONBLOCK, 0);
            // Nothing to read: a non-blocking stream answers at once.
            assert_eq!(
                (&*s).read(&mut [0u8; 1]).map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock)
            );
        }
    }
}
