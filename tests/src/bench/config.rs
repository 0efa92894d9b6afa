//! What to run: the workload and the target, parsed from the command line (std only, so the
//! library has no CLI dependency and tests build configs directly).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Sector size of virtio-blk request headers.
pub const SECTOR: u64 = 512;

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random reads.
    RandRead,
    /// Uniformly random writes.
    RandWrite,
    /// Uniformly random, reads and writes mixed by `rwmix_read`.
    Mixed,
}

impl Rw {
    /// As spelled on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::Mixed => "mixed",
        }
    }

    /// Random offsets (otherwise sequential).
    pub fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::Mixed)
    }

    /// Whether some requests write.
    pub fn writes(self, rwmix_read: u8) -> bool {
        match self {
            Rw::Write | Rw::RandWrite => true,
            Rw::Mixed => rwmix_read < 100,
            Rw::Read | Rw::RandRead => false,
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "read" => Rw::Read,
            "write" => Rw::Write,
            "randread" => Rw::RandRead,
            "randwrite" => Rw::RandWrite,
            "mixed" | "randrw" => Rw::Mixed,
            _ => bail!("--rw {s}: expected read, write, randread, randwrite or mixed"),
        })
    }
}

/// How the driver learns about completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Sleep on the call eventfd (epoll), as a guest with interrupts would.
    Call,
    /// Spin on the used ring with notifications suppressed.
    Poll,
}

impl Notify {
    /// As spelled on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Call => "call",
            Notify::Poll => "poll",
        }
    }
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Closed loop: `iodepth` requests in flight per queue at all times (a completed one is
    /// replaced at once); latency from the actual send.
    Closed,
    /// Open loop: `rate` requests per second in all (split evenly over the queues), sent in
    /// batches of `batch` (one kick each) at fixed intervals whatever the server does. Up to
    /// `iodepth` per queue are in flight; a request whose time comes while every slot is
    /// busy waits for one. Latency counts from the intended send time, so a stall shows in
    /// every request it delayed (no coordinated omission).
    Rate {
        /// Requests per second, all queues together.
        rate: f64,
        /// Requests per send (and kick).
        batch: usize,
    },
    /// Bursts: `batch` requests at once (one kick), wait until all have completed, then
    /// think for `think`, and again. Latency from the send.
    Think {
        /// Requests per burst.
        batch: usize,
        /// Idle time between a burst's last completion and the next burst.
        think: Duration,
    },
}

impl Pace {
    /// As reported: "closed", "rate" or "think".
    pub fn as_str(&self) -> &'static str {
        match self {
            Pace::Closed => "closed",
            Pace::Rate { .. } => "rate",
            Pace::Think { .. } => "think",
        }
    }

    /// Requests per send (1 in the closed loop's steady state).
    pub fn batch(&self) -> usize {
        match *self {
            Pace::Closed => 1,
            Pace::Rate { batch, .. } | Pace::Think { batch, .. } => batch,
        }
    }
}

