//! The virtio-net transmit path of vu-devices over arbitrary chain shapes (`vu_core_fuzz::
//! net_tx`): header lengths of every negotiated shape, chains of 1 to 8 descriptors in
//! ring or indirect tables, readable and writable buffers in any order, empty, 64 KiB and
//! longer buffers, buffers straddling the end of guest memory or outside it, loops, bad and
//! repeated heads. The device's transmit handler runs on a `QueueIo` in this thread, its
//! "tap" a SOCK_SEQPACKET socket (one frame per message) with a small send buffer: it fills
//! up after a few frames, and refuses frames longer than it holds (as a tap refuses what it
//! cannot take).
//!
//! Oracle: never a panic; every chain the queue took comes back in the used ring with
//! length 0; the frames that reach the socket are exactly, in order, the readable bytes of
//! the chains the core's walker accepts whose length is a header up to a header plus
//! 65550 bytes and that fit the socket; the longer ones are counted as write errors; the
//! device's counters agree.
//!
//! Speed: everything that can be is made once per process (guest memory and the pattern
//! in its buffers, the device, the socket, the buffers frames are read into); per input only
//! the rings and tables are written. The send buffer keeps frames short (the kernel copies
//! no byte of a frame it refuses), which is most of the gain: see core/fuzz/README.md.

#![no_main]

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::QueueSetup;
use vu_core::{Chain, GuestMem, Progress, QueueIo, VhostUserDevice};
use vu_core_fuzz::net_tx::{
    build, parse_net_tx, Fill, AVAIL, DESC_TABLE, F_INDIRECT, F_NEXT, NET_REGIONS, USED,
};
use vu_core_fuzz::queue_reuse::reuse_queue;
use vu_devices::net::{NetConfig, NetDevice};

const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const INDIRECT_DESC: u64 = 1 << 28;
const EVENT_IDX: u64 = 1 << 29;
/// CSUM, HOST_TSO4/6, HOST_ECN, HOST_UFO: what the driver may ask of the device on transmit.
const HOST_OFFLOADS: u64 = 1 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14;
const MAX_FRAME: usize = 65550;

struct Rig {
    mem: Arc<GuestMem>,
    /// The queue's view of `mem`, made once (as a device's queues share one).
    atomic: GuestMemoryAtomic<GuestMem>,
    log: Arc<DirtyLog>,
    dev: Arc<NetDevice>,
    peer: File,
    /// The largest frame the "tap" takes: larger ones are refused (EMSGSIZE, before any
    /// byte is copied) and the device drops them as write errors.
    limit: usize,
}

/// The "tap"'s send buffer (the kernel doubles it, to at least its minimum of about 4.5 KiB).
/// A seqpacket socket refuses a message longer than its send buffer less 32 bytes: frames
/// above that cost the fuzzer nothing (the kernel copies none of their bytes) and reach the
/// device's write error path, while frames below it are carried and read back whole. One or
/// two frames fill the buffer (and the peer's queue holds 10), so the device's full-tap path
/// comes often.
const SNDBUF: libc::c_int = 2 << 10;

/// Sets `fd`'s send buffer to [`SNDBUF`]; the largest message it then takes.
fn limit_sndbuf(fd: std::os::fd::RawFd) -> usize {
    let want = SNDBUF;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; the option value is a c_int of `len` bytes.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&want as *const libc::c_int).cast(),
            len,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUF");
    let mut got: libc::c_int = 0;
    let mut got_len = len;
    // SAFETY: as above; the kernel writes at most `got_len` bytes into `got`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut got_len,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUF");
    usize::try_from(got).expect("send buffer size") - 32
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = NET_REGIONS
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        let mem: GuestMemoryMmap<LogBitmap> =
            GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two new descriptors into `fds`.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair");
        // SAFETY: socketpair made both descriptors; each has this one owner.
        let (ours, peer) = unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        };
        let limit = limit_sndbuf(fds[0]);
        let dev = NetDevice::new(NetConfig {
            taps: vec![ours],
            queue_pairs: 1,
            queue_size: 256,
            mtu: None,
            mac: None,
        })
        .expect("net device");
        // Buffer contents are written once: every 4-byte word of the buffer areas holds its
        // own guest address, so a frame whose bytes come from the wrong place, in the wrong
        // order or cut short differs from its chain's bytes. The device never writes to
        // transmit buffers, so the pattern stays for the life of the process.
        for &(start, end) in &[(RINGS_END, NET_REGIONS[0].1 as u64), region_b()] {
            let words: Vec<u8> = (start / 4..end / 4)
                .flat_map(|w| ((w * 4) as u32).to_le_bytes())
                .collect();
            mem.write_slice(&words, GuestAddress(start))
                .expect("buffer pattern");
        }
        let mem = Arc::new(mem);
        Rig {
            atomic: GuestMemoryAtomic::from(mem.clone()),
            log: DirtyLog::new(),
            mem,
            dev,
            peer,
            limit,
        }
    })
}

