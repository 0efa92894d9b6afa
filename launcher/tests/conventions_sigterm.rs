//! SIGTERM ends the launcher quickly and cleanly (vhost-user spec: "must end as quickly and
//! cleanly as possible"; managers send SIGKILL a few seconds later): idle, with a front-end
//! connected, and as the `vu-vhost-user-block` program. The bound is generous for a loaded
//! two-core machine; the time taken is printed.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::inherit::{inherit_fd, program};
use common::{sparse_image, start_block, Running, READY_TIMEOUT};
use nix::sys::signal::Signal;

/// What "quickly" means here: well under the few seconds a manager waits before SIGKILL.
const QUICK: Duration = Duration::from_secs(2);

fn time_sigterm(r: &mut Running) -> Duration {
    let t = Instant::now();
    r.signal(Signal::SIGTERM);
    let status = r.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    let stderr = r.drain_stderr();
    assert!(status.success(), "{status:?}; stderr:\n{stderr}");
    eprintln!("SIGTERM to exit: {took:?}");
    took
}

#[test]
fn idle_launcher_exits_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(start_block(&socket, &image, &[]), &socket);
    let took = time_sigterm(&mut r);
    assert!(took < QUICK, "took {took:?}");
}

#[test]
fn launcher_with_a_front_end_exits_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut r = Running::start(
        start_block(&socket, &image, &["--num-queues", "4"]),
        &socket,
    );
    let _fe = UnixStream::connect(&socket).expect("connect");
    r.wait_for("front-end connected", READY_TIMEOUT)
        .expect("accepted");
    let took = time_sigterm(&mut r);
    assert!(took < QUICK, "took {took:?}");
}

#[test]
fn the_program_exits_quickly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let mut cmd = Command::new(program(dir.path(), "block"));
    cmd.env_remove("RUST_LOG")
        .arg("--fd=5")
        .arg(format!("--blk-file={}", image.display()));
    inherit_fd(&mut cmd, listener.as_raw_fd(), 5);
    let mut r = Running::start(cmd, &socket);
    let took = time_sigterm(&mut r);
    assert!(took < QUICK, "took {took:?}");
}
