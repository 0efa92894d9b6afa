//! Vring configuration and I/O: SET_VRING_NUM/ADDR/BASE, GET_VRING_BASE,
//! SET_VRING_KICK/CALL/ERR, SET_VRING_ENABLE, and requests run through a driver-side split
//! ring in memfd guest memory.

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use common::*;
use vu_core::ConnectionEnd;

fn with_memory(h: &Harness) -> GuestMemory {
    let mem = GuestMemory::new();
    h.fe.ok(
        req::SET_MEM_TABLE,
        &mem_table(&[GuestMemory::region()], false),
        &[mem.fd()],
    );
    mem
}

fn addr(q: u32, flags: u32) -> Vec<u8> {
    vring_addr(q, flags, UVA + DESC_GPA, UVA + USED_GPA, UVA + AVAIL_GPA, 0)
}

#[test]
fn set_vring_num_accepts_powers_of_two_up_to_the_device_max() {
    let h = Harness::new();
    h.negotiate_all();
    for n in [1, 2, 64, MAX_QUEUE_SIZE as u32] {
        h.fe.ok(req::SET_VRING_NUM, &vring_state(1, n), &[]);
    }
}

#[test]
fn set_vring_num_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    for n in [0, 3, 100, 2 * MAX_QUEUE_SIZE as u32, 65536, u32::MAX] {
        h.fe.refused(req::SET_VRING_NUM, &vring_state(0, n), &[]);
    }
    h.fe.refused(req::SET_VRING_NUM, &vring_state(2, 8), &[]);
    h.fe.refused(req::SET_VRING_NUM, &vring_state(u32::MAX, 8), &[]);
    h.fe.refused(req::SET_VRING_NUM, &[8, 0, 0, 0], &[]);
    let e = eventfd();
    h.fe.refused(req::SET_VRING_NUM, &vring_state(0, 8), &[e.as_fd()]);
}

#[test]
fn set_vring_base_and_get_vring_base() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.ok(req::SET_VRING_BASE, &vring_state(1, 0x1234), &[]);
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(1, 0), &[], 8);
    assert_eq!(
        m.payload,
        vring_state(1, 0x1234),
        "index echoed, num = base"
    );
    // The largest legal base.
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, 0xffff), &[]);
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 0xffff));
}

#[test]
fn set_vring_base_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.refused(req::SET_VRING_BASE, &vring_state(0, 0x10000), &[]);
    h.fe.refused(req::SET_VRING_BASE, &vring_state(2, 0), &[]);
    h.fe.refused(req::SET_VRING_BASE, &[0u8; 12], &[]);
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 0), "nothing changed");
}

#[test]
fn get_vring_base_out_of_range_closes_the_connection() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.send(req::GET_VRING_BASE, &vring_state(2, 0), &[]);
    h.expect_protocol_error();
}

#[test]
fn get_vring_base_short_payload_closes_the_connection() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.send(req::GET_VRING_BASE, &[0u8; 4], &[]);
    h.expect_protocol_error();
}

#[test]
fn set_vring_addr_translates_through_the_memory_table() {
    let h = Harness::new();
    h.negotiate_all();
    let _mem = with_memory(&h);
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 1), &[]);
}

#[test]
fn set_vring_addr_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    // No memory table yet: nothing translates.
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.refused(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    let _mem = with_memory(&h);
    // Unknown flag, bad index, short payload, an fd.
    h.fe.refused(req::SET_VRING_ADDR, &addr(0, 2), &[]);
    h.fe.refused(req::SET_VRING_ADDR, &addr(2, 0), &[]);
    h.fe.refused(req::SET_VRING_ADDR, &addr(0, 0)[..32], &[]);
    let e = eventfd();
    h.fe.refused(req::SET_VRING_ADDR, &addr(0, 0), &[e.as_fd()]);
    // Outside guest memory; straddling its end; misaligned descriptor table.
    let outside = vring_addr(0, 0, 0x1000, UVA + USED_GPA, UVA + AVAIL_GPA, 0);
    h.fe.refused(req::SET_VRING_ADDR, &outside, &[]);
    let straddle = vring_addr(
        0,
        0,
        UVA + MEM_SIZE - 64,
        UVA + USED_GPA,
        UVA + AVAIL_GPA,
        0,
    );
    h.fe.refused(req::SET_VRING_ADDR, &straddle, &[]);
    let misaligned = vring_addr(0, 0, UVA + DESC_GPA + 8, UVA + USED_GPA, UVA + AVAIL_GPA, 0);
    h.fe.refused(req::SET_VRING_ADDR, &misaligned, &[]);
    let wrapping = vring_addr(0, 0, u64::MAX - 7, UVA + USED_GPA, UVA + AVAIL_GPA, 0);
    h.fe.refused(req::SET_VRING_ADDR, &wrapping, &[]);
}

