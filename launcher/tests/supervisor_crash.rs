//! Crashes: a device that dies is reaped, reported with how it died, and started again on the
//! same socket with a new pid (`restarts` and `crashes` count it). A device that was ready is
//! started again however often it dies; one whose processes die before they are ready ends in
//! `failed` with the reason in its status. Test triggers need a debug build.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{ctl, ctl_json, ctl_ok, start_supervised, wait_status, READY_TIMEOUT};
use nix::sys::signal::Signal;

fn debug_build() -> bool {
    cfg!(debug_assertions)
}

#[test]
fn a_crashed_device_is_respawned_with_a_new_pid() {
    if !debug_build() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, socket, control) = start_supervised(dir.path(), "d", &[]);
    let pid0 = ctl_json(&control, &["status", "d"])["pid"].clone();

    ctl_ok(&control, &["test-trigger", "d", "crash"]);
    let st = wait_status(&control, "d", READY_TIMEOUT, |s| {
        s["state"] == "running" && s["pid"] != pid0
    });
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["crashes"], 1, "{st}");
    assert!(
        st["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("killed by")),
        "{st}"
    );
    r.find_line(
        &format!("device block (pid {pid0}) was killed by"),
        READY_TIMEOUT,
    )
    .expect("the death is logged");

    // An exit status is reported as such, and the new process serves the same socket.
    let pid1 = st["pid"].clone();
    ctl_ok(&control, &["test-trigger", "d", "exit"]);
    let st = wait_status(&control, "d", READY_TIMEOUT, |s| {
        s["state"] == "running" && s["pid"] != pid1
    });
    assert_eq!(st["last_exit"], "exited with status 3", "{st}");
    UnixStream::connect(&socket).expect("the same socket serves");
    r.wait_for("front-end connected", READY_TIMEOUT)
        .expect("the new process accepts");

    // A seccomp violation is named.
    let pid2 = st["pid"].clone();
    ctl_ok(&control, &["test-trigger", "d", "forbidden-syscall"]);
    let st = wait_status(&control, "d", READY_TIMEOUT, |s| {
        s["state"] == "running" && s["pid"] != pid2
    });
    assert!(
        st["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGSYS") && e.contains("seccomp violation")),
        "{st}"
    );
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn a_ready_device_is_always_respawned() {
    if !debug_build() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Far more crashes than --max-crashes: a device that was ready is never given up on.
    let (mut r, _, control) = start_supervised(dir.path(), "d", &["--max-crashes", "1"]);
    for round in 1..=4u64 {
        let st = wait_status(&control, "d", READY_TIMEOUT, |s| s["state"] == "running");
        let pid = st["pid"].clone();
        ctl_ok(&control, &["test-trigger", "d", "exit"]);
        let st = wait_status(&control, "d", READY_TIMEOUT, |s| {
            s["state"] == "running" && s["pid"] != pid
        });
        assert_eq!(st["crashes"], round, "{st}");
        assert_eq!(st["failed_starts"], 0, "{st}");
        assert_eq!(st["last_exit"], "exited with status 3", "{st}");
    }
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn processes_that_die_before_ready_end_in_failed_with_the_reason() {
    if !debug_build() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, socket, control) = start_supervised(dir.path(), "d", &["--max-crashes", "2"]);
    // The next three processes die before they are ready, as with a configuration the device
    // cannot start with; the third in a row is one too many.
    ctl_ok(&control, &["test-trigger", "d", "fail-starts", "3"]);
    ctl_ok(&control, &["test-trigger", "d", "exit"]);
    let st = wait_status(&control, "d", Duration::from_secs(20), |s| {
        s["state"] == "failed"
    });
    let failure = st["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("3 processes in a row died before they were ready")
            && failure.contains("killed by SIGKILL"),
        "{st}"
    );
    assert_eq!(st["failed_starts"], 3, "{st}");
    assert_eq!(st["crashes"], 4, "{st}");
    assert!(st["pid"].is_null());
    let text = ctl_ok(&control, &["status", "d"]);
    assert!(
        text.contains("failure:") && text.contains("failed starts: 3 in a row"),
        "{text}"
    );
    let out = ctl(&control, &["sleep", "d"]);
    assert_eq!(out.status.code(), Some(1));
    // It stays failed: no process appears on its own.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ctl_json(&control, &["status", "d"])["state"], "failed");
    // The operator can try again; the socket was kept.
    assert!(socket.exists());
    ctl_ok(&control, &["start", "d"]);
    let st = ctl_json(&control, &["status", "d"]);
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["failed_starts"], 0, "{st}");
    r.stop_with(Signal::SIGTERM);
}
