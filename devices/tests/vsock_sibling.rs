//! Sibling guests: two vsock devices linked by a SOCK_SEQPACKET socketpair, each guest
//! reaching the other's listener by CID; and a hostile sibling (a raw link end held by the
//! test) whose packets are checked, whose full link stalls only the sender, and whose loss
//! resets the flows that crossed it.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use common::vsock::{no_packet, pattern, Guest, Stream};
use vu_devices::vsock::broker::{broker_pair, link_pair, BrokerServer};
use vu_devices::vsock::packet::{op, ty, Header, HEADER_LEN};
use vu_devices::vsock::{VsockConfig, VsockDevice};

fn device(cid: u64) -> std::sync::Arc<VsockDevice> {
    VsockDevice::new(VsockConfig::new(cid)).expect("device")
}

#[test]
fn two_guests_talk_through_their_devices() {
    let (a_end, b_end) = link_pair().expect("link");
    let dev_a = device(3);
    // Device B gets its link through the broker, as the supervisor hands it over.
    let (b_broker, parent) = broker_pair().expect("broker");
    let mut cfg_b = VsockConfig::new(4);
    cfg_b.broker = Some(b_broker);
    let dev_b = VsockDevice::new(cfg_b).expect("device");
    dev_a.add_sibling(4, a_end).expect("link A");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = BrokerServer::new(parent, dir.path().join("b.sock")).expect("broker");
    server
        .link_sender()
        .send_sibling_link(3, b_end.as_fd())
        .expect("link B");
    drop(b_end);
    let broker = std::thread::spawn(move || server.run().expect("broker"));

    let data = pattern(200 * 1024 + 9, 11);
    let n = data.len();
    // Guest B: a listener on port 500 that echoes reversed.
    let b = std::thread::spawn(move || {
        let mut g = Guest::new(dev_b, 3);
        let req = g.recv();
        assert_eq!(
            (req.h.op, req.h.src_cid, req.h.dst_cid),
            (op::REQUEST, 3, 4)
        );
        assert_eq!((req.h.src_port, req.h.dst_port), (1500, 500));
        let mut st = Stream::new(500, 3, 1500, 64 * 1024);
        st.absorb(&req.h);
        let h = st.header(&g, op::RESPONSE);
        g.send1(h, &[]);
        let mut got = st.read_exact(&mut g, n, no_packet);
        got.reverse();
        st.write_all(&mut g, &got, |st, p| {
            if p.h.op == op::CREDIT_REQUEST {
                st.absorb(&p.h);
            } else {
                no_packet(p)
            }
        });
        g
    });

    let mut g = Guest::new(dev_a, 3);
    let mut st = Stream::new(1500, 4, 500, 64 * 1024);
    let h = st.header(&g, op::REQUEST);
    g.send1(h, &[]);
    let p = g.recv_for(1500, 500);
    assert_eq!((p.h.op, p.h.src_cid), (op::RESPONSE, 4));
    st.absorb(&p.h);
    st.write_all(&mut g, &data, |_, p| no_packet(p));
    let mut back = st.read_exact(&mut g, n, no_packet);
    back.reverse();
    assert!(back == data, "the data made the round trip intact");
    let gb = b.join().expect("guest B");
    let (sa, sb) = (g.dev.stats(), gb.dev.stats());
    assert!(sa.sibling_packets_out > 0 && sa.sibling_packets_in > 0);
    assert_eq!(sa.sibling_packets_out, sb.sibling_packets_in);
    assert_eq!(sb.sibling_packets_out, sa.sibling_packets_in);
    assert_eq!((sa.sibling_rejected, sb.sibling_rejected), (0, 0));
    drop(gb);
    broker.join().expect("broker ends with device B");
}

/// Device A (CID 3) linked to a sibling CID 5 whose end the test holds.
fn hostile() -> (Guest, OwnedFd) {
    let (a_end, raw) = link_pair().expect("link");
    let dev = device(3);
    dev.add_sibling(5, a_end).expect("link");
    (Guest::new(dev, 2), raw)
}

fn raw_send(fd: &OwnedFd, h: &Header, payload: &[u8]) {
    let mut msg = h.encode().to_vec();
    msg.extend_from_slice(payload);
    let n = nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        &msg,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send on the link");
    assert_eq!(n, msg.len());
}

