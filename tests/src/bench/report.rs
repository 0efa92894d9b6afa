//! The result of a run, as a human table and as one JSON object (written with std only).

use std::fmt::Write as _;

use super::histogram::Histogram;

/// The server's figures over a run.
#[derive(Debug, Clone)]
pub struct ServerReport {
    /// Processes measured (roots and descendants), or empty for in-process threads.
    pub pids: Vec<u32>,
    /// CPU seconds used during the run.
    pub cpu_s: f64,
    /// Where `cpu_s` comes from: "cgroup" (every task that ran in the server's cgroup,
    /// exited ones included), "proc" (utime + stime of the processes alive at the start
    /// and end) or "threads" (this process's server threads).
    pub cpu_from: &'static str,
    /// Wake-ups of the server's threads during the run (their voluntary context switches,
    /// i.e. sleeps); threads that exited meanwhile are missing.
    pub wakeups: Option<u64>,
    /// RssAnon of all processes before the load generator connected, KiB.
    pub rss_anon_idle_kib: u64,
    /// RssAnon of all processes at the end of the run, KiB.
    pub rss_anon_end_kib: u64,
    /// RssAnon of the leaf (device) processes before connecting, KiB.
    pub device_rss_anon_idle_kib: u64,
    /// RssAnon of the leaf (device) processes at the end, KiB.
    pub device_rss_anon_end_kib: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// `--label`.
    pub label: Option<String>,
    /// Socket path, or "null".
    pub target: String,
    /// Access pattern.
    pub rw: &'static str,
    /// Reads in percent (mixed).
    pub rwmix_read: u8,
    /// Bytes per request.
    pub bs: u32,
    /// Requests in flight per queue (at most, with a rate).
    pub iodepth: usize,
    /// "closed", "rate" or "think" (`Pace`).
    pub pace: &'static str,
    /// Target rate in requests per second (`--rate`).
    pub rate: Option<f64>,
    /// Requests per send.
    pub batch: usize,
    /// Think time between bursts, us (`--think-us`).
    pub think_us: Option<u64>,
    /// Queues.
    pub queues: usize,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// "call" or "poll".
    pub notify: &'static str,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Features acked.
    pub features: u64,
    /// Range of the disk touched, bytes.
    pub size: u64,
    /// Requests completed.
    pub completed: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Requests with a non-OK status.
    pub errors: u64,
    /// Reads whose data did not match (`--verify`).
    pub verify_failures: u64,
    /// Data bytes moved by successful requests.
    pub bytes: u64,
    /// Wall time from start to the last completion, seconds.
    pub elapsed_s: f64,
    /// Completion latency (with a rate: from the intended send time).
    pub latency: Histogram,
    /// With a rate: how late requests left (actual - intended send time).
    pub lag: Histogram,
    /// With a rate: completion latency from the actual send.
    pub service: Histogram,
    /// With a rate: requests that waited for a free slot.
    pub late: u64,
    /// Load generator CPU seconds (driver threads).
    pub client_cpu_s: f64,
    /// Kicks sent.
    pub kicks: u64,
    /// Sleeps on a call eventfd.
    pub waits: u64,
    /// Server figures, when known.
    pub server: Option<ServerReport>,
    /// First failure seen.
    pub first_error: Option<String>,
}

