//! Guest packets of every op, type, length, flag, address and credit shape into vu-devices'
//! vsock device through its TX queue handler, one at a time, on a `QueueIo` in this thread,
//! among what the rest of the world does (`vu_core_fuzz::vsock`): the guest reads its
//! receive queue (the RX handler runs here too), host programs connect through the
//! listener, write, read, shut down and close, the broker answers at once, later or with a
//! refusal, and a linked sibling takes packets until its link is full.
//!
//! Oracle: never a panic; every TX chain comes back once, with length 0, before the next is
//! placed; hostile packets (short, spoofed, unknown type or op, lengths that do not fit,
//! seqpacket for the host, unknown CIDs, too long for a sibling) move exactly the counter
//! the device's rules name and get exactly the RST reply those rules owe them, in order;
//! packets for the host move only counters the connection rules allow; the device asks the
//! broker for exactly the port the guest asked for; what crosses to a sibling is the packet
//! as the guest wrote it, in order; host programs receive exactly the guest's payloads on
//! their connection, in order, all of them while the connection lives (after their `OK`
//! line); the guest receives exactly what host programs wrote, within the credit it
//! announced; receive buffers are filled within their writable bytes with a consistent
//! header; at the end the counters of bytes, resets, bad buffers, sibling packets and
//! accepted host connections agree with what was seen, and a reset leaves no connection.

#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{recv, MsgFlags, UnixAddr};
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vu_core::dirty_log::{DirtyLog, LogBitmap};
use vu_core::vring::QueueSetup;
use vu_core::{GuestMem, Progress, QueueHandler, QueueIo, VhostUserDevice};
use vu_core_fuzz::queue_reuse::reuse_queue;
use vu_core_fuzz::ring::{DriverRing, RingAt};
use vu_core_fuzz::vsock::*;
use vu_core_fuzz::vsock_guest::*;
use vu_core_fuzz::vsock_host::*;
use vu_core_fuzz::vsock_oracle::*;
use vu_core_fuzz::{HostMem, BLOCK_REGIONS};
use vu_devices::vsock::broker::{self, Reply};
use vu_devices::vsock::packet::{
    op, ty, Header, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use vu_devices::vsock::{VsockConfig, VsockDevice, VsockStats, F_SEQPACKET, RX_QUEUE, TX_QUEUE};

/// The device's per-connection buffer (its buf_alloc): small, so credit runs out.
const TX_BUFFER: u32 = 16 << 10;
/// Connections the device holds at most: small, so the limit is reached.
const MAX_CONNECTIONS: usize = 6;
/// Guest ports host programs connect to: `HOST_CONN_PORT + k` for the k-th.
const HOST_CONN_PORT: u32 = 5000;
/// Host port of a `HostConn` selector whose connection the guest has not seen.
const UNKNOWN_HOST_PORT: u32 = 0x4000_0000;
const VERSION_1: u64 = 1 << 32;
const INDIRECT_DESC: u64 = 1 << 28;
const EVENT_IDX: u64 = 1 << 29;

/// Made once per process.
struct Rig {
    mem: Arc<GuestMem>,
    /// The queues' view of `mem`, shared by every queue of every input (as a device's
    /// queues share one): one per queue start cost arc-swap's bookkeeping at each drop.
    atomic: GuestMemoryAtomic<GuestMem>,
    log: Arc<DirtyLog>,
    dev: Arc<VsockDevice>,
    /// The broker's parent end.
    broker: OwnedFd,
    /// Our end of the link to the sibling.
    link: OwnedFd,
    /// The listener's (abstract) address, as `connect_nonblocking` takes it.
    listener: UnixAddr,
    buf: Vec<u8>,
    /// The TX and RX queues between inputs (see `reuse_queue`).
    queues: Option<(QueueIo, QueueIo)>,
    /// The guest's receive ring between inputs (`RxRing::reset`): it knows which bytes of
    /// its buffers the last inputs' packets dirtied, so posting poisons only those again.
    rx: Option<RxRing>,
}

fn rig() -> Rig {
    let name = format!("vu-fuzz-vsock-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let l = UnixListener::bind_addr(&addr).expect("bind listener");
    let listener = UnixAddr::new_abstract(name.as_bytes()).expect("abstract name");
    let (dev_end, parent) = broker::broker_pair().expect("broker pair");
    let mut cfg = VsockConfig::new(GUEST_CID);
    cfg.listener = Some(l);
    cfg.broker = Some(dev_end);
    cfg.queue_size = 256;
    cfg.tx_buffer_size = TX_BUFFER;
    cfg.max_connections = MAX_CONNECTIONS;
    let dev = VsockDevice::new(cfg).expect("vsock device");
    let (ours, theirs) = broker::link_pair().expect("link pair");
    dev.add_sibling(SIBLING_CID, theirs).expect("sibling link");
    for fd in [&parent, &ours] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking");
    }
    let mem = Arc::new(
        GuestMemoryMmap::<LogBitmap>::from_ranges(
            &BLOCK_REGIONS.map(|(a, l)| (GuestAddress(a), l)),
        )
        .expect("guest memory"),
    );
    Rig {
        atomic: GuestMemoryAtomic::from(mem.clone()),
        mem,
        log: DirtyLog::new(),
        dev,
        broker: parent,
        link: ours,
        listener,
        buf: vec![0; 128 << 10],
        queues: None,
        rx: None,
    }
}

thread_local! {
    static RIG: RefCell<Rig> = RefCell::new(rig());
}

/// What a queue start is given for ring `at` of queue `index` in this input.
fn queue_setup(index: usize, at: RingAt, input: &VsockInput) -> QueueSetup {
    QueueSetup {
        index,
        size: at.size,
        desc: at.desc,
        avail: at.avail,
        used: at.used,
        base: 0,
        event_idx: input.event_idx,
        indirect: input.indirect,
    }
}

/// A program that connected through the listener.
struct HostConn {
    /// The guest port it asked for.
    port: u32,
    /// Its stream (an index into `Run::streams`).
    stream: usize,
}

/// Totals seen over the input, for the counters.
#[derive(Default)]
struct Seen {
    rsts: u64,
    to_guest: u64,
    bad_rx: u64,
    link_msgs: u64,
    rx_used: u64,
}

/// One input's run.
struct Run<'a> {
    rig: &'a mut Rig,
    seqpacket: bool,
    tx_ring: DriverRing,
    rx: RxRing,
    txq: QueueIo,
    rxq: QueueIo,
    tx: Box<dyn QueueHandler>,
    rxh: Box<dyn QueueHandler>,
    seq: usize,
    replies: Replies,
    link_expect: std::collections::VecDeque<Vec<u8>>,
    streams: Vec<HostStream>,
    by_key: BTreeMap<(u32, u32), usize>,
    maybe_conn: BTreeSet<(u32, u32)>,
    host_conns: Vec<HostConn>,
    told: BTreeMap<(u32, u32), (u32, u32)>,
    policy: Policy,
    deferred: Vec<(u64, (u32, u32))>,
    /// The last broker request for each key.
    latest: BTreeMap<(u32, u32), u64>,
    seen: Seen,
    start: VsockStats,
}

