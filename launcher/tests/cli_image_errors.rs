//! Images that cannot be served give exit code 1 and a message naming the image.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::{assert_fails, output, sparse_image, start_block};

fn fails(image: &Path, extra: &[&str], needles: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("blk.sock");
    let out = output(start_block(&socket, image, extra));
    let stderr = assert_fails(&out, 1, needles);
    assert!(!socket.exists(), "a failed start must not leave the socket");
    stderr
}

#[test]
fn missing_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("missing.img");
    fails(
        &image,
        &[],
        &[&image.display().to_string(), "does not exist"],
    );
}

#[test]
fn directory_as_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    fails(
        dir.path(),
        &[],
        &[&dir.path().display().to_string(), "not a regular file"],
    );
}

#[test]
fn empty_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "empty.img", 0);
    fails(&image, &[], &[&image.display().to_string(), "empty"]);
}

#[test]
fn image_size_not_a_multiple_of_the_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "odd.img", 1000);
    fails(
        &image,
        &[],
        &[&image.display().to_string(), "1000", "multiple"],
    );
    let image = sparse_image(dir.path(), "sectors.img", 3 * 512);
    fails(
        &image,
        &["--logical-block-size", "4096"],
        &[&image.display().to_string(), "1536", "4096"],
    );
}

#[test]
fn unreadable_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = sparse_image(dir.path(), "secret.img", 1 << 20);
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let socket = dir.path().join("blk.sock");
    let mut cmd = start_block(&socket, &image, &["--read-only"]);
    if nix::unistd::geteuid().is_root() {
        // root reads anything: run the launcher as nobody.
        cmd.uid(65534).gid(65534);
    }
    let out = output(cmd);
    assert_fails(
        &out,
        1,
        &[
            &image.display().to_string(),
            "permission denied",
            "read-only",
        ],
    );
}

#[test]
fn read_only_file_opened_read_write_suggests_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = sparse_image(dir.path(), "ro.img", 1 << 20);
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let socket = dir.path().join("blk.sock");
    let mut cmd = start_block(&socket, &image, &[]);
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = output(cmd);
    assert_fails(
        &out,
        1,
        &[
            &image.display().to_string(),
            "permission denied",
            "--read-only",
        ],
    );
}

#[test]
fn image_served_by_another_launcher_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let sock = dir.path().join("first.sock");
    let mut first = common::Running::start(start_block(&sock, &image, &[]), &sock);
    fails(&image, &[], &[&image.display().to_string(), "in use"]);
    // The first server is unaffected.
    assert!(sock.exists(), "first launcher lost its socket");
    first.stop_with(nix::sys::signal::Signal::SIGTERM);
}
