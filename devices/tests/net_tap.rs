//! virtio-net on a real tap, inside a network namespace each test creates: `open_tap`'s
//! refusals; frames from the guest reach the tap byte-exact (seen by a packet socket on it),
//! and those the tap refuses are dropped and counted; the tap's offloads follow the
//! negotiated features (read back with ethtool, and seen in what the kernel hands over: one
//! 64 KiB TSO frame, or many segments); frames wait in the tap while the driver posts no
//! buffers and the tap counts what it drops; two queue pairs, and a disabled ring's queue
//! detached so that the kernel steers its flows to the others; a tap whose send buffer is
//! limited, and fills, keeps the frames in order.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::net::*;
use common::netns::Netns;
use common::{Buf, Frontend, Submitted};
use virtio_bindings::virtio_net::*;
use vu_core::message::{features, Request, VringState};
use vu_devices::net::tap::{open_tap, tap_stats, TapError};
use vu_devices::net::{NetConfig, NetDevice};
use zerocopy::IntoBytes;

const QSIZE: u16 = 256;
const WAIT: Duration = Duration::from_secs(20);

/// One device at a time: tests that check a worker thread's CPU time find it by name.
static SERIAL: Mutex<()> = Mutex::new(());

fn bit(b: u32) -> u64 {
    1 << b
}

fn all_features(offered: u64) -> u64 {
    offered & !features::LOG_ALL
}

/// A namespace with a tap `tap0` (multi-queue when `multi`), up.
fn tap_ns(multi: bool) -> Option<Netns> {
    let ns = Netns::new()?;
    let mut args = vec!["tuntap", "add", "dev", "tap0", "mode", "tap"];
    if multi {
        args.push("multi_queue");
    }
    ns.ip(&args);
    ns.ip(&["link", "set", "tap0", "up"]);
    Some(ns)
}

struct Setup {
    _serial: MutexGuard<'static, ()>,
    ns: Netns,
    fe: Frontend,
    dev: Arc<NetDevice>,
}

fn setup(multi: bool, pairs: u16, pick: impl FnOnce(u64) -> u64) -> Option<Setup> {
    let serial = serial();
    let ns = tap_ns(multi)?;
    let taps = ns.run(move || open_tap("tap0", pairs)).expect("open tap");
    Some(serve(serial, ns, taps, pick))
}

/// A device on `taps` (queues of `tap0` in `ns`), and a front-end that negotiated `pick`.
fn serve(
    serial: MutexGuard<'static, ()>,
    ns: Netns,
    taps: Vec<File>,
    pick: impl FnOnce(u64) -> u64,
) -> Setup {
    let pairs = taps.len() as u16;
    let dev = NetDevice::new(NetConfig {
        taps,
        queue_pairs: pairs,
        queue_size: QSIZE,
        mtu: None,
        mac: None,
    })
    .expect("device");
    let fe = Frontend::with_features(dev.clone(), 2 * usize::from(pairs), QSIZE, pick);
    ns.wait_up("tap0");
    Setup {
        _serial: serial,
        ns,
        fe,
        dev,
    }
}

