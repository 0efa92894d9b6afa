//! Dirty logging for live migration: SET_LOG_BASE, SET_LOG_FD, and the log bits set by I/O
//! through a vring once VHOST_F_LOG_ALL is negotiated.

mod common;

use std::os::fd::AsFd;

use common::*;
use vu_core::ConnectionEnd;

const LOG_SIZE: u64 = 4096;
/// Log address given with VRING_F_LOG (a page nothing else uses).
const LOG_ADDR_GPA: u64 = 0xc000;

#[test]
fn set_log_base_reply_is_exact() {
    let h = Harness::new();
    h.negotiate_all();
    let log = memfd(LOG_SIZE);
    let m = h.fe.call(
        req::SET_LOG_BASE,
        &log_description(LOG_SIZE, 0),
        &[log.as_fd()],
        16,
    );
    // The reply echoes the log description (what rust-vmm front-ends wait for).
    assert_eq!(m.payload, log_description(LOG_SIZE, 0));
    assert!(m.fds.is_empty());
    h.fe.sync();
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}

/// SET_LOG_BASE has an explicit reply that cannot carry an error: the connection closes.
fn set_log_base_closes(protocol: u64, payload: &[u8], nfds: usize, file_len: u64) {
    let h = Harness::new();
    h.negotiate(feat::VERSION_1 | feat::PROTOCOL_FEATURES, protocol);
    let log = memfd(file_len);
    let fds: Vec<_> = (0..nfds).map(|_| log.as_fd()).collect();
    h.fe.send(req::SET_LOG_BASE, payload, &fds);
    h.expect_protocol_error();
}

#[test]
fn set_log_base_malformed_closes_the_connection() {
    let all = proto::OFFERED;
    let good = log_description(LOG_SIZE, 0);
    set_log_base_closes(all, &good, 0, LOG_SIZE);
    set_log_base_closes(all, &good, 2, LOG_SIZE);
    set_log_base_closes(all, &good[..8], 1, LOG_SIZE);
    set_log_base_closes(all, &log_description(2 * LOG_SIZE, 0), 1, LOG_SIZE);
    set_log_base_closes(all, &log_description(0, 0), 1, LOG_SIZE);
    set_log_base_closes(all, &log_description(16, 8), 1, LOG_SIZE);
    set_log_base_closes(all, &log_description(16, u64::MAX - 4095), 1, LOG_SIZE);
    set_log_base_closes(all & !proto::LOG_SHMFD, &good, 1, LOG_SIZE);
}

#[test]
fn set_log_fd_acks_and_malformed_is_refused() {
    let h = Harness::new();
    h.negotiate_all();
    let e = eventfd();
    let e2 = eventfd();
    h.fe.ok(req::SET_LOG_FD, &[], &[e.as_fd()]);
    h.fe.refused(req::SET_LOG_FD, &[], &[]);
    h.fe.refused(req::SET_LOG_FD, &[], &[e.as_fd(), e2.as_fd()]);
    h.fe.refused(req::SET_LOG_FD, &u64_payload(0), &[e.as_fd()]);
    h.fe.sync();
}

fn page(gpa: u64) -> u64 {
    gpa / 4096
}

/// Pages no device write may touch: descriptor table, available ring, readable buffer.
fn assert_clean_pages(log: &std::fs::File) {
    for gpa in [DESC_GPA, AVAIL_GPA, READ_BUF_GPA] {
        assert!(
            !log_bit(log, page(gpa)),
            "page {:#x} was never written but is logged",
            gpa
        );
    }
}

