//! Inflight I/O tracking for split rings, laid out exactly as the vhost-user specification's
//! "Inflight I/O tracking" section describes, in a memfd the back-end allocates
//! (GET_INFLIGHT_FD) and the front-end keeps and hands back after a reconnect
//! (SET_INFLIGHT_FD). A device process that dies mid-request loses nothing: the next one
//! resubmits what was in flight, in the order it was fetched.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory, VolatileSlice};

use crate::dirty_log::page_size;

/// Queue region header: features u64, version u16, desc_num u16, last_batch_head u16,
/// used_idx u16.
const HDR_SIZE: usize = 16;
/// DescStateSplit: inflight u8, padding [u8; 5], next u16, counter u64.
const DESC_SIZE: usize = 16;
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const D_INFLIGHT: usize = 0;
const D_NEXT: usize = 6;
const D_COUNTER: usize = 8;
/// Current region version.
pub const VERSION: u16 = 1;

/// Errors from inflight requests.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// Zero queues, or a queue size that is zero, not a power of two or above 32768.
    #[error("invalid inflight geometry: {num_queues} queues of size {queue_size}")]
    BadGeometry {
        /// Number of queues.
        num_queues: u16,
        /// Queue size.
        queue_size: u16,
    },
    /// The area is smaller than the geometry needs, or offset/size overflow.
    #[error("inflight area of {size} bytes is too small")]
    TooSmall {
        /// Announced size.
        size: u64,
    },
    /// The offset is not page aligned.
    #[error("inflight offset {0:#x} is not page aligned")]
    Unaligned(u64),
    /// Creating or sizing the memfd failed.
    #[error("cannot create the inflight memfd")]
    Create(#[source] nix::Error),
    /// fstat failed.
    #[error("cannot stat the inflight file")]
    Stat(#[source] nix::Error),
    /// mmap failed.
    #[error("cannot map the inflight area")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The queue's region does not match the vring.
    #[error("inflight region of queue {queue} describes {desc_num} descriptors, vring has {size}")]
    Mismatch {
        /// Queue index.
        queue: usize,
        /// desc_num in the region.
        desc_num: u16,
        /// Vring size.
        size: u16,
    },
    /// The queue index is beyond the area.
    #[error("queue {0} has no inflight region")]
    NoQueue(usize),
    /// Access to the shared area failed.
    #[error("inflight area access failed")]
    Access,
}

/// Size of one queue's region.
pub fn queue_region_size(queue_size: u16) -> usize {
    HDR_SIZE + DESC_SIZE * queue_size as usize
}

fn valid_geometry(num_queues: u16, queue_size: u16) -> bool {
    num_queues > 0 && queue_size > 0 && queue_size.is_power_of_two() && queue_size <= 32768
}

/// The shared area for all queues of one device.
#[derive(Debug)]
pub struct InflightArea {
    map: MmapRegion,
    num_queues: u16,
    queue_size: u16,
}

impl InflightArea {
    /// Allocates and initialises a new area (GET_INFLIGHT_FD). Returns it with the fd to
    /// hand to the front-end and the mapping size.
    pub fn create(
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(Arc<Self>, OwnedFd, u64), InflightError> {
        if !valid_geometry(num_queues, queue_size) {
            return Err(InflightError::BadGeometry {
                num_queues,
                queue_size,
            });
        }
        let size = queue_region_size(queue_size) * num_queues as usize;
        let fd = nix::sys::memfd::memfd_create(
            "vu-inflight",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(InflightError::Create)?;
        nix::unistd::ftruncate(&fd, size as i64).map_err(InflightError::Create)?;
        let area = Self::map(&fd, size as u64, 0, num_queues, queue_size)?;
        for q in 0..num_queues as usize {
            let s = area.queue_slice(q)?;
            s.write_obj(0u64, 0).map_err(|_| InflightError::Access)?;
            s.write_obj(queue_size, OFF_DESC_NUM)
                .map_err(|_| InflightError::Access)?;
            s.store(VERSION, OFF_VERSION, Ordering::Release)
                .map_err(|_| InflightError::Access)?;
        }
        Ok((area, fd, size as u64))
    }

    /// Maps an area the front-end handed back (SET_INFLIGHT_FD).
    pub fn open(
        fd: &OwnedFd,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<Self>, InflightError> {
        if !valid_geometry(num_queues, queue_size) {
            return Err(InflightError::BadGeometry {
                num_queues,
                queue_size,
            });
        }
        let need = (queue_region_size(queue_size) * num_queues as usize) as u64;
        if mmap_size < need {
            return Err(InflightError::TooSmall { size: mmap_size });
        }
        if !mmap_offset.is_multiple_of(page_size()) {
            return Err(InflightError::Unaligned(mmap_offset));
        }
        let end = mmap_offset
            .checked_add(mmap_size)
            .ok_or(InflightError::TooSmall { size: mmap_size })?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(InflightError::Stat)?;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFREG && (st.st_size as u64) < end {
            return Err(InflightError::TooSmall {
                size: st.st_size as u64,
            });
        }
        Self::map(fd, need, mmap_offset, num_queues, queue_size)
    }

    fn map(
        fd: &OwnedFd,
        size: u64,
        offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<Self>, InflightError> {
        let file = std::fs::File::from(fd.try_clone().map_err(|e| {
            InflightError::Create(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EBADF),
            ))
        })?);
        let map = MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(InflightError::Map)?;
        Ok(Arc::new(InflightArea {
            map,
            num_queues,
            queue_size,
        }))
    }

    /// Number of queue regions.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptor slots per queue region.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    fn queue_slice(&self, q: usize) -> Result<VolatileSlice<'_>, InflightError> {
        if q >= self.num_queues as usize {
            return Err(InflightError::NoQueue(q));
        }
        let len = queue_region_size(self.queue_size);
        self.map
            .get_slice(q * len, len)
            .map_err(|_| InflightError::Access)
    }

    /// The tracker for queue `q`, checked against a vring of `size` descriptors.
    pub fn queue(self: &Arc<Self>, q: usize, size: u16) -> Result<InflightQueue, InflightError> {
        let s = self.queue_slice(q)?;
        let version: u16 = s
            .load(OFF_VERSION, Ordering::Acquire)
            .map_err(|_| InflightError::Access)?;
        if version == 0 {
            // Uninitialised buffer: start clean.
            s.write_obj(0u64, 0).map_err(|_| InflightError::Access)?;
            s.write_obj(self.queue_size, OFF_DESC_NUM)
                .map_err(|_| InflightError::Access)?;
            s.write_obj(0u16, OFF_LAST_BATCH_HEAD)
                .map_err(|_| InflightError::Access)?;
            s.write_obj(0u16, OFF_USED_IDX)
                .map_err(|_| InflightError::Access)?;
            for i in 0..self.queue_size as usize {
                s.write_obj([0u8; DESC_SIZE], HDR_SIZE + i * DESC_SIZE)
                    .map_err(|_| InflightError::Access)?;
            }
            s.store(VERSION, OFF_VERSION, Ordering::Release)
                .map_err(|_| InflightError::Access)?;
        }
        let desc_num: u16 = s
            .read_obj(OFF_DESC_NUM)
            .map_err(|_| InflightError::Access)?;
        if desc_num != size || desc_num > self.queue_size {
            return Err(InflightError::Mismatch {
                queue: q,
                desc_num,
                size,
            });
        }
        Ok(InflightQueue {
            area: self.clone(),
            queue: q,
            desc_num,
            batch: Vec::with_capacity(desc_num as usize),
        })
    }
}

/// One queue's view of the inflight area.
#[derive(Debug)]
pub struct InflightQueue {
    area: Arc<InflightArea>,
    queue: usize,
    desc_num: u16,
    batch: Vec<u16>,
}

impl InflightQueue {
    fn slice(&self) -> VolatileSlice<'_> {
        let len = queue_region_size(self.area.queue_size);
        // In range: checked when this tracker was created.
        self.area
            .map
            .get_slice(self.queue * len, len)
            .unwrap_or_else(|_| unreachable!("inflight queue slice was validated"))
    }

    fn desc_off(head: u16) -> usize {
        HDR_SIZE + head as usize * DESC_SIZE
    }

    /// A head was fetched from the available ring with fetch order `counter`.
    pub fn take(&self, head: u16, counter: u64) {
        if head >= self.desc_num {
            return;
        }
        let s = self.slice();
        let o = Self::desc_off(head);
        let _ = s.write_obj(counter, o + D_COUNTER);
        let _ = s.store(1u8, o + D_INFLIGHT, Ordering::Release);
    }

    /// A head fetched with `take` was given back unused (`QueueIo::unpop`): it is no longer in
    /// flight; the driver still offers it in the available ring.
    pub fn untake(&self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let s = self.slice();
        let _ = s.store(0u8, Self::desc_off(head) + D_INFLIGHT, Ordering::Release);
    }

    /// A head was written to the used ring (its index not yet published).
    pub fn used(&mut self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let s = self.slice();
        let last: u16 = s.read_obj(OFF_LAST_BATCH_HEAD).unwrap_or(0);
        let _ = s.write_obj(last, Self::desc_off(head) + D_NEXT);
        let _ = s.store(head, OFF_LAST_BATCH_HEAD, Ordering::Release);
        self.batch.push(head);
    }

    /// The used index `used_idx` was published: the batch is no longer in flight.
    pub fn commit(&mut self, used_idx: u16) {
        let mut batch = std::mem::take(&mut self.batch);
        let s = self.slice();
        for &h in &batch {
            let _ = s.store(0u8, Self::desc_off(h) + D_INFLIGHT, Ordering::Release);
        }
        let _ = s.store(used_idx, OFF_USED_IDX, Ordering::Release);
        batch.clear();
        self.batch = batch;
    }

    /// After a reconnect: repair the last batch against the guest's used index and return
    /// the heads still in flight, in fetch order, plus the next counter value.
    pub fn recover(&mut self, guest_used_idx: u16) -> (Vec<u16>, u64) {
        self.batch.clear();
        let s = self.slice();
        let used_idx: u16 = s.read_obj(OFF_USED_IDX).unwrap_or(guest_used_idx);
        if used_idx != guest_used_idx {
            // The used index was published but the batch was not cleared: clear it now.
            let batch = guest_used_idx.wrapping_sub(used_idx).min(self.desc_num);
            let mut h: u16 = s.read_obj(OFF_LAST_BATCH_HEAD).unwrap_or(0);
            for _ in 0..batch {
                if h >= self.desc_num {
                    break;
                }
                let o = Self::desc_off(h);
                let _ = s.store(0u8, o + D_INFLIGHT, Ordering::Release);
                h = s.read_obj(o + D_NEXT).unwrap_or(u16::MAX);
            }
            let _ = s.store(guest_used_idx, OFF_USED_IDX, Ordering::Release);
        }
        let mut pending: Vec<(u64, u16)> = Vec::new();
        let mut max_counter = 0u64;
        for h in 0..self.desc_num {
            let o = Self::desc_off(h);
            let inflight: u8 = s.load(o + D_INFLIGHT, Ordering::Acquire).unwrap_or(0);
            let counter: u64 = s.read_obj(o + D_COUNTER).unwrap_or(0);
            max_counter = max_counter.max(counter);
            if inflight == 1 {
                pending.push((counter, h));
            } else if inflight != 0 {
                // Garbage from a hostile or broken peer: not ours to resubmit.
                let _ = s.store(0u8, o + D_INFLIGHT, Ordering::Release);
            }
        }
        pending.sort_unstable();
        (
            pending.into_iter().map(|(_, h)| h).collect(),
            max_counter.wrapping_add(1),
        )
    }

    /// Number of slots.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_crash_and_recover() {
        let (area, fd, size) = InflightArea::create(2, 8).expect("create");
        assert_eq!(size, 2 * (16 + 16 * 8));
        let mut q = area.queue(1, 8).expect("queue");
        // Fetch heads 3, 5, 1 in that order; complete 5 fully.
        q.take(3, 10);
        q.take(5, 11);
        q.take(1, 12);
        q.used(5);
        q.commit(1);
        // Complete 3 into the used ring and publish idx 2, then "crash" before commit.
        q.used(3);
        drop(q);
        // A new process opens the same fd.
        let area2 = InflightArea::open(&fd, size, 0, 2, 8).expect("open");
        let mut q2 = area2.queue(1, 8).expect("queue");
        let (heads, next) = q2.recover(2);
        assert_eq!(
            heads,
            vec![1],
            "3 was published, 5 committed: only 1 is in flight"
        );
        assert_eq!(next, 13);
        // Same state, but the crash came before the used index was published.
        let (area3, fd3, size3) = InflightArea::create(1, 8).expect("create");
        let mut q3 = area3.queue(0, 8).expect("queue");
        q3.take(2, 1);
        q3.take(4, 2);
        q3.used(4);
        let a4 = InflightArea::open(&fd3, size3, 0, 1, 8).expect("open");
        let (heads, _) = a4.queue(0, 8).expect("queue").recover(0);
        assert_eq!(heads, vec![2, 4], "resubmitted in fetch order");
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(InflightArea::create(0, 8).is_err());
        assert!(InflightArea::create(1, 0).is_err());
        assert!(InflightArea::create(1, 12).is_err());
        let (_a, fd, size) = InflightArea::create(1, 8).expect("create");
        assert!(matches!(
            InflightArea::open(&fd, size - 1, 0, 1, 8),
            Err(InflightError::TooSmall { .. })
        ));
        assert!(matches!(
            InflightArea::open(&fd, size, 4096, 1, 8),
            Err(InflightError::TooSmall { .. })
        ));
        assert!(matches!(
            InflightArea::open(&fd, size, 7, 1, 8),
            Err(InflightError::Unaligned(7))
        ));
        let a = InflightArea::open(&fd, size, 0, 1, 8).expect("open");
        assert!(matches!(
            a.queue(0, 16),
            Err(InflightError::Mismatch { .. })
        ));
        assert!(matches!(a.queue(1, 8), Err(InflightError::NoQueue(1))));
    }
}
