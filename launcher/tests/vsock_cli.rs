//! `launcher start vsock` and `kind = "vsock"` in config files: reserved and duplicate CIDs
//! are refused before anything runs (the error names both devices), a group of two devices
//! serves both sockets and both `--uds-path` sockets, and SIGTERM removes them all.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;

use common::{assert_fails, launcher, output, Running};
use nix::sys::signal::Signal;

fn config(dir: &Path, devices: &[(&str, u32)]) -> std::path::PathBuf {
    let d = dir.display();
    let mut body = String::new();
    for (name, cid) in devices {
        body.push_str(&format!(
            "[[device]]\nname = \"{name}\"\nkind = \"vsock\"\nsocket = \"{d}/{name}.sock\"\n\
             guest_cid = {cid}\nuds_path = \"{d}/{name}.v\"\ngroup = \"g\"\n\n"
        ));
    }
    let p = dir.join("vms.toml");
    std::fs::write(&p, body).expect("write config");
    p
}

#[test]
fn reserved_cids_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for cid in ["0", "1", "2", "4294967295"] {
        let mut c = launcher();
        c.args(["start", "vsock", "--socket"])
            .arg(dir.path().join("s.sock"))
            .args(["--uds-path"])
            .arg(dir.path().join("v.sock"))
            .args(["--guest-cid", cid]);
        assert_fails(&output(c), 2, &["reserved"]);
    }
    assert!(!dir.path().join("v.sock").exists());
}

#[test]
fn duplicate_cids_in_a_config_name_both_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &[("vm-a", 7), ("vm-b", 7)]);
    let mut c = launcher();
    c.args(["start", "--config"]).arg(&cfg);
    assert_fails(&output(c), 1, &["vm-a", "vm-b", "guest CID 7"]);
    for f in ["vm-a.sock", "vm-a.v", "vm-b.sock", "vm-b.v"] {
        assert!(!dir.path().join(f).exists(), "{f} left behind");
    }
}

#[test]
fn a_group_serves_and_sigterm_removes_every_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &[("vm3", 3), ("vm4", 4)]);
    let mut c = launcher();
    c.args(["start", "--config"]).arg(&cfg);
    let mut r = Running::start(c, &dir.path().join("vm3.sock"));
    r.find_line(
        &format!("listening on {}", dir.path().join("vm4.sock").display()),
        common::READY_TIMEOUT,
    )
    .expect("second device");
    r.find_line("linked with live siblings", common::READY_TIMEOUT)
        .expect("siblings linked");
    for f in ["vm3.v", "vm4.v"] {
        UnixStream::connect(dir.path().join(f)).expect("the uds path listens");
    }
    r.stop_with(Signal::SIGTERM);
    for f in ["vm3.sock", "vm3.v", "vm4.sock", "vm4.v"] {
        assert!(!dir.path().join(f).exists(), "{f} left behind");
    }
}