fn raw_recv(fd: &OwnedFd) -> (Header, Vec<u8>) {
    let mut buf = vec![0u8; HEADER_LEN + 70_000];
    let mut pfd = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut pfd, 10_000u16).expect("poll");
    assert_eq!(ready, 1, "a packet on the link within 10 s");
    let n = nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("recv");
    let h = Header::decode(&buf[..n]).expect("header");
    (h, buf[HEADER_LEN..n].to_vec())
}

fn sib(src_cid: u64, dst_cid: u64, src_port: u32, dst_port: u32, o: u16) -> Header {
    Header {
        src_cid,
        dst_cid,
        src_port,
        dst_port,
        ty: ty::STREAM,
        op: o,
        buf_alloc: 65536,
        ..Header::default()
    }
}

#[test]
fn packets_from_a_sibling_are_checked() {
    let (mut g, raw) = hostile();
    // Wrong source, wrong destination, length that lies, unknown op and type.
    raw_send(&raw, &sib(6, 3, 1, 2, op::REQUEST), &[]);
    raw_send(&raw, &sib(5, 4, 1, 2, op::REQUEST), &[]);
    raw_send(&raw, &sib(5, 2, 1, 2, op::REQUEST), &[]);
    let mut h = sib(5, 3, 1, 2, op::RW);
    h.len = 10;
    raw_send(&raw, &h, &[0; 9]);
    raw_send(&raw, &sib(5, 3, 1, 2, 9), &[]);
    let mut h = sib(5, 3, 1, 2, op::REQUEST);
    h.ty = 3;
    raw_send(&raw, &h, &[]);
    raw_send(&raw, &sib(5, 3, 1, 2, op::REQUEST), &[1]);
    // Too short for a header, and one too long for any packet.
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&raw),
        &[0u8; 20],
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send");
    let mut big = sib(5, 3, 1, 2, op::RW);
    big.len = 65 * 1024;
    raw_send(&raw, &big, &vec![0; 65 * 1024]);
    // A good one gets through.
    raw_send(&raw, &sib(5, 3, 77, 600, op::REQUEST), &[]);
    let p = g.recv();
    assert_eq!(
        (p.h.op, p.h.src_cid, p.h.src_port, p.h.dst_port),
        (op::REQUEST, 5, 77, 600)
    );
    assert_eq!(g.dev.stats().sibling_rejected, 9);
    assert!(g.inbox.is_empty());
}

#[test]
fn the_guest_cannot_speak_for_another_cid_through_a_link() {
    let (mut g, raw) = hostile();
    let mut h = g.header(5, 1, 2, op::REQUEST);
    h.src_cid = 4;
    g.send1(h, &[]);
    let h = g.header(5, 9, 10, op::REQUEST);
    g.send1(h, &[]);
    let (got, _) = raw_recv(&raw);
    assert_eq!(
        (got.src_cid, got.src_port),
        (3, 9),
        "only the honest packet crossed"
    );
    assert_eq!(g.dev.stats().dropped_spoofed, 1);
}

#[test]
fn a_full_link_stalls_the_sender_and_nothing_is_lost() {
    let (mut g, raw) = hostile();
    let h = g.header(5, 100, 200, op::REQUEST);
    g.send1(h, &[]);
    let _ = raw_recv(&raw);
    // 4 MiB of RW packets while the sibling reads nothing.
    let total = 256;
    let pkts: Vec<(Vec<u8>, Vec<u8>)> = (0..total)
        .map(|i| {
            let mut h = g.header(5, 100, 200, op::RW);
            h.len = 16 * 1024;
            (h.encode().to_vec(), pattern(16 * 1024, i))
        })
        .collect();
    g.submit_raw(&pkts[..128]);
    std::thread::sleep(Duration::from_millis(300));
    let done = g.tx_done();
    assert!(done < 128, "the queue stalled ({done} taken)");
    // The sibling drains: everything arrives, in order.
    let reader = std::thread::spawn(move || {
        for i in 0..total {
            let (h, data) = raw_recv(&raw);
            assert_eq!((h.op, h.len), (op::RW, 16 * 1024));
            assert!(data == pattern(16 * 1024, i), "packet {i}");
        }
        raw
    });
    g.wait_tx();
    g.submit_raw(&pkts[128..]);
    g.wait_tx();
    let _raw = reader.join().expect("reader");
    assert_eq!(g.dev.stats().sibling_packets_out, 1 + total as u64);
}

