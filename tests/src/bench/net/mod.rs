//! `vu-bench net`: a host-side vhost-user-net front-end and load generator, usable against
//! any vhost-user-net server socket (ours through `launcher start net`, DPDK's testpmd with
//! its vhost PMD, ...). One queue pair: frames sent on the transmit queue go through the
//! server to its tap; whatever comes back from the tap (a reflector on its far side sends
//! every frame back) arrives on the receive queue. Reports frames/s and Gbit/s of what came
//! back, the round-trip latency and, with `--server-pid`, the server's CPU per frame (all
//! its processes and threads, descendants included).
//!
//! - [`frames`]: what is sent; [`control`]: negotiation; [`driver`]: the data path;
//!   [`report`]: the result.

pub mod control;
pub mod driver;
pub mod frames;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::config::parse_size;
use super::memory::{layout, GuestMemory, QueueLayout};
use super::procstat;
use super::ring::DriverRing;
use control::net_bits;
use driver::{NetDriver, NetWork};
use frames::{FrameKind, HDR_LEN};
pub use report::NetReport;

/// One net benchmark run.
#[derive(Debug, Clone)]
pub struct NetBenchConfig {
    /// The server socket.
    pub socket: PathBuf,
    /// What to send.
    pub frame: FrameKind,
    /// Transmit frames in flight at most.
    pub window: usize,
    /// Frames per second (`None`: as fast as the server takes them).
    pub rate: Option<u64>,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Measured run time.
    pub runtime: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Accept VIRTIO_RING_F_EVENT_IDX when offered.
    pub event_idx: bool,
    /// Compare the frames that come back with those sent.
    pub check: bool,
    /// The server's processes (with descendants) for CPU figures.
    pub server_pids: Vec<u32>,
    /// Copied into the report.
    pub label: Option<String>,
    /// Give up when nothing moves for this long.
    pub stall_timeout: Duration,
}

impl Default for NetBenchConfig {
    fn default() -> Self {
        NetBenchConfig {
            socket: PathBuf::new(),
            frame: FrameKind::Small,
            window: 256,
            rate: None,
            queue_size: 1024,
            rx_buf: 4096,
            runtime: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            event_idx: true,
            check: false,
            server_pids: Vec::new(),
            label: None,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Usage of `vu-bench net`.
pub const NET_USAGE: &str = "\
vu-bench net: a host-side vhost-user-net front-end and load generator.

usage: vu-bench net --socket PATH [options]

The server's tap must send every frame back (a reflector on its far side, e.g. in the tap's
network namespace: tc qdisc add dev TAP ingress; tc filter add dev TAP parent ffff: protocol
all u32 match u32 0 0 action mirred egress redirect dev TAP). What comes back is measured.

target:
  --socket PATH        a vhost-user-net server socket (launcher start net, dpdk-testpmd...)
  --server-pid PID     the server's process (repeatable; descendants included): report its
                       CPU seconds and CPU per frame

workload:
  --frame 64|1500|64k  60-byte UDP (64 on the wire), 1514-byte UDP, or a 65534-byte TCP
                       segment with a TSO header (needs HOST_TSO4)      [64]
  --window N           transmit frames in flight at most              [256]
  --rate PPS           send this many frames per second (light load); default: saturate
  --queue-size N       descriptors per queue (power of two)           [1024]
  --rx-buf SIZE        bytes per receive buffer (mergeable buffers)   [4k]
  --runtime SEC        measured run time                              [5]
  --warmup SEC         unmeasured warm-up first                       [0.5]
  --no-event-idx       do not accept VIRTIO_RING_F_EVENT_IDX
  --check              compare every frame that comes back with the one sent (64, 1500)
  --stall-timeout SEC  fail when nothing moves for this long          [10]

output:
  --json               one JSON object on stdout instead of the table
  --label TEXT         copied into the report
";

/// Parses `vu-bench net` arguments; `Ok(None)` for --help. Returns the config and whether
/// JSON output was asked for.
pub fn parse_net_args<I: IntoIterator<Item = String>>(
    args: I,
) -> Result<Option<(NetBenchConfig, bool)>> {
    let mut c = NetBenchConfig::default();
    let mut json = false;
    let mut socket = false;
    let mut it = args.into_iter();
    let secs = |v: String, name: &str| -> Result<Duration> {
        let s: f64 = v.parse().with_context(|| format!("{name}: not a number"))?;
        ensure!((0.0..1e6).contains(&s), "{name} must be from 0");
        Ok(Duration::from_secs_f64(s))
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        let num = |v: String, name: &str| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{name}: `{v}` is not a number"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--socket" => {
                c.socket = PathBuf::from(value()?);
                socket = true;
            }
            "--server-pid" => {
                for p in value()?.split(',').filter(|p| !p.is_empty()) {
                    c.server_pids.push(p.parse().context("--server-pid")?);
                }
            }
            "--frame" => {
                let v = value()?;
                c.frame = FrameKind::parse(&v)
                    .with_context(|| format!("--frame {v}: expected 64, 1500 or 64k"))?;
            }
            "--window" => c.window = num(value()?, "--window")? as usize,
            "--rate" => c.rate = Some(num(value()?, "--rate")?.max(1)),
            "--queue-size" => {
                let v = num(value()?, "--queue-size")?;
                ensure!(
                    v.is_power_of_two() && (4..=32768).contains(&v),
                    "--queue-size must be a power of two from 4 to 32768"
                );
                c.queue_size = v as u16;
            }
            "--rx-buf" => {
                let v = parse_size(&value()?)?;
                ensure!(
                    (64..=1 << 20).contains(&v),
                    "--rx-buf must be 64 bytes to 1 MiB"
                );
                c.rx_buf = v as u32;
            }
            "--runtime" => c.runtime = secs(value()?, "--runtime")?,
            "--warmup" => c.warmup = secs(value()?, "--warmup")?,
            "--no-event-idx" => c.event_idx = false,
            "--check" => c.check = true,
            "--stall-timeout" => c.stall_timeout = secs(value()?, "--stall-timeout")?,
            "--json" => json = true,
            "--label" => c.label = Some(value()?),
            other => bail!("unknown argument `{other}` (see vu-bench net --help)"),
        }
    }
    ensure!(socket, "--socket PATH is required");
    c.validate()?;
    Ok(Some((c, json)))
}

impl NetBenchConfig {
    /// Checks the combination of options.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=usize::from(self.queue_size)).contains(&self.window),
            "--window must be from 1 to the queue size ({})",
            self.queue_size
        );
        ensure!(!self.runtime.is_zero(), "--runtime must be positive");
        ensure!(
            !self.stall_timeout.is_zero(),
            "--stall-timeout must be positive"
        );
        Ok(())
    }
}

