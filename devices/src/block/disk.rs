//! The backing store shared by every queue: the image file, its geometry, the live capacity
//! and cache mode, and the synchronous I/O primitives the engines build on.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::BlockError;
use super::iovec::IoVecs;

/// Bytes in a virtio-blk sector (the unit of `sector` and `capacity`, whatever the block size).
pub(crate) const SECTOR_SIZE: u64 = 512;
/// Largest number of iovecs one preadv/pwritev/readv SQE takes (Linux UIO_MAXIOV).
pub(crate) const IOV_MAX: usize = 1024;
/// Largest bounce or zero-fill buffer allocated at once.
const CHUNK: usize = 1 << 20;

mod ioctls {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t); the others are _IO(0x12, n) taking a pointer.
    nix::ioctl_read_bad!(
        blk_getsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
        u64
    );
    nix::ioctl_read_bad!(blk_sszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(
        blk_pbszget,
        nix::request_code_none!(0x12, 123),
        libc::c_uint
    );
    nix::ioctl_read_bad!(blk_iomin, nix::request_code_none!(0x12, 120), libc::c_uint);
    nix::ioctl_read_bad!(blk_ioopt, nix::request_code_none!(0x12, 121), libc::c_uint);
    nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blk_zeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// Counters, readable while the device runs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub durable_writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub io_errors: AtomicU64,
    pub unsupported: AtomicU64,
    pub offloaded: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the data of a read or write that succeeded.
    pub(crate) fn transferred(&self, write: bool, len: u32) {
        let c = if write {
            &self.written_bytes
        } else {
            &self.read_bytes
        };
        c.fetch_add(u64::from(len), Ordering::Relaxed);
    }
}

/// What probing the image found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub size: u64,
    pub block_dev: bool,
    /// Host logical sector size (block devices), else 512.
    pub host_sector: u32,
    /// Host physical sector size in bytes (0: unknown).
    pub physical: u32,
    /// Host minimum and optimal I/O sizes in bytes (0: unknown).
    pub io_min: u32,
    pub io_opt: u32,
}

impl Geometry {
    /// fstat, and for block devices the size and topology ioctls.
    pub(crate) fn probe(file: &File) -> Result<Self, BlockError> {
        let meta = file.metadata().map_err(BlockError::Probe)?;
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok(Geometry {
                size: meta.len(),
                block_dev: false,
                host_sector: 512,
                physical: 0,
                io_min: 0,
                io_opt: 0,
            });
        }
        if !ft.is_block_device() {
            return Err(BlockError::NotAFileOrBlockDevice);
        }
        let fd = file.as_raw_fd();
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
        unsafe { ioctls::blk_getsize64(fd, &mut size) }.map_err(|e| BlockError::Probe(e.into()))?;
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points to `ssz`.
        unsafe { ioctls::blk_sszget(fd, &mut ssz) }.map_err(|e| BlockError::Probe(e.into()))?;
        let opt_ioctl = |f: unsafe fn(libc::c_int, *mut libc::c_uint) -> nix::Result<i32>| {
            let mut v: libc::c_uint = 0;
            // SAFETY: these ioctls write one unsigned int through the pointer, which points
            // to `v`; a failure leaves it 0 (unknown).
            let _ = unsafe { f(fd, &mut v) };
            v
        };
        Ok(Geometry {
            size,
            block_dev: true,
            host_sector: u32::try_from(ssz).unwrap_or(512).max(512),
            physical: opt_ioctl(ioctls::blk_pbszget),
            io_min: opt_ioctl(ioctls::blk_iomin),
            io_opt: opt_ioctl(ioctls::blk_ioopt),
        })
    }

    /// The current size of a block device.
    pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
        unsafe { ioctls::blk_getsize64(file.as_raw_fd(), &mut size) }?;
        Ok(size)
    }
}

/// The image and everything every queue needs to serve it.
#[derive(Debug)]
pub(crate) struct Disk {
    pub file: File,
    pub block_dev: bool,
    pub read_only: bool,
    /// O_DIRECT is set: buffers and lengths must be aligned to `dio_align`.
    pub direct: bool,
    pub dio_align: usize,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    /// Topology hints in bytes (0: none).
    pub io_min: u32,
    pub io_opt: u32,
    pub serial: [u8; 20],
    /// Buffered image whose file takes RWF_NOWAIT (probed once at open): the io_uring engine
    /// tries each read or write inline first and uses the ring only when it would block.
    /// Buffered images without it (tmpfs) run inline entirely; O_DIRECT always uses the ring.
    pub nowait: bool,
    /// Reads (index 0) or writes (1) with RWF_NOWAIT are refused (EOPNOTSUPP; ext4 takes
    /// NOWAIT buffered reads but not writes), learnt from the first refusal: no request of
    /// that kind tries it again.
    nowait_refused: [AtomicBool; 2],
    capacity: AtomicU64,
    writeback: AtomicBool,
    /// VIRTIO_BLK_F_FLUSH negotiated (true until the driver's features say otherwise).
    flush_acked: AtomicBool,
    pub counters: Counters,
}

