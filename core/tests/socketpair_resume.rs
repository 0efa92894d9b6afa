//! A front-end that reconnects and resumes without negotiating protocol features again, as
//! QEMU's vhost-user-rng does after its chardev reconnects (SET_FEATURES, then GET_STATUS,
//! SET_STATUS, SET_MEM_TABLE with NEED_REPLY...): the back-end takes every protocol feature
//! it offers as acked. A front-end that negotiates keeps exactly what it negotiated.

mod common;

use std::os::fd::AsFd;

use common::*;
use vu_core::ConnectionEnd;

const FEATURES: u64 = feat::VERSION_1 | feat::PROTOCOL_FEATURES;

#[test]
fn a_resuming_front_end_keeps_the_offered_protocol_features() {
    let h = Harness::new();
    // QEMU 7.2's vu_rng_start on a fresh back-end: no GET_FEATURES, no protocol features.
    h.fe.send(req::SET_FEATURES, &u64_payload(FEATURES), &[]);
    // vhost_user_add_status: GET_STATUS then SET_STATUS, the latter with NEED_REPLY.
    let m = h.fe.call(req::GET_STATUS, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), 0, "a fresh back-end has status 0");
    h.fe.ok(req::SET_STATUS, &u64_payload(0x08), &[]);
    let st = h.status();
    assert_eq!(st.acked_features, FEATURES);
    assert_eq!(st.acked_protocol_features, proto::OFFERED);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn set_features_asking_for_an_ack_is_a_resumption_too() {
    let h = Harness::new();
    h.fe.ok(req::SET_FEATURES, &u64_payload(FEATURES), &[]);
    assert_eq!(h.status().acked_protocol_features, proto::OFFERED);
}

#[test]
fn a_negotiating_front_end_gets_exactly_what_it_negotiated() {
    // QEMU's order: protocol features before SET_FEATURES.
    let h = Harness::new();
    let m = h.fe.call(req::GET_FEATURES, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), feat::OFFERED);
    let m = h.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), proto::OFFERED);
    h.fe.send(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK),
        &[],
    );
    h.fe.ok(req::SET_FEATURES, &u64_payload(FEATURES), &[]);
    h.fe.refused(req::SET_STATUS, &u64_payload(0x08), &[]);
    assert_eq!(h.status().acked_protocol_features, proto::REPLY_ACK);

    // The rust-vmm order: SET_FEATURES first, then the protocol features.
    let h = Harness::new();
    h.negotiate(FEATURES, proto::REPLY_ACK);
    h.fe.refused(req::SET_STATUS, &u64_payload(0x08), &[]);
    assert_eq!(h.status().acked_protocol_features, proto::REPLY_ACK);
}

#[test]
fn without_the_protocol_features_bit_nothing_is_assumed() {
    let h = Harness::new();
    h.fe.send(req::SET_FEATURES, &u64_payload(feat::VERSION_1), &[]);
    h.fe.sync();
    assert_eq!(h.status().acked_protocol_features, 0);
    // GET_STATUS is not negotiated: it has an explicit reply the back-end cannot give.
    h.fe.send(req::GET_STATUS, &[], &[]);
    h.expect_protocol_error();
}

#[test]
fn a_device_may_withhold_core_protocol_features() {
    let h = Harness::with_device(withholding(proto::CONFIGURE_MEM_SLOTS));
    let offered = proto::OFFERED & !proto::CONFIGURE_MEM_SLOTS;
    let m = h.fe.call(req::GET_PROTOCOL_FEATURES, &[], &[], 8);
    assert_eq!(read_u64(&m.payload), offered);
    h.fe.send(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK),
        &[],
    );
    h.fe.refused(
        req::SET_PROTOCOL_FEATURES,
        &u64_payload(proto::REPLY_ACK | proto::CONFIGURE_MEM_SLOTS),
        &[],
    );
    // Not negotiated, and it has an explicit reply: the back-end closes the connection.
    h.fe.send(req::GET_MAX_MEM_SLOTS, &[], &[]);
    h.expect_protocol_error();
    // A resuming front-end gets the offer, without the withheld feature.
    let h = Harness::with_device(withholding(proto::CONFIGURE_MEM_SLOTS));
    h.fe.ok(req::SET_FEATURES, &u64_payload(FEATURES), &[]);
    assert_eq!(h.status().acked_protocol_features, offered);
}

fn withholding(bits: u64) -> TestDevice {
    let mut d = TestDevice::new();
    d.withheld = bits;
    d
}

/// Sets up queue 0 over `mem` starting at `base` (kick, call, enable) as a front-end does
/// after a reconnect; returns the call eventfd.
fn start_at(
    h: &Harness,
    mem: &GuestMemory,
    base: u16,
) -> (nix::sys::eventfd::EventFd, nix::sys::eventfd::EventFd) {
    h.fe.ok(
        req::SET_MEM_TABLE,
        &mem_table(&[GuestMemory::region()], false),
        &[mem.fd()],
    );
    let (kick, call) = (eventfd(), eventfd());
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, base as u32), &[]);
    h.fe.ok(
        req::SET_VRING_ADDR,
        &vring_addr(0, 0, UVA + DESC_GPA, UVA + USED_GPA, UVA + AVAIL_GPA, 0),
        &[],
    );
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[kick.as_fd()]);
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[call.as_fd()]);
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(0, 1), &[]);
    (kick, call)
}

#[test]
fn a_ring_that_had_completions_signals_the_driver_once_when_it_starts() {
    // A previous back-end completed 5 requests (used idx 5) and may have died before it
    // signalled the last: the new one notifies once, with nothing new in the ring.
    let h = Harness::new();
    h.negotiate_all();
    let mem = GuestMemory::new();
    mem.write(AVAIL_GPA + 2, &5u16.to_le_bytes());
    mem.write(USED_GPA + 2, &5u16.to_le_bytes());
    let (_kick, call) = start_at(&h, &mem, 5);
    assert!(
        wait_readable(call.as_fd(), TIMEOUT),
        "no notification after a start with completions in the used ring"
    );
    assert_eq!(call.read().expect("read"), 1, "more than one notification");
    assert_eq!(h.status().queues[0].completed, 0);

    // A fresh ring (used idx 0) is not signalled before it completes something.
    let h = Harness::new();
    h.negotiate_all();
    let (_kick, call) = start_at(&h, &GuestMemory::new(), 0);
    h.fe.sync();
    assert!(
        !wait_readable(call.as_fd(), std::time::Duration::from_millis(300)),
        "a fresh ring was signalled"
    );
}
