//! virtio-net transmit (guest to tap) through the core's real handler and worker threads, with
//! a SOCK_SEQPACKET socket standing in for the tap: frames arrive byte-exact whatever the chain
//! shape; malformed chains are dropped and counted and the queue goes on; a full tap makes the
//! queue wait (without spinning) and loses nothing, across a sleep too.

mod common;

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::net::*;
use common::{Buf, Frontend};
use vu_devices::net::{NetConfig, NetDevice};

const QSIZE: u16 = 256;
const TX: usize = 1;
const WAIT: Duration = Duration::from_secs(20);

/// One device at a time: tests that check a worker thread's CPU time find it by name.
static SERIAL: Mutex<()> = Mutex::new(());

struct Setup {
    _serial: MutexGuard<'static, ()>,
    fe: Frontend,
    dev: Arc<NetDevice>,
    peer: File,
}

fn setup() -> Setup {
    setup_sndbuf(None)
}

/// `small`: a tap that a few frames fill.
fn setup_with(small: bool) -> Setup {
    setup_sndbuf(small.then_some(4096))
}

/// With the device end's SO_SNDBUF set to `sndbuf` (the kernel doubles it): a socket refuses
/// larger frames (EMSGSIZE) and fills after a few.
fn setup_sndbuf(sndbuf: Option<i32>) -> Setup {
    let serial = serial();
    let (dev_end, peer) = frame_pair();
    if let Some(bytes) = sndbuf {
        small_sndbuf(&dev_end, bytes);
    }
    let dev = NetDevice::new(NetConfig {
        taps: vec![dev_end],
        queue_pairs: 1,
        queue_size: QSIZE,
        mtu: None,
        mac: None,
    })
    .expect("device");
    let fe = Frontend::new(dev.clone(), 2, QSIZE);
    Setup {
        _serial: serial,
        fe,
        dev,
        peer,
    }
}

fn send(s: &mut Setup, bufs: &[Buf]) {
    let sub = s.fe.submit(TX, bufs);
    s.fe.kick(TX);
    let used = s.fe.wait(TX, 1);
    assert_eq!(
        used,
        vec![(u32::from(sub.head), 0)],
        "completed with length 0"
    );
}

fn recv(s: &mut Setup) -> Vec<u8> {
    recv_timeout(&mut s.peer, WAIT).expect("a frame on the tap")
}

#[test]
fn frames_reach_the_tap_byte_exact_whatever_the_chain_shape() {
    let mut s = setup();
    let h = plain_hdr();
    let f = frame(60, 1);
    let whole = [h.clone(), f.clone()].concat();
    // Header and frame in one buffer.
    send(&mut s, &[Buf::Out(whole.clone())]);
    assert_eq!(recv(&mut s), whole);
    // Header alone, then the frame in pieces, some misaligned.
    let f = frame(1514, 2);
    send(
        &mut s,
        &[
            Buf::Out(h.clone()),
            Buf::OutAt(f[..7].to_vec(), 3),
            Buf::Out(f[7..600].to_vec()),
            Buf::OutAt(f[600..].to_vec(), 1),
        ],
    );
    assert_eq!(recv(&mut s), [h.clone(), f].concat());
    // The header split across buffers.
    let f = frame(100, 3);
    send(
        &mut s,
        &[
            Buf::Out(h[..5].to_vec()),
            Buf::Out([&h[5..], &f[..]].concat()),
        ],
    );
    assert_eq!(recv(&mut s), [h.clone(), f].concat());
    // A writable buffer after the frame is ignored.
    let f = frame(64, 4);
    send(&mut s, &[Buf::Out([&h[..], &f[..]].concat()), Buf::In(64)]);
    assert_eq!(recv(&mut s), [h.clone(), f].concat());
    // A 64 KiB TSO frame (the largest TCP/IPv4 segment), its header in front.
    let big = tcp4_frame(MAX_TCP4_PAYLOAD, 5);
    let th = hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1448, (34, 16));
    let pieces: Vec<Buf> = std::iter::once(Buf::Out(th.clone()))
        .chain(big.chunks(4096).map(|c| Buf::Out(c.to_vec())))
        .collect();
    send(&mut s, &pieces);
    assert_eq!(recv(&mut s), [th, big].concat());
    // The largest frame the device takes: 64 KiB plus an Ethernet header.
    let largest = [plain_hdr(), frame(65550, 6)].concat();
    send(&mut s, &[Buf::Out(largest.clone())]);
    assert_eq!(recv(&mut s), largest);
    let st = s.dev.stats();
    assert_eq!(st.tx_packets, 6);
    assert_eq!(st.tx_bytes, 60 + 1514 + 100 + 64 + 65549 + 65550);
    assert_eq!(st.tx_dropped_malformed, 0);
}