/// Where rings and tables end and buffers begin in region A.
const RINGS_END: u64 = 0x8000;

fn region_b() -> (u64, u64) {
    (NET_REGIONS[1].0, NET_REGIONS[1].0 + NET_REGIONS[1].1 as u64)
}

/// Frames read from the socket, kept in buffers reused from input to input (a fresh
/// allocation per frame cost more than the device's work).
#[derive(Default)]
struct Frames {
    bytes: Vec<u8>,
    /// (start, length) in `bytes`, in order.
    spans: Vec<(usize, usize)>,
}

impl Frames {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    fn get(&self, i: usize) -> &[u8] {
        let (start, len) = self.spans[i];
        &self.bytes[start..start + len]
    }

    /// Appends the frames waiting in the socket, in order.
    fn drain(&mut self, peer: &File) {
        // A frame is at most a header + 65550 bytes; a larger one would be cut short
        // (and differ from its chain).
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 17]);
        }
        BUF.with_borrow_mut(|buf| {
            while let Ok(n) = (&*peer).read(buf) {
                self.spans.push((self.bytes.len(), n));
                self.bytes.extend_from_slice(&buf[..n]);
            }
        })
    }
}

/// The used ring's entries (id, len), in order; read in one piece.
fn used_ring(mem: &GuestMem, size: u16) -> Vec<(u32, u32)> {
    let mut ring = [0u8; 4 + 8 * 256];
    let ring = &mut ring[..4 + 8 * usize::from(size)];
    mem.read_slice(ring, GuestAddress(USED)).expect("used ring");
    let idx = u16::from_le_bytes([ring[2], ring[3]]);
    let word = |at: usize| u32::from_le_bytes([ring[at], ring[at + 1], ring[at + 2], ring[at + 3]]);
    (0..idx)
        .map(|i| {
            let e = 4 + 8 * usize::from(i % size);
            (word(e), word(e + 4))
        })
        .collect()
}

/// The ring's descriptor table as the oracle reads it: (flags, next) per descriptor.
struct DescTable {
    links: [(u16, u16); 256],
    size: u16,
}

impl DescTable {
    fn read(mem: &GuestMem, size: u16) -> DescTable {
        let mut raw = [0u8; 16 * 256];
        let raw = &mut raw[..16 * usize::from(size)];
        mem.read_slice(raw, GuestAddress(DESC_TABLE))
            .expect("descriptor table");
        let mut links = [(0, 0); 256];
        for (i, d) in raw.chunks_exact(16).enumerate() {
            links[i] = (
                u16::from_le_bytes([d[12], d[13]]),
                u16::from_le_bytes([d[14], d[15]]),
            );
        }
        DescTable { links, size }
    }

    /// Whether the chain at `head` comes back to a descriptor it passed, through plain
    /// descriptors only (NEXT set, INDIRECT not, next in range): a chain without end,
    /// which any walker must refuse. Everything else is left to the core's walker, so the
    /// oracle need not walk a looping chain up to the queue size again (most of its cost).
    fn cycles(&self, head: u16) -> bool {
        let mut seen = [0u64; 4];
        let mut i = head;
        loop {
            if i >= self.size {
                return false;
            }
            let (w, b) = (usize::from(i / 64), i % 64);
            if seen[w] & 1 << b != 0 {
                return true;
            }
            seen[w] |= 1 << b;
            let (flags, next) = self.links[usize::from(i)];
            if flags & F_NEXT == 0 || flags & F_INDIRECT != 0 {
                return false;
            }
            i = next;
        }
    }
}

