//! Step 3: an empty, read-only root.
//!
//! Every mount is made private (nothing propagates back to the host), a small tmpfs with mode
//! 0 is mounted on a scratch directory, and `pivot_root(".", ".")` makes it the root with the
//! old root stacked on top of it, which `umount2(MNT_DETACH)` then takes away: no put_old
//! directory is ever created, so the new root stays empty. It is then remounted read-only,
//! nodev, nosuid, noexec. Nothing else is mounted: no /proc, no /dev (the device receives
//! every fd it needs; io_uring, eventfd and memfd need neither, and logging uses fd 2).

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::JailError;

/// Directories the tmpfs may be mounted on (it hides them only in this mount namespace).
const MOUNT_POINTS: &[&str] = &["/tmp", "/mnt", "/var/tmp", "/run"];

/// Options of the new root: tiny, and no access for anyone.
const TMPFS_OPTIONS: &str = "size=4096,nr_inodes=2,mode=000";

/// Pivots into an empty read-only tmpfs; the working directory becomes `/`.
pub fn pivot_to_empty_root() -> Result<(), JailError> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| JailError::Mount("making mounts private", e))?;
    let base = MOUNT_POINTS
        .iter()
        .find(|p| Path::new(p).is_dir())
        .ok_or_else(|| JailError::NoMountPoint(MOUNT_POINTS.join(", ")))?;
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        *base,
        Some("tmpfs"),
        hardened,
        Some(TMPFS_OPTIONS),
    )
    .map_err(|e| JailError::Mount("mounting the new root", e))?;
    nix::unistd::chdir(*base).map_err(|e| JailError::Mount("entering the new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| JailError::Mount("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| JailError::Mount("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| JailError::Mount("entering /", e))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened,
        none,
    )
    .map_err(|e| JailError::Mount("remounting the root read-only", e))?;
    // The superblock is read-only now; make the mount itself read-only, nosuid, nodev and
    // noexec too (per-mount flags are what /proc/PID/mountinfo shows first).
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
        none,
    )
    .map_err(|e| JailError::Mount("remounting the root mount read-only", e))?;
    Ok(())
}