/// The receive queue's layout, then the transmit queue's after it.
fn layouts(config: &NetBenchConfig, tx_len: u64) -> (QueueLayout, QueueLayout, u64) {
    let qs = config.queue_size;
    let (rx, rx_total) = layout(1, qs, usize::from(qs), u64::from(config.rx_buf));
    let (tx, tx_total) = layout(1, qs, config.window, tx_len);
    let shift = |l: QueueLayout| QueueLayout {
        desc: l.desc + rx_total,
        avail: l.avail + rx_total,
        used: l.used + rx_total,
        meta: l.meta + rx_total,
        data: l.data + rx_total,
        data_stride: l.data_stride,
    };
    (rx[0], shift(tx[0]), rx_total + tx_total)
}

/// Runs the net benchmark `config` describes.
pub fn run_net(config: &NetBenchConfig) -> Result<NetReport> {
    config.validate()?;
    let mut net = control::open(&config.socket, config.event_idx)?;
    if config.frame == FrameKind::Tso {
        ensure!(
            net.has(net_bits::HOST_TSO4),
            "64 KiB TSO frames need VIRTIO_NET_F_HOST_TSO4 (and CSUM), which the server does \
             not offer (features {:#x})",
            net.offered
        );
    }
    let mergeable = net.has(net_bits::MRG_RXBUF);
    if !mergeable {
        let need = HDR_LEN as u64
            + if net.has(net_bits::GUEST_TSO4) {
                65550
            } else {
                1518
            };
        ensure!(
            u64::from(config.rx_buf) >= need,
            "without MRG_RXBUF every receive buffer must hold a whole frame: --rx-buf {need}"
        );
    }
    let tx_len = (HDR_LEN + config.frame.frame_len()) as u64;
    let (rx_l, tx_l, total) = layouts(config, tx_len);
    let mem = Arc::new(GuestMemory::new(total)?);
    let mut fds = net
        .conn
        .start_queues(&mem, &[rx_l, tx_l], config.queue_size)?;
    let tx_fds = fds.pop().context("no transmit queue")?;
    let rx_fds = fds.pop().context("no receive queue")?;
    let event_idx = net.conn.event_idx();
    let rings = (
        DriverRing::new(mem.clone(), &rx_l, config.queue_size, event_idx),
        DriverRing::new(mem.clone(), &tx_l, config.queue_size, event_idx),
    );
    let work = NetWork {
        kind: config.frame,
        window: config.window,
        rate: config.rate,
        runtime: config.runtime,
        warmup: config.warmup,
        rx_buf: config.rx_buf,
        mergeable,
        check: config.check,
        stall_timeout: config.stall_timeout,
    };
    let mut driver = NetDriver::new(work, rings, (rx_fds, tx_fds), (rx_l, tx_l));
    // A server that died leaves the rings as they were: say so when the data path fails.
    let server_gone = |e: anyhow::Error| {
        if net.conn.server_closed() {
            e.context("the server has closed the connection (exited or crashed)")
        } else {
            e
        }
    };
    driver.warm_up().map_err(server_gone)?;
    let before = (!config.server_pids.is_empty()).then(|| procstat::sample(&config.server_pids));
    let res = driver.measure().map_err(server_gone)?;
    let server_cpu_s = before.map(|b| (procstat::cpu_seconds(&b.pids) - b.cpu_s).max(0.0));
    let features = net.conn.features;
    drop(net);
    Ok(NetReport::new(
        config,
        features,
        event_idx,
        mergeable,
        &res,
        server_cpu_s,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let Ok(Some((c, json))) = parse_net_args(args(
            "--socket /s --frame 1500 --window 8 --queue-size 64 --rate 1000 --server-pid 7,8 --json",
        )) else {
            panic!("does not parse");
        };
        assert!(json);
        assert_eq!((c.frame, c.window, c.queue_size), (FrameKind::Mtu, 8, 64));
        assert_eq!(c.rate, Some(1000));
        assert_eq!(c.server_pids, vec![7, 8]);
        assert!(matches!(parse_net_args(args("--help")), Ok(None)));
        assert!(parse_net_args(args("--frame 64")).is_err(), "no socket");
        assert!(parse_net_args(args("--socket /s --frame 9000")).is_err());
        assert!(parse_net_args(args("--socket /s --queue-size 64 --window 65")).is_err());
        assert!(parse_net_args(args("--socket /s --queue-size 6")).is_err());
    }

    #[test]
    fn queue_layouts_do_not_overlap() {
        let c = NetBenchConfig::default();
        let (rx, tx, total) = layouts(&c, 65561);
        assert!(rx.buffer(1023) + 4096 <= tx.desc);
        assert!(tx.buffer(c.window - 1) + 65561 <= total);
    }
}
