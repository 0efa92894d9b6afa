//! The result of one `vu-bench vsock` run: a table for people, one JSON line for scripts.

use std::fmt::Write as _;

use super::Mode;
use crate::bench::report::Json;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct VsockReport {
    /// `--label`.
    pub label: Option<String>,
    /// The server socket.
    pub target: String,
    /// The workload.
    pub mode: Mode,
    /// Streams or connections in flight.
    pub parallel: usize,
    /// `--rate` (None: saturation).
    pub rate: Option<f64>,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Payload bytes per TX packet.
    pub tx_pkt: u32,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The measured window, seconds.
    pub elapsed_s: f64,
    /// Payload bytes that arrived in the window (to-host: read by the host program;
    /// from-host: received by the driver).
    pub bytes: u64,
    /// Payload bytes the driver sent or received in the window.
    pub driver_bytes: u64,
    /// Churn: connections completed in the window.
    pub connections: u64,
    /// Streams the host programs accepted or opened (whole run).
    pub accepted: u64,
    /// Connections the server reset unexpectedly.
    pub resets: u64,
    /// Packets the driver sent.
    pub tx_packets: u64,
    /// Packets the driver received.
    pub rx_packets: u64,
    /// Kicks.
    pub kicks: u64,
    /// Sleeps on call eventfds.
    pub waits: u64,
    /// CPU of the driver thread in the window.
    pub client_cpu_s: f64,
    /// The server's processes.
    pub server_pids: Vec<u32>,
    /// Their CPU seconds in the window.
    pub server_cpu_s: Option<f64>,
    /// Their anonymous RSS at the end of the window, KiB.
    pub server_rss_kib: Option<u64>,
}

impl VsockReport {
    /// MiB/s of payload.
    pub fn mib_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 / 1048576.0 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Connections per second.
    pub fn conns_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.connections as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Server CPU milliseconds per MiB of payload.
    pub fn server_cpu_ms_per_mib(&self) -> Option<f64> {
        let mib = self.bytes as f64 / 1048576.0;
        self.server_cpu_s
            .filter(|_| mib > 0.0)
            .map(|c| c * 1000.0 / mib)
    }

    /// Server CPU microseconds per connection.
    pub fn server_us_per_conn(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.connections > 0)
            .map(|c| c * 1e6 / self.connections as f64)
    }

    /// A table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let rate = self
            .rate
            .map_or("saturation".to_string(), |r| format!("rate {r}"));
        let _ = writeln!(
            o,
            "vsock {} ({rate}), {} parallel, rx buffers {} B, tx packets {} B, event_idx {}: {}",
            self.mode.as_str(),
            self.parallel,
            self.rx_buf,
            self.tx_pkt,
            self.event_idx,
            self.target
        );
        let _ = writeln!(
            o,
            "  {:.2} s: {:.1} MiB/s, {:.0} connections/s ({} bytes, {} connections, {} resets)",
            self.elapsed_s,
            self.mib_s(),
            self.conns_s(),
            self.bytes,
            self.connections,
            self.resets
        );
        let _ = writeln!(
            o,
            "  driver: {} packets out, {} in, {} kicks, {} waits, {:.3} CPU s",
            self.tx_packets, self.rx_packets, self.kicks, self.waits, self.client_cpu_s
        );
        match self.server_cpu_s {
            Some(cpu) => {
                let per = match self.mode {
                    Mode::Churn => self
                        .server_us_per_conn()
                        .map_or("-".into(), |v| format!("{v:.1} us per connection")),
                    _ => self
                        .server_cpu_ms_per_mib()
                        .map_or("-".into(), |v| format!("{v:.3} ms per MiB")),
                };
                let _ = writeln!(
                    o,
                    "  server {:?}: {cpu:.3} CPU s, {per}, RSS {} KiB",
                    self.server_pids,
                    self.server_rss_kib.unwrap_or(0)
                );
            }
            None => {
                let _ = writeln!(o, "  server CPU: not measured (no --server-pid)");
            }
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
        j.str("device", "vsock");
        j.str("mode", self.mode.as_str());
        j.num("parallel", self.parallel);
        match self.rate {
            Some(r) => j.float("rate", r),
            None => j.raw("rate", "null"),
        }
        j.num("rx_buf", self.rx_buf);
        j.num("tx_pkt", self.tx_pkt);
        j.raw("event_idx", if self.event_idx { "true" } else { "false" });
        for (k, v) in [
            ("bytes", self.bytes),
            ("driver_bytes", self.driver_bytes),
            ("connections", self.connections),
            ("accepted", self.accepted),
            ("resets", self.resets),
            ("tx_packets", self.tx_packets),
            ("rx_packets", self.rx_packets),
            ("kicks", self.kicks),
            ("waits", self.waits),
        ] {
            j.num(k, v);
        }
        j.float("elapsed_s", self.elapsed_s);
        j.float("mib_s", self.mib_s());
        j.float("conns_s", self.conns_s());
        j.float("client_cpu_s", self.client_cpu_s);
        let pids: Vec<String> = self.server_pids.iter().map(u32::to_string).collect();
        j.raw("server_pids", &format!("[{}]", pids.join(",")));
        match self.server_cpu_s {
            Some(cpu) => {
                j.float("server_cpu_s", cpu);
                match self.server_cpu_ms_per_mib() {
                    Some(v) => j.float("server_cpu_ms_per_mib", v),
                    None => j.raw("server_cpu_ms_per_mib", "null"),
                }
                match self.server_us_per_conn() {
                    Some(v) => j.float("server_us_per_conn", v),
                    None => j.raw("server_us_per_conn", "null"),
                }
            }
            None => j.raw("server_cpu_s", "null"),
        }
        match self.server_rss_kib {
            Some(v) => j.num("server_rss_kib", v),
            None => j.raw("server_rss_kib", "null"),
        }
        j.finish()
    }
}
