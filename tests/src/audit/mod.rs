//! Coverage audit of a device kind's seccomp policy against a real workload, for the
//! `jail_audit_KIND.rs` tests.
//!
//! Each run starts the real launcher under `strace -ff` (through a wrapper named by
//! `VU_LAUNCHER`, so every launcher the workload starts is traced, with the run's extra
//! arguments) while the workload drives the jailed device. From the trace we take the device
//! processes (those that installed seccomp filters, respawned ones included) and every system
//! call their threads made after the last filter was installed, and check each one,
//! arguments included, against the parsed policy (`launcher::jail::seccomp::load_policy`),
//! the way the compiled filter decides ([`check`]):
//!
//! * zero calls outside the policy (and no device dies by SIGSYS);
//! * a report of the rules the workload never exercised (and of `||` alternatives never
//!   taken); each such rule must carry a comment line `cold-path: <which path needs it>` (or
//!   `cold-path(KIND): ...` when only some kinds leave it unused), or be removed.
//!
//! `VU_AUDIT_SECCOMP_LOG=1` runs the device with `--seccomp-log` so that a violation does not
//! kill it and one run lists them all (for policy work). The trace is kept when the audit
//! fails. Only one audit may run per test binary: it sets `VU_LAUNCHER` for the process.

pub mod check;
pub mod trace;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use launcher::jail::seccomp::load_policy;

use crate::launcher::{launcher_bin, LAUNCHER_ENV};
pub use check::{cold_path, Audit};
use trace::{Trace, DECODED};

/// One workload run: a name, extra arguments for every launcher it starts, and the workload.
pub struct Run<'a> {
    /// Names the run in the report.
    pub name: &'a str,
    /// Appended to every launcher command line of the run.
    pub extra: &'a [&'a str],
    /// Drives the device (starting launchers through `VU_LAUNCHER`).
    pub workload: Box<dyn FnOnce() -> Result<()> + 'a>,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("name", &self.name)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// Runs each of `runs` under strace and audits `kind`'s device processes against
/// `KIND_device.policy`; prints the report; fails on a violation, a death or an unexplained
/// unused rule (keeping the traces).
pub fn run_audit(kind: &str, runs: Vec<Run<'_>>) -> Result<()> {
    ensure!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is not installed (apt package strace)"
    );
    let real = launcher_bin()?;
    let help = Command::new(&real)
        .args(["start", kind, "--help"])
        .output()
        .context("launcher --help")?;
    ensure!(
        String::from_utf8_lossy(&help.stdout).contains("--sandbox"),
        "this launcher does not jail {kind} devices (no --sandbox option)"
    );
    let policy = load_policy(kind, None)?;
    let log_mode = std::env::var_os("VU_AUDIT_SECCOMP_LOG").is_some_and(|v| v == "1");

    let work = tempfile::Builder::new()
        .prefix(&format!("jail-audit-{kind}"))
        .tempdir()?;
    let mut traces = Vec::new();
    let mut failures = Vec::new();
    for run in runs {
        let dir = work.path().join(run.name);
        std::fs::create_dir_all(dir.join("trace"))?;
        let mut args: Vec<&str> = run.extra.to_vec();
        if log_mode {
            args.push("--seccomp-log");
        }
        let wrapper = write_wrapper(&dir, &real, &args)?;
        // One audit per test binary: nothing else in the process reads the variable.
        std::env::set_var(LAUNCHER_ENV, &wrapper);
        let outcome = (run.workload)();
        std::env::remove_var(LAUNCHER_ENV);
        if let Err(e) = &outcome {
            failures.push(format!("workload ({}): {e:#}", run.name));
        }
        match Trace::read(&dir.join("trace")) {
            Ok(t) => traces.push((run.name, t)),
            // Say why the workload stopped too: a launcher that never started traces nothing.
            Err(e) => bail!("{e:#}\n  {}", failures.join("\n  ")),
        }
    }

    let mut audit = Audit::new(kind, &policy);
    for (name, trace) in &traces {
        if let Err(e) = audit.add(name, trace) {
            failures.push(format!("{e:#}"));
        }
    }
    eprintln!("{}", audit.report());
    failures.extend(audit.failures());
    if !failures.is_empty() {
        let kept = work.keep();
        bail!(
            "jail audit of {kind} failed (trace kept in {}):\n  {}",
            kept.display(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// A script that runs the real launcher (`launcher start ...` only) under strace and forwards SIGTERM/SIGINT to it
/// (strace blocks fatal signals while it traces a command). A test kills the script with
/// SIGKILL if its workload fails: with setpriv, strace and then the launcher (and with it the
/// device) die with it instead of lingering.
pub fn write_wrapper(dir: &Path, launcher: &Path, extra: &[&str]) -> Result<PathBuf> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let extra: Vec<String> = extra.iter().map(|a| quote(a)).collect();
    let pdeath = if Command::new("setpriv").arg("--version").output().is_ok() {
        "setpriv --pdeathsig KILL --"
    } else {
        ""
    };
    let script = format!(
        r#"#!/bin/bash
# Only the servers are traced; `launcher ctl ...` runs as it is.
[ "$1" = start ] || exec {bin} "$@"
{pdeath} strace -ff -qq -ttt --decode-pids=pidns --raw='!{DECODED}' -o {out} \
    {pdeath} {bin} "$@" {extra} &
spid=$!
fwd() {{ for p in $(cat /proc/$spid/task/*/children 2>/dev/null); do kill -$1 $p; done; }}
trap 'fwd TERM' TERM
trap 'fwd INT' INT
rc=1
while kill -0 $spid 2>/dev/null; do wait $spid; rc=$?; done
# A `wait` cut short by the TERM trap returns 143 at once; if strace exits right then, bash
# reaps it on its own and the loop ends with that 143: its real status is still to collect
# (127 once it was collected above).
wait $spid 2>/dev/null; last=$?
[ $last -ne 127 ] && rc=$last
exit $rc
"#,
        out = quote(&dir.join("trace/t").display().to_string()),
        bin = quote(&launcher.display().to_string()),
        extra = extra.join(" "),
    );
    let path = dir.join("launcher-under-strace");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}
