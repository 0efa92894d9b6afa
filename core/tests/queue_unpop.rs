//! `QueueIo::unpop`: chains taken and given back unused are taken again, in order, by the
//! next `pop`; the available index, the device's count, inflight tracking and GET_VRING_BASE
//! all look as if they had never been taken. Driven on a `QueueIo` over a driver-side split
//! ring written by hand.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::inflight::InflightArea;
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::QueueIo;

const SIZE: u16 = 8;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUFS: u64 = 0x10000;
const F_WRITE: u16 = 2;

struct Ring {
    mem: GuestMemoryMmap<LogBitmap>,
    avail_idx: u16,
}

impl Ring {
    fn new() -> Self {
        let mem = GuestMemoryMmap::<LogBitmap>::from_ranges(&[(GuestAddress(0), 0x40000)])
            .expect("guest memory");
        Ring { mem, avail_idx: 0 }
    }

    /// Descriptor `i`: one writable buffer of 256 bytes, or `len` bytes at `addr`.
    fn desc(&self, i: u16, addr: u64, len: u32) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&F_WRITE.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(DESC + 16 * u64::from(i)))
            .expect("descriptor");
    }

    /// Makes heads available (a valid one-buffer chain per head unless described otherwise).
    fn offer(&mut self, heads: &[u16]) {
        for &h in heads {
            if h < SIZE {
                self.desc(h, BUFS + 0x1000 * u64::from(h), 256);
            }
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
            self.mem.write_obj(h, GuestAddress(slot)).expect("avail");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
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

    fn queue(&self, base: u16, inflight: Option<&Arc<InflightArea>>) -> QueueIo {
        let setup = QueueSetup {
            index: 0,
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            base,
            event_idx: false,
            indirect: false,
        };
        let tracker = inflight.map(|a| a.queue(0, SIZE).expect("inflight queue"));
        QueueIo::new(
            &setup,
            GuestMemoryAtomic::new(self.mem.clone()),
            tracker,
            DirtyLog::new(),
            Arc::new(VringShared::default()),
        )
        .expect("queue")
    }
}

fn pop_all(q: &mut QueueIo) -> Vec<u16> {
    std::iter::from_fn(|| q.pop()).collect()
}

#[test]
fn given_back_chains_are_taken_again_in_order() {
    let mut r = Ring::new();
    r.offer(&[3, 1, 6, 0]);
    let mut q = r.queue(0, None);
    assert_eq!(pop_all(&mut q), vec![3, 1, 6, 0]);
    assert_eq!((q.next_avail(), q.in_device()), (4, 4));
    // Complete the first, give back the last three in reverse order.
    q.complete(3, 100);
    for h in [0, 6, 1] {
        assert!(q.unpop(h), "head {h} given back");
    }
    assert_eq!((q.next_avail(), q.in_device()), (1, 0));
    assert!(!q.drained(), "a given-back chain is pending again");
    assert!(q.avail_pending());
    // Walked again: the chain is usable as before.
    assert_eq!(q.pop(), Some(1));
    assert_eq!(q.chain(1).writable_len(), 256);
    assert_eq!(pop_all(&mut q), vec![6, 0]);
    for h in [1, 6, 0] {
        q.complete(h, 10);
    }
    q.flush();
    assert_eq!(r.used(), vec![(3, 100), (1, 10), (6, 10), (0, 10)]);
}

#[test]
fn only_the_last_fetched_chain_can_be_given_back() {
    let mut r = Ring::new();
    r.offer(&[2, 4]);
    let mut q = r.queue(0, None);
    assert_eq!(pop_all(&mut q), vec![2, 4]);
    assert!(!q.unpop(2), "4 was fetched after 2");
    assert!(!q.unpop(5), "not held");
    assert!(!q.unpop(40), "out of range");
    q.complete(4, 0);
    assert!(!q.unpop(4), "completed");
    assert!(
        !q.unpop(2),
        "4 was fetched after 2, even though it is completed"
    );
    assert_eq!((q.next_avail(), q.in_device()), (2, 1));
    q.complete(2, 0);
}

#[test]
fn a_refused_entry_in_between_stops_the_rewind() {
    let mut r = Ring::new();
    // Head 7's buffer is outside guest memory: `pop` completes it with length 0 and goes on
    // to 5.
    r.offer(&[1, 7, 5]);
    r.desc(7, 1 << 32, 16);
    let mut q = r.queue(0, None);
    assert_eq!(pop_all(&mut q), vec![1, 5]);
    assert!(q.unpop(5));
    assert!(
        !q.unpop(1),
        "rewinding past the refused entry would complete it twice"
    );
    assert_eq!(q.next_avail(), 2);
    assert_eq!(q.pop(), Some(5));
    q.complete(1, 0);
    q.complete(5, 0);
    q.flush();
    assert_eq!(r.used(), vec![(7, 0), (1, 0), (5, 0)]);
}

#[test]
fn a_given_back_chain_is_not_in_flight_and_the_base_excludes_it() {
    let (area, _fd, _size) = InflightArea::create(1, SIZE).expect("inflight area");
    let mut r = Ring::new();
    r.offer(&[0, 1, 2]);
    let mut q = r.queue(0, Some(&area));
    assert_eq!(pop_all(&mut q), vec![0, 1, 2]);
    q.complete(0, 1);
    q.flush();
    assert!(q.unpop(2));
    // A device that dies now: the next one resubmits only 1, and starts after it.
    drop(q);
    let q2 = r.queue(0, Some(&area));
    assert_eq!(q2.next_avail(), 2, "base = used + in flight");
    let mut q2 = q2;
    assert_eq!(q2.pop(), Some(1), "resubmitted");
    // A resubmitted chain can be given back at any time and comes back first.
    assert_eq!(q2.pop(), Some(2));
    assert!(q2.unpop(1));
    assert_eq!(q2.pop(), Some(1));
    assert_eq!(q2.in_device(), 2);
    q2.complete(1, 0);
    q2.complete(2, 0);
    q2.flush();
    assert_eq!(r.used().len(), 3);
}
