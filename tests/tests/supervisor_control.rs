//! The control socket is the supervisor's front door and must hold: a peer with another uid
//! is refused even when the socket's file mode would let it connect (SO_PEERCRED), and
//! malformed messages get an error or a closed connection while the supervisor and its
//! device carry on. No guest: the supervisor answers whether or not a VMM is connected.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::launcher::launcher_bin;
use vu_tests::supervisor::SupervisedBlock;

/// The uid of `nobody`.
const OTHER_UID: u32 = 65534;

#[test]
fn control_socket_is_private_and_refuses_other_uids() -> Result<()> {
    let rig = SupervisedBlock::new(16 << 20, None, &[])?;
    let mode = std::fs::metadata(&rig.control)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "control socket mode {mode:o}, want 600");
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: cannot run ctl as another uid; checked the mode only");
        return Ok(());
    }
    // Open the path up so that only the supervisor's own uid check stands in the way.
    std::fs::set_permissions(rig.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&rig.control, std::fs::Permissions::from_mode(0o666))?;
    let bin = launcher_bin()?;
    let out = Command::new(&bin)
        .args(["ctl", "--control"])
        .arg(&rig.control)
        .args(["status"])
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} as uid {OTHER_UID} (it and its directories must be executable by it)",
                bin.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctl as uid {OTHER_UID}: {}\n{stdout}{stderr}", out.status);
    ensure!(
        out.status.code() == Some(1),
        "ctl from uid {OTHER_UID} was not refused: {}\n{stdout}{stderr}",
        out.status
    );
    ensure!(
        !stdout.contains("block0"),
        "ctl from uid {OTHER_UID} got the status:\n{stdout}"
    );
    ensure!(!stderr.trim().is_empty(), "refused without a reason");
    // The owner is still served.
    let st = rig.status()?;
    ensure!(st.state == "running", "{st:?}");
    rig.launcher.terminate()?;
    Ok(())
}

/// Sends `bytes` on a fresh connection and returns what came back before EOF or a timeout.
fn exchange(rig: &SupervisedBlock, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut s = UnixStream::connect(&rig.control).context("connect to the control socket")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The supervisor may close on a broken frame before reading it all.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    Ok(back)
}

#[test]
fn malformed_control_messages_get_an_error_and_the_supervisor_carries_on() -> Result<()> {
    let rig = SupervisedBlock::new(16 << 20, None, &[])?;
    let pid = rig.status()?.pid;

    // A well-framed body that is not a request: an error frame comes back.
    let mut frame = 6u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[0xff, 0xff, 0x7f, 0xee, 0xdd, 0xcc]);
    let back = exchange(&rig, &frame)?;
    ensure!(
        back.len() > 4,
        "no answer to a malformed request ({} bytes back)",
        back.len()
    );
    let len = u32::from_le_bytes(back[..4].try_into()?) as usize;
    ensure!(
        len > 0 && back.len() >= 4 + len,
        "the answer is not one length-prefixed frame: {back:?}"
    );

    // A frame length far beyond any limit, a truncated frame, and bare noise.
    for noise in [
        &u32::MAX.to_le_bytes()[..],
        &[200, 0, 0, 0, 1, 2, 3],
        b"GET / HTTP/1.0\r\n\r\n",
        &[],
    ] {
        exchange(&rig, noise)?;
        let st = rig
            .status()
            .with_context(|| format!("after sending {noise:?}"))?;
        ensure!(
            st.state == "running" && st.pid == pid,
            "after sending {noise:?}: {st:?}"
        );
    }
    rig.launcher.terminate()?;
    Ok(())
}
