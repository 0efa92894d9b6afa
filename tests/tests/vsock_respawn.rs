//! The device process killed and started again by the launcher, with a guest attached.
//!
//! Host side: the host programs' streams of the old process end at once (they were its
//! descriptors); the `--uds-path` socket stays (the launcher holds it), and the new process
//! serves it. Guest side: QEMU's vhost-user-vsock does not reconnect to a back-end (unlike
//! vhost-user-blk, it has no chardev event handler), so the operator re-plugs the device
//! (`device_del`, then `device_add` on a fresh chardev to the same socket, served by the new
//! process): the guest's connections of the old device are reset, its listeners stay, and
//! new connections work both ways.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::guest::Guest;
use vu_tests::supervisor::sigkill;
use vu_tests::vsock::{
    boot_pluggable, echo_service, guest_spawn, guest_wait_file, replug, VsockRig, CMD,
};

const ECHO: u32 = 5003;
const TICKS: u32 = 6003;

/// Guest to host: a tick every 0.2 s on a stream to host port TICKS; when the stream breaks
/// the guest writes socat's exit status to `done`.
fn start_ticks(g: &Guest, done: &str) -> Result<()> {
    guest_spawn(
        g,
        &format!(
            "(while true; do echo tick; sleep 0.2; done) | socat - VSOCK-CONNECT:2:{TICKS}; \
             echo exit=$? > {done}"
        ),
        "/tmp/ticks.log",
    )
}

fn echo_works(rig: &VsockRig) -> Result<()> {
    let (mut s, _) = rig.connect(ECHO)?;
    s.write_all(b"hello\n")?;
    let mut b = [0u8; 6];
    s.read_exact(&mut b)?;
    ensure!(&b == b"hello\n", "echo answered {b:?}");
    Ok(())
}

#[test]
fn a_respawned_device_resets_old_connections_and_serves_new_ones() -> Result<()> {
    let rig = VsockRig::start(3, &[])?;
    let ticks = rig.listen(TICKS)?;
    let monitor = rig.dir.path().join("mon.sock");
    let guest = boot_pluggable(&rig.socket, &monitor)?;
    let r = (|| -> Result<()> {
        guest_spawn(&guest, &echo_service(ECHO, ""), "/tmp/echo.log")?;
        echo_works(&rig)?;
        let (mut host_old, _) = rig.connect(ECHO)?;
        start_ticks(&guest, "/tmp/ticks1.done")?;
        let (mut tick_old, _) = ticks.accept()?;
        let mut b = [0u8; 5];
        tick_old.read_exact(&mut b)?;
        ensure!(&b == b"tick\n", "ticks: {b:?}");

        let old_pid = rig.launcher.device_pid()?;
        sigkill(old_pid)?;
        rig.launcher
            .wait_for_nth_line("listening on", 2, Duration::from_secs(60))?;
        // The host programs' streams ended with the process that held them.
        for s in [&mut host_old, &mut tick_old] {
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).context("reading an old stream")?;
        }
        replug(&guest, &monitor, &rig.socket, 0, || {
            // The guest's old connection was reset with its device: its socat failed.
            let done = guest_wait_file(&guest, "/tmp/ticks1.done", Duration::from_secs(60))?;
            ensure!(
                !done.contains("exit=0"),
                "the old guest stream ended cleanly: {done}"
            );
            Ok(())
        })?;
        // New connections work both ways; the guest's listener survived.
        echo_works(&rig)?;
        start_ticks(&guest, "/tmp/ticks2.done")?;
        let (mut tick_new, _) = ticks.accept()?;
        tick_new.read_exact(&mut b)?;
        ensure!(&b == b"tick\n", "ticks after the respawn: {b:?}");
        ensure!(rig.launcher.device_pid()? != old_pid, "the same process");
        Ok(())
    })();
    rig.report(&guest, r)?;
    guest.poweroff(CMD)?;
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
