//! Sibling links: vsock packets between this guest and another guest of the same group,
//! each served by its own device process, over a SOCK_SEQPACKET socketpair the supervisor
//! made (one message = one packet: header and payload).
//!
//! The device does not take part in a sibling flow: both guests run the protocol, credit
//! included, end to end. It checks what crosses: the guest may only send as its own CID
//! (checked for every TX packet), and a sibling may only send packets from its CID to ours,
//! well framed, of a known type and operation, with at most [`MAX_PAYLOAD`] bytes. It keeps
//! the set of flows crossing each link, so that when a link goes away (the sibling's device
//! died, or the supervisor handed a new link) the guest's sockets on it are reset.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vu_core::Chain;

use super::error::VsockError;
use super::iov::{self, IoVecs};
use super::packet::{self, op, valid_guest_cid, Header, HEADER_LEN, MAX_PAYLOAD};
use super::rx::RxState;
use super::shared::{token, Shared};
use super::stats;

/// Flows one link may carry; more connection requests are refused.
pub(crate) const MAX_FLOWS: usize = 4096;

/// One link to a sibling.
#[derive(Debug)]
pub(crate) struct Link {
    pub id: u64,
    pub peer_cid: u64,
    pub sock: OwnedFd,
    /// (our guest's port, the sibling guest's port) of every flow that began and has not
    /// been reset, with its socket type.
    flows: Mutex<HashMap<(u32, u32), u16>>,
    pub dead: AtomicBool,
}

impl Link {
    /// Records what a packet on this link means for its flow. False when a new flow does
    /// not fit.
    pub fn note(&self, h: &Header, guest_port: u32, peer_port: u32) -> bool {
        let mut f = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        match h.op {
            op::REQUEST => {
                if f.len() >= MAX_FLOWS && !f.contains_key(&(guest_port, peer_port)) {
                    return false;
                }
                f.insert((guest_port, peer_port), h.ty);
            }
            op::RST => {
                f.remove(&(guest_port, peer_port));
            }
            _ => {}
        }
        true
    }

    /// Forgets every flow (the guest was reset).
    pub fn forget_flows(&self) {
        self.flows.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// RSTs that tell our guest every flow on this link is gone.
    pub fn resets(&self, guest_cid: u64) -> Vec<Header> {
        let flows = std::mem::take(&mut *self.flows.lock().unwrap_or_else(|e| e.into_inner()));
        flows
            .into_iter()
            .map(|((guest_port, peer_port), ty)| Header {
                src_cid: self.peer_cid,
                dst_cid: guest_cid,
                src_port: peer_port,
                dst_port: guest_port,
                ty,
                op: op::RST,
                ..Header::default()
            })
            .collect()
    }
}

/// Installs a link to `peer_cid` (replacing an older one, whose flows are reset).
pub(crate) fn install(
    shared: &Shared,
    rx: &mut RxState,
    peer_cid: u64,
    sock: OwnedFd,
) -> Result<(), VsockError> {
    let bad = |reason| VsockError::BadLink {
        cid: peer_cid,
        reason,
    };
    if !valid_guest_cid(peer_cid) {
        return Err(bad("reserved CID"));
    }
    if peer_cid == shared.guest_cid {
        return Err(bad("it is this guest's own CID"));
    }
    iov::set_nonblocking(sock.as_fd()).map_err(|_| bad("not a socket"))?;
    let link = Arc::new(Link {
        id: shared.next_id(),
        peer_cid,
        sock,
        flows: Mutex::new(HashMap::new()),
        dead: AtomicBool::new(false),
    });
    let fd = link.sock.as_raw_fd();
    let rx_events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
    shared
        .poll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(rx_events, token::LINK | link.id),
        )
        .map_err(VsockError::Setup)?;
    let tx_events = EventSet::OUT | EventSet::EDGE_TRIGGERED;
    if let Err(e) = shared.tx_poll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(tx_events, link.id),
    ) {
        let _ = shared
            .poll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        return Err(VsockError::Setup(e));
    }
    let old = shared
        .links
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer_cid, link.clone());
    rx.add_link(link);
    if let Some(old) = old {
        retire(shared, rx, &old);
    }
    tracing::info!(peer_cid, "vsock: sibling link installed");
    Ok(())
}

/// Takes a link out of service: its flows are reset in the guest and the TX worker is told
/// (it may be waiting on it).
pub(crate) fn retire(shared: &Shared, rx: &mut RxState, link: &Arc<Link>) {
    if link.dead.swap(true, Ordering::AcqRel) {
        return;
    }
    {
        let mut links = shared.links.write().unwrap_or_else(|e| e.into_inner());
        if links.get(&link.peer_cid).is_some_and(|l| l.id == link.id) {
            links.remove(&link.peer_cid);
        }
    }
    let fd = link.sock.as_raw_fd();
    let _ = shared
        .poll
        .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    let _ = shared
        .tx_poll
        .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    rx.remove_link(link.id);
    rx.replies.extend(link.resets(shared.guest_cid));
    let _ = shared.tx_wake.write(1);
    tracing::info!(peer_cid = link.peer_cid, "vsock: sibling link gone");
}

/// What became of a packet for a sibling.
#[derive(Debug)]
pub(crate) enum Sent {
    /// It went.
    Gone,
    /// The link is full: the packet, copied out of guest memory, waits.
    Full(Vec<u8>),
    /// The link is gone.
    Dead,
}

