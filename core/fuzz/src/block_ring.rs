//! The driver side of `block_request`: block requests laid out as descriptor chains in guest
//! memory (two adjacent regions), made available in a split ring, and the used ring read
//! back.

use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryBackend};
use vu_core::GuestMem;

use crate::{descriptor, layout, BlockRequest, MAX_BLOCK_DATA};

/// Guest memory of `block_request`: two adjacent 1 MiB regions, so that a buffer may cross
/// from one to the other.
pub const BLOCK_REGIONS: [(u64, usize); 2] = [(0, 1 << 20), (1 << 20, 1 << 20)];
/// Ring size.
pub const BLOCK_QUEUE_SIZE: u16 = 128;
/// The split ring: descriptor table, available ring, used ring.
pub const BLOCK_DESC: u64 = 0;
/// Available ring.
pub const BLOCK_AVAIL: u64 = 0x1000;
/// Used ring.
pub const BLOCK_USED: u64 = 0x2000;
/// Buffers and indirect tables from here on.
const DATA: u64 = 0x4000;
/// Where buffers start when they straddle the region boundary.
const STRADDLE: u64 = (1 << 20) - 0x1003;
const MEM_END: u64 = 2 << 20;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const HEADER_LEN: u32 = 16;
/// Written into device-writable buffers (status bytes included) before the device runs: no
/// status has this value, so a status never written shows.
pub const POISON: u8 = 0xa5;

/// A request as placed in guest memory.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Head descriptor index.
    pub head: u16,
    /// Laid out as a driver should (no hostile bit; indirect only when negotiated).
    pub proper: bool,
    /// Device-readable bytes (header included).
    pub readable: u32,
    /// Device-writable bytes (status included).
    pub writable: u32,
    /// Guest address and length of each non-empty device-writable buffer, in chain order.
    pub writable_bufs: Vec<(u64, u32)>,
    /// The data as written, when it is device-readable.
    pub sent: Vec<u8>,
}

/// Builds one batch of requests in guest memory.
#[derive(Debug)]
pub struct BlockRing {
    mem: HostMem,
    indirect_ok: bool,
    next_desc: u16,
    cursor: u64,
    placed: u16,
}

/// One descriptor: address, length, flags (without NEXT).
type Desc = (u64, u32, u16);

/// A request's readable data beyond what the input gave: byte `i` of the data is
/// `pattern()[i]`.
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..MAX_BLOCK_DATA as usize)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add((i >> 8) as u8))
            .collect()
    })
}

/// Guest memory written straight through its host mapping: placing a batch writes every
/// buffer, and vm-memory's checked accessors (instrumented like everything else) cost more
/// than the copies.
#[derive(Debug, Clone, Copy)]
pub struct HostMem {
    /// Per region of `BLOCK_REGIONS`: its host address.
    hosts: [usize; 2],
}

impl HostMem {
    /// The host addresses of `mem`'s regions, which must be `BLOCK_REGIONS`.
    pub fn new(mem: &GuestMem) -> Self {
        let host = |i: usize| {
            mem.get_host_address(GuestAddress(BLOCK_REGIONS[i].0))
                .expect("region start") as usize
        };
        HostMem {
            hosts: [host(0), host(1)],
        }
    }

    /// Calls `f(host, done, n)` for each piece of `addr..addr + len` inside one region.
    fn pieces(&self, addr: u64, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
        // The two regions are adjacent in guest addresses: one comparison picks the region
        // (comparisons are traced in fuzz builds, and this runs for every access).
        const SECOND: u64 = BLOCK_REGIONS[1].0;
        const END: u64 = SECOND + BLOCK_REGIONS[1].1 as u64;
        const _: () = assert!(BLOCK_REGIONS[0].0 == 0 && BLOCK_REGIONS[0].1 as u64 == SECOND);
        // Nearly every access lies in one region: one call, no loop.
        let i = usize::from(addr >= SECOND);
        let (start, size) = BLOCK_REGIONS[i];
        let off = addr.wrapping_sub(start) as usize;
        if off < size && len <= size - off {
            f((self.hosts[i] + off) as *mut u8, 0, len);
            return;
        }
        let mut done = 0;
        while done < len {
            let a = addr + done as u64;
            assert!(a < END, "address inside guest memory");
            let i = usize::from(a >= SECOND);
            let (start, size) = BLOCK_REGIONS[i];
            let off = (a - start) as usize;
            let n = (len - done).min(size - off);
            f((self.hosts[i] + off) as *mut u8, done, n);
            done += n;
        }
    }

