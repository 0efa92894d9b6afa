//! `launcher ctl status` tells the truth: with a guest connected it reports the running
//! process, then asleep after `sleep`, running after `wake`, a new process and one more
//! restart (with how the old one died) after a SIGKILL, a new process after `restart`, no
//! process after `stop` and one again after `start`; the guest's disk works throughout.
//! `ctl` pointed at a control socket that does not exist fails with a clear message, and so
//! does a command for a device that does not exist.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vu_tests::e2e::{CMD, POWEROFF};
use vu_tests::guest::Guest;
use vu_tests::supervisor::{
    pid_alive, run_launcher, sigkill, DevStatus, Json, SupervisedBlock, RECONNECT_TIMEOUT,
};

/// The device is started without --name: it is `block0`.
const DEV: &str = "block0";

/// A direct read of the first MiB: the disk answers.
fn disk_answers(g: &Guest) -> Result<()> {
    g.run_ok(
        "dd if=/dev/vda of=/dev/null bs=4096 count=256 iflag=direct",
        CMD,
    )?;
    Ok(())
}

fn run(rig: &SupervisedBlock, g: &Guest) -> Result<()> {
    // list names the device.
    let list = rig.ctl.ok(&["list"])?;
    ensure!(
        list.contains(DEV),
        "`ctl list` does not name {DEV}:\n{list}"
    );
    let human = rig.ctl.ok(&["status", DEV])?;
    ensure!(
        human.contains(DEV) && human.to_ascii_lowercase().contains("running"),
        "human status:\n{human}"
    );
    // The whole-supervisor status includes the device too.
    let all = rig.ctl.json(&["status"])?;
    DevStatus::from_json(&all, DEV).context("`ctl --json status` (all devices)")?;

    // Running: the process the launcher started, a connected front-end, no restarts.
    let st = rig.status()?;
    ensure!(st.serving(), "fresh device: {st:?}");
    let pid = st.pid.context("no pid")?;
    ensure!(
        rig.launcher.device_pid()? == pid,
        "status pid {pid} is not the launcher's child {}",
        rig.launcher.device_pid()?
    );
    ensure!(st.restarts == Some(0), "fresh device: {st:?}");
    ensure!(
        ["uptime", "uptime_ms", "uptime_secs"]
            .iter()
            .any(|k| st.raw.find_key(k).is_some()),
        "status has no uptime: {st:?}"
    );
    disk_answers(g)?;
    let done = rig.status()?.completed.context("no completed counter")?;
    ensure!(done > 0, "completed counter did not move after guest I/O");

    // sleep / wake.
    rig.ctl_ok(&["sleep", "{dev}"])?;
    let st = rig.status()?;
    ensure!(
        st.state == "asleep" && st.pid == Some(pid),
        "after sleep: {st:?}"
    );
    rig.ctl_ok(&["wake", "{dev}"])?;
    let st = rig.status()?;
    ensure!(
        st.state == "running" && st.pid == Some(pid),
        "after wake: {st:?}"
    );
    disk_answers(g)?;

    // A crash: a new process, one restart, and how the old one died.
    sigkill(pid)?;
    let st = rig
        .ctl
        .wait_status(DEV, "respawned", RECONNECT_TIMEOUT, |s| {
            s.pid.is_some_and(|p| p != pid) && s.serving()
        })?;
    ensure!(!pid_alive(pid), "killed device {pid} still exists");
    ensure!(st.restarts == Some(1), "after one crash: {st:?}");
    let reason = st
        .last_exit
        .clone()
        .unwrap_or_default()
        .to_ascii_lowercase();
    ensure!(
        reason.contains("kill") || reason.contains("signal") || reason.contains('9'),
        "last exit reason after SIGKILL: {st:?}"
    );
    disk_answers(g)?;
    let pid = st.pid.context("no pid")?;

    // restart: a new process, serving again.
    rig.ctl_ok(&["restart", "{dev}"])?;
    let st = rig
        .ctl
        .wait_status(DEV, "restarted", RECONNECT_TIMEOUT, |s| {
            s.pid.is_some_and(|p| p != pid) && s.serving()
        })?;
    ensure!(
        !pid_alive(pid),
        "restarted device's old process {pid} still exists"
    );
    disk_answers(g)?;
    let pid = st.pid.context("no pid")?;

    // stop: no process; start: a new one.
    rig.ctl_ok(&["stop", "{dev}"])?;
    let st = rig.status()?;
    ensure!(
        st.state == "stopped" && st.pid.is_none(),
        "after stop: {st:?}"
    );
    ensure!(
        !pid_alive(pid),
        "stopped device's process {pid} still exists"
    );
    rig.ctl_ok(&["start", "{dev}"])?;
    let st = rig
        .ctl
        .wait_status(DEV, "started", RECONNECT_TIMEOUT, |s| {
            s.pid.is_some_and(|p| p != pid) && s.serving()
        })?;
    eprintln!("final status: {st:?}");
    disk_answers(g)?;
    Ok(())
}

