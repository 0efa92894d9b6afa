//! Nothing spins: with host data waiting and the guest posting no receive buffers (or
//! granting no credit), the device's queue thread sleeps. One test per binary, so the
//! threads measured are this device's.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::stat_ticks;
use common::vsock::{host_line, host_write, pattern, Hybrid, Stream, HOST, RX_POSTED};
use vu_devices::vsock::packet::op;

/// CPU ticks (user + system) used so far by the thread named `name` (there is one).
fn ticks(name: &str) -> u64 {
    let mut total = 0;
    let mut found = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        total += stat_ticks(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default());
        found += 1;
    }
    assert_eq!(found, 1, "one thread named {name}");
    total
}

fn idle_for_a_second() {
    // The device's queues share one worker thread (`worker_group`).
    let before = ticks("vsock-g0");
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks("vsock-g0") - before;
    assert!(
        used <= 10,
        "the queue thread used {used} ticks in a second while idle"
    );
}

#[test]
fn no_spinning_without_receive_buffers_or_credit() {
    let Hybrid {
        mut g,
        path,
        dir: _dir,
    } = Hybrid::start();
    let mut host = UnixStream::connect(&path).expect("connect");
    host_write(&mut host, b"CONNECT 5\n");
    let req = g.recv();
    let mut st = Stream::new(5, HOST, req.h.src_port, 1 << 30);
    st.absorb(&req.h);
    let h = st.header(&g, op::RESPONSE);
    g.send1(h, &[]);
    host_line(&mut host).expect("OK");

    // Use up every receive buffer, then leave data waiting in the host socket.
    g.refill = false;
    let data = pattern(RX_POSTED * 4096 + 100_000, 1);
    let mut w = host.try_clone().expect("clone");
    let d2 = data.clone();
    let writer = std::thread::spawn(move || host_write(&mut w, &d2));
    let mut got = 0;
    while got < RX_POSTED {
        got += g.poll();
    }
    idle_for_a_second();

    // Buffers again: the data flows, all of it.
    g.refill = true;
    g.post_rx(RX_POSTED);
    let mut received: Vec<u8> = g.inbox.drain(..).flat_map(|p| p.data).collect();
    st.fwd_cnt = received.len() as u32;
    received.extend(st.read_exact(&mut g, data.len() - received.len(), |p| panic!("{:?}", p.h)));
    writer.join().expect("writer");
    assert!(received == data);

    // No credit: the device asks once, then waits without spinning.
    st.buf_alloc = 0;
    let h = st.header(&g, op::CREDIT_UPDATE);
    g.send1(h, &[]);
    host_write(&mut host, &pattern(100_000, 2));
    let p = g.recv();
    assert_eq!(p.h.op, op::CREDIT_REQUEST);
    idle_for_a_second();
    assert!(g.recv_where(Duration::from_millis(10), |_| true).is_none());
}
