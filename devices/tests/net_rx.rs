//! virtio-net receive (tap to guest) through the core's real handler and worker threads, with
//! a SOCK_SEQPACKET socket standing in for the tap: frames spread over mergeable buffers with
//! num_buffers set, or fill one big chain without MRG_RXBUF; 64 KiB frames; no buffers means
//! the tap is not watched (no spinning) and frames wait until buffers come; a frame larger
//! than the buffers posted waits too, across a sleep; buffers too small for a header are
//! returned unused; chains taken ahead go back to the ring when the queue stops.

mod common;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::net::*;
use common::{Buf, Frontend, Submitted};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use vu_core::message::features;
use vu_devices::net::{NetConfig, NetDevice};

const QSIZE: u16 = 256;
const RX: usize = 0;
const WAIT: Duration = Duration::from_secs(20);

/// One device at a time: tests that check a worker thread's CPU time find it by name.
static SERIAL: Mutex<()> = Mutex::new(());

struct Setup {
    _serial: MutexGuard<'static, ()>,
    fe: Frontend,
    dev: Arc<NetDevice>,
    peer: File,
}

fn bit(b: u32) -> u64 {
    1 << b
}

/// A device on a socket pair; `pick` chooses the features acked from those offered.
fn setup(pick: impl FnOnce(u64) -> u64) -> Setup {
    let serial = serial();
    let (dev_end, peer) = frame_pair();
    let dev = NetDevice::new(NetConfig {
        taps: vec![dev_end],
        queue_pairs: 1,
        queue_size: QSIZE,
        mtu: None,
        mac: None,
    })
    .expect("device");
    let fe = Frontend::with_features(dev.clone(), 2, QSIZE, pick);
    Setup {
        _serial: serial,
        fe,
        dev,
        peer,
    }
}

fn all_features(offered: u64) -> u64 {
    offered & !features::LOG_ALL
}

fn without(b: &'static [u32]) -> impl FnOnce(u64) -> u64 {
    move |offered| b.iter().fold(all_features(offered), |f, b| f & !bit(*b))
}

/// Posts `n` receive chains of `len` bytes each (one buffer each) and kicks.
fn post(s: &mut Setup, n: usize, len: u32) -> Vec<Submitted> {
    let chains: Vec<Vec<Buf>> = (0..n).map(|_| vec![Buf::In(len)]).collect();
    let subs = s.fe.submit_batch(RX, &chains);
    s.fe.kick(RX);
    subs
}

/// The tap hands the device a frame (with its header).
fn inject(s: &mut Setup, bytes: &[u8]) {
    s.peer.write_all(bytes).expect("write frame");
}

/// Waits for `n` used buffers and matches them to the chains posted (in order).
fn take(s: &mut Setup, subs: &mut Vec<Submitted>, n: usize) -> Vec<(Submitted, u32)> {
    let used = s.fe.wait(RX, n);
    used.into_iter()
        .map(|(id, len)| {
            let i = subs
                .iter()
                .position(|c| u32::from(c.head) == id)
                .expect("a chain we posted");
            (subs.remove(i), len)
        })
        .collect()
}

/// Concatenates what the device wrote in a group of buffers; checks num_buffers.
fn frame_of(s: &Setup, group: &[(Submitted, u32)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (c, len) in group {
        bytes.extend(s.fe.written(c, *len));
    }
    let nb = u16::from_le_bytes([bytes[10], bytes[11]]);
    assert_eq!(usize::from(nb), group.len(), "num_buffers");
    bytes
}

fn with_num_buffers(mut b: Vec<u8>, n: u16) -> Vec<u8> {
    b[10..12].copy_from_slice(&n.to_le_bytes());
    b
}

#[test]
fn frames_spread_over_mergeable_buffers_with_num_buffers_set() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 16, 1024);
    let big = [plain_hdr(), frame(3000, 1)].concat();
    inject(&mut s, &big);
    let g = take(&mut s, &mut subs, 3);
    assert_eq!(
        g.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
        vec![1024, 1024, 3012 - 2048]
    );
    assert_eq!(frame_of(&s, &g), with_num_buffers(big, 3));
    // Buffers are used in the order they were posted.
    let small = [plain_hdr(), frame(60, 2)].concat();
    inject(&mut s, &small);
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(frame_of(&s, &g), with_num_buffers(small, 1));
    let st = s.dev.stats();
    assert_eq!((st.rx_packets, st.rx_bytes), (2, 3060));
    assert_eq!(st.rx_copied, 0, "read straight into guest buffers");
}

