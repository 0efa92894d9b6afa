//! Connecting to any vhost-user-rng server: VERSION_1 and PROTOCOL_FEATURES required,
//! EVENT_IDX where offered and wanted, no device bits (virtio-rng has none), MQ and
//! REPLY_ACK where offered; one queue. The queues are then set up by the block bench's
//! [`Connection`], which knows nothing device-specific past negotiation.

use std::path::Path;

use anyhow::{anyhow, ensure, Result};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;

use crate::bench::control::{bits, Connection};

/// Connects to `socket` and negotiates one rng queue.
pub fn open(socket: &Path, event_idx: bool) -> Result<Connection> {
    let mut fe = Frontend::connect(socket, 1)
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
    if event_idx {
        features |= offered & bits::EVENT_IDX;
    }
    fe.set_features(features)
        .map_err(|e| anyhow!("SET_FEATURES: {e}"))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    Ok(Connection::from_negotiated(
        fe,
        features,
        protocol.bits(),
        1,
    ))
}
