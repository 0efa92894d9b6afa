//! Step 0: conditions the rest of the sequence relies on.
//!
//! Capabilities, no_new_privs and landlock apply to the calling thread only, so a thread that
//! existed before them would keep every privilege: the jail is entered single-threaded (the
//! device starts its threads after seccomp). And the device must be pid 1 of a pid namespace
//! of its own, which only the launcher's `clone` gives it.

use super::JailError;

/// Fails unless this process has exactly one thread.
pub fn check_single_threaded() -> Result<(), JailError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| JailError::Inspect("/proc/self/status", e))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            JailError::Inspect(
                "/proc/self/status",
                std::io::Error::other("no Threads: line"),
            )
        })?;
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    Ok(())
}

/// Fails unless this process is pid 1 of its pid namespace.
pub fn check_pid_namespace_init() -> Result<(), JailError> {
    let pid = std::process::id();
    if pid != 1 {
        return Err(JailError::NotNamespaceInit(
            i32::try_from(pid).unwrap_or(i32::MAX),
        ));
    }
    Ok(())
}
