//! The driver half of a split virtqueue (virtio 1.2, 2.7) in [`GuestMemory`]: descriptor
//! writes, the available ring with kick suppression (EVENT_IDX or the used ring's NO_NOTIFY
//! flag), and reaping the used ring. Every access to memory the device shares is volatile or
//! atomic; indexes are read with Acquire and published with Release.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use super::memory::{GuestMemory, QueueLayout};

/// VIRTQ_DESC_F_NEXT.
pub const DESC_F_NEXT: u16 = 1;
/// VIRTQ_DESC_F_WRITE.
pub const DESC_F_WRITE: u16 = 2;
/// VIRTQ_AVAIL_F_NO_INTERRUPT.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// VIRTQ_USED_F_NO_NOTIFY.
const USED_F_NO_NOTIFY: u16 = 1;

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A driver-side split ring.
#[derive(Debug)]
pub struct DriverRing {
    mem: Arc<GuestMemory>,
    size: u16,
    desc: *mut u8,
    avail_flags: *const AtomicU16,
    avail_idx: *const AtomicU16,
    avail_ring: *mut u16,
    used_event: *const AtomicU16,
    used_flags: *const AtomicU16,
    used_idx: *const AtomicU16,
    used_ring: *const u8,
    avail_event: *const AtomicU16,
    event_idx: bool,
    next_avail: u16,
    kicked_avail: u16,
    last_used: u16,
}

// SAFETY: the pointers point into `mem`, which the ring keeps alive (an `Arc`); the ring is
// used by one thread at a time (it is moved to its queue's driver thread).
unsafe impl Send for DriverRing {}

impl DriverRing {
    /// The rings of `layout` in `mem`, zeroed, for a queue of `size` descriptors.
    pub fn new(mem: Arc<GuestMemory>, layout: &QueueLayout, size: u16, event_idx: bool) -> Self {
        let n = u64::from(size);
        mem.zero(layout.desc, 16 * n);
        mem.zero(layout.avail, 6 + 2 * n);
        mem.zero(layout.used, 6 + 8 * n);
        // The layout puts the rings at 16/2/4-byte aligned addresses, so the u16 fields
        // are aligned; `ptr` checks every range lies inside the mapping.
        let u16_at = |gpa: u64| mem.ptr(gpa, 2).cast::<AtomicU16>().cast_const();
        DriverRing {
            size,
            desc: mem.ptr(layout.desc, 16 * n),
            avail_flags: u16_at(layout.avail),
            avail_idx: u16_at(layout.avail + 2),
            avail_ring: mem.ptr(layout.avail + 4, 2 * n).cast(),
            used_event: u16_at(layout.avail + 4 + 2 * n),
            used_flags: u16_at(layout.used),
            used_idx: u16_at(layout.used + 2),
            used_ring: mem.ptr(layout.used + 4, 8 * n).cast_const(),
            avail_event: u16_at(layout.used + 4 + 8 * n),
            event_idx,
            next_avail: 0,
            kicked_avail: 0,
            last_used: 0,
            mem,
        }
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The guest memory the ring lives in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    fn atomic(&self, p: *const AtomicU16) -> &AtomicU16 {
        // SAFETY: `p` is one of the aligned ring fields computed in `new`, inside the
        // mapping `self.mem` keeps alive for as long as `&self` lives.
        unsafe { &*p }
    }

    /// Writes descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        assert!(i < self.size);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        // SAFETY: descriptor `i < size` lies inside the table checked in `new`.
        unsafe {
            std::ptr::write_volatile(
                self.desc.wrapping_add(16 * i as usize).cast::<[u8; 16]>(),
                d,
            )
        };
    }

    /// Changes the flags of descriptor `i`.
    #[inline]
    pub fn set_desc_flags(&mut self, i: u16, flags: u16) {
        assert!(i < self.size);
        // SAFETY: the flags of descriptor `i < size` lie inside the table (offset 12, a
        // 2-byte aligned field of a 16-byte aligned descriptor).
        unsafe {
            std::ptr::write_volatile(
                self.desc.wrapping_add(16 * i as usize + 12).cast::<u16>(),
                flags.to_le(),
            )
        };
    }

