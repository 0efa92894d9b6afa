//! Arbitrary message sequences into `Handler::handle`: never a panic, and the reply shape
//! always matches the request (an explicit body exactly for requests that have one).

#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vu_core::connection::Message;
use vu_core::handler::{has_explicit_reply, Handler, HandlerError, Reply};
use vu_core::message::{Header, Request, FLAG_NEED_REPLY, MAX_FDS, MAX_PAYLOAD, VERSION};
use vu_core_fuzz::{parse_dispatch, FdKind, FuzzDevice, DISPATCH_MEM_SIZE};

/// File descriptors for one input: the guest-memory memfd is created the first time a
/// message asks for one; peers of socketpairs live until the input is done.
struct Fds<'a> {
    memory: &'a [u8],
    memfd: Option<File>,
    peers: Vec<UnixStream>,
}

impl Fds<'_> {
    fn memfd(&mut self) -> OwnedFd {
        let f = self.memfd.get_or_insert_with(|| {
            let fd =
                nix::sys::memfd::memfd_create("fuzz-mem", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                    .expect("memfd_create");
            let f = File::from(fd);
            f.set_len(DISPATCH_MEM_SIZE as u64).expect("size memfd");
            f.write_all_at(self.memory, 0).expect("fill memfd");
            f
        });
        OwnedFd::from(f.try_clone().expect("dup memfd"))
    }

    fn eventfd() -> OwnedFd {
        OwnedFd::from(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .expect("eventfd"),
        )
    }

    fn make(&mut self, n: u8, kind: FdKind) -> Vec<OwnedFd> {
        (0..n)
            .map(|i| match kind {
                FdKind::Memfd => self.memfd(),
                FdKind::EventFd => Self::eventfd(),
                FdKind::Socket => {
                    let (a, b) = UnixStream::pair().expect("socketpair");
                    self.peers.push(a);
                    OwnedFd::from(b)
                }
                FdKind::Mixed if i % 2 == 0 => self.memfd(),
                FdKind::Mixed => Self::eventfd(),
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

fuzz_target!(|data: &[u8]| {
    let input = parse_dispatch(data);
    let mut fds = Fds {
        memory: &input.memory,
        memfd: None,
        peers: Vec::new(),
    };
    let mut handler = Handler::new(Arc::new(FuzzDevice::new()));
    for m in &input.messages {
        let header = Header {
            request: m.request as u32,
            flags: VERSION | if m.need_reply { FLAG_NEED_REPLY } else { 0 },
            size: m.payload.len() as u32,
        };
        let msg = Message {
            header,
            payload: m.payload.clone(),
            fds: fds.make(m.nfds, m.fd_kind),
        };
        let request = Request::try_from(header.request).ok();
        let result = handler.handle(msg);
        check(request, &m.payload, &result);
    }
    // Stops any queue worker the input managed to start.
    handler.disconnect();
    drop(handler);
});
