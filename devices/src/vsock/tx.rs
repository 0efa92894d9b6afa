//! The TX queue (1): packets from the guest. Each is checked (header, length, type, op, and
//! above all its source CID), then routed by destination CID: the host (2) through a
//! connection, a linked sibling over its link, anything else answered with RST.
//!
//! Guest data for the host goes straight from guest memory to the host stream; what the
//! stream does not take waits in the connection's buffer, which the guest's credit bounds.
//! Control packets the guest is owed (RESPONSE, RST, CREDIT_UPDATE...) are noted on the
//! connection and the RX worker is woken to send them. A packet for a sibling whose link is
//! full is copied out of guest memory and the queue waits (the only time it stops taking
//! packets) until the link drains.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EpollEvent;
use vu_core::{Chain, Progress, QueueHandler, QueueIo};

use super::conn::{guest_data_to_host, owe, Conn, ConnKey, ConnState, Phase};
use super::credit::Credit;
use super::hybrid::ok_line;
use super::iov::{self, IoVecs};
use super::packet::{
    self, op, ty, Header, PacketError, HEADER_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV,
    SHUTDOWN_SEND,
};
use super::shared::{Shared, MAX_PENDING_CONNECTS, TX_TOKEN_BROKER};
use super::sibling::{self, Link, Sent};
use super::stats;
use super::tx_run::Run;

/// How long a connection the guest closed may take to hand its last bytes to the host.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// TX-side state, kept across queue restarts (in `Shared`).
#[derive(Debug, Default)]
pub(crate) struct TxState {
    /// A packet for a sibling whose link was full.
    waiting: Option<(Arc<Link>, Vec<u8>)>,
}

impl TxState {
    pub fn clear(&mut self) {
        self.waiting = None;
    }
}

/// The TX queue's handler.
#[derive(Debug)]
pub(crate) struct TxHandler {
    shared: Arc<Shared>,
    iov: IoVecs,
    /// The connection of the last packet (bulk transfers hit it again).
    last: Option<Arc<Conn>>,
    /// Data packets of one connection gathered for one send (`tx_run.rs`).
    run: Run,
}

enum Outcome {
    Done,
    /// A sibling's link is full; stop taking packets.
    Blocked,
}