#[test]
fn open_tap_refuses_what_it_cannot_use() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.ip(&["tuntap", "add", "dev", "sq", "mode", "tap"]);
    ns.ip(&["tuntap", "add", "dev", "mq", "mode", "tap", "multi_queue"]);
    ns.ip(&["tuntap", "add", "dev", "tn", "mode", "tun"]);
    ns.ip(&[
        "tuntap", "add", "dev", "owned", "mode", "tap", "user", "4321",
    ]);
    ns.run(|| {
        let err = |name: &str, pairs| match open_tap(name, pairs) {
            Ok(f) => panic!("{name} with {pairs} pairs: opened {f:?}"),
            Err(e) => e,
        };
        assert!(matches!(err("", 1), TapError::BadName(_)));
        assert!(matches!(err("much-too-long-name", 1), TapError::BadName(_)));
        assert!(matches!(err("mq", 0), TapError::BadQueuePairs(0)));
        let e = err("nothere", 1);
        assert!(matches!(e, TapError::Missing(_)), "{e}");
        assert!(e.to_string().contains("ip tuntap add"), "says how: {e}");
        let e = err("sq", 2);
        assert!(
            matches!(e, TapError::NotMultiQueue { queue_pairs: 2, .. }),
            "{e}"
        );
        assert!(matches!(err("tn", 1), TapError::NotATap(_)));
        assert!(matches!(err("lo", 1), TapError::NotATap(_)));
        // A single-queue tap takes one reader.
        let held = open_tap("sq", 1).expect("single queue");
        assert_eq!(held.len(), 1);
        assert!(matches!(err("sq", 1), TapError::Busy(_)));
        drop(held);
        // A multi-queue tap serves one pair or several.
        assert_eq!(open_tap("mq", 1).expect("one pair").len(), 1);
        assert_eq!(open_tap("mq", 4).expect("four pairs").len(), 4);
        // Queues another process holds without the virtio-net header keep their flags.
        let other = attach_raw(
            "mq",
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE,
        );
        let e = err("mq", 2);
        assert!(
            matches!(
                e,
                TapError::WrongFlags {
                    missing: "vnet_hdr",
                    ..
                }
            ),
            "{e}"
        );
        drop(other);
        // Someone else's tap, without CAP_NET_ADMIN.
        let e = std::thread::spawn(|| {
            drop_net_admin();
            open_tap("owned", 1).expect_err("not ours")
        })
        .join()
        .expect("thread");
        assert!(matches!(e, TapError::Permission { .. }), "{e}");
    });
}

/// Attaches a queue of `name` with `flags`, as another program would.
fn attach_raw(name: &str, flags: libc::c_int) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("tun");
    // SAFETY: all zeroes is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq `req` points to.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(r, 0, "attach: {}", std::io::Error::last_os_error());
    f
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes two Data structs for version 3 headers.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    assert_eq!(r, 0);
    const CAP_NET_ADMIN: u32 = 12;
    d[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: capset reads the header and two Data structs; it applies to this thread only.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

const TX: usize = 1;

fn send(s: &mut Setup, q: usize, bytes: Vec<u8>) {
    s.fe.submit(q, &[Buf::Out(bytes)]);
    s.fe.kick(q);
    assert_eq!(s.fe.wait(q, 1)[0].1, 0);
}

/// A frame the packet socket saw arriving, without its 10-byte virtio-net header.
fn arrived(sock: &mut File) -> (Vec<u8>, Vec<u8>) {
    let mut b = recv_timeout(sock, WAIT).expect("a frame on the tap");
    let frame = b.split_off(10);
    (b, frame)
}

#[test]
fn frames_from_the_guest_reach_the_tap_byte_exact() {
    let Some(mut s) = setup(false, 1, all_features) else {
        return;
    };
    let mut sock = s.ns.packet_socket("tap0", true);
    let f = frame(60, 1);
    send(&mut s, TX, [plain_hdr(), f.clone()].concat());
    assert_eq!(arrived(&mut sock).1, f);
    let f = frame(1514, 2);
    send(&mut s, TX, [plain_hdr(), f.clone()].concat());
    assert_eq!(arrived(&mut sock).1, f);
    // A 64 KiB TSO frame arrives whole, its GSO header with it.
    let big = tcp4_frame(MAX_TCP4_PAYLOAD, 3);
    let th = hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16));
    send(&mut s, TX, [th, big.clone()].concat());
    let (h, got) = arrived(&mut sock);
    assert_eq!(got, big);
    assert_eq!((h[1], u16::from_le_bytes([h[4], h[5]])), (GSO_TCPV4, 1448));
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_write_error), (3, 0));
    assert_eq!(tap_stats("tap0").ok(), None, "not in this namespace");
    let ts = s.ns.run(|| tap_stats("tap0")).expect("tap stats");
    assert_eq!(ts.rx_packets, 3);
}