    /// Offers the chain at `head` (not yet visible to the device: see [`Self::publish`]).
    #[inline]
    pub fn push_avail(&mut self, head: u16) {
        let pos = (self.next_avail % self.size) as usize;
        // SAFETY: `pos < size`: the entry lies inside the available ring checked in `new`.
        unsafe { std::ptr::write_volatile(self.avail_ring.wrapping_add(pos), head.to_le()) };
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Makes every pushed chain visible to the device. Returns whether it must be kicked
    /// (the device did not suppress notifications for this range of the ring).
    #[inline]
    pub fn publish(&mut self) -> bool {
        let new = self.next_avail;
        let old = self.kicked_avail;
        if new == old {
            return false;
        }
        self.atomic(self.avail_idx).store(new, Ordering::Release);
        self.kicked_avail = new;
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = self.atomic(self.avail_event).load(Ordering::Acquire);
            need_event(event, new, old)
        } else {
            self.atomic(self.used_flags).load(Ordering::Acquire) & USED_F_NO_NOTIFY == 0
        }
    }

    /// The device's used index.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        self.atomic(self.used_idx).load(Ordering::Acquire)
    }

    /// Next used entry not yet consumed by the driver.
    #[inline]
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Takes the next used element `(id, len)` if the device has published one.
    #[inline]
    pub fn pop_used(&mut self, used_idx: u16) -> Option<(u32, u32)> {
        if self.last_used == used_idx {
            return None;
        }
        let pos = (self.last_used % self.size) as usize;
        // SAFETY: element `pos < size` lies inside the used ring checked in `new`; it is
        // 8 bytes, 4-byte aligned.
        let e = unsafe {
            std::ptr::read_volatile(self.used_ring.wrapping_add(8 * pos).cast::<[u32; 2]>())
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((u32::from_le(e[0]), u32::from_le(e[1])))
    }

    /// Asks the device to notify as soon as it uses anything past what the driver has
    /// consumed. Returns true if entries arrived meanwhile (then no notification may come).
    #[inline]
    pub fn arm_notification(&mut self) -> bool {
        if self.event_idx {
            self.atomic(self.used_event)
                .store(self.last_used, Ordering::Release);
        } else {
            self.atomic(self.avail_flags).store(0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.used_idx() != self.last_used
    }

    /// The ring's indexes as both sides see them now, for a stall report: what the driver
    /// pushed and published, the device's used index and what the driver consumed, and the
    /// two event indexes (the device's avail_event, the driver's used_event).
    pub fn indexes(&self) -> String {
        let avail = self.atomic(self.avail_idx).load(Ordering::Acquire);
        let avail_event = self.atomic(self.avail_event).load(Ordering::Acquire);
        let used_event = self.atomic(self.used_event).load(Ordering::Acquire);
        let used_flags = self.atomic(self.used_flags).load(Ordering::Acquire);
        let avail_flags = self.atomic(self.avail_flags).load(Ordering::Acquire);
        format!(
            "pushed {} avail_idx {} used_idx {} consumed {} avail_event {} used_event {} \
             used_flags {:#x} avail_flags {:#x}",
            self.next_avail,
            avail,
            self.used_idx(),
            self.last_used,
            avail_event,
            used_event,
            used_flags,
            avail_flags
        )
    }

    /// Asks the device not to notify (the driver polls the used ring).
    #[inline]
    pub fn suppress_notification(&mut self) {
        if self.event_idx {
            // An event index just behind what is consumed is never crossed by the device's
            // next used-index updates.
            self.atomic(self.used_event)
                .store(self.last_used.wrapping_sub(1), Ordering::Release);
        } else {
            self.atomic(self.avail_flags)
                .store(AVAIL_F_NO_INTERRUPT, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::memory::layout;

    #[test]
    fn need_event_matches_the_spec() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(10, 10, 5));
        assert!(need_event(65535, 2, 65534));
    }

    #[test]
    fn publish_and_reap() {
        let (l, total) = layout(1, 8, 2, 4096);
        let mem = Arc::new(GuestMemory::new(total).expect("memory"));
        let mut r = DriverRing::new(mem.clone(), &l[0], 8, true);
        r.set_desc(0, 0x1000, 16, DESC_F_NEXT, 1);
        r.push_avail(0);
        // avail_event is 0: the first publish (0 -> 1) kicks.
        assert!(r.publish());
        let mut idx = [0u8; 2];
        mem.read(l[0].avail + 2, &mut idx);
        assert_eq!(u16::from_le_bytes(idx), 1);
        r.push_avail(3);
        // The device's avail_event is still 0: moving 1 -> 2 does not cross it.
        assert!(!r.publish());
        // The device uses head 0 with length 5.
        mem.write(l[0].used + 4, &[0, 0, 0, 0, 5, 0, 0, 0]);
        mem.write(l[0].used + 2, &1u16.to_le_bytes());
        let u = r.used_idx();
        assert_eq!(r.pop_used(u), Some((0, 5)));
        assert_eq!(r.pop_used(u), None);
        assert!(!r.arm_notification());
    }
}
