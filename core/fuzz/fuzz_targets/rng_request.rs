//! Batches of entropy requests of every chain shape into vu-devices' rng queue handler,
//! through vu-core's queue runtime on this thread, over a memfd, a pipe (refilled while the
//! device waits for it, or at end of file) or a stream socket, with and without a rate
//! limit. The handler's event descriptors are polled as its worker would.
//!
//! Oracle: never a panic; every chain comes back exactly once with a used length within its
//! writable bytes and at most 64 KiB; the bytes written, taken in used-ring order, are
//! exactly the source's bytes in order, as many as the source, the requests and the limit
//! allow together (min of the three); from a file each request is filled in full until the
//! source or the budget runs out; nothing outside the reported bytes changes (rest of the
//! writable buffers, readable buffers, guard bytes); the device's counters agree.
//!
//! The devices (one per variant), their sources, their queue handlers and guest memory are
//! made once per process; each input gets a fresh ring runtime, and the handler is put back
//! in the state a queue start gives it (`reset_handler`): nothing it holds, nothing it
//! waits for, its timer disarmed and its waker empty.

#![no_main]

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::{QueueSetup, VringShared};
use vu_core::{GuestMem, Progress, QueueHandler, QueueIo, VhostUserDevice};
use vu_core_fuzz::ring::{Area, DriverRing, Kind, Placed, RingAt};
use vu_core_fuzz::*;
use vu_devices::rng::{RngConfig, RngDevice, MAX_REQUEST_BYTES};

/// The memfd source's size; an input's `avail` bytes are its last ones.
const FILE_LEN: usize = 1 << 20;
/// Most bytes written into a pipe or socket source per input, and each time (a few
/// requests' worth: what the device does not read is emptied again before the next input).
const MAX_STREAM: usize = 96 << 10;
const MAX_FEED: usize = 16 << 10;
/// The rate limit's period: no window ends within an input.
const PERIOD: Duration = Duration::from_secs(3600);
/// The handler's event descriptors, by index (see the rng queue handler).
const TIMER_FD: usize = 0;
const WAKER_FD: usize = 1;
const SOURCE_FD: usize = 2;
/// Where buffers go (after the rings), or from just below the region boundary.
const DATA: u64 = 0x4000;
const STRADDLE: u64 = (1 << 20) - 0x1003;
/// Buffer bytes per input at most: room for several requests of every size, while
/// poisoning, filling and checking them stays cheap.
const AREA: u64 = 192 << 10;

/// The bytes every source serves, in order.
fn source_bytes() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..FILE_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// One device with its source and its queue handler.
struct Rig {
    variant: RngVariant,
    device: Arc<RngDevice>,
    /// Started once: a handler per input would cost a timerfd and an eventfd each time.
    handler: Box<dyn QueueHandler>,
    /// Its event descriptors (timer, waker, and the source when it can be polled).
    fds: Vec<RawFd>,
    /// The file's own description (its offset is the device's), or a reader sharing the
    /// pipe's or socket's description (to empty it between inputs).
    ours: Option<File>,
    /// The writing end of a pipe or socket source.
    writer: Option<File>,
}

fn nonblocking(f: &File) {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL only read and set the status flags of a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert!(fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0);
    }
}

fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (File::from(r), File::from(w))
}