type Res = Result<(), String>;

/// `VU_FUZZ_DEBUG` is set: inputs and packets are printed.
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("VU_FUZZ_DEBUG").is_some())
}

impl<'a> Run<'a> {
    fn new(rig: &'a mut Rig, input: &VsockInput) -> Self {
        let dev = rig.dev.clone();
        dev.reset();
        let left = dev.stats().active_connections;
        assert_eq!(left, 0, "connections left after a reset");
        let mut features = VERSION_1;
        if input.seqpacket {
            features |= 1 << F_SEQPACKET;
        }
        if input.indirect {
            features |= INDIRECT_DESC;
        }
        if input.event_idx {
            features |= EVENT_IDX;
        }
        dev.set_features(features).expect("features");
        let host = HostMem::new(&rig.mem);
        let tx_ring = DriverRing::new(host, TX_RING, input.indirect);
        let rx = match rig.rx.take() {
            Some(mut rx) => {
                rx.reset();
                rx
            }
            None => RxRing::new(host),
        };
        let (txq, rxq) = rig.queues.take().unzip();
        // The queues are built once per process and put back in a queue start's state (the
        // driver's rings are zeroed by `DriverRing::new` and `RxRing::new` above).
        let (atomic, log) = (&rig.atomic, &rig.log);
        let txq = reuse_queue(
            txq,
            &queue_setup(TX_QUEUE, TX_RING, input),
            atomic,
            log,
            false,
        );
        let rxq = reuse_queue(
            rxq,
            &queue_setup(RX_QUEUE, RX_RING, input),
            atomic,
            log,
            false,
        );
        // (An earlier input left nothing on the link or the broker: its end read them.)
        Run {
            tx: dev.start_queue(TX_QUEUE).expect("tx handler"),
            rxh: dev.start_queue(RX_QUEUE).expect("rx handler"),
            rig,
            seqpacket: input.seqpacket,
            tx_ring,
            rx,
            txq,
            rxq,
            seq: 0,
            replies: Replies::default(),
            link_expect: Default::default(),
            streams: Vec::new(),
            by_key: BTreeMap::new(),
            maybe_conn: BTreeSet::new(),
            host_conns: Vec::new(),
            told: BTreeMap::new(),
            policy: Policy::Connect,
            deferred: Vec::new(),
            latest: BTreeMap::new(),
            seen: Seen::default(),
            start: dev.stats(),
        }
    }

