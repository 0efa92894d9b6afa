//! The RX queue (0): packets to the guest. Its worker waits on the device's internal epoll
//! set (host streams, the listener, the broker, sibling links, a timer, and the TX worker's
//! wake-ups), notes what became ready there ([`super::events`]), and fills the guest's
//! receive buffers from what is ready: RST replies first, then connections and sibling
//! links in turn.
//!
//! Host streams and links are watched edge triggered and read until EAGAIN only when a
//! receive buffer is there to read into, so a guest that posts no buffers makes the device
//! wait, not spin; host data it does not take stays in the host's socket (its writer
//! stalls), sibling packets in the link.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;
use vu_core::{Chain, Progress, QueueHandler, QueueIo};

use super::conn::{owe, Conn, ConnState, Phase};
use super::events;
use super::hybrid::{Handshake, REQUEST_TIMEOUT};
use super::iov::{self, IoVecs};
use super::packet::{op, Header, HEADER_LEN, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::shared::Shared;
use super::sibling::{Link, LinkFill, LinkRx};
use super::stats;

/// Packets written per `process` call before the worker gets to look at new events.
const BUDGET: usize = 256;
/// How often deadlines are checked while any are set.
const TICK: Duration = Duration::from_millis(250);

/// RX-side state, kept across queue restarts (in `Shared`).
#[derive(Debug)]
pub(crate) struct RxState {
    /// Connections that may have something to send.
    pub ready: VecDeque<Arc<Conn>>,
    /// Sibling links by link id.
    pub links: HashMap<u64, LinkRx>,
    pub ready_links: VecDeque<u64>,
    /// RSTs for flows of links that went away.
    pub replies: VecDeque<Header>,
    pub handshakes: HashMap<u64, Handshake>,
    /// The listener is out of the epoll set while handshakes are at their limit.
    pub listener_paused: bool,
    /// Accept failed: the listener is watched again on the next tick.
    pub listener_retry: bool,
    timer: TimerFd,
    timer_armed: bool,
    links_turn: bool,
}

impl RxState {
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // A read after a disarm must not hang the worker.
        // SAFETY: the timerfd is open and stays open for the borrow (owned by `timer`).
        iov::set_nonblocking(unsafe { std::os::fd::BorrowedFd::borrow_raw(timer.as_raw_fd()) })?;
        Ok(RxState {
            ready: VecDeque::new(),
            links: HashMap::new(),
            ready_links: VecDeque::new(),
            replies: VecDeque::new(),
            handshakes: HashMap::new(),
            listener_paused: false,
            listener_retry: false,
            timer,
            timer_armed: false,
            links_turn: false,
        })
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Consumes the timer's expirations.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
    }

    /// Ticks the timer while deadlines are pending, stops it otherwise.
    pub fn arm_timer(&mut self, needed: bool) {
        if needed == self.timer_armed {
            return;
        }
        let res = if needed {
            self.timer.reset(TICK, Some(TICK))
        } else {
            self.timer.clear()
        };
        match res {
            Ok(()) => self.timer_armed = needed,
            Err(e) => tracing::error!(error = %e, "vsock: cannot set the deadline timer"),
        }
    }

    /// Forgets connections, handshakes and replies (reset); links stay, without their
    /// staged packets.
    pub fn clear(&mut self) {
        self.ready.clear();
        self.replies.clear();
        self.handshakes.clear();
        self.listener_retry = false;
        self.ready_links.clear();
        let links: Vec<Arc<Link>> = self.links.drain().map(|(_, l)| l.link).collect();
        for l in links {
            self.add_link(l);
        }
    }

    pub fn add_link(&mut self, link: Arc<Link>) {
        let id = link.id;
        self.links.insert(id, LinkRx::new(link));
        self.mark_link_ready(id);
    }

    pub fn remove_link(&mut self, id: u64) {
        self.links.remove(&id);
    }

    /// A link's socket became readable (or it was just installed).
    pub fn mark_link_ready(&mut self, id: u64) {
        if let Some(l) = self.links.get_mut(&id) {
            l.readable = true;
            if !l.queued {
                l.queued = true;
                self.ready_links.push_back(id);
            }
        }
    }

    /// Puts `conn` on the ready list unless it is on one.
    pub fn push_ready(&mut self, conn: &Arc<Conn>) {
        if !conn.queued.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.ready.push_back(conn.clone());
        }
    }

    fn has_work(&self, shared: &Shared) -> bool {
        !self.replies.is_empty()
            || !self.ready.is_empty()
            || !self.ready_links.is_empty()
            || shared.has_replies()
    }
}

