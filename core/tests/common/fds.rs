//! File descriptors the tests hand over or wait on: memfds, eventfds, readiness.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How long any single wait may take. Generous: the tests run on a loaded 2-core machine,
/// and a passing test never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A memfd of `len` zero bytes.
pub fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create("vu-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("size the memfd");
    f
}

pub fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .expect("eventfd")
}

/// Waits until `fd` is readable; false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}