    /// The RX worker's look at the device's events (host streams, listener, broker).
    fn harvest(&mut self) {
        self.rxh.handle_event(0, &mut self.rxq);
    }

    fn step(&mut self, s: &Step) -> Res {
        match s {
            Step::Packet(p) => self.packet(p),
            Step::Rx(shape, n) => {
                self.rx.post(*shape, usize::from(*n));
                self.run_rx()
            }
            Step::Host(i, act) => self.host(usize::from(*i), *act),
            Step::HostConnect(line) => {
                self.host_connect(*line);
                Ok(())
            }
            Step::Broker(p, flush) => {
                self.policy = *p;
                if *flush {
                    self.flush_deferred();
                }
                Ok(())
            }
        }
    }

    fn port(&self, p: Port, guest: bool) -> u32 {
        match p {
            Port::Fixed(i) if guest => GUEST_PORTS[usize::from(i & 1)],
            Port::Fixed(i) => HOST_PORTS[usize::from(i & 1)],
            Port::HostConn(k) => match self.host_conns.get(usize::from(k)) {
                Some(c) if guest => c.port,
                Some(c) => {
                    let key = self.streams[c.stream].key;
                    if key.0 == 0 {
                        UNKNOWN_HOST_PORT
                    } else {
                        key.0
                    }
                }
                None if guest => HOST_CONN_PORT + u32::from(k),
                None => UNKNOWN_HOST_PORT,
            },
            Port::Raw(v) => v,
        }
    }

    /// The header a packet selects.
    fn header(&self, p: &Pkt) -> Header {
        let cid = |c: Cid| match c {
            Cid::Guest => GUEST_CID,
            Cid::Host => HOST_CID,
            Cid::Sibling => SIBLING_CID,
            Cid::Raw(v) => v,
        };
        let (src_port, dst_port) = (self.port(p.src_port, true), self.port(p.dst_port, false));
        let got = self
            .by_key
            .get(&(dst_port, src_port))
            .map_or(0, |&i| self.streams[i].delivered as u32);
        let credit = |c: CreditSel, honest: u32, odd: u32| match c {
            CreditSel::Honest => honest,
            CreditSel::Zero => 0,
            CreditSel::Odd => odd,
            CreditSel::Raw(v) => v,
        };
        Header {
            src_cid: cid(p.src),
            dst_cid: cid(p.dst),
            src_port,
            dst_port,
            len: p.len.unwrap_or(p.payload),
            ty: p.ty,
            op: u16::from(p.op),
            flags: p.flags,
            buf_alloc: credit(p.buf_alloc, 256 << 10, 4096),
            fwd_cnt: credit(p.fwd_cnt, got, got.wrapping_add(1 << 31)),
        }
    }

