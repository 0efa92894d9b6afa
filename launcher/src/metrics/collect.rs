//! What the supervisor knows and what the devices report, as metric families: per device its
//! state, crashes, restarts, uptime and front-end; per queue its counters; and each device's
//! own metrics (`VhostUserDevice::metrics`), checked, since a device process is not trusted.
//!
//! Every sample carries `device` and `kind` labels, per-queue samples also `queue`. A device
//! that is down keeps its supervisor metrics; its queue and kind metrics come back with its
//! next process (from zero: counters restart with the process, which Prometheus' `rate`
//! handles as a reset).

use vu_core::control::{DeviceReport, QueueReport};
use vu_core::metrics::MAX_LABELS;
use vu_core::{Metric, MetricType};

use super::render::Exposition;
use crate::supervisor::protocol::DeviceStatus;
use crate::supervisor::State;

/// The prefix of every metric.
pub const PREFIX: &str = "vu_";
/// Most metrics taken from one device's report; the rest are dropped.
pub const MAX_DEVICE_METRICS: usize = 4096;

/// The supervisor's states, each a series of `vu_device_state`.
pub(super) const STATES: [State; 7] = [
    State::Starting,
    State::Running,
    State::Asleep,
    State::Stopping,
    State::Stopped,
    State::Restarting,
    State::Failed,
];

const C: MetricType = MetricType::Counter;
const G: MetricType = MetricType::Gauge;

