//! The vhost-user spec's "Backend program conventions" on the command line, applied to the
//! raw arguments before clap sees them:
//!
//! - A program named `vu-vhost-user-KIND` (a symlink to the launcher, installed by
//!   `packaging/install.sh` and named by the kind's description file in
//!   `share/qemu/vhost-user/`) is `launcher start KIND`: one back-end of that kind, as a
//!   manager such as libvirt runs it (`--fd=N`, `--socket-path=PATH`, the kind's options).
//!   Several such back-ends run side by side, so they serve no control socket unless
//!   `--control` or `$VU_LAUNCHER_CONTROL` names one (the default path is shared).
//! - `--print-capabilities` after `start KIND` (or given to such a program) prints the kind's
//!   capabilities as JSON and exits 0, whatever else is on the command line: required
//!   options may be missing and unknown ones present, as the spec asks.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::cli::CONTROL_ENV;
use crate::kinds::{self, Kind};

/// The name of the program that is one back-end of a kind: this prefix, then the kind.
pub const PROGRAM_PREFIX: &str = "vu-vhost-user-";

/// The option that prints a kind's capabilities.
pub const PRINT_CAPABILITIES: &str = "--print-capabilities";

/// The kind a program named `vu-vhost-user-KIND` serves (by the file name of `argv0`).
pub fn program_kind(argv0: &OsStr) -> Option<&'static dyn Kind> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    kinds::find(name.strip_prefix(PROGRAM_PREFIX)?)
}

/// The program's name when it runs as `vu-vhost-user-KIND`, for messages.
pub fn program_name(args: &[OsString]) -> Option<String> {
    let argv0 = args.first()?;
    program_kind(argv0)?;
    Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The arguments as the launcher parses them: those of `vu-vhost-user-KIND ARGS...` become
/// `launcher start KIND [--no-control] ARGS...`; any others are returned unchanged.
/// `control_env` is the value of `$VU_LAUNCHER_CONTROL`.
pub fn launcher_args(args: Vec<OsString>, control_env: Option<&OsStr>) -> Vec<OsString> {
    let Some(kind) = args.first().and_then(|a| program_kind(a)) else {
        return args;
    };
    let mut out: Vec<OsString> = vec!["launcher".into(), "start".into(), kind.name().into()];
    let rest = &args[1..];
    let control_named = rest
        .iter()
        .any(|a| a == "--control" || a.to_str().is_some_and(|s| s.starts_with("--control=")));
    if !control_named && control_env.is_none_or(|v| v.is_empty()) {
        out.push("--no-control".into());
    }
    out.extend(rest.iter().cloned());
    out
}

/// [`launcher_args`] with this process's environment.
pub fn launcher_args_from_env(args: Vec<OsString>) -> Vec<OsString> {
    let env = std::env::var_os(CONTROL_ENV);
    launcher_args(args, env.as_deref())
}

/// The kind whose capabilities `args` (after [`launcher_args`]) ask for: `launcher [global
/// options] start ... KIND ... --print-capabilities ...`. Everything else on the line is
/// ignored. `None` when the line does not ask (or names no kind: clap then says what is
/// wrong).
pub fn capabilities_request(args: &[OsString]) -> Option<&'static dyn Kind> {
    let mut rest = args.iter().skip(1);
    // Global options may come first: `--log-level FILTER` takes a value.
    loop {
        let a = rest.next()?.to_str()?;
        match a {
            "start" => break,
            "--log-level" => {
                rest.next()?;
            }
            _ if a.starts_with('-') => {}
            // Another command (`ctl`, `__device`).
            _ => return None,
        }
    }
    let mut kind = None;
    for a in rest {
        if a == "--" {
            break;
        }
        match a.to_str() {
            Some(PRINT_CAPABILITIES) if kind.is_some() => return kind,
            Some(s) if kind.is_none() && !s.starts_with('-') => kind = kinds::find(s),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn asks(args: &[&str]) -> Option<&'static str> {
        capabilities_request(&v(args)).map(|k| k.name())
    }

    #[test]
    fn print_capabilities_wins_over_anything_after_the_kind() {
        assert_eq!(
            asks(&["launcher", "start", "block", "--print-capabilities"]),
            Some("block")
        );
        assert_eq!(
            asks(&[
                "launcher",
                "--log-level",
                "debug",
                "start",
                "block",
                "--no-such-option",
                "--fd=-7",
                "junk",
                "--print-capabilities",
                "--file"
            ]),
            Some("block")
        );
        assert_eq!(asks(&["launcher", "start", "block", "--file", "x"]), None);
        assert_eq!(asks(&["launcher", "start", "--print-capabilities"]), None);
        assert_eq!(
            asks(&["launcher", "start", "nosuchkind", "--print-capabilities"]),
            None
        );
        assert_eq!(
            asks(&["launcher", "ctl", "block", "--print-capabilities"]),
            None
        );
        assert_eq!(
            asks(&["launcher", "start", "block", "--", "--print-capabilities"]),
            None
        );
    }

    #[test]
    fn a_program_named_for_a_kind_is_launcher_start_kind() {
        let args = launcher_args(
            v(&[
                "/usr/libexec/vu-vhost-user-block",
                "--fd=3",
                "--blk-file=/x",
            ]),
            None,
        );
        assert_eq!(
            args,
            v(&[
                "launcher",
                "start",
                "block",
                "--no-control",
                "--fd=3",
                "--blk-file=/x"
            ])
        );
        let args = launcher_args(
            v(&["vu-vhost-user-block", "--control", "/c", "--fd=3"]),
            None,
        );
        assert_eq!(args[3..], v(&["--control", "/c", "--fd=3"])[..]);
        let args = launcher_args(v(&["vu-vhost-user-block"]), Some(OsStr::new("/c")));
        assert_eq!(args, v(&["launcher", "start", "block"]));
        let args = launcher_args(v(&["vu-vhost-user-block", "--print-capabilities"]), None);
        assert_eq!(capabilities_request(&args).map(|k| k.name()), Some("block"));
        // Not a program name: unchanged.
        for argv0 in [
            "launcher",
            "vu-vhost-user-nosuchkind",
            "/bin/vu-vhost-user-",
        ] {
            assert_eq!(launcher_args(v(&[argv0, "x"]), None), v(&[argv0, "x"]));
        }
    }
}
