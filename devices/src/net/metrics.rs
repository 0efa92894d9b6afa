//! The net device's metrics (`VhostUserDevice::metrics`): frames and bytes each way, frames
//! dropped by reason, waits for buffers and for room in the tap, and the device's shape. Every
//! counter of [`NetStats`] maps to one series below (a test holds the table to that).

use vu_core::{Metric, Unit};

use super::{format_mac, NetStats};

/// How one counter of `NetStats` is exposed: (field, base name, help, label, unit).
type Series = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    Unit,
);

const RX_DROPPED: &str = "Frames from the tap not delivered to the driver, by reason (too_big: \
    larger than the driver's buffers can take; malformed: shorter than a virtio-net header; \
    stopped: their queue stopped while they waited). Frames the kernel dropped because the \
    driver posted no buffers are in the tap's own tx_dropped.";
const TX_DROPPED: &str = "Frames from the driver not written to the tap, by reason (malformed: \
    a short header, a frame over 64 KiB plus header, too many buffers; write_error: the tap \
    refused the frame).";

const TABLE: &[Series] = &[
    ("rx_packets", "net_rx_packets", "Frames delivered to the driver.", None, Unit::None),
    ("rx_bytes", "net_rx", "Bytes of frames delivered to the driver (headers not counted).", None, Unit::Bytes),
    ("rx_copied", "net_rx_copied_packets", "Received frames finished through the device's own buffer instead of read straight into guest memory.", None, Unit::None),
    ("rx_no_buffers", "net_rx_no_buffers", "Times the device stopped reading the tap because the driver had posted too few receive buffers.", None, Unit::None),
    ("rx_dropped_too_big", "net_rx_dropped_packets", RX_DROPPED, Some(("reason", "too_big")), Unit::None),
    ("rx_dropped_malformed", "net_rx_dropped_packets", RX_DROPPED, Some(("reason", "malformed")), Unit::None),
    ("rx_dropped_stopped", "net_rx_dropped_packets", RX_DROPPED, Some(("reason", "stopped")), Unit::None),
    ("rx_bad_buffers", "net_rx_bad_buffers", "Receive buffers returned unused because they could not hold a header.", None, Unit::None),
    ("rx_read_errors", "net_rx_read_errors", "Failed reads of the tap.", None, Unit::None),
    ("tx_packets", "net_tx_packets", "Frames written to the tap.", None, Unit::None),
    ("tx_bytes", "net_tx", "Bytes of frames written to the tap (headers not counted).", None, Unit::Bytes),
    ("tx_dropped_malformed", "net_tx_dropped_packets", TX_DROPPED, Some(("reason", "malformed")), Unit::None),
    ("tx_dropped_write_error", "net_tx_dropped_packets", TX_DROPPED, Some(("reason", "write_error")), Unit::None),
    ("tx_tap_full", "net_tx_tap_full", "Times a frame waited for room in the tap.", None, Unit::None),
];

/// The metrics for `st` on a device of `pairs` queue pairs, `mtu` and `mac`.
pub(crate) fn metrics(st: &NetStats, pairs: u16, mtu: u16, mac: Option<&[u8; 6]>) -> Vec<Metric> {
    let fields = st.fields();
    let mut m: Vec<Metric> = TABLE
        .iter()
        .map(|(field, name, help, label, unit)| {
            let v = fields
                .iter()
                .find(|(f, _)| f == field)
                .map_or(0, |(_, v)| *v);
            let mut x = Metric::counter(name, help, v).unit(*unit);
            if let Some((k, l)) = label {
                x = x.label(k, l);
            }
            x
        })
        .collect();
    m.push(Metric::gauge(
        "net_queue_pairs",
        "Queue pairs the device offers.",
        f64::from(pairs),
    ));
    m.push(
        Metric::gauge("net_mtu", "The MTU the device offers.", f64::from(mtu)).unit(Unit::Bytes),
    );
    m.push(
        Metric::gauge("net_info", "The MAC the device offers (always 1).", 1.0)
            .label("mac", &mac.map_or("none".to_string(), format_mac)),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_series_and_the_metrics_are_valid() {
        let st = NetStats::default();
        for (field, _) in st.fields() {
            assert!(
                TABLE.iter().any(|s| s.0 == field),
                "counter {field} has no series"
            );
        }
        for x in metrics(&st, 2, 1500, Some(&[2, 0, 0, 0, 0, 1])) {
            assert!(x.validate().is_ok(), "{x:?}");
        }
    }
}
