//! One benchmark run from start to end: (optionally) start the null server, sample the
//! server idle, connect and set up, start one driver thread per queue at a common start,
//! sample the server again, check the server stopped where the driver did, disconnect.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::config::{Config, Pace, Rw, SECTOR};
use super::control::Connection;
use super::driver::{QueueDriver, QueueResult, QueueWork};
use super::histogram::Histogram;
use super::local::{LocalServer, NullDevice, NULL_DEVICE_NAME};
use super::memory::{layout, GuestMemory};
use super::procstat;
use super::report::{Report, ServerReport};
use super::ring::DriverRing;

/// How the server's CPU is measured.
enum ServerProbe {
    /// Nothing known about the server.
    None,
    /// Processes (with descendants).
    Pids(Vec<u32>),
    /// A cgroup holding the whole server (CPU from it), and its processes (with
    /// descendants) for the other figures.
    Cgroup(std::path::PathBuf, Vec<u32>),
    /// Threads of this process named `<prefix>...` (the in-process null server).
    OwnThreads(&'static str),
}

struct Sample {
    cpu_s: f64,
    wakeups: Option<u64>,
    pids: Vec<u32>,
    rss: u64,
    leaf_rss: u64,
}

impl ServerProbe {
    fn sample(&self, pids: Option<&[u32]>) -> Option<Sample> {
        match self {
            ServerProbe::None => None,
            ServerProbe::Pids(roots) | ServerProbe::Cgroup(_, roots) => {
                let s = procstat::sample(roots);
                let tree: Vec<u32> = s.pids.iter().copied().collect();
                // Measure CPU over the same processes at start and end.
                let cpu_s = match (self, pids) {
                    (ServerProbe::Cgroup(dir, _), _) => procstat::cgroup_cpu_seconds(dir).ok()?,
                    (_, Some(p)) => procstat::cpu_seconds(&p.iter().copied().collect()),
                    (_, None) => s.cpu_s,
                };
                Some(Sample {
                    cpu_s,
                    wakeups: Some(procstat::wakeups(&s.pids)),
                    pids: tree,
                    rss: s.rss_anon_kib,
                    leaf_rss: s.leaf_rss_anon_kib,
                })
            }
            ServerProbe::OwnThreads(prefix) => Some(Sample {
                cpu_s: procstat::own_threads_cpu_seconds(prefix),
                wakeups: None,
                pids: Vec::new(),
                rss: 0,
                leaf_rss: 0,
            }),
        }
    }

    /// Where the CPU figure comes from.
    fn cpu_from(&self) -> &'static str {
        match self {
            ServerProbe::None => "none",
            ServerProbe::Pids(_) => "proc",
            ServerProbe::Cgroup(..) => "cgroup",
            ServerProbe::OwnThreads(_) => "threads",
        }
    }
}

/// How to measure the server of `config` (an external one: `--socket`).
fn external_probe(config: &Config) -> Result<ServerProbe> {
    Ok(match &config.server_cgroup {
        Some(dir) => {
            procstat::cgroup_cpu_seconds(dir)?;
            let roots = if config.server_pids.is_empty() {
                procstat::cgroup_pids(dir)?
            } else {
                config.server_pids.clone()
            };
            ServerProbe::Cgroup(dir.clone(), roots)
        }
        None if config.server_pids.is_empty() => ServerProbe::None,
        None => ServerProbe::Pids(config.server_pids.clone()),
    })
}

