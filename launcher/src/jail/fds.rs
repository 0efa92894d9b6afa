//! Step 1: close every file descriptor that is not on the keep-list.
//!
//! The launcher moved the kept fds to low fixed numbers before exec, so this is a few
//! `close_range` calls over the gaps, ending with "everything above the last kept fd".

use std::io;
use std::os::fd::RawFd;

use super::JailError;

/// Closes every fd except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    for &fd in &keep {
        if fd > next {
            close_range(next, fd - 1)?;
        }
        next = fd.saturating_add(1);
    }
    close_range(next, u32::MAX)?;
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors in [first, last]; none of them is owned by
    // a Rust object at this point (the device adopts only kept fds, and nothing else is open
    // in this freshly exec'd process but what it inherited).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(JailError::CloseFds(e));
    }
    close_listed(first, last)
}

/// Fallback for kernels before 5.9: close what /proc/self/fd lists in the range.
fn close_listed(first: u32, last: u32) -> Result<(), JailError> {
    let fds: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map_err(JailError::CloseFds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd was in the list but is closed now: EBADF on it is expected.
    for fd in fds.into_iter().filter(|fd| (first..=last).contains(fd)) {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: as in `close_range`: nothing in this process owns these fds.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
