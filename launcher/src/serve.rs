//! Serving a prepared device in the foreground: bind the socket, announce readiness, serve until
//! SIGINT/SIGTERM, then drain, flush and clean up.
//!
//! Signals are handled without handlers: [`block_signals`] blocks SIGINT and SIGTERM in the
//! calling thread before any other thread exists (every thread inherits the mask), and one
//! dedicated thread takes them with `sigwait`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use vu_core::backend_server::ServeError as CoreServeError;
use vu_core::handler::HandlerError;
use vu_core::{BackendServer, VhostUserDevice};

use crate::socket::{self, SocketError, SocketFile};

/// A device ready to be served: everything opened, nothing bound yet.
pub struct Prepared {
    /// The device.
    pub device: Arc<dyn VhostUserDevice>,
    /// Makes everything the device wrote durable (called once serving has stopped).
    pub flush: Box<dyn Fn() -> io::Result<()> + Send>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("device", &self.device.name())
            .finish_non_exhaustive()
    }
}

/// Why serving failed or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal mask could not be set.
    #[error("cannot block SIGINT and SIGTERM")]
    Signals(#[source] nix::Error),
    /// The signal thread could not be started.
    #[error("cannot start the signal thread")]
    SignalThread(#[source] io::Error),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The vhost-user server failed.
    #[error("serving failed")]
    Server(#[source] CoreServeError),
    /// Draining the queues failed.
    #[error("cannot drain the queues")]
    Sleep(#[source] HandlerError),
    /// The final flush failed: data may not be durable.
    #[error("cannot flush the device")]
    Flush(#[source] io::Error),
}

/// Blocks SIGINT and SIGTERM in the calling thread and in every thread it spawns afterwards.
/// Call before spawning any thread; [`run`] then takes them with `sigwait`.
pub fn block_signals() -> Result<SigSet, ServeError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(ServeError::Signals)?;
    Ok(set)
}

/// Serves `prepared` on a new socket at `socket_path` until SIGINT or SIGTERM (in `signals`,
/// already blocked by [`block_signals`]). On the first signal: stop serving, drain the queues,
/// flush the device, remove the socket and return. On a second signal: remove the socket and
/// exit with status 1 at once.
pub fn run(prepared: Prepared, socket_path: &Path, signals: SigSet) -> Result<(), ServeError> {
    let (listener, socket) = socket::bind(socket_path)?;
    let socket = Arc::new(socket);
    let server = BackendServer::new(prepared.device, listener).map_err(ServeError::Server)?;

    let shutdown = server.shutdown_handle();
    let sock = socket.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(signals, &shutdown, &sock))
        .map_err(ServeError::SignalThread)?;

    tracing::info!("listening on {}", socket.path().display());
    let served = server.serve();

    let slept = server
        .handler()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sleep();
    let flushed = (prepared.flush)();
    socket.remove();
    served.map_err(ServeError::Server)?;
    slept.map_err(ServeError::Sleep)?;
    flushed.map_err(ServeError::Flush)?;
    tracing::info!("stopped");
    Ok(())
}

fn signal_thread(signals: SigSet, shutdown: &nix::sys::eventfd::EventFd, socket: &SocketFile) {
    let mut stopping = false;
    loop {
        let sig = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "sigwait failed; signals are no longer handled");
                return;
            }
        };
        if stopping {
            tracing::warn!(signal = %sig, "second signal; exiting without draining or flushing");
            socket.remove();
            std::process::exit(1);
        }
        stopping = true;
        tracing::info!(signal = %sig, "shutting down");
        if let Err(e) = shutdown.write(1) {
            tracing::error!(error = %e, "cannot stop the server; exiting");
            socket.remove();
            std::process::exit(1);
        }
    }
}