impl Report {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.completed as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// MiB per second of data.
    pub fn mib_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 / self.elapsed_s / (1 << 20) as f64
        } else {
            0.0
        }
    }

    /// Load generator CPU nanoseconds per request.
    pub fn client_ns_per_request(&self) -> f64 {
        if self.completed > 0 {
            self.client_cpu_s * 1e9 / self.completed as f64
        } else {
            0.0
        }
    }

    /// Requests per server CPU-second.
    pub fn iops_per_server_cpu_s(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        (s.cpu_s > 0.0).then(|| self.completed as f64 / s.cpu_s)
    }

    /// Server CPU microseconds per request.
    pub fn server_us_per_request(&self) -> Option<f64> {
        let s = self.server.as_ref()?;
        (self.completed > 0).then(|| s.cpu_s * 1e6 / self.completed as f64)
    }

    /// Server wake-ups per request.
    pub fn server_wakeups_per_request(&self) -> Option<f64> {
        let s = self.server.as_ref()?.wakeups?;
        (self.completed > 0).then(|| s as f64 / self.completed as f64)
    }

    fn us(ns: u64) -> f64 {
        ns as f64 / 1000.0
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let l = &self.latency;
        let _ = writeln!(
            o,
            "target      {}{}",
            self.target,
            self.label
                .as_deref()
                .map(|l| format!("  [{l}]"))
                .unwrap_or_default()
        );
        let mix = if self.rw == "mixed" {
            format!(" ({}% reads)", self.rwmix_read)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "workload    {}{mix} bs={} iodepth={} queues={} queue-size={} notify={} event-idx={} size={} MiB",
            self.rw,
            self.bs,
            self.iodepth,
            self.queues,
            self.queue_size,
            self.notify,
            if self.event_idx { "on" } else { "off" },
            self.size >> 20
        );
        match (self.pace, self.rate, self.think_us) {
            ("rate", Some(rate), _) => {
                let _ = writeln!(
                    o,
                    "pace        fixed rate {rate:.0} requests/s, {} per send, at most {} in flight per queue; {} waited for a slot",
                    self.batch, self.iodepth, self.late
                );
            }
            ("think", _, Some(t)) => {
                let _ = writeln!(
                    o,
                    "pace        bursts of {}, {t} us think time after each",
                    self.batch
                );
            }
            _ => {}
        }
        let _ = writeln!(
            o,
            "requests    {} ({} reads, {} writes) in {:.3} s; errors {}{}",
            self.completed,
            self.reads,
            self.writes,
            self.elapsed_s,
            self.errors,
            if self.verify_failures > 0 {
                format!(", VERIFY FAILURES {}", self.verify_failures)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "throughput  {:.0} IOPS, {:.1} MiB/s",
            self.iops(),
            self.mib_s()
        );
        let _ = writeln!(
            o,
            "latency us  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  mean {:.1}  min {:.1}  max {:.1}",
            Self::us(l.percentile(0.5)),
            Self::us(l.percentile(0.99)),
            Self::us(l.percentile(0.999)),
            l.mean() / 1000.0,
            Self::us(l.min()),
            Self::us(l.max())
        );
        if self.pace == "rate" {
            let (g, v) = (&self.lag, &self.service);
            let _ = writeln!(
                o,
                "  from send p50 {:.1}  p99 {:.1}; send lag p50 {:.1}  p99 {:.1}  max {:.1}",
                Self::us(v.percentile(0.5)),
                Self::us(v.percentile(0.99)),
                Self::us(g.percentile(0.5)),
                Self::us(g.percentile(0.99)),
                Self::us(g.max())
            );
        }
        let _ = writeln!(
            o,
            "vu-bench    {:.3} CPU s, {:.0} ns CPU per request, {} kicks, {} waits",
            self.client_cpu_s,
            self.client_ns_per_request(),
            self.kicks,
            self.waits
        );
        if let Some(s) = &self.server {
            let _ = writeln!(
                o,
                "server      {:.3} CPU s ({}), {:.0} IOPS per CPU-s, {:.2} us CPU per request{}{}",
                s.cpu_s,
                s.cpu_from,
                self.iops_per_server_cpu_s().unwrap_or(0.0),
                self.server_us_per_request().unwrap_or(0.0),
                self.server_wakeups_per_request()
                    .map(|v| format!(", {v:.2} wake-ups per request"))
                    .unwrap_or_default(),
                if s.pids.is_empty() {
                    String::new()
                } else {
                    format!(" (pids {:?})", s.pids)
                }
            );
            if !s.pids.is_empty() {
                let _ = writeln!(
                o,
                "server mem  RssAnon idle {} KiB, end {} KiB; device process idle {} KiB, end {} KiB",
                s.rss_anon_idle_kib,
                s.rss_anon_end_kib,
                s.device_rss_anon_idle_kib,
                s.device_rss_anon_end_kib
            );
            }
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(o, "first error {e}");
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
        j.str("rw", self.rw);
        j.num("rwmix_read", self.rwmix_read);
        j.num("bs", self.bs);
        j.num("iodepth", self.iodepth);
        j.str("pace", self.pace);
        match self.rate {
            Some(r) => j.float("rate", r),
            None => j.raw("rate", "null"),
        }
        j.num("batch", self.batch);
        match self.think_us {
            Some(t) => j.num("think_us", t),
            None => j.raw("think_us", "null"),
        }
        j.num("queues", self.queues);
        j.num("queue_size", self.queue_size);
        j.str("notify", self.notify);
        j.raw("event_idx", if self.event_idx { "true" } else { "false" });
        j.str("features", &format!("{:#x}", self.features));
        j.num("size", self.size);
        j.num("completed", self.completed);
        j.num("reads", self.reads);
        j.num("writes", self.writes);
        j.num("errors", self.errors);
        j.num("verify_failures", self.verify_failures);
        j.num("bytes", self.bytes);
        j.float("elapsed_s", self.elapsed_s);
        j.float("iops", self.iops());
        j.float("mib_s", self.mib_s());
        let l = &self.latency;
        j.float("lat_p50_us", Self::us(l.percentile(0.5)));
        j.float("lat_p99_us", Self::us(l.percentile(0.99)));
        j.float("lat_p999_us", Self::us(l.percentile(0.999)));
        j.float("lat_mean_us", l.mean() / 1000.0);
        j.float("lat_min_us", Self::us(l.min()));
        j.float("lat_max_us", Self::us(l.max()));
        if self.pace == "rate" {
            let (g, v) = (&self.lag, &self.service);
            j.float("service_p50_us", Self::us(v.percentile(0.5)));
            j.float("service_p99_us", Self::us(v.percentile(0.99)));
            j.float("lag_p50_us", Self::us(g.percentile(0.5)));
            j.float("lag_p99_us", Self::us(g.percentile(0.99)));
            j.float("lag_max_us", Self::us(g.max()));
            j.num("late", self.late);
        }
        j.float("client_cpu_s", self.client_cpu_s);
        j.float("client_ns_per_request", self.client_ns_per_request());
        j.num("kicks", self.kicks);
        j.num("waits", self.waits);
        match &self.server {
            Some(s) => {
                let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
                j.raw("server_pids", &format!("[{}]", pids.join(",")));
                j.float("server_cpu_s", s.cpu_s);
                j.str("server_cpu_from", s.cpu_from);
                match s.wakeups {
                    Some(v) => j.num("server_wakeups", v),
                    None => j.raw("server_wakeups", "null"),
                }
                j.float(
                    "iops_per_server_cpu_s",
                    self.iops_per_server_cpu_s().unwrap_or(0.0),
                );
                j.float(
                    "server_us_per_request",
                    self.server_us_per_request().unwrap_or(0.0),
                );
                for (k, v) in [
                    ("server_rss_anon_idle_kib", s.rss_anon_idle_kib),
                    ("server_rss_anon_end_kib", s.rss_anon_end_kib),
                    ("device_rss_anon_idle_kib", s.device_rss_anon_idle_kib),
                    ("device_rss_anon_end_kib", s.device_rss_anon_end_kib),
                ] {
                    if s.pids.is_empty() {
                        j.raw(k, "null");
                    } else {
                        j.num(k, v);
                    }
                }
            }
            None => j.raw("server_cpu_s", "null"),
        }
        match &self.first_error {
            Some(e) => j.str("first_error", e),
            None => j.raw("first_error", "null"),
        }
        j.finish()
    }
}

/// A tiny JSON object writer.
#[derive(Debug, Default)]
pub(crate) struct Json {
    out: String,
}

impl Json {
    fn key(&mut self, k: &str) {
        self.out.push(if self.out.is_empty() { '{' } else { ',' });
        escape_into(&mut self.out, k);
        self.out.push(':');
    }

    pub(crate) fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }

    pub(crate) fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escape_into(&mut self.out, v);
    }

    pub(crate) fn num(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    pub(crate) fn float(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.out, "{v:.3}");
        } else {
            self.out.push_str("null");
        }
    }

    pub(crate) fn finish(mut self) -> String {
        if self.out.is_empty() {
            self.out.push('{');
        }
        self.out.push('}');
        self.out
    }
}

fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
        let mut j = Json::default();
        j.num("a", 1);
        j.str("b", "x");
        j.float("c", f64::NAN);
        assert_eq!(j.finish(), r#"{"a":1,"b":"x","c":null}"#);
    }
}
