//! Embeds the seccomp policies of `jail-policies/<arch>/` in the launcher: every `*.policy`
//! file found there, and the device kinds that have a `<kind>_device.policy` (as crosvm's jail
//! build script does). Nothing is listed by hand: a new kind's policy files are picked up by
//! their names.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = manifest.join("..").join("jail-policies").join(&arch);
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(String, PathBuf)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "policy"))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                Some((name, p))
            })
            .collect(),
        Err(e) => panic!("cannot read the policy directory {}: {e}", dir.display()),
    };
    files.sort();
    let mut out = String::from(
        "/// The policy files embedded in the binary, by name (every `*.policy` of\n\
         /// `jail-policies/<arch>/`, found at build time).\n\
         pub const EMBEDDED_POLICIES: &[(&str, &str)] = &[\n",
    );
    let mut devices = Vec::new();
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        );
        if let Some(kind) = name.strip_suffix("_device.policy") {
            if kind != "common" {
                devices.push(kind.to_string());
            }
        }
    }
    out.push_str("];\n\n");
    out.push_str(
        "/// The devices with an embedded policy, `<device>_device.policy` (`common_device.policy`\n\
         /// is the part every device shares, not a device).\n\
         pub const DEVICES: &[&str] = &[",
    );
    out.push_str(
        &devices
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("policies.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("cannot write {}: {e}", dest.display());
    }
}