#[test]
fn malformed_chains_are_dropped_and_counted_and_the_queue_goes_on() {
    let mut s = setup();
    let h = plain_hdr();
    // A header under 12 bytes.
    send(&mut s, &[Buf::Out(vec![0; 8])]);
    // Only writable buffers.
    send(&mut s, &[Buf::In(1500)]);
    // A frame over 64 KiB plus the Ethernet header.
    send(&mut s, &[Buf::Out(h.clone()), Buf::Out(frame(65551, 6))]);
    assert_eq!(s.dev.stats().tx_dropped_malformed, 3);
    // A buffer outside guest memory: the core refuses the chain before the device sees it.
    let head = s.fe.submit_descs(TX, &[(1 << 40, 1500, false)]);
    s.fe.kick(TX);
    assert_eq!(s.fe.wait(TX, 1), vec![(u32::from(head), 0)]);
    assert_eq!(s.fe.handler.status().queues[TX].chain_errors, 1);
    // Nothing reached the tap; the next good frame does.
    let f = frame(200, 7);
    send(&mut s, &[Buf::Out([&h[..], &f[..]].concat())]);
    assert_eq!(recv(&mut s), [h, f].concat());
    assert_eq!(s.dev.stats().tx_packets, 1);
}

/// Submits `n` frames at once and kicks; returns them as the tap should see them.
fn burst(s: &mut Setup, n: usize, len: usize) -> Vec<Vec<u8>> {
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| [plain_hdr(), frame(len, i as u8)].concat())
        .collect();
    let chains: Vec<Vec<Buf>> = frames.iter().map(|f| vec![Buf::Out(f.clone())]).collect();
    s.fe.submit_batch(TX, &chains);
    s.fe.kick(TX);
    frames
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_full_tap_makes_the_queue_wait_without_spinning_and_loses_nothing() {
    let before = threads("net-q");
    let mut s = setup_with(true);
    let tx_thread = new_threads("net-q1", &before, 1);
    // Nobody reads the tap: it fills after a few frames (the socket's queue limit).
    let frames = burst(&mut s, 64, 1000);
    wait_for("the tap to fill", || s.dev.stats().tx_tap_full > 0);
    assert_idle(&tx_thread, "waiting for room in the tap");
    let sent = s.dev.stats().tx_packets;
    assert!(sent < 64, "the tap took {sent} frames");
    // Reading the tap makes room; every frame arrives once, in order.
    for f in &frames {
        assert_eq!(&recv(&mut s), f);
    }
    let used = s.fe.wait(TX, 64);
    assert!(used.iter().all(|(_, len)| *len == 0));
    assert!(recv_timeout(&mut s.peer, Duration::from_millis(50)).is_none());
    assert_eq!(s.dev.stats().tx_packets, 64);
}

#[test]
fn a_frame_waiting_for_room_goes_back_to_the_ring_across_a_sleep() {
    let mut s = setup_with(true);
    let frames = burst(&mut s, 32, 500);
    wait_for("the tap to fill", || s.dev.stats().tx_tap_full > 0);
    s.fe.handler.sleep().expect("sleep");
    // Asleep: the frames the tap took can be read; nothing else is written.
    let mut got = Vec::new();
    while let Some(f) = recv_timeout(&mut s.peer, Duration::from_millis(100)) {
        got.push(f);
    }
    let taken = got.len();
    assert!(taken < 32);
    assert_eq!(
        s.fe.pending_used(TX) as usize,
        taken,
        "only sent frames are used"
    );
    s.fe.handler.wake().expect("wake");
    while got.len() < 32 {
        got.push(recv(&mut s));
    }
    assert_eq!(got, frames, "each frame once, in order");
    s.fe.wait(TX, 32);
    assert!(recv_timeout(&mut s.peer, Duration::from_millis(50)).is_none());
}

#[test]
fn frames_the_tap_refuses_are_dropped_and_counted() {
    let mut s = setup();
    // The tap end stops receiving: every write fails (EPIPE).
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s.peer);
    // SAFETY: shutdown only changes the state of a socket we own.
    assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RD) }, 0);
    let frames = burst(&mut s, 5, 100);
    let used = s.fe.wait(TX, frames.len());
    assert!(used.iter().all(|(_, len)| *len == 0));
    let st = s.dev.stats();
    assert_eq!((st.tx_dropped_write_error, st.tx_packets), (5, 0));
}

#[test]
fn a_long_burst_arrives_in_order_in_batches() {
    let mut s = setup();
    // Several submissions' worth of frames at once, read while they are written (the
    // socket may fill on the way: those wait their turn).
    let frames = burst(&mut s, 200, 300);
    for f in &frames {
        assert_eq!(&recv(&mut s), f);
    }
    s.fe.wait(TX, 200);
    assert!(recv_timeout(&mut s.peer, Duration::from_millis(50)).is_none());
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_write_error), (200, 0));
}

