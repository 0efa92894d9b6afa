//! The driver side of a split ring for the device targets (`rng_request`, `vsock_tx`):
//! chains built from descriptor specs (readable, writable, outside guest memory; in the ring
//! or in an indirect table) in the guest memory of `BLOCK_REGIONS`, made available one at a
//! time or together, and the used ring read back.
//!
//! Every buffer is followed by `GUARD_LEN` guard bytes, device-writable buffers start as
//! `POISON` and readable ones as `READ_FILL` (unless the caller writes them): after a run,
//! `Placed::check_untouched` proves the device wrote nothing outside the writable bytes it
//! reported.

use crate::{descriptor, HostMem, POISON};

/// Written after every buffer; must survive the run.
pub const GUARD: u8 = 0x5a;
/// Guard bytes after each buffer.
pub const GUARD_LEN: u64 = 8;
/// What a device-readable buffer holds unless the caller writes it.
pub const READ_FILL: u8 = 0x3c;
/// Descriptors point here for "outside guest memory" (beyond both regions).
pub const OUTSIDE: u64 = 3 << 20;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Where a ring lies in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct RingAt {
    /// Descriptor table (room for `size` descriptors).
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

/// What one descriptor of a chain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Device-readable.
    Readable,
    /// Device-writable.
    Writable,
    /// Device-writable, outside guest memory (the chain must be refused).
    Outside,
}

/// A descriptor to place: its kind and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescSpec {
    /// Kind.
    pub kind: Kind,
    /// Length in bytes.
    pub len: u32,
}

/// One placed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A chain as placed.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// Head descriptor index.
    pub head: u16,
    /// Its buffers inside guest memory, in chain order.
    pub bufs: Vec<Buf>,
    /// A non-empty descriptor points outside guest memory.
    pub outside: bool,
    /// Device-readable bytes.
    pub readable: u32,
    /// Device-writable bytes (inside guest memory).
    pub writable: u32,
}

/// Allocates buffers from a range of guest memory.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// Next free address.
    pub cursor: u64,
    /// End of the range.
    pub end: u64,
}

impl Area {
    /// `len` bytes, if they fit.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let at = self.cursor;
        let end = at.checked_add(len)?;
        if end > self.end {
            return None;
        }
        self.cursor = end;
        Some(at)
    }
}

/// One split ring, driven from the guest's side.
#[derive(Debug)]
pub struct DriverRing {
    mem: HostMem,
    at: RingAt,
    indirect_ok: bool,
    next_desc: u16,
    placed: u16,
}

impl DriverRing {
    /// A ring at `at` with zeroed rings; `indirect_ok`: INDIRECT_DESC negotiated (an indirect
    /// chain without it is placed anyway, and refused).
    pub fn new(mem: HostMem, at: RingAt, indirect_ok: bool) -> Self {
        let n = usize::from(at.size);
        mem.fill(at.desc, 0, 16 * n);
        mem.fill(at.avail, 0, 6 + 2 * n);
        mem.fill(at.used, 0, 6 + 8 * n);
        DriverRing {
            mem,
            at,
            indirect_ok,
            next_desc: 0,
            placed: 0,
        }
    }

    /// Host memory of the ring.
    pub fn mem(&self) -> HostMem {
        self.mem
    }

    /// Chains placed so far.
    pub fn placed(&self) -> u16 {
        self.placed
    }

    /// Whether INDIRECT_DESC was negotiated.
    pub fn indirect_ok(&self) -> bool {
        self.indirect_ok
    }

    /// Reuses the descriptor table from index 0 (every chain placed so far was used).
    pub fn recycle_descriptors(&mut self) {
        self.next_desc = 0;
    }

    /// Places a chain of `descs` (in an indirect table if `indirect`) with buffers from
    /// `area` and makes it available (not yet published). `fill(i, buf)` may write readable
    /// buffer `i`; otherwise it holds `READ_FILL`. `None` when the ring, the table or the
    /// area is full (nothing is placed then).
    pub fn place(
        &mut self,
        area: &mut Area,
        descs: &[DescSpec],
        indirect: bool,
        fill: impl FnMut(usize, &Buf),
    ) -> Option<Placed> {
        self.place_with(area, descs, indirect, fill, true)
    }

