//! Metrics in Prometheus' text exposition format, off by default: `launcher start --metrics
//! ADDR:PORT` (or `metrics = "ADDR:PORT"` in a config file) serves `GET /metrics` over HTTP,
//! and `launcher ctl metrics` prints the same text through the control socket.
//!
//! - `render.rs`: the text format (families, escaping, values);
//! - `collect.rs`: the supervisor's and the devices' metrics as families (names, labels);
//! - `http.rs`: the small, bounded HTTP server.
//!
//! Names follow Prometheus' conventions: a `vu_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` on counters; every sample has `device` and `kind` labels, per-queue ones `queue`.

pub mod collect;
pub mod http;
pub mod render;

pub use collect::render as render_devices;
pub use http::{bind, HttpError, MetricsListener};

#[cfg(test)]
mod tests;
