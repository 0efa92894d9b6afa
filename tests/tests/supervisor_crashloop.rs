//! The crash policy: a device that was ready is started again however often it is killed (a
//! served disk is never given up on), while a device whose processes die before they are
//! ready (a configuration it cannot start with) is held in the failed state after
//! --max-crashes of them in a row within --crash-window, with the reason in `status`, until
//! `launcher ctl start` brings it back. No guest: crashes and restarts do not need a VMM.
//! The failed starts come from the supervisor's debug-build test trigger `fail-starts N`.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::supervisor::{pid_alive, sigkill, SupervisedBlock};

const DEV: &str = "loop0";
const TIMEOUT: Duration = Duration::from_secs(60);

fn failed_starts(st: &vu_tests::supervisor::DevStatus) -> Option<u64> {
    st.raw.find_key("failed_starts").and_then(|v| v.as_u64())
}

#[test]
fn crash_loops_of_ready_and_of_never_ready_processes() -> Result<()> {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the fail-starts test trigger needs a debug build");
        return Ok(());
    }
    let rig = SupervisedBlock::new(
        16 << 20,
        Some(DEV),
        &["--max-crashes", "2", "--crash-window", "600"],
    )?;
    let r = (|| -> Result<()> {
        let mut pid = rig.status()?.pid.context("no device pid")?;
        // Ready processes killed, twice as many times as --max-crashes allows failed starts:
        // a new process each time.
        for crash in 1..=4u64 {
            sigkill(pid)?;
            let st = rig.ctl.wait_status(DEV, "restarted", TIMEOUT, |s| {
                s.state == "running" && s.pid.is_some_and(|p| p != pid)
            })?;
            ensure!(st.restarts == Some(crash), "after crash {crash}: {st:?}");
            ensure!(failed_starts(&st) == Some(0), "after crash {crash}: {st:?}");
            pid = st.pid.context("no pid")?;
        }
        // Now its processes die before they are ready: the third in a row is one too many.
        rig.ctl_ok(&["test-trigger", "{dev}", "fail-starts", "3"])?;
        sigkill(pid)?;
        let st = rig
            .ctl
            .wait_status(DEV, "failed", TIMEOUT, |s| s.state == "failed")?;
        ensure!(st.pid.is_none(), "a failed device has a process: {st:?}");
        ensure!(!pid_alive(pid), "killed device {pid} is still there");
        ensure!(failed_starts(&st) == Some(3), "{st:?}");
        let failure = st
            .raw
            .find_key("failure")
            .map(|v| v.text())
            .unwrap_or_default();
        ensure!(
            failure.contains("died before they were ready"),
            "no failed-start reason in status: {st:?}"
        );
        let human = rig.ctl.ok(&["status", DEV])?;
        ensure!(
            human.to_ascii_lowercase().contains("failed"),
            "human status of a failed device:\n{human}"
        );
        // It stays failed: no new process appears on its own.
        std::thread::sleep(Duration::from_secs(1));
        let again = rig.status()?;
        ensure!(again.state == "failed" && again.pid.is_none(), "{again:?}");
        // An operator's start brings it back.
        rig.ctl_ok(&["start", "{dev}"])?;
        let st = rig.status()?;
        ensure!(
            st.state == "running" && st.pid.is_some_and(pid_alive),
            "after start: {st:?}"
        );
        ensure!(failed_starts(&st) == Some(0), "after start: {st:?}");
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
