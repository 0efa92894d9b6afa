//! The launcher as a minimal supervisor of its device process: it waits for the device to say
//! it is ready (then logs "listening on SOCKET"), forwards SIGINT/SIGTERM to it as SIGTERM,
//! and notices when it exits, saying how.
//!
//! Signals are not handled by handlers: SIGINT, SIGTERM and SIGCHLD are blocked (before the
//! device is started, so no signal is lost) and read from a signalfd, polled together with
//! the launcher's end of the control socketpair.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::control::DeviceMessage;
use crate::socket::SocketFile;

/// How a device process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceExit {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(Signal),
}

impl std::fmt::Display for DeviceExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceExit::Exited(code) => write!(f, "exited with status {code}"),
            DeviceExit::Signaled(Signal::SIGSYS) => f.write_str(
                "was killed by SIGSYS: seccomp violation (it made a system call its policy \
                 forbids; the kernel audit log names it, and --seccomp-log logs such calls \
                 instead of killing)",
            ),
            DeviceExit::Signaled(sig) => write!(f, "was killed by {}", sig.as_str()),
        }
    }
}

/// How supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Asked to stop by a signal, the device stopped cleanly (status 0).
    Stopped,
    /// The device ended on its own, or badly after being asked to stop.
    DeviceDied(DeviceExit),
    /// A second signal came while the device was stopping: it was killed.
    Killed,
}

/// Why supervising failed (the device is killed if it may still run).
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The signal mask could not be set.
    #[error("cannot block SIGINT, SIGTERM and SIGCHLD")]
    Signals(#[source] nix::Error),
    /// signalfd failed.
    #[error("cannot read signals")]
    SignalFd(#[source] nix::Error),
    /// poll failed.
    #[error("cannot wait for the device")]
    Poll(#[source] nix::Error),
    /// waitpid failed.
    #[error("cannot wait for the device process")]
    Wait(#[source] nix::Error),
    /// Reading the control channel failed.
    #[error("cannot read the device's control channel")]
    Control(#[source] io::Error),
}

/// Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread. Call before starting the device;
/// [`supervise`] then reads them from a signalfd.
pub fn block_signals() -> Result<SigSet, SuperviseError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(SuperviseError::Signals)?;
    Ok(set)
}

/// One supervised device process.
#[derive(Debug)]
pub struct Supervised<'a> {
    /// The device kind, for messages.
    pub device: &'a str,
    /// Its pid.
    pub pid: Pid,
    /// The launcher's end of the control socketpair.
    pub control: UnixStream,
    /// The socket it serves on, named in the readiness line.
    pub socket: &'a SocketFile,
}

/// Supervises `dev` until it ends; `signals` come from [`block_signals`].
pub fn supervise(dev: &Supervised<'_>, signals: &SigSet) -> Result<Ending, SuperviseError> {
    let r = supervise_inner(dev, signals);
    if r.is_err() {
        // Never leave a device running unsupervised.
        let _ = kill(dev.pid, Signal::SIGKILL);
        let _ = waitpid(dev.pid, None);
    }
    r
}

fn supervise_inner(dev: &Supervised<'_>, signals: &SigSet) -> Result<Ending, SuperviseError> {
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(SuperviseError::SignalFd)?;
    dev.control
        .set_nonblocking(true)
        .map_err(SuperviseError::Control)?;
    let mut control_open = true;
    let mut stopping = false;
    loop {
        let (signal_ready, control_ready) = {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if control_open {
                fds.push(PollFd::new(dev.control.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(SuperviseError::Poll(e)),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if control_ready {
            control_open = read_control(dev)?;
        }
        if !signal_ready {
            continue;
        }
        while let Some(info) = sfd.read_signal().map_err(SuperviseError::SignalFd)? {
            let sig = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|s| Signal::try_from(s).ok());
            match sig {
                Some(Signal::SIGCHLD) => {
                    if let Some(exit) = reap(dev.pid)? {
                        return Ok(if stopping && exit == DeviceExit::Exited(0) {
                            Ending::Stopped
                        } else {
                            Ending::DeviceDied(exit)
                        });
                    }
                }
                Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) if !stopping => {
                    tracing::info!(signal = %sig, device = dev.device, "shutting down");
                    stopping = true;
                    // The device blocks SIGTERM and takes it with sigwait: as pid 1 of its
                    // namespace it would drop a signal it neither handles nor blocks.
                    if let Err(e) = kill(dev.pid, Signal::SIGTERM) {
                        tracing::warn!(error = %e, "cannot signal the device");
                    }
                }
                Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                    tracing::warn!(
                        signal = %sig,
                        device = dev.device,
                        "second signal; killing the device without draining or flushing"
                    );
                    let _ = kill(dev.pid, Signal::SIGKILL);
                    waitpid(dev.pid, None).map_err(SuperviseError::Wait)?;
                    return Ok(Ending::Killed);
                }
                _ => {}
            }
        }
    }
}

/// Reads what the device sent; returns false once it closed its end.
fn read_control(dev: &Supervised<'_>) -> Result<bool, SuperviseError> {
    let mut buf = [0u8; 64];
    loop {
        match (&dev.control).read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                for &b in &buf[..n] {
                    match DeviceMessage::from_byte(b) {
                        Some(DeviceMessage::Ready) => tracing::info!(
                            device = dev.device,
                            pid = dev.pid.as_raw(),
                            "listening on {}",
                            dev.socket.path().display()
                        ),
                        None => tracing::warn!(
                            device = dev.device,
                            byte = b,
                            "unknown message on the control channel"
                        ),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A device that died mid-write: its exit status says more.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(SuperviseError::Control(e)),
        }
    }
}

/// The device's exit, if it has exited.
fn reap(pid: Pid) -> Result<Option<DeviceExit>, SuperviseError> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)).map_err(SuperviseError::Wait)? {
        WaitStatus::Exited(_, code) => Ok(Some(DeviceExit::Exited(code))),
        WaitStatus::Signaled(_, sig, _) => Ok(Some(DeviceExit::Signaled(sig))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigsys_is_called_a_seccomp_violation() {
        let s = DeviceExit::Signaled(Signal::SIGSYS).to_string();
        assert!(
            s.contains("SIGSYS") && s.contains("seccomp violation"),
            "{s}"
        );
        assert_eq!(
            DeviceExit::Signaled(Signal::SIGSEGV).to_string(),
            "was killed by SIGSEGV"
        );
        assert_eq!(DeviceExit::Exited(3).to_string(), "exited with status 3");
    }
}
