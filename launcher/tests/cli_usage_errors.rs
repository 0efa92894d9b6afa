//! Bad option values are usage errors: exit code 2 and a message naming the value.

mod common;

use common::{assert_fails, launcher, output, sparse_image, start_block};

fn bad_option(extra: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("blk.sock");
    let out = output(start_block(&socket, &image, extra));
    assert_fails(&out, 2, needles);
    assert!(!socket.exists(), "a usage error must not create the socket");
}

#[test]
fn queue_size_must_be_a_power_of_two() {
    bad_option(
        &["--queue-size", "100"],
        &["--queue-size", "100", "power of two"],
    );
}

#[test]
fn queue_size_must_be_in_range() {
    bad_option(&["--queue-size", "65536"], &["65536", "power of two"]);
    bad_option(&["--queue-size", "0"], &["--queue-size", "0"]);
    bad_option(&["--queue-size", "many"], &["many"]);
}

#[test]
fn num_queues_must_be_1_to_64() {
    bad_option(&["--num-queues", "0"], &["--num-queues", "0", "1..=64"]);
    bad_option(&["--num-queues", "65"], &["--num-queues", "65", "1..=64"]);
}

#[test]
fn serial_is_at_most_20_bytes() {
    bad_option(
        &["--serial", "0123456789abcdefghijk"],
        &["--serial", "21 bytes", "20"],
    );
}

#[test]
fn logical_block_size_is_512_or_4096() {
    bad_option(
        &["--logical-block-size", "1024"],
        &["--logical-block-size", "1024", "512", "4096"],
    );
}

#[test]
fn engine_is_io_uring_or_sync() {
    bad_option(
        &["--engine", "aio"],
        &["--engine", "aio", "io_uring", "sync"],
    );
}

#[test]
fn log_level_must_parse() {
    bad_option(
        &["--log-level", "loud=very=much"],
        &["--log-level", "loud=very=much"],
    );
}

#[test]
fn socket_and_file_are_required() {
    // Without --socket or --fd, the socket systemd passes is served; without one either,
    // the launcher says what it needs (before it looks at the image).
    let out = output({
        let mut c = launcher();
        c.args(["start", "block", "--file", "/nonexistent.img"])
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        c
    });
    assert_fails(&out, 1, &["--socket PATH", "--fd N", "socket activation"]);
    let out = output({
        let mut c = launcher();
        c.args(["start", "block", "--socket", "/nonexistent.sock"]);
        c
    });
    assert_fails(&out, 2, &["--file"]);
}

#[test]
fn unknown_device_is_a_usage_error() {
    let out = output({
        let mut c = launcher();
        c.args(["start", "floppy"]);
        c
    });
    assert_fails(&out, 2, &["floppy"]);
}