/// The whole exposition for `devices` (as `Status` of every device returns them).
pub fn render(devices: &[DeviceStatus]) -> String {
    let mut e = Exposition::new();
    add(
        &mut e,
        "vu_build_info",
        "The launcher's version (always 1).",
        G,
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    for d in devices {
        supervisor_metrics(&mut e, d);
    }
    for d in devices {
        if let Some(r) = &d.report {
            queue_metrics(&mut e, d, r);
        }
    }
    for d in devices {
        if let Some(r) = &d.report {
            device_metrics(&mut e, d, r);
        }
    }
    e.render()
}

/// Adds a sample the supervisor itself defines (a failure is a bug, logged).
fn add(
    e: &mut Exposition,
    name: &str,
    help: &str,
    kind: MetricType,
    labels: &[(&str, &str)],
    v: f64,
) {
    if let Err(err) = e.add(name, help, kind, labels, v) {
        tracing::error!(error = %err, "metric not exported");
    }
}

fn supervisor_metrics(e: &mut Exposition, d: &DeviceStatus) {
    let dev = [("device", d.name.as_str()), ("kind", d.kind.as_str())];
    let info = [
        ("device", d.name.as_str()),
        ("kind", d.kind.as_str()),
        ("socket", d.socket.as_str()),
    ];
    add(
        e,
        "vu_device_info",
        "A supervised device and the vhost-user socket it serves (always 1).",
        G,
        &info,
        1.0,
    );
    for s in STATES {
        let labels = [dev[0], dev[1], ("state", s.as_str())];
        add(
            e,
            "vu_device_state",
            "The device's state in the supervisor: 1 for the current state, 0 for the others \
             (starting, running, asleep, stopping, stopped, restarting, failed).",
            G,
            &labels,
            if d.state == s.as_str() { 1.0 } else { 0.0 },
        );
    }
    add(
        e,
        "vu_device_crashes_total",
        "Device processes that ended without being asked to.",
        C,
        &dev,
        d.crashes as f64,
    );
    add(
        e,
        "vu_device_restarts_total",
        "Device processes started after the first one (after crashes and on request).",
        C,
        &dev,
        d.restarts as f64,
    );
    add(
        e,
        "vu_device_failed_starts",
        "Device processes in a row that died before they were ready (a device is held failed \
         past --max-crashes of them within --crash-window; back to 0 once one is ready).",
        G,
        &dev,
        d.failed_starts as f64,
    );
    add(
        e,
        "vu_device_uptime_seconds",
        "Time since the current device process became ready (0 without one).",
        G,
        &dev,
        d.uptime_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
    );
    // Unknown (no report) for a live device that did not answer: left out rather than 0.
    let connected = match (&d.report, d.pid) {
        (Some(r), _) => Some(r.frontend_connected),
        (None, None) => Some(false),
        (None, Some(_)) => None,
    };
    if let Some(c) = connected {
        add(
            e,
            "vu_device_frontend_connected",
            "1 while a vhost-user front-end (the VMM) is connected to the device.",
            G,
            &dev,
            if c { 1.0 } else { 0.0 },
        );
    }
}

fn queue_metrics(e: &mut Exposition, d: &DeviceStatus, r: &DeviceReport) {
    type Field = fn(&QueueReport) -> f64;
    const QUEUE: [(&str, &str, MetricType, Field); 9] = [
        (
            "vu_queue_requests_total",
            "Requests the device completed on the queue (malformed chains not included).",
            C,
            |q| q.completed as f64,
        ),
        (
            "vu_queue_from_driver_bytes_total",
            "Bytes in the driver's readable buffers of completed requests (to the device).",
            C,
            |q| q.bytes_from_driver as f64,
        ),
        (
            "vu_queue_to_driver_bytes_total",
            "Bytes the device wrote into the driver's buffers.",
            C,
            |q| q.bytes_to_driver as f64,
        ),
        (
            "vu_queue_chain_errors_total",
            "Malformed descriptor chains and ring errors (completed with an error, not served).",
            C,
            |q| q.chain_errors as f64,
        ),
        (
            "vu_queue_kicks_total",
            "Kicks (available-buffer notifications) from the driver.",
            C,
            |q| q.kicks as f64,
        ),
        (
            "vu_queue_notifications_total",
            "Used-buffer notifications (calls) sent to the driver.",
            C,
            |q| q.notifications as f64,
        ),
        (
            "vu_queue_in_flight_requests",
            "Requests the device has taken from the queue and not completed yet.",
            G,
            |q| q.in_flight as f64,
        ),
        (
            "vu_queue_started",
            "1 while the queue's worker runs.",
            G,
            |q| f64::from(u8::from(q.started)),
        ),
        (
            "vu_queue_enabled",
            "1 while the front-end has the queue enabled.",
            G,
            |q| f64::from(u8::from(q.enabled)),
        ),
    ];
    for (name, help, kind, value) in QUEUE {
        for (i, q) in r.queues.iter().enumerate() {
            let index = i.to_string();
            let labels = [
                ("device", d.name.as_str()),
                ("kind", d.kind.as_str()),
                ("queue", index.as_str()),
            ];
            add(e, name, help, kind, &labels, value(q));
        }
    }
}

/// The device's own metrics, checked: a well-formed name that starts with the device's kind
/// (as the supervisor knows it), no reserved labels, one type per name, no repeats.
fn device_metrics(e: &mut Exposition, d: &DeviceStatus, r: &DeviceReport) {
    if r.metrics.len() > MAX_DEVICE_METRICS {
        vu_core::warn_ratelimited!(
            device = %d.name,
            count = r.metrics.len(),
            "device reported too many metrics; the rest are dropped"
        );
    }
    let kind_prefix = format!("{}_", d.kind);
    for m in r.metrics.iter().take(MAX_DEVICE_METRICS) {
        if let Err(err) = accept(m, &kind_prefix) {
            vu_core::warn_ratelimited!(device = %d.name, error = %err, "device metric dropped");
            continue;
        }
        let name = format!("{PREFIX}{}", m.full_name());
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(MAX_LABELS + 2);
        labels.push(("device", d.name.as_str()));
        labels.push(("kind", d.kind.as_str()));
        labels.extend(m.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Err(err) = e.add(&name, &m.help, m.kind, &labels, m.value) {
            vu_core::warn_ratelimited!(device = %d.name, error = %err, "device metric dropped");
        }
    }
}

fn accept(m: &Metric, kind_prefix: &str) -> Result<(), String> {
    m.validate().map_err(|e| e.to_string())?;
    if !m.full_name().starts_with(kind_prefix) {
        return Err(format!(
            "metric {:?} does not start with {kind_prefix:?}",
            m.name
        ));
    }
    Ok(())
}
