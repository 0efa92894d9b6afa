//! A device that crashes in a loop is not restarted forever: past --max-crashes crashes
//! within --crash-window it is held in the failed state with the reason in `status`, and
//! `launcher ctl start` brings it back. No guest: crashes and restarts do not need a VMM.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::supervisor::{pid_alive, sigkill, SupervisedBlock};

const DEV: &str = "loop0";
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn crash_loop_is_held_failed_until_started() -> Result<()> {
    let rig = SupervisedBlock::new(
        16 << 20,
        Some(DEV),
        &["--max-crashes", "2", "--crash-window", "600"],
    )?;
    let r = (|| -> Result<()> {
        let mut pid = rig.status()?.pid.context("no device pid")?;
        // Two crashes are tolerated: a new process each time.
        for crash in 1..=2u64 {
            sigkill(pid)?;
            let st = rig.ctl.wait_status(DEV, "restarted", TIMEOUT, |s| {
                s.state == "running" && s.pid.is_some_and(|p| p != pid)
            })?;
            ensure!(st.restarts == Some(crash), "after crash {crash}: {st:?}");
            pid = st.pid.context("no pid")?;
        }
        // The third within the window: held failed, no process, the reason shown.
        sigkill(pid)?;
        let st = rig
            .ctl
            .wait_status(DEV, "failed", TIMEOUT, |s| s.state == "failed")?;
        ensure!(st.pid.is_none(), "a failed device has a process: {st:?}");
        ensure!(!pid_alive(pid), "killed device {pid} is still there");
        let failure = st
            .raw
            .find_key("failure")
            .map(|v| v.text())
            .unwrap_or_default();
        ensure!(
            failure.contains('3') || failure.to_ascii_lowercase().contains("crash"),
            "no crash-loop reason in status: {st:?}"
        );
        let human = rig.ctl.ok(&["status", DEV])?;
        ensure!(
            human.to_ascii_lowercase().contains("failed"),
            "human status of a failed device:\n{human}"
        );
        // It stays failed: no new process appears on its own.
        let again = rig.status()?;
        ensure!(again.state == "failed" && again.pid.is_none(), "{again:?}");
        // An operator's start brings it back.
        rig.ctl_ok(&["start", "{dev}"])?;
        let st = rig.status()?;
        ensure!(
            st.state == "running" && st.pid.is_some_and(pid_alive),
            "after start: {st:?}"
        );
        Ok(())
    })();
    if r.is_err() {
        eprintln!("---- launcher ----\n{}", rig.launcher.stderr());
    }
    r?;
    let st = rig.launcher.terminate()?;
    ensure!(
        st.success(),
        "launcher exited {st} after a recovered crash loop"
    );
    Ok(())
}
