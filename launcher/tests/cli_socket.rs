//! The listening socket: missing directory, in use, stale, not a socket, too long.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};

use common::{assert_fails, output, sparse_image, start_block, Running};
use nix::sys::signal::Signal;

#[test]
fn socket_directory_must_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("no-such-dir").join("blk.sock");
    let out = output(start_block(&socket, &image, &[]));
    assert_fails(
        &out,
        1,
        &[
            &dir.path().join("no-such-dir").display().to_string(),
            "does not exist",
        ],
    );
}

#[test]
fn a_live_socket_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let mut first = Running::start(start_block(&socket, &image, &[]), &socket);

    // Another image: the first launcher holds a lock on its own (see cli_image_errors).
    let other = sparse_image(dir.path(), "other.img", 1 << 20);
    let out = output(start_block(&socket, &other, &[]));
    assert_fails(&out, 1, &[&socket.display().to_string(), "in use"]);

    // The loser must not have touched the winner's socket.
    assert!(socket.exists());
    UnixStream::connect(&socket).expect("first launcher still accepts");
    first.stop_with(Signal::SIGTERM);
    assert!(!socket.exists());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "stale socket file left behind");

    let mut r = Running::start(start_block(&socket, &image, &[]), &socket);
    UnixStream::connect(&socket).expect("connect to the new server");
    r.stop_with(Signal::SIGTERM);
    assert!(!socket.exists());
}

#[test]
fn a_regular_file_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let not_a_socket = dir.path().join("notes.txt");
    std::fs::write(&not_a_socket, b"keep me").expect("write");
    let out = output(start_block(&not_a_socket, &image, &[]));
    assert_fails(
        &out,
        1,
        &[&not_a_socket.display().to_string(), "not a socket"],
    );
    assert_eq!(std::fs::read(&not_a_socket).expect("read"), b"keep me");
}

#[test]
fn socket_path_too_long() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("s".repeat(120));
    let out = output(start_block(&socket, &image, &[]));
    assert_fails(&out, 1, &[&socket.display().to_string(), "107"]);
}
