//! State the device's queue workers share: the connection table, the lists through which
//! the TX worker hands work to the RX worker, the sibling links, the internal epoll sets and
//! the counters. Queue handlers come and go (queues stop and start); this stays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vu_core::QueueWaker;

use super::client::BrokerClient;
use super::conn::{Conn, ConnKey, ConnState};
use super::error::VsockError;
use super::packet::Header;
use super::rx::RxState;
use super::sibling::Link;
use super::stats::{self, Counters};
use super::tx::TxState;

/// Tokens of the RX side's internal epoll set. Per-object tokens carry a kind in the top
/// byte and the object's id below it.
pub(crate) mod token {
    pub const WAKE: u64 = 1;
    pub const TIMER: u64 = 2;
    pub const LISTENER: u64 = 3;
    pub const BROKER: u64 = 4;
    pub const KIND_SHIFT: u32 = 56;
    pub const CONN: u64 = 1 << KIND_SHIFT;
    pub const HANDSHAKE: u64 = 2 << KIND_SHIFT;
    pub const LINK: u64 = 3 << KIND_SHIFT;
    pub const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;
}

/// RST replies the TX worker may queue for packets without a connection before it drops
/// them (the guest is not reading its receive queue).
pub(crate) const MAX_REPLIES: usize = 4096;

/// Connections with a broker request outstanding.
pub(crate) const MAX_PENDING_CONNECTS: usize = 1024;

/// Token of the broker socket in the TX side's epoll set (its link tokens are link ids,
/// which stay below 1 << 56).
pub(crate) const TX_TOKEN_BROKER: u64 = u64::MAX;

/// Host-side ports for host-initiated connections come from [1 << 30, 1 << 31), as
/// Firecracker assigns them, round robin from a random start per process.
const HOST_PORT_FIRST: u32 = 1 << 30;
const HOST_PORT_END: u32 = 1 << 31;

/// The connection table.
#[derive(Debug, Default)]
pub(crate) struct Table {
    by_key: HashMap<ConnKey, Arc<Conn>>,
    by_id: HashMap<u64, Arc<Conn>>,
    by_request: HashMap<u64, Arc<Conn>>,
    host_ports: HashSet<u32>,
    next_host_port: u32,
}

impl Table {
    /// An empty table whose host ports start at a random place in their range. A device
    /// process that replaces a killed one then does not hand out the ports its predecessor
    /// handed out first: the guest may still hold sockets on them (reset when the old
    /// process went, not yet closed by their programs) and would refuse a new connection on
    /// the same ports with an RST.
    fn with_random_ports() -> Self {
        use std::hash::BuildHasher;
        let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Table {
            next_host_port: (r % u64::from(HOST_PORT_END - HOST_PORT_FIRST)) as u32,
            ..Table::default()
        }
    }

    pub fn get(&self, key: &ConnKey) -> Option<&Arc<Conn>> {
        self.by_key.get(key)
    }

    pub fn by_id(&self, id: u64) -> Option<&Arc<Conn>> {
        self.by_id.get(&id)
    }

