//! The data path: one driver thread per queue keeps `iodepth` virtio-blk requests in flight
//! (header + data + status, three fixed descriptors and one preallocated buffer per slot),
//! reaps completions in batches, resubmits at once, publishes the available index once per
//! batch and kicks only when the device asks for it. Nothing is allocated per request.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::config::{Notify, Pace, Rw, SECTOR};
use super::control::QueueFds;
use super::histogram::Histogram;
use super::memory::{GuestMemory, QueueLayout};
use super::procstat::thread_cpu_ns;
use super::ring::{DriverRing, DESC_F_NEXT, DESC_F_WRITE};

/// VIRTIO_BLK_T_IN.
const T_IN: u32 = 0;
/// VIRTIO_BLK_T_OUT.
const T_OUT: u32 = 1;
/// Status byte written before submission; a device must overwrite it.
const STATUS_UNSET: u8 = 0xff;

/// What one queue's driver does.
#[derive(Debug, Clone)]
pub struct QueueWork {
    /// Queue index.
    pub index: usize,
    /// Access pattern.
    pub rw: Rw,
    /// Percentage of reads for `Rw::Mixed`.
    pub rwmix_read: u8,
    /// Bytes per request.
    pub bs: u32,
    /// Requests in flight.
    pub iodepth: usize,
    /// Byte range `[lo, hi)` this queue touches (sequential patterns get a stripe each).
    pub range: (u64, u64),
    /// Requests to run (`None`: until `deadline`).
    pub budget: Option<u64>,
    /// Run time (when there is no budget).
    pub runtime: Duration,
    /// Completion notification.
    pub notify: Notify,
    /// Stamp and check data.
    pub verify: bool,
    /// Seed.
    pub seed: u64,
    /// Give up after this long without a completion.
    pub stall_timeout: Duration,
    /// Closed loop, fixed rate or bursts (see `pace.rs`).
    pub pace: Pace,
    /// With `Pace::Rate`: this queue's time between two sends, ns.
    pub interval_ns: u64,
    /// With `Pace::Rate`: this queue's first send, ns after the common start (queues are
    /// staggered so that their sends interleave).
    pub phase_ns: u64,
}