    /// Writes `bytes` at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.pieces(addr, bytes.len(), |host, done, n| {
            // SAFETY: `pieces` gives a host range of `n` bytes inside one region of the guest
            // memory these addresses came from, which its owner keeps mapped; no device runs
            // while a batch is placed (the last one was drained), so nothing else accesses it.
            // (libc's memcpy, not `ptr::copy_nonoverlapping`: the fuzz build's debug
            // assertions check the latter's preconditions at every call, instrumented.)
            unsafe { libc::memcpy(host.cast(), bytes[done..].as_ptr().cast(), n) };
        });
    }

    /// Reads `out.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, out: &mut [u8]) {
        self.pieces(addr, out.len(), |host, done, n| {
            // SAFETY: as in `write`; the device has finished with the batch (drained).
            unsafe { libc::memcpy(out[done..].as_mut_ptr().cast(), host.cast(), n) };
        });
    }

    /// Whether the `len` bytes at `addr` all hold `byte`, compared where they are (copying
    /// them out first cost as much as the comparison).
    pub fn is_all(&self, addr: u64, len: usize, byte: u8) -> bool {
        let mut same = true;
        self.pieces(addr, len, |host, _, n| {
            // SAFETY: as in `write`; the device has finished with the batch (drained), so
            // nothing writes these bytes while the shared slice lives.
            let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), n) };
            same &= crate::ring::all(bytes, byte);
        });
        same
    }

    /// Writes `len` bytes of `byte` at `addr`.
    pub fn fill(&self, addr: u64, byte: u8, len: usize) {
        self.pieces(addr, len, |host, _, n| {
            // SAFETY: as in `write`.
            unsafe { libc::memset(host.cast(), i32::from(byte), n) };
        });
    }
}

impl BlockRing {
    /// An empty batch; buffers from the data area, or just below the region boundary.
    pub fn new(mem: HostMem, indirect_ok: bool, straddle: bool) -> Self {
        let start = if straddle { STRADDLE } else { DATA };
        BlockRing {
            mem,
            indirect_ok,
            next_desc: 0,
            cursor: start,
            placed: 0,
        }
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let at = self.cursor;
        let end = at.checked_add(len)?;
        if end > MEM_END {
            return None;
        }
        self.cursor = end;
        Some(at)
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write(addr, bytes);
    }

