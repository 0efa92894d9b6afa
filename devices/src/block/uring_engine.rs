//! The io_uring engine: one ring per queue, reads/writes/flushes submitted in batches with
//! the head index as user data, completions reaped when the ring's fd polls readable. Requests
//! the ring cannot take as they are (misaligned for O_DIRECT, too many iovecs), and the rare
//! request types (GET_ID, DISCARD, WRITE_ZEROES), run synchronously inline.
//!
//! On a buffered image, reads and writes are copies between the page cache and guest memory,
//! done inline on the queue thread, except that with spare CPUs (`BlockConfig::cpus`) large
//! ones that have company in flight go to the ring with IOSQE_ASYNC: io_uring's kernel
//! workers then copy several at once on the other CPUs while the queue thread goes on.
//!
//! The kernel runs some SQEs on its workers anyway: every fsync, and reads or writes that
//! would block. Where it cannot start a worker (a task limit such as the cgroup's pids.max is
//! reached), it cancels them (ECANCELED); such a request is then finished on the queue
//! thread, and the ring stops offloading and takes flushes inline when nothing is in flight.
//!
//! Each ring is locked down before it is enabled: the image file is registered as fixed file
//! 0 and the ring only takes readv, writev and fsync SQEs that name a fixed file (FIXED_FILE
//! is a required SQE flag, IO_DRAIN and ASYNC the only others allowed). io_uring operations
//! bypass seccomp, so whoever controls the ring can still only read, write and sync the
//! image. Fixed files also spare the kernel the file lookup and reference count (fget/fput)
//! per request.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use vu_core::{Chain, Progress, QueueHandler, QueueIo};

use super::disk::{Counters, Disk, IOV_MAX};
use super::iovec::IoVecs;
use super::nowait::NowaitGate;
use super::request::{
    build_iovecs, classify, direct_ok, execute_sync, finish, publish_early, Action, OFFLOAD_BYTES,
    S_IOERR, S_OK,
};
use crate::uring_restricted::{RestrictedRing, Taskrun};

/// Ring size cap, whatever the queue size.
const MAX_ENTRIES: u32 = 4096;

/// Index of the image file in each ring's registered file table.
pub(crate) const IMAGE: u32 = 0;

