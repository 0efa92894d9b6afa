//! `--help` texts explain every option, with defaults and units.

mod common;

use common::launcher;

fn help(args: &[&str]) -> String {
    let out = launcher().args(args).output().expect("run launcher");
    assert!(out.status.success(), "{args:?}: {:?}", out.status);
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn top_level_help_lists_commands_and_global_options() {
    let text = help(&["--help"]);
    for needle in [
        "start",
        "--log-level",
        "RUST_LOG",
        "[default: info]",
        "launcher start block --help",
        "Exit status",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
}

#[test]
fn start_help_lists_devices() {
    let text = help(&["start", "--help"]);
    assert!(text.contains("block"), "{text}");
}

#[test]
fn block_help_explains_every_option() {
    let text = help(&["start", "block", "--help"]);
    for needle in [
        "--socket <PATH>",
        "--file <IMAGE>",
        "--read-only",
        "--direct",
        "O_DIRECT",
        "--num-queues <N>",
        "1 to 64",
        "[default: 1]",
        "--queue-size <N>",
        "power of two",
        "descriptors",
        "[default: 256]",
        "--serial <ID>",
        "20 bytes",
        "--logical-block-size <BYTES>",
        "512",
        "4096",
        "[default: 512]",
        "--engine <ENGINE>",
        "io_uring",
        "sync",
        "[default: io_uring]",
        "--writethrough",
        "write-back",
        "--log-level",
        "listening on",
        "SIGTERM",
        "Sandbox:",
        "--sandbox <MODE>",
        "jail",
        "none",
        "debugging only",
        "[default: jail]",
        "--jail-user <UID[:GID]>",
        "[default: 65534:65534]",
        "--seccomp-log",
        "--seccomp-policy-dir <DIR>",
        "seccomp violation",
    ] {
        assert!(
            text.contains(needle),
            "start block --help lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn test_triggers_and_the_device_entry_point_are_hidden() {
    let top = help(&["--help"]);
    assert!(!top.contains("__device"), "{top}");
    let text = help(&["start", "block", "--help"]);
    for hidden in ["--test-", "--fd-image", "ESCAPE"] {
        assert!(!text.contains(hidden), "help shows {hidden:?}:\n{text}");
    }
}

#[test]
fn version_is_printed() {
    let text = help(&["--version"]);
    assert!(text.starts_with("launcher "), "{text}");
}
