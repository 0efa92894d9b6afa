//! Server figures from /proc: CPU time (utime + stime of every thread, `/proc/PID/stat`) and
//! anonymous resident memory (`RssAnon` in `/proc/PID/status`) of a process and its
//! descendants (a launcher and its jailed device process count together).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

/// Clock ticks per second of /proc CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of /proc/PID/stat after the command name (which may contain spaces).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The command name in /proc/PID/stat.
fn comm(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    Some(s[s.find('(')? + 1..s.rfind(')')?].to_string())
}

/// utime + stime of a process (all its threads, including those that exited) or of one
/// thread, in seconds. Fields 14 and 15 of `stat`, i.e. 11 and 12 after the name.
fn cpu_seconds_at(path: &str) -> Option<f64> {
    let f = stat_fields(path)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// The parent pid of `pid`.
fn parent(pid: u32) -> Option<u32> {
    stat_fields(&format!("/proc/{pid}/stat"))?
        .get(1)?
        .parse()
        .ok()
}

/// `roots` and all their descendants that exist now.
pub fn process_tree(roots: &[u32]) -> BTreeSet<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some(pp) = parent(pid) {
                    all.push((pid, pp));
                }
            }
        }
    }
    let mut set: BTreeSet<u32> = roots.iter().copied().collect();
    loop {
        let before = set.len();
        for &(pid, pp) in &all {
            if set.contains(&pp) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// The processes of the tree that have no children in it (the device processes).
pub fn leaves(tree: &BTreeSet<u32>) -> Vec<u32> {
    let parents: BTreeSet<u32> = tree.iter().filter_map(|&p| parent(p)).collect();
    tree.iter()
        .copied()
        .filter(|p| !parents.contains(p))
        .collect()
}

/// CPU seconds of each process of `pids` (missing processes count 0).
pub fn cpu_seconds(pids: &BTreeSet<u32>) -> f64 {
    pids.iter()
        .filter_map(|p| cpu_seconds_at(&format!("/proc/{p}/stat")))
        .sum()
}

/// CPU seconds of the threads of this process whose name starts with `prefix`.
pub fn own_threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| {
            let p = format!("/proc/self/task/{}/stat", e.file_name().to_str()?);
            comm(&p)
                .filter(|c| c.starts_with(prefix))
                .and_then(|_| cpu_seconds_at(&p))
        })
        .sum()
}

/// CPU seconds every task of a cgroup has used (exited ones included): `cpuacct.usage` of
/// cgroup v1 (nanoseconds), else `usage_usec` in `cpu.stat` of cgroup v2.
pub fn cgroup_cpu_seconds(dir: &Path) -> Result<f64> {
    if let Ok(s) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        let ns: u64 = s
            .trim()
            .parse()
            .with_context(|| format!("bad cpuacct.usage in {}", dir.display()))?;
        return Ok(ns as f64 / 1e9);
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat"))
        .with_context(|| format!("{} has neither cpuacct.usage nor cpu.stat", dir.display()))?;
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}/cpu.stat", dir.display()))?;
    Ok(usec as f64 / 1e6)
}

/// The processes of a cgroup (`cgroup.procs`).
pub fn cgroup_pids(dir: &Path) -> Result<Vec<u32>> {
    let s = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("cannot read {}/cgroup.procs", dir.display()))?;
    Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Voluntary context switches of every thread of `pids` that exists now: each is a sleep,
/// so over a run they count the server's wake-ups (threads that exited in between are
/// missing; involuntary switches, preemptions by other load, are not counted).
pub fn wakeups(pids: &BTreeSet<u32>) -> u64 {
    let mut total = 0;
    for p in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// `RssAnon` of `pid` in KiB.
pub fn rss_anon_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .with_context(|| format!("no RssAnon in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad RssAnon line `{line}`"))
}

/// Sum of `RssAnon` over `pids` in KiB (missing processes count 0).
pub fn rss_anon_sum_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_anon_kib(p).ok()).sum()
}

/// CPU time of the calling thread in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A snapshot of the server's processes.
#[derive(Debug, Clone)]
pub struct ServerSample {
    /// The processes (roots and descendants).
    pub pids: BTreeSet<u32>,
    /// Their CPU seconds.
    pub cpu_s: f64,
    /// RssAnon of all of them, KiB.
    pub rss_anon_kib: u64,
    /// RssAnon of the leaf processes (the device processes), KiB.
    pub leaf_rss_anon_kib: u64,
}

/// Samples the server rooted at `roots`.
pub fn sample(roots: &[u32]) -> ServerSample {
    let pids = process_tree(roots);
    let all: Vec<u32> = pids.iter().copied().collect();
    let leaf = leaves(&pids);
    ServerSample {
        cpu_s: cpu_seconds(&pids),
        rss_anon_kib: rss_anon_sum_kib(&all),
        leaf_rss_anon_kib: rss_anon_sum_kib(&leaf),
        pids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = sample(&[me]);
        assert!(s.pids.contains(&me));
        assert!(s.rss_anon_kib > 0);
        assert!(s.cpu_s >= 0.0);
        assert!(thread_cpu_ns() > 0);
        let _ = wakeups(&s.pids);
    }
}
