//! Inflight I/O tracking: GET_INFLIGHT_FD / SET_INFLIGHT_FD and resubmission of a request
//! that was in flight when the previous back-end went away.

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use common::*;
use vu_core::ConnectionEnd;

/// Region size of one queue: 16-byte header + 16 bytes per descriptor (spec layout).
fn region_size(queue_size: u16) -> u64 {
    16 + 16 * queue_size as u64
}

fn read_area(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).expect("read inflight area");
    b
}

#[test]
fn get_inflight_fd_reply_is_exact() {
    let h = Harness::new();
    h.negotiate_all();
    let m = h.fe.call(
        req::GET_INFLIGHT_FD,
        &inflight_description(0, 0, 2, 256),
        &[],
        24,
    );
    let size = 2 * region_size(256);
    assert_eq!(m.payload, inflight_description(size, 0, 2, 256));
    assert_eq!(m.fds.len(), 1, "the area's fd rides on the reply");
    let f = File::from(m.fds.into_iter().next().expect("fd"));
    assert!(f.metadata().expect("fstat").len() >= size);
    for q in 0..2 {
        let hdr = read_area(&f, q * region_size(256), 16);
        assert_eq!(read_u16(&hdr[8..]), 1, "version");
        assert_eq!(read_u16(&hdr[10..]), 256, "desc_num");
    }
}

#[test]
fn get_inflight_fd_accepts_the_unpadded_description() {
    let h = Harness::new();
    h.negotiate_all();
    let p = inflight_description(0, 0, 1, 8);
    let m = h.fe.call(req::GET_INFLIGHT_FD, &p[..20], &[], 24);
    assert_eq!(m.payload, inflight_description(region_size(8), 0, 1, 8));
    assert_eq!(m.fds.len(), 1);
}

/// GET_INFLIGHT_FD has an explicit reply that cannot carry an error: the connection closes.
fn get_inflight_closes(protocol: u64, payload: &[u8], with_fd: bool) {
    let h = Harness::new();
    h.negotiate(feat::VERSION_1 | feat::PROTOCOL_FEATURES, protocol);
    let e = eventfd();
    let fds = if with_fd { vec![e.as_fd()] } else { vec![] };
    h.fe.send(req::GET_INFLIGHT_FD, payload, &fds);
    h.expect_protocol_error();
}

#[test]
fn get_inflight_fd_malformed_closes_the_connection() {
    let all = proto::OFFERED;
    get_inflight_closes(all, &inflight_description(0, 0, 2, 3), false);
    get_inflight_closes(all, &inflight_description(0, 0, 2, 0), false);
    get_inflight_closes(all, &inflight_description(0, 0, 0, 8), false);
    get_inflight_closes(all, &inflight_description(0, 0, 3, 8), false);
    get_inflight_closes(all, &inflight_description(0, 0, 1, 8)[..16], false);
    get_inflight_closes(all, &inflight_description(0, 0, 1, 8), true);
    get_inflight_closes(
        all & !proto::INFLIGHT_SHMFD,
        &inflight_description(0, 0, 1, 8),
        false,
    );
}

#[test]
fn set_inflight_fd_accepts_an_area_from_get_inflight_fd() {
    let h = Harness::new();
    h.negotiate_all();
    let m = h.fe.call(
        req::GET_INFLIGHT_FD,
        &inflight_description(0, 0, 2, 8),
        &[],
        24,
    );
    let fd = m.fds.into_iter().next().expect("fd");
    h.fe.ok(req::SET_INFLIGHT_FD, &m.payload, &[fd.as_fd()]);
}

#[test]
fn set_inflight_fd_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let size = region_size(8);
    let area = memfd(0x2000);
    let good = inflight_description(size, 0, 1, 8);
    // No fd, two fds.
    h.fe.refused(req::SET_INFLIGHT_FD, &good, &[]);
    h.fe.refused(req::SET_INFLIGHT_FD, &good, &[area.as_fd(), area.as_fd()]);
    // Area smaller than the geometry needs; larger than the file; unaligned offset.
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(size - 1, 0, 1, 8),
        &[area.as_fd()],
    );
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(size, 0x2000, 1, 8),
        &[area.as_fd()],
    );
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(size, 8, 1, 8),
        &[area.as_fd()],
    );
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(u64::MAX, 0x1000, 1, 8),
        &[area.as_fd()],
    );
    // Bad geometry: more queues than the device, size not a power of two.
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(0x2000, 0, 3, 8),
        &[area.as_fd()],
    );
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(0x2000, 0, 1, 6),
        &[area.as_fd()],
    );
    // Wrong payload size.
    h.fe.refused(req::SET_INFLIGHT_FD, &good[..16], &[area.as_fd()]);
    // The area is usable afterwards.
    h.fe.ok(req::SET_INFLIGHT_FD, &good, &[area.as_fd()]);
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