    pub fn take_request(&mut self, id: u64) -> Option<Arc<Conn>> {
        self.by_request.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn pending_requests(&self) -> usize {
        self.by_request.len()
    }

    /// A free host-side port for a host-initiated connection.
    pub fn alloc_host_port(&mut self) -> Option<u32> {
        let span = HOST_PORT_END - HOST_PORT_FIRST;
        for _ in 0..span.min(self.host_ports.len() as u32 + 1) {
            let p = HOST_PORT_FIRST + self.next_host_port % span;
            self.next_host_port = (self.next_host_port + 1) % span;
            if !self.host_ports.contains(&p) {
                return Some(p);
            }
        }
        None
    }
}

/// What the workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub guest_cid: u64,
    pub tx_buffer_size: u32,
    pub max_connections: usize,
    pub counters: Counters,
    table: Mutex<Table>,
    /// Connections the TX worker gave the RX worker something to send for.
    ready: Mutex<Vec<Arc<Conn>>>,
    /// RST replies for packets that had no connection.
    replies: Mutex<VecDeque<Header>>,
    /// Connections with a deadline, for the RX worker's sweep.
    timed: Mutex<Vec<Arc<Conn>>>,
    /// Wakes the RX worker (in `poll`).
    pub rx_wake: EventFd,
    /// The RX queue's waker while its handler runs (see `wake_rx`).
    rx_waker: Mutex<Option<QueueWaker>>,
    /// Wakes the TX worker (in `tx_poll`).
    pub tx_wake: EventFd,
    /// The RX side's internal epoll set: listener, broker, host streams, links, timer, wake.
    pub poll: Epoll,
    /// The TX side's: links that were full, and `tx_wake`.
    pub tx_poll: Epoll,
    pub listener: Option<UnixListener>,
    pub broker: Option<BrokerClient>,
    pub links: RwLock<HashMap<u64, Arc<Link>>>,
    pub rx: Mutex<RxState>,
    pub tx: Mutex<TxState>,
    /// A TRANSPORT_RESET is owed on the event queue.
    pub reset_event: AtomicBool,
    pub features: AtomicU64,
    next_id: AtomicU64,
}

/// Parameters of [`Shared::new`].
pub(crate) struct SharedParams {
    pub guest_cid: u64,
    pub tx_buffer_size: u32,
    pub max_connections: usize,
    pub listener: Option<UnixListener>,
    pub broker: Option<BrokerClient>,
}

