//! Connecting to any vhost-user-net server: VERSION_1 and PROTOCOL_FEATURES required; of
//! the device bits, what a Linux guest would take for this traffic where offered (MRG_RXBUF,
//! CSUM and GUEST_CSUM, HOST_TSO4 and GUEST_TSO4), EVENT_IDX where offered and wanted,
//! REPLY_ACK where offered; one queue pair (queue 0 receives, queue 1 transmits). The queues
//! are then set up by the block bench's [`Connection`].

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::bench::control::{bits, Connection};

/// virtio-net feature bits (virtio 1.2, 5.1.3).
pub mod net_bits {
    /// VIRTIO_NET_F_CSUM.
    pub const CSUM: u64 = 1 << 0;
    /// VIRTIO_NET_F_GUEST_CSUM.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// VIRTIO_NET_F_GUEST_TSO4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// VIRTIO_NET_F_HOST_TSO4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub const MRG_RXBUF: u64 = 1 << 15;
}

/// What was negotiated.
#[derive(Debug)]
pub struct NetConnection {
    /// The connection, ready to set up queues 0 (receive) and 1 (transmit).
    pub conn: Connection,
    /// Features the server offered.
    pub offered: u64,
}

impl NetConnection {
    /// Whether a feature was acked.
    pub fn has(&self, bit: u64) -> bool {
        self.conn.features & bit != 0
    }
}

/// Connects to `socket` and negotiates one queue pair.
pub fn open(socket: &Path, event_idx: bool) -> Result<NetConnection> {
    let mut fe = Frontend::connect(socket, 2)
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
    let protocol = proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
    fe.set_protocol_features(protocol)
        .map_err(|e| anyhow!("SET_PROTOCOL_FEATURES: {e}"))?;
    let mut features = bits::VERSION_1 | bits::PROTOCOL_FEATURES;
    features |= offered
        & (net_bits::MRG_RXBUF
            | net_bits::CSUM
            | net_bits::GUEST_CSUM
            | net_bits::HOST_TSO4
            | net_bits::GUEST_TSO4);
    // TSO needs the checksum offload it rests on (virtio 1.2, 5.1.3.1).
    if features & net_bits::CSUM == 0 {
        features &= !net_bits::HOST_TSO4;
    }
    if features & net_bits::GUEST_CSUM == 0 {
        features &= !net_bits::GUEST_TSO4;
    }
    if event_idx {
        features |= offered & bits::EVENT_IDX;
    }
    fe.set_features(features)
        .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    Ok(NetConnection {
        conn: Connection::from_negotiated(fe, features, protocol.bits(), 2),
        offered,
    })
}