/// Everything `Disk::new` needs.
#[derive(Debug)]
pub(crate) struct DiskParams {
    pub file: File,
    pub geometry: Geometry,
    pub read_only: bool,
    pub direct: bool,
    pub logical_block_size: u32,
    pub serial: [u8; 20],
    pub writeback: bool,
}

impl Disk {
    pub(crate) fn new(p: DiskParams) -> Self {
        let g = p.geometry;
        let lbs = p.logical_block_size;
        let nowait = !p.direct && probe_nowait(&p.file);
        let physical = if g.physical >= lbs && g.physical.is_power_of_two() {
            g.physical
        } else {
            lbs
        };
        Disk {
            file: p.file,
            block_dev: g.block_dev,
            read_only: p.read_only,
            direct: p.direct,
            dio_align: lbs.max(g.host_sector) as usize,
            logical_block_size: lbs,
            physical_block_size: physical,
            io_min: g.io_min,
            io_opt: g.io_opt,
            serial: p.serial,
            nowait,
            nowait_refused: [AtomicBool::new(false), AtomicBool::new(false)],
            capacity: AtomicU64::new(g.size / SECTOR_SIZE),
            writeback: AtomicBool::new(p.writeback),
            flush_acked: AtomicBool::new(true),
            counters: Counters::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    pub(crate) fn set_capacity(&self, sectors: u64) {
        self.capacity.store(sectors, Ordering::Release);
    }

    /// The `writeback` byte of the config space.
    pub(crate) fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Acquire)
    }

    pub(crate) fn set_writeback(&self, on: bool) {
        self.writeback.store(on, Ordering::Release);
    }

    pub(crate) fn set_flush_acked(&self, acked: bool) {
        self.flush_acked.store(acked, Ordering::Release);
    }

    /// Whether every write must be durable before it completes: the driver chose
    /// write-through, or cannot flush.
    pub(crate) fn write_through(&self) -> bool {
        !(self.writeback() && self.flush_acked.load(Ordering::Acquire))
    }

    /// Whether `len` bytes at byte `offset` lie inside the disk (checked arithmetic).
    pub(crate) fn in_range(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        self.capacity()
            .checked_mul(SECTOR_SIZE)
            .is_some_and(|cap| end <= cap)
    }

    /// fdatasync.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// preadv/pwritev over all of `iov`, in IOV_MAX chunks, resuming short transfers.
    /// `dsync` asks for RWF_DSYNC (durable before return).
    pub(crate) fn rw_vectored(
        &self,
        iov: &mut IoVecs,
        mut offset: u64,
        write: bool,
        dsync: bool,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        while !iov.is_empty() {
            let rest = iov.remaining();
            let n = rest.len().min(IOV_MAX) as libc::c_int;
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let r = if write {
                // SAFETY: `rest` points to `n` valid iovecs; each names guest memory that the
                // request's chain keeps mapped (its memory snapshot) until it is completed,
                // which happens after this call returns. The kernel only reads the buffers.
                unsafe { libc::pwritev2(fd, rest.as_ptr(), n, off, flags) }
            } else {
                // SAFETY: as above; the kernel writes into guest memory the chain keeps
                // mapped, inside the device-writable buffers the driver gave us.
                unsafe { libc::preadv2(fd, rest.as_ptr(), n, off, 0) }
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::from(if write {
                    io::ErrorKind::WriteZero
                } else {
                    io::ErrorKind::UnexpectedEof
                }));
            }
            iov.consume(r as usize);
            offset += r as u64;
        }
        Ok(())
    }

    /// Whether a read (or write) may be tried with RWF_NOWAIT: the file takes it (`nowait`)
    /// and no request of that kind was refused with EOPNOTSUPP (see `rw_nowait`).
    pub(crate) fn nowait_for(&self, write: bool) -> bool {
        self.nowait && !self.nowait_refused[usize::from(write)].load(Ordering::Relaxed)
    }

    /// One preadv2/pwritev2 with RWF_NOWAIT over the start of `iov` (at most IOV_MAX
    /// entries): the bytes transferred, or the error (EAGAIN: it would have blocked).
    /// An EOPNOTSUPP is remembered (`nowait_for`): the file refuses the flag for that kind
    /// of request whatever the data, so it is never tried again.
    pub(crate) fn rw_nowait(
        &self,
        iov: &IoVecs,
        offset: u64,
        write: bool,
        dsync: bool,
    ) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let rest = iov.remaining();
        let n = rest.len().min(IOV_MAX) as libc::c_int;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let r = if write {
            let flags = libc::RWF_NOWAIT | if dsync { libc::RWF_DSYNC } else { 0 };
            // SAFETY: `rest` points to `n` valid iovecs naming guest memory that the request's
            // chain keeps mapped until it is completed, after this call returns. The kernel
            // only reads the buffers.
            unsafe { libc::pwritev2(fd, rest.as_ptr(), n, off, flags) }
        } else {
            // SAFETY: as above; the kernel writes only into the device-writable guest buffers
            // the chain holds mapped.
            unsafe { libc::preadv2(fd, rest.as_ptr(), n, off, libc::RWF_NOWAIT) }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                self.nowait_refused[usize::from(write)].store(true, Ordering::Relaxed);
            }
            return Err(e);
        }
        Ok(r as usize)
    }

    /// Reads or writes `len` bytes at `offset` through an aligned bounce buffer, moving
    /// guest data with `copy(done, chunk)`: for a write it fills `chunk` from guest memory,
    /// for a read it copies `chunk` to guest memory. Used when O_DIRECT cannot take the
    /// guest's buffers as they are.
    pub(crate) fn rw_bounce(
        &self,
        offset: u64,
        len: usize,
        write: bool,
        dsync: bool,
        mut copy: impl FnMut(usize, &mut [u8]) -> bool,
    ) -> io::Result<()> {
        let mut buf = AlignedBuf::new(len.min(CHUNK), self.dio_align);
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            let chunk = &mut buf.as_mut_slice()[..n];
            let at = offset + done as u64;
            if write {
                if !copy(done, chunk) {
                    return Err(io::Error::from(io::ErrorKind::InvalidInput));
                }
                self.file.write_all_at(chunk, at)?;
            } else {
                self.file.read_exact_at(chunk, at)?;
                if !copy(done, chunk) {
                    return Err(io::Error::from(io::ErrorKind::InvalidInput));
                }
            }
            done += n;
        }
        if write && dsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Writes zeroes over `len` bytes at `offset` with plain writes.
    pub(crate) fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let size = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
        let buf = AlignedBuf::new(size, self.dio_align);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(size as u64) as usize;
            self.file
                .write_all_at(&buf.as_slice()[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    pub(crate) fn blk_discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 through the pointer, which points to `range`.
        unsafe { ioctls::blk_discard(self.file.as_raw_fd(), &range) }?;
        Ok(())
    }

    pub(crate) fn blk_zeroout(&self, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 through the pointer, which points to `range`.
        unsafe { ioctls::blk_zeroout(self.file.as_raw_fd(), &range) }?;
        Ok(())
    }
}

