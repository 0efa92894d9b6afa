//! The result of a net run, as a table and as one JSON object.

use std::fmt::Write as _;

use super::driver::NetResult;
use super::NetBenchConfig;
use crate::bench::histogram::Histogram;
use crate::bench::report::Json;

/// Everything a net run measured.
#[derive(Debug, Clone)]
pub struct NetReport {
    /// `--label`.
    pub label: Option<String>,
    /// Socket path.
    pub target: String,
    /// `64`, `1500` or `64k`.
    pub frame: &'static str,
    /// Bytes per frame sent (Ethernet, no FCS).
    pub frame_len: usize,
    /// Payload bytes per frame sent (after the Ethernet, IPv4 and UDP or TCP headers).
    pub payload_len: usize,
    /// Transmit frames in flight at most.
    pub window: usize,
    /// Paced rate, frames/s (`None`: saturated).
    pub rate: Option<u64>,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Features acked.
    pub features: u64,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// MRG_RXBUF negotiated.
    pub mergeable: bool,
    /// What the driver measured.
    pub res: NetResult,
    /// Server processes measured.
    pub server_pids: Vec<u32>,
    /// Server CPU seconds over the measured run, when known.
    pub server_cpu_s: Option<f64>,
}

impl NetReport {
    /// Builds the report of a run.
    pub fn new(
        c: &NetBenchConfig,
        features: u64,
        event_idx: bool,
        mergeable: bool,
        res: &NetResult,
        server_cpu_s: Option<f64>,
    ) -> Self {
        NetReport {
            label: c.label.clone(),
            target: c.socket.display().to_string(),
            frame: c.frame.as_str(),
            frame_len: c.frame.frame_len(),
            payload_len: c.frame.frame_len() - c.frame.payload_offset(),
            window: c.window,
            rate: c.rate,
            queue_size: c.queue_size,
            rx_buf: c.rx_buf,
            features,
            event_idx,
            mergeable,
            res: res.clone(),
            server_pids: c.server_pids.clone(),
            server_cpu_s,
        }
    }

    fn secs(&self) -> f64 {
        self.res.elapsed.as_secs_f64()
    }

    /// Frames back per second.
    pub fn pps(&self) -> f64 {
        self.res.rx_frames as f64 / self.secs()
    }

    /// Frames the server took from the transmit queue per second.
    pub fn tx_pps(&self) -> f64 {
        self.res.tx_frames as f64 / self.secs()
    }

    /// Gbit/s of the frames back (Ethernet bytes).
    pub fn gbit_s(&self) -> f64 {
        self.res.rx_bytes as f64 * 8.0 / self.secs() / 1e9
    }

    /// Gbit/s of the payload back (UDP or TCP payload: for TSO frames, what a server that
    /// segments them and one that does not both deliver).
    pub fn payload_gbit_s(&self) -> f64 {
        let headers = (self.frame_len - self.payload_len) as u64 * self.res.rx_frames;
        self.res.rx_bytes.saturating_sub(headers) as f64 * 8.0 / self.secs() / 1e9
    }

    /// Frames sent that did not come back (0 when the reflector segmented them).
    pub fn lost(&self) -> u64 {
        self.res.tx_frames.saturating_sub(self.res.rx_frames)
    }

