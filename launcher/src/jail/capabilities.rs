//! Step 5: no capabilities in any set, and no way back.
//!
//! The device is root of its user namespace and starts with every capability there. While it
//! still holds CAP_SETPCAP it locks the securebits (root gets no capabilities from exec or
//! setuid, and none of that can be undone), drops the bounding set, then clears the ambient,
//! effective, permitted and inheritable sets, and checks that all are empty.

use std::io;

use caps::CapSet;

use super::JailError;

/// The securebits set and locked.
const SECUREBITS: libc::c_int = libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// Drops every capability; see the module documentation.
pub fn drop_all() -> Result<(), JailError> {
    lock_securebits()?;
    drop_bounding_set()?;
    let err =
        |step| move |e: caps::errors::CapsError| JailError::Capabilities(step, io::Error::other(e));
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Effective).map_err(err("clearing the effective set"))?;
    caps::clear(None, CapSet::Permitted).map_err(err("clearing the permitted set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing the inheritable set"))?;
    verify()
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the prctl operations used here (securebits, bounding set) take integer
    // arguments only and touch no memory of ours.
    let r = unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn lock_securebits() -> Result<(), JailError> {
    let bits = libc::c_ulong::try_from(SECUREBITS).unwrap_or_default();
    prctl(libc::PR_SET_SECUREBITS, bits)
        .map_err(|e| JailError::Capabilities("locking the securebits", e))?;
    Ok(())
}

/// Drops every capability the kernel knows from the bounding set (probing up to the first
/// number it rejects, so capabilities newer than the caps crate are dropped too).
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_READ, cap) {
            Ok(0) => {}
            Ok(_) => {
                prctl(libc::PR_CAPBSET_DROP, cap)
                    .map_err(|e| JailError::Capabilities("dropping the bounding set", e))?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(e) => return Err(JailError::Capabilities("reading the bounding set", e)),
        }
    }
    Ok(())
}

fn verify() -> Result<(), JailError> {
    let fail = |what: &str| {
        JailError::Capabilities(
            "verifying",
            io::Error::other(format!("{what} is not empty")),
        )
    };
    for (set, name) in [
        (CapSet::Effective, "the effective set"),
        (CapSet::Permitted, "the permitted set"),
        (CapSet::Inheritable, "the inheritable set"),
        (CapSet::Ambient, "the ambient set"),
    ] {
        let held = caps::read(None, set)
            .map_err(|e| JailError::Capabilities("verifying", io::Error::other(e)))?;
        if !held.is_empty() {
            return Err(fail(name));
        }
    }
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_READ, cap) {
            Ok(0) => {}
            Ok(_) => return Err(fail("the bounding set")),
            Err(_) => break,
        }
    }
    let bits =
        prctl(libc::PR_GET_SECUREBITS, 0).map_err(|e| JailError::Capabilities("verifying", e))?;
    if bits & SECUREBITS != SECUREBITS {
        return Err(JailError::Capabilities(
            "verifying",
            io::Error::other(format!("securebits are {bits:#x}, want {SECUREBITS:#x}")),
        ));
    }
    Ok(())
}