/// One benchmark run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server socket (`None`: serve the in-process null device, `--null`).
    pub socket: Option<PathBuf>,
    /// Access pattern.
    pub rw: Rw,
    /// Percentage of reads for `Rw::Mixed`.
    pub rwmix_read: u8,
    /// Bytes per request (a multiple of 512).
    pub bs: u32,
    /// Requests in flight per queue (with `Pace::Rate`: at most).
    pub iodepth: usize,
    /// Closed loop, fixed rate or bursts with think time.
    pub pace: Pace,
    /// Number of queues (one driver thread each).
    pub queues: usize,
    /// Descriptors per queue (each request takes three).
    pub queue_size: u16,
    /// Run for this long (ignored when `requests` is set).
    pub runtime: Duration,
    /// Run exactly this many requests in all (split over the queues).
    pub requests: Option<u64>,
    /// Bytes of the disk to touch, from offset 0 (default: the whole disk).
    pub size: Option<u64>,
    /// Completion notification.
    pub notify: Notify,
    /// Accept VIRTIO_RING_F_EVENT_IDX when offered.
    pub event_idx: bool,
    /// Stamp written data with its offset and check the stamp of read data.
    pub verify: bool,
    /// Seed of the offset generator and of the verify stamp.
    pub seed: u64,
    /// The server's processes (each with its descendants) for CPU and memory figures.
    pub server_pids: Vec<u32>,
    /// A cgroup holding every process of the server (cgroup v1 cpuacct, or v2): its CPU
    /// figure then comes from there, which counts threads and processes that exited during
    /// the run (io_uring's workers, a thread pool's idle threads). Without `server_pids`
    /// its `cgroup.procs` name the processes for the memory and context-switch figures.
    pub server_cgroup: Option<PathBuf>,
    /// A free-form label copied into the report.
    pub label: Option<String>,
    /// Give up when no request completes for this long.
    pub stall_timeout: Duration,
    /// Capacity of the null device (`--null`).
    pub null_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            rw: Rw::RandRead,
            rwmix_read: 70,
            bs: 4096,
            iodepth: 1,
            pace: Pace::Closed,
            queues: 1,
            queue_size: 256,
            runtime: Duration::from_secs(5),
            requests: None,
            size: None,
            notify: Notify::Call,
            event_idx: true,
            verify: false,
            seed: 0x5eed,
            server_pids: Vec::new(),
            server_cgroup: None,
            label: None,
            stall_timeout: Duration::from_secs(10),
            null_size: 1 << 30,
        }
    }
}

/// Command-line usage.
pub const USAGE: &str = "\
vu-bench: a host-side vhost-user-blk front-end and load generator.

usage: vu-bench (--socket PATH | --null) [options]
       vu-bench rng --help        (the same for vhost-user-rng servers)
       vu-bench serve-rng --help  (our rng device, in-process, no jail)

target:
  --socket PATH        a vhost-user-blk server socket (ours, qemu-storage-daemon, ...)
  --null               serve an in-process null device (completes every request at once,
                       no I/O) and measure against it: the load generator's own ceiling
  --null-size BYTES    capacity of the null device [1G]
  --server-pid PID     the server's process (repeatable; descendants included): report its
                       CPU seconds, IOPS per server CPU-second and RssAnon (idle and end)
  --server-cgroup DIR  a cgroup holding the whole server (cpuacct.usage of cgroup v1, or
                       cpu.stat of v2): its CPU figure comes from there, exited threads and
                       processes included; its cgroup.procs stand in for --server-pid

workload:
  --rw MODE            read | write | randread | randwrite | mixed   [randread]
  --rwmix-read PCT     reads in percent for --rw mixed               [70]
  --bs SIZE            bytes per request, multiple of 512 (4k, 128k) [4k]
  --iodepth N          requests in flight per queue                  [1; --rate: 32, at most]
  --queues N           queues, one driver thread each                [1]
  --queue-size N       descriptors per queue (3 per request)         [256]
  --runtime SEC        run time                                      [5]
  --requests N         run exactly N requests in all instead
  --size BYTES         range of the disk to touch, from offset 0     [whole disk]
  --notify call|poll   wait on the call eventfd (epoll) or spin on the used ring [call]
  --no-event-idx       do not accept VIRTIO_RING_F_EVENT_IDX
  --verify             stamp written blocks with their offset, check read blocks
  --seed N             offset generator seed
  --stall-timeout SEC  fail when nothing completes for this long     [10]

light load (default: closed loop, --iodepth requests always in flight):
  --rate IOPS          open loop at a fixed rate, all queues together (2000, 10k, 0.5m):
                       requests leave at fixed times whatever the server does; latency
                       counts from the intended send time (stalls are not hidden), the
                       send lag (actual - intended) and service time are reported apart
  --batch N            requests per send, one kick each (--rate, --think-us)     [1]
  --think-us US        bursts: send --batch requests, wait for all, idle US microseconds,
                       again (latency from the send)

output:
  --json               one JSON object on stdout instead of the table
  --label TEXT         copied into the report
";

/// Parses a size: a number with an optional k/m/g/t suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or(lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a size (like 4096, 4k, 1g)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size `{s}` is too large"))
}