#[test]
fn set_inflight_fd_without_the_feature_is_refused() {
    let h = Harness::new();
    h.negotiate(feat::PROTOCOL_FEATURES, proto::REPLY_ACK);
    let area = memfd(0x1000);
    h.fe.refused(
        req::SET_INFLIGHT_FD,
        &inflight_description(region_size(8), 0, 1, 8),
        &[area.as_fd()],
    );
}

#[test]
fn completed_requests_are_cleared_in_the_area() {
    let h = Harness::new();
    h.negotiate_all();
    let m = h.fe.call(
        req::GET_INFLIGHT_FD,
        &inflight_description(0, 0, 1, RING_SIZE),
        &[],
        24,
    );
    let area = File::from(m.fds.into_iter().next().expect("fd"));
    let ring = Ring::start(&h, 0, 0, 0);
    ring.offer_request(0);
    ring.kick_and_wait();
    let hdr = read_area(&area, 0, 16);
    assert_eq!(read_u16(&hdr[14..]), 1, "used_idx committed");
    let d0 = read_area(&area, 16, 16);
    assert_eq!(d0[0], 0, "head 0 no longer in flight");
}

#[test]
fn a_request_in_flight_at_a_crash_is_resubmitted_once() {
    let h = Harness::new();
    h.negotiate_all();
    // The area as a previous back-end left it: head 0 fetched (counter 5), never used.
    let area = memfd(0x1000);
    let mut hdr = vec![0u8; 16];
    hdr[8..10].copy_from_slice(&1u16.to_ne_bytes());
    hdr[10..12].copy_from_slice(&RING_SIZE.to_ne_bytes());
    area.write_all_at(&hdr, 0).expect("write header");
    let mut d0 = vec![0u8; 16];
    d0[0] = 1;
    d0[8..16].copy_from_slice(&5u64.to_ne_bytes());
    area.write_all_at(&d0, 16).expect("write desc 0");
    h.fe.ok(
        req::SET_INFLIGHT_FD,
        &inflight_description(region_size(RING_SIZE), 0, 1, RING_SIZE),
        &[area.as_fd()],
    );
    // The driver had offered head 0 (avail idx 1); the used ring is still empty. The
    // front-end restores base 0 (nothing it knows of was consumed) and starts the ring.
    let mem = GuestMemory::new();
    mem.set_desc(0, READ_BUF_GPA, 16, DESC_F_NEXT, 1);
    mem.set_desc(1, WRITE_BUF_GPA, 512, DESC_F_WRITE, 0);
    mem.offer(0, 0, 1);
    h.fe.ok(
        req::SET_MEM_TABLE,
        &mem_table(&[GuestMemory::region()], false),
        &[mem.fd()],
    );
    let (kick, call) = (eventfd(), eventfd());
    h.fe.ok(req::SET_VRING_NUM, &vring_state(0, RING_SIZE as u32), &[]);
    h.fe.ok(req::SET_VRING_BASE, &vring_state(0, 0), &[]);
    h.fe.ok(
        req::SET_VRING_ADDR,
        &vring_addr(0, 0, UVA + DESC_GPA, UVA + USED_GPA, UVA + AVAIL_GPA, 0),
        &[],
    );
    h.fe.ok(req::SET_VRING_CALL, &u64_payload(0), &[call.as_fd()]);
    h.fe.ok(req::SET_VRING_KICK, &u64_payload(0), &[kick.as_fd()]);
    h.fe.ok(req::SET_VRING_ENABLE, &vring_state(0, 1), &[]);
    assert!(
        wait_readable(call.as_fd(), TIMEOUT),
        "the resubmitted request completes without a kick"
    );
    assert_eq!(mem.used_idx(), 1);
    assert_eq!(mem.used_elem(0), (0, 0));
    // Stopping reports avail index 1: head 0 is not taken a second time.
    let m = h.fe.call(req::GET_VRING_BASE, &vring_state(0, 0), &[], 8);
    assert_eq!(m.payload, vring_state(0, 1));
    assert_eq!(mem.used_idx(), 1);
    assert_eq!(h.status().queues[0].completed, 1);
    let d0 = read_area(&area, 16, 16);
    assert_eq!(d0[0], 0, "no longer in flight");
}
