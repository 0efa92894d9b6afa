//! The result of an rng run, as a table and as one JSON object.

use std::fmt::Write as _;

use crate::bench::histogram::Histogram;
use crate::bench::report::Json;

/// Everything an rng run measured.
#[derive(Debug, Clone)]
pub struct RngReport {
    /// `--label`.
    pub label: Option<String>,
    /// Socket path, or the in-process server.
    pub target: String,
    /// Bytes per request buffer.
    pub bs: u32,
    /// Requests in flight.
    pub iodepth: usize,
    /// Descriptors in the queue.
    pub queue_size: u16,
    /// "call" or "poll".
    pub notify: &'static str,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Features acked.
    pub features: u64,
    /// Requests completed.
    pub completed: u64,
    /// Bytes the server wrote (used lengths).
    pub bytes: u64,
    /// Completions shorter than the buffer.
    pub short: u64,
    /// Completions with no bytes.
    pub empty: u64,
    /// Completions whose first bytes were still zero (`--check`).
    pub unfilled: u64,
    /// Wall time from start to the last completion, seconds.
    pub elapsed_s: f64,
    /// Completion latency.
    pub latency: Histogram,
    /// Load generator CPU seconds.
    pub client_cpu_s: f64,
    /// Kicks sent.
    pub kicks: u64,
    /// Sleeps on the call eventfd.
    pub waits: u64,
    /// Server processes measured (empty: in-process threads or nothing).
    pub server_pids: Vec<u32>,
    /// Server CPU seconds over the run, when known.
    pub server_cpu_s: Option<f64>,
    /// Where the server CPU figure comes from: "cgroup", "proc" (the process tree's
    /// /proc/PID/stat), "threads" (this process's device threads) or "none".
    pub server_cpu_from: &'static str,
}

impl RngReport {
    /// MiB per second.
    pub fn mib_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 / self.elapsed_s / (1 << 20) as f64
        } else {
            0.0
        }
    }

    /// Requests per second.
    pub fn requests_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.completed as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Server CPU milliseconds per MiB served.
    pub fn server_cpu_ms_per_mib(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.bytes > 0).then(|| cpu * 1e3 / (self.bytes as f64 / (1 << 20) as f64))
    }

    /// Server CPU microseconds per request.
    pub fn server_us_per_request(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.completed > 0).then(|| cpu * 1e6 / self.completed as f64)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let us = |ns: u64| ns as f64 / 1000.0;
        let l = &self.latency;
        let label = self
            .label
            .as_deref()
            .map(|l| format!("  [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(o, "target      {}{label}", self.target);
        let _ = writeln!(
            o,
            "workload    rng bs={} iodepth={} queue-size={} notify={} event-idx={}",
            self.bs,
            self.iodepth,
            self.queue_size,
            self.notify,
            if self.event_idx { "on" } else { "off" }
        );
        let _ = writeln!(
            o,
            "requests    {} in {:.3} s; {} short, {} empty, {} unfilled",
            self.completed, self.elapsed_s, self.short, self.empty, self.unfilled
        );
        let _ = writeln!(
            o,
            "throughput  {:.1} MiB/s, {:.0} requests/s",
            self.mib_s(),
            self.requests_s()
        );
        let _ = writeln!(
            o,
            "latency us  p50 {:.1}  p99 {:.1}  mean {:.1}  max {:.1}",
            us(l.percentile(0.5)),
            us(l.percentile(0.99)),
            l.mean() / 1000.0,
            us(l.max())
        );
        let _ = writeln!(
            o,
            "vu-bench    {:.3} CPU s, {} kicks, {} waits",
            self.client_cpu_s, self.kicks, self.waits
        );
        if let Some(cpu) = self.server_cpu_s {
            let _ = writeln!(
                o,
                "server      {cpu:.3} CPU s ({}), {:.3} ms CPU per MiB, {:.2} us CPU per request{}",
                self.server_cpu_from,
                self.server_cpu_ms_per_mib().unwrap_or(0.0),
                self.server_us_per_request().unwrap_or(0.0),
                if self.server_pids.is_empty() {
                    String::new()
                } else {
                    format!(" (pids {:?})", self.server_pids)
                }
            );
        }
        o
    }

    /// One JSON object (one line).
    pub fn json(&self) -> String {
        let mut j = Json::default();
        match &self.label {
            Some(l) => j.str("label", l),
            None => j.raw("label", "null"),
        }
        j.str("target", &self.target);
        j.str("device", "rng");
        j.num("bs", self.bs);
        j.num("iodepth", self.iodepth);
        j.num("queue_size", self.queue_size);
        j.str("notify", self.notify);
        j.raw("event_idx", if self.event_idx { "true" } else { "false" });
        j.str("features", &format!("{:#x}", self.features));
        for (k, v) in [
            ("completed", self.completed),
            ("bytes", self.bytes),
            ("short", self.short),
            ("empty", self.empty),
            ("unfilled", self.unfilled),
            ("kicks", self.kicks),
            ("waits", self.waits),
        ] {
            j.num(k, v);
        }
        j.float("elapsed_s", self.elapsed_s);
        j.float("mib_s", self.mib_s());
        j.float("requests_s", self.requests_s());
        let l = &self.latency;
        j.float("lat_p50_us", l.percentile(0.5) as f64 / 1000.0);
        j.float("lat_p99_us", l.percentile(0.99) as f64 / 1000.0);
        j.float("lat_mean_us", l.mean() / 1000.0);
        j.float("client_cpu_s", self.client_cpu_s);
        let pids: Vec<String> = self.server_pids.iter().map(u32::to_string).collect();
        j.raw("server_pids", &format!("[{}]", pids.join(",")));
        j.str("server_cpu_from", self.server_cpu_from);
        match self.server_cpu_s {
            Some(cpu) => {
                j.float("server_cpu_s", cpu);
                j.float(
                    "server_cpu_ms_per_mib",
                    self.server_cpu_ms_per_mib().unwrap_or(0.0),
                );
                j.float(
                    "server_us_per_request",
                    self.server_us_per_request().unwrap_or(0.0),
                );
            }
            None => j.raw("server_cpu_s", "null"),
        }
        j.finish()
    }
}