#[test]
fn a_malformed_chain_in_the_middle_of_a_batch_is_dropped_alone() {
    let mut s = setup();
    let good: Vec<Vec<u8>> = (0..10)
        .map(|i| [plain_hdr(), frame(100, i as u8)].concat())
        .collect();
    let mut chains: Vec<Vec<Buf>> = good.iter().map(|f| vec![Buf::Out(f.clone())]).collect();
    // Between frames 4 and 5 of the same submission: a header under 12 bytes, and a chain
    // with only writable buffers.
    chains.insert(5, vec![Buf::Out(vec![0; 8])]);
    chains.insert(6, vec![Buf::In(1500)]);
    s.fe.submit_batch(TX, &chains);
    s.fe.kick(TX);
    let used = s.fe.wait(TX, 12);
    assert!(used.iter().all(|(_, len)| *len == 0));
    for f in &good {
        assert_eq!(&recv(&mut s), f);
    }
    assert!(recv_timeout(&mut s.peer, Duration::from_millis(50)).is_none());
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_malformed), (10, 2));
}

#[test]
fn a_full_tap_in_the_middle_of_a_batch_keeps_the_rest_in_order() {
    let mut s = setup_with(true);
    // The first submission's frames fill the tap part way through: those after the first
    // that met the full tap wait, in order, and follow once it has room.
    let frames = burst(&mut s, 40, 1500);
    wait_for("the tap to fill", || s.dev.stats().tx_tap_full > 0);
    let sent = s.dev.stats().tx_packets;
    assert!(sent > 0 && sent < 40, "the tap took {sent} frames");
    assert_eq!(s.fe.pending_used(TX) as usize, sent as usize);
    for f in &frames {
        assert_eq!(&recv(&mut s), f);
    }
    s.fe.wait(TX, 40);
    assert!(recv_timeout(&mut s.peer, Duration::from_millis(50)).is_none());
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_write_error), (40, 0));
}

#[test]
fn a_refused_frame_in_the_middle_of_a_batch_is_dropped_alone() {
    let mut s = setup_sndbuf(Some(16384));
    let h = plain_hdr();
    // A frame the socket refuses (EMSGSIZE: over the largest message its send buffer takes)
    // between good ones of the same submission.
    let good: Vec<Vec<u8>> = (0..6)
        .map(|i| [h.clone(), frame(100, i as u8)].concat())
        .collect();
    let mut chains: Vec<Vec<Buf>> = good.iter().map(|f| vec![Buf::Out(f.clone())]).collect();
    chains.insert(3, vec![Buf::Out(h.clone()), Buf::Out(frame(60000, 9))]);
    s.fe.submit_batch(TX, &chains);
    s.fe.kick(TX);
    s.fe.wait(TX, 7);
    for f in &good {
        assert_eq!(&recv(&mut s), f);
    }
    let st = s.dev.stats();
    assert_eq!((st.tx_packets, st.tx_dropped_write_error), (6, 1));
}

/// The io_uring instances this process holds open: (inode, SQEs submitted so far) from
/// each one's fdinfo.
fn rings() -> Vec<(u64, u64)> {
    let field = |info: &str, name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in io_uring fdinfo"))
    };
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            if target.as_os_str() != "anon_inode:[io_uring]" {
                return None;
            }
            let fd = e.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.to_str()?)).ok()?;
            Some((field(&info, "ino:"), field(&info, "SqTail:")))
        })
        .collect()
}

#[test]
fn after_a_full_tap_a_batch_is_about_what_the_tap_took() {
    let mut s = setup_with(true);
    let before = rings();
    // The tap takes a few frames, then frames are read slowly: each time the tap has room
    // again, it is for a few. A batch of 32 writes each time would prepare and cancel the
    // rest.
    let frames = burst(&mut s, 64, 1000);
    wait_for("the tap to fill", || s.dev.stats().tx_tap_full > 0);
    for f in &frames {
        assert_eq!(&recv(&mut s), f);
        std::thread::sleep(Duration::from_millis(1));
    }
    s.fe.wait(TX, 64);
    // What each ring submitted meanwhile (the queue may have set it up before or after
    // `before` was taken).
    let sqes: u64 = rings()
        .iter()
        .map(|&(ino, now)| {
            let then = before.iter().find(|r| r.0 == ino).map_or(0, |r| r.1);
            now - then
        })
        .sum();
    assert!(
        (1..3 * 64).contains(&sqes),
        "{sqes} writes submitted for 64 frames"
    );
}

#[test]
fn a_restarted_queue_takes_the_ring_its_last_start_left() {
    let mut s = setup();
    let mut first = None;
    for round in 0..4u8 {
        // Several frames at once: they go to the tap through the ring.
        let frames = burst(&mut s, 40, 200 + usize::from(round));
        for f in &frames {
            assert_eq!(&recv(&mut s), f, "round {round}");
        }
        s.fe.wait(TX, 40);
        // Each ring's inode (distinct per ring on kernels that give io_uring its own inode).
        let mut now: Vec<u64> = rings().iter().map(|&(ino, _)| ino).collect();
        now.sort_unstable();
        assert!(!now.is_empty(), "the queue has a ring");
        assert_eq!(
            &now,
            first.get_or_insert_with(|| now.clone()),
            "round {round}: a new ring for a new start of the queue"
        );
        // A driver reset: the queue stops and starts again.
        s.fe.stop_ring(TX);
        s.fe.restart_ring(TX, QSIZE);
    }
    assert_eq!(s.dev.stats().tx_packets, 160);
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
