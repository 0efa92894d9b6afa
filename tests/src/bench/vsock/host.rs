//! The host programs of the vsock benchmark: a listener at `<uds-path>_<port>` that reads
//! every stream to its end (bulk to the host, connection churn), and writers that connect
//! through `<uds-path>` (`CONNECT <port>`) and write as fast as they may (bulk from the
//! host). Their byte counts are the host's view of the traffic.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::Pace;

/// Bytes per read or write of a host program.
const CHUNK: usize = 256 << 10;

/// The host side of one run.
#[derive(Debug)]
pub struct Host {
    stop: Arc<AtomicBool>,
    /// Writers start once the driver has posted its receive buffers.
    go: Arc<AtomicBool>,
    /// Bytes the host programs read (to the host) or wrote (from the host).
    pub bytes: Arc<AtomicU64>,
    /// Streams accepted.
    pub accepted: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<()>>>,
    socket: Option<PathBuf>,
}

/// `<uds>_<port>`.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

impl Host {
    fn new() -> Host {
        Host {
            stop: Arc::new(AtomicBool::new(false)),
            go: Arc::new(AtomicBool::new(false)),
            bytes: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
            socket: None,
        }
    }

    /// Listens at `<uds>_<port>` with `threads` acceptors, each reading its streams to the
    /// end, one at a time.
    pub fn sink(uds: &Path, port: u32, threads: usize) -> Result<Host> {
        let path = port_path(uds, port);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let listener = Arc::new(listener);
        let mut h = Host::new();
        h.socket = Some(path);
        for i in 0..threads {
            let (l, stop, bytes, accepted) = (
                listener.clone(),
                h.stop.clone(),
                h.bytes.clone(),
                h.accepted.clone(),
            );
            h.threads.push(
                std::thread::Builder::new()
                    .name(format!("host-sink-{i}"))
                    .spawn(move || sink_loop(&l, &stop, &bytes, &accepted))?,
            );
        }
        Ok(h)
    }

    /// `streams` writers through `<uds>` to the guest's `port`, paced to `pace` bytes per
    /// second in all if given.
    pub fn source(uds: &Path, port: u32, streams: usize, pace: Option<Pace>) -> Result<Host> {
        let mut h = Host::new();
        for i in 0..streams {
            let (stop, bytes, accepted) = (h.stop.clone(), h.bytes.clone(), h.accepted.clone());
            let go = h.go.clone();
            let uds = uds.to_path_buf();
            let share = pace.map(|p| Pace {
                per_sec: p.per_sec / streams as f64,
                burst: p.burst,
            });
            h.threads.push(
                std::thread::Builder::new()
                    .name(format!("host-source-{i}"))
                    .spawn(move || {
                        while !go.load(Ordering::Acquire) {
                            if stop.load(Ordering::Acquire) {
                                return Ok(());
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        source_loop(&uds, port, share, &stop, &bytes, &accepted)
                    })?,
            );
        }
        Ok(h)
    }

    /// Lets the writers connect.
    pub fn go(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// Tells every thread to stop (streams may break from now on).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops every thread and reports the first error.
    pub fn finish(mut self) -> Result<()> {
        self.stop();
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| bail!("a host thread panicked"));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn sink_loop(
    l: &UnixListener,
    stop: &AtomicBool,
    bytes: &AtomicU64,
    accepted: &AtomicU64,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    while !stop.load(Ordering::Acquire) {
        let mut s = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(e) => return Err(e).context("accepting a guest connection"),
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e).context("reading a guest stream"),
            }
        }
    }
    Ok(())
}

/// Connects through `uds` to the guest's `port`: `CONNECT`, then the `OK` line.
fn connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s =
            UnixStream::connect(uds).with_context(|| format!("connecting {}", uds.display()))?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') && line.len() < 32 {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                _ => break,
            }
        }
        if line.starts_with(b"OK ") && line.ends_with(b"\n") {
            s.set_read_timeout(None)?;
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "CONNECT {port} through {} was not accepted: {:?}",
            uds.display(),
            String::from_utf8_lossy(&line)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn source_loop(
    uds: &Path,
    port: u32,
    pace: Option<Pace>,
    stop: &AtomicBool,
    bytes: &AtomicU64,
    accepted: &AtomicU64,
) -> Result<()> {
    let mut s = connect(uds, port)?;
    accepted.fetch_add(1, Ordering::Relaxed);
    let buf: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    while !stop.load(Ordering::Acquire) {
        let mut len = CHUNK;
        if let Some(p) = pace {
            // Whole bursts: a paced program writes what the pace lets ahead at once (the
            // same 64 KiB a paced driver packet carries the other way), not the trickle
            // that accrued since its last write (a few hundred bytes, which would make
            // this a small-message load instead of the same load at a lower rate).
            let quantum = p.burst.clamp(1, CHUNK as u64);
            let allowed = p.allowed(start.elapsed(), sent);
            if allowed < quantum {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            len = len.min(usize::try_from(allowed).unwrap_or(CHUNK));
        }
        match s.write(&buf[..len]) {
            Ok(n) => {
                sent += n as u64;
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if stop.load(Ordering::Acquire) => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e).context("writing to the guest"),
        }
    }
    Ok(())
}
