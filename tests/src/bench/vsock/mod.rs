//! `vu-bench vsock`: a host-side vhost-user-vsock front-end that plays the guest driver
//! ([`driver`]) against any hybrid vsock server (ours through the launcher, rust-vmm's
//! vhost-device-vsock), with the host programs on the server's `--uds-path` ([`host`]).
//! Workloads: bulk streams to the host and from the host, and connection churn; each as fast
//! as it goes (saturation) or at a fixed rate (light load). Reports MiB/s or connections/s
//! and, with `--server-pid`, the server's CPU (every thread of every process of its tree)
//! per MiB or per connection.

pub mod driver;
pub mod host;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use super::config::parse_size;
use super::control::{bits, Connection};
use super::memory::{GuestMemory, QueueLayout, PAGE};
use super::procstat;
use driver::{Area, Driver, Phase, Work, HDR_STRIDE};
use host::Host;
pub use report::VsockReport;

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bulk streams from the guest to a host program (TX queue).
    ToHost,
    /// Bulk streams from host programs to the guest (RX queue).
    FromHost,
    /// Connections to a host program opened, used for one message and closed, over and over.
    Churn,
}

impl Mode {
    /// As on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ToHost => "to-host",
            Mode::FromHost => "from-host",
            Mode::Churn => "churn",
        }
    }
}

/// A rate limit: `per_sec` units (bytes, connections) per second, `burst` ahead at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Units per second.
    pub per_sec: f64,
    /// Units allowed ahead of the rate.
    pub burst: u64,
}

impl Pace {
    /// Units allowed now, `done` having been done `elapsed` into the run.
    pub fn allowed(&self, elapsed: Duration, done: u64) -> u64 {
        ((self.per_sec * elapsed.as_secs_f64()) as u64 + self.burst).saturating_sub(done)
    }
}

/// One vsock benchmark run.
#[derive(Debug, Clone)]
pub struct VsockBenchConfig {
    /// The server's vhost-user socket.
    pub socket: PathBuf,
    /// The server's `--uds-path`.
    pub uds_path: PathBuf,
    /// The workload.
    pub mode: Mode,
    /// Streams (bulk) or connections in flight (churn).
    pub parallel: usize,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Bytes per receive buffer.
    pub rx_buf: u32,
    /// Payload bytes per TX packet.
    pub tx_pkt: u32,
    /// Receive buffer advertised per connection.
    pub buf_alloc: u32,
    /// Host port (to-host, churn) or the guest's port (from-host).
    pub port: u32,
    /// Measured run time.
    pub runtime: Duration,
    /// Light load: MiB/s (bulk) or connections/s (churn); None: saturation.
    pub rate: Option<f64>,
    /// Accept VIRTIO_RING_F_EVENT_IDX when offered.
    pub event_idx: bool,
    /// The server's processes (with descendants) for CPU figures.
    pub server_pids: Vec<u32>,
    /// Copied into the report.
    pub label: Option<String>,
    /// Give up when nothing moves for this long.
    pub stall_timeout: Duration,
}

