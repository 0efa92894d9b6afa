//! Hostile guest packets: spoofed source CIDs, unknown operations and types, lengths that
//! do not fit, packets for connections or CIDs that do not exist, receive buffers too small
//! for a header, and a flood while the guest reads nothing. Each is dropped or answered
//! with RST and counted, and the device keeps serving.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::vsock::{host_line, host_write, Guest, Hybrid, Stream, HOST};
use tempfile::TempDir;
use vu_devices::vsock::packet::{op, ty};

fn setup() -> (Guest, TempDir) {
    let s = Hybrid::start();
    (s.g, s.dir)
}

/// Proves the device still serves: a host program reaches a guest listener.
fn still_serves(g: &mut Guest, dir: &TempDir) {
    let mut host = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    host_write(&mut host, b"CONNECT 1\n");
    let req = g
        .recv_where(Duration::from_secs(10), |p| p.h.op == op::REQUEST)
        .expect("REQUEST");
    let mut st = Stream::new(1, HOST, req.h.src_port, 65536);
    let h = st.header(g, op::RESPONSE);
    g.send1(h, &[]);
    assert_eq!(host_line(&mut host), Some(format!("OK {}", req.h.src_port)));
}

fn quiet(g: &mut Guest) {
    assert!(
        g.recv_where(Duration::from_millis(100), |_| true).is_none(),
        "the device said nothing"
    );
}

#[test]
fn spoofed_source_cids_are_dropped_silently() {
    let (mut g, dir) = setup();
    for src in [4, 2, 0, u64::MAX, (1 << 32) | 3] {
        let mut h = g.header(HOST, 1000, 5, op::REQUEST);
        h.src_cid = src;
        g.send1(h, &[]);
    }
    quiet(&mut g);
    assert_eq!(g.dev.stats().dropped_spoofed, 5);
    still_serves(&mut g, &dir);
}

#[test]
fn unknown_operations_and_types_are_answered_with_rst() {
    let (mut g, dir) = setup();
    for (i, bad_op) in [0u16, 8, 0xffff].into_iter().enumerate() {
        let h = g.header(HOST, 2000 + i as u32, 5, bad_op);
        g.send1(h, &[]);
        let p = g.recv_for(2000 + i as u32, 5);
        assert_eq!(p.h.op, op::RST);
    }
    for (i, bad_ty) in [0u16, 3, 0xffff].into_iter().enumerate() {
        let mut h = g.header(HOST, 3000 + i as u32, 5, op::REQUEST);
        h.ty = bad_ty;
        g.send1(h, &[]);
        let p = g.recv_for(3000 + i as u32, 5);
        assert_eq!((p.h.op, p.h.ty), (op::RST, bad_ty), "RST echoes the type");
    }
    // Seqpacket is for siblings: host programs speak streams.
    let mut h = g.header(HOST, 3100, 5, op::REQUEST);
    h.ty = ty::SEQPACKET;
    g.send1(h, &[]);
    let p = g.recv_for(3100, 5);
    assert_eq!((p.h.op, p.h.ty), (op::RST, ty::SEQPACKET));
    let s = g.dev.stats();
    assert_eq!((s.dropped_bad_op, s.dropped_bad_type), (3, 3));
    assert_eq!(s.connect_failures, 1);
    still_serves(&mut g, &dir);
}

#[test]
fn lengths_that_do_not_fit_are_refused() {
    let (mut g, dir) = setup();
    // A length past the buffer, payload on a control packet, a header cut short.
    let mut h = g.header(HOST, 4000, 5, op::RW);
    h.len = 100;
    g.send1(h, &[0; 50]);
    assert_eq!(g.recv_for(4000, 5).h.op, op::RST);
    let mut h = g.header(HOST, 4001, 5, op::REQUEST);
    h.len = 10;
    g.send1(h, &[0; 10]);
    assert_eq!(g.recv_for(4001, 5).h.op, op::RST);
    let short = g.header(HOST, 4002, 5, op::REQUEST).encode()[..20].to_vec();
    g.submit_raw(&[(short, Vec::new())]);
    g.wait_tx();
    quiet(&mut g);
    assert_eq!(g.dev.stats().dropped_bad_len, 3);

    // On a live connection a bad length resets it.
    let mut host = UnixStream::connect(dir.path().join("v.sock")).expect("connect");
    host_write(&mut host, b"CONNECT 6\n");
    let req = g.recv();
    let mut st = Stream::new(6, HOST, req.h.src_port, 65536);
    let h = st.header(&g, op::RESPONSE);
    g.send1(h, &[]);
    assert!(host_line(&mut host).is_some());
    let mut h = st.header(&g, op::RW);
    h.len = 5000;
    g.send1(h, &[1; 100]);
    assert_eq!(g.recv_for(6, st.peer_port).h.op, op::RST);
    assert_eq!(host_line(&mut host), None);
    still_serves(&mut g, &dir);
}

