//! Back-end to front-end requests over the channel the front-end hands us with
//! SET_BACKEND_REQ_FD. Today: the config-change notification a device raises (e.g. after a
//! block device was resized).

use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use crate::connection::{Connection, ConnectionError};
use crate::message::{BackendRequest, Header, VERSION};

/// Errors raising a notification.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The front-end gave us no back-end channel, or did not negotiate the features needed.
    #[error("the front-end has no back-end request channel")]
    NoChannel,
    /// Sending failed.
    #[error("cannot send to the front-end")]
    Send(#[from] ConnectionError),
}

/// Lets a device tell the front-end its config space changed.
#[derive(Debug, Default)]
pub struct ConfigNotifier {
    channel: Mutex<Option<Connection>>,
}

impl ConfigNotifier {
    /// A notifier with no channel yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs (or with `None` removes) the back-end request channel.
    pub fn set_channel(&self, sock: Option<UnixStream>) {
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = sock.map(Connection::new);
    }

    /// Whether a channel is installed.
    pub fn has_channel(&self) -> bool {
        self.channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG. No reply is requested: the front-end may
    /// be busy waiting on us on the main channel, and waiting here could deadlock.
    pub fn notify_config_change(&self) -> Result<(), NotifyError> {
        let guard = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let conn = guard.as_ref().ok_or(NotifyError::NoChannel)?;
        let hdr = Header {
            request: BackendRequest::ConfigChangeMsg as u32,
            flags: VERSION,
            size: 0,
        };
        conn.send(&hdr, &[], &[])?;
        Ok(())
    }
}
