//! One virtio-blk request (virtio 1.2, 5.2.6): header parsing and validation, the status
//! byte, the iovecs for its data, and synchronous execution of every request type.

use virtio_bindings::virtio_blk::*;
use vu_core::Chain;

use super::discard;
use super::disk::{Counters, Disk, SECTOR_SIZE};
use super::iovec::IoVecs;

/// The request header: type u32, reserved u32, sector u64.
pub(crate) const HEADER_LEN: u32 = 16;
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

pub(crate) const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(crate) const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub(crate) const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Data size from which a request finished on the queue thread is published to the driver at
/// once instead of with the rest of its batch. Such a request takes long enough (tens of us
/// for 64 KiB) that letting the driver see it, and refill the ring, while the thread works on
/// the next ones keeps the queue from going empty; for small requests the extra used-index
/// store and notification check would cost more than they save.
const PUBLISH_EARLY_BYTES: u32 = 64 << 10;

/// Data size from which a buffered read or write may go to io_uring's kernel workers instead
/// of being copied on the queue thread (see `UringHandler::start`): a copy of 64 KiB takes
/// about as long as handing it over and being told it is done, so smaller ones stay inline.
pub(crate) const OFFLOAD_BYTES: u32 = 64 << 10;

/// Whether a request this large should be published as soon as it completes.
pub(crate) fn publish_early(chain: &Chain) -> bool {
    chain.readable_len().saturating_add(chain.writable_len()) >= PUBLISH_EARLY_BYTES
}

/// What a chain asks for, once validated against the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// No device-writable byte: no status can be reported; complete with length 0.
    NoStatus,
    /// Answer at once with this status.
    Status(u8),
    /// Read `len` bytes at byte `offset` into the writable buffers.
    Read { offset: u64, len: u32 },
    /// Write `len` bytes from the readable buffers after the header to byte `offset`.
    Write { offset: u64, len: u32 },
    /// Make completed writes durable.
    Flush,
    /// Return the serial.
    GetId,
    /// Discard ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
}

