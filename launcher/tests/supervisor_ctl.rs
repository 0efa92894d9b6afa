//! `launcher ctl` against a running launcher: list and status as text and JSON, stop/start/
//! restart change the state and the pid, sleep/snapshot/restore/wake, resize, and its exit
//! statuses (1 with the reason on a refused request, 2 on a usage error).

mod common;

use std::time::Duration;

use common::{ctl, ctl_json, ctl_ok, start_supervised, wait_status};
use nix::sys::signal::Signal;

#[test]
fn list_and_status_as_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, socket, control) = start_supervised(dir.path(), "disk0", &[]);

    let text = ctl_ok(&control, &["list"]);
    assert!(text.contains("disk0") && text.contains("running"), "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");
    let list = ctl_json(&control, &["list"]);
    assert_eq!(list["devices"][0]["name"], "disk0");
    assert_eq!(list["devices"][0]["state"], "running");

    let text = ctl_ok(&control, &["status", "disk0"]);
    for needle in [
        "state:        running",
        "pid:",
        "uptime:",
        "restarts:     0",
        "front-end:    not connected",
        "capacity_bytes",
        "queue 0:",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }
    let st = ctl_json(&control, &["status", "disk0"]);
    assert!(st["pid"].as_i64().is_some_and(|p| p > 0), "{st}");
    assert_eq!(st["restarts"], 0);
    assert_eq!(st["frontend_connected"], false);
    assert_eq!(st["fields"]["capacity_bytes"], (4u64 << 20).to_string());
    assert!(
        st["queues"].as_array().is_some_and(|q| q.len() == 1),
        "{st}"
    );
    // `--json` is accepted after the command too, and `status` alone lists every device.
    let out = ctl_ok(&control, &["status", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(all["devices"][0]["name"], "disk0");
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn stop_start_and_restart_change_state_and_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, socket, control) = start_supervised(dir.path(), "d", &[]);
    let pid0 = ctl_json(&control, &["status", "d"])["pid"].clone();

    ctl_ok(&control, &["stop", "d"]);
    let st = ctl_json(&control, &["status", "d"]);
    assert_eq!(st["state"], "stopped");
    assert!(st["pid"].is_null(), "{st}");
    assert!(socket.exists(), "a stopped device keeps its socket");
    let out = ctl(&control, &["sleep", "d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stopped"),
        "{out:?}"
    );

    ctl_ok(&control, &["start", "d"]);
    let st = ctl_json(&control, &["status", "d"]);
    assert_eq!(st["state"], "running");
    let pid1 = st["pid"].clone();
    assert_ne!(pid1, pid0);
    let out = ctl(&control, &["start", "d"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "starting a running device is refused"
    );

    ctl_ok(&control, &["restart", "d"]);
    let st = ctl_json(&control, &["status", "d"]);
    assert_eq!(st["state"], "running");
    assert_ne!(st["pid"], pid1);
    assert_eq!(st["restarts"], 2);
    assert_eq!(st["crashes"], 0);
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn sleep_snapshot_restore_wake_and_resize() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, _, control) = start_supervised(dir.path(), "d", &[]);
    let snap = dir.path().join("state.bin");
    let snap_s = snap.display().to_string();

    // Snapshots need a sleeping device.
    let out = ctl(&control, &["snapshot", "d", "--out", &snap_s]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("asleep"),
        "{out:?}"
    );

    ctl_ok(&control, &["sleep", "d"]);
    assert_eq!(ctl_json(&control, &["status", "d"])["state"], "asleep");
    assert_eq!(ctl_json(&control, &["status", "d"])["asleep"], true);
    ctl_ok(&control, &["snapshot", "d", "--out", &snap_s]);
    assert!(std::fs::metadata(&snap).expect("snapshot written").len() > 0);

    // Into a fresh process: restart, sleep, restore, wake.
    ctl_ok(&control, &["restart", "d"]);
    ctl_ok(&control, &["sleep", "d"]);
    ctl_ok(&control, &["restore", "d", "--in", &snap_s]);
    ctl_ok(&control, &["wake", "d"]);
    assert_eq!(ctl_json(&control, &["status", "d"])["state"], "running");

    // A corrupt snapshot is refused with a reason.
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, b"not a snapshot").expect("write");
    ctl_ok(&control, &["sleep", "d"]);
    let out = ctl(
        &control,
        &["restore", "d", "--in", &bad.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.is_empty());
    ctl_ok(&control, &["wake", "d"]);

    // Resize grows the image and the device's capacity.
    ctl_ok(&control, &["resize", "d", "8M"]);
    let st = ctl_json(&control, &["status", "d"]);
    assert_eq!(st["fields"]["capacity_bytes"], (8u64 << 20).to_string());
    let img = dir.path().join("d.img");
    assert_eq!(std::fs::metadata(img).expect("image").len(), 8 << 20);
    let out = ctl(&control, &["resize", "d", "1M"]);
    assert_eq!(out.status.code(), Some(1), "shrinking is refused");
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn errors_and_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, _, control) = start_supervised(dir.path(), "d", &[]);
    let out = ctl(&control, &["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nope\""),
        "{out:?}"
    );
    let out = ctl(&control, &["--json", "wake", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("nope")),
        "{v}"
    );
    assert_eq!(
        ctl(&control, &["resize", "d", "12Q"]).status.code(),
        Some(2)
    );
    assert_eq!(ctl(&control, &["frobnicate"]).status.code(), Some(2));
    assert_eq!(ctl(&control, &["snapshot", "d"]).status.code(), Some(2));
    // No launcher behind the socket: 1, naming the path.
    let out = ctl(&dir.path().join("none.sock"), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.sock"));
    // Status stays truthful while waiting.
    wait_status(&control, "d", Duration::from_secs(5), |s| {
        s["state"] == "running"
    });
    r.stop_with(Signal::SIGTERM);
}

#[test]
fn a_reader_that_closes_early_ends_ctl_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut r, _, control) = start_supervised(dir.path(), "disk0", &[]);
    for args in [
        &["status", "disk0"][..],
        &["--json", "status", "disk0"],
        &["list"],
    ] {
        // stdout is a pipe whose reader is already gone: the first write hits EPIPE.
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        drop(rd);
        let out = common::launcher()
            .arg("ctl")
            .arg("--control")
            .arg(&control)
            .args(args)
            .stdout(std::process::Stdio::from(wr))
            .output()
            .expect("run ctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            "{args:?}: {:?}; stderr:\n{stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "{args:?}: stderr:\n{stderr}");
    }
    // As typed: `launcher ctl status disk0 | head -1`.
    let cmd = format!(
        "{} ctl --control {} status disk0 | head -1",
        env!("CARGO_BIN_EXE_launcher"),
        control.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env_remove("RUST_LOG")
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), "disk0 (block)", "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    r.stop_with(Signal::SIGTERM);
}