/// Sends a guest packet (`h`, already checked, and `h.len` payload bytes after the header in
/// `chain`) over `link`.
pub(crate) fn send(link: &Link, h: &Header, chain: &Chain, iov: &mut IoVecs) -> Sent {
    let head = h.encode();
    if iov.set(chain.readable(), HEADER_LEN as u32, h.len) != h.len {
        return Sent::Dead;
    }
    match iov::send(link.sock.as_fd(), &head, iov) {
        Ok(_) => Sent::Gone,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let mut copy = vec![0u8; HEADER_LEN + h.len as usize];
            copy[..HEADER_LEN].copy_from_slice(&head);
            if chain.read_at(HEADER_LEN as u32, &mut copy[HEADER_LEN..]) != h.len as usize {
                return Sent::Dead;
            }
            Sent::Full(copy)
        }
        Err(_) => Sent::Dead,
    }
}

/// Sends a packet that waited; false while the link is still full.
pub(crate) fn send_waiting(link: &Link, bytes: &[u8]) -> io::Result<bool> {
    match iov::send_bytes(link.sock.as_fd(), bytes) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// The RX side of a link: the message being delivered (a packet larger than the guest's
/// receive buffer goes out in pieces).
#[derive(Debug)]
pub(crate) struct LinkRx {
    pub link: Arc<Link>,
    buf: Vec<u8>,
    staged: Option<Header>,
    off: u32,
    /// The socket may hold messages (edge seen, no EAGAIN since).
    pub readable: bool,
    /// In the RX worker's ready list.
    pub queued: bool,
}

/// What a link gave the RX worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LinkFill {
    /// A packet of this many bytes (header included) is in the chain.
    Packet(u32),
    /// Nothing waiting.
    Nothing,
    /// The link closed.
    Closed,
    /// The chain cannot take the packet (it goes back empty).
    BadBuffer,
}

impl LinkRx {
    pub fn new(link: Arc<Link>) -> Self {
        LinkRx {
            link,
            buf: Vec::new(),
            staged: None,
            off: 0,
            readable: true,
            queued: false,
        }
    }

    /// Whether a packet is (or may be) waiting.
    pub fn has_work(&self) -> bool {
        self.staged.is_some() || self.readable
    }

    /// Reads messages until a valid one is staged (invalid ones are dropped and counted).
    fn stage(&mut self, shared: &Shared) -> Result<bool, ()> {
        if self.buf.len() < HEADER_LEN + MAX_PAYLOAD as usize + 1 {
            self.buf.resize(HEADER_LEN + MAX_PAYLOAD as usize + 1, 0);
        }
        for _ in 0..64 {
            let n = match iov::recv(self.link.sock.as_fd(), &mut self.buf, false, true) {
                Ok(0) => return Err(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(()),
            };
            match self.validate(shared, n) {
                Some(h) => {
                    self.staged = Some(h);
                    self.off = 0;
                    return Ok(true);
                }
                None => {
                    stats::bump(&shared.counters.sibling_rejected);
                    vu_core::warn_ratelimited!(
                        peer_cid = self.link.peer_cid,
                        "vsock: invalid packet from a sibling dropped"
                    );
                }
            }
        }
        Ok(false)
    }

    fn validate(&self, shared: &Shared, n: usize) -> Option<Header> {
        if n > self.buf.len() || n < HEADER_LEN {
            return None;
        }
        let h = Header::decode(&self.buf[..HEADER_LEN])?;
        let avail = (n - HEADER_LEN) as u32;
        packet::check(&h, avail, self.link.peer_cid, shared.seqpacket(), true).ok()?;
        if h.dst_cid != shared.guest_cid || h.len > MAX_PAYLOAD {
            return None;
        }
        if !self.link.note(&h, h.dst_port, h.src_port) {
            return None;
        }
        Some(h)
    }

    /// Puts the next packet (or the next piece of a staged one) into `chain`.
    pub fn fill(&mut self, shared: &Shared, chain: &Chain) -> LinkFill {
        if self.staged.is_none() {
            match self.stage(shared) {
                Ok(true) => {}
                Ok(false) => return LinkFill::Nothing,
                Err(()) => return LinkFill::Closed,
            }
        }
        let Some(h) = self.staged else {
            return LinkFill::Nothing;
        };
        let room = chain.writable_len().saturating_sub(HEADER_LEN as u32);
        let left = h.len - self.off;
        let chunk = left.min(room);
        if chunk == 0 && left > 0 {
            return LinkFill::BadBuffer;
        }
        let mut out = h;
        out.len = chunk;
        if chunk < left {
            // Message boundaries travel on the last piece only.
            out.flags = 0;
        }
        let start = HEADER_LEN + self.off as usize;
        let data = &self.buf[start..start + chunk as usize];
        if chain.write_at(0, &out.encode()) != HEADER_LEN
            || chain.write_at(HEADER_LEN as u32, data) != data.len()
        {
            return LinkFill::BadBuffer;
        }
        self.off += chunk;
        if self.off >= h.len {
            self.staged = None;
            stats::bump(&shared.counters.sibling_packets_in);
        }
        LinkFill::Packet(HEADER_LEN as u32 + chunk)
    }
}
