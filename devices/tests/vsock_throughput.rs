//! Rough throughput of the device through the test guest (ignored by default; run with
//! `cargo test --release -p vu-devices --test vsock_throughput -- --ignored --nocapture`).
//! The test guest's own polling costs a share of the time, so these are lower bounds;
//! vu-bench measures the device properly.

mod common;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::vsock::{host_write, pattern, Guest, Hybrid, Stream};
use vu_devices::vsock::packet::op;

const TOTAL: usize = 64 << 20;

fn setup() -> (Guest, UnixStream, Stream, tempfile::TempDir) {
    let mut s = Hybrid::start_with(|cfg| cfg.tx_buffer_size = 256 * 1024);
    let (host, st) = s.connect(5);
    (s.g, host, st, s.dir)
}

#[test]
#[ignore]
fn guest_to_host() {
    let (mut g, host, mut st, _dir) = setup();
    let mut r = host.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < TOTAL {
            n += std::io::Read::read(&mut r, &mut buf).expect("read");
        }
    });
    let chunk = pattern(64 * 1024, 1);
    let t0 = Instant::now();
    let mut sent = 0usize;
    while sent < TOTAL {
        let mut free = st.peer_free() as usize;
        if free == 0 {
            let me = st.clone();
            if let Some(p) = g.recv_where(Duration::from_millis(1), |p| me.owns(p)) {
                st.absorb(&p.h);
            }
            continue;
        }
        let mut batch = Vec::new();
        while free > 0 && sent < TOTAL && batch.len() < 64 {
            let n = free.min(chunk.len()).min(TOTAL - sent);
            let mut h = st.header(&g, op::RW);
            h.len = n as u32;
            batch.push((h.encode().to_vec(), chunk[..n].to_vec()));
            st.tx_cnt = st.tx_cnt.wrapping_add(n as u32);
            free -= n;
            sent += n;
        }
        g.submit_raw(&batch);
        g.wait_tx();
    }
    reader.join().expect("reader");
    let s = t0.elapsed().as_secs_f64();
    println!(
        "guest to host: {:.0} MiB/s",
        TOTAL as f64 / s / f64::from(1 << 20)
    );
}

#[test]
#[ignore]
fn host_to_guest() {
    let (mut g, host, mut st, _dir) = setup();
    let mut w = host.try_clone().expect("clone");
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = pattern(1 << 20, 2);
        for _ in 0..TOTAL >> 20 {
            host_write(&mut w, &chunk);
        }
    });
    let mut got = 0usize;
    while got < TOTAL {
        if g.poll() == 0 {
            std::thread::yield_now();
        }
        while let Some(p) = g.inbox.pop_front() {
            if p.h.op == op::RW {
                got += p.data.len();
                st.fwd_cnt = st.fwd_cnt.wrapping_add(p.data.len() as u32);
            }
        }
        if st.fwd_cnt.wrapping_sub(st.fwd_told) >= st.buf_alloc / 2 {
            let h = st.header(&g, op::CREDIT_UPDATE);
            g.send1(h, &[]);
        }
    }
    writer.join().expect("writer");
    let s = t0.elapsed().as_secs_f64();
    println!(
        "host to guest: {:.0} MiB/s",
        TOTAL as f64 / s / f64::from(1 << 20)
    );
}