/// Runs the benchmark `config` describes.
pub fn run(config: &Config) -> Result<Report> {
    config.validate()?;
    let local;
    let (socket, probe, target) = match &config.socket {
        Some(s) => (s.clone(), external_probe(config)?, s.display().to_string()),
        None => {
            local = LocalServer::start(NullDevice::new(config.queues, config.null_size))?;
            (
                local.path().to_path_buf(),
                ServerProbe::OwnThreads(NULL_DEVICE_NAME),
                "null (in-process)".to_string(),
            )
        }
    };
    let idle = probe.sample(None);

    let mut conn = Connection::open(&socket, config.queues, config.event_idx)?;
    let (event_idx, features) = (conn.event_idx(), conn.features);
    let capacity = conn.capacity_sectors * SECTOR;
    let bs = u64::from(config.bs);
    let size = config.size.unwrap_or(capacity);
    ensure!(
        capacity == 0 || size <= capacity,
        "--size {size} is beyond the disk's {capacity} bytes"
    );
    let size = size - size % bs;
    ensure!(
        size >= bs,
        "the range to touch ({size} bytes) is smaller than one request ({bs} bytes)"
    );
    if config.rw.writes(config.rwmix_read) && conn.read_only() {
        bail!("the disk is read-only (VIRTIO_BLK_F_RO) and the workload writes");
    }

    let (layouts, total) = layout(config.queues, config.queue_size, config.iodepth, bs);
    let mem = Arc::new(GuestMemory::new(total)?);
    let fds = conn.start_queues(&mem, &layouts, config.queue_size)?;

    let nq = config.queues as u64;
    let stripe = (size / nq) / bs * bs;
    if !config.rw.random() {
        ensure!(
            stripe >= bs,
            "the range is too small for one sequential stripe per queue"
        );
    }
    let mut drivers = Vec::with_capacity(config.queues);
    for (q, (l, f)) in layouts.iter().zip(fds).enumerate() {
        let range = if config.rw.random() {
            (0, size)
        } else {
            (q as u64 * stripe, (q as u64 + 1) * stripe)
        };
        let budget = config
            .requests
            .map(|n| n / nq + u64::from((q as u64) < n % nq));
        // At a fixed rate each queue sends its share, staggered by a fraction of a period.
        let (interval_ns, phase_ns) = match config.pace {
            Pace::Rate { rate, batch } => {
                let interval = (batch as f64 * 1e9 * nq as f64 / rate).max(1.0) as u64;
                (interval, interval * q as u64 / nq)
            }
            _ => (0, 0),
        };
        let work = QueueWork {
            index: q,
            rw: config.rw,
            rwmix_read: config.rwmix_read,
            bs: config.bs,
            iodepth: config.iodepth,
            range,
            budget,
            runtime: config.runtime,
            notify: config.notify,
            verify: config.verify,
            seed: config.seed,
            stall_timeout: config.stall_timeout,
            pace: config.pace,
            interval_ns,
            phase_ns,
        };
        let ring = DriverRing::new(mem.clone(), l, config.queue_size, conn.event_idx());
        drivers.push(QueueDriver::new(work, ring, f, *l));
    }

    let barrier = Arc::new(Barrier::new(config.queues + 1));
    let abort = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(config.queues);
    for (q, d) in drivers.into_iter().enumerate() {
        let (b, a) = (barrier.clone(), abort.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("vu-bench-q{q}"))
                .spawn(move || d.run(&b, &a))
                .context("spawn a driver thread")?,
        );
    }
    barrier.wait();
    let before = probe.sample(None);
    let mut results: Vec<QueueResult> = Vec::with_capacity(config.queues);
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert(anyhow!("a driver thread panicked"));
            }
        }
    }
    let after = probe.sample(before.as_ref().map(|b| b.pids.as_slice()));
    if let Some(e) = failure {
        return Err(e);
    }
    let finals: Vec<u16> = results.iter().map(|r| r.final_avail).collect();
    conn.stop_queues(&finals)?;
    drop(conn);

    let mut latency = Histogram::new();
    let (mut lag, mut service) = (Histogram::new(), Histogram::new());
    let mut rep = Report {
        label: config.label.clone(),
        target,
        rw: config.rw.as_str(),
        rwmix_read: if config.rw == Rw::Mixed {
            config.rwmix_read
        } else if config.rw.writes(0) {
            0
        } else {
            100
        },
        bs: config.bs,
        iodepth: config.iodepth,
        pace: config.pace.as_str(),
        rate: match config.pace {
            Pace::Rate { rate, .. } => Some(rate),
            _ => None,
        },
        batch: config.pace.batch(),
        think_us: match config.pace {
            Pace::Think { think, .. } => Some(think.as_micros() as u64),
            _ => None,
        },
        queues: config.queues,
        queue_size: config.queue_size,
        notify: config.notify.as_str(),
        event_idx,
        features,
        size,
        completed: 0,
        reads: 0,
        writes: 0,
        errors: 0,
        verify_failures: 0,
        bytes: 0,
        elapsed_s: 0.0,
        latency: Histogram::new(),
        lag: Histogram::new(),
        service: Histogram::new(),
        late: 0,
        client_cpu_s: 0.0,
        kicks: 0,
        waits: 0,
        server: None,
        first_error: None,
    };
    let mut elapsed = std::time::Duration::ZERO;
    for r in &results {
        latency.merge(&r.latency);
        lag.merge(&r.lag);
        service.merge(&r.service);
        rep.late += r.late;
        rep.completed += r.completed;
        rep.reads += r.reads;
        rep.writes += r.writes;
        rep.errors += r.errors;
        rep.verify_failures += r.verify_failures;
        rep.bytes += r.bytes;
        rep.kicks += r.kicks;
        rep.waits += r.waits;
        rep.client_cpu_s += r.cpu_ns as f64 / 1e9;
        elapsed = elapsed.max(r.elapsed);
        if rep.first_error.is_none() {
            rep.first_error = r.first_error.clone();
        }
    }
    rep.latency = latency;
    rep.lag = lag;
    rep.service = service;
    rep.elapsed_s = elapsed.as_secs_f64();
    rep.server = match (idle, before, after) {
        (Some(i), Some(b), Some(a)) => Some(ServerReport {
            cpu_from: probe.cpu_from(),
            wakeups: match (b.wakeups, a.wakeups) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                _ => None,
            },
            pids: b.pids,
            cpu_s: (a.cpu_s - b.cpu_s).max(0.0),
            rss_anon_idle_kib: i.rss,
            rss_anon_end_kib: a.rss,
            device_rss_anon_idle_kib: i.leaf_rss,
            device_rss_anon_end_kib: a.leaf_rss,
        }),
        _ => None,
    };
    Ok(rep)
}
