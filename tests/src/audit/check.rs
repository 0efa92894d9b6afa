//! Checking a trace against a device kind's policy, the way the compiled filter decides:
//! each call of the device process after its filter was installed, arguments included;
//! tallies of the rules and `||` alternatives used; the rules never used, each of which
//! needs a `cold-path:` comment for this kind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{ensure, Result};
use launcher::jail::policy::{syscall_nr, Action, Policy, Rule, Verdict};

use super::trace::{clone_flags, Call, Event, Trace};

/// The comment marker of a rule the workload is not expected to exercise: `cold-path: WHY`
/// holds for every kind whose policy includes the rule, `cold-path(KIND, ...): WHY` only for
/// the kinds named.
pub const COLD_PATH: &str = "cold-path";

/// The explanation of the first `cold-path` marker in a rule's comment that applies to
/// `kind` (up to the next marker or the end of the comment), if any.
pub fn cold_path(comment: &str, kind: &str) -> Option<String> {
    let mut rest = comment;
    while let Some(at) = rest.find(COLD_PATH) {
        let after = &rest[at + COLD_PATH.len()..];
        let (kinds, body) = match after.strip_prefix('(') {
            Some(inner) => match inner.split_once(')') {
                Some((k, b)) => (Some(k), b),
                None => return None,
            },
            None => (None, after),
        };
        let Some(body) = body.strip_prefix(':') else {
            rest = after;
            continue;
        };
        let text = body.split(COLD_PATH).next().unwrap_or("");
        let why = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let applies = kinds.is_none_or(|k| k.split(',').any(|k| k.trim() == kind));
        if applies && !why.is_empty() {
            return Some(why);
        }
        rest = body;
    }
    None
}

/// One call the policy does not allow.
#[derive(Debug)]
pub struct Violation {
    run: String,
    tid: u32,
    call: String,
    why: String,
}

/// The audit's tallies over all runs of one kind.
#[derive(Debug)]
pub struct Audit<'p> {
    kind: String,
    policy: &'p Policy,
    /// Calls per rule (by syscall name).
    hits: BTreeMap<String, u64>,
    /// Per rule, which `||` clauses some call satisfied.
    clauses: BTreeMap<String, BTreeSet<usize>>,
    violations: Vec<Violation>,
    /// Devices that died by a signal other than SIGKILL (one entry per process).
    deaths: Vec<String>,
    /// Devices killed by SIGKILL: the workload's own kills (reported, not failures).
    kills: Vec<String>,
    /// (run, device pid, threads, calls audited)
    devices: Vec<(String, u32, usize, u64)>,
}

impl<'p> Audit<'p> {
    /// An audit of `kind`'s device processes against `policy`.
    pub fn new(kind: &str, policy: &'p Policy) -> Self {
        Audit {
            kind: kind.to_owned(),
            policy,
            hits: BTreeMap::new(),
            clauses: BTreeMap::new(),
            violations: Vec::new(),
            deaths: Vec::new(),
            kills: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// Checks the device processes of one run's trace.
    pub fn add(&mut self, run: &str, trace: &Trace) -> Result<()> {
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
                        Event::Killed(_, sig) => {
                            let what = format!("{run}: device pid {pid} killed by {sig}");
                            let list = if sig == "SIGKILL" {
                                &mut self.kills
                            } else {
                                &mut self.deaths
                            };
                            if !list.contains(&what) {
                                list.push(what);
                            }
                        }
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
    fn unexercised(&self) -> Vec<(&'p Rule, Option<String>)> {
        self.policy
            .rules
            .iter()
            .filter(|r| !self.hits.contains_key(&r.syscall))
            .map(|r| (r, cold_path(&r.comment, &self.kind)))
            .collect()
    }

    /// What was exercised, what not and why, and the violations.
    pub fn report(&self) -> String {
        let mut out = format!(
            "==== seccomp policy audit: {}_device.policy ====\n",
            self.kind
        );
        for (run, pid, threads, calls) in &self.devices {
            let _ = writeln!(
                out,
                "run {run}: device pid {pid}, {threads} threads, {calls} calls after the filter"
            );
        }
        for k in &self.kills {
            let _ = writeln!(out, "{k} (by the workload)");
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
                    .unwrap_or_else(|| format!("NO cold-path COMMENT FOR {}", self.kind))
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
            .filter(|r| {
                self.hits.contains_key(&r.syscall) && cold_path(&r.comment, &self.kind).is_some()
            })
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

    /// Why the audit fails, if it does: deaths, violations, unexplained rules.
    pub fn failures(&self) -> Vec<String> {
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
                    "{}: rule for {} was never exercised by the {} workload and has no \
                     \"{COLD_PATH}:\" (or \"{COLD_PATH}({}):\") comment saying which path needs \
                     it (justify it or remove it)",
                    r.location, r.syscall, self.kind, self.kind
                ));
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::trace::parse_line;
    use launcher::jail::seccomp::load_policy;

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
        let mut audit = Audit::new("block", &policy);
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
            cold_path("who\ncold-path: only when\n  the moon is full", "block"),
            Some("only when the moon is full".to_owned())
        );
        Ok(())
    }

    #[test]
    fn a_sigkill_is_the_workloads_and_not_a_failure() -> Result<()> {
        let policy = load_policy("rng", None)?;
        let mut trace = Trace::default();
        for tid in [201, 202] {
            let mut events = vec![parse_line("1000.0 read(0x3, 0x7ff, 0x8) = 0x8")];
            if tid == 201 {
                events.insert(
                    0,
                    parse_line(
                        "999.0 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=1, filter=0x1}) = 0",
                    ),
                );
                events.insert(
                    1,
                    parse_line("999.5 clone(child_stack=0x7f, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, parent_tid=[2], tls=0x7f) = 202"),
                );
            }
            events.push(parse_line("1001.0 +++ killed by SIGKILL +++"));
            trace.threads.insert(tid, events);
        }
        let mut audit = Audit::new("rng", &policy);
        audit.add("t", &trace)?;
        assert!(audit.deaths.is_empty(), "{:?}", audit.deaths);
        assert_eq!(audit.kills, ["t: device pid 201 killed by SIGKILL"]);
        assert!(audit
            .report()
            .contains("killed by SIGKILL (by the workload)"));
        Ok(())
    }

    #[test]
    fn cold_path_markers_may_name_kinds() {
        let c = "who needs it\ncold-path(rng): without inflight\ncold-path(block, net): never";
        assert_eq!(cold_path(c, "rng"), Some("without inflight".to_owned()));
        assert_eq!(cold_path(c, "net"), Some("never".to_owned()));
        assert_eq!(cold_path(c, "vsock"), None);
        assert_eq!(
            cold_path("cold-path: always", "vsock"),
            Some("always".to_owned())
        );
        assert_eq!(cold_path("cold-path(rng):", "rng"), None);
        assert_eq!(cold_path("no marker", "rng"), None);
    }
}
