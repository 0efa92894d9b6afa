//! `vu-bench rng`: a host-side vhost-user-rng front-end and load generator, usable against any
//! vhost-user-rng server socket (ours through `vu-bench serve-rng` or, later, the launcher;
//! rust-vmm's vhost-device-rng, ...). One queue of `--queue-size` descriptors, `--iodepth`
//! requests of `--bs` bytes kept in flight; reports MiB/s and, with `--server-pid`, the
//! server's CPU per MiB (from /proc, as the block bench does).
//!
//! - [`control`]: negotiation; [`driver`]: the data path; [`report`]: the result;
//! - [`serve`]: `vu-bench serve-rng`, our device in-process without the jail.

pub mod control;
pub mod driver;
pub mod report;
pub mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use vu_devices::rng::{RngConfig, RngDevice};

use super::config::{parse_size, Notify};
use super::local::LocalServer;
use super::memory::{layout, GuestMemory};
use super::procstat;
use super::ring::DriverRing;
use driver::{RngDriver, RngWork};
pub use report::RngReport;

/// One rng benchmark run.
#[derive(Debug, Clone)]
pub struct RngBenchConfig {
    /// The server socket (`None`: serve our device in-process, `--local`).
    pub socket: Option<PathBuf>,
    /// Entropy source of the in-process device.
    pub source: PathBuf,
    /// Bytes per request buffer.
    pub bs: u32,
    /// Requests in flight.
    pub iodepth: usize,
    /// Descriptors in the queue.
    pub queue_size: u16,
    /// Run for this long (ignored when `requests` is set).
    pub runtime: Duration,
    /// Run exactly this many requests.
    pub requests: Option<u64>,
    /// Completion notification.
    pub notify: Notify,
    /// Accept VIRTIO_RING_F_EVENT_IDX when offered.
    pub event_idx: bool,
    /// Zero buffers before submission and count completions left zero.
    pub check: bool,
    /// The server's processes (with descendants) for CPU figures.
    pub server_pids: Vec<u32>,
    /// A cgroup (v1 cpuacct, or v2) holding every process of the server: its CPU figures
    /// then come from the cgroup (nanoseconds, every thread and process that ever ran in it)
    /// instead of /proc.
    pub server_cgroup: Option<PathBuf>,
    /// Copied into the report.
    pub label: Option<String>,
    /// Give up when nothing completes for this long.
    pub stall_timeout: Duration,
}

