//! Feature negotiation, ownership, the device status byte, and resets (RESET_DEVICE,
//! RESET_OWNER, a front-end that goes away).

use super::checks::status_value;
use super::vrings::VringConfig;
use super::{Handler, HandlerError, Reply, CORE_FEATURES, CORE_PROTOCOL_FEATURES};
use crate::message::{features, protocol, Request};

impl Handler {
    /// Virtio features offered.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features() | CORE_FEATURES
    }

    /// Protocol features offered.
    pub fn offered_protocol_features(&self) -> u64 {
        let mut p = CORE_PROTOCOL_FEATURES | self.device.protocol_features();
        if self.device.config_size() > 0 {
            p |= protocol::CONFIG;
        }
        p & !self.device.withheld_protocol_features()
    }

    /// A front-end that acked VHOST_USER_F_PROTOCOL_FEATURES but did not negotiate protocol
    /// features on this connection resumes a session it negotiated with an earlier back-end
    /// on this socket: QEMU's vhost-user-rng (and the devices built like it) reconnects with
    /// SET_FEATURES and goes on with what it agreed before (REPLY_ACK, STATUS...), without
    /// GET/SET_PROTOCOL_FEATURES. Those can only be features we offer: once such a front-end
    /// makes a request that is not part of the negotiation (or asks for an ack), take every
    /// offered protocol feature as acked, so that its acks are answered and its requests
    /// accepted. rust-vmm front-ends send SET_FEATURES before GET_PROTOCOL_FEATURES: that
    /// order is a negotiation, not a resumption.
    pub(super) fn resume_protocol(&mut self, request: Request, need_reply: bool) {
        use Request::*;
        let pending = matches!(
            request,
            GetFeatures | SetFeatures | GetProtocolFeatures | SetProtocolFeatures
        ) && !(request == SetFeatures && need_reply);
        if self.protocol_negotiated
            || pending
            || self.acked_features & features::PROTOCOL_FEATURES == 0
        {
            return;
        }
        self.acked_protocol = self.offered_protocol_features();
        self.protocol_negotiated = true;
        tracing::info!(
            protocol_features = format_args!("{:#x}", self.acked_protocol),
            "front-end resumed without negotiating protocol features; taking those we offer"
        );
    }

    /// SET_FEATURES: a subset of what we offered; the device sees it first.
    pub(super) fn set_features(&mut self, value: u64) -> Result<Option<Reply>, HandlerError> {
        let unoffered = value & !self.offered_features();
        if unoffered != 0 {
            return Err(HandlerError::UnofferedFeatures(unoffered));
        }
        self.device.set_features(value)?;
        self.acked_features = value;
        self.log.set_active(value & features::LOG_ALL != 0);
        Ok(None)
    }

    /// SET_PROTOCOL_FEATURES: a subset of what we offered.
    pub(super) fn set_protocol_features(
        &mut self,
        value: u64,
    ) -> Result<Option<Reply>, HandlerError> {
        let unoffered = value & !self.offered_protocol_features();
        if unoffered != 0 {
            return Err(HandlerError::UnofferedFeatures(unoffered));
        }
        self.acked_protocol = value;
        self.protocol_negotiated = true;
        Ok(None)
    }

    /// SET_OWNER.
    pub(super) fn set_owner(&mut self) -> Result<Option<Reply>, HandlerError> {
        self.owner = true;
        Ok(None)
    }

    /// RESET_OWNER: deprecated; the spec recommends treating it as "disable all rings".
    pub(super) fn reset_owner(&mut self) -> Result<Option<Reply>, HandlerError> {
        self.stop_all();
        Ok(None)
    }

    /// SET_STATUS: the virtio device status byte.
    pub(super) fn set_status(&mut self, value: u64) -> Result<Option<Reply>, HandlerError> {
        self.status = status_value(value)?;
        Ok(None)
    }

    /// RESET_DEVICE.
    pub(super) fn reset_request(&mut self) -> Result<Option<Reply>, HandlerError> {
        self.reset_device();
        Ok(None)
    }

    /// Stops every queue and forgets what the driver negotiated (not the connection's
    /// protocol features, memory table or channels).
    pub(super) fn reset_device(&mut self) {
        self.stop_all();
        for v in &mut self.vrings {
            *v = VringConfig::default();
        }
        self.acked_features = 0;
        self.log.clear();
        self.inflight = None;
        self.status = 0;
        self.device.reset();
    }

    /// The front-end went away: stop everything and forget the session.
    pub fn disconnect(&mut self) {
        self.reset_device();
        self.acked_protocol = 0;
        self.protocol_negotiated = false;
        self.owner = false;
        self.mem.clear();
        self.log_fd = None;
        self.notifier.set_channel(None);
    }
}
