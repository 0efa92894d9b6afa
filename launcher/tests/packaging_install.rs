//! `packaging/install.sh` and what it installs: one description file per kind in the
//! repository (the vhost-user spec's `VhostUserBackend`: description, type, binary), the
//! launcher, a `vu-vhost-user-KIND` program per kind that prints its kind's capabilities, the
//! description files with `binary` naming those programs, and systemd units that
//! `systemd-analyze verify` accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use launcher::kinds::{capabilities_json, KINDS};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn install(prefix: &Path, destdir: Option<&Path>) -> Output {
    let mut c = Command::new("bash");
    c.arg(repo().join("packaging/install.sh"))
        .arg(prefix)
        .env("LAUNCHER_BIN", env!("CARGO_BIN_EXE_launcher"))
        .env_remove("DESTDIR");
    if let Some(d) = destdir {
        c.env("DESTDIR", d);
    }
    let out = c.output().expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_kind_has_a_description_file() {
    let dir = repo().join("packaging/qemu-vhost-user");
    for kind in KINDS {
        let file = dir.join(format!("50-vu-{}.json", kind.name()));
        assert!(
            file.is_file(),
            "kind {} has no description file: add {} with \"type\": \"{}\" and \"binary\": \
             \"@LIBEXECDIR@/vu-vhost-user-{}\"",
            kind.name(),
            file.display(),
            kind.vhost_user_type(),
            kind.name()
        );
        let v = json(&file);
        assert_eq!(v["type"], kind.vhost_user_type(), "{}", file.display());
        assert_eq!(
            v["binary"],
            format!("@LIBEXECDIR@/vu-vhost-user-{}", kind.name())
        );
        assert!(v["description"].as_str().is_some_and(|d| !d.is_empty()));
        for k in v.as_object().expect("an object").keys() {
            assert!(
                ["description", "type", "binary", "tags"].contains(&k.as_str()),
                "{}: {k} is not in the schema",
                file.display()
            );
        }
    }
    // And no file for a kind that does not exist.
    for entry in std::fs::read_dir(&dir).expect("readdir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        let kind = name
            .strip_prefix("50-vu-")
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or_else(|| panic!("{name}: not 50-vu-KIND.json"));
        assert!(
            launcher::kinds::find(kind).is_some(),
            "{name}: no kind {kind}"
        );
    }
}

#[test]
fn install_puts_programs_and_descriptions_where_libvirt_looks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("usr");
    install(&prefix, None);
    let launcher = prefix.join("bin/launcher");
    assert!(launcher.is_file());
    for kind in KINDS {
        let file = prefix.join(format!("share/qemu/vhost-user/50-vu-{}.json", kind.name()));
        let v = json(&file);
        let binary = PathBuf::from(v["binary"].as_str().expect("binary"));
        assert_eq!(
            binary,
            prefix.join(format!("libexec/vu-vhost-user-{}", kind.name()))
        );
        assert!(binary.is_absolute());
        assert_eq!(
            std::fs::canonicalize(&binary).expect("resolves"),
            std::fs::canonicalize(&launcher).expect("launcher")
        );
        // As libvirt probes it.
        let out = Command::new(&binary)
            .arg("--print-capabilities")
            .output()
            .expect("run the program");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            capabilities_json(*kind)
        );
    }
}

#[test]
fn staged_install_names_the_final_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stage = dir.path().join("stage");
    install(Path::new("/usr"), Some(&stage));
    let v = json(&stage.join("usr/share/qemu/vhost-user/50-vu-block.json"));
    assert_eq!(v["binary"], "/usr/libexec/vu-vhost-user-block");
    let link = std::fs::read_link(stage.join("usr/libexec/vu-vhost-user-block")).expect("link");
    assert_eq!(link, Path::new("../bin/launcher"));
    let unit = std::fs::read_to_string(stage.join("usr/lib/systemd/system/vu-launcher@.service"))
        .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/launcher start --config"),
        "{unit}"
    );
}

#[test]
fn installed_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("p");
    install(&prefix, None);
    let units = prefix.join("lib/systemd/system");
    // Templates are verified as instances.
    let inst = dir.path().join("instances");
    std::fs::create_dir(&inst).expect("mkdir");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).expect("readdir") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8");
        let text = std::fs::read_to_string(units.join(&name)).expect("read");
        for needle in ["Type=notify", "KillMode=mixed", "NotifyAccess=main"] {
            if name.ends_with(".service") {
                assert!(text.contains(needle), "{name} lacks {needle}");
            }
        }
        let instance = name.replace("@.", "@vm1.");
        std::fs::write(inst.join(&instance), text).expect("write");
        names.push(inst.join(instance));
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .expect("systemd-analyze (package systemd) runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