impl Shared {
    pub fn new(p: SharedParams) -> Result<Self, VsockError> {
        let efd =
            || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VsockError::Setup);
        let s = Shared {
            guest_cid: p.guest_cid,
            tx_buffer_size: p.tx_buffer_size,
            max_connections: p.max_connections,
            counters: Counters::default(),
            table: Mutex::new(Table::with_random_ports()),
            ready: Mutex::new(Vec::new()),
            replies: Mutex::new(VecDeque::new()),
            timed: Mutex::new(Vec::new()),
            rx_wake: efd()?,
            rx_waker: Mutex::new(None),
            tx_wake: efd()?,
            poll: Epoll::new().map_err(VsockError::Setup)?,
            tx_poll: Epoll::new().map_err(VsockError::Setup)?,
            listener: p.listener,
            broker: p.broker,
            links: RwLock::new(HashMap::new()),
            rx: Mutex::new(RxState::new().map_err(VsockError::Setup)?),
            tx: Mutex::new(TxState::default()),
            reset_event: AtomicBool::new(true),
            features: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        };
        let add = |ep: &Epoll, fd: RawFd, tok: u64| {
            ep.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, tok),
            )
            .map_err(VsockError::Setup)
        };
        add(&s.poll, s.rx_wake.as_raw_fd(), token::WAKE)?;
        add(&s.tx_poll, s.tx_wake.as_raw_fd(), 0)?;
        add(
            &s.poll,
            s.rx.lock().unwrap_or_else(|e| e.into_inner()).timer_fd(),
            token::TIMER,
        )?;
        if let Some(l) = s.listener.as_ref() {
            add(&s.poll, l.as_raw_fd(), token::LISTENER)?;
        }
        if let Some(b) = s.broker.as_ref() {
            add(&s.poll, b.as_raw_fd(), token::BROKER)?;
            // Room in the socket again: requests that waited go out (TX worker).
            s.tx_poll
                .ctl(
                    ControlOperation::Add,
                    b.as_raw_fd(),
                    EpollEvent::new(EventSet::OUT | EventSet::EDGE_TRIGGERED, TX_TOKEN_BROKER),
                )
                .map_err(VsockError::Setup)?;
        }
        Ok(s)
    }

    /// Whether the driver accepted VIRTIO_VSOCK_F_SEQPACKET.
    pub fn seqpacket(&self) -> bool {
        self.features.load(Ordering::Relaxed) & (1 << super::F_SEQPACKET) != 0
    }

    /// A fresh id for a connection, handshake or link.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) & token::ID_MASK
    }

    pub fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn rx_state(&self) -> MutexGuard<'_, RxState> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tx_state(&self) -> MutexGuard<'_, TxState> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a connection up by address.
    pub fn lookup(&self, key: &ConnKey) -> Option<Arc<Conn>> {
        self.table().get(key).cloned()
    }

    /// Adds a connection; `request`: the broker request it waits for; `host_port`: a port
    /// it holds from the host-initiated range.
    pub fn insert(&self, conn: &Arc<Conn>, request: Option<u64>, host_port: bool) {
        let mut t = self.table();
        t.by_key.insert(conn.key, conn.clone());
        t.by_id.insert(conn.id, conn.clone());
        if let Some(r) = request {
            t.by_request.insert(r, conn.clone());
        }
        if host_port {
            t.host_ports.insert(conn.key.host_port);
        }
        drop(t);
        stats::bump(&self.counters.active_connections);
    }

    /// Adds a host-initiated connection for guest port `guest_port` with a fresh host-side
    /// port; `None` when the table is full or no port is free.
    pub fn insert_host(
        &self,
        guest_port: u32,
        build: impl FnOnce(u64, ConnKey) -> Conn,
    ) -> Option<Arc<Conn>> {
        let mut t = self.table();
        if t.len() >= self.max_connections {
            return None;
        }
        let mut key = None;
        for _ in 0..16 {
            let k = ConnKey {
                host_port: t.alloc_host_port()?,
                guest_port,
            };
            if !t.by_key.contains_key(&k) {
                key = Some(k);
                break;
            }
        }
        let key = key?;
        let conn = Arc::new(build(self.next_id(), key));
        t.by_key.insert(key, conn.clone());
        t.by_id.insert(conn.id, conn.clone());
        t.host_ports.insert(key.host_port);
        drop(t);
        stats::bump(&self.counters.active_connections);
        Some(conn)
    }

    /// Takes a connection out of the table (idempotent).
    pub fn remove(&self, conn: &Conn) {
        if conn.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut t = self.table();
        if t.by_key.get(&conn.key).is_some_and(|c| c.id == conn.id) {
            t.by_key.remove(&conn.key);
            t.host_ports.remove(&conn.key.host_port);
        }
        t.by_id.remove(&conn.id);
        t.by_request.retain(|_, c| c.id != conn.id);
        drop(t);
        stats::dec(&self.counters.active_connections);
    }

    /// Has the RX handler's `process` run soon, for work it finds there (ready connections,
    /// replies): through its queue's waker, which costs no system call when the caller runs
    /// on the same worker thread (the device's queues share one), else through `rx_wake`.
    pub fn wake_rx(&self) {
        let woken = self
            .rx_waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(QueueWaker::wake);
        if !woken {
            let _ = self.rx_wake.write(1);
        }
    }

    /// The RX handler's queue waker (None: its handler is gone).
    pub fn set_rx_waker(&self, waker: Option<QueueWaker>) {
        *self.rx_waker.lock().unwrap_or_else(|e| e.into_inner()) = waker;
    }

    /// Tells the RX worker `conn` has something to send (from the TX worker).
    pub fn wake_rx_for(&self, conn: &Arc<Conn>) {
        if conn.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut r = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = r.is_empty();
        r.push(conn.clone());
        drop(r);
        if was_empty {
            self.wake_rx();
        }
    }

    /// Takes everything the TX worker queued for the RX worker.
    pub fn take_ready(&self, into: &mut VecDeque<Arc<Conn>>) {
        let mut r = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        into.extend(r.drain(..));
    }

    /// Queues an RST reply to a packet that has no connection; false if the queue is full.
    pub fn queue_reply(&self, h: Header) -> bool {
        let mut q = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_REPLIES {
            drop(q);
            stats::bump(&self.counters.reply_queue_full);
            return false;
        }
        let was_empty = q.is_empty();
        q.push_back(h);
        drop(q);
        if was_empty {
            self.wake_rx();
        }
        true
    }

    /// The next queued RST reply.
    pub fn next_reply(&self) -> Option<Header> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Whether replies are queued.
    pub fn has_replies(&self) -> bool {
        !self
            .replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Puts `conn` on the list the RX worker sweeps for deadlines.
    pub fn watch_deadline(&self, conn: &Arc<Conn>) {
        self.timed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn.clone());
        let _ = self.rx_wake.write(1);
    }

    /// The connections with deadlines.
    pub fn timed(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.timed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every connection (host streams close) and everything queued for the guest;
    /// links stay, their flows are forgotten. For reset and restore, with the queues
    /// stopped or asleep.
    pub fn drop_all(&self) {
        let conns: Vec<Arc<Conn>> = {
            let mut t = self.table();
            t.by_key.clear();
            t.by_request.clear();
            t.host_ports.clear();
            t.by_id.drain().map(|(_, c)| c).collect()
        };
        for c in &conns {
            c.removed.store(true, Ordering::Release);
            c.lock().kill(false);
            stats::dec(&self.counters.active_connections);
        }
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.timed().clear();
        let mut rx = self.rx_state();
        rx.clear();
        super::hybrid::handshake_done(self, &mut rx);
        drop(rx);
        self.tx_state().clear();
        for l in self
            .links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            l.forget_flows();
        }
    }

    /// Watches the host stream of connection `id` for room to write (`on`), or stops: only
    /// while guest data waits in the connection's buffer, so that a host program draining
    /// its socket does not wake the RX worker for nothing. A stream that cannot be watched
    /// while data waits would stall: the connection is killed.
    pub fn watch_stream_out(&self, st: &mut ConnState, id: u64, on: bool) {
        if st.watching_out == on {
            return;
        }
        let Some(fd) = st.stream.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let events = if on {
            stream_events() | EventSet::OUT
        } else {
            stream_events()
        };
        let ev = EpollEvent::new(events, token::CONN | id);
        match self.poll.ctl(ControlOperation::Modify, fd, ev) {
            Ok(()) => st.watching_out = on,
            Err(_) if on => st.kill(true),
            Err(_) => {}
        }
    }

    /// Registers a host stream of connection `id` in the RX side's epoll set (edge
    /// triggered: readable, peer closed).
    pub fn watch_stream(&self, fd: RawFd, id: u64) -> std::io::Result<()> {
        self.poll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(stream_events(), token::CONN | id),
        )
    }
}