/// Parses a request rate: a number with an optional k or m suffix (powers of 1000).
pub fn parse_rate(s: &str) -> Result<f64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        _ => (t.as_str(), 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("--rate `{s}` is not a rate (like 2000, 10k, 0.5m)"))?;
    let v = v * mult;
    ensure!(
        v.is_finite() && (1.0..=1e8).contains(&v),
        "--rate must be from 1 to 100m requests per second"
    );
    Ok(v)
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a benchmark; `json` selects the output format.
    Run {
        /// The run.
        config: Box<Config>,
        /// JSON output.
        json: bool,
    },
    /// Print the usage.
    Help,
}

/// Parses the arguments (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Invocation> {
    let mut c = Config::default();
    let mut json = false;
    let mut null = false;
    let mut iodepth = None;
    let (mut rate, mut batch, mut think) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{name} needs a value")),
            }
        };
        let num = |v: String| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{name}: `{v}` is not a number"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--socket" => c.socket = Some(PathBuf::from(value()?)),
            "--null" => null = true,
            "--null-size" => c.null_size = parse_size(&value()?)?,
            "--server-pid" => {
                for p in value()?.split(',').filter(|p| !p.is_empty()) {
                    c.server_pids.push(
                        p.parse()
                            .with_context(|| format!("--server-pid: `{p}` is not a pid"))?,
                    );
                }
            }
            "--rw" => c.rw = Rw::parse(&value()?)?,
            "--rwmix-read" => {
                let v = num(value()?)?;
                ensure!(v <= 100, "--rwmix-read is a percentage (0..=100)");
                c.rwmix_read = v as u8;
            }
            "--bs" => {
                let v = parse_size(&value()?)?;
                ensure!(
                    v > 0 && v.is_multiple_of(SECTOR) && v <= 1 << 30,
                    "--bs must be a non-zero multiple of 512, at most 1G"
                );
                c.bs = v as u32;
            }
            "--iodepth" => iodepth = Some(num(value()?)? as usize),
            "--rate" => rate = Some(parse_rate(&value()?)?),
            "--batch" => batch = Some(num(value()?)? as usize),
            "--think-us" => think = Some(Duration::from_micros(num(value()?)?)),
            "--server-cgroup" => c.server_cgroup = Some(PathBuf::from(value()?)),
            "--queues" | "--num-queues" => c.queues = num(value()?)? as usize,
            "--queue-size" => {
                let v = num(value()?)?;
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
            "--requests" => c.requests = Some(num(value()?)?),
            "--size" => c.size = Some(parse_size(&value()?)?),
            "--notify" => {
                c.notify = match value()?.as_str() {
                    "call" => Notify::Call,
                    "poll" => Notify::Poll,
                    v => bail!("--notify {v}: expected call or poll"),
                }
            }
            "--no-event-idx" => c.event_idx = false,
            "--verify" => c.verify = true,
            "--seed" => c.seed = num(value()?)?,
            "--stall-timeout" => c.stall_timeout = Duration::from_secs(num(value()?)?.max(1)),
            "--json" => json = true,
            "--label" => c.label = Some(value()?),
            other => bail!("unknown argument `{other}` (see --help)"),
        }
    }
    ensure!(
        null != c.socket.is_some(),
        "give exactly one of --socket PATH and --null"
    );
    let b = batch.unwrap_or(1);
    c.pace = match (rate, think) {
        (Some(_), Some(_)) => bail!("give at most one of --rate and --think-us"),
        (Some(rate), None) => Pace::Rate { rate, batch: b },
        (None, Some(think)) => Pace::Think { batch: b, think },
        (None, None) => {
            ensure!(batch.is_none(), "--batch goes with --rate or --think-us");
            Pace::Closed
        }
    };
    c.iodepth = match (iodepth, c.pace) {
        (Some(d), _) => d,
        (None, Pace::Rate { batch, .. }) => batch.max(32),
        (None, Pace::Think { batch, .. }) => batch,
        (None, Pace::Closed) => 1,
    };
    c.validate()?;
    Ok(Invocation::Run {
        config: Box::new(c),
        json,
    })
}

