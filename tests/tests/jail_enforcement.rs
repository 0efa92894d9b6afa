//! Enforcement, for every device kind: a jailed device that makes a forbidden system call
//! dies by SIGSYS, the launcher says which device and why and exits 1, and other devices keep
//! serving. With `--seccomp-log` the same call is logged and the device lives on. Under one
//! supervisor a device killed so is started again and its neighbours keep their processes.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use vu_tests::kinds::{self as k, kinds, minimal};
use vu_tests::launcher::{Launcher, Spawned};

#[test]
fn a_forbidden_syscall_kills_the_device_and_the_launcher_says_why() -> Result<()> {
    for kind in kinds() {
        let dir = tempfile::tempdir()?;
        // A healthy device next to the one that will die.
        let healthy_socket = dir.path().join("healthy.sock");
        let healthy = minimal(kind, dir.path(), "healthy")?;
        let healthy = k::spawn(
            kind,
            &healthy.start_args(&healthy_socket, &[]),
            &healthy_socket,
        )?;

        let socket = dir.path().join("doomed.sock");
        let doomed = minimal(kind, dir.path(), "doomed")?;
        let args = doomed.start_args(&socket, &["--test-forbidden-syscall"]);
        let (status, stderr) = match k::try_spawn(kind, &args, &socket)? {
            Spawned::Exited { status, stderr } => (status, stderr),
            Spawned::Ready(_) => bail!("{kind}: the device survived a forbidden system call"),
        };
        ensure!(
            status.code() == Some(1),
            "{kind}: launcher exit status {status}:\n{stderr}"
        );
        ensure!(
            stderr.contains("FORBIDDEN-SYSCALL: calling ptrace"),
            "{kind}: the trigger did not run:\n{stderr}"
        );
        ensure!(
            !stderr.contains("FORBIDDEN-SYSCALL: ptrace returned"),
            "{kind}: the forbidden call returned:\n{stderr}"
        );
        let report = stderr
            .lines()
            .find(|l| l.contains("launcher: error:"))
            .unwrap_or_default();
        for needle in [
            format!("device {kind} (pid"),
            "SIGSYS".into(),
            "seccomp violation".into(),
        ] {
            ensure!(
                report.contains(&needle),
                "{kind}: report lacks {needle:?}:\n{stderr}"
            );
        }
        ensure!(
            !socket.exists(),
            "{kind}: the dead device's socket was left behind"
        );

        // The other device is untouched: it accepts a front-end and stops cleanly.
        let _frontend = UnixStream::connect(&healthy_socket)?;
        healthy.wait_for_line("front-end connected", Duration::from_secs(30))?;
        let st = healthy.terminate()?;
        ensure!(
            st.success(),
            "{kind}: the healthy launcher exited with {st}"
        );
    }
    Ok(())
}

#[test]
fn seccomp_log_mode_logs_instead_of_killing() -> Result<()> {
    for kind in kinds() {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("dev.sock");
        let m = minimal(kind, dir.path(), "dev")?;
        let args = m.start_args(&socket, &["--seccomp-log", "--test-forbidden-syscall"]);
        let launcher = match k::try_spawn(kind, &args, &socket)? {
            Spawned::Ready(l) => l,
            Spawned::Exited { status, stderr } => {
                bail!("{kind}: the device died in log mode ({status}):\n{stderr}")
            }
        };
        let log = launcher.stderr();
        ensure!(
            log.contains("FORBIDDEN-SYSCALL: ptrace returned"),
            "{kind}: the call did not go through:\n{log}"
        );
        ensure!(
            log.contains("--seccomp-log"),
            "{kind}: no warning about log mode:\n{log}"
        );
        let st = launcher.terminate()?;
        ensure!(st.success(), "{kind}: launcher exited with {st}");
    }
    Ok(())
}

/// Under one supervisor, a calm and a doomed device of every kind: each doomed device makes
/// a forbidden call while it runs, dies by SIGSYS, the supervisor names it and the reason and
/// starts a new one; the others keep their processes and keep serving.
#[test]
fn a_seccomp_kill_under_the_supervisor_spares_the_other_devices() -> Result<()> {
    use vu_tests::supervisor::{Ctl, DevStatus};
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("devices.toml");
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let mut toml = String::new();
    let mut names = Vec::new();
    for kind in kinds() {
        for role in ["calm", "doomed"] {
            let name = format!("{role}-{kind}");
            toml.push_str(&minimal(kind, dir.path(), &name)?.toml_device(&name, &sock(&name)));
            names.push(name);
        }
    }
    std::fs::write(&config, toml)?;
    let args = [
        "start".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    // Every device under one launcher: inside the kinds' namespace if one needs it.
    let launcher = match kinds().into_iter().find(|k| k::needs_netns(k)) {
        Some(kind) => k::spawn(kind, &args, &sock(&names[0]))?,
        None => Launcher::spawn(&args, &sock(&names[0]))?,
    };
    let ctl = Ctl::new(launcher.control());
    let timeout = Duration::from_secs(60);
    let mut pids = std::collections::BTreeMap::new();
    for n in &names {
        let st = ctl.wait_status(n, "running", timeout, |s| {
            s.pid.is_some() && s.state == "running"
        })?;
        pids.insert(n.clone(), st.pid);
    }
    for kind in kinds() {
        let doomed = format!("doomed-{kind}");
        // The device dies while answering, so the reply may be an error: what matters is
        // what the supervisor does next.
        ctl.run(&["test-trigger", &doomed, "forbidden-syscall"])?;
        let respawned = ctl.wait_status(&doomed, "respawned", timeout, |s: &DevStatus| {
            s.pid.is_some() && s.pid != pids[&doomed] && s.state == "running"
        })?;
        ensure!(
            respawned.restarts == Some(1),
            "{doomed}: restarts {respawned:?}"
        );
        ensure!(
            respawned
                .last_exit
                .as_deref()
                .is_some_and(|e| e.contains("SIGSYS")),
            "{doomed}: last exit does not say SIGSYS: {respawned:?}"
        );
        pids.insert(doomed, respawned.pid);
    }
    let lines = launcher.count_lines("seccomp violation");
    ensure!(
        lines >= kinds().len(),
        "{lines} seccomp violations reported for {} kinds:\n{}",
        kinds().len(),
        launcher.stderr()
    );
    for kind in kinds() {
        let calm = format!("calm-{kind}");
        let after = ctl.status(&calm)?;
        ensure!(
            after.pid == pids[&calm] && after.state == "running",
            "{calm} was disturbed: {after:?}"
        );
        // The neighbour still accepts a front-end.
        UnixStream::connect(sock(&calm))?;
    }
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
