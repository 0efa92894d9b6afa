//! Serving a device in the device process: the listening socket was bound by the launcher;
//! serve until SIGTERM (forwarded by the launcher) or SIGINT, then drain and flush.
//!
//! Signals are handled without handlers: [`block_signals`] blocks SIGINT and SIGTERM before
//! any thread exists (the launcher already blocked them across exec), and one thread takes
//! them with `sigwait`. That thread starts after the jail, seccomp included: the jail is
//! entered single-threaded.
//!
//! Once serving, a "control" thread answers the supervisor's requests on the control channel
//! (status, sleep, wake, snapshot, restore, resize; see `vu_core::control`).

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::signal::{SigSet, Signal};
use vu_core::backend_server::ServeError as CoreServeError;
use vu_core::control::{Request, Response};
use vu_core::handler::HandlerError;
use vu_core::BackendServer;

use super::ready::{self as control, DeviceMessage};
use crate::kinds::Prepared;

/// Why serving failed or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The signal mask could not be set.
    #[error("cannot block SIGINT and SIGTERM")]
    Signals(#[source] nix::Error),
    /// The signal thread could not be started.
    #[error("cannot start the signal thread")]
    SignalThread(#[source] io::Error),
    /// The launcher could not be told.
    #[error("cannot tell the launcher the device is ready")]
    Control(#[source] io::Error),
    /// The control thread could not be started.
    #[error("cannot start the control thread")]
    ControlThread(#[source] io::Error),
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
pub fn block_signals() -> Result<SigSet, ServeError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(ServeError::Signals)?;
    Ok(set)
}

/// Device-process-level control requests (test triggers) the core does not answer.
pub type ExtraRequests = Box<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// Serves `prepared` on `listener` until SIGTERM or SIGINT (in `signals`, already blocked),
/// telling the launcher on `control` once serving starts and then answering its requests
/// there (`extra` first). On the first signal: stop serving, drain the queues, flush and
/// return. On a second: exit with status 1 at once.
pub fn run(
    prepared: Prepared,
    listener: UnixListener,
    control: UnixStream,
    extra: ExtraRequests,
    signals: SigSet,
) -> Result<(), ServeError> {
    let server = BackendServer::new(prepared.device, listener)
        .map_err(ServeError::Server)?
        .with_poll_us(prepared.poll_us);

    let shutdown = server.shutdown_handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(signals, &shutdown))
        .map_err(ServeError::SignalThread)?;

    // The control thread says "ready" (so that every thread is up by then) and then answers
    // the supervisor's requests, which it sends only once it has read "ready".
    let target = server.control_target();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let sent = control::send(&control, DeviceMessage::Ready);
            let ok = sent.is_ok();
            let _ = sent_tx.send(sent);
            if ok {
                target.serve(control, &*extra);
                tracing::debug!("control channel closed");
            }
        })
        .map_err(ServeError::ControlThread)?;
    sent_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the control thread ended")))
        .map_err(ServeError::Control)?;
    let served = server.serve();

    let slept = server
        .handler()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sleep();
    let flushed = (prepared.flush)();
    served.map_err(ServeError::Server)?;
    slept.map_err(ServeError::Sleep)?;
    flushed.map_err(ServeError::Flush)?;
    tracing::info!("stopped");
    Ok(())
}

fn signal_thread(signals: SigSet, shutdown: &nix::sys::eventfd::EventFd) {
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
            std::process::exit(1);
        }
        stopping = true;
        tracing::info!(signal = %sig, "stopping the device");
        if let Err(e) = shutdown.write(1) {
            tracing::error!(error = %e, "cannot stop the server; exiting");
            std::process::exit(1);
        }
    }
}
