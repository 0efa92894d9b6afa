//! Enforcement: a jailed device that makes a forbidden system call dies by SIGSYS, the
//! launcher says which device and why and exits 1, and other devices keep serving. With
//! `--seccomp-log` the same call is logged and the device lives on.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use vu_tests::launcher::{Launcher, Spawned};

fn image(dir: &Path, name: &str) -> Result<PathBuf> {
    let image = dir.join(name);
    std::fs::File::create(&image)?.set_len(16 << 20)?;
    Ok(image)
}

fn args(socket: &Path, image: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "start".into(),
        "block".into(),
        "--socket".into(),
        socket.display().to_string(),
        "--file".into(),
        image.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn a_forbidden_syscall_kills_the_device_and_the_launcher_says_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A healthy device next to the one that will die.
    let healthy_socket = dir.path().join("healthy.sock");
    let healthy = Launcher::start_block(&healthy_socket, &image(dir.path(), "a.img")?, &[])?;

    let socket = dir.path().join("doomed.sock");
    let doomed = image(dir.path(), "b.img")?;
    let (status, stderr) = match Launcher::try_spawn(
        &args(&socket, &doomed, &["--test-forbidden-syscall"]),
        &socket,
    )? {
        Spawned::Exited { status, stderr } => (status, stderr),
        Spawned::Ready(_) => bail!("the device survived a forbidden system call"),
    };
    ensure!(
        status.code() == Some(1),
        "launcher exit status {status}:\n{stderr}"
    );
    ensure!(
        stderr.contains("FORBIDDEN-SYSCALL: calling ptrace"),
        "the trigger did not run:\n{stderr}"
    );
    ensure!(
        !stderr.contains("FORBIDDEN-SYSCALL: ptrace returned"),
        "the forbidden call returned:\n{stderr}"
    );
    let report = stderr
        .lines()
        .find(|l| l.contains("launcher: error:"))
        .unwrap_or_default();
    for needle in ["device block (pid", "SIGSYS", "seccomp violation"] {
        ensure!(
            report.contains(needle),
            "report lacks {needle:?}:\n{stderr}"
        );
    }
    ensure!(!socket.exists(), "the dead device's socket was left behind");

    // The other device is untouched: it accepts a front-end and stops cleanly.
    let _frontend = UnixStream::connect(&healthy_socket)?;
    healthy.wait_for_line("front-end connected", Duration::from_secs(30))?;
    let st = healthy.terminate()?;
    ensure!(st.success(), "the healthy launcher exited with {st}");
    Ok(())
}

#[test]
fn seccomp_log_mode_logs_instead_of_killing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("blk.sock");
    let image = image(dir.path(), "disk.img")?;
    let launcher = match Launcher::try_spawn(
        &args(
            &socket,
            &image,
            &["--seccomp-log", "--test-forbidden-syscall"],
        ),
        &socket,
    )? {
        Spawned::Ready(l) => l,
        Spawned::Exited { status, stderr } => {
            bail!("the device died in log mode ({status}):\n{stderr}")
        }
    };
    let log = launcher.stderr();
    ensure!(
        log.contains("FORBIDDEN-SYSCALL: ptrace returned"),
        "the call did not go through:\n{log}"
    );
    ensure!(
        log.contains("--seccomp-log"),
        "no warning about log mode:\n{log}"
    );
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// Under one supervisor: a running device that makes a forbidden call dies by SIGSYS, the
/// supervisor names it and the reason and starts a new one; its neighbour keeps its process
/// and keeps serving.
#[test]
fn a_seccomp_kill_under_the_supervisor_spares_the_other_device() -> Result<()> {
    use vu_tests::supervisor::{Ctl, DevStatus};
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("devices.toml");
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    std::fs::write(
        &config,
        format!(
            "[[device]]\nname = \"calm\"\nkind = \"block\"\nsocket = \"{}\"\nfile = \"{}\"\n\n\
             [[device]]\nname = \"doomed\"\nkind = \"block\"\nsocket = \"{}\"\nfile = \"{}\"\n",
            sock("calm").display(),
            image(dir.path(), "calm.img")?.display(),
            sock("doomed").display(),
            image(dir.path(), "doomed.img")?.display(),
        ),
    )?;
    let launcher = Launcher::spawn(
        &[
            "start".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &sock("calm"),
    )?;
    let ctl = Ctl::new(launcher.control());
    let timeout = Duration::from_secs(60);
    let calm = ctl.wait_status("calm", "running", timeout, |s| {
        s.pid.is_some() && s.state == "running"
    })?;
    let doomed = ctl.wait_status("doomed", "running", timeout, |s| {
        s.pid.is_some() && s.state == "running"
    })?;
    // The device dies while answering, so the reply may be an error: what matters is what
    // the supervisor does next.
    ctl.run(&["test-trigger", "doomed", "forbidden-syscall"])?;
    let line = launcher.wait_for_line("seccomp violation", timeout)?;
    ensure!(
        line.contains("doomed") && line.contains("SIGSYS"),
        "report does not name the device and signal: {line}"
    );
    let respawned = ctl.wait_status("doomed", "respawned", timeout, |s: &DevStatus| {
        s.pid.is_some() && s.pid != doomed.pid && s.state == "running"
    })?;
    ensure!(
        respawned.pid != doomed.pid,
        "the doomed device kept its process"
    );
    let after = ctl.status("calm")?;
    ensure!(
        after.pid == calm.pid && after.state == "running",
        "the other device was disturbed: {after:?}"
    );
    // The neighbour still accepts a front-end.
    UnixStream::connect(sock("calm"))?;
    let st = launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}
