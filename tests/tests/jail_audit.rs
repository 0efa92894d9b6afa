//! Coverage audit of the block device's seccomp policy against the real workload.
//!
//! The launcher runs under `strace -ff` while guests drive the jailed block device through the
//! full end-to-end workload: boot, fio with verify, flushes, discard and write-zeroes, a guest
//! power-off and a second guest reconnecting, then the device's shutdown; once with the
//! io_uring engine and once with the sync engine. From the trace we take the device process
//! (the process that installed seccomp filters) and every system call its threads made after
//! the last filter was installed, and check each one, arguments included, against the parsed
//! policy (`launcher::jail::seccomp::load_policy`), the way the compiled filter decides:
//!
//! * zero calls outside the policy (and the device must not die by SIGSYS);
//! * a report of the rules the workload never exercised (and of `||` alternatives never
//!   taken); each such rule must carry a comment line `cold-path: <which path needs it>`,
//!   or be removed from the policy.
//!
//! `VU_AUDIT_SECCOMP_LOG=1` runs the device with `--seccomp-log` so that a violation does not
//! kill it and one run lists them all (for policy work). The trace is kept when the audit fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use launcher::jail::policy::{constant, syscall_nr, Action, Policy, Verdict};
use launcher::jail::seccomp::load_policy;
use vu_tests::e2e::{exercise, pattern_cmd, BlockRig, CMD, POWEROFF};
use vu_tests::launcher::{launcher_bin, LAUNCHER_ENV};

/// The comment marker of a rule the workload is not expected to exercise.
const COLD_PATH: &str = "cold-path:";

/// System calls strace decodes for us (we need clone's flags and the host tid of new threads,
/// which raw mode would hide); every other call is printed raw: hex arguments.
const DECODED: &str = "clone,clone3,execve,execveat,seccomp";