impl Default for RngBenchConfig {
    fn default() -> Self {
        RngBenchConfig {
            socket: None,
            source: PathBuf::from("/dev/urandom"),
            bs: 4096,
            iodepth: 32,
            queue_size: 64,
            runtime: Duration::from_secs(5),
            requests: None,
            notify: Notify::Call,
            event_idx: true,
            check: false,
            server_pids: Vec::new(),
            server_cgroup: None,
            label: None,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Usage of `vu-bench rng`.
pub const RNG_USAGE: &str = "\
vu-bench rng: a host-side vhost-user-rng front-end and load generator.

usage: vu-bench rng (--socket PATH | --local) [options]

target:
  --socket PATH        a vhost-user-rng server socket (vu-bench serve-rng, vhost-device-rng...)
  --local              serve our rng device in this process and measure its queue thread
  --source FILE        entropy source of the --local device     [/dev/urandom]
  --server-pid PID     the server's process (repeatable; descendants included): report its
                       CPU seconds and CPU per MiB
  --server-cgroup DIR  a cgroup holding the whole server (cpuacct.usage, or cpu.stat of
                       cgroup v2): its CPU figures come from there instead

workload:
  --bs SIZE            bytes per request buffer (512, 4k, 64k)  [4k]
  --iodepth N          requests in flight (at most the queue size) [32]
  --queue-size N       descriptors in the queue (power of two)  [64]
  --runtime SEC        run time                                 [5]
  --requests N         run exactly N requests instead
  --notify call|poll   wait on the call eventfd or spin on the used ring [call]
  --no-event-idx       do not accept VIRTIO_RING_F_EVENT_IDX
  --check              zero buffers before submitting, count completions left zero
  --stall-timeout SEC  fail when nothing completes for this long [10]

output:
  --json               one JSON object on stdout instead of the table
  --label TEXT         copied into the report
";

/// Parses `vu-bench rng` arguments; `Ok(None)` for --help. Returns the config and whether
/// JSON output was asked for.
pub fn parse_rng_args<I: IntoIterator<Item = String>>(
    args: I,
) -> Result<Option<(RngBenchConfig, bool)>> {
    let mut c = RngBenchConfig::default();
    let (mut json, mut local) = (false, false);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        let num = |v: String, name: &str| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{name}: `{v}` is not a number"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--socket" => c.socket = Some(PathBuf::from(value()?)),
            "--local" => local = true,
            "--source" => c.source = PathBuf::from(value()?),
            "--server-pid" => {
                for p in value()?.split(',').filter(|p| !p.is_empty()) {
                    c.server_pids.push(p.parse().context("--server-pid")?);
                }
            }
            "--server-cgroup" => c.server_cgroup = Some(PathBuf::from(value()?)),
            "--bs" => {
                let v = parse_size(&value()?)?;
                ensure!((1..=1 << 30).contains(&v), "--bs must be 1 to 1G");
                c.bs = v as u32;
            }
            "--iodepth" => c.iodepth = num(value()?, "--iodepth")? as usize,
            "--queue-size" => {
                let v = num(value()?, "--queue-size")?;
                ensure!(
                    v.is_power_of_two() && v <= 32768,
                    "--queue-size must be a power of two up to 32768"
                );
                c.queue_size = v as u16;
            }
            "--runtime" => {
                let v: f64 = value()?.parse().context("--runtime: not a number")?;
                ensure!(v > 0.0 && v < 1e6, "--runtime must be positive");
                c.runtime = Duration::from_secs_f64(v);
            }
            "--requests" => c.requests = Some(num(value()?, "--requests")?),
            "--notify" => {
                c.notify = match value()?.as_str() {
                    "call" => Notify::Call,
                    "poll" => Notify::Poll,
                    v => bail!("--notify {v}: expected call or poll"),
                }
            }
            "--no-event-idx" => c.event_idx = false,
            "--check" => c.check = true,
            "--stall-timeout" => {
                c.stall_timeout = Duration::from_secs(num(value()?, "--stall-timeout")?.max(1))
            }
            "--json" => json = true,
            "--label" => c.label = Some(value()?),
            other => bail!("unknown argument `{other}` (see vu-bench rng --help)"),
        }
    }
    ensure!(
        local != c.socket.is_some(),
        "give exactly one of --socket PATH and --local"
    );
    c.validate()?;
    Ok(Some((c, json)))
}

impl RngBenchConfig {
    /// Checks the combination of options.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=usize::from(self.queue_size)).contains(&self.iodepth),
            "--iodepth must be from 1 to the queue size ({})",
            self.queue_size
        );
        ensure!(self.bs > 0, "--bs must be at least 1");
        if let Some(0) = self.requests {
            bail!("--requests must be at least 1");
        }
        Ok(())
    }
}

