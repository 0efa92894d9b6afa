//! Counters since the device was built, and the typed snapshot callers read.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])+ $name:ident,)*) => {
        /// Live counters, bumped by the queue workers.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// Counters since start (see `VsockDevice::stats`).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct VsockStats {
            $($(#[$doc])+ pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> VsockStats {
                VsockStats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl VsockStats {
            /// Every counter as (name, value), in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Host programs that connected to the listener and were accepted by the guest.
    host_connections,
    /// Guest connections to host ports that the broker connected.
    guest_connections,
    /// Host connections open now (gauge).
    active_connections,
    /// Payload bytes from host sockets to the guest.
    bytes_to_guest,
    /// Payload bytes from the guest to host sockets.
    bytes_from_guest,
    /// Packets forwarded from the guest to siblings.
    sibling_packets_out,
    /// Packets delivered from siblings to the guest.
    sibling_packets_in,
    /// RST packets sent to the guest.
    resets_sent,
    /// RST packets received from the guest.
    resets_received,
    /// Guest packets dropped because their source CID is not the guest's.
    dropped_spoofed,
    /// Guest packets too short for a header, or whose length field does not fit the buffer.
    dropped_bad_len,
    /// Guest packets with an unknown socket type (answered with RST).
    dropped_bad_type,
    /// Guest packets with an unknown operation (answered with RST).
    dropped_bad_op,
    /// Guest packets for connections the device does not know (answered with RST).
    unknown_connection,
    /// Guest packets for CIDs that are neither the host nor a linked sibling (answered with
    /// RST).
    unknown_cid,
    /// Connections reset because the guest sent more than its credit allowed.
    credit_overruns,
    /// Packets from siblings refused (bad framing, wrong CIDs, unknown type or operation).
    sibling_rejected,
    /// Guest connections to host ports the broker could not make (or no broker).
    connect_failures,
    /// Host programs whose `CONNECT <port>` line was malformed, too slow, or refused by the
    /// guest (RST) or not answered in time.
    handshake_failures,
    /// Connections refused because the device holds its maximum.
    connection_limit,
    /// RST replies not sent because the device's reply queue was full (the guest was not
    /// reading its receive queue).
    reply_queue_full,
    /// Guest receive buffers too small for a packet header (returned empty).
    bad_rx_buffers,
    /// TRANSPORT_RESET events written to the event queue.
    transport_resets,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts one from a gauge (never below zero).
pub(crate) fn dec(c: &AtomicU64) {
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
}
