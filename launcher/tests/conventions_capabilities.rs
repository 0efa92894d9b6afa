//! `--print-capabilities` (vhost-user spec, "Backend program conventions"): the kind's JSON on
//! stdout and exit 0, whatever else is on the command line; for every kind, as `launcher start
//! KIND` and as the `vu-vhost-user-KIND` program.

mod common;

use std::process::{Command, Output, Stdio};

use common::inherit::program;
use common::launcher;
use launcher::kinds::{Kind, KINDS};

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run")
}

/// The output must be exactly one JSON object: the kind's type and features.
fn assert_capabilities(out: &Output, kind: &dyn Kind) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}: {:?}; stderr:\n{stderr}",
        kind.name(),
        out.status
    );
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj["type"], kind.vhost_user_type(), "{text}");
    let features: Vec<&str> = obj
        .get("features")
        .map(|f| {
            f.as_array()
                .expect("features is an array")
                .iter()
                .map(|x| x.as_str().expect("feature names are strings"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(features, kind.features(), "{text}");
    for k in obj.keys() {
        assert!(
            k == "type" || k == "features",
            "unexpected member {k}: {text}"
        );
    }
}

#[test]
fn block_prints_its_features() {
    let out = run({
        let mut c = launcher();
        c.args(["start", "block", "--print-capabilities"]);
        c
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"type":"block","features":["read-only","blk-file"]}"#
    );
    assert!(out.status.success());
}

#[test]
fn every_kind_alone_and_with_junk() {
    for kind in KINDS {
        let kind: &dyn Kind = *kind;
        let junk: &[&[&str]] = &[
            &[],
            // Required options missing, unknown options, bad values, a dangling option.
            &["--no-such-option", "--fd=-5", "junk", "--num-queues", "0"],
            &["--socket", "/nonexistent/dir/x.sock", "--fd", "3"],
            &["--print-capabilities", "--socket"],
        ];
        for extra in junk {
            let out = run({
                let mut c = launcher();
                c.args(["start", kind.name()]).args(*extra);
                if !extra.contains(&"--print-capabilities") {
                    c.arg("--print-capabilities");
                }
                c.arg("--also-junk");
                c
            });
            assert_capabilities(&out, kind);
        }
        // Global options before the command.
        let out = run({
            let mut c = launcher();
            c.args([
                "--log-level",
                "trace",
                "start",
                kind.name(),
                "--print-capabilities",
            ]);
            c
        });
        assert_capabilities(&out, kind);
    }
}

#[test]
fn the_program_of_every_kind_prints_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in KINDS {
        let kind: &dyn Kind = *kind;
        let prog = program(dir.path(), kind.name());
        for extra in [&[][..], &["--fd=3", "--socket-path=/x", "--bogus"][..]] {
            let mut c = Command::new(&prog);
            c.env_remove("RUST_LOG")
                .args(extra)
                .arg("--print-capabilities");
            assert_capabilities(&run(c), kind);
        }
    }
}

#[test]
fn without_the_option_a_bad_line_is_still_a_usage_error() {
    let out = run({
        let mut c = launcher();
        c.args(["start", "block", "--no-such-option"]);
        c
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
