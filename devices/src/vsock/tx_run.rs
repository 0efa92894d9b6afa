//! Consecutive data packets of one connection, sent to the host stream with one `sendmsg`.
//!
//! A Linux guest writing to a socket fills its credit with packets and kicks once (a 64 KiB
//! buffer of 8 KiB packets is eight packets per kick). Sent one by one, each costs a system
//! call and a wake-up of the host reader; gathered, the eight cost one of each. Only plain
//! data joins a run: an RW packet that passes every check, for an established connection
//! whose buffer is empty (nothing of it waits for the host, so the run goes straight to the
//! stream), within the guest's credit counting the run. Anything else ends the run first and
//! takes the ordinary path, so the order of everything the guest sent is kept. The run's
//! chains are held until it is sent: what the stream does not take is copied into the
//! connection's buffer from them, and only then are they completed.

use std::os::fd::AsFd;
use std::sync::Arc;

use vu_core::{Chain, QueueIo};

use super::conn::{Conn, ConnState, Phase};
use super::iov::{self, IoVecs};
use super::packet::{self, op, ty, Header, HEADER_LEN, HOST_CID, SHUTDOWN_SEND};
use super::shared::Shared;
use super::stats;

/// Most packets in one run.
const MAX_PACKETS: usize = 64;
/// Most iovecs in one run (the kernel takes up to 1024 per call).
const MAX_IOVS: usize = 512;

/// The run being gathered (empty between runs; its buffers are kept).
#[derive(Debug, Default)]
pub(crate) struct Run {
    conn: Option<Arc<Conn>>,
    /// The chains and their payload lengths, in order.
    packets: Vec<(u16, u32)>,
    len: u32,
    iov: IoVecs,
}

impl Run {
    /// Whether `h` could be part of a run at all (before its connection is looked at): an RW
    /// stream packet with data, for the host, that passes the checks. `avail`: the payload
    /// bytes its chain has.
    pub fn candidate(h: &Header, avail: u32, shared: &Shared) -> bool {
        h.op == op::RW
            && h.ty == ty::STREAM
            && h.dst_cid == HOST_CID
            && h.len > 0
            && packet::check(h, avail, shared.guest_cid, shared.seqpacket(), false).is_ok()
    }

    /// Whether `h` is for the connection of the run being gathered.
    pub fn is_for(&self, h: &Header) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.key.host_port == h.dst_port && c.key.guest_port == h.src_port)
    }

    /// Starts a run (none is being gathered) with packet `head` (header `h`, a candidate)
    /// for `conn`; false if the packet cannot be part of one.
    pub fn begin(&mut self, conn: Arc<Conn>, chain: &Chain, head: u16, h: &Header) -> bool {
        self.conn = Some(conn);
        if self.join(chain, head, h) {
            return true;
        }
        self.conn = None;
        false
    }

    /// Adds packet `head` (header `h`, a candidate for this run's connection) if the
    /// connection can take it straight to its stream within the guest's credit. Its
    /// credit fields are taken as the ordinary path takes them.
    pub fn join(&mut self, chain: &Chain, head: u16, h: &Header) -> bool {
        let Some(conn) = self.conn.as_ref() else {
            return false;
        };
        if self.packets.len() >= MAX_PACKETS {
            return false;
        }
        let mut st = conn.lock();
        if !can_take(&st) || !st.credit.accepts(self.len as usize, h.len) {
            return false;
        }
        let before = self.iov.len();
        if self.iov.append(chain.readable(), HEADER_LEN as u32, h.len) != h.len
            || self.iov.len() > MAX_IOVS
        {
            self.iov.truncate(before);
            return false;
        }
        st.credit.update_from_peer(h.buf_alloc, h.fwd_cnt);
        if st.credit.peer_free() > 0 {
            st.credit_requested = false;
        }
        self.packets.push((head, h.len));
        self.len += h.len;
        true
    }

    /// Sends the run (if one is being gathered), buffers what the stream did not take, and
    /// completes its chains.
    pub fn send(&mut self, q: &mut QueueIo, shared: &Shared) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut st = conn.lock();
        if can_take(&st) {
            self.deliver(&conn, &mut st, q, shared);
        } else if st.phase != Phase::Closed {
            // The connection changed since the packets joined (the host side went away):
            // as for any data it cannot take.
            stats::bump(&shared.counters.unknown_connection);
            st.kill(true);
        }
        if st.phase == Phase::Closed && st.owed == 0 {
            drop(st);
            shared.remove(&conn);
        } else if st.has_rx_work() {
            drop(st);
            shared.wake_rx_for(&conn);
        }
        for (head, _) in self.packets.drain(..) {
            q.complete(head, 0);
        }
        self.len = 0;
        self.iov.truncate(0);
    }

    fn deliver(&mut self, conn: &Conn, st: &mut ConnState, q: &QueueIo, shared: &Shared) {
        let Some(stream) = st.stream.as_ref() else {
            return;
        };
        let written = match iov::send(stream.as_fd(), &[], &mut self.iov) {
            Ok(n) => n as u32,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                st.kill(true);
                return;
            }
        };
        // What the stream did not take waits in the buffer, in order.
        let mut skip = written;
        for &(head, len) in &self.packets {
            if skip >= len {
                skip -= len;
                continue;
            }
            let offset = HEADER_LEN as u32 + skip;
            if !st.txbuf.append_from(q.chain(head), offset, len - skip) {
                st.kill(true);
                return;
            }
            skip = 0;
        }
        st.credit.forwarded(written);
        stats::add(&shared.counters.bytes_from_guest, u64::from(written));
        st.after_tx();
        if !st.txbuf.is_empty() {
            shared.watch_stream_out(st, conn.id, true);
        }
    }
}

/// Whether the connection takes data straight to its stream.
fn can_take(st: &ConnState) -> bool {
    st.phase == Phase::Established
        && st.guest_shut & SHUTDOWN_SEND == 0
        && st.stream.is_some()
        && st.txbuf.is_empty()
}