#[test]
fn without_mrg_rxbuf_a_frame_fills_one_big_chain() {
    let mut s = setup(without(&[VIRTIO_NET_F_MRG_RXBUF]));
    // Big receive buffers as a driver without MRG_RXBUF posts them: 65562 bytes in pieces.
    let chain = vec![Buf::In(12), Buf::In(4096), Buf::In(65562 - 12 - 4096)];
    let mut subs = s.fe.submit_batch(RX, &[chain.clone(), chain]);
    s.fe.kick(RX);
    let tso = [
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
        tcp4_frame(MAX_TCP4_PAYLOAD, 3),
    ]
    .concat();
    inject(&mut s, &tso);
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(g[0].1 as usize, tso.len());
    assert_eq!(
        frame_of(&s, &g),
        with_num_buffers(tso, 1),
        "num_buffers is 1"
    );
    let small = [plain_hdr(), frame(100, 4)].concat();
    inject(&mut s, &small);
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(frame_of(&s, &g), with_num_buffers(small, 1));
}

#[test]
fn without_mrg_rxbuf_a_frame_larger_than_the_chain_is_dropped() {
    let mut s = setup(without(&[VIRTIO_NET_F_MRG_RXBUF]));
    let mut subs = post(&mut s, 2, 1526);
    inject(&mut s, &[plain_hdr(), frame(2000, 5)].concat());
    let small = [plain_hdr(), frame(1514, 6)].concat();
    inject(&mut s, &small);
    // The big frame is dropped, not cut; the chain it was read into takes the next one.
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(frame_of(&s, &g), with_num_buffers(small, 1));
    let st = s.dev.stats();
    assert_eq!((st.rx_dropped_too_big, st.rx_packets), (1, 1));
}

#[test]
fn a_64k_frame_spans_many_small_buffers() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 64, 1536);
    let tso = [
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
        tcp4_frame(MAX_TCP4_PAYLOAD, 7),
    ]
    .concat();
    inject(&mut s, &tso);
    let n = tso.len().div_ceil(1536);
    let g = take(&mut s, &mut subs, n);
    assert_eq!(frame_of(&s, &g), with_num_buffers(tso, n as u16));
    assert_eq!(s.dev.stats().rx_copied, 0);
}

#[test]
fn a_large_frame_after_many_small_ones_arrives_whole() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 250, 1536);
    // Small frames: the device comes to offer the kernel one buffer per read.
    for i in 0..150u8 {
        let f = [plain_hdr(), frame(60, i)].concat();
        inject(&mut s, &f);
        let g = take(&mut s, &mut subs, 1);
        assert_eq!(frame_of(&s, &g), with_num_buffers(f, 1));
    }
    // A large one then spills into the device's buffer and is copied on from there.
    let tso = [
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
        tcp4_frame(60000, 14),
    ]
    .concat();
    inject(&mut s, &tso);
    let n = tso.len().div_ceil(1536);
    let g = take(&mut s, &mut subs, n);
    assert_eq!(frame_of(&s, &g), with_num_buffers(tso, n as u16));
    assert_eq!(s.dev.stats().rx_copied, 1);
}

