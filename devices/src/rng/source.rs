//! The entropy source: a descriptor the launcher opened (a character device such as
//! /dev/urandom or /dev/hwrng, a regular file, a FIFO or socket), read with `readv` straight
//! into guest buffers. The device never opens paths.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::error::RngError;

/// What the source descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file: it never blocks and ends at EOF.
    File,
    /// A character device (/dev/urandom, /dev/hwrng, ...).
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

impl SourceKind {
    /// As shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::CharDevice => "character device",
            SourceKind::BlockDevice => "block device",
            SourceKind::Fifo => "fifo",
            SourceKind::Socket => "socket",
        }
    }
}

/// What one read got.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// This many bytes (> 0).
    Data(usize),
    /// End of file: nothing now, maybe more later (a file that grows, a FIFO's next writer).
    Eof,
    /// Nothing now (EAGAIN on a non-blocking source).
    WouldBlock,
    /// The read failed.
    Failed(io::Error),
}

/// The opened source.
#[derive(Debug)]
pub(crate) struct Source {
    file: File,
    kind: SourceKind,
    /// epoll accepts the descriptor (FIFOs, sockets, /dev/random; not regular files,
    /// /dev/urandom or /dev/hwrng).
    pollable: bool,
}

fn fcntl_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL only reads the status flags of a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

/// Whether epoll can watch `fd` (it refuses regular files and devices without `poll`).
fn pollable(fd: RawFd) -> bool {
    let Ok(ep) = Epoll::new() else {
        return false;
    };
    ep.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .is_ok()
}

impl Source {
    /// Checks the descriptor: readable, not a directory. A source that may block (anything
    /// but a regular file) is made non-blocking if it is not already, so that the queue
    /// worker never sleeps in `read`.
    pub(crate) fn new(file: File) -> Result<Self, RngError> {
        let ft = file.metadata().map_err(RngError::Probe)?.file_type();
        let kind = if ft.is_file() {
            SourceKind::File
        } else if ft.is_dir() {
            return Err(RngError::Directory);
        } else if ft.is_char_device() {
            SourceKind::CharDevice
        } else if ft.is_block_device() {
            SourceKind::BlockDevice
        } else if ft.is_fifo() {
            SourceKind::Fifo
        } else {
            SourceKind::Socket
        };
        let fd = file.as_raw_fd();
        let flags = fcntl_flags(fd).map_err(RngError::Probe)?;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(RngError::NotReadable);
        }
        if kind != SourceKind::File && flags & libc::O_NONBLOCK == 0 {
            // SAFETY: F_SETFL only changes the status flags of a descriptor we own.
            if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
                return Err(RngError::NonBlocking(io::Error::last_os_error()));
            }
        }
        let pollable = kind != SourceKind::File && pollable(fd);
        Ok(Source {
            file,
            kind,
            pollable,
        })
    }

    /// What the descriptor is.
    pub(crate) fn kind(&self) -> SourceKind {
        self.kind
    }

    /// Whether the worker can wait for it to become readable.
    pub(crate) fn pollable(&self) -> bool {
        self.pollable
    }

    /// The descriptor (to wait on when `pollable`).
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// One `readv` over `iov` (retried on EINTR).
    ///
    /// # Safety
    ///
    /// Every iovec must name memory this process may write for as long as the call runs
    /// (guest buffers the caller's chains keep mapped).
    pub(crate) unsafe fn read(&self, iov: &[libc::iovec]) -> ReadOutcome {
        let n = iov.len().min(super::queue::IOV_MAX) as libc::c_int;
        loop {
            // SAFETY: `iov` points to at least `n` iovecs, each naming writable memory
            // (the caller's contract); the kernel writes only inside them.
            let r = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), n) };
            match r {
                0 => return ReadOutcome::Eof,
                r if r > 0 => return ReadOutcome::Data(r as usize),
                _ => {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => return ReadOutcome::WouldBlock,
                        _ => return ReadOutcome::Failed(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_into(s: &Source, buf: &mut [u8]) -> ReadOutcome {
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec names `buf`, borrowed mutably for the call.
        unsafe { s.read(&iov) }
    }

    #[test]
    fn a_regular_file_reads_then_ends() {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(b"0123456789").expect("write");
        let f2 = f.try_clone().expect("dup");
        use std::io::Seek;
        f.rewind().expect("rewind");
        let s = Source::new(f2).expect("source");
        assert_eq!((s.kind(), s.pollable()), (SourceKind::File, false));
        let mut buf = [0u8; 8];
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Data(8)));
        assert_eq!(&buf, b"01234567");
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Data(2)));
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Eof));
    }

    #[test]
    fn a_pipe_is_made_non_blocking_and_polled() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let s = Source::new(File::from(r)).expect("source");
        assert_eq!((s.kind(), s.pollable()), (SourceKind::Fifo, true));
        let flags = fcntl_flags(s.raw_fd()).expect("flags");
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::WouldBlock));
        let mut w = File::from(w);
        w.write_all(b"ab").expect("write");
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Data(2)));
        drop(w);
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Eof));
    }

    #[test]
    fn refuses_directories_and_write_only_descriptors() {
        let dir = File::open("/").expect("open /");
        assert!(matches!(Source::new(dir), Err(RngError::Directory)));
        let (r, w) = nix::unistd::pipe().expect("pipe");
        drop(r);
        assert!(matches!(
            Source::new(File::from(w)),
            Err(RngError::NotReadable)
        ));
    }

    #[test]
    fn urandom_is_a_character_device() {
        let s = Source::new(File::open("/dev/urandom").expect("urandom")).expect("source");
        assert_eq!(s.kind(), SourceKind::CharDevice);
        let mut buf = [0u8; 64];
        assert!(matches!(read_into(&s, &mut buf), ReadOutcome::Data(64)));
        assert!(buf.iter().any(|&b| b != 0));
    }
}
