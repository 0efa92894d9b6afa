//! Hybrid vsock, host side in: a host program connects to the `--uds-path` listener, writes
//! `CONNECT <port>\n` and talks to a guest listener, through the core's real handler and
//! queue workers, with a test guest playing the driver.

mod common;

use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::vsock::{host_line, host_read, host_write, no_packet, pattern, Hybrid, Stream, HOST};
use vu_devices::vsock::packet::{op, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// A host program connects for guest port `port`; returns its stream and the guest-side
/// stream once the guest accepted.
fn connect(s: &mut Hybrid, port: u32) -> (UnixStream, Stream) {
    let (host, st, req) = s.connect_with_request(port);
    assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (HOST, 3, port));
    assert!(
        (1 << 30..1 << 31).contains(&req.src_port),
        "host port {}",
        req.src_port
    );
    assert_eq!(req.buf_alloc, 64 * 1024);
    (host, st)
}

#[test]
fn host_program_talks_to_a_guest_listener_both_ways() {
    let mut s = Hybrid::start();
    let (mut host, mut st) = connect(&mut s, 1234);

    // Host to guest: 256 KiB written by a host thread, read by the guest in 4 KiB buffers
    // with the credit a driver gives.
    let down = pattern(256 * 1024 + 17, 1);
    let mut w = host.try_clone().expect("clone");
    let d2 = down.clone();
    let writer = std::thread::spawn(move || host_write(&mut w, &d2));
    let got = st.read_exact(&mut s.g, down.len(), no_packet);
    writer.join().expect("writer");
    assert_eq!(got, down);

    // Guest to host: 256 KiB within the device's credit.
    let up = pattern(256 * 1024 + 5, 2);
    let mut r = host.try_clone().expect("clone");
    let n = up.len();
    let reader = std::thread::spawn(move || host_read(&mut r, n));
    st.write_all(&mut s.g, &up, |_, p| no_packet(p));
    assert_eq!(reader.join().expect("reader"), up);

    // Half close from the host: the guest reads end of file and may still send.
    host.shutdown(Shutdown::Write).expect("shutdown");
    // A credit update for the bytes the host reader took last may come first: the device
    // may send one at any time.
    let peer = st.peer_port;
    let p =
        s.g.recv_where(std::time::Duration::from_secs(10), |p| {
            p.h.dst_port == 1234 && p.h.src_port == peer && p.h.op != op::CREDIT_UPDATE
        })
        .expect("a packet for the stream within 10 s");
    assert_eq!((p.h.op, p.h.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    st.write_all(&mut s.g, b"after half close", |_, p| no_packet(p));
    assert_eq!(host_read(&mut host, 16), b"after half close");

    // The guest closes: the device answers with RST, the host reads end of file.
    let mut h = st.header(&s.g, op::SHUTDOWN);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    s.g.send1(h, &[]);
    // Again a credit update (for "after half close") may come first.
    let p =
        s.g.recv_where(std::time::Duration::from_secs(10), |p| {
            p.h.dst_port == 1234 && p.h.src_port == peer && p.h.op != op::CREDIT_UPDATE
        })
        .expect("a packet for the stream within 10 s");
    assert_eq!(p.h.op, op::RST);
    let mut b = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(host.read(&mut b).expect("eof"), 0);

    let stats = s.g.dev.stats();
    assert_eq!(stats.host_connections, 1);
    assert_eq!(stats.bytes_to_guest, down.len() as u64);
    assert_eq!(stats.bytes_from_guest, (up.len() + 16) as u64);
    assert_eq!(stats.active_connections, 0);
    assert_eq!(stats.resets_sent, 1);
}

#[test]
fn guest_half_close_reaches_the_host_and_data_still_flows_back() {
    let mut s = Hybrid::start();
    let (mut host, mut st) = connect(&mut s, 7);
    st.write_all(&mut s.g, b"request", |_, p| no_packet(p));
    let mut h = st.header(&s.g, op::SHUTDOWN);
    h.flags = SHUTDOWN_SEND;
    s.g.send1(h, &[]);
    assert_eq!(host_read(&mut host, 7), b"request");
    let mut b = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(
        host.read(&mut b).expect("eof after the guest's half close"),
        0
    );
    host_write(&mut host, b"reply");
    drop(host);
    let got = st.read_exact(&mut s.g, 5, no_packet);
    assert_eq!(got, b"reply");
    // Closed altogether, not half closed: it will not receive either.
    let p = s.g.recv_for(7, st.peer_port);
    assert_eq!(
        (p.h.op, p.h.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
}

#[test]
fn data_sent_with_the_connect_line_waits_for_the_guest() {
    let mut s = Hybrid::start();
    let mut host = UnixStream::connect(&s.path).expect("connect");
    host_write(&mut host, b"connect 99\nearly bytes");
    let req = s.g.recv();
    assert_eq!((req.h.op, req.h.dst_port), (op::REQUEST, 99));
    let mut st = Stream::new(99, HOST, req.h.src_port, 64 * 1024);
    st.absorb(&req.h);
    let h = st.header(&s.g, op::RESPONSE);
    s.g.send1(h, &[]);
    assert_eq!(
        host_line(&mut host).expect("OK"),
        format!("OK {}", req.h.src_port)
    );
    assert_eq!(st.read_exact(&mut s.g, 11, no_packet), b"early bytes");
}

#[test]
fn nothing_listening_in_the_guest_closes_the_host_stream() {
    let mut s = Hybrid::start();
    let mut host = UnixStream::connect(&s.path).expect("connect");
    host_write(&mut host, b"CONNECT 4000\n");
    let req = s.g.recv();
    assert_eq!(req.h.op, op::REQUEST);
    let rst = req.h.rst_reply();
    s.g.send1(rst, &[]);
    assert_eq!(host_line(&mut host), None, "closed without OK");
    assert_eq!(s.g.dev.stats().handshake_failures, 1);
    // The device still serves.
    let (_host, _st) = connect(&mut s, 4001);
}

#[test]
fn malformed_connect_lines_close_the_stream() {
    let mut s = Hybrid::start();
    for bad in [
        &b"HELLO 5\n"[..],
        b"CONNECT\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 5 6\n",
        b"CONNECT 0123456789012345678901234567890123456789",
    ] {
        let mut host = UnixStream::connect(&s.path).expect("connect");
        host_write(&mut host, bad);
        assert_eq!(
            host_line(&mut host),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(s.g.dev.stats().handshake_failures, 5);
    assert!(
        s.g.inbox.is_empty() && s.g.poll() == 0,
        "the guest heard nothing"
    );
    let (_host, _st) = connect(&mut s, 5);
}

#[test]
fn silent_host_programs_and_unanswered_requests_time_out() {
    let mut s = Hybrid::start();
    let mut silent = UnixStream::connect(&s.path).expect("connect");
    let mut partial = UnixStream::connect(&s.path).expect("connect");
    host_write(&mut partial, b"CONN");
    // A guest that never answers its REQUEST.
    let mut ignored = UnixStream::connect(&s.path).expect("connect");
    host_write(&mut ignored, b"CONNECT 80\n");
    let req = s.g.recv();
    assert_eq!(req.h.op, op::REQUEST);
    let start = Instant::now();
    assert_eq!(host_line(&mut ignored), None);
    let p = s.g.recv_for(80, req.h.src_port);
    assert_eq!(p.h.op, op::RST);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(host_line(&mut silent), None);
    assert_eq!(host_line(&mut partial), None);
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(s.g.dev.stats().handshake_failures, 3);
    assert_eq!(s.g.dev.stats().active_connections, 0);
}
