//! `vu-soak kills KIND`: one device kind's kill loop of the soak run (see
//! `tests/soak/run.sh` and `vu_tests::soak`); writes the outcome as JSON.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vu_tests::soak::{block, net, rng, run_kind, vsock, Outcome, Plan};

const USAGE: &str =
    "usage: vu-soak kills KIND --kills N [--seed S] [--pause-ms LO-HI] --out FILE.json

KIND is block, rng, vsock or net. Each of the N kills SIGKILLs the serving device process while
a guest keeps it busy, waits for the supervisor's new process and the guest's service to
resume, and verifies the guest's data (see tests/soak/README.md). The pause between the
readiness check and a kill is drawn from LO-HI ms (default 0-1000) by a generator seeded
with S (default: the clock; printed, so a schedule can be replayed).
Exit status: 0 when every kill was survived with no guest error, 1 otherwise, 2 on a usage
error.";

struct Args {
    kind: String,
    plan: Plan,
    out: String,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args> {
    if args.next().as_deref() != Some("kills") {
        bail!("expected the subcommand `kills`");
    }
    let kind = args.next().context("missing KIND")?;
    let mut plan = Plan {
        kills: 0,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
        pause_ms: (0, 1000),
    };
    let mut out = None;
    while let Some(a) = args.next() {
        let mut v = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kills" => plan.kills = v()?.parse().context("--kills")?,
            "--seed" => plan.seed = v()?.parse().context("--seed")?,
            "--pause-ms" => {
                let s = v()?;
                let (lo, hi) = s.split_once('-').context("--pause-ms LO-HI")?;
                plan.pause_ms = (lo.parse()?, hi.parse()?);
                if plan.pause_ms.0 >= plan.pause_ms.1 {
                    bail!("--pause-ms: LO must be below HI");
                }
            }
            "--out" => out = Some(v()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    Ok(Args {
        kind,
        plan,
        out: out.context("missing --out")?,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vu-soak: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let f = match args.kind.as_str() {
        "block" => block::run,
        "rng" => rng::run,
        "vsock" => vsock::run,
        "net" => net::run,
        k => {
            eprintln!("vu-soak: unknown kind {k}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "soak {}: {} kills, pause seed {} (replay with --seed {})",
        args.kind, args.plan.kills, args.plan.seed, args.plan.seed
    );
    let mut out = Outcome::new(&args.kind, &args.plan);
    run_kind(&mut out, |o| f(&args.plan, o));
    if let Err(e) = std::fs::write(&args.out, out.to_json()) {
        eprintln!("vu-soak: writing {}: {e}", args.out);
        return ExitCode::FAILURE;
    }
    eprintln!(
        "soak {}: {}/{} kills survived, {} guest errors, {} checks passed, {:.0} s",
        out.kind, out.survived, out.planned, out.guest_errors, out.checks, out.seconds
    );
    if out.survived == out.planned && out.guest_errors == 0 && out.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
