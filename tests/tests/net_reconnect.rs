//! A new front-end after a disconnect is served by the same device process: a first guest
//! moves data, then its QEMU is killed (the connection just ends); a second guest boots on
//! the same socket, gets its link, pings and moves data both ways.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use vu_tests::e2e::POWEROFF;
use vu_tests::net::{transfer, NetRig, Plan};

const MIB: u64 = 1 << 20;

#[test]
fn a_new_front_end_after_a_disconnect_is_served() -> Result<()> {
    let rig = NetRig::new(1, &[])?;
    let ctl = rig.ctl();
    let pid = rig.launcher.device_pid()?;
    let plan = |port| Plan {
        flows: 1,
        bytes: 8 * MIB,
        port,
    };
    let progress = Arc::new(AtomicU64::new(0));

    let first = rig.boot(1, false)?;
    let r = transfer(&rig.netns, &first, plan(7000), &progress);
    rig.report(&first, r)?;
    first.kill()?;
    drop(first);
    // The device notices the front-end is gone and waits for the next one.
    rig.launcher
        .wait_for_line("waiting for the next one", Duration::from_secs(60))?;
    let st = ctl.status("net0")?;
    ensure!(
        st.frontend_connected == Some(false) && st.pid == Some(pid),
        "after the disconnect: {st:?}"
    );

    let second = rig.boot(1, false)?;
    let r = transfer(&rig.netns, &second, plan(7200), &progress);
    let moved = rig.report(&second, r)?;
    eprintln!(
        "second guest: {} MiB each way in {:.1} s",
        moved.to_host / MIB,
        moved.elapsed.as_secs_f64()
    );
    let st = ctl.status("net0")?;
    ensure!(
        st.serving() && st.pid == Some(pid) && st.restarts == Some(0),
        "the same device process did not serve the second guest: {st:?}"
    );
    second.poweroff(POWEROFF)?;
    drop(second);
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
