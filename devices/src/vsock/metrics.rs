//! The vsock device's metrics (`VhostUserDevice::metrics`): connections by origin and
//! failures by reason, payload bytes each way, resets, dropped packets by reason, sibling
//! traffic, and the guest's CID. Every counter of [`VsockStats`] maps to one series below
//! (a test holds the table to that).

use vu_core::{Metric, Unit};

use super::VsockStats;

/// How one counter of `VsockStats` is exposed.
struct Series {
    /// The field of `VsockStats` (as `VsockStats::fields` names it).
    field: &'static str,
    /// Base metric name.
    name: &'static str,
    help: &'static str,
    /// One label that tells this series from the others of its name, if any.
    label: Option<(&'static str, &'static str)>,
    unit: Unit,
    gauge: bool,
}

const fn counter(
    field: &'static str,
    name: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
) -> Series {
    Series {
        field,
        name,
        help,
        label,
        unit: Unit::None,
        gauge: false,
    }
}

const CONNECTIONS: &str = "Connections established, by the side that opened them.";
const FAILED: &str = "Connections that could not be made, by reason (connect: the broker could \
    not reach a host port; handshake: a host program's CONNECT line was malformed, slow, or \
    refused by the guest; limit: the device holds its maximum).";
const RESETS: &str = "RST packets, sent to or received from the guest.";
const DROPPED: &str = "Guest packets not delivered, by reason (spoofed source CID, bad length, \
    unknown type or operation, unknown connection or CID, refused by a sibling).";
const SIBLING: &str = "Packets between the guest and sibling guests, by direction.";

const TABLE: &[Series] = &[
    counter(
        "host_connections",
        "vsock_connections",
        CONNECTIONS,
        Some(("origin", "host")),
    ),
    counter(
        "guest_connections",
        "vsock_connections",
        CONNECTIONS,
        Some(("origin", "guest")),
    ),
    Series {
        field: "active_connections",
        name: "vsock_open_connections",
        help: "Connections open now.",
        label: None,
        unit: Unit::None,
        gauge: true,
    },
    Series {
        field: "bytes_to_guest",
        name: "vsock_to_guest",
        help: "Payload from host sockets and siblings to the guest.",
        label: None,
        unit: Unit::Bytes,
        gauge: false,
    },
    Series {
        field: "bytes_from_guest",
        name: "vsock_from_guest",
        help: "Payload from the guest to host sockets and siblings.",
        label: None,
        unit: Unit::Bytes,
        gauge: false,
    },
    counter(
        "sibling_packets_out",
        "vsock_sibling_packets",
        SIBLING,
        Some(("direction", "out")),
    ),
    counter(
        "sibling_packets_in",
        "vsock_sibling_packets",
        SIBLING,
        Some(("direction", "in")),
    ),
    counter(
        "resets_sent",
        "vsock_resets",
        RESETS,
        Some(("direction", "sent")),
    ),
    counter(
        "resets_received",
        "vsock_resets",
        RESETS,
        Some(("direction", "received")),
    ),
    counter(
        "dropped_spoofed",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "spoofed")),
    ),
    counter(
        "dropped_bad_len",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "bad_len")),
    ),
    counter(
        "dropped_bad_type",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "bad_type")),
    ),
    counter(
        "dropped_bad_op",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "bad_op")),
    ),
    counter(
        "unknown_connection",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "unknown_connection")),
    ),
    counter(
        "unknown_cid",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "unknown_cid")),
    ),
    counter(
        "sibling_rejected",
        "vsock_dropped_packets",
        DROPPED,
        Some(("reason", "sibling_rejected")),
    ),
    counter(
        "credit_overruns",
        "vsock_credit_overruns",
        "Connections reset because the guest sent more than its credit allowed.",
        None,
    ),
    counter(
        "connect_failures",
        "vsock_failed_connections",
        FAILED,
        Some(("reason", "connect")),
    ),
    counter(
        "handshake_failures",
        "vsock_failed_connections",
        FAILED,
        Some(("reason", "handshake")),
    ),
    counter(
        "connection_limit",
        "vsock_failed_connections",
        FAILED,
        Some(("reason", "limit")),
    ),
    counter(
        "reply_queue_full",
        "vsock_unsent_resets",
        "RST replies not sent because the reply queue was full (the guest was not reading \
         its receive queue).",
        None,
    ),
    counter(
        "bad_rx_buffers",
        "vsock_bad_rx_buffers",
        "Guest receive buffers too small for a packet header (returned empty).",
        None,
    ),
    counter(
        "transport_resets",
        "vsock_transport_resets",
        "TRANSPORT_RESET events written to the event queue.",
        None,
    ),
];

/// The metrics for `st`, a guest of CID `guest_cid` with `sibling_links` links.
pub(crate) fn metrics(st: &VsockStats, guest_cid: u64, sibling_links: usize) -> Vec<Metric> {
    let mut m = Vec::with_capacity(TABLE.len() + 2);
    for (field, value) in st.fields() {
        let Some(s) = TABLE.iter().find(|s| s.field == field) else {
            continue;
        };
        let mut x = if s.gauge {
            Metric::gauge(s.name, s.help, value as f64)
        } else {
            Metric::counter(s.name, s.help, value)
        }
        .unit(s.unit);
        if let Some((k, v)) = s.label {
            x = x.label(k, v);
        }
        m.push(x);
    }
    m.push(Metric::gauge(
        "vsock_sibling_links",
        "Links to sibling guests.",
        sibling_links as f64,
    ));
    m.push(
        Metric::gauge("vsock_info", "The guest's context id (always 1).", 1.0)
            .label("guest_cid", &guest_cid.to_string()),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_series_with_a_valid_name() {
        let st = VsockStats::default();
        for (field, _) in st.fields() {
            assert!(
                TABLE.iter().any(|s| s.field == field),
                "VsockStats::{field} has no series in vsock/metrics.rs: add it to TABLE"
            );
        }
        let m = metrics(&st, 3, 1);
        assert_eq!(m.len(), st.fields().len() + 2);
        let mut seen = std::collections::HashSet::new();
        for x in &m {
            x.validate().expect("valid");
            assert!(x.name.starts_with("vsock_"), "{}", x.name);
            assert!(
                seen.insert((x.full_name(), x.labels.clone())),
                "repeated {x:?}"
            );
        }
        let info = m.iter().find(|x| x.name == "vsock_info").expect("info");
        assert_eq!(info.labels, [("guest_cid".to_string(), "3".to_string())]);
        // One name has one help text and one type.
        for a in &m {
            for b in m.iter().filter(|b| b.name == a.name) {
                assert_eq!((&a.help, a.kind, a.unit), (&b.help, b.kind, b.unit));
            }
        }
    }
}
