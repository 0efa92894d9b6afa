//! Walking a split-ring descriptor chain, checked against a hostile driver: bounded length,
//! one level of indirection, checked arithmetic, every buffer inside guest memory, writable
//! buffers after readable ones. The result is a list of host-translated segments, kept in a
//! reusable buffer so the hot path does not allocate.

use std::cell::RefCell;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::memory::{host_span, GuestMem};

const DESC_SIZE: u64 = 16;

/// A region of guest memory.
type Region = <GuestMem as GuestMemoryBackend>::R;

/// Longest indirect table accepted, unless the queue itself is larger. Drivers do build
/// indirect tables longer than a small queue (Linux sizes them by the device's `seg_max`, not
/// the ring), so the ring size alone would refuse legitimate I/O; QEMU caps tables at 1024.
pub const MAX_INDIRECT_DESCRIPTORS: u16 = 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A descriptor from its 16 little-endian bytes: addr u64, len u32, flags u16, next u16.
fn descriptor(b: [u8; 16]) -> Descriptor {
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&b[..8]);
    let word = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Descriptor::new(
        u64::from_le_bytes(addr),
        u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        word(12),
        word(14),
    )
}

/// The table an indirect descriptor points to: its address and number of descriptors
/// (at most the queue size or `MAX_INDIRECT_DESCRIPTORS`, whichever is larger).
fn indirect_table(
    mem: &GuestMem,
    d: &Descriptor,
    queue_size: u16,
) -> Result<(GuestAddress, u16), ChainError> {
    let len = d.len();
    let n = len as u64 / DESC_SIZE;
    let max = queue_size.max(MAX_INDIRECT_DESCRIPTORS) as u64;
    if len == 0 || !(len as u64).is_multiple_of(DESC_SIZE) || n > max {
        return Err(ChainError::BadIndirectLen(len));
    }
    if !mem.check_range(d.addr(), len as usize) {
        return Err(ChainError::OutOfMemory {
            addr: d.addr().0,
            len: len as u64,
        });
    }
    Ok((d.addr(), n as u16))
}

/// Why a chain was refused. The queue completes such a chain with length 0 and goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index is outside the table.
    #[error("descriptor index {0} out of range")]
    BadIndex(u16),
    /// More descriptors than the queue (or indirect table) size: a loop or an overlong chain.
    #[error("descriptor chain longer than the queue")]
    TooLong,
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect descriptor table")]
    NestedIndirect,
    /// INDIRECT used without the feature, or with NEXT also set.
    #[error("indirect descriptor not allowed here")]
    IndirectNotAllowed,
    /// Indirect table length is zero, not a multiple of 16 or too large.
    #[error("invalid indirect table length {0}")]
    BadIndirectLen(u32),
    /// A descriptor or table is not inside guest memory.
    #[error("buffer at {addr:#x} (+{len}) is outside guest memory")]
    OutOfMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadAfterWrite,
    /// The total length does not fit in 32 bits.
    #[error("chain length overflows")]
    LengthOverflow,
}

/// One contiguous piece of a buffer, inside a single guest memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
    /// Host virtual address of `addr` in this process (valid while the chain's memory
    /// snapshot is held, that is until the chain is completed).
    pub host: usize,
}

/// Notes descriptor `idx` of a table of `table_len` as seen by the walk on this thread,
/// `taken` descriptors into the table (the bitmap starts empty at `LOOP_CHECK_AFTER`);
/// whether it was seen already.
fn seen_before(idx: u16, table_len: u16, taken: u32) -> bool {
    VISITED.with_borrow_mut(|visited| {
        if taken == LOOP_CHECK_AFTER {
            visited.clear();
            visited.resize(usize::from(table_len).div_ceil(64), 0);
        }
        let (word, bit) = (usize::from(idx / 64), 1u64 << (idx % 64));
        let seen = visited[word] & bit != 0;
        visited[word] |= bit;
        seen
    })
}

/// A walked chain: its head, its segments, and the memory it was translated against.
#[derive(Debug, Default)]
pub struct Chain {
    head: u16,
    segs: Vec<Segment>,
    readable: u32,
    writable: u32,
    mem: Option<Arc<GuestMem>>,
}