#[test]
fn log_all_marks_the_used_ring_and_written_buffer_pages() {
    let h = Harness::with_device(TestDevice::with_pattern(b"dirty"));
    h.negotiate_all();
    let ring = Ring::start(&h, 0, 0, 0);
    let log = memfd(LOG_SIZE);
    let m = h.fe.call(
        req::SET_LOG_BASE,
        &log_description(LOG_SIZE, 0),
        &[log.as_fd()],
        16,
    );
    // The reply echoes the log description (what rust-vmm front-ends wait for).
    assert_eq!(m.payload, log_description(LOG_SIZE, 0));

    // Without LOG_ALL nothing is logged.
    ring.offer_request(0);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 1);
    let mut bytes = vec![0u8; LOG_SIZE as usize];
    std::os::unix::fs::FileExt::read_exact_at(&log, &mut bytes, 0).expect("read log");
    assert!(bytes.iter().all(|&b| b == 0), "logged without LOG_ALL");

    // Migration starts: LOG_ALL on a running ring.
    h.fe.ok(
        req::SET_FEATURES,
        &u64_payload(feat::VERSION_1 | feat::PROTOCOL_FEATURES | feat::LOG_ALL),
        &[],
    );
    ring.mem.write(WRITE_BUF_GPA, &[0u8; 8]);
    ring.offer_request(1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 2);
    assert_eq!(ring.mem.used_elem(1), (0, 5));
    assert_eq!(ring.mem.read(WRITE_BUF_GPA, 5), b"dirty");
    assert!(log_bit(&log, page(USED_GPA)), "used ring page logged");
    assert!(
        log_bit(&log, page(WRITE_BUF_GPA)),
        "written buffer page logged"
    );
    assert_clean_pages(&log);
}

#[test]
fn vring_log_flag_marks_the_used_ring_at_the_log_address() {
    let h = Harness::new();
    h.negotiate_all();
    let ring = Ring::start(&h, 0, 0, 0);
    let log = memfd(LOG_SIZE);
    let m = h.fe.call(
        req::SET_LOG_BASE,
        &log_description(LOG_SIZE, 0),
        &[log.as_fd()],
        16,
    );
    // The reply echoes the log description (what rust-vmm front-ends wait for).
    assert_eq!(m.payload, log_description(LOG_SIZE, 0));
    h.fe.ok(
        req::SET_FEATURES,
        &u64_payload(feat::VERSION_1 | feat::PROTOCOL_FEATURES | feat::LOG_ALL),
        &[],
    );
    // As QEMU does at migration start: same ring addresses, VRING_F_LOG set. QEMU gives the
    // used ring's guest physical address as the log address; here it points at a page of
    // its own so the VRING_F_LOG path is seen apart from the vm-memory bitmap path.
    h.fe.ok(
        req::SET_VRING_ADDR,
        &vring_addr(
            0,
            1,
            UVA + DESC_GPA,
            UVA + USED_GPA,
            UVA + AVAIL_GPA,
            LOG_ADDR_GPA,
        ),
        &[],
    );
    assert!(h.status().queues[0].started, "the ring kept running");
    ring.offer_request(0);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_elem(0), (0, 0));
    assert!(log_bit(&log, page(USED_GPA)), "used ring page logged");
    assert!(
        log_bit(&log, page(LOG_ADDR_GPA)),
        "VRING_F_LOG: the used ring is logged at the log address"
    );
    // Completed with length 0, but the buffer was offered as device-writable: the core
    // logs it conservatively.
    assert!(
        log_bit(&log, page(WRITE_BUF_GPA)),
        "writable buffer page logged"
    );
    assert_clean_pages(&log);
    // Dropping LOG_ALL stops logging: clear the log, run another request.
    h.fe.ok(
        req::SET_FEATURES,
        &u64_payload(feat::VERSION_1 | feat::PROTOCOL_FEATURES),
        &[],
    );
    std::os::unix::fs::FileExt::write_all_at(&log, &vec![0u8; LOG_SIZE as usize], 0)
        .expect("clear log");
    ring.offer_request(1);
    ring.kick_and_wait();
    assert_eq!(ring.mem.used_idx(), 2);
    assert!(!log_bit(&log, page(USED_GPA)), "logging stopped");
    assert!(!log_bit(&log, page(LOG_ADDR_GPA)), "logging stopped");
    assert_eq!(h.close(), ConnectionEnd::PeerClosed);
}
