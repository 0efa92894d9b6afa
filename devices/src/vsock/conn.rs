//! One connection between a guest socket and a host UNIX stream: its address, its state,
//! its credit, and the bounded buffer of guest data the host has not taken yet.
//!
//! A connection is shared by the TX worker (packets from the guest) and the RX worker (host
//! sockets, packets to the guest) behind its own mutex. Lock order: a connection's lock may
//! be held while taking the table, ready-list or timed-list locks, never the other way round.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use vu_core::Chain;

use super::credit::Credit;
use super::iov;
use super::packet::{ty, Header, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// A connection's address: the host-side port and the guest's port (the host CID is
/// implied; sibling traffic has no connection objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    /// Host-side port: the port a guest connected to, or the port assigned to a host
    /// program that connected through the listener.
    pub host_port: u32,
    /// The guest's port.
    pub guest_port: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The guest asked to connect; the broker is working on request `id`.
    Connecting(u64),
    /// A host program asked to connect; our REQUEST is owed or sent, the guest's RESPONSE
    /// awaited.
    HostInit,
    /// Data flows (possibly half closed).
    Established,
    /// Over: the host stream is closed; an RST may still be owed to the guest, then the
    /// connection leaves the table.
    Closed,
}

/// Control packets owed to the guest.
pub(crate) mod owe {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
}

/// Guest data the host socket has not taken yet; at most the connection's `buf_alloc`
/// bytes (a guest that sends more is reset before anything is buffered). Allocated while in
/// use only, so an idle connection costs no buffer.
#[derive(Debug, Default)]
pub(crate) struct TxBuf {
    buf: Vec<u8>,
    head: usize,
}

impl TxBuf {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `len` bytes of `chain`'s readable part from `offset`; false if the chain
    /// could not supply them.
    pub fn append_from(&mut self, chain: &Chain, offset: u32, len: u32) -> bool {
        if self.head > 0 && self.head >= self.buf.len() / 2 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + len as usize, 0);
        let got = chain.read_at(offset, &mut self.buf[start..]);
        if got != len as usize {
            self.buf.truncate(start);
            return false;
        }
        true
    }

    /// Writes as much as the stream takes; returns the bytes written.
    pub fn flush(&mut self, stream: &UnixStream) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match iov::send_bytes(stream.as_fd(), &self.buf[self.head..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.head += n;
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if self.is_empty() {
            self.clear();
        }
        Ok(total)
    }

    /// Drops everything and frees the memory.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.head = 0;
    }
}

/// Everything about a connection that changes.
#[derive(Debug)]
pub(crate) struct ConnState {
    pub phase: Phase,
    /// The host side (None while connecting and once closed).
    pub stream: Option<UnixStream>,
    pub credit: Credit,
    pub txbuf: TxBuf,
    /// [`owe`] bits.
    pub owed: u8,
    /// The host stream may have data (edge seen, no EAGAIN since).
    pub readable: bool,
    /// The host stream reached end of file (a SHUTDOWN(SEND) went to the guest).
    pub host_eof: bool,
    /// SHUTDOWN flags the guest has sent (they accumulate).
    pub guest_shut: u32,
    /// We shut the host stream's write side.
    pub host_shut_wr: bool,
    /// A CREDIT_REQUEST went out and the guest has granted no credit since (its answers
    /// that grant nothing do not count: we wait for it to free space, not ask again).
    pub credit_requested: bool,
    /// The host stream is watched for room to write (guest data waits in `txbuf`).
    pub watching_out: bool,
    /// When the connection is killed if it has not moved on (waiting for the guest's
    /// RESPONSE, or for the host to drain after the guest closed).
    pub deadline: Option<Instant>,
}

impl ConnState {
    fn new(phase: Phase, stream: Option<UnixStream>, credit: Credit) -> Self {
        ConnState {
            phase,
            stream,
            credit,
            txbuf: TxBuf::default(),
            owed: 0,
            readable: false,
            host_eof: false,
            guest_shut: 0,
            host_shut_wr: false,
            credit_requested: false,
            watching_out: false,
            deadline: None,
        }
    }

    /// Whether host data could go to the guest now (given a receive buffer).
    pub fn can_send_data(&self) -> bool {
        self.phase == Phase::Established
            && self.readable
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && (self.credit.peer_free() > 0 || !self.credit_requested)
    }

    /// Whether the RX worker has something to send for this connection.
    pub fn has_rx_work(&self) -> bool {
        self.owed != 0 || self.can_send_data()
    }

    /// Ends the connection: the host stream closes, buffered data is dropped, and an RST
    /// is owed to the guest if `rst`.
    pub fn kill(&mut self, rst: bool) {
        self.phase = Phase::Closed;
        self.stream = None;
        self.txbuf.clear();
        self.deadline = None;
        self.readable = false;
        self.owed = if rst { owe::RST } else { 0 };
    }

    /// The header of a packet from the host side of `key` to the guest, with our credit.
    pub fn header(&mut self, key: ConnKey, guest_cid: u64, op: u16) -> Header {
        let (buf_alloc, fwd_cnt) = self.credit.stamp();
        self.owed &= !owe::CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            len: 0,
            ty: ty::STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// After the guest's data was buffered or flushed: owe a credit update if the guest
    /// needs one, and finish a half or full close the guest asked for once nothing waits.
    /// Returns true if the connection ended (an RST is owed).
    pub fn after_tx(&mut self) -> bool {
        if self.credit.peer_needs_update(self.txbuf.len()) {
            self.owed |= owe::CREDIT_UPDATE;
        }
        if !self.txbuf.is_empty() {
            return false;
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_shut_wr {
            if let Some(s) = self.stream.as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            self.host_shut_wr = true;
        }
        if self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed and everything it sent reached the host: answer with the RST
            // that completes a clean disconnect.
            self.kill(true);
            return true;
        }
        false
    }
}

/// A connection: immutable identity plus its locked state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: u64,
    pub key: ConnKey,
    /// In a ready list (the RX worker will look at it).
    pub queued: AtomicBool,
    /// Out of the table; whoever still holds it must let go.
    pub removed: AtomicBool,
    state: Mutex<ConnState>,
}

impl Conn {
    pub fn new(
        id: u64,
        key: ConnKey,
        phase: Phase,
        stream: Option<UnixStream>,
        credit: Credit,
    ) -> Self {
        Conn {
            id,
            key,
            queued: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            state: Mutex::new(ConnState::new(phase, stream, credit)),
        }
    }

    /// The state (a poisoned lock is taken over: the state stays consistent field by field).
    pub fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it has left the table.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// Writes `len` bytes of `chain`'s payload (after the header) to the host: straight to the
/// stream while nothing waits, the rest into the buffer. Returns bytes written to the host,
/// or an error that ends the connection.
pub(crate) fn guest_data_to_host(
    st: &mut ConnState,
    chain: &Chain,
    len: u32,
    iov: &mut iov::IoVecs,
) -> std::io::Result<u32> {
    let mut written = 0u32;
    if st.txbuf.is_empty() {
        let Some(stream) = st.stream.as_ref() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let named = iov.set(chain.readable(), HEADER_LEN as u32, len);
        if named != len {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        match iov::send(stream.as_fd(), &[], iov) {
            Ok(n) => written = n as u32,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    if written < len
        && !st
            .txbuf
            .append_from(chain, HEADER_LEN as u32 + written, len - written)
    {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    st.credit.forwarded(written);
    Ok(written)
}
