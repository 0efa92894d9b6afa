//! `QueueIo::reset`: a queue put back in a start's state behaves exactly like a fresh
//! `QueueIo::new` over the same rings, whatever it held, refused or completed before, and a
//! setup it cannot start leaves it as it was. Driven over a driver-side split ring written by
//! hand.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::QueueIo;

const SIZE: u16 = 16;
/// Heads below this are valid chains; `BAD` points outside guest memory.
const HEADS: u16 = SIZE / 2;
const BAD: u16 = HEADS - 1;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUFS: u64 = 0x10000;
const MEM_SIZE: u64 = 0x40000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Ring {
    mem: GuestMemoryMmap<LogBitmap>,
    avail_idx: u16,
}

impl Ring {
    fn new() -> Self {
        let mem =
            GuestMemoryMmap::<LogBitmap>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
                .expect("guest memory");
        Ring { mem, avail_idx: 0 }
    }

    /// Zeroes the rings, as a driver does before it starts a queue again.
    fn clear(&mut self) {
        let zero = vec![0u8; 0x3000];
        self.mem
            .write_slice(&zero, GuestAddress(DESC))
            .expect("rings");
        self.avail_idx = 0;
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(DESC + 16 * u64::from(i)))
            .expect("descriptor");
    }

    /// Makes heads available: head `h < BAD` is a readable 16-byte buffer followed by a
    /// writable buffer of `64 * (h + 1)` bytes (descriptors `h` and `h + HEADS`); `BAD` is
    /// the same with its writable buffer outside guest memory (refused); a head of `SIZE` or
    /// more is out of range.
    fn offer(&mut self, heads: &[u16]) {
        for &h in heads {
            if h < HEADS {
                let at = BUFS + 0x1000 * u64::from(h);
                let wr = if h == BAD { MEM_SIZE } else { at + 0x100 };
                self.desc(h, at, 16, F_NEXT, h + HEADS);
                self.desc(h + HEADS, wr, 64 * (u32::from(h) + 1), F_WRITE, 0);
            }
            self.write_avail_entry(h);
        }
        self.publish();
    }

    fn write_avail_entry(&mut self, h: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
        self.mem.write_obj(h, GuestAddress(slot)).expect("avail");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn publish(&self) {
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("avail idx");
    }

    fn used(&self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
        (0..idx)
            .map(|i| {
                let e = USED + 4 + 8 * u64::from(i % SIZE);
                (
                    self.mem.read_obj(GuestAddress(e)).expect("id"),
                    self.mem.read_obj(GuestAddress(e + 4)).expect("len"),
                )
            })
            .collect()
    }
}

fn setup(base: u16) -> QueueSetup {
    QueueSetup {
        index: 0,
        size: SIZE,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        base,
        event_idx: false,
        indirect: false,
    }
}

fn queue(r: &Ring, base: u16) -> QueueIo {
    QueueIo::new(
        &setup(base),
        GuestMemoryAtomic::new(r.mem.clone()),
        None,
        DirtyLog::new(),
        Arc::new(VringShared::default()),
    )
    .expect("queue")
}

/// What the device sees of a queue: its indexes, what it holds, and each held chain.
fn state(q: &QueueIo) -> (u16, u16, usize, bool, bool) {
    (
        q.next_avail(),
        q.next_used(),
        q.in_device(),
        q.drained(),
        q.is_broken(),
    )
}

/// One session: pops everything, completes the even heads (writing `len` bytes), keeps the
/// odd ones; returns (head, readable, writable) of each chain taken.
fn session(q: &mut QueueIo) -> Vec<(u16, u32, u32)> {
    let mut seen = Vec::new();
    while let Some(h) = q.pop() {
        let c = q.chain(h);
        seen.push((h, c.readable_len(), c.writable_len()));
        if h % 2 == 0 {
            q.complete(h, 32);
        }
    }
    q.flush();
    seen
}

#[test]
fn a_reset_queue_behaves_like_a_new_one() {
    let mut r = Ring::new();
    // A first session that leaves chains held, one refused, one out of range (neither
    // reaches the device) and the used index moved.
    r.offer(&[0, 3, 200, BAD, 5, 2]);
    let mut q = queue(&r, 0);
    let first = session(&mut q);
    assert_eq!(first.len(), 4);
    assert_eq!(q.in_device(), 2, "heads 3 and 5 held");
    assert_eq!(r.used().len(), 3, "two completions and the refused head");
    assert_eq!(r.used()[1], (u32::from(BAD), 0));

    // The driver starts over with zeroed rings and the same script.
    r.clear();
    r.offer(&[0, 3, 200, BAD, 5, 2]);
    q.reset(&setup(0)).expect("reset");
    let fresh = queue(&r, 0);
    assert_eq!(state(&q), state(&fresh));
    assert_eq!(state(&q), (0, 0, 0, false, false));
    let again = session(&mut q);
    assert_eq!(again, first, "the same chains, walked again");
    let used_after_reset = r.used();

    // The same script on a queue that was never used gives the same ring.
    r.clear();
    r.offer(&[0, 3, 200, BAD, 5, 2]);
    let mut fresh = queue(&r, 0);
    assert_eq!(session(&mut fresh), first);
    assert_eq!(r.used(), used_after_reset);
    assert_eq!(state(&q), state(&fresh));
}

#[test]
fn a_reset_takes_the_base_and_the_used_index_from_the_ring() {
    let mut r = Ring::new();
    r.offer(&[0, 1, 4]);
    let mut q = queue(&r, 0);
    session(&mut q);
    assert_eq!(q.next_used(), 2);
    // Started again at base 1 over the ring as it is: the used index is the ring's.
    q.reset(&setup(1)).expect("reset");
    assert_eq!(state(&q), (1, 2, 0, false, false));
    assert_eq!(state(&q), state(&queue(&r, 1)));
    assert_eq!(session(&mut q), vec![(1, 16, 128), (4, 16, 320)]);
}

#[test]
fn a_reset_mends_a_broken_queue() {
    let mut r = Ring::new();
    r.avail_idx = SIZE + 1;
    r.publish();
    let mut q = queue(&r, 0);
    assert_eq!(q.pop(), None);
    assert!(q.is_broken());
    r.clear();
    r.offer(&[4]);
    q.reset(&setup(0)).expect("reset");
    assert!(!q.is_broken());
    assert_eq!(session(&mut q), vec![(4, 16, 320)]);
}

#[test]
fn a_setup_that_cannot_start_leaves_the_queue_as_it_was() {
    let mut r = Ring::new();
    r.offer(&[1, 2]);
    let mut q = queue(&r, 0);
    assert_eq!(q.pop(), Some(1));
    let bad = QueueSetup {
        used: MEM_SIZE,
        ..setup(0)
    };
    assert!(q.reset(&bad).is_err());
    let odd_size = QueueSetup {
        size: 6,
        ..setup(0)
    };
    assert!(q.reset(&odd_size).is_err());
    // Still holding head 1, and going on where it was.
    assert_eq!(state(&q), (1, 0, 1, false, false));
    assert_eq!(q.chain(1).writable_len(), 128);
    q.complete(1, 8);
    assert_eq!(q.pop(), Some(2));
    q.complete(2, 8);
    q.flush();
    assert_eq!(r.used(), vec![(1, 8), (2, 8)]);
}