thread_local! {
    /// The transmit queue between inputs.
    static QUEUE: std::cell::Cell<Option<QueueIo>> = const { std::cell::Cell::new(None) };
    /// Rings and tables, as laid out for one input.
    static IMAGE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; RINGS_END as usize]);
    /// The frames the device sent, and a chain's bytes as the oracle reads them.
    static SCRATCH: std::cell::RefCell<(Frames, Vec<u8>)> =
        std::cell::RefCell::new((Frames::default(), Vec::new()));
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let input = parse_net_tx(data);
    let size = input.queue_size();
    let layout = build(&input);
    let mem = &rig.mem;
    // Fresh rings and tables, laid out here and written in one piece; buffers hold their
    // fixed pattern (see `rig`), which the oracle reads from the same memory the device
    // does.
    IMAGE.with_borrow_mut(|image| {
        image.fill(0);
        for (addr, what) in &layout.writes {
            let bytes = match what {
                Fill::Bytes(b) => b.as_slice(),
                Fill::Desc(d) => d.as_slice(),
            };
            // Every table lies below the buffers.
            let at = usize::try_from(*addr).expect("table address");
            image[at..at + bytes.len()].copy_from_slice(bytes);
        }
        // The available ring: flags, idx, the entries.
        let avail = &mut image[AVAIL as usize..];
        avail[2..4].copy_from_slice(&(layout.avail.len() as u16).to_le_bytes());
        for (i, h) in layout.avail.iter().enumerate() {
            avail[4 + 2 * i..6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        mem.write_slice(&image[..], GuestAddress(0))
            .expect("rings and tables");
    });

    let features = match input.features & 3 {
        0 => VERSION_1,
        1 => MRG_RXBUF,
        2 => 0,
        _ => VERSION_1 | HOST_OFFLOADS,
    } | if input.flags & 1 != 0 {
        INDIRECT_DESC
    } else {
        0
    } | if input.flags & 2 != 0 { EVENT_IDX } else { 0 };
    let hdr_len = if features & (VERSION_1 | MRG_RXBUF) != 0 {
        12
    } else {
        10
    };
    rig.dev.set_features(features).expect("features");
    let before = rig.dev.stats();
    let mut handler = rig.dev.start_queue(1).expect("transmit queue");
    let setup = QueueSetup {
        index: 1,
        size,
        desc: DESC_TABLE,
        avail: AVAIL,
        used: USED,
        base: 0,
        event_idx: features & EVENT_IDX != 0,
        indirect: features & INDIRECT_DESC != 0,
    };
    // The queue is built once per process and put back in a queue start's state for every
    // input (`reuse_queue`).
    let mut q = reuse_queue(QUEUE.take(), &setup, &rig.atomic, &rig.log, true);
    SCRATCH.with_borrow_mut(|(frames, chain_bytes)| {
        frames.clear();
        // Each round sends what the socket takes; the frames are read between rounds.
        let mut rounds = 0;
        loop {
            let p = handler.process(&mut q);
            q.flush();
            frames.drain(&rig.peer);
            rounds += 1;
            if matches!(p, Progress::Drained) {
                break;
            }
            assert!(rounds < 4 * 64 + 8, "the transmit queue never drains");
        }
        handler.drain(&mut q);
        q.flush();
        drop(handler);
        frames.drain(&rig.peer);

        // What should have been sent: the walker's verdict on each chain that came back,
        // compared frame by frame.
        let used = used_ring(mem, size);
        let table = DescTable::read(mem, size);
        let (mut expected, mut refused) = (0, 0);
        let mut chain = Chain::default();
        for &(id, len) in &used {
            assert!(id < u32::from(size), "used id {id} out of range");
            assert_eq!(len, 0, "a transmit chain came back with length {len}");
            if table.cycles(id as u16) {
                continue;
            }
            let ok = chain
                .walk(
                    mem,
                    GuestAddress(DESC_TABLE),
                    size,
                    id as u16,
                    setup.indirect,
                )
                .is_ok();
            let n = chain.readable_len() as usize;
            if ok && n >= hdr_len && n <= hdr_len + MAX_FRAME {
                if n > rig.limit {
                    refused += 1;
                    continue;
                }
                chain_bytes.resize(n, 0);
                assert_eq!(chain.read_at(0, chain_bytes), n);
                assert!(
                    expected < frames.spans.len(),
                    "fewer frames sent than well-formed chains"
                );
                assert!(
                    frames.get(expected) == chain_bytes.as_slice(),
                    "frame {expected} differs from its chain's bytes"
                );
                expected += 1;
            }
        }
        assert_eq!(
            frames.spans.len(),
            expected,
            "frames sent vs. well-formed chains"
        );
        let after = rig.dev.stats();
        assert_eq!(after.tx_packets - before.tx_packets, expected as u64);
        assert_eq!(
            after.tx_dropped_write_error - before.tx_dropped_write_error,
            refused,
            "frames the tap refused vs. chains longer than it takes"
        );
        assert!(used.len() <= layout.avail.len());
    });
    QUEUE.set(Some(q));
});
