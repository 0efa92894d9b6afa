//! `kind = "rng"` in a config file: its keys are the options of `launcher start rng`
//! (source, max_bytes, period, queue_size); an unknown key (or one of another kind) and a
//! bad value fail `launcher start` with exit 1, naming the file, the device and the key; a
//! source that does not exist names the device and the path.

mod common;

use std::path::Path;

use common::{assert_fails, launcher, output};

fn start_config(dir: &Path, device_keys: &str) -> std::process::Output {
    let cfg = dir.join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nname = \"ent7\"\nkind = \"rng\"\nsocket = \"{}/rng.sock\"\n{device_keys}",
            dir.display()
        ),
    )
    .expect("write config");
    let mut c = launcher();
    c.args(["start", "--config"])
        .arg(&cfg)
        .arg("--control")
        .arg(dir.join("control.sock"));
    output(c)
}

#[test]
fn rng_config_errors_name_the_device_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &[&str])] = &[
        ("colour = \"red\"\n", &["colour", "unknown key", "source"]),
        // A block key is not an rng key.
        ("file = \"/tmp/disk.img\"\n", &["file", "unknown key"]),
        ("max_bytes = 0\n", &["max_bytes", "0"]),
        ("max_bytes = \"lots\"\n", &["max_bytes", "lots"]),
        ("max_bytes = -1\n", &["max_bytes"]),
        ("max_bytes = 4096\nperiod = 0\n", &["period", "0"]),
        // A period alone: the limit needs its byte count.
        ("period = 100\n", &["max_bytes"]),
        ("queue_size = 3\n", &["queue_size", "power of two"]),
        ("queue_size = 65536\n", &["queue_size"]),
    ];
    for (keys, needles) in cases {
        let out = start_config(dir.path(), keys);
        let mut all = needles.to_vec();
        all.extend(["vm.toml", "device ent7"]);
        assert_fails(&out, 1, &all);
        assert!(
            !dir.path().join("rng.sock").exists(),
            "{keys}: socket left behind"
        );
    }
    let out = start_config(dir.path(), "source = \"/nonexistent/entropy\"\n");
    assert_fails(&out, 1, &["ent7", "/nonexistent/entropy", "does not exist"]);
    let out = start_config(
        dir.path(),
        &format!("source = \"{}\"\n", dir.path().display()),
    );
    assert_fails(
        &out,
        1,
        &["ent7", "not a character device, FIFO or regular file"],
    );
}
