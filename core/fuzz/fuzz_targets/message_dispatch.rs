//! Arbitrary message sequences into `Handler::handle`: never a panic, and the reply shape
//! always matches the request (an explicit body exactly for requests that have one).
//!
//! Queues run inline (`Handler::set_inline_queues`): a started queue processes its ring when
//! it starts, when enabled, and after every message (`run_queues`, as if kicked), on this
//! thread. The guest-memory memfd, the eventfds and the socketpairs are made once per process
//! and reset for each input, so an input costs no thread, and a duplicate per fd it carries.

#![no_main]

use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use vu_core::connection::Message;
use vu_core::handler::{has_explicit_reply, Handler, HandlerError, Reply};
use vu_core::message::{Header, Request, FLAG_NEED_REPLY, MAX_FDS, MAX_PAYLOAD, VERSION};
use vu_core_fuzz::{parse_dispatch, FdKind, FuzzDevice, DISPATCH_MEM_SIZE};

/// Eventfds and socketpairs handed out in turn (as duplicates), so that the fds of one input
/// are distinct.
const POOL: usize = 32;

/// What every input shares: the guest-memory memfd (refilled for each input, through a
/// mapping of our own), and pools of eventfds and socketpairs (emptied for each input): an
/// input costs a duplicate per fd instead of a new file.
struct Shared {
    memfd: File,
    /// The memfd mapped shared, `DISPATCH_MEM_SIZE` bytes.
    map: NonNull<u8>,
    eventfds: Vec<EventFd>,
    /// (our end, the end handed out); ours is non-blocking, to be emptied.
    sockets: Vec<(UnixStream, UnixStream)>,
    /// Bit i: eventfd i / socketpair i was handed out by the current input.
    used_eventfds: Cell<u32>,
    used_sockets: Cell<u32>,
}

thread_local! {
    static SHARED: Shared = Shared::new();
}

impl Shared {
    fn new() -> Self {
        let fd = nix::sys::memfd::memfd_create("fuzz-mem", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd_create");
        let memfd = File::from(fd);
        memfd.set_len(DISPATCH_MEM_SIZE as u64).expect("size memfd");
        // SAFETY: a fresh shared mapping of the whole memfd (sized above); nothing else is
        // placed at the address the kernel picks. It is never unmapped.
        let map = unsafe {
            mmap(
                None,
                NonZeroUsize::new(DISPATCH_MEM_SIZE).expect("non-zero size"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &memfd,
                0,
            )
        }
        .expect("map memfd")
        .cast::<u8>();
        let eventfds = (0..POOL)
            .map(|_| {
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .expect("eventfd")
            })
            .collect();
        let sockets = (0..POOL)
            .map(|_| {
                let (ours, theirs) = UnixStream::pair().expect("socketpair");
                ours.set_nonblocking(true).expect("non-blocking");
                (ours, theirs)
            })
            .collect();
        Shared {
            memfd,
            map,
            eventfds,
            sockets,
            used_eventfds: Cell::new(0),
            used_sockets: Cell::new(0),
        }
    }

    /// The guest memory of an input: its bytes at offset 0, zeros after them. Written
    /// through our mapping: no system call, and no page is freed (so none faults in again).
    fn reset_memory(&self, memory: &[u8]) {
        // SAFETY: `map` is a live shared mapping of `DISPATCH_MEM_SIZE` bytes. The only other
        // mappings of the memfd are the last input's handler's, which was dropped (unmapped)
        // before this input began, so nothing else reads or writes these bytes meanwhile.
        let mem = unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), DISPATCH_MEM_SIZE) };
        let n = memory.len().min(DISPATCH_MEM_SIZE);
        mem[..n].copy_from_slice(&memory[..n]);
        mem[n..].fill(0);
    }

    /// Empties what the last input's handler may have signalled or sent.
    fn reset_fds(&self) {
        let used = self.used_eventfds.replace(0);
        for (i, e) in self.eventfds.iter().enumerate() {
            if used & (1 << i) != 0 {
                let _ = e.read();
            }
        }
        let used = self.used_sockets.replace(0);
        for (i, (ours, _)) in self.sockets.iter().enumerate() {
            if used & (1 << i) != 0 {
                let mut buf = [0u8; 4096];
                while matches!((&*ours).read(&mut buf), Ok(n) if n > 0) {}
            }
        }
    }

    fn memfd(&self) -> OwnedFd {
        self.memfd.as_fd().try_clone_to_owned().expect("dup memfd")
    }

    fn eventfd(&self, k: usize) -> OwnedFd {
        let i = k % POOL;
        self.used_eventfds.set(self.used_eventfds.get() | 1 << i);
        self.eventfds[i]
            .as_fd()
            .try_clone_to_owned()
            .expect("dup eventfd")
    }

    fn socket(&self, k: usize) -> OwnedFd {
        let i = k % POOL;
        self.used_sockets.set(self.used_sockets.get() | 1 << i);
        self.sockets[i]
            .1
            .as_fd()
            .try_clone_to_owned()
            .expect("dup socket")
    }

    /// `n` fds of `kind`; `next` counts the pooled ones handed out so far in this input.
    fn make(&self, n: u8, kind: FdKind, next: &mut usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|i| {
                *next += 1;
                match kind {
                    FdKind::Memfd => self.memfd(),
                    FdKind::EventFd => self.eventfd(*next),
                    FdKind::Socket => self.socket(*next),
                    FdKind::Mixed if i % 2 == 0 => self.memfd(),
                    FdKind::Mixed => self.eventfd(*next),
                }
            })
            .collect()
    }
}

