//! Handing a child process an fd at a number of the test's choosing (as libvirt hands a
//! back-end its socket with `--fd N`), and a symlink that runs the launcher as
//! `vu-vhost-user-KIND`.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Makes the child of `cmd` inherit `fd` as fd `target` (without close-on-exec).
pub fn inherit_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    let child = move || -> io::Result<()> {
        let r = if fd == target {
            // dup2 would do nothing: clear close-on-exec by hand.
            // SAFETY: fcntl(F_SETFD) on an integer; async-signal-safe.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 on integers; async-signal-safe.
            unsafe { libc::dup2(fd, target) }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls on integers; it allocates nothing on success.
    unsafe { cmd.pre_exec(child) };
}

/// A symlink `dir/vu-vhost-user-KIND` to the launcher binary.
pub fn program(dir: &Path, kind: &str) -> PathBuf {
    let link = dir.join(format!("vu-vhost-user-{kind}"));
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_launcher"), &link).expect("symlink");
    link
}