    /// Server CPU microseconds per frame back (each crossed the server twice).
    pub fn server_us_per_frame(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.res.rx_frames > 0).then(|| cpu * 1e6 / self.res.rx_frames as f64)
    }

    /// Server CPU nanoseconds per byte back.
    pub fn server_ns_per_kib(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.res.rx_bytes > 0).then(|| cpu * 1e9 / (self.res.rx_bytes as f64 / 1024.0))
    }

    fn latency(&self) -> &Histogram {
        &self.res.latency
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let us = |ns: u64| ns as f64 / 1000.0;
        let r = &self.res;
        let label = self
            .label
            .as_deref()
            .map(|l| format!("  [{l}]"))
            .unwrap_or_default();
        let _ = writeln!(o, "target      {}{label}", self.target);
        let _ = writeln!(
            o,
            "workload    net frame={} ({} bytes) window={} rate={} queue-size={} rx-buf={} \
             event-idx={} mergeable={}",
            self.frame,
            self.frame_len,
            self.window,
            self.rate
                .map_or_else(|| "saturate".to_string(), |r| format!("{r}/s")),
            self.queue_size,
            self.rx_buf,
            if self.event_idx { "on" } else { "off" },
            if self.mergeable { "on" } else { "off" },
        );
        let _ = writeln!(
            o,
            "frames      {} taken, {} back ({} matched, {} lost, {} bytes written off, {} differed) \
             in {:.3} s{}",
            r.tx_frames,
            r.rx_frames,
            r.matched,
            self.lost(),
            r.written_off,
            r.mismatched,
            self.secs(),
            if r.late > 0 {
                format!("; {} late from the warm-up", r.late)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "throughput  {:.0} frames/s back, {:.3} Gbit/s back ({:.3} of payload), {:.0} \
             frames/s taken",
            self.pps(),
            self.gbit_s(),
            self.payload_gbit_s(),
            self.tx_pps()
        );
        let l = self.latency();
        let _ = writeln!(
            o,
            "round trip  p50 {:.1} us  p99 {:.1} us  mean {:.1} us",
            us(l.percentile(0.5)),
            us(l.percentile(0.99)),
            l.mean() / 1000.0
        );
        let _ = writeln!(
            o,
            "vu-bench    {:.3} CPU s, {} kicks, {} waits",
            r.cpu_ns as f64 / 1e9,
            r.kicks,
            r.waits
        );
        if let Some(cpu) = self.server_cpu_s {
            let _ = writeln!(
                o,
                "server      {cpu:.3} CPU s, {:.3} us CPU per frame back (pids {:?})",
                self.server_us_per_frame().unwrap_or(0.0),
                self.server_pids
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
        j.str("device", "net");
        j.str("frame", self.frame);
        j.num("frame_len", self.frame_len);
        j.num("window", self.window);
        match self.rate {
            Some(r) => j.num("rate", r),
            None => j.raw("rate", "null"),
        }
        j.num("queue_size", self.queue_size);
        j.num("rx_buf", self.rx_buf);
        j.str("features", &format!("{:#x}", self.features));
        j.raw("event_idx", if self.event_idx { "true" } else { "false" });
        j.raw("mergeable", if self.mergeable { "true" } else { "false" });
        let r = &self.res;
        for (k, v) in [
            ("tx_frames", r.tx_frames),
            ("rx_frames", r.rx_frames),
            ("rx_bytes", r.rx_bytes),
            ("matched", r.matched),
            ("written_off", r.written_off),
            ("mismatched", r.mismatched),
            ("late", r.late),
            ("lost", self.lost()),
            ("kicks", r.kicks),
            ("waits", r.waits),
        ] {
            j.num(k, v);
        }
        j.float("elapsed_s", self.secs());
        j.float("pps", self.pps());
        j.float("tx_pps", self.tx_pps());
        j.float("gbit_s", self.gbit_s());
        j.float("payload_gbit_s", self.payload_gbit_s());
        let l = self.latency();
        j.float("rtt_p50_us", l.percentile(0.5) as f64 / 1000.0);
        j.float("rtt_p99_us", l.percentile(0.99) as f64 / 1000.0);
        j.float("rtt_mean_us", l.mean() / 1000.0);
        j.float("client_cpu_s", r.cpu_ns as f64 / 1e9);
        let pids: Vec<String> = self.server_pids.iter().map(u32::to_string).collect();
        j.raw("server_pids", &format!("[{}]", pids.join(",")));
        match self.server_cpu_s {
            Some(cpu) => {
                j.float("server_cpu_s", cpu);
                j.float(
                    "server_us_per_frame",
                    self.server_us_per_frame().unwrap_or(0.0),
                );
                j.float("server_ns_per_kib", self.server_ns_per_kib().unwrap_or(0.0));
            }
            None => j.raw("server_cpu_s", "null"),
        }
        j.finish()
    }
}
