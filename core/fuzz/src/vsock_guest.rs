//! The guest's side of `vsock_tx`: TX packets laid out as chains of the shape a packet's
//! `layout` asks for, and a receive ring whose buffers (one per slot, of a chosen shape) the
//! guest posts and reads back.

use std::sync::OnceLock;

use vu_devices::vsock::packet::{Header, HEADER_LEN};

use crate::ring::{Area, Buf, DescSpec, DriverRing, Kind, Placed, RingAt, GUARD, GUARD_LEN};
use crate::vsock::{layout, RxShape};
use crate::{descriptor, HostMem, POISON};

/// The TX ring.
pub const TX_RING: RingAt = RingAt {
    desc: 0,
    avail: 0x1000,
    used: 0x2000,
    size: 128,
};
/// The RX ring: 64 slots of two descriptors each.
pub const RX_RING: RingAt = RingAt {
    desc: 0x3000,
    avail: 0x4000,
    used: 0x5000,
    size: 128,
};
/// TX buffers (reused by every packet: each is used before the next is placed).
pub const TX_AREA: Area = Area {
    cursor: 0x8000,
    end: 1 << 20,
};
/// RX buffers: slot `s` at `RX_BASE + s * RX_STRIDE`.
const RX_BASE: u64 = 1 << 20;
const RX_STRIDE: u64 = 8192;
/// Receive slots.
pub const RX_SLOTS: u16 = 64;
/// Payload room of a normal receive buffer (Linux's).
pub const RX_PAYLOAD: u32 = 4096;

/// Payload bytes of TX packet number `seq`: `payload_bytes()[offset(seq)..]`.
pub fn payload_bytes() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..(256 << 10))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    })
}

/// Where packet `seq`'s payload starts in `payload_bytes()`.
pub fn payload_offset(seq: usize) -> usize {
    (seq * 7919) % (128 << 10)
}

/// A TX packet as placed.
#[derive(Debug)]
pub struct TxPlaced {
    /// The chain.
    pub placed: Placed,
    /// Readable bytes the device sees.
    pub readable: u32,
    /// The core refuses the chain.
    pub refused: bool,
}

/// The descriptors of a packet with `payload` bytes (`CUT`: one fewer in the buffers), and
/// the offset in the packet's bytes (header, then payload) each readable one starts at.
fn tx_descs(payload: u32, lay: u8) -> Vec<(DescSpec, u32)> {
    let r = |len: u32| DescSpec {
        kind: Kind::Readable,
        len,
    };
    let h = HEADER_LEN as u32;
    if lay & layout::SHORT_HEADER != 0 {
        return vec![(r(20), 0)];
    }
    let pay = if lay & layout::CUT != 0 {
        payload.saturating_sub(1)
    } else {
        payload
    };
    let mut d = match lay & layout::SPLIT {
        0 => vec![(r(h + pay), 0)],
        2 => vec![(r(20), 0), (r(24), 20)],
        _ => vec![(r(h), 0)],
    };
    if lay & layout::EMPTY != 0 {
        d.push((r(0), h));
    }
    match lay & layout::SPLIT {
        1 | 2 => d.push((r(pay), h)),
        3 => {
            let a = pay / 3;
            d.extend([(r(a), h), (r(a), h + a), (r(pay - 2 * a), h + 2 * a)]);
        }
        _ => {}
    }
    if lay & layout::OUTSIDE != 0 {
        let outside = DescSpec {
            kind: Kind::Outside,
            len: pay.max(1),
        };
        match d.iter().position(|(_, at)| *at >= h) {
            Some(i) => d[i].0 = outside,
            None => d.push((outside, h)),
        }
    }
    if lay & layout::WRITABLE_TAIL != 0 {
        let w = DescSpec {
            kind: Kind::Writable,
            len: 64,
        };
        d.push((w, 0));
    }
    d
}

