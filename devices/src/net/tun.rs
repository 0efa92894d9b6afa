//! The tun/tap ioctls, on descriptors already open: what the device does on the taps it is
//! handed (offloads, header size, attach or detach a queue) and what `tap.rs` needs to attach
//! them. Each call is one ioctl with a checked result.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The name in an `ifreq` (at most IFNAMSIZ - 1 bytes), or None if it does not fit or holds
/// a NUL byte.
pub(crate) fn ifreq(name: &str, flags: libc::c_int) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses and a
    // pointer): all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Some(req)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// TUNSETIFF: attaches `fd` (a fresh /dev/net/tun descriptor) to the interface `req` names,
/// with `req`'s flags.
pub(crate) fn set_iff(fd: BorrowedFd<'_>, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` points to for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, req as *mut libc::ifreq) })
}

/// TUNGETIFF: the interface name and flags (IFF_TAP, IFF_NO_PI, IFF_VNET_HDR,
/// IFF_MULTI_QUEUE...) of an attached tun/tap descriptor. Fails with ENOTTY on anything else
/// and EBADFD on a detached queue.
pub(crate) fn get_iff(fd: BorrowedFd<'_>) -> io::Result<(String, libc::c_int)> {
    // SAFETY: all zeroes is a valid `ifreq` (plain old data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one `ifreq` into the one `req` points to.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETIFF,
            &mut req as *mut libc::ifreq,
        )
    })?;
    let name: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    // SAFETY: TUNGETIFF filled in the flags member of the union (the kernel writes
    // `ifr_flags`); reading a c_short from the zero-initialised union is valid in any case.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as u16 as libc::c_int;
    Ok((String::from_utf8_lossy(&name).into_owned(), flags))
}

/// TUNSETOFFLOAD: which offloads (TUN_F_*) the reader of the tap accepts. Device-wide.
pub(crate) fn set_offload(fd: BorrowedFd<'_>, offloads: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads),
        )
    })
}

/// TUNSETVNETHDRSZ: the length of the virtio-net header in front of each frame. Device-wide.
pub(crate) fn set_vnet_hdr_sz(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = len as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, which `len` holds for the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &len as *const libc::c_int,
        )
    })
}

/// TUNSETQUEUE: attaches (or detaches) this queue of a multi-queue tap; the kernel only
/// steers frames to attached queues.
pub(crate) fn set_queue(fd: BorrowedFd<'_>, attach: bool) -> io::Result<()> {
    let flags = if attach {
        libc::IFF_ATTACH_QUEUE
    } else {
        libc::IFF_DETACH_QUEUE
    };
    // SAFETY: all zeroes is a valid `ifreq` (plain old data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETQUEUE reads one `ifreq`, which `req` holds for the call.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETQUEUE,
            &mut req as *mut libc::ifreq,
        )
    })
}

/// TUNGETSNDBUF: the send buffer of the tap's queues, in bytes; `i32::MAX` (the default) is
/// unlimited: a write then never finds the tap full.
pub(crate) fn get_sndbuf(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mut sndbuf: libc::c_int = 0;
    // SAFETY: TUNGETSNDBUF writes one int into `sndbuf`.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETSNDBUF,
            &mut sndbuf as *mut libc::c_int,
        )
    })?;
    Ok(sndbuf)
}

/// TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports.
pub(crate) fn get_features(fd: BorrowedFd<'_>) -> io::Result<libc::c_uint> {
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one unsigned int into `features`.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETFEATURES,
            &mut features as *mut libc::c_uint,
        )
    })?;
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("tap0", 0).is_some());
        assert!(ifreq("", 0).is_none());
        assert!(ifreq("a-name-far-too-long", 0).is_none());
        assert!(ifreq("fifteen-chars-x", 0).is_some());
        assert!(ifreq("nul\0", 0).is_none());
    }
}