#[test]
fn packets_without_a_connection_or_a_known_cid_are_answered_with_rst() {
    let (mut g, dir) = setup();
    let h = g.header(HOST, 5000, 5, op::RW);
    let mut h2 = h;
    h2.len = 3;
    g.send1(h2, b"abc");
    assert_eq!(g.recv_for(5000, 5).h.op, op::RST);
    for o in [
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
    ] {
        let h = g.header(HOST, 5001, 5, o);
        g.send1(h, &[]);
        assert_eq!(g.recv_for(5001, 5).h.op, op::RST);
    }
    // An RST for nothing is not answered.
    let h = g.header(HOST, 5002, 5, op::RST);
    g.send1(h, &[]);
    quiet(&mut g);
    assert_eq!(g.dev.stats().unknown_connection, 5);
    // Its own CID, and a CID nobody linked.
    for cid in [3, 99] {
        let h = g.header(cid, 5003, 5, op::REQUEST);
        g.send1(h, &[]);
        let p = g.recv_for(5003, 5);
        assert_eq!((p.h.op, p.h.src_cid), (op::RST, cid));
    }
    assert_eq!(g.dev.stats().unknown_cid, 2);
    still_serves(&mut g, &dir);
}

#[test]
fn receive_buffers_too_small_for_a_header_come_back_empty() {
    let (mut g, dir) = setup();
    // Use up the posted buffers with replies, then post tiny ones.
    g.refill = false;
    let n = common::vsock::RX_POSTED;
    for i in 0..n {
        let h = g.header(HOST, 6000 + i as u32, 5, op::CREDIT_REQUEST);
        g.send1(h, &[]);
    }
    for _ in 0..n {
        assert_eq!(g.recv().h.op, op::RST);
    }
    g.set_rx_payload(0);
    g.post_rx(3);
    let h = g.header(HOST, 7000, 5, op::RW);
    let mut h = h;
    h.len = 1;
    g.send1(h, b"x");
    for _ in 0..3 {
        let p = g.recv();
        assert!(p.data.is_empty() && p.h.op == 0, "returned empty");
    }
    assert_eq!(g.dev.stats().bad_rx_buffers, 3);
    g.set_rx_payload(4096);
    g.refill = true;
    g.post_rx(8);
    assert_eq!(g.recv_for(7000, 5).h.op, op::RST);
    still_serves(&mut g, &dir);
}

#[test]
fn a_flood_while_the_guest_reads_nothing_stays_bounded() {
    let (mut g, dir) = setup();
    g.refill = false;
    // Take every posted buffer out of play first.
    let n = common::vsock::RX_POSTED;
    for i in 0..n {
        let h = g.header(HOST, 8000 + i as u32, 5, op::RW);
        let mut h = h;
        h.len = 1;
        g.send1(h, b"x");
    }
    let mut got = 0;
    while got < n {
        got += g.poll();
    }
    g.inbox.clear();
    // 6000 packets that each deserve an RST, with nowhere to put them.
    for chunk in 0..60u32 {
        let pkts: Vec<_> = (0..100u32)
            .map(|i| {
                let h = g.header(HOST, 10_000 + chunk * 100 + i, 5, op::CREDIT_UPDATE);
                (h.encode().to_vec(), Vec::new())
            })
            .collect();
        g.submit_raw(&pkts);
        g.wait_tx();
    }
    let s = g.dev.stats();
    assert_eq!(s.unknown_connection, 6000 + n as u64);
    assert_eq!(s.reply_queue_full, 6000 - 4096);
    g.refill = true;
    g.post_rx(common::vsock::RX_POSTED);
    let mut rsts = 0;
    while g
        .recv_where(Duration::from_millis(300), |p| p.h.op == op::RST)
        .is_some()
    {
        rsts += 1;
    }
    assert_eq!(rsts, 4096);
    still_serves(&mut g, &dir);
}
