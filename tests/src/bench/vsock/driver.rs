//! The guest driver half of virtio-vsock, played from the host: the RX queue (0) full of
//! two-descriptor receive buffers (a 44-byte header, then a data buffer, as Linux 6.1 posts
//! them), the TX queue (1) with one slot of two descriptors per packet, stream connections
//! with credit both ways (virtio 1.2, 5.10.6), and the three workloads: bulk to the host,
//! bulk from the host, connection churn. One thread; nothing is allocated per packet.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vu_devices::vsock::packet::{
    op, ty, Header, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

use super::{Mode, Pace};
use crate::bench::control::QueueFds;
use crate::bench::memory::{GuestMemory, QueueLayout};
use crate::bench::procstat::thread_cpu_ns;
use crate::bench::ring::{DriverRing, DESC_F_NEXT, DESC_F_WRITE};

/// Bytes per header slot.
pub const HDR_STRIDE: u64 = 64;
/// First local port of the driver's own connections.
const FIRST_PORT: u32 = 1 << 20;
/// Payload of one churn connection.
const CHURN_MSG: u32 = 64;

/// What the driver does.
#[derive(Debug, Clone)]
pub struct Work {
    /// The workload.
    pub mode: Mode,
    /// The guest's CID (from the config space).
    pub guest_cid: u64,
    /// The host port (bulk to the host, churn) or the driver's listening port (from host).
    pub port: u32,
    /// Parallel streams (bulk) or connections in flight (churn).
    pub parallel: usize,
    /// Payload bytes per TX packet.
    pub tx_pkt: u32,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Receive buffer advertised per connection.
    pub buf_alloc: u32,
    /// Measured run time.
    pub runtime: Duration,
    /// Light load: a rate limit; None: as fast as possible.
    pub pace: Option<Pace>,
    /// Give up after this long without progress.
    pub stall_timeout: Duration,
}

/// What the driver measured.
#[derive(Debug, Clone, Default)]
pub struct DriverResult {
    /// Payload bytes sent (to host) or received (from host) in the measured window.
    pub bytes: u64,
    /// Churn: connections completed in the measured window.
    pub connections: u64,
    /// Connections reset by the device when they should not have been.
    pub resets: u64,
    /// Packets sent and received.
    pub tx_packets: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Kicks sent.
    pub kicks: u64,
    /// Sleeps on the call eventfds.
    pub waits: u64,
    /// CPU of the driver thread in the window, ns.
    pub cpu_ns: u64,
    /// The measured window.
    pub elapsed: Duration,
}

/// Where a run is, for the caller's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The receive buffers are posted: host programs may connect.
    Ready,
    /// The measured window opens.
    Start,
    /// The measured window closes.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    /// We sent SHUTDOWN; waiting for the peer's.
    Closing,
}

#[derive(Debug)]
struct Conn {
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we sent (free running).
    tx_cnt: u32,
    /// Bytes we consumed (free running).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the peer.
    told_fwd_cnt: u32,
}

