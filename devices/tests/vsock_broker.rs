//! The parent's side of the broker (`BrokerServer`), with the test playing a device that
//! may be compromised: it connects to exactly `<uds-path>_<port>`, answers every good
//! request once, drops malformed messages and descriptors the device sends, and a listener
//! whose backlog is full does not hold up other requests.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use vu_devices::vsock::broker::{
    broker_pair, BrokerCounters, BrokerLimits, BrokerServer, Reply, Request, MSG_LEN,
};

struct Parent {
    dev: OwnedFd,
    counters: std::sync::Arc<BrokerCounters>,
    stop: std::sync::Arc<vmm_sys_util::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
}

fn start(uds: &Path, limits: BrokerLimits) -> Parent {
    let (dev, parent) = broker_pair().expect("pair");
    let server = BrokerServer::with_limits(parent, uds, limits).expect("server");
    let counters = server.counters();
    let stop = server.stopper();
    let thread = Some(std::thread::spawn(move || server.run().expect("run")));
    Parent {
        dev,
        counters,
        stop,
        thread,
    }
}

fn send(p: &Parent, bytes: &[u8], fd: Option<RawFd>) {
    let iov = [IoSlice::new(bytes)];
    let fds = [fd.unwrap_or(-1)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fd.is_some() { &cmsg } else { &[] };
    sendmsg::<()>(p.dev.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).expect("send");
}

fn connect(p: &Parent, id: u64, port: u32) {
    send(p, &Request::Connect { id, port }.encode(), None);
}

/// The next answer (within 10 s) and the descriptor that came with it.
fn answer(p: &Parent) -> (Reply, Option<OwnedFd>) {
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&p.dev),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut pfd, 10_000u16).expect("poll"),
        1,
        "an answer within 10 s"
    );
    let mut buf = [0u8; MSG_LEN];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        p.dev.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recv");
    let mut fd = None;
    for c in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(v) = c {
            for r in v {
                // SAFETY: installed for us by this recvmsg; nothing else owns it.
                fd = Some(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    assert_eq!(msg.bytes, MSG_LEN);
    (Reply::decode(&buf).expect("a valid reply"), fd)
}

fn no_answer(p: &Parent) {
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&p.dev),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut pfd, 200u16).expect("poll"),
        0,
        "no answer"
    );
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn connects_to_exactly_the_port_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let l = UnixListener::bind(dir.path().join("vm.vsock_1234")).expect("bind");
    // Decoys: what a sloppy path builder might reach instead.
    let _d1 = UnixListener::bind(dir.path().join("vm.vsock1234")).expect("bind");
    let _d2 = UnixListener::bind(dir.path().join("vm.vsock_01234")).expect("bind");
    let p = start(&uds, BrokerLimits::default());
    connect(&p, 7, 1234);
    let (r, fd) = answer(&p);
    assert_eq!(r, Reply::Connected { id: 7 });
    let mut s = UnixStream::from(fd.expect("a stream"));
    let (mut peer, _) = l.accept().expect("accept");
    s.write_all(b"ping").expect("write");
    let mut b = [0u8; 4];
    peer.read_exact(&mut b).expect("read");
    assert_eq!(&b, b"ping");
    connect(&p, 8, 4321);
    let (r, fd) = answer(&p);
    assert_eq!(
        r,
        Reply::Failed {
            id: 8,
            errno: libc::ENOENT
        }
    );
    assert!(fd.is_none());
    std::fs::write(dir.path().join("vm.vsock_9"), b"not a socket").expect("file");
    connect(&p, 9, 9);
    assert_eq!(
        answer(&p).0,
        Reply::Failed {
            id: 9,
            errno: libc::ECONNREFUSED
        }
    );
    // The broker counts an answer after sending it: wait for the count to land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.counters.failed.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(p.counters.connected.load(Ordering::Relaxed), 1);
    assert_eq!(p.counters.failed.load(Ordering::Relaxed), 2);
}

#[test]
fn malformed_messages_and_descriptors_from_the_device_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let _l = UnixListener::bind(dir.path().join("vm.vsock_5")).expect("bind");
    let p = start(&uds, BrokerLimits::default());
    let good = Request::Connect { id: 1, port: 5 }.encode();
    send(&p, &good[..10], None);
    let mut long = good.to_vec();
    long.extend_from_slice(&[0; 100]);
    send(&p, &long, None);
    let mut reserved = good;
    reserved[4] = 1;
    send(&p, &reserved, None);
    let mut kind = good;
    kind[0] = 2;
    send(&p, &kind, None);
    let mut port = good;
    port[20] = 1; // the port's upper half
    send(&p, &port, None);
    // A good request with a descriptor attached: dropped, and the descriptor closed.
    let (r, w) = nix::unistd::pipe().expect("pipe");
    send(&p, &good, Some(w.as_raw_fd()));
    drop(w);
    let mut rf = std::fs::File::from(r);
    let mut b = [0u8; 1];
    assert_eq!(
        rf.read(&mut b).expect("read"),
        0,
        "the parent closed the write end"
    );
    no_answer(&p);
    assert_eq!(p.counters.malformed.load(Ordering::Relaxed), 6);
    // Still serving.
    connect(&p, 2, 5);
    assert_eq!(answer(&p).0, Reply::Connected { id: 2 });
}

