//! Step 6: no_new_privs. No exec can grant privileges again (setuid bits and file
//! capabilities are ignored), and it is what lets an unprivileged process install landlock
//! and seccomp filters.

use super::JailError;

/// Sets no_new_privs and checks that it is set.
pub fn set() -> Result<(), JailError> {
    nix::sys::prctl::set_no_new_privs().map_err(JailError::NoNewPrivs)?;
    match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => Ok(()),
        Ok(false) => Err(JailError::NoNewPrivs(nix::Error::EPERM)),
        Err(e) => Err(JailError::NoNewPrivs(e)),
    }
}