#[test]
fn kick_starts_the_ring_and_a_request_completes() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::start(&h, 0, 0, 0);
    assert!(h.status().queues[0].started);
    assert!(h.status().queues[0].enabled);
    ring.offer_request(0);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 1);
    assert_eq!(
        ring.mem.used_elem(0),
        (0, 0),
        "head 0 completed with length 0"
    );
    let st = h.status();
    assert_eq!(st.queues[0].completed, 1);
    assert_eq!(st.queues[0].chain_errors, 0);
    // GET_VRING_BASE stops the ring and reports the next available index.
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 1));
    assert!(!h.status().queues[0].started);
    assert_eq!(h.device.stops.load(Ordering::SeqCst), 1);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn written_bytes_are_reported_in_the_used_ring() {
    let h = Harness::with_device(TestDevice::with_pattern(b"hello"));
    h.negotiate_all();
    let ring = Ring::start(&h, 1, 0, 0);
    ring.offer_request(0);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_elem(0), (0, 5));
    assert_eq!(ring.mem.read(WRITE_BUF_GPA, 6), b"hello\0");
}

#[test]
fn a_new_kick_fd_restarts_the_ring_where_it_stopped() {
    let h = Harness::new();
    h.negotiate_all();
    let mut ring = Ring::start(&h, 0, 0, 0);
    ring.offer_request(0);
    ring.kick_and_wait();
    // Replace the kick fd: the ring restarts from next_avail 1, used 1.
    ring.kick = eventfd();
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[ring.kick.as_fd()]);
    assert_eq!(h.device.starts.load(Ordering::SeqCst), 2);
    ring.offer_request(1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 2);
    assert_eq!(ring.mem.used_elem(1), (0, 0));
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 2));
}

#[test]
fn get_vring_base_then_kick_resumes_from_the_base() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::start(&h, 0, 0, 0);
    ring.offer_request(0);
    ring.kick_and_wait();
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 1));
    // Restart as a front-end does after GET_VRING_BASE (e.g. after migration).
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, 1), &[]);
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[ring.kick.as_fd()]);
    ring.offer_request(1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 2);
}

#[test]
fn set_vring_kick_nofd_leaves_the_ring_stopped() {
    let h = Harness::new();
    h.negotiate_all();
    let _mem = with_memory(&h);
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0x100), &[]);
    assert!(!h.status().queues[0].started);
}

#[test]
fn set_vring_kick_call_err_malformed_are_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let _mem = with_memory(&h);
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    let e = eventfd();
    let e2 = eventfd();
    for request in [req::SET_VRING_KICK, req::SET_VRING_CALL, req::SET_VRING_ERR] {
        // No fd without NOFD; an fd with NOFD; two fds.
        h.fe.refused(request, &u64_payload(0), &[]);
        h.fe.refused(request, &u64_payload(0x100), &[e.as_fd()]);
        h.fe.refused(request, &u64_payload(0), &[e.as_fd(), e2.as_fd()]);
        // Index out of range; unknown bits; short payload.
        h.fe.refused(request, &u64_payload(2), &[e.as_fd()]);
        h.fe.refused(request, &u64_payload(0xff), &[e.as_fd()]);
        h.fe.refused(request, &u64_payload(0x200), &[e.as_fd()]);
        h.fe.refused(request, &u64_payload(1 << 63), &[e.as_fd()]);
        h.fe.refused(request, &[0u8; 4], &[e.as_fd()]);
    }
    assert!(!h.status().queues[0].started);
    // CALL and ERR with NOFD are fine.
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0x100), &[]);
    h.fe.ok(req::SET_VRING_ERR, &u64_payload(0x101), &[]);
}

#[test]
fn set_vring_kick_without_addresses_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let e = eventfd();
    h.fe.refused(req::SET_VRING_KICK, &u64_payload(1), &[e.as_fd()]);
    assert!(!h.status().queues[1].started);
}

#[test]
fn set_vring_call_can_be_swapped_while_running() {
    let h = Harness::new();
    h.negotiate_all();
    let mut ring = Ring::start(&h, 0, 0, 0);
    ring.offer_request(0);
    ring.kick_and_wait();
    let old = std::mem::replace(&mut ring.call, eventfd());
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[ring.call.as_fd()]);
    ring.offer_request(1);
    ring.kick_and_wait();
    assert!(
        !wait_readable(old.as_fd(), std::time::Duration::ZERO),
        "the replaced call fd is not signalled"
    );
}

