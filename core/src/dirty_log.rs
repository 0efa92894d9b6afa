//! Dirty-page logging for live migration (VHOST_F_LOG_ALL with LOG_SHMFD).
//!
//! `LogBitmap` plugs into vm-memory's bitmap hook, so every write the device makes through
//! the guest-memory API (data buffers, used-ring entries, the used index) sets the bit of each
//! page it touched in the shared log, as `log[page / 8] |= 1 << (page % 8)` with atomics.
//! Writes made behind vm-memory's back (io_uring reading into guest buffers) are logged by the
//! queue when the request completes (`QueueIo::complete`).

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use vm_memory::bitmap::{Bitmap, BitmapSlice, NewBitmap, WithBitmapSlice};
use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use crate::message::LOG_PAGE_SIZE;

/// Errors while installing a log area.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    /// The log area is empty or its size does not fit in memory.
    #[error("invalid log size {0}")]
    BadSize(u64),
    /// The log offset is not page aligned.
    #[error("log offset {0:#x} is not page aligned")]
    Unaligned(u64),
    /// The file is smaller than offset + size.
    #[error("log file is smaller than offset + size")]
    FileTooSmall,
    /// fstat on the log fd failed.
    #[error("cannot stat the log file")]
    Stat(#[source] nix::Error),
    /// mmap failed.
    #[error("cannot map the log area")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// The mapped log area.
struct LogArea {
    map: MmapRegion,
}

impl LogArea {
    fn mark_pages(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE_SIZE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE_SIZE;
        let size = self.map.size() as u64;
        for page in first..=last {
            let byte = page / 8;
            if byte >= size {
                // Beyond the area the front-end gave us: nothing to record there.
                break;
            }
            let ptr = self.map.as_ptr().wrapping_add(byte as usize);
            // SAFETY: `byte < size` so `ptr` lies inside the live shared mapping owned by
            // `self.map`; AtomicU8 has alignment 1 and the front-end also uses atomics on it.
            let cell = unsafe { AtomicU8::from_ptr(ptr) };
            cell.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
    }
}

/// The log shared by every region of one connection.
#[derive(Default)]
pub struct DirtyLog {
    active: AtomicBool,
    area: RwLock<Option<Arc<LogArea>>>,
}

impl fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirtyLog")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl DirtyLog {
    /// A new, inactive log.
    pub fn new() -> Arc<Self> {
        Arc::new(DirtyLog::default())
    }

    /// Maps `size` bytes of `fd` at `offset` as the log area (SET_LOG_BASE).
    pub fn set_area(&self, fd: OwnedFd, size: u64, offset: u64) -> Result<(), DirtyLogError> {
        let len = usize::try_from(size)
            .ok()
            .filter(|l| *l > 0)
            .ok_or(DirtyLogError::BadSize(size))?;
        if !offset.is_multiple_of(page_size()) {
            return Err(DirtyLogError::Unaligned(offset));
        }
        let st = nix::sys::stat::fstat(&fd).map_err(DirtyLogError::Stat)?;
        let end = offset
            .checked_add(size)
            .ok_or(DirtyLogError::BadSize(size))?;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFREG && (st.st_size as u64) < end {
            return Err(DirtyLogError::FileTooSmall);
        }
        let file = std::fs::File::from(fd);
        let map = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(DirtyLogError::Map)?;
        let mut guard = self.area.write().unwrap_or_else(|e| e.into_inner());
        *guard = Some(Arc::new(LogArea { map }));
        Ok(())
    }

    /// Turns logging on or off (VHOST_F_LOG_ALL in SET_FEATURES).
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Release);
    }

    /// Whether writes are being logged.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Drops the log area and stops logging.
    pub fn clear(&self) {
        self.set_active(false);
        let mut guard = self.area.write().unwrap_or_else(|e| e.into_inner());
        *guard = None;
    }

    /// Marks the pages of `[gpa, gpa + len)` dirty if logging is on.
    pub fn mark(&self, gpa: u64, len: u64) {
        if !self.is_active() {
            return;
        }
        let guard = self.area.read().unwrap_or_else(|e| e.into_inner());
        if let Some(area) = guard.as_ref() {
            area.mark_pages(gpa, len);
        }
    }
}

/// System page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// vm-memory bitmap for one region (or a slice of it) that forwards writes to the shared log.
#[derive(Clone, Default)]
pub struct LogBitmap {
    log: Option<Arc<DirtyLog>>,
    /// Guest physical address that offset 0 of this bitmap stands for.
    base: u64,
}

impl fmt::Debug for LogBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogBitmap")
            .field("base", &self.base)
            .finish()
    }
}

impl LogBitmap {
    /// A bitmap for a region starting at guest physical address `base`.
    pub fn new(log: Arc<DirtyLog>, base: u64) -> Self {
        LogBitmap {
            log: Some(log),
            base,
        }
    }
}

impl NewBitmap for LogBitmap {
    fn with_len(_len: usize) -> Self {
        // Not attached to any log: used for memory that is never migrated (tests).
        LogBitmap::default()
    }
}

impl WithBitmapSlice<'_> for LogBitmap {
    type S = Self;
}

impl BitmapSlice for LogBitmap {}

impl Bitmap for LogBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if let Some(log) = &self.log {
            log.mark(self.base.wrapping_add(offset as u64), len as u64);
        }
    }

    fn dirty_at(&self, _offset: usize) -> bool {
        // The log belongs to the front-end; we only ever set bits in it.
        false
    }

    fn slice_at(&self, offset: usize) -> Self {
        LogBitmap {
            log: self.log.clone(),
            base: self.base.wrapping_add(offset as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn memfd(len: u64) -> std::fs::File {
        let fd = nix::sys::memfd::memfd_create("log", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        let f = std::fs::File::from(fd);
        f.set_len(len).expect("set_len");
        f
    }

    #[test]
    fn marks_bits_per_page() {
        let mut f = memfd(4096);
        f.write_all(&[0u8; 16]).expect("zero");
        let log = DirtyLog::new();
        log.set_area(OwnedFd::from(f.try_clone().expect("dup")), 4096, 0)
            .expect("area");
        log.mark(0, 1);
        let mut b = [0u8; 2];
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_exact(&mut b).expect("read");
        assert_eq!(b, [0, 0], "inactive log records nothing");
        log.set_active(true);
        let bm = LogBitmap::new(log.clone(), 0x3000).slice_at(0x1000);
        bm.mark_dirty(0x10, 0x2000); // pages 4, 5, 6
        log.mark(0x8000, 1); // page 8
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_exact(&mut b).expect("read");
        assert_eq!(b, [0b0111_0000, 0b0000_0001]);
        // Beyond the area is ignored, not a crash.
        log.mark(u64::MAX - 10, 100);
    }

    #[test]
    fn rejects_bad_areas() {
        let f = memfd(4096);
        let log = DirtyLog::new();
        let fd = || OwnedFd::from(f.try_clone().expect("dup"));
        assert!(matches!(
            log.set_area(fd(), 0, 0),
            Err(DirtyLogError::BadSize(0))
        ));
        assert!(matches!(
            log.set_area(fd(), 16, 1),
            Err(DirtyLogError::Unaligned(1))
        ));
        assert!(matches!(
            log.set_area(fd(), 8192, 0),
            Err(DirtyLogError::FileTooSmall)
        ));
    }
}
