//! Typed device metrics, as a device reports them (`VhostUserDevice::metrics`) on the control
//! channel (`control::DeviceReport::metrics`). The supervisor renders them in Prometheus' text
//! format; this module only says what a metric is and which names are well formed.
//!
//! A [`Metric`] names its series by a base name (`block_read`, no `vu_` prefix), a [`Unit`]
//! and a [`MetricType`]; the exposed name follows Prometheus' naming conventions from those:
//! the unit's suffix in base units (`_bytes`, `_seconds`), then `_total` for a counter
//! (`vu_block_read_bytes_total`). The supervisor adds the `vu_` prefix and the `device` and
//! `kind` labels; a device adds labels of its own where one family has several series
//! (`reason="spoofed"`).

use serde::{Deserialize, Serialize};

/// Longest metric base name.
pub const MAX_NAME_LEN: usize = 96;
/// Longest help text.
pub const MAX_HELP_LEN: usize = 400;
/// Most labels on one metric (besides those the supervisor adds).
pub const MAX_LABELS: usize = 8;
/// Longest label name.
pub const MAX_LABEL_NAME_LEN: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Label names the supervisor sets itself; a device may not.
pub const RESERVED_LABELS: [&str; 2] = ["device", "kind"];

/// Why a metric is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The base name is empty, too long, or has characters other than `[a-z0-9_]`, or does
    /// not start with a letter.
    #[error("metric name {0:?} is not of the form [a-z][a-z0-9_]* (at most {MAX_NAME_LEN} bytes)")]
    Name(String),
    /// The base name already ends with what the type and unit add.
    #[error(
        "metric name {0:?} ends with a suffix the type or unit adds (_total, _bytes, _seconds)"
    )]
    Suffix(String),
    /// The help text is empty or too long.
    #[error("help of metric {0:?} is empty or longer than {MAX_HELP_LEN} bytes")]
    Help(String),
    /// Too many labels.
    #[error("metric {0:?} has more than {MAX_LABELS} labels")]
    TooManyLabels(String),
    /// A label name is malformed, reserved, or repeated.
    #[error("metric {name:?}: label name {label:?} is malformed, reserved or repeated")]
    LabelName {
        /// The metric.
        name: String,
        /// The label.
        label: String,
    },
    /// A label value is too long.
    #[error(
        "metric {name:?}: the value of label {label:?} is longer than {MAX_LABEL_VALUE_LEN} bytes"
    )]
    LabelValue {
        /// The metric.
        name: String,
        /// The label.
        label: String,
    },
    /// A counter below zero, or not a number.
    #[error("counter {0:?} has a negative or NaN value")]
    CounterValue(String),
}

/// Counter (only goes up, until the process restarts) or gauge (goes up and down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricType {
    /// Monotonic: exposed with a `_total` suffix.
    Counter,
    /// A value now.
    Gauge,
}

impl MetricType {
    /// As in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// The unit of a metric, always a base unit (Prometheus: seconds, not milliseconds; bytes,
/// not kibibytes). Counts of things have none: their name says what they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// A count, or a number without a unit (a 0/1 flag).
    None,
    /// Bytes.
    Bytes,
    /// Seconds.
    Seconds,
}

impl Unit {
    /// The suffix the unit adds to a name (`_bytes`), or "".
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Bytes => "_bytes",
            Unit::Seconds => "_seconds",
        }
    }
}

/// One sample of a device metric.
///
/// `value` is a float as in Prometheus (counters above 2^53 lose their last digits, as they
/// do there). Equality compares values bit for bit, so that a report equals its own decoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    /// Base name without the `vu_` prefix, the unit or `_total` (`block_read`); by
    /// convention it starts with the device's kind.
    pub name: String,
    /// What it measures (one line; the same for every sample of a name).
    pub help: String,
    /// Counter or gauge.
    pub kind: MetricType,
    /// Its unit.
    pub unit: Unit,
    /// Labels of this sample beyond `device` and `kind`, as (name, value).
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl PartialEq for Metric {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.help == o.help
            && self.kind == o.kind
            && self.unit == o.unit
            && self.labels == o.labels
            && self.value.to_bits() == o.value.to_bits()
    }
}

impl Eq for Metric {}

impl Metric {
    /// A counter with no unit (`block_reads` -> `vu_block_reads_total`).
    pub fn counter(name: &str, help: &str, value: u64) -> Metric {
        Metric::new(name, help, MetricType::Counter, value as f64)
    }

    /// A gauge with no unit.
    pub fn gauge(name: &str, help: &str, value: f64) -> Metric {
        Metric::new(name, help, MetricType::Gauge, value)
    }

    /// A gauge that is 1 when `on`, else 0.
    pub fn flag(name: &str, help: &str, on: bool) -> Metric {
        Metric::gauge(name, help, if on { 1.0 } else { 0.0 })
    }

    fn new(name: &str, help: &str, kind: MetricType, value: f64) -> Metric {
        Metric {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            unit: Unit::None,
            labels: Vec::new(),
            value,
        }
    }

    /// The same metric in `unit` (`block_read` in bytes -> `vu_block_read_bytes_total`).
    pub fn unit(mut self, unit: Unit) -> Metric {
        self.unit = unit;
        self
    }

