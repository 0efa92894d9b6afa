//! The block device's metrics (`VhostUserDevice::metrics`): requests by type, bytes, errors
//! by virtio status, offloaded copies, capacity and cache mode.

use vu_core::{Metric, Unit};

use super::BlockStats;

/// The metrics for `st`, a disk of `capacity` bytes whose write cache is on (`writeback`).
pub(crate) fn metrics(st: &BlockStats, capacity: u64, writeback: bool) -> Vec<Metric> {
    vec![
        Metric::counter("block_reads", "Read requests.", st.reads),
        Metric::counter("block_writes", "Write requests.", st.writes),
        Metric::counter(
            "block_durable_writes",
            "Writes made durable before they completed (write-through mode).",
            st.durable_writes,
        ),
        Metric::counter("block_flushes", "Flush requests.", st.flushes),
        Metric::counter("block_discards", "Discard requests.", st.discards),
        Metric::counter(
            "block_write_zeroes",
            "Write-zeroes requests.",
            st.write_zeroes,
        ),
        Metric::counter(
            "block_read",
            "Data read by requests that succeeded.",
            st.read_bytes,
        )
        .unit(Unit::Bytes),
        Metric::counter(
            "block_written",
            "Data written by requests that succeeded.",
            st.written_bytes,
        )
        .unit(Unit::Bytes),
        Metric::counter(
            "block_errors",
            "Requests answered with an error, by virtio status (ioerr: the I/O failed or was \
             out of range; unsupp: a request type the device does not serve).",
            st.io_errors,
        )
        .label("status", "ioerr"),
        Metric::counter(
            "block_errors",
            "Requests answered with an error, by virtio status (ioerr: the I/O failed or was \
             out of range; unsupp: a request type the device does not serve).",
            st.unsupported,
        )
        .label("status", "unsupp"),
        Metric::counter(
            "block_offloaded",
            "Buffered reads and writes handed to io_uring's kernel workers.",
            st.offloaded,
        ),
        Metric::gauge(
            "block_capacity",
            "Size of the disk the guest sees.",
            capacity as f64,
        )
        .unit(Unit::Bytes),
        Metric::flag(
            "block_writeback",
            "1 while the write cache is on (writeback), 0 in write-through mode.",
            writeback,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_reported_under_a_valid_name() {
        let st = BlockStats {
            reads: 1,
            writes: 2,
            durable_writes: 3,
            flushes: 4,
            discards: 5,
            write_zeroes: 6,
            io_errors: 7,
            unsupported: 8,
            offloaded: 9,
            read_bytes: 10,
            written_bytes: 11,
        };
        let m = metrics(&st, 1 << 30, true);
        for x in &m {
            x.validate().expect("valid metric");
            assert!(x.name.starts_with("block_"), "{}", x.name);
        }
        let value = |full: &str, label: Option<(&str, &str)>| {
            m.iter()
                .find(|x| {
                    x.full_name() == full
                        && label.is_none_or(|(k, v)| x.labels.contains(&(k.into(), v.into())))
                })
                .map(|x| x.value)
        };
        assert_eq!(value("block_reads_total", None), Some(1.0));
        assert_eq!(value("block_read_bytes_total", None), Some(10.0));
        assert_eq!(value("block_written_bytes_total", None), Some(11.0));
        assert_eq!(
            value("block_errors_total", Some(("status", "ioerr"))),
            Some(7.0)
        );
        assert_eq!(
            value("block_errors_total", Some(("status", "unsupp"))),
            Some(8.0)
        );
        assert_eq!(
            value("block_capacity_bytes", None),
            Some((1u64 << 30) as f64)
        );
        assert_eq!(value("block_writeback", None), Some(1.0));
        // Every field of BlockStats is somewhere (the sum of the values 1..=11).
        let counters: f64 = m
            .iter()
            .filter(|x| x.kind == vu_core::MetricType::Counter)
            .map(|x| x.value)
            .sum();
        assert_eq!(counters, 66.0);
    }
}
