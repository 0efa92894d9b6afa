//! The descriptor a queue pair moves frames through: a tap queue (what the launcher opens), or
//! a datagram/seqpacket socket standing in for one (tests, benchmarks). Either way each read
//! returns one frame with its virtio-net header, each write takes one. Also the iovec lists
//! the queues hand to readv/writev.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::Mutex;

use super::error::NetError;
use super::tun;
use super::uring::TapRing;

/// What kind of descriptor it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A tap queue: offloads and header size are set on it.
    Tap {
        /// IFF_MULTI_QUEUE: a queue can be detached and attached again.
        multi_queue: bool,
    },
    /// A socket: frames as they are, no ioctls.
    Socket,
}

/// One queue pair's descriptor.
#[derive(Debug)]
pub(crate) struct TapFd {
    file: File,
    kind: Kind,
    /// The transmit ring of the last queue start, idle, for the next one (a ring's setup and
    /// teardown cost more than a queue's whole start otherwise).
    spare_ring: Mutex<Option<TapRing>>,
}

impl TapFd {
    /// Checks what `file` is (a tap queue with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR, or a
    /// socket) and makes it non-blocking. `pair` is for error messages.
    pub(crate) fn probe(file: File, pair: usize) -> Result<Self, NetError> {
        let meta = file.metadata().map_err(|e| NetError::Probe(pair, e))?;
        let kind = if meta.file_type().is_socket() {
            Kind::Socket
        } else if meta.file_type().is_char_device() {
            Kind::Tap {
                multi_queue: tap_flags(&file, pair)? & libc::IFF_MULTI_QUEUE != 0,
            }
        } else {
            return Err(NetError::NotATap(pair));
        };
        set_nonblocking(&file).map_err(|e| NetError::Probe(pair, e))?;
        Ok(TapFd {
            file,
            kind,
            spare_ring: Mutex::new(None),
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Reads one frame (header included) into `iov`; returns its full length, which exceeds
    /// the iovecs' total when the frame did not fit (the tap cuts it).
    pub(crate) fn readv(&self, iov: &IoVecs) -> io::Result<usize> {
        loop {
            // SAFETY: every iovec names memory that stays mapped and writable for the call
            // (guest buffers of chains the queue holds, or the handler's own buffer), and
            // `iov.len()` entries are initialised.
            let n = unsafe { libc::readv(self.raw(), iov.as_ptr(), iov.len() as libc::c_int) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame (header included) from `iov`.
    pub(crate) fn writev(&self, iov: &IoVecs) -> io::Result<usize> {
        loop {
            // SAFETY: every iovec names readable guest memory of a chain the queue holds for
            // the call, and `iov.len()` entries are initialised.
            let n = unsafe { libc::writev(self.raw(), iov.as_ptr(), iov.len() as libc::c_int) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// True if a write can find no room (EAGAIN): a socket, or a tap whose send buffer is
    /// limited (TUNSETSNDBUF). A tap's is unlimited unless someone limits it; if it cannot be
    /// read, it counts as limited.
    pub(crate) fn can_be_full(&self) -> bool {
        match self.kind {
            Kind::Tap { .. } => !matches!(tun::get_sndbuf(self.file.as_fd()), Ok(libc::c_int::MAX)),
            Kind::Socket => true,
        }
    }

    /// The idle transmit ring a stopped queue left on this tap, if any.
    pub(crate) fn take_ring(&self) -> Option<TapRing> {
        self.spare_ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Keeps an idle transmit ring (nothing in flight) for the next queue start; one at most.
    pub(crate) fn keep_ring(&self, ring: TapRing) {
        let mut spare = self
            .spare_ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if spare.is_none() {
            *spare = Some(ring);
        }
    }

    /// Attaches or detaches this queue of a multi-queue tap (the kernel steers frames only
    /// to attached queues). Nothing to do on other descriptors.
    pub(crate) fn set_attached(&self, attached: bool) -> io::Result<()> {
        match self.kind {
            Kind::Tap { multi_queue: true } => match tun::set_queue(self.file.as_fd(), attached) {
                // Attaching an attached queue (or detaching a detached one) is refused.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                other => other,
            },
            _ => Ok(()),
        }
    }
}

/// TUNGETIFF flags of a tap queue, checked; a detached queue (EBADFD: a device that died
/// while its queue was detached) is attached again first.
fn tap_flags(file: &File, pair: usize) -> Result<libc::c_int, NetError> {
    let flags = match tun::get_iff(file.as_fd()) {
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
            tun::set_queue(file.as_fd(), true).map_err(|e| NetError::Probe(pair, e))?;
            tun::get_iff(file.as_fd())
        }
        other => other,
    };
    let (_, flags) = flags.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTTY) | Some(libc::EINVAL) => NetError::NotATap(pair),
        _ => NetError::Probe(pair, e),
    })?;
    for (flag, name) in [
        (libc::IFF_TAP, "tap mode"),
        (libc::IFF_NO_PI, "no_pi"),
        (libc::IFF_VNET_HDR, "vnet_hdr"),
    ] {
        if flags & flag == 0 {
            return Err(NetError::TapFlags {
                pair,
                missing: name,
            });
        }
    }
    Ok(flags)
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL only reads the status flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: F_SETFL only changes the status flags of a descriptor we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Most iovecs one readv/writev takes (UIO_MAXIOV).
pub(crate) const MAX_IOVS: usize = 1024;

/// An iovec list naming guest buffers (and a handler's own buffer); its capacity is kept, so
/// the hot path does not allocate once warmed up.
#[derive(Debug, Default)]
pub(crate) struct IoVecs(Vec<libc::iovec>);

// SAFETY: `IoVecs` only stores addresses and lengths and never dereferences them; they are
// handed to the kernel by the thread that owns the queue handler, while the memory they name
// is kept mapped by the chains the queue holds (or owned by the handler).
unsafe impl Send for IoVecs {}

impl IoVecs {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn push(&mut self, host: usize, len: usize) {
        self.0.push(libc::iovec {
            iov_base: host as *mut libc::c_void,
            iov_len: len,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn as_ptr(&self) -> *const libc::iovec {
        self.0.as_ptr()
    }
}
