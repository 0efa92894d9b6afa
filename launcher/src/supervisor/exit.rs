//! Signals and exits as the supervisor (`crate::supervisor`) sees them: how a device process
//! ended, and the signal mask set before anything starts.
//!
//! Signals are not handled by handlers: SIGINT, SIGTERM and SIGCHLD are blocked (before any
//! device or thread is started, so no signal is lost) and read from a signalfd.

use nix::sys::signal::{SigSet, Signal};

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

/// The signal mask could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The signal mask could not be set.
    #[error("cannot block SIGINT, SIGTERM and SIGCHLD")]
    Signals(#[source] nix::Error),
}

/// Blocks SIGINT, SIGTERM and SIGCHLD in the calling thread (and the threads it starts
/// later). Call before starting any device or thread; the supervisor reads them from a
/// signalfd.
pub fn block_signals() -> Result<SigSet, SuperviseError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(SuperviseError::Signals)?;
    Ok(set)
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