impl Conn {
    fn new(state: State) -> Conn {
        Conn {
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            told_fwd_cnt: 0,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// A queue's memory: rings, then one header slot and one data buffer per packet slot.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// The rings (`meta` is the header area, `data` the buffers).
    pub layout: QueueLayout,
}

impl Area {
    fn hdr(&self, slot: u16) -> u64 {
        self.layout.meta + HDR_STRIDE * u64::from(slot)
    }

    fn data(&self, slot: u16) -> u64 {
        self.layout.data + self.layout.data_stride * u64::from(slot)
    }
}

/// The two queues and everything the driver keeps.
#[derive(Debug)]
pub struct Driver {
    work: Work,
    mem: Arc<GuestMemory>,
    rx: DriverRing,
    tx: DriverRing,
    rx_area: Area,
    tx_area: Area,
    rx_fds: QueueFds,
    tx_fds: QueueFds,
    tx_free: Vec<u16>,
    /// Control packets waiting for a TX slot.
    outbox: VecDeque<((u32, u32), u16, u32, u32)>,
    conns: HashMap<(u32, u32), Conn>,
    next_port: u32,
    /// Churn: connections opened in the measured window (for the pace).
    opened_in_window: u64,
    r: DriverResult,
    measuring: bool,
}

impl Driver {
    /// A driver over the rings of `rx_area` and `tx_area` (queues of `size` descriptors).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        work: Work,
        mem: Arc<GuestMemory>,
        size: u16,
        event_idx: bool,
        rx_area: Area,
        tx_area: Area,
        rx_fds: QueueFds,
        tx_fds: QueueFds,
    ) -> Driver {
        let rx = DriverRing::new(mem.clone(), &rx_area.layout, size, event_idx);
        let tx = DriverRing::new(mem.clone(), &tx_area.layout, size, event_idx);
        let slots = size / 2;
        Driver {
            tx_free: (0..slots).rev().collect(),
            outbox: VecDeque::new(),
            conns: HashMap::new(),
            next_port: FIRST_PORT,
            opened_in_window: 0,
            r: DriverResult::default(),
            measuring: false,
            work,
            mem,
            rx,
            tx,
            rx_area,
            tx_area,
            rx_fds,
            tx_fds,
        }
    }

    /// Posts every receive buffer.
    fn fill_rx(&mut self) {
        for b in 0..self.rx.size() / 2 {
            let (h, d) = (2 * b, 2 * b + 1);
            let hdr = self.rx_area.hdr(b);
            let data = self.rx_area.data(b);
            self.rx
                .set_desc(h, hdr, HEADER_LEN as u32, DESC_F_WRITE | DESC_F_NEXT, d);
            self.rx.set_desc(d, data, self.work.rx_buf, DESC_F_WRITE, 0);
            self.rx.push_avail(h);
        }
    }

    /// Sends one packet of connection `key` (payload: the slot's buffer, `len` bytes), or
    /// keeps it for when a TX slot is free (control packets must not be lost).
    fn send(&mut self, key: (u32, u32), op: u16, len: u32, flags: u32) -> bool {
        if !self.outbox.is_empty() || self.tx_free.is_empty() {
            self.outbox.push_back((key, op, len, flags));
            return true;
        }
        self.post(key, op, len, flags)
    }

    /// Sends what waited for a TX slot.
    fn flush_outbox(&mut self) {
        while !self.tx_free.is_empty() {
            let Some((key, op, len, flags)) = self.outbox.pop_front() else {
                break;
            };
            self.post(key, op, len, flags);
        }
    }

    /// Writes one packet into a free TX slot; false when none is free or the connection
    /// is gone.
    fn post(&mut self, key: (u32, u32), op: u16, len: u32, flags: u32) -> bool {
        let Some(slot) = self.tx_free.pop() else {
            return false;
        };
        let (buf_alloc, fwd_cnt) = match self.conns.get_mut(&key) {
            Some(c) => {
                c.tx_cnt = c.tx_cnt.wrapping_add(len);
                c.told_fwd_cnt = c.fwd_cnt;
                (self.work.buf_alloc, c.fwd_cnt)
            }
            // A connection already gone (an RST for it, or one to an unknown one).
            None => (self.work.buf_alloc, 0),
        };
        let h = Header {
            src_cid: self.work.guest_cid,
            dst_cid: HOST_CID,
            src_port: key.0,
            dst_port: key.1,
            len,
            ty: ty::STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.mem.write(self.tx_area.hdr(slot), &h.encode());
        let (hd, dd) = (2 * slot, 2 * slot + 1);
        let hdr = self.tx_area.hdr(slot);
        if len > 0 {
            let data = self.tx_area.data(slot);
            self.tx
                .set_desc(hd, hdr, HEADER_LEN as u32, DESC_F_NEXT, dd);
            self.tx.set_desc(dd, data, len, 0, 0);
        } else {
            self.tx.set_desc(hd, hdr, HEADER_LEN as u32, 0, 0);
        }
        self.tx.push_avail(hd);
        self.r.tx_packets += 1;
        true
    }

    fn open(&mut self) {
        let local = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(FIRST_PORT);
        let key = (local, self.work.port);
        self.conns.insert(key, Conn::new(State::Connecting));
        self.send(key, op::REQUEST, 0, 0);
        self.opened_in_window += u64::from(self.measuring);
    }

    fn reap_tx(&mut self) {
        let used = self.tx.used_idx();
        while let Some((id, _)) = self.tx.pop_used(used) {
            self.tx_free.push((id / 2) as u16);
        }
        self.flush_outbox();
    }

    /// Handles every receive buffer the device filled; returns how many.
    fn reap_rx(&mut self) -> Result<usize> {
        let used = self.rx.used_idx();
        let mut n = 0;
        while let Some((id, len)) = self.rx.pop_used(used) {
            let b = (id / 2) as u16;
            let mut raw = [0u8; HEADER_LEN];
            self.mem.read(self.rx_area.hdr(b), &mut raw);
            let h = Header::decode(&raw).unwrap_or_default();
            if (len as usize) < HEADER_LEN || h.len > self.work.rx_buf {
                bail!("the device filled receive buffer {id} with {len} bytes, header {h:?}");
            }
            self.packet(&h);
            self.rx.push_avail(id as u16);
            n += 1;
        }
        self.r.rx_packets += n as u64;
        Ok(n)
    }

    fn packet(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op == op::REQUEST && h.dst_port == self.work.port {
                let mut c = Conn::new(State::Open);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                self.conns.insert(key, c);
                self.send(key, op::RESPONSE, 0, 0);
            } else if h.op != op::RST {
                self.send(key, op::RST, 0, 0);
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        let state = c.state;
        if h.op == op::RW {
            c.fwd_cnt = c.fwd_cnt.wrapping_add(h.len);
        }
        // Tell the peer once a quarter of the buffer was consumed.
        let owe_credit = c.fwd_cnt.wrapping_sub(c.told_fwd_cnt) >= self.work.buf_alloc / 4;
        match h.op {
            op::RESPONSE if state == State::Connecting => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.state = State::Open;
                }
                if self.work.mode == Mode::Churn {
                    self.send(key, op::RW, CHURN_MSG, 0);
                    self.send(key, op::SHUTDOWN, 0, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.state = State::Closing;
                    }
                }
            }
            op::RW => {
                if self.measuring {
                    self.r.bytes += u64::from(h.len);
                }
                if owe_credit {
                    self.send(key, op::CREDIT_UPDATE, 0, 0);
                }
            }
            op::CREDIT_REQUEST => {
                self.send(key, op::CREDIT_UPDATE, 0, 0);
            }
            op::SHUTDOWN | op::RST => {
                if h.op == op::SHUTDOWN {
                    self.send(key, op::RST, 0, 0);
                }
                self.conns.remove(&key);
                if state == State::Closing {
                    if self.measuring {
                        self.r.connections += 1;
                    }
                } else {
                    self.r.resets += 1;
                }
            }
            _ => {}
        }
    }

    /// Bulk to the host: RW packets on every open stream while credit, slots and the pace
    /// allow.
    fn produce(&mut self, allowed: u64) {
        let keys: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .map(|(k, _)| *k)
            .collect();
        let mut budget = allowed;
        'outer: loop {
            let mut sent = false;
            for k in &keys {
                let credit = self.conns.get(k).map_or(0, |c| c.credit());
                let len = credit.min(self.work.tx_pkt);
                if len == 0 || budget < u64::from(len) || self.tx_free.is_empty() {
                    continue;
                }
                if !self.outbox.is_empty() || !self.post(*k, op::RW, len, 0) {
                    break 'outer;
                }
                budget -= u64::from(len);
                if self.measuring {
                    self.r.bytes += u64::from(len);
                }
                sent = true;
            }
            if !sent {
                break;
            }
        }
    }

