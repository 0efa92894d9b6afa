//! The soak run's kill loops (`vu-soak kills`, driven by `tests/soak/run.sh`): for one device
//! kind, N SIGKILLs of the serving device process while a guest keeps it busy, with the
//! default supervisor settings (the supervisor starts a new process after a backoff that
//! grows to 5 s), each followed by the kind's guest-side proof that service resumed intact.
//! Kills are paced by readiness (the guest's I/O flows through the new process) plus a
//! random pause drawn from a seeded generator, so a failing schedule can be replayed.
//!
//! Each kind module (`block.rs`, `net.rs`, `rng.rs`, `vsock.rs`) fills an [`Outcome`]; the binary
//! writes it as one JSON object for `tests/soak/report.py`.

pub mod block;
pub mod net;
pub mod rng;
pub mod vsock;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::supervisor::{pid_alive, sigkill, Ctl, DevStatus, RECONNECT_TIMEOUT};

/// How long the guest's I/O may take to show progress through a (new) device process.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(180);

/// What to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// SIGKILLs of the device process.
    pub kills: usize,
    /// Seeds the pauses before kills.
    pub seed: u64,
    /// Pause after readiness and before a kill, drawn from this range (ms).
    pub pause_ms: (u64, u64),
}

/// What a kind's kill loop saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The device kind.
    pub kind: String,
    /// Kills planned.
    pub planned: usize,
    /// Kills after which the device came back and the guest's service resumed, verified.
    pub survived: usize,
    /// Guest-side verifications that failed (data that came back wrong, a read that
    /// failed, a transfer that did not complete on a fresh connection).
    pub guest_errors: u64,
    /// Guest-side verifications that passed.
    pub checks: u64,
    /// The supervisor's restart count for the device at the end.
    pub restarts: Option<u64>,
    /// Wall time of the loop, seconds.
    pub seconds: f64,
    /// The pause schedule's seed.
    pub seed: u64,
    /// What the verifications were, in words.
    pub notes: Vec<String>,
    /// Each guest error, and the error that stopped the loop early, if one did.
    pub failures: Vec<String>,
}

impl Outcome {
    /// An empty outcome for `kind`.
    pub fn new(kind: &str, plan: &Plan) -> Outcome {
        Outcome {
            kind: kind.to_owned(),
            planned: plan.kills,
            seed: plan.seed,
            ..Outcome::default()
        }
    }

    /// A failed verification: counted, and kept for the report.
    pub fn guest_error(&mut self, what: String) {
        eprintln!("soak {}: GUEST ERROR: {what}", self.kind);
        self.guest_errors += 1;
        self.failures.push(what);
    }

    /// The outcome as one JSON object.
    pub fn to_json(&self) -> String {
        let list = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| json_string(s)).collect();
            format!("[{}]", items.join(", "))
        };
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"kind\": {},", json_string(&self.kind));
        let _ = writeln!(s, "  \"planned\": {},", self.planned);
        let _ = writeln!(s, "  \"survived\": {},", self.survived);
        let _ = writeln!(s, "  \"guest_errors\": {},", self.guest_errors);
        let _ = writeln!(s, "  \"checks\": {},", self.checks);
        let restarts = self.restarts.map_or("null".to_owned(), |r| r.to_string());
        let _ = writeln!(s, "  \"restarts\": {restarts},");
        let _ = writeln!(s, "  \"seconds\": {:.1},", self.seconds);
        let _ = writeln!(s, "  \"seed\": {},", self.seed);
        let _ = writeln!(s, "  \"notes\": {},", list(&self.notes));
        let _ = writeln!(s, "  \"failures\": {}", list(&self.failures));
        s.push_str("}\n");
        s
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    crate::qmp::json_str(s)
}

/// The pauses before kills: a small seeded generator (a schedule replays with its seed).
#[derive(Debug, Clone)]
pub struct Pauses(u64);

impl Pauses {
    /// Seeded with `seed`.
    pub fn new(seed: u64) -> Pauses {
        Pauses(seed)
    }

    /// The next pause, in `lo..hi` ms.
    pub fn next(&mut self, (lo, hi): (u64, u64)) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(lo + (self.0 >> 33) % (hi - lo).max(1))
    }
}

/// SIGKILLs device `name`'s process; returns its pid once it is gone.
pub fn kill_device(ctl: &Ctl, name: &str) -> Result<u32> {
    let st = ctl.status(name)?;
    let pid = st.pid.context("no device process to kill")?;
    sigkill(pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        ensure!(
            Instant::now() < deadline,
            "killed device {pid} is still there"
        );
        // A zombie until the supervisor reaps it: nothing to wait on but /proc.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// Waits until the supervisor runs a new process for `name` (not `old`); with `frontend`,
/// until the front-end is connected to it too.
pub fn wait_respawned(ctl: &Ctl, name: &str, old: u32, frontend: bool) -> Result<DevStatus> {
    let what = if frontend {
        "respawned and reconnected"
    } else {
        "respawned"
    };
    ctl.wait_status(name, what, RECONNECT_TIMEOUT, |s| {
        s.pid.is_some_and(|p| p != old)
            && s.state == "running"
            && (!frontend || s.frontend_connected == Some(true))
    })
}

/// A numeric field of a device's status (`bytes_total`, `bytes_from_guest`...).
pub fn field(st: &DevStatus, key: &str) -> Option<u64> {
    st.raw
        .find_key(key)
        .and_then(crate::supervisor::Json::as_u64)
}

/// Logs one kill's progress line.
pub fn progress(kind: &str, kill: usize, planned: usize, started: Instant, what: &str) {
    eprintln!(
        "soak {kind}: kill {}/{planned} at {:.0}s: {what}",
        kill + 1,
        started.elapsed().as_secs_f64()
    );
}

/// Runs `f`, then records its wall time and, if it failed, why (the loop stopped there).
pub fn run_kind(out: &mut Outcome, f: impl FnOnce(&mut Outcome) -> Result<()>) -> &mut Outcome {
    let started = Instant::now();
    if let Err(e) = f(out) {
        let msg = format!(
            "stopped after {} of {} kills: {e:#}",
            out.survived, out.planned
        );
        eprintln!("soak {}: {msg}", out.kind);
        out.failures.push(msg);
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_json_and_pauses() {
        let plan = Plan {
            kills: 3,
            seed: 9,
            pause_ms: (0, 100),
        };
        let mut o = Outcome::new("block", &plan);
        o.survived = 3;
        o.notes.push("fio \"rounds\": 2".into());
        let j = crate::supervisor::Json::parse(&o.to_json()).expect("json");
        assert_eq!(j.get("survived").and_then(|v| v.as_u64()), Some(3));
        assert_eq!(j.get("restarts"), Some(&crate::supervisor::Json::Null));
        let mut a = Pauses::new(1);
        let mut b = Pauses::new(1);
        for _ in 0..100 {
            let d = a.next((10, 20));
            assert_eq!(d, b.next((10, 20)));
            assert!((10..20).contains(&(d.as_millis() as u64)));
        }
    }
}