thread_local! {
    /// The descriptors of its current table a long walk has seen, one bit each (see
    /// `LOOP_CHECK_AFTER`). One per thread, not per chain: a queue holds up to 32768 chains,
    /// and a bitmap each (up to 4 KiB) would let a driver make it hold 128 MiB.
    static VISITED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Descriptors a walk takes in one table before it starts noting which it has seen. A
/// chain that comes back to a descriptor it passed is a loop, longer than its table (the
/// next index is a function of the descriptor), so it is refused as `TooLong` there instead
/// of after going round the loop up to the table size (up to 32768 descriptors, each
/// translated). A driver that rewrites the table under the walk may see its chain refused
/// either way. Short chains, the usual ones, never pay for the bitmap.
const LOOP_CHECK_AFTER: u32 = 16;

impl Chain {
    /// Head descriptor index.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Every segment in chain order (readable ones first).
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Device-readable segments.
    pub fn readable(&self) -> &[Segment] {
        let n = self.segs.iter().take_while(|s| !s.writable).count();
        &self.segs[..n]
    }

    /// Device-writable segments.
    pub fn writable(&self) -> &[Segment] {
        let n = self.segs.iter().take_while(|s| !s.writable).count();
        &self.segs[n..]
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u32 {
        self.readable
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u32 {
        self.writable
    }

    /// The memory snapshot the host addresses point into.
    pub fn memory(&self) -> Option<&Arc<GuestMem>> {
        self.mem.as_ref()
    }

    /// Copies from the readable part, starting `offset` bytes in. Returns bytes copied.
    pub fn read_at(&self, offset: u32, buf: &mut [u8]) -> usize {
        self.copy(self.readable(), offset, buf.len(), |mem, addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        })
    }

    /// Copies into the writable part, starting `offset` bytes in. Returns bytes copied.
    /// Goes through vm-memory, so dirty logging sees it.
    pub fn write_at(&self, offset: u32, data: &[u8]) -> usize {
        self.copy(self.writable(), offset, data.len(), |mem, addr, range| {
            mem.write_slice(&data[range], addr).is_ok()
        })
    }

    fn copy(
        &self,
        segs: &[Segment],
        offset: u32,
        len: usize,
        mut f: impl FnMut(&GuestMem, GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> usize {
        let Some(mem) = self.mem.as_deref() else {
            return 0;
        };
        let mut skip = offset as u64;
        let mut done = 0usize;
        for s in segs {
            if done == len {
                break;
            }
            let slen = s.len as u64;
            if skip >= slen {
                skip -= slen;
                continue;
            }
            let n = ((slen - skip) as usize).min(len - done);
            if !f(mem, GuestAddress(s.addr + skip), done..done + n) {
                break;
            }
            done += n;
            skip = 0;
        }
        done
    }

    /// Drops the memory snapshot (the chain was completed).
    pub(crate) fn release(&mut self) {
        self.mem = None;
        self.segs.clear();
    }

    /// Walks the chain at `head` of a ring with `queue_size` descriptors at `desc_table`.
    pub fn walk(
        &mut self,
        mem: &Arc<GuestMem>,
        desc_table: GuestAddress,
        queue_size: u16,
        head: u16,
        indirect_ok: bool,
    ) -> Result<(), ChainError> {
        self.segs.clear();
        self.head = head;
        self.readable = 0;
        self.writable = 0;
        self.mem = Some(mem.clone());
        let res = self.walk_inner(mem, desc_table, queue_size, head, indirect_ok);
        if res.is_err() {
            self.segs.clear();
            self.readable = 0;
            self.writable = 0;
        }
        res
    }

    fn walk_inner(
        &mut self,
        mem: &GuestMem,
        mut table: GuestAddress,
        queue_size: u16,
        head: u16,
        indirect_ok: bool,
    ) -> Result<(), ChainError> {
        let mut table_len = queue_size;
        let mut idx = head;
        let mut indirect = false;
        let mut budget = queue_size as u32;
        let mut seen_write = false;
        let mut table_host = host_span(mem, table.0, u64::from(table_len) * DESC_SIZE, 1);
        // The region the last buffer was in: buffers of one chain mostly share a region,
        // and vm-memory's lookup searches every region for each.
        let mut region = None;
        loop {
            if idx >= table_len {
                return Err(ChainError::BadIndex(idx));
            }
            if budget == 0 {
                return Err(ChainError::TooLong);
            }
            let taken = u32::from(table_len) - budget;
            if taken >= LOOP_CHECK_AFTER && seen_before(idx, table_len, taken) {
                return Err(ChainError::TooLong);
            }
            budget -= 1;
            let addr =
                table
                    .checked_add(idx as u64 * DESC_SIZE)
                    .ok_or(ChainError::OutOfMemory {
                        addr: table.0,
                        len: DESC_SIZE,
                    })?;
            let d = match table_host {
                // SAFETY: `host_span` checked that the table's `table_len` descriptors lie in
                // one mapped region of `mem`, which the caller's snapshot keeps mapped for this
                // call, and `idx < table_len`. The driver may write the table concurrently,
                // hence a volatile read of a byte array (alignment 1) into a local copy.
                Some(h) => descriptor(unsafe {
                    std::ptr::read_volatile(
                        (h + idx as usize * DESC_SIZE as usize) as *const [u8; 16],
                    )
                }),
                None => mem.read_obj(addr).map_err(|_| ChainError::OutOfMemory {
                    addr: addr.0,
                    len: DESC_SIZE,
                })?,
            };
            let flags = d.flags();
            if flags & F_INDIRECT != 0 {
                if indirect {
                    return Err(ChainError::NestedIndirect);
                }
                if !indirect_ok || flags & F_NEXT != 0 {
                    return Err(ChainError::IndirectNotAllowed);
                }
                (table, table_len) = indirect_table(mem, &d, queue_size)?;
                table_host = host_span(mem, table.0, u64::from(table_len) * DESC_SIZE, 1);
                budget = u32::from(table_len);
                idx = 0;
                indirect = true;
                continue;
            }
            let writable = flags & F_WRITE != 0;
            if writable {
                seen_write = true;
            } else if seen_write {
                return Err(ChainError::ReadAfterWrite);
            }
            self.push(mem, &mut region, d.addr().0, d.len(), writable)?;
            if flags & F_NEXT == 0 {
                return Ok(());
            }
            idx = d.next();
        }
    }

    fn push<'m>(
        &mut self,
        mem: &'m GuestMem,
        region: &mut Option<&'m Region>,
        addr: u64,
        len: u32,
        writable: bool,
    ) -> Result<(), ChainError> {
        let total = if writable {
            &mut self.writable
        } else {
            &mut self.readable
        };
        *total = total.checked_add(len).ok_or(ChainError::LengthOverflow)?;
        let oob = ChainError::OutOfMemory {
            addr,
            len: len as u64,
        };
        addr.checked_add(len as u64).ok_or(oob)?;
        let mut cur = addr;
        let mut left = len as u64;
        while left > 0 {
            let r = match *region {
                Some(r) if cur >= r.start_addr().0 && cur - r.start_addr().0 < r.len() => r,
                _ => mem.find_region(GuestAddress(cur)).ok_or(oob)?,
            };
            *region = Some(r);
            let region = r;
            let off = cur - region.start_addr().0;
            let avail = region.len() - off;
            let n = left.min(avail);
            let host = region
                .get_host_address(MemoryRegionAddress(off))
                .map_err(|_| oob)? as usize;
            self.segs.push(Segment {
                addr: cur,
                len: n as u32,
                writable,
                host,
            });
            cur += n;
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> Arc<GuestMem> {
        let m: GuestMemoryMmap<crate::dirty_log::LogBitmap> = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .expect("mem");
        Arc::new(m)
    }

    fn put(m: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        m.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(table + i as u64 * 16),
        )
        .expect("desc");
    }

    #[test]
    fn simple_chain_and_region_split() {
        let m = mem();
        put(&m, 0, 0, 0x1000, 16, F_NEXT, 1);
        put(&m, 0, 1, 0xff00, 0x200, F_NEXT | F_WRITE, 2); // crosses into region 2
        put(&m, 0, 2, 0x3000, 1, F_WRITE, 0);
        let mut c = Chain::default();
        c.walk(&m, GuestAddress(0), 8, 0, true).expect("walk");
        assert_eq!(c.readable_len(), 16);
        assert_eq!(c.writable_len(), 0x201);
        assert_eq!(c.readable().len(), 1);
        assert_eq!(c.writable().len(), 3);
        assert_eq!(c.writable()[0].len, 0x100);
        assert_eq!(c.writable()[1].addr, 0x10000);
        assert_eq!(c.write_at(0xfe, &[1, 2, 3, 4]), 4);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0xfffe)).expect("read");
        assert_eq!(b, [1, 2, 3, 4]);
    }

    #[test]
    fn table_across_regions_takes_the_slow_path() {
        // A descriptor table straddling two regions has no single host span: the walker
        // reads it through vm-memory and gets the same chain.
        let m = mem();
        assert!(host_span(&m, 0xfff0, 32, 1).is_none());
        assert!(host_span(&m, 0x1000, 32, 1).is_some());
        put(&m, 0xfff0, 0, 0x1000, 16, F_NEXT, 1);
        put(&m, 0xfff0, 1, 0x2000, 0x200, F_WRITE, 0);
        let mut c = Chain::default();
        c.walk(&m, GuestAddress(0xfff0), 2, 0, true).expect("walk");
        assert_eq!((c.readable_len(), c.writable_len()), (16, 0x200));
        assert_eq!(c.writable()[0].addr, 0x2000);
        // The same through an indirect table that straddles the boundary.
        put(&m, 0x3000, 0, 0xfff0, 32, F_INDIRECT, 0);
        c.walk(&m, GuestAddress(0x3000), 4, 0, true)
            .expect("indirect walk");
        assert_eq!((c.readable_len(), c.writable_len()), (16, 0x200));
    }

    #[test]
    fn hostile_chains() {
        let m = mem();
        let mut c = Chain::default();
        // Loop.
        put(&m, 0, 0, 0x1000, 16, F_NEXT, 1);
        put(&m, 0, 1, 0x1000, 16, F_NEXT, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::TooLong)
        );
        // Next out of range.
        put(&m, 0, 1, 0x1000, 16, F_NEXT, 9);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::BadIndex(9))
        );
        // Buffer outside memory.
        put(&m, 0, 1, 0x30000, 16, 0, 0);
        assert!(matches!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::OutOfMemory { .. })
        ));
        // Address overflow.
        put(&m, 0, 1, u64::MAX - 4, 16, 0, 0);
        assert!(matches!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::OutOfMemory { .. })
        ));
        // Read after write.
        put(&m, 0, 0, 0x1000, 16, F_NEXT | F_WRITE, 1);
        put(&m, 0, 1, 0x1000, 16, 0, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::ReadAfterWrite)
        );
        // Indirect: fine, then nested, then bad length, then not negotiated.
        put(&m, 0, 0, 0x2000, 32, F_INDIRECT, 0);
        put(&m, 0x2000, 0, 0x1000, 8, F_NEXT, 1);
        put(&m, 0x2000, 1, 0x1100, 8, F_WRITE, 0);
        c.walk(&m, GuestAddress(0), 8, 0, true).expect("indirect");
        assert_eq!((c.readable_len(), c.writable_len()), (8, 8));
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, false),
            Err(ChainError::IndirectNotAllowed)
        );
        put(&m, 0x2000, 1, 0x3000, 16, F_INDIRECT, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::NestedIndirect)
        );
        put(&m, 0, 0, 0x2000, 24, F_INDIRECT, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::BadIndirectLen(24))
        );
        put(&m, 0, 0, 0x2000, 16 * 1025, F_INDIRECT, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 0, true),
            Err(ChainError::BadIndirectLen(16400))
        );
        // Longer than the ring but within the indirect limit: fine (Linux does this).
        for i in 0..16u16 {
            let flags = if i < 15 { F_NEXT } else { F_WRITE };
            put(&m, 0x4000, i, 0x1000, 8, flags, i + 1);
        }
        put(&m, 0, 0, 0x4000, 16 * 16, F_INDIRECT, 0);
        c.walk(&m, GuestAddress(0), 8, 0, true)
            .expect("16-entry table on an 8-entry ring");
        assert_eq!(c.segments().len(), 16);
        // Length overflow.
        put(&m, 0, 0, 0x1000, u32::MAX, F_NEXT, 1);
        put(&m, 0, 1, 0x1000, 16, 0, 0);
        assert!(c.walk(&m, GuestAddress(0), 8, 0, true).is_err());
        // Head out of range.
        assert_eq!(
            c.walk(&m, GuestAddress(0), 8, 8, true),
            Err(ChainError::BadIndex(8))
        );
    }

    #[test]
    fn long_chains_and_late_loops() {
        // A chain as long as its 64-entry table, in a scrambled order: accepted, whole.
        let m = mem();
        let order: Vec<u16> = (0..64u16).map(|i| (i * 37) % 64).collect();
        for (k, &i) in order.iter().enumerate() {
            let (flags, next) = match order.get(k + 1) {
                Some(&n) => (F_NEXT, n),
                None => (0, 0),
            };
            put(&m, 0, i, 0x2000 + u64::from(i) * 8, 8, flags, next);
        }
        let mut c = Chain::default();
        c.walk(&m, GuestAddress(0), 64, order[0], true)
            .expect("a chain of the table's size");
        assert_eq!((c.segments().len(), c.readable_len()), (64, 512));
        // The last one points back into the chain, past where the walk starts to note what
        // it saw, and before it: too long either way, and the slot's next walk is clean.
        for back in [40, 20, 3, 0] {
            put(&m, 0, order[63], 0x2000, 8, F_NEXT, order[back]);
            assert_eq!(
                c.walk(&m, GuestAddress(0), 64, order[0], true),
                Err(ChainError::TooLong)
            );
        }
        put(&m, 0, order[63], 0x2000, 8, 0, 0);
        c.walk(&m, GuestAddress(0), 64, order[0], true)
            .expect("the chain again, ended");
        assert_eq!(c.segments().len(), 64);
        // In an indirect table too, and the same loop through a ring of 4.
        for i in 0..32u16 {
            put(&m, 0x4000, i, 0x1000, 8, F_NEXT, (i + 1) % 32);
        }
        put(&m, 0, 0, 0x4000, 32 * 16, F_INDIRECT, 0);
        assert_eq!(
            c.walk(&m, GuestAddress(0), 4, 0, true),
            Err(ChainError::TooLong)
        );
        put(&m, 0x4000, 31, 0x1000, 8, 0, 0);
        c.walk(&m, GuestAddress(0), 4, 0, true)
            .expect("32-entry indirect chain");
        assert_eq!(c.segments().len(), 32);
    }
}