#[test]
fn malformed_chain_completes_with_zero_and_signals_err() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::start(&h, 0, 0, 0);
    // A buffer far outside guest memory.
    ring.mem.set_desc(0, 0x10_0000_0000, 16, 0, 0);
    ring.mem.offer(0, 0, 1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_elem(0), (0, 0));
    assert_eq!(ring.mem.used_idx(), 1);
    assert!(
        wait_readable(ring.err.as_fd(), std::time::Duration::ZERO),
        "the err eventfd is signalled before the call"
    );
    let st = h.status();
    assert_eq!(st.queues[0].chain_errors, 1);
    assert_eq!(st.queues[0].completed, 0);
    // The ring goes on.
    ring.offer_request(1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 2);
    assert_eq!(h.status().queues[0].completed, 1);
}

#[test]
fn running_ring_refuses_reconfiguration() {
    let h = Harness::new();
    h.negotiate_all();
    let _ring = Ring::start(&h, 0, 0, 0);
    h.fe.refused(req::SET_VRING_NUM, &vring_state(0, 16), &[]);
    h.fe.refused(req::SET_VRING_BASE, &vring_state(0, 3), &[]);
    let moved = vring_addr(
        0,
        0,
        UVA + DESC_GPA + 0x100,
        UVA + USED_GPA,
        UVA + AVAIL_GPA,
        0,
    );
    h.fe.refused(req::SET_VRING_ADDR, &moved, &[]);
    // Only the log flag may change on a running ring.
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 1), &[]);
    assert!(h.status().queues[0].started);
}

#[test]
fn set_vring_enable_toggles_and_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(1, 1), &[]);
    assert!(h.status().queues[1].enabled);
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(1, 0), &[]);
    assert!(!h.status().queues[1].enabled);
    h.fe.refused(req::SET_VRING_ENABLE, &vring_state(1, 2), &[]);
    h.fe.refused(req::SET_VRING_ENABLE, &vring_state(2, 1), &[]);
    h.fe.refused(req::SET_VRING_ENABLE, &[1u8; 4], &[]);
    let e = eventfd();
    h.fe.refused(req::SET_VRING_ENABLE, &vring_state(1, 1), &[e.as_fd()]);
    assert!(!h.status().queues[1].enabled);
}

#[test]
fn set_vring_enable_without_protocol_features_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::VERSION_1, proto::REPLY_ACK);
    h.fe.refused(req::SET_VRING_ENABLE, &vring_state(0, 1), &[]);
}

/// QEMU's vhost-user-net sends SET_VRING_ENABLE right after reading the offered features,
/// before SET_FEATURES (QEMU 8 and later wait for its ack): it is taken, and the ring keeps
/// that state once PROTOCOL_FEATURES is negotiated.
#[test]
fn set_vring_enable_before_set_features_is_taken() {
    let h = Harness::new();
    let m = h.fe.call(req::GET_FEATURES, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), feat::OFFERED);
    h.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
    h.fe.ok(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK),
        &[],
    );
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(1, 1), &[]);
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(0, 0), &[]);
    h.fe.ok(
        req::SET_FEATURES,
        &u64_payload(feat::VERSION_1 | feat::PROTOCOL_FEATURES),
        &[],
    );
    let st = h.status();
    assert!(st.queues[1].enabled && !st.queues[0].enabled);
    h.fe.refused(req::SET_VRING_ENABLE, &vring_state(2, 1), &[]);
}

#[test]
fn without_protocol_features_a_ring_starts_enabled() {
    let h = Harness::new();
    h.negotiate(feat::VERSION_1, proto::REPLY_ACK);
    let ring = Ring::setup(&h, 0, 0, 0);
    assert!(h.status().queues[0].enabled);
    ring.offer_request(0);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 1);
}

#[test]
fn a_disabled_ring_processes_nothing_until_enabled() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::setup(&h, 0, 0, 0);
    assert!(!h.status().queues[0].enabled);
    ring.offer_request(0);
    ring.kick.write(1).expect("kick");
    // Enabling pokes the worker, which then finds the pending request.
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(0, 1), &[]);
    assert!(
        wait_readable(ring.call.as_fd(), TIMEOUT),
        "request processed after enable"
    );
    assert_eq!(ring.mem.used_idx(), 1);
    assert_eq!(h.status().queues[0].completed, 1);
}