/// Places TX packet `seq` (header bytes `head`, `payload` bytes) as `lay` asks and makes it
/// available (not published). `None` if it does not fit (it cannot: the area takes the
/// largest packet).
pub fn place_tx(
    ring: &mut DriverRing,
    head: &[u8; HEADER_LEN],
    seq: usize,
    payload: u32,
    lay: u8,
) -> Option<TxPlaced> {
    let descs = tx_descs(payload, lay);
    let specs: Vec<DescSpec> = descs.iter().map(|(d, _)| *d).collect();
    let mem = ring_mem(ring);
    let src = &payload_bytes()[payload_offset(seq)..];
    let fill = |i: usize, b: &Buf| {
        let at = descs[i].1 as usize;
        let (len, h) = (b.len as usize, HEADER_LEN);
        let in_head = h.saturating_sub(at).min(len);
        if in_head > 0 {
            mem.write(b.addr, &head[at..at + in_head]);
        }
        if len > in_head {
            let from = at + in_head - h;
            mem.write(b.addr + in_head as u64, &src[from..from + len - in_head]);
        }
    };
    let indirect = lay & layout::INDIRECT != 0;
    let mut area = TX_AREA;
    ring.recycle_descriptors();
    // `fill` writes every byte (header, then payload).
    let placed = ring.place_written(&mut area, &specs, indirect, fill)?;
    let refused = placed.outside || (indirect && !ring.indirect_ok());
    Some(TxPlaced {
        readable: placed.readable,
        placed,
        refused,
    })
}

fn ring_mem(ring: &DriverRing) -> HostMem {
    ring.mem()
}

/// A receive buffer the guest posted.
#[derive(Debug, Clone)]
pub struct RxPosted {
    /// Its shape.
    pub shape: RxShape,
    /// Its buffers.
    pub placed: Placed,
}

/// What a free receive slot's memory is known to hold: its buffers and guards as `post`
/// laid them out for `shape`, except at most the first `dirty` writable bytes (in chain
/// order), which the device may have filled. Known only for a slot whose buffer came back
/// and passed `Placed::check_untouched` (in `take_used`): then posting the same shape again
/// only has to poison those bytes again, not the whole 4 KiB buffer.
#[derive(Debug, Clone, Copy)]
struct Known {
    shape: RxShape,
    dirty: u32,
}

/// The guest's receive ring. It is kept from input to input (`reset`), with what it knows
/// of its slots' memory (the guest memory stays).
#[derive(Debug)]
pub struct RxRing {
    mem: HostMem,
    free: Vec<u16>,
    posted: Vec<Option<RxPosted>>,
    known: Vec<Option<Known>>,
    avail: u16,
    used_seen: u16,
}

impl RxRing {
    /// An empty ring (zeroed), every slot free, nothing known of the slots' memory.
    pub fn new(mem: HostMem) -> Self {
        let mut ring = RxRing {
            mem,
            free: Vec::with_capacity(usize::from(RX_SLOTS)),
            posted: vec![None; usize::from(RX_SLOTS)],
            known: vec![None; usize::from(RX_SLOTS)],
            avail: 0,
            used_seen: 0,
        };
        ring.reset();
        ring
    }

    /// Back to `new`'s state (rings zeroed, every slot free, in the same order), keeping
    /// what is known of the memory of slots that came back. A slot still posted (its buffer
    /// never came back) is not known.
    pub fn reset(&mut self) {
        let n = usize::from(RX_RING.size);
        self.mem.fill(RX_RING.desc, 0, 16 * n);
        self.mem.fill(RX_RING.avail, 0, 6 + 2 * n);
        self.mem.fill(RX_RING.used, 0, 6 + 8 * n);
        self.free.clear();
        self.free.extend((0..RX_SLOTS).rev());
        self.posted.fill(None);
        self.avail = 0;
        self.used_seen = 0;
    }

    /// Buffers posted and not yet used.
    pub fn outstanding(&self) -> usize {
        usize::from(RX_SLOTS) - self.free.len()
    }