fn rig(variant: RngVariant) -> Rig {
    use RngVariant::*;
    let (source, ours, writer) = match variant {
        File | FileLimited | FileTiny | FileWide => {
            let fd =
                nix::sys::memfd::memfd_create("rng-src", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                    .expect("memfd");
            let mut f = std::fs::File::from(fd);
            f.write_all(source_bytes()).expect("fill source");
            let dup = f.try_clone().expect("dup");
            (f, Some(dup), None)
        }
        Pipe | PipeLimited => {
            let (r, w) = pipe();
            let dup = r.try_clone().expect("dup");
            (r, Some(dup), Some(w))
        }
        PipeEof => (pipe().0, None, None),
        Socket => {
            let (a, b) = UnixStream::pair().expect("socketpair");
            let a = std::fs::File::from(OwnedFd::from(a));
            let dup = a.try_clone().expect("dup");
            (a, Some(dup), Some(std::fs::File::from(OwnedFd::from(b))))
        }
    };
    if let Some(w) = &writer {
        nonblocking(w);
    }
    let limit = variant.max_bytes();
    let device = RngDevice::new(RngConfig {
        source,
        queue_size: 256,
        max_bytes: limit,
        period: limit.map(|_| PERIOD),
    })
    .expect("rng device");
    let handler = device.start_queue(0).expect("queue handler");
    let fds = handler.event_fds();
    Rig {
        variant,
        device,
        handler,
        fds,
        ours,
        writer,
    }
}

/// Puts the handler back in the state a queue start gives it, on the queue it ran on (which
/// is dropped after): it holds no request (drained), its timer is disarmed with no expiry
/// pending, its waker is empty, and it waits for nothing (the timer's and the source's
/// events end either wait, as its worker would deliver them). What stays is its retry delay
/// after a source's end of file, which no input sees: the timer never fires within one.
fn reset_handler(rig: &mut Rig, q: &mut QueueIo) {
    assert_eq!(rig.handler.in_flight(), 0, "requests held after drain");
    let off = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    // SAFETY: the handler's timerfd stays open while it lives; disarming it (a zero value)
    // also drops an expiry not yet read. `off` is a valid itimerspec for the call.
    let rc = unsafe { libc::timerfd_settime(rig.fds[TIMER_FD], 0, &off, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "disarm the handler's timer");
    for i in 0..rig.fds.len() {
        rig.handler.handle_event(i, q);
    }
    let left = ready(&rig.fds[..=WAKER_FD]);
    assert!(
        left.is_empty(),
        "handler events left after a reset: {left:?}"
    );
}

struct State {
    mem: Arc<GuestMem>,
    /// The queue's view of `mem`, shared by every input's queue (one per queue start cost
    /// arc-swap's bookkeeping at each drop).
    atomic: GuestMemoryAtomic<GuestMem>,
    log: Arc<DirtyLog>,
    rigs: Vec<Rig>,
    scratch: Vec<u8>,
    /// Where a pipe or socket source is emptied to (made once: 64 KiB zeroed per input
    /// showed in profiles).
    sink: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(state());
}

fn state() -> State {
    let mem = Arc::new(
        GuestMemoryMmap::<LogBitmap>::from_ranges(
            &BLOCK_REGIONS.map(|(a, l)| (GuestAddress(a), l)),
        )
        .expect("guest memory"),
    );
    State {
        atomic: GuestMemoryAtomic::from(mem.clone()),
        mem,
        log: DirtyLog::new(),
        rigs: RngVariant::ALL.map(rig).into(),
        scratch: Vec::new(),
        sink: vec![0; 64 << 10],
    }
}

/// Writes up to `n` more source bytes (from `*written` on) into a pipe or socket; returns
/// how many went in.
fn feed(w: &mut File, written: &mut usize, n: usize) -> usize {
    let end = (*written + n).min(MAX_STREAM);
    let start = *written;
    while *written < end {
        match w.write(&source_bytes()[*written..end]) {
            Ok(k) if k > 0 => *written += k,
            _ => break,
        }
    }
    *written - start
}

/// Empties what an earlier input left in a pipe or socket.
fn empty(r: &mut File, sink: &mut [u8]) {
    while matches!(r.read(sink), Ok(n) if n > 0) {}
}

/// Sets up the source for this input; returns (first source byte, bytes it holds now).
fn prepare(rig: &mut Rig, input: &RngInput, sink: &mut [u8]) -> (usize, usize) {
    use RngVariant::*;
    match rig.variant {
        File | FileLimited | FileTiny | FileWide => {
            let avail = (input.avail as usize).min(FILE_LEN);
            let f = rig.ours.as_mut().expect("file");
            f.seek(SeekFrom::Start((FILE_LEN - avail) as u64))
                .expect("seek source");
            (FILE_LEN - avail, avail)
        }
        Pipe | PipeLimited | Socket => {
            empty(rig.ours.as_mut().expect("reader"), sink);
            let mut written = 0;
            let w = rig.writer.as_mut().expect("writer");
            feed(w, &mut written, (input.avail as usize).min(MAX_FEED));
            (0, written)
        }
        PipeEof => (0, 0),
    }
}

/// The event descriptors (at most 3) that are readable now, as a bit set by index.
fn ready(fds: &[RawFd]) -> Ready {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 3];
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    let n = fds.len().min(p.len());
    // SAFETY: `p` holds `n` initialised pollfds for the duration of the call.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, 0) };
    let mut r = Ready(0);
    if rc > 0 {
        for (i, slot) in p[..n].iter().enumerate() {
            if slot.revents != 0 {
                r.0 |= 1 << i;
            }
        }
    }
    r
}

/// Indexes of ready event descriptors, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ready(u8);

impl Ready {
    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        (0..8).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// Runs the queue as its worker would (process, then the events that are ready), feeding
/// a pipe or socket source `refill` bytes whenever the handler waits with nothing ready.
/// Returns the source bytes fed meanwhile.
fn run_queue(rig: &mut Rig, q: &mut QueueIo, input: &RngInput, fed: usize) -> usize {
    let (h, fds) = (rig.handler.as_mut(), &rig.fds);
    let mut written = fed;
    let mut refills = 0;
    let mut idle = 0;
    for _ in 0..(8 + 2 * MAX_RNG_REFILLS) {
        let before = q.next_used();
        let p = h.process(q);
        q.flush();
        let ready = ready(fds);
        if p == Progress::Drained && h.in_flight() == 0 && ready.is_empty() {
            break;
        }
        for i in ready.iter() {
            h.handle_event(i, q);
        }
        let mut fed_now = false;
        let can_feed = fds.len() > SOURCE_FD && input.refill > 0 && refills < MAX_RNG_REFILLS;
        if let (true, true, Some(w)) = (ready.is_empty(), can_feed, rig.writer.as_mut()) {
            refills += 1;
            fed_now = feed(w, &mut written, usize::from(input.refill).min(MAX_FEED)) > 0;
        }
        // Waiting for what no input brings (the limit's next period, a source at its end).
        idle = if q.next_used() == before && !fed_now {
            idle + 1
        } else {
            0
        };
        if idle >= 2 {
            break;
        }
    }
    h.drain(q);
    q.flush();
    assert_eq!(h.in_flight(), 0, "requests left in flight after drain");
    written
}

/// Whether the core hands this chain to the device (its walker accepts it).
fn proper(p: &Placed, r: &RngRequest, indirect_ok: bool) -> bool {
    let mut seen_write = false;
    for d in &r.descs {
        match d.kind {
            Kind::Readable if seen_write => return false,
            Kind::Readable => {}
            _ => seen_write = true,
        }
    }
    !p.outside && (!r.indirect || indirect_ok)
}

/// Places the batch; returns the chains with whether each reaches the device.
fn place(ring: &mut DriverRing, input: &RngInput) -> Vec<(Placed, bool)> {
    let start = if input.straddle { STRADDLE } else { DATA };
    let mut area = Area {
        cursor: start,
        end: start + AREA,
    };
    let mut batch = Vec::new();
    for r in &input.requests {
        let Some(p) = ring.place(&mut area, &r.descs, r.indirect, |_, _| {}) else {
            break;
        };
        let ok = proper(&p, r, ring.indirect_ok());
        batch.push((p, ok));
    }
    ring.publish();
    batch
}

fn queue_io(s: &State, at: RingAt, input: &RngInput) -> QueueIo {
    let setup = QueueSetup {
        index: 0,
        size: at.size,
        desc: at.desc,
        avail: at.avail,
        used: at.used,
        base: 0,
        event_idx: input.event_idx,
        indirect: input.indirect,
    };
    let shared = Arc::new(VringShared::default());
    QueueIo::new(&setup, s.atomic.clone(), None, s.log.clone(), shared).expect("queue")
}

fn run(s: &mut State, data: &[u8]) {
    let input = parse_rng(data);
    let host = HostMem::new(&s.mem);
    let at = RingAt {
        desc: 0,
        avail: 0x1000,
        used: 0x2000,
        size: RNG_QUEUE_SIZES[usize::from(input.queue_size & 3)],
    };
    let mut ring = DriverRing::new(host, at, input.indirect);
    let batch = place(&mut ring, &input);
    let mut q = queue_io(s, at, &input);
    let rig = &mut s.rigs[input.variant as usize];
    let (first, fed) = prepare(rig, &input, &mut s.sink);
    // A fresh budget: the limit's window opens with the first request.
    rig.device.restore(&[]).expect("restore");
    let before = rig.device.stats();
    let supply = run_queue(rig, &mut q, &input, fed);
    let popped = usize::from(q.next_avail());
    reset_handler(rig, &mut q);
    drop(q);
    let stats = rig.device.stats();
    let out = Outcome {
        popped,
        first,
        supply,
    };
    check(&ring, &batch, rig.variant, &out, host, &mut s.scratch);
    if std::env::var_os("VU_FUZZ_DEBUG").is_some() {
        eprintln!(
            "{input:#?}\npopped {popped} of {}; {before:?} -> {stats:?}",
            batch.len()
        );
        for (p, ok) in &batch {
            eprintln!("{ok} {p:?}");
        }
    }
    let taken = &batch[..popped];
    let proper_n = taken.iter().filter(|(_, ok)| *ok).count() as u64;
    let empty_n = taken
        .iter()
        .filter(|(p, ok)| *ok && p.writable == 0)
        .count() as u64;
    assert_eq!(
        stats.requests_total - before.requests_total,
        proper_n,
        "requests counted"
    );
    assert_eq!(
        stats.empty_requests_total - before.empty_requests_total,
        empty_n,
        "empty requests counted"
    );
    let total: u64 = (0..ring.used_idx())
        .map(|i| u64::from(ring.used_elem(i).1))
        .sum();
    assert_eq!(
        stats.bytes_total - before.bytes_total,
        total,
        "bytes counted"
    );
}

/// What a run did with the batch and the source.
struct Outcome {
    /// Chains the queue took from the ring (the first ones of the batch).
    popped: usize,
    /// The source's first byte for this input.
    first: usize,
    /// Source bytes there were.
    supply: usize,
}

/// The used ring against the batch and the source. Chains the device did not take stay in
/// the ring (it waits for the budget or the source): only the last ones, and only when the
/// budget or the source is spent.
fn check(
    ring: &DriverRing,
    batch: &[(Placed, bool)],
    variant: RngVariant,
    out: &Outcome,
    host: HostMem,
    scratch: &mut Vec<u8>,
) {
    let n = ring.used_idx();
    assert_eq!(
        usize::from(n),
        out.popped,
        "every request taken is completed"
    );
    let mut seen = vec![false; out.popped];
    let mut by_head = vec![None; 256];
    for (i, (p, _)) in batch[..out.popped].iter().enumerate() {
        by_head[usize::from(p.head)] = Some(i);
    }
    // Bytes delivered so far (each request's are compared with the source's as they come).
    let mut got = 0usize;
    let mut short = false;
    let mut starved = false;
    let share = |p: &Placed| p.writable.min(MAX_REQUEST_BYTES);
    for k in 0..n {
        let (id, len) = ring.used_elem(k);
        let i = usize::try_from(id)
            .ok()
            .and_then(|h| by_head.get(h).copied().flatten())
            .unwrap_or_else(|| panic!("used id {id} is no taken request's head"));
        assert!(!seen[i], "request {i} completed twice");
        seen[i] = true;
        let (p, ok) = &batch[i];
        assert!(
            len <= share(p),
            "request {i}: {len} bytes, more than its share"
        );
        assert!(
            *ok || len == 0,
            "request {i}: refused chain with {len} bytes"
        );
        starved |= *ok && len == 0 && share(p) > 0;
        if let Err(e) = p.check_untouched(host, len, true) {
            panic!("request {i}: {e}");
        }
        if variant.is_file() && *ok && share(p) > 0 {
            // A file never reads short: full shares until the source or budget runs out.
            assert!(!short || len == 0, "request {i} filled after a short one");
            short |= len < share(p);
        }
        let at = out.first + got;
        let src = source_bytes().get(at..at + len as usize);
        assert!(
            src.is_some_and(|b| p.written_is(host, b, scratch)),
            "request {i}: its {len} bytes are not the source's next ones"
        );
        got += len as usize;
    }
    for (i, (p, _)) in batch.iter().enumerate().skip(out.popped) {
        if let Err(e) = p.check_untouched(host, 0, true) {
            panic!("request {i}, never taken: {e}");
        }
    }
    let demand: usize = batch
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(p, _)| share(p) as usize)
        .sum();
    let limit = variant.max_bytes().map_or(usize::MAX, |m| m as usize);
    let spent = out.supply.min(limit);
    let want = demand.min(spent);
    let what = format!("demand {demand}, supply {}, limit {limit}", out.supply);
    if variant.is_file() {
        assert_eq!(got, want, "bytes delivered: {what}");
    } else {
        // A read from a pipe or socket may come up short: the request is completed with
        // what came (its share is not owed any more).
        assert!(got <= want, "bytes delivered: {got}; {what}");
    }
    // A request that got nothing, or was not even taken, waited for the source or the
    // budget: only when it is spent.
    if starved || out.popped < batch.len() {
        assert_eq!(
            got, spent,
            "requests starved with budget and source to spare; {what}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| run(&mut s.borrow_mut(), data));
});
