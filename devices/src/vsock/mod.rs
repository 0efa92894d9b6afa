//! virtio-vsock (virtio 1.2, 5.10; device id 19), hybrid as Firecracker and
//! vhost-device-vsock define it: guest sockets meet host programs on UNIX sockets, and guests
//! of one group meet each other, each guest served by its own jailed device process.
//!
//! The device opens no paths. It receives a listening socket (host programs connect to it
//! and write `CONNECT <port>\n`, see `hybrid.rs`), a broker socket through which the
//! parent makes connections to `<uds-path>_<port>` for it and hands it sibling links
//! (`broker.rs`, `client.rs`), and serves three queues: RX (`rx.rs`, `events.rs`), TX
//! (`tx.rs`) and the event queue (`event.rs`). `packet.rs` holds the wire format and its
//! checks, `credit.rs` flow control, `conn.rs` a connection, `shared.rs` what the queue
//! workers share, `sibling.rs` links between guests.
//!
//! Host programs speak stream sockets. VIRTIO_VSOCK_F_SEQPACKET is offered for sibling
//! guests (both guests run the protocol; the device checks and forwards); a seqpacket
//! connection to the host is refused with RST.

mod answers;
pub mod broker;
mod client;
mod conn;
mod credit;
mod error;
mod event;
mod events;
mod hybrid;
mod iov;
mod metrics;
pub mod packet;
mod rx;
mod shared;
mod sibling;
mod stats;
mod tx;
mod tx_run;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vu_core::{DeviceError, QueueHandler, VhostUserDevice};

pub use error::VsockError;
pub use stats::VsockStats;

use client::BrokerClient;
use packet::valid_guest_cid;
use shared::{Shared, SharedParams};

/// Queue indexes.
pub const RX_QUEUE: usize = 0;
/// The TX queue.
pub const TX_QUEUE: usize = 1;
/// The event queue (served only when the front-end hands it over, as crosvm does).
pub const EVENT_QUEUE: usize = 2;

/// VIRTIO_VSOCK_F_SEQPACKET: seqpacket sockets, between sibling guests (host programs
/// speak streams; a seqpacket connection to the host is refused with RST).
pub const F_SEQPACKET: u32 = 1;

/// Size of the config space: `le64 guest_cid`.
pub const CONFIG_SIZE: usize = 8;

/// Default largest queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Default per-connection buffer (vhost-device-vsock's `--tx-buffer-size` default).
pub const DEFAULT_TX_BUFFER_SIZE: u32 = 64 * 1024;
/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// What to serve and how.
#[derive(Debug)]
pub struct VsockConfig {
    /// The guest's CID (3..=0xfffffffe).
    pub guest_cid: u64,
    /// The `--uds-path` socket, bound and listening (the parent binds it); host programs
    /// connect here. None: no host-initiated connections.
    pub listener: Option<UnixListener>,
    /// The device's end of the broker socketpair ([`broker::broker_pair`]). None: guest
    /// connections to host ports are refused (RST), and links come only through
    /// [`VsockDevice::add_sibling`].
    pub broker: Option<OwnedFd>,
    /// Largest queue size (power of two, 4..=32768).
    pub queue_size: u16,
    /// Per-connection buffer for guest data the host has not read yet, advertised to the
    /// guest as `buf_alloc` (vhost-device-vsock's `--tx-buffer-size`).
    pub tx_buffer_size: u32,
    /// Host connections (open or being set up) the device holds at most; each holds one
    /// descriptor, so the process's RLIMIT_NOFILE must exceed it.
    pub max_connections: usize,
}