    /// The same metric with one more label.
    pub fn label(mut self, name: &str, value: &str) -> Metric {
        self.labels.push((name.to_string(), value.to_string()));
        self
    }

    /// The exposed name without the `vu_` prefix: base name, unit suffix, and `_total` for a
    /// counter.
    pub fn full_name(&self) -> String {
        let total = match self.kind {
            MetricType::Counter => "_total",
            MetricType::Gauge => "",
        };
        format!("{}{}{total}", self.name, self.unit.suffix())
    }

    /// Checks the name, help, labels and value against the rules above.
    pub fn validate(&self) -> Result<(), MetricError> {
        let name = &self.name;
        if !is_name(name, MAX_NAME_LEN) {
            return Err(MetricError::Name(name.clone()));
        }
        if ["_total", "_bytes", "_seconds"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            return Err(MetricError::Suffix(name.clone()));
        }
        if self.help.is_empty() || self.help.len() > MAX_HELP_LEN {
            return Err(MetricError::Help(name.clone()));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(MetricError::TooManyLabels(name.clone()));
        }
        for (i, (label, value)) in self.labels.iter().enumerate() {
            let repeated = self.labels[..i].iter().any(|(l, _)| l == label);
            if !is_name(label, MAX_LABEL_NAME_LEN)
                || RESERVED_LABELS.contains(&label.as_str())
                || repeated
            {
                return Err(MetricError::LabelName {
                    name: name.clone(),
                    label: label.clone(),
                });
            }
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(MetricError::LabelValue {
                    name: name.clone(),
                    label: label.clone(),
                });
            }
        }
        if self.kind == MetricType::Counter && (self.value.is_nan() || self.value < 0.0) {
            return Err(MetricError::CounterValue(name.clone()));
        }
        Ok(())
    }
}

/// `[a-z][a-z0-9_]*`, at most `max` bytes: a subset of Prometheus' metric and label names
/// that also never starts with the reserved `__`.
pub fn is_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metric::counter("block_read", "Bytes read.", 5).unit(Unit::Bytes);
        assert_eq!(m.full_name(), "block_read_bytes_total");
        assert_eq!(m.value, 5.0);
        let g = Metric::gauge("block_capacity", "Capacity.", 1.0).unit(Unit::Bytes);
        assert_eq!(g.full_name(), "block_capacity_bytes");
        let c = Metric::counter("rng_requests", "Requests.", 0);
        assert_eq!(c.full_name(), "rng_requests_total");
        let s = Metric::gauge("x_uptime", "Up.", 1.5).unit(Unit::Seconds);
        assert_eq!(s.full_name(), "x_uptime_seconds");
        for m in [m, g, c, s] {
            m.validate().expect("valid");
        }
    }

    #[test]
    fn malformed_metrics_are_refused() {
        let ok = || Metric::counter("vsock_drops", "Drops.", 1);
        for bad in ["", "Block", "1x", "a-b", "a b", "__x", "_x", "é", "a:b"] {
            let mut m = ok();
            m.name = bad.into();
            assert!(matches!(m.validate(), Err(MetricError::Name(_))), "{bad}");
        }
        let mut m = ok();
        m.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(m.validate().is_err());
        for bad in ["x_total", "x_bytes", "x_seconds"] {
            let mut m = ok();
            m.name = bad.into();
            assert!(matches!(m.validate(), Err(MetricError::Suffix(_))), "{bad}");
        }
        let mut m = ok();
        m.help.clear();
        assert!(matches!(m.validate(), Err(MetricError::Help(_))));
        for label in ["device", "kind", "__name__", "Le", "a-b", ""] {
            let m = ok().label(label, "v");
            assert!(
                matches!(m.validate(), Err(MetricError::LabelName { .. })),
                "{label}"
            );
        }
        let m = ok().label("reason", "a").label("reason", "b");
        assert!(matches!(m.validate(), Err(MetricError::LabelName { .. })));
        let m = ok().label("reason", &"v".repeat(MAX_LABEL_VALUE_LEN + 1));
        assert!(matches!(m.validate(), Err(MetricError::LabelValue { .. })));
        let mut m = ok();
        for i in 0..=MAX_LABELS {
            m = m.label(&format!("l{i}"), "v");
        }
        assert!(matches!(m.validate(), Err(MetricError::TooManyLabels(_))));
        for v in [-1.0, f64::NAN] {
            let mut m = ok();
            m.value = v;
            assert!(matches!(m.validate(), Err(MetricError::CounterValue(_))));
        }
        // Any label value is fine (the renderer escapes it); gauges may be negative or NaN.
        ok().label("path", "a\"b\\c\nd").validate().expect("valid");
        Metric::gauge("x_temp", "T.", -3.0)
            .validate()
            .expect("valid");
        Metric::gauge("x_temp", "T.", f64::NAN)
            .validate()
            .expect("valid");
    }

    #[test]
    fn equality_is_bitwise_on_values() {
        let a = Metric::gauge("x_v", "V.", f64::NAN);
        assert_eq!(a, a.clone());
        assert_ne!(a, Metric::gauge("x_v", "V.", 0.0));
        assert_ne!(
            Metric::gauge("x_v", "V.", 0.0),
            Metric::gauge("x_v", "V.", -0.0)
        );
    }
}
