//! Socket activation (sd_listen_fds(3)): systemd passes the listening sockets of the unit's
//! `.socket` as fds 3, 4, ... with LISTEN_FDS (how many), LISTEN_PID (for which process) and
//! LISTEN_FDNAMES (their `FileDescriptorName=`, colon-separated). Which device serves which
//! passed socket is decided in `supervisor::listen`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A socket systemd passed.
#[derive(Debug)]
pub struct PassedSocket {
    /// Its fd (close-on-exec from now on).
    pub fd: OwnedFd,
    /// Its number, for messages.
    pub number: RawFd,
    /// Its name (LISTEN_FDNAMES; "unknown" when systemd gave none).
    pub name: String,
}

/// Why the passed sockets could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The variables are malformed, or name fds that are not open.
    #[error(
        "socket activation: LISTEN_PID, LISTEN_FDS or LISTEN_FDNAMES is malformed, or names an \
         fd that is not open (LISTEN_FDNAMES must have one name per fd)"
    )]
    Env(#[source] io::Error),
}

/// Set once the passed sockets have been taken: they are owned from then on.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The sockets systemd passed to this process (none when LISTEN_PID names another process or
/// the variables are unset), marked close-on-exec. Call once, before the launcher opens
/// anything: the fds become owned here. Later calls return nothing.
pub fn take_passed() -> Result<Vec<PassedSocket>, ActivationError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let passed = sd_notify::listen_fds_with_names().map_err(ActivationError::Env)?;
    Ok(passed
        .map(|(number, name)| PassedSocket {
            // SAFETY: `listen_fds_with_names` checked with fcntl(F_GETFD) that every fd of
            // LISTEN_FDS is open (it set FD_CLOEXEC on each); LISTEN_PID names this process,
            // so systemd passed them to us; and nothing else in the launcher owns them: they
            // are taken once (`TAKEN`), before the launcher opens any file of its own.
            fd: unsafe { OwnedFd::from_raw_fd(number) },
            number,
            name,
        })
        .collect())
}