#[test]
fn block_policy_covers_the_workload_and_nothing_is_unexplained() -> Result<()> {
    ensure!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is not installed (apt package strace)"
    );
    let real = launcher_bin()?;
    let help = Command::new(&real)
        .args(["start", "block", "--help"])
        .output()
        .context("launcher --help")?;
    ensure!(
        String::from_utf8_lossy(&help.stdout).contains("--sandbox"),
        "this launcher does not jail devices (no --sandbox option)"
    );
    let policy = load_policy("block", None)?;
    let log_mode = std::env::var_os("VU_AUDIT_SECCOMP_LOG").is_some_and(|v| v == "1");

    let work = tempfile::Builder::new().prefix("jail-audit").tempdir()?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for (name, extra, full) in [
        ("io_uring", &[][..], true),
        ("sync", &["--engine", "sync", "--writethrough"][..], false),
    ] {
        let dir = work.path().join(name);
        std::fs::create_dir_all(dir.join("trace"))?;
        let mut args: Vec<&str> = extra.to_vec();
        if log_mode {
            args.push("--seccomp-log");
        }
        let wrapper = write_wrapper(&dir, &real, &args)?;
        // No other test of this binary starts a launcher: nothing else reads the variable.
        std::env::set_var(LAUNCHER_ENV, &wrapper);
        let outcome = workload(full);
        if let Err(e) = &outcome {
            failures.push(format!("workload ({name}): {e:#}"));
        }
        let trace = Trace::read(&dir.join("trace"))?;
        runs.push((name, trace));
    }
    std::env::remove_var(LAUNCHER_ENV);

    let mut audit = Audit::new(&policy);
    for (name, trace) in &runs {
        audit.add(name, trace)?;
    }
    let report = audit.report();
    eprintln!("{report}");
    failures.extend(audit.failures());
    if !failures.is_empty() {
        let kept = work.keep();
        bail!(
            "jail audit failed (trace kept in {}):\n  {}",
            kept.display(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// A script that runs the real launcher under strace and forwards SIGTERM/SIGINT to it
/// (strace blocks fatal signals while it traces a command). The test kills the script with
/// SIGKILL if the workload fails: with setpriv, strace and then the launcher (and with it the
/// device) die with it instead of lingering.
fn write_wrapper(dir: &Path, launcher: &Path, extra: &[&str]) -> Result<PathBuf> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let extra: Vec<String> = extra.iter().map(|a| quote(a)).collect();
    let pdeath = if Command::new("setpriv").arg("--version").output().is_ok() {
        "setpriv --pdeathsig KILL --"
    } else {
        ""
    };
    let script = format!(
        r#"#!/bin/bash
{pdeath} strace -ff -qq -ttt --decode-pids=pidns --raw='!{DECODED}' -o {out} \
    {pdeath} {bin} "$@" {extra} &
spid=$!
fwd() {{ for p in $(cat /proc/$spid/task/*/children 2>/dev/null); do kill -$1 $p; done; }}
trap 'fwd TERM' TERM
trap 'fwd INT' INT
rc=1
while kill -0 $spid 2>/dev/null; do wait $spid; rc=$?; done
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

/// The end-to-end block workload. `full`: also fio at several depths, a second guest
/// reconnecting after a power-off.
fn workload(full: bool) -> Result<()> {
    let rig = BlockRig::new(128 << 20, &[])?;
    let first = rig.boot(|_, _| {})?;
    let written = exercise(&rig, &first, |g| {
        let depths: &[u32] = if full { &[1, 16] } else { &[4] };
        for (i, qd) in depths.iter().enumerate() {
            let out = g.run(
                &format!(
                    "fio --name=audit{i} --filename=/dev/vda --direct=1 --ioengine=libaio \
                     --iodepth={qd} --rw=randwrite --bs=4k --offset={off}m --size=8m \
                     --verify=crc32c --verify_fatal=1 --do_verify=1",
                    off = 16 + 8 * i
                ),
                CMD,
            )?;
            ensure!(
                out.success() && out.stdout.contains("err= 0"),
                "fio failed:\n{}",
                out.stdout
            );
        }
        // Flushes: through the page cache then sync, and direct with fsync.
        g.run_ok(&pattern_cmd("audit", 256, "/tmp/p"), CMD)?;
        g.run_ok("dd if=/tmp/p of=/dev/vda bs=1M seek=1 && sync", CMD)?;
        g.run_ok(
            "dd if=/tmp/p of=/dev/vda bs=1M seek=8 oflag=direct conv=fsync",
            CMD,
        )?;
        // Discard and write-zeroes.
        g.run_ok(
            "/usr/sbin/blkdiscard -o $((4<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        g.run_ok(
            "/usr/sbin/blkdiscard -z -o $((5<<20)) -l $((1<<20)) /dev/vda",
            CMD,
        )?;
        g.run_ok(
            "dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum",
            CMD,
        )
    })?;
    first.poweroff(POWEROFF)?;
    drop(first);
    if full {
        let second = rig.boot(|_, _| {})?;
        let read = exercise(&rig, &second, |g| {
            g.run_ok(
                "dd if=/dev/vda bs=1M skip=8 count=1 iflag=direct 2>/dev/null | md5sum",
                CMD,
            )
        })?;
        ensure!(
            read.trim() == written.trim(),
            "the second guest read {read:?}, the first wrote {written:?}"
        );
        second.poweroff(POWEROFF)?;
    }
    let st = rig.launcher.terminate()?;
    ensure!(st.success(), "launcher exited with {st}");
    Ok(())
}

/// One line of an `strace -ff -ttt` file.
#[derive(Debug, Clone)]
enum Event {
    /// A system call.
    Call(Call),
    /// `+++ killed by SIG +++`, with its time.
    Killed(f64, String),
    /// Anything else (signal deliveries, exits).
    Other,
}

#[derive(Debug, Clone)]
struct Call {
    time: f64,
    name: String,
    /// Raw arguments; None where strace decoded them (or they did not parse).
    args: Option<[u64; 6]>,
    /// The text after the name, for decoded calls and reports.
    text: String,
    /// The return value as printed (`0x3`, `-1 ENOENT (...)`, `?`).
    ret: String,
}

impl Call {
    fn ok(&self) -> bool {
        !self.ret.starts_with('-') && !self.ret.starts_with('?')
    }

    /// The host tid of the new thread or process, for a successful clone/clone3/fork/vfork.
    fn child_tid(&self) -> Option<u32> {
        if !matches!(self.name.as_str(), "clone" | "clone3" | "fork" | "vfork") || !self.ok() {
            return None;
        }
        // "2 /* 15328 in strace's PID NS */" or "15328".
        let host = match self.ret.split_once("/* ") {
            Some((_, rest)) => rest.split_whitespace().next()?,
            None => self.ret.split_whitespace().next()?,
        };
        host.parse().ok()
    }

    fn flags_text(&self) -> &str {
        self.text
            .split_once("flags=")
            .map(|(_, rest)| rest.split([',', ' ', ')', '}']).next().unwrap_or(""))
            .unwrap_or("")
    }
}

/// A trace: the events of each thread, by host tid.
#[derive(Debug, Default)]
struct Trace {
    threads: BTreeMap<u32, Vec<Event>>,
}

impl Trace {
    fn read(dir: &Path) -> Result<Trace> {
        let mut t = Trace::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(tid) = path
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            t.threads
                .insert(tid, text.lines().map(parse_line).collect());
        }
        ensure!(
            !t.threads.is_empty(),
            "strace wrote nothing in {}",
            dir.display()
        );
        Ok(t)
    }

    /// Thread group (process) of every thread, from the clone calls that created them.
    fn processes(&self) -> HashMap<u32, u32> {
        let mut parent: HashMap<u32, (u32, bool)> = HashMap::new();
        for (&tid, events) in &self.threads {
            for e in events {
                if let Event::Call(c) = e {
                    if let Some(child) = c.child_tid() {
                        let thread =
                            c.name.starts_with("clone") && c.flags_text().contains("CLONE_THREAD");
                        parent.insert(child, (tid, thread));
                    }
                }
            }
        }
        let mut tgid = HashMap::new();
        for &tid in self.threads.keys() {
            let mut t = tid;
            // Walk up through CLONE_THREAD links (bounded: the map has no cycles).
            for _ in 0..self.threads.len() {
                match parent.get(&t) {
                    Some(&(p, true)) => t = p,
                    _ => break,
                }
            }
            tgid.insert(tid, t);
        }
        tgid
    }
}

fn parse_line(line: &str) -> Event {
    let Some((time, rest)) = line.split_once(' ') else {
        return Event::Other;
    };
    let Ok(time) = time.parse::<f64>() else {
        return Event::Other;
    };
    let rest = rest.trim_start();
    if let Some(sig) = rest.strip_prefix("+++ killed by ") {
        return Event::Killed(time, sig.trim_end_matches(" +++").to_owned());
    }
    let Some(open) = rest.find('(') else {
        return Event::Other;
    };
    let name = &rest[..open];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Event::Other;
    }
    let (text, ret) = match split_return(rest) {
        Some((call, r)) => (&call[open + 1..call.len() - 1], r.trim().to_owned()),
        None => (&rest[open + 1..], "?".to_owned()),
    };
    let text = text.trim_end_matches(" <unfinished ...>").trim_end();
    let args = if DECODED.split(',').any(|d| d == name) {
        None
    } else {
        parse_raw_args(text)
    };
    Event::Call(Call {
        time,
        name: name.to_owned(),
        args,
        text: text.to_owned(),
        ret,
    })
}

/// Splits `name(args)   = ret` at the last `=` that follows the closing parenthesis (strace
/// pads with spaces before `=`; the return value may carry a decoded comment).
fn split_return(rest: &str) -> Option<(&str, &str)> {
    let mut end = rest.len();
    while let Some(eq) = rest[..end].rfind(" = ") {
        let call = rest[..eq].trim_end();
        if call.ends_with(')') {
            return Some((call, &rest[eq + 3..]));
        }
        end = eq;
    }
    None
}

fn parse_raw_args(text: &str) -> Option<[u64; 6]> {
    let mut args = [0u64; 6];
    if text.trim().is_empty() {
        return Some(args);
    }
    for (i, a) in text.split(", ").enumerate() {
        let a = a.trim();
        let v = match a.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => a.parse::<u64>().ok()?,
        };
        *args.get_mut(i)? = v;
    }
    Some(args)
}

/// clone's flags as strace decodes them: CLONE_* names, a signal name, maybe a hex rest.
fn clone_flags(text: &str) -> Option<u64> {
    text.split('|').try_fold(0, |v, part| {
        let bits = match part.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => constant(part)?,
        };
        Some(v | bits)
    })
}

/// The explanation after a rule's `cold-path:` marker (to the end of its comment), if any.
fn cold_path(comment: &str) -> Option<String> {
    let (_, rest) = comment.split_once(COLD_PATH)?;
    let why = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    (!why.is_empty()).then_some(why)
}

/// One call the policy does not allow.
#[derive(Debug)]
struct Violation {
    run: String,
    tid: u32,
    call: String,
    why: String,
}

/// The audit's tallies over all runs.
struct Audit<'p> {
    policy: &'p Policy,
    /// Calls per rule (by syscall name).
    hits: BTreeMap<String, u64>,
    /// Per rule, which `||` clauses some call satisfied.
    clauses: BTreeMap<String, BTreeSet<usize>>,
    violations: Vec<Violation>,
    /// Devices that died by a signal.
    deaths: Vec<String>,
    /// (run, device pid, threads, calls audited)
    devices: Vec<(String, u32, usize, u64)>,
}

