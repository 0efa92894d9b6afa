//! The rng device's metrics (`VhostUserDevice::metrics`): entropy bytes, requests, waits for
//! the rate limit and for the source, the source's failures and state, the rate limit.

use std::time::Duration;

use vu_core::{Metric, Unit};

use super::{RngStats, SourceKind, SourceState};

/// Every source state, as the `state` label of `vu_rng_source_state`.
const STATES: [&str; 3] = ["ok", "eof", "error"];

/// The metrics for `st`, a source of `kind` in `state`, and the rate limit if any.
pub(crate) fn metrics(
    st: &RngStats,
    state: &SourceState,
    kind: SourceKind,
    limit: Option<(u64, Duration)>,
) -> Vec<Metric> {
    let mut m = counters(st);
    for s in STATES {
        m.push(
            Metric::flag(
                "rng_source_state",
                "State of the entropy source as of its last read: 1 for the current state \
                 (ok, eof: at its end, error: its last read failed), 0 for the others.",
                state.as_str() == s,
            )
            .label("state", s),
        );
    }
    m.push(
        Metric::gauge(
            "rng_source_info",
            "The kind of file the entropy comes from (always 1).",
            1.0,
        )
        .label("source", kind_label(kind)),
    );
    if let Some((bytes, period)) = limit {
        m.push(
            Metric::gauge(
                "rng_rate_limit",
                "Most entropy served per rate-limit period.",
                bytes as f64,
            )
            .unit(Unit::Bytes),
        );
        m.push(
            Metric::gauge(
                "rng_rate_limit_period",
                "The rate limit's period.",
                period.as_secs_f64(),
            )
            .unit(Unit::Seconds),
        );
    }
    m
}

/// The counters of `st`.
fn counters(st: &RngStats) -> Vec<Metric> {
    vec![
        Metric::counter(
            "rng",
            "Entropy written into the guest's buffers.",
            st.bytes_total,
        )
        .unit(Unit::Bytes),
        Metric::counter(
            "rng_requests",
            "Requests completed (including empty ones).",
            st.requests_total,
        ),
        Metric::counter(
            "rng_empty_requests",
            "Requests without a device-writable buffer, completed with length 0.",
            st.empty_requests_total,
        ),
        Metric::counter(
            "rng_rate_limit_waits",
            "Times requests waited for the rate limit's next period.",
            st.rate_limit_waits_total,
        ),
        Metric::counter(
            "rng_source_waits",
            "Times the source had nothing to read (EAGAIN) and requests waited for it.",
            st.source_waits_total,
        ),
        Metric::counter(
            "rng_source_eof",
            "Reads that found the source at its end.",
            st.source_eof_total,
        ),
        Metric::counter(
            "rng_source_errors",
            "Reads of the source that failed.",
            st.source_errors_total,
        ),
    ]
}

/// A source kind as a label value (words joined by `_`).
fn kind_label(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::File => "file",
        SourceKind::CharDevice => "char_device",
        SourceKind::BlockDevice => "block_device",
        SourceKind::Fifo => "fifo",
        SourceKind::Socket => "socket",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_state_and_limit_are_reported_under_valid_names() {
        let st = RngStats {
            bytes_total: 1,
            requests_total: 2,
            empty_requests_total: 3,
            rate_limit_waits_total: 4,
            source_waits_total: 5,
            source_eof_total: 6,
            source_errors_total: 7,
        };
        let m = metrics(
            &st,
            &SourceState::Error("EIO".into()),
            SourceKind::CharDevice,
            Some((4096, Duration::from_millis(250))),
        );
        for x in &m {
            x.validate().expect("valid");
            assert!(x.full_name().starts_with("rng_"), "{}", x.name);
        }
        let get = |full: &str| {
            m.iter()
                .filter(|x| x.full_name() == full)
                .map(|x| (x.labels.clone(), x.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(get("rng_bytes_total"), [(vec![], 1.0)]);
        assert_eq!(get("rng_source_errors_total"), [(vec![], 7.0)]);
        let states = get("rng_source_state");
        assert_eq!(states.len(), 3);
        for (labels, v) in states {
            let on = labels == [("state".to_string(), "error".to_string())];
            assert_eq!(v, if on { 1.0 } else { 0.0 }, "{labels:?}");
        }
        assert_eq!(get("rng_rate_limit_bytes"), [(vec![], 4096.0)]);
        assert_eq!(get("rng_rate_limit_period_seconds"), [(vec![], 0.25)]);
        assert_eq!(
            get("rng_source_info"),
            [(vec![("source".into(), "char_device".into())], 1.0)]
        );
        let counted: f64 = m
            .iter()
            .filter(|x| x.kind == vu_core::MetricType::Counter)
            .map(|x| x.value)
            .sum();
        assert_eq!(counted, 28.0, "every counter of RngStats is reported");
        // Without a limit, no limit metrics.
        let m = metrics(&st, &SourceState::Ok, SourceKind::File, None);
        assert!(!m.iter().any(|x| x.name.starts_with("rng_rate_limit_p")));
    }
}
