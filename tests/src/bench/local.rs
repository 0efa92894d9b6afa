//! In-process servers for measuring the load generator itself and for tests: any
//! [`VhostUserDevice`] served by `vu_core::BackendServer` on a temporary socket, and the
//! null block device, which completes every request at once without I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use vu_core::{bind_socket, BackendServer, Progress, QueueHandler, QueueIo, VhostUserDevice};

use super::control::bits;

/// Name of the null device; its queue workers are the threads `null-q<N>`.
pub const NULL_DEVICE_NAME: &str = "null";

/// A virtio-blk device that answers every request with status OK at once, without I/O.
#[derive(Debug)]
pub struct NullDevice {
    queues: usize,
    capacity_sectors: u64,
}

impl NullDevice {
    /// A null disk of `size` bytes with `queues` queues.
    pub fn new(queues: usize, size: u64) -> Arc<Self> {
        Arc::new(NullDevice {
            queues,
            capacity_sectors: size / 512,
        })
    }
}

impl VhostUserDevice for NullDevice {
    fn name(&self) -> &str {
        NULL_DEVICE_NAME
    }

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn device_features(&self) -> u64 {
        bits::BLK_FLUSH | bits::BLK_MQ
    }

    fn config_size(&self) -> usize {
        60
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let mut cfg = [0u8; 60];
        cfg[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        cfg[34..36].copy_from_slice(&(self.queues as u16).to_le_bytes());
        if let Some(src) = cfg.get(offset..offset + buf.len()) {
            buf.copy_from_slice(src);
        }
    }

    fn start_queue(&self, _index: usize) -> Result<Box<dyn QueueHandler>, vu_core::DeviceError> {
        Ok(Box::new(NullQueue))
    }
}

struct NullQueue;

impl QueueHandler for NullQueue {
    fn process(&mut self, q: &mut QueueIo) -> Progress {
        while let Some(head) = q.pop() {
            let w = q.chain(head).writable_len();
            // The status byte (OK = 0) is the last writable byte.
            if w > 0 {
                q.chain(head).write_at(w - 1, &[0]);
            }
            q.complete(head, w);
        }
        Progress::Drained
    }
}

/// A device served by `BackendServer` on its own thread, on a socket in a temporary
/// directory. Dropping it stops the server.
pub struct LocalServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    shutdown: Arc<nix::sys::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalServer {
    /// Serves `device` until dropped.
    pub fn start(device: Arc<dyn VhostUserDevice>) -> Result<Self> {
        Self::start_with_poll_us(device, 0)
    }

    /// Serves `device` until dropped, its queue workers busy-polling for `poll_us`
    /// microseconds before they sleep (`BackendServer::with_poll_us`).
    pub fn start_with_poll_us(device: Arc<dyn VhostUserDevice>, poll_us: u32) -> Result<Self> {
        let dir = tempfile::tempdir().context("tempdir")?;
        let path = dir.path().join("vu-bench.sock");
        let listener = bind_socket(&path).map_err(|e| anyhow!("bind {}: {e}", path.display()))?;
        let server = BackendServer::new(device, listener)
            .map_err(|e| anyhow!("server: {e}"))?
            .with_poll_us(poll_us);
        let shutdown = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                if let Err(e) = server.serve() {
                    eprintln!("vu-bench: in-process server failed: {e}");
                }
            })
            .context("spawn the server thread")?;
        Ok(LocalServer {
            _dir: dir,
            path,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and joins the server thread.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let _ = self.shutdown.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                bail!("the in-process server panicked");
            }
        }
        Ok(())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// `vu-bench serve-block`: our block device served without the jail by this process, for
/// A/B runs of core settings the launcher does not expose yet (`--poll-us`). Usage:
/// `vu-bench serve-block --socket S --file IMG [--num-queues N] [--queue-size N]
/// [--engine io_uring|sync] [--direct] [--poll-us N]`. Prints "listening on S" and serves
/// front-ends until killed.
pub fn serve_block<I: IntoIterator<Item = String>>(args: I) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let (mut socket, mut file, mut queues, mut queue_size) = (None, None, 1u16, 256u16);
    let (mut engine, mut direct, mut poll_us) = (vu_devices::block::Engine::IoUring, false, 0u32);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(v()?)),
            "--file" => file = Some(PathBuf::from(v()?)),
            "--num-queues" => queues = v()?.parse().context("--num-queues")?,
            "--queue-size" => queue_size = v()?.parse().context("--queue-size")?,
            "--engine" => engine = v()?.parse().map_err(|e| anyhow!("--engine: {e}"))?,
            "--direct" => direct = true,
            "--poll-us" => poll_us = v()?.parse().context("--poll-us")?,
            other => bail!("serve-block: unknown argument `{other}`"),
        }
    }
    let (socket, path) = (
        socket.context("serve-block needs --socket")?,
        file.context("serve-block needs --file")?,
    );
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true);
    if direct {
        open.custom_flags(libc::O_DIRECT);
    }
    let f = open
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let device = vu_devices::block::BlockDevice::new(vu_devices::block::BlockConfig {
        file: f,
        read_only: false,
        direct,
        num_queues: queues,
        queue_size,
        serial: None,
        logical_block_size: 512,
        engine,
        writeback: true,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
    .map_err(|e| anyhow!("block device: {e}"))?;
    let listener = bind_socket(&socket).map_err(|e| anyhow!("bind {}: {e}", socket.display()))?;
    let server = BackendServer::new(device, listener)
        .map_err(|e| anyhow!("server: {e}"))?
        .with_poll_us(poll_us);
    println!("listening on {}", socket.display());
    server.serve().map_err(|e| anyhow!("serve: {e}"))
}
