//! Counters of a net device: one set per queue pair, written by its two queue workers, summed
//! for reports.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Live counters of one queue pair.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// Counters since the device was built (summed over queue pairs).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct NetStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            pub(crate) fn add_to(&self, s: &mut NetStats) {
                $( s.$name += self.$name.load(Ordering::Relaxed); )*
            }
        }

        impl NetStats {
            /// Every counter as (name, value), for status reports.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

counters! {
    /// Frames delivered to the driver.
    rx_packets,
    /// Bytes of those frames (without the virtio-net header).
    rx_bytes,
    /// Frames that did not fit in the first buffers and were finished through the device's
    /// own buffer (copied, not read straight into guest memory).
    rx_copied,
    /// Times the device stopped reading the tap because the driver had posted no receive
    /// buffers (or too few for the frame at hand); frames wait in the tap meanwhile, and the
    /// kernel drops them when its queue is full (the tap's tx_dropped counts those).
    rx_no_buffers,
    /// Frames dropped because they were larger than what the driver can take: a receive
    /// buffer without MRG_RXBUF, or the 64 KiB plus header the device reads at most.
    rx_dropped_too_big,
    /// Frames dropped because the tap returned less than a virtio-net header.
    rx_dropped_malformed,
    /// Frames dropped because their queue stopped while they waited for buffers.
    rx_dropped_stopped,
    /// Receive buffers returned unused (length 0) because they could not hold a header.
    rx_bad_buffers,
    /// Failed reads of the tap (not "no frame"): the device stops reading until the driver
    /// posts more buffers.
    rx_read_errors,
    /// Frames written to the tap.
    tx_packets,
    /// Bytes of those frames (without the header).
    tx_bytes,
    /// Malformed transmit chains dropped (header short, frame over 64 KiB plus header,
    /// too many buffers).
    tx_dropped_malformed,
    /// Frames the tap refused (EINVAL for a bad header, EIO when it is down...), dropped.
    tx_dropped_write_error,
    /// Times a frame waited for room in the tap (EAGAIN; resumed on POLLOUT).
    tx_tap_full,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_names() {
        let a = Counters::default();
        let b = Counters::default();
        Counters::inc(&a.rx_packets);
        Counters::add(&b.rx_packets, 2);
        Counters::add(&b.tx_bytes, 100);
        let mut s = NetStats::default();
        a.add_to(&mut s);
        b.add_to(&mut s);
        assert_eq!((s.rx_packets, s.tx_bytes), (3, 100));
        let f = s.fields();
        assert_eq!(f[0], ("rx_packets", 3));
        assert!(f.contains(&("tx_tap_full", 0)));
    }
}