    /// `place`, for a `fill` that writes every byte of every readable buffer: they are not
    /// filled with `READ_FILL` first (a packet's payload can be 64 KiB).
    pub fn place_written(
        &mut self,
        area: &mut Area,
        descs: &[DescSpec],
        indirect: bool,
        fill: impl FnMut(usize, &Buf),
    ) -> Option<Placed> {
        self.place_with(area, descs, indirect, fill, false)
    }

    fn place_with(
        &mut self,
        area: &mut Area,
        descs: &[DescSpec],
        indirect: bool,
        mut fill: impl FnMut(usize, &Buf),
        prefill: bool,
    ) -> Option<Placed> {
        if self.placed >= self.at.size {
            return None;
        }
        let save = (*area, self.next_desc);
        let mut p = Placed::default();
        let mut table = Vec::with_capacity(descs.len());
        for (i, d) in descs.iter().enumerate() {
            let Some(flags) = self.buffer(area, d, i, &mut p, &mut fill, prefill) else {
                (*area, self.next_desc) = save;
                return None;
            };
            table.push(flags);
        }
        let res = if indirect {
            self.link_indirect(area, &table)
        } else {
            self.link_direct(&table)
        };
        let Some(head) = res else {
            (*area, self.next_desc) = save;
            return None;
        };
        p.head = head;
        let slot = self.at.avail + 4 + 2 * u64::from(self.placed % self.at.size);
        self.mem.write(slot, &head.to_le_bytes());
        self.placed += 1;
        Some(p)
    }

    /// One buffer: allocated, filled, guarded; returns its descriptor (addr, len, flags).
    fn buffer(
        &mut self,
        area: &mut Area,
        d: &DescSpec,
        i: usize,
        p: &mut Placed,
        fill: &mut impl FnMut(usize, &Buf),
        prefill: bool,
    ) -> Option<(u64, u32, u16)> {
        if d.kind == Kind::Outside {
            // An empty buffer names no memory: the walker lets it be anywhere.
            p.outside |= d.len > 0;
            return Some((OUTSIDE, d.len, F_WRITE));
        }
        let writable = d.kind == Kind::Writable;
        let addr = area.alloc(u64::from(d.len) + GUARD_LEN)?;
        let b = Buf {
            addr,
            len: d.len,
            writable,
        };
        if writable {
            self.mem.fill(addr, POISON, d.len as usize);
            p.writable += d.len;
        } else {
            if prefill {
                self.mem.fill(addr, READ_FILL, d.len as usize);
            }
            fill(i, &b);
            p.readable += d.len;
        }
        self.mem
            .fill(addr + u64::from(d.len), GUARD, GUARD_LEN as usize);
        p.bufs.push(b);
        Some((addr, d.len, if writable { F_WRITE } else { 0 }))
    }

    fn take_descs(&mut self, n: u16) -> Option<u16> {
        let first = self.next_desc;
        let end = first.checked_add(n)?;
        if end > self.at.size {
            return None;
        }
        self.next_desc = end;
        Some(first)
    }

    fn link_direct(&mut self, table: &[(u64, u32, u16)]) -> Option<u16> {
        let n = u16::try_from(table.len().max(1)).ok()?;
        let first = self.take_descs(n)?;
        if table.is_empty() {
            // A chain of one empty descriptor.
            self.write_desc(self.at.desc, first, (0x4000, 0, 0), false);
        }
        for (k, &d) in table.iter().enumerate() {
            let last = k + 1 == table.len();
            self.write_desc(self.at.desc, first + k as u16, d, !last);
        }
        Some(first)
    }

    fn link_indirect(&mut self, area: &mut Area, table: &[(u64, u32, u16)]) -> Option<u16> {
        let n = table.len().max(1) as u64;
        let at = area.alloc(16 * n)?;
        let head = self.take_descs(1)?;
        self.mem.fill(at, 0, 16 * n as usize);
        for (k, &d) in table.iter().enumerate() {
            let last = k + 1 == table.len();
            self.write_desc(at, k as u16, d, !last);
        }
        let d = descriptor(at, (16 * n) as u32, F_INDIRECT, 0);
        self.mem.write(self.at.desc + 16 * u64::from(head), &d);
        Some(head)
    }