fn check(request: Option<Request>, payload: &[u8], result: &Result<Option<Reply>, HandlerError>) {
    match result {
        Ok(Some(reply)) => {
            let r = request.expect("an unknown request code produced a reply");
            assert!(
                has_explicit_reply(r),
                "{r:?} is not an explicit-reply request but got a body"
            );
            assert!(
                reply.body.len() <= MAX_PAYLOAD,
                "{r:?}: reply of {} bytes",
                reply.body.len()
            );
            assert!(reply.fds.len() <= MAX_FDS);
            assert_eq!(
                reply.fds.len(),
                (r == Request::GetInflightFd) as usize,
                "{r:?}: reply fds"
            );
            if r == Request::GetConfig {
                let size = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
                assert_eq!(
                    reply.body.len(),
                    12 + size as usize,
                    "GET_CONFIG reply size"
                );
                assert_eq!(
                    &reply.body[..12],
                    &payload[..12],
                    "GET_CONFIG echoes its header"
                );
            }
        }
        Ok(None) => {
            let r = request.expect("an unknown request code was accepted");
            assert!(
                !has_explicit_reply(r),
                "{r:?} succeeded without its explicit reply"
            );
        }
        Err(_) => {}
    }
}

fn run(s: &Shared, data: &[u8]) {
    let input = parse_dispatch(data);
    s.reset_memory(&input.memory);
    s.reset_fds();
    let mut next_fd = 0;
    let mut handler = Handler::new(Arc::new(FuzzDevice::new()));
    handler.set_inline_queues(true);
    for m in &input.messages {
        let header = Header {
            request: m.request as u32,
            flags: VERSION | if m.need_reply { FLAG_NEED_REPLY } else { 0 },
            size: m.payload.len() as u32,
        };
        let msg = Message {
            header,
            payload: m.payload.clone(),
            fds: s.make(m.nfds, m.fd_kind, &mut next_fd),
        };
        let request = Request::try_from(header.request).ok();
        let result = handler.handle(msg);
        check(request, &m.payload, &result);
        // What a worker would do after a kick.
        handler.run_queues();
    }
    handler.disconnect();
}

fuzz_target!(|data: &[u8]| {
    SHARED.with(|s| run(s, data));
});
