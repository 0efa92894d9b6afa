//! The vsock device's jail holds: a forbidden system call kills it (SIGSYS, reported by the
//! launcher), and so does an attempt to connect to a host program's socket itself (only the
//! launcher's broker connects `<uds-path>_<port>`).

use std::os::unix::net::UnixListener;

use anyhow::{bail, ensure, Result};
use vu_tests::launcher::{Launcher, Spawned};

fn start(extra: &[&str]) -> Result<(tempfile::TempDir, Spawned)> {
    let dir = tempfile::Builder::new().prefix("vsock-jail").tempdir()?;
    let socket = dir.path().join("vu.sock");
    let mut args: Vec<String> = [
        "start",
        "vsock",
        "--socket",
        &socket.display().to_string(),
        "--guest-cid",
        "3",
        "--uds-path",
        &dir.path().join("v.sock").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let spawned = Launcher::try_spawn(&args, &socket)?;
    Ok((dir, spawned))
}

fn killed_by_seccomp(spawned: Spawned) -> Result<String> {
    let (status, stderr) = match spawned {
        Spawned::Exited { status, stderr } => (status, stderr),
        Spawned::Ready(_) => bail!("the device survived"),
    };
    ensure!(
        status.code() == Some(1),
        "launcher exit status {status}:\n{stderr}"
    );
    let report = stderr
        .lines()
        .find(|l| l.contains("launcher: error:"))
        .unwrap_or_default();
    for needle in ["device vsock (pid", "SIGSYS", "seccomp violation"] {
        ensure!(
            report.contains(needle),
            "report lacks {needle:?}:\n{stderr}"
        );
    }
    Ok(stderr)
}

#[test]
fn a_forbidden_syscall_kills_the_vsock_device() -> Result<()> {
    let (_dir, spawned) = start(&["--test-forbidden-syscall"])?;
    let stderr = killed_by_seccomp(spawned)?;
    ensure!(
        stderr.contains("FORBIDDEN-SYSCALL: calling ptrace"),
        "the trigger did not run:\n{stderr}"
    );
    Ok(())
}

#[test]
fn the_device_cannot_connect_a_host_socket_itself() -> Result<()> {
    // A host program's socket the device could reach through the broker, but not by itself.
    let host = tempfile::tempdir()?;
    let target = host.path().join("v.sock_5000");
    let _listener = UnixListener::bind(&target)?;
    let target_s = target.display().to_string();
    let (_dir, spawned) = start(&[
        "--test-escape",
        "connect_host_socket",
        "--test-escape-host-socket",
        &target_s,
    ])?;
    killed_by_seccomp(spawned)?;
    Ok(())
}