impl Config {
    /// Checks the combination of options.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.iodepth >= 1, "--iodepth must be at least 1");
        ensure!(
            (1..=64).contains(&self.queues),
            "--queues must be from 1 to 64"
        );
        ensure!(
            self.iodepth * 3 <= usize::from(self.queue_size),
            "--iodepth {} needs {} descriptors per queue (3 per request); raise --queue-size",
            self.iodepth,
            self.iodepth * 3
        );
        ensure!(
            u64::from(self.bs).is_multiple_of(SECTOR),
            "--bs must be a multiple of 512"
        );
        if let Some(0) = self.requests {
            bail!("--requests must be at least 1");
        }
        match self.pace {
            Pace::Closed => {}
            Pace::Rate { rate, batch } => {
                ensure!(batch >= 1, "--batch must be at least 1");
                ensure!(
                    batch <= self.iodepth,
                    "--batch {batch} is more than --iodepth {} requests in flight",
                    self.iodepth
                );
                ensure!(
                    rate / self.queues as f64 >= 0.01,
                    "--rate is too low for {} queues",
                    self.queues
                );
            }
            Pace::Think { batch, think } => {
                ensure!(batch >= 1, "--batch must be at least 1");
                ensure!(
                    batch <= self.iodepth,
                    "--batch {batch} is more than --iodepth {} requests in flight",
                    self.iodepth
                );
                ensure!(think < Duration::from_secs(3600), "--think-us is too long");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k").ok(), Some(4096));
        assert_eq!(parse_size("128K").ok(), Some(128 << 10));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("2MiB").ok(), Some(2 << 20));
        assert_eq!(parse_size("512").ok(), Some(512));
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn parses_a_run() {
        let Ok(Invocation::Run { config, json }) = parse_args(args(
            "--socket /s --rw randwrite --bs 8k --iodepth 32 --queues 2 --runtime 2 \
             --server-pid 7,8 --server-pid 9 --notify poll --json",
        )) else {
            panic!("does not parse");
        };
        assert!(json);
        assert_eq!(config.rw, Rw::RandWrite);
        assert_eq!(config.bs, 8192);
        assert_eq!(config.iodepth, 32);
        assert_eq!(config.queues, 2);
        assert_eq!(config.server_pids, vec![7, 8, 9]);
        assert_eq!(config.notify, Notify::Poll);
    }

    #[test]
    fn parses_light_load_modes() {
        let Ok(Invocation::Run { config, .. }) = parse_args(args(
            "--null --rate 10k --queues 2 --server-cgroup /sys/fs/cgroup/x",
        )) else {
            panic!("does not parse");
        };
        assert_eq!(
            config.pace,
            Pace::Rate {
                rate: 10_000.0,
                batch: 1
            }
        );
        assert_eq!(config.iodepth, 32, "--rate allows 32 in flight by default");
        assert_eq!(
            config.server_cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/x"))
        );
        let Ok(Invocation::Run { config, .. }) =
            parse_args(args("--null --batch 32 --think-us 500"))
        else {
            panic!("does not parse");
        };
        assert_eq!(
            config.pace,
            Pace::Think {
                batch: 32,
                think: Duration::from_micros(500)
            }
        );
        assert_eq!(config.iodepth, 32, "a burst fits");
        assert_eq!(parse_rate("0.5m").ok(), Some(500_000.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_args(args("--null --rate 1k --think-us 5")).is_err());
        assert!(parse_args(args("--null --batch 4")).is_err());
        assert!(parse_args(args("--null --batch 8 --iodepth 4 --think-us 5")).is_err());
    }

    #[test]
    fn refuses_bad_combinations() {
        assert!(parse_args(args("--rw read")).is_err());
        assert!(parse_args(args("--null --socket /s")).is_err());
        assert!(parse_args(args("--null --iodepth 100")).is_err());
        assert!(parse_args(args("--null --bs 1000")).is_err());
        assert!(parse_args(args("--null --bogus")).is_err());
    }
}