    fn write_desc(&self, table: u64, i: u16, (addr, len, flags): (u64, u32, u16), next: bool) {
        let (flags, nx) = if next {
            (flags | F_NEXT, i + 1)
        } else {
            (flags, 0)
        };
        let d = descriptor(addr, len, flags, nx);
        self.mem.write(table + 16 * u64::from(i), &d);
    }

    /// Publishes every chain placed so far (the available index).
    pub fn publish(&self) {
        self.mem
            .write(self.at.avail + 2, &self.placed.to_le_bytes());
    }

    /// The used index the device published.
    pub fn used_idx(&self) -> u16 {
        let mut b = [0u8; 2];
        self.mem.read(self.at.used + 2, &mut b);
        u16::from_le_bytes(b)
    }

    /// Used element `i` (counted from the start): (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let mut e = [0u8; 8];
        let pos = u64::from(i % self.at.size);
        self.mem.read(self.at.used + 4 + 8 * pos, &mut e);
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (word(&e[..4]), word(&e[4..]))
    }
}

impl Placed {
    /// The first `n` device-writable bytes, in chain order.
    pub fn written(&self, mem: HostMem, n: u32) -> Vec<u8> {
        let mut out = vec![0u8; n as usize];
        let mut done = 0usize;
        for b in self.bufs.iter().filter(|b| b.writable) {
            if done == out.len() {
                break;
            }
            let k = (b.len as usize).min(out.len() - done);
            mem.read(b.addr, &mut out[done..done + k]);
            done += k;
        }
        out.truncate(done);
        out
    }

    /// Whether the first `want.len()` device-writable bytes are `want` (read through
    /// `scratch`).
    pub fn written_is(&self, mem: HostMem, want: &[u8], scratch: &mut Vec<u8>) -> bool {
        let mut done = 0usize;
        for b in self.bufs.iter().filter(|b| b.writable) {
            if done == want.len() {
                break;
            }
            let k = (b.len as usize).min(want.len() - done);
            scratch.resize(k, 0);
            mem.read(b.addr, scratch);
            if scratch[..] != want[done..done + k] {
                return false;
            }
            done += k;
        }
        done == want.len()
    }

    /// Checks that the device changed nothing but the first `used` writable bytes: the rest
    /// of the writable bytes are still `POISON`, guards are intact, and (with
    /// `readable_filled`: no `fill` wrote them) readable buffers still hold `READ_FILL`.
    /// Returns what is wrong.
    pub fn check_untouched(
        &self,
        mem: HostMem,
        used: u32,
        readable_filled: bool,
    ) -> Result<(), String> {
        let mut left = used as usize;
        for (i, b) in self.bufs.iter().enumerate() {
            let len = b.len as usize;
            // (In place: `HostMem::is_all` compares guest memory without copying it out.)
            if !mem.is_all(b.addr + u64::from(b.len), GUARD_LEN as usize, GUARD) {
                return Err(format!(
                    "guard after buffer {i} at {:#x} overwritten",
                    b.addr
                ));
            }
            if b.writable {
                let k = left.min(len);
                left -= k;
                if !mem.is_all(b.addr + k as u64, len - k, POISON) {
                    return Err(format!(
                        "writable buffer {i} at {:#x} written beyond the used length",
                        b.addr
                    ));
                }
            } else if readable_filled && !mem.is_all(b.addr, len, READ_FILL) {
                return Err(format!("readable buffer {i} at {:#x} changed", b.addr));
            }
        }
        Ok(())
    }
}

/// Whether every byte of `b` is `v`. Compares whole blocks (`memcmp`): a loop over the bytes
/// would be instrumented byte by byte and cost more than everything else a run does.
pub fn all(b: &[u8], v: u8) -> bool {
    const BLOCK: usize = 4096;
    static BLOCKS: std::sync::OnceLock<Vec<[u8; BLOCK]>> = std::sync::OnceLock::new();
    let blocks = BLOCKS.get_or_init(|| (0..=255u8).map(|x| [x; BLOCK]).collect());
    let want = &blocks[usize::from(v)];
    b.chunks(BLOCK).all(|c| c == &want[..c.len()])
}