    /// Posts up to `n` buffers of `shape` and publishes them.
    pub fn post(&mut self, shape: RxShape, n: usize) {
        for _ in 0..n {
            let Some(slot) = self.free.pop() else {
                break;
            };
            let base = RX_BASE + u64::from(slot) * RX_STRIDE;
            let h = HEADER_LEN as u32;
            let bufs: Vec<Buf> = match shape {
                RxShape::Normal => vec![buf(base, h + RX_PAYLOAD, true)],
                RxShape::Split => vec![buf(base, h, true), buf(base + 64, RX_PAYLOAD, true)],
                RxShape::Small => vec![buf(base, 40, true)],
                RxShape::Readable => vec![buf(base, h + RX_PAYLOAD, false)],
            };
            let mut placed = Placed {
                head: 2 * slot,
                ..Placed::default()
            };
            // A slot known to hold this shape needs only its dirty bytes poisoned again.
            let known = self.known[usize::from(slot)]
                .take()
                .filter(|k| k.shape == shape);
            let mut dirty = known.map_or(0, |k| k.dirty);
            for (k, b) in bufs.iter().enumerate() {
                if known.is_some() {
                    if b.writable {
                        let n = dirty.min(b.len);
                        dirty -= n;
                        self.mem.fill(b.addr, POISON, n as usize);
                    }
                } else {
                    let fill = if b.writable {
                        POISON
                    } else {
                        crate::ring::READ_FILL
                    };
                    self.mem.fill(b.addr, fill, b.len as usize);
                    self.mem
                        .fill(b.addr + u64::from(b.len), GUARD, GUARD_LEN as usize);
                }
                let last = k + 1 == bufs.len();
                let flags = u16::from(!last) | if b.writable { 2 } else { 0 };
                let next = if last { 0 } else { 2 * slot + 1 };
                let d = descriptor(b.addr, b.len, flags, next);
                self.mem
                    .write(RX_RING.desc + 16 * u64::from(2 * slot + k as u16), &d);
                if b.writable {
                    placed.writable += b.len;
                } else {
                    placed.readable += b.len;
                }
            }
            placed.bufs = bufs;
            let entry = RX_RING.avail + 4 + 2 * u64::from(self.avail % RX_RING.size);
            self.mem.write(entry, &(2 * slot).to_le_bytes());
            self.avail = self.avail.wrapping_add(1);
            self.posted[usize::from(slot)] = Some(RxPosted { shape, placed });
        }
        self.mem.write(RX_RING.avail + 2, &self.avail.to_le_bytes());
    }

    /// What the device used since the last call: (buffer, used length), in order. An id
    /// that names no posted buffer is an error, and so is a buffer the device changed
    /// outside its first `len` writable bytes (`Placed::check_untouched`).
    pub fn take_used(&mut self) -> Result<Vec<(RxPosted, u32)>, String> {
        let mut b = [0u8; 2];
        self.mem.read(RX_RING.used + 2, &mut b);
        let idx = u16::from_le_bytes(b);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let mut e = [0u8; 8];
            let pos = u64::from(self.used_seen % RX_RING.size);
            self.mem.read(RX_RING.used + 4 + 8 * pos, &mut e);
            let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let slot = usize::try_from(id / 2).unwrap_or(usize::MAX);
            let posted = (id % 2 == 0)
                .then(|| self.posted.get_mut(slot).and_then(Option::take))
                .flatten()
                .ok_or_else(|| format!("rx used id {id} names no posted buffer"))?;
            if let Err(e) = posted.placed.check_untouched(self.mem, len, true) {
                return Err(format!("rx buffer: {e}"));
            }
            self.known[slot] = Some(Known {
                shape: posted.shape,
                dirty: len,
            });
            self.free.push(slot as u16);
            out.push((posted, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        Ok(out)
    }

    /// The packet in a used buffer: header and payload (None for a used length of 0).
    pub fn packet(&self, p: &RxPosted, len: u32) -> Result<Option<(Header, Vec<u8>)>, String> {
        if len == 0 {
            return Ok(None);
        }
        let h = HEADER_LEN as u32;
        if len < h {
            return Err(format!(
                "rx buffer used with {len} bytes, less than a header"
            ));
        }
        let bytes = p.placed.written(self.mem, len);
        let hdr = Header::decode(&bytes).ok_or("rx header")?;
        if hdr.len != len - h {
            return Err(format!("rx used length {len} but header len {}", hdr.len));
        }
        Ok(Some((hdr, bytes[HEADER_LEN..].to_vec())))
    }

    /// Host memory of the ring.
    pub fn mem(&self) -> HostMem {
        self.mem
    }
}

fn buf(addr: u64, len: u32, writable: bool) -> Buf {
    Buf {
        addr,
        len,
        writable,
    }
}
