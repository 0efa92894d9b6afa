//! The control plane of the load generator: connect to any vhost-user-blk server, negotiate
//! (VERSION_1, EVENT_IDX where offered, MQ through the protocol features), read the disk's
//! capacity from the config space, share the guest memory and set up the queues. Spoken with
//! the rust-vmm `vhost` crate's [`Frontend`].

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use super::memory::{GuestMemory, QueueLayout};

/// Virtio feature bits the load generator knows.
pub mod bits {
    /// VIRTIO_BLK_F_SIZE_MAX.
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX.
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO.
    pub const BLK_RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE.
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH.
    pub const BLK_FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_TOPOLOGY.
    pub const BLK_TOPOLOGY: u64 = 1 << 10;
    /// VIRTIO_BLK_F_CONFIG_WCE.
    pub const BLK_CONFIG_WCE: u64 = 1 << 11;
    /// VIRTIO_BLK_F_MQ.
    pub const BLK_MQ: u64 = 1 << 12;
    /// VIRTIO_RING_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device bits accepted when offered (what a Linux guest would accept and can matter for
/// the data path; FLUSH keeps the device in write-back mode, as with a guest).
const ACCEPTED_DEVICE_BITS: u64 = bits::BLK_SIZE_MAX
    | bits::BLK_SEG_MAX
    | bits::BLK_RO
    | bits::BLK_BLK_SIZE
    | bits::BLK_FLUSH
    | bits::BLK_TOPOLOGY
    | bits::BLK_CONFIG_WCE;

/// Bytes of `virtio_blk_config` read: up to and including `num_queues`.
const CONFIG_READ: u32 = 36;

/// A negotiated connection to a vhost-user-blk server.
pub struct Connection {
    fe: Frontend,
    /// Features acked with SET_FEATURES.
    pub features: u64,
    /// Protocol features acked.
    pub protocol: u64,
    /// Disk capacity in 512-byte sectors (from the config space; 0 if unknown).
    pub capacity_sectors: u64,
    /// Number of queues the server offers.
    pub server_queues: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &format_args!("{:#x}", self.protocol))
            .field("capacity_sectors", &self.capacity_sectors)
            .field("server_queues", &self.server_queues)
            .finish_non_exhaustive()
    }
}

/// The eventfds of one queue.
#[derive(Debug)]
pub struct QueueFds {
    /// Driver -> device.
    pub kick: EventFd,
    /// Device -> driver.
    pub call: EventFd,
}

