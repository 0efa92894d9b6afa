//! Several data packets in one kick, as a Linux guest sends a large write: the device sends
//! consecutive packets of one stream to the host together (`tx_run.rs`). What the host reads
//! must be exactly what the guest sent, in order: with other streams' packets and a
//! shutdown between them, and when the host stream takes only part of a run.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::vsock::{host_read, pattern, Guest, Hybrid, Stream};
use vu_devices::vsock::packet::{op, Header, SHUTDOWN_SEND};

/// An RW header of `st` for `len` bytes (counted as sent).
fn rw(st: &mut Stream, g: &Guest, len: usize) -> Header {
    let mut h = st.header(g, op::RW);
    h.len = len as u32;
    st.tx_cnt = st.tx_cnt.wrapping_add(len as u32);
    h
}

#[test]
fn packets_of_one_kick_reach_each_host_stream_in_order() {
    let mut s = Hybrid::start();
    let (mut a, mut sa) = s.connect(1000);
    let (mut b, mut sb) = s.connect(1001);
    let da = pattern(3 * 8192, 1);
    let db = pattern(2 * 4096, 2);
    let mut shut = sa.header(&s.g, op::SHUTDOWN);
    shut.flags = SHUTDOWN_SEND;
    let pkts = [
        (rw(&mut sa, &s.g, 8192), &da[..8192]),
        (rw(&mut sa, &s.g, 8192), &da[8192..16384]),
        (rw(&mut sb, &s.g, 4096), &db[..4096]),
        (rw(&mut sa, &s.g, 8192), &da[16384..]),
        (rw(&mut sb, &s.g, 4096), &db[4096..]),
        (shut, &[][..]),
    ];
    s.g.send(&pkts);

    assert_eq!(host_read(&mut a, da.len()), da);
    assert_eq!(host_read(&mut b, db.len()), db);
    // The shutdown came after A's data: the host reads end of file after all of it.
    a.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(a.read(&mut byte).expect("end of file"), 0);
    assert_eq!(
        s.g.dev.stats().bytes_from_guest,
        (da.len() + db.len()) as u64
    );
}

#[test]
fn a_run_the_host_takes_in_part_is_buffered_and_arrives_whole() {
    let mut s = Hybrid::start();
    let (mut host, mut st) = s.connect(2000);
    // More than the host socket holds plus the device's 64 KiB buffer: the host reads
    // nothing for a while, so that runs meet a full stream and wait in the buffer.
    let data = pattern(2 * 1024 * 1024 + 123, 3);
    let n = data.len();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        host_read(&mut host, n)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut off = 0;
    let mut stalls = 0;
    while off < data.len() {
        let mut pkts = Vec::new();
        let mut free = st.peer_free() as usize;
        while off < data.len() && pkts.len() < 16 {
            let len = (data.len() - off).min(8192);
            if len > free {
                break;
            }
            pkts.push((rw(&mut st, &s.g, len), &data[off..off + len]));
            off += len;
            free -= len;
        }
        if pkts.is_empty() {
            // No credit: wait for the device's update (the host reads later).
            let me = st.clone();
            match s.g.recv_where(Duration::from_millis(50), |p| me.owns(p)) {
                Some(p) => {
                    assert_eq!(p.h.op, op::CREDIT_UPDATE, "{:?}", p.h);
                    st.absorb(&p.h);
                }
                None => stalls += 1,
            }
            assert!(Instant::now() < deadline, "no credit within 30 s");
            continue;
        }
        s.g.send(&pkts);
    }
    assert_eq!(reader.join().expect("reader"), data);
    assert!(stalls > 0, "the sender never waited for the host reader");
    let stats = s.g.dev.stats();
    assert_eq!(stats.bytes_from_guest, data.len() as u64);
    assert_eq!(stats.credit_overruns, 0);
}
