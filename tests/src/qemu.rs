//! Which QEMU the tests run: the system's (Debian 12's 7.2) or QEMU 10.0 as
//! `tests/scripts/qemu10.sh` unpacks it into `.cache/qemu-10`, chosen by environment
//! variables; its tools (qemu-storage-daemon, qemu-img, qemu-io) of the same version; and its
//! version, for the test output.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::guest::workspace_root;

/// Environment variable naming the QEMU binary (default `qemu-system-x86_64`).
pub const QEMU_ENV: &str = "VU_QEMU";

/// Environment variable choosing the QEMU the tests run (unless [`QEMU_ENV`] names one): `10`
/// for QEMU 10.0 as `tests/scripts/qemu10.sh` unpacks it into `.cache/qemu-10`; anything else
/// (or nothing) for the system's `qemu-system-x86_64` (Debian 12's 7.2).
pub const QEMU_VERSION_ENV: &str = "VU_QEMU_VERSION";

/// The QEMU binary the tests run: `$VU_QEMU`, else per `$VU_QEMU_VERSION`, else
/// `qemu-system-x86_64` from the PATH.
pub fn qemu_binary() -> String {
    if let Some(q) = std::env::var(QEMU_ENV).ok().filter(|q| !q.is_empty()) {
        return q;
    }
    match std::env::var(QEMU_VERSION_ENV)
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("10" | "10.0") => workspace_root()
            .join(".cache/qemu-10/bin/qemu-system-x86_64")
            .display()
            .to_string(),
        _ => "qemu-system-x86_64".to_owned(),
    }
}

/// A QEMU tool (`qemu-storage-daemon`, `qemu-img`, `qemu-io`) of the same QEMU as
/// [`qemu_binary`]: the one beside it when it is named by path, else the PATH's.
pub fn qemu_tool(name: &str) -> String {
    let qemu = qemu_binary();
    Path::new(&qemu)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .filter(|t| t.is_file())
        .map_or_else(|| name.to_owned(), |t| t.display().to_string())
}

/// The first line of `qemu-system-x86_64 --version` of [`qemu_binary`] (what the tests run).
pub fn qemu_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            Command::new(qemu_binary())
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown QEMU version".to_owned())
        })
        .clone()
}

/// True if the QEMU binary runs (`qemu-system-x86_64 --version` succeeds).
pub fn qemu_available() -> bool {
    Command::new(qemu_binary())
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