impl Connection {
    /// Connects to `socket` and negotiates for `queues` queues, accepting EVENT_IDX if
    /// `event_idx` and the server offers it.
    pub fn open(socket: &Path, queues: usize, event_idx: bool) -> Result<Self> {
        let mut fe = Frontend::connect(socket, queues as u64)
            .map_err(|e| anyhow!("cannot connect to {}: {e}", socket.display()))?;
        fe.set_owner().map_err(|e| anyhow!("SET_OWNER: {e}"))?;
        let offered = fe
            .get_features()
            .map_err(|e| anyhow!("GET_FEATURES: {e}"))?;
        ensure!(
            offered & bits::PROTOCOL_FEATURES != 0,
            "the server does not offer VHOST_USER_F_PROTOCOL_FEATURES"
        );
        ensure!(
            offered & bits::VERSION_1 != 0,
            "the server does not offer VIRTIO_F_VERSION_1"
        );
        let proto = fe
            .get_protocol_features()
            .map_err(|e| anyhow!("GET_PROTOCOL_FEATURES: {e}"))?;
        let want = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK;
        let protocol = proto & want;
        fe.set_protocol_features(protocol)
            .map_err(|e| anyhow!("SET_PROTOCOL_FEATURES: {e}"))?;
        let server_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num()
                .map_err(|e| anyhow!("GET_QUEUE_NUM: {e}"))?
        } else {
            1
        };
        ensure!(
            queues as u64 <= server_queues,
            "{queues} queues wanted, the server offers {server_queues}"
        );
        let mut features = bits::VERSION_1 | bits::PROTOCOL_FEATURES;
        features |= offered & ACCEPTED_DEVICE_BITS;
        if queues > 1 || offered & bits::BLK_MQ != 0 {
            ensure!(
                queues == 1 || offered & bits::BLK_MQ != 0,
                "the server does not offer VIRTIO_BLK_F_MQ"
            );
            features |= offered & bits::BLK_MQ;
        }
        if event_idx {
            features |= offered & bits::EVENT_IDX;
        }
        fe.set_features(features)
            .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
        let capacity_sectors = if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let buf = [0u8; CONFIG_READ as usize];
            let (_, cfg) = fe
                .get_config(0, CONFIG_READ, VhostUserConfigFlags::empty(), &buf)
                .map_err(|e| anyhow!("GET_CONFIG: {e}"))?;
            let mut cap = [0u8; 8];
            cap.copy_from_slice(cfg.get(..8).context("short config space")?);
            u64::from_le_bytes(cap)
        } else {
            0
        };
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(Connection {
            fe,
            features,
            protocol: protocol.bits(),
            capacity_sectors,
            server_queues,
        })
    }

    /// A connection another device's negotiation set up (`features` and `protocol` acked,
    /// no config space): its queues are started and stopped as for block.
    pub fn from_negotiated(fe: Frontend, features: u64, protocol: u64, queues: u64) -> Self {
        Connection {
            fe,
            features,
            protocol,
            capacity_sectors: 0,
            server_queues: queues,
        }
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.features & bits::EVENT_IDX != 0
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.features & bits::BLK_RO != 0
    }

    /// Whether the server has closed its end of the connection (it exited or crashed): a
    /// data path that stops moving then has nobody serving it. Looked at without waiting.
    pub fn server_closed(&self) -> bool {
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.fe),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the socket this connection owns; no waiting.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Shares `mem` and sets up and enables one queue of `size` descriptors per layout.
    pub fn start_queues(
        &mut self,
        mem: &GuestMemory,
        layouts: &[QueueLayout],
        size: u16,
    ) -> Result<Vec<QueueFds>> {
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.len(),
            userspace_addr: mem.base_uva(),
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        };
        self.fe
            .set_mem_table(&[region])
            .map_err(|e| anyhow!("SET_MEM_TABLE: {e}"))?;
        let uva = |gpa: u64| mem.base_uva() + gpa;
        let mut out = Vec::with_capacity(layouts.len());
        for (q, l) in layouts.iter().enumerate() {
            let fds = QueueFds {
                kick: EventFd::new(libc::EFD_CLOEXEC).context("kick eventfd")?,
                call: EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)
                    .context("call eventfd")?,
            };
            let cfg = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: uva(l.desc),
                used_ring_addr: uva(l.used),
                avail_ring_addr: uva(l.avail),
                log_addr: None,
            };
            let step = |what: &str, r: vhost::Result<()>| -> Result<()> {
                r.map_err(|e| anyhow!("{what} (queue {q}): {e}"))
            };
            step("SET_VRING_NUM", self.fe.set_vring_num(q, size))?;
            step("SET_VRING_ADDR", self.fe.set_vring_addr(q, &cfg))?;
            step("SET_VRING_BASE", self.fe.set_vring_base(q, 0))?;
            step("SET_VRING_CALL", self.fe.set_vring_call(q, &fds.call))?;
            step("SET_VRING_KICK", self.fe.set_vring_kick(q, &fds.kick))?;
            out.push(fds);
        }
        for q in 0..layouts.len() {
            self.fe
                .set_vring_enable(q, true)
                .map_err(|e| anyhow!("SET_VRING_ENABLE (queue {q}): {e}"))?;
        }
        // A round trip: a server that takes the enables without REPLY_ACK has handled them
        // once it answers (messages are handled in order). A kick that arrived before would
        // find a disabled ring, and some servers (vhost-device-rng 0.1) then never look again.
        self.fe
            .get_features()
            .map_err(|e| anyhow!("GET_FEATURES after enabling the queues: {e}"))?;
        Ok(out)
    }

    /// Stops the queues (GET_VRING_BASE) and checks the server reports every request used.
    pub fn stop_queues(&mut self, expected_avail: &[u16]) -> Result<()> {
        for (q, &want) in expected_avail.iter().enumerate() {
            let base = self
                .fe
                .get_vring_base(q)
                .map_err(|e| anyhow!("GET_VRING_BASE (queue {q}): {e}"))?;
            if base as u16 != want {
                bail!("queue {q}: the server stopped at available index {base}, expected {want}");
            }
        }
        Ok(())
    }
}
