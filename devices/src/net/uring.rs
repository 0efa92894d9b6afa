//! A small io_uring per transmit queue for the tap: several frames' writevs in one
//! io_uring_enter instead of one system call each. A queue that stops leaves its ring, idle,
//! on the tap for its next start (`TapFd::keep_ring`): a driver reset or a reconnection
//! costs no new ring, and the kernel's deferred teardown of the old one (a kworker's time,
//! not the device's) is saved too.
//!
//! Every SQE carries RWF_NOWAIT, so the kernel never parks one: a tap (or a socket standing
//! in for one) that has no room answers -EAGAIN in the CQE, exactly as a
//! non-blocking writev would, and everything else completes inline during the
//! submission. When `run` returns, nothing of a batch is in flight: no request touches guest
//! memory past it, so the queue's drain stays what it was (frames are held by the handler,
//! never by the kernel).
//!
//! Like the block device's rings, each ring is locked down before it is enabled: the tap is
//! fixed file 0, and the ring takes only writev, only on that fixed file (linked, or not).
//! io_uring operations bypass seccomp; with these restrictions a compromised device can do
//! through its ring nothing but what its writev rule allows on the tap already.

use std::io;

use io_uring::{opcode, squeue, types, IoUring};

use super::backend::{IoVecs, TapFd};
use crate::uring_restricted::{RestrictedRing, Taskrun};

/// A result slot no CQE filled (the batch was cut short: the frame was not tried).
pub(crate) const NOT_TRIED: i32 = i32::MIN;

/// One queue's ring on its tap.
pub(crate) struct TapRing {
    ring: IoUring,
    /// A batch's writes are linked (see `run`).
    linked: bool,
}

impl std::fmt::Debug for TapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapRing").finish_non_exhaustive()
    }
}

impl TapRing {
    /// A ring of `entries` (a power of two) for batches of at most that many frames, on `tap`;
    /// a batch's writes are linked if `linked`.
    pub(crate) fn new(tap: &TapFd, entries: u32, linked: bool) -> io::Result<Self> {
        // COOP_TASKRUN: completions are all posted inline, no interrupt of this thread is ever
        // needed. The tap is fixed file 0; writev is the only operation, with no flag but
        // FIXED_FILE and IO_LINK (a batch's writes may be linked; `uring_restricted.rs`).
        let ring = RestrictedRing {
            entries,
            taskrun: Taskrun::Coop,
            files: &[tap.raw()],
            opcodes: &[opcode::Writev::CODE],
            other_flags: squeue::Flags::IO_LINK,
        }
        .build()?;
        Ok(TapRing { ring, linked })
    }

    /// The ring's own descriptor.
    #[cfg(test)]
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Whether a batch's writes are linked.
    pub(crate) fn linked(&self) -> bool {
        self.linked
    }

    /// Links a batch's writes from now on.
    pub(crate) fn link(&mut self) {
        self.linked = true;
    }

    /// Runs one writev per iovec list of `iovs` (in that order, with RWF_NOWAIT) in
    /// one submission and stores each result (bytes, or -errno) in `results`. Linked writes:
    /// the first that fails or writes short cancels those after it (-ECANCELED), so that no
    /// frame overtakes one the tap had no room for. Each is issued once the one before it has
    /// completed, which costs about a third more CPU per frame than writes issued together
    /// (`tests/bench/net-analysis.md`), so a tap that cannot be full runs them unlinked. A list
    /// the ring could not take is left at [`NOT_TRIED`]. Err: the ring failed (nothing of the
    /// batch is in flight even then); the caller stops using it.
    pub(crate) fn run(&mut self, iovs: &[IoVecs], results: &mut Vec<i32>) -> io::Result<()> {
        results.clear();
        results.resize(iovs.len(), NOT_TRIED);
        let mut queued = 0;
        {
            let mut sq = self.ring.submission();
            let last = iovs.len().saturating_sub(1);
            for (i, iov) in iovs.iter().enumerate() {
                let fd = types::Fixed(0);
                let link = if self.linked && i < last {
                    squeue::Flags::IO_LINK
                } else {
                    squeue::Flags::empty()
                };
                let entry = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .flags(link);
                // SAFETY: the iovec array and the memory it names (guest buffers of chains
                // the queue holds, or the handler's own buffers) stay valid until this
                // function returns, and every request of the batch has completed by then:
                // with RWF_NOWAIT none is parked or handed to a kernel worker, and we wait
                // for all of their completions below.
                if unsafe { sq.push(&entry.user_data(i as u64)) }.is_err() {
                    break;
                }
                queued += 1;
            }
        }
        let mut got = 0;
        while got < queued {
            match self.ring.submit_and_wait(queued - got) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    self.reap(results, &mut got);
                    if got < queued {
                        return Err(e);
                    }
                    break;
                }
            }
            self.reap(results, &mut got);
        }
        Ok(())
    }

    fn reap(&mut self, results: &mut [i32], got: &mut usize) {
        for cqe in self.ring.completion() {
            if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                *r = cqe.result();
                *got += 1;
            }
        }
    }
}