impl Default for VsockBenchConfig {
    fn default() -> Self {
        VsockBenchConfig {
            socket: PathBuf::new(),
            uds_path: PathBuf::new(),
            mode: Mode::ToHost,
            parallel: 1,
            queue_size: 256,
            rx_buf: 4096,
            tx_pkt: 64 << 10,
            buf_alloc: 256 << 10,
            port: 9000,
            runtime: Duration::from_secs(5),
            rate: None,
            event_idx: true,
            server_pids: Vec::new(),
            label: None,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Usage of `vu-bench vsock`.
pub const VSOCK_USAGE: &str = "\
vu-bench vsock: a host-side vhost-user-vsock front-end (it plays the guest driver) and load
generator for hybrid vsock servers (ours, vhost-device-vsock...).

usage: vu-bench vsock --socket PATH --uds-path PATH [options]

target:
  --socket PATH        the server's vhost-user socket
  --uds-path PATH      the server's --uds-path (host programs connect there; guest
                       connections to host port P reach <uds-path>_P)
  --server-pid PID     the server's process (repeatable; descendants included): report its
                       CPU seconds and CPU per MiB or per connection

workload:
  --mode MODE          to-host | from-host | churn                  [to-host]
  --parallel N         streams (bulk) or connections in flight (churn) [1; churn 16]
  --rate N             light load: MiB/s (bulk) or connections/s (churn) [saturation]
  --runtime SEC        measured run time                           [5]
  --queue-size N       descriptors per queue (power of two)        [256]
  --rx-buf SIZE        bytes per receive buffer                    [4k]
  --tx-pkt SIZE        payload bytes per TX packet (at most 64k)   [64k]
  --buf-alloc SIZE     receive buffer advertised per connection    [256k]
  --port N             host port (to-host, churn) or guest port (from-host) [9000]
  --no-event-idx       do not accept VIRTIO_RING_F_EVENT_IDX
  --stall-timeout SEC  fail when nothing moves for this long       [10]

output:
  --json               one JSON object on stdout instead of the table
  --label TEXT         copied into the report
";

/// Parses `vu-bench vsock` arguments; `Ok(None)` for --help. Returns the config and whether
/// JSON output was asked for.
pub fn parse_vsock_args<I: IntoIterator<Item = String>>(
    args: I,
) -> Result<Option<(VsockBenchConfig, bool)>> {
    let mut c = VsockBenchConfig::default();
    let mut json = false;
    let mut parallel = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        let num = |v: String, name: &str| -> Result<u64> {
            v.parse::<u64>()
                .with_context(|| format!("{name}: `{v}` is not a number"))
        };
        let size = |v: String, name: &str, max: u64| -> Result<u32> {
            let n = parse_size(&v)?;
            ensure!((1..=max).contains(&n), "{name} must be 1 to {max}");
            Ok(n as u32)
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--socket" => c.socket = PathBuf::from(value()?),
            "--uds-path" => c.uds_path = PathBuf::from(value()?),
            "--server-pid" => {
                for p in value()?.split(',').filter(|p| !p.is_empty()) {
                    c.server_pids.push(p.parse().context("--server-pid")?);
                }
            }
            "--mode" => {
                c.mode = match value()?.as_str() {
                    "to-host" => Mode::ToHost,
                    "from-host" => Mode::FromHost,
                    "churn" => Mode::Churn,
                    v => bail!("--mode {v}: expected to-host, from-host or churn"),
                }
            }
            "--parallel" => parallel = Some(num(value()?, "--parallel")? as usize),
            "--rate" => {
                let v: f64 = value()?.parse().context("--rate: not a number")?;
                ensure!(v > 0.0, "--rate must be positive");
                c.rate = Some(v);
            }
            "--runtime" => {
                let v: f64 = value()?.parse().context("--runtime: not a number")?;
                ensure!(v > 0.0 && v < 1e6, "--runtime must be positive");
                c.runtime = Duration::from_secs_f64(v);
            }
            "--queue-size" => {
                let v = num(value()?, "--queue-size")?;
                ensure!(
                    v.is_power_of_two() && (4..=32768).contains(&v),
                    "--queue-size must be a power of two from 4 to 32768"
                );
                c.queue_size = v as u16;
            }
            "--rx-buf" => c.rx_buf = size(value()?, "--rx-buf", 64 << 10)?,
            "--tx-pkt" => c.tx_pkt = size(value()?, "--tx-pkt", 64 << 10)?,
            "--buf-alloc" => c.buf_alloc = size(value()?, "--buf-alloc", 64 << 20)?,
            "--port" => c.port = u32::try_from(num(value()?, "--port")?).context("--port")?,
            "--no-event-idx" => c.event_idx = false,
            "--stall-timeout" => {
                c.stall_timeout = Duration::from_secs(num(value()?, "--stall-timeout")?.max(1))
            }
            "--json" => json = true,
            "--label" => c.label = Some(value()?),
            other => bail!("unknown argument `{other}` (see vu-bench vsock --help)"),
        }
    }
    c.parallel = parallel.unwrap_or(if c.mode == Mode::Churn { 16 } else { 1 });
    ensure!(
        !c.socket.as_os_str().is_empty() && !c.uds_path.as_os_str().is_empty(),
        "--socket and --uds-path are required"
    );
    ensure!(
        (1..=usize::from(c.queue_size / 4).max(1)).contains(&c.parallel),
        "--parallel must be from 1 to a quarter of the queue size"
    );
    Ok(Some((c, json)))
}

/// Connects and negotiates: VERSION_1, PROTOCOL_FEATURES, EVENT_IDX where offered and
/// wanted, no device bits (streams only); CONFIG for the guest CID. Returns the connection
/// and the guest CID.
fn open(socket: &Path, event_idx: bool) -> Result<(Connection, u64)> {
    let mut fe = Frontend::connect(socket, 2)
        .map_err(|e| anyhow!("cannot connect to {}: {e}", socket.display()))?;
    fe.set_owner().map_err(|e| anyhow!("SET_OWNER: {e}"))?;
    let offered = fe
        .get_features()
        .map_err(|e| anyhow!("GET_FEATURES: {e}"))?;
    ensure!(
        offered & bits::PROTOCOL_FEATURES != 0 && offered & bits::VERSION_1 != 0,
        "the server does not offer VERSION_1 and PROTOCOL_FEATURES"
    );
    let proto = fe
        .get_protocol_features()
        .map_err(|e| anyhow!("GET_PROTOCOL_FEATURES: {e}"))?;
    ensure!(
        proto.contains(VhostUserProtocolFeatures::CONFIG),
        "the server does not offer the CONFIG protocol feature (the guest CID)"
    );
    let protocol =
        proto & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK);
    fe.set_protocol_features(protocol)
        .map_err(|e| anyhow!("SET_PROTOCOL_FEATURES: {e}"))?;
    let mut features = bits::VERSION_1 | bits::PROTOCOL_FEATURES;
    if event_idx {
        features |= offered & bits::EVENT_IDX;
    }
    fe.set_features(features)
        .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
    let buf = [0u8; 8];
    let (_, cfg) = fe
        .get_config(0, 8, VhostUserConfigFlags::empty(), &buf)
        .map_err(|e| anyhow!("GET_CONFIG: {e}"))?;
    let mut cid = [0u8; 8];
    cid.copy_from_slice(cfg.get(..8).context("short config space")?);
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    let conn = Connection::from_negotiated(fe, features, protocol.bits(), 2);
    Ok((conn, u64::from_le_bytes(cid)))
}