    /// The request's buffers, written into guest memory, as descriptors in chain order.
    fn buffers(&mut self, r: &BlockRequest, p: &mut Placed) -> Option<Vec<Desc>> {
        let hflag = if r.layout & layout::WRITABLE_HEADER != 0 {
            F_WRITE
        } else {
            0
        };
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&r.ty.to_le_bytes());
        header[8..].copy_from_slice(&r.sector.to_le_bytes());
        let h = self.alloc(u64::from(HEADER_LEN))?;
        self.write(h, &header);
        let mut descs = if r.layout & layout::SPLIT_HEADER != 0 {
            vec![(h, 8, hflag), (h + 8, 8, hflag)]
        } else {
            vec![(h, HEADER_LEN, hflag)]
        };
        let readable = r.data_readable();
        let status_in_data = !readable && r.len > 0 && r.layout & layout::STATUS_IN_DATA != 0;
        let with_status = r.layout & layout::NO_STATUS == 0;
        if r.len > 0 {
            let dflag = if readable { 0 } else { F_WRITE };
            let pieces = u32::from(r.layout & layout::PIECES) + 1;
            let each = r.len / pieces;
            let mut left = r.len;
            for k in 0..pieces {
                let n = if k + 1 == pieces { left } else { each };
                left -= n;
                let extra = u32::from(k + 1 == pieces && status_in_data && with_status);
                let a = self.alloc(u64::from(n + extra))?;
                if readable {
                    let from = p.sent.len();
                    let to = from + n as usize;
                    let given = r.data.len().clamp(from, to);
                    p.sent
                        .extend_from_slice(r.data.get(from..given).unwrap_or(&[]));
                    p.sent.extend_from_slice(&pattern()[given..to]);
                    self.write(a, &p.sent[from..]);
                } else {
                    // What the device does not overwrite shows.
                    self.mem.fill(a, POISON, (n + extra) as usize);
                }
                descs.push((a, n + extra, dflag));
            }
        }
        if with_status && !status_in_data {
            let a = self.alloc(1)?;
            self.write(a, &[POISON]);
            descs.push((a, 1, F_WRITE));
        }
        Some(descs)
    }

    /// Lays out `r` and makes it available. `None` when the ring or memory is full (the
    /// batch ends there).
    pub fn place(&mut self, r: &BlockRequest) -> Option<Placed> {
        let save = (self.cursor, self.next_desc);
        let res = self.place_inner(r);
        if res.is_none() {
            (self.cursor, self.next_desc) = save;
        }
        res
    }

    fn place_inner(&mut self, r: &BlockRequest) -> Option<Placed> {
        let indirect = r.layout & layout::INDIRECT != 0;
        let mut p = Placed {
            head: self.next_desc,
            proper: r.layout & (layout::FLIP_DATA | layout::WRITABLE_HEADER) == 0
                && (!indirect || self.indirect_ok),
            readable: 0,
            writable: 0,
            writable_bufs: Vec::new(),
            sent: Vec::new(),
        };
        let descs = self.buffers(r, &mut p)?;
        for &(addr, len, flags) in &descs {
            if flags & F_WRITE == 0 {
                p.readable += len;
            } else {
                p.writable += len;
                if len > 0 {
                    p.writable_bufs.push((addr, len));
                }
            }
        }
        let n = descs.len() as u16;
        if indirect {
            let table = self.alloc(16 * u64::from(n))?;
            self.chain(table, 0, &descs);
            self.take_descs(1)?;
            let d = descriptor(table, 16 * u32::from(n), F_INDIRECT, 0);
            self.write(BLOCK_DESC + 16 * u64::from(p.head), &d);
        } else {
            self.take_descs(n)?;
            self.chain(BLOCK_DESC, p.head, &descs);
        }
        let slot = BLOCK_AVAIL + 4 + 2 * u64::from(self.placed % BLOCK_QUEUE_SIZE);
        self.write(slot, &p.head.to_le_bytes());
        self.placed += 1;
        Some(p)
    }

    fn take_descs(&mut self, n: u16) -> Option<()> {
        let end = self.next_desc.checked_add(n)?;
        if end > BLOCK_QUEUE_SIZE {
            return None;
        }
        self.next_desc = end;
        Some(())
    }

    /// Writes `descs` linked with NEXT at `first..` of the table at `table`.
    fn chain(&self, table: u64, first: u16, descs: &[Desc]) {
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let next = if last { 0 } else { i + 1 };
            let d = descriptor(addr, len, flags, next);
            self.write(table + 16 * u64::from(i), &d);
        }
    }

    /// Publishes every placed request (the available index).
    pub fn publish(&self) {
        self.write(BLOCK_AVAIL + 2, &self.placed.to_le_bytes());
    }
}

impl Placed {
    /// The guest address of the status byte: the last device-writable byte, where the
    /// device puts it (none without a device-writable byte).
    pub fn status_addr(&self) -> Option<u64> {
        self.writable_bufs
            .last()
            .map(|&(a, len)| a + u64::from(len) - 1)
    }

    /// The device-writable bytes before the status byte, read back.
    pub fn written(&self, mem: HostMem) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.writable as usize);
        for &(a, len) in &self.writable_bufs {
            let start = out.len();
            out.resize(start + len as usize, 0);
            mem.read(a, &mut out[start..]);
        }
        out.pop();
        out
    }
}

/// Zeroes the ring area. Buffers need no clearing: every byte a chain names is written when
/// the chain is placed (data, or `POISON` where the device is to write).
pub fn clear_rings(mem: HostMem) {
    mem.fill(0, 0, DATA as usize);
}

/// The used ring: its index and its first `n` elements (id, len).
pub fn used_ring(mem: HostMem, n: u16) -> (u16, Vec<(u32, u32)>) {
    let mut idx = [0u8; 2];
    mem.read(BLOCK_USED + 2, &mut idx);
    let elems = (0..n.min(BLOCK_QUEUE_SIZE))
        .map(|i| {
            let mut e = [0u8; 8];
            mem.read(BLOCK_USED + 4 + 8 * u64::from(i), &mut e);
            let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (word(&e[..4]), word(&e[4..]))
        })
        .collect();
    (u16::from_le_bytes(idx), elems)
}