#[test]
fn a_frame_larger_than_the_buffers_posted_waits_for_more() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 16, 2048);
    let tso = [
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
        tcp4_frame(40000, 8),
    ]
    .concat();
    inject(&mut s, &tso);
    let after = [plain_hdr(), frame(500, 9)].concat();
    inject(&mut s, &after);
    wait_for("the frame to wait for buffers", || {
        s.dev.stats().rx_copied > 0
    });
    assert_eq!(s.fe.pending_used(RX), 0, "nothing delivered in part");
    subs.extend(post(&mut s, 16, 2048));
    let n = tso.len().div_ceil(2048);
    let g = take(&mut s, &mut subs, n);
    assert_eq!(frame_of(&s, &g), with_num_buffers(tso, n as u16));
    // The frame behind it waited in the tap and comes next.
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(frame_of(&s, &g), with_num_buffers(after, 1));
    let st = s.dev.stats();
    assert_eq!((st.rx_packets, st.rx_copied), (2, 1));
}

#[test]
fn a_waiting_frame_survives_a_sleep() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 8, 2048);
    let tso = [
        hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16)),
        tcp4_frame(30000, 10),
    ]
    .concat();
    inject(&mut s, &tso);
    wait_for("the frame to wait", || s.dev.stats().rx_copied > 0);
    s.fe.handler.sleep().expect("sleep");
    s.fe.handler.wake().expect("wake");
    subs.extend(post(&mut s, 16, 2048));
    let n = tso.len().div_ceil(2048);
    let g = take(&mut s, &mut subs, n);
    // The chains given back at the sleep are taken again first.
    assert_eq!(frame_of(&s, &g), with_num_buffers(tso, n as u16));
    assert_eq!(s.dev.stats().rx_packets, 1);
}

#[test]
fn without_buffers_the_tap_is_not_watched_and_frames_wait() {
    let before = threads("net-q");
    let mut s = setup(all_features);
    let rx_thread = new_threads("net-q0", &before, 1);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| [plain_hdr(), frame(200 + i, i as u8)].concat())
        .collect();
    for f in &frames {
        inject(&mut s, f);
    }
    assert_idle(&rx_thread, "frames in the tap, no receive buffers");
    assert!(s.dev.stats().rx_no_buffers >= 1);
    assert_eq!(s.dev.stats().rx_packets, 0);
    let mut subs = post(&mut s, 8, 2048);
    for f in &frames {
        let g = take(&mut s, &mut subs, 1);
        assert_eq!(&frame_of(&s, &g), &with_num_buffers(f.clone(), 1));
    }
    // Buffers left, tap empty: waiting for the tap, not spinning either.
    assert_idle(&rx_thread, "receive buffers, empty tap");
}

#[test]
fn buffers_too_small_for_a_header_are_returned_unused() {
    let mut s = setup(all_features);
    let mut subs =
        s.fe.submit_batch(RX, &[vec![Buf::In(8)], vec![Buf::In(2048)]]);
    s.fe.kick(RX);
    let f = [plain_hdr(), frame(100, 11)].concat();
    inject(&mut s, &f);
    let g = take(&mut s, &mut subs, 2);
    assert_eq!(g[0].1, 0, "the small buffer, unused");
    assert_eq!(frame_of(&s, &g[1..]), with_num_buffers(f, 1));
    assert_eq!(s.dev.stats().rx_bad_buffers, 1);
}

#[test]
fn chains_taken_ahead_go_back_to_the_ring_when_the_queue_stops() {
    let mut s = setup(all_features);
    let mut subs = post(&mut s, 8, 2048);
    let f = [plain_hdr(), frame(100, 12)].concat();
    inject(&mut s, &f);
    take(&mut s, &mut subs, 1);
    // The device holds the other seven, taken ahead; stopped, it reports them as not taken.
    assert_eq!(s.fe.stop_ring(RX), 1);
}

#[test]
fn the_legacy_header_has_no_num_buffers() {
    let mut s = setup(without(&[VIRTIO_NET_F_MRG_RXBUF, VIRTIO_F_VERSION_1]));
    let mut subs = post(&mut s, 2, 1524);
    let f = [&plain_hdr()[..10], &frame(1514, 13)[..]].concat();
    inject(&mut s, &f);
    let g = take(&mut s, &mut subs, 1);
    assert_eq!(g[0].1 as usize, f.len());
    assert_eq!(s.fe.written(&g[0].0, g[0].1), f);
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