/// The memory of the two queues: rings, then `size / 2` header slots and data buffers.
fn areas(size: u16, rx_buf: u32, tx_pkt: u32) -> ([Area; 2], u64) {
    let n = u64::from(size);
    let slots = n / 2;
    let mut at = 0u64;
    let mut out = Vec::with_capacity(2);
    for buf in [rx_buf, tx_pkt] {
        let desc = at;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(PAGE);
        let meta = (used + 6 + 8 * n).next_multiple_of(PAGE);
        let stride = u64::from(buf).next_multiple_of(64);
        let data = (meta + HDR_STRIDE * slots).next_multiple_of(PAGE);
        at = (data + stride * slots).next_multiple_of(PAGE);
        out.push(Area {
            layout: QueueLayout {
                desc,
                avail,
                used,
                meta,
                data,
                data_stride: stride,
            },
        });
    }
    ([out[0], out[1]], at)
}

/// The pace of `c`'s light load (bytes or connections per second), if any.
fn pace_of(c: &VsockBenchConfig) -> Option<Pace> {
    c.rate.map(|r| match c.mode {
        Mode::Churn => Pace {
            per_sec: r,
            burst: 1,
        },
        _ => Pace {
            per_sec: r * 1048576.0,
            burst: u64::from(c.tx_pkt),
        },
    })
}

/// Connects, negotiates, shares the guest memory and starts both queues: the driver, ready
/// to run, and the connection (kept open for the run).
fn start_driver(c: &VsockBenchConfig, pace: Option<Pace>) -> Result<(Driver, Connection)> {
    let (mut conn, guest_cid) = open(&c.socket, c.event_idx)?;
    let (areas, total) = areas(c.queue_size, c.rx_buf, c.tx_pkt);
    let mem = Arc::new(GuestMemory::new(total)?);
    let mut fds = conn.start_queues(&mem, &[areas[0].layout, areas[1].layout], c.queue_size)?;
    let tx_fds = fds.pop().context("no TX queue")?;
    let rx_fds = fds.pop().context("no RX queue")?;
    // Payload bytes: a pattern, written once.
    let pattern: Vec<u8> = (0..c.tx_pkt).map(|i| (i * 7) as u8).collect();
    for s in 0..c.queue_size / 2 {
        let l = &areas[1].layout;
        mem.write(l.data + l.data_stride * u64::from(s), &pattern);
    }
    let work = Work {
        mode: c.mode,
        guest_cid,
        port: c.port,
        parallel: c.parallel,
        tx_pkt: c.tx_pkt,
        rx_buf: c.rx_buf,
        buf_alloc: c.buf_alloc,
        runtime: c.runtime,
        pace: if c.mode == Mode::FromHost { None } else { pace },
        stall_timeout: c.stall_timeout,
    };
    let event_idx = conn.event_idx();
    let driver = Driver::new(
        work,
        mem,
        c.queue_size,
        event_idx,
        areas[0],
        areas[1],
        rx_fds,
        tx_fds,
    );
    Ok((driver, conn))
}