/// Whether the file takes RWF_NOWAIT reads (tmpfs answers EOPNOTSUPP): one byte read at
/// offset 0 into a local buffer, which succeeds or would block where NOWAIT is supported.
fn probe_nowait(file: &File) -> bool {
    let mut byte = [0u8; 1];
    let iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: one iovec naming `byte`, a live local buffer of iov_len bytes.
    let r = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    r >= 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

/// A zeroed heap buffer whose start is aligned for O_DIRECT, without unsafe: over-allocate and
/// start at the first aligned byte.
struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> Self {
        let align = align.max(1);
        let v = vec![0u8; len + align];
        let start = (align - (v.as_ptr() as usize) % align) % align;
        AlignedBuf { v, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.v[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for align in [512usize, 4096] {
            let mut b = AlignedBuf::new(10_000, align);
            assert_eq!(b.as_slice().as_ptr() as usize % align, 0);
            assert_eq!(b.as_mut_slice().len(), 10_000);
        }
    }

    #[test]
    fn a_refused_nowait_path_is_not_tried_again() {
        let f = tempfile::tempfile().expect("tempfile");
        f.set_len(8192).expect("set_len");
        let g = Geometry::probe(&f).expect("probe");
        let d = Disk::new(DiskParams {
            file: f,
            geometry: g,
            read_only: false,
            direct: false,
            logical_block_size: 512,
            serial: [0; 20],
            writeback: true,
        });
        if !d.nowait {
            return; // The temporary directory takes no RWF_NOWAIT at all (tmpfs).
        }
        assert!(d.nowait_for(false) && d.nowait_for(true));
        let mut buf = vec![7u8; 4096];
        let mut iov = IoVecs::default();
        iov.push(buf.as_mut_ptr() as usize, buf.len());
        match d.rw_nowait(&iov, 0, true, false) {
            // ext4: buffered writes refuse the flag, for good.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                assert!(!d.nowait_for(true), "writes are not tried again");
                assert!(d.nowait_for(false), "reads still are");
            }
            // A file system that takes it (xfs, btrfs), or one that would block.
            _ => assert!(d.nowait_for(true)),
        }
    }

    #[test]
    fn range_checks_do_not_overflow() {
        let f = tempfile::tempfile().expect("tempfile");
        f.set_len(4096).expect("set_len");
        let g = Geometry::probe(&f).expect("probe");
        let d = Disk::new(DiskParams {
            file: f,
            geometry: g,
            read_only: false,
            direct: false,
            logical_block_size: 512,
            serial: [0; 20],
            writeback: true,
        });
        assert_eq!(d.capacity(), 8);
        assert!(d.in_range(0, 4096));
        assert!(d.in_range(4096, 0));
        assert!(!d.in_range(512, 4096));
        assert!(!d.in_range(u64::MAX, 2));
        assert!(!d.write_through());
        d.set_flush_acked(false);
        assert!(d.write_through());
    }
}
