//! Hundreds of concurrent connections, both directions of set-up: host programs through the
//! listener and guest connections through the broker, each carrying its own data both ways.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::vsock::{host_line, host_read, host_write, pattern, Guest, Hybrid, Stream, HOST};
use vu_devices::vsock::broker::{broker_pair, BrokerServer};
use vu_devices::vsock::packet::op;
use vu_devices::vsock::{VsockConfig, VsockDevice};

const N: u32 = 300;
const LEN: usize = 3000;

/// Receives until every stream in `streams` has `LEN` bytes; returns them by guest port.
fn collect(g: &mut Guest, streams: &mut HashMap<u32, Stream>) -> HashMap<u32, Vec<u8>> {
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut done = 0;
    while done < streams.len() {
        let p = g
            .recv_where(Duration::from_secs(20), |_| true)
            .expect("data within 20 s");
        let st = streams.get_mut(&p.h.dst_port).expect("known stream");
        st.absorb(&p.h);
        match p.h.op {
            op::RW => {
                let v = got.entry(p.h.dst_port).or_default();
                v.extend_from_slice(&p.data);
                st.fwd_cnt = st.fwd_cnt.wrapping_add(p.data.len() as u32);
                if v.len() == LEN {
                    done += 1;
                }
            }
            op::CREDIT_UPDATE => {}
            o => panic!("op {o}"),
        }
    }
    got
}

#[test]
fn hundreds_of_host_programs_at_once() {
    let Hybrid {
        mut g,
        path,
        dir: _dir,
    } = Hybrid::start();

    let mut hosts: Vec<UnixStream> = (0..N)
        .map(|i| {
            let mut s = UnixStream::connect(&path).expect("connect");
            host_write(&mut s, format!("CONNECT {}\n", 10_000 + i).as_bytes());
            s
        })
        .collect();
    let mut streams = HashMap::new();
    while streams.len() < N as usize {
        let req = g.recv();
        assert_eq!(req.h.op, op::REQUEST);
        let mut st = Stream::new(req.h.dst_port, HOST, req.h.src_port, 64 * 1024);
        st.absorb(&req.h);
        let h = st.header(&g, op::RESPONSE);
        g.send1(h, &[]);
        streams.insert(req.h.dst_port, st);
    }
    for (i, h) in hosts.iter_mut().enumerate() {
        let ok = host_line(h).expect("OK");
        assert!(ok.starts_with("OK "), "{i}: {ok}");
        host_write(h, &pattern(LEN, i as u32));
    }
    assert_eq!(g.dev.stats().active_connections, u64::from(N));
    let got = collect(&mut g, &mut streams);
    for i in 0..N {
        assert!(got[&(10_000 + i)] == pattern(LEN, i), "stream {i}");
    }
    // And back: each guest stream answers on its connection.
    for i in 0..N {
        let st = streams.get_mut(&(10_000 + i)).expect("stream");
        st.write_all(&mut g, &pattern(LEN, i + 1000), |_, p| panic!("{:?}", p.h));
    }
    for (i, h) in hosts.iter_mut().enumerate() {
        assert!(
            host_read(h, LEN) == pattern(LEN, i as u32 + 1000),
            "host {i}"
        );
    }
    drop(hosts);
    // Every host program closed: the guest hears SHUTDOWN on each.
    let mut shut = 0;
    while shut < N {
        let p = g.recv();
        if p.h.op == op::SHUTDOWN {
            shut += 1;
        }
    }
}

#[test]
fn hundreds_of_guest_connections_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let (dev_end, parent_end) = broker_pair().expect("pair");
    let server = BrokerServer::new(parent_end, &uds).expect("broker");
    let broker = std::thread::spawn(move || server.run().expect("broker"));
    let listener = UnixListener::bind(BrokerServer::port_path(&uds, 5000)).expect("listen");
    let mut cfg = VsockConfig::new(3);
    cfg.broker = Some(dev_end);
    let dev = VsockDevice::new(cfg).expect("device");
    let mut g = Guest::new(dev, 2);

    // A host server: echoes each connection's first LEN bytes reversed, then closes.
    let server = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..N {
            let (mut s, _) = listener.accept().expect("accept");
            workers.push(std::thread::spawn(move || {
                let mut v = host_read(&mut s, LEN);
                v.reverse();
                host_write(&mut s, &v);
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
            }));
        }
        for w in workers {
            w.join().expect("worker");
        }
    });

    let mut streams = HashMap::new();
    let reqs: Vec<_> = (0..N)
        .map(|i| {
            let mut st = Stream::new(20_000 + i, HOST, 5000, 64 * 1024);
            let h = st.header(&g, op::REQUEST);
            streams.insert(20_000 + i, st);
            h
        })
        .collect();
    for chunk in reqs.chunks(50) {
        let pkts: Vec<_> = chunk.iter().map(|h| (*h, &[][..])).collect();
        g.send(&pkts);
    }
    let mut accepted = 0;
    while accepted < N {
        let p = g.recv();
        assert_eq!(p.h.op, op::RESPONSE, "{:?}", p.h);
        streams.get_mut(&p.h.dst_port).expect("stream").absorb(&p.h);
        accepted += 1;
    }
    for i in 0..N {
        let st = streams.get_mut(&(20_000 + i)).expect("stream");
        st.write_all(&mut g, &pattern(LEN, i), |_, p| panic!("{:?}", p.h));
    }
    let got = collect(&mut g, &mut streams);
    for i in 0..N {
        let mut want = pattern(LEN, i);
        want.reverse();
        assert!(got[&(20_000 + i)] == want, "stream {i}");
    }
    assert_eq!(g.dev.stats().guest_connections, u64::from(N));
    for i in 0..N {
        let st = streams.get_mut(&(20_000 + i)).expect("stream");
        let h = st.header(&g, op::RST);
        g.send1(h, &[]);
    }
    server.join().expect("server");
    assert_eq!(g.dev.stats().active_connections, 0);
    drop(g);
    broker.join().expect("broker");
}
