//! Step 2: the namespaces were entered by the launcher's `clone`; here the device names its
//! uts namespace and forbids namespaces nested in its own.
//!
//! Nesting matters because a new user namespace would make the device root with every
//! capability again inside it (seccomp forbids `unshare` and namespace `clone` flags too;
//! this is the layer beneath). The limits live in /proc/sys/user, per user namespace, and
//! the device is root of its own: it sets its namespace's limits to zero while /proc is
//! still reachable, before the pivot.

use std::io::{self, Write};

use super::JailError;

/// The /proc/sys/user limits set to zero.
const LIMITS: &[&str] = &[
    "max_user_namespaces",
    "max_mnt_namespaces",
    "max_pid_namespaces",
    "max_net_namespaces",
    "max_ipc_namespaces",
    "max_uts_namespaces",
    "max_cgroup_namespaces",
    "max_time_namespaces",
];

/// Sets the hostname in the device's uts namespace.
pub fn set_hostname(name: &str) -> Result<(), JailError> {
    nix::unistd::sethostname(name).map_err(JailError::Hostname)
}

/// Sets every nested-namespace limit of this user namespace to zero. A limit the kernel does
/// not have (older kernels lack some) is skipped; max_user_namespaces is required.
pub fn forbid_nested() -> Result<(), JailError> {
    for name in LIMITS {
        let path = format!("/proc/sys/user/{name}");
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"0\n"));
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && *name != "max_user_namespaces" => {
                tracing::debug!(limit = name, "the kernel has no such limit");
            }
            Err(e) => return Err(JailError::NamespaceLimit(path, e)),
        }
    }
    Ok(())
}