/// How the server's CPU is measured.
enum Probe {
    None,
    Pids(Vec<u32>),
    Cgroup(PathBuf, Vec<u32>),
    OwnThreads(&'static str),
}

/// CPU seconds a cgroup's processes have used: cpuacct.usage (v1, nanoseconds) or the
/// usage_usec line of cpu.stat (v2).
pub fn cgroup_cpu_seconds(dir: &std::path::Path) -> Result<f64> {
    if let Ok(s) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        let ns: u64 = s.trim().parse().context("cpuacct.usage")?;
        return Ok(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat"))
        .with_context(|| format!("no cpuacct.usage or cpu.stat in {}", dir.display()))?;
    let us: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .context("no usage_usec in cpu.stat")?
        .trim()
        .parse()
        .context("cpu.stat usage_usec")?;
    Ok(us as f64 / 1e6)
}

impl Probe {
    fn source(&self) -> &'static str {
        match self {
            Probe::None => "none",
            Probe::Pids(_) => "proc",
            Probe::Cgroup(..) => "cgroup",
            Probe::OwnThreads(_) => "threads",
        }
    }

    /// CPU seconds now, over `pids` if given (the same processes at start and end).
    fn cpu(&self, pids: Option<&[u32]>) -> (Option<f64>, Vec<u32>) {
        match self {
            Probe::None => (None, Vec::new()),
            Probe::Pids(roots) => {
                let s = procstat::sample(roots);
                let tree: Vec<u32> = s.pids.iter().copied().collect();
                let cpu = match pids {
                    Some(p) => procstat::cpu_seconds(&p.iter().copied().collect()),
                    None => s.cpu_s,
                };
                (Some(cpu), tree)
            }
            Probe::Cgroup(dir, pids) => (cgroup_cpu_seconds(dir).ok(), pids.clone()),
            Probe::OwnThreads(prefix) => {
                (Some(procstat::own_threads_cpu_seconds(prefix)), Vec::new())
            }
        }
    }
}

/// Runs the rng benchmark `config` describes.
pub fn run_rng(config: &RngBenchConfig) -> Result<RngReport> {
    config.validate()?;
    let local;
    let (socket, probe, target) = match &config.socket {
        Some(s) => {
            let probe = match (&config.server_cgroup, config.server_pids.is_empty()) {
                (Some(dir), _) => {
                    cgroup_cpu_seconds(dir)?;
                    let pids = procstat::process_tree(&config.server_pids);
                    Probe::Cgroup(dir.clone(), pids.into_iter().collect())
                }
                (None, true) => Probe::None,
                (None, false) => Probe::Pids(config.server_pids.clone()),
            };
            (s.clone(), probe, s.display().to_string())
        }
        None => {
            let mut rc = RngConfig::new(serve::open_source(&config.source)?);
            rc.queue_size = config.queue_size;
            let dev = RngDevice::new(rc).map_err(|e| anyhow!("rng device: {e}"))?;
            local = LocalServer::start(dev)?;
            let target = format!("rng (in-process, {})", config.source.display());
            (
                local.path().to_path_buf(),
                Probe::OwnThreads("rng-q"),
                target,
            )
        }
    };
    let mut conn = control::open(&socket, config.event_idx)?;
    let (layouts, total) = layout(1, config.queue_size, config.iodepth, u64::from(config.bs));
    let mem = Arc::new(GuestMemory::new(total)?);
    let mut fds = conn.start_queues(&mem, &layouts, config.queue_size)?;
    let fds = fds.pop().context("no queue was set up")?;
    let work = RngWork {
        bs: config.bs,
        iodepth: config.iodepth,
        budget: config.requests,
        runtime: config.runtime,
        notify: config.notify,
        check: config.check,
        stall_timeout: config.stall_timeout,
    };
    let ring = DriverRing::new(
        mem.clone(),
        &layouts[0],
        config.queue_size,
        conn.event_idx(),
    );
    let driver = RngDriver::new(work, ring, fds, layouts[0]);
    let (before, pids) = probe.cpu(None);
    let res = driver.run()?;
    let (after, _) = probe.cpu(Some(&pids));
    conn.stop_queues(&[res.final_avail])?;
    let (event_idx, features) = (conn.event_idx(), conn.features);
    drop(conn);
    Ok(RngReport {
        label: config.label.clone(),
        target,
        bs: config.bs,
        iodepth: config.iodepth,
        queue_size: config.queue_size,
        notify: config.notify.as_str(),
        event_idx,
        features,
        completed: res.completed,
        bytes: res.bytes,
        short: res.short,
        empty: res.empty,
        unfilled: res.unfilled,
        elapsed_s: res.elapsed.as_secs_f64(),
        latency: res.latency,
        client_cpu_s: res.cpu_ns as f64 / 1e9,
        kicks: res.kicks,
        waits: res.waits,
        server_pids: pids,
        server_cpu_s: before.zip(after).map(|(b, a)| (a - b).max(0.0)),
        server_cpu_from: probe.source(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let Ok(Some((c, json))) = parse_rng_args(args(
            "--socket /s --bs 512 --iodepth 4 --queue-size 4 --server-pid 7 --json",
        )) else {
            panic!("does not parse");
        };
        assert!(json);
        assert_eq!((c.bs, c.iodepth, c.queue_size), (512, 4, 4));
        assert_eq!(c.server_pids, vec![7]);
        let Ok(Some((c, _))) = parse_rng_args(args("--socket /s --server-cgroup /sys/fs/cgroup/x"))
        else {
            panic!("does not parse");
        };
        assert_eq!(c.server_cgroup, Some(PathBuf::from("/sys/fs/cgroup/x")));
        assert!(matches!(parse_rng_args(args("--help")), Ok(None)));
        assert!(parse_rng_args(args("--bs 512")).is_err());
        assert!(parse_rng_args(args("--local --socket /s")).is_err());
        assert!(parse_rng_args(args("--local --queue-size 4 --iodepth 5")).is_err());
        assert!(parse_rng_args(args("--local --queue-size 6")).is_err());
    }
}
