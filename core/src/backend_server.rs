//! Serving a device: accept a front-end on a listening socket, receive and validate each
//! message, dispatch it to the handler, send replies and REPLY_ACK acknowledgements, and when
//! the front-end goes away reset and accept the next one.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::connection::{Connection, ConnectionError, Message};
use crate::control::ControlTarget;
use crate::device::VhostUserDevice;
use crate::handler::{has_explicit_reply, Handler};
use crate::message::{Header, Request};
use crate::warn_ratelimited;

/// Errors of the serving loop itself (not of single requests).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket path is held by a live server.
    #[error("socket {0} is in use by another process")]
    InUse(String),
    /// Binding or accepting failed.
    #[error("socket error on {path}")]
    Socket {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// accept/poll failed.
    #[error("accept failed")]
    Accept(#[source] io::Error),
    /// The shutdown eventfd could not be created.
    #[error("cannot create the shutdown eventfd")]
    EventFd(#[source] io::Error),
}

/// Binds a listening socket at `path`. A stale socket file (nobody listening) is replaced; a
/// live one is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let sock_err = |source| ServeError::Socket {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::InUse(path.display().to_string())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(sock_err)?;
            }
            Err(e) => return Err(sock_err(e)),
        }
    }
    UnixListener::bind(path).map_err(sock_err)
}

/// How one connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The front-end closed the socket.
    PeerClosed,
    /// We closed it after a protocol violation.
    ProtocolError,
    /// Shutdown was requested.
    Shutdown,
}

/// Serves one device on a listening socket, one front-end at a time.
#[derive(Debug)]
pub struct BackendServer {
    handler: Arc<Mutex<Handler>>,
    connected: Arc<AtomicBool>,
    listener: UnixListener,
    shutdown: Arc<EventFd>,
}

impl BackendServer {
    /// A server for `device` on `listener`.
    pub fn new(
        device: Arc<dyn VhostUserDevice>,
        listener: UnixListener,
    ) -> Result<Self, ServeError> {
        Ok(BackendServer {
            handler: Arc::new(Mutex::new(Handler::new(device))),
            connected: Arc::new(AtomicBool::new(false)),
            listener,
            shutdown: Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| ServeError::EventFd(e.into()))?,
            ),
        })
    }

    /// Sets the queue workers' busy-poll budget (`Handler::set_poll_us`; 0: off).
    pub fn with_poll_us(self, us: u32) -> Self {
        self.handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_poll_us(us);
        self
    }

    /// The shared handler (for the control plane: sleep, wake, snapshot, status).
    pub fn handler(&self) -> Arc<Mutex<Handler>> {
        self.handler.clone()
    }

    /// What the control channel serves: the handler and the connection state.
    pub fn control_target(&self) -> ControlTarget {
        ControlTarget {
            handler: self.handler.clone(),
            connected: self.connected.clone(),
        }
    }

    /// Writing to this eventfd (`write(1)`) makes `serve` return.
    pub fn shutdown_handle(&self) -> Arc<EventFd> {
        self.shutdown.clone()
    }

    /// Waits for `fd` or shutdown. Returns false on shutdown.
    fn wait_readable(&self, fd: &impl AsFd) -> Result<bool, io::Error> {
        loop {
            let mut fds = [
                PollFd::new(fd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.shutdown.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(false);
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(true);
            }
        }
    }

    /// Accepts front-ends until shutdown.
    pub fn serve(&self) -> Result<(), ServeError> {
        loop {
            match self.serve_one()? {
                ConnectionEnd::Shutdown => return Ok(()),
                end => tracing::info!(?end, "front-end gone; waiting for the next one"),
            }
        }
    }

    /// Accepts one front-end and serves it until it goes away.
    pub fn serve_one(&self) -> Result<ConnectionEnd, ServeError> {
        if !self
            .wait_readable(&self.listener)
            .map_err(ServeError::Accept)?
        {
            return Ok(ConnectionEnd::Shutdown);
        }
        let (stream, _) = match self.listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return Ok(ConnectionEnd::PeerClosed)
            }
            Err(e) => return Err(ServeError::Accept(e)),
        };
        tracing::info!(fd = stream.as_raw_fd(), "front-end connected");
        Ok(self.serve_stream(stream))
    }

    /// Serves an already connected front-end.
    pub fn serve_stream(&self, stream: UnixStream) -> ConnectionEnd {
        let mut conn = Connection::new(stream);
        self.connected.store(true, Ordering::Release);
        let end = self.serve_connection(&mut conn);
        self.connected.store(false, Ordering::Release);
        self.handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .disconnect();
        tracing::info!(?end, "front-end disconnected; device reset");
        end
    }

    fn serve_connection(&self, conn: &mut Connection) -> ConnectionEnd {
        loop {
            match self.wait_readable(conn.socket()) {
                Ok(true) => {}
                Ok(false) => return ConnectionEnd::Shutdown,
                Err(e) => {
                    tracing::warn!(error = %e, "poll on the front-end socket failed");
                    return ConnectionEnd::ProtocolError;
                }
            }
            let msg = match conn.recv() {
                Ok(m) => m,
                Err(ConnectionError::Closed) => return ConnectionEnd::PeerClosed,
                Err(e) => {
                    tracing::warn!(error = %e, "closing the front-end connection");
                    return ConnectionEnd::ProtocolError;
                }
            };
            if !dispatch(&self.handler, conn, msg) {
                return ConnectionEnd::ProtocolError;
            }
        }
    }
}

/// Handles one message and sends whatever reply is due. Returns false if the connection must
/// be closed.
pub fn dispatch(handler: &Mutex<Handler>, conn: &Connection, msg: Message) -> bool {
    let hdr = msg.header;
    let request = Request::try_from(hdr.request).ok();
    let mut h = handler.lock().unwrap_or_else(|e| e.into_inner());
    let result = h.handle(msg);
    let ack_due = hdr.need_reply() && h.reply_ack();
    drop(h);
    let explicit = request.is_some_and(has_explicit_reply);
    let send = |body: &[u8], fds: &[i32]| -> bool {
        match conn.send(&Header::reply(hdr.request, body.len()), body, fds) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reply to the front-end");
                false
            }
        }
    };
    match result {
        Ok(Some(reply)) => {
            let raw: Vec<i32> = reply.fds.iter().map(|f| f.as_raw_fd()).collect();
            send(&reply.body, &raw)
        }
        Ok(None) => {
            tracing::trace!(?request, "handled");
            if ack_due && !explicit {
                send(&0u64.to_ne_bytes(), &[])
            } else {
                true
            }
        }
        Err(e) => {
            warn_ratelimited!(request = hdr.request, error = %e, "request refused");
            if explicit {
                if request == Some(Request::GetConfig) {
                    // The spec's error signal for GET_CONFIG: an empty payload.
                    return send(&[], &[]);
                }
                // No way to express an error in this reply: close the connection.
                false
            } else if ack_due {
                send(&1u64.to_ne_bytes(), &[])
            } else {
                true
            }
        }
    }
}