/// What the host programs and the server's processes showed at both ends of the window.
#[derive(Debug, Default)]
struct Window {
    host_bytes: [u64; 2],
    server: [Option<procstat::ServerSample>; 2],
    accepted: u64,
    event_idx: bool,
}

/// Runs the vsock benchmark `config` describes.
pub fn run_vsock(config: &VsockBenchConfig) -> Result<VsockReport> {
    let c = config;
    let pace = pace_of(c);
    let host = match c.mode {
        Mode::ToHost => Host::sink(&c.uds_path, c.port, c.parallel)?,
        Mode::Churn => Host::sink(&c.uds_path, c.port, 4)?,
        Mode::FromHost => Host::source(&c.uds_path, c.port, c.parallel, pace)?,
    };
    let (driver, conn) = start_driver(c, pace)?;
    let roots = c.server_pids.clone();
    let mut w = Window::default();
    let res = driver.run(|phase| {
        let i = match phase {
            Phase::Ready => return host.go(),
            Phase::Start => 0,
            Phase::End => 1,
        };
        w.host_bytes[i] = host.bytes.load(Ordering::Relaxed);
        if !roots.is_empty() {
            w.server[i] = Some(procstat::sample(&roots));
        }
        if phase == Phase::End {
            // The driver closes its connections next: streams break from here on.
            host.stop();
        }
    });
    w.accepted = host.accepted.load(Ordering::Relaxed);
    w.event_idx = conn.event_idx();
    host.stop();
    drop(conn);
    let host_done = host.finish();
    let res = res?;
    host_done?;
    Ok(report(c, &res, &w))
}

fn report(c: &VsockBenchConfig, res: &driver::DriverResult, w: &Window) -> VsockReport {
    // The server's tree at both ends of the window (no process comes or goes meanwhile).
    let server_cpu_s = match &w.server {
        [Some(a), Some(b)] => Some((b.cpu_s - a.cpu_s).max(0.0)),
        _ => None,
    };
    let end = w.server[1].as_ref();
    VsockReport {
        label: c.label.clone(),
        target: c.socket.display().to_string(),
        mode: c.mode,
        parallel: c.parallel,
        rate: c.rate,
        rx_buf: c.rx_buf,
        tx_pkt: c.tx_pkt,
        event_idx: w.event_idx,
        elapsed_s: res.elapsed.as_secs_f64(),
        bytes: match c.mode {
            Mode::ToHost => w.host_bytes[1] - w.host_bytes[0],
            _ => res.bytes,
        },
        driver_bytes: res.bytes,
        connections: res.connections,
        accepted: w.accepted,
        resets: res.resets,
        tx_packets: res.tx_packets,
        rx_packets: res.rx_packets,
        kicks: res.kicks,
        waits: res.waits,
        client_cpu_s: res.cpu_ns as f64 / 1e9,
        server_pids: end
            .map(|s| s.pids.iter().copied().collect())
            .unwrap_or_default(),
        server_cpu_s,
        server_rss_kib: end.map(|s| s.rss_anon_kib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let Ok(Some((c, json))) = parse_vsock_args(args(
            "--socket /s --uds-path /u --mode churn --rate 100 --server-pid 7 --json",
        )) else {
            panic!("does not parse");
        };
        assert!(json);
        assert_eq!((c.mode, c.parallel, c.rate), (Mode::Churn, 16, Some(100.0)));
        assert!(matches!(parse_vsock_args(args("--help")), Ok(None)));
        assert!(parse_vsock_args(args("--socket /s")).is_err());
        assert!(parse_vsock_args(args("--socket /s --uds-path /u --mode x")).is_err());
        assert!(parse_vsock_args(args("--socket /s --uds-path /u --tx-pkt 128k")).is_err());
        assert!(parse_vsock_args(args("--socket /s --uds-path /u --parallel 100")).is_err());
    }

    #[test]
    fn the_pace_allows_the_rate_and_a_burst() {
        let p = Pace {
            per_sec: 1000.0,
            burst: 10,
        };
        assert_eq!(p.allowed(Duration::ZERO, 0), 10);
        assert_eq!(p.allowed(Duration::from_millis(500), 400), 110);
        assert_eq!(p.allowed(Duration::from_millis(500), 600), 0);
    }

    #[test]
    fn areas_are_disjoint() {
        let (a, total) = areas(256, 4096, 65536);
        assert!(a[0].layout.data + a[0].layout.data_stride * 128 <= a[1].layout.desc);
        assert!(a[1].layout.data + 65536 * 128 <= total);
        assert!(a[0].layout.meta + HDR_STRIDE * 128 <= a[0].layout.data);
    }
}