#[test]
fn a_full_backlog_is_retried_without_holding_up_other_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    // A listener with the smallest backlog, filled and never accepting.
    let full = dir.path().join("vm.vsock_1");
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let addr = nix::sys::socket::UnixAddr::new(&full).expect("addr");
    nix::sys::socket::bind(fd.as_raw_fd(), &addr).expect("bind");
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(0).expect("backlog"))
        .expect("listen");
    let mut fillers = Vec::new();
    loop {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        match nix::sys::socket::connect(s.as_raw_fd(), &addr) {
            Ok(()) => fillers.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(fillers.len() < 100, "the backlog never filled");
    }
    let _good = UnixListener::bind(dir.path().join("vm.vsock_2")).expect("bind");
    let limits = BrokerLimits {
        connect_timeout: Duration::from_millis(500),
        max_pending: 1,
        ..BrokerLimits::default()
    };
    let p = start(&uds, limits);
    let t0 = Instant::now();
    connect(&p, 1, 1);
    connect(&p, 2, 2);
    connect(&p, 3, 1);
    // The good port and the over-limit request are answered at once; the full one later.
    let mut answers = [answer(&p).0, answer(&p).0];
    answers.sort_by_key(|r| match r {
        Reply::Connected { id } | Reply::Failed { id, .. } => *id,
        Reply::SiblingLink { .. } => 0,
    });
    assert_eq!(answers[0], Reply::Connected { id: 2 });
    assert_eq!(
        answers[1],
        Reply::Failed {
            id: 3,
            errno: libc::EAGAIN
        }
    );
    assert!(t0.elapsed() < Duration::from_millis(400));
    assert_eq!(
        answer(&p).0,
        Reply::Failed {
            id: 1,
            errno: libc::ETIMEDOUT
        }
    );
    assert!(t0.elapsed() >= Duration::from_millis(450));
    drop(fd);
}

#[test]
fn the_server_stops_when_told_or_when_the_device_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let mut p = start(&uds, BrokerLimits::default());
    p.stop.write(1).expect("stop");
    p.thread.take().expect("thread").join().expect("stopped");
    let (dev, parent) = broker_pair().expect("pair");
    let server = BrokerServer::new(parent, &uds).expect("server");
    let t = std::thread::spawn(move || server.run());
    drop(dev);
    assert!(t.join().expect("joined").is_ok());
}

/// A burst of requests from a device that reads its answers late (a guest opening hundreds
/// of connections at once): the answers outgrow the socket, wait in the broker and all
/// arrive, in order, each CONNECTED with its stream; none is dropped.
#[test]
fn answers_to_a_device_that_reads_late_all_arrive_in_order() {
    const N: u64 = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vm.vsock");
    let l = UnixListener::bind(dir.path().join("vm.vsock_5")).expect("bind");
    let p = start(&uds, BrokerLimits::default());
    std::thread::scope(|s| {
        let acceptor = s.spawn(|| {
            for _ in 0..N {
                let (c, _) = l.accept().expect("accept");
                drop(c);
            }
        });
        let sender = s.spawn(|| {
            for id in 0..N {
                connect(&p, id, 5);
            }
        });
        // The device reads nothing until the broker holds answers the socket had no room for.
        let t0 = Instant::now();
        while p.counters.held.load(Ordering::Relaxed) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the socket never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for id in 0..N {
            let (r, fd) = answer(&p);
            assert_eq!(r, Reply::Connected { id });
            assert!(fd.is_some(), "CONNECTED {id} came without its stream");
        }
        sender.join().expect("sender");
        acceptor.join().expect("acceptor");
    });
    // The broker counts an answer after sending it: wait for the last count to land.
    let t0 = Instant::now();
    while (p.counters.connected.load(Ordering::Relaxed) < N
        || p.counters.held.load(Ordering::Relaxed) != 0)
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(p.counters.connected.load(Ordering::Relaxed), N);
    assert_eq!(p.counters.undelivered.load(Ordering::Relaxed), 0);
    assert_eq!(p.counters.held.load(Ordering::Relaxed), 0);
}
