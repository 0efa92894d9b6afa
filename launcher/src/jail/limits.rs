//! Step 4: resource limits, and no core dumps.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use super::JailError;

/// RLIMIT_NOFILE of a device process unless its kind asks for more
/// (`crate::kinds::DeviceKind::open_files`).
pub const DEFAULT_OPEN_FILES: u64 = 1024;

/// The limits a device runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE: guest memory regions (up to 509 fds with
    /// VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS), three eventfds and an io_uring per queue,
    /// the log and inflight fds, and the device's own.
    pub open_files: u64,
    /// RLIMIT_DATA, in bytes: private writable memory (heap, thread stacks). Guest memory is a
    /// MAP_SHARED mapping of received fds and does not count.
    pub data_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            open_files: DEFAULT_OPEN_FILES,
            data_bytes: 1 << 30,
        }
    }
}

/// Lowers RLIMIT_NOFILE and RLIMIT_DATA (never above the inherited hard limit), sets
/// RLIMIT_CORE to 0 and makes the process non-dumpable (no core file, and no ptrace or
/// /proc/PID/mem access by other processes of the same host uid).
pub fn apply(limits: &Limits) -> Result<(), JailError> {
    lower(Resource::RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE")?;
    lower(Resource::RLIMIT_DATA, limits.data_bytes, "RLIMIT_DATA")?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| JailError::Limit("RLIMIT_CORE", e))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| JailError::Limit("PR_SET_DUMPABLE", e))?;
    Ok(())
}

fn lower(resource: Resource, want: u64, name: &'static str) -> Result<(), JailError> {
    let (_, hard) = getrlimit(resource).map_err(|e| JailError::Limit(name, e))?;
    let v = want.min(hard);
    setrlimit(resource, v, v).map_err(|e| JailError::Limit(name, e))
}