/// Creates a ring with the opcodes we use, or says why not.
pub(crate) fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::Readv::CODE, "readv"),
        (opcode::Writev::CODE, "writev"),
        (opcode::Fsync::CODE, "fsync"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::other(format!(
                "the kernel lacks io_uring {name}"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Op {
    #[default]
    Read,
    Write,
    Flush,
}

/// A request in the ring, indexed by head. Its iovec array must stay put until the CQE.
#[derive(Debug, Default)]
struct Slot {
    busy: bool,
    op: Op,
    /// Data length of the request.
    len: u32,
    /// Where the not-yet-transferred part starts, and how much is left.
    offset: u64,
    left: u64,
    dsync: bool,
    /// Buffered copy handed to io_uring's kernel workers (IOSQE_ASYNC).
    offload: bool,
    iov: IoVecs,
}

/// One queue served through io_uring.
pub(crate) struct UringHandler {
    disk: Arc<Disk>,
    ring: IoUring,
    slots: Vec<Slot>,
    in_flight: usize,
    max_in_flight: usize,
    cqes: Vec<(u64, i32)>,
    sync_iov: IoVecs,
    /// Large buffered copies with company go to the kernel's workers (`BlockConfig::cpus`).
    offload: bool,
    /// The kernel cancelled a request because it could not start a worker.
    no_workers: bool,
    /// When to try buffered reads and writes inline with RWF_NOWAIT (EAGAIN backoff).
    nowait: NowaitGate,
}

impl std::fmt::Debug for UringHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringHandler")
            .field("in_flight", &self.in_flight)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl UringHandler {
    /// The ring, for tests that probe its restrictions.
    #[cfg(test)]
    pub(crate) fn ring_for_tests(&mut self) -> &mut IoUring {
        &mut self.ring
    }

    /// A ring sized for `queue_size` (at most 4096 entries); the worker watches the ring's own
    /// fd (readable while completions wait in it).
    /// `offload`: large buffered copies that have company may go to the kernel's workers (the
    /// device decides: buffered image, fewer queues than CPUs).
    pub(crate) fn new(disk: Arc<Disk>, queue_size: u16, offload: bool) -> io::Result<Self> {
        let entries = u32::from(queue_size)
            .clamp(2, MAX_ENTRIES)
            .next_power_of_two();
        // Locked down before it is enabled (`uring_restricted.rs`): the image is fixed file
        // 0 and the only file its SQEs can name, and only the three operations the block path
        // submits are taken, with IO_DRAIN and ASYNC the only flags besides FIXED_FILE. A
        // compromised device cannot open files, create sockets or connect through its ring,
        // nor read or write any other descriptor it holds (the vhost-user socket, guest
        // memory, its eventfds).
        //
        // COOP_TASKRUN: a completion from an io-wq thread or an interrupt no longer sends an
        // IPI to interrupt this thread while it runs; it is posted at our next system call.
        // TASKRUN_FLAG marks such pending completions in the SQ flags, which `poll` checks
        // while the worker busy-polls.
        let ring = RestrictedRing {
            entries,
            taskrun: Taskrun::CoopFlagged,
            files: &[disk.file.as_raw_fd()],
            opcodes: &[
                opcode::Readv::CODE,
                opcode::Writev::CODE,
                opcode::Fsync::CODE,
            ],
            other_flags: squeue::Flags::IO_DRAIN | squeue::Flags::ASYNC,
        }
        .build()?;
        let max_in_flight = ring.params().sq_entries() as usize;
        let cq = ring.params().cq_entries() as usize;
        Ok(UringHandler {
            disk,
            ring,
            slots: (0..queue_size).map(|_| Slot::default()).collect(),
            in_flight: 0,
            max_in_flight,
            cqes: Vec::with_capacity(cq),
            sync_iov: IoVecs::default(),
            offload,
            no_workers: false,
            nowait: NowaitGate::default(),
        })
    }

    /// Starts the request at `head`. Returns its used length if it finished here.
    /// `company`: more requests are waiting in the available ring.
    fn start(&mut self, head: u16, chain: &Chain, company: bool) -> Option<u32> {
        let action = classify(&self.disk, chain);
        let (op, offset, len) = match action {
            Action::Read { offset, len } => (Op::Read, offset, len),
            Action::Write { offset, len } => (Op::Write, offset, len),
            Action::Flush => (Op::Flush, 0, 0),
            other => return Some(execute_sync(&self.disk, chain, other, &mut self.sync_iov)),
        };
        let disk = &self.disk;
        if op == Op::Flush && self.no_workers && self.in_flight == 0 {
            // The ring's fsync would wait for a worker the kernel cannot start; with nothing
            // in flight there is nothing for it to drain either.
            return Some(execute_sync(disk, chain, action, &mut self.sync_iov));
        }
        // A large buffered copy with others in flight or waiting goes to the kernel's
        // workers, which run it on another CPU while this thread starts the next request. A
        // lone one (queue depth 1) is copied here: handing it over and being woken for its
        // completion would cost more CPU for no parallelism.
        let offload = self.offload
            && op != Op::Flush
            && len >= OFFLOAD_BYTES
            && (self.in_flight > 0 || company);
        if op != Op::Flush && !disk.direct && !disk.nowait && !offload {
            // A buffered image whose file cannot do non-blocking I/O (tmpfs): the ring would
            // hand every request to an io-wq thread and wake us from there; the copy from the
            // page cache is cheaper done here.
            return Some(execute_sync(disk, chain, action, &mut self.sync_iov));
        }
        let slot = &mut self.slots[head as usize];
        if op != Op::Flush {
            build_iovecs(chain, op == Op::Write, len, &mut slot.iov);
            if len == 0 || slot.iov.remaining().len() > IOV_MAX || !direct_ok(disk, &slot.iov) {
                return Some(execute_sync(disk, chain, action, &mut self.sync_iov));
            }
        }
        let c = &disk.counters;
        Counters::bump(match op {
            Op::Read => &c.reads,
            Op::Write => &c.writes,
            Op::Flush => &c.flushes,
        });
        slot.op = op;
        slot.len = len;
        slot.offset = offset;
        slot.left = u64::from(len);
        slot.dsync = op == Op::Write && disk.write_through();
        slot.offload = offload;
        if offload {
            Counters::bump(&c.offloaded);
        } else if op != Op::Flush
            && disk.nowait_for(op == Op::Write)
            && self.nowait.try_inline(op == Op::Write)
        {
            // Buffered and non-blocking capable: try it inline (page-cache hit, or a write
            // that does not have to wait); the ring only gets what would block. A path that
            // would have blocked lately, or that the file refuses, is not tried (`nowait.rs`).
            let write = op == Op::Write;
            let tried = disk.rw_nowait(&slot.iov, offset, write, slot.dsync);
            if let Err(e) = &tried {
                self.nowait
                    .outcome(write, e.raw_os_error() == Some(libc::EAGAIN));
            }
            if let Ok(n) = tried {
                self.nowait.outcome(write, false);
                let n = n as u64;
                if n >= slot.left {
                    if slot.dsync {
                        Counters::bump(&c.durable_writes);
                    }
                    c.transferred(op == Op::Write, len);
                    let data = if op == Op::Read { len } else { 0 };
                    return Some(finish(disk, chain, S_OK, data));
                }
                slot.iov.consume(n as usize);
                slot.offset += n;
                slot.left -= n;
            }
            // EAGAIN (or any error, which the ring reports again): submit.
        }
        slot.busy = true;
        if !self.push(head) {
            self.slots[head as usize].busy = false;
            return Some(finish(&self.disk, chain, S_IOERR, 0));
        }
        self.in_flight += 1;
        None
    }

    /// Queues the SQE for the slot at `head`; false if the submission queue stays full.
    fn push(&mut self, head: u16) -> bool {
        let slot = &self.slots[head as usize];
        // The image, registered in `new`; the ring refuses SQEs without a fixed file.
        let fd = types::Fixed(IMAGE);
        let rest = slot.iov.remaining();
        let entry = match slot.op {
            Op::Read => opcode::Readv::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(slot.offset)
                .build()
                .flags(async_flag(slot.offload)),
            Op::Write => opcode::Writev::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(slot.offset)
                .rw_flags(if slot.dsync { libc::RWF_DSYNC } else { 0 })
                .build()
                .flags(async_flag(slot.offload)),
            // DRAIN: starts after every earlier SQE (writes included) has completed.
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(u64::from(head));
        for _ in 0..2 {
            // SAFETY: the SQE points at the slot's iovec array, which is not touched again
            // until this SQE's completion is reaped, and whose heap buffer does not move
            // with the slot; the buffers it names are guest memory that the request's chain
            // keeps mapped until the request is completed, which happens after the CQE.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return true;
            }
            self.submit();
        }
        false
    }

    fn submit(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Busy completion side: what is queued goes in after the next reap.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => return,
                Err(e) => {
                    vu_core::warn_ratelimited!(error = %e, "io_uring submit failed");
                    return;
                }
            }
        }
    }

    /// io_uring_enter even with nothing to submit: returning from it runs pending task work.
    fn submit_anyway(&mut self) {
        if let Err(e) = self.ring.submit() {
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            ) {
                vu_core::warn_ratelimited!(error = %e, "io_uring submit failed");
            }
        }
    }

    /// Handles every completion posted so far.
    fn reap(&mut self, q: &mut QueueIo) {
        loop {
            self.cqes.clear();
            let cap = self.cqes.capacity();
            for cqe in self.ring.completion().take(cap) {
                self.cqes.push((cqe.user_data(), cqe.result()));
            }
            if self.cqes.is_empty() {
                return;
            }
            for i in 0..self.cqes.len() {
                let (user_data, res) = self.cqes[i];
                self.on_cqe(q, user_data, res);
            }
        }
    }

    fn on_cqe(&mut self, q: &mut QueueIo, user_data: u64, res: i32) {
        let Some(head) = u16::try_from(user_data)
            .ok()
            .filter(|&h| self.slots.get(h as usize).is_some_and(|s| s.busy))
        else {
            tracing::error!(user_data, "io_uring completion for no request");
            return;
        };
        if res == -libc::ECANCELED {
            return self.finish_inline(q, head);
        }
        let slot = &mut self.slots[head as usize];
        let status = match slot.op {
            Op::Flush if res < 0 => S_IOERR,
            Op::Flush => S_OK,
            _ if res == -libc::EINTR || res == -libc::EAGAIN => return self.resubmit(q, head),
            _ if res < 0 => S_IOERR,
            _ => {
                let n = res as u64;
                if n >= slot.left {
                    S_OK
                } else if n == 0 {
                    S_IOERR
                } else {
                    // Short transfer: go on with the rest.
                    slot.iov.consume(n as usize);
                    slot.offset += n;
                    slot.left -= n;
                    return self.resubmit(q, head);
                }
            }
        };
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            vu_core::warn_ratelimited!(op = ?slot.op, offset = slot.offset, error = %e, "block I/O failed");
        }
        self.complete(q, head, status);
    }

    /// Finishes on this thread a request the kernel cancelled: it could not start a worker
    /// for it (we never cancel requests). The ring stops offloading from then on.
    fn finish_inline(&mut self, q: &mut QueueIo, head: u16) {
        if !self.no_workers {
            self.no_workers = true;
            self.offload = false;
            tracing::warn!(
                "io_uring could not start a kernel worker (a task limit such as pids.max?); \
                 this queue now copies on its own thread and syncs inline"
            );
        }
        let disk = &self.disk;
        let slot = &mut self.slots[head as usize];
        let done = match slot.op {
            Op::Flush => disk.sync(),
            op => disk.rw_vectored(&mut slot.iov, slot.offset, op == Op::Write, slot.dsync),
        };
        let status = match done {
            Ok(()) => S_OK,
            Err(e) => {
                vu_core::warn_ratelimited!(op = ?slot.op, offset = slot.offset, error = %e, "block I/O failed");
                S_IOERR
            }
        };
        self.complete(q, head, status);
    }

    fn resubmit(&mut self, q: &mut QueueIo, head: u16) {
        if !self.push(head) {
            self.complete(q, head, S_IOERR);
        }
    }

    fn complete(&mut self, q: &mut QueueIo, head: u16, status: u8) {
        let slot = &mut self.slots[head as usize];
        slot.busy = false;
        self.in_flight -= 1;
        let ok = status == S_OK;
        if ok && slot.op == Op::Write && slot.dsync {
            Counters::bump(&self.disk.counters.durable_writes);
        }
        if ok && slot.op != Op::Flush {
            self.disk
                .counters
                .transferred(slot.op == Op::Write, slot.len);
        }
        let data = if ok && slot.op == Op::Read {
            slot.len
        } else {
            0
        };
        let used = finish(&self.disk, q.chain(head), status, data);
        q.complete(head, used);
    }

    /// Waits for one completion (or gives the kernel a moment after an error).
    fn wait_one(&mut self) {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                vu_core::warn_ratelimited!(error = %e, "io_uring wait failed");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// IOSQE_ASYNC for an offloaded copy: straight to a kernel worker, without first trying it
/// inline in io_uring_enter (which for a page-cache hit would copy on this thread).
fn async_flag(offload: bool) -> squeue::Flags {
    if offload {
        squeue::Flags::ASYNC
    } else {
        squeue::Flags::empty()
    }
}

impl QueueHandler for UringHandler {
    fn event_fds(&self) -> Vec<RawFd> {
        // The ring's fd polls readable while its completion queue holds entries, and wakes
        // its pollers each time the kernel posts some, from wherever it posts them: an io-wq
        // worker, or task work on this thread (O_DIRECT I/O finished by an interrupt, a
        // buffered read that waited for its page, anything finished inside io_uring_enter),
        // which may run at any return to user space, between any two instructions of ours.
        // Unlike an eventfd, it needs no read: reaping the completions makes it unready
        // (level-triggered, epoll polls it again before it reports it), so completions the
        // worker collects before it sleeps (`before_sleep`) cost no second wait.
        vec![self.ring.as_raw_fd()]
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        self.reap(q);
        let size = q.size() as usize;
        if self.slots.len() < size {
            self.slots.resize_with(size, Slot::default);
        }
        let mut progress = Progress::Drained;
        loop {
            if self.in_flight >= self.max_in_flight {
                progress = Progress::Busy;
                break;
            }
            let Some(head) = q.pop() else {
                break;
            };
            let company = self.offload && q.avail_pending();
            if let Some(used) = self.start(head, q.chain(head), company) {
                let early = publish_early(q.chain(head));
                q.complete(head, used);
                if early {
                    q.flush();
                }
            }
        }
        self.submit();
        progress
    }

    fn poll(&mut self, q: &mut QueueIo) -> bool {
        if self.in_flight == 0 {
            return false;
        }
        if self.ring.submission().taskrun() {
            // Completions wait as task work (COOP_TASKRUN): entering the kernel posts them.
            self.submit_anyway();
        }
        if self.ring.completion().is_empty() {
            return false;
        }
        self.reap(q);
        self.submit();
        true
    }

    fn before_sleep(&mut self, q: &mut QueueIo) -> bool {
        // Completions posted by task work this thread ran on its way back from a system call
        // (typically the wait that it interrupted): reaped here, the ring's fd is not ready
        // by the time the worker waits again (see `event_fds`).
        self.poll(q)
    }

    fn handle_event(&mut self, _index: usize, q: &mut QueueIo) {
        self.reap(q);
        self.submit();
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn drain(&mut self, q: &mut QueueIo) {
        self.submit();
        while self.in_flight > 0 {
            self.wait_one();
            self.reap(q);
        }
    }
}

impl Drop for UringHandler {
    fn drop(&mut self) {
        // Normally drained already. If not, the kernel may still be using guest memory and
        // our iovecs: wait for it, discarding the results.
        while self.in_flight > 0 {
            self.wait_one();
            let n = self.ring.completion().count();
            self.in_flight = self.in_flight.saturating_sub(n);
        }
    }
}