    fn packet(&mut self, p: &Pkt) -> Res {
        let h = self.header(p);
        let head = h.encode();
        let seq = self.seq;
        self.seq += 1;
        let Some(tp) = place_tx(&mut self.tx_ring, &head, seq, p.payload, p.layout) else {
            return Ok(());
        };
        self.tx_ring.publish();
        let seen = (tp.readable >= HEADER_LEN as u32).then_some(&h);
        let class = if tp.refused {
            Class::Refused
        } else {
            classify(seen, tp.readable, self.seqpacket)
        };
        if debug() {
            eprintln!("packet {seq}: {class:?} {h:?} readable {}", tp.readable);
        }
        let before = self.rig.dev.stats();
        self.run_tx(tp.placed.head)?;
        if let Err(e) = tp.placed.check_untouched(self.tx_ring.mem(), 0, false) {
            return Err(format!("tx chain: {e}"));
        }
        check_counters(class, seen, &before, &self.rig.dev.stats())?;
        let key = (h.dst_port, h.src_port);
        if let Some((r, certain)) = expected_reply(class, &h, self.maybe_conn.contains(&key)) {
            self.replies.expect(r, certain);
        }
        // (Looked up only for the classes that carry it: `h.len` fits the chain then.)
        let payload = || {
            let off = payload_offset(seq);
            &payload_bytes()[off..off + h.len as usize]
        };
        match class {
            Class::Sibling => {
                let mut msg = head.to_vec();
                msg.extend_from_slice(payload());
                self.link_expect.push_back(msg);
            }
            Class::Host => self.host_packet(&h, key, payload)?,
            _ => {}
        }
        Ok(())
    }

    /// A well-formed stream packet for the host: what it means for the connection's
    /// bookkeeping.
    fn host_packet(
        &mut self,
        h: &Header,
        key: (u32, u32),
        payload: impl Fn() -> &'static [u8],
    ) -> Res {
        self.told.insert(key, (h.buf_alloc, h.fwd_cnt));
        match h.op {
            op::REQUEST => {
                self.maybe_conn.insert(key);
                self.serve_broker(key)?;
            }
            op::RW => {
                if let Some(s) = self.by_key.get(&key).map(|&i| &mut self.streams[i]) {
                    if !s.host_init || s.ok_line.is_some() {
                        s.expect.extend_from_slice(payload());
                    }
                }
            }
            op::RESPONSE => {
                if let Some(&i) = self.by_key.get(&key) {
                    if self.streams[i].host_init {
                        self.streams[i].accept(key.0);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the TX queue for the packet at `head` (just published): it must come back at
    /// once with length 0, unless the queue waits for a full link (then it comes back once
    /// the sibling has read).
    fn run_tx(&mut self, head: u16) -> Res {
        let before = self.tx_ring.used_idx();
        for attempt in 0..2 {
            self.tx.process(&mut self.txq);
            self.txq.flush();
            if self.tx_ring.used_idx() != before || attempt == 1 {
                break;
            }
            // Waiting for the link: the sibling reads, the link's edge wakes the worker.
            self.read_link()?;
            self.tx.handle_event(0, &mut self.txq);
        }
        let after = self.tx_ring.used_idx();
        if after != before.wrapping_add(1) {
            return Err(format!("tx packet: used index {before} -> {after}"));
        }
        match self.tx_ring.used_elem(before) {
            (id, 0) if id == u32::from(head) => Ok(()),
            e => Err(format!("tx packet {head} came back as {e:?}")),
        }
    }

    /// The sibling reads its link: every message is the next packet owed.
    fn read_link(&mut self) -> Res {
        loop {
            let fd = self.rig.link.as_raw_fd();
            let n = match recv(fd, &mut self.rig.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(_) => return Ok(()),
            };
            let want = self
                .link_expect
                .pop_front()
                .ok_or("the sibling got a packet nobody sent it")?;
            if self.rig.buf[..n] != want[..] {
                return Err(format!(
                    "the sibling got {} bytes that are not the next packet ({} bytes)",
                    n,
                    want.len()
                ));
            }
            self.seen.link_msgs += 1;
        }
    }
}

#[path = "vsock_tx/world.rs"]
mod world;

fuzz_target!(|data: &[u8]| {
    let input = parse_vsock(data);
    if debug() {
        eprintln!("{input:#?}");
    }
    RIG.with(|r| {
        let mut rig = r.borrow_mut();
        let mut run = Run::new(&mut rig, &input);
        let res = input
            .steps
            .iter()
            .try_for_each(|s| run.step(s))
            .and_then(|()| run.finish());
        if let Err(e) = res {
            panic!("{e}");
        }
        let (queues, rx) = ((run.txq, run.rxq), run.rx);
        rig.queues = Some(queues);
        rig.rx = Some(rx);
    });
});