/// What went into a receive buffer.
enum Fill {
    /// A packet of this many bytes.
    Packet(u32),
    /// The buffer is unusable; it goes back empty.
    BadBuffer,
    /// Nothing to send after all (the buffer is kept for the next packet).
    Nothing,
}

/// The RX queue's handler.
#[derive(Debug)]
pub(crate) struct RxHandler {
    shared: Arc<Shared>,
    /// A buffer taken from the ring for a packet that turned out to have nothing to say.
    held: Option<u16>,
    iov: IoVecs,
    /// Its queue's waker is in `Shared` (from the first `process`).
    waker_shared: bool,
}

impl RxHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        RxHandler {
            shared,
            held: None,
            iov: IoVecs::default(),
            waker_shared: false,
        }
    }
}

impl QueueHandler for RxHandler {
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.shared.poll.as_raw_fd()]
    }

    fn handle_event(&mut self, _index: usize, _q: &mut QueueIo) {
        let mut rx = self.shared.rx_state();
        events::harvest(&self.shared, &mut rx);
    }

    fn process(&mut self, q: &mut QueueIo) -> Progress {
        let shared = self.shared.clone();
        if !self.waker_shared {
            shared.set_rx_waker(Some(q.waker()));
            self.waker_shared = true;
        }
        let mut rx = shared.rx_state();
        shared.take_ready(&mut rx.ready);
        for _ in 0..BUDGET {
            if !rx.has_work(&shared) {
                return Progress::Busy;
            }
            let Some(head) = self.held.take().or_else(|| q.pop()) else {
                return Progress::Drained;
            };
            match fill(&shared, &mut rx, q.chain(head), &mut self.iov) {
                Fill::Packet(len) => q.complete(head, len),
                Fill::BadBuffer => {
                    stats::bump(&shared.counters.bad_rx_buffers);
                    q.complete(head, 0);
                }
                Fill::Nothing => self.held = Some(head),
            }
        }
        // More to do: come back after the worker has looked at its other events.
        shared.wake_rx();
        Progress::Busy
    }

    fn drain(&mut self, q: &mut QueueIo) {
        if let Some(head) = self.held.take() {
            q.complete(head, 0);
        }
    }
}

impl Drop for RxHandler {
    fn drop(&mut self) {
        if self.waker_shared {
            // Its queue stopped: wakes go through `rx_wake` until the next handler runs.
            self.shared.set_rx_waker(None);
        }
    }
}

fn fill(shared: &Shared, rx: &mut RxState, chain: &Chain, iov: &mut IoVecs) -> Fill {
    if chain.writable_len() <= HEADER_LEN as u32 {
        return Fill::BadBuffer;
    }
    if let Some(h) = rx.replies.pop_front().or_else(|| shared.next_reply()) {
        return write_header(shared, chain, &h, 0);
    }
    for _ in 0..2 {
        rx.links_turn = !rx.links_turn;
        let got = if rx.links_turn {
            fill_from_links(shared, rx, chain)
        } else {
            fill_from_conns(shared, rx, chain, iov)
        };
        if !matches!(got, Fill::Nothing) {
            return got;
        }
    }
    Fill::Nothing
}

fn write_header(shared: &Shared, chain: &Chain, h: &Header, payload: u32) -> Fill {
    if chain.write_at(0, &h.encode()) != HEADER_LEN {
        return Fill::BadBuffer;
    }
    if h.op == op::RST {
        stats::bump(&shared.counters.resets_sent);
    }
    Fill::Packet(HEADER_LEN as u32 + payload)
}

fn fill_from_links(shared: &Shared, rx: &mut RxState, chain: &Chain) -> Fill {
    while let Some(id) = rx.ready_links.pop_front() {
        let Some(l) = rx.links.get_mut(&id) else {
            continue;
        };
        l.queued = false;
        let got = l.fill(shared, chain);
        let again = l.has_work();
        match got {
            LinkFill::Packet(n) => {
                if again {
                    rx.mark_link_ready(id);
                }
                return Fill::Packet(n);
            }
            LinkFill::BadBuffer => {
                rx.mark_link_ready(id);
                return Fill::BadBuffer;
            }
            LinkFill::Closed => {
                let link = l.link.clone();
                super::sibling::retire(shared, rx, &link);
                if let Some(h) = rx.replies.pop_front() {
                    return write_header(shared, chain, &h, 0);
                }
            }
            LinkFill::Nothing => {}
        }
    }
    Fill::Nothing
}

