//! The process model and sandbox options as the operator sees them: the device runs in its
//! own process, `--sandbox none` warns loudly, bad sandbox options are refused before anything
//! starts, and a device that dies is reported with how it died (and restarted).

mod common;

use std::time::Duration;

use common::{assert_fails, launcher, output, sparse_image, start_block, Running, READY_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The device pid from the launcher's "device process started ... pid=N" line.
fn device_pid(r: &mut Running) -> Pid {
    let line = r
        .find_line("device process started", READY_TIMEOUT)
        .expect("the launcher logs the device's start");
    let pid = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    Pid::from_raw(pid)
}

#[test]
fn sandbox_none_warns_on_every_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(
        start_block(&socket, &image, &["--sandbox", "none"]),
        &socket,
    );
    let stderr = r.stop_with(Signal::SIGTERM);
    // Once from the launcher, once from the device.
    assert_eq!(
        stderr.matches("WITHOUT A JAIL").count(),
        2,
        "the warning is not loud enough:\n{stderr}"
    );
    assert!(stderr.contains("debugging only"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn the_jailed_default_does_not_warn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(start_block(&socket, &image, &[]), &socket);
    let stderr = r.stop_with(Signal::SIGTERM);
    assert!(stderr.contains("jailed"), "{stderr}");
    assert!(!stderr.contains("WITHOUT A JAIL"), "{stderr}");
}

#[test]
fn bad_sandbox_options_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    for (args, needle) in [
        (&["--sandbox", "chroot"][..], "chroot"),
        (&["--jail-user", "nobody"][..], "nobody"),
        (&["--jail-user", "1:2:3"][..], "2:3"),
    ] {
        let out = output(start_block(&socket, &image, args));
        assert_fails(&out, 2, &[needle]);
        assert!(!socket.exists());
    }
}

#[test]
fn a_policy_directory_without_the_policy_fails_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let empty = dir.path().join("policies");
    std::fs::create_dir(&empty).expect("mkdir");
    let policy_dir = empty.display().to_string();
    let out = output(start_block(
        &socket,
        &image,
        &["--seccomp-policy-dir", &policy_dir],
    ));
    let stderr = assert_fails(&out, 1, &["seccomp policy"]);
    assert!(!stderr.contains("device process started"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn a_device_killed_from_outside_is_reported_and_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(start_block(&socket, &image, &[]), &socket);
    let pid = device_pid(&mut r);
    // As pid 1 of its namespace the device ignores every other signal from outside.
    kill(pid, Signal::SIGKILL).expect("kill the device");
    let line = r
        .wait_for(
            &format!("device block (pid {pid}) was killed by SIGKILL"),
            READY_TIMEOUT,
        )
        .expect("the death is reported");
    assert!(line.contains("block0"), "{line}");
    // A new process on the same socket.
    r.wait_for("restarting after a crash", READY_TIMEOUT)
        .expect("a restart is scheduled");
    r.wait_for(&format!("listening on {}", socket.display()), READY_TIMEOUT)
        .expect("the new device process is ready");
    let stderr = r.stop_with(Signal::SIGTERM);
    assert!(!socket.exists(), "socket left behind:\n{stderr}");
}

#[test]
fn the_device_entry_point_refuses_to_run_without_its_fds() {
    let device = |extra: &[&str]| {
        let mut c = launcher();
        c.args([
            "__device",
            "block",
            "--fd-image",
            "3",
            "--fd-socket",
            "4",
            "--fd-control",
            "5",
            "--image-name",
            "/nonexistent",
        ])
        .args(extra);
        output(c)
    };
    assert_fails(&device(&[]), 1, &["needs --fd-seccomp"]);
    assert_fails(
        &device(&["--fd-seccomp", "6"]),
        1,
        &["fd 6 (the seccomp filters) is not open"],
    );
    assert_fails(
        &device(&["--sandbox", "none"]),
        1,
        &["fd 3 (the image) is not open"],
    );
}

#[test]
fn the_device_dies_with_the_launcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(start_block(&socket, &image, &[]), &socket);
    let device = device_pid(&mut r);
    r.signal(Signal::SIGKILL);
    r.wait_exit(Duration::from_secs(10));
    // Its parent-death signal is SIGKILL; the zombie is reaped by init.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kill(device, None).is_ok() {
        let state = std::fs::read_to_string(format!("/proc/{device}/stat")).unwrap_or_default();
        if state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the device outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