#[test]
fn frames_the_tap_refuses_are_dropped_and_counted() {
    let Some(mut s) = setup(false, 1, all_features) else {
        return;
    };
    // An unknown GSO type: EINVAL.
    send(
        &mut s,
        TX,
        [hdr(0, 0x42, 0, 0, (0, 0)), frame(100, 4)].concat(),
    );
    // The tap is down: EIO.
    s.ns.ip(&["link", "set", "tap0", "down"]);
    send(&mut s, TX, [plain_hdr(), frame(100, 5)].concat());
    s.ns.ip(&["link", "set", "tap0", "up"]);
    s.ns.wait_up("tap0");
    let mut sock = s.ns.packet_socket("tap0", false);
    let f = frame(100, 6);
    send(&mut s, TX, [plain_hdr(), f.clone()].concat());
    let got = recv_timeout(&mut sock, WAIT).expect("the good frame");
    assert_eq!(got, f);
    let st = s.dev.stats();
    assert_eq!((st.tx_dropped_write_error, st.tx_packets), (2, 1));
}

/// ethtool's view of the tap: (tx checksumming, TSO), as the kernel offers to the reader.
fn ethtool_offloads(s: &Setup) -> (u32, u32) {
    let sock = s.ns.inet_socket();
    let get = |cmd: u32| {
        let mut v = [cmd, 0u32];
        // SAFETY: all zeroes is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, c) in req.ifr_name.iter_mut().zip(b"tap0") {
            *d = *c as libc::c_char;
        }
        req.ifr_ifru.ifru_data = v.as_mut_ptr() as *mut libc::c_char;
        // SAFETY: SIOCETHTOOL reads the ifreq and reads/writes the ethtool_value it points to.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
        assert_eq!(r, 0, "ethtool: {}", std::io::Error::last_os_error());
        v[1]
    };
    (get(0x16), get(0x1e)) // ETHTOOL_GTXCSUM, ETHTOOL_GTSO
}

fn post(s: &mut Setup, q: usize, n: usize, len: u32) -> Vec<Submitted> {
    let chains: Vec<Vec<Buf>> = (0..n).map(|_| vec![Buf::In(len)]).collect();
    let subs = s.fe.submit_batch(q, &chains);
    s.fe.kick(q);
    subs
}

/// Receives `n` frames on ring `q`: (header, frame) each.
fn receive(
    s: &mut Setup,
    q: usize,
    subs: &mut Vec<Submitted>,
    n: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < n {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.fe.pending_used(q) == 0 {
            if Instant::now() > deadline {
                let ts = s.ns.run(|| tap_stats("tap0"));
                panic!(
                    "no frame after {} of {n}: device {:?}, tap {ts:?}",
                    out.len(),
                    s.dev.stats()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (id, len) = s.fe.wait(q, 1)[0];
        let i = subs
            .iter()
            .position(|c| u32::from(c.head) == id)
            .expect("posted");
        let first = subs.remove(i);
        let mut bytes = s.fe.written(&first, len);
        let nb = u16::from_le_bytes([bytes[10], bytes[11]]);
        for _ in 1..nb {
            let (id, len) = s.fe.wait(q, 1)[0];
            let i = subs
                .iter()
                .position(|c| u32::from(c.head) == id)
                .expect("posted");
            let c = subs.remove(i);
            bytes.extend(s.fe.written(&c, len));
        }
        let frame = bytes.split_off(12);
        out.push((bytes, frame));
    }
    out
}

/// The kernel hands a 64 KiB TCP segment to the tap (a local sender with TSO).
fn inject_tso(s: &Setup, payload: usize) -> Vec<u8> {
    let mut sock = s.ns.packet_socket("tap0", true);
    let f = tcp4_frame(payload, 7);
    let h = hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16));
    sock.write_all(&[&h[..10], &f[..]].concat())
        .expect("send TSO frame");
    f
}

#[test]
fn the_taps_offloads_follow_the_negotiated_features() {
    let Some(mut s) = setup(false, 1, all_features) else {
        return;
    };
    assert_eq!(s.dev.tap_offloads(), 0x1f, "csum, tso4, tso6, ecn, ufo");
    assert_eq!(ethtool_offloads(&s), (1, 1));
    let mut subs = post(&mut s, 0, 64, 2048);
    let sent = inject_tso(&s, 65000);
    let got = receive(&mut s, 0, &mut subs, 1);
    let (h, f) = &got[0];
    assert_eq!(f, &sent, "one frame, whole");
    assert_eq!(h[1] & 0x7f, GSO_TCPV4);
    assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1448);
    assert_ne!(h[0] & F_NEEDS_CSUM, 0);
    drop(s);

    // A driver without receive offloads gets the kernel to segment.
    let guest = [
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    ];
    let Some(mut s) = setup(false, 1, |o| {
        guest.iter().fold(all_features(o), |f, b| f & !bit(*b))
    }) else {
        return;
    };
    assert_eq!(s.dev.tap_offloads(), 0);
    assert_eq!(ethtool_offloads(&s), (0, 0));
    let mut subs = post(&mut s, 0, 128, 2048);
    inject_tso(&s, 65000);
    let n = 65000usize.div_ceil(1448);
    let got = receive(&mut s, 0, &mut subs, n);
    assert!(got.iter().all(|(h, f)| h[1] == GSO_NONE && f.len() <= 1514));
    let payload: usize = got.iter().map(|(_, f)| f.len() - 54).sum();
    assert_eq!(payload, 65000);
}