impl<'p> Audit<'p> {
    fn new(policy: &'p Policy) -> Self {
        Audit {
            policy,
            hits: BTreeMap::new(),
            clauses: BTreeMap::new(),
            violations: Vec::new(),
            deaths: Vec::new(),
            devices: Vec::new(),
        }
    }

    fn add(&mut self, run: &str, trace: &Trace) -> Result<()> {
        let tgid = trace.processes();
        // Device processes: those in which a thread installed a seccomp filter. The audit
        // window starts after the last successful install (TSYNC covers every thread).
        let mut installs: BTreeMap<u32, (u32, usize, f64)> = BTreeMap::new();
        for (&tid, events) in &trace.threads {
            for (i, e) in events.iter().enumerate() {
                if let Event::Call(c) = e {
                    if c.name == "seccomp" && c.text.contains("SECCOMP_SET_MODE_FILTER") && c.ok() {
                        installs.insert(tgid[&tid], (tid, i, c.time));
                    }
                }
            }
        }
        ensure!(
            !installs.is_empty(),
            "{run}: no process installed a seccomp filter: is the device jailed?"
        );
        for (&pid, &(installer, index, at)) in &installs {
            let mut threads = 0;
            let mut calls = 0;
            for (&tid, events) in trace.threads.iter().filter(|(t, _)| tgid[*t] == pid) {
                threads += 1;
                for (i, e) in events.iter().enumerate() {
                    let after = if tid == installer {
                        i > index
                    } else {
                        match e {
                            Event::Call(Call { time, .. }) | Event::Killed(time, _) => *time >= at,
                            Event::Other => false,
                        }
                    };
                    if !after {
                        continue;
                    }
                    match e {
                        Event::Call(c) => {
                            calls += 1;
                            self.check(run, tid, c);
                        }
                        Event::Killed(_, sig) => self.deaths.push(format!(
                            "{run}: device pid {pid} (thread {tid}) killed by {sig}"
                        )),
                        Event::Other => {}
                    }
                }
            }
            self.devices.push((run.to_owned(), pid, threads, calls));
        }
        Ok(())
    }