#[test]
fn a_disabled_ring_stops_without_consuming() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::setup(&h, 0, 0, 0);
    ring.offer_request(0);
    ring.kick.write(1).expect("kick");
    // Stopping joins the worker: whatever it did with the kick is over by the reply.
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 0), "nothing was consumed");
    assert_eq!(ring.mem.used_idx(), 0);
}

/// Core bug: with an available index more than a ring ahead of the device, virtio-queue's
/// `pop_descriptor_chain` returns `None` while `enable_notification` keeps returning `true`
/// ("more buffers"), so `vring.rs::process()` loops forever. The worker never reads its
/// control eventfd again and `Worker::stop` (GET_VRING_BASE, RESET_DEVICE, disconnect)
/// blocks forever with the handler lock held: a guest can wedge the device process.
#[test]
fn avail_idx_more_than_a_ring_ahead_does_not_wedge_the_device() {
    let h = Harness::new();
    // Without PROTOCOL_FEATURES the ring starts enabled: the worker looks at the ring as
    // soon as it starts, before any command can reach it.
    h.negotiate(feat::VERSION_1, proto::OFFERED);
    let mem = GuestMemory::new();
    mem.set_desc(0, READ_BUF_GPA, 16, 0, 0);
    mem.offer(0, 0, 100);
    let _ring = Ring::setup_with(&h, 0, 0, 0, mem);
    // The back-end must still answer GET_VRING_BASE and stop the ring.
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(read_u32(&m.payload), 0);
    assert!(!h.status().queues[0].started);
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

/// Interop (low severity): `handler.rs` SET_VRING_ADDR before SET_VRING_NUM validates the
/// rings against the device's maximum size, then SET_VRING_NUM with another size silently
/// drops the addresses (`v.addr = None; v.gpa = None`), so the following SET_VRING_KICK is
/// refused ("vring 0 has no addresses"). QEMU sends NUM first; libvhost-user accepts either
/// order. Re-translating the kept addresses with the new size would accept both.
#[test]
fn set_vring_addr_before_set_vring_num_still_starts() {
    let h = Harness::new();
    h.negotiate_all();
    let mem = with_memory(&h);
    mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
    mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, 0), &[]);
    let kick = eventfd();
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[kick.as_fd()]);
    assert!(h.status().queues[0].started);
}

/// A ring of `RING_SIZE` with one request offered (a 16-byte read and a 512-byte write).
fn one_request(h: &Harness) -> GuestMemory {
    let mem = with_memory(h);
    mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
    mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
    mem.offer(0, 0, 1);
    mem
}

/// Sets up ring 0 and starts it enabled, as QEMU does: the call eventfd, if any, was set
/// before. Returns the kick eventfd.
fn start_enabled(h: &Harness) -> nix::sys::eventfd::EventFd {
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, 0), &[]);
    h.fe.ok(req::SET_VRING_ADDR, &addr(0, 0), &[]);
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(0, 1), &[]);
    let kick = eventfd();
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[kick.as_fd()]);
    kick
}

#[test]
fn a_call_eventfd_replaced_on_a_running_queue_is_signalled() {
    // QEMU's first call eventfd for a ring is its masked notifier, which it stops reading
    // when it sets the real one after the kick: a completion signalled on the first must be
    // told again on the second, or the driver never hears of it (seen as a stalled guest
    // after a device respawn on QEMU 10).
    let h = Harness::new();
    h.negotiate_all();
    let mem = one_request(&h);
    let masked = eventfd();
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[masked.as_fd()]);
    let _kick = start_enabled(&h);
    assert!(
        wait_readable(masked.as_fd(), TIMEOUT),
        "the completion was not signalled on the first eventfd"
    );
    assert_eq!(mem.used_idx(), 1);
    let call = eventfd();
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[call.as_fd()]);
    assert!(
        wait_readable(call.as_fd(), TIMEOUT),
        "the eventfd that replaced a signalled one was never signalled"
    );
}

#[test]
fn a_completion_before_the_call_fd_is_set_is_signalled_once_it_is() {
    // QEMU sets a ring's call eventfd after the kick that starts it: a request already in
    // the ring completes on that first run, when there is no eventfd to tell.
    let h = Harness::new();
    h.negotiate_all();
    let mem = one_request(&h);
    let _kick = start_enabled(&h);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while mem.used_idx() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never completed"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let call = eventfd();
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[call.as_fd()]);
    assert!(
        wait_readable(call.as_fd(), TIMEOUT),
        "the completion was never signalled"
    );
}
