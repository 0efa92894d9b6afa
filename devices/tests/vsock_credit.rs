//! Credit-based flow control both ways: a host program that stops reading stalls the guest's
//! sender (nothing lost, it resumes), a guest that sends past its credit is reset, and a
//! guest that stops granting credit stalls the host's writer.

mod common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::vsock::{host_read, host_write, pattern, Guest, Hybrid, Stream};
use tempfile::TempDir;
use vu_devices::vsock::packet::op;

fn setup(tx_buffer_size: u32) -> (Guest, UnixStream, Stream, TempDir) {
    let mut s = Hybrid::start_with(|cfg| cfg.tx_buffer_size = tx_buffer_size);
    let (host, st) = s.connect(77);
    (s.g, host, st, s.dir)
}

/// Sends from `data[*off..]` while the device grants credit; returns when it has sent
/// everything or no credit came for `quiet`.
fn send_while_credit(
    g: &mut Guest,
    st: &mut Stream,
    data: &[u8],
    off: &mut usize,
    quiet: Duration,
) {
    while *off < data.len() {
        if st.peer_free() == 0 {
            let me = st.clone();
            match g.recv_where(quiet, |p| me.owns(p)) {
                Some(p) => {
                    assert_eq!(p.h.op, op::CREDIT_UPDATE, "{:?}", p.h);
                    st.absorb(&p.h);
                    continue;
                }
                None => return,
            }
        }
        let n = (st.peer_free() as usize).min(data.len() - *off).min(8192);
        let mut h = st.header(g, op::RW);
        h.len = n as u32;
        g.send1(h, &data[*off..*off + n]);
        st.tx_cnt = st.tx_cnt.wrapping_add(n as u32);
        *off += n;
    }
}

#[test]
fn a_host_that_stops_reading_stalls_the_guest_sender_until_it_reads() {
    let (mut g, host, mut st, _dir) = setup(64 * 1024);
    let data = pattern(4 << 20, 3);
    let mut off = 0;
    send_while_credit(&mut g, &mut st, &data, &mut off, Duration::from_millis(500));
    assert!(off < data.len(), "the guest was stalled");
    // What the guest got out is what the host socket holds plus at most our buffer.
    let stalled_at = off;
    assert_eq!(st.peer_free(), 0);
    assert_eq!(g.dev.stats().credit_overruns, 0);
    let bytes_to_host = g.dev.stats().bytes_from_guest as usize;
    assert!(
        stalled_at - bytes_to_host <= 64 * 1024,
        "buffered {}",
        stalled_at - bytes_to_host
    );

    // The host reads everything: the guest resumes and nothing is lost or reordered.
    let mut r = host.try_clone().expect("clone");
    let n = data.len();
    let reader = std::thread::spawn(move || host_read(&mut r, n));
    let deadline = Instant::now() + Duration::from_secs(30);
    while off < data.len() {
        send_while_credit(&mut g, &mut st, &data, &mut off, Duration::from_millis(100));
        assert!(Instant::now() < deadline, "the guest did not resume");
    }
    assert!(
        reader.join().expect("reader") == data,
        "host received the data intact"
    );
}

#[test]
fn a_guest_that_overruns_its_credit_is_reset() {
    let (mut g, host, mut st, _dir) = setup(16 * 1024);
    // Fill the host socket and our buffer within credit first.
    let data = pattern(8 << 20, 4);
    let mut off = 0;
    send_while_credit(&mut g, &mut st, &data, &mut off, Duration::from_millis(300));
    assert_eq!(st.peer_free(), 0);
    // Then send past it.
    let mut h = st.header(&g, op::RW);
    h.len = 4096;
    g.send1(h, &data[..4096]);
    let p = g.recv_for(77, st.peer_port);
    assert_eq!(p.h.op, op::RST);
    assert_eq!(g.dev.stats().credit_overruns, 1);
    assert_eq!(g.dev.stats().active_connections, 0);
    drop(host);
}

