//! Guest connections to host ports: the guest connects to CID 2 port P, the device asks its
//! broker (the parent-side `BrokerServer`, here on a test thread) for `<uds-path>_P`, and
//! the guest talks to the host program listening there.

mod common;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use common::vsock::{host_read, host_write, no_packet, pattern, Guest, Stream, HOST};
use tempfile::TempDir;
use vu_devices::vsock::broker::{broker_pair, BrokerServer};
use vu_devices::vsock::packet::{op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use vu_devices::vsock::{VsockConfig, VsockDevice};

struct Setup {
    g: Guest,
    uds: PathBuf,
    broker: Option<JoinHandle<()>>,
    _dir: TempDir,
}

fn setup(with_broker: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let mut cfg = VsockConfig::new(3);
    let mut broker = None;
    if with_broker {
        let (dev_end, parent_end) = broker_pair().expect("broker pair");
        cfg.broker = Some(dev_end);
        let server = BrokerServer::new(parent_end, &uds).expect("broker");
        broker = Some(std::thread::spawn(move || {
            server.run().expect("broker serves");
        }));
    }
    let dev = VsockDevice::new(cfg).expect("device");
    Setup {
        g: Guest::new(dev, 2),
        uds,
        broker,
        _dir: dir,
    }
}

fn listen(s: &Setup, port: u32) -> UnixListener {
    UnixListener::bind(BrokerServer::port_path(&s.uds, port)).expect("host listener")
}

/// The guest connects from `local` to host port `port`; returns the accepted host stream
/// and the guest's stream.
fn connect(s: &mut Setup, l: &UnixListener, local: u32, port: u32) -> (UnixStream, Stream) {
    let mut st = Stream::new(local, HOST, port, 128 * 1024);
    let h = st.header(&s.g, op::REQUEST);
    s.g.send1(h, &[]);
    let p = s.g.recv_for(local, port);
    assert_eq!(p.h.op, op::RESPONSE, "{:?}", p.h);
    assert_eq!((p.h.src_cid, p.h.dst_cid), (HOST, 3));
    st.absorb(&p.h);
    let (host, _) = l.accept().expect("accept");
    (host, st)
}

#[test]
fn guest_talks_to_a_host_listener_both_ways() {
    let mut s = setup(true);
    let l = listen(&s, 5000);
    let (host, mut st) = connect(&mut s, &l, 40000, 5000);

    let up = pattern(300 * 1024 + 3, 7);
    let mut r = host.try_clone().expect("clone");
    let n = up.len();
    let reader = std::thread::spawn(move || host_read(&mut r, n));
    st.write_all(&mut s.g, &up, |_, p| no_packet(p));
    assert_eq!(reader.join().expect("reader"), up);

    let down = pattern(300 * 1024 + 11, 8);
    let mut w = host.try_clone().expect("clone");
    let d2 = down.clone();
    let writer = std::thread::spawn(move || host_write(&mut w, &d2));
    assert_eq!(st.read_exact(&mut s.g, down.len(), no_packet), down);
    writer.join().expect("writer");

    // The host program closes its socket: the guest hears that it will neither send nor
    // receive, then closes too.
    drop(host);
    let p = s.g.recv_for(40000, 5000);
    assert_eq!(
        (p.h.op, p.h.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    let mut h = st.header(&s.g, op::SHUTDOWN);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    s.g.send1(h, &[]);
    assert_eq!(s.g.recv_for(40000, 5000).h.op, op::RST);

    let stats = s.g.dev.stats();
    assert_eq!(stats.guest_connections, 1);
    assert_eq!(stats.bytes_from_guest, up.len() as u64);
    assert_eq!(stats.bytes_to_guest, down.len() as u64);
    assert_eq!(stats.active_connections, 0);
}

#[test]
fn guest_reset_closes_the_host_stream() {
    let mut s = setup(true);
    let l = listen(&s, 22);
    let (mut host, mut st) = connect(&mut s, &l, 1025, 22);
    st.write_all(&mut s.g, b"bye", |_, p| no_packet(p));
    let h = st.header(&s.g, op::RST);
    s.g.send1(h, &[]);
    assert_eq!(host_read(&mut host, 3), b"bye");
    let mut b = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(host.read(&mut b).expect("eof"), 0);
    assert_eq!(s.g.dev.stats().resets_received, 1);
    // Packets for the closed connection are answered with RST.
    let h = st.header(&s.g, op::CREDIT_UPDATE);
    s.g.send1(h, &[]);
    assert_eq!(s.g.recv_for(1025, 22).h.op, op::RST);
    assert_eq!(s.g.dev.stats().unknown_connection, 1);
}

#[test]
fn closed_ports_and_a_missing_broker_answer_rst() {
    let mut s = setup(true);
    let h = s.g.header(HOST, 1026, 9999, op::REQUEST);
    s.g.send1(h, &[]);
    let p = s.g.recv_for(1026, 9999);
    assert_eq!(p.h.op, op::RST);
    assert_eq!(s.g.dev.stats().connect_failures, 1);
    assert_eq!(s.g.dev.stats().active_connections, 0);

    let mut s = setup(false);
    assert!(s.broker.is_none());
    let h = s.g.header(HOST, 1027, 5000, op::REQUEST);
    s.g.send1(h, &[]);
    assert_eq!(s.g.recv_for(1027, 5000).h.op, op::RST);
}

#[test]
fn guest_connections_survive_sleep_and_wake() {
    let mut s = setup(true);
    let l = listen(&s, 80);
    let (mut host, mut st) = connect(&mut s, &l, 1100, 80);
    s.g.fe.handler.sleep().expect("sleep");
    host_write(&mut host, b"while asleep");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.g.poll(), 0, "an asleep device writes nothing");
    s.g.fe.handler.wake().expect("wake");
    assert_eq!(st.read_exact(&mut s.g, 12, no_packet), b"while asleep");
}

#[test]
fn broker_stops_when_the_device_goes_away() {
    let s = setup(true);
    let Setup { g, broker, .. } = s;
    drop(g);
    broker
        .expect("broker")
        .join()
        .expect("the broker's run returns once the device end closes");
}
