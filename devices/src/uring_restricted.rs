//! An io_uring locked down before its first SQE, as the block and net devices use them.
//!
//! io_uring operations bypass seccomp: whoever controls a ring could open files, create
//! sockets or do I/O on any descriptor the process holds, whatever the jail's filter says.
//! So each ring is created disabled (IORING_SETUP_R_DISABLED), given the files it may use
//! (registered, fixed files 0, 1, ...), restricted to the SQE opcodes its device submits,
//! each with FIXED_FILE set (a required flag), and only then enabled. Once enabled, its
//! restrictions refuse every io_uring_register operation too (none is allowed), which is why
//! the files are registered first. Fixed files also spare the kernel a file lookup and
//! reference count (fget/fput) per request.
//!
//! The system calls are the same for every device: io_uring_setup (twice where the kernel
//! refuses the optional setup flags), then io_uring_register for FILES, RESTRICTIONS and
//! ENABLE_RINGS, in that order (what the jail policies of both devices allow).

use std::io;
use std::os::fd::RawFd;

use io_uring::register::Restriction;
use io_uring::{squeue, IoUring};

/// Optional task-run setup flags, dropped on a kernel that refuses them (EINVAL; both came
/// with Linux 5.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taskrun {
    /// IORING_SETUP_COOP_TASKRUN: a completion posted from an io-wq thread or an interrupt
    /// does not interrupt the submitting thread while it runs; it is posted at its next
    /// system call (a sleeping thread is still woken).
    Coop,
    /// COOP_TASKRUN and IORING_SETUP_TASKRUN_FLAG: such pending completions are also marked
    /// in the SQ flags, for a thread that busy-polls its ring.
    CoopFlagged,
}

/// What differs between the devices' rings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RestrictedRing<'a> {
    /// Submission queue entries (a power of two).
    pub entries: u32,
    pub taskrun: Taskrun,
    /// The files the ring's SQEs may name, as fixed files 0, 1, ... in this order.
    pub files: &'a [RawFd],
    /// The only SQE opcodes the ring takes.
    pub opcodes: &'a [u8],
    /// SQE flags allowed besides FIXED_FILE (which every SQE must carry).
    pub other_flags: squeue::Flags,
}

impl RestrictedRing<'_> {
    /// Creates the ring, registers the files and the restrictions, and enables it.
    pub(crate) fn build(&self) -> io::Result<IoUring> {
        let ring = match self.setup(true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.setup(false)?,
            r => r?,
        };
        let submitter = ring.submitter();
        submitter.register_files(self.files)?;
        let mut restrictions: Vec<Restriction> = self
            .opcodes
            .iter()
            .map(|&op| Restriction::sqe_op(op))
            .collect();
        restrictions.extend([
            Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
            Restriction::sqe_flags_allowed(self.other_flags.bits()),
        ]);
        submitter.register_restrictions(&mut restrictions)?;
        submitter.register_enable_rings()?;
        Ok(ring)
    }

    /// io_uring_setup for a disabled ring, with the task-run flags if `taskrun`.
    fn setup(&self, taskrun: bool) -> io::Result<IoUring> {
        let mut builder = IoUring::builder();
        builder.setup_r_disabled();
        if taskrun {
            builder.setup_coop_taskrun();
            if self.taskrun == Taskrun::CoopFlagged {
                builder.setup_taskrun_flag();
            }
        }
        builder.build(self.entries)
    }
}
