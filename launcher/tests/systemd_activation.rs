//! Socket activation, with systemd's own `systemd-socket-activate` (it binds the sockets,
//! waits for a first connection, then execs the launcher in its place with LISTEN_FDS,
//! LISTEN_PID and LISTEN_FDNAMES, as systemd does for a `.socket` unit): a lone device with
//! neither --socket nor --fd serves the passed socket, starting with the connection that
//! activated it; in a config file each device names the passed socket it serves
//! (`socket_name`); a passed socket no device serves, or a name no socket has, is a clear
//! error; the launcher leaves the passed sockets' files alone.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::notify::NotifyListener;
use common::{
    assert_fails, ctl_json, output, sparse_image, unique_control_path, Running, READY_TIMEOUT,
};
use nix::sys::signal::Signal;

const ACTIVATE: &str = "systemd-socket-activate";

/// `systemd-socket-activate -l SOCKET... [--fdname=NAMES] -E ... launcher ARGS...`.
fn activate(
    sockets: &[&Path],
    fdnames: Option<&str>,
    env: &[(&str, &Path)],
    args: &[&str],
) -> Command {
    let mut c = Command::new(ACTIVATE);
    for s in sockets {
        c.arg(format!("--listen={}", s.display()));
    }
    if let Some(n) = fdnames {
        c.arg(format!("--fdname={n}"));
    }
    for (k, v) in env {
        c.arg(format!("--setenv={k}={}", v.display()));
    }
    c.arg(env!("CARGO_BIN_EXE_launcher")).args(args);
    c
}

/// Starts `cmd` and makes the first connection (to `socket`), which makes it exec the
/// launcher. Returns the running process (the launcher, once exec'd) and that connection.
fn start_and_connect(cmd: Command, socket: &Path) -> (Running, UnixStream) {
    let mut r = Running::spawn(cmd);
    if let Err(e) = r.wait_for("Listening on", READY_TIMEOUT) {
        panic!("{ACTIVATE} did not listen (is the systemd package installed?): {e}");
    }
    let s = UnixStream::connect(socket).expect("connect to the passed socket");
    (r, s)
}

/// GET_FEATURES on a connected front-end socket; returns the features.
fn get_features(s: &mut UnixStream) -> u64 {
    s.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    let mut msg = Vec::new();
    for v in [1u32, 1, 0] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&msg).expect("send GET_FEATURES");
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(reply[..4], 1u32.to_le_bytes(), "a reply to GET_FEATURES");
    u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"))
}

#[test]
fn a_lone_device_serves_the_passed_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = NotifyListener::new(dir.path());
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("activated.sock");
    let control = unique_control_path();
    let notify = n.path().to_path_buf();
    let cmd = activate(
        &[&socket],
        Some("disk0"),
        &[
            ("NOTIFY_SOCKET", &notify),
            ("VU_LAUNCHER_CONTROL", &control),
        ],
        &[
            "start",
            "block",
            "--read-only",
            "--file",
            &image.display().to_string(),
        ],
    );
    let (mut r, mut first) = start_and_connect(cmd, &socket);
    let ready = n
        .wait_for("READY", |v| v == "1", READY_TIMEOUT)
        .expect("READY=1");
    // systemd-socket-activate execs the launcher in its own process.
    assert_eq!(ready.pid, Some(r.pid().as_raw()));
    r.find_line(&format!("listening on {}", socket.display()), READY_TIMEOUT)
        .expect("the readiness line names the passed socket");
    // The connection that activated the launcher is served, and the next ones.
    assert_ne!(get_features(&mut first) & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    drop(first);
    let mut second = UnixStream::connect(&socket).expect("connect again");
    get_features(&mut second);
    drop(second);
    let st = ctl_json(&control, &["status", "block0"]);
    assert_eq!(st["socket"], socket.display().to_string(), "{st}");

    r.stop_with(Signal::SIGTERM);
    assert!(
        socket.exists(),
        "the launcher removed a socket systemd created"
    );
    n.wait_for("STOPPING", |v| v == "1", READY_TIMEOUT)
        .expect("STOPPING=1 (queued on the notify socket)");
}

