//! Guest memory for the load generator: one memfd, mapped shared in this process, holding
//! every queue's rings and every request slot's header, status byte and data buffer.
//!
//! Guest physical address 0 is the start of the memfd; the front-end user address of a guest
//! physical address `gpa` is `base + gpa`.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;

use anyhow::{ensure, Context, Result};

/// Alignment of rings and data buffers (a page: enough for O_DIRECT on any disk).
pub const PAGE: u64 = 4096;
/// Bytes per slot in the header area: the 16-byte request header, then the status byte.
pub const META_STRIDE: u64 = 32;

/// Where one queue's parts live (guest physical addresses).
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Descriptor table (16 bytes per descriptor).
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Request headers and status bytes, `META_STRIDE` per slot.
    pub meta: u64,
    /// Data buffers, `data_stride` per slot.
    pub data: u64,
    /// Distance between two slots' data buffers.
    pub data_stride: u64,
}

impl QueueLayout {
    /// Guest address of slot `i`'s header (its status byte is at +16).
    pub fn header(&self, i: usize) -> u64 {
        self.meta + META_STRIDE * i as u64
    }

    /// Guest address of slot `i`'s data buffer.
    pub fn buffer(&self, i: usize) -> u64 {
        self.data + self.data_stride * i as u64
    }
}

/// Computes the layout of `queues` queues of `size` descriptors with `slots` request slots
/// of `buf_len` data bytes each. Returns the layouts and the total size.
pub fn layout(queues: usize, size: u16, slots: usize, buf_len: u64) -> (Vec<QueueLayout>, u64) {
    let size = u64::from(size);
    let data_stride = buf_len.max(1).next_multiple_of(PAGE);
    let mut at = 0u64;
    let mut out = Vec::with_capacity(queues);
    for _ in 0..queues {
        let desc = at;
        let avail = desc + 16 * size;
        let used = (avail + 6 + 2 * size).next_multiple_of(PAGE);
        let meta = (used + 6 + 8 * size).next_multiple_of(PAGE);
        let data = (meta + META_STRIDE * slots as u64).next_multiple_of(PAGE);
        at = data + data_stride * slots as u64;
        out.push(QueueLayout {
            desc,
            avail,
            used,
            meta,
            data,
            data_stride,
        });
    }
    (out, at.max(PAGE))
}

/// A memfd mapped shared and read-write.
#[derive(Debug)]
pub struct GuestMemory {
    file: File,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value for its whole life; every
// access through it goes through raw pointers with volatile or atomic semantics, and which
// thread touches which bytes is arranged by the users (one driver thread per queue).
unsafe impl Send for GuestMemory {}
// SAFETY: as above; `&GuestMemory` only hands out addresses.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// A zero-filled memfd of `len` bytes (rounded up to a page), mapped here.
    pub fn new(len: u64) -> Result<Self> {
        let len = len.next_multiple_of(PAGE);
        let fd = nix::sys::memfd::memfd_create(
            "vu-bench-guest-ram",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .context("memfd_create")?;
        let file = File::from(fd);
        file.set_len(len).context("sizing the guest memory memfd")?;
        let n = usize::try_from(len).context("guest memory size")?;
        // SAFETY: maps a fresh memfd we own, at an address the kernel picks; the result is
        // checked before use and unmapped only in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        ensure!(
            p != libc::MAP_FAILED,
            "cannot map guest memory: {}",
            std::io::Error::last_os_error()
        );
        let base = NonNull::new(p.cast::<u8>()).context("mmap returned NULL")?;
        Ok(GuestMemory { file, base, len: n })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the mapping is empty (never: at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Front-end user address of guest address 0.
    pub fn base_uva(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// A pointer to `len` bytes at guest address `gpa`; panics if they are not all inside
    /// the mapping (a layout bug, never a run-time condition).
    pub fn ptr(&self, gpa: u64, len: u64) -> *mut u8 {
        let end = gpa.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.len as u64),
            "guest range {gpa:#x}+{len:#x} is outside guest memory ({:#x} bytes)",
            self.len
        );
        // SAFETY: `gpa + len <= self.len` was just checked, so the result points inside
        // the mapping.
        unsafe { self.base.as_ptr().add(gpa as usize) }
    }

    /// Copies `data` to guest address `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.ptr(gpa, data.len() as u64);
        // SAFETY: `p..p+len` lies inside the mapping (checked by `ptr`); `data` is a
        // separate Rust slice, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
    }

    /// Zeroes `len` bytes at guest address `gpa`.
    pub fn zero(&self, gpa: u64, len: u64) {
        let p = self.ptr(gpa, len);
        // SAFETY: `p..p+len` lies inside the mapping (checked by `ptr`).
        unsafe { std::ptr::write_bytes(p, 0, len as usize) };
    }

    /// Copies `buf.len()` bytes from guest address `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) {
        let p = self.ptr(gpa, buf.len() as u64);
        // SAFETY: as in `write`, in the other direction.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no pointer into it outlives
        // `self` (the queues that use it hold an `Arc<GuestMemory>`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let (qs, total) = layout(2, 256, 32, 4096);
        assert_eq!(qs.len(), 2);
        for q in &qs {
            assert_eq!(q.desc % 16, 0);
            assert_eq!(q.used % 4, 0);
            assert_eq!(q.data % PAGE, 0);
            assert!(q.avail + 6 + 512 <= q.used);
            assert!(q.used + 6 + 8 * 256 <= q.meta);
            assert!(q.header(31) + META_STRIDE <= q.data);
        }
        assert!(qs[0].buffer(31) + 4096 <= qs[1].desc);
        assert_eq!(total, qs[1].buffer(31) + 4096);
    }
}