impl TxHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        TxHandler {
            shared,
            iov: IoVecs::default(),
            last: None,
            run: Run::default(),
        }
    }

    /// Sends the packet that waited for a full link; false while it still waits.
    fn flush_waiting(&self) -> bool {
        let mut tx = self.shared.tx_state();
        let Some((link, bytes)) = tx.waiting.as_ref() else {
            return true;
        };
        if link.dead.load(std::sync::atomic::Ordering::Acquire) {
            tx.waiting = None;
            return true;
        }
        match sibling::send_waiting(link, bytes) {
            Ok(false) => return false,
            Ok(true) => stats::bump(&self.shared.counters.sibling_packets_out),
            Err(_) => {}
        }
        tx.waiting = None;
        true
    }

    /// Adds packet `head` to the run of data for one stream (`tx_run.rs`) if it can be
    /// part of one. False: the run gathered so far has been sent, and the packet takes the
    /// ordinary path.
    fn gather(&mut self, q: &mut QueueIo, head: u16) -> bool {
        let chain = q.chain(head);
        let mut raw = [0u8; HEADER_LEN];
        let h = (chain.read_at(0, &mut raw) == HEADER_LEN)
            .then(|| Header::decode(&raw))
            .flatten();
        let avail = chain.readable_len().saturating_sub(HEADER_LEN as u32);
        let Some(h) = h.filter(|h| Run::candidate(h, avail, &self.shared)) else {
            self.run.send(q, &self.shared);
            return false;
        };
        if self.run.is_for(&h) && self.run.join(q.chain(head), head, &h) {
            return true;
        }
        self.run.send(q, &self.shared);
        let Some(conn) = self.lookup(&key_of(&h)) else {
            return false;
        };
        self.run.begin(conn, q.chain(head), head, &h)
    }

    fn packet(&mut self, chain: &Chain) -> Outcome {
        let s = &self.shared;
        let mut raw = [0u8; HEADER_LEN];
        let Some(h) = (chain.read_at(0, &mut raw) == HEADER_LEN)
            .then(|| Header::decode(&raw))
            .flatten()
        else {
            stats::bump(&s.counters.dropped_bad_len);
            return Outcome::Done;
        };
        let avail = chain.readable_len() - HEADER_LEN as u32;
        if let Err(e) = packet::check(&h, avail, s.guest_cid, s.seqpacket(), false) {
            self.refuse(&h, e);
            return Outcome::Done;
        }
        if h.op == op::RST {
            stats::bump(&s.counters.resets_received);
        }
        match h.dst_cid {
            HOST_CID if h.ty != ty::STREAM => {
                // Host programs speak streams only (seqpacket goes to siblings).
                let c = &s.counters;
                stats::bump(if h.op == op::REQUEST {
                    &c.connect_failures
                } else {
                    &c.unknown_connection
                });
                self.reply_rst(&h);
                Outcome::Done
            }
            HOST_CID => {
                self.for_host(&h, chain);
                Outcome::Done
            }
            cid => {
                let link = (cid != s.guest_cid)
                    .then(|| {
                        s.links
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&cid)
                            .cloned()
                    })
                    .flatten();
                match link {
                    Some(l) => self.for_sibling(&l, &h, chain),
                    None => {
                        stats::bump(&s.counters.unknown_cid);
                        self.reply_rst(&h);
                        Outcome::Done
                    }
                }
            }
        }
    }

    fn refuse(&mut self, h: &Header, e: PacketError) {
        let c = &self.shared.counters;
        match e {
            PacketError::Spoofed(_) => {
                stats::bump(&c.dropped_spoofed);
                vu_core::warn_ratelimited!(
                    src_cid = h.src_cid,
                    "vsock: guest packet with a foreign source CID dropped"
                );
                return;
            }
            PacketError::BadType(_) => stats::bump(&c.dropped_bad_type),
            PacketError::BadOp(_) => stats::bump(&c.dropped_bad_op),
            PacketError::BadLen { .. } | PacketError::Short => {
                stats::bump(&c.dropped_bad_len);
                if h.dst_cid == HOST_CID {
                    if let Some(conn) = self.lookup(&key_of(h)) {
                        self.kill(&conn);
                        return;
                    }
                }
            }
        }
        vu_core::warn_ratelimited!(error = %e, "vsock: malformed guest packet answered with RST");
        self.reply_rst(h);
    }

    fn reply_rst(&self, h: &Header) {
        if h.op != op::RST {
            self.shared.queue_reply(h.rst_reply());
        }
    }

    fn lookup(&mut self, key: &ConnKey) -> Option<Arc<Conn>> {
        if let Some(c) = self.last.as_ref() {
            if c.key == *key && !c.is_removed() {
                return Some(c.clone());
            }
        }
        let c = self.shared.lookup(key);
        self.last.clone_from(&c);
        c
    }

    fn kill(&self, conn: &Arc<Conn>) {
        let mut st = conn.lock();
        if st.phase != Phase::Closed {
            st.kill(true);
        }
        drop(st);
        self.shared.wake_rx_for(conn);
    }

    fn for_host(&mut self, h: &Header, chain: &Chain) {
        let Some(conn) = self.lookup(&key_of(h)) else {
            match h.op {
                op::REQUEST => self.connect(h),
                op::RST => {}
                _ => {
                    stats::bump(&self.shared.counters.unknown_connection);
                    self.reply_rst(h);
                }
            }
            return;
        };
        let mut st = conn.lock();
        if st.phase == Phase::Closed {
            // Going away; a new connection on the same ports replaces it.
            if h.op == op::REQUEST {
                drop(st);
                self.shared.remove(&conn);
                self.connect(h);
            }
            return;
        }
        let had_deadline = st.deadline.is_some();
        self.apply(&conn, &mut st, h, chain);
        if st.phase == Phase::Closed && st.owed == 0 {
            self.shared.remove(&conn);
        } else if st.has_rx_work() {
            self.shared.wake_rx_for(&conn);
        }
        if st.deadline.is_some() && !had_deadline {
            self.shared.watch_deadline(&conn);
        }
    }

    /// A guest packet for an existing connection.
    fn apply(&mut self, conn: &Conn, st: &mut ConnState, h: &Header, chain: &Chain) {
        st.credit.update_from_peer(h.buf_alloc, h.fwd_cnt);
        // A request stays answered until the guest grants something: a Linux guest answers
        // each CREDIT_REQUEST at once, also with nothing consumed, and asking again on such
        // an answer would ping-pong for as long as its reader sleeps. It tells us on its own
        // once its reader has freed space.
        if st.credit.peer_free() > 0 {
            st.credit_requested = false;
        }
        match h.op {
            op::RESPONSE if st.phase == Phase::HostInit => self.accepted(conn, st),
            op::RST => {
                if st.phase == Phase::HostInit {
                    stats::bump(&self.shared.counters.handshake_failures);
                }
                st.kill(false);
            }
            op::SHUTDOWN if st.phase == Phase::Established => {
                st.guest_shut |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if st.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND && !st.txbuf.is_empty() {
                    st.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                st.after_tx();
            }
            op::RW if st.phase == Phase::Established && st.guest_shut & SHUTDOWN_SEND == 0 => {
                self.data(conn.id, st, h, chain)
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => st.owed |= owe::CREDIT_UPDATE,
            // A second REQUEST for a connection that exists: ignored.
            op::REQUEST => {}
            _ => {
                // RESPONSE, SHUTDOWN or RW where the connection cannot take it.
                stats::bump(&self.shared.counters.unknown_connection);
                st.kill(true);
            }
        }
    }

    /// The guest accepted a host program's connection: tell the program.
    fn accepted(&self, conn: &Conn, st: &mut ConnState) {
        let line = ok_line(conn.key.host_port);
        let sent = st
            .stream
            .as_ref()
            .map(|s| iov::send_bytes(s.as_fd(), &line));
        if matches!(sent, Some(Ok(n)) if n == line.len()) {
            st.phase = Phase::Established;
            st.deadline = None;
            stats::bump(&self.shared.counters.host_connections);
        } else {
            st.kill(true);
        }
    }

    fn data(&mut self, id: u64, st: &mut ConnState, h: &Header, chain: &Chain) {
        let c = &self.shared.counters;
        if !st.credit.accepts(st.txbuf.len(), h.len) {
            stats::bump(&c.credit_overruns);
            vu_core::warn_ratelimited!(
                len = h.len,
                buffered = st.txbuf.len(),
                "vsock: guest overran its credit; connection reset"
            );
            st.kill(true);
            return;
        }
        match guest_data_to_host(st, chain, h.len, &mut self.iov) {
            Ok(n) => {
                stats::add(&c.bytes_from_guest, u64::from(n));
                st.after_tx();
                if !st.txbuf.is_empty() {
                    self.shared.watch_stream_out(st, id, true);
                }
            }
            Err(_) => st.kill(true),
        }
    }

    /// The guest connects to host port `h.dst_port`: ask the broker.
    fn connect(&mut self, h: &Header) {
        let s = &self.shared;
        let Some(broker) = s.broker.as_ref().filter(|b| !b.is_closed()) else {
            stats::bump(&s.counters.connect_failures);
            self.reply_rst(h);
            return;
        };
        let full = {
            let t = s.table();
            t.len() >= s.max_connections || t.pending_requests() >= MAX_PENDING_CONNECTS
        };
        if full {
            stats::bump(&s.counters.connection_limit);
            vu_core::warn_ratelimited!("vsock: too many connections; a guest connection refused");
            self.reply_rst(h);
            return;
        }
        let id = broker.next_request_id();
        let credit = Credit::new(s.tx_buffer_size, h.buf_alloc, h.fwd_cnt);
        let conn = Arc::new(Conn::new(
            s.next_id(),
            key_of(h),
            Phase::Connecting(id),
            None,
            credit,
        ));
        s.insert(&conn, Some(id), false);
        if broker.connect(id, h.dst_port).is_err() {
            stats::bump(&s.counters.connect_failures);
            conn.lock().kill(false);
            s.remove(&conn);
            self.reply_rst(h);
        }
    }

    fn for_sibling(&mut self, link: &Arc<Link>, h: &Header, chain: &Chain) -> Outcome {
        let c = &self.shared.counters;
        if h.len > MAX_PAYLOAD {
            stats::bump(&c.dropped_bad_len);
            self.reply_rst(h);
            return Outcome::Done;
        }
        if !link.note(h, h.src_port, h.dst_port) {
            stats::bump(&c.connection_limit);
            self.reply_rst(h);
            return Outcome::Done;
        }
        match sibling::send(link, h, chain, &mut self.iov) {
            Sent::Gone => {
                stats::bump(&c.sibling_packets_out);
                Outcome::Done
            }
            Sent::Full(bytes) => {
                self.shared.tx_state().waiting = Some((link.clone(), bytes));
                Outcome::Blocked
            }
            Sent::Dead => {
                self.reply_rst(h);
                Outcome::Done
            }
        }
    }
}

fn key_of(h: &Header) -> ConnKey {
    ConnKey {
        host_port: h.dst_port,
        guest_port: h.src_port,
    }
}

impl QueueHandler for TxHandler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.shared.tx_poll.as_raw_fd()]
    }

    fn handle_event(&mut self, _index: usize, _q: &mut QueueIo) {
        let mut events = [EpollEvent::default(); 16];
        let n = self.shared.tx_poll.wait(0, &mut events).unwrap_or(0);
        if events[..n].iter().any(|e| e.data() == TX_TOKEN_BROKER) {
            if let Some(b) = self.shared.broker.as_ref() {
                b.flush();
            }
        }
        let _ = self.shared.tx_wake.read();
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        if !self.flush_waiting() {
            return Progress::Busy;
        }
        while let Some(head) = q.pop() {
            if self.gather(q, head) {
                continue;
            }
            let outcome = self.packet(q.chain(head));
            q.complete(head, 0);
            if let Outcome::Blocked = outcome {
                return Progress::Busy;
            }
        }
        self.run.send(q, &self.shared);
        Progress::Drained
    }
}