fn fill_from_conns(shared: &Shared, rx: &mut RxState, chain: &Chain, iov: &mut IoVecs) -> Fill {
    while let Some(conn) = rx.ready.pop_front() {
        conn.queued
            .store(false, std::sync::atomic::Ordering::Release);
        if conn.is_removed() {
            continue;
        }
        let mut st = conn.lock();
        let got = produce(shared, &conn, &mut st, chain, iov);
        if st.phase == Phase::Closed && st.owed == 0 {
            shared.remove(&conn);
        } else if st.has_rx_work() {
            rx.push_ready(&conn);
        }
        drop(st);
        if let Some(f) = got {
            return f;
        }
    }
    Fill::Nothing
}

/// The next packet `conn` has for the guest, written into `chain`.
fn produce(
    shared: &Shared,
    conn: &Arc<Conn>,
    st: &mut ConnState,
    chain: &Chain,
    iov: &mut IoVecs,
) -> Option<Fill> {
    let (key, cid) = (conn.key, shared.guest_cid);
    if st.owed & owe::RST != 0 {
        st.owed = 0;
        return Some(write_header(
            shared,
            chain,
            &st.header(key, cid, op::RST),
            0,
        ));
    }
    if st.owed & owe::REQUEST != 0 {
        st.owed &= !owe::REQUEST;
        st.deadline = Some(Instant::now() + REQUEST_TIMEOUT);
        shared.watch_deadline(conn);
        return Some(write_header(
            shared,
            chain,
            &st.header(key, cid, op::REQUEST),
            0,
        ));
    }
    if st.owed & owe::RESPONSE != 0 {
        st.owed &= !owe::RESPONSE;
        return Some(write_header(
            shared,
            chain,
            &st.header(key, cid, op::RESPONSE),
            0,
        ));
    }
    if st.can_send_data() {
        if let Some(f) = host_data(shared, conn, st, chain, iov) {
            return Some(f);
        }
    }
    if st.owed & owe::CREDIT_UPDATE != 0 {
        return Some(write_header(
            shared,
            chain,
            &st.header(key, cid, op::CREDIT_UPDATE),
            0,
        ));
    }
    None
}

/// Reads host data into `chain` as far as the guest's credit allows; end of file becomes a
/// SHUTDOWN(SEND), a read error an RST.
fn host_data(
    shared: &Shared,
    conn: &Arc<Conn>,
    st: &mut ConnState,
    chain: &Chain,
    iov: &mut IoVecs,
) -> Option<Fill> {
    let (key, cid) = (conn.key, shared.guest_cid);
    let free = st.credit.peer_free();
    if free == 0 {
        st.credit_requested = true;
        return Some(write_header(
            shared,
            chain,
            &st.header(key, cid, op::CREDIT_REQUEST),
            0,
        ));
    }
    let room = chain.writable_len() - HEADER_LEN as u32;
    let want = iov.set(chain.writable(), HEADER_LEN as u32, room.min(free));
    let stream = st.stream.as_ref()?;
    match iov::readv(stream.as_fd(), iov) {
        Ok(0) => {
            // End of file: the host program will send no more. If it closed its socket
            // altogether (hang-up, not a half close) it will not receive either.
            let gone = hung_up(stream);
            st.host_eof = true;
            let mut h = st.header(key, cid, op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            if gone {
                h.flags |= SHUTDOWN_RCV;
            }
            Some(write_header(shared, chain, &h, 0))
        }
        Ok(n) => {
            let n = (n as u32).min(want);
            st.credit.sent(n);
            stats::add(&shared.counters.bytes_to_guest, u64::from(n));
            let mut h = st.header(key, cid, op::RW);
            h.len = n;
            Some(write_header(shared, chain, &h, n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            st.readable = false;
            None
        }
        Err(_) => {
            st.kill(true);
            st.owed = 0;
            Some(write_header(
                shared,
                chain,
                &st.header(key, cid, op::RST),
                0,
            ))
        }
    }
}

/// Whether the host program closed its end completely (POLLHUP), as opposed to shutting
/// down its write side only.
fn hung_up(stream: &std::os::unix::net::UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `pfd` is one live pollfd for the duration of the call; timeout 0.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}