/// What a host stream is watched for: readable and peer closed; writable only while guest
/// data waits for it ([`Shared::watch_stream_out`]).
pub(crate) fn stream_events() -> EventSet {
    EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_come_round_robin_from_the_upper_range() {
        let mut t = Table::default();
        let a = t.alloc_host_port().expect("port");
        let b = t.alloc_host_port().expect("port");
        assert_eq!((a, b), (HOST_PORT_FIRST, HOST_PORT_FIRST + 1));
        // Ports in use are skipped, and the range wraps.
        t.host_ports.insert(HOST_PORT_FIRST + 2);
        assert_eq!(t.alloc_host_port(), Some(HOST_PORT_FIRST + 3));
        t.next_host_port = HOST_PORT_END - HOST_PORT_FIRST - 1;
        assert_eq!(t.alloc_host_port(), Some(HOST_PORT_END - 1));
        assert_eq!(t.alloc_host_port(), Some(HOST_PORT_FIRST));
    }

    #[test]
    fn each_process_starts_its_host_ports_somewhere_else() {
        let firsts: HashSet<u32> = (0..4)
            .map(|_| {
                let p = Table::with_random_ports().alloc_host_port().expect("port");
                assert!((HOST_PORT_FIRST..HOST_PORT_END).contains(&p));
                p
            })
            .collect();
        // Four draws from 2^30 ports: equal ones would mean no randomness.
        assert_eq!(firsts.len(), 4);
    }
}