#[test]
fn status_follows_sleep_crash_restart_stop_start() -> Result<()> {
    let rig = SupervisedBlock::new(16 << 20, None, &[])?;
    let guest = rig.boot()?;
    rig.report(&guest, run(&rig, &guest))?;
    guest.poweroff(POWEROFF)?;
    rig.launcher.terminate()?;
    Ok(())
}

#[test]
fn ctl_without_a_supervisor_or_device_fails_clearly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-control.sock");
    let m = missing.display().to_string();
    for cmd in [&["list"][..], &["status"], &["--json", "status", DEV]] {
        let mut args = vec!["ctl".to_owned(), "--control".into(), m.clone()];
        args.extend(cmd.iter().map(|s| s.to_string()));
        let out = run_launcher(&args, Duration::from_secs(30))?;
        ensure!(out.code == 1, "want exit 1:\n{out}");
        ensure!(
            out.stderr.contains(&m),
            "the message does not name the control socket:\n{out}"
        );
        if cmd[0] == "--json" {
            // Machines get the error as JSON on stdout.
            let doc = Json::parse(&out.stdout).with_context(|| format!("{out}"))?;
            let err = doc.find_key("error").map(Json::text).unwrap_or_default();
            ensure!(
                err.contains(&m),
                "JSON error does not name the socket:\n{out}"
            );
        } else {
            ensure!(
                out.stdout.trim().is_empty(),
                "printed output on failure:\n{out}"
            );
        }
    }
    // A file that is not a socket.
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, b"not a socket")?;
    let p = plain.display().to_string();
    let out = run_launcher(
        &["ctl".into(), "--control".into(), p.clone(), "list".into()],
        Duration::from_secs(30),
    )?;
    ensure!(
        out.code == 1 && out.stderr.contains(&p),
        "ctl on a plain file:\n{out}"
    );
    Ok(())
}

#[test]
fn ctl_for_an_unknown_device_fails_with_a_reason() -> Result<()> {
    // No guest needed: the supervisor answers for its devices whether or not a VMM is there.
    let rig = SupervisedBlock::new(16 << 20, None, &[])?;
    for cmd in [
        &["status", "nosuchdev"][..],
        &["sleep", "nosuchdev"],
        &["wake", "nosuchdev"],
        &["restart", "nosuchdev"],
    ] {
        let out = rig.ctl.run(cmd)?;
        ensure!(out.code == 1, "want exit 1:\n{out}");
        ensure!(
            out.stderr.contains("nosuchdev"),
            "the reason does not name the device:\n{out}"
        );
    }
    // The supervisor and its device are unaffected.
    let st = rig.status()?;
    ensure!(st.state == "running" && st.pid.is_some(), "{st:?}");
    rig.launcher.terminate()?;
    Ok(())
}