#[test]
fn config_devices_name_the_sockets_they_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let a = sparse_image(d, "a.img", 1 << 20);
    let b = sparse_image(d, "b.img", 1 << 20);
    let (sock0, sock1) = (d.join("disk0.sock"), d.join("disk1.sock"));
    let control = d.join("control.sock");
    let cfg = d.join("vm.toml");
    // Listed in the other order than the sockets were passed.
    std::fs::write(
        &cfg,
        format!(
            "control = \"{}\"\n\
             [[device]]\nname = \"second\"\nkind = \"block\"\nsocket_name = \"disk1\"\nfile = \"{}\"\n\
             [[device]]\nname = \"first\"\nkind = \"block\"\nsocket_name = \"disk0\"\nfile = \"{}\"\n",
            control.display(),
            b.display(),
            a.display()
        ),
    )
    .expect("config");
    let cmd = activate(
        &[&sock0, &sock1],
        Some("disk0:disk1"),
        &[],
        &["start", "--config", &cfg.display().to_string()],
    );
    let (mut r, mut fe) = start_and_connect(cmd, &sock0);
    r.find_line("listening on", READY_TIMEOUT).expect("ready");
    get_features(&mut fe);
    let mut fe1 = UnixStream::connect(&sock1).expect("connect disk1");
    get_features(&mut fe1);
    for (name, sock) in [("first", &sock0), ("second", &sock1)] {
        let st = ctl_json(&control, &["status", name]);
        assert_eq!(st["socket"], sock.display().to_string(), "{st}");
        assert_eq!(st["state"], "running", "{st}");
    }
    r.stop_with(Signal::SIGTERM);
    assert!(sock0.exists() && sock1.exists());
}

/// Runs an activation that must fail; returns stderr.
fn refused(sockets: &[&Path], fdnames: &str, args: &[&str], needles: &[&str]) -> String {
    let control = unique_control_path();
    let cmd = activate(
        sockets,
        Some(fdnames),
        &[("VU_LAUNCHER_CONTROL", &control)],
        args,
    );
    let mut r = Running::spawn(cmd);
    r.wait_for("Listening on", READY_TIMEOUT)
        .expect("systemd-socket-activate listens");
    let _c = UnixStream::connect(sockets[0]).expect("connect");
    let status = r.wait_exit(READY_TIMEOUT);
    let out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: r.drain_stderr().into_bytes(),
    };
    assert_fails(&out, 1, needles)
}

#[test]
fn unused_sockets_and_unknown_names_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = sparse_image(d, "disk.img", 1 << 20);
    let img = image.display().to_string();
    let (s0, s1) = (d.join("s0.sock"), d.join("s1.sock"));
    let two: &[&Path] = &[&s0, &s1];
    refused(
        two,
        "disk0:disk1",
        &["start", "block", "--socket-name", "disk0", "--file", &img],
        &["no device serves", "\"disk1\""],
    );
    refused(
        two,
        "disk0:disk1",
        &["start", "block", "--socket-name", "disk9", "--file", &img],
        &["no socket named \"disk9\"", "\"disk0\", \"disk1\""],
    );
    refused(
        two,
        "disk0:disk1",
        &["start", "block", "--file", &img],
        &["passed 2 sockets", "--socket-name"],
    );
    // A device that binds its own socket leaves the passed one unused: also an error.
    let own = d.join("own.sock");
    refused(
        &[&s0],
        "disk0",
        &[
            "start",
            "block",
            "--socket",
            &own.display().to_string(),
            "--file",
            &img,
        ],
        &["no device serves", "\"disk0\""],
    );
    assert!(!own.exists());
    // One name per socket, as systemd gives them.
    refused(
        &[&s0],
        "a:b",
        &["start", "block", "--file", &img],
        &["LISTEN_FDNAMES"],
    );
}

/// Outside socket activation, a device without --socket or --fd says what it needs.
#[test]
fn without_activation_a_device_needs_a_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let mut c = common::launcher();
    c.args(["start", "block", "--socket-name", "disk0", "--file"])
        .arg(&image);
    let out = output(c);
    assert_fails(&out, 1, &["no socket named \"disk0\"", "none"]);
}