    fn kick(&mut self) -> Result<()> {
        if self.rx.publish() {
            self.r.kicks += 1;
            self.rx_fds.kick.write(1)?;
        }
        if self.tx.publish() {
            self.r.kicks += 1;
            self.tx_fds.kick.write(1)?;
        }
        Ok(())
    }

    fn wait(&mut self, epoll: &Epoll, ms: i32) -> Result<()> {
        let armed_rx = self.rx.arm_notification();
        let armed_tx = self.tx.arm_notification();
        if armed_rx || armed_tx {
            return Ok(());
        }
        self.r.waits += 1;
        let mut events = [EpollEvent::default(); 2];
        match epoll.wait(ms, &mut events) {
            Ok(_) => {
                let _ = self.rx_fds.call.read();
                let _ = self.tx_fds.call.read();
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => bail!("epoll_wait on the call eventfds: {e}"),
        }
    }

    fn open_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.state == State::Open)
            .count()
    }

    /// Runs the workload: posts the receive buffers (`hook(Phase::Ready)`), opens the
    /// connections, measures for `runtime` (`hook(Phase::Start)` when the window opens,
    /// `hook(Phase::End)` when it closes), then closes every connection.
    pub fn run(mut self, mut hook: impl FnMut(Phase)) -> Result<DriverResult> {
        let epoll = Epoll::new()?;
        for (fd, t) in [
            (self.rx_fds.call.as_raw_fd(), 0),
            (self.tx_fds.call.as_raw_fd(), 1),
        ] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t))?;
        }
        self.fill_rx();
        self.kick()?;
        hook(Phase::Ready);
        // Bulk to the host: the streams are opened first.
        if self.work.mode == Mode::ToHost {
            for _ in 0..self.work.parallel {
                self.open();
            }
        }
        self.kick()?;
        let setup_deadline = Instant::now() + self.work.stall_timeout;
        while self.open_count() < self.work.parallel && self.work.mode != Mode::Churn {
            if Instant::now() > setup_deadline {
                bail!(
                    "{} of {} streams opened within {:?}",
                    self.open_count(),
                    self.work.parallel,
                    self.work.stall_timeout
                );
            }
            self.reap_tx();
            if self.reap_rx()? == 0 {
                self.kick()?;
                self.wait(&epoll, 50)?;
            }
            self.kick()?;
        }
        hook(Phase::Start);
        self.measure(&epoll)?;
        hook(Phase::End);
        self.close_all(&epoll)?;
        Ok(self.r)
    }

    fn measure(&mut self, epoll: &Epoll) -> Result<()> {
        self.measuring = true;
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        let end = start + self.work.runtime;
        let mut last_progress = start;
        let (mut last_bytes, mut last_conns) = (0u64, 0u64);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.reap_tx();
            let got = self.reap_rx()?;
            let allowed = match self.work.pace {
                Some(p) => p.allowed(now.duration_since(start), self.progress()),
                None => u64::MAX,
            };
            match self.work.mode {
                Mode::ToHost => self.produce(allowed),
                Mode::Churn => {
                    let mut allowed = allowed;
                    while self.conns.len() < self.work.parallel
                        && allowed > 0
                        && !self.tx_free.is_empty()
                    {
                        self.open();
                        allowed -= 1;
                    }
                }
                Mode::FromHost => {}
            }
            self.kick()?;
            if self.r.bytes != last_bytes || self.r.connections != last_conns {
                (last_bytes, last_conns) = (self.r.bytes, self.r.connections);
                last_progress = now;
            } else if now.duration_since(last_progress) > self.work.stall_timeout {
                bail!(
                    "no progress for {:?} ({} bytes, {} connections, {} open, {} TX slots free)",
                    self.work.stall_timeout,
                    self.r.bytes,
                    self.r.connections,
                    self.conns.len(),
                    self.tx_free.len()
                );
            }
            if got == 0 && self.tx.used_idx() == self.tx.last_used() {
                let ms = if self.work.pace.is_some() { 1 } else { 100 };
                self.wait(epoll, ms)?;
            }
        }
        self.r.elapsed = start.elapsed();
        self.r.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
        self.measuring = false;
        Ok(())
    }

    fn progress(&self) -> u64 {
        match self.work.mode {
            Mode::Churn => self.opened_in_window,
            _ => self.r.bytes,
        }
    }

    /// RST for every connection, then waits briefly for the TX queue to drain.
    fn close_all(&mut self, epoll: &Epoll) -> Result<()> {
        let keys: Vec<(u32, u32)> = self.conns.keys().copied().collect();
        for k in keys {
            self.send(k, op::RST, 0, 0);
            self.conns.remove(&k);
        }
        self.kick()?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while (!self.outbox.is_empty() || self.tx_free.len() < usize::from(self.tx.size() / 2))
            && Instant::now() < deadline
        {
            self.reap_tx();
            let _ = self.reap_rx()?;
            self.kick()?;
            self.wait(epoll, 20)?;
        }
        Ok(())
    }
}
