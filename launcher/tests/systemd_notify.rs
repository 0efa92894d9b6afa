//! sd_notify for `Type=notify` units, checked with a NOTIFY_SOCKET listener that speaks the
//! real datagram protocol and reads the sender's credentials: READY=1 once every device
//! serves (and only then), STATUS= lines as devices change, STOPPING=1 at shutdown, WATCHDOG=1
//! pings at half of WATCHDOG_USEC (none when WATCHDOG_PID names another process).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::notify::NotifyListener;
use common::{ctl_json, launcher, sparse_image, start_block, Running, READY_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn notified(mut cmd: Command, n: &NotifyListener) -> Command {
    cmd.env("NOTIFY_SOCKET", n.path())
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    cmd
}

#[test]
fn ready_status_and_stopping_from_the_launcher_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::spawn(notified(start_block(&socket, &image, &[]), &n));
    let ready = n
        .wait_for("READY", |v| v == "1", READY_TIMEOUT)
        .expect("READY=1");
    // Sent by the launcher (the unit's main process), once the device serves its socket.
    assert_eq!(ready.pid, Some(r.pid().as_raw()), "{ready:?}");
    assert_eq!(ready.get("STATUS"), Some("serving 1 device"), "{ready:?}");
    r.find_line("listening on", READY_TIMEOUT)
        .expect("ready means listening");
    std::os::unix::net::UnixStream::connect(&socket).expect("serving");
    assert!(
        n.seen[..n.seen.len() - 1]
            .iter()
            .all(|m| m.get("READY").is_none()),
        "READY=1 once: {:?}",
        n.seen
    );

    r.signal(Signal::SIGTERM);
    let stopping = n
        .wait_for("STOPPING", |v| v == "1", READY_TIMEOUT)
        .expect("STOPPING=1");
    assert_eq!(stopping.pid, Some(r.pid().as_raw()));
    assert!(
        stopping
            .get("STATUS")
            .is_some_and(|s| s.starts_with("stopping")),
        "{stopping:?}"
    );
    n.wait_for("STATUS", |v| v == "stopped", READY_TIMEOUT)
        .expect("STATUS=stopped");
    assert!(r.wait_exit(READY_TIMEOUT).success());
}

/// Two devices: READY=1 only once both serve; a device killed and restarted shows in STATUS=.
#[test]
fn ready_waits_for_every_device_and_status_follows_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let d = dir.path().display();
    let a = sparse_image(dir.path(), "a.img", 1 << 20);
    let b = sparse_image(dir.path(), "b.img", 1 << 20);
    let control = dir.path().join("control.sock");
    let cfg = dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "control = \"{}\"\n\
             [[device]]\nname = \"disk0\"\nkind = \"block\"\nsocket = \"{d}/a.sock\"\nfile = \"{}\"\n\
             [[device]]\nname = \"disk1\"\nkind = \"block\"\nsocket = \"{d}/b.sock\"\nfile = \"{}\"\n",
            control.display(),
            a.display(),
            b.display()
        ),
    )
    .expect("config");
    let mut cmd = launcher();
    cmd.args(["start", "--config"]).arg(&cfg);
    let mut r = Running::spawn(notified(cmd, &n));
    let ready = n
        .wait_for("READY", |v| v == "1", READY_TIMEOUT)
        .expect("READY=1");
    assert_eq!(ready.get("STATUS"), Some("serving 2 devices"), "{ready:?}");
    // Both were ready before READY=1 was sent.
    for name in ["disk0", "disk1"] {
        let st = ctl_json(&control, &["status", name]);
        assert_eq!(st["state"], "running", "{st}");
    }
    for m in &n.seen[..n.seen.len() - 1] {
        if let Some(s) = m.get("STATUS") {
            assert!(s.starts_with("starting"), "before READY: {s}");
        }
    }

    // A crash: the status says so, then that the device came back.
    let pid = ctl_json(&control, &["status", "disk1"])["pid"]
        .as_i64()
        .expect("pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the device");
    let down = n
        .wait_for("STATUS", |s| s.contains("disk1 restarting"), READY_TIMEOUT)
        .expect("STATUS= names the restarting device");
    assert!(
        down.get("STATUS")
            .is_some_and(|s| s.starts_with("serving 1 of 2 devices") && s.contains("SIGKILL")),
        "{down:?}"
    );
    n.wait_for(
        "STATUS",
        |s| s.starts_with("serving 2 devices; disk1 restarted 1 time"),
        READY_TIMEOUT,
    )
    .expect("STATUS= says it is back");
    assert_eq!(
        n.seen.iter().filter(|m| m.get("READY").is_some()).count(),
        1,
        "READY=1 is sent once: {:?}",
        n.seen
    );
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut cmd = notified(start_block(&socket, &image, &[]), &n);
    // 400 ms: a ping every 200 ms.
    cmd.env("WATCHDOG_USEC", "400000");
    let mut r = Running::spawn(cmd);
    n.wait_for("READY", |v| v == "1", READY_TIMEOUT)
        .expect("READY=1");
    let window = Duration::from_secs(2);
    let start = Instant::now();
    let pings: Vec<_> = n
        .drain(window)
        .into_iter()
        .filter(|m| m.get("WATCHDOG") == Some("1"))
        .collect();
    let elapsed = start.elapsed();
    // About ten in two seconds; at least a few even on a loaded machine, never a flood.
    assert!(
        (4..=14).contains(&pings.len()),
        "{} pings in {elapsed:?}",
        pings.len()
    );
    assert!(pings.iter().all(|m| m.pid == Some(r.pid().as_raw())));
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn no_watchdog_pings_for_another_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut cmd = notified(start_block(&socket, &image, &[]), &n);
    cmd.env("WATCHDOG_USEC", "200000").env("WATCHDOG_PID", "1");
    let mut r = Running::spawn(cmd);
    n.wait_for("READY", |v| v == "1", READY_TIMEOUT)
        .expect("READY=1");
    let pings = n
        .drain(Duration::from_millis(800))
        .into_iter()
        .filter(|m| m.get("WATCHDOG").is_some())
        .count();
    assert_eq!(pings, 0, "{:?}", n.seen);
    assert!(n.seen.iter().all(|m| m.get("WATCHDOG").is_none()));
    r.stop_with(Signal::SIGTERM);
}

/// A device that fails to start: no READY=1, and the launcher exits 1.
#[test]
fn a_failed_start_is_never_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let socket = dir.path().join("blk.sock");
    let cmd = notified(start_block(&socket, Path::new("/nonexistent.img"), &[]), &n);
    let mut r = Running::spawn(cmd);
    let status = r.wait_exit(READY_TIMEOUT);
    assert_eq!(status.code(), Some(1));
    n.drain(Duration::from_millis(100));
    assert!(
        n.seen.iter().all(|m| m.get("READY").is_none()),
        "{:?}",
        n.seen
    );
}
