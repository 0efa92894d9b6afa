//! Queues run inline on the caller's thread (`Handler::set_inline_queues`), as the fuzz
//! targets drive them: no worker thread, the ring processed when the queue starts, when
//! enabled, on `run_queues` and on wake, never while asleep.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use common::*;
use vu_core::connection::Message;
use vu_core::handler::{Handler, HandlerError, Reply};
use vu_core::message::Header;

const PATTERN: &[u8] = b"inline";

fn message(
    h: &mut Handler,
    request: u32,
    payload: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Option<Reply>, HandlerError> {
    let fds: Vec<OwnedFd> = fds
        .iter()
        .map(|f| f.try_clone_to_owned().expect("dup"))
        .collect();
    h.handle(Message {
        header: Header {
            request,
            flags: VERSION,
            size: payload.len() as u32,
        },
        payload: payload.to_vec(),
        fds,
    })
}

fn ok(h: &mut Handler, request: u32, payload: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    if let Err(e) = message(h, request, payload, fds) {
        panic!("request {request} refused: {e}");
    }
}

/// Whether this process has a thread named like a queue worker of the test device.
fn worker_thread_exists() -> bool {
    std::fs::read_dir("/proc/self/task")
        .expect("list threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .any(|name| name.trim_end().starts_with("test-q"))
}

struct Setup {
    handler: Handler,
    mem: GuestMemory,
    call: nix::sys::eventfd::EventFd,
    kick: nix::sys::eventfd::EventFd,
}

/// Queue 0 configured and started (SET_VRING_KICK), not yet enabled.
fn setup() -> Setup {
    let mut h = Handler::new(Arc::new(TestDevice::with_pattern(PATTERN)));
    h.set_inline_queues(true);
    ok(
        &mut h,
        req::SET_FEATURES,
        &u64_payload(feat::VERSION_1 | feat::PROTOCOL_FEATURES),
        &[],
    );
    ok(
        &mut h,
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::OFFERED),
        &[],
    );
    let mem = GuestMemory::new();
    let table = mem_table(&[GuestMemory::region()], false);
    ok(&mut h, req::SET_MEM_TABLE, &table, &[mem.fd()]);
    ok(
        &mut h,
        req::SET_VRING_NUM,
        &vring_state(0, RING_SIZE as u32),
        &[],
    );
    let addr = vring_addr(0, 0, UVA + DESC_GPA, UVA + USED_GPA, UVA + AVAIL_GPA, 0);
    ok(&mut h, req::SET_VRING_ADDR, &addr, &[]);
    let (call, kick) = (eventfd(), eventfd());
    ok(
        &mut h,
        req::SET_VRING_CALL,
        &u64_payload(0),
        &[call.as_fd()],
    );
    ok(
        &mut h,
        req::SET_VRING_KICK,
        &u64_payload(0),
        &[kick.as_fd()],
    );
    Setup {
        handler: h,
        mem,
        call,
        kick,
    }
}

/// Offers request `n` (16 readable bytes, 512 writable), as `Ring::offer_request` does.
fn offer(mem: &GuestMemory, n: u16) {
    mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
    mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
    mem.offer(n, 0, n + 1);
}

#[test]
fn an_inline_queue_starts_no_thread_and_runs_when_asked() {
    let mut s = setup();
    assert!(
        !worker_thread_exists(),
        "a started inline queue has no thread"
    );
    assert!(s.handler.status().queues[0].started);
    offer(&s.mem, 0);
    // Not enabled yet: nothing is taken.
    s.handler.run_queues();
    assert_eq!(s.mem.used_idx(), 0);
    ok(
        &mut s.handler,
        req::SET_VRING_ENABLE,
        &vring_state(0, 1),
        &[],
    );
    assert_eq!(s.mem.used_idx(), 1, "enabling processes the ring");
    assert_eq!(s.mem.used_elem(0), (0, PATTERN.len() as u32));
    assert_eq!(s.mem.read(WRITE_BUF_GPA, PATTERN.len()), PATTERN);
    assert_eq!(s.call.read().expect("a notification"), 1);

    offer(&s.mem, 1);
    assert_eq!(s.mem.used_idx(), 1, "nothing runs between calls");
    s.handler.run_queues();
    assert_eq!(s.mem.used_idx(), 2);
    let q = &s.handler.status().queues[0];
    // Each `run_queues` counts as a kick, taken or not.
    assert_eq!((q.completed, q.kicks), (2, 2));
    // The kick eventfd is not read by an inline queue.
    s.kick.write(1).expect("kick");
    assert_eq!(s.kick.read().expect("kick still pending"), 1);
}

#[test]
fn an_asleep_inline_queue_takes_nothing_until_wake() {
    let mut s = setup();
    ok(
        &mut s.handler,
        req::SET_VRING_ENABLE,
        &vring_state(0, 1),
        &[],
    );
    s.handler.sleep().expect("sleep");
    offer(&s.mem, 0);
    s.handler.run_queues();
    ok(
        &mut s.handler,
        req::SET_VRING_ENABLE,
        &vring_state(0, 1),
        &[],
    );
    assert_eq!(s.mem.used_idx(), 0, "asleep: the ring is not touched");
    s.handler.wake().expect("wake");
    assert_eq!(s.mem.used_idx(), 1, "wake processes the ring");
}

#[test]
fn get_vring_base_stops_an_inline_queue_where_it_was() {
    let mut s = setup();
    ok(
        &mut s.handler,
        req::SET_VRING_ENABLE,
        &vring_state(0, 1),
        &[],
    );
    for n in 0..3 {
        offer(&s.mem, n);
        s.handler.run_queues();
    }
    let r = message(&mut s.handler, req::GET_VRING_BASE, &vring_state(0, 0), &[])
        .expect("GET_VRING_BASE")
        .expect("a reply");
    assert_eq!(r.body, vring_state(0, 3));
    assert!(!s.handler.status().queues[0].started);
    // A stopped queue is left alone.
    offer(&s.mem, 3);
    s.handler.run_queues();
    assert_eq!(s.mem.used_idx(), 3);
}