/// Parses and validates the request in `chain`.
pub(crate) fn classify(disk: &Disk, chain: &Chain) -> Action {
    if chain.writable_len() == 0 {
        return Action::NoStatus;
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    if chain.readable_len() < HEADER_LEN {
        return Action::Status(S_IOERR);
    }
    match chain.readable().first() {
        // The usual layout: the whole header in the first buffer. Copy it straight from its
        // host address instead of through vm-memory's generic accessors (hot path).
        Some(s) if s.len >= HEADER_LEN => {
            // SAFETY: `walk` translated this segment to one contiguous host mapping of
            // `s.len` >= 16 bytes inside a single guest memory region, and the chain holds
            // that memory snapshot (so the mapping) until the request is completed, which
            // is after this call. The driver may write the buffer concurrently, hence one
            // volatile read of a byte array (alignment 1) into a local copy.
            hdr = unsafe { std::ptr::read_volatile(s.host as *const [u8; HEADER_LEN as usize]) };
        }
        _ => {
            if chain.read_at(0, &mut hdr) != hdr.len() {
                return Action::Status(S_IOERR);
            }
        }
    }
    let (ty, rest) = hdr.split_at(4);
    let ty = u32::from_le_bytes(ty.try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(rest[4..].try_into().unwrap_or_default());
    match ty {
        VIRTIO_BLK_T_IN => data_request(disk, sector, chain.writable_len() - 1, false),
        VIRTIO_BLK_T_OUT if disk.read_only => Action::Status(S_IOERR),
        VIRTIO_BLK_T_OUT => data_request(disk, sector, chain.readable_len() - HEADER_LEN, true),
        VIRTIO_BLK_T_FLUSH => Action::Flush,
        VIRTIO_BLK_T_GET_ID => Action::GetId,
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if disk.read_only => {
            Action::Status(S_IOERR)
        }
        VIRTIO_BLK_T_DISCARD => Action::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => Action::WriteZeroes,
        _ => Action::Status(S_UNSUPP),
    }
}

fn data_request(disk: &Disk, sector: u64, len: u32, write: bool) -> Action {
    if !u64::from(len).is_multiple_of(SECTOR_SIZE) {
        return Action::Status(S_IOERR);
    }
    match sector.checked_mul(SECTOR_SIZE) {
        Some(offset) if disk.in_range(offset, u64::from(len)) => {
            if write {
                Action::Write { offset, len }
            } else {
                Action::Read { offset, len }
            }
        }
        _ => Action::Status(S_IOERR),
    }
}

/// Writes `status` into the last writable byte. Returns the used length: `data_written`
/// bytes of data plus the status byte (0 if there is nowhere to put a status).
pub(crate) fn finish(disk: &Disk, chain: &Chain, status: u8, data_written: u32) -> u32 {
    match status {
        S_IOERR => Counters::bump(&disk.counters.io_errors),
        S_UNSUPP => Counters::bump(&disk.counters.unsupported),
        _ => {}
    }
    let w = chain.writable_len();
    let Some(last) = chain.writable().last().filter(|s| s.len > 0) else {
        return 0;
    };
    // SAFETY: `walk` translated the last writable segment to a contiguous host mapping of
    // `last.len` > 0 bytes, kept mapped by the chain's memory snapshot until the request is
    // completed (after this call); its last byte is the status byte. A volatile byte write,
    // since the driver shares the memory. Dirty logging: `QueueIo::complete` marks every
    // writable segment while logging is active.
    unsafe { std::ptr::write_volatile((last.host + last.len as usize - 1) as *mut u8, status) };
    data_written.saturating_add(1).min(w)
}

/// Fills `iov` with the data buffers of a read (`write == false`: the writable bytes before
/// the status) or a write (the readable bytes after the header), `len` bytes in all.
pub(crate) fn build_iovecs(chain: &Chain, write: bool, len: u32, iov: &mut IoVecs) {
    iov.clear();
    let (segs, mut skip) = if write {
        (chain.readable(), HEADER_LEN)
    } else {
        (chain.writable(), 0)
    };
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
        iov.push(s.host + skip as usize, n as usize);
        left -= n;
        skip = 0;
    }
}

/// Whether the kernel can take `iov` as it is (O_DIRECT needs aligned buffers).
pub(crate) fn direct_ok(disk: &Disk, iov: &IoVecs) -> bool {
    !disk.direct || iov.aligned(disk.dio_align)
}

/// Reads or writes synchronously; returns the status.
pub(crate) fn rw_sync(
    disk: &Disk,
    chain: &Chain,
    write: bool,
    offset: u64,
    len: u32,
    iov: &mut IoVecs,
) -> u8 {
    Counters::bump(if write {
        &disk.counters.writes
    } else {
        &disk.counters.reads
    });
    build_iovecs(chain, write, len, iov);
    let dsync = write && disk.write_through();
    let res = if direct_ok(disk, iov) {
        disk.rw_vectored(iov, offset, write, dsync)
    } else {
        disk.rw_bounce(offset, len as usize, write, dsync, |done, buf| {
            let at = done as u32;
            if write {
                chain.read_at(HEADER_LEN + at, buf) == buf.len()
            } else {
                chain.write_at(at, buf) == buf.len()
            }
        })
    };
    match res {
        Ok(()) => {
            if dsync {
                Counters::bump(&disk.counters.durable_writes);
            }
            disk.counters.transferred(write, len);
            S_OK
        }
        Err(e) => {
            vu_core::warn_ratelimited!(write, offset, len, error = %e, "block I/O failed");
            S_IOERR
        }
    }
}

/// fdatasync for a FLUSH request; returns the status.
pub(crate) fn flush_sync(disk: &Disk) -> u8 {
    Counters::bump(&disk.counters.flushes);
    match disk.sync() {
        Ok(()) => S_OK,
        Err(e) => {
            vu_core::warn_ratelimited!(error = %e, "flush failed");
            S_IOERR
        }
    }
}

/// Executes `action` to the end on this thread; returns the used length.
pub(crate) fn execute_sync(disk: &Disk, chain: &Chain, action: Action, iov: &mut IoVecs) -> u32 {
    match action {
        Action::NoStatus => 0,
        Action::Status(s) => finish(disk, chain, s, 0),
        Action::Read { offset, len } => {
            let s = rw_sync(disk, chain, false, offset, len, iov);
            finish(disk, chain, s, if s == S_OK { len } else { 0 })
        }
        Action::Write { offset, len } => {
            let s = rw_sync(disk, chain, true, offset, len, iov);
            finish(disk, chain, s, 0)
        }
        Action::Flush => finish(disk, chain, flush_sync(disk), 0),
        Action::GetId => get_id(disk, chain),
        Action::Discard => finish(disk, chain, discard::execute(disk, chain, false), 0),
        Action::WriteZeroes => finish(disk, chain, discard::execute(disk, chain, true), 0),
    }
}

/// GET_ID: the serial, zero padded, truncated to the room before the status byte.
fn get_id(disk: &Disk, chain: &Chain) -> u32 {
    let room = (chain.writable_len() - 1) as usize;
    let n = room.min(ID_BYTES);
    if chain.write_at(0, &disk.serial[..n]) != n {
        return finish(disk, chain, S_IOERR, 0);
    }
    finish(disk, chain, S_OK, n as u32)
}