/// What one queue's driver measured.
#[derive(Debug, Clone, Default)]
pub struct QueueResult {
    /// Completion latencies in ns (with `Pace::Rate`: from the intended send time).
    pub latency: Histogram,
    /// With `Pace::Rate`: how late requests left (actual - intended send time), ns.
    pub lag: Histogram,
    /// With `Pace::Rate`: completion latencies from the actual send, ns.
    pub service: Histogram,
    /// With `Pace::Rate`: requests that had to wait for a free slot (`iodepth` in flight).
    pub late: u64,
    /// Requests completed.
    pub completed: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Requests whose status was not OK.
    pub errors: u64,
    /// Reads whose data did not carry the expected stamp (`verify`).
    pub verify_failures: u64,
    /// Data bytes transferred by successful requests.
    pub bytes: u64,
    /// Kicks sent.
    pub kicks: u64,
    /// Times the driver slept on the call eventfd.
    pub waits: u64,
    /// CPU time of the driver thread, ns.
    pub cpu_ns: u64,
    /// From the common start to the last completion.
    pub elapsed: Duration,
    /// The first failure, described.
    pub first_error: Option<String>,
    /// Final available index (what the server must report on GET_VRING_BASE).
    pub final_avail: u16,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Slot {
    /// When it should have left (the latency's start).
    intended_ns: u64,
    /// When it left.
    submitted_ns: u64,
    offset: u64,
    write: bool,
    busy: bool,
}

/// xorshift64*: a cheap, good-enough offset generator.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The stamp of the 8-byte word at byte `at` of the disk.
#[inline]
fn stamp(seed: u64, at: u64) -> u64 {
    (at ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xa5a5_5a5a_0f0f_f0f0
}

/// One queue's driver, ready to run on its own thread.
#[derive(Debug)]
pub struct QueueDriver {
    pub(super) work: QueueWork,
    pub(super) ring: DriverRing,
    pub(super) fds: QueueFds,
    layout: QueueLayout,
    slots: Vec<Slot>,
    rng: Rng,
    cursor: u64,
    pub(super) issued: u64,
}

impl QueueDriver {
    /// Builds the driver and writes each slot's fixed descriptors.
    pub fn new(work: QueueWork, mut ring: DriverRing, fds: QueueFds, layout: QueueLayout) -> Self {
        for i in 0..work.iodepth {
            let d = (3 * i) as u16;
            ring.set_desc(d, layout.header(i), 16, DESC_F_NEXT, d + 1);
            ring.set_desc(
                d + 1,
                layout.buffer(i),
                work.bs,
                DESC_F_NEXT | DESC_F_WRITE,
                d + 2,
            );
            ring.set_desc(d + 2, layout.header(i) + 16, 1, DESC_F_WRITE, 0);
        }
        let rng = Rng::new(work.seed ^ (work.index as u64).wrapping_mul(0x1234_5678_9abc));
        QueueDriver {
            slots: vec![Slot::default(); work.iodepth],
            cursor: work.range.0,
            rng,
            issued: 0,
            ring,
            fds,
            layout,
            work,
        }
    }

    fn mem(&self) -> &GuestMemory {
        self.ring.memory()
    }

    fn next_offset(&mut self) -> u64 {
        let (lo, hi) = self.work.range;
        let bs = u64::from(self.work.bs);
        if self.work.rw.random() {
            lo + self.rng.below((hi - lo) / bs) * bs
        } else {
            if self.cursor + bs > hi {
                self.cursor = lo;
            }
            let at = self.cursor;
            self.cursor += bs;
            at
        }
    }

    /// Fills slot `i` with a new request meant to leave at `intended_ns` and offers it at
    /// `now_ns` (not yet published).
    pub(super) fn submit(&mut self, i: usize, intended_ns: u64, now_ns: u64) {
        let write = match self.work.rw {
            Rw::Read | Rw::RandRead => false,
            Rw::Write | Rw::RandWrite => true,
            Rw::Mixed => self.rng.below(100) >= u64::from(self.work.rwmix_read),
        };
        let offset = self.next_offset();
        let mut hdr = [0u8; 17];
        hdr[..4].copy_from_slice(&(if write { T_OUT } else { T_IN }).to_le_bytes());
        hdr[8..16].copy_from_slice(&(offset / SECTOR).to_le_bytes());
        hdr[16] = STATUS_UNSET;
        let h = self.layout.header(i);
        let p = self.mem().ptr(h, 17);
        // SAFETY: `p` points at this slot's 17 header and status bytes inside the mapping
        // (checked by `ptr`); the device does not touch them while the slot is not offered.
        unsafe { std::ptr::write_volatile(p.cast::<[u8; 17]>(), hdr) };
        if self.work.verify {
            let buf = self.layout.buffer(i);
            let len = u64::from(self.work.bs);
            let p = self.mem().ptr(buf, len).cast::<u64>();
            for w in 0..len / 8 {
                let v = if write {
                    stamp(self.work.seed, offset + 8 * w)
                } else {
                    0xdead_beef_dead_beef
                };
                // SAFETY: word `w < len / 8` of the slot's buffer (inside the mapping,
                // checked by `ptr`; page aligned, so u64 aligned).
                unsafe { std::ptr::write_volatile(p.wrapping_add(w as usize), v) };
            }
        }
        let d = (3 * i) as u16;
        self.ring.set_desc_flags(
            d + 1,
            if write {
                DESC_F_NEXT
            } else {
                DESC_F_NEXT | DESC_F_WRITE
            },
        );
        self.slots[i] = Slot {
            intended_ns,
            submitted_ns: now_ns,
            offset,
            write,
            busy: true,
        };
        self.ring.push_avail(d);
        self.issued += 1;
    }

    fn check_data(&self, i: usize, offset: u64) -> bool {
        let len = u64::from(self.work.bs);
        let p = self.mem().ptr(self.layout.buffer(i), len).cast::<u64>();
        (0..len / 8).all(|w| {
            // SAFETY: as in `submit`: word `w` of the slot's buffer, which the device has
            // finished writing (its completion was reaped).
            let v = unsafe { std::ptr::read_volatile(p.wrapping_add(w as usize)) };
            v == stamp(self.work.seed, offset + 8 * w)
        })
    }

    fn status(&self, i: usize) -> u8 {
        let p = self.mem().ptr(self.layout.header(i) + 16, 1);
        // SAFETY: the slot's status byte, inside the mapping (checked by `ptr`).
        unsafe { std::ptr::read_volatile(p) }
    }

    pub(super) fn kick(&mut self, r: &mut QueueResult) {
        if self.ring.publish() {
            r.kicks += 1;
            if let Err(e) = self.fds.kick.write(1) {
                r.first_error.get_or_insert(format!("kick failed: {e}"));
            }
        }
    }

    pub(super) fn more(&self, now: Instant, deadline: Instant) -> bool {
        match self.work.budget {
            Some(b) => self.issued < b,
            None => now < deadline,
        }
    }

    /// Takes the used element `id` (checked: a request in flight), records its latency,
    /// status and data check at `now_ns`; returns its slot, now free.
    pub(super) fn complete(
        &mut self,
        id: u32,
        now_ns: u64,
        r: &mut QueueResult,
        abort: &AtomicBool,
    ) -> Result<usize> {
        let i = (id / 3) as usize;
        if !id.is_multiple_of(3) || i >= self.slots.len() || !self.slots[i].busy {
            abort.store(true, Ordering::Relaxed);
            bail!(
                "queue {}: the server used descriptor {id}, which is no request in flight",
                self.work.index
            );
        }
        let slot = self.slots[i];
        self.slots[i].busy = false;
        r.completed += 1;
        r.latency
            .record(now_ns.saturating_sub(slot.intended_ns.min(slot.submitted_ns)));
        if self.work.pace != Pace::Closed {
            r.service.record(now_ns.saturating_sub(slot.submitted_ns));
        }
        if slot.write {
            r.writes += 1;
        } else {
            r.reads += 1;
        }
        let status = self.status(i);
        if status != 0 {
            r.errors += 1;
            r.first_error.get_or_insert_with(|| {
                format!(
                    "{} of {} bytes at offset {} completed with status {status}",
                    if slot.write { "write" } else { "read" },
                    self.work.bs,
                    slot.offset
                )
            });
        } else {
            r.bytes += u64::from(self.work.bs);
            if self.work.verify && !slot.write && !self.check_data(i, slot.offset) {
                r.verify_failures += 1;
                r.first_error.get_or_insert_with(|| {
                    format!(
                        "data read at offset {} does not match what was written",
                        slot.offset
                    )
                });
            }
        }
        Ok(i)
    }

    /// Runs the queue: waits at `start`, then drives requests until the budget or the run
    /// time is used up and every request has completed. `abort` stops every queue early.
    pub fn run(self, start_barrier: &Barrier, abort: &AtomicBool) -> Result<QueueResult> {
        if self.work.pace == Pace::Closed {
            self.run_closed(start_barrier, abort)
        } else {
            self.run_paced(start_barrier, abort)
        }
    }

    /// The closed loop: `iodepth` requests in flight, each completion replaced at once.
    fn run_closed(mut self, start_barrier: &Barrier, abort: &AtomicBool) -> Result<QueueResult> {
        let mut r = QueueResult::default();
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.fds.call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        let mut events = [EpollEvent::default(); 1];
        let poll = self.work.notify == Notify::Poll;
        if poll {
            self.ring.suppress_notification();
        }
        start_barrier.wait();
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let deadline = start + self.work.runtime;
        let mut in_flight = 0usize;
        for i in 0..self.work.iodepth {
            if !self.more(start, deadline) {
                break;
            }
            self.submit(i, 0, 0);
            in_flight += 1;
        }
        self.kick(&mut r);
        let mut last_progress = start;
        let mut spins = 0u32;
        while in_flight > 0 {
            let used = self.ring.used_idx();
            if used == self.ring.last_used() {
                if poll {
                    spins += 1;
                    if spins & 0x3ff != 0 {
                        std::hint::spin_loop();
                        continue;
                    }
                } else if !self.ring.arm_notification() {
                    r.waits += 1;
                    match epoll.wait(100, &mut events) {
                        Ok(n) if n > 0 => {
                            let _ = self.fds.call.read();
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        Err(e) => bail!("epoll_wait on the call eventfd: {e}"),
                    }
                } else {
                    continue;
                }
                let now = Instant::now();
                if abort.load(Ordering::Relaxed) {
                    bail!(
                        "queue {}: stopped because another queue failed",
                        self.work.index
                    );
                }
                if now.duration_since(last_progress) > self.work.stall_timeout {
                    abort.store(true, Ordering::Relaxed);
                    bail!(
                        "queue {}: no request completed for {:?} ({in_flight} in flight): the server is stuck or gone",
                        self.work.index,
                        self.work.stall_timeout
                    );
                }
                continue;
            }
            let now = Instant::now();
            last_progress = now;
            let now_ns = now.duration_since(start).as_nanos() as u64;
            while let Some((id, _len)) = self.ring.pop_used(used) {
                let i = self.complete(id, now_ns, &mut r, abort)?;
                in_flight -= 1;
                if self.more(now, deadline) {
                    self.submit(i, now_ns, now_ns);
                    in_flight += 1;
                }
            }
            if poll {
                self.ring.suppress_notification();
            }
            self.kick(&mut r);
            r.elapsed = now.duration_since(start);
        }
        r.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        r.final_avail = self.issued as u16;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_stay_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
        }
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn stamps_differ_by_offset_and_seed() {
        assert_ne!(stamp(1, 0), stamp(1, 8));
        assert_ne!(stamp(1, 0), stamp(2, 0));
    }
}
