//! `--fd FDNUM`: a listening socket bound by someone else (as libvirt does) and inherited at a
//! number of its choosing is served as it is, and its file is left alone at exit; anything
//! else at that number is refused early with a message that says what it is. Also
//! `--socket-path` (the spec's name for `--socket`) and the `vu-vhost-user-block` program.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use common::inherit::{inherit_fd, program};
use common::{assert_fails, launcher, output, sparse_image, Running, READY_TIMEOUT};
use nix::sys::signal::Signal;

/// The fd number the tests pass sockets at (not 3, to show any number works).
const FD: RawFd = 7;

/// VHOST_USER_GET_FEATURES, as a front-end sends it; returns the back-end's features.
fn get_features(socket: &Path) -> u64 {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(READY_TIMEOUT)).expect("timeout");
    // request 1 (GET_FEATURES), flags: version 1, size 0.
    let mut msg = Vec::new();
    for v in [1u32, 1, 0] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&msg).expect("send GET_FEATURES");
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).expect("reply");
    let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().expect("4 bytes"));
    assert_eq!(word(0), 1, "a reply to GET_FEATURES");
    assert_eq!(word(4) & 0x4, 0x4, "the reply flag");
    assert_eq!(word(8), 8, "a u64 payload");
    u64::from_le_bytes(reply[12..20].try_into().expect("8 bytes"))
}

fn block_fd(image: &Path, extra: &[&str]) -> Command {
    let mut c = launcher();
    c.args(["start", "block", "--fd", &FD.to_string(), "--file"])
        .arg(image)
        .args(extra);
    c
}

#[test]
fn a_passed_listening_socket_is_served_and_left_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("libvirt.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // libvirt's sockets may be non-blocking; the launcher serves them all the same.
    listener.set_nonblocking(true).expect("nonblocking");
    let mut cmd = block_fd(&image, &["--read-only"]);
    inherit_fd(&mut cmd, listener.as_raw_fd(), FD);
    let mut r = Running::start(cmd, &socket);
    drop(listener);

    let features = get_features(&socket);
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1: {features:#x}");
    assert_ne!(features & (1 << 5), 0, "VIRTIO_BLK_F_RO: {features:#x}");
    // A second front-end after the first left.
    get_features(&socket);

    r.stop_with(Signal::SIGTERM);
    assert!(
        socket.exists(),
        "the launcher removed a socket it did not create"
    );
}

#[test]
fn the_fd_must_be_a_listening_unix_stream_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let fd = FD.to_string();
    let refused = |fd_of: RawFd, needles: &[&str]| {
        let mut cmd = block_fd(&image, &[]);
        inherit_fd(&mut cmd, fd_of, FD);
        let out = output(cmd);
        assert_fails(&out, 1, needles)
    };
    let file = std::fs::File::open(&image).expect("open");
    refused(
        file.as_raw_fd(),
        &[&format!("fd {fd}"), "not a socket", "regular file"],
    );
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
    refused(tcp.as_raw_fd(), &["not a UNIX socket"]);
    let dgram = UnixDatagram::bind(dir.path().join("dgram.sock")).expect("dgram");
    refused(dgram.as_raw_fd(), &["not a stream socket"]);
    let (a, _b) = UnixStream::pair().expect("pair");
    refused(a.as_raw_fd(), &["not listening"]);
    // Nothing at that number.
    let out = output(block_fd(&image, &[]));
    assert_fails(&out, 1, &[&format!("fd {fd} is not open")]);
    // Usage errors: stdio, a non-number, both --socket and --fd.
    let out = output({
        let mut c = launcher();
        c.args(["start", "block", "--fd", "1", "--file"])
            .arg(&image);
        c
    });
    assert_fails(&out, 2, &["stdin, stdout or stderr"]);
    let out = output({
        let mut c = launcher();
        c.args(["start", "block", "--fd", "x", "--file"])
            .arg(&image);
        c
    });
    assert_fails(&out, 2, &["not a file descriptor number"]);
    let out = output({
        let mut c = block_fd(&image, &["--socket"]);
        c.arg(dir.path().join("s.sock"));
        c
    });
    assert_fails(&out, 2, &["--fd", "--socket"]);
}

#[test]
fn socket_path_is_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut c = launcher();
    c.args(["start", "block", "--socket-path"])
        .arg(&socket)
        .arg("--blk-file")
        .arg(&image);
    let mut r = Running::start(c, &socket);
    get_features(&socket);
    r.stop_with(Signal::SIGTERM);
    assert!(!socket.exists(), "a socket the launcher created is removed");
}

/// libvirt's way: `vu-vhost-user-block --fd=N --blk-file=PATH --read-only`. Two of them run
/// side by side: neither serves a control socket unless asked.
#[test]
fn the_block_program_serves_a_passed_socket_without_a_control_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = program(dir.path(), "block");
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("mkdir");
    let mut running = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..2 {
        let image = sparse_image(dir.path(), &format!("disk{i}.img"), 1 << 20);
        let socket = dir.path().join(format!("disk{i}.sock"));
        let listener = UnixListener::bind(&socket).expect("bind");
        let mut cmd = Command::new(&prog);
        cmd.env_remove("RUST_LOG")
            .env_remove("VU_LAUNCHER_CONTROL")
            .env("XDG_RUNTIME_DIR", &runtime)
            .arg(format!("--fd={FD}"))
            .arg(format!("--blk-file={}", image.display()))
            .arg("--read-only");
        inherit_fd(&mut cmd, listener.as_raw_fd(), FD);
        running.push((Running::start(cmd, &socket), socket));
        listeners.push(listener);
    }
    for (_, socket) in &running {
        assert_ne!(get_features(socket) & (1 << 5), 0, "read-only");
    }
    assert!(
        std::fs::read_dir(&runtime)
            .expect("readdir")
            .next()
            .is_none(),
        "no control socket (or directory) by default"
    );
    for (r, socket) in &mut running {
        let stderr = r.stop_with(Signal::SIGTERM);
        assert!(!stderr.contains("control socket"), "{stderr}");
        assert!(socket.exists());
    }
}

/// The program's errors carry its name, and an image that cannot be served fails early.
#[test]
fn the_program_fails_early_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = program(dir.path(), "block");
    let socket = dir.path().join("s.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let mut cmd = Command::new(&prog);
    cmd.env_remove("RUST_LOG")
        .arg(format!("--fd={FD}"))
        .arg("--blk-file=/nonexistent/disk.img");
    inherit_fd(&mut cmd, listener.as_raw_fd(), FD);
    let out = output(cmd);
    assert_fails(&out, 1, &["vu-vhost-user-block: error", "does not exist"]);
    assert!(socket.exists(), "the passed socket is left alone");
}