    fn check(&mut self, run: &str, tid: u32, c: &Call) {
        let violation = |why: String| Violation {
            run: run.to_owned(),
            tid,
            call: format!("{}({}) = {}", c.name, c.text, c.ret),
            why,
        };
        let nr = match c.name.strip_prefix("syscall_0x") {
            Some(hex) => i64::from_str_radix(hex, 16).ok(),
            None => syscall_nr(&c.name),
        };
        let Some(nr) = nr else {
            self.violations
                .push(violation("not in the x86_64 syscall table".to_owned()));
            return;
        };
        let args = match (&c.args, c.name.as_str()) {
            (Some(a), _) => Some(*a),
            (None, "clone") => clone_flags(c.flags_text()).map(|f| [f, 0, 0, 0, 0, 0]),
            (None, _) => None,
        };
        let needs_args = matches!(
            self.policy.rule_by_nr(nr).map(|r| &r.action),
            Some(Action::AllowIf(_))
        );
        let args = match args {
            Some(a) => a,
            None if needs_args => {
                self.violations.push(violation(
                    "its arguments could not be read from the trace".to_owned(),
                ));
                return;
            }
            None => [0; 6],
        };
        match self.policy.verdict(nr, &args) {
            Verdict::Allow(rule) | Verdict::Errno(rule, _) => {
                *self.hits.entry(rule.syscall.clone()).or_default() += 1;
                if let Action::AllowIf(expr) = &rule.action {
                    let taken = self.clauses.entry(rule.syscall.clone()).or_default();
                    for (i, clause) in expr.clauses.iter().enumerate() {
                        if clause
                            .iter()
                            .all(|cmp| cmp.holds(args[usize::from(cmp.arg)]))
                        {
                            taken.insert(i);
                        }
                    }
                }
            }
            Verdict::Deny(None) => self
                .violations
                .push(violation("no rule for this syscall".to_owned())),
            Verdict::Deny(Some(rule)) => self.violations.push(violation(format!(
                "arguments outside the rule at {}: {}",
                rule.location, rule.action
            ))),
        }
    }

