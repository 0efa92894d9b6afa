//! Credit-based flow control of one connection, both ways (virtio 1.2, 5.10.6.3 "Buffer Space
//! Management"). The guest is the peer: it tells us its `buf_alloc` and `fwd_cnt` in every
//! packet, and we tell it ours.
//!
//! Guest to host: the guest may have at most our `buf_alloc` bytes outstanding, counted from
//! the `fwd_cnt` we last told it. Bytes the host socket does not take at once wait in the
//! connection's buffer, so that buffer never holds more than `buf_alloc` from a guest that
//! keeps to its credit; a guest that sends more is reset.
//!
//! Host to guest: we send at most `peer_free()` bytes; with none left we stop reading the
//! host socket, so a slow guest reader stalls the host writer in its kernel socket buffer.

use std::num::Wrapping;

/// Both directions of one connection's credit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Credit {
    /// Our receive buffer for the connection, as advertised.
    pub buf_alloc: u32,
    /// Bytes of the guest's data passed on to the host (free running).
    pub fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last saw it.
    pub fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer, as it last told us.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed of what we sent, as it last told us.
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes we sent to the guest (free running).
    pub tx_cnt: Wrapping<u32>,
}

impl Credit {
    /// Credit for a connection with our buffer `buf_alloc` and the guest's first word on it.
    pub fn new(buf_alloc: u32, peer_buf_alloc: u32, peer_fwd_cnt: u32) -> Self {
        Credit {
            buf_alloc,
            peer_buf_alloc,
            peer_fwd_cnt: Wrapping(peer_fwd_cnt),
            ..Credit::default()
        }
    }

    /// Takes the credit fields of a packet from the guest.
    pub fn update_from_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes we may still send to the guest. A guest whose `fwd_cnt` runs ahead of what we
    /// sent, or that shrank its buffer below what is in flight, gets none.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` bytes went to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Whether `len` more bytes from the guest fit while `buffered` bytes wait for the host.
    pub fn accepts(&self, buffered: usize, len: u32) -> bool {
        (buffered as u64).saturating_add(u64::from(len)) <= u64::from(self.buf_alloc)
    }

    /// `n` bytes of the guest's data reached the host.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// Whether the guest should hear about freed space: what it believes is free has fallen
    /// below half our buffer while we have passed on bytes it has not heard about.
    /// `buffered`: bytes still waiting for the host.
    pub fn peer_needs_update(&self, buffered: usize) -> bool {
        if self.fwd_cnt == self.fwd_cnt_sent {
            return false;
        }
        // Everything the guest sent = forwarded + buffered; it believes
        // (sent - fwd_cnt_sent) of our buffer is taken.
        let received = self.fwd_cnt + Wrapping(buffered as u32);
        let believed_used = (received - self.fwd_cnt_sent).0;
        self.buf_alloc.saturating_sub(believed_used) < self.buf_alloc.div_ceil(2)
    }

    /// The credit fields of a packet we send now: (buf_alloc, fwd_cnt). The guest learns
    /// `fwd_cnt` with it.
    pub fn stamp(&mut self) -> (u32, u32) {
        self.fwd_cnt_sent = self.fwd_cnt;
        (self.buf_alloc, self.fwd_cnt.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_free_counts_in_flight() {
        let mut c = Credit::new(65536, 4096, 0);
        assert_eq!(c.peer_free(), 4096);
        c.sent(4000);
        assert_eq!(c.peer_free(), 96);
        c.sent(96);
        assert_eq!(c.peer_free(), 0);
        c.update_from_peer(4096, 2048);
        assert_eq!(c.peer_free(), 2048);
        // The guest grows its buffer.
        c.update_from_peer(8192, 2048);
        assert_eq!(c.peer_free(), 6144);
    }

    #[test]
    fn peer_free_wraps_and_refuses_lies() {
        let mut c = Credit::new(65536, 1000, u32::MAX - 10);
        c.tx_cnt = Wrapping(u32::MAX - 10);
        c.sent(100); // wraps past zero
        assert_eq!(c.peer_free(), 900);
        // fwd_cnt ahead of what we sent: no credit, not a huge one.
        c.update_from_peer(1000, 500);
        assert_eq!(c.peer_free(), 0);
        // A buffer shrunk below what is in flight.
        c.update_from_peer(50, u32::MAX - 10);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn accepts_up_to_buf_alloc() {
        let c = Credit::new(65536, 0, 0);
        assert!(c.accepts(0, 65536));
        assert!(!c.accepts(0, 65537));
        assert!(c.accepts(60000, 5536));
        assert!(!c.accepts(60000, 5537));
        assert!(!c.accepts(usize::MAX, u32::MAX));
    }

    #[test]
    fn credit_updates_when_the_guest_view_runs_low() {
        let mut c = Credit::new(65536, 0, 0);
        assert!(!c.peer_needs_update(0));
        // 16 KiB passed straight on: the guest still believes 48 KiB free.
        c.forwarded(16384);
        assert!(!c.peer_needs_update(0));
        // 40 KiB passed on: it believes 24 KiB free, below half.
        c.forwarded(24576);
        assert!(c.peer_needs_update(0));
        let (ba, fc) = c.stamp();
        assert_eq!((ba, fc), (65536, 40960));
        assert!(!c.peer_needs_update(0));
        // Host stalled: 64 KiB buffered, nothing forwarded: no update (nothing to tell).
        assert!(!c.peer_needs_update(65536));
        // The host reads 8 KiB of it: the guest believes 0 free, so tell it.
        c.forwarded(8192);
        assert!(c.peer_needs_update(65536 - 8192));
    }

    #[test]
    fn tiny_buffers_still_get_updates() {
        let mut c = Credit::new(1, 0, 0);
        assert!(c.accepts(0, 1) && !c.accepts(0, 2));
        c.forwarded(1);
        assert!(c.peer_needs_update(0));
    }

    #[test]
    fn fwd_cnt_wraps() {
        let mut c = Credit::new(65536, 0, 0);
        c.fwd_cnt = Wrapping(u32::MAX - 100);
        c.fwd_cnt_sent = c.fwd_cnt;
        c.forwarded(40000);
        assert!(c.peer_needs_update(0));
        assert_eq!(c.stamp().1, 40000 - 101);
    }
}