#[test]
fn losing_or_replacing_a_link_resets_its_flows() {
    let (mut g, raw) = hostile();
    // Two flows: one the guest opened, one the sibling opened.
    let h = g.header(5, 100, 200, op::REQUEST);
    g.send1(h, &[]);
    let _ = raw_recv(&raw);
    raw_send(&raw, &sib(5, 3, 300, 400, op::REQUEST), &[]);
    assert_eq!(g.recv().h.op, op::REQUEST);
    // A flow reset before the link went: not reset again.
    let h = g.header(5, 101, 201, op::REQUEST);
    g.send1(h, &[]);
    let _ = raw_recv(&raw);
    let h = g.header(5, 101, 201, op::RST);
    g.send1(h, &[]);
    let _ = raw_recv(&raw);
    drop(raw);
    let mut resets = Vec::new();
    for _ in 0..2 {
        let p = g.recv();
        assert_eq!((p.h.op, p.h.src_cid), (op::RST, 5));
        resets.push((p.h.dst_port, p.h.src_port));
    }
    resets.sort_unstable();
    assert_eq!(resets, vec![(100, 200), (400, 300)]);
    assert!(g.recv_where(Duration::from_millis(200), |_| true).is_none());
    // With the link gone, CID 5 is unknown.
    let h = g.header(5, 102, 202, op::REQUEST);
    g.send1(h, &[]);
    assert_eq!(g.recv_for(102, 202).h.op, op::RST);

    // A new link for CID 5 works; replacing it resets the flows of the old one.
    let (a_end, raw2) = link_pair().expect("link");
    g.dev.add_sibling(5, a_end).expect("link");
    let h = g.header(5, 103, 203, op::REQUEST);
    g.send1(h, &[]);
    let _ = raw_recv(&raw2);
    let (a_end, raw3) = link_pair().expect("link");
    g.dev.add_sibling(5, a_end).expect("link");
    assert_eq!(g.recv_for(103, 203).h.op, op::RST);
    let h = g.header(5, 104, 204, op::REQUEST);
    g.send1(h, &[]);
    assert_eq!(raw_recv(&raw3).0.src_port, 104);
    drop(raw2);
}

#[test]
fn links_to_reserved_or_own_cids_are_refused() {
    let dev = device(3);
    for cid in [0, 1, 2, 3, u64::from(u32::MAX), 1 << 33] {
        let (a, _b) = link_pair().expect("link");
        assert!(dev.add_sibling(cid, a).is_err(), "cid {cid}");
    }
}

#[test]
fn seqpacket_messages_keep_their_boundary_when_split() {
    let (mut g, raw) = hostile();
    let mut h = sib(5, 3, 300, 400, op::RW);
    h.ty = ty::SEQPACKET;
    h.len = 10_000;
    h.flags = 1; // VIRTIO_VSOCK_SEQ_EOM
    let msg = pattern(10_000, 9);
    raw_send(&raw, &h, &msg);
    let mut got = Vec::new();
    let mut flags = Vec::new();
    while got.len() < msg.len() {
        let p = g.recv();
        assert_eq!((p.h.op, p.h.ty), (op::RW, ty::SEQPACKET));
        got.extend_from_slice(&p.data);
        flags.push(p.h.flags);
    }
    assert!(got == msg);
    assert_eq!(
        flags,
        vec![0, 0, 1],
        "the boundary travels on the last piece"
    );
    // The guest's seqpacket packets cross too.
    let mut h = g.header(5, 400, 300, op::RW);
    h.ty = ty::SEQPACKET;
    h.len = 3;
    h.flags = 1;
    g.send1(h, b"abc");
    let (got, data) = raw_recv(&raw);
    assert_eq!(
        (got.ty, got.flags, &data[..]),
        (ty::SEQPACKET, 1, &b"abc"[..])
    );
}
