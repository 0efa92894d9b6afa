//! The vsock device's parent-side companion: for each device process, a broker socketpair
//! whose launcher end a [`BrokerServer`] serves on a thread of the launcher (connecting to
//! `<uds-path>_<decimal port>` and nothing else), stopped when the process ends; and the
//! device's place among its siblings (`registry.rs`). It also holds the `--uds-path` socket
//! file, removed when the launcher lets the device go.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;
use vu_devices::vsock::broker::{broker_pair, BrokerServer};

use super::registry::Registration;
use crate::kinds::Companion;
use crate::supervisor::socket::SocketFile;

/// A running broker thread.
#[derive(Debug)]
struct Running {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks the broker thread to end (it also ends by itself when the device's end closes);
    /// never waits for it.
    fn stop(mut self) {
        let _ = self.stop.write(1);
        drop(self.thread.take());
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct VsockCompanion {
    device: String,
    uds_path: PathBuf,
    /// Removed (if still ours) when the companion is dropped.
    _uds_file: SocketFile,
    member: Registration,
    /// The broker made by `before_spawn`, started by `spawned`.
    next: Option<BrokerServer>,
    running: Option<Running>,
}

impl VsockCompanion {
    /// The companion of `device`, whose host programs' sockets are `<uds_path>_<port>`.
    pub fn new(
        device: &str,
        uds_path: PathBuf,
        uds_file: SocketFile,
        member: Registration,
    ) -> VsockCompanion {
        VsockCompanion {
            device: device.to_string(),
            uds_path,
            _uds_file: uds_file,
            member,
            next: None,
            running: None,
        }
    }

    fn start_broker(&mut self, server: BrokerServer) -> io::Result<Running> {
        let stop = server.stopper();
        let counters = server.counters();
        let device = self.device.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vsock-broker-{}", self.device))
            .spawn(move || {
                if let Err(e) = server.run() {
                    tracing::error!(device = %device, error = %e, "vsock broker stopped");
                }
                let c =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    device = %device,
                    connected = c(&counters.connected),
                    failed = c(&counters.failed),
                    malformed = c(&counters.malformed),
                    undelivered = c(&counters.undelivered),
                    "vsock broker done"
                );
            })?;
        Ok(Running {
            stop,
            thread: Some(thread),
        })
    }
}

impl Companion for VsockCompanion {
    fn before_spawn(&mut self) -> io::Result<Vec<OwnedFd>> {
        if let Some(r) = self.running.take() {
            r.stop();
        }
        let (device_end, parent_end) = broker_pair()?;
        let server = BrokerServer::new(parent_end, &self.uds_path)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.next = Some(server);
        Ok(vec![device_end])
    }

    fn spawned(&mut self, pid: i32) {
        let Some(server) = self.next.take() else {
            return;
        };
        let sender = server.link_sender();
        match self.start_broker(server) {
            Ok(r) => self.running = Some(r),
            Err(e) => {
                // The device sees its broker close: its guest's connections to host ports
                // are refused until the next process.
                tracing::error!(device = %self.device, pid, error = %e, "vsock: cannot start the broker thread");
                return;
            }
        }
        match self.member.went_live(sender) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(device = %self.device, pid, links = n, "vsock: linked with live siblings")
            }
            Err(e) => {
                tracing::error!(device = %self.device, pid, error = %e, "vsock: cannot link the device with its siblings")
            }
        }
    }

    fn exited(&mut self) {
        self.member.went_down();
        if let Some(r) = self.running.take() {
            r.stop();
        }
        self.next = None;
    }
}

impl Drop for VsockCompanion {
    fn drop(&mut self) {
        self.member.went_down();
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}
