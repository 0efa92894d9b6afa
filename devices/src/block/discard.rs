//! DISCARD and WRITE_ZEROES (virtio 1.2, 5.2.6): segments of
//! `virtio_blk_discard_write_zeroes`, validated as a whole before any is executed.

use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{fallocate, FallocateFlags};
use virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP as FLAG_UNMAP;
use vu_core::Chain;

use super::config::{
    MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
};
use super::disk::{Counters, Disk, SECTOR_SIZE};
use super::request::{HEADER_LEN, S_IOERR, S_OK, S_UNSUPP};

const SEG_LEN: u32 = 16;
const MAX_SEGS: usize = if MAX_DISCARD_SEG > MAX_WRITE_ZEROES_SEG {
    MAX_DISCARD_SEG as usize
} else {
    MAX_WRITE_ZEROES_SEG as usize
};

/// One range: byte offset, byte length, UNMAP allowed.
#[derive(Debug, Clone, Copy, Default)]
struct Range {
    offset: u64,
    len: u64,
    unmap: bool,
}

/// Validates and executes a DISCARD (`zeroes == false`) or WRITE_ZEROES; returns the status.
pub(crate) fn execute(disk: &Disk, chain: &Chain, zeroes: bool) -> u8 {
    Counters::bump(if zeroes {
        &disk.counters.write_zeroes
    } else {
        &disk.counters.discards
    });
    let (max_seg, max_sectors) = if zeroes {
        (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
    } else {
        (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
    };
    let payload = chain.readable_len() - HEADER_LEN;
    if payload == 0 || !payload.is_multiple_of(SEG_LEN) {
        return S_IOERR;
    }
    let n = payload / SEG_LEN;
    if n > max_seg {
        return S_UNSUPP;
    }
    // Copy every segment out of guest memory once, so the guest cannot change one between
    // validation and execution.
    let mut ranges = [Range::default(); MAX_SEGS];
    for (i, r) in ranges.iter_mut().enumerate().take(n as usize) {
        let mut raw = [0u8; SEG_LEN as usize];
        if chain.read_at(HEADER_LEN + i as u32 * SEG_LEN, &mut raw) != raw.len() {
            return S_IOERR;
        }
        let (sector, rest) = raw.split_at(8);
        let sector = u64::from_le_bytes(sector.try_into().unwrap_or_default());
        let num = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(rest[4..].try_into().unwrap_or_default());
        if flags & !FLAG_UNMAP != 0 || (!zeroes && flags & FLAG_UNMAP != 0) {
            return S_UNSUPP;
        }
        if num > max_sectors {
            return S_IOERR;
        }
        let len = u64::from(num) * SECTOR_SIZE;
        match sector.checked_mul(SECTOR_SIZE) {
            Some(offset) if disk.in_range(offset, len) => {
                *r = Range {
                    offset,
                    len,
                    unmap: flags & FLAG_UNMAP != 0,
                };
            }
            _ => return S_IOERR,
        }
    }
    for r in ranges.iter().take(n as usize).filter(|r| r.len > 0) {
        let res = if zeroes {
            zero_range(disk, r.offset, r.len, r.unmap)
        } else {
            discard_range(disk, r.offset, r.len)
        };
        if let Err(e) = res {
            vu_core::warn_ratelimited!(zeroes, offset = r.offset, len = r.len, error = %e,
                "discard/write-zeroes failed");
            return S_IOERR;
        }
    }
    if disk.write_through() {
        if let Err(e) = disk.sync() {
            vu_core::warn_ratelimited!(error = %e, "fdatasync after write-zeroes failed");
            return S_IOERR;
        }
    }
    S_OK
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
    )
}

fn punch_hole(disk: &Disk, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate_range(disk, flags, offset, len)
}

fn fallocate_range(disk: &Disk, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    // Both fit: they are inside the disk, whose size came from an off_t.
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    fallocate(&disk.file, flags, off, len).map_err(io::Error::from)
}

/// Deallocates a range. Discard is a hint: where the backend cannot deallocate, it succeeds
/// without doing anything.
fn discard_range(disk: &Disk, offset: u64, len: u64) -> io::Result<()> {
    let res = if disk.block_dev {
        disk.blk_discard(offset, len)
    } else {
        punch_hole(disk, offset, len)
    };
    match res {
        Err(e) if unsupported(&e) => {
            tracing::debug!(fd = disk.file.as_raw_fd(), error = %e, "discard not supported; ignored");
            Ok(())
        }
        r => r,
    }
}

/// Zeroes a range, deallocating it when `unmap` allows and the backend can. Falls back from
/// hole punching to ZERO_RANGE (or BLKZEROOUT) to writing zeroes.
fn zero_range(disk: &Disk, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
    if unmap {
        // On a block device PUNCH_HOLE|KEEP_SIZE only succeeds if the device guarantees
        // that the range reads back as zeroes.
        match punch_hole(disk, offset, len) {
            Err(e) if unsupported(&e) => {}
            r => return r,
        }
    }
    let res = if disk.block_dev {
        disk.blk_zeroout(offset, len)
    } else {
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate_range(disk, flags, offset, len)
    };
    match res {
        Err(e) if unsupported(&e) => disk.write_zero_bytes(offset, len),
        r => r,
    }
}