#[test]
fn frames_wait_in_the_tap_without_buffers_and_the_tap_counts_its_drops() {
    let before = threads("net-q");
    let Some(mut s) = setup(false, 1, all_features) else {
        return;
    };
    let rx_thread = new_threads("net-q0", &before, 1);
    let mut sock = s.ns.packet_socket("tap0", false);
    let frames: Vec<Vec<u8>> = (0..1200).map(|i| frame(100, i as u8)).collect();
    for f in &frames {
        sock.write_all(f).expect("send");
    }
    let ts = s.ns.run(|| tap_stats("tap0")).expect("tap stats");
    assert!(ts.tx_dropped >= 100, "the tap's queue overflowed: {ts:?}");
    assert_idle(&rx_thread, "frames in the tap, no buffers");
    let mut subs = post(&mut s, 0, 200, 256);
    let got = receive(&mut s, 0, &mut subs, 200);
    for (i, (_, f)) in got.iter().enumerate() {
        assert_eq!(f, &frames[i], "frame {i}: the first ones, in order");
    }
}

/// Frames of `flows` TCP flows (distinct source ports), one each.
fn flows(s: &Setup, flows: u16, round: u8) {
    let mut sock = s.ns.packet_socket("tap0", false);
    for port in 0..flows {
        let mut f = tcp4_frame(100, round);
        f[34..36].copy_from_slice(&(10000 + port).to_be_bytes());
        sock.write_all(&f).expect("send");
    }
}

/// Frames delivered on rings 0 and 2 until `want` in all or the time runs out.
fn count_rx(s: &mut Setup, want: usize, within: Duration) -> (usize, usize) {
    let deadline = Instant::now() + within;
    let (mut a, mut b) = (0, 0);
    while a + b < want && Instant::now() < deadline {
        a += s.fe.poll_used(0).len();
        b += s.fe.poll_used(2).len();
        std::thread::sleep(Duration::from_millis(2));
    }
    (a, b)
}

fn enable(s: &mut Setup, q: u32, on: bool) {
    let st = VringState {
        index: q,
        num: u32::from(on),
    };
    s.fe.send(Request::SetVringEnable, st.as_bytes(), vec![])
        .expect("SET_VRING_ENABLE");
}

#[test]
fn two_queue_pairs_and_a_disabled_rings_queue_is_detached() {
    let Some(mut s) = setup(true, 2, all_features) else {
        return;
    };
    // Transmit on the second pair.
    let mut sock = s.ns.packet_socket("tap0", false);
    let f = frame(300, 8);
    send(&mut s, 3, [plain_hdr(), f.clone()].concat());
    assert_eq!(recv_timeout(&mut sock, WAIT).expect("frame"), f);
    // Receive: the kernel spreads flows over both queues. (Single-buffer frames: 64 bytes
    // of payload fit one 2 KiB buffer.)
    post(&mut s, 0, 200, 2048);
    post(&mut s, 2, 200, 2048);
    flows(&s, 32, 1);
    let (a, b) = count_rx(&mut s, 32, WAIT);
    assert_eq!(a + b, 32);
    assert!(a > 0 && b > 0, "both queues used: {a} and {b}");
    // Disable the second receive ring: its queue is detached once a frame reaches it, and
    // all flows go to the first.
    enable(&mut s, 2, false);
    let mut round = 2;
    loop {
        flows(&s, 32, round);
        let (a, b) = count_rx(&mut s, 32, Duration::from_secs(1));
        assert_eq!(b, 0, "a disabled ring takes nothing");
        if a == 32 {
            break;
        }
        round += 1;
        assert!(round < 10, "flows still steered to the disabled ring");
    }
}