    /// Rules no call hit: (rule, its cold-path explanation if any).
    fn unexercised(&self) -> Vec<(&'p launcher::jail::policy::Rule, Option<String>)> {
        self.policy
            .rules
            .iter()
            .filter(|r| !self.hits.contains_key(&r.syscall))
            .map(|r| (r, cold_path(&r.comment)))
            .collect()
    }

    fn report(&self) -> String {
        let mut out = String::from("==== seccomp policy audit: block_device.policy ====\n");
        for (run, pid, threads, calls) in &self.devices {
            let _ = writeln!(
                out,
                "run {run}: device pid {pid}, {threads} threads, {calls} calls after the filter"
            );
        }
        let _ = writeln!(out, "\nexercised rules (calls):");
        for r in &self.policy.rules {
            if let Some(n) = self.hits.get(&r.syscall) {
                let _ = writeln!(out, "  {:<18} {:>9}  {}", r.syscall, n, r.location);
            }
        }
        let _ = writeln!(out, "\nrules never exercised:");
        for (r, why) in self.unexercised() {
            let _ = writeln!(
                out,
                "  {:<18} {}  {}",
                r.syscall,
                r.location,
                why.as_deref()
                    .map(|w| format!("cold-path: {w}"))
                    .unwrap_or_else(|| "NO cold-path: COMMENT".to_owned())
            );
        }
        let _ = writeln!(out, "\nalternatives never taken (of exercised rules):");
        for r in &self.policy.rules {
            let (Action::AllowIf(expr), Some(taken)) = (&r.action, self.clauses.get(&r.syscall))
            else {
                continue;
            };
            for (i, clause) in expr.clauses.iter().enumerate() {
                if !taken.contains(&i) {
                    let text: Vec<String> = clause.iter().map(|c| c.to_string()).collect();
                    let _ = writeln!(out, "  {:<18} {}", r.syscall, text.join(" && "));
                }
            }
        }
        let exercised_cold: Vec<&str> = self
            .policy
            .rules
            .iter()
            .filter(|r| self.hits.contains_key(&r.syscall) && r.comment.contains(COLD_PATH))
            .map(|r| r.syscall.as_str())
            .collect();
        if !exercised_cold.is_empty() {
            let _ = writeln!(
                out,
                "\nrules marked cold-path that the workload did exercise: {}",
                exercised_cold.join(", ")
            );
        }
        let _ = writeln!(out, "\nviolations: {}", self.violations.len());
        let mut seen = BTreeSet::new();
        for v in &self.violations {
            let key = (
                v.call.split('(').next().unwrap_or("").to_owned(),
                v.why.clone(),
            );
            if seen.insert(key) {
                let _ = writeln!(
                    out,
                    "  [{} tid {}] {}\n      {}",
                    v.run, v.tid, v.call, v.why
                );
            }
        }
        out
    }

    fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self.deaths.clone();
        let mut seen = BTreeSet::new();
        for v in &self.violations {
            if seen.insert((
                v.call.split('(').next().unwrap_or("").to_owned(),
                v.why.clone(),
            )) {
                f.push(format!("outside the policy: {} ({})", v.call, v.why));
            }
        }
        for (r, why) in self.unexercised() {
            if why.is_none() {
                f.push(format!(
                    "{}: rule for {} was never exercised and has no \"{COLD_PATH}\" comment \
                     saying which path needs it (justify it or remove it)",
                    r.location, r.syscall
                ));
            }
        }
        f
    }
}