impl VsockConfig {
    /// A configuration with the defaults and neither listener nor broker.
    pub fn new(guest_cid: u64) -> Self {
        VsockConfig {
            guest_cid,
            listener: None,
            broker: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            tx_buffer_size: DEFAULT_TX_BUFFER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Device state kept in a snapshot. Connections are not: a restored device owes the guest
/// a TRANSPORT_RESET.
#[derive(Debug, Serialize, Deserialize)]
struct VsockState {
    guest_cid: u64,
    features: u64,
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct VsockDevice {
    shared: Arc<Shared>,
    queue_size: u16,
}

impl VsockDevice {
    /// Validates the configuration and builds the device.
    pub fn new(cfg: VsockConfig) -> Result<Arc<Self>, VsockError> {
        if !valid_guest_cid(cfg.guest_cid) {
            return Err(VsockError::BadCid(cfg.guest_cid));
        }
        let qs = cfg.queue_size;
        if !qs.is_power_of_two() || !(4..=32768).contains(&qs) {
            return Err(VsockError::BadQueueSize(qs));
        }
        if !(1..=64 << 20).contains(&cfg.tx_buffer_size) {
            return Err(VsockError::BadTxBufferSize(cfg.tx_buffer_size));
        }
        if cfg.max_connections == 0 {
            return Err(VsockError::ZeroConnections);
        }
        if let Some(l) = cfg.listener.as_ref() {
            iov::set_nonblocking(l.as_fd()).map_err(VsockError::Listener)?;
        }
        let broker = cfg
            .broker
            .map(BrokerClient::new)
            .transpose()
            .map_err(VsockError::Broker)?;
        let shared = Shared::new(SharedParams {
            guest_cid: cfg.guest_cid,
            tx_buffer_size: cfg.tx_buffer_size,
            max_connections: cfg.max_connections,
            listener: cfg.listener,
            broker,
        })?;
        Ok(Arc::new(VsockDevice {
            shared: Arc::new(shared),
            queue_size: qs,
        }))
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.shared.guest_cid
    }

    /// Links this device to the sibling whose guest CID is `peer_cid`, over one end of a
    /// [`broker::link_pair`] (the sibling's device gets the other end). A link for a CID
    /// that has one replaces it; the guest's connections over the old one are reset. Links
    /// given through the broker take the same path.
    pub fn add_sibling(&self, peer_cid: u64, link: OwnedFd) -> Result<(), VsockError> {
        let mut rx = self.shared.rx_state();
        sibling::install(&self.shared, &mut rx, peer_cid, link)?;
        drop(rx);
        let _ = self.shared.rx_wake.write(1);
        Ok(())
    }

    /// Counters since start.
    pub fn stats(&self) -> VsockStats {
        self.shared.counters.snapshot()
    }
}

impl VhostUserDevice for VsockDevice {
    fn name(&self) -> &str {
        "vsock"
    }

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn device_features(&self) -> u64 {
        // Streams are implied (no F_STREAM/F_NO_IMPLIED_STREAM: QEMU passes neither).
        1 << F_SEQPACKET
    }

    fn set_features(&self, features: u64) -> Result<(), DeviceError> {
        self.shared.features.store(features, Ordering::Relaxed);
        Ok(())
    }

    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }

    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        let cfg = self.shared.guest_cid.to_le_bytes();
        if let Some(src) = offset
            .checked_add(buf.len())
            .and_then(|end| cfg.get(offset..end))
        {
            buf.copy_from_slice(src);
        }
    }

    /// The three queues share one worker thread: the TX queue's credit updates, replies and
    /// resets go out on the RX queue, and on one thread they do so in the same wake-up
    /// instead of waking a second thread for each (vhost-device-vsock also serves its queues
    /// from one thread).
    fn worker_group(&self, _index: usize) -> Option<usize> {
        Some(0)
    }

    fn start_queue(&self, index: usize) -> Result<Box<dyn QueueHandler>, DeviceError> {
        let s = self.shared.clone();
        Ok(match index {
            RX_QUEUE => Box::new(rx::RxHandler::new(s)),
            TX_QUEUE => Box::new(tx::TxHandler::new(s)),
            EVENT_QUEUE => Box::new(event::EventHandler::new(s)),
            _ => return Err(DeviceError::InvalidArgument(format!("queue {index}"))),
        })
    }

    fn reset(&self) {
        self.shared.drop_all();
        self.shared.features.store(0, Ordering::Relaxed);
        self.shared.reset_event.store(true, Ordering::Release);
    }

    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        let state = VsockState {
            guest_cid: self.shared.guest_cid,
            features: self.shared.features.load(Ordering::Relaxed),
        };
        postcard::to_allocvec(&state).map_err(|e| DeviceError::Other(e.to_string()))
    }

    fn restore(&self, data: &[u8]) -> Result<(), DeviceError> {
        let state: VsockState = postcard::from_bytes(data)
            .map_err(|e| DeviceError::Restore(format!("vsock state does not decode: {e}")))?;
        if state.guest_cid != self.shared.guest_cid {
            tracing::info!(
                old = state.guest_cid,
                new = self.shared.guest_cid,
                "vsock: restored with another CID; the guest reads it after TRANSPORT_RESET"
            );
        }
        // Connections do not survive a restore: the guest is told to reset its own.
        self.shared.drop_all();
        self.shared
            .features
            .store(state.features, Ordering::Relaxed);
        self.shared.reset_event.store(true, Ordering::Release);
        Ok(())
    }

    fn metrics(&self) -> Vec<vu_core::Metric> {
        let links = self
            .shared
            .links
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        metrics::metrics(&self.stats(), self.shared.guest_cid, links)
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        let mut f = vec![
            ("guest_cid".to_string(), self.shared.guest_cid.to_string()),
            (
                "sibling_links".to_string(),
                self.shared
                    .links
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .len()
                    .to_string(),
            ),
        ];
        for (k, v) in self.stats().fields() {
            f.push((k.to_string(), v.to_string()));
        }
        f
    }
}