#[test]
fn a_guest_that_grants_no_credit_stalls_the_host_writer() {
    let (mut g, mut host, mut st, _dir) = setup(64 * 1024);
    // The guest grants 8 KiB and then nothing.
    st.buf_alloc = 8192;
    let h = st.header(&g, op::CREDIT_UPDATE);
    g.send1(h, &[]);
    let data = pattern(64 * 1024, 5);
    host_write(&mut host, &data);
    let mut got = Vec::new();
    let mut credit_requests = 0;
    loop {
        let me = st.clone();
        let Some(p) = g.recv_where(Duration::from_millis(300), |p| me.owns(p)) else {
            break;
        };
        match p.h.op {
            op::RW => got.extend_from_slice(&p.data),
            op::CREDIT_REQUEST => credit_requests += 1,
            o => panic!("op {o}"),
        }
    }
    assert_eq!(got.len(), 8192, "no more than the credit");
    assert_eq!(credit_requests, 1, "one credit request, no more");
    // Consuming and telling the device lets the rest through.
    st.fwd_cnt = 8192;
    let h = st.header(&g, op::CREDIT_UPDATE);
    g.send1(h, &[]);
    let rest = st.read_exact(&mut g, data.len() - 8192, |p| {
        assert_eq!(p.h.op, op::CREDIT_REQUEST);
    });
    got.extend_from_slice(&rest);
    assert!(got == data);
}

/// A Linux guest answers every CREDIT_REQUEST with a CREDIT_UPDATE at once, also when its
/// reader has consumed nothing. That answer grants nothing, so the device must not ask again:
/// otherwise the two ping-pong requests and answers for as long as the guest's reader sleeps.
#[test]
fn an_answer_that_grants_nothing_is_not_asked_again() {
    let (mut g, mut host, mut st, _dir) = setup(64 * 1024);
    st.buf_alloc = 8192;
    let h = st.header(&g, op::CREDIT_UPDATE);
    g.send1(h, &[]);
    let data = pattern(64 * 1024, 6);
    host_write(&mut host, &data);
    let mut got = Vec::new();
    let mut credit_requests = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let me = st.clone();
        let Some(p) = g.recv_where(Duration::from_millis(100), |p| me.owns(p)) else {
            continue;
        };
        match p.h.op {
            op::RW => got.extend_from_slice(&p.data),
            op::CREDIT_REQUEST => {
                credit_requests += 1;
                // Answered as Linux does, with nothing consumed.
                let h = st.header(&g, op::CREDIT_UPDATE);
                g.send1(h, &[]);
            }
            o => panic!("op {o}"),
        }
    }
    assert_eq!(got.len(), 8192, "no more than the credit");
    assert_eq!(
        credit_requests, 1,
        "one credit request while nothing changes"
    );
    // Space freed later, told by the guest on its own: the rest flows.
    st.fwd_cnt = 8192;
    st.buf_alloc = 64 * 1024;
    let h = st.header(&g, op::CREDIT_UPDATE);
    g.send1(h, &[]);
    let rest = st.read_exact(&mut g, data.len() - 8192, |p| panic!("{:?}", p.h));
    got.extend_from_slice(&rest);
    assert!(got == data);
}

#[test]
fn credit_requests_are_answered() {
    let (mut g, _host, mut st, _dir) = setup(64 * 1024);
    let h = st.header(&g, op::CREDIT_REQUEST);
    g.send1(h, &[]);
    let p = g.recv_for(77, st.peer_port);
    assert_eq!(
        (p.h.op, p.h.buf_alloc, p.h.fwd_cnt),
        (op::CREDIT_UPDATE, 64 * 1024, 0)
    );
}

#[test]
fn a_small_tx_buffer_still_carries_everything() {
    let (mut g, host, mut st, _dir) = setup(1000);
    let data = pattern(100 * 1024, 6);
    let mut r = host.try_clone().expect("clone");
    let n = data.len();
    let reader = std::thread::spawn(move || host_read(&mut r, n));
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while off < data.len() {
        send_while_credit(&mut g, &mut st, &data, &mut off, Duration::from_millis(100));
        assert!(Instant::now() < deadline, "stalled");
    }
    assert!(reader.join().expect("reader") == data);
    assert_eq!(g.dev.stats().credit_overruns, 0);
}
