//! `launcher start --config FILE.toml`: several named devices under one supervisor; errors
//! name the file, the device and the key; SIGTERM stops every device and removes every socket.

mod common;

use std::path::Path;

use common::{assert_fails, ctl_json, launcher, output, sparse_image, Running};
use nix::sys::signal::Signal;

fn config(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("vm.toml");
    std::fs::write(&p, body).expect("write config");
    p
}

fn start_config(cfg: &Path) -> std::process::Command {
    let mut c = launcher();
    c.args(["start", "--config"]).arg(cfg);
    c
}

#[test]
fn two_devices_serve_and_sigterm_removes_every_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let a = sparse_image(dir.path(), "a.img", 1 << 20);
    let b = sparse_image(dir.path(), "b.img", 2 << 20);
    let cfg = config(
        dir.path(),
        &format!(
            r#"control = "{d}/control.sock"

[[device]]
name = "a"
kind = "block"
socket = "{d}/a.sock"
file = "{}"

[[device]]
name = "b"
kind = "block"
socket = "{d}/b.sock"
file = "{}"
num_queues = 2
engine = "sync"
"#,
            a.display(),
            b.display()
        ),
    );
    let mut r = Running::start(start_config(&cfg), &dir.path().join("a.sock"));
    r.find_line(
        &format!("listening on {}", dir.path().join("b.sock").display()),
        common::READY_TIMEOUT,
    )
    .expect("b is ready");
    let control = dir.path().join("control.sock");
    let list = ctl_json(&control, &["list"]);
    let names: Vec<&str> = list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let st = ctl_json(&control, &["status", "b"]);
    assert_eq!(st["queues"].as_array().map(Vec::len), Some(2));
    assert_ne!(
        ctl_json(&control, &["status", "a"])["pid"],
        st["pid"],
        "one process per device"
    );

    let stderr = r.stop_with(Signal::SIGTERM);
    for s in ["a.sock", "b.sock", "control.sock"] {
        assert!(!dir.path().join(s).exists(), "{s} left behind:\n{stderr}");
    }
}

#[test]
fn config_errors_name_the_file_the_device_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = sparse_image(dir.path(), "a.img", 1 << 20);
    let dev = |extra: &str| {
        format!(
            "[[device]]\nname = \"disk7\"\nkind = \"block\"\nsocket = \"{}/a.sock\"\nfile = \"{}\"\n{extra}",
            dir.path().display(),
            img.display()
        )
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            dev("queue_size = 100\n"),
            vec!["disk7", "queue_size", "power of two"],
        ),
        (dev("engine = \"aio\"\n"), vec!["disk7", "engine", "aio"]),
        (
            dev("colour = \"red\"\n"),
            vec!["disk7", "colour", "unknown key"],
        ),
        (
            dev("read_only = \"yes\"\n"),
            vec!["disk7", "read_only", "true or false"],
        ),
        (
            // Without a socket each, two devices cannot share the one socket systemd passes.
            format!(
                "[[device]]\nname = \"w\"\nkind = \"block\"\nfile = \"{0}\"\n\
                 [[device]]\nname = \"x\"\nkind = \"block\"\nfile = \"{0}\"\n",
                img.display()
            ),
            vec!["device x", "socket", "missing"],
        ),
        (
            "[[device]]\nname = \"x\"\nkind = \"floppy\"\n".into(),
            vec!["kind", "floppy"],
        ),
        ("[[device]\n".into(), vec!["vm.toml"]),
        ("control = 5\n".into(), vec!["control", "string"]),
        (
            format!("{}{}", dev(""), dev("")),
            vec!["disk7", "same name"],
        ),
    ];
    for (body, needles) in cases {
        let cfg = config(dir.path(), &body);
        let out = output(start_config(&cfg));
        let mut all = needles.clone();
        all.push("vm.toml");
        assert_fails(&out, 1, &all);
        assert!(!dir.path().join("a.sock").exists());
    }
    // One device without a socket serves the socket systemd passes; without one, it says so.
    let cfg = config(
        dir.path(),
        &format!(
            "[[device]]\nname = \"x\"\nkind = \"block\"\nfile = \"{}\"\n",
            img.display()
        ),
    );
    let out = output(start_config(&cfg));
    assert_fails(&out, 1, &["device x: no socket", "socket activation"]);
    let out = output(start_config(&dir.path().join("missing.toml")));
    assert_fails(&out, 1, &["missing.toml"]);
    // Neither a device nor --config: a usage error.
    let mut c = launcher();
    c.arg("start");
    assert_fails(&output(c), 2, &["--config"]);
}