#[test]
fn trace_lines_parse() {
    let Event::Call(c) = parse_line(
        "1795564329.850401 ioctl(0x3, 0x80081272, 0x7ffc1234) = -1 ENOTTY (Inappropriate ioctl)",
    ) else {
        panic!("not a call");
    };
    assert_eq!(c.name, "ioctl");
    assert_eq!(c.args, Some([3, 0x8008_1272, 0x7ffc_1234, 0, 0, 0]));
    assert!(!c.ok());
    let Event::Call(c) = parse_line(
        "1795564329.858036 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, parent_tid=[2], tls=0x7f) = 2 /* 29332 in strace's PID NS */",
    ) else {
        panic!("not a call");
    };
    assert_eq!(c.child_tid(), Some(29332));
    assert_eq!(clone_flags(c.flags_text()), Some(0x3d0f00));
    let Event::Call(c) =
        parse_line("1795564329.9 fcntl(0x3, 0x3, 0)    = 0x8002 (flags O_RDWR|O_LARGEFILE)")
    else {
        panic!("not a call");
    };
    assert_eq!(c.args, Some([3, 3, 0, 0, 0, 0]));
    assert_eq!(c.ret, "0x8002 (flags O_RDWR|O_LARGEFILE)");
    assert!(c.ok());
    let Event::Call(c) =
        parse_line("1795564329.9 rt_sigtimedwait(0x7ffc, 0, 0, 0x8 <unfinished ...>) = ?")
    else {
        panic!("not a call");
    };
    assert_eq!(c.args, Some([0x7ffc, 0, 0, 8, 0, 0]));
    assert!(matches!(
        parse_line("1795564330.0 +++ killed by SIGSYS +++"),
        Event::Killed(_, s) if s == "SIGSYS"
    ));
    assert!(matches!(
        parse_line("1795564330.0 --- SIGTERM {si_signo=SIGTERM} ---"),
        Event::Other
    ));
}

#[test]
fn audit_checks_only_the_device_after_its_filter() -> Result<()> {
    let policy = load_policy("block", None)?;
    // Thread 101 installs the filter at t=1001, thread 102 starts at t=1010.
    let lines = |start: usize, v: &[&str]| -> Vec<Event> {
        v.iter()
            .enumerate()
            .map(|(i, l)| parse_line(&format!("{}.000001 {l}", start + i)))
            .collect()
    };
    let mut trace = Trace::default();
    // The launcher starts the device in new namespaces; it is not audited.
    trace.threads.insert(
        100,
        lines(
            990,
            &[
                "clone(child_stack=0x1, flags=CLONE_NEWPID|CLONE_NEWUSER|SIGCHLD) = 101",
                "socket(0x2, 0x1, 0) = 0x5",
            ],
        ),
    );
    trace.threads.insert(
        101,
        lines(1000, &[
            "ioctl(0x2, 0x5401, 0x7ff) = -1 ENOTTY (Inappropriate ioctl for device)",
            "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=10, filter=0x1}) = 0",
            "clone3({flags=CLONE_VM|CLONE_THREAD, child_tid=0x1}, 88) = -1 ENOSYS (Function not implemented)",
            "clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, parent_tid=[2], tls=0x7f) = 2 /* 102 in strace's PID NS */",
            "mmap(0, 0x1000, 0x5, 0x22, 0xffffffff, 0) = 0x7f0000",
            "read(0x3, 0x7ff, 0x8)   = 0x8",
        ]),
    );
    trace.threads.insert(
        102,
        lines(
            1010,
            &[
                "fcntl(0x9, 0x409, 0x2) = -1 EPERM (Operation not permitted)",
                "openat(0xffffff9c, 0x7ff, 0x80000, 0) = -1 ENOENT (No such file or directory)",
                "ioctl(0x2, 0x5401, 0x7ff) = -1 ENOTTY (Inappropriate ioctl for device)",
                "+++ killed by SIGSYS +++",
            ],
        ),
    );
    let mut audit = Audit::new(&policy);
    audit.add("t", &trace)?;
    let bad: Vec<&str> = audit
        .violations
        .iter()
        .map(|v| v.call.split('(').next().unwrap_or(""))
        .collect();
    assert_eq!(bad, ["mmap", "ioctl"], "{:?}", audit.violations);
    assert_eq!(audit.deaths.len(), 1);
    for hit in ["clone3", "clone", "read", "fcntl", "openat"] {
        assert!(audit.hits.contains_key(hit), "{hit} not counted");
    }
    assert_eq!(audit.devices, [("t".to_owned(), 101, 2, 7)]);
    assert!(audit.failures().len() >= 3);
    assert_eq!(
        cold_path("who\ncold-path: only when\n  the moon is full"),
        Some("only when the moon is full".to_owned())
    );
    Ok(())
}