/// Runs `tc ARGS` in the namespace; panics on failure.
fn tc(ns: &Netns, args: &str) {
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    let out = ns
        .run(move || std::process::Command::new("tc").args(&args).output())
        .expect("run tc");
    assert!(
        out.status.success(),
        "tc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TUNSETSNDBUF: limits the send buffer of the tap `tap` is a queue of.
fn limit_sndbuf(tap: &File, bytes: libc::c_int) {
    // SAFETY: TUNSETSNDBUF reads one int, which `bytes` holds for the call.
    let r = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETSNDBUF,
            &bytes as *const libc::c_int,
        )
    };
    assert_eq!(r, 0, "TUNSETSNDBUF: {}", std::io::Error::last_os_error());
}

#[test]
fn a_tap_whose_send_buffer_fills_keeps_the_frames_in_order() {
    let serial = serial();
    let Some(ns) = tap_ns(false) else {
        return;
    };
    // What is written into tap0 leaves through v0, whose queue drains at 20 Mbit/s: each
    // frame holds room in the tap's send buffer until it has left.
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    tc(
        &ns,
        "qdisc add dev v0 root tbf rate 20mbit burst 4k limit 1000000",
    );
    tc(&ns, "qdisc add dev tap0 ingress");
    tc(
        &ns,
        "filter add dev tap0 parent ffff: protocol all u32 match u32 0 0 \
         action mirred egress redirect dev v0",
    );
    let taps = ns.run(|| open_tap("tap0", 1)).expect("open tap");
    limit_sndbuf(&taps[0], 16 << 10);
    let mut s = serve(serial, ns, taps, all_features);
    // Seen as the tap receives them, before they wait in v0's queue.
    let sock = s.ns.packet_socket("tap0", false);
    const ROUNDS: usize = 16;
    const PER_ROUND: usize = 64;
    const N: usize = ROUNDS * PER_ROUND;
    let seen = std::thread::spawn(move || {
        let mut sock = sock;
        let mut got = Vec::new();
        while got.len() < N {
            match recv_timeout(&mut sock, WAIT) {
                Some(f) => got.push(f),
                None => break,
            }
        }
        got
    });
    // Large and small frames by turns: a small one fits where a large one found no room only
    // if it is written before it.
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut f = frame(if i % 2 == 0 { 1514 } else { 60 }, i as u8);
            f[14..16].copy_from_slice(&(i as u16).to_be_bytes());
            f
        })
        .collect();
    for round in frames.chunks(PER_ROUND) {
        let chains: Vec<Vec<Buf>> = round
            .iter()
            .map(|f| vec![Buf::Out([plain_hdr(), f.clone()].concat())])
            .collect();
        s.fe.submit_batch(TX, &chains);
        s.fe.kick(TX);
        assert!(s.fe.wait(TX, PER_ROUND).iter().all(|&(_, len)| len == 0));
    }
    let got = seen.join().expect("reader");
    let order: Vec<usize> = got
        .iter()
        .map(|f| usize::from(u16::from_be_bytes([f[14], f[15]])))
        .collect();
    if let Some(i) = (0..order.len()).find(|&i| order[i] != i) {
        panic!(
            "frame {i} of {N} on the tap is the guest's frame {}: {:?}",
            order[i],
            &order[i.saturating_sub(2)..(i + 3).min(order.len())]
        );
    }
    assert_eq!(order.len(), N, "every frame arrived");
    assert_eq!(got, frames, "byte-exact");
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_write_error), (N as u64, 0));
    assert!(st.tx_tap_full > 0, "the tap filled: {st:?}");
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
